//! Values, nodes and the backward builder of a [`super::Graph`].

use super::params::Param;
use crate::error::Result;
use crate::gpu::{Context, Dispatch, Plan};
use crate::kernels::cast;
use crate::kernels::conv_grad::f32_storage;
use crate::kernels::eltwise::{Eltwise, EltwiseOp};
use crate::kernels::Activation;
use crate::tensor::Tensor;

/// A value in a graph (an activation tensor), by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub(crate) usize);

/// What the graph knows of a value.
pub(crate) struct VarInfo {
    pub tensor: Tensor,
    pub requires_grad: bool,
    pub name: String,
}

/// A recorded layer: its output value and how to send the output's gradient to its inputs and
/// parameters.
pub(crate) trait Node {
    /// The value this node writes.
    fn output(&self) -> super::Var;
    /// Binds the kernels that turn `dy` (the gradient of the output) into gradients of the inputs
    /// ([`Backward::grad_for`]) and parameters ([`Backward::param_grad`]).
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()>;
}

/// The backward under construction: gradient contributions per value and per parameter.
pub(crate) struct Backward<'a> {
    pub ctx: &'a Context,
    vars: &'a [VarInfo],
    params: &'a [Param],
    plan: Plan,
    contribs: Vec<Vec<Tensor>>,
    param_contribs: Vec<Vec<wgpu::Buffer>>,
    param_direct: Vec<bool>,
}

impl<'a> Backward<'a> {
    pub fn new(ctx: &'a Context, vars: &'a [VarInfo], params: &'a [Param]) -> Self {
        Backward {
            ctx,
            vars,
            params,
            plan: Plan::default(),
            contribs: vec![Vec::new(); vars.len()],
            param_contribs: vec![Vec::new(); params.len()],
            param_direct: vec![false; params.len()],
        }
    }

    /// The tensor of a value (forward activations the backward kernels read).
    pub fn tensor(&self, v: Var) -> &Tensor {
        &self.vars[v.0].tensor
    }

    /// A parameter.
    pub fn param(&self, p: super::ParamId) -> &Param {
        &self.params[p.0]
    }

    /// Adds one gradient contribution to `v` (the tensor must not be written afterwards).
    pub fn contribute(&mut self, v: Var, t: Tensor) {
        if self.vars[v.0].requires_grad {
            self.contribs[v.0].push(t);
        }
    }

    /// The summed gradient of `v` so far (None if nothing reached it). Sums in contribution order.
    pub fn total(&mut self, v: Var) -> Result<Option<Tensor>> {
        let parts = std::mem::take(&mut self.contribs[v.0]);
        let mut it = parts.into_iter();
        let Some(mut acc) = it.next() else {
            return Ok(None);
        };
        let add = EltwiseOp::new(Eltwise::Add, Activation::None)?;
        for t in it {
            let sum = Tensor::new(self.ctx, acc.shape(), "grad sum")?;
            self.plan
                .push(add.bind(self.ctx, &acc, Some(&t), None, &sum)?);
            acc = sum;
        }
        self.contribs[v.0].push(acc.clone());
        Ok(Some(acc))
    }

    /// A fresh tensor to receive a gradient contribution for `v`, or None when `v` needs none
    /// (the caller then skips that kernel).
    pub fn grad_for(&mut self, v: Var) -> Result<Option<Tensor>> {
        if !self.vars[v.0].requires_grad {
            return Ok(None);
        }
        let t = Tensor::new(self.ctx, self.vars[v.0].tensor.shape(), "grad")?;
        self.contribs[v.0].push(t.clone());
        Ok(Some(t))
    }

    /// Whether `v` needs a gradient.
    pub fn needs(&self, v: Var) -> bool {
        self.vars[v.0].requires_grad
    }

    /// The f32 buffer to receive a gradient contribution for parameter `p` (its own gradient
    /// buffer when it has one reader), or None when it is frozen or a buffer.
    pub fn param_grad(&mut self, p: super::ParamId) -> Result<Option<wgpu::Buffer>> {
        let param = &self.params[p.0];
        if !param.trainable {
            return Ok(None);
        }
        if param.uses <= 1 {
            self.param_direct[p.0] = true;
            return Ok(Some(param.grad.clone()));
        }
        let buf = f32_storage(self.ctx, &format!("{} grad part", param.name), param.len)?;
        self.param_contribs[p.0].push(buf.clone());
        Ok(Some(buf))
    }

    /// A scratch f32 buffer of `len` floats (kept alive by the bind groups that use it).
    pub fn scratch_f32(&self, label: &str, len: usize) -> Result<wgpu::Buffer> {
        f32_storage(self.ctx, label, len)
    }

    /// A scratch fp16 tensor.
    pub fn scratch(&self, shape: crate::tensor::Shape, label: &str) -> Result<Tensor> {
        Tensor::new(self.ctx, shape, label)
    }

    /// Appends a dispatch.
    pub fn push(&mut self, d: Dispatch) {
        self.plan.push(d);
    }

    /// Appends dispatches.
    pub fn extend(&mut self, ds: impl IntoIterator<Item = Dispatch>) {
        for d in ds {
            self.plan.push(d);
        }
    }

    /// Sums shared parameters' contributions into their gradient buffers and zeroes the gradients
    /// nothing reached; returns the plan.
    pub fn finish(mut self) -> Result<Plan> {
        for (i, p) in self.params.iter().enumerate() {
            if !p.trainable || self.param_direct[i] {
                continue;
            }
            let parts = std::mem::take(&mut self.param_contribs[i]);
            match parts.len() {
                0 => self
                    .plan
                    .push(cast::fill_f32(self.ctx, &p.grad, 0, p.len, 0.0)?),
                1 => self
                    .plan
                    .push(cast::copy_f32(self.ctx, &parts[0], 0, &p.grad, 0, p.len)?),
                _ => {
                    let mut acc = parts[0].clone();
                    for (k, part) in parts.iter().enumerate().skip(1) {
                        let out = if k + 1 == parts.len() {
                            p.grad.clone()
                        } else {
                            f32_storage(self.ctx, "grad sum", p.len)?
                        };
                        self.plan
                            .push(cast::add_f32(self.ctx, &acc, part, &out, p.len)?);
                        acc = out;
                    }
                }
            }
        }
        Ok(self.plan)
    }
}

/// A node whose output gradient flows unchanged to each input (a sum `a + b`).
pub(crate) struct PassThrough {
    pub y: Var,
    pub to: Vec<Var>,
}

impl Node for PassThrough {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        for &v in &self.to {
            b.contribute(v, dy.clone());
        }
        Ok(())
    }
}
