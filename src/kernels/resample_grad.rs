//! `shaders/resample_grad.wgsl`: backward of [`Resample`] for the trainer.
//!
//! [`bind`] builds the dX = ∂L/∂X dispatch of any forward mode from dY: bilinear (align_corners
//! true or false, any input and output sizes, up- or downsampling, PyTorch's index clamping at the
//! borders), nearest, and pixel shuffle (whose adjoint is the pixel unshuffle). It is the exact
//! adjoint of the forward kernel's sampling, as a gather: each invocation owns whole quads of dX
//! and sums, in a fixed order, every output tap that read them with the weight the forward used,
//! recomputed with the forward's own f32 expressions and scales. For each dX coordinate the range of
//! output coordinates that can read it is solved per axis (analytically, then checked against the
//! forward's index computation so rounding never drops a tap), so the work is proportional to the
//! taps, not to the output. No atomics: results are bit-identical from run to run. dX is
//! overwritten, never accumulated.

use super::resample::Resample;
use super::{expect_shape, half_bytes};
use crate::error::Result;
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::Tensor;

/// Binds dY (the forward output's shape) and dX (the forward input's shape) into the backward of
/// `mode`: dX = ∂L/∂X given dY = ∂L/∂Y for `Y = mode(X)`. Interpolation takes both sizes from the
/// tensors; a pixel shuffle by `r` needs dX `[N, C·r², H, W]` for dY `[N, C, H·r, W·r]`. dX is
/// overwritten (pad lanes included, with zeros).
pub fn bind(ctx: &Context, mode: Resample, dy: &Tensor, dx: &Tensor) -> Result<Dispatch> {
    let xs = dx.shape();
    let ys = dy.shape();
    let want = mode.output_shape(xs, (ys.h, ys.w))?;
    expect_shape("resample_grad", "dY", dy, want)?;
    let entry = match mode {
        Resample::Bilinear { .. } => "bilinear_grad",
        Resample::Nearest => "nearest_grad",
        Resample::PixelShuffle(_) => "shuffle_grad",
    };
    // The forward's own uniform: the same f32 scales, so the same sample coordinates.
    let params = mode.params(xs, ys);
    // Bilinear: every output sample sends weight products to up to four inputs (a multiply by each
    // axis weight and an add); nearest: one add per output sample; the shuffle only moves data.
    let flops = match mode {
        Resample::Bilinear { .. } => 12 * ys.numel() as u64,
        Resample::Nearest => ys.numel() as u64,
        Resample::PixelShuffle(_) => 0,
    };
    Ok(ctx.dispatch(
        format!("{entry} {}x{}<-{}x{} c{}", xs.h, xs.w, ys.h, ys.w, xs.c),
        ctx.pipeline("resample_grad", entry, &[])?,
        &[Binding::from(dy), Binding::from(dx)],
        &params,
        grid((xs.rows() * xs.row_stride() / 4) as u64, WORKGROUP),
        DispatchStats {
            flops,
            bytes: half_bytes(xs) + half_bytes(ys),
        },
    ))
}
