//! A loaded weights file: named host tensors plus the exporter's metadata.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// One tensor on the host: shape and f32 values in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor from shape and values (the caller keeps them consistent).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data }
    }
}

/// Inference batch norm parameters of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// γ.
    pub gamma: Vec<f32>,
    /// β.
    pub beta: Vec<f32>,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running variance.
    pub var: Vec<f32>,
}

/// A set of named tensors, as read from a safetensors file or built in memory.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    /// Where they came from (for messages).
    pub origin: String,
    tensors: BTreeMap<String, HostTensor>,
    metadata: HashMap<String, String>,
}

fn format_err(path: &str, detail: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_string(),
        detail: detail.into(),
    }
}

impl Weights {
    /// Reads a safetensors file. Truncated or malformed files, unsupported dtypes and NaN/Inf values
    /// are errors naming the file and tensor. Integer tensors (e.g. `num_batches_tracked`) are skipped.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: shown.clone(),
            source,
        })?;
        Self::from_bytes(&shown, &bytes)
    }

    /// Parses safetensors bytes; `origin` names them in errors.
    pub fn from_bytes(origin: &str, bytes: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            format_err(
                origin,
                format!("not a valid safetensors file (truncated or corrupt?): {e}"),
            )
        })?;
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format_err(origin, format!("unreadable header: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F16 => raw
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => raw
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::F64 => raw
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
                Dtype::I64 | Dtype::I32 | Dtype::U8 | Dtype::BOOL => continue,
                other => {
                    return Err(format_err(
                        origin,
                        format!("tensor '{name}' has unsupported dtype {other:?}"),
                    ))
                }
            };
            if let Some((i, v)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(format_err(
                    origin,
                    format!("tensor '{name}' holds {v} at element {i}"),
                ));
            }
            tensors.insert(name, HostTensor::new(view.shape().to_vec(), data));
        }
        Ok(Weights {
            origin: origin.to_string(),
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
        })
    }

    /// Weights built in memory (seeded random weights, a baked identity).
    pub fn from_tensors(
        origin: &str,
        tensors: BTreeMap<String, HostTensor>,
        metadata: HashMap<String, String>,
    ) -> Self {
        Weights {
            origin: origin.to_string(),
            tensors,
            metadata,
        }
    }

    /// The exporter's metadata (`fswap.source`, `fswap.linear_layout`, ...).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// All tensors by name.
    pub fn tensors(&self) -> &BTreeMap<String, HostTensor> {
        &self.tensors
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Whether Linear weights are stored `[in, out]` (Paddle), as the exporter recorded.
    pub fn linear_in_out(&self) -> bool {
        self.metadata.get("fswap.linear_layout").map(String::as_str) == Some("in_out")
    }

    /// A tensor of exactly `shape`, or an error naming it with expected vs found shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&[f32]> {
        let t = self.tensors.get(name).ok_or_else(|| {
            format_err(
                &self.origin,
                format!("missing tensor '{name}' (expected shape {shape:?})"),
            )
        })?;
        if t.shape != shape {
            return Err(format_err(
                &self.origin,
                format!(
                    "tensor '{name}' has shape {:?}, expected {shape:?}",
                    t.shape
                ),
            ));
        }
        Ok(&t.data)
    }

    /// A tensor of `shape` if present, else `None`; a present tensor of another shape is an error.
    pub fn optional(&self, name: &str, shape: &[usize]) -> Result<Option<&[f32]>> {
        if self.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A Linear weight as PyTorch's `[out, in]`, transposing a Paddle `[in, out]` export.
    pub fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Vec<f32>> {
        if !self.linear_in_out() {
            return Ok(self.get(name, &[out, inp])?.to_vec());
        }
        let w = self.get(name, &[inp, out])?;
        let mut t = vec![0.0; out * inp];
        for i in 0..inp {
            for o in 0..out {
                t[o * inp + i] = w[i * out + o];
            }
        }
        Ok(t)
    }

    /// Batch-norm parameters under `prefix`, with Paddle (`_mean`, `_variance`) or PyTorch
    /// (`running_mean`, `running_var`) names.
    pub fn batch_norm(&self, prefix: &str, c: usize) -> Result<BatchNorm> {
        let stat = |paddle: &str, torch: &str| -> Result<Vec<f32>> {
            let p = format!("{prefix}.{paddle}");
            if self.contains(&p) {
                Ok(self.get(&p, &[c])?.to_vec())
            } else {
                Ok(self.get(&format!("{prefix}.{torch}"), &[c])?.to_vec())
            }
        };
        Ok(BatchNorm {
            gamma: self.get(&format!("{prefix}.weight"), &[c])?.to_vec(),
            beta: self.get(&format!("{prefix}.bias"), &[c])?.to_vec(),
            mean: stat("_mean", "running_mean")?,
            var: stat("_variance", "running_var")?,
        })
    }
}

/// Writes named f32 tensors as an f32 safetensors file, atomically (temporary file, fsync,
/// rename): an interrupted write never leaves a partial file under `path`.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &BTreeMap<String, HostTensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let bytes_of: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.shape.clone(),
                bytemuck::cast_slice(&t.data).to_vec(),
            )
        })
        .collect();
    let views = bytes_of
        .iter()
        .map(|(k, shape, bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| format_err(&shown, format!("tensor '{k}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata)
    };
    let bytes = safetensors::tensor::serialize(views, meta)
        .map_err(|e| format_err(&shown, e.to_string()))?;
    crate::util::atomic_write(path, &bytes)
}
