//! `shaders/morph.wgsl`: separable max (dilate), min (erode) and mean (box blur) filters and a
//! threshold on single-channel maps, with OpenCV's border rules: MobileFaceSwap's mask
//! post-processing for paste-back, on the GPU.

use super::{expect_shape, half_bytes, positive};
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::Tensor;

/// One filter pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Morph {
    /// Max over a window of `2·radius + 1` along the axis (rectangular dilation, separably).
    Dilate {
        /// Half window.
        radius: usize,
        /// Along y (true) or x (false).
        vertical: bool,
    },
    /// Min over the window (erosion).
    Erode {
        /// Half window.
        radius: usize,
        /// Along y or x.
        vertical: bool,
    },
    /// Mean over the window, reflect-101 border (`cv2.blur`).
    Blur {
        /// Half window.
        radius: usize,
        /// Along y or x.
        vertical: bool,
    },
    /// `y = 1` where `x > t`, else `x`.
    Threshold(f32),
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    h: u32,
    w: u32,
    axis: u32,
    radius: u32,
    op: u32,
    t: f32,
    _pad: u32,
}

impl Morph {
    /// Binds `x` to `y` (same shape; every channel plane filtered independently).
    pub fn bind(self, ctx: &Context, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
        let s = x.shape();
        expect_shape("morph", "output", y, s)?;
        let (op, radius, vertical, t) = match self {
            Morph::Dilate { radius, vertical } => (0, radius, vertical, 0.0),
            Morph::Erode { radius, vertical } => (1, radius, vertical, 0.0),
            Morph::Blur { radius, vertical } => (2, radius, vertical, 0.0),
            Morph::Threshold(t) => (3, 0, false, t),
        };
        if op == 2 {
            positive("blur", "radius", radius)?;
            let n = if vertical { s.h } else { s.w };
            if radius >= n {
                return Err(Error::param(
                    "blur",
                    format!("radius {radius} needs a side over {radius}, got {n}"),
                ));
            }
        }
        let params = Params {
            rows: s.rows() as u32,
            h: s.h as u32,
            w: s.w as u32,
            axis: vertical as u32,
            radius: radius as u32,
            op,
            t,
            _pad: 0,
        };
        Ok(ctx.dispatch(
            format!("morph {self:?} {}x{}", s.h, s.w),
            ctx.pipeline("morph", "filter1d", &[])?,
            &[x.into(), y.into()],
            &params,
            grid((s.rows() * s.row_stride() / 4) as u64, WORKGROUP),
            DispatchStats {
                flops: (s.numel() * (2 * radius + 1)) as u64,
                bytes: 2 * half_bytes(s),
            },
        ))
    }
}
