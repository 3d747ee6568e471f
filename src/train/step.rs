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
    /// Every step's parameter sync (frozen weights are synced once, at the first step and after
    /// a restore).
    sync: Plan,
    /// The next step syncs every parameter.
    pub full_sync: bool,
    /// How many of the graph's parameters (the first ones) a checkpoint holds: all by default;
    /// fewer when frozen networks were built after the trained one.
    pub checkpointed: usize,
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
        let checkpointed = graph.params().len();
        let sync = graph.sync_changing();
        Ok(TrainStep {
            sync,
            full_sync: true,
            graph,
            grads,
            loss,
            optim,
            losses,
            loss_slots,
            schedule,
            step: 0,
            checkpointed,
        })
    }

    /// The dispatches of one step, in order (after the first: frozen weights are not re-synced).
    pub fn dispatches(&self) -> Vec<&Dispatch> {
        let mut all = self.sync.refs();
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
        if self.full_sync {
            self.graph.sync().run(ctx)?;
            self.full_sync = false;
        }
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
