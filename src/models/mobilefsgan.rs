//! MobileFSGAN (spec mobilefsgan.md §1–2): the generator `EncoderDecoder(64, 512)` in eval mode
//! (batch norms on their running statistics), for a batch of `N` targets of any `H × W` that are
//! multiples of 32 (256 × 256 as trained).
//!
//! Once per source identity, [`Injection`] turns the 512-d embedding `e` into the 9 identity blocks'
//! raw scale σ(e) = `fc_var(e)` and shift μ(e) = `fc_mean(e)` (one linear layer, 512 → 9·2·64, into
//! the [`Injection::style`] vector). Per frame, [`Generator`] runs the plain CNN below; each identity
//! block applies `x̂·σ + μ` with `x̂ = (x − running_mean)/√(running_var + ε)` as one per-channel
//! affine read from that vector (conditional batch norm, affine = False).
//!
//! ```text
//! head       A0 = LReLU(conv3×3 3→64 (target))  I0 = conv3×3(LReLU(conv1×1(A0)))     H×W
//! attribute  x ← x + blk(x) ×2 │ down │ ×3 │ down │ ×4 → 12 skips x256_0..2, x128_0..3, x64_0..4
//! identity   U-Net on I0: 6 levels down (H → H/32), 3 up (→ H/4), additive skips, 9 id blocks
//! decoder    h ← h + blk(a·h + (1−a)·A), a = conv1×1 64→1 (h) (raw, no sigmoid): ×5 at H/4,
//!            up, ×4 at H/2, up, ×3 at H; tanh RGB heads images64 / images128 / images256
//! blk        BN → conv1×1 → LReLU → conv3×3          id blk: CBN(σ, μ) → LReLU → conv1×1 → LReLU → conv3×3
//! down       BN → conv4×4/s2 zero pad 1 → LReLU      up: BN → bilinear ×2 (align corners) → reflect pad 1 → conv3×3 → LReLU
//! ```
//!
//! Batch norms are folded where it is exact and kept where it is not:
//! - BN → conv1×1 (attribute and decoder blocks): folded into the 1×1's weights and bias;
//! - BN → bilinear ×2 → reflect pad → conv3×3 (every Upsample): folded into the 3×3 (the
//!   interpolation weights sum to 1 and reflection copies values, so a per-channel affine commutes);
//! - BN → zero-padded conv4×4/s2 (every Downsample): **not** foldable at the borders (the padding
//!   zeros would become β − μγ/σ), so it stays an explicit per-channel affine dispatch.
//!
//! Residual adds and the Upsample skip adds ride in the convolutions' epilogues. Per frame,
//! **123 dispatches** whatever the batch and size: head 3, attribute encoder 22 (9 × 2 + 2 × 2),
//! identity encoder 43 (9 × 3 + 5 × 2 + 3 × 2), decoder 55 (12 × 4 + 2 × 2 + 3); the injection is
//! one more, once per identity.

use std::collections::BTreeMap;

use super::builder::{Builder, BN_EPS};
use crate::error::{Error, Result};
use crate::gpu::{Context, Plan};
use crate::kernels::conv::{Conv2d, ConvSpec};
use crate::kernels::fusion::fusion;
use crate::kernels::linear::Linear;
use crate::kernels::norm::{Affine, Norm, NormSpec, Stats};
use crate::kernels::pointwise::Pointwise;
use crate::kernels::{Activation, Epilogue, Residual};
use crate::tensor::{Shape, Tensor};
use crate::weights::{BatchNorm, HostTensor, Manifest, Weights};

/// Manifest and `eval` name.
pub const MODEL: &str = "mobilefsgan";
/// The trained frame side.
pub const SIZE: usize = 256;
/// Width of every hidden map (`ngf`).
pub const CHANNELS: usize = 64;
/// Identity embedding size.
pub const EMBEDDING: usize = 512;
/// LeakyReLU slope of the generator (PyTorch's default).
pub const LRELU: f32 = 0.01;
/// H and W must be multiples of this (5 stride-2 stages plus additive skips).
pub const MULTIPLE: usize = 32;
/// The identity-injection blocks of `identity_encoder`, in the order their (σ, μ) pairs sit in
/// [`Injection::style`].
pub const IDENTITY_BLOCKS: [&str; 9] = [
    "b256_down",
    "b128_down",
    "b64_down",
    "b32_down",
    "b16_down",
    "b8_down",
    "b16_up",
    "b32_up",
    "b64_up",
];
/// Features of the style vector: per identity block, σ(e) (64) then μ(e) (64).
pub const STYLE: usize = 2 * CHANNELS * IDENTITY_BLOCKS.len();

/// Folds an inference batch norm that comes *before* a convolution into it: `conv(bn(x))` =
/// `conv'(x)` with `W'[o, i, t] = W[o, i, t]·k[i]` and `b'[o] = b[o] + Σ_{i,t} W[o, i, t]·s[i]`, where
/// `bn(x)[i] = k[i]·x[i] + s[i]`. Exact when nothing but per-channel-affine-preserving operations
/// lie between (1×1 convolutions; bilinear resampling and reflection padding), not across zero
/// padding. `weights` are PyTorch `[cout, cin, kh, kw]`; computed in f64.
pub fn fold_bn_into_conv(
    weights: &[f32],
    bias: Option<&[f32]>,
    cout: usize,
    cin: usize,
    bn: &BatchNorm,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if cout == 0 || cin == 0 || !weights.len().is_multiple_of(cout * cin) || bn.gamma.len() != cin {
        return Err(Error::shape(
            "fold batch norm",
            format!(
                "{} weights for {cout}×{cin} channels and a {}-channel batch norm",
                weights.len(),
                bn.gamma.len()
            ),
        ));
    }
    let taps = weights.len() / (cout * cin);
    let (k, s): (Vec<f64>, Vec<f64>) = (0..cin)
        .map(|i| {
            let k = bn.gamma[i] as f64 / (bn.var[i] as f64 + BN_EPS as f64).sqrt();
            (k, bn.beta[i] as f64 - bn.mean[i] as f64 * k)
        })
        .unzip();
    let mut w = vec![0f32; weights.len()];
    let mut b = Vec::with_capacity(cout);
    for (o, (w_o, src_o)) in w
        .chunks_mut(cin * taps)
        .zip(weights.chunks(cin * taps))
        .enumerate()
    {
        let mut acc = bias.map_or(0.0, |b| b[o] as f64);
        for (i, (w_oi, src_oi)) in w_o.chunks_mut(taps).zip(src_o.chunks(taps)).enumerate() {
            for (dst, &v) in w_oi.iter_mut().zip(src_oi) {
                *dst = (v as f64 * k[i]) as f32;
                acc += v as f64 * s[i];
            }
        }
        b.push(acc as f32);
    }
    Ok((w, b))
}

/// The per-identity conditioning: `style = [σ₀ μ₀ σ₁ μ₁ … σ₈ μ₈]` (64 each) of every sample's
/// embedding, on the GPU. Built once; write a new embedding into [`Injection::embedding`] and run
/// [`Injection::plan`] to switch identity.
pub struct Injection {
    /// `[N, 1, 1, 512]` source embeddings (L2-normalised MobileFaceNet-512 outputs).
    pub embedding: Tensor,
    /// `[N, 1, 1, STYLE]` the 9 blocks' σ(e), μ(e).
    pub style: Tensor,
    /// One linear dispatch.
    pub plan: Plan,
}

impl Injection {
    /// The 18 `fc_var` / `fc_mean` layers of `w` as one linear layer, for `n` identities.
    pub fn new(ctx: &Context, w: &Weights, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::param(MODEL, "batch must be at least 1"));
        }
        let mut wt = Vec::with_capacity(STYLE * EMBEDDING);
        let mut bias = Vec::with_capacity(STYLE);
        for blk in IDENTITY_BLOCKS {
            for fc in ["fc_var", "fc_mean"] {
                let p = format!("identity_encoder.{blk}.{fc}");
                wt.extend(w.linear(&format!("{p}.weight"), CHANNELS, EMBEDDING)?);
                bias.extend_from_slice(w.get(&format!("{p}.bias"), &[CHANNELS])?);
            }
        }
        let lin = Linear::new(ctx, (1, 1, EMBEDDING), STYLE, &wt, &Epilogue::bias(&bias))?;
        let embedding = Tensor::new(ctx, Shape::vector(n, EMBEDDING), "id_embedding")?;
        let style = Tensor::new(ctx, Shape::vector(n, STYLE), "mobilefsgan style")?;
        let mut plan = Plan::default();
        plan.push(lin.bind(ctx, &embedding, &style)?);
        Ok(Injection {
            embedding,
            style,
            plan,
        })
    }
}

/// The per-frame generator for `N` targets of `H × W`.
pub struct Generator {
    /// `[N, 3, H, W]` RGB targets in [−1, 1].
    pub target: Tensor,
    /// `[N, 3, H, W]` the swapped faces, tanh.
    pub images256: Tensor,
    /// `[N, 3, H/2, W/2]` the half-scale head.
    pub images128: Tensor,
    /// `[N, 3, H/4, W/4]` the quarter-scale head.
    pub images64: Tensor,
    /// The forward pass (123 dispatches).
    pub plan: Plan,
}

/// The running statistics of an `affine=False` batch norm.
fn running_stats(w: &Weights, prefix: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    Ok((
        w.get(&format!("{prefix}.running_mean"), &[CHANNELS])?
            .to_vec(),
        w.get(&format!("{prefix}.running_var"), &[CHANNELS])?
            .to_vec(),
    ))
}

struct Net<'a> {
    b: Builder<'a>,
    style: &'a Tensor,
}

impl Net<'_> {
    fn lrelu() -> Activation {
        Activation::Leaky(LRELU)
    }

    /// A 1×1 convolution with PyTorch weights `[cout, cin]`, bias, activation, residual.
    fn pointwise(
        &mut self,
        x: &Tensor,
        cout: usize,
        weights: &[f32],
        bias: &[f32],
        act: Activation,
        what: &str,
    ) -> Result<Tensor> {
        let cin = x.shape().c;
        let pw = Pointwise::new(
            self.b.ctx,
            cin,
            cout,
            weights,
            &Epilogue::bias(bias).with_act(act),
        )?;
        let y = self.b.tensor(pw.output_shape(x.shape())?, what)?;
        self.b.plan.push(pw.bind(self.b.ctx, x, &y, None)?);
        Ok(y)
    }

    /// A convolution with explicit weights and epilogue, and an optional residual added after the
    /// activation.
    fn conv(
        &mut self,
        x: &Tensor,
        spec: ConvSpec,
        weights: &[f32],
        epi: &Epilogue,
        residual: Option<&Tensor>,
        what: &str,
    ) -> Result<Tensor> {
        let conv = Conv2d::new(self.b.ctx, spec, weights, epi)?;
        let y = self.b.tensor(spec.output_shape(x.shape())?, what)?;
        self.b.plan.push(conv.bind(
            self.b.ctx,
            x,
            &y,
            residual.map(|r| (r, Residual::AfterAct)),
        )?);
        Ok(y)
    }

    /// The 3×3 (no bias) that ends every residual branch, with the residual `r` added.
    fn conv3x3_residual(&mut self, h: &Tensor, p: &str, r: &Tensor) -> Result<Tensor> {
        let wt = self
            .b
            .w
            .get(&format!("{p}.conv3x3.weight"), &[CHANNELS, CHANNELS, 3, 3])?;
        self.conv(
            h,
            ConvSpec::new(CHANNELS, CHANNELS, 3, 1, 1),
            wt,
            &Epilogue::none(),
            Some(r),
            p,
        )
    }

    /// `r + conv3x3(LReLU(conv1x1(BN(x))))` (AttributeEncoderBlock; BN folded into the 1×1).
    fn attribute_block(&mut self, x: &Tensor, r: &Tensor, p: &str) -> Result<Tensor> {
        let bn = self.b.w.batch_norm(&format!("{p}.normalize"), CHANNELS)?;
        let w1 = self
            .b
            .w
            .get(&format!("{p}.conv1x1.weight"), &[CHANNELS, CHANNELS, 1, 1])?;
        let b1 = self.b.w.get(&format!("{p}.conv1x1.bias"), &[CHANNELS])?;
        let (w1, b1) = fold_bn_into_conv(w1, Some(b1), CHANNELS, CHANNELS, &bn)?;
        let h = self.pointwise(x, CHANNELS, &w1, &b1, Self::lrelu(), p)?;
        self.conv3x3_residual(&h, p, r)
    }

    /// `x + conv3x3(LReLU(conv1x1(LReLU(x̂·σ + μ))))` (IdentityEncoderBlock `k`).
    fn identity_block(&mut self, x: &Tensor, k: usize) -> Result<Tensor> {
        let p = format!("identity_encoder.{}", IDENTITY_BLOCKS[k]);
        let (mean, var) = running_stats(self.b.w, &format!("{p}.normalize"))?;
        let norm = Norm::new(
            self.b.ctx,
            NormSpec {
                channels: CHANNELS,
                stats: Stats::Running { mean, var },
                affine: Affine::Style {
                    gamma_offset: 2 * CHANNELS * k,
                    beta_offset: 2 * CHANNELS * k + CHANNELS,
                    gamma_bias: 0.0,
                },
                eps: BN_EPS,
                act: Self::lrelu(),
            },
        )?;
        let m = self.b.tensor(x.shape(), &p)?;
        self.b
            .plan
            .push(norm.bind(self.b.ctx, x, Some(self.style), &m)?);
        let w1 = self
            .b
            .w
            .get(&format!("{p}.conv1x1.weight"), &[CHANNELS, CHANNELS, 1, 1])?;
        let b1 = self.b.w.get(&format!("{p}.conv1x1.bias"), &[CHANNELS])?;
        let h = self.pointwise(&m, CHANNELS, w1, b1, Self::lrelu(), &p)?;
        self.conv3x3_residual(&h, &p, x)
    }

    /// `LReLU(conv4×4/s2 p1(BN(x)))`, the batch norm explicit (zero padding follows it).
    fn downsample(&mut self, x: &Tensor, p: &str) -> Result<Tensor> {
        let xn = self
            .b
            .batch_norm(x, &format!("{p}.normalize"), Activation::None)?;
        self.b.conv(
            &xn,
            ConvSpec::new(CHANNELS, CHANNELS, 4, 2, 1),
            &format!("{p}.conv"),
            false,
            None,
            Self::lrelu(),
        )
    }

    /// `LReLU(conv3×3(reflect_pad(up2(BN(x))))) (+ skip)`, the batch norm folded into the 3×3.
    fn upsample(&mut self, x: &Tensor, p: &str, skip: Option<&Tensor>) -> Result<Tensor> {
        let bn = self.b.w.batch_norm(&format!("{p}.normalize"), CHANNELS)?;
        let wt = self
            .b
            .w
            .get(&format!("{p}.conv.weight"), &[CHANNELS, CHANNELS, 3, 3])?;
        let (wt, bias) = fold_bn_into_conv(wt, None, CHANNELS, CHANNELS, &bn)?;
        let up = self.b.up2(x)?;
        self.conv(
            &up,
            ConvSpec::new(CHANNELS, CHANNELS, 3, 1, 1).reflect(),
            &wt,
            &Epilogue::bias(&bias).with_act(Self::lrelu()),
            skip,
            p,
        )
    }

    /// `h + basic_block(a·h + (1 − a)·attr)`, `a = conv_attention(h)` raw (DecoderBlock).
    fn decoder_block(&mut self, h: &Tensor, attr: &Tensor, p: &str) -> Result<Tensor> {
        let wa = self
            .b
            .w
            .get(&format!("{p}.conv_attention.weight"), &[1, CHANNELS, 1, 1])?;
        let ba = self.b.w.get(&format!("{p}.conv_attention.bias"), &[1])?;
        let a = self.pointwise(h, 1, wa, ba, Activation::None, p)?;
        let f = self.b.tensor(h.shape(), p)?;
        self.b
            .plan
            .push(fusion(self.b.ctx, h, attr, &a, false, &f)?);
        self.attribute_block(&f, h, &format!("{p}.basic_block"))
    }

    /// `tanh(conv3×3 64→3 (h))`.
    fn head(&mut self, h: &Tensor, p: &str) -> Result<Tensor> {
        self.b.conv(
            h,
            ConvSpec::new(CHANNELS, 3, 3, 1, 1),
            &format!("{p}.conv"),
            true,
            None,
            Activation::Tanh,
        )
    }
}

impl Generator {
    /// Builds the generator from `w` (checked against `weights/mobilefsgan.json` by
    /// [`MobileFsgan::new`]; here every tensor is fetched by name and shape) for `n` targets of
    /// `height × width`, reading the identity conditioning from `style` (`[n, 1, 1, STYLE]`, e.g.
    /// [`Injection::style`]).
    pub fn new(
        ctx: &Context,
        w: &Weights,
        style: &Tensor,
        n: usize,
        height: usize,
        width: usize,
    ) -> Result<Self> {
        check_size(n, height, width)?;
        if style.shape() != Shape::vector(n, STYLE) {
            return Err(Error::shape(
                MODEL,
                format!(
                    "style vector is {:?}, expected [{n}, 1, 1, {STYLE}]",
                    style.shape().dims()
                ),
            ));
        }
        let mut g = Net {
            b: Builder::new(ctx, w),
            style,
        };
        let lrelu = Net::lrelu();
        let target = g.b.tensor(Shape::new(n, 3, height, width), "target")?;
        // Encoder head.
        let a0 = g.b.conv(
            &target,
            ConvSpec::new(3, CHANNELS, 3, 1, 1),
            "encoder_head.conv_image",
            true,
            None,
            lrelu.clone(),
        )?;
        let h = g.b.conv(
            &a0,
            ConvSpec::new(CHANNELS, CHANNELS, 1, 1, 0),
            "encoder_head.conv1x1",
            true,
            None,
            lrelu.clone(),
        )?;
        let i0 = g.b.conv(
            &h,
            ConvSpec::new(CHANNELS, CHANNELS, 3, 1, 1),
            "encoder_head.conv3x3",
            false,
            None,
            Activation::None,
        )?;
        // Attribute encoder: the 12 decoder skips.
        let ae = "attribute_encoder";
        let mut attrs = vec![a0.clone()];
        let mut x = a0;
        for blk in ["b256_1", "b256_2"] {
            x = g.attribute_block(&x, &x, &format!("{ae}.{blk}"))?;
            attrs.push(x.clone());
        }
        x = g.downsample(&x, &format!("{ae}.downsample128"))?;
        attrs.push(x.clone());
        for blk in ["b128_1", "b128_2", "b128_3"] {
            x = g.attribute_block(&x, &x, &format!("{ae}.{blk}"))?;
            attrs.push(x.clone());
        }
        x = g.downsample(&x, &format!("{ae}.downsample64"))?;
        attrs.push(x.clone());
        for blk in ["b64_1", "b64_2", "b64_3", "b64_4"] {
            x = g.attribute_block(&x, &x, &format!("{ae}.{blk}"))?;
            attrs.push(x.clone());
        }
        // Identity encoder (U-Net, additive skips).
        let ie = "identity_encoder";
        let mut levels = vec![g.identity_block(&i0, 0)?];
        for (k, lvl) in ["down128", "down64", "down32", "down16", "down8"]
            .iter()
            .enumerate()
        {
            let prev = levels.last().expect("one level").clone();
            let d = g.downsample(&prev, &format!("{ie}.{lvl}"))?;
            levels.push(g.identity_block(&d, k + 1)?);
        }
        let mut y = levels[5].clone();
        for (j, up) in ["up16", "up32", "up64"].iter().enumerate() {
            let u = g.upsample(&y, &format!("{ie}.{up}"), Some(&levels[4 - j]))?;
            y = g.identity_block(&u, 6 + j)?;
        }
        // Decoder: attention fusion with the attributes, deepest first.
        let mut h = y;
        for (blk, a) in ["b64_4", "b64_3", "b64_2", "b64_1", "b64_0"]
            .iter()
            .zip([11, 10, 9, 8, 7])
        {
            h = g.decoder_block(&h, &attrs[a], &format!("decoder.{blk}"))?;
        }
        let images64 = g.head(&h, "decoder.image64_output")?;
        h = g.upsample(&h, "decoder.up128", None)?;
        for (blk, a) in ["b128_3", "b128_2", "b128_1", "b128_0"]
            .iter()
            .zip([6, 5, 4, 3])
        {
            h = g.decoder_block(&h, &attrs[a], &format!("decoder.{blk}"))?;
        }
        let images128 = g.head(&h, "decoder.image128_output")?;
        h = g.upsample(&h, "decoder.up256", None)?;
        for (blk, a) in ["b256_2", "b256_1", "b256_0"].iter().zip([2, 1, 0]) {
            h = g.decoder_block(&h, &attrs[a], &format!("decoder.{blk}"))?;
        }
        let images256 = g.head(&h, "decoder.image256_output")?;
        Ok(Generator {
            target,
            images256,
            images128,
            images64,
            plan: g.b.plan,
        })
    }
}

/// Checks a batch and frame size: `n ≥ 1`, `H` and `W` positive multiples of 32.
pub fn check_size(n: usize, height: usize, width: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::param(MODEL, "batch must be at least 1"));
    }
    if height == 0
        || width == 0
        || !height.is_multiple_of(MULTIPLE)
        || !width.is_multiple_of(MULTIPLE)
    {
        return Err(Error::shape(
            MODEL,
            format!(
                "target is {height}×{width}; H and W must be positive multiples of {MULTIPLE} \
                 (5 stride-2 stages with additive skips; trained at {SIZE}×{SIZE})"
            ),
        ));
    }
    Ok(())
}

/// MobileFSGAN for a fixed batch and size: the injection and the generator reading its style.
pub struct MobileFsgan {
    /// Once per identity.
    pub injection: Injection,
    /// Per frame.
    pub generator: Generator,
}

impl MobileFsgan {
    /// Checks `w` against `weights/mobilefsgan.json` (every missing, unexpected or mis-shaped
    /// tensor named) and builds both parts for `n` samples of `height × width`.
    pub fn new(ctx: &Context, w: &Weights, n: usize, height: usize, width: usize) -> Result<Self> {
        check_size(n, height, width)?;
        Manifest::builtin(MODEL)?.check(w)?;
        let injection = Injection::new(ctx, w, n)?;
        let generator = Generator::new(ctx, w, &injection.style, n, height, width)?;
        Ok(MobileFsgan {
            injection,
            generator,
        })
    }

    /// Injection then frame, in one plan (what `eval` runs).
    pub fn plan(&self) -> Plan {
        let mut p = self.injection.plan.clone();
        p.extend(self.generator.plan.clone());
        p
    }
}

/// `fswap eval --model mobilefsgan`: `target` `[N, 3, H, W]` in [−1, 1] (H, W multiples of 32) and
/// `id_embedding` `[N, 512]` → `images256` `[N, 3, H, W]`, `images128` `[N, 3, H/2, W/2]`,
/// `images64` `[N, 3, H/4, W/4]` (the heads are named after their size at 256).
pub fn eval(
    ctx: &Context,
    w: &Weights,
    target: &HostTensor,
    id_embedding: &HostTensor,
) -> Result<BTreeMap<String, HostTensor>> {
    let s = &target.shape;
    if s.len() != 4 || s[0] == 0 || s[1] != 3 {
        return Err(Error::shape(
            format!("eval {MODEL}"),
            format!("input 'target' has shape {s:?}, expected [N, 3, H, W]"),
        ));
    }
    let (n, h, wd) = (s[0], s[2], s[3]);
    check_size(n, h, wd)?;
    if id_embedding.shape != [n, EMBEDDING] {
        return Err(Error::shape(
            format!("eval {MODEL}"),
            format!(
                "input 'id_embedding' has shape {:?}, expected [{n}, {EMBEDDING}] (one per target)",
                id_embedding.shape
            ),
        ));
    }
    let net = MobileFsgan::new(ctx, w, n, h, wd)?;
    net.injection.embedding.write_f32(ctx, &id_embedding.data)?;
    net.generator.target.write_f32(ctx, &target.data)?;
    net.plan().run(ctx)?;
    let g = &net.generator;
    let mut out = BTreeMap::new();
    for (name, t) in [
        ("images256", &g.images256),
        ("images128", &g.images128),
        ("images64", &g.images64),
    ] {
        out.insert(
            name.to_string(),
            HostTensor::new(t.shape().dims().to_vec(), t.to_f32(ctx)?),
        );
    }
    Ok(out)
}
