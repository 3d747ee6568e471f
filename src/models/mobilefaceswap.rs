//! MobileFaceSwap (spec mobilefaceswap.md): the identity injection network (IIN), run once per
//! source identity, and the per-frame IDN it configures.
//!
//! IIN, on the GPU:
//! ```text
//! weights prediction   Z = LReLU(BN(first 4×4 p0 (F)))                       512×4×4
//!   encoder chain      h ← LReLU(BN(conv3×3 h)); k = weight3×3(h)   C = 256,128,64,32,3 → E4..E0 DW 4×4
//!   decoder chain      Zd = LReLU(BN(first_decoder 2×2 p0 (Z))); same blocks  C = 512,512,256,128 → D0..D3 DW 3×3
//! modulation           s = style(z); W' = W·(1+s[i]); rows / √(Σ W'² + 1e-16)   9 PW kernels
//! ```
//! The predicted kernels come out as `[1, C, k, k]` tensors, which the depthwise convolution reads
//! directly; the modulated kernels in the pointwise kernel's own layout. No relayout pass.
//!
//! IDN, per frame (`x = (target − 0.5)/0.5`):
//! ```text
//! E0..E4   DW 4×4/s2 p1 → PW → LReLU                       224 → 7
//! D0..D3   up2 → DW 3×3 → PW → LReLU → concat skip (e3, e2, e1; none for D3)
//! final    up2 → 1×1 32→8 · BN · LReLU → 3×3 8→3 · BN · LReLU → 3×3 3→3 · tanh → (t+1)/2
//! mask     e4 → 5 × [up2 → DW 3×3 → PW · BN · LReLU] → 3×3 2→1 → sigmoid
//! output   swapped = out·m + target·(1−m), mask = m
//! ```

use std::collections::{BTreeMap, HashMap};

use super::builder::{Builder, LRELU};
use crate::error::{Error, Result};
use crate::gpu::{Context, Plan};
use crate::kernels::concat::copy_channels;
use crate::kernels::conv::ConvSpec;
use crate::kernels::fusion::fusion;
use crate::kernels::modulate::{Modulate, ModulateSpec};
use crate::kernels::pointwise::transpose_weights;
use crate::kernels::{Activation, Epilogue};
use crate::tensor::{Shape, Tensor};
use crate::weights::{HostTensor, Manifest, Weights};

/// Encoder channels `[3, 32, 64, 128, 256, 512]`.
pub const ENC: [usize; 6] = [3, 32, 64, 128, 256, 512];
/// Decoder input channels (after concat).
pub const DEC_IN: [usize; 4] = [512, 512, 256, 128];
/// Decoder output channels (before concat).
pub const DEC_OUT: [usize; 4] = [256, 128, 64, 32];
/// Mask-branch channels.
pub const MASK: [usize; 6] = [512, 128, 64, 32, 8, 2];
/// Frame side.
pub const SIZE: usize = 224;
/// Demodulation epsilon of `Mod2Weight`.
pub const DEMOD_EPS: f32 = 1e-16;

/// The per-identity kernels of the IDN, on the GPU in the layouts the kernels read:
/// depthwise `[1, C, k, k]`, pointwise `[1, cin, 1, cout]`.
#[derive(Clone)]
pub struct Identity {
    /// E0..E4 depthwise 4×4 kernels.
    pub enc_dw: Vec<Tensor>,
    /// E0..E4 pointwise kernels.
    pub enc_pw: Vec<Tensor>,
    /// D0..D3 depthwise 3×3 kernels.
    pub dec_dw: Vec<Tensor>,
    /// D0..D3 pointwise kernels.
    pub dec_pw: Vec<Tensor>,
}

fn dw_name(enc: bool, i: usize) -> String {
    format!("{}.{i}.0.weight", if enc { "Encoder" } else { "Decoder" })
}
fn pw_name(enc: bool, i: usize) -> String {
    format!("{}.{i}.1.weight", if enc { "Encoder" } else { "Decoder" })
}

impl Identity {
    /// Uploads kernels from an IDN state dict (a saved identity, or an injected UNet exported by
    /// `tools/export.py`): `Encoder.i.0.weight` `[C, 1, 4, 4]`, `Encoder.i.1.weight` `[Cout, Cin, 1, 1]`, ...
    pub fn from_weights(ctx: &Context, w: &Weights) -> Result<Self> {
        let mut id = Identity {
            enc_dw: vec![],
            enc_pw: vec![],
            dec_dw: vec![],
            dec_pw: vec![],
        };
        for i in 0..5 {
            let (cin, cout) = (ENC[i], ENC[i + 1]);
            let dw = w.get(&dw_name(true, i), &[cin, 1, 4, 4])?;
            id.enc_dw.push(Tensor::from_f32(
                ctx,
                Shape::new(1, cin, 4, 4),
                dw,
                &dw_name(true, i),
            )?);
            let pw = w.get(&pw_name(true, i), &[cout, cin, 1, 1])?;
            id.enc_pw.push(Tensor::from_f32(
                ctx,
                Shape::new(1, cin, 1, cout),
                &transpose_weights(pw, cin, cout),
                &pw_name(true, i),
            )?);
        }
        for j in 0..4 {
            let (cin, cout) = (DEC_IN[j], DEC_OUT[j]);
            let dw = w.get(&dw_name(false, j), &[cin, 1, 3, 3])?;
            id.dec_dw.push(Tensor::from_f32(
                ctx,
                Shape::new(1, cin, 3, 3),
                dw,
                &dw_name(false, j),
            )?);
            let pw = w.get(&pw_name(false, j), &[cout, cin, 1, 1])?;
            id.dec_pw.push(Tensor::from_f32(
                ctx,
                Shape::new(1, cin, 1, cout),
                &transpose_weights(pw, cin, cout),
                &pw_name(false, j),
            )?);
        }
        for (name, t) in w.tensors() {
            let dynamic_bias = (name.starts_with("Encoder.") || name.starts_with("Decoder."))
                && name.ends_with(".bias");
            if dynamic_bias && t.data.iter().any(|v| *v != 0.0) {
                return Err(Error::Format {
                    path: w.origin.clone(),
                    detail: format!(
                        "'{name}' is non-zero; the IDN's dynamic convolutions have no bias"
                    ),
                });
            }
        }
        Ok(id)
    }

    /// Reads the kernels back as an IDN state dict in PyTorch layouts (UNet names of spec §1.6).
    pub fn to_host(&self, ctx: &Context) -> Result<BTreeMap<String, HostTensor>> {
        let mut out = BTreeMap::new();
        let mut put = |enc: bool, i: usize, dw: &Tensor, pw: &Tensor| -> Result<()> {
            let (s, p) = (dw.shape(), pw.shape());
            out.insert(
                dw_name(enc, i),
                HostTensor::new(vec![s.c, 1, s.h, s.w], dw.to_f32(ctx)?),
            );
            let (cin, cout) = (p.c, p.w);
            let t = pw.to_f32(ctx)?; // [cin, cout]
            out.insert(
                pw_name(enc, i),
                HostTensor::new(vec![cout, cin, 1, 1], transpose_weights(&t, cout, cin)),
            );
            Ok(())
        };
        for i in 0..5 {
            put(true, i, &self.enc_dw[i], &self.enc_pw[i])?;
        }
        for j in 0..4 {
            put(false, j, &self.dec_dw[j], &self.dec_pw[j])?;
        }
        Ok(out)
    }
}

/// The identity injection network (`BuildFaceSwap`): from an ArcFace embedding and feature map to
/// the IDN's kernels, on the GPU. Built once; [`Injection::plan`] re-runs it for a new identity
/// written into its inputs.
pub struct Injection {
    /// `[1, 1, 1, 512]` L2-normalised embedding.
    pub embedding: Tensor,
    /// `[1, 512, 7, 7]` ArcFace feature map.
    pub feature_map: Tensor,
    /// The kernels it produces.
    pub identity: Identity,
    /// Its dispatches.
    pub plan: Plan,
}

impl Injection {
    /// Checks `w` against the `mobilefaceswap` manifest and builds the injection.
    pub fn new(ctx: &Context, w: &Weights) -> Result<Self> {
        Manifest::builtin("mobilefaceswap")?.check(w)?;
        let mut b = Builder::new(ctx, w);
        let embedding = b.tensor(Shape::vector(1, 512), "id_embedding")?;
        let feature_map = b.tensor(Shape::new(1, 512, 7, 7), "id_feature_map")?;
        let lrelu = Activation::Leaky(LRELU);
        // Weights prediction.
        let z = b.conv(
            &feature_map,
            ConvSpec::new(512, 512, 4, 1, 0),
            "predictor.first",
            true,
            Some("predictor.norm"),
            lrelu.clone(),
        )?;
        let mut enc_dw =
            kernel_chain(&mut b, &z, "predictor.encoder", &[512, 256, 128, 64, 32, 3])?;
        enc_dw.reverse(); // predicted for C = 256..3, used by E0..E4 (C = 3..256)
        let zd = b.conv(
            &z,
            ConvSpec::new(512, 512, 2, 1, 0),
            "predictor.first_decoder",
            true,
            Some("predictor.decoder_norm"),
            lrelu.clone(),
        )?;
        let dec_dw = kernel_chain(&mut b, &zd, "predictor.decoder", &[512, 512, 512, 256, 128])?;
        // Weights modulation + demodulation.
        let mut modulated = |prefix: String, cin: usize, cout: usize| -> Result<Tensor> {
            let s = b.linear(
                &embedding,
                &format!("{prefix}.style"),
                cin,
                None,
                Activation::None,
            )?;
            let base = w.get(&format!("{prefix}.weight"), &[cout, cin, 1, 1])?;
            let m = Modulate::new(
                ctx,
                ModulateSpec {
                    cin,
                    cout,
                    style_bias: 1.0,
                    demodulate: true,
                    eps: DEMOD_EPS,
                },
                base,
            )?;
            let out = b.tensor(m.output_shape(1), &prefix)?;
            b.plan.push(m.bind(ctx, &s, 0, &out)?);
            Ok(out)
        };
        let enc_pw = (0..5)
            .map(|i| modulated(format!("EncoderModulation.{i}"), ENC[i], ENC[i + 1]))
            .collect::<Result<Vec<_>>>()?;
        let dec_pw = (0..4)
            .map(|j| modulated(format!("DecoderModulation.{j}"), DEC_IN[j], DEC_OUT[j]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Injection {
            embedding,
            feature_map,
            identity: Identity {
                enc_dw,
                enc_pw,
                dec_dw,
                dec_pw,
            },
            plan: b.plan,
        })
    }
}

/// A chain of `ConvBlock`s (spec §2.2): `h ← LReLU(BN(conv3×3 h))`, and from each `h` a kernel
/// `weight3×3(h)` of shape `[1, C, k, k]` (k = the map's side): the predicted depthwise kernels.
fn kernel_chain(b: &mut Builder, z: &Tensor, prefix: &str, chain: &[usize]) -> Result<Vec<Tensor>> {
    let mut h = z.clone();
    let mut kernels = Vec::new();
    for (k, c) in chain.windows(2).enumerate() {
        let p = format!("{prefix}.{k}");
        h = b.conv(
            &h,
            ConvSpec::new(c[0], c[1], 3, 1, 1),
            &format!("{p}.conv"),
            true,
            Some(&format!("{p}.norm")),
            Activation::Leaky(LRELU),
        )?;
        kernels.push(b.conv(
            &h,
            ConvSpec::new(c[1], c[1], 3, 1, 1),
            &format!("{p}.weight"),
            true,
            None,
            Activation::None,
        )?);
    }
    Ok(kernels)
}

/// The per-frame IDN for a batch of `N` aligned 224×224 RGB targets in [0, 1].
pub struct Idn {
    /// `[N, 3, 224, 224]` input.
    pub target: Tensor,
    /// `[N, 3, 224, 224]` swapped faces in [0, 1].
    pub swapped: Tensor,
    /// `[N, 1, 224, 224]` fusion mask.
    pub mask: Tensor,
    /// The forward pass.
    pub plan: Plan,
}

impl Idn {
    /// Builds the IDN from an identity's kernels and the static `final.*` / `mask.*` weights.
    pub fn new(ctx: &Context, id: &Identity, statics: &Weights, n: usize) -> Result<Self> {
        let mut b = Builder::new(ctx, statics);
        let lrelu = Activation::Leaky(LRELU);
        let target = b.tensor(Shape::new(n, 3, SIZE, SIZE), "target")?;
        let x = b.affine(&target, vec![2.0], vec![-1.0], Activation::None)?;
        let none = Epilogue::none();
        let act = Epilogue::none().with_act(lrelu.clone());
        let mut skips = Vec::new();
        let mut h = x;
        for ((&c, dw_k), pw_k) in ENC.iter().zip(&id.enc_dw).zip(&id.enc_pw) {
            let dw = b.conv_dynamic(&h, ConvSpec::depthwise(c, 4, 2, 1), dw_k, &none, "enc dw")?;
            h = b.pointwise_dynamic(&dw, pw_k, &act, "enc pw")?;
            skips.push(h.clone());
        }
        let e4 = h.clone();
        for j in 0..4 {
            let up = b.up2(&h)?;
            let dw = b.conv_dynamic(
                &up,
                ConvSpec::depthwise(DEC_IN[j], 3, 1, 1),
                &id.dec_dw[j],
                &none,
                "dec dw",
            )?;
            let pw = b.pointwise_dynamic(&dw, &id.dec_pw[j], &act, "dec pw")?;
            h = if j < 3 {
                let skip = &skips[3 - j]; // e3, e2, e1
                let s = pw.shape();
                let cat = b.tensor(Shape::new(s.n, s.c + skip.shape().c, s.h, s.w), "concat")?;
                b.plan.push(copy_channels(ctx, &pw, &cat, 0)?);
                b.plan.push(copy_channels(ctx, skip, &cat, s.c)?);
                cat
            } else {
                pw
            };
        }
        // Output head.
        let up = b.up2(&h)?;
        let f = b.conv(
            &up,
            ConvSpec::new(32, 8, 1, 1, 0),
            "final.1",
            true,
            Some("final.2"),
            lrelu.clone(),
        )?;
        let f = b.conv(
            &f,
            ConvSpec::new(8, 3, 3, 1, 1),
            "final.4",
            true,
            Some("final.5"),
            lrelu.clone(),
        )?;
        let t = b.conv(
            &f,
            ConvSpec::new(3, 3, 3, 1, 1),
            "final.7",
            true,
            None,
            Activation::Tanh,
        )?;
        let out = b.affine(&t, vec![0.5], vec![0.5], Activation::None)?;
        // Mask branch on e4.
        let mut m = e4;
        for t in 0..5 {
            let (c, c2) = (MASK[t], MASK[t + 1]);
            let up = b.up2(&m)?;
            let dw = b.conv(
                &up,
                ConvSpec::depthwise(c, 3, 1, 1),
                &format!("mask.{t}.1"),
                true,
                None,
                Activation::None,
            )?;
            m = b.conv(
                &dw,
                ConvSpec::new(c, c2, 1, 1, 0),
                &format!("mask.{t}.2"),
                true,
                Some(&format!("mask.{t}.3")),
                lrelu.clone(),
            )?;
        }
        let mask = b.conv(
            &m,
            ConvSpec::new(2, 1, 3, 1, 1),
            "mask.5",
            true,
            None,
            Activation::Sigmoid,
        )?;
        let swapped = b.tensor(target.shape(), "swapped")?;
        b.plan
            .push(fusion(ctx, &out, &target, &mask, false, &swapped)?);
        Ok(Idn {
            target,
            swapped,
            mask,
            plan: b.plan,
        })
    }
}

/// The static (identity-independent) tensors: `final.*` and `mask.*`.
pub fn statics(w: &Weights) -> Weights {
    let t = w
        .tensors()
        .iter()
        .filter(|(k, _)| k.starts_with("final.") || k.starts_with("mask."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Weights::from_tensors(&w.origin, t, w.metadata().clone())
}

/// Metadata written with a saved identity.
pub fn identity_metadata() -> HashMap<String, String> {
    HashMap::from([
        ("fswap.model".to_string(), "idn".to_string()),
        ("fswap.source".to_string(), "fswap identity".to_string()),
        ("fswap.linear_layout".to_string(), "out_in".to_string()),
    ])
}
