//! A model's per-frame work: a flat list of prebuilt dispatches (engines.md T14). Recording it
//! allocates nothing and reads nothing back; the host chooses the encoder and pass.

use super::{Context, Dispatch, DispatchStats};
use crate::error::Result;

/// Dispatches in execution order.
#[derive(Default, Clone, Debug)]
pub struct Plan {
    /// The launches, in order.
    pub dispatches: Vec<Dispatch>,
}

impl IntoIterator for Plan {
    type Item = Dispatch;
    type IntoIter = std::vec::IntoIter<Dispatch>;
    fn into_iter(self) -> Self::IntoIter {
        self.dispatches.into_iter()
    }
}

impl Plan {
    /// Appends a launch.
    pub fn push(&mut self, d: Dispatch) {
        self.dispatches.push(d);
    }
    /// Appends every launch of another plan (or any list of launches).
    pub fn extend(&mut self, other: impl IntoIterator<Item = Dispatch>) {
        self.dispatches.extend(other);
    }
    /// Number of dispatches per run.
    pub fn len(&self) -> usize {
        self.dispatches.len()
    }
    /// Whether the plan is empty.
    pub fn is_empty(&self) -> bool {
        self.dispatches.is_empty()
    }
    /// Records every launch into `pass`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.dispatches {
            d.record(pass);
        }
    }
    /// Records into one pass of a new encoder and submits (no wait).
    pub fn run(&self, ctx: &Context) -> Result<()> {
        ctx.run(&self.refs())
    }
    /// References to the dispatches (for [`Context::profile`]).
    pub fn refs(&self) -> Vec<&Dispatch> {
        self.dispatches.iter().collect()
    }
    /// Total FLOPs and bytes of one run.
    pub fn stats(&self) -> DispatchStats {
        self.dispatches
            .iter()
            .fold(DispatchStats::default(), |a, d| DispatchStats {
                flops: a.flops + d.stats.flops,
                bytes: a.bytes + d.stats.bytes,
            })
    }
}
