//! One training step on the GPU: parameter sync, forward, losses, backward and optimiser,
//! recorded into one encoder and submitted once; nothing allocated, nothing read back.

use crate::autograd::{Gradients, Graph, ParamKind, Var};
use crate::error::Result;
use crate::gpu::{Context, Dispatch, Plan};
use crate::kernels::conv_grad::read_f32;
use crate::kernels::optim::{OptimParam, Optimizer, OptimizerStep, Scaler, Schedule};
use crate::tensor::Tensor;

/// Everything a step records, built once.
pub struct TrainStep<'c> {
    /// The model (and losses' inputs) as a graph.
    pub graph: Graph<'c>,
    /// Its backward for the loss seeds.
    pub grads: Gradients,
    /// Loss kernels: values into [`TrainStep::losses`], seeds into the backward.
    pub loss: Plan,
    /// Optimiser over the trainable parameters.
    pub optim: OptimizerStep,
    /// f32 loss values, one slot per term (written by the loss plan).
    pub losses: wgpu::Buffer,
    /// Number of loss slots.
    pub loss_slots: usize,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Steps taken (resume sets it).
    pub step: u64,
}

impl<'c> TrainStep<'c> {
    /// Binds the backward of `graph` for `seeds` (written by `loss`) and an optimiser over its
    /// trainable parameters sharing `scaler` with the loss kernels.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        graph: Graph<'c>,
        loss: Plan,
        seeds: &[(Var, Tensor)],
        losses: wgpu::Buffer,
        loss_slots: usize,
        optimizer: Optimizer,
        schedule: Schedule,
        scaler: &Scaler,
        max_grad_norm: Option<f32>,
    ) -> Result<Self> {
        schedule.validate()?;
        let grads = graph.backward(seeds)?;
        let params: Vec<OptimParam> = graph
            .params()
            .iter()
            .filter(|p| p.trainable && p.kind == ParamKind::Weight)
            .map(|p| OptimParam {
                name: p.name.clone(),
                value: p.value.clone(),
                grad: p.grad.clone(),
                len: p.len,
            })
            .collect();
        let optim = OptimizerStep::new(graph.ctx(), optimizer, &params, scaler, max_grad_norm)?;
        Ok(TrainStep {
            graph,
            grads,
            loss,
            optim,
            losses,
            loss_slots,
            schedule,
            step: 0,
        })
    }

    /// The dispatches of one step, in order.
    pub fn dispatches(&self) -> Vec<&Dispatch> {
        let mut all = self.graph.sync().refs();
        all.extend(self.graph.forward().refs());
        all.extend(self.loss.refs());
        all.extend(self.grads.plan.refs());
        all.extend(self.optim.dispatches());
        all
    }

    /// Takes one step on whatever the inputs hold now: sets the step's learning rate and submits
    /// (no wait).
    pub fn run(&mut self, ctx: &Context) -> Result<()> {
        let lr = self.schedule.lr(self.step);
        self.optim.set_step(ctx, lr, self.step + 1)?;
        ctx.run(&self.dispatches())?;
        self.step += 1;
        Ok(())
    }

    /// Only the forward and the losses (evaluation; parameters synced first).
    pub fn evaluate(&self, ctx: &Context) -> Result<()> {
        let mut all = self.graph.sync().refs();
        all.extend(self.graph.forward().refs());
        all.extend(self.loss.refs());
        ctx.run(&all)
    }

    /// Reads the loss slots (waits for the queue: call every few steps, not every step).
    pub fn read_losses(&self, ctx: &Context) -> Result<Vec<f32>> {
        read_f32(ctx, &self.losses, self.loss_slots)
    }
}
