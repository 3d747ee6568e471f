//! `shaders/optim.wgsl`: the optimiser step of the trainer, decided and applied on the GPU.
//!
//! Every parameter is its own f32 value buffer with an f32 gradient buffer of the same length, in
//! PyTorch layout. An [`OptimizerStep`] is built once for the list of parameters: it owns the
//! optimiser state (`exp_avg`, `exp_avg_sq` or `momentum_buffer`), a partial-norms buffer and a
//! small *hyper* buffer, and its [`dispatches`](OptimizerStep::dispatches) are recorded every step
//! after the backward, with no allocation and no readback:
//!
//! 1. one `sumsq` dispatch per parameter: Σ (g / loss_scale)² per chunk of the gradient, into the
//!    partials buffer (a chunk holding a non-finite gradient is marked);
//! 2. one `finalize` dispatch: sums the partials in index order (deterministic: bit-identical from
//!    run to run), takes the global norm of the unscaled gradients, the clip coefficient of
//!    `torch.nn.utils.clip_grad_norm_` (`max_norm / (norm + 1e-6)`, applied when below 1), the skip
//!    decision and the loss-scale update of `torch.cuda.amp.GradScaler`, all into the [`Scaler`];
//! 3. one update dispatch per parameter: `torch.optim.SGD`, `Adam` or `AdamW` exactly as PyTorch's
//!    single-tensor code path writes them, with the gradient multiplied by the scaler's factor
//!    (`1/loss_scale × clip coefficient`). When the step is skipped they write nothing.
//!
//! The host writes the learning rate and the step number before each step with
//! [`OptimizerStep::set_step`] (one `queue.write_buffer`). The learning-rate [`Schedule`] is
//! computed on the host.
//!
//! Step counting follows PyTorch with a `GradScaler`: a skipped step does not advance the
//! optimiser. The host's `t` counts every step (skipped or not); the GPU keeps the number of
//! skipped steps in the scaler and uses `t − skipped` for Adam's bias corrections and SGD's first
//! momentum step, which is the per-parameter `state['step']` PyTorch would hold.

use std::sync::atomic::{AtomicU64, Ordering};

use super::conv_grad::{f32_storage, read_f32};
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};

/// An optimiser and its hyper-parameters, with `torch.optim`'s meaning (the learning rate comes
/// per step from [`OptimizerStep::set_step`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// `torch.optim.SGD`: `g += wd·p`; with momentum `buf = g` on the first step, else
    /// `buf = momentum·buf + (1 − dampening)·g`; `g = g + momentum·buf` (Nesterov) or `g = buf`;
    /// `p -= lr·g`.
    Sgd {
        /// Momentum factor (0 disables the momentum buffer).
        momentum: f64,
        /// Dampening of the momentum.
        dampening: f64,
        /// Nesterov momentum (needs momentum > 0 and dampening 0, as PyTorch).
        nesterov: bool,
        /// L2 penalty added to the gradient.
        weight_decay: f64,
    },
    /// `torch.optim.Adam` (amsgrad off): `g += wd·p` (L2), `m = lerp(m, g, 1 − β1)`,
    /// `v = β2·v + (1 − β2)·g²`, `p -= lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + eps)`.
    Adam {
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// Term added to the denominator.
        eps: f64,
        /// L2 penalty added to the gradient.
        weight_decay: f64,
    },
    /// `torch.optim.AdamW`: decoupled weight decay `p *= 1 − lr·wd`, then Adam without L2.
    AdamW {
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// Term added to the denominator.
        eps: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
    },
}

impl Optimizer {
    /// Adam with PyTorch's defaults: β = (0.9, 0.999), eps 1e-8, no weight decay.
    pub fn adam() -> Self {
        Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }

    /// AdamW with PyTorch's defaults: β = (0.9, 0.999), eps 1e-8, weight decay 0.01.
    pub fn adamw() -> Self {
        Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }

    /// SGD with `momentum` (no dampening, Nesterov or weight decay).
    pub fn sgd(momentum: f64) -> Self {
        Optimizer::Sgd {
            momentum,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    /// Checks the hyper-parameters as `torch.optim` does.
    pub fn validate(&self) -> Result<()> {
        let op = "optimizer";
        let nonneg = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::param(
                    op,
                    format!("{name} must be finite and ≥ 0, got {v}"),
                ))
            }
        };
        match *self {
            Optimizer::Sgd {
                momentum,
                dampening,
                nesterov,
                weight_decay,
            } => {
                nonneg("momentum", momentum)?;
                nonneg("weight_decay", weight_decay)?;
                if !dampening.is_finite() {
                    return Err(Error::param(
                        op,
                        format!("dampening {dampening} not finite"),
                    ));
                }
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return Err(Error::param(
                        op,
                        "Nesterov momentum requires a momentum > 0 and zero dampening",
                    ));
                }
            }
            Optimizer::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            }
            | Optimizer::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(&b) {
                        return Err(Error::param(
                            op,
                            format!("{name} must be in [0, 1), got {b}"),
                        ));
                    }
                }
                nonneg("eps", eps)?;
                nonneg("weight_decay", weight_decay)?;
            }
        }
        Ok(())
    }

    /// Suffixes of the state buffers each parameter gets (`{param}.{suffix}`).
    fn state_suffixes(&self) -> &'static [&'static str] {
        match *self {
            Optimizer::Sgd { momentum, .. } if momentum != 0.0 => &["momentum_buffer"],
            Optimizer::Sgd { .. } => &[],
            Optimizer::Adam { .. } | Optimizer::AdamW { .. } => &["exp_avg", "exp_avg_sq"],
        }
    }
}

/// How the loss scale evolves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossScale {
    /// A fixed scale (1.0 for fp32-exact checks). Steps with non-finite gradients are still
    /// skipped, so a bad batch never writes NaN into the parameters.
    Static(f32),
    /// `torch.cuda.amp.GradScaler`: on non-finite gradients the step is skipped and the scale
    /// multiplied by `backoff_factor`; after `growth_interval` consecutive good steps it is
    /// multiplied by `growth_factor` (when the result is finite).
    Dynamic {
        /// Starting scale.
        init_scale: f32,
        /// Factor after `growth_interval` good steps.
        growth_factor: f32,
        /// Factor after a step with non-finite gradients.
        backoff_factor: f32,
        /// Consecutive good steps before growing.
        growth_interval: u32,
    },
}

impl LossScale {
    /// `GradScaler`'s defaults: scale 65536, growth ×2 every 2000 good steps, backoff ×0.5.
    pub fn dynamic() -> Self {
        LossScale::Dynamic {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }

    fn init_scale(&self) -> f32 {
        match *self {
            LossScale::Static(s) => s,
            LossScale::Dynamic { init_scale, .. } => init_scale,
        }
    }

    fn validate(&self) -> Result<()> {
        let op = "loss scale";
        let s = self.init_scale();
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::param(
                op,
                format!("scale must be finite and > 0, got {s}"),
            ));
        }
        if let LossScale::Dynamic {
            growth_factor,
            backoff_factor,
            growth_interval,
            ..
        } = *self
        {
            if !(growth_factor.is_finite() && growth_factor > 1.0) {
                return Err(Error::param(
                    op,
                    format!("growth_factor must be > 1, got {growth_factor}"),
                ));
            }
            if !(backoff_factor > 0.0 && backoff_factor < 1.0) {
                return Err(Error::param(
                    op,
                    format!("backoff_factor must be in (0, 1), got {backoff_factor}"),
                ));
            }
            if growth_interval == 0 {
                return Err(Error::param(op, "growth_interval must be at least 1"));
            }
        }
        Ok(())
    }
}

/// The GPU-resident loss-scale state: [`Scaler::LEN`] f32 slots, read by the loss kernels (the
/// scale their gradient seeds are multiplied by) and by the optimiser, written by the optimiser's
/// finalize pass. Cloning shares the buffer.
#[derive(Clone, Debug)]
pub struct Scaler {
    buffer: wgpu::Buffer,
    mode: LossScale,
}

impl Scaler {
    /// Slot of the loss scale the loss kernels multiply their seeds by.
    pub const SCALE: usize = 0;
    /// Slot of the factor the update multiplies gradients by: `1/scale × clip coefficient`.
    pub const FACTOR: usize = 1;
    /// Slot of the skip flag: 1.0 when the last step's gradients were non-finite (not applied).
    pub const SKIP: usize = 2;
    /// Slot of the count of consecutive good steps (the growth tracker).
    pub const GOOD_STEPS: usize = 3;
    /// Slot of the global L2 norm of the unscaled gradients before clipping (+∞ on a skipped step).
    pub const NORM: usize = 4;
    /// Slot of the number of skipped steps so far (the optimiser's step count is `t − skipped`).
    pub const SKIPPED: usize = 5;
    /// Floats in the buffer (slots 6 and 7 are reserved).
    pub const LEN: usize = 8;

    /// A scaler starting at `mode`'s scale, factor `1/scale`, no steps taken.
    pub fn new(ctx: &Context, mode: LossScale) -> Result<Self> {
        mode.validate()?;
        let buffer = f32_storage(ctx, "loss scaler", Self::LEN)?;
        let s = Scaler { buffer, mode };
        let scale = mode.init_scale();
        let mut init = [0.0f32; Self::LEN];
        init[Self::SCALE] = scale;
        init[Self::FACTOR] = 1.0 / scale;
        s.write(ctx, &init)?;
        Ok(s)
    }

    /// The state buffer (f32 storage, [`Scaler::LEN`] floats): bind it where the loss scale is read.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// The scaling mode.
    pub fn mode(&self) -> LossScale {
        self.mode
    }

    /// Reads the [`Scaler::LEN`] slots back (waits for the queue; diagnostics and checkpoints).
    pub fn read(&self, ctx: &Context) -> Result<Vec<f32>> {
        read_f32(ctx, &self.buffer, Self::LEN)
    }

    /// Overwrites the slots (a checkpoint's values; queued, lands at the next submit).
    pub fn write(&self, ctx: &Context, slots: &[f32]) -> Result<()> {
        if slots.len() != Self::LEN {
            return Err(Error::shape(
                "scaler",
                format!("{} values given, {} expected", slots.len(), Self::LEN),
            ));
        }
        let scale = slots[Self::SCALE];
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::Data {
                what: "scaler".into(),
                detail: format!("loss scale {scale} is not finite and > 0"),
            });
        }
        ctx.queue
            .write_buffer(&self.buffer, 0, bytemuck::cast_slice(slots));
        Ok(())
    }
}

/// One parameter given to an [`OptimizerStep`]: its f32 value and gradient buffers (STORAGE, at
/// least `len` floats each, distinct), PyTorch layout. Buffers are shared, not copied.
#[derive(Clone, Debug)]
pub struct OptimParam {
    /// Name, used for the state buffers' names (`{name}.exp_avg`, ...).
    pub name: String,
    /// The f32 master value, updated in place.
    pub value: wgpu::Buffer,
    /// The f32 gradient, scaled by the loss scale.
    pub grad: wgpu::Buffer,
    /// Element count.
    pub len: usize,
}

/// The kind of learning-rate curve after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    /// `base_lr` until the end.
    Constant,
    /// Half a cosine from `base_lr` down to `min_lr` at `total_steps`, then `min_lr`.
    Cosine,
}

/// A learning-rate schedule, evaluated on the host in f64.
///
/// `lr(step)` for the 0-based index of the step about to be taken:
/// - warm-up, `step < warmup_steps`: linear from 0, `base_lr · step / warmup_steps`;
/// - then [`ScheduleKind::Constant`]: `base_lr`;
/// - or [`ScheduleKind::Cosine`]: with `p = (step − warmup_steps) / (total_steps − warmup_steps)`
///   clamped to [0, 1], `min_lr + (base_lr − min_lr) · (1 + cos(π·p)) / 2`: `base_lr` at the end
///   of warm-up (the peak), `min_lr` from `total_steps` on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub base_lr: f64,
    /// Steps of linear warm-up from 0 (0: none).
    pub warmup_steps: u64,
    /// Step at which the cosine reaches `min_lr`.
    pub total_steps: u64,
    /// Final learning rate of the cosine.
    pub min_lr: f64,
    /// Curve after warm-up.
    pub kind: ScheduleKind,
}

impl Schedule {
    /// A constant learning rate, no warm-up.
    pub fn constant(lr: f64) -> Self {
        Schedule {
            base_lr: lr,
            warmup_steps: 0,
            total_steps: 0,
            min_lr: lr,
            kind: ScheduleKind::Constant,
        }
    }

    /// Checks the rates are finite and non-negative and a cosine's warm-up ends before its end.
    pub fn validate(&self) -> Result<()> {
        let op = "lr schedule";
        for (name, v) in [("base_lr", self.base_lr), ("min_lr", self.min_lr)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::param(
                    op,
                    format!("{name} must be finite and ≥ 0, got {v}"),
                ));
            }
        }
        if self.kind == ScheduleKind::Cosine && self.total_steps < self.warmup_steps {
            return Err(Error::param(
                op,
                format!(
                    "total_steps {} is before the end of warm-up ({} steps)",
                    self.total_steps, self.warmup_steps
                ),
            ));
        }
        Ok(())
    }

    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * step as f64 / self.warmup_steps as f64;
        }
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let p = ((step - self.warmup_steps) as f64 / span).min(1.0);
                self.min_lr
                    + (self.base_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    chunks: u32,
    chunk_len: u32,
    slot: u32,
    nslots: u32,
    clip: u32,
    dynamic: u32,
    growth_interval: u32,
    max_norm: f32,
    growth: f32,
    backoff: f32,
    adam: u32,
    beta1: f32,
    beta2: f32,
    d1: f32,
    d2: f32,
    eps: f32,
    wd: f32,
    momentum: f32,
    damp_c: f32,
    nesterov: u32,
    adamw: u32,
    inf_bits: u32,
    _p0: u32,
}

/// The host-written head of the hyper buffer (`Hyper` in the shader; the GPU writes the rest).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct HyperHead {
    lr: f32,
    t: u32,
    decay: f32,
    _pad: u32,
}

/// Floats of the hyper buffer.
const HYPER_LEN: usize = 8;
/// Least gradient elements per `sumsq` workgroup (16 per lane).
const CHUNK_MIN: usize = 16 * WORKGROUP as usize;
/// Most chunks per parameter: bounds the partials at 128 per parameter.
const MAX_CHUNKS: usize = 128;
/// Uniform binding of every optim entry point.
const UNIFORM: u32 = 7;

/// Name of the scaler's entry in [`OptimizerStep::state`].
pub const STATE_SCALER: &str = "optimizer.scaler";
/// Name of the step count's entry in [`OptimizerStep::state`] (one float, exact below 2^24).
pub const STATE_STEP: &str = "optimizer.step";

/// One optimiser step over a fixed list of parameters, recorded every training step.
pub struct OptimizerStep {
    optimizer: Optimizer,
    params: Vec<OptimParam>,
    /// Per parameter: its state buffers, in `optimizer.state_suffixes()` order.
    state: Vec<Vec<wgpu::Buffer>>,
    scaler: Scaler,
    max_norm: Option<f32>,
    hyper: wgpu::Buffer,
    norms: wgpu::Buffer,
    dispatches: Vec<Dispatch>,
    t: AtomicU64,
    lr: AtomicU64,
}

fn f32c(v: f64) -> f32 {
    v as f32
}

impl OptimizerStep {
    /// Builds the step for `params` with `optimizer`, the loss-scale state `scaler` (shared with
    /// the loss kernels) and optional global-norm clipping at `max_grad_norm`. State buffers start
    /// at zero; the step count at 0 (call [`set_step`](Self::set_step) before the first run).
    pub fn new(
        ctx: &Context,
        optimizer: Optimizer,
        params: &[OptimParam],
        scaler: &Scaler,
        max_grad_norm: Option<f32>,
    ) -> Result<Self> {
        let op = "optimizer";
        optimizer.validate()?;
        if params.is_empty() {
            return Err(Error::param(op, "no parameters given"));
        }
        if let Some(m) = max_grad_norm {
            if !(m.is_finite() && m > 0.0) {
                return Err(Error::param(
                    op,
                    format!("max_grad_norm must be finite and > 0, got {m}"),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for p in params {
            if !names.insert(p.name.as_str()) {
                return Err(Error::param(
                    op,
                    format!("parameter '{}' given twice", p.name),
                ));
            }
            if p.len == 0 || p.len > u32::MAX as usize {
                return Err(Error::param(
                    op,
                    format!("parameter '{}' has length {}", p.name, p.len),
                ));
            }
            for (role, b) in [("value", &p.value), ("gradient", &p.grad)] {
                if b.size() < (p.len * 4) as u64 || !b.usage().contains(wgpu::BufferUsages::STORAGE)
                {
                    return Err(Error::param(
                        op,
                        format!(
                            "'{}' {role} buffer of {} bytes ({:?}): needs STORAGE and {} bytes",
                            p.name,
                            b.size(),
                            b.usage(),
                            p.len * 4
                        ),
                    ));
                }
            }
            if p.value == p.grad {
                return Err(Error::param(
                    op,
                    format!("'{}': value and gradient are the same buffer", p.name),
                ));
            }
        }
        let suffixes = optimizer.state_suffixes();
        let mut state = Vec::with_capacity(params.len());
        for p in params {
            let mut bufs = Vec::new();
            for s in suffixes {
                // wgpu zero-initialises new buffers: the state starts at 0, as PyTorch's.
                bufs.push(f32_storage(ctx, &format!("{}.{s}", p.name), p.len)?);
            }
            state.push(bufs);
        }
        let hyper = f32_storage(ctx, "optim hyper", HYPER_LEN)?;

        // Chunking of each parameter's gradient for the norm passes.
        let mut chunking = Vec::with_capacity(params.len());
        let mut nslots = 0usize;
        for p in params {
            let chunks = p.len.div_ceil(CHUNK_MIN).clamp(1, MAX_CHUNKS);
            let chunk_len = p.len.div_ceil(chunks);
            let chunks = p.len.div_ceil(chunk_len);
            chunking.push((nslots, chunks, chunk_len));
            nslots += chunks;
        }
        let norms = f32_storage(ctx, "optim grad norms", nslots)?;

        let mut base = Params {
            nslots: nslots as u32,
            inf_bits: f32::INFINITY.to_bits(),
            ..Default::default()
        };
        if let Some(m) = max_grad_norm {
            base.clip = 1;
            base.max_norm = m;
        }
        if let LossScale::Dynamic {
            growth_factor,
            backoff_factor,
            growth_interval,
            ..
        } = scaler.mode
        {
            base.dynamic = 1;
            base.growth = growth_factor;
            base.backoff = backoff_factor;
            base.growth_interval = growth_interval;
        }
        let update_entry = match optimizer {
            Optimizer::Sgd {
                momentum,
                dampening,
                nesterov,
                weight_decay,
            } => {
                base.momentum = f32c(momentum);
                base.damp_c = f32c(1.0 - dampening);
                base.nesterov = nesterov as u32;
                base.wd = f32c(weight_decay);
                "sgd"
            }
            Optimizer::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            }
            | Optimizer::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                base.adam = 1;
                base.adamw = matches!(optimizer, Optimizer::AdamW { .. }) as u32;
                base.beta1 = f32c(beta1);
                base.beta2 = f32c(beta2);
                base.d1 = f32c(1.0 - beta1);
                base.d2 = f32c(1.0 - beta2);
                base.eps = f32c(eps);
                base.wd = f32c(weight_decay);
                "adam"
            }
        };

        let sumsq = ctx.pipeline("optim", "sumsq", &[])?;
        let finalize = ctx.pipeline("optim", "finalize", &[])?;
        let update = ctx.pipeline("optim", update_entry, &[])?;
        let scaler_b = Binding::from(&scaler.buffer);
        let norms_b = Binding::from(&norms);
        let hyper_b = Binding::from(&hyper);
        let mut dispatches = Vec::with_capacity(2 * params.len() + 1);
        for (p, &(slot, chunks, chunk_len)) in params.iter().zip(&chunking) {
            let pr = Params {
                len: p.len as u32,
                chunks: chunks as u32,
                chunk_len: chunk_len as u32,
                slot: slot as u32,
                ..base
            };
            dispatches.push(ctx.dispatch_at(
                format!("grad sumsq {}", p.name),
                sumsq.clone(),
                &[(1, &Binding::from(&p.grad)), (4, &scaler_b), (5, &norms_b)],
                (UNIFORM, &pr),
                grid(chunks as u64 * WORKGROUP as u64, WORKGROUP),
                DispatchStats {
                    flops: 3 * p.len as u64,
                    bytes: p.len as u64 * 4 + chunks as u64 * 4,
                },
            ));
        }
        dispatches.push(ctx.dispatch_at(
            "optim finalize",
            finalize,
            &[(4, &scaler_b), (5, &norms_b), (6, &hyper_b)],
            (UNIFORM, &base),
            [1, 1, 1],
            DispatchStats {
                flops: nslots as u64 + 32,
                bytes: nslots as u64 * 4 + 64,
            },
        ));
        for (p, st) in params.iter().zip(&state) {
            let pr = Params {
                len: p.len as u32,
                ..base
            };
            let mut owned: Vec<(u32, Binding<'_>)> =
                vec![(0, Binding::from(&p.value)), (1, Binding::from(&p.grad))];
            // Floats read and written per element, and flops per element.
            let (words, flops) = if base.adam != 0 {
                owned.push((2, Binding::from(&st[0])));
                owned.push((3, Binding::from(&st[1])));
                (7u64, 18u64)
            } else {
                // SGD without momentum never touches the buffer: the context's dummy stands in.
                owned.push((2, Binding::from(st.first().unwrap_or(ctx.dummy()))));
                (3 + 2 * st.len() as u64, 8u64)
            };
            owned.push((4, Binding::from(&scaler.buffer)));
            owned.push((6, Binding::from(&hyper)));
            let refs: Vec<(u32, &Binding<'_>)> = owned.iter().map(|(i, b)| (*i, b)).collect();
            dispatches.push(ctx.dispatch_at(
                format!("{update_entry} {}", p.name),
                update.clone(),
                &refs,
                (UNIFORM, &pr),
                grid(p.len as u64, WORKGROUP),
                DispatchStats {
                    flops: flops * p.len as u64,
                    bytes: words * 4 * p.len as u64,
                },
            ));
        }

        let s = OptimizerStep {
            optimizer,
            params: params.to_vec(),
            state,
            scaler: scaler.clone(),
            max_norm: max_grad_norm,
            hyper,
            norms,
            dispatches,
            t: AtomicU64::new(0),
            lr: AtomicU64::new(0f64.to_bits()),
        };
        Ok(s)
    }

    /// Sets the learning rate and the 1-based step number `t` of the next run (counting every step
    /// the host runs, skipped or not): one `queue.write_buffer`, landing at the next submit.
    pub fn set_step(&self, ctx: &Context, lr: f64, t: u64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::param(
                "optimizer step",
                format!("lr must be finite and ≥ 0, got {lr}"),
            ));
        }
        if t == 0 || t > u32::MAX as u64 {
            return Err(Error::param(
                "optimizer step",
                format!("step number t must be in 1..=2^32-1, got {t}"),
            ));
        }
        let decay = match self.optimizer {
            Optimizer::AdamW { weight_decay, .. } => 1.0 - lr * weight_decay,
            _ => 1.0,
        };
        let head = HyperHead {
            lr: lr as f32,
            t: t as u32,
            decay: decay as f32,
            _pad: 0,
        };
        ctx.queue
            .write_buffer(&self.hyper, 0, bytemuck::bytes_of(&head));
        self.t.store(t, Ordering::Relaxed);
        self.lr.store(lr.to_bits(), Ordering::Relaxed);
        Ok(())
    }

    /// The step number last given to [`set_step`](Self::set_step) (or loaded from a checkpoint).
    pub fn step(&self) -> u64 {
        self.t.load(Ordering::Relaxed)
    }

    /// The learning rate last given to [`set_step`](Self::set_step).
    pub fn lr(&self) -> f64 {
        f64::from_bits(self.lr.load(Ordering::Relaxed))
    }

    /// The dispatches of one step, in order: one norm pass per parameter, the finalize pass, one
    /// update per parameter. Record them after the backward, every step.
    pub fn dispatches(&self) -> Vec<&Dispatch> {
        self.dispatches.iter().collect()
    }

    /// The loss-scale state this step reads and updates.
    pub fn scaler(&self) -> &Scaler {
        &self.scaler
    }

    /// The optimiser.
    pub fn optimizer(&self) -> Optimizer {
        self.optimizer
    }

    /// The clipping threshold, if any.
    pub fn max_grad_norm(&self) -> Option<f32> {
        self.max_norm
    }

    /// The parameters, in the order given.
    pub fn params(&self) -> &[OptimParam] {
        &self.params
    }

    /// The per-chunk sums of squares of the last step (diagnostics): `-1` marks a chunk with a
    /// non-finite gradient.
    pub fn norms_buffer(&self) -> &wgpu::Buffer {
        &self.norms
    }

    /// Names and lengths of every state entry, in [`state`](Self::state)'s order.
    fn layout(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for p in &self.params {
            for s in self.optimizer.state_suffixes() {
                out.push((format!("{}.{s}", p.name), p.len));
            }
        }
        out.push((STATE_SCALER.to_string(), Scaler::LEN));
        out.push((STATE_STEP.to_string(), 1));
        out
    }

    /// Reads the whole optimiser state back for a checkpoint (waits for the queue): per parameter
    /// `{name}.exp_avg` and `{name}.exp_avg_sq` (Adam, AdamW) or `{name}.momentum_buffer` (SGD
    /// with momentum), then [`STATE_SCALER`] (the [`Scaler`] slots) and [`STATE_STEP`] (the step
    /// number `t`, one float; fails past 2^24 steps, where f32 stops being exact).
    pub fn state(&self, ctx: &Context) -> Result<Vec<(String, Vec<f32>)>> {
        let t = self.step();
        if t >= 1 << 24 {
            return Err(Error::param(
                "optimizer state",
                format!("step {t} is not exact as f32"),
            ));
        }
        let mut out = Vec::new();
        for (p, bufs) in self.params.iter().zip(&self.state) {
            for (s, b) in self.optimizer.state_suffixes().iter().zip(bufs) {
                out.push((format!("{}.{s}", p.name), read_f32(ctx, b, p.len)?));
            }
        }
        out.push((STATE_SCALER.to_string(), self.scaler.read(ctx)?));
        out.push((STATE_STEP.to_string(), vec![t as f32]));
        Ok(out)
    }

    /// Restores a state written by [`state`](Self::state): every entry must be present once with
    /// its length, and no other. State buffers, the scaler and the step number are overwritten
    /// (queued); the learning rate is set by the next [`set_step`](Self::set_step).
    pub fn load_state(&self, ctx: &Context, state: &[(String, Vec<f32>)]) -> Result<()> {
        let op = "optimizer state";
        let layout = self.layout();
        let mut found: std::collections::HashMap<&str, &[f32]> = Default::default();
        for (name, data) in state {
            if !layout.iter().any(|(n, _)| n == name) {
                return Err(Error::param(
                    op,
                    format!("unexpected entry '{name}' (another optimizer or model?)"),
                ));
            }
            if found.insert(name.as_str(), data.as_slice()).is_some() {
                return Err(Error::param(op, format!("entry '{name}' given twice")));
            }
        }
        for (name, len) in &layout {
            let data = found
                .get(name.as_str())
                .ok_or_else(|| Error::param(op, format!("missing entry '{name}'")))?;
            if data.len() != *len {
                return Err(Error::shape(
                    op,
                    format!("'{name}' has {} values, {len} expected", data.len()),
                ));
            }
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(Error::Data {
                    what: name.clone(),
                    detail: format!("element {i} is {}: not finite", data[i]),
                });
            }
        }
        let t = found[STATE_STEP][0];
        if !(t >= 0.0 && t.fract() == 0.0) {
            return Err(Error::Data {
                what: STATE_STEP.into(),
                detail: format!("{t} is not a step number"),
            });
        }
        self.scaler.write(ctx, found[STATE_SCALER])?;
        for (p, bufs) in self.params.iter().zip(&self.state) {
            for (s, b) in self.optimizer.state_suffixes().iter().zip(bufs) {
                let data = found[format!("{}.{s}", p.name).as_str()];
                ctx.queue.write_buffer(b, 0, bytemuck::cast_slice(data));
            }
        }
        let t = t as u64;
        self.t.store(t, Ordering::Relaxed);
        if t >= 1 {
            self.set_step(ctx, self.lr(), t)?;
        }
        Ok(())
    }
}
