//! `shaders/reduce.wgsl`: L2 normalisation of vector rows and softmax over channels.

use super::{expect_shape, half_bytes};
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    plane: u32,
    eps: f32,
}

/// Divides each row of `x` `[N, 1, 1, F]` by `max(‖row‖₂, eps)` into `y` (PyTorch
/// `F.normalize(x, dim=1)`, eps 1e-12 there).
pub fn l2_normalize(ctx: &Context, x: &Tensor, eps: f32, y: &Tensor) -> Result<Dispatch> {
    let s = x.shape();
    if s.c != 1 || s.h != 1 {
        return Err(Error::shape(
            "l2 normalize",
            format!("expected a vector batch [N, 1, 1, F], found {:?}", s.dims()),
        ));
    }
    if eps.is_nan() || eps <= 0.0 {
        return Err(Error::param(
            "l2 normalize",
            format!("eps {eps} must be positive"),
        ));
    }
    expect_shape("l2 normalize", "output", y, s)?;
    let params = Params {
        n: s.n as u32,
        c: 1,
        plane: s.w as u32,
        eps,
    };
    Ok(ctx.dispatch(
        format!("l2_normalize {}", s.w),
        ctx.pipeline("reduce", "l2_normalize", &[])?,
        &[x.into(), y.into()],
        &params,
        grid(s.n as u64, 1),
        DispatchStats {
            flops: 3 * s.numel() as u64,
            bytes: 3 * half_bytes(s),
        },
    ))
}

/// Softmax over the channels of `x` `[N, C, H, W]` at every position, into `y`.
pub fn softmax_channels(ctx: &Context, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
    let s = x.shape();
    expect_shape("softmax", "output", y, s)?;
    let params = Params {
        n: s.n as u32,
        c: s.c as u32,
        plane: s.plane() as u32,
        eps: 0.0,
    };
    Ok(ctx.dispatch(
        format!("softmax c{} {}x{}", s.c, s.h, s.w),
        ctx.pipeline("reduce", "softmax_channels", &[])?,
        &[x.into(), y.into()],
        &params,
        grid((s.n * s.row_stride() / 4) as u64, WORKGROUP),
        DispatchStats {
            flops: 5 * s.numel() as u64,
            bytes: 4 * half_bytes(s),
        },
    ))
}
