//! `fswap eval`: run a model on named host tensors and return named outputs, for checking an
//! export against the training framework. Tensor names and shapes are those of the manifests.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::models::arcface::ArcFace;
use crate::models::mobilefaceswap::{statics, Identity, Idn, Injection, SIZE};
use crate::tensor::Tensor;
use crate::weights::{HostTensor, Manifest, Weights};

/// Models `fswap eval` runs, with their inputs.
pub const MODELS: &[(&str, &[&str])] = &[
    ("arcface", &["face"]),
    (
        "mobilefaceswap",
        &["target", "id_embedding", "id_feature_map"],
    ),
    ("idn", &["target"]),
    ("mobilefacenet128", &["face"]),
    ("mobilefsgan", &["target", "id_embedding"]),
    ("mobilefacenet", &["face"]),
    ("lightweight", &["face"]),
    ("original", &["face"]),
];

/// Named host tensors.
pub type Tensors = BTreeMap<String, HostTensor>;

fn input<'a>(
    model: &str,
    inputs: &'a Tensors,
    name: &str,
    want: &[Option<usize>],
) -> Result<&'a HostTensor> {
    let t = inputs
        .get(name)
        .ok_or_else(|| Error::param(format!("eval {model}"), format!("missing input '{name}'")))?;
    let ok = t.shape.len() == want.len()
        && t.shape
            .iter()
            .zip(want)
            .all(|(d, w)| w.is_none_or(|w| w == *d))
        && t.shape[0] > 0;
    if !ok {
        let shown: Vec<String> = want
            .iter()
            .map(|w| w.map_or("N".into(), |v| v.to_string()))
            .collect();
        return Err(Error::shape(
            format!("eval {model}"),
            format!(
                "input '{name}' has shape {:?}, expected [{}]",
                t.shape,
                shown.join(", ")
            ),
        ));
    }
    Ok(t)
}

fn upload(ctx: &Context, dst: &Tensor, t: &HostTensor) -> Result<()> {
    dst.write_f32(ctx, &t.data)
}

fn download(ctx: &Context, t: &Tensor, shape: Vec<usize>) -> Result<HostTensor> {
    Ok(HostTensor::new(shape, t.to_f32(ctx)?))
}

/// The IDN's outputs: `swapped` `[N, 3, 224, 224]` and `mask` `[N, 1, 224, 224]`.
fn frame_outputs(ctx: &Context, idn: &Idn) -> Result<Tensors> {
    let n = idn.target.shape().n;
    Ok(Tensors::from([
        (
            "swapped".to_string(),
            download(ctx, &idn.swapped, vec![n, 3, SIZE, SIZE])?,
        ),
        (
            "mask".to_string(),
            download(ctx, &idn.mask, vec![n, 1, SIZE, SIZE])?,
        ),
    ]))
}

/// Runs `model` with `weights` on `inputs`; unknown models, missing or extra inputs and wrong
/// shapes are errors naming them.
pub fn eval(ctx: &Context, model: &str, weights: &Weights, inputs: &Tensors) -> Result<Tensors> {
    let (_, names) = MODELS.iter().find(|(m, _)| *m == model).ok_or_else(|| {
        Error::param(
            "eval",
            format!(
                "unknown model '{model}' (known: {})",
                MODELS.iter().map(|m| m.0).collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    if let Some(extra) = inputs.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(Error::param(
            format!("eval {model}"),
            format!("unknown input '{extra}' (inputs: {})", names.join(", ")),
        ));
    }
    let mut out = Tensors::new();
    match model {
        "arcface" => {
            let face = input(
                model,
                inputs,
                "face",
                &[None, Some(3), Some(112), Some(112)],
            )?;
            let n = face.shape[0];
            let net = ArcFace::new(ctx, weights, n)?;
            upload(ctx, &net.input, face)?;
            net.plan.run(ctx)?;
            out.insert(
                "id_embedding".into(),
                download(ctx, &net.embedding, vec![n, 512])?,
            );
            out.insert(
                "id_feature_map".into(),
                download(ctx, &net.feature_map, vec![n, 512, 7, 7])?,
            );
        }
        "mobilefaceswap" => {
            let target = input(
                model,
                inputs,
                "target",
                &[None, Some(3), Some(SIZE), Some(SIZE)],
            )?;
            let emb = input(model, inputs, "id_embedding", &[Some(1), Some(512)])?;
            let map = input(
                model,
                inputs,
                "id_feature_map",
                &[Some(1), Some(512), Some(7), Some(7)],
            )?;
            let inj = Injection::new(ctx, weights)?;
            upload(ctx, &inj.embedding, emb)?;
            upload(ctx, &inj.feature_map, map)?;
            let idn = Idn::new(ctx, &inj.identity, &statics(weights), target.shape[0])?;
            upload(ctx, &idn.target, target)?;
            // One submit: injection, then the frame.
            let mut all = inj.plan.clone();
            all.extend(idn.plan.clone());
            all.run(ctx)?;
            out.extend(inj.identity.to_host(ctx)?);
            out.extend(frame_outputs(ctx, &idn)?);
        }
        "idn" => {
            let target = input(
                model,
                inputs,
                "target",
                &[None, Some(3), Some(SIZE), Some(SIZE)],
            )?;
            Manifest::builtin("idn")?.check(weights)?;
            let id = Identity::from_weights(ctx, weights)?;
            let idn = Idn::new(ctx, &id, &statics(weights), target.shape[0])?;
            upload(ctx, &idn.target, target)?;
            idn.plan.run(ctx)?;
            out.extend(frame_outputs(ctx, &idn)?);
        }
        "mobilefacenet128" => {
            let face = input(
                model,
                inputs,
                "face",
                &[None, Some(3), Some(112), Some(112)],
            )?;
            out.insert(
                "id_embedding".into(),
                crate::models::mobilefacenet::eval(ctx, weights, face)?,
            );
        }
        "lightweight" | "original" => {
            // faceswap's per-pair autoencoders: S from the weights, RGB in [0, 1]
            let face = input(model, inputs, "face", &[None, Some(3), None, None])?;
            let arch = crate::models::faceswap_ae::Arch::from_name(model)?;
            out.extend(crate::models::faceswap_ae::eval(ctx, arch, weights, face)?);
        }
        "mobilefsgan" => {
            let target = input(model, inputs, "target", &[None, Some(3), None, None])?;
            let emb = input(model, inputs, "id_embedding", &[None, Some(512)])?;
            out.extend(crate::models::mobilefsgan::eval(ctx, weights, target, emb)?);
        }
        "mobilefacenet" => {
            let face = input(
                model,
                inputs,
                "face",
                &[None, Some(3), Some(112), Some(112)],
            )?;
            out.insert(
                "id_embedding".into(),
                crate::models::mobilefacenet512::eval(ctx, weights, face)?,
            );
        }
        _ => unreachable!("checked against MODELS"),
    }
    Ok(out)
}

/// Bakes an identity: runs the injection on an embedding `[1, 512]` and feature map
/// `[1, 512, 7, 7]` and returns the IDN state dict (dynamic kernels + `final.*` + `mask.*`), which
/// `eval --model idn` and the per-frame model load.
pub fn bake_identity(
    ctx: &Context,
    weights: &Weights,
    embedding: &HostTensor,
    feature_map: &HostTensor,
) -> Result<Tensors> {
    let mut inputs = Tensors::new();
    inputs.insert("id_embedding".into(), embedding.clone());
    inputs.insert("id_feature_map".into(), feature_map.clone());
    let emb = input("identity", &inputs, "id_embedding", &[Some(1), Some(512)])?;
    let map = input(
        "identity",
        &inputs,
        "id_feature_map",
        &[Some(1), Some(512), Some(7), Some(7)],
    )?;
    let inj = Injection::new(ctx, weights)?;
    upload(ctx, &inj.embedding, emb)?;
    upload(ctx, &inj.feature_map, map)?;
    inj.plan.run(ctx)?;
    let mut out = inj.identity.to_host(ctx)?;
    out.extend(statics(weights).tensors().clone());
    Ok(out)
}
