//! `shaders/loss.wgsl`: the training losses on the GPU, each giving its value and its gradient seed.
//!
//! Every loss is a configured struct (spec and shape fixed at construction, its f32 state buffer
//! allocated once) whose `bind(...)` returns the dispatches to record every step, in order:
//!
//! 1. partial sums per (sample or channel plane, chunk), each chunk reduced by one workgroup in a
//!    fixed tree order;
//! 2. one finalize workgroup: per-sample values `l_n` (the chunk sums added in chunk order) into the
//!    first `N` floats of [`values`](PixelLoss::values), and the batch total into `losses[slot]`;
//! 3. the gradient seed, one invocation per quad of the gradient tensor (overwritten, never
//!    accumulated); SSIM first gathers its maps along x into an f32 intermediate (4 dispatches in
//!    all), the identity loss adds one dispatch for the optional gradient of `b`.
//!
//! The state buffer is also kept alive by the dispatches' bind groups, so dropping the struct after
//! `bind` is safe; only [`read_values`](PixelLoss::read_values) needs the struct.
//!
//! Results are bit-identical from run to run (no float atomics). Sums are in f32.
//!
//! **Batch total and gradient seed.** With per-sample weights `w_n` (f32 `[N]`, e.g. the
//! distillation α of [`Cos2Weights`]; 1 when absent) and the loss weight `λ` of the spec:
//! `total = λ · Σ_n w_n · l_n / N` (the identity loss may divide by the number of active samples
//! instead, see [`IdentityReduction`]). The gradient seed written into the fp16 gradient tensor is
//! `scale · ∂total/∂prediction`, where `scale` is element 0 of the caller's f32 `scale` buffer
//! (mixed-precision loss scaling). The per-sample values are the unweighted `l_n` (no `w_n`, no
//! `λ`), for logs.
//!
//! **Formulas** (prediction `p`, target `t`, `d = p − t`, mask or weights `m`, sample `n` with
//! `C·H·W` elements):
//!
//! - [`PixelLoss`]: `l_n = factor · S_n / D_n` with `S_n = Σ_{c,y,x} k·φ(e)`, `φ = |·|` (L1) or
//!   `(·)²` (MSE). [`MaskApply::Weight`]: `k = m, e = d` (a weighted L1/MSE); [`MaskApply::Inputs`]
//!   (faceswap's penalized mask loss, `lib/model/losses/loss.py` `LossWrapper._apply_mask`: the
//!   mask multiplies both images before the loss): `k = 1, e = m·d`. The normaliser `D_n` is
//!   [`Normalize::Elements`] `C·H·W` (the plain per-sample mean, and faceswap's masked losses,
//!   which average over every element); [`Normalize::MaskSum`] `Σ m` over the mask tensor's own
//!   elements of sample n (`H·W` of them for a broadcast `[N,1,H,W]` mask, `C·H·W` for same-shape
//!   weights), 0 when that sum is 0; [`Normalize::BatchMaskSum`] the batch mean of those sums,
//!   `Σ_n Σ m / N`, so that with `w = 1` the total is `factor · Σ_batch m·φ(d) / Σ_batch m`:
//!   MobileFSGAN's reconstruction loss (mobilefsgan.md §3.3: `0.5·Σ(M·(fake−GT)²)/ΣM`, the sum over
//!   3 channels and the count over the 1-channel mask), which [`PixelSpec::mobilefsgan_rec`] sets up.
//! - [`MaskLoss`]: the background-only weak mask loss of MobileFaceSwap (mobilefaceswap.md §3, §5):
//!   predicted mask `m̂` `[N,1,H,W]`, background `bg` `[N,1,H,W]` in `[0, 1]` (1 = background), where the
//!   target mask is 0: `l_n = Σ bg·φ(m̂) / Σ bg` (L1 by default, MSE optional); 0 for a sample with
//!   no background.
//! - [`SsimLoss`]: faceswap's `DSSIMObjective` (`lib/model/losses/perceptual_loss.py`): 11×11
//!   Gaussian window (σ 1.5, normalised to sum 1 as its softmax does), `c1 = (0.01·L)²`,
//!   `c2 = (0.03·L)²`, `L = 1`, **valid** padding (`Ho = H − 10`), per channel,
//!   `SSIM_n = mean over C·Ho·Wo of l·cs`, and `l_n = (1 − SSIM_n)/2` ([`SsimForm::Dssim`], what
//!   faceswap's code returns) or `1 − SSIM_n` ([`SsimForm::OneMinus`]). An optional mask is
//!   applied to both images first (faceswap's penalized mask loss). Local (co)variances are centred
//!   on the local means, plus `μμ'(1 − Σw)` for the f32 window: the same quantities as faceswap's
//!   `E[xy] − μxμy`, with less cancellation, so the analytic gradient (through the raw moments) is
//!   the exact gradient of the computed value.
//! - [`IdentityLoss`]: `l_n = 1 − cos(a_n, b_n)` (MobileFaceSwap §5, FaceShifter), or with a margin
//!   `l_n = relu(1 − cos − margin)` and the total divided by the number of samples with `l_n > 0`
//!   (0 when there are none): MobileFSGAN's `IdentityLoss` (margin 0.02), [`IdentitySpec::mobilefsgan`].
//!   `cos = a·b / (max(|a|, ε)·max(|b|, ε))`, `ε = 1e-8`. Gradients for `a` and optionally `b`.
//! - [`Cos2Weights`]: the distillation reweighting `α_n = cos(a_n, b_n)² · Q_n` (MobileFaceSwap §5),
//!   `Q = 1` without a quality buffer. No gradient.
//!
//! **Bindings.** The caller's f32 buffers (`losses`, `scale`, weights, Q, α) need `STORAGE`;
//! `scale` and the weights must not be the `losses` buffer (one dispatch cannot both read and
//! write a buffer). A struct's state buffer is reused by every `bind` of it: bind each loss term
//! once per step (multi-scale losses use one struct per scale).

use super::conv_grad::{f32_storage, read_f32};
use super::{expect_shape, half_bytes};
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

/// Output positions (x, y) of one SSIM stats workgroup (`TSW`, `TSH` in the shader).
const SSIM_TILE: (usize, usize) = (16, 4);
/// Quads per pixel-loss pass-1 workgroup before the chunk cap applies.
const CHUNK: usize = 4 * WORKGROUP as usize;
/// Most chunks one sample of the pixel loss is split into.
const MAX_CHUNKS: usize = 256;
/// Largest SSIM window (the uniform holds 32 one-dimensional weights; the stats tile is sized for it).
pub const MAX_WINDOW: usize = 32;
/// The norm clamp of the cosine, as `torch.nn.functional.cosine_similarity`'s default.
pub const COS_EPS: f32 = 1e-8;

const F_TARGET: u32 = 1;
const F_WEIGHTS: u32 = 2;
const F_SWAP: u32 = 4;
const F_MARGIN: u32 = 8;
const F_ACTIVE: u32 = 16;
const F_QUALITY: u32 = 32;

const MASK_NONE: u32 = 0;
const MASK_BROADCAST: u32 = 1;
const MASK_FULL: u32 = 2;

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
    chunks: u32,
    chunk_len: u32,
    dist: u32,
    apply: u32,
    norm: u32,
    mask: u32,
    flags: u32,
    slot: u32,
    part: u32,
    maps: u32,
    hmaps: u32,
    _p: [u32; 2],
    factor: f32,
    lambda: f32,
    c1: f32,
    c2: f32,
    kappa: f32,
    margin: f32,
    eps: f32,
    wdef: f32,
    win: [[f32; 4]; MAX_WINDOW],
}

impl Params {
    fn new(s: Shape) -> Self {
        let mut p: Params = bytemuck::Zeroable::zeroed();
        p.n = s.n as u32;
        p.c = s.c as u32;
        p.h = s.h as u32;
        p.w = s.w as u32;
        p.factor = 1.0;
        p.lambda = 1.0;
        p.eps = COS_EPS;
        p
    }
}

/// Where a loss writes its batch total, and what scales its gradient seed.
#[derive(Clone, Copy, Debug)]
pub struct LossOut<'a> {
    /// f32 buffer receiving the batch total at index `slot` (overwritten).
    pub losses: &'a wgpu::Buffer,
    /// Index of the total in `losses`.
    pub slot: usize,
    /// f32 buffer whose element 0 is the loss scale multiplying the gradient seed.
    pub scale: &'a wgpu::Buffer,
    /// Optional per-sample weights `w_n`, f32 `[N]` (1 when absent).
    pub weights: Option<&'a wgpu::Buffer>,
}

impl<'a> LossOut<'a> {
    /// Total into `losses[slot]`, gradient times `scale[0]`, no per-sample weights.
    pub fn new(losses: &'a wgpu::Buffer, slot: usize, scale: &'a wgpu::Buffer) -> Self {
        LossOut {
            losses,
            slot,
            scale,
            weights: None,
        }
    }

    /// The same with per-sample weights `w` (f32 `[N]`).
    pub fn weighted(self, w: &'a wgpu::Buffer) -> Self {
        LossOut {
            weights: Some(w),
            ..self
        }
    }

    fn check(&self, op: &str, n: usize) -> Result<()> {
        need_f32(op, "losses", self.losses, self.slot + 1)?;
        need_f32(op, "scale", self.scale, 1)?;
        if self.scale == self.losses {
            return Err(Error::param(
                op,
                "the scale buffer is the losses buffer: a dispatch cannot read and write one buffer",
            ));
        }
        if let Some(w) = self.weights {
            need_f32(op, "per-sample weights", w, n)?;
            if w == self.losses {
                return Err(Error::param(
                    op,
                    "the per-sample weights buffer is the losses buffer: a dispatch cannot read and write one buffer",
                ));
            }
        }
        Ok(())
    }

    fn flags(&self) -> u32 {
        if self.weights.is_some() {
            F_WEIGHTS
        } else {
            0
        }
    }
}

/// Checks that `buf` is a storage buffer of at least `len` floats.
fn need_f32(op: &str, what: &str, buf: &wgpu::Buffer, len: usize) -> Result<()> {
    let bytes = (len * 4) as u64;
    if buf.size() < bytes || !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::param(
            op,
            format!(
                "{what} buffer of {} bytes ({:?}): needs STORAGE and {bytes} bytes ({len} floats)",
                buf.size(),
                buf.usage()
            ),
        ));
    }
    Ok(())
}

/// Fails when two tensors share a buffer (a gradient written over an input it reads).
fn distinct(op: &str, out: &Tensor, inputs: &[(&str, Option<&Tensor>)]) -> Result<()> {
    for (role, t) in inputs {
        if let Some(t) = t {
            if t.buffer() == out.buffer() {
                return Err(Error::param(
                    op,
                    format!("the gradient tensor is the {role} tensor"),
                ));
            }
        }
    }
    Ok(())
}

/// The mask mode of an optional mask for a prediction of shape `s`: `[N,1,H,W]` (broadcast over
/// channels) or the prediction's own shape.
fn mask_mode(op: &str, s: Shape, mask: Option<&Tensor>) -> Result<u32> {
    match mask {
        None => Ok(MASK_NONE),
        Some(m) if m.shape() == Shape::new(s.n, 1, s.h, s.w) => Ok(MASK_BROADCAST),
        Some(m) if m.shape() == s => Ok(MASK_FULL),
        Some(m) => Err(Error::shape(
            op,
            format!(
                "mask expected {:?} or {:?}, found {:?}",
                [s.n, 1, s.h, s.w],
                s.dims(),
                m.shape().dims()
            ),
        )),
    }
}

fn check_shape(op: &str, s: Shape) -> Result<()> {
    if s.numel() == 0 {
        return Err(Error::param(
            op,
            format!("shape {:?} has no elements", s.dims()),
        ));
    }
    Ok(())
}

fn finite(op: &str, name: &str, v: f32) -> Result<()> {
    if !v.is_finite() {
        return Err(Error::param(op, format!("{name} is {v}: must be finite")));
    }
    Ok(())
}

/// Offset of the state buffer's partials (after the values and coefficients), as u32.
fn offset(op: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::param(op, format!("state offset {v} exceeds u32")))
}

/// The per-sample values of a state buffer.
fn read_values(ctx: &Context, state: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
    read_f32(ctx, state, n)
}

// ---------------------------------------------------------------------------------------------
// L1 / MSE

/// The per-element distance of a pixel loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distance {
    /// `|e|`.
    L1,
    /// `e²`.
    Mse,
}

impl Distance {
    fn code(self) -> u32 {
        match self {
            Distance::L1 => 0,
            Distance::Mse => 1,
        }
    }
}

/// How a mask or weight tensor enters a pixel loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskApply {
    /// Weights the per-element distance: `m·φ(p − t)`.
    Weight,
    /// Multiplies both images first, as faceswap's penalized mask loss: `φ(m·p − m·t)`.
    Inputs,
}

/// The per-sample normaliser `D_n` of a pixel loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalize {
    /// `C·H·W`: the mean over every element of the sample.
    Elements,
    /// `Σ m` over the mask tensor's elements of the sample (needs a mask).
    MaskSum,
    /// The batch mean of the per-sample mask sums (needs a mask): with unit weights the total is
    /// `Σ_batch m·φ / Σ_batch m`, MobileFSGAN's reconstruction loss.
    BatchMaskSum,
}

impl Normalize {
    fn code(self) -> u32 {
        match self {
            Normalize::Elements => 0,
            Normalize::MaskSum => 1,
            Normalize::BatchMaskSum => 2,
        }
    }
}

/// Configuration of a [`PixelLoss`]: `l_n = factor · Σ k·φ(e) / D_n`, total `λ·Σ w_n l_n / N`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelSpec {
    /// L1 or MSE.
    pub distance: Distance,
    /// How the optional mask enters.
    pub apply: MaskApply,
    /// The per-sample normaliser.
    pub normalize: Normalize,
    /// Constant factor inside the per-sample loss (MobileFSGAN's 0.5).
    pub factor: f32,
    /// Loss weight λ multiplying the batch total and the gradient seed.
    pub weight: f32,
}

impl PixelSpec {
    /// Mean absolute error per sample (a mask, if given, weights the elements; mean over all).
    pub fn l1() -> Self {
        PixelSpec {
            distance: Distance::L1,
            apply: MaskApply::Weight,
            normalize: Normalize::Elements,
            factor: 1.0,
            weight: 1.0,
        }
    }

    /// Mean squared error per sample.
    pub fn mse() -> Self {
        PixelSpec {
            distance: Distance::Mse,
            ..Self::l1()
        }
    }

    /// faceswap's penalized mask loss for `distance` (`mae` or `mse`): the mask multiplies both
    /// images, then the mean over every element.
    pub fn faceswap_penalized(distance: Distance) -> Self {
        PixelSpec {
            distance,
            apply: MaskApply::Inputs,
            ..Self::l1()
        }
    }

    /// MobileFSGAN's `ReconstructionLoss`: `0.5·Σ(M·(fake−GT)²) / ΣM` over the batch, with the
    /// `[N,1,H,W]` mask M (mobilefsgan.md §3.3).
    pub fn mobilefsgan_rec() -> Self {
        PixelSpec {
            distance: Distance::Mse,
            apply: MaskApply::Weight,
            normalize: Normalize::BatchMaskSum,
            factor: 0.5,
            weight: 1.0,
        }
    }

    /// The same with loss weight `λ`.
    pub fn with_weight(self, weight: f32) -> Self {
        PixelSpec { weight, ..self }
    }

    /// The same with normaliser `normalize`.
    pub fn normalized(self, normalize: Normalize) -> Self {
        PixelSpec { normalize, ..self }
    }

    /// The same with mask mode `apply`.
    pub fn applied(self, apply: MaskApply) -> Self {
        PixelSpec { apply, ..self }
    }
}

/// L1 / MSE between a prediction and a target, optionally masked; see the module docs.
pub struct PixelLoss {
    spec: PixelSpec,
    shape: Shape,
    chunks: usize,
    chunk_len: usize,
    state: wgpu::Buffer,
}

impl PixelLoss {
    /// A pixel loss for predictions of `shape` `[N, C, H, W]`.
    pub fn new(ctx: &Context, spec: PixelSpec, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        check_shape("pixel loss", shape)?;
        finite("pixel loss", "factor", spec.factor)?;
        finite("pixel loss", "weight", spec.weight)?;
        let quads = shape.c * shape.row_stride() / 4;
        let chunks = quads.div_ceil(CHUNK).clamp(1, MAX_CHUNKS);
        let chunk_len = quads.div_ceil(chunks);
        let chunks = quads.div_ceil(chunk_len);
        let state = f32_storage(ctx, "pixel loss state", 2 * shape.n + 2 * shape.n * chunks)?;
        Ok(PixelLoss {
            spec,
            shape,
            chunks,
            chunk_len,
            state,
        })
    }

    /// The configuration.
    pub fn spec(&self) -> &PixelSpec {
        &self.spec
    }

    /// The prediction shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The state buffer: its first `N` floats are the per-sample values `l_n` of the last run.
    pub fn values(&self) -> &wgpu::Buffer {
        &self.state
    }

    /// Reads the per-sample values back (waits for the queue; tests and logs).
    pub fn read_values(&self, ctx: &Context) -> Result<Vec<f32>> {
        read_values(ctx, &self.state, self.shape.n)
    }

    /// Binds prediction, target (`None`: 0), optional mask (`[N,1,H,W]` or the prediction's shape)
    /// and the gradient tensor (the prediction's shape, overwritten with `scale·∂total/∂pred`):
    /// three dispatches to record in order.
    pub fn bind(
        &self,
        ctx: &Context,
        pred: &Tensor,
        target: Option<&Tensor>,
        mask: Option<&Tensor>,
        out: &LossOut<'_>,
        grad: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let op = "pixel loss";
        let s = self.shape;
        expect_shape(op, "prediction", pred, s)?;
        if let Some(t) = target {
            expect_shape(op, "target", t, s)?;
        }
        expect_shape(op, "gradient", grad, s)?;
        distinct(
            op,
            grad,
            &[
                ("prediction", Some(pred)),
                ("target", target),
                ("mask", mask),
            ],
        )?;
        let mode = mask_mode(op, s, mask)?;
        if mode == MASK_NONE && self.spec.normalize != Normalize::Elements {
            return Err(Error::param(
                op,
                format!(
                    "normalisation {:?} divides by the mask sum but no mask was given",
                    self.spec.normalize
                ),
            ));
        }
        out.check(op, s.n)?;
        let mut p = Params::new(s);
        p.chunks = self.chunks as u32;
        p.chunk_len = self.chunk_len as u32;
        p.dist = self.spec.distance.code();
        p.apply = match self.spec.apply {
            MaskApply::Weight => 0,
            MaskApply::Inputs => 1,
        };
        p.norm = self.spec.normalize.code();
        p.mask = mode;
        p.flags = out.flags() | if target.is_some() { F_TARGET } else { 0 };
        p.slot = out.slot as u32;
        p.part = offset(op, 2 * s.n)?;
        p.factor = self.spec.factor;
        p.lambda = self.spec.weight;
        let dummy = ctx.dummy();
        let tb: Binding = target.map_or(dummy.into(), Binding::from);
        let mb: Binding = mask.map_or(dummy.into(), Binding::from);
        let wb: Binding = out.weights.unwrap_or(dummy).into();
        let label = |what: &str| format!("loss {:?} {what} {:?}", self.spec.distance, s.dims());
        let elems = s.numel() as u64;
        let in_bytes = half_bytes(s) * if target.is_some() { 2 } else { 1 }
            + mask.map_or(0, |m| half_bytes(m.shape()));
        let part_len = (2 * s.n * self.chunks) as u64;
        let d1 = ctx.dispatch_at(
            label("partials"),
            ctx.pipeline("loss", "pixel_partial", &[])?,
            &[
                (0, &Binding::from(pred)),
                (1, &tb),
                (2, &mb),
                (6, &Binding::from(&self.state)),
            ],
            (8, &p),
            grid((s.n * self.chunks) as u64 * WORKGROUP as u64, WORKGROUP),
            DispatchStats {
                flops: 5 * elems,
                bytes: in_bytes + part_len * 4,
            },
        );
        let d2 = ctx.dispatch_at(
            label("finalize"),
            ctx.pipeline("loss", "pixel_finalize", &[])?,
            &[
                (4, &wb),
                (5, &Binding::from(out.scale)),
                (6, &Binding::from(&self.state)),
                (7, &Binding::from(out.losses)),
            ],
            (8, &p),
            [1, 1, 1],
            DispatchStats {
                flops: part_len + 10 * s.n as u64,
                bytes: (part_len + 4 * s.n as u64 + 2) * 4,
            },
        );
        let quads = (s.rows() * s.row_stride() / 4) as u64;
        let d3 = ctx.dispatch_at(
            label("grad"),
            ctx.pipeline("loss", "pixel_grad", &[])?,
            &[
                (0, &Binding::from(pred)),
                (1, &tb),
                (2, &mb),
                (3, &Binding::from(grad)),
                (6, &Binding::from(&self.state)),
            ],
            (8, &p),
            grid(quads, WORKGROUP),
            DispatchStats {
                flops: 4 * elems,
                bytes: in_bytes + half_bytes(s),
            },
        );
        Ok(vec![d1, d2, d3])
    }
}

// ---------------------------------------------------------------------------------------------
// Background mask loss

/// Configuration of a [`MaskLoss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskLossSpec {
    /// The penalty on background pixels: L1 (default) or MSE.
    pub distance: Distance,
    /// Loss weight λ.
    pub weight: f32,
}

impl Default for MaskLossSpec {
    fn default() -> Self {
        MaskLossSpec {
            distance: Distance::L1,
            weight: 1.0,
        }
    }
}

/// MobileFaceSwap's weak, background-only mask loss: `l_n = Σ bg·φ(m̂) / Σ bg` per sample.
pub struct MaskLoss {
    inner: PixelLoss,
}

impl MaskLoss {
    /// A mask loss for predicted masks of shape `[N, 1, H, W]`.
    pub fn new(ctx: &Context, spec: MaskLossSpec, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if shape.c != 1 {
            return Err(Error::shape(
                "mask loss",
                format!(
                    "the predicted mask must have one channel, found {:?}",
                    shape.dims()
                ),
            ));
        }
        let pixel = PixelSpec {
            distance: spec.distance,
            apply: MaskApply::Weight,
            normalize: Normalize::MaskSum,
            factor: 1.0,
            weight: spec.weight,
        };
        Ok(MaskLoss {
            inner: PixelLoss::new(ctx, pixel, shape)?,
        })
    }

    /// The state buffer: its first `N` floats are the per-sample values of the last run.
    pub fn values(&self) -> &wgpu::Buffer {
        self.inner.values()
    }

    /// Reads the per-sample values back.
    pub fn read_values(&self, ctx: &Context) -> Result<Vec<f32>> {
        self.inner.read_values(ctx)
    }

    /// Binds the predicted mask, the background map (same shape, 1 = background) and the gradient
    /// tensor for the predicted mask: three dispatches to record in order.
    pub fn bind(
        &self,
        ctx: &Context,
        mask: &Tensor,
        background: &Tensor,
        out: &LossOut<'_>,
        grad: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        expect_shape("mask loss", "background", background, self.inner.shape)?;
        self.inner
            .bind(ctx, mask, None, Some(background), out, grad)
    }
}

// ---------------------------------------------------------------------------------------------
// SSIM

/// Which function of the mean SSIM is the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SsimForm {
    /// `(1 − SSIM)/2`, faceswap's `DSSIMObjective`.
    Dssim,
    /// `1 − SSIM`.
    OneMinus,
}

/// Configuration of an [`SsimLoss`]; the default is faceswap's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SsimSpec {
    /// Window side (valid padding: the image must be at least this large), at most [`MAX_WINDOW`].
    pub window: usize,
    /// Gaussian σ of the window.
    pub sigma: f32,
    /// `c1 = (k1·max_value)²`.
    pub k1: f32,
    /// `c2 = (k2·max_value)²`.
    pub k2: f32,
    /// Dynamic range L of the images.
    pub max_value: f32,
    /// DSSIM or 1 − SSIM.
    pub form: SsimForm,
    /// Loss weight λ.
    pub weight: f32,
}

impl Default for SsimSpec {
    fn default() -> Self {
        SsimSpec {
            window: 11,
            sigma: 1.5,
            k1: 0.01,
            k2: 0.03,
            max_value: 1.0,
            form: SsimForm::Dssim,
            weight: 1.0,
        }
    }
}

impl SsimSpec {
    /// The one-dimensional window: `exp(−x²/2σ²)` at `x = i − (k−1)/2`, normalised to sum 1 (in
    /// f64, then rounded to f32). The 2-D window is its outer product, as faceswap's softmax of the
    /// 2-D exponent.
    pub fn window_weights(&self) -> Vec<f32> {
        let k = self.window;
        let c = (k as f64 - 1.0) / 2.0;
        let s = self.sigma as f64;
        let g: Vec<f64> = (0..k)
            .map(|i| (-0.5 * (i as f64 - c).powi(2) / (s * s)).exp())
            .collect();
        let sum: f64 = g.iter().sum();
        g.iter().map(|v| (v / sum) as f32).collect()
    }

    /// `(c1, c2)`.
    pub fn constants(&self) -> (f32, f32) {
        let l = self.max_value as f64;
        (
            ((self.k1 as f64 * l).powi(2)) as f32,
            ((self.k2 as f64 * l).powi(2)) as f32,
        )
    }

    fn validate(&self) -> Result<()> {
        let op = "ssim loss";
        if self.window == 0 || self.window > MAX_WINDOW {
            return Err(Error::param(
                op,
                format!("window {} outside 1..={MAX_WINDOW}", self.window),
            ));
        }
        for (name, v) in [
            ("sigma", self.sigma),
            ("k1", self.k1),
            ("k2", self.k2),
            ("max_value", self.max_value),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::param(op, format!("{name} is {v}: must be > 0")));
            }
        }
        let (c1, c2) = self.constants();
        if !(c1 > 0.0 && c2 > 0.0) {
            return Err(Error::param(
                op,
                format!("c1 = {c1}, c2 = {c2}: both must be positive f32 values"),
            ));
        }
        finite(op, "weight", self.weight)
    }
}

/// SSIM loss with its analytic gradient; see the module docs.
pub struct SsimLoss {
    spec: SsimSpec,
    shape: Shape,
    ho: usize,
    wo: usize,
    tiles: usize,
    state: wgpu::Buffer,
}

impl SsimLoss {
    /// An SSIM loss for predictions of `shape` `[N, C, H, W]` (H and W at least the window).
    pub fn new(ctx: &Context, spec: SsimSpec, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let op = "ssim loss";
        check_shape(op, shape)?;
        spec.validate()?;
        if shape.h < spec.window || shape.w < spec.window {
            return Err(Error::shape(
                op,
                format!(
                    "{:?} is smaller than the {}×{} window (valid padding)",
                    shape.dims(),
                    spec.window,
                    spec.window
                ),
            ));
        }
        let (ho, wo) = (shape.h - spec.window + 1, shape.w - spec.window + 1);
        let tiles = ho.div_ceil(SSIM_TILE.1) * wo.div_ceil(SSIM_TILE.0);
        let rows = shape.rows();
        let len = 2 * shape.n + rows * tiles + 3 * rows * ho * (wo + shape.w);
        let state = f32_storage(ctx, "ssim loss state", len)?;
        Ok(SsimLoss {
            spec,
            shape,
            ho,
            wo,
            tiles,
            state,
        })
    }

    /// The configuration.
    pub fn spec(&self) -> &SsimSpec {
        &self.spec
    }

    /// The state buffer: its first `N` floats are the per-sample values `l_n` of the last run.
    pub fn values(&self) -> &wgpu::Buffer {
        &self.state
    }

    /// Reads the per-sample values back.
    pub fn read_values(&self, ctx: &Context) -> Result<Vec<f32>> {
        read_values(ctx, &self.state, self.shape.n)
    }

    /// Binds prediction, target, an optional mask applied to both (`[N,1,H,W]` or the prediction's
    /// shape) and the gradient tensor: four dispatches (statistics, finalize, the gradient's x and
    /// y passes) to record in order.
    pub fn bind(
        &self,
        ctx: &Context,
        pred: &Tensor,
        target: &Tensor,
        mask: Option<&Tensor>,
        out: &LossOut<'_>,
        grad: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let op = "ssim loss";
        let s = self.shape;
        expect_shape(op, "prediction", pred, s)?;
        expect_shape(op, "target", target, s)?;
        expect_shape(op, "gradient", grad, s)?;
        distinct(
            op,
            grad,
            &[
                ("prediction", Some(pred)),
                ("target", Some(target)),
                ("mask", mask),
            ],
        )?;
        let mode = mask_mode(op, s, mask)?;
        out.check(op, s.n)?;
        let rows = s.rows();
        let npos = self.ho * self.wo;
        let k = self.spec.window;
        let mut p = Params::new(s);
        p.ho = self.ho as u32;
        p.wo = self.wo as u32;
        p.k = k as u32;
        p.chunks = self.tiles as u32;
        p.mask = mode;
        p.flags = out.flags();
        p.slot = out.slot as u32;
        p.part = offset(op, 2 * s.n)?;
        p.maps = offset(op, 2 * s.n + rows * self.tiles)?;
        p.hmaps = offset(op, 2 * s.n + rows * self.tiles + 3 * rows * npos)?;
        (p.c1, p.c2) = self.spec.constants();
        p.kappa = match self.spec.form {
            SsimForm::Dssim => 0.5,
            SsimForm::OneMinus => 1.0,
        };
        p.lambda = self.spec.weight;
        let g = self.spec.window_weights();
        for (slot, v) in p.win.iter_mut().zip(&g) {
            slot[0] = *v;
        }
        // 1 − Σw of the f32 window, exactly enough (f64) to matter at the f32 ulp level.
        let sum: f64 = g.iter().map(|&v| v as f64).sum();
        p.wdef = (1.0 - sum * sum) as f32;
        let dummy = ctx.dummy();
        let mb: Binding = mask.map_or(dummy.into(), Binding::from);
        let wb: Binding = out.weights.unwrap_or(dummy).into();
        let label = |what: &str| format!("loss ssim{k} {what} {:?}", s.dims());
        let taps = (k * k) as u64;
        let mbytes = mask.map_or(0, |m| half_bytes(m.shape()));
        let maps = (3 * rows * npos) as u64 * 4;
        let d1 = ctx.dispatch_at(
            label("stats"),
            ctx.pipeline("loss", "ssim_stats", &[])?,
            &[
                (0, &Binding::from(pred)),
                (1, &Binding::from(target)),
                (2, &mb),
                (6, &Binding::from(&self.state)),
            ],
            (8, &p),
            grid((rows * self.tiles) as u64 * WORKGROUP as u64, WORKGROUP),
            DispatchStats {
                flops: (rows * npos) as u64 * (12 * taps + 40),
                bytes: 2 * half_bytes(s) + mbytes + maps,
            },
        );
        let part_len = (rows * self.tiles) as u64;
        let d2 = ctx.dispatch_at(
            label("finalize"),
            ctx.pipeline("loss", "ssim_finalize", &[])?,
            &[
                (4, &wb),
                (5, &Binding::from(out.scale)),
                (6, &Binding::from(&self.state)),
                (7, &Binding::from(out.losses)),
            ],
            (8, &p),
            [1, 1, 1],
            DispatchStats {
                flops: part_len + 10 * s.n as u64,
                bytes: (part_len + 4 * s.n as u64 + 2) * 4,
            },
        );
        let hrow = (rows * self.ho * s.w) as u64;
        let d3 = ctx.dispatch_at(
            label("grad x"),
            ctx.pipeline("loss", "ssim_grad_h", &[])?,
            &[(6, &Binding::from(&self.state))],
            (8, &p),
            grid(hrow, WORKGROUP),
            DispatchStats {
                flops: hrow * 6 * k as u64,
                bytes: maps + hrow * 12,
            },
        );
        let quads = (rows * s.row_stride() / 4) as u64;
        let d4 = ctx.dispatch_at(
            label("grad y"),
            ctx.pipeline("loss", "ssim_grad", &[])?,
            &[
                (0, &Binding::from(pred)),
                (1, &Binding::from(target)),
                (2, &mb),
                (3, &Binding::from(grad)),
                (6, &Binding::from(&self.state)),
            ],
            (8, &p),
            grid(quads, WORKGROUP),
            DispatchStats {
                flops: s.numel() as u64 * (6 * k as u64 + 8),
                bytes: 3 * half_bytes(s) + mbytes + hrow * 12,
            },
        );
        Ok(vec![d1, d2, d3, d4])
    }
}

// ---------------------------------------------------------------------------------------------
// Identity

/// What the identity loss's batch total is divided by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityReduction {
    /// The batch size N.
    Mean,
    /// The number of samples with `l_n > 0` (0 total when none), as MobileFSGAN.
    Active,
}

/// Configuration of an [`IdentityLoss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IdentitySpec {
    /// `Some(μ)`: `l_n = relu(1 − cos − μ)`; `None`: `1 − cos`.
    pub margin: Option<f32>,
    /// The divisor of the batch total.
    pub reduction: IdentityReduction,
    /// Loss weight λ.
    pub weight: f32,
}

impl Default for IdentitySpec {
    /// `1 − cos`, batch mean (MobileFaceSwap, FaceShifter).
    fn default() -> Self {
        IdentitySpec {
            margin: None,
            reduction: IdentityReduction::Mean,
            weight: 1.0,
        }
    }
}

impl IdentitySpec {
    /// MobileFSGAN's `IdentityLoss`: `relu(1 − cos − 0.02)`, summed and divided by the number of
    /// samples with a positive loss.
    pub fn mobilefsgan() -> Self {
        IdentitySpec {
            margin: Some(0.02),
            reduction: IdentityReduction::Active,
            weight: 1.0,
        }
    }

    /// The same with loss weight `λ`.
    pub fn with_weight(self, weight: f32) -> Self {
        IdentitySpec { weight, ..self }
    }
}

/// Checks an embedding pair `[N, 1, 1, F]`.
fn embeddings(op: &str, a: &Tensor, b: &Tensor, n: usize, f: usize) -> Result<()> {
    let s = Shape::vector(n, f);
    expect_shape(op, "embedding a", a, s)?;
    expect_shape(op, "embedding b", b, s)
}

/// Identity loss `1 − cos(a, b)` per sample (optionally with a margin); see the module docs.
pub struct IdentityLoss {
    spec: IdentitySpec,
    n: usize,
    f: usize,
    state: wgpu::Buffer,
}

impl IdentityLoss {
    /// An identity loss between embedding batches `[n, 1, 1, f]`.
    pub fn new(ctx: &Context, spec: IdentitySpec, n: usize, f: usize) -> Result<Self> {
        let op = "identity loss";
        check_shape(op, Shape::vector(n, f))?;
        finite(op, "weight", spec.weight)?;
        if let Some(m) = spec.margin {
            finite(op, "margin", m)?;
        }
        let state = f32_storage(ctx, "identity loss state", 5 * n)?;
        Ok(IdentityLoss { spec, n, f, state })
    }

    /// The configuration.
    pub fn spec(&self) -> &IdentitySpec {
        &self.spec
    }

    /// The state buffer: its first `N` floats are the per-sample values `l_n` of the last run.
    pub fn values(&self) -> &wgpu::Buffer {
        &self.state
    }

    /// Reads the per-sample values back.
    pub fn read_values(&self, ctx: &Context) -> Result<Vec<f32>> {
        read_values(ctx, &self.state, self.n)
    }

    /// Binds the embeddings `a` (e.g. of the generated image) and `b` (e.g. of the source), the
    /// gradient tensor for `a` and optionally one for `b` (both `[N,1,1,F]`, overwritten):
    /// three dispatches, four with `grad_b`, to record in order.
    pub fn bind(
        &self,
        ctx: &Context,
        a: &Tensor,
        b: &Tensor,
        out: &LossOut<'_>,
        grad_a: &Tensor,
        grad_b: Option<&Tensor>,
    ) -> Result<Vec<Dispatch>> {
        let op = "identity loss";
        let (n, f) = (self.n, self.f);
        embeddings(op, a, b, n, f)?;
        let s = Shape::vector(n, f);
        expect_shape(op, "gradient a", grad_a, s)?;
        distinct(
            op,
            grad_a,
            &[("a", Some(a)), ("b", Some(b)), ("gradient b", grad_b)],
        )?;
        if let Some(gb) = grad_b {
            expect_shape(op, "gradient b", gb, s)?;
            distinct(op, gb, &[("a", Some(a)), ("b", Some(b))])?;
        }
        out.check(op, n)?;
        let mut p = Params::new(s);
        p.flags = out.flags()
            | if self.spec.margin.is_some() {
                F_MARGIN
            } else {
                0
            }
            | if self.spec.reduction == IdentityReduction::Active {
                F_ACTIVE
            } else {
                0
            };
        p.margin = self.spec.margin.unwrap_or(0.0);
        p.slot = out.slot as u32;
        p.part = offset(op, 2 * n)?;
        p.lambda = self.spec.weight;
        let wb: Binding = out.weights.unwrap_or(ctx.dummy()).into();
        let label = |what: &str| format!("loss identity {what} [{n}, {f}]");
        let vec_bytes = half_bytes(s);
        let d1 = ctx.dispatch_at(
            label("stats"),
            ctx.pipeline("loss", "id_stats", &[])?,
            &[
                (0, &Binding::from(a)),
                (1, &Binding::from(b)),
                (6, &Binding::from(&self.state)),
            ],
            (8, &p),
            grid(n as u64 * WORKGROUP as u64, WORKGROUP),
            DispatchStats {
                flops: 6 * s.numel() as u64,
                bytes: 2 * vec_bytes + 12 * n as u64,
            },
        );
        let d2 = ctx.dispatch_at(
            label("finalize"),
            ctx.pipeline("loss", "id_finalize", &[])?,
            &[
                (4, &wb),
                (5, &Binding::from(out.scale)),
                (6, &Binding::from(&self.state)),
                (7, &Binding::from(out.losses)),
            ],
            (8, &p),
            [1, 1, 1],
            DispatchStats {
                flops: 30 * n as u64,
                bytes: (6 * n as u64 + 2) * 4,
            },
        );
        let pipe = ctx.pipeline("loss", "id_grad", &[])?;
        let grad_stats = DispatchStats {
            flops: 5 * s.numel() as u64,
            bytes: 3 * vec_bytes + 16 * n as u64,
        };
        let quads = (n * s.row_stride() / 4) as u64;
        let mut ds = vec![d1, d2];
        ds.push(ctx.dispatch_at(
            label("grad a"),
            pipe.clone(),
            &[
                (0, &Binding::from(a)),
                (1, &Binding::from(b)),
                (3, &Binding::from(grad_a)),
                (6, &Binding::from(&self.state)),
            ],
            (8, &p),
            grid(quads, WORKGROUP),
            grad_stats,
        ));
        if let Some(gb) = grad_b {
            let mut pb = p;
            pb.flags |= F_SWAP;
            ds.push(ctx.dispatch_at(
                label("grad b"),
                pipe,
                &[
                    (0, &Binding::from(b)),
                    (1, &Binding::from(a)),
                    (3, &Binding::from(gb)),
                    (6, &Binding::from(&self.state)),
                ],
                (8, &pb),
                grid(quads, WORKGROUP),
                grad_stats,
            ));
        }
        Ok(ds)
    }
}

// ---------------------------------------------------------------------------------------------
// Loss reweighting

/// The distillation reweighting `α_n = cos(a_n, b_n)² · Q_n` (no gradient).
pub struct Cos2Weights {
    n: usize,
    f: usize,
}

impl Cos2Weights {
    /// For embedding batches `[n, 1, 1, f]`.
    pub fn new(n: usize, f: usize) -> Result<Self> {
        check_shape("cos2 weights", Shape::vector(n, f))?;
        Ok(Cos2Weights { n, f })
    }

    /// Binds the embeddings, an optional quality buffer `Q` (f32 `[N]`, 1 when absent) and the
    /// output `alpha` (f32 `[N]`, overwritten): one dispatch.
    pub fn bind(
        &self,
        ctx: &Context,
        a: &Tensor,
        b: &Tensor,
        quality: Option<&wgpu::Buffer>,
        alpha: &wgpu::Buffer,
    ) -> Result<Vec<Dispatch>> {
        let op = "cos2 weights";
        let (n, f) = (self.n, self.f);
        embeddings(op, a, b, n, f)?;
        need_f32(op, "alpha", alpha, n)?;
        if let Some(q) = quality {
            need_f32(op, "quality", q, n)?;
            if q == alpha {
                return Err(Error::param(
                    op,
                    "the quality buffer is the alpha buffer: a dispatch cannot read and write one buffer",
                ));
            }
        }
        let s = Shape::vector(n, f);
        let mut p = Params::new(s);
        p.flags = if quality.is_some() { F_QUALITY } else { 0 };
        let qb: Binding = quality.unwrap_or(ctx.dummy()).into();
        Ok(vec![ctx.dispatch_at(
            format!("loss cos2 weights [{n}, {f}]"),
            ctx.pipeline("loss", "cos2_weights", &[])?,
            &[
                (0, &Binding::from(a)),
                (1, &Binding::from(b)),
                (4, &qb),
                (6, &Binding::from(alpha)),
            ],
            (8, &p),
            grid(n as u64 * WORKGROUP as u64, WORKGROUP),
            DispatchStats {
                flops: 6 * s.numel() as u64 + 8 * n as u64,
                bytes: 2 * half_bytes(s) + 8 * n as u64,
            },
        )])
    }
}
