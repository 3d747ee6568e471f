//! The fused epilogue every convolution and linear layer applies on store:
//! `y = act(acc · scale[c] + shift[c] (+ r)) (+ r)`.

use crate::error::{Error, Result};

/// Activation applied in an epilogue (codes match `shaders/common.wgsl`).
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// max(x, 0).
    Relu,
    /// min(max(x, 0), 6).
    Relu6,
    /// x for x ≥ 0, slope·x otherwise.
    Leaky(f32),
    /// PReLU: one slope shared by all channels (length 1) or one per channel.
    PRelu(Vec<f32>),
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// tanh(x).
    Tanh,
}

impl Activation {
    /// Shader code, shared slope, and whether slopes are per channel.
    pub(crate) fn code(&self) -> (u32, f32, bool) {
        match self {
            Activation::None => (0, 0.0, false),
            Activation::Relu => (1, 0.0, false),
            Activation::Leaky(s) => (2, *s, false),
            Activation::PRelu(v) if v.len() == 1 => (2, v[0], false),
            Activation::PRelu(_) => (2, 0.0, true),
            Activation::Relu6 => (3, 0.0, false),
            Activation::Sigmoid => (4, 0.0, false),
            Activation::Tanh => (5, 0.0, false),
        }
    }

    /// Applies the activation to one value (host reference for documentation and checks).
    pub fn apply(&self, x: f64, channel: usize) -> f64 {
        match self {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Leaky(s) => {
                if x >= 0.0 {
                    x
                } else {
                    x * *s as f64
                }
            }
            Activation::PRelu(v) => {
                let s = if v.len() == 1 { v[0] } else { v[channel] } as f64;
                if x >= 0.0 {
                    x
                } else {
                    x * s
                }
            }
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
        }
    }
}

/// Where a residual input joins the epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Residual {
    /// No residual.
    #[default]
    None,
    /// `y = act(...) + r` (MobileNetV2 / IR blocks).
    AfterAct,
    /// `y = act(... + r)` (classic ResNet).
    BeforeAct,
}

impl Residual {
    pub(crate) fn code(self) -> u32 {
        match self {
            Residual::None => 0,
            Residual::AfterAct => 1,
            Residual::BeforeAct => 2,
        }
    }
}

/// Per-output-channel affine and activation applied as results are stored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Epilogue {
    /// Multiplier per channel (folded batch-norm γ/σ); `None` means 1.
    pub scale: Option<Vec<f32>>,
    /// Offset per channel (bias, folded batch-norm β − μγ/σ); `None` means 0.
    pub shift: Option<Vec<f32>>,
    /// Activation.
    pub act: Activation,
}

impl Epilogue {
    /// Identity epilogue.
    pub fn none() -> Self {
        Self::default()
    }
    /// Bias only.
    pub fn bias(bias: &[f32]) -> Self {
        Epilogue {
            shift: Some(bias.to_vec()),
            ..Default::default()
        }
    }
    /// Sets the activation.
    pub fn with_act(mut self, act: Activation) -> Self {
        self.act = act;
        self
    }
    /// Folds an inference batch norm after the current affine:
    /// `bn(z) = (z − μ)·γ/√(σ²+ε) + β` with `z = acc·scale + shift`.
    pub fn then_batch_norm(
        mut self,
        gamma: &[f32],
        beta: &[f32],
        mean: &[f32],
        var: &[f32],
        eps: f32,
    ) -> Result<Self> {
        let c = gamma.len();
        if [beta.len(), mean.len(), var.len()].iter().any(|&l| l != c) {
            return Err(Error::param(
                "batch norm",
                format!(
                    "gamma {c}, beta {}, mean {}, var {} must have one length",
                    beta.len(),
                    mean.len(),
                    var.len()
                ),
            ));
        }
        let mut scale = self.scale.take().unwrap_or_else(|| vec![1.0; c]);
        let mut shift = self.shift.take().unwrap_or_else(|| vec![0.0; c]);
        if scale.len() != c || shift.len() != c {
            return Err(Error::param(
                "batch norm",
                "channel count differs from the epilogue's",
            ));
        }
        for i in 0..c {
            let k = gamma[i] as f64 / (var[i] as f64 + eps as f64).sqrt();
            scale[i] = (scale[i] as f64 * k) as f32;
            shift[i] = ((shift[i] as f64 - mean[i] as f64) * k + beta[i] as f64) as f32;
        }
        self.scale = Some(scale);
        self.shift = Some(shift);
        Ok(self)
    }

    /// The `[scale | shift | prelu]` f32 vector for `c` channels, checking lengths.
    pub(crate) fn pack(&self, op: &str, c: usize) -> Result<Vec<f32>> {
        let check = |name: &str, v: &Vec<f32>| {
            if v.len() != c {
                Err(Error::param(
                    op,
                    format!("{name} has {} values for {c} channels", v.len()),
                ))
            } else {
                Ok(())
            }
        };
        let mut out = Vec::with_capacity(3 * c);
        match &self.scale {
            Some(s) => {
                check("scale", s)?;
                out.extend_from_slice(s)
            }
            None => out.extend(std::iter::repeat_n(1.0, c)),
        }
        match &self.shift {
            Some(s) => {
                check("bias/shift", s)?;
                out.extend_from_slice(s)
            }
            None => out.extend(std::iter::repeat_n(0.0, c)),
        }
        match &self.act {
            Activation::PRelu(v) if v.len() != 1 => {
                check("prelu slopes", v)?;
                out.extend_from_slice(v)
            }
            _ => out.extend(std::iter::repeat_n(0.0, c)),
        }
        if let Some(bad) = out.iter().find(|v| !v.is_finite()) {
            return Err(Error::param(
                op,
                format!("epilogue holds a non-finite value {bad}"),
            ));
        }
        Ok(out)
    }
}
