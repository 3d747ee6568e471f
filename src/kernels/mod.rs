//! Kernel families: each module owns the pipelines, bind layout and dispatch math of the WGSL file
//! of the same name in `shaders/`. A kernel is configured once (weights, constants), then bound to
//! tensors into a [`Dispatch`](crate::gpu::Dispatch) that can be recorded every frame.

pub mod cast;
pub mod colour;
pub mod concat;
pub mod conv;
pub mod conv_grad;
pub mod eltwise;
pub mod eltwise_grad;
pub mod fusion;
pub mod fusion_grad;
pub mod linear;
pub mod linear_grad;
pub mod loss;
pub mod modulate;
pub mod modulate_grad;
pub mod morph;
pub mod norm;
pub mod norm_grad;
pub mod optim;
pub mod pointwise;
pub mod pool;
pub mod pool_grad;
pub mod reduce;
pub mod reduce_grad;
pub mod resample;
pub mod resample_grad;
pub mod texture;
pub mod warp;

mod epilogue;

pub use epilogue::{Activation, Epilogue, Residual};

use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};

/// Checks that `t` has exactly `want`, naming the role and operation.
pub(crate) fn expect_shape(op: &str, role: &str, t: &Tensor, want: Shape) -> Result<()> {
    if t.shape() != want {
        return Err(Error::shape(
            op,
            format!(
                "{role} expected {:?}, found {:?}",
                want.dims(),
                t.shape().dims()
            ),
        ));
    }
    Ok(())
}

/// Checks a strictly positive parameter.
pub(crate) fn positive(op: &str, name: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::param(op, format!("{name} must be at least 1")));
    }
    Ok(())
}

/// An f32 storage buffer holding `data` (kernel constants: epilogue vectors, norm statistics).
pub(crate) fn f32_buffer(ctx: &crate::gpu::Context, label: &str, data: &[f32]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    let padded: Vec<f32> = if data.is_empty() {
        vec![0.0; 4]
    } else {
        data.to_vec()
    };
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(&padded),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        })
}

/// Bytes of a tensor's logical contents at fp16.
pub(crate) fn half_bytes(s: Shape) -> u64 {
    s.numel() as u64 * 2
}

/// The residual binding of a convolution-like kernel: the tensor (checked against the output
/// shape) and its mode, or the context's dummy buffer when there is none.
pub(crate) fn residual_binding<'a>(
    ctx: &'a crate::gpu::Context,
    op: &str,
    residual: Option<(&'a Tensor, Residual)>,
    out: Shape,
) -> Result<(crate::gpu::Binding<'a>, Residual)> {
    match residual {
        Some((r, mode)) if mode != Residual::None => {
            expect_shape(op, "residual", r, out)?;
            Ok((r.into(), mode))
        }
        _ => Ok((ctx.dummy().into(), Residual::None)),
    }
}
