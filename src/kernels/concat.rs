//! `shaders/concat.wgsl`: channel concat by writing each part into its channel offset of the
//! destination (no separate concat pass over the whole output), and its adjoint, channel split.

use super::half_bytes;
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cs: u32,
    cd: u32,
    offset: u32,
    qpr: u32,
    _pad: [u32; 3],
}

/// Copies `src` `[N, Cs, H, W]` into channels `offset..offset + Cs` of `dst` `[N, Cd, H, W]`.
pub fn copy_channels(ctx: &Context, src: &Tensor, dst: &Tensor, offset: usize) -> Result<Dispatch> {
    let (s, d) = (src.shape(), dst.shape());
    if s.n != d.n || s.h != d.h || s.w != d.w || offset + s.c > d.c {
        return Err(Error::shape(
            "concat",
            format!(
                "cannot place {:?} at channel {offset} of {:?}",
                s.dims(),
                d.dims()
            ),
        ));
    }
    let params = Params {
        n: s.n as u32,
        cs: s.c as u32,
        cd: d.c as u32,
        offset: offset as u32,
        qpr: (s.row_stride() / 4) as u32,
        _pad: [0; 3],
    };
    Ok(ctx.dispatch(
        format!("concat c{}@{offset} of {}", s.c, d.c),
        ctx.pipeline("concat", "copy_channels", &[])?,
        &[src.into(), dst.into()],
        &params,
        grid((s.rows() * s.row_stride() / 4) as u64, WORKGROUP),
        DispatchStats {
            flops: 0,
            bytes: 2 * half_bytes(s),
        },
    ))
}

/// Copies channels `offset..offset + Cd` of the wide `src` `[N, Cs, H, W]` into `dst`
/// `[N, Cd, H, W]`: the adjoint of [`copy_channels`] (the backward of a channel concat, one
/// dispatch per part). `dst` is overwritten.
pub fn split_channels(
    ctx: &Context,
    src: &Tensor,
    dst: &Tensor,
    offset: usize,
) -> Result<Dispatch> {
    let (s, d) = (src.shape(), dst.shape());
    if s.n != d.n || s.h != d.h || s.w != d.w || offset + d.c > s.c {
        return Err(Error::shape(
            "split",
            format!(
                "cannot take {:?} from channel {offset} of {:?}",
                d.dims(),
                s.dims()
            ),
        ));
    }
    // The shader's `cs` is the narrow tensor's channel count, `cd` the wide one's, as in the copy.
    let params = Params {
        n: d.n as u32,
        cs: d.c as u32,
        cd: s.c as u32,
        offset: offset as u32,
        qpr: (d.row_stride() / 4) as u32,
        _pad: [0; 3],
    };
    Ok(ctx.dispatch(
        format!("split c{}@{offset} of {}", d.c, s.c),
        ctx.pipeline("concat", "split_channels", &[])?,
        &[src.into(), dst.into()],
        &params,
        grid((d.rows() * d.row_stride() / 4) as u64, WORKGROUP),
        DispatchStats {
            flops: 0,
            bytes: 2 * half_bytes(d),
        },
    ))
}
