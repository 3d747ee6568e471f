//! FaceBoxes (spec alignment.md §A.3): the face detector of 3DDFA_V2 (zisianw/FaceBoxes.PyTorch),
//! built from the official weights (`FaceBoxesProd`, PyTorch names) into a [`Plan`] for one image
//! size. Pre- and post-processing (resize, means, priors, decoding, NMS) are in
//! [`crate::face::detect`].
//!
//! ```text
//! conv1       CReLU 7×7/4 p3 3→24 (→48) · maxpool 3/2 p1        H → ⌈H/4⌉ → ⌈H/8⌉
//! conv2       CReLU 5×5/2 p2 48→64 (→128) · maxpool 3/2 p1      → ⌈H/16⌉ → ⌈H/32⌉
//! inception×3 128 → [1×1 32 | avgpool 3/1 · 1×1 32 | 1×1 24 · 3×3 32 | 1×1 24 · 3×3 32 · 3×3 32]
//!                                                                source 1, stride 32, 21 anchors
//! conv3       1×1 128→128 · 3×3/2 128→256                       source 2, stride 64, 1 anchor
//! conv4       1×1 256→128 · 3×3/2 128→256                       source 3, stride 128, 1 anchor
//! heads       3×3 p1 with bias: loc 4 and conf 2 per anchor, on each source
//! ```
//!
//! How it maps onto the kernels (20 dispatches in all):
//! - every conv + BN (+ ReLU) is one convolution with the batch norm folded into its epilogue;
//! - CReLU `relu(cat(y, −y))` is one convolution with weights `[W; W]`, epilogue scale `[s; −s]`
//!   and shift `[t; −t]`, then ReLU (exact: negation commutes with rounding);
//! - an Inception module is three dispatches that write its concat directly, no copies:
//!   1. one 1×1 convolution 128→128 computing `[branch1x1 | u = W₁ₓ₁₋₂·x | reduce (+8 zero) |
//!      reduce_2 (+8 zero)]`, with a per-channel slope of 0 (ReLU) or 1 (identity, for `u`);
//!   2. a 4-group 3×3 convolution passing the first three groups through (centre tap 1) and
//!      computing `branch3x3_2` from `reduce_2`;
//!   3. a 4-group 3×3 convolution giving `[branch1x1 | branch1x1_2 | branch3x3 | branch3x3_3]`:
//!      pass-through, `relu(bn(avgpool(u)))` (avg pool counting padding, as 9 unit taps with the
//!      1/9 folded into the BN scale: pool and 1×1 convolution commute), and the two 3×3 convs;
//! - the loc and conf heads of a source are one convolution with `[loc; conf]` output channels.

use std::sync::OnceLock;

use super::builder::{Builder, BN_EPS};
use crate::error::{Error, Result};
use crate::gpu::{Context, Plan};
use crate::kernels::conv::{Conv2d, ConvSpec};
use crate::kernels::pointwise::Pointwise;
use crate::kernels::pool::Pool;
use crate::kernels::{Activation, Epilogue};
use crate::tensor::{Shape, Tensor};
use crate::weights::{Manifest, Weights};

/// Images taller than this are scaled down to it (official `HEIGHT`).
pub const MAX_HEIGHT: usize = 720;
/// Then images still wider than this are scaled down to it (official `WIDTH`).
pub const MAX_WIDTH: usize = 1080;
/// Per-channel means subtracted from the 0–255 pixel values, in the network's B, G, R order.
pub const MEANS_BGR: [f32; 3] = [104.0, 117.0, 123.0];
/// Strides of the three detection sources, in input pixels.
pub const STEPS: [usize; 3] = [32, 64, 128];
/// Anchor sizes per source, in input pixels.
pub const MIN_SIZES: [&[usize]; 3] = [&[32, 64, 128], &[256], &[512]];
/// Anchors per cell of each source: 32-px anchors densified 4×4, 64-px 2×2, the others 1.
pub const ANCHORS: [usize; 3] = [21, 1, 1];
/// Input channels of each source's heads.
const SOURCE_CHANNELS: [usize; 3] = [128, 256, 256];

/// The network input for an image: the official resize rule's size and factor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InputSize {
    /// Network input height (the resized image's).
    pub height: usize,
    /// Network input width.
    pub width: usize,
    /// The official `scale`: boxes in network pixels are divided by it to give image pixels. It is
    /// the factor the rule computed, not `height / image height` (they differ by the truncation).
    pub scale: f64,
}

/// The official resize rule (FaceBoxes.py `__call__`), in the same double-precision steps:
/// `scale = 720/h` if `h > 720`; then, if `w·scale > 1080`, `scale *= 1080/(w·scale)`; the input is
/// `int(scale·h) × int(scale·w)`, or the image itself when `scale == 1`.
pub fn input_size(height: usize, width: usize) -> InputSize {
    let (h, w) = (height as f64, width as f64);
    let mut scale = 1.0f64;
    if h > MAX_HEIGHT as f64 {
        scale = MAX_HEIGHT as f64 / h;
    }
    if w * scale > MAX_WIDTH as f64 {
        scale *= MAX_WIDTH as f64 / (w * scale);
    }
    if scale == 1.0 {
        return InputSize {
            height,
            width,
            scale,
        };
    }
    InputSize {
        height: (scale * h) as usize,
        width: (scale * w) as usize,
        scale,
    }
}

/// Feature-map size (rows, columns) of each source for a network input: `⌈H/step⌉ × ⌈W/step⌉`,
/// which is also what the strided layers produce.
pub fn feature_maps(input: InputSize) -> [(usize, usize); 3] {
    STEPS.map(|s| (input.height.div_ceil(s), input.width.div_ceil(s)))
}

/// The FaceBoxes manifest (`weights/faceboxes.json`): every tensor by name with its shape.
pub fn manifest() -> Result<Manifest> {
    static M: OnceLock<std::result::Result<Manifest, String>> = OnceLock::new();
    M.get_or_init(|| {
        serde_json::from_str(include_str!("../../weights/faceboxes.json"))
            .map_err(|e| format!("weights/faceboxes.json: {e}"))
    })
    .clone()
    .map_err(|e| Error::param("manifest", e))
}

/// FaceBoxes on the GPU for images of one size: write the preprocessed image into
/// [`FaceBoxes::input`], run [`FaceBoxes::plan`], read the heads with [`FaceBoxes::read_outputs`].
pub struct FaceBoxes {
    /// Height of the images this plan is for.
    pub image_height: usize,
    /// Width of the images this plan is for.
    pub image_width: usize,
    /// The network input size and scale the official rule gives for that image size.
    pub input_size: InputSize,
    /// `[1, 3, h, w]`: the resized image as B, G, R planes minus [`MEANS_BGR`] (0–255 scale).
    pub input: Tensor,
    /// Per source `[1, 6·anchors, fh, fw]`: loc (anchor-major, 4 each) then conf logits (2 each).
    pub heads: [Tensor; 3],
    /// The forward pass (no readback).
    pub plan: Plan,
}

/// The raw outputs in the official order (position-major over the three sources, then anchor).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawOutputs {
    /// `[P, 4]` flattened: offsets to the priors (cx, cy, w, h), before the variances.
    pub loc: Vec<f32>,
    /// `[P, 2]` flattened: class logits (background, face).
    pub conf: Vec<f32>,
}

impl FaceBoxes {
    /// Checks `w` against the manifest (every tensor by name and shape) and builds the plan for
    /// `height × width` images.
    pub fn new(ctx: &Context, w: &Weights, height: usize, width: usize) -> Result<Self> {
        manifest()?.check(w)?;
        let input_size = input_size(height, width);
        if input_size.height == 0 || input_size.width == 0 {
            return Err(Error::param(
                "faceboxes",
                format!(
                    "a {height}x{width} image resizes to {}x{}: nothing to detect on",
                    input_size.height, input_size.width
                ),
            ));
        }
        let mut b = Builder::new(ctx, w);
        let input = b.tensor(
            Shape::new(1, 3, input_size.height, input_size.width),
            "faceboxes input",
        )?;
        let x = crelu(&mut b, &input, "conv1", ConvSpec::new(3, 24, 7, 4, 3))?;
        let x = max_pool(&mut b, &x)?;
        let x = crelu(&mut b, &x, "conv2", ConvSpec::new(48, 64, 5, 2, 2))?;
        let mut x = max_pool(&mut b, &x)?;
        for i in 1..=3 {
            x = inception(&mut b, &x, &format!("inception{i}"))?;
        }
        let s1 = x;
        let s2 = basic(&mut b, &s1, "conv3_1", ConvSpec::new(128, 128, 1, 1, 0))?;
        let s2 = basic(&mut b, &s2, "conv3_2", ConvSpec::new(128, 256, 3, 2, 1))?;
        let s3 = basic(&mut b, &s2, "conv4_1", ConvSpec::new(256, 128, 1, 1, 0))?;
        let s3 = basic(&mut b, &s3, "conv4_2", ConvSpec::new(128, 256, 3, 2, 1))?;
        let heads = [
            head(&mut b, &s1, 0)?,
            head(&mut b, &s2, 1)?,
            head(&mut b, &s3, 2)?,
        ];
        for (j, ((fh, fw), t)) in feature_maps(input_size).iter().zip(&heads).enumerate() {
            let s = t.shape();
            if (s.h, s.w) != (*fh, *fw) {
                return Err(Error::shape(
                    "faceboxes",
                    format!("source {j} is {}x{}, its priors need {fh}x{fw}", s.h, s.w),
                ));
            }
        }
        Ok(FaceBoxes {
            image_height: height,
            image_width: width,
            input_size,
            input,
            heads,
            plan: b.plan,
        })
    }

    /// Number of priors (predictions) per image.
    pub fn priors(&self) -> usize {
        feature_maps(self.input_size)
            .iter()
            .zip(ANCHORS)
            .map(|((h, w), a)| h * w * a)
            .sum()
    }

    /// Reads the three heads back in one copy and one wait (after [`FaceBoxes::plan`] ran) and
    /// reorders them into the official `[P, 4]` / `[P, 2]` layout.
    pub fn read_outputs(&self, ctx: &Context) -> Result<RawOutputs> {
        let total: u64 = self.heads.iter().map(|t| t.shape().bytes()).sum();
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("faceboxes heads readback"),
            size: total,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let mut offset = 0;
        for t in &self.heads {
            let bytes = t.shape().bytes();
            enc.copy_buffer_to_buffer(t.buffer(), 0, &staging, offset, bytes);
            offset += bytes;
        }
        ctx.queue.submit([enc.finish()]);
        let raw = ctx.map_read(&staging, total)?;
        let halves: Vec<half::f16> = bytemuck::pod_collect_to_vec(&raw);
        let p = self.priors();
        let mut out = RawOutputs {
            loc: Vec::with_capacity(4 * p),
            conf: Vec::with_capacity(2 * p),
        };
        let mut base = 0;
        for (t, a) in self.heads.iter().zip(ANCHORS) {
            let s = t.shape();
            let at = |c: usize, pos: usize| halves[base + c * s.row_stride() + pos].to_f32();
            for pos in 0..s.plane() {
                out.loc.extend((0..4 * a).map(|c| at(c, pos)));
                out.conf.extend((0..2 * a).map(|c| at(4 * a + c, pos)));
            }
            base += s.stored();
        }
        Ok(out)
    }
}

/// Folded inference batch norm `{prefix}.*` of `c` channels: `(scale, shift)`.
fn bn_affine(w: &Weights, prefix: &str, c: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let bn = w.batch_norm(prefix, c)?;
    Ok((0..c)
        .map(|i| {
            let k = bn.gamma[i] as f64 / (bn.var[i] as f64 + BN_EPS as f64).sqrt();
            (k as f32, (bn.beta[i] as f64 - bn.mean[i] as f64 * k) as f32)
        })
        .unzip())
}

/// Appends a convolution with host weights (PyTorch layout) and epilogue; 1×1 dense stride-1
/// convolutions go to the pointwise kernel.
fn conv(
    b: &mut Builder,
    x: &Tensor,
    spec: ConvSpec,
    weights: &[f32],
    epi: &Epilogue,
    what: &str,
) -> Result<Tensor> {
    let y = b.tensor(spec.output_shape(x.shape())?, what)?;
    let pointwise =
        spec.kernel == (1, 1) && spec.groups == 1 && spec.stride == (1, 1) && spec.pad == (0, 0);
    let d = if pointwise {
        Pointwise::new(b.ctx, spec.cin, spec.cout, weights, epi)?.bind(b.ctx, x, &y, None)?
    } else {
        Conv2d::new(b.ctx, spec, weights, epi)?.bind(b.ctx, x, &y, None)?
    };
    b.plan.push(d);
    Ok(y)
}

/// `BasicConv2d`: `{prefix}.conv` (no bias) · `{prefix}.bn` · ReLU.
fn basic(b: &mut Builder, x: &Tensor, prefix: &str, spec: ConvSpec) -> Result<Tensor> {
    b.conv(
        x,
        spec,
        &format!("{prefix}.conv"),
        false,
        Some(&format!("{prefix}.bn")),
        Activation::Relu,
    )
}

/// `CRelu`: `relu(cat(bn(conv(x)), −bn(conv(x))))` as one convolution of twice the outputs.
fn crelu(b: &mut Builder, x: &Tensor, prefix: &str, spec: ConvSpec) -> Result<Tensor> {
    let (k, c) = (spec.kernel.0, spec.cout);
    let wt =
        b.w.get(&format!("{prefix}.conv.weight"), &[c, spec.cin, k, k])?;
    let (scale, shift) = bn_affine(b.w, &format!("{prefix}.bn"), c)?;
    let epi = Epilogue {
        scale: Some(
            scale
                .iter()
                .chain(&scale)
                .enumerate()
                .map(neg_second(c))
                .collect(),
        ),
        shift: Some(
            shift
                .iter()
                .chain(&shift)
                .enumerate()
                .map(neg_second(c))
                .collect(),
        ),
        act: Activation::Relu,
    };
    let doubled: Vec<f32> = wt.iter().chain(wt).copied().collect();
    conv(
        b,
        x,
        ConvSpec {
            cout: 2 * c,
            ..spec
        },
        &doubled,
        &epi,
        prefix,
    )
}

/// Negates the entries from index `c` on.
fn neg_second(c: usize) -> impl Fn((usize, &f32)) -> f32 {
    move |(i, v)| if i < c { *v } else { -*v }
}

/// `F.max_pool2d(x, 3, stride=2, padding=1)` (padding never wins the max).
fn max_pool(b: &mut Builder, x: &Tensor) -> Result<Tensor> {
    let pool = Pool::Max {
        k: 3,
        stride: 2,
        pad: 1,
    };
    let y = b.tensor(pool.output_shape(x.shape())?, "maxpool")?;
    b.plan.push(pool.bind(b.ctx, x, &y)?);
    Ok(y)
}

/// Channels of one Inception group (every group is padded to this).
const G: usize = 32;

/// Weights of a 4-group 3×3 convolution `[128, 32, 3, 3]` under construction.
struct Grouped {
    w: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl Grouped {
    fn new() -> Self {
        Grouped {
            w: vec![0.0; 4 * G * G * 9],
            scale: vec![1.0; 4 * G],
            shift: vec![0.0; 4 * G],
        }
    }
    /// Group `g` passes its 32 input channels through (centre tap 1, scale 1, shift 0).
    fn identity(&mut self, g: usize) {
        for o in 0..G {
            self.w[((g * G + o) * G + o) * 9 + 4] = 1.0;
        }
    }
    /// Group `g` applies `weights` `[32, cin, 3, 3]` to its first `cin` input channels, then `bn`.
    fn conv(&mut self, g: usize, weights: &[f32], cin: usize, bn: (Vec<f32>, Vec<f32>)) {
        for o in 0..G {
            for i in 0..cin {
                let src = (o * cin + i) * 9;
                let dst = ((g * G + o) * G + i) * 9;
                self.w[dst..dst + 9].copy_from_slice(&weights[src..src + 9]);
            }
        }
        self.scale[g * G..(g + 1) * G].copy_from_slice(&bn.0);
        self.shift[g * G..(g + 1) * G].copy_from_slice(&bn.1);
    }
    fn epilogue(self, act: Activation) -> (Vec<f32>, Epilogue) {
        (
            self.w,
            Epilogue {
                scale: Some(self.scale),
                shift: Some(self.shift),
                act,
            },
        )
    }
}

/// One Inception module (see the module docs), three dispatches, output in the official order.
fn inception(b: &mut Builder, x: &Tensor, p: &str) -> Result<Tensor> {
    let w = b.w;
    let get = |name: &str, cout: usize, cin: usize, k: usize| {
        w.get(&format!("{p}.{name}.conv.weight"), &[cout, cin, k, k])
    };
    let bn = |name: &str, c: usize| bn_affine(w, &format!("{p}.{name}.bn"), c);
    // 1. 1×1 128→128: [branch1x1 | u | reduce, 0×8 | reduce_2, 0×8]; slope 1 keeps u linear.
    let mut w1 = vec![0.0f32; 4 * G * 128];
    let mut scale = vec![1.0f32; 4 * G];
    let mut shift = vec![0.0f32; 4 * G];
    let mut slope = vec![0.0f32; 4 * G];
    let parts: [(&str, usize, bool); 4] = [
        ("branch1x1", 32, true),
        ("branch1x1_2", 32, false),
        ("branch3x3_reduce", 24, true),
        ("branch3x3_reduce_2", 24, true),
    ];
    for (g, (name, c, with_bn)) in parts.into_iter().enumerate() {
        let o = g * G;
        w1[o * 128..(o + c) * 128].copy_from_slice(get(name, c, 128, 1)?);
        if with_bn {
            let (s, t) = bn(name, c)?;
            scale[o..o + c].copy_from_slice(&s);
            shift[o..o + c].copy_from_slice(&t);
        } else {
            slope[o..o + c].fill(1.0);
        }
    }
    let epi = Epilogue {
        scale: Some(scale),
        shift: Some(shift),
        act: Activation::PRelu(slope.clone()),
    };
    let t1 = conv(
        b,
        x,
        ConvSpec::new(128, 128, 1, 1, 0),
        &w1,
        &epi,
        &format!("{p} 1x1"),
    )?;
    let grouped = ConvSpec::new(128, 128, 3, 1, 1).groups(4);
    // 2. pass-through ×3, branch3x3_2 on reduce_2.
    let mut g2 = Grouped::new();
    for g in 0..3 {
        g2.identity(g);
    }
    g2.conv(
        3,
        get("branch3x3_2", 32, 24, 3)?,
        24,
        bn("branch3x3_2", 32)?,
    );
    let (w2, epi2) = g2.epilogue(Activation::PRelu(slope));
    let t2 = conv(b, &t1, grouped, &w2, &epi2, &format!("{p} 3x3 a"))?;
    // 3. pass-through, avgpool·BN on u, branch3x3 on reduce, branch3x3_3 on branch3x3_2.
    let mut g3 = Grouped::new();
    g3.identity(0);
    for o in 0..G {
        let at = ((G + o) * G + o) * 9;
        g3.w[at..at + 9].fill(1.0);
    }
    let (s, t) = bn("branch1x1_2", 32)?;
    g3.scale[G..2 * G].copy_from_slice(&s.iter().map(|v| v / 9.0).collect::<Vec<_>>());
    g3.shift[G..2 * G].copy_from_slice(&t);
    g3.conv(2, get("branch3x3", 32, 24, 3)?, 24, bn("branch3x3", 32)?);
    g3.conv(
        3,
        get("branch3x3_3", 32, 32, 3)?,
        32,
        bn("branch3x3_3", 32)?,
    );
    let (w3, epi3) = g3.epilogue(Activation::Relu);
    conv(b, &t2, grouped, &w3, &epi3, p)
}

/// Source `j`'s heads as one 3×3 convolution: `[loc.j; conf.j]` weights and biases.
fn head(b: &mut Builder, x: &Tensor, j: usize) -> Result<Tensor> {
    let (cin, a) = (SOURCE_CHANNELS[j], ANCHORS[j]);
    let loc_w = b.w.get(&format!("loc.{j}.weight"), &[4 * a, cin, 3, 3])?;
    let conf_w = b.w.get(&format!("conf.{j}.weight"), &[2 * a, cin, 3, 3])?;
    let loc_b = b.w.get(&format!("loc.{j}.bias"), &[4 * a])?;
    let conf_b = b.w.get(&format!("conf.{j}.bias"), &[2 * a])?;
    let weights: Vec<f32> = loc_w.iter().chain(conf_w).copied().collect();
    let bias: Vec<f32> = loc_b.iter().chain(conf_b).copied().collect();
    conv(
        b,
        x,
        ConvSpec::new(cin, 6 * a, 3, 1, 1),
        &weights,
        &Epilogue::bias(&bias),
        &format!("heads {j}"),
    )
}
