//! `shaders/fusion.wgsl`: attention fusion `m ⊙ a + (1 − m) ⊙ b`, one mask channel broadcast over
//! the feature channels, raw or through a sigmoid.

use super::{expect_shape, half_bytes};
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    plane: u32,
    sigmoid: u32,
}

/// Binds `a`, `b` (`[N, C, H, W]`), mask `m` (`[N, 1, H, W]`) and output `y` (as `a`); with
/// `sigmoid` the mask is passed through a sigmoid first.
pub fn fusion(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    m: &Tensor,
    sigmoid: bool,
    y: &Tensor,
) -> Result<Dispatch> {
    let s = a.shape();
    expect_shape("fusion", "b", b, s)?;
    expect_shape("fusion", "output", y, s)?;
    let ms = m.shape();
    if ms != Shape::new(s.n, 1, s.h, s.w) {
        return Err(Error::shape(
            "fusion",
            format!(
                "mask expected [{}, 1, {}, {}], found {:?}",
                s.n,
                s.h,
                s.w,
                ms.dims()
            ),
        ));
    }
    let params = Params {
        n: s.n as u32,
        c: s.c as u32,
        plane: s.plane() as u32,
        sigmoid: sigmoid as u32,
    };
    Ok(ctx.dispatch(
        format!("fusion c{} {}x{}", s.c, s.h, s.w),
        ctx.pipeline("fusion", "fusion", &[])?,
        &[a.into(), b.into(), m.into(), y.into()],
        &params,
        grid((s.rows() * s.row_stride() / 4) as u64, WORKGROUP),
        DispatchStats {
            flops: 3 * s.numel() as u64,
            bytes: 3 * half_bytes(s) + half_bytes(ms),
        },
    ))
}
