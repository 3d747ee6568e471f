//! `fswap grad`: one forward and one backward of a model for given output seeds, returning the
//! gradients of every input and every parameter (under its name in the weights file).

use std::collections::BTreeMap;

use super::graphs::{arcface, idn, idn_input, injection};
use crate::autograd::net::{export, Net};
use crate::autograd::{Graph, NormMode, Var};
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::models::arcface::INPUT;
use crate::tensor::{Shape, Tensor};
use crate::weights::{HostTensor, Manifest, Weights};

/// Models `fswap grad` knows, with their input names.
pub const MODELS: &[(&str, &[&str])] = &[
    ("idn", &["target"]),
    (
        "mobilefaceswap",
        &["id_embedding", "id_feature_map", "target"],
    ),
    ("arcface", &["face"]),
    ("lightweight", &["face"]),
    ("original", &["face"]),
];

type Tensors = BTreeMap<String, HostTensor>;

/// A built graph with its named inputs and outputs.
struct Model<'c> {
    graph: Graph<'c>,
    inputs: Vec<(String, Var, Vec<usize>)>,
    outputs: Vec<(String, Var, Vec<usize>)>,
}

fn batch_of(model: &str, inputs: &Tensors, name: &str, rest: &[usize]) -> Result<usize> {
    let t = inputs
        .get(name)
        .ok_or_else(|| Error::param(format!("grad {model}"), format!("missing input '{name}'")))?;
    if t.shape.len() != rest.len() + 1 || t.shape[1..] != *rest || t.shape[0] == 0 {
        return Err(Error::shape(
            format!("grad {model}"),
            format!(
                "input '{name}' has shape {:?}, expected [N, {rest:?}]",
                t.shape
            ),
        ));
    }
    Ok(t.shape[0])
}

fn build<'c>(
    ctx: &'c Context,
    model: &str,
    w: &Weights,
    inputs: &Tensors,
    mode: NormMode,
) -> Result<Model<'c>> {
    let mut g = Graph::new(ctx);
    g.norm_mode = mode;
    let mut ins = Vec::new();
    let mut outs = Vec::new();
    match model {
        "idn" => {
            Manifest::builtin("idn")?.check(w)?;
            let n = batch_of(model, inputs, "target", &[3, 224, 224])?;
            let target = g.input(idn_input(n), "target", true)?;
            let mut net = Net::new(&mut g, w);
            let v = idn(&mut net, target, None)?;
            ins.push(("target".into(), target, vec![n, 3, 224, 224]));
            outs.push(("swapped".into(), v.swapped, vec![n, 3, 224, 224]));
            outs.push(("mask".into(), v.mask, vec![n, 1, 224, 224]));
        }
        "mobilefaceswap" => {
            Manifest::builtin("mobilefaceswap")?.check(w)?;
            let n = batch_of(model, inputs, "target", &[3, 224, 224])?;
            if batch_of(model, inputs, "id_embedding", &[512])? != 1
                || batch_of(model, inputs, "id_feature_map", &[512, 7, 7])? != 1
            {
                return Err(Error::shape(
                    "grad mobilefaceswap",
                    "one identity: id_embedding [1, 512] and id_feature_map [1, 512, 7, 7]",
                ));
            }
            let emb = g.input(Shape::vector(1, 512), "id_embedding", true)?;
            let map = g.input(Shape::new(1, 512, 7, 7), "id_feature_map", true)?;
            let target = g.input(idn_input(n), "target", true)?;
            let mut net = Net::new(&mut g, w);
            let k = injection(&mut net, emb, map)?;
            let v = idn(&mut net, target, Some(&k))?;
            ins.push(("id_embedding".into(), emb, vec![1, 512]));
            ins.push(("id_feature_map".into(), map, vec![1, 512, 7, 7]));
            ins.push(("target".into(), target, vec![n, 3, 224, 224]));
            outs.push(("swapped".into(), v.swapped, vec![n, 3, 224, 224]));
            outs.push(("mask".into(), v.mask, vec![n, 1, 224, 224]));
        }
        "arcface" => {
            let n = batch_of(model, inputs, "face", &[3, INPUT, INPUT])?;
            let face = g.input(Shape::new(n, 3, INPUT, INPUT), "face", true)?;
            let mut net = Net::new(&mut g, w);
            let v = arcface(&mut net, face)?;
            ins.push(("face".into(), face, vec![n, 3, INPUT, INPUT]));
            outs.push(("id_embedding".into(), v.embedding, vec![n, 512]));
            outs.push(("id_feature_map".into(), v.feature_map, vec![n, 512, 7, 7]));
        }
        "lightweight" | "original" => {
            let (i, o) = super::autoencoder::grad_graph(&mut g, model, w, inputs)?;
            ins.extend(i);
            outs.extend(o);
        }
        _ => {
            return Err(Error::param(
                "grad",
                format!(
                    "unknown model '{model}' (known: {})",
                    MODELS.iter().map(|m| m.0).collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    }
    Ok(Model {
        graph: g,
        inputs: ins,
        outputs: outs,
    })
}

/// Runs `model` forward on `inputs` and back-propagates `seeds` (one per output, any subset):
/// returns the gradient of `Σ output·seed` for every input (by input name) and every trainable
/// parameter (by its name and layout in `weights`), in f32. `train_mode` runs batch norms on
/// batch statistics.
pub fn grad(
    ctx: &Context,
    model: &str,
    weights: &Weights,
    inputs: &Tensors,
    seeds: &Tensors,
    train_mode: bool,
) -> Result<Tensors> {
    let mode = if train_mode {
        NormMode::Train
    } else {
        NormMode::Eval
    };
    let known = MODELS
        .iter()
        .find(|(m, _)| *m == model)
        .map(|m| m.1)
        .unwrap_or(&[]);
    if let Some(extra) = inputs.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(Error::param(
            format!("grad {model}"),
            format!("unknown input '{extra}' (inputs: {})", known.join(", ")),
        ));
    }
    let m = build(ctx, model, weights, inputs, mode)?;
    let g = &m.graph;
    for (name, v, _) in &m.inputs {
        g.tensor(*v).write_f32(ctx, &inputs[name].data)?;
    }
    if seeds.is_empty() {
        return Err(Error::param(format!("grad {model}"), "no seed given"));
    }
    let mut seed_tensors = Vec::new();
    for (name, t) in seeds {
        let Some((_, v, shape)) = m.outputs.iter().find(|o| &o.0 == name) else {
            return Err(Error::param(
                format!("grad {model}"),
                format!(
                    "seed for unknown output '{name}' (outputs: {})",
                    m.outputs
                        .iter()
                        .map(|o| o.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if &t.shape != shape {
            return Err(Error::shape(
                format!("grad {model}"),
                format!(
                    "seed '{name}' has shape {:?}, the output is {shape:?}",
                    t.shape
                ),
            ));
        }
        let s = Tensor::from_f32(ctx, g.shape(*v), &t.data, &format!("seed {name}"))?;
        seed_tensors.push((*v, s));
    }
    let grads = g.backward(&seed_tensors)?;
    let mut all = g.sync().refs();
    all.extend(g.forward().refs());
    all.extend(grads.plan.refs());
    ctx.run(&all)?;
    ctx.wait()?;
    let mut out = super::autoencoder::grads_to_file(model, weights, export(g, weights, true)?)?;
    for (name, v, shape) in &m.inputs {
        let data = match grads.input(*v) {
            Some(t) => t.to_f32(ctx)?,
            None => vec![0.0; shape.iter().product()],
        };
        out.insert(name.clone(), HostTensor::new(shape.clone(), data));
    }
    for (name, t) in &out {
        if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::Data {
                what: format!("gradient of '{name}'"),
                detail: format!(
                    "element {i} is {} (fp16 overflow: scale the seeds down)",
                    t.data[i]
                ),
            });
        }
    }
    Ok(out)
}
