//! The GPU layer: device context, storage path, shader preprocessing, pipeline cache, buffer pool and
//! the timestamp profiler. Everything above it records [`Dispatch`]es; nothing above it talks to
//! adapters or queues.

mod context;
mod dispatch;
mod pipelines;
mod plan;
mod pool;
mod profiler;
pub mod shader;

pub use context::{AdapterSummary, BackendChoice, Context, ContextOptions, StoragePath};
pub use dispatch::{grid, record, Binding, Dispatch, DispatchStats, WORKGROUP};
pub use pipelines::PipelineCache;
pub use plan::Plan;
pub use pool::{BufferPool, PoolStats, PooledBuffer};
pub use profiler::{Profile, ProfileEntry};
