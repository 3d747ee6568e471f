//! The source side, once per source face (mobilefaceswap.md §4.3): align the source to the 224
//! template, resize to 112 (bilinear, half-pixel centres as `cv2.resize`), normalise with the ImageNet
//! mean and std, run ArcFace, and inject the embedding and feature map into the IDN's kernels.

use super::align::{arcface_template, invert, lstsq_affine};
use crate::error::Result;
use crate::gpu::{Context, Dispatch, Plan};
use crate::kernels::concat::copy_channels;
use crate::kernels::eltwise::{Eltwise, EltwiseOp};
use crate::kernels::resample::Resample;
use crate::kernels::warp::Warp;
use crate::kernels::Activation;
use crate::models::arcface::{ArcFace, INPUT};
use crate::models::mobilefaceswap::{Identity, Injection, SIZE};
use crate::tensor::{Shape, Tensor};
use crate::weights::Weights;

/// ImageNet mean of ArcFace's input normalisation.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet std.
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Computes a source identity from a frame tensor `[1, 3, H, W]` in [0, 1] and the face's 5
/// landmarks (eyes, nose, mouth corners) in that frame's pixels. Returns the identity and the
/// ArcFace embedding `[1, 1, 1, 512]` (for reports).
pub fn source_identity(
    ctx: &Context,
    arcface: &Weights,
    mobilefaceswap: &Weights,
    frame: &Tensor,
    landmarks5: &[[f64; 2]; 5],
) -> Result<(Identity, Tensor)> {
    let m = lstsq_affine(landmarks5, &arcface_template(SIZE))?;
    let crop = Tensor::new(ctx, Shape::new(1, 3, SIZE, SIZE), "source crop")?;
    let warp = Warp::new(ctx, frame, &crop)?;
    warp.set(ctx, &[(invert(&m)?, 0)])?;
    let small = Tensor::new(ctx, Shape::new(1, 3, INPUT, INPUT), "source 112")?;
    let net = ArcFace::new(ctx, arcface, 1)?;
    let inj = Injection::new(ctx, mobilefaceswap)?;
    let mut plan = Plan::default();
    plan.push(warp.dispatch().clone());
    plan.extend(arcface_input(ctx, &crop, &small, &net.input)?);
    plan.extend(net.plan.clone());
    plan.push(copy_channels(ctx, &net.embedding, &inj.embedding, 0)?);
    plan.push(copy_channels(ctx, &net.feature_map, &inj.feature_map, 0)?);
    plan.extend(inj.plan.clone());
    plan.run(ctx)?;
    ctx.wait()?;
    Ok((inj.identity, net.embedding))
}

/// ArcFace's input from 224² crops in [0, 1] (`[N, 3, 224, 224]`): bilinear to 112 (half-pixel
/// centres) into `small`, then the ImageNet normalisation into `input`. Two dispatches.
pub fn arcface_input(
    ctx: &Context,
    crops: &Tensor,
    small: &Tensor,
    input: &Tensor,
) -> Result<Vec<Dispatch>> {
    let resize = Resample::Bilinear {
        align_corners: false,
    }
    .bind(ctx, crops, small)?;
    let (scale, shift) = normalisation();
    let normalise = EltwiseOp::new(Eltwise::Affine { scale, shift }, Activation::None)?;
    Ok(vec![resize, normalise.bind(ctx, small, None, None, input)?])
}

/// The ImageNet normalisation as a per-channel affine `x·scale + shift` on [0, 1] values.
pub fn normalisation() -> (Vec<f32>, Vec<f32>) {
    (
        STD.iter().map(|s| 1.0 / s).collect(),
        MEAN.iter().zip(STD).map(|(m, s)| -m / s).collect(),
    )
}
