//! `shaders/fusion_grad.wgsl`: backward of the attention fusion
//! [`fusion`](super::fusion::fusion) `y = m'⊙a + (1 − m')⊙b`, `m' = m` or `σ(m)`, the mask
//! `[N, 1, H, W]` broadcast over the channels.

use super::{expect_shape, half_bytes};
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    plane: u32,
    sigmoid: u32,
    has_db: u32,
    _pad: [u32; 3],
}

/// Binds the backward of `fusion(a, b, m, sigmoid)`: from the forward inputs `a`, `b`
/// (`[N, C, H, W]`), the mask `m` (`[N, 1, H, W]`, the raw values the forward read: logits when
/// `sigmoid`) and `dy` (`a`'s shape), writes
/// - `da = dy·m'` (`a`'s shape),
/// - `dm = Σ_c dy·(a − b)`, times `σ(m)(1 − σ(m))` when `sigmoid` (`m`'s shape),
/// - and, when given, `db = dy·(1 − m')` (`a`'s shape).
///
/// One dispatch; every output is overwritten. The channel sum of `dm` is done by one invocation per
/// mask quad in channel order, in f32: deterministic.
#[allow(clippy::too_many_arguments)]
pub fn fusion_backward(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    m: &Tensor,
    sigmoid: bool,
    dy: &Tensor,
    da: &Tensor,
    dm: &Tensor,
    db: Option<&Tensor>,
) -> Result<Dispatch> {
    let op = "fusion backward";
    let s = a.shape();
    expect_shape(op, "b", b, s)?;
    expect_shape(op, "dy", dy, s)?;
    expect_shape(op, "da", da, s)?;
    let ms = m.shape();
    if ms != Shape::new(s.n, 1, s.h, s.w) {
        return Err(Error::shape(
            op,
            format!(
                "mask expected [{}, 1, {}, {}], found {:?}",
                s.n,
                s.h,
                s.w,
                ms.dims()
            ),
        ));
    }
    expect_shape(op, "dm", dm, ms)?;
    let db_bind = match db {
        Some(t) => {
            expect_shape(op, "db", t, s)?;
            Binding::from(t)
        }
        // Never written when absent.
        None => Binding::from(ctx.dummy()),
    };
    let params = Params {
        n: s.n as u32,
        c: s.c as u32,
        plane: s.plane() as u32,
        sigmoid: sigmoid as u32,
        has_db: db.is_some() as u32,
        _pad: [0; 3],
    };
    let outputs = 1 + db.is_some() as u64;
    Ok(ctx.dispatch(
        format!("dfusion c{} {}x{}", s.c, s.h, s.w),
        ctx.pipeline("fusion_grad", "fusion_grad", &[])?,
        &[
            a.into(),
            b.into(),
            m.into(),
            dy.into(),
            da.into(),
            db_bind,
            dm.into(),
        ],
        &params,
        grid((ms.rows() * ms.row_stride() / 4) as u64, WORKGROUP),
        DispatchStats {
            flops: (3 + outputs) * s.numel() as u64,
            bytes: (3 + outputs) * half_bytes(s) + 2 * half_bytes(ms),
        },
    ))
}
