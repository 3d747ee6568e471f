//! faceswap's per-pair autoencoders ("Lightweight", "Original"; [`crate::models::faceswap_ae`])
//! as training graphs: the same layer list as the inference plan, on [`crate::autograd`], with the
//! parameters under the weights file's names (one encoder shared by both sides: its gradients from
//! the A and B passes are summed by the graph).
//!
//! Layouts: graph parameters hold the *engine* layout ([`faceswap_ae::to_engine`]: NCHW flatten
//! order, PyTorch pixel-shuffle order, RGB in and out). Read them back for a checkpoint or a
//! gradient file with [`export`], which returns the *file* layout (faceswap's channel orders, BGR):
//! never with [`crate::autograd::net::export`], which would write the engine layout under the file
//! names. The optimiser state is elementwise, so it can stay in the engine layout.
//!
//! A training step (the loop is `fswap train autoencoder`): faces A → encoder → decoder A → loss
//! against faces A, and likewise B ([`pair`]); the swap (A → decoder B) is an inference plan
//! ([`faceswap_ae::Autoencoder`]) on exported weights.

use std::collections::BTreeMap;

use crate::autograd::net::Net;
use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::kernels::resample::Resample;
use crate::kernels::Activation;
use crate::models::faceswap_ae::{self, same_conv, Arch, Config, Side, LRELU};
use crate::tensor::Shape;
use crate::weights::{HostTensor, Weights};

type Tensors = BTreeMap<String, HostTensor>;

/// One decoder's outputs in a graph.
#[derive(Clone, Copy, Debug)]
pub struct DecoderVars {
    /// `[N, 3, S, S]`, RGB in [0, 1] (sigmoid).
    pub face: Var,
    /// `[N, 1, S, S]` in [0, 1], with the learned-mask branch.
    pub mask: Option<Var>,
}

/// A built pair graph: inputs and outputs of both sides.
#[derive(Clone, Copy, Debug)]
pub struct PairVars {
    /// Faces of identity A `[N, 3, S, S]`, RGB in [0, 1] (written by the caller before each step).
    pub faces_a: Var,
    /// Faces of identity B.
    pub faces_b: Var,
    /// faces A → encoder → decoder A.
    pub a: DecoderVars,
    /// faces B → encoder → decoder B.
    pub b: DecoderVars,
}

fn lrelu() -> Activation {
    Activation::Leaky(LRELU)
}

/// `conv 3×3 → LeakyReLU 0.1 → PixelShuffler(2)` with parameters `{prefix}.*`.
fn upscale(net: &mut Net, x: Var, prefix: &str, filters: usize) -> Result<Var> {
    let s = net.g.shape(x);
    let y = net.conv(
        x,
        same_conv(s.c, 4 * filters, 3, 1, s.h),
        prefix,
        true,
        None,
        lrelu(),
    )?;
    net.g
        .resample(y, Resample::PixelShuffle(2), (2 * s.h, 2 * s.w))
}

/// The encoder on `x` `[N, 3, S, S]` (RGB in [0, 1]) → the latent `[N, F, S/8, S/8]`; parameters
/// `encoder.*` (the same ones on every call: a second call shares them).
pub fn encoder(net: &mut Net, cfg: &Config, x: Var) -> Result<Var> {
    let xs = net.g.shape(x);
    if xs.c != 3 || xs.h != cfg.size || xs.w != cfg.size {
        return Err(Error::shape(
            format!("faceswap {} encoder", cfg.arch.name()),
            format!(
                "input {:?}, expected [N, 3, {s}, {s}]",
                xs.dims(),
                s = cfg.size
            ),
        ));
    }
    let mut h = x;
    for (i, &c) in cfg.encoder_convs().iter().enumerate() {
        let s = net.g.shape(h);
        h = net.conv(
            h,
            same_conv(s.c, c, 5, 2, s.h),
            &format!("encoder.conv{}", i + 1),
            true,
            None,
            lrelu(),
        )?;
    }
    let (bc, bh, bw) = cfg.bottleneck_dims();
    let d1 = net.linear(h, "encoder.dense1", cfg.encoder_dim(), Activation::None)?;
    let d2 = net.linear(d1, "encoder.dense2", bc * bh * bw, Activation::None)?;
    let r = net.g.reshape(d2, Shape::new(xs.n, bc, bh, bw))?;
    upscale(net, r, "encoder.upscale", cfg.encoder_out())
}

/// Decoder `side` on a latent `z` `[N, F, S/8, S/8]` → its face (and mask); parameters
/// `decoder_a.*` or `decoder_b.*`.
pub fn decoder(net: &mut Net, cfg: &Config, side: Side, z: Var) -> Result<DecoderVars> {
    let p = side.prefix();
    let branch = |net: &mut Net, up: &str, out: &str, channels: usize| -> Result<Var> {
        let mut h = z;
        for (i, f) in cfg.decoder_filters().into_iter().enumerate() {
            h = upscale(net, h, &format!("{p}.{up}{}", i + 1), f)?;
        }
        let s = net.g.shape(h);
        net.conv(
            h,
            same_conv(s.c, channels, 5, 1, s.h),
            &format!("{p}.{out}"),
            true,
            None,
            Activation::Sigmoid,
        )
    };
    let face = branch(net, "upscale", "face_out", 3)?;
    let mask = if cfg.learn_mask {
        Some(branch(net, "mask_upscale", "mask_out", 1)?)
    } else {
        None
    };
    Ok(DecoderVars { face, mask })
}

/// The training pair: `faces_a` → encoder → decoder A, `faces_b` → encoder → decoder B (one shared
/// encoder).
pub fn pair(
    net: &mut Net,
    cfg: &Config,
    faces_a: Var,
    faces_b: Var,
) -> Result<(DecoderVars, DecoderVars)> {
    let za = encoder(net, cfg, faces_a)?;
    let a = decoder(net, cfg, Side::A, za)?;
    let zb = encoder(net, cfg, faces_b)?;
    let b = decoder(net, cfg, Side::B, zb)?;
    Ok((a, b))
}

/// Builds the training pair into `g` for batches of `n` faces per side from a file-layout weights
/// file of `arch` (checked against its manifest; size, mask branch and lowmem from its shapes).
/// The inputs do not require gradients.
pub fn build_pair(
    g: &mut Graph<'_>,
    arch: Arch,
    weights: &Weights,
    n: usize,
) -> Result<(Config, PairVars)> {
    let (cfg, ew) = faceswap_ae::to_engine(arch, weights)?;
    let faces_a = g.input(cfg.input_shape(n), "faces_a", false)?;
    let faces_b = g.input(cfg.input_shape(n), "faces_b", false)?;
    let mut net = Net::new(g, &ew);
    let (a, b) = pair(&mut net, &cfg, faces_a, faces_b)?;
    Ok((
        cfg,
        PairVars {
            faces_a,
            faces_b,
            a,
            b,
        },
    ))
}

/// The parameters' values (`grads` false) or gradients (`grads` true, trainable ones) in the
/// weights file's layout and names: a checkpoint [`Weights`] or a gradient file.
pub fn export(g: &Graph<'_>, cfg: &Config, grads: bool) -> Result<Tensors> {
    let mut out = Tensors::new();
    for p in g.params() {
        if grads && !p.trainable {
            continue;
        }
        let data = if grads {
            p.read_grad(g.ctx())?
        } else {
            p.read(g.ctx())?
        };
        out.insert(p.name.clone(), HostTensor::new(p.shape.clone(), data));
    }
    Ok(faceswap_ae::to_file(cfg, out))
}

/// A fresh weights file (file layout, [`faceswap_ae::init`]): `arch` at side `size`, with or
/// without the mask branch, from `seed`, ICNR upscales when `icnr`.
pub fn init_file(
    arch: Arch,
    size: usize,
    learn_mask: bool,
    seed: u64,
    icnr: bool,
) -> Result<Tensors> {
    let cfg = Config::new(arch, size)?.with_mask(learn_mask);
    Ok(faceswap_ae::init(&cfg, seed, icnr))
}

/// Named graph values of `fswap grad`: (name, value, host shape).
pub type Named = Vec<(String, Var, Vec<usize>)>;

/// `fswap grad --model lightweight|original`: input `face` `[N, 3, S, S]` (RGB, requires a
/// gradient) → encoder → both decoders: outputs `face_a`, `face_b` (+ `mask_a`, `mask_b`).
pub fn grad_graph(
    g: &mut Graph<'_>,
    model: &str,
    weights: &Weights,
    inputs: &Tensors,
) -> Result<(Named, Named)> {
    let arch = Arch::from_name(model)?;
    let (cfg, ew) = faceswap_ae::to_engine(arch, weights)?;
    let s = cfg.size;
    let face = inputs
        .get("face")
        .ok_or_else(|| Error::param(format!("grad {model}"), "missing input 'face'"))?;
    if face.shape.len() != 4 || face.shape[0] == 0 || face.shape[1..] != [3, s, s] {
        return Err(Error::shape(
            format!("grad {model}"),
            format!(
                "input 'face' has shape {:?}, expected [N, 3, {s}, {s}] (the size the weights \
                 were built for)",
                face.shape
            ),
        ));
    }
    let n = face.shape[0];
    let x = g.input(cfg.input_shape(n), "face", true)?;
    let mut net = Net::new(g, &ew);
    let z = encoder(&mut net, &cfg, x)?;
    let mut outs = Named::new();
    for side in Side::BOTH {
        let d = decoder(&mut net, &cfg, side, z)?;
        let l = side.letter();
        outs.push((format!("face_{l}"), d.face, vec![n, 3, s, s]));
        if let Some(m) = d.mask {
            outs.push((format!("mask_{l}"), m, vec![n, 1, s, s]));
        }
    }
    Ok((vec![("face".into(), x, vec![n, 3, s, s])], outs))
}

/// Gradients `fswap grad` exported in the engine layout, back in the file's for the autoencoder
/// models (unchanged for every other model).
pub fn grads_to_file(model: &str, weights: &Weights, grads: Tensors) -> Result<Tensors> {
    match Arch::from_name(model) {
        Ok(arch) => {
            let cfg = Config::from_weights(arch, weights)?;
            Ok(faceswap_ae::to_file(&cfg, grads))
        }
        Err(_) => Ok(grads),
    }
}
