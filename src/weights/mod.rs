//! Weights: safetensors files loaded by their official state-dict names, checked against a
//! model's manifest (`weights/<model>.json`) before anything runs, converted to f32 on the host
//! (f32, f16 and bf16 files all load) and uploaded as fp16 by the layers that use them.

mod file;
mod manifest;

pub use file::{write_safetensors, BatchNorm, HostTensor, Weights};
pub use manifest::{Manifest, TensorSpec};
