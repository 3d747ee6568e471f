//! The MobileFaceSwap networks and ArcFace as training graphs: the same layer lists as
//! `models::mobilefaceswap` and `models::arcface` (spec tables), built on [`crate::autograd`] so
//! every layer has its backward.

use crate::autograd::net::Net;
use crate::autograd::Var;
use crate::error::{Error, Result};
use crate::kernels::conv::ConvSpec;
use crate::kernels::modulate::ModulateSpec;
use crate::kernels::pool::Pool;
use crate::kernels::Activation;
use crate::models::arcface::{self, CHANNELS, EMBEDDING};
use crate::models::builder::LRELU;
use crate::models::mobilefaceswap::{DEC_IN, DEC_OUT, DEMOD_EPS, ENC, MASK, SIZE};
use crate::tensor::Shape;

fn lrelu() -> Activation {
    Activation::Leaky(LRELU)
}

/// The IDN's 18 dynamic kernels as graph values (from the injection network).
pub struct IdentityVars {
    /// E0..E4 depthwise `[1, C, 4, 4]`.
    pub enc_dw: Vec<Var>,
    /// E0..E4 pointwise `[1, cin, 1, cout]`.
    pub enc_pw: Vec<Var>,
    /// D0..D3 depthwise `[1, C, 3, 3]`.
    pub dec_dw: Vec<Var>,
    /// D0..D3 pointwise `[1, cin, 1, cout]`.
    pub dec_pw: Vec<Var>,
}

/// The IDN's values of interest.
pub struct IdnVars {
    /// Input `[N, 3, 224, 224]` in [0, 1].
    pub target: Var,
    /// Generator output before fusion, in [0, 1].
    pub generated: Var,
    /// Fused output.
    pub swapped: Var,
    /// Fusion mask `[N, 1, 224, 224]`.
    pub mask: Var,
}

/// One depthwise-separable stage: DW (stride `s`) → PW → LReLU, with kernels from `kernels`
/// (values) or from the weights file under `{prefix}.0` / `{prefix}.1` (an `idn` state dict).
#[allow(clippy::too_many_arguments)]
fn separable(
    net: &mut Net,
    h: Var,
    prefix: &str,
    dw_spec: ConvSpec,
    cout: usize,
    kernels: Option<(Var, Var)>,
) -> Result<Var> {
    let c = dw_spec.cin;
    match kernels {
        Some((dw_k, pw_k)) => {
            let dw = net.g.conv_dynamic(h, dw_spec, dw_k, Activation::None)?;
            net.g.pointwise_dynamic(dw, pw_k, lrelu())
        }
        None => {
            let bias = |net: &Net, p: &str| net.w.contains(&format!("{p}.bias"));
            let (p0, p1) = (format!("{prefix}.0"), format!("{prefix}.1"));
            let b0 = bias(net, &p0);
            let dw = net.conv(h, dw_spec, &p0, b0, None, Activation::None)?;
            let b1 = bias(net, &p1);
            net.conv(dw, ConvSpec::new(c, cout, 1, 1, 0), &p1, b1, None, lrelu())
        }
    }
}

/// The per-frame IDN (spec §1) on `target` `[N, 3, 224, 224]`: kernels from `kernels`, or from
/// the weights file (`idn` state dict) when None; `final.*` and `mask.*` from the weights file.
/// The mask branch reads e4 detached (spec §3).
pub fn idn(net: &mut Net, target: Var, kernels: Option<&IdentityVars>) -> Result<IdnVars> {
    let s = net.g.shape(target);
    if (s.c, s.h, s.w) != (3, SIZE, SIZE) {
        return Err(Error::shape(
            "idn graph",
            format!("target is {:?}, expected [N, 3, {SIZE}, {SIZE}]", s.dims()),
        ));
    }
    let x = net.g.affine(target, vec![2.0], vec![-1.0])?;
    let mut skips = Vec::new();
    let mut h = x;
    for i in 0..5 {
        let k = kernels.map(|k| (k.enc_dw[i], k.enc_pw[i]));
        let spec = ConvSpec::depthwise(ENC[i], 4, 2, 1);
        h = separable(net, h, &format!("Encoder.{i}"), spec, ENC[i + 1], k)?;
        skips.push(h);
    }
    let e4 = h;
    for j in 0..4 {
        let up = net.g.up2(h)?;
        let k = kernels.map(|k| (k.dec_dw[j], k.dec_pw[j]));
        let spec = ConvSpec::depthwise(DEC_IN[j], 3, 1, 1);
        let pw = separable(net, up, &format!("Decoder.{j}"), spec, DEC_OUT[j], k)?;
        h = if j < 3 {
            net.g.concat(&[pw, skips[3 - j]])? // e3, e2, e1
        } else {
            pw
        };
    }
    // Output head.
    let up = net.g.up2(h)?;
    let f = net.conv(
        up,
        ConvSpec::new(32, 8, 1, 1, 0),
        "final.1",
        true,
        Some("final.2"),
        lrelu(),
    )?;
    let f = net.conv(
        f,
        ConvSpec::new(8, 3, 3, 1, 1),
        "final.4",
        true,
        Some("final.5"),
        lrelu(),
    )?;
    let t = net.conv(
        f,
        ConvSpec::new(3, 3, 3, 1, 1),
        "final.7",
        true,
        None,
        Activation::Tanh,
    )?;
    let generated = net.g.affine(t, vec![0.5], vec![0.5])?;
    // Mask branch on e4, detached.
    let mut m = net.g.detach(e4);
    for t in 0..5 {
        let (c, c2) = (MASK[t], MASK[t + 1]);
        let up = net.g.up2(m)?;
        let p = format!("mask.{t}");
        let dw = net.conv(
            up,
            ConvSpec::depthwise(c, 3, 1, 1),
            &format!("{p}.1"),
            true,
            None,
            Activation::None,
        )?;
        m = net.conv(
            dw,
            ConvSpec::new(c, c2, 1, 1, 0),
            &format!("{p}.2"),
            true,
            Some(&format!("{p}.3")),
            lrelu(),
        )?;
    }
    let mask = net.conv(
        m,
        ConvSpec::new(2, 1, 3, 1, 1),
        "mask.5",
        true,
        None,
        Activation::Sigmoid,
    )?;
    let swapped = net.g.fusion(generated, target, mask)?;
    Ok(IdnVars {
        target,
        generated,
        swapped,
        mask,
    })
}

/// The identity injection network (spec §2.2, §2.3) from `embedding` `[1, 1, 1, 512]` and
/// `feature_map` `[1, 512, 7, 7]` to the IDN's kernels.
pub fn injection(net: &mut Net, embedding: Var, feature_map: Var) -> Result<IdentityVars> {
    let z = net.conv(
        feature_map,
        ConvSpec::new(512, 512, 4, 1, 0),
        "predictor.first",
        true,
        Some("predictor.norm"),
        lrelu(),
    )?;
    let mut enc_dw = kernel_chain(net, z, "predictor.encoder", &[512, 256, 128, 64, 32, 3])?;
    enc_dw.reverse(); // predicted for C = 256..3, used by E0..E4 (C = 3..256)
    let zd = net.conv(
        z,
        ConvSpec::new(512, 512, 2, 1, 0),
        "predictor.first_decoder",
        true,
        Some("predictor.decoder_norm"),
        lrelu(),
    )?;
    let dec_dw = kernel_chain(net, zd, "predictor.decoder", &[512, 512, 512, 256, 128])?;
    let modulated = |net: &mut Net, prefix: String, cin: usize, cout: usize| -> Result<Var> {
        let s = net.linear(embedding, &format!("{prefix}.style"), cin, Activation::None)?;
        let spec = ModulateSpec {
            cin,
            cout,
            style_bias: 1.0,
            demodulate: true,
            eps: DEMOD_EPS,
        };
        net.modulate(s, &format!("{prefix}.weight"), spec)
    };
    let enc_pw = (0..5)
        .map(|i| modulated(net, format!("EncoderModulation.{i}"), ENC[i], ENC[i + 1]))
        .collect::<Result<Vec<_>>>()?;
    let dec_pw = (0..4)
        .map(|j| modulated(net, format!("DecoderModulation.{j}"), DEC_IN[j], DEC_OUT[j]))
        .collect::<Result<Vec<_>>>()?;
    Ok(IdentityVars {
        enc_dw,
        enc_pw,
        dec_dw,
        dec_pw,
    })
}

/// `ConvBlock`s: `h ← LReLU(BN(conv3×3 h))`, and from each `h` the kernel `weight3×3(h)`.
fn kernel_chain(net: &mut Net, z: Var, prefix: &str, chain: &[usize]) -> Result<Vec<Var>> {
    let mut h = z;
    let mut kernels = Vec::new();
    for (k, c) in chain.windows(2).enumerate() {
        let p = format!("{prefix}.{k}");
        h = net.conv(
            h,
            ConvSpec::new(c[0], c[1], 3, 1, 1),
            &format!("{p}.conv"),
            true,
            Some(&format!("{p}.norm")),
            lrelu(),
        )?;
        kernels.push(net.conv(
            h,
            ConvSpec::new(c[1], c[1], 3, 1, 1),
            &format!("{p}.weight"),
            true,
            None,
            Activation::None,
        )?);
    }
    Ok(kernels)
}

/// ArcFace's values of interest.
pub struct ArcFaceVars {
    /// Input `[N, 3, 112, 112]`.
    pub face: Var,
    /// `[N, 512, 7, 7]` (after bn2).
    pub feature_map: Var,
    /// `[N, 1, 1, 512]` L2-normalised.
    pub embedding: Var,
}

/// ArcFace IR-SE (spec §2.1) on `face`.
pub fn arcface(net: &mut Net, face: Var) -> Result<ArcFaceVars> {
    let depths = arcface::depths(net.w)?;
    arcface::manifest(depths, net.w).check(net.w)?;
    let x = net.conv(
        face,
        ConvSpec::new(3, 64, 3, 1, 0),
        "conv1",
        false,
        Some("bn1"),
        Activation::None,
    )?;
    let x = net.prelu(x, "prelu")?;
    let mut x = net.g.pool(
        x,
        Pool::Max {
            k: 2,
            stride: 2,
            pad: 0,
        },
    )?;
    for (s, &depth) in depths.iter().enumerate() {
        for blk in 0..depth {
            let stride = if blk == 0 && s > 0 { 2 } else { 1 };
            x = ir_block(
                net,
                x,
                &format!("layer{}.{blk}", s + 1),
                CHANNELS[s],
                stride,
            )?;
        }
    }
    let feature_map = net.batch_norm(x, "bn2", Activation::None)?;
    let fc = net.linear(feature_map, "fc", EMBEDDING, Activation::None)?;
    let fc = net.batch_norm(fc, "bn3", Activation::None)?;
    let embedding = net.g.l2_normalize(fc)?;
    Ok(ArcFaceVars {
        face,
        feature_map,
        embedding,
    })
}

/// IRBlock: BN · conv3×3 · BN · PReLU · conv3×3/s · BN · SE, + shortcut, PReLU (the same module).
fn ir_block(net: &mut Net, x: Var, p: &str, c: usize, stride: usize) -> Result<Var> {
    let ci = net.g.shape(x).c;
    let h = net.batch_norm(x, &format!("{p}.bn0"), Activation::None)?;
    let h = net.conv(
        h,
        ConvSpec::new(ci, ci, 3, 1, 1),
        &format!("{p}.conv1"),
        false,
        Some(&format!("{p}.bn1")),
        Activation::None,
    )?;
    let h = net.prelu(h, &format!("{p}.prelu"))?;
    let h = net.conv(
        h,
        ConvSpec::new(ci, c, 3, stride, 1),
        &format!("{p}.conv2"),
        false,
        Some(&format!("{p}.bn2")),
        Activation::None,
    )?;
    // Squeeze-excitation: global average → FC C→C/16 · PReLU → FC → sigmoid gate per channel.
    let pooled = net.g.pool(h, Pool::GlobalAvg)?;
    let s1 = net.linear(pooled, &format!("{p}.se.fc.0"), c / 16, Activation::None)?;
    let s1 = net.prelu(s1, &format!("{p}.se.fc.1"))?;
    let gate = net.linear(s1, &format!("{p}.se.fc.2"), c, Activation::Sigmoid)?;
    let shortcut = if net.w.contains(&format!("{p}.downsample.0.weight")) {
        net.conv(
            x,
            ConvSpec::new(ci, c, 1, stride, 0),
            &format!("{p}.downsample.0"),
            false,
            Some(&format!("{p}.downsample.1")),
            Activation::None,
        )?
    } else {
        x
    };
    let gated = net.g.mul(h, gate)?;
    let sum = net.g.add(gated, shortcut)?;
    net.prelu(sum, &format!("{p}.prelu"))
}

/// `[N, 3, 224, 224]` input shape of the IDN.
pub fn idn_input(n: usize) -> Shape {
    Shape::new(n, 3, SIZE, SIZE)
}
