//! `shaders/resample.wgsl`: bilinear (align_corners true or false, any output size), nearest, and
//! pixel shuffle, with PyTorch `F.interpolate` / `F.pixel_shuffle` semantics.

use super::{expect_shape, half_bytes, positive};
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

/// A resampling mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// Bilinear to the output's size; `align_corners` as in PyTorch.
    Bilinear {
        /// Corner pixels' centres map onto each other (true) or pixel edges do (false).
        align_corners: bool,
    },
    /// PyTorch `mode='nearest'`.
    Nearest,
    /// `[N, C·r², H, W] → [N, C, H·r, W·r]`.
    PixelShuffle(usize),
}

/// The uniform of `shaders/resample.wgsl`, shared with its backward (`resample_grad.wgsl`), which
/// must reproduce the forward's f32 coordinates bit for bit.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    align: u32,
    r: u32,
    sy: f32,
    sx: f32,
    mode: u32,
    _pad: u32,
}

impl Resample {
    /// Output shape of a pixel shuffle, or of an interpolation to `(h, w)`.
    pub fn output_shape(self, x: Shape, size: (usize, usize)) -> Result<Shape> {
        match self {
            Resample::PixelShuffle(r) => {
                positive("pixel shuffle", "factor", r)?;
                if !x.c.is_multiple_of(r * r) {
                    return Err(Error::shape(
                        "pixel shuffle",
                        format!("{} channels are not divisible by r² = {}", x.c, r * r),
                    ));
                }
                Ok(Shape::new(x.n, x.c / (r * r), x.h * r, x.w * r))
            }
            _ => {
                positive("resample", "output height", size.0)?;
                positive("resample", "output width", size.1)?;
                Ok(Shape::new(x.n, x.c, size.0, size.1))
            }
        }
    }

    /// The uniform for input `xs` and output `ys`: sizes, and the per-axis scale of the source
    /// coordinate in f32 (`(i − 1)/(o − 1)` with align_corners, `i/o` otherwise).
    pub(crate) fn params(self, xs: Shape, ys: Shape) -> Params {
        let axis = |i: usize, o: usize| -> f32 {
            match self {
                Resample::Bilinear {
                    align_corners: true,
                } => {
                    if o > 1 {
                        (i - 1) as f32 / (o - 1) as f32
                    } else {
                        0.0
                    }
                }
                _ => i as f32 / o as f32,
            }
        };
        let (r, mode) = match self {
            Resample::Bilinear { .. } => (1, 0),
            Resample::Nearest => (1, 1),
            Resample::PixelShuffle(r) => (r, 2),
        };
        Params {
            n: ys.n as u32,
            c: ys.c as u32,
            h: xs.h as u32,
            w: xs.w as u32,
            ho: ys.h as u32,
            wo: ys.w as u32,
            align: matches!(
                self,
                Resample::Bilinear {
                    align_corners: true
                }
            ) as u32,
            r: r as u32,
            sy: axis(xs.h, ys.h),
            sx: axis(xs.w, ys.w),
            mode,
            _pad: 0,
        }
    }

    /// Binds input and output; interpolation takes its target size from `y`.
    pub fn bind(self, ctx: &Context, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
        let xs = x.shape();
        let ys = y.shape();
        let want = self.output_shape(xs, (ys.h, ys.w))?;
        expect_shape("resample", "output", y, want)?;
        let entry = match self {
            Resample::Bilinear { .. } => "bilinear",
            Resample::Nearest => "nearest",
            Resample::PixelShuffle(_) => "pixel_shuffle",
        };
        let params = self.params(xs, ys);
        let flops = if entry == "bilinear" {
            6 * ys.numel() as u64
        } else {
            0
        };
        Ok(ctx.dispatch(
            format!("{entry} {}x{}->{}x{} c{}", xs.h, xs.w, ys.h, ys.w, ys.c),
            ctx.pipeline("resample", "resample", &[])?,
            &[x.into(), y.into()],
            &params,
            grid((ys.rows() * ys.row_stride() / 4) as u64, WORKGROUP),
            DispatchStats {
                flops,
                bytes: half_bytes(xs) + half_bytes(ys),
            },
        ))
    }
}
