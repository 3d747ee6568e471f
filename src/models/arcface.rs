//! ArcFace IR-SE ResNet (spec mobilefaceswap.md §2.1): the identity encoder of MobileFaceSwap.
//! Stage depths are read from the weights (IR-SE-50 [3,4,14,3], IR-SE-101 [3,4,23,3], or any).
//!
//! ```text
//! stem    conv3x3 3→64 p0 · BN · PReLU · maxpool 2/2          112 → 110 → 55
//! stages  IRBlock × depth at 64/128/256/512, first of 2-4 stride 2   55 → 28 → 14 → 7
//! IRBlock BN · conv3x3 · BN · PReLU · conv3x3/s · BN · SE · (+ shortcut) · PReLU
//! head    BN2d → id_feature_map (512×7×7) → FC 25088→512 · BN1d → L2 normalise → id_embedding
//! ```

use std::collections::BTreeMap;

use super::builder::Builder;
use crate::error::{Error, Result};
use crate::gpu::{Context, Plan};
use crate::kernels::conv::ConvSpec;
use crate::kernels::eltwise::{Eltwise, EltwiseOp};
use crate::kernels::pool::Pool;
use crate::kernels::reduce::l2_normalize;
use crate::kernels::Activation;
use crate::tensor::{Shape, Tensor};
use crate::weights::{Manifest, TensorSpec, Weights};

/// Channels of the four stages.
pub const CHANNELS: [usize; 4] = [64, 128, 256, 512];

/// Input side and embedding size.
pub const INPUT: usize = 112;
/// Embedding dimension.
pub const EMBEDDING: usize = 512;

/// Counts `layer{s}.{b}.` blocks per stage in the weights.
pub fn depths(w: &Weights) -> Result<[usize; 4]> {
    let mut d = [0usize; 4];
    for (s, depth) in d.iter_mut().enumerate() {
        while w.contains(&format!("layer{}.{}.conv1.weight", s + 1, *depth)) {
            *depth += 1;
        }
        if *depth == 0 {
            return Err(Error::Format {
                path: w.origin.clone(),
                detail: format!(
                    "no 'layer{}.0.conv1.weight': not ArcFace IR-SE weights",
                    s + 1
                ),
            });
        }
    }
    Ok(d)
}

/// The manifest for given stage depths (every tensor the model reads, with its shape).
pub fn manifest(depths: [usize; 4], w: &Weights) -> Manifest {
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
    let bn = |add: &mut dyn FnMut(String, Vec<usize>, &str), p: &str, c: usize| {
        for k in ["weight", "bias", "_mean", "_variance"] {
            add(format!("{p}.{k}"), vec![c], "bn");
        }
    };
    // PReLU slopes are shared ([1], `nn.PReLU()` in the original) unless the file has one per channel.
    let prelu_shape = |name: &str, c: usize| -> Vec<usize> {
        match w.tensors().get(name) {
            Some(t) if t.shape == [c] => vec![c],
            _ => vec![1],
        }
    };
    add("conv1.weight".into(), vec![64, 3, 3, 3], "conv");
    bn(&mut add, "bn1", 64);
    add(
        "prelu._weight".into(),
        prelu_shape("prelu._weight", 64),
        "prelu",
    );
    let mut cin = 64;
    for (s, &depth) in depths.iter().enumerate() {
        let c = CHANNELS[s];
        for b in 0..depth {
            let p = format!("layer{}.{b}", s + 1);
            let ci = if b == 0 { cin } else { c };
            bn(&mut add, &format!("{p}.bn0"), ci);
            add(format!("{p}.conv1.weight"), vec![ci, ci, 3, 3], "conv");
            bn(&mut add, &format!("{p}.bn1"), ci);
            let pn = format!("{p}.prelu._weight");
            add(pn.clone(), prelu_shape(&pn, ci), "prelu");
            add(format!("{p}.conv2.weight"), vec![c, ci, 3, 3], "conv");
            bn(&mut add, &format!("{p}.bn2"), c);
            add(format!("{p}.se.fc.0.weight"), vec![c / 16, c], "linear");
            add(format!("{p}.se.fc.0.bias"), vec![c / 16], "linear");
            let sn = format!("{p}.se.fc.1._weight");
            add(sn.clone(), prelu_shape(&sn, c / 16), "prelu");
            add(format!("{p}.se.fc.2.weight"), vec![c, c / 16], "linear");
            add(format!("{p}.se.fc.2.bias"), vec![c], "linear");
            if b == 0 && (s > 0 || ci != c) {
                add(
                    format!("{p}.downsample.0.weight"),
                    vec![c, ci, 1, 1],
                    "conv",
                );
                bn(&mut add, &format!("{p}.downsample.1"), c);
            }
        }
        cin = c;
    }
    bn(&mut add, "bn2", 512);
    add("fc.weight".into(), vec![EMBEDDING, 512 * 7 * 7], "linear");
    add("fc.bias".into(), vec![EMBEDDING], "linear");
    bn(&mut add, "bn3", EMBEDDING);
    Manifest::from_specs("arcface", t)
}

/// ArcFace on the GPU for a fixed batch: upload faces into [`ArcFace::input`], run [`ArcFace::plan`].
pub struct ArcFace {
    /// Stage depths found in the weights.
    pub depths: [usize; 4],
    /// `[N, 3, 112, 112]`, already normalised as the manifest says.
    pub input: Tensor,
    /// `[N, 512, 7, 7]`, the map after the head's BN (what the identity injection consumes).
    pub feature_map: Tensor,
    /// `[N, 1, 1, 512]`, L2-normalised.
    pub embedding: Tensor,
    /// The forward pass.
    pub plan: Plan,
}

impl ArcFace {
    /// Checks `w` against the manifest for its depths and builds the plan for batch `n`.
    pub fn new(ctx: &Context, w: &Weights, n: usize) -> Result<Self> {
        let depths = depths(w)?;
        manifest(depths, w).check(w)?;
        let mut b = Builder::new(ctx, w);
        let input = b.tensor(Shape::new(n, 3, INPUT, INPUT), "arcface input")?;
        let stem_act = b.prelu("prelu", 64)?;
        let x = b.conv(
            &input,
            ConvSpec::new(3, 64, 3, 1, 0),
            "conv1",
            false,
            Some("bn1"),
            stem_act,
        )?;
        let mut x = {
            let pool = Pool::Max {
                k: 2,
                stride: 2,
                pad: 0,
            };
            let y = b.tensor(pool.output_shape(x.shape())?, "maxpool")?;
            b.plan.push(pool.bind(ctx, &x, &y)?);
            y
        };
        for (s, &depth) in depths.iter().enumerate() {
            for blk in 0..depth {
                let stride = if blk == 0 && s > 0 { 2 } else { 1 };
                x = ir_block(
                    &mut b,
                    &x,
                    &format!("layer{}.{blk}", s + 1),
                    CHANNELS[s],
                    stride,
                )?;
            }
        }
        let feature_map = b.batch_norm(&x, "bn2", Activation::None)?;
        let fc = b.linear(&feature_map, "fc", EMBEDDING, Some("bn3"), Activation::None)?;
        let embedding = b.tensor(fc.shape(), "id_embedding")?;
        // The reference divides by the norm with no epsilon; 1e-12 only guards an all-zero vector.
        b.plan.push(l2_normalize(ctx, &fc, 1e-12, &embedding)?);
        Ok(ArcFace {
            depths,
            input,
            feature_map,
            embedding,
            plan: b.plan,
        })
    }
}

/// BN · conv3x3 · BN · PReLU · conv3x3/s · BN · SE · (+ shortcut) · PReLU (the same PReLU twice).
fn ir_block(b: &mut Builder, x: &Tensor, p: &str, c: usize, stride: usize) -> Result<Tensor> {
    let ci = x.shape().c;
    let prelu = b.prelu(&format!("{p}.prelu"), ci)?;
    let h = b.batch_norm(x, &format!("{p}.bn0"), Activation::None)?;
    let h = b.conv(
        &h,
        ConvSpec::new(ci, ci, 3, 1, 1),
        &format!("{p}.conv1"),
        false,
        Some(&format!("{p}.bn1")),
        prelu.clone(),
    )?;
    let h = b.conv(
        &h,
        ConvSpec::new(ci, c, 3, stride, 1),
        &format!("{p}.conv2"),
        false,
        Some(&format!("{p}.bn2")),
        Activation::None,
    )?;
    // Squeeze-excitation: global average → FC C→C/16 · PReLU → FC → sigmoid gate per channel.
    let pooled = {
        let y = b.tensor(Pool::GlobalAvg.output_shape(h.shape())?, "se pool")?;
        b.plan.push(Pool::GlobalAvg.bind(b.ctx, &h, &y)?);
        y
    };
    let se_act = b.prelu(&format!("{p}.se.fc.1"), c / 16)?;
    let s1 = b.linear(&pooled, &format!("{p}.se.fc.0"), c / 16, None, se_act)?;
    let gate = b.linear(&s1, &format!("{p}.se.fc.2"), c, None, Activation::Sigmoid)?;
    let shortcut = if b.w.contains(&format!("{p}.downsample.0.weight")) {
        b.conv(
            x,
            ConvSpec::new(ci, c, 1, stride, 0),
            &format!("{p}.downsample.0"),
            false,
            Some(&format!("{p}.downsample.1")),
            Activation::None,
        )?
    } else {
        x.clone()
    };
    // The block's PReLU has ci slopes if per channel; ci == c whenever it is applied here per channel
    // with a downsample-free block, and stages with a downsample use shared slopes in practice.
    let out_act = match &prelu {
        Activation::PRelu(v) if v.len() != 1 && v.len() != c => {
            return Err(Error::shape(
                p,
                format!(
                    "PReLU has {} slopes, block output has {c} channels",
                    v.len()
                ),
            ))
        }
        a => a.clone(),
    };
    let y = b.tensor(h.shape(), p)?;
    let op = EltwiseOp::new(Eltwise::Mul, out_act)?;
    b.plan
        .push(op.bind(b.ctx, &h, Some(&gate), Some(&shortcut), &y)?);
    Ok(y)
}
