//! Autograd on the GPU: a tape of layers recorded while a training forward is built, and the
//! backward plan derived from it.
//!
//! A [`Graph`] is built once per model and batch size, like an inference [`Plan`]: every layer
//! call allocates its output, configures its forward kernel and appends the dispatch, and records a
//! node that knows its backward. [`Graph::backward`] walks the nodes in reverse once and binds the
//! backward kernels into a second plan. A training step then records forward, loss, backward and
//! optimiser into one encoder and allocates nothing.
//!
//! Precision: activations and their gradients are fp16 [`Tensor`]s (the loss kernels scale the
//! seeds, see [`crate::kernels::optim`], so small gradients keep their bits); parameters, their
//! gradients and the optimiser state are f32 buffers in PyTorch layout ([`Param`]). Forward kernels
//! read fp16 copies of the weights, refreshed from the f32 masters by the [`Graph::sync`] plan after
//! every optimiser step.
//!
//! Gradient flow: a value used by several layers receives one gradient tensor per use; the
//! backward sums them (fixed order, deterministic) before its producer consumes it. Parameters
//! used once get their gradient written straight into [`Param::grad`]; shared ones are summed.
//! [`Graph::detach`] stops the flow (the MobileFaceSwap mask branch reads e4 detached).

mod layers;
pub mod net;
mod node;
mod params;

pub use layers::BnSpec;
pub use node::Var;
pub use params::{Param, ParamId, ParamKind};

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::gpu::{Context, Plan};
use crate::kernels::cast;
use crate::kernels::eltwise::{Eltwise, EltwiseOp};
use crate::kernels::Activation;
use crate::tensor::{Shape, Tensor};
use node::{Node, VarInfo};

/// Statistics batch norms use in a training graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NormMode {
    /// Running statistics (inference semantics; `fswap grad` without `--train-mode`).
    #[default]
    Eval,
    /// Batch statistics, running statistics updated every forward (training).
    Train,
}

/// A model's training graph: values, parameters, the forward plan and the nodes its backward
/// is derived from.
pub struct Graph<'c> {
    ctx: &'c Context,
    vars: Vec<VarInfo>,
    nodes: Vec<Box<dyn Node + 'c>>,
    params: Vec<Param>,
    by_name: HashMap<String, ParamId>,
    forward: Plan,
    sync: Plan,
    /// The parameter each sync dispatch reads, in order.
    sync_params: Vec<ParamId>,
    /// Batch-norm statistics for layers added from now on.
    pub norm_mode: NormMode,
}

/// The backward of a graph for a fixed set of seeds: its plan, and the gradients of the graph's
/// inputs that require one.
pub struct Gradients {
    /// The backward dispatches, in order.
    pub plan: Plan,
    inputs: HashMap<usize, Tensor>,
}

impl Gradients {
    /// The gradient of an input created with `requires_grad` (None if nothing reached it).
    pub fn input(&self, v: Var) -> Option<&Tensor> {
        self.inputs.get(&v.0)
    }
}

impl<'c> Graph<'c> {
    /// An empty graph on `ctx`.
    pub fn new(ctx: &'c Context) -> Self {
        Graph {
            ctx,
            vars: Vec::new(),
            nodes: Vec::new(),
            params: Vec::new(),
            by_name: HashMap::new(),
            forward: Plan::default(),
            sync: Plan::default(),
            sync_params: Vec::new(),
            norm_mode: NormMode::Eval,
        }
    }

    /// The device.
    pub fn ctx(&self) -> &'c Context {
        self.ctx
    }

    /// A leaf value (data written by the caller before each run); `requires_grad` asks for its
    /// gradient (`fswap grad` inputs, or the identity features in an end-to-end graph).
    pub fn input(&mut self, shape: Shape, name: &str, requires_grad: bool) -> Result<Var> {
        let t = Tensor::new(self.ctx, shape, name)?;
        Ok(self.leaf(t, name, requires_grad))
    }

    /// Wraps an existing tensor as a leaf value.
    pub fn leaf(&mut self, tensor: Tensor, name: &str, requires_grad: bool) -> Var {
        self.vars.push(VarInfo {
            tensor,
            requires_grad,
            name: name.to_string(),
        });
        Var(self.vars.len() - 1)
    }

    /// The tensor holding a value.
    pub fn tensor(&self, v: Var) -> &Tensor {
        &self.vars[v.0].tensor
    }

    /// A value's shape.
    pub fn shape(&self, v: Var) -> Shape {
        self.vars[v.0].tensor.shape()
    }

    /// Whether gradients flow into `v`.
    pub fn requires_grad(&self, v: Var) -> bool {
        self.vars[v.0].requires_grad
    }

    /// The same tensor as a new value through which no gradient flows.
    pub fn detach(&mut self, v: Var) -> Var {
        let t = self.vars[v.0].tensor.clone();
        let name = format!("{} (detached)", self.vars[v.0].name);
        self.leaf(t, &name, false)
    }

    /// The forward dispatches so far.
    pub fn forward(&self) -> &Plan {
        &self.forward
    }

    /// Dispatches that copy every parameter's f32 master into the fp16 / f32 copies its forward
    /// kernels read: run once before the first forward and after every optimiser step.
    pub fn sync(&self) -> &Plan {
        &self.sync
    }

    /// The sync dispatches of parameters that can change between steps: trainable weights and
    /// buffers (running statistics). Frozen weights need [`Graph::sync`] once, not every step.
    pub fn sync_changing(&self) -> Plan {
        let mut plan = Plan::default();
        for (d, p) in self.sync.dispatches.iter().zip(&self.sync_params) {
            let p = &self.params[p.0];
            if p.trainable || p.kind == ParamKind::Buffer {
                plan.push(d.clone());
            }
        }
        plan
    }

    /// The parameters, in creation order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// A parameter by id.
    pub fn param(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }

    /// A parameter by name.
    pub fn param_named(&self, name: &str) -> Option<&Param> {
        self.by_name.get(name).map(|id| &self.params[id.0])
    }

    /// Marks every parameter whose name starts with `prefix` as frozen (no gradient computed;
    /// e.g. the identity network behind an identity loss).
    pub fn freeze(&mut self, prefix: &str) {
        for p in &mut self.params {
            if p.name.starts_with(prefix) && p.kind == ParamKind::Weight {
                p.trainable = false;
            }
        }
    }

    /// Freezes every parameter added after the first `count` (a frozen network built after the
    /// trained one, whatever its names).
    pub fn freeze_from(&mut self, count: usize) {
        for p in self.params.iter_mut().skip(count) {
            if p.kind == ParamKind::Weight {
                p.trainable = false;
            }
        }
    }

    /// Adds a parameter (f32 master uploaded from `data`) or returns the existing one of that
    /// name, checking its shape.
    pub fn add_param(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &[f32],
        kind: ParamKind,
    ) -> Result<ParamId> {
        if let Some(&id) = self.by_name.get(name) {
            let p = &self.params[id.0];
            if p.shape != shape {
                return Err(Error::shape(
                    "graph parameter",
                    format!("'{name}' used as {shape:?} and as {:?}", p.shape),
                ));
            }
            return Ok(id);
        }
        let p = Param::new(self.ctx, name, shape, data, kind)?;
        self.params.push(p);
        let id = ParamId(self.params.len() - 1);
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    /// Registers a node: its output value and forward dispatches.
    fn push_node(&mut self, node: Box<dyn Node + 'c>, forward: Plan) {
        self.forward.extend(forward);
        self.nodes.push(node);
    }

    /// A new output value; it requires a gradient when any of `inputs` does or any of `params`
    /// is trainable.
    fn output(
        &mut self,
        shape: Shape,
        name: &str,
        inputs: &[Var],
        params: &[ParamId],
    ) -> Result<Var> {
        let rg = inputs.iter().any(|v| self.vars[v.0].requires_grad)
            || params.iter().any(|p| self.params[p.0].trainable);
        let t = Tensor::new(self.ctx, shape, name)?;
        Ok(self.leaf(t, name, rg))
    }

    /// Counts one more reader of each parameter (for the gradient-sum decision).
    fn use_params(&mut self, params: &[ParamId]) {
        for p in params {
            self.params[p.0].uses += 1;
        }
    }

    /// Binds the backward for seeds `(value, dL/dvalue)`: the plan that, run after the forward,
    /// writes every trainable parameter's gradient into [`Param::grad`] (zero where no gradient
    /// reaches it) and the gradients of inputs that require one.
    pub fn backward(&self, seeds: &[(Var, Tensor)]) -> Result<Gradients> {
        let mut b = node::Backward::new(self.ctx, &self.vars, &self.params);
        for (v, t) in seeds {
            if t.shape() != self.shape(*v) {
                return Err(Error::shape(
                    "backward seed",
                    format!(
                        "seed for '{}' is {:?}, the value is {:?}",
                        self.vars[v.0].name,
                        t.shape().dims(),
                        self.shape(*v).dims()
                    ),
                ));
            }
            b.contribute(*v, t.clone());
        }
        for node in self.nodes.iter().rev() {
            let v = node.output();
            if !self.vars[v.0].requires_grad {
                continue;
            }
            if let Some(dy) = b.total(v)? {
                node.backward(&mut b, &dy)?;
            }
        }
        let mut inputs = HashMap::new();
        for (i, info) in self.vars.iter().enumerate() {
            if info.requires_grad && !self.nodes.iter().any(|n| n.output().0 == i) {
                if let Some(g) = b.total(Var(i))? {
                    inputs.insert(i, g);
                }
            }
        }
        let plan = b.finish()?;
        Ok(Gradients { plan, inputs })
    }

    /// `a + b` (same shape): residual joins.
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        let s = self.shape(a);
        let y = self.output(s, "add", &[a, b], &[])?;
        let op = EltwiseOp::new(Eltwise::Add, Activation::None)?;
        let mut fwd = Plan::default();
        fwd.push(op.bind(
            self.ctx,
            self.tensor(a),
            Some(self.tensor(b)),
            None,
            self.tensor(y),
        )?);
        self.push_node(Box::new(node::PassThrough { y, to: vec![a, b] }), fwd);
        Ok(y)
    }

    /// Copies `v`'s f32 master into `dst` (an fp16 tensor a forward kernel reads), transposed per
    /// `transpose`, in the sync plan.
    fn sync_half(
        &mut self,
        p: ParamId,
        dst: &Tensor,
        transpose: Option<cast::Transpose>,
    ) -> Result<()> {
        let d = cast::to_half(self.ctx, &self.params[p.0].value, 0, dst, transpose)?;
        self.sync.push(d);
        self.sync_params.push(p);
        Ok(())
    }

    /// Copies a parameter's f32 master into `dst[offset..]` (an epilogue or statistics buffer).
    fn sync_f32(&mut self, p: ParamId, dst: &wgpu::Buffer, offset: usize) -> Result<()> {
        let src = &self.params[p.0];
        let d = cast::copy_f32(self.ctx, &src.value, 0, dst, offset, src.len)?;
        self.sync.push(d);
        self.sync_params.push(p);
        Ok(())
    }
}
