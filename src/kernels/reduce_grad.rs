//! `shaders/reduce_grad.wgsl`: backward of [`l2_normalize`](super::reduce::l2_normalize) and
//! [`softmax_channels`](super::reduce::softmax_channels) for the trainer. Both overwrite dX.

use super::{expect_shape, half_bytes};
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    plane: u32,
    eps: f32,
}

/// Backward of `y = x / max(‖x‖₂, eps)` over each row of `x` `[N, 1, 1, F]` (the forward input,
/// re-read so that ‖x‖ and y are f32-exact), from `dy` (same shape) into `dx`:
/// `dx = (dy − y·(y·dy)) / ‖x‖` where `‖x‖ > eps`, `dx = dy / eps` where the norm is clamped.
/// One workgroup per row; the row sums use a fixed tree (deterministic).
pub fn l2_normalize_grad(
    ctx: &Context,
    x: &Tensor,
    dy: &Tensor,
    eps: f32,
    dx: &Tensor,
) -> Result<Dispatch> {
    let s = x.shape();
    if s.c != 1 || s.h != 1 {
        return Err(Error::shape(
            "l2 normalize grad",
            format!("expected a vector batch [N, 1, 1, F], found {:?}", s.dims()),
        ));
    }
    if eps.is_nan() || eps <= 0.0 {
        return Err(Error::param(
            "l2 normalize grad",
            format!("eps {eps} must be positive"),
        ));
    }
    expect_shape("l2 normalize grad", "dY", dy, s)?;
    expect_shape("l2 normalize grad", "dX", dx, s)?;
    let params = Params {
        n: s.n as u32,
        c: 1,
        plane: s.w as u32,
        eps,
    };
    Ok(ctx.dispatch(
        format!("l2_normalize grad {}", s.w),
        ctx.pipeline("reduce_grad", "l2_normalize_grad", &[])?,
        &[Binding::from(x), Binding::from(dy), Binding::from(dx)],
        &params,
        grid(s.n as u64, 1),
        DispatchStats {
            flops: 8 * s.numel() as u64,
            bytes: 3 * half_bytes(s),
        },
    ))
}

/// Backward of the softmax over channels: from the forward output `y` `[N, C, H, W]` and `dy`
/// (same shape) into `dx`: `dx = y·(dy − Σ_c y·dy)` at every position.
pub fn softmax_channels_grad(
    ctx: &Context,
    y: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
) -> Result<Dispatch> {
    let s = y.shape();
    expect_shape("softmax grad", "dY", dy, s)?;
    expect_shape("softmax grad", "dX", dx, s)?;
    let params = Params {
        n: s.n as u32,
        c: s.c as u32,
        plane: s.plane() as u32,
        eps: 0.0,
    };
    Ok(ctx.dispatch(
        format!("softmax grad c{} {}x{}", s.c, s.h, s.w),
        ctx.pipeline("reduce_grad", "softmax_channels_grad", &[])?,
        &[Binding::from(y), Binding::from(dy), Binding::from(dx)],
        &params,
        grid((s.n * s.row_stride() / 4) as u64, WORKGROUP),
        DispatchStats {
            flops: 4 * s.numel() as u64,
            bytes: 3 * half_bytes(s),
        },
    ))
}
