//! faceswap's per-pair autoencoders "Lightweight" and "Original" (spec alignment.md B.2): one
//! encoder shared by both identities, one decoder per identity (`decoder_a`, `decoder_b`), each
//! with an optional learned-mask branch.
//!
//! ```text
//! Conv2DBlock  conv 5×5/s2 'same' (Keras: pad 1 before, 2 after on even sizes) + bias · LeakyReLU 0.1
//! Upscale      conv 3×3 'same' → 4·F channels + bias · LeakyReLU 0.1 · PixelShuffler(2) (channels_last)
//! Output       conv 5×5 'same' + bias · sigmoid
//!
//! Lightweight (E = 512)                         Original (E = 1024; lowmem: E = 512, no conv4)
//! encoder  conv1 3→128, conv2 →256, conv3 →512   conv1 3→128, conv2 →256, conv3 →512, conv4 →1024
//!          flatten (S/8)²·512 → dense1 E          flatten (S/16)²·1024 → dense1 E
//!          dense2 → (S/16)²·512 → reshape          dense2 → (S/16)²·1024 → reshape
//!          upscale 256 → [256, S/8, S/8]           upscale 512 → [512, S/8, S/8]
//! decoder  upscale1 512, upscale2 256,            upscale1 256, upscale2 128, upscale3 64,
//!          upscale3 128, face_out 3 (sigmoid)      face_out 3 (sigmoid)
//! mask     mask_upscale1..3 as the face branch, mask_out 1 (sigmoid), from the same decoder input
//! ```
//!
//! **Sizes.** faceswap builds both models at S = 64 only (51.07M and 82.06M parameters). Any S in
//! 64..=256 divisible by 16 builds here by keeping every channel count and E and letting the dense
//! bottleneck follow the spatial size: dense1 reads `(S/8)²·512` (Lightweight) or `(S/16)²·1024`
//! (Original) features, dense2 writes `(S/16)²·C` that reshape to `[C, S/16, S/16]`, so the decoder
//! reaches S. The dense layers grow as S² (Lightweight dense1 at S = 128: 67M weights), and a
//! device's storage-binding limit (128 MiB on lavapipe: 32M f32 or 64M f16 values) then refuses
//! the larger sizes with a clear error.
//!
//! **Weights file** (`weights/faceswap_lightweight.json`, `weights/faceswap_original.json` at S =
//! 64; [`Config::manifest`] for any S): faceswap's layers under clean names, in PyTorch layouts —
//! conv `[cout, cin, kh, kw]` (a Keras kernel `(kh, kw, cin, cout)` transposed by `(3, 2, 0, 1)`),
//! dense `[out, in]` — with faceswap's own *channel orders* kept, so a faceswap checkpoint converts
//! by transposes alone:
//! - `encoder.conv1` reads **BGR** (faceswap's `color_order`) and `*.face_out` writes BGR;
//! - `encoder.dense1` reads its inputs in channels_last Flatten order `(h·W + w)·C + c`;
//! - `encoder.dense2` writes its outputs in Keras Reshape order `(h·W + w)·C + c`;
//! - an upscale conv's output channel `q·F + f` (`q = 2i + j`) is the channel `f` of sub-pixel
//!   `(i, j)`: faceswap's PixelShuffler reshapes `(h, w, 2, 2, F)` and transposes to
//!   `(h, 2, w, 2, F)`, where PyTorch's `pixel_shuffle` reads channel `4f + q`.
//!
//! The engine runs NCHW with PyTorch's pixel shuffle and takes and returns **RGB**: [`to_engine`]
//! permutes the tensors above once at load (conv1's input channels and face_out's output channels
//! reversed, dense1's columns and dense2's rows to `c·H·W + h·W + w`, upscale rows to `4f + q`),
//! and [`to_file`] is its exact inverse (gradients, checkpoints). This is the one place the colour
//! order and the channels_last orders are handled: everything the engine feeds or reads
//! ([`Autoencoder::input`], faces, masks) is RGB in [0, 1], NCHW.
//!
//! **Initialisation** ([`init`]): faceswap's defaults — HeUniform convolutions (`U(±√(6/fan_in))`,
//! fan_in = cin·kh·kw), Glorot-uniform dense layers (`U(±√(6/(in + out)))`), zero biases — and the
//! ICNR option for the upscale convolutions (HeUniform for F channels, tiled ×4 so all four
//! sub-pixels start with the same kernel: nearest-neighbour upsampling), from a seed.

use std::collections::{BTreeMap, HashMap};

use super::builder::Builder;
use super::random::SplitMix;
use crate::error::{Error, Result};
use crate::gpu::{Context, Plan};
use crate::kernels::cast;
use crate::kernels::conv::ConvSpec;
use crate::kernels::conv_grad::f32_storage;
use crate::kernels::resample::Resample;
use crate::kernels::Activation;
use crate::tensor::{Shape, Tensor};
use crate::weights::{HostTensor, Manifest, TensorSpec, Weights};

/// faceswap's input size for both models.
pub const SIZE: usize = 64;
/// Smallest supported input side.
pub const MIN_SIZE: usize = 64;
/// Largest supported input side.
pub const MAX_SIZE: usize = 256;
/// LeakyReLU slope of every Conv2DBlock and UpscaleBlock.
pub const LRELU: f32 = 0.1;

/// Which faceswap model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `plugins/train/model/lightweight.py`.
    Lightweight,
    /// `plugins/train/model/original.py`.
    Original,
}

impl Arch {
    /// The name used by `fswap eval`, `fswap grad` and `fswap train autoencoder`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Lightweight => "lightweight",
            Arch::Original => "original",
        }
    }

    /// The manifest name (`weights/<name>.json`).
    pub fn manifest_name(self) -> &'static str {
        match self {
            Arch::Lightweight => "faceswap_lightweight",
            Arch::Original => "faceswap_original",
        }
    }

    /// Parses `lightweight` or `original`.
    pub fn from_name(name: &str) -> Result<Arch> {
        match name {
            "lightweight" => Ok(Arch::Lightweight),
            "original" => Ok(Arch::Original),
            other => Err(Error::param(
                "faceswap autoencoder",
                format!("unknown model '{other}' (known: lightweight, original)"),
            )),
        }
    }
}

/// One of the two identities (decoders).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Identity A (`decoder_a`).
    A,
    /// Identity B (`decoder_b`).
    B,
}

impl Side {
    /// Both sides, A first.
    pub const BOTH: [Side; 2] = [Side::A, Side::B];

    /// The decoder's tensor-name prefix: `decoder_a` or `decoder_b`.
    pub fn prefix(self) -> &'static str {
        match self {
            Side::A => "decoder_a",
            Side::B => "decoder_b",
        }
    }

    /// `a` or `b` (output names `face_a`, `mask_b`, ...).
    pub fn letter(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }
}

/// An architecture at one input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// The model.
    pub arch: Arch,
    /// Input and output side S (64 in faceswap; 64..=256, divisible by 16).
    pub size: usize,
    /// Whether each decoder has the learned-mask branch (faceswap `learn_mask`, off by default).
    pub learn_mask: bool,
    /// Original only: faceswap's `lowmem` (E = 512, no conv4).
    pub lowmem: bool,
}

impl Config {
    /// `arch` at side `size`, without mask branch or lowmem; checks the size.
    pub fn new(arch: Arch, size: usize) -> Result<Config> {
        let c = Config {
            arch,
            size,
            learn_mask: false,
            lowmem: false,
        };
        c.validate()?;
        Ok(c)
    }

    /// With or without the learned-mask branch.
    pub fn with_mask(mut self, learn_mask: bool) -> Self {
        self.learn_mask = learn_mask;
        self
    }

    /// Checks the size (64..=256, divisible by 16) and that lowmem is only set for Original.
    pub fn validate(&self) -> Result<()> {
        let op = format!("faceswap {}", self.arch.name());
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) || !self.size.is_multiple_of(16) {
            return Err(Error::param(
                op,
                format!(
                    "size {} is not supported: {MIN_SIZE}..={MAX_SIZE} and divisible by 16 (the \
                     encoder halves it 3 or 4 times and the bottleneck reshapes to S/16)",
                    self.size
                ),
            ));
        }
        if self.lowmem && self.arch != Arch::Original {
            return Err(Error::param(
                op,
                "lowmem is an option of the original model",
            ));
        }
        Ok(())
    }

    /// Output channels of the encoder's 5×5 stride-2 convolutions.
    pub fn encoder_convs(&self) -> &'static [usize] {
        match (self.arch, self.lowmem) {
            (Arch::Original, false) => &[128, 256, 512, 1024],
            _ => &[128, 256, 512],
        }
    }

    /// The dense bottleneck width E.
    pub fn encoder_dim(&self) -> usize {
        match (self.arch, self.lowmem) {
            (Arch::Original, false) => 1024,
            _ => 512,
        }
    }

    /// dense1's input `(C, H, W)`: the last convolution's output.
    pub fn flat_dims(&self) -> (usize, usize, usize) {
        let convs = self.encoder_convs();
        let side = self.size >> convs.len();
        (convs[convs.len() - 1], side, side)
    }

    /// dense2's output reshaped: `(C, S/16, S/16)`.
    pub fn bottleneck_dims(&self) -> (usize, usize, usize) {
        let c = match self.arch {
            Arch::Lightweight => 512,
            Arch::Original => 1024,
        };
        (c, self.size / 16, self.size / 16)
    }

    /// Filters F of the encoder's UpscaleBlock: its output is `[F, S/8, S/8]`, the decoders' input.
    pub fn encoder_out(&self) -> usize {
        match self.arch {
            Arch::Lightweight => 256,
            Arch::Original => 512,
        }
    }

    /// Filters of each decoder's three UpscaleBlocks.
    pub fn decoder_filters(&self) -> [usize; 3] {
        match self.arch {
            Arch::Lightweight => [512, 256, 128],
            Arch::Original => [256, 128, 64],
        }
    }

    /// The latent (decoder input) shape for a batch of `n`.
    pub fn latent_shape(&self, n: usize) -> Shape {
        Shape::new(n, self.encoder_out(), self.size / 8, self.size / 8)
    }

    /// The input shape `[n, 3, S, S]`.
    pub fn input_shape(&self, n: usize) -> Shape {
        Shape::new(n, 3, self.size, self.size)
    }

    /// Every tensor of the weights file with its shape and kind (`conv` / `linear`), mask branch
    /// included when [`Config::learn_mask`].
    pub fn tensors(&self) -> BTreeMap<String, TensorSpec> {
        let mut t = BTreeMap::new();
        let mut add = |name: String, shape: Vec<usize>, kind: &str| {
            t.insert(
                name,
                TensorSpec {
                    shape,
                    kind: kind.to_string(),
                    optional: false,
                },
            );
        };
        let mut conv = |prefix: &str, cout: usize, cin: usize, k: usize| {
            add(format!("{prefix}.weight"), vec![cout, cin, k, k], "conv");
            add(format!("{prefix}.bias"), vec![cout], "conv");
        };
        let mut cin = 3;
        for (i, &c) in self.encoder_convs().iter().enumerate() {
            conv(&format!("encoder.conv{}", i + 1), c, cin, 5);
            cin = c;
        }
        let (bc, bh, bw) = self.bottleneck_dims();
        conv("encoder.upscale", 4 * self.encoder_out(), bc, 3);
        for side in Side::BOTH {
            let p = side.prefix();
            let branches: &[(&str, &str, usize)] = if self.learn_mask {
                &[("upscale", "face_out", 3), ("mask_upscale", "mask_out", 1)]
            } else {
                &[("upscale", "face_out", 3)]
            };
            for (up, out, channels) in branches {
                let mut cin = self.encoder_out();
                for (i, f) in self.decoder_filters().into_iter().enumerate() {
                    conv(&format!("{p}.{up}{}", i + 1), 4 * f, cin, 3);
                    cin = f;
                }
                conv(&format!("{p}.{out}"), *channels, cin, 5);
            }
        }
        let (fc, fh, fw) = self.flat_dims();
        let e = self.encoder_dim();
        let mut add = |name: &str, shape: Vec<usize>| {
            t.insert(
                name.to_string(),
                TensorSpec {
                    shape,
                    kind: "linear".to_string(),
                    optional: false,
                },
            );
        };
        add("encoder.dense1.weight", vec![e, fc * fh * fw]);
        add("encoder.dense1.bias", vec![e]);
        add("encoder.dense2.weight", vec![bc * bh * bw, e]);
        add("encoder.dense2.bias", vec![bc * bh * bw]);
        t
    }

    /// The manifest for this configuration (what a weights file must hold, exactly).
    pub fn manifest(&self) -> Manifest {
        Manifest::from_specs(self.arch.manifest_name(), self.tensors())
    }

    /// Parameter count.
    pub fn parameters(&self) -> usize {
        self.tensors()
            .values()
            .map(|s| s.shape.iter().product::<usize>())
            .sum()
    }

    /// The configuration a weights file holds (size from dense1's input width, mask branch from
    /// `decoder_*.mask_out.*`, lowmem from a missing `encoder.conv4`), checked against
    /// [`Config::manifest`]: every missing, unexpected or mis-shaped tensor is reported by name.
    pub fn from_weights(arch: Arch, w: &Weights) -> Result<Config> {
        if w.linear_in_out() {
            return Err(Error::Format {
                path: w.origin.clone(),
                detail: format!(
                    "faceswap {} files store Linear weights [out, in] (fswap.linear_layout \
                     out_in), this one says in_out",
                    arch.name()
                ),
            });
        }
        let mut cfg = Config {
            arch,
            size: SIZE,
            learn_mask: w.contains("decoder_a.mask_out.weight")
                || w.contains("decoder_b.mask_out.weight"),
            lowmem: arch == Arch::Original
                && !w.contains("encoder.conv4.weight")
                && w.contains("encoder.conv3.weight"),
        };
        if let Some(d1) = w.tensors().get("encoder.dense1.weight") {
            let (fc, _, _) = cfg.flat_dims();
            let shift = cfg.encoder_convs().len();
            if d1.shape.len() == 2 && d1.shape[1] % fc == 0 {
                let side = (((d1.shape[1] / fc) as f64).sqrt().round()) as usize;
                if side * side * fc == d1.shape[1] {
                    cfg.size = side << shift;
                }
            }
        }
        cfg.validate().map_err(|e| Error::Format {
            path: w.origin.clone(),
            detail: format!("encoder.dense1.weight implies an unsupported input size: {e}"),
        })?;
        cfg.manifest().check(w)?;
        Ok(cfg)
    }
}

/// The `'same'` convolution of faceswap (Keras semantics) on a `size`×`size` input.
pub fn same_conv(cin: usize, cout: usize, k: usize, stride: usize, size: usize) -> ConvSpec {
    ConvSpec::new(cin, cout, k, stride, 0).same(size, size)
}

// ---------------------------------------------------------------------------------------------
// layouts

/// How a tensor's elements move between the file layout and the engine's.
#[derive(Clone, Copy, Debug)]
enum Perm {
    /// Upscale conv rows: engine `4f + q` ← file `q·F + f`.
    Shuffle { filters: usize },
    /// RGB ↔ BGR (index `c` ↔ `2 − c`).
    Colour,
    /// channels_last flatten: engine `c·HW + p` ← file `p·C + c`.
    Flatten { hw: usize, c: usize },
}

impl Perm {
    /// The file index that engine index `j` (of `n`) reads.
    fn src(self, j: usize) -> usize {
        match self {
            Perm::Shuffle { filters } => (j % 4) * filters + j / 4,
            Perm::Colour => 2 - j,
            Perm::Flatten { hw, c } => (j % hw) * c + j / hw,
        }
    }
}

/// The permutation of tensor `name` as `(outer, n, inner, perm)`: the tensor viewed as
/// `[outer, n, inner]` has its middle axis permuted; None when it is stored as the engine uses it.
fn permutation(cfg: &Config, name: &str, shape: &[usize]) -> Option<(usize, usize, usize, Perm)> {
    let (layer, what) = name.rsplit_once('.')?;
    let numel: usize = shape.iter().product();
    let rows = shape.first().copied()?;
    let upscale = layer == "encoder.upscale"
        || layer
            .split_once('.')
            .is_some_and(|(d, l)| d.starts_with("decoder_") && l.contains("upscale"));
    if upscale {
        return Some((1, rows, numel / rows, Perm::Shuffle { filters: rows / 4 }));
    }
    if layer.ends_with(".face_out") {
        return Some((1, 3, numel / 3, Perm::Colour));
    }
    let (bc, bh, bw) = cfg.bottleneck_dims();
    let (fc, fh, fw) = cfg.flat_dims();
    match (layer, what) {
        ("encoder.conv1", "weight") => Some((rows, 3, numel / rows / 3, Perm::Colour)),
        ("encoder.dense1", "weight") => {
            Some((rows, numel / rows, 1, Perm::Flatten { hw: fh * fw, c: fc }))
        }
        ("encoder.dense2", _) => {
            Some((1, rows, numel / rows, Perm::Flatten { hw: bh * bw, c: bc }))
        }
        _ => None,
    }
}

/// Applies a tensor's permutation: file → engine (`to_engine`) or back.
fn permute(cfg: &Config, name: &str, t: &HostTensor, to_engine: bool) -> HostTensor {
    let Some((outer, n, inner, perm)) = permutation(cfg, name, &t.shape) else {
        return t.clone();
    };
    let mut out = vec![0.0; t.data.len()];
    for o in 0..outer {
        for j in 0..n {
            let e = (o * n + j) * inner;
            let f = (o * n + perm.src(j)) * inner;
            let (dst, src) = if to_engine { (e, f) } else { (f, e) };
            out[dst..dst + inner].copy_from_slice(&t.data[src..src + inner]);
        }
    }
    HostTensor::new(t.shape.clone(), out)
}

/// The weights a file holds (faceswap channel orders, BGR) in the engine's layout (NCHW flatten,
/// PyTorch pixel-shuffle order, RGB), same names and shapes; checks the file first.
pub fn to_engine(arch: Arch, w: &Weights) -> Result<(Config, Weights)> {
    let cfg = Config::from_weights(arch, w)?;
    let tensors = w
        .tensors()
        .iter()
        .map(|(k, t)| (k.clone(), permute(&cfg, k, t, true)))
        .collect();
    let mut meta = w.metadata().clone();
    meta.insert("fswap.layout".into(), "engine".into());
    Ok((
        cfg,
        Weights::from_tensors(&format!("{} (engine layout)", w.origin), tensors, meta),
    ))
}

/// Tensors in the engine's layout (values or gradients by parameter name) back in the file's;
/// names this model does not have (e.g. input gradients) pass unchanged.
pub fn to_file(
    cfg: &Config,
    tensors: BTreeMap<String, HostTensor>,
) -> BTreeMap<String, HostTensor> {
    tensors
        .into_iter()
        .map(|(k, t)| {
            let f = permute(cfg, &k, &t, false);
            (k, f)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// initialisation

/// 64-bit FNV-1a of a name (decorrelates the per-tensor generators).
fn fnv(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Fresh weights in the file layout: HeUniform convolutions, Glorot-uniform dense layers, zero
/// biases, and with `icnr` the upscale convolutions ICNR-initialised (HeUniform for `F` output
/// channels, copied to all four sub-pixels). Each tensor draws from its own [`SplitMix`] seeded
/// by `seed` and its name, so adding the mask branch leaves the other tensors unchanged.
pub fn init(cfg: &Config, seed: u64, icnr: bool) -> BTreeMap<String, HostTensor> {
    cfg.tensors()
        .into_iter()
        .map(|(name, spec)| {
            let shape = spec.shape.clone();
            let n: usize = shape.iter().product();
            let mut rng = SplitMix::new(seed ^ fnv(&name));
            let data = if name.ends_with(".bias") {
                vec![0.0; n]
            } else if spec.kind == "linear" {
                let l = (6.0f64 / (shape[0] + shape[1]) as f64).sqrt() as f32;
                (0..n).map(|_| rng.uniform(-l, l)).collect()
            } else {
                let per_row = n / shape[0];
                let l = (6.0f64 / per_row as f64).sqrt() as f32;
                let upscale = permutation(cfg, &name, &shape)
                    .is_some_and(|p| matches!(p.3, Perm::Shuffle { .. }));
                if icnr && upscale {
                    let f = shape[0] / 4;
                    let base: Vec<f32> = (0..f * per_row).map(|_| rng.uniform(-l, l)).collect();
                    // file row q·F + f is sub-pixel q of channel f: every q gets base row f
                    (0..4).flat_map(|_| base.iter().copied()).collect()
                } else {
                    (0..n).map(|_| rng.uniform(-l, l)).collect()
                }
            };
            (name, HostTensor::new(shape, data))
        })
        .collect()
}

/// [`init`] as a [`Weights`] (file layout) with the metadata a checkpoint carries.
pub fn init_weights(cfg: &Config, seed: u64, icnr: bool) -> Weights {
    let meta = HashMap::from([
        (
            "fswap.model".to_string(),
            cfg.arch.manifest_name().to_string(),
        ),
        ("fswap.linear_layout".to_string(), "out_in".to_string()),
        ("fswap.size".to_string(), cfg.size.to_string()),
        (
            "fswap.source".to_string(),
            format!(
                "fswap init seed {seed}: he_uniform convs{}, glorot_uniform dense, zero biases",
                if icnr { " (ICNR upscales)" } else { "" }
            ),
        ),
    ]);
    Weights::from_tensors(
        &format!("{} init (seed {seed})", cfg.arch.name()),
        init(cfg, seed, icnr),
        meta,
    )
}

// ---------------------------------------------------------------------------------------------
// inference

/// One decoder's outputs.
pub struct Decoded {
    /// `[N, 3, S, S]` RGB in [0, 1].
    pub face: Tensor,
    /// `[N, 1, S, S]` in [0, 1], with the mask branch.
    pub mask: Option<Tensor>,
}

/// A built autoencoder for a fixed batch: write RGB faces into [`Autoencoder::input`], run
/// [`Autoencoder::plan`], read each built side's [`Decoded`].
pub struct Autoencoder {
    /// The architecture and size (read from the weights).
    pub config: Config,
    /// `[N, 3, S, S]`, RGB in [0, 1].
    pub input: Tensor,
    /// The encoder's output `[N, F, S/8, S/8]`.
    pub latent: Tensor,
    /// Decoder A's outputs, when built.
    pub a: Option<Decoded>,
    /// Decoder B's outputs, when built.
    pub b: Option<Decoded>,
    /// Encoder, then the decoders in `sides` order.
    pub plan: Plan,
}

/// `conv 3×3 → LeakyReLU → PixelShuffler(2)` with weights `{prefix}.*` (engine layout).
fn upscale(b: &mut Builder, x: &Tensor, prefix: &str, filters: usize) -> Result<Tensor> {
    let s = x.shape();
    let spec = same_conv(s.c, 4 * filters, 3, 1, s.h);
    let y = b.conv(x, spec, prefix, true, None, Activation::Leaky(LRELU))?;
    let out = b.tensor(Shape::new(s.n, filters, 2 * s.h, 2 * s.w), prefix)?;
    b.plan
        .push(Resample::PixelShuffle(2).bind(b.ctx, &y, &out)?);
    Ok(out)
}

/// A copy of `x` under `shape` (same logical order), through an f32 scratch buffer.
fn reshape(b: &mut Builder, x: &Tensor, shape: Shape, what: &str) -> Result<Tensor> {
    let y = b.tensor(shape, what)?;
    let scratch = f32_storage(b.ctx, what, shape.numel())?;
    b.plan.push(cast::to_f32(b.ctx, x, &scratch, 0, None)?);
    b.plan.push(cast::to_half(b.ctx, &scratch, 0, &y, None)?);
    Ok(y)
}

fn encoder(b: &mut Builder, cfg: &Config, x: &Tensor) -> Result<Tensor> {
    let mut h = x.clone();
    for (i, &c) in cfg.encoder_convs().iter().enumerate() {
        let s = h.shape();
        let spec = same_conv(s.c, c, 5, 2, s.h);
        h = b.conv(
            &h,
            spec,
            &format!("encoder.conv{}", i + 1),
            true,
            None,
            Activation::Leaky(LRELU),
        )?;
    }
    let (bc, bh, bw) = cfg.bottleneck_dims();
    let d1 = b.linear(
        &h,
        "encoder.dense1",
        cfg.encoder_dim(),
        None,
        Activation::None,
    )?;
    let d2 = b.linear(&d1, "encoder.dense2", bc * bh * bw, None, Activation::None)?;
    let r = reshape(b, &d2, Shape::new(x.shape().n, bc, bh, bw), "bottleneck")?;
    upscale(b, &r, "encoder.upscale", cfg.encoder_out())
}

fn decoder(b: &mut Builder, cfg: &Config, side: Side, z: &Tensor) -> Result<Decoded> {
    let p = side.prefix();
    let mut branch = |up: &str, out: &str, channels: usize| -> Result<Tensor> {
        let mut h = z.clone();
        for (i, f) in cfg.decoder_filters().into_iter().enumerate() {
            h = upscale(b, &h, &format!("{p}.{up}{}", i + 1), f)?;
        }
        let s = h.shape();
        let spec = same_conv(s.c, channels, 5, 1, s.h);
        b.conv(
            &h,
            spec,
            &format!("{p}.{out}"),
            true,
            None,
            Activation::Sigmoid,
        )
    };
    let face = branch("upscale", "face_out", 3)?;
    let mask = if cfg.learn_mask {
        Some(branch("mask_upscale", "mask_out", 1)?)
    } else {
        None
    };
    Ok(Decoded { face, mask })
}

impl Autoencoder {
    /// Checks `w` (a file-layout weights file of `arch`; size, mask branch and lowmem read from
    /// its shapes), converts it to the engine layout and builds the encoder and the decoders of
    /// `sides` for a batch of `n`.
    pub fn new(ctx: &Context, arch: Arch, w: &Weights, n: usize, sides: &[Side]) -> Result<Self> {
        if n == 0 {
            return Err(Error::param(
                format!("faceswap {}", arch.name()),
                "batch must be at least 1",
            ));
        }
        let (cfg, ew) = to_engine(arch, w)?;
        let mut b = Builder::new(ctx, &ew);
        let input = b.tensor(cfg.input_shape(n), "faceswap input")?;
        let latent = encoder(&mut b, &cfg, &input)?;
        let (mut a, mut bb) = (None, None);
        for &side in sides {
            let d = decoder(&mut b, &cfg, side, &latent)?;
            match side {
                Side::A => a = Some(d),
                Side::B => bb = Some(d),
            }
        }
        Ok(Autoencoder {
            config: cfg,
            input,
            latent,
            a,
            b: bb,
            plan: b.plan,
        })
    }

    /// Batch size the plan was built for.
    pub fn batch(&self) -> usize {
        self.input.shape().n
    }

    /// A built side's outputs.
    pub fn side(&self, side: Side) -> Option<&Decoded> {
        match side {
            Side::A => self.a.as_ref(),
            Side::B => self.b.as_ref(),
        }
    }
}

/// `fswap eval --model lightweight|original`: `face` `[N, 3, S, S]` RGB in [0, 1] (S from the
/// weights) → `face_a`, `face_b` `[N, 3, S, S]` RGB in [0, 1] (+ `mask_a`, `mask_b` `[N, 1, S, S]`
/// with the mask branch).
pub fn eval(
    ctx: &Context,
    arch: Arch,
    w: &Weights,
    face: &HostTensor,
) -> Result<BTreeMap<String, HostTensor>> {
    let cfg = Config::from_weights(arch, w)?;
    let s = &face.shape;
    let size = cfg.size;
    if s.len() != 4 || s[0] == 0 || s[1..] != [3, size, size] {
        return Err(Error::shape(
            format!("eval {}", arch.name()),
            format!(
                "input 'face' has shape {s:?}, expected [N, 3, {size}, {size}] (the size the \
                 weights were built for)"
            ),
        ));
    }
    let n = s[0];
    let net = Autoencoder::new(ctx, arch, w, n, &Side::BOTH)?;
    net.input.write_f32(ctx, &face.data)?;
    net.plan.run(ctx)?;
    let mut out = BTreeMap::new();
    for side in Side::BOTH {
        let d = net.side(side).expect("both sides built");
        let l = side.letter();
        out.insert(
            format!("face_{l}"),
            HostTensor::new(vec![n, 3, size, size], d.face.to_f32(ctx)?),
        );
        if let Some(m) = &d.mask {
            out.insert(
                format!("mask_{l}"),
                HostTensor::new(vec![n, 1, size, size], m.to_f32(ctx)?),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_spec() {
        // spec B.2: Lightweight 29.81M + 2 × 10.63M = 51.07M; Original 69.66M + 2 × 6.20M = 82.06M
        let lw = Config::new(Arch::Lightweight, 64).unwrap();
        let or = Config::new(Arch::Original, 64).unwrap();
        assert_eq!((lw.parameters() as f64 / 1e4).round() / 100.0, 51.07);
        assert_eq!((or.parameters() as f64 / 1e4).round() / 100.0, 82.06);
        let enc = |c: &Config| -> usize {
            c.tensors()
                .iter()
                .filter(|(k, _)| k.starts_with("encoder."))
                .map(|(_, s)| s.shape.iter().product::<usize>())
                .sum()
        };
        assert_eq!((enc(&lw) as f64 / 1e4).round() / 100.0, 29.81);
        assert_eq!((enc(&or) as f64 / 1e4).round() / 100.0, 69.66);
    }

    #[test]
    fn keras_same_padding() {
        // even input, k5 s2: pad 1 before, 2 after; k3 s1: 1/1; k5 s1: 2/2
        let s = same_conv(3, 8, 5, 2, 64);
        assert_eq!((s.pad, s.pad_extra), ((1, 1), (1, 1)));
        assert_eq!(
            s.output_shape(Shape::new(1, 3, 64, 64)).unwrap(),
            Shape::new(1, 8, 32, 32)
        );
        let s = same_conv(3, 8, 3, 1, 16);
        assert_eq!((s.pad, s.pad_extra), ((1, 1), (0, 0)));
        let s = same_conv(3, 8, 5, 1, 16);
        assert_eq!((s.pad, s.pad_extra), ((2, 2), (0, 0)));
        // odd input, k5 s2: total 4 → 2/2
        let s = same_conv(3, 8, 5, 2, 9);
        assert_eq!((s.pad, s.pad_extra), ((2, 2), (0, 0)));
    }

    #[test]
    fn layout_round_trips_and_moves_what_it_should() {
        let cfg = Config::new(Arch::Lightweight, 80).unwrap().with_mask(true);
        for (name, spec) in cfg.tensors() {
            let n: usize = spec.shape.iter().product();
            let t = HostTensor::new(spec.shape.clone(), (0..n).map(|i| i as f32).collect());
            let e = permute(&cfg, &name, &t, true);
            assert_eq!(permute(&cfg, &name, &e, false), t, "{name}");
            let mut sorted = e.data.clone();
            sorted.sort_by(f32::total_cmp);
            assert_eq!(sorted, t.data, "{name}: not a permutation");
        }
        // upscale: engine row 4f + q holds file row q·F + f
        let t = HostTensor::new(vec![8, 1, 1, 1], (0..8).map(|i| i as f32).collect());
        let e = permute(&cfg, "decoder_a.upscale3.bias", &t, true);
        assert_eq!(e.data, [0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]);
        // dense2 rows: engine c·HW + p holds file p·C + c
        let (c, h, w) = cfg.bottleneck_dims();
        let t = HostTensor::new(vec![c * h * w], (0..c * h * w).map(|i| i as f32).collect());
        let e = permute(&cfg, "encoder.dense2.bias", &t, true);
        assert_eq!(e.data[1], c as f32); // c = 0, p = 1
        assert_eq!(e.data[h * w], 1.0); // c = 1, p = 0
    }
}
