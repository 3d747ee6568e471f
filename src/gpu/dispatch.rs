//! A recorded kernel launch: pipeline, bind group and grid, built once and recorded every frame.

use super::Context;
use crate::error::Result;
use crate::tensor::Tensor;

/// A resource bound to a kernel: a tensor (kept alive, and out of the buffer pool, for as long as
/// the dispatch exists) or a plain buffer the kernel object owns.
pub enum Binding<'a> {
    /// A pooled tensor.
    Tensor(&'a Tensor),
    /// A buffer owned elsewhere (kernel constants, the context's dummy).
    Buffer(&'a wgpu::Buffer),
    /// A texture view (host frames in and out).
    Texture(&'a wgpu::TextureView),
}

impl<'a> From<&'a Tensor> for Binding<'a> {
    fn from(t: &'a Tensor) -> Self {
        Binding::Tensor(t)
    }
}

impl<'a> From<&'a wgpu::Buffer> for Binding<'a> {
    fn from(b: &'a wgpu::Buffer) -> Self {
        Binding::Buffer(b)
    }
}

impl<'a> From<&'a wgpu::TextureView> for Binding<'a> {
    fn from(v: &'a wgpu::TextureView) -> Self {
        Binding::Texture(v)
    }
}

impl Binding<'_> {
    fn resource(&self) -> wgpu::BindingResource<'_> {
        match self {
            Binding::Tensor(t) => t.buffer().as_entire_binding(),
            Binding::Buffer(b) => b.as_entire_binding(),
            Binding::Texture(v) => wgpu::BindingResource::TextureView(v),
        }
    }
}

/// Invocations per workgroup of every one-dimensional kernel (`WG` in `shaders/common.wgsl`).
pub const WORKGROUP: u32 = 64;

/// Work a dispatch does, for GFLOP/s and GB/s figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchStats {
    /// Floating-point operations (a multiply-add counts 2).
    pub flops: u64,
    /// Bytes read and written in global memory (each input counted once).
    pub bytes: u64,
}

/// One kernel launch, ready to record into any compute pass. Building it (pipeline lookup, uniform
/// buffer, bind group) happens once; recording it allocates nothing.
#[derive(Clone, Debug)]
pub struct Dispatch {
    /// Kernel name shown by the profiler.
    pub label: String,
    /// The compiled pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// Its resources.
    pub bind_group: wgpu::BindGroup,
    /// Workgroup counts.
    pub workgroups: [u32; 3],
    /// FLOPs and bytes, for throughput figures.
    pub stats: DispatchStats,
    /// Keeps the uniform buffer alive as long as the dispatch.
    pub uniforms: Option<wgpu::Buffer>,
    /// The tensors it reads and writes: while the dispatch lives their buffers cannot go back to
    /// the pool and be handed to someone else under it.
    pub tensors: Vec<Tensor>,
}

impl Dispatch {
    /// Records this launch into `pass`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.workgroups[0], self.workgroups[1], self.workgroups[2]);
    }
}

/// Records several launches in order into one pass (barriers between them are wgpu's).
pub fn record(pass: &mut wgpu::ComputePass<'_>, dispatches: &[&Dispatch]) {
    for d in dispatches {
        d.record(pass);
    }
}

/// Workgroup grid for `invocations` threads in groups of `wg`: x up to 65535, the rest in y.
/// Kernels rebuild the flat index as `gid.x + gid.y * nwg.x * WG` and skip indices past the end.
pub fn grid(invocations: u64, wg: u32) -> [u32; 3] {
    let groups = invocations.div_ceil(wg as u64).max(1);
    if groups <= 65535 {
        [groups as u32, 1, 1]
    } else {
        let y = groups.div_ceil(65535);
        [groups.div_ceil(y) as u32, y as u32, 1]
    }
}

impl Context {
    /// Records `dispatches` into one compute pass of a new encoder and submits it (no wait).
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fswap run"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("fswap"),
                timestamp_writes: None,
            });
            record(&mut pass, dispatches);
        }
        self.queue.submit([enc.finish()]);
        self.check("submit")
    }

    /// A uniform buffer holding `data` (created once, at dispatch build time).
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, data: &T) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(data),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Builds a [`Dispatch`]: `buffers` are bound at bindings 0.. in order, the uniform last.
    pub fn dispatch<T: bytemuck::Pod>(
        &self,
        label: impl Into<String>,
        pipeline: wgpu::ComputePipeline,
        buffers: &[Binding<'_>],
        params: &T,
        workgroups: [u32; 3],
        stats: DispatchStats,
    ) -> Dispatch {
        let at: Vec<(u32, &Binding<'_>)> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u32, b))
            .collect();
        self.dispatch_at(
            label,
            pipeline,
            &at,
            (buffers.len() as u32, params),
            workgroups,
            stats,
        )
    }

    /// Builds a [`Dispatch`] with explicit binding indices (entry points that use a subset of a
    /// shader's bindings) and the uniform at `params.0`.
    pub fn dispatch_at<T: bytemuck::Pod>(
        &self,
        label: impl Into<String>,
        pipeline: wgpu::ComputePipeline,
        bindings: &[(u32, &Binding<'_>)],
        params: (u32, &T),
        workgroups: [u32; 3],
        stats: DispatchStats,
    ) -> Dispatch {
        let label = label.into();
        let uniforms = self.uniform(&label, params.1);
        let mut entries: Vec<wgpu::BindGroupEntry> = bindings
            .iter()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: *i,
                resource: b.resource(),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: params.0,
            resource: uniforms.as_entire_binding(),
        });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Dispatch {
            label,
            pipeline,
            bind_group,
            workgroups,
            stats,
            uniforms: Some(uniforms),
            tensors: bindings
                .iter()
                .filter_map(|(_, b)| match b {
                    Binding::Tensor(t) => Some((*t).clone()),
                    Binding::Buffer(_) | Binding::Texture(_) => None,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::grid;

    #[test]
    fn grid_covers_and_respects_limit() {
        for n in [
            1u64,
            63,
            64,
            65,
            65535 * 64,
            65535 * 64 + 1,
            10_000_000_000 / 64,
        ] {
            let g = grid(n, 64);
            assert!(g[0] <= 65535 && g[1] <= 65535);
            assert!(g[0] as u64 * g[1] as u64 * 64 >= n);
        }
    }
}
