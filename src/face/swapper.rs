//! The host-integration API: swap faces inside a host engine's frame, on the host's own device,
//! recorded into the host's own command encoder. Texture in, texture out; per frame the host
//! supplies the face's 5 landmarks (from its tracker) and nothing is allocated or read back.
//!
//! ```text
//! input texture ─from_texture─► frame ─PasteStage (warp, IDN, mask, warp back, composite)─► out ─to_texture─► output texture
//! ```

use super::align::{arcface_template, lstsq_affine};
use super::paste::PasteStage;
use crate::error::Result;
use crate::gpu::{Context, Plan};
use crate::kernels::texture::{from_texture, to_texture};
use crate::models::mobilefaceswap::{statics, Identity, SIZE};
use crate::tensor::{Shape, Tensor};
use crate::weights::{Manifest, Weights};

/// Swaps one face per frame of a host texture with a baked identity.
pub struct Swapper {
    ctx: Context,
    stage: PasteStage,
    output: wgpu::Texture,
    plan: Plan,
}

impl Swapper {
    /// Adopts the host's device and queue (the engine uses the features the host enabled), reads
    /// frames from `input` (rgba8unorm or bgra8unorm, TEXTURE_BINDING) and swaps in the identity
    /// saved by `fswap identity` (`idn` weights).
    pub fn new(
        device: wgpu::Device,
        queue: wgpu::Queue,
        idn: &Weights,
        input: &wgpu::Texture,
    ) -> Result<Self> {
        let ctx = Context::from_device(device, queue, None)?;
        Manifest::builtin("idn")?.check(idn)?;
        let identity = Identity::from_weights(&ctx, idn)?;
        let (w, h) = (input.width() as usize, input.height() as usize);
        let frame = Tensor::new(&ctx, Shape::new(1, 3, h, w), "host frame")?;
        let out = Tensor::new(&ctx, Shape::new(1, 3, h, w), "swapped frame")?;
        let stage = PasteStage::new(&ctx, &identity, &statics(idn), &frame, &out)?;
        let output = ctx.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("fswap output"),
            size: input.size(),
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba8Unorm,
            usage: wgpu::TextureUsages::STORAGE_BINDING
                | wgpu::TextureUsages::TEXTURE_BINDING
                | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let mut plan = Plan::default();
        plan.push(from_texture(&ctx, input, &frame)?);
        plan.extend(stage.plan.clone());
        plan.push(to_texture(&ctx, &out, &output)?);
        ctx.check("building the swapper")?;
        Ok(Swapper {
            ctx,
            stage,
            output,
            plan,
        })
    }

    /// Sets this frame's face: its 5 landmarks (left eye, right eye, nose tip, left and right mouth
    /// corners) in input-texture pixels. Takes effect at the next submit.
    pub fn set_landmarks(&self, landmarks5: &[[f32; 2]; 5]) -> Result<()> {
        let pts = landmarks5.map(|[x, y]| [x as f64, y as f64]);
        let m = lstsq_affine(&pts, &arcface_template(SIZE))?;
        self.stage.set_alignment(&self.ctx, &m)
    }

    /// Records the frame's work into one compute pass of the host's encoder.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("fswap swap"),
            timestamp_writes: None,
        });
        self.plan.record(&mut pass);
    }

    /// The output texture (rgba8unorm, same size as the input), valid after the host submits.
    pub fn output(&self) -> &wgpu::Texture {
        &self.output
    }

    /// Dispatches recorded per frame.
    pub fn dispatches(&self) -> usize {
        self.plan.len()
    }

    /// The engine's context on the host's device (storage path, profiling).
    pub fn context(&self) -> &Context {
        &self.ctx
    }
}
