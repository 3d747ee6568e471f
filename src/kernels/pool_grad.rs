//! `shaders/pool_grad.wgsl`: backward of [`Pool`] for the trainer.
//!
//! [`bind`] builds the dX = ∂L/∂X dispatch of every pooling mode the forward supports, as a gather:
//! each invocation owns whole quads of dX and sums, in a fixed order, the gradient of every window
//! that covers them (the covering windows are solved per axis from kernel, stride and padding, so
//! the work is proportional to the taps). No atomics: results are bit-identical from run to run.
//! dX is overwritten, never accumulated.
//!
//! - [`Pool::Max`]: each window's gradient goes to the element its max picked, recomputed from the
//!   forward input `x`. **Tie rule** (PyTorch's): the *first* maximum of the window in raster order
//!   (window row, then column), among in-bounds elements only; padding never takes part. NaN inputs
//!   give unspecified results (as the forward's max does).
//! - [`Pool::Avg`]: each window sends dY divided by the forward's divisor to each of its in-bounds
//!   elements: the window clipped to the padded input with `count_include_pad` (PyTorch), the
//!   in-bounds count without.
//! - [`Pool::GlobalAvg`]: dX\[n, c, ·\] = dY\[n, c\] / (H·W).

use super::pool::Pool;
use super::{expect_shape, half_bytes};
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::Tensor;

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

/// Binds the backward of `pool`: dY (the forward output's shape) and dX (the forward input's shape,
/// overwritten, pad lanes with zeros). `x`, the forward's input, is required by [`Pool::Max`] (the
/// argmax is recomputed from it) and ignored by the average modes (checked against dX's shape when
/// given).
pub fn bind(
    ctx: &Context,
    pool: Pool,
    x: Option<&Tensor>,
    dy: &Tensor,
    dx: &Tensor,
) -> Result<Dispatch> {
    let xs = dx.shape();
    let ys = pool.output_shape(xs)?;
    expect_shape("pool_grad", "dY", dy, ys)?;
    if let Some(x) = x {
        expect_shape("pool_grad", "x", x, xs)?;
    }
    let (k, s, pad, mode) = match pool {
        Pool::Max { k, stride, pad } => (k, stride, pad, 0),
        Pool::Avg {
            k,
            stride,
            pad,
            count_include_pad,
        } => (k, stride, pad, if count_include_pad { 1 } else { 2 }),
        Pool::GlobalAvg => (0, 0, 0, 0),
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
    let (entry, flops, bytes) = match pool {
        // Every window is scanned (k² comparisons) once per in-bounds element it covers.
        Pool::Max { .. } => (
            "max_grad",
            (ys.numel() * k * k * k * k) as u64,
            2 * half_bytes(xs) + half_bytes(ys),
        ),
        // A division and an add per (window, element) pair.
        Pool::Avg { .. } => (
            "avg_grad",
            (2 * ys.numel() * k * k) as u64,
            half_bytes(xs) + half_bytes(ys),
        ),
        Pool::GlobalAvg => (
            "global_avg_grad",
            xs.numel() as u64,
            half_bytes(xs) + half_bytes(ys),
        ),
    };
    let xb = match (pool, x) {
        (Pool::Max { .. }, Some(x)) => Some(Binding::from(x)),
        (Pool::Max { .. }, None) => {
            return Err(Error::param(
                "pool_grad",
                "max pooling needs the forward input x to find each window's maximum",
            ))
        }
        _ => None,
    };
    let (dyb, dxb) = (Binding::from(dy), Binding::from(dx));
    let mut bindings = vec![(1, &dyb), (2, &dxb)];
    if let Some(b) = &xb {
        bindings.insert(0, (0, b));
    }
    Ok(ctx.dispatch_at(
        format!("{entry} k{k}s{s} c{} {}x{}", xs.c, xs.h, xs.w),
        ctx.pipeline("pool_grad", entry, &[])?,
        &bindings,
        (3, &params),
        grid((xs.rows() * xs.row_stride() / 4) as u64, WORKGROUP),
        DispatchStats { flops, bytes },
    ))
}
