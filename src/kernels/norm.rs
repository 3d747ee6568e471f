//! `shaders/norm.wgsl`: instance norm / AdaIN (statistics per sample and channel) and conditional
//! batch norm (running statistics, affine per sample from a style vector), with an activation.

use super::{expect_shape, f32_buffer, half_bytes, positive, Activation};
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::Tensor;

/// Where the statistics come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Stats {
    /// Per (sample, channel) mean and biased variance of the input (instance norm, AdaIN).
    Instance,
    /// Running statistics per channel (inference batch norm, conditional batch norm).
    Running {
        /// Running mean per channel.
        mean: Vec<f32>,
        /// Running variance per channel.
        var: Vec<f32>,
    },
}

/// Where γ and β come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Affine {
    /// γ = 1, β = 0.
    None,
    /// Learned per channel.
    Static {
        /// γ per channel.
        gamma: Vec<f32>,
        /// β per channel.
        beta: Vec<f32>,
    },
    /// Per sample from a style tensor `[N, 1, 1, F]`: γ = style[gamma_offset + c] + gamma_bias,
    /// β = style[beta_offset + c] (AdaIN, conditional BN).
    Style {
        /// Feature offset of γ in the style row.
        gamma_offset: usize,
        /// Feature offset of β.
        beta_offset: usize,
        /// Added to γ (1 for the `1 + γ` convention).
        gamma_bias: f32,
    },
}

/// A normalisation layer's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NormSpec {
    /// Channels.
    pub channels: usize,
    /// Statistics.
    pub stats: Stats,
    /// Affine.
    pub affine: Affine,
    /// Epsilon added to the variance.
    pub eps: f32,
    /// Activation after the affine (PReLU only with one shared slope).
    pub act: Activation,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    plane: u32,
    affine: u32,
    s_stride: u32,
    g_off: u32,
    b_off: u32,
    act: u32,
    g_bias: f32,
    eps: f32,
    slope: f32,
    _pad: u32,
}

/// A configured normalisation.
pub struct Norm {
    spec: NormSpec,
    consts: wgpu::Buffer,
}

impl Norm {
    /// Checks the spec and uploads its constants.
    pub fn new(ctx: &Context, spec: NormSpec) -> Result<Self> {
        let c = spec.channels;
        positive("norm", "channels", c)?;
        let len_ok = |name: &str, v: &[f32]| {
            if v.len() != c {
                Err(Error::param(
                    "norm",
                    format!("{name} has {} values for {c} channels", v.len()),
                ))
            } else {
                Ok(())
            }
        };
        let mut consts = vec![1.0; c];
        consts.extend(std::iter::repeat_n(0.0, c));
        if let Affine::Static { gamma, beta } = &spec.affine {
            len_ok("gamma", gamma)?;
            len_ok("beta", beta)?;
            consts[..c].copy_from_slice(gamma);
            consts[c..].copy_from_slice(beta);
        }
        match &spec.stats {
            Stats::Running { mean, var } => {
                len_ok("running mean", mean)?;
                len_ok("running var", var)?;
                if let Some(v) = var.iter().find(|v| **v < 0.0) {
                    return Err(Error::param(
                        "norm",
                        format!("running variance {v} is negative"),
                    ));
                }
                consts.extend_from_slice(mean);
                consts.extend_from_slice(var);
            }
            Stats::Instance => consts.extend(std::iter::repeat_n(0.0, 2 * c)),
        }
        if matches!(&spec.act, Activation::PRelu(v) if v.len() != 1) {
            return Err(Error::param(
                "norm",
                "per-channel PReLU is not fused into norm; use a shared slope",
            ));
        }
        if let Some(v) = consts.iter().find(|v| !v.is_finite()) {
            return Err(Error::param("norm", format!("non-finite constant {v}")));
        }
        Ok(Norm {
            consts: f32_buffer(ctx, "norm constants", &consts),
            spec,
        })
    }

    /// Binds input `x` `[N, C, H, W]`, output of the same shape, and the style tensor when the
    /// affine comes from one.
    pub fn bind(
        &self,
        ctx: &Context,
        x: &Tensor,
        style: Option<&Tensor>,
        y: &Tensor,
    ) -> Result<Dispatch> {
        let xs = x.shape();
        if xs.c != self.spec.channels {
            return Err(Error::shape(
                "norm",
                format!(
                    "input has {} channels, layer expects {}",
                    xs.c, self.spec.channels
                ),
            ));
        }
        expect_shape("norm", "output", y, xs)?;
        let (affine, s_stride, g_off, b_off, g_bias, st) = match &self.spec.affine {
            Affine::None => (0, 0, 0, 0, 0.0, Binding::from(ctx.dummy())),
            Affine::Static { .. } => (1, 0, 0, 0, 0.0, Binding::from(ctx.dummy())),
            Affine::Style {
                gamma_offset,
                beta_offset,
                gamma_bias,
            } => {
                let s = style.ok_or_else(|| {
                    Error::param("norm", "a style tensor is required for a style affine")
                })?;
                let ss = s.shape();
                let need = gamma_offset.max(beta_offset) + xs.c;
                if ss.c != 1 || ss.h != 1 || ss.w < need || (ss.n != xs.n) {
                    return Err(Error::shape(
                        "norm",
                        format!(
                            "style must be [{}, 1, 1, ≥{need}], found {:?}",
                            xs.n,
                            ss.dims()
                        ),
                    ));
                }
                (
                    2,
                    ss.row_stride(),
                    *gamma_offset,
                    *beta_offset,
                    *gamma_bias,
                    Binding::from(s),
                )
            }
        };
        let (act, slope, _) = self.spec.act.code();
        let params = Params {
            n: xs.n as u32,
            c: xs.c as u32,
            plane: xs.plane() as u32,
            affine,
            s_stride: s_stride as u32,
            g_off: g_off as u32,
            b_off: b_off as u32,
            act,
            g_bias,
            eps: self.spec.eps,
            slope,
            _pad: 0,
        };
        let instance = self.spec.stats == Stats::Instance;
        let (entry, workgroups, reads) = if instance {
            ("instance_norm", grid(xs.rows() as u64, 1), 3)
        } else {
            (
                "cond_batch_norm",
                grid((xs.rows() * xs.row_stride() / 4) as u64, WORKGROUP),
                1,
            )
        };
        let stats = DispatchStats {
            flops: xs.numel() as u64 * if instance { 7 } else { 2 },
            bytes: half_bytes(xs) * (reads + 1),
        };
        Ok(ctx.dispatch(
            format!("{entry} c{} {}x{}", xs.c, xs.h, xs.w),
            ctx.pipeline("norm", entry, &[])?,
            &[x.into(), st, (&self.consts).into(), y.into()],
            &params,
            workgroups,
            stats,
        ))
    }
}
