//! `shaders/modulate.wgsl`: StyleGAN2 modulation + demodulation of pointwise weights on the GPU.
//!
//! `W'[n, o, i] = W[o, i]·(s[n, i] + bias)`, then optionally each output row scaled to unit L2
//! norm: `W'[n, o, ·] /= sqrt(Σ_i W'[n, o, i]² + eps)`. The result is a `[N, cin, 1, cout]` tensor
//! in the layout [`super::pointwise::Pointwise::with_weights`] takes.

use super::pointwise::transpose_weights;
use super::{expect_shape, half_bytes, positive};
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cin: u32,
    cout: u32,
    s_stride: u32,
    s_offset: u32,
    demod: u32,
    s_bias: f32,
    eps: f32,
}

/// Modulation settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModulateSpec {
    /// Input channels of the modulated layer.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Added to the style before scaling (1 for the `(1 + s)` convention, 0 for plain `s`).
    pub style_bias: f32,
    /// Whether to demodulate (unit-norm output rows).
    pub demodulate: bool,
    /// Epsilon inside the square root.
    pub eps: f32,
}

/// Base weights, ready to modulate by a style tensor every time the identity changes.
pub struct Modulate {
    spec: ModulateSpec,
    weights: Tensor,
}

impl Modulate {
    /// Base weights in PyTorch order `[cout, cin]`.
    pub fn new(ctx: &Context, spec: ModulateSpec, weights: &[f32]) -> Result<Self> {
        positive("modulate", "cin", spec.cin)?;
        positive("modulate", "cout", spec.cout)?;
        if weights.len() != spec.cin * spec.cout {
            return Err(Error::shape(
                "modulate weights",
                format!(
                    "expected {} values ([{}, {}]), found {}",
                    spec.cin * spec.cout,
                    spec.cout,
                    spec.cin,
                    weights.len()
                ),
            ));
        }
        if spec.eps.is_nan() || spec.eps < 0.0 {
            return Err(Error::param(
                "modulate",
                format!("eps {} must be ≥ 0", spec.eps),
            ));
        }
        let t = transpose_weights(weights, spec.cin, spec.cout);
        Ok(Modulate {
            spec,
            weights: Tensor::from_f32(ctx, [1, spec.cin, 1, spec.cout], &t, "modulate weights")?,
        })
    }

    /// The fp16 base-weight tensor the forward reads (training-forward hook: a trainer refreshes
    /// it from its f32 master weights after each optimiser step). Shape `[1, cin, 1, cout]`: the
    /// PyTorch `[cout, cin]` matrix **transposed** (row `i` holds `W[·, i]`, rows padded to a
    /// multiple of 4 halves), the layout of [`super::pointwise::Pointwise::with_weights`]; with the
    /// cast kernel that is the per-batch transpose of a `[rows = cout, cols = cin]` source.
    pub fn weight_tensor(&self) -> &Tensor {
        &self.weights
    }

    /// The settings.
    pub fn spec(&self) -> &ModulateSpec {
        &self.spec
    }

    /// Shape of the modulated weights for a style batch of `n`.
    pub fn output_shape(&self, n: usize) -> Shape {
        Shape::new(n, self.spec.cin, 1, self.spec.cout)
    }

    /// Binds a style `[N, 1, 1, F]` whose features `offset..offset + cin` scale the input channels,
    /// and the output weights `[N, cin, 1, cout]`.
    pub fn bind(
        &self,
        ctx: &Context,
        style: &Tensor,
        offset: usize,
        out: &Tensor,
    ) -> Result<Dispatch> {
        let s = style.shape();
        if s.c != 1 || s.h != 1 || offset + self.spec.cin > s.w {
            return Err(Error::shape(
                "modulate",
                format!(
                    "style must be [N, 1, 1, ≥{}] (offset {offset}), found {:?}",
                    offset + self.spec.cin,
                    s.dims()
                ),
            ));
        }
        expect_shape("modulate", "output", out, self.output_shape(s.n))?;
        let params = Params {
            n: s.n as u32,
            cin: self.spec.cin as u32,
            cout: self.spec.cout as u32,
            s_stride: s.row_stride() as u32,
            s_offset: offset as u32,
            demod: self.spec.demodulate as u32,
            s_bias: self.spec.style_bias,
            eps: self.spec.eps,
        };
        let elems = (s.n * self.spec.cin * self.spec.cout) as u64;
        let stats = DispatchStats {
            flops: elems * if self.spec.demodulate { 5 } else { 1 },
            bytes: half_bytes(self.weights.shape()) * if self.spec.demodulate { 2 } else { 1 }
                + elems * 2,
        };
        Ok(ctx.dispatch(
            format!("modulate {}x{}", self.spec.cout, self.spec.cin),
            ctx.pipeline("modulate", "modulate", &[])?,
            &[(&self.weights).into(), style.into(), out.into()],
            &params,
            grid((self.spec.cout.div_ceil(4) * s.n) as u64, WORKGROUP),
            stats,
        ))
    }
}
