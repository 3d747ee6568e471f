//! `shaders/norm_grad.wgsl`: training-time normalisation for the trainer.
//!
//! - [`BatchNorm`]: batch norm whose γ, β and running statistics live in f32 GPU buffers (they change
//!   every optimiser step), in training mode (batch statistics, running-stat updates with PyTorch
//!   semantics) or evaluation mode (running statistics), with its backward. Statistics per channel
//!   over N·H·W ([`BnLayout::Channels`], `BatchNorm2d`) or per feature over N
//!   ([`BnLayout::Features`], `BatchNorm1d` on a vector batch `[N, 1, 1, F]`).
//! - [`NormGrad`]: the backward (and a forward reading γ/β from GPU buffers) of the inference
//!   [`Norm`](super::norm::Norm) family: instance norm / AdaIN ([`Stats::Instance`]) and conditional
//!   batch norm ([`Stats::Running`] with [`Affine::Style`]).
//!
//! Both fuse an activation whose derivative the output determines (none, ReLU, ReLU6, leaky ReLU
//! with a positive slope, sigmoid, tanh): backward kernels read `act'` from the stored output `y`,
//! `dz = dy·act'(y)`. PReLU is rejected (its slope is a parameter: apply it as its own layer).
//!
//! Reductions (batch statistics, dγ, dβ) are two-pass and deterministic, like conv_grad's dW: pass 1
//! writes per-chunk f32 partials into a scratch buffer, pass 2 combines them in chunk order. Results
//! are bit-identical run to run. Backward kernels overwrite their outputs, never accumulate.
//! Scratch buffers are allocated when binding (sized by the shapes), never per step; each bound
//! dispatch list owns its own.

use super::conv_grad::f32_storage;
use super::norm::{Affine, NormSpec, Stats};
use super::{expect_shape, half_bytes, positive, Activation};
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

/// Target quads per chunk of a channel in the batch-statistics passes (4 per lane of a workgroup).
const CHUNK_QUADS: usize = 4 * WORKGROUP as usize;
/// Most chunks a channel is split into: bounds the partials at `64 · C · 3` floats.
const MAX_CHUNKS: usize = 64;
/// Floats per batch-norm partials record: (mean, M2, count) forward, (Σdz, Σdz·x̂) backward.
const BN_REC: usize = 3;
/// Floats per row record of the norm backward: (Σdz, Σdz·x̂).
const NG_REC: usize = 2;

/// Binding indices in `shaders/norm_grad.wgsl`.
const B_X: u32 = 0;
const B_Y: u32 = 1;
const B_DY: u32 = 2;
const B_OUT: u32 = 3;
const B_FA: u32 = 4;
const B_FB: u32 = 5;
const B_FC: u32 = 6;
const B_FD: u32 = 7;
const B_PARAMS: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    plane: u32,
    qpr: u32,
    chunks: u32,
    chunk_quads: u32,
    features: u32,
    act: u32,
    rec: u32,
    affine: u32,
    s_stride: u32,
    g_off: u32,
    b_off: u32,
    train: u32,
    _p0: u32,
    _p1: u32,
    slope: f32,
    eps: f32,
    momentum: f32,
    g_bias: f32,
}

/// Shader code and slope of an activation whose derivative is recoverable from its output.
fn grad_activation(op: &str, act: &Activation) -> Result<(u32, f32)> {
    match act {
        Activation::None
        | Activation::Relu
        | Activation::Relu6
        | Activation::Sigmoid
        | Activation::Tanh => {
            let (code, slope, _) = act.code();
            Ok((code, slope))
        }
        Activation::Leaky(s) if s.is_finite() && *s > 0.0 => Ok((act.code().0, *s)),
        Activation::Leaky(s) => Err(Error::param(
            op,
            format!(
                "leaky ReLU slope {s}: the backward reads the derivative from the output's sign, \
                 which needs a finite slope > 0 (use Relu for 0)"
            ),
        )),
        Activation::PRelu(_) => Err(Error::param(
            op,
            "PReLU has learnable slopes: apply it as its own layer, not fused into the norm",
        )),
    }
}

/// Checks that `buf` is a storage buffer of at least `len` floats.
fn check_f32(op: &str, what: &str, buf: &wgpu::Buffer, len: usize) -> Result<()> {
    let need = (len * 4) as u64;
    if buf.size() < need || !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::param(
            op,
            format!(
                "{what} buffer of {} bytes ({:?}): needs STORAGE and {need} bytes ({len} floats)",
                buf.size(),
                buf.usage()
            ),
        ));
    }
    Ok(())
}

/// Checks eps (finite, ≥ 0).
fn check_eps(op: &str, eps: f32) -> Result<()> {
    if !eps.is_finite() || eps < 0.0 {
        return Err(Error::param(
            op,
            format!("eps {eps} must be finite and ≥ 0"),
        ));
    }
    Ok(())
}

/// How a [`BatchNorm`] groups its statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnLayout {
    /// `BatchNorm2d`: an NCHW tensor, statistics per channel over N·H·W.
    Channels,
    /// `BatchNorm1d`: a vector batch `[N, 1, 1, F]`, statistics per feature over N.
    Features,
}

/// Which statistics a [`BatchNorm`] normalises with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    /// Batch statistics (biased variance), running statistics updated in place.
    Train,
    /// Running statistics, left unchanged.
    Eval,
}

/// The f32 GPU buffers of one batch-norm layer, `C` floats each unless stated (PyTorch layout).
#[derive(Clone, Copy, Debug)]
pub struct BnBuffers<'a> {
    /// γ (`weight`).
    pub gamma: &'a wgpu::Buffer,
    /// β (`bias`).
    pub beta: &'a wgpu::Buffer,
    /// Running mean, updated in place by a training forward.
    pub running_mean: &'a wgpu::Buffer,
    /// Running variance (unbiased), updated in place by a training forward.
    pub running_var: &'a wgpu::Buffer,
    /// `2·C` floats written by the forward and read by the backward: `[mean(C) | invstd(C)]`, the
    /// statistics the forward normalised with (batch or running), `invstd = 1/√(var + eps)`.
    pub saved: &'a wgpu::Buffer,
}

/// Owned f32 buffers for one batch-norm layer (what [`BnBuffers`] borrows), for tests and for
/// layers that keep their state outside a trainer's arena.
pub struct BnState {
    /// γ, `C` floats.
    pub gamma: wgpu::Buffer,
    /// β, `C` floats.
    pub beta: wgpu::Buffer,
    /// Running mean, `C` floats.
    pub running_mean: wgpu::Buffer,
    /// Running variance, `C` floats.
    pub running_var: wgpu::Buffer,
    /// Saved statistics, `2·C` floats.
    pub saved: wgpu::Buffer,
}

impl BnState {
    /// PyTorch's initial state for `channels`: γ = 1, β = 0, running mean 0, running variance 1.
    pub fn new(ctx: &Context, channels: usize) -> Result<Self> {
        let c = channels;
        Self::from_host(
            ctx,
            &vec![1.0; c],
            &vec![0.0; c],
            &vec![0.0; c],
            &vec![1.0; c],
        )
    }

    /// State from host values (a weights file): all four of one length `C`, finite, variance ≥ 0.
    pub fn from_host(
        ctx: &Context,
        gamma: &[f32],
        beta: &[f32],
        running_mean: &[f32],
        running_var: &[f32],
    ) -> Result<Self> {
        let c = gamma.len();
        positive("batch norm state", "channels", c)?;
        if [beta.len(), running_mean.len(), running_var.len()]
            .iter()
            .any(|&l| l != c)
        {
            return Err(Error::param(
                "batch norm state",
                format!(
                    "gamma {c}, beta {}, running mean {}, running var {} must have one length",
                    beta.len(),
                    running_mean.len(),
                    running_var.len()
                ),
            ));
        }
        let all = [gamma, beta, running_mean, running_var];
        if let Some(v) = all.iter().flat_map(|s| s.iter()).find(|v| !v.is_finite()) {
            return Err(Error::param(
                "batch norm state",
                format!("non-finite value {v}"),
            ));
        }
        if let Some(v) = running_var.iter().find(|v| **v < 0.0) {
            return Err(Error::param(
                "batch norm state",
                format!("running variance {v} is negative"),
            ));
        }
        let buf = |label: &str, data: &[f32]| -> Result<wgpu::Buffer> {
            let b = f32_storage(ctx, label, data.len())?;
            ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(data));
            Ok(b)
        };
        Ok(BnState {
            gamma: buf("bn gamma", gamma)?,
            beta: buf("bn beta", beta)?,
            running_mean: buf("bn running mean", running_mean)?,
            running_var: buf("bn running var", running_var)?,
            saved: f32_storage(ctx, "bn saved", 2 * c)?,
        })
    }

    /// The borrowed view a [`BatchNorm`] binds.
    pub fn buffers(&self) -> BnBuffers<'_> {
        BnBuffers {
            gamma: &self.gamma,
            beta: &self.beta,
            running_mean: &self.running_mean,
            running_var: &self.running_var,
            saved: &self.saved,
        }
    }
}

/// Extents a batch-norm kernel walks.
struct BnGeometry {
    shape: Shape,
    /// Values per channel (N·H·W, or N for features).
    count: usize,
    /// Quads per row.
    qpr: usize,
    /// Rows of the tensor (N·C, or N).
    rows: usize,
    /// Chunks per channel and quads per chunk of the two-pass reductions.
    chunks: usize,
    chunk_quads: usize,
}

/// A batch-norm layer for training: `y = act(γ·(x − μ)·invstd + β)`.
///
/// The layer holds only its configuration; γ, β, the running statistics and the saved statistics
/// are f32 buffers passed as [`BnBuffers`] when binding, so an optimiser can update them in place.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    channels: usize,
    eps: f32,
    momentum: f32,
    act: (u32, f32),
    layout: BnLayout,
}

impl BatchNorm {
    /// A batch norm over `channels` channels (or features), `eps` added to the variance,
    /// PyTorch's `momentum` for the running statistics (`running = (1 − m)·running + m·batch`), and
    /// a fused activation whose derivative the output determines (none, ReLU, ReLU6, leaky ReLU
    /// with slope > 0, sigmoid, tanh). Compiles its pipelines.
    pub fn new(
        ctx: &Context,
        channels: usize,
        eps: f32,
        momentum: f32,
        act: Activation,
        layout: BnLayout,
    ) -> Result<Self> {
        let op = "batch norm";
        positive(op, "channels", channels)?;
        check_eps(op, eps)?;
        if !(0.0..=1.0).contains(&momentum) {
            return Err(Error::param(
                op,
                format!("momentum {momentum} must be in [0, 1]"),
            ));
        }
        let act = grad_activation(op, &act)?;
        let stats = match layout {
            BnLayout::Channels => "bn_stats",
            BnLayout::Features => "bn_stats_features",
        };
        let grad_stats = match layout {
            BnLayout::Channels => "bn_grad_stats",
            BnLayout::Features => "bn_grad_stats_features",
        };
        for entry in [
            stats,
            "bn_finalize",
            "bn_eval_stats",
            "bn_normalize",
            grad_stats,
            "bn_grad_finalize",
            "bn_grad_input",
        ] {
            ctx.pipeline("norm_grad", entry, &[])?;
        }
        Ok(BatchNorm {
            channels,
            eps,
            momentum,
            act,
            layout,
        })
    }

    /// Channels (or features).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The layout.
    pub fn layout(&self) -> BnLayout {
        self.layout
    }

    /// Floats the [`BnBuffers::saved`] buffer needs: `2·C`.
    pub fn saved_len(&self) -> usize {
        2 * self.channels
    }

    fn geometry(&self, op: &str, x: &Tensor) -> Result<BnGeometry> {
        let s = x.shape();
        let qpr = s.row_stride() / 4;
        match self.layout {
            BnLayout::Channels => {
                if s.c != self.channels {
                    return Err(Error::shape(
                        op,
                        format!(
                            "input {:?} has {} channels, the layer {}",
                            s.dims(),
                            s.c,
                            self.channels
                        ),
                    ));
                }
                let total = s.n * qpr;
                let chunks = total.div_ceil(CHUNK_QUADS).clamp(1, MAX_CHUNKS);
                let chunk_quads = total.div_ceil(chunks);
                Ok(BnGeometry {
                    shape: s,
                    count: s.n * s.plane(),
                    qpr,
                    rows: s.rows(),
                    chunks: total.div_ceil(chunk_quads),
                    chunk_quads,
                })
            }
            BnLayout::Features => {
                if s.c != 1 || s.h != 1 || s.w != self.channels {
                    return Err(Error::shape(
                        op,
                        format!(
                            "input {:?}: a features batch norm takes a vector batch [N, 1, 1, {}]",
                            s.dims(),
                            self.channels
                        ),
                    ));
                }
                Ok(BnGeometry {
                    shape: s,
                    count: s.n,
                    qpr,
                    rows: s.n,
                    chunks: 1,
                    chunk_quads: 0,
                })
            }
        }
    }

    fn params(&self, g: &BnGeometry, train: bool) -> Params {
        Params {
            n: g.shape.n as u32,
            c: self.channels as u32,
            plane: g.shape.plane() as u32,
            qpr: g.qpr as u32,
            chunks: g.chunks as u32,
            chunk_quads: g.chunk_quads as u32,
            features: (self.layout == BnLayout::Features) as u32,
            act: self.act.0,
            rec: BN_REC as u32,
            affine: 0,
            s_stride: 0,
            g_off: 0,
            b_off: 0,
            train: train as u32,
            _p0: 0,
            _p1: 0,
            slope: self.act.1,
            eps: self.eps,
            momentum: self.momentum,
            g_bias: 0.0,
        }
    }

    fn check_buffers(&self, op: &str, p: &BnBuffers<'_>) -> Result<()> {
        let c = self.channels;
        check_f32(op, "gamma", p.gamma, c)?;
        check_f32(op, "beta", p.beta, c)?;
        check_f32(op, "running mean", p.running_mean, c)?;
        check_f32(op, "running var", p.running_var, c)?;
        check_f32(op, "saved statistics", p.saved, 2 * c)
    }

    fn train_check(&self, op: &str, g: &BnGeometry) -> Result<()> {
        if g.count < 2 {
            return Err(Error::shape(
                op,
                format!(
                    "training mode needs more than one value per channel, input {:?} has {} \
                     (PyTorch raises too): use BnMode::Eval or a larger batch",
                    g.shape.dims(),
                    g.count
                ),
            ));
        }
        Ok(())
    }

    fn label(&self, what: &str, s: Shape) -> String {
        format!("{what} c{} {}x{}x{}", self.channels, s.n, s.h, s.w)
    }

    /// Binds the forward `y = act(γ·(x − μ)·invstd + β)` of `x` (`[N, C, H, W]`, or `[N, 1, 1, F]`
    /// for [`BnLayout::Features`]) into `y` (same shape). [`BnMode::Train`]: batch mean and biased
    /// variance (two-pass, deterministic), saved into `p.saved`, and the running statistics updated
    /// in place (`running_var` with the unbiased variance `n/(n − 1)·var`); needs more than one
    /// value per channel. [`BnMode::Eval`]: the running statistics, copied into `p.saved` as
    /// mean/invstd so the backward is the same. Record the dispatches in order.
    pub fn bind_forward(
        &self,
        ctx: &Context,
        mode: BnMode,
        x: &Tensor,
        p: &BnBuffers<'_>,
        y: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let op = "batch norm forward";
        let g = self.geometry(op, x)?;
        expect_shape(op, "output", y, g.shape)?;
        self.check_buffers(op, p)?;
        let c = self.channels;
        let train = mode == BnMode::Train;
        let params = self.params(&g, train);
        let mut out = Vec::with_capacity(3);
        let bx = Binding::from(x);
        let (saved, gamma, beta) = (
            Binding::from(p.saved),
            Binding::from(p.gamma),
            Binding::from(p.beta),
        );
        let (rmean, rvar) = (Binding::from(p.running_mean), Binding::from(p.running_var));
        if train {
            self.train_check(op, &g)?;
            let partials = f32_storage(ctx, "batch norm partials", g.chunks * c * BN_REC)?;
            let bpart = Binding::from(&partials);
            let stats = DispatchStats {
                flops: 5 * g.shape.numel() as u64,
                bytes: 2 * half_bytes(g.shape) + (g.chunks * c * BN_REC * 4) as u64,
            };
            out.push(match self.layout {
                BnLayout::Channels => ctx.dispatch_at(
                    self.label("bn stats", g.shape),
                    ctx.pipeline("norm_grad", "bn_stats", &[])?,
                    &[(B_X, &bx), (B_FD, &bpart)],
                    (B_PARAMS, &params),
                    grid((g.chunks * c) as u64 * WORKGROUP as u64, WORKGROUP),
                    stats,
                ),
                BnLayout::Features => ctx.dispatch_at(
                    self.label("bn stats", g.shape),
                    ctx.pipeline("norm_grad", "bn_stats_features", &[])?,
                    &[(B_X, &bx), (B_FD, &bpart)],
                    (B_PARAMS, &params),
                    grid(g.qpr as u64, WORKGROUP),
                    stats,
                ),
            });
            out.push(ctx.dispatch_at(
                self.label("bn finalize", g.shape),
                ctx.pipeline("norm_grad", "bn_finalize", &[])?,
                &[
                    (B_FA, &saved),
                    (B_FB, &rmean),
                    (B_FC, &rvar),
                    (B_FD, &bpart),
                ],
                (B_PARAMS, &params),
                grid(c as u64, WORKGROUP),
                DispatchStats {
                    flops: (g.chunks * c * 10 + c * 8) as u64,
                    bytes: ((g.chunks * BN_REC + 6) * c * 4) as u64,
                },
            ));
        } else {
            out.push(ctx.dispatch_at(
                self.label("bn eval stats", g.shape),
                ctx.pipeline("norm_grad", "bn_eval_stats", &[])?,
                &[(B_FA, &saved), (B_FB, &rmean), (B_FC, &rvar)],
                (B_PARAMS, &params),
                grid(c as u64, WORKGROUP),
                DispatchStats {
                    flops: 2 * c as u64,
                    bytes: (4 * c * 4) as u64,
                },
            ));
        }
        out.push(ctx.dispatch_at(
            self.label("bn normalize", g.shape),
            ctx.pipeline("norm_grad", "bn_normalize", &[])?,
            &[
                (B_X, &bx),
                (B_OUT, &Binding::from(y)),
                (B_FA, &saved),
                (B_FB, &gamma),
                (B_FC, &beta),
            ],
            (B_PARAMS, &params),
            grid((g.rows * g.qpr) as u64, WORKGROUP),
            DispatchStats {
                flops: 4 * g.shape.numel() as u64,
                bytes: 2 * half_bytes(g.shape) + (4 * c * 4) as u64,
            },
        ));
        Ok(out)
    }

    /// Binds the backward: `dz = dy·act'(y)`, `dγ = Σ dz·x̂` into `dgamma`, `dβ = Σ dz` into
    /// `dbeta` (`C` floats each, deterministic two-pass sums, overwritten), and `dx` (overwritten):
    /// `γ·invstd·(dz − mean(dz) − x̂·mean(dz·x̂))` in [`BnMode::Train`], `γ·invstd·dz` in
    /// [`BnMode::Eval`], with `x̂ = (x − mean)·invstd` from `p.saved` as the forward of the same mode
    /// left it. `y` is that forward's output, `x` its input; all tensors share one shape.
    #[allow(clippy::too_many_arguments)]
    pub fn bind_backward(
        &self,
        ctx: &Context,
        mode: BnMode,
        y: &Tensor,
        dy: &Tensor,
        x: &Tensor,
        p: &BnBuffers<'_>,
        dx: &Tensor,
        dgamma: &wgpu::Buffer,
        dbeta: &wgpu::Buffer,
    ) -> Result<Vec<Dispatch>> {
        let op = "batch norm backward";
        let g = self.geometry(op, x)?;
        expect_shape(op, "y", y, g.shape)?;
        expect_shape(op, "dy", dy, g.shape)?;
        expect_shape(op, "dx", dx, g.shape)?;
        self.check_buffers(op, p)?;
        let c = self.channels;
        check_f32(op, "dgamma", dgamma, c)?;
        check_f32(op, "dbeta", dbeta, c)?;
        let train = mode == BnMode::Train;
        if train {
            self.train_check(op, &g)?;
        }
        let params = self.params(&g, train);
        let partials = f32_storage(ctx, "batch norm grad partials", g.chunks * c * BN_REC)?;
        let (bx, by, bdy) = (Binding::from(x), Binding::from(y), Binding::from(dy));
        let (saved, bpart) = (Binding::from(p.saved), Binding::from(&partials));
        let (bdg, bdb) = (Binding::from(dgamma), Binding::from(dbeta));
        let stats1 = DispatchStats {
            flops: 8 * g.shape.numel() as u64,
            bytes: 3 * half_bytes(g.shape) + (g.chunks * c * BN_REC * 4) as u64,
        };
        let pass1 = match self.layout {
            BnLayout::Channels => ctx.dispatch_at(
                self.label("bn grad stats", g.shape),
                ctx.pipeline("norm_grad", "bn_grad_stats", &[])?,
                &[
                    (B_X, &bx),
                    (B_Y, &by),
                    (B_DY, &bdy),
                    (B_FA, &saved),
                    (B_FD, &bpart),
                ],
                (B_PARAMS, &params),
                grid((g.chunks * c) as u64 * WORKGROUP as u64, WORKGROUP),
                stats1,
            ),
            BnLayout::Features => ctx.dispatch_at(
                self.label("bn grad stats", g.shape),
                ctx.pipeline("norm_grad", "bn_grad_stats_features", &[])?,
                &[
                    (B_X, &bx),
                    (B_Y, &by),
                    (B_DY, &bdy),
                    (B_FA, &saved),
                    (B_FD, &bpart),
                ],
                (B_PARAMS, &params),
                grid(g.qpr as u64, WORKGROUP),
                stats1,
            ),
        };
        let pass2 = ctx.dispatch_at(
            self.label("bn grad finalize", g.shape),
            ctx.pipeline("norm_grad", "bn_grad_finalize", &[])?,
            &[(B_FB, &bdg), (B_FC, &bdb), (B_FD, &bpart)],
            (B_PARAMS, &params),
            grid(c as u64, WORKGROUP),
            DispatchStats {
                flops: (2 * g.chunks * c) as u64,
                bytes: ((g.chunks * 2 + 2) * c * 4) as u64,
            },
        );
        let pass3 = ctx.dispatch_at(
            self.label("bn grad input", g.shape),
            ctx.pipeline("norm_grad", "bn_grad_input", &[])?,
            &[
                (B_X, &bx),
                (B_Y, &by),
                (B_DY, &bdy),
                (B_OUT, &Binding::from(dx)),
                (B_FA, &saved),
                (B_FB, &bdg),
                (B_FC, &bdb),
                (B_FD, &Binding::from(p.gamma)),
            ],
            (B_PARAMS, &params),
            grid((g.rows * g.qpr) as u64, WORKGROUP),
            DispatchStats {
                flops: if train { 9 } else { 3 } * g.shape.numel() as u64,
                bytes: (if train { 4 } else { 3 }) * half_bytes(g.shape) + (5 * c * 4) as u64,
            },
        );
        Ok(vec![pass1, pass2, pass3])
    }
}

/// Where [`NormGrad::bind_backward`] writes the gradients of γ and β.
#[derive(Clone, Copy, Debug)]
pub enum NormParamGrads<'a> {
    /// No parameter gradients (affine none, or parameters frozen): only dx.
    None,
    /// [`Affine::Static`]: `C` f32 values each, summed over the batch in a fixed order (overwritten).
    Static {
        /// dγ per channel.
        dgamma: &'a wgpu::Buffer,
        /// dβ per channel.
        dbeta: &'a wgpu::Buffer,
    },
    /// [`Affine::Style`]: an fp16 tensor shaped like the style tensor `[N, 1, 1, F]`; features
    /// `gamma_offset..gamma_offset + C` receive dγ and `beta_offset..beta_offset + C` receive dβ per
    /// sample (their sum where the ranges overlap). Other features are left untouched: the caller
    /// zero-fills them (or has another kernel write them) first.
    Style(&'a Tensor),
}

/// The trainer's side of the [`Norm`](super::norm::Norm) family: backward (and forward) of
/// instance norm / AdaIN ([`Stats::Instance`]) and of batch norm with running statistics, the
/// conditional batch norm of [`Affine::Style`] included ([`Stats::Running`]).
///
/// Instance statistics are recomputed from `x` by the backward, exactly as the forward computes
/// them; running statistics are constants of the layer. γ/β come from the layer's f32 buffers
/// ([`Affine::Static`], see [`NormGrad::with_affine_buffers`] for a trainer's arena) or per sample
/// from the style tensor ([`Affine::Style`]).
pub struct NormGrad {
    spec: NormSpec,
    act: (u32, f32),
    gamma: wgpu::Buffer,
    beta: wgpu::Buffer,
    running: wgpu::Buffer,
}

impl NormGrad {
    /// Kernels for `spec`, uploading its static γ/β (ones and zeros for [`Affine::None`] and
    /// [`Affine::Style`]) and running statistics into f32 buffers. The activation must have a
    /// derivative the output determines (as for [`BatchNorm::new`]).
    pub fn new(ctx: &Context, spec: NormSpec) -> Result<Self> {
        let c = spec.channels;
        let (gamma, beta) = match &spec.affine {
            Affine::Static { gamma, beta } => {
                Self::check_len("gamma", gamma, c)?;
                Self::check_len("beta", beta, c)?;
                (gamma.clone(), beta.clone())
            }
            _ => (vec![1.0; c], vec![0.0; c]),
        };
        let g = Self::upload(ctx, "norm_grad gamma", &gamma)?;
        let b = Self::upload(ctx, "norm_grad beta", &beta)?;
        Self::build(ctx, spec, g, b)
    }

    /// Kernels for `spec` with [`Affine::Static`] γ and β read from caller-owned f32 storage buffers
    /// of at least `C` floats (a trainer's parameter arena, updated in place by a GPU optimiser);
    /// the spec's host γ/β vectors are ignored (they may be empty).
    pub fn with_affine_buffers(
        ctx: &Context,
        spec: NormSpec,
        gamma: wgpu::Buffer,
        beta: wgpu::Buffer,
    ) -> Result<Self> {
        if !matches!(spec.affine, Affine::Static { .. }) {
            return Err(Error::param(
                "norm_grad",
                "γ/β buffers are for Affine::Static; the spec has another affine",
            ));
        }
        Self::build(ctx, spec, gamma, beta)
    }

    fn check_len(name: &str, v: &[f32], c: usize) -> Result<()> {
        if v.len() != c {
            return Err(Error::param(
                "norm_grad",
                format!("{name} has {} values for {c} channels", v.len()),
            ));
        }
        if let Some(bad) = v.iter().find(|v| !v.is_finite()) {
            return Err(Error::param(
                "norm_grad",
                format!("{name} holds a non-finite value {bad}"),
            ));
        }
        Ok(())
    }

    fn upload(ctx: &Context, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        let b = f32_storage(ctx, label, data.len())?;
        ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(data));
        Ok(b)
    }

    fn build(
        ctx: &Context,
        spec: NormSpec,
        gamma: wgpu::Buffer,
        beta: wgpu::Buffer,
    ) -> Result<Self> {
        let op = "norm_grad";
        let c = spec.channels;
        positive(op, "channels", c)?;
        check_eps(op, spec.eps)?;
        let act = grad_activation(op, &spec.act)?;
        check_f32(op, "gamma", &gamma, c)?;
        check_f32(op, "beta", &beta, c)?;
        let running = match &spec.stats {
            Stats::Running { mean, var } => {
                Self::check_len("running mean", mean, c)?;
                Self::check_len("running var", var, c)?;
                if let Some(v) = var.iter().find(|v| **v < 0.0) {
                    return Err(Error::param(
                        op,
                        format!("running variance {v} is negative"),
                    ));
                }
                let mut both = mean.clone();
                both.extend_from_slice(var);
                Self::upload(ctx, "norm_grad running", &both)?
            }
            Stats::Instance => f32_storage(ctx, "norm_grad running", 2 * c)?,
        };
        for entry in [
            "ng_gather",
            "ng_forward",
            "ng_backward",
            "ng_scatter",
            "bn_grad_finalize",
        ] {
            ctx.pipeline("norm_grad", entry, &[])?;
        }
        Ok(NormGrad {
            spec,
            act,
            gamma,
            beta,
            running,
        })
    }

    /// The configuration.
    pub fn spec(&self) -> &NormSpec {
        &self.spec
    }

    /// The f32 γ buffer ([`Affine::Static`]; ones otherwise).
    pub fn gamma(&self) -> &wgpu::Buffer {
        &self.gamma
    }

    /// The f32 β buffer ([`Affine::Static`]; zeros otherwise).
    pub fn beta(&self) -> &wgpu::Buffer {
        &self.beta
    }

    fn params(&self, x: Shape, style: Option<Shape>) -> Params {
        let (affine, g_off, b_off, g_bias) = match &self.spec.affine {
            Affine::None => (0, 0, 0, 0.0),
            Affine::Static { .. } => (1, 0, 0, 0.0),
            Affine::Style {
                gamma_offset,
                beta_offset,
                gamma_bias,
            } => (2, *gamma_offset, *beta_offset, *gamma_bias),
        };
        Params {
            n: x.n as u32,
            c: x.c as u32,
            plane: x.plane() as u32,
            qpr: (x.row_stride() / 4) as u32,
            chunks: x.n as u32,
            chunk_quads: 0,
            features: 0,
            act: self.act.0,
            rec: NG_REC as u32,
            affine,
            s_stride: style.map_or(0, |s| s.row_stride()) as u32,
            g_off: g_off as u32,
            b_off: b_off as u32,
            train: (self.spec.stats == Stats::Instance) as u32,
            _p0: 0,
            _p1: 0,
            slope: self.act.1,
            eps: self.spec.eps,
            momentum: 0.0,
            g_bias,
        }
    }

    fn check_input(&self, op: &str, x: &Tensor) -> Result<Shape> {
        let xs = x.shape();
        if xs.c != self.spec.channels {
            return Err(Error::shape(
                op,
                format!(
                    "input {:?} has {} channels, the layer {}",
                    xs.dims(),
                    xs.c,
                    self.spec.channels
                ),
            ));
        }
        Ok(xs)
    }

    /// The style tensor's shape, checked against `x` (for [`Affine::Style`]), or `None`.
    fn check_style(&self, op: &str, xs: Shape, style: Option<&Tensor>) -> Result<Option<Shape>> {
        let Affine::Style {
            gamma_offset,
            beta_offset,
            ..
        } = &self.spec.affine
        else {
            return Ok(None);
        };
        let s = style
            .ok_or_else(|| Error::param(op, "a style tensor is required for a style affine"))?;
        let ss = s.shape();
        let need = gamma_offset.max(beta_offset) + xs.c;
        if ss.c != 1 || ss.h != 1 || ss.w < need || ss.n != xs.n {
            return Err(Error::shape(
                op,
                format!(
                    "style must be [{}, 1, 1, ≥{need}], found {:?}",
                    xs.n,
                    ss.dims()
                ),
            ));
        }
        Ok(Some(ss))
    }

    /// The per-row γ/β of a style affine: two scratch buffers of N·C floats and the dispatch that
    /// fills them from the style tensor.
    fn gather(
        &self,
        ctx: &Context,
        style: &Tensor,
        params: &Params,
    ) -> Result<(Dispatch, wgpu::Buffer, wgpu::Buffer)> {
        let rows = (params.n * params.c) as usize;
        let g = f32_storage(ctx, "norm_grad style gamma", rows)?;
        let b = f32_storage(ctx, "norm_grad style beta", rows)?;
        let d = ctx.dispatch_at(
            format!("norm style gather c{}", params.c),
            ctx.pipeline("norm_grad", "ng_gather", &[])?,
            &[
                (B_X, &Binding::from(style)),
                (B_FA, &Binding::from(&g)),
                (B_FC, &Binding::from(&b)),
            ],
            (B_PARAMS, params),
            grid(rows as u64, WORKGROUP),
            DispatchStats {
                flops: rows as u64,
                bytes: (rows * (2 * 2 + 2 * 4)) as u64,
            },
        );
        Ok((d, g, b))
    }

    fn label(&self, what: &str, s: Shape) -> String {
        let stats = match self.spec.stats {
            Stats::Instance => "instance",
            Stats::Running { .. } => "running",
        };
        format!("{what} {stats} c{} {}x{}x{}", s.c, s.n, s.h, s.w)
    }

    /// Binds the forward `y = act(γ·(x − μ)·invstd + β)` of `x` `[N, C, H, W]` into `y`, the same
    /// function as [`Norm`](super::norm::Norm) but with γ/β read from this layer's f32 buffers (or
    /// the style tensor for [`Affine::Style`]). One workgroup per (sample, channel) row.
    pub fn bind_forward(
        &self,
        ctx: &Context,
        x: &Tensor,
        style: Option<&Tensor>,
        y: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let op = "norm forward";
        let xs = self.check_input(op, x)?;
        expect_shape(op, "output", y, xs)?;
        let ss = self.check_style(op, xs, style)?;
        let params = self.params(xs, ss);
        let mut out = Vec::with_capacity(2);
        let scratch;
        let (gamma, beta) = match (ss, style) {
            (Some(_), Some(s)) => {
                let (d, g, b) = self.gather(ctx, s, &params)?;
                out.push(d);
                scratch = (g, b);
                (&scratch.0, &scratch.1)
            }
            _ => (&self.gamma, &self.beta),
        };
        let instance = self.spec.stats == Stats::Instance;
        out.push(ctx.dispatch_at(
            self.label("norm forward", xs),
            ctx.pipeline("norm_grad", "ng_forward", &[])?,
            &[
                (B_X, &Binding::from(x)),
                (B_OUT, &Binding::from(y)),
                (B_FA, &Binding::from(gamma)),
                (B_FB, &Binding::from(&self.running)),
                (B_FC, &Binding::from(beta)),
            ],
            (B_PARAMS, &params),
            grid(xs.rows() as u64, 1),
            DispatchStats {
                flops: xs.numel() as u64 * if instance { 8 } else { 4 },
                bytes: half_bytes(xs) * if instance { 4 } else { 2 },
            },
        ));
        Ok(out)
    }

    /// Binds the backward for forward input `x`, style (for [`Affine::Style`]), output `y` and its
    /// gradient `dy`: `dz = dy·act'(y)`, `dx` (overwritten) `= γ·invstd·(dz − mean(dz) −
    /// x̂·mean(dz·x̂))` with the row's own statistics for [`Stats::Instance`] (means over the row's
    /// H·W), `γ·invstd·dz` for [`Stats::Running`]; and per (sample, channel) `dγ = Σ dz·x̂`,
    /// `dβ = Σ dz` written as `grads` says (no gradient flows to the running statistics).
    #[allow(clippy::too_many_arguments)]
    pub fn bind_backward(
        &self,
        ctx: &Context,
        y: &Tensor,
        dy: &Tensor,
        x: &Tensor,
        style: Option<&Tensor>,
        dx: &Tensor,
        grads: NormParamGrads<'_>,
    ) -> Result<Vec<Dispatch>> {
        let op = "norm backward";
        let xs = self.check_input(op, x)?;
        expect_shape(op, "y", y, xs)?;
        expect_shape(op, "dy", dy, xs)?;
        expect_shape(op, "dx", dx, xs)?;
        let ss = self.check_style(op, xs, style)?;
        let c = self.spec.channels;
        match (&grads, &self.spec.affine) {
            (NormParamGrads::None, _) => {}
            (NormParamGrads::Static { dgamma, dbeta }, Affine::Static { .. }) => {
                check_f32(op, "dgamma", dgamma, c)?;
                check_f32(op, "dbeta", dbeta, c)?;
            }
            (NormParamGrads::Style(t), Affine::Style { .. }) => {
                if let Some(ss) = ss {
                    expect_shape(op, "style gradient", t, ss)?;
                }
            }
            (g, a) => {
                let want = match a {
                    Affine::None => "NormParamGrads::None",
                    Affine::Static { .. } => "NormParamGrads::Static or None",
                    Affine::Style { .. } => "NormParamGrads::Style or None",
                };
                let got = match g {
                    NormParamGrads::None => "None",
                    NormParamGrads::Static { .. } => "Static",
                    NormParamGrads::Style(_) => "Style",
                };
                return Err(Error::param(
                    op,
                    format!("parameter gradients {got} for this affine: expected {want}"),
                ));
            }
        }
        let params = self.params(xs, ss);
        let rows = xs.rows();
        let mut out = Vec::with_capacity(3);
        let scratch;
        let gamma = match (ss, style) {
            (Some(_), Some(s)) => {
                let (d, g, b) = self.gather(ctx, s, &params)?;
                out.push(d);
                scratch = (g, b);
                &scratch.0
            }
            _ => &self.gamma,
        };
        let partials = f32_storage(ctx, "norm_grad partials", rows * NG_REC)?;
        let bpart = Binding::from(&partials);
        let instance = self.spec.stats == Stats::Instance;
        out.push(ctx.dispatch_at(
            self.label("norm backward", xs),
            ctx.pipeline("norm_grad", "ng_backward", &[])?,
            &[
                (B_X, &Binding::from(x)),
                (B_Y, &Binding::from(y)),
                (B_DY, &Binding::from(dy)),
                (B_OUT, &Binding::from(dx)),
                (B_FA, &Binding::from(gamma)),
                (B_FB, &Binding::from(&self.running)),
                (B_FD, &bpart),
            ],
            (B_PARAMS, &params),
            grid(rows as u64, 1),
            DispatchStats {
                flops: xs.numel() as u64 * if instance { 17 } else { 10 },
                bytes: half_bytes(xs) * if instance { 8 } else { 6 } + (rows * NG_REC * 4) as u64,
            },
        ));
        match grads {
            NormParamGrads::None => {}
            NormParamGrads::Static { dgamma, dbeta } => out.push(ctx.dispatch_at(
                self.label("norm grad finalize", xs),
                ctx.pipeline("norm_grad", "bn_grad_finalize", &[])?,
                &[
                    (B_FB, &Binding::from(dgamma)),
                    (B_FC, &Binding::from(dbeta)),
                    (B_FD, &bpart),
                ],
                (B_PARAMS, &params),
                grid(c as u64, WORKGROUP),
                DispatchStats {
                    flops: (2 * rows) as u64,
                    bytes: ((rows * NG_REC + 2 * c) * 4) as u64,
                },
            )),
            NormParamGrads::Style(t) => {
                let s = t.shape();
                out.push(ctx.dispatch_at(
                    self.label("norm style grad", xs),
                    ctx.pipeline("norm_grad", "ng_scatter", &[])?,
                    &[(B_OUT, &Binding::from(t)), (B_FD, &bpart)],
                    (B_PARAMS, &params),
                    grid((s.rows() * s.row_stride() / 4) as u64, WORKGROUP),
                    DispatchStats {
                        flops: (2 * rows) as u64,
                        bytes: (rows * NG_REC * 4) as u64
                            + 2 * half_bytes(Shape::vector(s.n, 2 * c)),
                    },
                ));
            }
        }
        Ok(out)
    }
}
