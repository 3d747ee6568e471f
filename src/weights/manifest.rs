//! Model manifests (`weights/<model>.json`): the tensors a model expects, with shapes and kinds.
//! Written by `tools/manifests.py` from the specs; read here and by `tools/export.py --check`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Weights;
use crate::error::{Error, Result};

/// The manifests compiled into the engine.
const BUILTIN: &[(&str, &str)] = &[
    (
        "mobilefaceswap",
        include_str!("../../weights/mobilefaceswap.json"),
    ),
    ("idn", include_str!("../../weights/idn.json")),
    ("arcface", include_str!("../../weights/arcface.json")),
    ("3ddfa_mb05", include_str!("../../weights/3ddfa_mb05.json")),
    (
        "mobilefacenet128",
        include_str!("../../weights/mobilefacenet128.json"),
    ),
    (
        "mobilefsgan",
        include_str!("../../weights/mobilefsgan.json"),
    ),
    (
        "mobilefacenet",
        include_str!("../../weights/mobilefacenet.json"),
    ),
];

/// One expected tensor.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TensorSpec {
    /// Shape; Linear weights as PyTorch `[out, in]`.
    pub shape: Vec<usize>,
    /// `conv`, `linear`, `bn`, `prelu` or `other`.
    pub kind: String,
    /// Whether the tensor may be absent (then it is zero).
    #[serde(default)]
    pub optional: bool,
}

/// A model's expected tensors.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    /// Model name.
    pub model: String,
    /// Expected tensors by name.
    pub tensors: BTreeMap<String, TensorSpec>,
}

impl Manifest {
    /// The manifest shipped for `model` (fixed-architecture models only).
    pub fn builtin(model: &str) -> Result<Self> {
        let (_, text) = BUILTIN
            .iter()
            .find(|(n, _)| *n == model)
            .ok_or_else(|| Error::param("manifest", format!("no manifest for model '{model}'")))?;
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::param("manifest", format!("weights/{model}.json: {e}")))?;
        if value.get("template").and_then(|t| t.as_bool()) == Some(true) {
            return Err(Error::param(
                "manifest",
                format!(
                    "weights/{model}.json is a template; the model expands it from the weights"
                ),
            ));
        }
        serde_json::from_value(value)
            .map_err(|e| Error::param("manifest", format!("weights/{model}.json: {e}")))
    }

    /// A manifest built in code (models whose tensors depend on the weights, such as ArcFace depths).
    pub fn from_specs(model: &str, tensors: BTreeMap<String, TensorSpec>) -> Self {
        Manifest {
            model: model.to_string(),
            tensors,
        }
    }

    /// Checks `w` against the manifest and reports every problem at once: missing tensors,
    /// unexpected ones, and shape mismatches (expected vs found).
    pub fn check(&self, w: &Weights) -> Result<()> {
        let in_out = w.linear_in_out();
        let mut problems = Vec::new();
        for (name, spec) in &self.tensors {
            let mut want = spec.shape.clone();
            if in_out && spec.kind == "linear" && want.len() == 2 {
                want.reverse();
            }
            match w.tensors().get(name) {
                None if spec.optional => {}
                None => problems.push(format!("missing '{name}' (expected {want:?})")),
                Some(t) if t.shape != want => problems.push(format!(
                    "'{name}' has shape {:?}, expected {want:?}",
                    t.shape
                )),
                Some(_) => {}
            }
        }
        for name in w.tensors().keys() {
            if !self.tensors.contains_key(name) {
                problems.push(format!("unexpected '{name}' (not a {} tensor)", self.model));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::Format {
            path: w.origin.clone(),
            detail: format!(
                "does not match the {} manifest ({} problem{}):\n  {}",
                self.model,
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems.join("\n  ")
            ),
        })
    }
}
