//! # fswap
//!
//! Lightweight face-swap networks in real time on any GPU wgpu reaches, with hand-written WGSL
//! kernels over fp16 tensors (native `f16` where the adapter has `SHADER_F16`, packed pairs in `u32`
//! where it does not) and f32 accumulation.
//!
//! Layers, bottom to top: [`gpu`] (device, storage path, pipelines, pool, profiler), [`tensor`],
//! [`kernels`] (one module per `shaders/<family>.wgsl`).

#![warn(missing_docs)]

pub mod autograd;
pub mod bench;
pub mod error;
pub mod eval;
pub mod face;
pub mod gpu;
pub mod io;
pub mod kernels;
pub mod media;
pub mod models;
pub mod tensor;
pub mod train;
pub mod util;
pub mod weights;

pub use error::{Error, Result};
pub use gpu::{Context, ContextOptions, StoragePath};
pub use tensor::{Shape, Tensor};
