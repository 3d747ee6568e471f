//! MobileFaceNet-512 (spec mobilefsgan.md §3.1): MobileFSGAN's identity model, TreB1eN's
//! `MobileFaceNet(512)` with RGB input (`params/RGB_model_mobilefacenet.pth`), official key names.
//!
//! ```text
//! conv1       conv3×3/s2 p1 3→64 · BN · PReLU                                  112 → 56
//! conv2_dw    depthwise 3×3 · BN · PReLU                                         56
//! conv_23     1×1 64→128 · BN · PReLU → dw 3×3/s2 · BN · PReLU → 1×1 128→64 · BN       → 28
//! conv_3      4 × (x + Depth_Wise 64 →128→ 64, stride 1)
//! conv_34     64→256 → dw/s2 → 128                                                       → 14
//! conv_4      6 × (x + Depth_Wise 128 →256→ 128)
//! conv_45     128→512 → dw/s2 → 128                                                      → 7
//! conv_5      2 × (x + Depth_Wise 128 →256→ 128)
//! conv_6_sep  1×1 128→512 · BN · PReLU;  conv_6_dw  depthwise 7×7 p0 · BN            → 1
//! head        Linear 512→512 (no bias) · BatchNorm1d → x / ‖x‖₂ → id_embedding
//! ```
//! Every batch norm and PReLU (one slope per channel) rides in its convolution's epilogue, each
//! residual add in its project convolution's: 51 dispatches per run, whatever the batch.
//!
//! **Input** ([`MobileFaceNet512::input`]): `[N, 3, 112, 112]` RGB in [−1, 1]. MobileFSGAN computes
//! it from its 256 crops with [`CropResize`] (rows/cols 26..230, bilinear align_corners=True to 112;
//! 128 → 13..115, 64 → 7..57; spec §3.1) on the GPU.

use super::builder::Builder;
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, Plan};
use crate::kernels::conv::ConvSpec;
use crate::kernels::pointwise::Pointwise;
use crate::kernels::reduce::l2_normalize;
use crate::kernels::warp::Warp;
use crate::kernels::{Activation, Epilogue, Residual};
use crate::tensor::{Shape, Tensor};
use crate::weights::{HostTensor, Manifest, Weights};

/// Manifest and `eval` name.
pub const MODEL: &str = "mobilefacenet";
/// Input side.
pub const INPUT: usize = 112;
/// Embedding dimension.
pub const EMBEDDING: usize = 512;
/// The embedding crops of `helpers.get_embeddings` (spec §3.1): image side → rows/cols `[a, b)`.
pub const CROPS: [(usize, (usize, usize)); 3] = [(256, (26, 230)), (128, (13, 115)), (64, (7, 57))];

/// MobileFaceNet-512 on the GPU for a fixed batch: write faces into [`MobileFaceNet512::input`],
/// run [`MobileFaceNet512::plan`], read [`MobileFaceNet512::embedding`].
pub struct MobileFaceNet512 {
    /// `[N, 3, 112, 112]` RGB in [−1, 1].
    pub input: Tensor,
    /// `[N, 1, 1, 512]` the BatchNorm1d output (before L2 normalisation).
    pub raw: Tensor,
    /// `[N, 1, 1, 512]` L2-normalised.
    pub embedding: Tensor,
    /// The forward pass.
    pub plan: Plan,
}

/// conv (no bias) · BN · PReLU (per channel) under `{p}.conv`, `{p}.bn`, `{p}.prelu`.
fn conv_block(b: &mut Builder, x: &Tensor, p: &str, spec: ConvSpec) -> Result<Tensor> {
    let act = b.prelu(&format!("{p}.prelu"), spec.cout)?;
    b.conv(
        x,
        spec,
        &format!("{p}.conv"),
        false,
        Some(&format!("{p}.bn")),
        act,
    )
}

/// 1×1 expand · dw 3×3/s · 1×1 project · BN (+ x when `residual`).
fn depth_wise(
    b: &mut Builder,
    x: &Tensor,
    p: &str,
    cout: usize,
    groups: usize,
    stride: usize,
    residual: bool,
) -> Result<Tensor> {
    let cin = x.shape().c;
    let h = conv_block(
        b,
        x,
        &format!("{p}.conv"),
        ConvSpec::new(cin, groups, 1, 1, 0),
    )?;
    let h = conv_block(
        b,
        &h,
        &format!("{p}.conv_dw"),
        ConvSpec::depthwise(groups, 3, stride, 1),
    )?;
    let wt =
        b.w.get(&format!("{p}.project.conv.weight"), &[cout, groups, 1, 1])?;
    let epi = super::builder::with_bn(
        Epilogue::none(),
        &b.w.batch_norm(&format!("{p}.project.bn"), cout)?,
    )?;
    let project = Pointwise::new(b.ctx, groups, cout, wt, &epi)?;
    let y = b.tensor(project.output_shape(h.shape())?, p)?;
    let res = residual.then_some((x, Residual::AfterAct));
    b.plan.push(project.bind(b.ctx, &h, &y, res)?);
    Ok(y)
}

impl MobileFaceNet512 {
    /// Checks `w` against `weights/mobilefacenet.json` (every missing, unexpected or mis-shaped
    /// tensor named) and builds the plan for `n` faces.
    pub fn new(ctx: &Context, w: &Weights, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::param(MODEL, "batch must be at least 1"));
        }
        Manifest::builtin(MODEL)?.check(w)?;
        let mut b = Builder::new(ctx, w);
        let input = b.tensor(Shape::new(n, 3, INPUT, INPUT), "mobilefacenet input")?;
        let x = conv_block(&mut b, &input, "conv1", ConvSpec::new(3, 64, 3, 2, 1))?;
        let x = conv_block(&mut b, &x, "conv2_dw", ConvSpec::depthwise(64, 3, 1, 1))?;
        let mut x = depth_wise(&mut b, &x, "conv_23", 64, 128, 2, false)?;
        for i in 0..4 {
            x = depth_wise(&mut b, &x, &format!("conv_3.model.{i}"), 64, 128, 1, true)?;
        }
        x = depth_wise(&mut b, &x, "conv_34", 128, 256, 2, false)?;
        for i in 0..6 {
            x = depth_wise(&mut b, &x, &format!("conv_4.model.{i}"), 128, 256, 1, true)?;
        }
        x = depth_wise(&mut b, &x, "conv_45", 128, 512, 2, false)?;
        for i in 0..2 {
            x = depth_wise(&mut b, &x, &format!("conv_5.model.{i}"), 128, 256, 1, true)?;
        }
        let x = conv_block(&mut b, &x, "conv_6_sep", ConvSpec::new(128, 512, 1, 1, 0))?;
        let x = b.conv(
            &x,
            ConvSpec::depthwise(512, 7, 1, 0),
            "conv_6_dw.conv",
            false,
            Some("conv_6_dw.bn"),
            Activation::None,
        )?;
        let raw = b.linear(&x, "linear", EMBEDDING, Some("bn"), Activation::None)?;
        let embedding = b.tensor(Shape::vector(n, EMBEDDING), "id_embedding")?;
        // TreB1eN's l2_norm divides by the norm; 1e-12 only guards an all-zero vector.
        b.plan.push(l2_normalize(ctx, &raw, 1e-12, &embedding)?);
        Ok(MobileFaceNet512 {
            input,
            raw,
            embedding,
            plan: b.plan,
        })
    }

    /// Batch size the plan was built for.
    pub fn batch(&self) -> usize {
        self.input.shape().n
    }

    /// Uploads `faces` (`N·3·112·112` values in [−1, 1]), runs the plan and reads the `N·512` unit
    /// embeddings back (a convenience: waits for the GPU).
    pub fn embed(&self, ctx: &Context, faces: &[f32]) -> Result<Vec<f32>> {
        self.input.write_f32(ctx, faces)?;
        self.plan.run(ctx)?;
        self.embedding.to_f32(ctx)
    }
}

/// The embedding crop of MobileFSGAN on the GPU: from `x` `[N, C, S, S]` (S = 256, 128 or 64; a 112
/// image is copied) to `y` `[N, C, 112, 112]`, cropping rows/cols [`CROPS`] and resizing bilinearly
/// with align_corners=True (an affine warp: output pixel `i` samples `a + i·(b − 1 − a)/111`).
pub struct CropResize {
    warp: Warp,
}

impl CropResize {
    /// Binds `x` and `y`.
    pub fn new(ctx: &Context, x: &Tensor, y: &Tensor) -> Result<Self> {
        let (xs, ys) = (x.shape(), y.shape());
        if xs.h != xs.w {
            return Err(Error::shape(
                "crop resize",
                format!("input {:?} is not square", xs.dims()),
            ));
        }
        if ys != Shape::new(xs.n, xs.c, INPUT, INPUT) {
            return Err(Error::shape(
                "crop resize",
                format!(
                    "output {:?}, expected [{}, {}, {INPUT}, {INPUT}]",
                    ys.dims(),
                    xs.n,
                    xs.c
                ),
            ));
        }
        let (a, b) = if xs.h == INPUT {
            (0, INPUT)
        } else {
            CROPS
                .iter()
                .find(|(s, _)| *s == xs.h)
                .map(|(_, r)| *r)
                .ok_or_else(|| {
                    Error::shape(
                        "crop resize",
                        format!(
                            "input side {} has no embedding crop (256, 128, 64 or 112)",
                            xs.h
                        ),
                    )
                })?
        };
        let scale = (b - 1 - a) as f64 / (INPUT - 1) as f64;
        let m = [[scale, 0.0, a as f64], [0.0, scale, a as f64]];
        let warp = Warp::new(ctx, x, y)?;
        let samples: Vec<_> = (0..xs.n).map(|i| (m, i)).collect();
        warp.set(ctx, &samples)?;
        Ok(CropResize { warp })
    }

    /// The dispatch to record.
    pub fn dispatch(&self) -> &Dispatch {
        self.warp.dispatch()
    }
}

/// `fswap eval --model mobilefacenet`: `face` `[N, 3, 112, 112]` in [−1, 1] → `id_embedding`
/// `[N, 512]`, L2-normalised.
pub fn eval(ctx: &Context, w: &Weights, face: &HostTensor) -> Result<HostTensor> {
    let s = &face.shape;
    if s.len() != 4 || s[0] == 0 || s[1..] != [3, INPUT, INPUT] {
        return Err(Error::shape(
            format!("eval {MODEL}"),
            format!("input 'face' has shape {s:?}, expected [N, 3, {INPUT}, {INPUT}]"),
        ));
    }
    let n = s[0];
    let net = MobileFaceNet512::new(ctx, w, n)?;
    let emb = net.embed(ctx, &face.data)?;
    Ok(HostTensor::new(vec![n, EMBEDDING], emb))
}
