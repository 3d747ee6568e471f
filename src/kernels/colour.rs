//! `shaders/colour.wgsl`: colour matching of a swapped face crop to the target crop under a mask
//! (faceswap's `avg-color`: the mask-weighted mean difference per channel is added).

use super::{expect_shape, half_bytes};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, DispatchStats};
use crate::tensor::{Shape, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    plane: u32,
    _pad: [u32; 2],
}

/// `dst = clamp(src + Σ m·(target − src) / Σ m, 0, 1)` per sample and channel; `target`, `src`,
/// `dst` are `[N, 3, H, W]`, `mask` `[N, 1, H, W]`. A sample whose mask is empty is copied.
pub fn mean_shift(
    ctx: &Context,
    target: &Tensor,
    src: &Tensor,
    mask: &Tensor,
    dst: &Tensor,
) -> Result<Dispatch> {
    let s = src.shape();
    if s.c != 3 {
        return Err(Error::shape(
            "colour match",
            format!("expected RGB crops, found {} channels", s.c),
        ));
    }
    expect_shape("colour match", "target", target, s)?;
    expect_shape("colour match", "output", dst, s)?;
    expect_shape("colour match", "mask", mask, Shape::new(s.n, 1, s.h, s.w))?;
    let params = Params {
        n: s.n as u32,
        plane: s.plane() as u32,
        _pad: [0; 2],
    };
    Ok(ctx.dispatch(
        format!("colour match {}x{} n{}", s.h, s.w, s.n),
        ctx.pipeline("colour", "mean_shift", &[])?,
        &[target.into(), src.into(), mask.into(), dst.into()],
        &params,
        [s.n as u32, 1, 1],
        DispatchStats {
            flops: 8 * s.numel() as u64,
            bytes: 4 * half_bytes(s),
        },
    ))
}
