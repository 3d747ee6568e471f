//! The swap stage of the per-frame path, all on the GPU in one plan: warp the face into the
//! 224 crop, run the IDN, post-process its mask as MobileFaceSwap's `dealign` does, warp the result
//! and mask back into the frame, composite.
//!
//! ```text
//! frame ──warp(M⁻¹)──► crop 224 ──IDN──► swapped, mask
//! mask ─► threshold 0.001 ─► dilate 11×11 ─► erode 11×11 ×2 ─► blur 7×7 ─► × border fade
//! swapped, mask ──warp(M)──► frame size ──► out = gen·m + frame·(1 − m)
//! ```
//! The matrices are the only per-frame input (a queue write each); nothing is allocated or read
//! back. Faces are pasted one after another (`faces` stages chained through the frame).

use super::align::{invert, Affine};
use crate::error::Result;
use crate::gpu::{Context, Plan};
use crate::kernels::eltwise::{Eltwise, EltwiseOp};
use crate::kernels::fusion::fusion;
use crate::kernels::morph::Morph;
use crate::kernels::warp::Warp;
use crate::kernels::Activation;
use crate::models::mobilefaceswap::{Identity, Idn, SIZE};
use crate::tensor::{Shape, Tensor};
use crate::weights::Weights;

/// Official paste-back constants (mobilefaceswap.md §4.5).
pub mod consts {
    /// Mask values above this become 1.
    pub const THRESHOLD: f32 = 0.001;
    /// Dilation window (11×11) half size.
    pub const DILATE: usize = 5;
    /// Erosion window half size, applied twice.
    pub const ERODE: usize = 5;
    /// Box blur window (7×7) half size.
    pub const BLUR: usize = 3;
    /// Border fade: ones inside `[10, 214)`, zeros outside, box-blurred 11×11.
    pub const FADE_MARGIN: usize = 10;
    /// Border fade blur half size.
    pub const FADE_BLUR: usize = 5;
}

/// The border fade of the paste-back mask, computed once on the host (`cv2.blur` of the 0/1
/// border image, reflect-101 border), `[SIZE × SIZE]`.
pub fn border_fade() -> Vec<f32> {
    let n = SIZE;
    let m = consts::FADE_MARGIN;
    let r = consts::FADE_BLUR as i64;
    let inside = |i: i64| -> f64 {
        if i >= m as i64 && i < (n - m) as i64 {
            1.0
        } else {
            0.0
        }
    };
    let refl = |i: i64| -> i64 {
        let mut j = i.abs();
        if j >= n as i64 {
            j = 2 * n as i64 - 2 - j;
        }
        j
    };
    // Separable: the 0/1 image is a product of row and column indicators, and so is its blur.
    let blur1: Vec<f64> = (0..n as i64)
        .map(|i| (-r..=r).map(|k| inside(refl(i + k))).sum::<f64>() / (2 * r + 1) as f64)
        .collect();
    let mut out = Vec::with_capacity(n * n);
    for y in 0..n {
        for x in 0..n {
            out.push((blur1[y] * blur1[x]) as f32);
        }
    }
    out
}

/// Choices of the swap stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PasteOptions {
    /// Shift the swapped face's colours to the target's under the network's mask (faceswap's
    /// `avg-color`) before pasting.
    pub colour_match: bool,
}

/// One face's swap into a frame: from `frame` to `out` (which may be the next face's `frame`).
pub struct PasteStage {
    warp_in: Warp,
    warp_gen: Warp,
    warp_mask: Warp,
    /// The per-frame network for this face.
    pub idn: Idn,
    /// Everything this face records, in order.
    pub plan: Plan,
}

impl PasteStage {
    /// Builds the stage for frames of `frame`'s size, writing the composite to `out`.
    pub fn new(
        ctx: &Context,
        id: &Identity,
        statics: &Weights,
        frame: &Tensor,
        out: &Tensor,
    ) -> Result<Self> {
        Self::with_options(ctx, id, statics, frame, out, PasteOptions::default())
    }

    /// [`PasteStage::new`] with options.
    pub fn with_options(
        ctx: &Context,
        id: &Identity,
        statics: &Weights,
        frame: &Tensor,
        out: &Tensor,
        options: PasteOptions,
    ) -> Result<Self> {
        let f = frame.shape();
        let idn = Idn::new(ctx, id, statics, 1)?;
        let warp_in = Warp::new(ctx, frame, &idn.target)?;
        let mut plan = Plan::default();
        plan.push(warp_in.dispatch().clone());
        plan.extend(idn.plan.clone());
        // Mask post-processing, ping-ponging two 224² maps.
        let ms = Shape::new(1, 1, SIZE, SIZE);
        let (a, b) = (
            Tensor::new(ctx, ms, "mask a")?,
            Tensor::new(ctx, ms, "mask b")?,
        );
        let mut steps = vec![Morph::Threshold(consts::THRESHOLD)];
        steps.extend([false, true].map(|v| Morph::Dilate {
            radius: consts::DILATE,
            vertical: v,
        }));
        for _ in 0..2 {
            steps.extend([false, true].map(|v| Morph::Erode {
                radius: consts::ERODE,
                vertical: v,
            }));
        }
        steps.extend([false, true].map(|v| Morph::Blur {
            radius: consts::BLUR,
            vertical: v,
        }));
        let mut src = idn.mask.clone();
        for (i, step) in steps.iter().enumerate() {
            let dst = if i % 2 == 0 { &a } else { &b };
            plan.push(step.bind(ctx, &src, dst)?);
            src = dst.clone();
        }
        let fade = Tensor::from_f32(ctx, ms, &border_fade(), "border fade")?;
        let mask = Tensor::new(ctx, ms, "paste mask")?;
        plan.push(EltwiseOp::new(Eltwise::Mul, Activation::None)?.bind(
            ctx,
            &src,
            Some(&fade),
            None,
            &mask,
        )?);
        // Back into the frame.
        let gen_full = Tensor::new(ctx, f, "swapped in frame")?;
        let mask_full = Tensor::new(ctx, Shape::new(f.n, 1, f.h, f.w), "mask in frame")?;
        let face = if options.colour_match {
            let matched = Tensor::new(ctx, idn.swapped.shape(), "colour matched")?;
            plan.push(crate::kernels::colour::mean_shift(
                ctx,
                &idn.target,
                &idn.swapped,
                &idn.mask,
                &matched,
            )?);
            matched
        } else {
            idn.swapped.clone()
        };
        let warp_gen = Warp::new(ctx, &face, &gen_full)?;
        let warp_mask = Warp::new(ctx, &mask, &mask_full)?;
        plan.push(warp_gen.dispatch().clone());
        plan.push(warp_mask.dispatch().clone());
        plan.push(fusion(ctx, &gen_full, frame, &mask_full, false, out)?);
        Ok(PasteStage {
            warp_in,
            warp_gen,
            warp_mask,
            idn,
            plan,
        })
    }

    /// Sets this frame's alignment: `m` maps frame pixels to the 224 crop (a fit of the face's 5
    /// landmarks to the template).
    pub fn set_alignment(&self, ctx: &Context, m: &Affine) -> Result<()> {
        self.warp_in.set(ctx, &[(invert(m)?, 0)])?;
        self.warp_gen.set(ctx, &[(*m, 0)])?;
        self.warp_mask.set(ctx, &[(*m, 0)])
    }
}
