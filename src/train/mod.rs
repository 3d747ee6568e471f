//! Training on the GPU: the models as training graphs, `fswap grad`, and the distillation and
//! fine-tuning loops.

pub mod augment;
pub mod autoencoder;
pub mod bench;
pub mod config;
pub mod data;
pub mod distill;
pub mod grad;
pub mod graphs;
pub mod losses;
pub mod per_pair;
pub mod plot;
pub mod run;
pub mod step;
