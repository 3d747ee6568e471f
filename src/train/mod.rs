//! Training on the GPU: the models as training graphs, `fswap grad`, and the distillation and
//! fine-tuning loops.

pub mod grad;
pub mod graphs;
pub mod losses;
pub mod step;
