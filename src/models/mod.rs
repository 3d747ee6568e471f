//! Models: each a short list of layers that reads like its spec table, built once into a
//! [`Plan`](crate::gpu::Plan) over preallocated tensors.

pub mod arcface;
pub mod bench;
pub mod builder;
pub mod faceboxes;
pub mod faceswap_ae;
pub mod mobilefacenet;
pub mod mobilefacenet512;
pub mod mobilefaceswap;
pub mod mobilefsgan;
pub mod random;
pub mod tddfa;
