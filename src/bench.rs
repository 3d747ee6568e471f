//! The kernel benchmark suite shared by `fswap bench` and the criterion benches (`benches/kernels.rs`).
//!
//! Each [`BenchCase`] is one layer at a size found in real-time face-swap networks (MobileNet-style
//! encoders at 224² / 112², ResNet/U-Net decoders at 56²–28², StyleGAN2-style modulated blocks,
//! the identity MLP). A case owns its kernel objects, tensors (seeded random data) and the
//! [`Dispatch`]es one iteration records, so it can be profiled or run repeatedly with no setup.

use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, DispatchStats};
use crate::kernels::concat::copy_channels;
use crate::kernels::conv::{Conv2d, ConvSpec};
use crate::kernels::eltwise::{Eltwise, EltwiseOp};
use crate::kernels::fusion::fusion;
use crate::kernels::linear::Linear;
use crate::kernels::modulate::{Modulate, ModulateSpec};
use crate::kernels::norm::{Affine, Norm, NormSpec, Stats};
use crate::kernels::pointwise::Pointwise;
use crate::kernels::pool::Pool;
use crate::kernels::reduce::{l2_normalize, softmax_channels};
use crate::kernels::resample::Resample;
use crate::kernels::{Activation, Epilogue, Residual};
use crate::tensor::{Shape, Tensor};

/// Kernel families the suite has cases for, in the order they run.
pub const FAMILIES: &[&str] = &[
    "conv",
    "pointwise",
    "linear",
    "modulate",
    "norm",
    "fusion",
    "resample",
    "pool",
    "eltwise",
    "reduce",
    "concat",
];

/// One benchmark: the dispatches of one layer, bound to tensors it owns.
pub struct BenchCase {
    /// Kernel family (`src/kernels/<family>.rs`).
    pub family: &'static str,
    /// What the case computes, with its sizes (`dw3x3 64ch 112x112`).
    pub name: String,
    /// The dispatches one iteration records, in order (usually one).
    pub dispatches: Vec<Dispatch>,
    /// Tensors and kernel objects the dispatches use, kept alive (and out of the buffer pool) as
    /// long as the case.
    _keep: Vec<Box<dyn std::any::Any>>,
}

impl std::fmt::Debug for BenchCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchCase")
            .field("family", &self.family)
            .field("name", &self.name)
            .field("dispatches", &self.dispatches.len())
            .finish()
    }
}

impl BenchCase {
    /// The dispatches as the slice [`Context::run`] and [`Context::profile`] take.
    pub fn refs(&self) -> Vec<&Dispatch> {
        self.dispatches.iter().collect()
    }

    /// FLOPs and bytes of one iteration (all dispatches).
    pub fn stats(&self) -> DispatchStats {
        self.dispatches
            .iter()
            .fold(DispatchStats::default(), |a, d| DispatchStats {
                flops: a.flops + d.stats.flops,
                bytes: a.bytes + d.stats.bytes,
            })
    }

    /// `family/name`, the id criterion and the CLI show.
    pub fn id(&self) -> String {
        format!("{}/{}", self.family, self.name)
    }

    /// Profiles the case: `warmup` untimed iterations, then `iters` timed ones.
    pub fn measure(&self, ctx: &Context, warmup: u32, iters: u32) -> Result<BenchResult> {
        let refs = self.refs();
        let profile = ctx.profile(&refs, warmup, iters)?;
        let stats = self.stats();
        let micros = profile.total_micros;
        let secs = micros * 1e-6;
        let rate = |x: u64| {
            if secs > 0.0 {
                x as f64 / secs * 1e-9
            } else {
                f64::NAN
            }
        };
        let per_dispatch = profile
            .entries
            .iter()
            .map(|e| DispatchTime {
                label: e.label.clone(),
                micros: e.micros.is_finite().then_some(e.micros),
            })
            .collect();
        Ok(BenchResult {
            family: self.family.to_string(),
            name: self.name.clone(),
            dispatches: self.dispatches.len(),
            per_dispatch,
            iters: iters.max(1),
            micros,
            timing: profile.timing.to_string(),
            flops: stats.flops,
            bytes: stats.bytes,
            gflops: rate(stats.flops),
            gbps: rate(stats.bytes),
        })
    }
}

/// What one case measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    /// Kernel family.
    pub family: String,
    /// Case name.
    pub name: String,
    /// Dispatches per iteration.
    pub dispatches: usize,
    /// Each dispatch timed in a pass of its own (GPU timing only; `None` with wall timing).
    pub per_dispatch: Vec<DispatchTime>,
    /// Timed iterations.
    pub iters: u32,
    /// Mean microseconds per iteration (all of the case's dispatches in one compute pass).
    pub micros: f64,
    /// `"gpu"` (timestamp queries) or `"wall"` (submit-to-idle wall time, includes submit overhead).
    pub timing: String,
    /// FLOPs per iteration (a multiply-add counts 2).
    pub flops: u64,
    /// Global-memory bytes per iteration (each input counted once).
    pub bytes: u64,
    /// Achieved GFLOP/s.
    pub gflops: f64,
    /// Achieved GB/s (10⁹ bytes per second).
    pub gbps: f64,
}

/// One dispatch of a case, timed alone.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DispatchTime {
    /// The dispatch's label (kernel and sizes).
    pub label: String,
    /// Mean GPU microseconds; `None` where only wall time of the whole case is known.
    pub micros: Option<f64>,
}

/// Deterministic data for the cases (SplitMix64), so every run benchmarks the same numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// `n` values uniform in [-a, a).
    fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a)
            .collect()
    }
}

type Keep = Vec<Box<dyn std::any::Any>>;

/// Boxes anything a case must keep alive.
fn keep<T: 'static>(t: T) -> Box<dyn std::any::Any> {
    Box::new(t)
}

/// Builds cases: owns the RNG and collects what each case must keep alive.
struct Builder<'a> {
    ctx: &'a Context,
    rng: Rng,
    out: Vec<BenchCase>,
}

impl<'a> Builder<'a> {
    /// A tensor of seeded values in [-1, 1).
    fn tensor(&mut self, shape: impl Into<Shape>, what: &str) -> Result<Tensor> {
        let shape = shape.into();
        let data = self.rng.vec(shape.numel(), 1.0);
        Tensor::from_f32(self.ctx, shape, &data, what)
    }

    /// An output tensor (contents written by the kernel).
    fn output(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::new(self.ctx, shape, "bench output")
    }

    /// Weights scaled by 1/√fan_in, so outputs stay in the f16 range.
    fn weights(&mut self, len: usize, fan_in: usize) -> Vec<f32> {
        self.rng.vec(len, 1.0 / (fan_in as f32).sqrt())
    }

    /// Per-channel scale and shift (folded batch norm) with `act`.
    fn epilogue(&mut self, c: usize, act: Activation) -> Epilogue {
        let scale = self.rng.vec(c, 0.5).iter().map(|v| v + 1.0).collect();
        Epilogue {
            scale: Some(scale),
            shift: Some(self.rng.vec(c, 0.5)),
            act,
        }
    }

    fn push(&mut self, family: &'static str, name: String, dispatches: Vec<Dispatch>, keep: Keep) {
        self.out.push(BenchCase {
            family,
            name,
            dispatches,
            _keep: keep,
        });
    }

    /// A convolution on a batch-1 `cin×h×w` input, optionally with a residual added after the
    /// activation.
    fn conv(
        &mut self,
        name: &str,
        spec: ConvSpec,
        (h, w): (usize, usize),
        act: Activation,
        residual: bool,
    ) -> Result<()> {
        let weights = self.weights(spec.weight_len(), spec.weights_per_output());
        let epi = self.epilogue(spec.cout, act);
        let conv = Conv2d::new(self.ctx, spec, &weights, &epi)?;
        let x = self.tensor([1, spec.cin, h, w], "bench x")?;
        let out = spec.output_shape(x.shape())?;
        let y = self.output(out)?;
        let r = if residual {
            Some(self.tensor(out, "bench residual")?)
        } else {
            None
        };
        let d = conv.bind(
            self.ctx,
            &x,
            &y,
            r.as_ref().map(|r| (r, Residual::AfterAct)),
        )?;
        let name = format!("{name} {}x{}", out.h, out.w);
        self.push(
            "conv",
            name,
            vec![d],
            vec![keep(conv), keep(x), keep(y), keep(r)],
        );
        Ok(())
    }

    /// A pointwise convolution `cin → cout` on a batch-`n` `h×w` input.
    fn pointwise(
        &mut self,
        name: &str,
        (n, cin, cout, hw): (usize, usize, usize, usize),
        act: Activation,
        residual: bool,
    ) -> Result<()> {
        let weights = self.weights(cin * cout, cin);
        let epi = self.epilogue(cout, act);
        let pw = Pointwise::new(self.ctx, cin, cout, &weights, &epi)?;
        let x = self.tensor([n, cin, hw, hw], "bench x")?;
        let y = self.output([n, cout, hw, hw])?;
        let r = if residual {
            Some(self.tensor(y.shape(), "bench residual")?)
        } else {
            None
        };
        let d = pw.bind(
            self.ctx,
            &x,
            &y,
            r.as_ref().map(|r| (r, Residual::AfterAct)),
        )?;
        let batch = if n > 1 {
            format!(" n{n}")
        } else {
            String::new()
        };
        let name = format!("{name} {cin}->{cout} {hw}x{hw}{batch}");
        self.push(
            "pointwise",
            name,
            vec![d],
            vec![keep(pw), keep(x), keep(y), keep(r)],
        );
        Ok(())
    }

    /// A linear layer on a batch of `n` inputs of shape `(c, h, w)`.
    fn linear(
        &mut self,
        name: &str,
        n: usize,
        input: (usize, usize, usize),
        out: usize,
    ) -> Result<()> {
        let fan_in = input.0 * input.1 * input.2;
        let weights = self.weights(out * fan_in, fan_in);
        let epi = Epilogue::bias(&self.rng.vec(out, 0.1)).with_act(Activation::Leaky(0.2));
        let lin = Linear::new(self.ctx, input, out, &weights, &epi)?;
        let x = self.tensor([n, input.0, input.1, input.2], "bench x")?;
        let y = self.output(lin.output_shape(x.shape())?)?;
        let d = lin.bind(self.ctx, &x, &y)?;
        let name = format!("{name} {fan_in}->{out} n{n}");
        self.push("linear", name, vec![d], vec![keep(lin), keep(x), keep(y)]);
        Ok(())
    }

    /// Modulation of `cin → cout` pointwise weights by a batch of `n` styles; with `apply`, the
    /// modulated pointwise layer on `hw×hw` maps runs after it (two dispatches).
    fn modulate(&mut self, n: usize, cin: usize, cout: usize, apply: Option<usize>) -> Result<()> {
        let spec = ModulateSpec {
            cin,
            cout,
            style_bias: 1.0,
            demodulate: true,
            eps: 1e-8,
        };
        let weights = self.weights(cin * cout, cin);
        let m = Modulate::new(self.ctx, spec, &weights)?;
        let style = self.tensor(Shape::vector(n, cin), "bench style")?;
        let wmod = self.output(m.output_shape(n))?;
        let mut dispatches = vec![m.bind(self.ctx, &style, 0, &wmod)?];
        let mut kept = vec![keep(m), keep(style)];
        let name = match apply {
            None => format!("demod {cin}x{cout} n{n}"),
            Some(hw) => {
                let pw = Pointwise::with_weights(self.ctx, wmod.clone(), &Epilogue::none())?;
                let x = self.tensor([n, cin, hw, hw], "bench x")?;
                let y = self.output([n, cout, hw, hw])?;
                dispatches.push(pw.bind(self.ctx, &x, &y, None)?);
                kept.extend([keep(pw), keep(x), keep(y)]);
                format!("demod+pointwise {cin}->{cout} {hw}x{hw} n{n}")
            }
        };
        kept.push(keep(wmod));
        self.push("modulate", name, dispatches, kept);
        Ok(())
    }

    /// A normalisation of a batch-1 `c×hw×hw` input.
    fn norm(
        &mut self,
        name: &str,
        c: usize,
        hw: usize,
        stats: Stats,
        affine: Affine,
    ) -> Result<()> {
        let style = match affine {
            Affine::Style { .. } => Some(self.tensor(Shape::vector(1, 2 * c), "bench style")?),
            _ => None,
        };
        let norm = Norm::new(
            self.ctx,
            NormSpec {
                channels: c,
                stats,
                affine,
                eps: 1e-5,
                act: Activation::Relu,
            },
        )?;
        let x = self.tensor([1, c, hw, hw], "bench x")?;
        let y = self.output(x.shape())?;
        let d = norm.bind(self.ctx, &x, style.as_ref(), &y)?;
        let name = format!("{name} {c}ch {hw}x{hw}");
        self.push(
            "norm",
            name,
            vec![d],
            vec![keep(norm), keep(x), keep(y), keep(style)],
        );
        Ok(())
    }

    /// A resampling of a batch-1 `c×h×w` input to `size` (ignored by pixel shuffle).
    fn resample(
        &mut self,
        name: &str,
        mode: Resample,
        (c, h, w): (usize, usize, usize),
        size: (usize, usize),
    ) -> Result<()> {
        let x = self.tensor([1, c, h, w], "bench x")?;
        let out = mode.output_shape(x.shape(), size)?;
        let y = self.output(out)?;
        let d = mode.bind(self.ctx, &x, &y)?;
        let name = if out.c == c {
            format!("{name} {c}ch {h}x{w}->{}x{}", out.h, out.w)
        } else {
            format!("{name} {c}->{}ch {h}x{w}->{}x{}", out.c, out.h, out.w)
        };
        self.push("resample", name, vec![d], vec![keep(x), keep(y)]);
        Ok(())
    }

    /// A pooling of a batch-1 `c×hw×hw` input.
    fn pool(&mut self, name: &str, pool: Pool, c: usize, hw: usize) -> Result<()> {
        let x = self.tensor([1, c, hw, hw], "bench x")?;
        let out = pool.output_shape(x.shape())?;
        let y = self.output(out)?;
        let d = pool.bind(self.ctx, &x, &y)?;
        let name = format!("{name} {c}ch {hw}x{hw}->{}x{}", out.h, out.w);
        self.push("pool", name, vec![d], vec![keep(x), keep(y)]);
        Ok(())
    }

    /// An element-wise op on a batch-1 `c×hw×hw` input; `b_shape` is the second operand's shape.
    fn eltwise(
        &mut self,
        name: &str,
        op: Eltwise,
        act: Activation,
        (c, hw): (usize, usize),
        b_shape: Option<Shape>,
    ) -> Result<()> {
        let e = EltwiseOp::new(op, act)?;
        let a = self.tensor([1, c, hw, hw], "bench a")?;
        let b = match b_shape {
            Some(s) => Some(self.tensor(s, "bench b")?),
            None => None,
        };
        let y = self.output(a.shape())?;
        let d = e.bind(self.ctx, &a, b.as_ref(), None, &y)?;
        let name = format!("{name} {c}ch {hw}x{hw}");
        self.push(
            "eltwise",
            name,
            vec![d],
            vec![keep(e), keep(a), keep(b), keep(y)],
        );
        Ok(())
    }
}

fn conv_cases(b: &mut Builder) -> Result<()> {
    // Encoder stem: RGB 224² → 32 channels at 112², stride 2.
    b.conv(
        "stem 3x3/s2 3->32",
        ConvSpec::new(3, 32, 3, 2, 1),
        (224, 224),
        Activation::Relu6,
        false,
    )?;
    // MobileNetV2 expanded depthwise at 112².
    b.conv(
        "dw3x3 64ch",
        ConvSpec::depthwise(64, 3, 1, 1),
        (112, 112),
        Activation::Relu6,
        false,
    )?;
    // Downsampling depthwise 112² → 56².
    b.conv(
        "dw3x3/s2 96ch",
        ConvSpec::depthwise(96, 3, 2, 1),
        (112, 112),
        Activation::Relu6,
        false,
    )?;
    // ResNet-style dense 3×3 at 56², with the block's residual.
    b.conv(
        "dense3x3 32->32 +res",
        ConvSpec::new(32, 32, 3, 1, 1),
        (56, 56),
        Activation::Relu,
        true,
    )?;
    // Decoder dense 3×3 at 28².
    b.conv(
        "dense3x3 64->64",
        ConvSpec::new(64, 64, 3, 1, 1),
        (28, 28),
        Activation::Leaky(0.2),
        false,
    )?;
    // Generator head: 7×7 reflect-padded 3→32 at 128² (pix2pix / inswapper-style stem).
    b.conv(
        "stem 7x7 reflect 3->32",
        ConvSpec::new(3, 32, 7, 1, 3).reflect(),
        (128, 128),
        Activation::Relu,
        false,
    )?;
    Ok(())
}

fn pointwise_cases(b: &mut Builder) -> Result<()> {
    // MobileNetV2 inverted residual at 56²: expand, then project with the block's residual.
    b.pointwise("expand", (1, 32, 192, 56), Activation::Relu6, false)?;
    b.pointwise("project +res", (1, 192, 32, 56), Activation::None, true)?;
    // Bottleneck at 28²: reduce and expand.
    b.pointwise("reduce", (1, 512, 128, 28), Activation::Relu, false)?;
    b.pointwise("expand", (1, 128, 512, 28), Activation::Relu, false)?;
    // Decoder 1×1 at 64², batch 2 (two faces per frame).
    b.pointwise("decoder", (2, 64, 64, 64), Activation::Leaky(0.2), false)?;
    Ok(())
}

fn linear_cases(b: &mut Builder) -> Result<()> {
    // Identity-embedding MLP (ArcFace 512-d) and the AdaIN γ/β head of a 1024-channel block.
    b.linear("id mlp", 1, (1, 1, 512), 512)?;
    b.linear("adain style", 1, (1, 1, 512), 2048)?;
    // Encoder head: flatten 256×4×4 → 512, a batch of 8 crops.
    b.linear("flatten head", 8, (256, 4, 4), 512)?;
    Ok(())
}

fn modulate_cases(b: &mut Builder) -> Result<()> {
    b.modulate(1, 512, 512, None)?;
    b.modulate(4, 256, 256, None)?;
    // A StyleGAN2-style modulated 1×1 layer: new weights per identity, then the layer at 32².
    b.modulate(1, 256, 256, Some(32))?;
    Ok(())
}

fn norm_cases(b: &mut Builder) -> Result<()> {
    let style = Affine::Style {
        gamma_offset: 0,
        beta_offset: 0,
        gamma_bias: 1.0,
    };
    // AdaIN in the identity-injection blocks (inswapper / SimSwap style) at 32².
    b.norm("adain", 512, 32, Stats::Instance, style.clone())?;
    b.norm("instance", 128, 64, Stats::Instance, Affine::None)?;
    // Conditional batch norm with running statistics at 56².
    let c = 64;
    let stats = Stats::Running {
        mean: b.rng.vec(c, 0.1),
        var: b.rng.vec(c, 0.5).iter().map(|v| v + 1.0).collect(),
    };
    b.norm(
        "cond batchnorm",
        c,
        56,
        stats,
        Affine::Style {
            gamma_offset: 0,
            beta_offset: c,
            gamma_bias: 1.0,
        },
    )?;
    Ok(())
}

fn fusion_cases(b: &mut Builder) -> Result<()> {
    // FaceShifter AAD-style blend of identity and attribute features under a learned mask.
    for (c, hw) in [(256, 32), (64, 128)] {
        let a = b.tensor([1, c, hw, hw], "bench a")?;
        let x = b.tensor([1, c, hw, hw], "bench b")?;
        let m = b.tensor([1, 1, hw, hw], "bench mask")?;
        let y = b.output(a.shape())?;
        let d = fusion(b.ctx, &a, &x, &m, true, &y)?;
        b.push(
            "fusion",
            format!("sigmoid mask {c}ch {hw}x{hw}"),
            vec![d],
            vec![keep(a), keep(x), keep(m), keep(y)],
        );
    }
    Ok(())
}

fn resample_cases(b: &mut Builder) -> Result<()> {
    // Face crop to the encoder's input, and decoder upsampling.
    b.resample(
        "bilinear",
        Resample::Bilinear {
            align_corners: false,
        },
        (3, 256, 256),
        (224, 224),
    )?;
    b.resample(
        "bilinear x2",
        Resample::Bilinear {
            align_corners: false,
        },
        (128, 56, 56),
        (112, 112),
    )?;
    b.resample("nearest x2", Resample::Nearest, (256, 32, 32), (64, 64))?;
    b.resample(
        "pixel shuffle r2",
        Resample::PixelShuffle(2),
        (256, 32, 32),
        (0, 0),
    )?;
    Ok(())
}

fn pool_cases(b: &mut Builder) -> Result<()> {
    b.pool(
        "max 3x3/s2",
        Pool::Max {
            k: 3,
            stride: 2,
            pad: 1,
        },
        64,
        112,
    )?;
    b.pool(
        "avg 2x2/s2",
        Pool::Avg {
            k: 2,
            stride: 2,
            pad: 0,
            count_include_pad: true,
        },
        128,
        56,
    )?;
    // Squeeze-excite / embedding head.
    b.pool("global avg", Pool::GlobalAvg, 512, 14)?;
    Ok(())
}

fn eltwise_cases(b: &mut Builder) -> Result<()> {
    b.eltwise(
        "add+relu",
        Eltwise::Add,
        Activation::Relu,
        (64, 112),
        Some(Shape::new(1, 64, 112, 112)),
    )?;
    // Squeeze-excite channel gate.
    b.eltwise(
        "mul by channel",
        Eltwise::Mul,
        Activation::None,
        (256, 28),
        Some(Shape::new(1, 256, 1, 1)),
    )?;
    // Input normalisation of an RGB crop.
    let op = Eltwise::Affine {
        scale: vec![1.0 / 0.229, 1.0 / 0.224, 1.0 / 0.225],
        shift: vec![-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
    };
    b.eltwise("affine", op, Activation::None, (3, 256), None)?;
    Ok(())
}

fn reduce_cases(b: &mut Builder) -> Result<()> {
    // ArcFace embedding normalisation, a batch of 16 faces.
    let x = b.tensor(Shape::vector(16, 512), "bench x")?;
    let y = b.output(x.shape())?;
    let d = l2_normalize(b.ctx, &x, 1e-12, &y)?;
    b.push(
        "reduce",
        "l2 normalize 512 n16".into(),
        vec![d],
        vec![keep(x), keep(y)],
    );
    // Face-parsing logits (19 classes, BiSeNet) at 128².
    let x = b.tensor([1, 19, 128, 128], "bench x")?;
    let y = b.output(x.shape())?;
    let d = softmax_channels(b.ctx, &x, &y)?;
    b.push(
        "reduce",
        "softmax 19ch 128x128".into(),
        vec![d],
        vec![keep(x), keep(y)],
    );
    Ok(())
}

fn concat_cases(b: &mut Builder) -> Result<()> {
    // U-Net skip: decoder 64 + encoder 64 channels at 56² into one 128-channel tensor.
    let dst = b.output([1, 128, 56, 56])?;
    let lo = b.tensor([1, 64, 56, 56], "bench lo")?;
    let hi = b.tensor([1, 64, 56, 56], "bench hi")?;
    let d = vec![
        copy_channels(b.ctx, &lo, &dst, 0)?,
        copy_channels(b.ctx, &hi, &dst, 64)?,
    ];
    b.push(
        "concat",
        "skip 64+64ch 56x56".into(),
        d,
        vec![keep(dst), keep(lo), keep(hi)],
    );
    Ok(())
}

/// Builds the cases of `family` (or of every family in [`FAMILIES`] when `None`) on `ctx`.
/// Pipelines are compiled here, so the cases' first run measures no compilation.
pub fn cases(ctx: &Context, family: Option<&str>) -> Result<Vec<BenchCase>> {
    let wanted: Vec<&str> = match family {
        Some(f) => {
            let f = FAMILIES
                .iter()
                .find(|k| k.eq_ignore_ascii_case(f))
                .ok_or_else(|| {
                    Error::param(
                        "bench",
                        format!(
                            "no kernel family '{f}' (expected one of: {})",
                            FAMILIES.join(", ")
                        ),
                    )
                })?;
            vec![*f]
        }
        None => FAMILIES.to_vec(),
    };
    let mut b = Builder {
        ctx,
        rng: Rng(0xF5A9_BE4C),
        out: Vec::new(),
    };
    for f in wanted {
        match f {
            "conv" => conv_cases(&mut b)?,
            "pointwise" => pointwise_cases(&mut b)?,
            "linear" => linear_cases(&mut b)?,
            "modulate" => modulate_cases(&mut b)?,
            "norm" => norm_cases(&mut b)?,
            "fusion" => fusion_cases(&mut b)?,
            "resample" => resample_cases(&mut b)?,
            "pool" => pool_cases(&mut b)?,
            "eltwise" => eltwise_cases(&mut b)?,
            "reduce" => reduce_cases(&mut b)?,
            "concat" => concat_cases(&mut b)?,
            other => {
                return Err(Error::param(
                    "bench",
                    format!("family '{other}' is listed but has no cases"),
                ))
            }
        }
    }
    // Uploads are queued: land them before anything is timed.
    ctx.wait()?;
    Ok(b.out)
}
