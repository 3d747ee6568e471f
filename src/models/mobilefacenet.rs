//! MobileFaceNet-128 (spec identity.md): the trained identity network with real weights
//! (foamliu/MobileFaceNet), for face selection by similarity, identity metrics and identity losses.
//!
//! ```text
//! conv1     conv3x3/s2 p1 3→64 · BN · ReLU6                                      112 → 56
//! dw_conv   depthwise 3x3 p1 · BN · ReLU → pointwise 64→64 · BN · ReLU            56
//! features  15 inverted residuals (t, c, n, s) = (2,64,5,2) (4,128,1,2) (2,128,6,1)
//!           (4,128,1,2) (2,128,2,1): expand 1x1 · BN · ReLU6 → depthwise 3x3/s · BN ·
//!           ReLU6 → project 1x1 · BN (+ input when s = 1 and cin = cout)         56 → 7
//! conv2     1x1 128→512 · BN · ReLU6                                              7
//! gdconv    global depthwise 7x7 p0 · BN                                           7 → 1
//! conv3·bn  1x1 512→128 + bias · BN (a linear layer on the 512 pooled values) → raw embedding
//! L2        raw / ‖raw‖₂ → id_embedding
//! ```
//!
//! Every batch norm is folded into its conv's epilogue, the residual add into the project conv's
//! epilogue: 52 dispatches per run, whatever the batch.
//!
//! **Input** ([`MobileFaceNet::input`], `[N, 3, 112, 112]`): a 112×112 RGB crop aligned to the
//! standard 5-point ArcFace template, *already normalised*: `(pixel/255 − MEAN[c]) / STD[c]` with the
//! ImageNet [`MEAN`] / [`STD`] ([`normalize`] does it on the host from 0..255 pixels,
//! [`normalize_dispatch`] on the GPU from a [0, 1] crop). It cannot be folded into `conv1`: the
//! network zero-pads the *normalised* image.
//!
//! **Output** ([`MobileFaceNet::embedding`], `[N, 1, 1, 128]`): the embedding divided by its L2 norm;
//! compare two with [`cosine`] (a dot product of unit vectors).

use super::builder::{with_bn, Builder};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, Plan};
use crate::kernels::conv::ConvSpec;
use crate::kernels::eltwise::{Eltwise, EltwiseOp};
use crate::kernels::linear::Linear;
use crate::kernels::pointwise::Pointwise;
use crate::kernels::reduce::l2_normalize;
use crate::kernels::{Activation, Epilogue, Residual};
use crate::tensor::{Shape, Tensor};
use crate::weights::{HostTensor, Manifest, Weights};

/// Manifest and `eval` name.
pub const MODEL: &str = "mobilefacenet128";
/// Input side.
pub const INPUT: usize = 112;
/// Embedding dimension.
pub const EMBEDDING: usize = 128;
/// ImageNet mean of the input normalisation (RGB, on pixel/255).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation of the input normalisation (RGB, on pixel/255).
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Inverted-residual settings: expansion t, output channels c, blocks n, stride s of the first.
pub const SETTINGS: [(usize, usize, usize, usize); 5] = [
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
];

/// MobileFaceNet-128 on the GPU for a fixed batch: write faces into [`MobileFaceNet::input`], run
/// [`MobileFaceNet::plan`], read [`MobileFaceNet::embedding`].
pub struct MobileFaceNet {
    /// `[N, 3, 112, 112]`, normalised RGB (see the module docs).
    pub input: Tensor,
    /// `[N, 1, 1, 128]`, the final batch norm's output (before L2 normalisation).
    pub raw: Tensor,
    /// `[N, 1, 1, 128]`, L2-normalised.
    pub embedding: Tensor,
    /// The forward pass.
    pub plan: Plan,
}

impl MobileFaceNet {
    /// Checks `w` against `weights/mobilefacenet128.json` (every missing, unexpected or mis-shaped
    /// tensor named) and builds the plan for `n` faces.
    pub fn new(ctx: &Context, w: &Weights, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::param(MODEL, "batch must be at least 1"));
        }
        Manifest::builtin(MODEL)?.check(w)?;
        let mut b = Builder::new(ctx, w);
        let input = b.tensor(Shape::new(n, 3, INPUT, INPUT), "mobilefacenet input")?;
        let x = b.conv(
            &input,
            ConvSpec::new(3, 64, 3, 2, 1),
            "conv1.0",
            false,
            Some("conv1.1"),
            Activation::Relu6,
        )?;
        let x = b.conv(
            &x,
            ConvSpec::depthwise(64, 3, 1, 1),
            "dw_conv.depthwise",
            false,
            Some("dw_conv.bn1"),
            Activation::Relu,
        )?;
        let mut x = b.conv(
            &x,
            ConvSpec::new(64, 64, 1, 1, 0),
            "dw_conv.pointwise",
            false,
            Some("dw_conv.bn2"),
            Activation::Relu,
        )?;
        let mut i = 0;
        for (t, c, count, s) in SETTINGS {
            for k in 0..count {
                let stride = if k == 0 { s } else { 1 };
                x = inverted_residual(&mut b, &x, &format!("features.{i}"), t, c, stride)?;
                i += 1;
            }
        }
        let x = b.conv(
            &x,
            ConvSpec::new(128, 512, 1, 1, 0),
            "conv2.0",
            false,
            Some("conv2.1"),
            Activation::Relu6,
        )?;
        let x = b.conv(
            &x,
            ConvSpec::depthwise(512, 7, 1, 0),
            "gdconv.depthwise",
            false,
            Some("gdconv.bn"),
            Activation::None,
        )?;
        // conv3 (1x1 with bias) on a 1x1 map is a linear layer; `bn` folds into its epilogue.
        let epi = with_bn(
            Epilogue::bias(w.get("conv3.bias", &[EMBEDDING])?),
            &w.batch_norm("bn", EMBEDDING)?,
        )?;
        let head = Linear::new(
            ctx,
            (512, 1, 1),
            EMBEDDING,
            w.get("conv3.weight", &[EMBEDDING, 512, 1, 1])?,
            &epi,
        )?;
        let raw = b.tensor(Shape::vector(n, EMBEDDING), "id_embedding_raw")?;
        b.plan.push(head.bind(ctx, &x, &raw)?);
        let embedding = b.tensor(Shape::vector(n, EMBEDDING), "id_embedding")?;
        // The reference divides by the norm; 1e-12 only guards an all-zero vector.
        b.plan.push(l2_normalize(ctx, &raw, 1e-12, &embedding)?);
        Ok(MobileFaceNet {
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

    /// Uploads `faces` (normalised, NCHW, `N·3·112·112` values), runs the plan, and reads the
    /// `N·128` unit embeddings back (a convenience: waits for the GPU).
    pub fn embed(&self, ctx: &Context, faces: &[f32]) -> Result<Vec<f32>> {
        self.input.write_f32(ctx, faces)?;
        self.plan.run(ctx)?;
        self.embedding.to_f32(ctx)
    }
}

/// expand 1x1 · BN · ReLU6 → depthwise 3x3/s · BN · ReLU6 → project 1x1 · BN (+ x).
fn inverted_residual(
    b: &mut Builder,
    x: &Tensor,
    p: &str,
    t: usize,
    cout: usize,
    stride: usize,
) -> Result<Tensor> {
    let cin = x.shape().c;
    let hidden = cin * t;
    let h = b.conv(
        x,
        ConvSpec::new(cin, hidden, 1, 1, 0),
        &format!("{p}.conv.0.0"),
        false,
        Some(&format!("{p}.conv.0.1")),
        Activation::Relu6,
    )?;
    let h = b.conv(
        &h,
        ConvSpec::depthwise(hidden, 3, stride, 1),
        &format!("{p}.conv.1.0"),
        false,
        Some(&format!("{p}.conv.1.1")),
        Activation::Relu6,
    )?;
    let wt =
        b.w.get(&format!("{p}.conv.2.weight"), &[cout, hidden, 1, 1])?;
    let epi = with_bn(
        Epilogue::none(),
        &b.w.batch_norm(&format!("{p}.conv.3"), cout)?,
    )?;
    let project = Pointwise::new(b.ctx, hidden, cout, wt, &epi)?;
    let y = b.tensor(project.output_shape(h.shape())?, p)?;
    let residual = (stride == 1 && cin == cout).then_some((x, Residual::AfterAct));
    b.plan.push(project.bind(b.ctx, &h, &y, residual)?);
    Ok(y)
}

/// The network input from RGB pixel values in 0..255, NCHW (`N·3·H·W` values):
/// `(pixel/255 − MEAN[c]) / STD[c]`.
pub fn normalize(pixels: &[f32], n: usize, h: usize, w: usize) -> Result<Vec<f32>> {
    if pixels.len() != n * 3 * h * w {
        return Err(Error::shape(
            "mobilefacenet normalize",
            format!(
                "{} pixel values for [{n}, 3, {h}, {w}] ({} expected)",
                pixels.len(),
                n * 3 * h * w
            ),
        ));
    }
    let plane = h * w;
    Ok(pixels
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let c = (i / plane) % 3;
            ((p as f64 / 255.0 - MEAN[c] as f64) / STD[c] as f64) as f32
        })
        .collect())
}

/// A dispatch that normalises RGB crops in [0, 1] (`x` `[N, 3, H, W]`, e.g. a warped 112 crop) into
/// `y` of the same shape (e.g. [`MobileFaceNet::input`]): `(x − MEAN[c]) / STD[c]`, on the GPU.
pub fn normalize_dispatch(ctx: &Context, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
    if x.shape().c != 3 {
        return Err(Error::shape(
            "mobilefacenet normalize",
            format!("input {:?} is not RGB [N, 3, H, W]", x.shape().dims()),
        ));
    }
    let scale: Vec<f32> = STD.iter().map(|s| 1.0 / s).collect();
    let shift: Vec<f32> = MEAN.iter().zip(&STD).map(|(m, s)| -m / s).collect();
    EltwiseOp::new(Eltwise::Affine { scale, shift }, Activation::None)?.bind(ctx, x, None, None, y)
}

/// Cosine similarity of two embeddings (any norm; 0 when either is all zeros), accumulated in f64.
/// For the unit embeddings of [`MobileFaceNet`] it is their dot product: 1 for the same face, about
/// 0.75 for two photos of one person and 0.57 for two people on LFW (spec identity.md).
///
/// # Panics
/// When the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (ab / (aa.sqrt() * bb.sqrt())) as f32
}

/// Face selection: the index and cosine of the candidate most similar to `query`, among
/// `candidates` (embeddings of `query.len()` values each, back to back); `None` when there are none.
///
/// # Panics
/// When `candidates.len()` is not a multiple of `query.len()` (or `query` is empty).
pub fn most_similar(query: &[f32], candidates: &[f32]) -> Option<(usize, f32)> {
    assert!(
        !query.is_empty() && candidates.len().is_multiple_of(query.len()),
        "candidates must hold whole embeddings of {} values",
        query.len()
    );
    candidates
        .chunks(query.len())
        .map(|c| cosine(query, c))
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// `fswap eval --model mobilefacenet128`: `face` `[N, 3, 112, 112]` (normalised as the module docs
/// say) → `id_embedding` `[N, 128]`, L2-normalised.
pub fn eval(ctx: &Context, w: &Weights, face: &HostTensor) -> Result<HostTensor> {
    let s = &face.shape;
    if s.len() != 4 || s[0] == 0 || s[1..] != [3, INPUT, INPUT] {
        return Err(Error::shape(
            format!("eval {MODEL}"),
            format!("input 'face' has shape {s:?}, expected [N, 3, {INPUT}, {INPUT}]"),
        ));
    }
    let n = s[0];
    let net = MobileFaceNet::new(ctx, w, n)?;
    let emb = net.embed(ctx, &face.data)?;
    Ok(HostTensor::new(vec![n, EMBEDDING], emb))
}
