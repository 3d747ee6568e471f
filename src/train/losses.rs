//! The loss terms of a training step: each binds its kernel on a graph value, writes its batch
//! total into a slot of one f32 buffer and its gradient seed (scaled by the GPU-resident loss
//! scale) into a tensor handed to the backward.

use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::gpu::Plan;
use crate::kernels::conv_grad::f32_storage;
use crate::kernels::loss::{
    IdentityLoss, IdentitySpec, LossOut, MaskLoss, MaskLossSpec, PixelLoss, PixelSpec, SsimLoss,
    SsimSpec,
};
use crate::tensor::Tensor;

/// Most terms one step can have.
pub const MAX_TERMS: usize = 32;

/// Loss terms under construction.
pub struct Losses {
    /// Their dispatches, in order.
    pub plan: Plan,
    /// Gradient seeds for the backward.
    pub seeds: Vec<(Var, Tensor)>,
    /// Term names, by slot.
    pub names: Vec<String>,
    /// The f32 totals, one slot per term.
    pub values: wgpu::Buffer,
    scale: wgpu::Buffer,
}

impl Losses {
    /// Terms whose seeds are scaled by element 0 of `scale` (the optimiser's scaler buffer).
    pub fn new(g: &Graph<'_>, scale: &wgpu::Buffer) -> Result<Self> {
        Ok(Losses {
            plan: Plan::default(),
            seeds: Vec::new(),
            names: Vec::new(),
            values: f32_storage(g.ctx(), "loss values", MAX_TERMS)?,
            scale: scale.clone(),
        })
    }

    fn slot(&mut self, name: &str) -> Result<usize> {
        if self.names.len() == MAX_TERMS {
            return Err(Error::param(
                "losses",
                format!("more than {MAX_TERMS} terms"),
            ));
        }
        self.names.push(name.to_string());
        Ok(self.names.len() - 1)
    }

    /// An L1 / MSE term between `pred` and a constant `target` (optionally masked), with optional
    /// per-sample weights `[N]` (the distillation α).
    #[allow(clippy::too_many_arguments)]
    pub fn pixel(
        &mut self,
        g: &Graph<'_>,
        name: &str,
        pred: Var,
        target: &Tensor,
        mask: Option<&Tensor>,
        spec: PixelSpec,
        weights: Option<&wgpu::Buffer>,
    ) -> Result<()> {
        let slot = self.slot(name)?;
        let s = g.shape(pred);
        let k = PixelLoss::new(g.ctx(), spec, s)?;
        let grad = Tensor::new(g.ctx(), s, name)?;
        let mut out = LossOut::new(&self.values, slot, &self.scale);
        if let Some(w) = weights {
            out = out.weighted(w);
        }
        for d in k.bind(g.ctx(), g.tensor(pred), Some(target), mask, &out, &grad)? {
            self.plan.push(d);
        }
        self.seeds.push((pred, grad));
        Ok(())
    }

    /// An SSIM term (faceswap's DSSIM by default).
    pub fn ssim(
        &mut self,
        g: &Graph<'_>,
        name: &str,
        pred: Var,
        target: &Tensor,
        spec: SsimSpec,
        weights: Option<&wgpu::Buffer>,
    ) -> Result<()> {
        let slot = self.slot(name)?;
        let s = g.shape(pred);
        let k = SsimLoss::new(g.ctx(), spec, s)?;
        let grad = Tensor::new(g.ctx(), s, name)?;
        let mut out = LossOut::new(&self.values, slot, &self.scale);
        if let Some(w) = weights {
            out = out.weighted(w);
        }
        for d in k.bind(g.ctx(), g.tensor(pred), target, None, &out, &grad)? {
            self.plan.push(d);
        }
        self.seeds.push((pred, grad));
        Ok(())
    }

    /// `1 − cos(embedding, reference)` (with the spec's optional margin).
    pub fn identity(
        &mut self,
        g: &Graph<'_>,
        name: &str,
        embedding: Var,
        reference: &Tensor,
        spec: IdentitySpec,
    ) -> Result<()> {
        let slot = self.slot(name)?;
        let s = g.shape(embedding);
        let k = IdentityLoss::new(g.ctx(), spec, s.n, s.w)?;
        let grad = Tensor::new(g.ctx(), s, name)?;
        let out = LossOut::new(&self.values, slot, &self.scale);
        for d in k.bind(g.ctx(), g.tensor(embedding), reference, &out, &grad, None)? {
            self.plan.push(d);
        }
        self.seeds.push((embedding, grad));
        Ok(())
    }

    /// The background-only mask term: the predicted mask is pushed to 0 where `background` is 1.
    pub fn background_mask(
        &mut self,
        g: &Graph<'_>,
        name: &str,
        mask: Var,
        background: &Tensor,
        spec: MaskLossSpec,
    ) -> Result<()> {
        let slot = self.slot(name)?;
        let s = g.shape(mask);
        let k = MaskLoss::new(g.ctx(), spec, s)?;
        let grad = Tensor::new(g.ctx(), s, name)?;
        let out = LossOut::new(&self.values, slot, &self.scale);
        for d in k.bind(g.ctx(), g.tensor(mask), background, &out, &grad)? {
            self.plan.push(d);
        }
        self.seeds.push((mask, grad));
        Ok(())
    }
}
