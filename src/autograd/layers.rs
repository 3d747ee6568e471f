//! The layers of a training graph: each call configures the forward kernel, appends its dispatch,
//! and records the node that binds its backward kernels.

use super::node::{Backward, Node, Var};
use super::{Graph, NormMode, ParamId, ParamKind};
use crate::error::{Error, Result};
use crate::gpu::Plan;
use crate::kernels::cast::{self, Transpose};
use crate::kernels::concat::{copy_channels, split_channels};
use crate::kernels::conv::{Conv2d, ConvSpec};
use crate::kernels::conv_grad::ConvGrad;
use crate::kernels::eltwise::{Eltwise, EltwiseOp};
use crate::kernels::eltwise_grad::{
    activation_backward, mul_backward, prelu_backward, prelu_forward,
};
use crate::kernels::fusion::fusion;
use crate::kernels::fusion_grad::fusion_backward;
use crate::kernels::linear::Linear;
use crate::kernels::linear_grad::LinearGrad;
use crate::kernels::modulate::{Modulate, ModulateSpec};
use crate::kernels::modulate_grad::ModulateGrad;
use crate::kernels::norm_grad::{BatchNorm, BnBuffers, BnLayout, BnMode};
use crate::kernels::pointwise::Pointwise;
use crate::kernels::pool::Pool;
use crate::kernels::pool_grad;
use crate::kernels::reduce::l2_normalize;
use crate::kernels::reduce_grad::l2_normalize_grad;
use crate::kernels::resample::Resample;
use crate::kernels::resample_grad;
use crate::kernels::{Activation, Epilogue};
use crate::tensor::{Shape, Tensor};

/// A batch norm's parameters by id.
#[derive(Clone, Copy, Debug)]
pub struct BnSpec {
    /// γ.
    pub gamma: ParamId,
    /// β.
    pub beta: ParamId,
    /// Running mean (a buffer).
    pub mean: ParamId,
    /// Running variance (a buffer).
    pub var: ParamId,
}

/// Whether `spec` is a plain 1×1 convolution the pointwise kernel runs.
fn is_pointwise(spec: &ConvSpec) -> bool {
    spec.kernel == (1, 1)
        && spec.groups == 1
        && spec.stride == (1, 1)
        && spec.pad == (0, 0)
        && spec.dilation == (1, 1)
}

/// dZ = dY·act'(y), or dY itself for no activation.
fn through_activation(
    b: &mut Backward<'_>,
    act: &Activation,
    y: Var,
    dy: &Tensor,
) -> Result<Tensor> {
    if *act == Activation::None {
        return Ok(dy.clone());
    }
    let dz = b.scratch(dy.shape(), "act grad")?;
    let d = activation_backward(b.ctx, act, b.tensor(y), dy, &dz)?;
    b.push(d);
    Ok(dz)
}

/// Weight and bias gradients of a convolution from `x` and dZ, into the parameters' gradient
/// buffers (scratch where one of them is frozen).
fn conv_param_grads(
    b: &mut Backward<'_>,
    grad: &ConvGrad,
    x: &Tensor,
    dz: &Tensor,
    weight: Option<ParamId>,
    bias: Option<ParamId>,
) -> Result<()> {
    let spec = *grad.spec();
    let dw = match weight {
        Some(p) => b.param_grad(p)?,
        None => None,
    };
    let db = match bias {
        Some(p) => b.param_grad(p)?,
        None => None,
    };
    if dw.is_none() && db.is_none() {
        return Ok(());
    }
    let dw = match dw {
        Some(d) => d,
        None => b.scratch_f32("unused dW", spec.weight_len())?,
    };
    let db = match db {
        Some(d) => d,
        None => b.scratch_f32("unused dBias", spec.cout)?,
    };
    let wg = grad.bind_weight_into(b.ctx, x, dz, dw, db)?;
    b.extend(wg.dispatches);
    Ok(())
}

/// A convolution with parameter weights (and bias) and a fused activation.
struct ConvNode {
    x: Var,
    y: Var,
    act: Activation,
    weight: ParamId,
    bias: Option<ParamId>,
    spec: ConvSpec,
}

impl Node for ConvNode {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        let dz = through_activation(b, &self.act, self.y, dy)?;
        let grad = ConvGrad::with_weight_buffer(self.spec, b.param(self.weight).value.clone())?;
        if let Some(dx) = b.grad_for(self.x)? {
            let d = grad.bind_input(b.ctx, &dz, &dx)?;
            b.push(d);
        }
        let x = b.tensor(self.x).clone();
        conv_param_grads(b, &grad, &x, &dz, Some(self.weight), self.bias)
    }
}

/// A convolution whose weights are a value of the graph: predicted depthwise kernels
/// (`[n, C, k, k]`) or modulated pointwise kernels (`[n, cin, 1, cout]`, read through `transpose`
/// as PyTorch `[n·cout, cin]`). With per-sample weights (`n` > 1) the batch is folded into groups:
/// `[N, C, H, W]` viewed as `[1, N·C, H, W]`, so `spec` is the folded geometry.
struct DynamicConvNode {
    x: Var,
    w: Var,
    y: Var,
    act: Activation,
    spec: ConvSpec,
    transpose: Option<Transpose>,
}

/// `[N, C, H, W]` viewed as `[1, N·C, H, W]` (identical layout).
fn fold(t: &Tensor) -> Result<Tensor> {
    let s = t.shape();
    t.reshape(Shape::new(1, s.n * s.c, s.h, s.w))
}

impl Node for DynamicConvNode {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        let dz = through_activation(b, &self.act, self.y, dy)?;
        let wt = b.tensor(self.w).clone();
        let per_sample = wt.shape().n > 1;
        let spec = self.spec;
        // The kernels as f32 in PyTorch order, for dX.
        let w32 = b.scratch_f32("dynamic weights f32", spec.weight_len())?;
        let d = cast::to_f32(b.ctx, &wt, &w32, 0, self.transpose)?;
        b.push(d);
        let grad = ConvGrad::with_weight_buffer(spec, w32)?;
        let (x, dzf) = if per_sample {
            (fold(b.tensor(self.x))?, fold(&dz)?)
        } else {
            (b.tensor(self.x).clone(), dz.clone())
        };
        if let Some(dx) = b.grad_for(self.x)? {
            let dxf = if per_sample { fold(&dx)? } else { dx };
            let d = grad.bind_input(b.ctx, &dzf, &dxf)?;
            b.push(d);
        }
        if let Some(dwt) = b.grad_for(self.w)? {
            let dw = b.scratch_f32("dynamic dW", spec.weight_len())?;
            let db = b.scratch_f32("dynamic dBias (unused)", spec.cout)?;
            let wg = grad.bind_weight_into(b.ctx, &x, &dzf, dw.clone(), db)?;
            b.extend(wg.dispatches);
            let d = cast::to_half(b.ctx, &dw, 0, &dwt, self.transpose)?;
            b.push(d);
        }
        Ok(())
    }
}

/// `y = x·scale[c] + shift[c]` with constants.
struct AffineNode {
    x: Var,
    y: Var,
    scale: Vec<f32>,
}

impl Node for AffineNode {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        if let Some(dx) = b.grad_for(self.x)? {
            let op = EltwiseOp::new(
                Eltwise::Affine {
                    scale: self.scale.clone(),
                    shift: vec![0.0],
                },
                Activation::None,
            )?;
            let d = op.bind(b.ctx, dy, None, None, &dx)?;
            b.push(d);
        }
        Ok(())
    }
}

/// Channel concatenation.
struct ConcatNode {
    parts: Vec<(Var, usize)>,
    y: Var,
}

impl Node for ConcatNode {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        for &(v, offset) in &self.parts {
            if let Some(dx) = b.grad_for(v)? {
                let d = split_channels(b.ctx, dy, &dx, offset)?;
                b.push(d);
            }
        }
        Ok(())
    }
}

impl<'c> Graph<'c> {
    /// A convolution `act(conv(x, W) + bias)` with parameter weights `[cout, cin/g, kh, kw]`.
    pub fn conv(
        &mut self,
        x: Var,
        spec: ConvSpec,
        weight: ParamId,
        bias: Option<ParamId>,
        act: Activation,
    ) -> Result<Var> {
        let wp = self.param(weight);
        let kshape = [
            spec.cout,
            spec.cin / spec.groups,
            spec.kernel.0,
            spec.kernel.1,
        ];
        if wp.shape != kshape {
            return Err(Error::shape(
                "graph conv",
                format!(
                    "'{}' is {:?}, the layer needs {kshape:?}",
                    wp.name, wp.shape
                ),
            ));
        }
        if let Some(bp) = bias {
            if self.param(bp).len != spec.cout {
                return Err(Error::shape(
                    "graph conv",
                    format!(
                        "bias '{}' does not have {} values",
                        self.param(bp).name,
                        spec.cout
                    ),
                ));
            }
        }
        let out = spec.output_shape(self.shape(x))?;
        let mut params = vec![weight];
        params.extend(bias);
        let y = self.output(out, &wp.name.clone(), &[x], &params)?;
        self.use_params(&params);
        let epi = Epilogue::bias(&vec![0.0; spec.cout]).with_act(act.clone());
        let mut fwd = Plan::default();
        let epilogue = if is_pointwise(&spec) {
            let wt = Tensor::new(self.ctx, [1, spec.cin, 1, spec.cout], "pointwise weights")?;
            let pw = Pointwise::with_weights(self.ctx, wt.clone(), &epi)?;
            fwd.push(pw.bind(self.ctx, self.tensor(x), self.tensor(y), None)?);
            let t = Transpose {
                batch: 1,
                rows: spec.cout,
                cols: spec.cin,
            };
            self.sync_half(weight, &wt, Some(t))?;
            pw.epilogue_buffer().clone()
        } else {
            let wt = Tensor::new(self.ctx, [1, 1, 1, spec.weight_len()], "conv weights")?;
            let conv = Conv2d::with_weights(self.ctx, spec, wt.clone(), &epi)?;
            fwd.push(conv.bind(self.ctx, self.tensor(x), self.tensor(y), None)?);
            self.sync_half(weight, &wt, None)?;
            conv.epilogue_buffer().clone()
        };
        if let Some(bp) = bias {
            self.sync_f32(bp, &epilogue, spec.cout)?;
        }
        self.push_node(
            Box::new(ConvNode {
                x,
                y,
                act,
                weight,
                bias,
                spec,
            }),
            fwd,
        );
        Ok(y)
    }

    /// A convolution whose kernels are the value `w`: `[1, C, kh, kw]`-style tensors shared by the
    /// batch, or per sample (`[N, ...]`, depthwise only).
    pub fn conv_dynamic(&mut self, x: Var, spec: ConvSpec, w: Var, act: Activation) -> Result<Var> {
        let n = self.shape(w).n;
        if n != 1 && (n != self.shape(x).n || spec.groups != spec.cin || spec.cin != spec.cout) {
            return Err(Error::shape(
                "graph conv_dynamic",
                "per-sample kernels are supported for depthwise convolutions only",
            ));
        }
        let out = spec.output_shape(self.shape(x))?;
        let y = self.output(out, "dynamic conv", &[x, w], &[])?;
        let epi = Epilogue::none().with_act(act.clone());
        let conv = Conv2d::with_weights(self.ctx, spec, self.tensor(w).clone(), &epi)?;
        let mut fwd = Plan::default();
        fwd.push(conv.bind(self.ctx, self.tensor(x), self.tensor(y), None)?);
        // Per-sample depthwise kernels: the batch folded into groups (see DynamicConvNode).
        let mut folded = spec;
        folded.cin *= n;
        folded.cout *= n;
        folded.groups *= n;
        let node = DynamicConvNode {
            x,
            w,
            y,
            act,
            spec: folded,
            transpose: None,
        };
        self.push_node(Box::new(node), fwd);
        Ok(y)
    }

    /// A pointwise convolution whose weights `[n, cin, 1, cout]` are the value `w`.
    pub fn pointwise_dynamic(&mut self, x: Var, w: Var, act: Activation) -> Result<Var> {
        let epi = Epilogue::none().with_act(act.clone());
        let pw = Pointwise::with_weights(self.ctx, self.tensor(w).clone(), &epi)?;
        let out = pw.output_shape(self.shape(x))?;
        let y = self.output(out, "dynamic pointwise", &[x, w], &[])?;
        let mut fwd = Plan::default();
        fwd.push(pw.bind(self.ctx, self.tensor(x), self.tensor(y), None)?);
        let ws = self.shape(w);
        let (n, cin, cout) = (ws.n, ws.c, ws.w);
        let node = DynamicConvNode {
            x,
            w,
            y,
            act,
            spec: ConvSpec::new(n * cin, n * cout, 1, 1, 0).groups(n),
            transpose: Some(Transpose {
                batch: n,
                rows: cout,
                cols: cin,
            }),
        };
        self.push_node(Box::new(node), fwd);
        Ok(y)
    }

    /// `x·scale + shift` with constants (one value, or one per channel).
    pub fn affine(&mut self, x: Var, scale: Vec<f32>, shift: Vec<f32>) -> Result<Var> {
        let s = self.shape(x);
        let y = self.output(s, "affine", &[x], &[])?;
        let op = EltwiseOp::new(
            Eltwise::Affine {
                scale: scale.clone(),
                shift,
            },
            Activation::None,
        )?;
        let mut fwd = Plan::default();
        fwd.push(op.bind(self.ctx, self.tensor(x), None, None, self.tensor(y))?);
        self.push_node(Box::new(AffineNode { x, y, scale }), fwd);
        Ok(y)
    }

    /// Channel concatenation of `parts` (same N, H, W).
    pub fn concat(&mut self, parts: &[Var]) -> Result<Var> {
        let Some(&head) = parts.first() else {
            return Err(Error::param("graph concat", "no values to concatenate"));
        };
        let first = self.shape(head);
        if let Some(&bad) = parts.iter().find(|&&v| {
            let s = self.shape(v);
            (s.n, s.h, s.w) != (first.n, first.h, first.w)
        }) {
            return Err(Error::shape(
                "graph concat",
                format!(
                    "{:?} does not match {:?} outside the channel axis",
                    self.shape(bad).dims(),
                    first.dims()
                ),
            ));
        }
        let c: usize = parts.iter().map(|&v| self.shape(v).c).sum();
        let y = self.output(
            Shape::new(first.n, c, first.h, first.w),
            "concat",
            parts,
            &[],
        )?;
        let mut fwd = Plan::default();
        let mut offset = 0;
        let mut placed = Vec::new();
        for &v in parts {
            fwd.push(copy_channels(
                self.ctx,
                self.tensor(v),
                self.tensor(y),
                offset,
            )?);
            placed.push((v, offset));
            offset += self.shape(v).c;
        }
        self.push_node(Box::new(ConcatNode { parts: placed, y }), fwd);
        Ok(y)
    }

    /// Adds a batch norm's four tensors as parameters (γ, β learned; running stats buffers).
    pub fn bn_params(
        &mut self,
        names: [&str; 4],
        gamma: &[f32],
        beta: &[f32],
        mean: &[f32],
        var: &[f32],
    ) -> Result<BnSpec> {
        let c = gamma.len();
        Ok(BnSpec {
            gamma: self.add_param(names[0], &[c], gamma, ParamKind::Weight)?,
            beta: self.add_param(names[1], &[c], beta, ParamKind::Weight)?,
            mean: self.add_param(names[2], &[c], mean, ParamKind::Buffer)?,
            var: self.add_param(names[3], &[c], var, ParamKind::Buffer)?,
        })
    }

    /// The current batch-norm mode.
    pub fn norm_mode(&self) -> NormMode {
        self.norm_mode
    }
}

/// A linear layer with a fused activation.
struct LinearNode {
    x: Var,
    y: Var,
    act: Activation,
    weight: ParamId,
    bias: Option<ParamId>,
}

impl Node for LinearNode {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        let dz = through_activation(b, &self.act, self.y, dy)?;
        let xs = b.tensor(self.x).shape();
        let out = b.tensor(self.y).shape().w;
        let grad = LinearGrad::new(b.ctx, (xs.c, xs.h, xs.w), out)?;
        if let Some(dx) = b.grad_for(self.x)? {
            let d = grad.bind_input(b.ctx, &b.param(self.weight).value.clone(), &dz, &dx)?;
            b.push(d);
        }
        let dw = b.param_grad(self.weight)?;
        let db = match self.bias {
            Some(p) => b.param_grad(p)?,
            None => None,
        };
        if dw.is_some() || db.is_some() {
            let dw = match dw {
                Some(d) => d,
                None => b.scratch_f32("unused linear dW", grad.weight_len())?,
            };
            let db = match db {
                Some(d) => d,
                None => b.scratch_f32("unused linear dBias", out)?,
            };
            let x = b.tensor(self.x).clone();
            let ds = grad.bind_weight(b.ctx, &x, &dz, &dw, &db)?;
            b.extend(ds);
        }
        Ok(())
    }
}

/// Weight modulation + demodulation of a parameter by a style value.
struct ModulateNode {
    s: Var,
    y: Var,
    weight: ParamId,
    spec: ModulateSpec,
}

impl Node for ModulateNode {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        let grad = ModulateGrad::new(self.spec)?;
        let ds = b.grad_for(self.s)?;
        let dw = b.param_grad(self.weight)?;
        let w = b.param(self.weight).value.clone();
        let s = b.tensor(self.s).clone();
        let d = grad.bind(b.ctx, &w, &s, 0, dy, ds.as_ref(), dw.as_ref())?;
        b.extend(d);
        Ok(())
    }
}

/// Row-wise L2 normalisation of a vector value.
struct L2Node {
    x: Var,
    y: Var,
    eps: f32,
}

impl Node for L2Node {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        if let Some(dx) = b.grad_for(self.x)? {
            let d = l2_normalize_grad(b.ctx, b.tensor(self.x), dy, self.eps, &dx)?;
            b.push(d);
        }
        Ok(())
    }
}

/// Resampling (bilinear, nearest, pixel shuffle).
struct ResampleNode {
    x: Var,
    y: Var,
    mode: Resample,
}

impl Node for ResampleNode {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        if let Some(dx) = b.grad_for(self.x)? {
            let d = resample_grad::bind(b.ctx, self.mode, dy, &dx)?;
            b.push(d);
        }
        Ok(())
    }
}

impl<'c> Graph<'c> {
    /// A linear layer `act(x·Wᵀ + bias)` on `x` flattened per sample (`[N, C, H, W]` → `[N, 1,
    /// 1, out]`), weights `[out, C·H·W]`.
    pub fn linear(
        &mut self,
        x: Var,
        weight: ParamId,
        bias: Option<ParamId>,
        act: Activation,
    ) -> Result<Var> {
        let s = self.shape(x);
        let inp = s.c * s.h * s.w;
        let wp = self.param(weight);
        if wp.shape.len() != 2 || wp.shape[1] != inp {
            return Err(Error::shape(
                "graph linear",
                format!("'{}' is {:?}, input has {inp} features", wp.name, wp.shape),
            ));
        }
        let out = wp.shape[0];
        let name = wp.name.clone();
        let mut params = vec![weight];
        params.extend(bias);
        let y = self.output(Shape::vector(s.n, out), &name, &[x], &params)?;
        self.use_params(&params);
        let epi = Epilogue::bias(&vec![0.0; out]).with_act(act.clone());
        let lin = Linear::new(self.ctx, (s.c, s.h, s.w), out, &vec![0.0; out * inp], &epi)?;
        let mut fwd = Plan::default();
        fwd.push(lin.bind(self.ctx, self.tensor(x), self.tensor(y))?);
        let wt = lin.weight_tensor().clone();
        self.sync_half(weight, &wt, None)?;
        if let Some(bp) = bias {
            let e = lin.epilogue_buffer().clone();
            self.sync_f32(bp, &e, out)?;
        }
        self.push_node(
            Box::new(LinearNode {
                x,
                y,
                act,
                weight,
                bias,
            }),
            fwd,
        );
        Ok(y)
    }

    /// Modulated (+ demodulated) pointwise kernels `[N, cin, 1, cout]` from base weights
    /// `weight` `[cout, cin, 1, 1]` and a style value `[N, 1, 1, cin]`.
    pub fn modulate(&mut self, style: Var, weight: ParamId, spec: ModulateSpec) -> Result<Var> {
        let wp = self.param(weight);
        if wp.len != spec.cin * spec.cout {
            return Err(Error::shape(
                "graph modulate",
                format!(
                    "'{}' is {:?} for {}→{}",
                    wp.name, wp.shape, spec.cin, spec.cout
                ),
            ));
        }
        let m = Modulate::new(self.ctx, spec, &vec![0.0; spec.cin * spec.cout])?;
        let n = self.shape(style).n;
        let name = wp.name.clone();
        let y = self.output(m.output_shape(n), &name, &[style], &[weight])?;
        self.use_params(&[weight]);
        let mut fwd = Plan::default();
        fwd.push(m.bind(self.ctx, self.tensor(style), 0, self.tensor(y))?);
        let t = Transpose {
            batch: 1,
            rows: spec.cout,
            cols: spec.cin,
        };
        let wt = m.weight_tensor().clone();
        self.sync_half(weight, &wt, Some(t))?;
        self.push_node(
            Box::new(ModulateNode {
                s: style,
                y,
                weight,
                spec,
            }),
            fwd,
        );
        Ok(y)
    }

    /// Row-wise L2 normalisation of `[N, 1, 1, F]` (`x / max(‖x‖, 1e-12)`).
    pub fn l2_normalize(&mut self, x: Var) -> Result<Var> {
        let eps = 1e-12;
        let y = self.output(self.shape(x), "l2 normalize", &[x], &[])?;
        let mut fwd = Plan::default();
        fwd.push(l2_normalize(self.ctx, self.tensor(x), eps, self.tensor(y))?);
        self.push_node(Box::new(L2Node { x, y, eps }), fwd);
        Ok(y)
    }

    /// Resamples `x` to `size` (H, W) with `mode`.
    pub fn resample(&mut self, x: Var, mode: Resample, size: (usize, usize)) -> Result<Var> {
        let out = mode.output_shape(self.shape(x), size)?;
        let y = self.output(out, "resample", &[x], &[])?;
        let mut fwd = Plan::default();
        fwd.push(mode.bind(self.ctx, self.tensor(x), self.tensor(y))?);
        self.push_node(Box::new(ResampleNode { x, y, mode }), fwd);
        Ok(y)
    }

    /// Bilinear ×2 with align_corners (MobileFaceSwap's `up`).
    pub fn up2(&mut self, x: Var) -> Result<Var> {
        let s = self.shape(x);
        self.resample(
            x,
            Resample::Bilinear {
                align_corners: true,
            },
            (2 * s.h, 2 * s.w),
        )
    }

    /// The same elements in the same logical (NCHW) order under another shape, e.g. a Linear
    /// output `[N, 1, 1, C·H·W]` as `[N, C, H, W]`. Rows are padded to quads, so it is a copy
    /// (through f32, exact for fp16), not a view; its backward is the inverse copy.
    pub fn reshape(&mut self, x: Var, shape: Shape) -> Result<Var> {
        let xs = self.shape(x);
        if shape.numel() != xs.numel() {
            return Err(Error::shape(
                "graph reshape",
                format!(
                    "{:?} has {} elements, {:?} has {}",
                    xs.dims(),
                    xs.numel(),
                    shape.dims(),
                    shape.numel()
                ),
            ));
        }
        let y = self.output(shape, "reshape", &[x], &[])?;
        let scratch = crate::kernels::conv_grad::f32_storage(self.ctx, "reshape", xs.numel())?;
        let mut fwd = Plan::default();
        fwd.push(cast::to_f32(self.ctx, self.tensor(x), &scratch, 0, None)?);
        fwd.push(cast::to_half(self.ctx, &scratch, 0, self.tensor(y), None)?);
        self.push_node(Box::new(ReshapeNode { x, y }), fwd);
        Ok(y)
    }
}

/// A copy into another shape (same logical order).
struct ReshapeNode {
    x: Var,
    y: Var,
}

impl Node for ReshapeNode {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        if let Some(dx) = b.grad_for(self.x)? {
            let s = b.scratch_f32("reshape grad", dy.shape().numel())?;
            let d = cast::to_f32(b.ctx, dy, &s, 0, None)?;
            b.push(d);
            let d = cast::to_half(b.ctx, &s, 0, &dx, None)?;
            b.push(d);
        }
        Ok(())
    }
}

/// PReLU with learned slopes.
struct PreluNode {
    x: Var,
    y: Var,
    slopes: ParamId,
    shared: bool,
}

impl Node for PreluNode {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        let dslope = b.param_grad(self.slopes)?;
        let dx = b.grad_for(self.x)?;
        if dslope.is_none() && dx.is_none() {
            return Ok(());
        }
        let p = b.param(self.slopes);
        let (slopes, len) = (p.value.clone(), p.len);
        let dslope = match dslope {
            Some(d) => d,
            None => b.scratch_f32("unused dslope", len)?,
        };
        let dx = match dx {
            Some(t) => t,
            None => b.scratch(dy.shape(), "unused prelu dx")?,
        };
        let x = b.tensor(self.x).clone();
        let ds = prelu_backward(b.ctx, &slopes, self.shared, &x, dy, &dx, &dslope)?;
        b.extend(ds);
        Ok(())
    }
}

/// `a ⊙ g`, `g` of `a`'s shape or a per-channel gate.
struct MulNode {
    a: Var,
    g: Var,
    y: Var,
}

impl Node for MulNode {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        let (na, ng) = (b.needs(self.a), b.needs(self.g));
        if !na && !ng {
            return Ok(());
        }
        let da = match b.grad_for(self.a)? {
            Some(t) => t,
            None => b.scratch(dy.shape(), "unused da")?,
        };
        let dg = match b.grad_for(self.g)? {
            Some(t) => t,
            None => b.scratch(b.tensor(self.g).shape(), "unused dg")?,
        };
        let (a, g) = (b.tensor(self.a).clone(), b.tensor(self.g).clone());
        let ds = mul_backward(b.ctx, &a, &g, dy, &da, &dg)?;
        b.extend(ds);
        Ok(())
    }
}

/// Attention fusion `m ⊙ a + (1 − m) ⊙ b` with a raw mask.
struct FusionNode {
    a: Var,
    b: Var,
    m: Var,
    y: Var,
}

impl Node for FusionNode {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, bw: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        if !bw.needs(self.a) && !bw.needs(self.b) && !bw.needs(self.m) {
            return Ok(());
        }
        let da = match bw.grad_for(self.a)? {
            Some(t) => t,
            None => bw.scratch(dy.shape(), "unused fusion da")?,
        };
        let dm = match bw.grad_for(self.m)? {
            Some(t) => t,
            None => bw.scratch(bw.tensor(self.m).shape(), "unused fusion dm")?,
        };
        let db = bw.grad_for(self.b)?;
        let (a, b, m) = (
            bw.tensor(self.a).clone(),
            bw.tensor(self.b).clone(),
            bw.tensor(self.m).clone(),
        );
        let d = fusion_backward(bw.ctx, &a, &b, &m, false, dy, &da, &dm, db.as_ref())?;
        bw.push(d);
        Ok(())
    }
}

/// Pooling.
struct PoolNode {
    x: Var,
    y: Var,
    pool: Pool,
}

impl Node for PoolNode {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        if let Some(dx) = b.grad_for(self.x)? {
            let x = b.tensor(self.x).clone();
            let d = pool_grad::bind(b.ctx, self.pool, Some(&x), dy, &dx)?;
            b.push(d);
        }
        Ok(())
    }
}

impl<'c> Graph<'c> {
    /// PReLU with slopes `slopes` (one shared, or one per channel / per feature of a vector).
    pub fn prelu(&mut self, x: Var, slopes: ParamId) -> Result<Var> {
        let shared = self.param(slopes).len == 1;
        let y = self.output(self.shape(x), "prelu", &[x], &[slopes])?;
        self.use_params(&[slopes]);
        let mut fwd = Plan::default();
        let sl = self.param(slopes).value.clone();
        fwd.push(prelu_forward(
            self.ctx,
            &sl,
            shared,
            self.tensor(x),
            self.tensor(y),
        )?);
        self.push_node(
            Box::new(PreluNode {
                x,
                y,
                slopes,
                shared,
            }),
            fwd,
        );
        Ok(y)
    }

    /// `a ⊙ g` with `g` of `a`'s shape, `[N, C, 1, 1]` or a vector `[N, 1, 1, C]` (SE gating).
    pub fn mul(&mut self, a: Var, g: Var) -> Result<Var> {
        let y = self.output(self.shape(a), "mul", &[a, g], &[])?;
        let op = EltwiseOp::new(Eltwise::Mul, Activation::None)?;
        let mut fwd = Plan::default();
        fwd.push(op.bind(
            self.ctx,
            self.tensor(a),
            Some(self.tensor(g)),
            None,
            self.tensor(y),
        )?);
        self.push_node(Box::new(MulNode { a, g, y }), fwd);
        Ok(y)
    }

    /// Fusion `m ⊙ a + (1 − m) ⊙ b` (`m` `[N, 1, H, W]`, raw).
    pub fn fusion(&mut self, a: Var, b: Var, m: Var) -> Result<Var> {
        let y = self.output(self.shape(a), "fusion", &[a, b, m], &[])?;
        let mut fwd = Plan::default();
        fwd.push(fusion(
            self.ctx,
            self.tensor(a),
            self.tensor(b),
            self.tensor(m),
            false,
            self.tensor(y),
        )?);
        self.push_node(Box::new(FusionNode { a, b, m, y }), fwd);
        Ok(y)
    }

    /// Pooling (max, average, global average).
    pub fn pool(&mut self, x: Var, pool: Pool) -> Result<Var> {
        let out = pool.output_shape(self.shape(x))?;
        let y = self.output(out, "pool", &[x], &[])?;
        let mut fwd = Plan::default();
        fwd.push(pool.bind(self.ctx, self.tensor(x), self.tensor(y))?);
        self.push_node(Box::new(PoolNode { x, y, pool }), fwd);
        Ok(y)
    }
}

/// Batch norm (training or running statistics) with a fused activation.
struct BatchNormNode {
    x: Var,
    y: Var,
    bn: BnSpec,
    kernel: BatchNorm,
    mode: BnMode,
    saved: wgpu::Buffer,
}

impl BatchNormNode {
    fn buffers<'a>(&'a self, b: &'a Backward<'_>) -> BnBuffers<'a> {
        BnBuffers {
            gamma: &b.param(self.bn.gamma).value,
            beta: &b.param(self.bn.beta).value,
            running_mean: &b.param(self.bn.mean).value,
            running_var: &b.param(self.bn.var).value,
            saved: &self.saved,
        }
    }
}

impl Node for BatchNormNode {
    fn output(&self) -> Var {
        self.y
    }
    fn backward(&self, b: &mut Backward<'_>, dy: &Tensor) -> Result<()> {
        let dgamma = b.param_grad(self.bn.gamma)?;
        let dbeta = b.param_grad(self.bn.beta)?;
        let dx = b.grad_for(self.x)?;
        if dgamma.is_none() && dbeta.is_none() && dx.is_none() {
            return Ok(());
        }
        let c = b.param(self.bn.gamma).len;
        let dgamma = match dgamma {
            Some(d) => d,
            None => b.scratch_f32("unused dgamma", c)?,
        };
        let dbeta = match dbeta {
            Some(d) => d,
            None => b.scratch_f32("unused dbeta", c)?,
        };
        let dx = match dx {
            Some(t) => t,
            None => b.scratch(dy.shape(), "unused bn dx")?,
        };
        let (x, y) = (b.tensor(self.x).clone(), b.tensor(self.y).clone());
        let ds = {
            let p = self.buffers(b);
            self.kernel
                .bind_backward(b.ctx, self.mode, &y, dy, &x, &p, &dx, &dgamma, &dbeta)?
        };
        b.extend(ds);
        Ok(())
    }
}

impl<'c> Graph<'c> {
    /// Batch norm of `x` with `bn`'s parameters, then `act` (its derivative must be recoverable
    /// from the output: none, ReLU, leaky with a positive slope, sigmoid, tanh). Channels of an
    /// NCHW map, or features of a vector `[N, 1, 1, F]` (BatchNorm1d). Statistics per
    /// [`Graph::norm_mode`]; in training mode the running statistics are updated by the forward.
    pub fn batch_norm(&mut self, x: Var, bn: BnSpec, act: Activation) -> Result<Var> {
        let s = self.shape(x);
        let (layout, c) = if s.c == 1 && s.h == 1 {
            (BnLayout::Features, s.w)
        } else {
            (BnLayout::Channels, s.c)
        };
        if self.param(bn.gamma).len != c {
            return Err(Error::shape(
                "graph batch norm",
                format!(
                    "'{}' has {} values for {c} channels",
                    self.param(bn.gamma).name,
                    self.param(bn.gamma).len
                ),
            ));
        }
        let mode = match self.norm_mode {
            NormMode::Eval => BnMode::Eval,
            NormMode::Train => BnMode::Train,
        };
        let name = self.param(bn.gamma).name.clone();
        let y = self.output(s, &name, &[x], &[bn.gamma, bn.beta])?;
        self.use_params(&[bn.gamma, bn.beta]);
        let kernel = BatchNorm::new(self.ctx, c, BN_EPS, BN_MOMENTUM, act, layout)?;
        let saved = crate::kernels::conv_grad::f32_storage(self.ctx, "bn saved stats", 2 * c)?;
        let fwd_d = {
            let p = BnBuffers {
                gamma: &self.params[bn.gamma.0].value,
                beta: &self.params[bn.beta.0].value,
                running_mean: &self.params[bn.mean.0].value,
                running_var: &self.params[bn.var.0].value,
                saved: &saved,
            };
            kernel.bind_forward(self.ctx, mode, self.tensor(x), &p, self.tensor(y))?
        };
        let mut fwd = Plan::default();
        for d in fwd_d {
            fwd.push(d);
        }
        self.push_node(
            Box::new(BatchNormNode {
                x,
                y,
                bn,
                kernel,
                mode,
                saved,
            }),
            fwd,
        );
        Ok(y)
    }
}

/// Batch-norm epsilon of Paddle and PyTorch.
const BN_EPS: f32 = 1e-5;
/// PyTorch's default momentum of the running statistics (Paddle's 0.9 is the same update).
const BN_MOMENTUM: f32 = 0.1;
