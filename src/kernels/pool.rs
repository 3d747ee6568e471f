//! `shaders/pool.wgsl`: max and average pooling (PyTorch floor mode, average counting padding or
//! not) and global average pooling.

use super::{expect_shape, half_bytes, positive};
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

/// A pooling operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Max over a `k×k` window.
    Max {
        /// Window size.
        k: usize,
        /// Stride.
        stride: usize,
        /// Padding (never part of the max).
        pad: usize,
    },
    /// Average over a `k×k` window.
    Avg {
        /// Window size.
        k: usize,
        /// Stride.
        stride: usize,
        /// Padding.
        pad: usize,
        /// Divide by the window including padding (PyTorch's default) or by the in-bounds count.
        count_include_pad: bool,
    },
    /// Mean over each channel plane: `[N, C, H, W] → [N, C, 1, 1]`.
    GlobalAvg,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    k: u32,
    s: u32,
    pad: u32,
    mode: u32,
    _pad: [u32; 2],
}

impl Pool {
    fn window(self) -> Option<(usize, usize, usize)> {
        match self {
            Pool::Max { k, stride, pad } | Pool::Avg { k, stride, pad, .. } => {
                Some((k, stride, pad))
            }
            Pool::GlobalAvg => None,
        }
    }

    /// Output shape for input `x`.
    pub fn output_shape(self, x: Shape) -> Result<Shape> {
        let Some((k, s, pad)) = self.window() else {
            return Ok(Shape::new(x.n, x.c, 1, 1));
        };
        positive("pool", "kernel", k)?;
        positive("pool", "stride", s)?;
        if 2 * pad > k {
            return Err(Error::param(
                "pool",
                format!("padding {pad} exceeds half the window {k}"),
            ));
        }
        if x.h + 2 * pad < k || x.w + 2 * pad < k {
            return Err(Error::shape(
                "pool",
                format!(
                    "input {}x{} smaller than window {k} with padding {pad}",
                    x.h, x.w
                ),
            ));
        }
        Ok(Shape::new(
            x.n,
            x.c,
            (x.h + 2 * pad - k) / s + 1,
            (x.w + 2 * pad - k) / s + 1,
        ))
    }

    /// Binds input and output.
    pub fn bind(self, ctx: &Context, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
        let xs = x.shape();
        let ys = self.output_shape(xs)?;
        expect_shape("pool", "output", y, ys)?;
        let (k, s, pad) = self.window().unwrap_or((0, 0, 0));
        let mode = match self {
            Pool::Max { .. } | Pool::GlobalAvg => 0,
            Pool::Avg {
                count_include_pad: true,
                ..
            } => 1,
            Pool::Avg {
                count_include_pad: false,
                ..
            } => 2,
        };
        let params = Params {
            n: xs.n as u32,
            c: xs.c as u32,
            h: xs.h as u32,
            w: xs.w as u32,
            ho: ys.h as u32,
            wo: ys.w as u32,
            k: k as u32,
            s: s as u32,
            pad: pad as u32,
            mode,
            _pad: [0; 2],
        };
        let (entry, workgroups, flops) = match self {
            Pool::GlobalAvg => ("global_avg", grid(xs.rows() as u64, 1), xs.numel() as u64),
            _ => (
                "pool2d",
                grid((ys.rows() * ys.row_stride() / 4) as u64, WORKGROUP),
                (ys.numel() * k * k) as u64,
            ),
        };
        Ok(ctx.dispatch(
            format!("{entry} k{k}s{s} c{} {}x{}", xs.c, xs.h, xs.w),
            ctx.pipeline("pool", entry, &[])?,
            &[x.into(), y.into()],
            &params,
            workgroups,
            DispatchStats {
                flops,
                bytes: half_bytes(xs) + half_bytes(ys),
            },
        ))
    }
}
