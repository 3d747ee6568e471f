//! Host-side file formats at the edges: `.npy` arrays and safetensors tensor sets for `fswap eval`.

mod npy;

pub use npy::read_npy;

use std::path::Path;

use crate::error::{Error, Result};
use crate::weights::{HostTensor, Weights};

/// Reads one input tensor: a `.npy` file (float32/float64/float16), or `FILE.safetensors` holding
/// exactly one tensor or one named `key`.
pub fn read_tensor(path: &Path, key: &str) -> Result<HostTensor> {
    let is_npy = path.extension().and_then(|e| e.to_str()) == Some("npy");
    if is_npy {
        return read_npy(path);
    }
    let w = Weights::open(path)?;
    if let Some(t) = w.tensors().get(key) {
        return Ok(t.clone());
    }
    if w.tensors().len() == 1 {
        return Ok(w.tensors().values().next().cloned().expect("one tensor"));
    }
    Err(Error::Format {
        path: path.display().to_string(),
        detail: format!(
            "no tensor '{key}' (has: {})",
            w.tensors().keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    })
}
