//! Parameters of a training graph: f32 masters and gradients on the GPU, by official name.

use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::kernels::conv_grad::{f32_storage, read_f32};

/// Index of a parameter in its [`super::Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub(crate) usize);

/// What a parameter is to the optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Learned (weights, biases, γ, β, PReLU slopes).
    Weight,
    /// State the forward updates itself (batch-norm running mean and variance): saved and
    /// exported, never given to the optimiser.
    Buffer,
}

/// One named tensor of a model: its f32 value (the master copy) and gradient, PyTorch layout.
pub struct Param {
    /// Name in the weights file.
    pub name: String,
    /// PyTorch shape (Linear `[out, in]`).
    pub shape: Vec<usize>,
    /// Element count.
    pub len: usize,
    /// Learned or running state.
    pub kind: ParamKind,
    /// Whether the backward computes its gradient (false for frozen networks and buffers).
    pub trainable: bool,
    /// f32 master value.
    pub value: wgpu::Buffer,
    /// f32 gradient, overwritten by every backward run.
    pub grad: wgpu::Buffer,
    /// Layers that read it (a gradient used more than once is summed).
    pub(crate) uses: usize,
}

impl Param {
    /// Uploads `data` (checked finite, `shape`'s length).
    pub fn new(
        ctx: &Context,
        name: &str,
        shape: &[usize],
        data: &[f32],
        kind: ParamKind,
    ) -> Result<Self> {
        let len: usize = shape.iter().product();
        check_values(name, shape, len, data)?;
        let value = f32_storage(ctx, name, len)?;
        ctx.queue
            .write_buffer(&value, 0, bytemuck::cast_slice(data));
        let grad = f32_storage(ctx, &format!("{name} grad"), len)?;
        Ok(Param {
            name: name.to_string(),
            shape: shape.to_vec(),
            len,
            kind,
            trainable: kind == ParamKind::Weight,
            value,
            grad,
            uses: 0,
        })
    }

    /// Reads the value back (checkpoints, export; not per step).
    pub fn read(&self, ctx: &Context) -> Result<Vec<f32>> {
        read_f32(ctx, &self.value, self.len)
    }

    /// Reads the gradient back.
    pub fn read_grad(&self, ctx: &Context) -> Result<Vec<f32>> {
        read_f32(ctx, &self.grad, self.len)
    }

    /// Overwrites the value (resume from a checkpoint); the graph's sync plan must run after.
    pub fn write(&self, ctx: &Context, data: &[f32]) -> Result<()> {
        check_values(&self.name, &self.shape, self.len, data)?;
        ctx.queue
            .write_buffer(&self.value, 0, bytemuck::cast_slice(data));
        Ok(())
    }
}

/// `data` has `len` values (the product of `shape`), all finite.
fn check_values(name: &str, shape: &[usize], len: usize, data: &[f32]) -> Result<()> {
    if data.len() != len {
        return Err(Error::shape(
            "parameter",
            format!(
                "'{name}' {shape:?} needs {len} values, found {}",
                data.len()
            ),
        ));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::Data {
            what: format!("parameter '{name}'"),
            detail: format!("element {i} is {}: not finite", data[i]),
        });
    }
    Ok(())
}
