//! Builds a model's plan layer by layer from its weights, by official tensor names: each call
//! allocates the layer's output, binds the kernel and appends the dispatch.

use crate::error::Result;
use crate::gpu::{Context, Plan};
use crate::kernels::conv::{Conv2d, ConvSpec};
use crate::kernels::eltwise::{Eltwise, EltwiseOp};
use crate::kernels::linear::Linear;
use crate::kernels::pointwise::Pointwise;
use crate::kernels::resample::Resample;
use crate::kernels::{Activation, Epilogue};
use crate::tensor::{Shape, Tensor};
use crate::weights::{BatchNorm, Weights};

/// LeakyReLU slope of MobileFaceSwap (and its predictor).
pub const LRELU: f32 = 0.1;

/// Paddle's and PyTorch's batch-norm epsilon.
pub const BN_EPS: f32 = 1e-5;

/// Plan under construction.
pub struct Builder<'a> {
    /// The device.
    pub ctx: &'a Context,
    /// Weights read by name.
    pub w: &'a Weights,
    /// Dispatches so far.
    pub plan: Plan,
}

/// Adds a batch norm after `epi`.
pub fn with_bn(epi: Epilogue, bn: &BatchNorm) -> Result<Epilogue> {
    epi.then_batch_norm(&bn.gamma, &bn.beta, &bn.mean, &bn.var, BN_EPS)
}

impl<'a> Builder<'a> {
    /// A builder over `w`.
    pub fn new(ctx: &'a Context, w: &'a Weights) -> Self {
        Builder {
            ctx,
            w,
            plan: Plan::default(),
        }
    }

    /// Allocates an activation tensor.
    pub fn tensor(&self, shape: Shape, what: &str) -> Result<Tensor> {
        Tensor::new(self.ctx, shape, what)
    }

    /// `{prefix}.weight` (+ `{prefix}.bias` if `bias`) convolution, then an optional batch norm
    /// `bn`, then `act`.
    pub fn conv(
        &mut self,
        x: &Tensor,
        spec: ConvSpec,
        prefix: &str,
        bias: bool,
        bn: Option<&str>,
        act: Activation,
    ) -> Result<Tensor> {
        let (kh, kw) = spec.kernel;
        let wt = self.w.get(
            &format!("{prefix}.weight"),
            &[spec.cout, spec.cin / spec.groups, kh, kw],
        )?;
        let mut epi = if bias {
            Epilogue::bias(self.w.get(&format!("{prefix}.bias"), &[spec.cout])?)
        } else {
            Epilogue::none()
        };
        if let Some(bn) = bn {
            epi = with_bn(epi, &self.w.batch_norm(bn, spec.cout)?)?;
        }
        let epi = epi.with_act(act);
        let y = self.tensor(spec.output_shape(x.shape())?, prefix)?;
        if kh == 1 && kw == 1 && spec.groups == 1 && spec.stride == (1, 1) && spec.pad == (0, 0) {
            let pw = Pointwise::new(self.ctx, spec.cin, spec.cout, wt, &epi)?;
            self.plan.push(pw.bind(self.ctx, x, &y, None)?);
        } else {
            let conv = Conv2d::new(self.ctx, spec, wt, &epi)?;
            self.plan.push(conv.bind(self.ctx, x, &y, None)?);
        }
        Ok(y)
    }

    /// A convolution whose weights are a GPU tensor (predicted kernels).
    pub fn conv_dynamic(
        &mut self,
        x: &Tensor,
        spec: ConvSpec,
        weights: &Tensor,
        epi: &Epilogue,
        what: &str,
    ) -> Result<Tensor> {
        let y = self.tensor(spec.output_shape(x.shape())?, what)?;
        let conv = Conv2d::with_weights(self.ctx, spec, weights.clone(), epi)?;
        self.plan.push(conv.bind(self.ctx, x, &y, None)?);
        Ok(y)
    }

    /// A pointwise convolution with GPU weights `[1, cin, 1, cout]` (modulated kernels), written
    /// into `y` (which may be wider: the output lands in its first `cout` channels only when
    /// shapes match; concat is done by the caller).
    pub fn pointwise_dynamic(
        &mut self,
        x: &Tensor,
        weights: &Tensor,
        epi: &Epilogue,
        what: &str,
    ) -> Result<Tensor> {
        let pw = Pointwise::with_weights(self.ctx, weights.clone(), epi)?;
        let y = self.tensor(pw.output_shape(x.shape())?, what)?;
        self.plan.push(pw.bind(self.ctx, x, &y, None)?);
        Ok(y)
    }

    /// Bilinear ×2, align_corners true.
    pub fn up2(&mut self, x: &Tensor) -> Result<Tensor> {
        let s = x.shape();
        let y = self.tensor(Shape::new(s.n, s.c, 2 * s.h, 2 * s.w), "up2")?;
        self.plan.push(
            Resample::Bilinear {
                align_corners: true,
            }
            .bind(self.ctx, x, &y)?,
        );
        Ok(y)
    }

    /// A standalone inference batch norm (per-channel affine) with an activation.
    pub fn batch_norm(&mut self, x: &Tensor, prefix: &str, act: Activation) -> Result<Tensor> {
        let bn = self.w.batch_norm(prefix, x.shape().c)?;
        let (scale, shift): (Vec<f32>, Vec<f32>) = (0..bn.gamma.len())
            .map(|c| {
                let k = bn.gamma[c] as f64 / (bn.var[c] as f64 + BN_EPS as f64).sqrt();
                (k as f32, (bn.beta[c] as f64 - bn.mean[c] as f64 * k) as f32)
            })
            .unzip();
        self.affine(x, scale, shift, act)
    }

    /// `act(x·scale[c] + shift[c])`.
    pub fn affine(
        &mut self,
        x: &Tensor,
        scale: Vec<f32>,
        shift: Vec<f32>,
        act: Activation,
    ) -> Result<Tensor> {
        let y = self.tensor(x.shape(), "affine")?;
        let op = EltwiseOp::new(Eltwise::Affine { scale, shift }, act)?;
        self.plan.push(op.bind(self.ctx, x, None, None, &y)?);
        Ok(y)
    }

    /// Linear `{prefix}.weight` `[out, in]` (+ bias), optional batch norm, activation.
    pub fn linear(
        &mut self,
        x: &Tensor,
        prefix: &str,
        out: usize,
        bn: Option<&str>,
        act: Activation,
    ) -> Result<Tensor> {
        let s = x.shape();
        let inp = s.c * s.h * s.w;
        let wt = self.w.linear(&format!("{prefix}.weight"), out, inp)?;
        let mut epi = match self.w.optional(&format!("{prefix}.bias"), &[out])? {
            Some(b) => Epilogue::bias(b),
            None => Epilogue::none(),
        };
        if let Some(bn) = bn {
            epi = with_bn(epi, &self.w.batch_norm(bn, out)?)?;
        }
        let lin = Linear::new(self.ctx, (s.c, s.h, s.w), out, &wt, &epi.with_act(act))?;
        let y = self.tensor(Shape::vector(s.n, out), prefix)?;
        self.plan.push(lin.bind(self.ctx, x, &y)?);
        Ok(y)
    }

    /// A PReLU activation from `{name}` (`_weight` in Paddle, `weight` in PyTorch), shared or per channel.
    pub fn prelu(&self, name: &str, channels: usize) -> Result<Activation> {
        let key = [format!("{name}._weight"), format!("{name}.weight")]
            .into_iter()
            .find(|k| self.w.contains(k))
            .unwrap_or_else(|| format!("{name}._weight"));
        let shape = self
            .w
            .tensors()
            .get(&key)
            .map(|t| t.shape.clone())
            .unwrap_or_default();
        let n = if shape == [1] { 1 } else { channels };
        Ok(Activation::PRelu(self.w.get(&key, &[n])?.to_vec()))
    }
}
