//! `shaders/modulate_grad.wgsl`: backward of [`Modulate`](super::modulate::Modulate) (StyleGAN2
//! weight modulation, with or without demodulation, any style bias) for the trainer.
//!
//! Forward, per sample `n`: `W'[n, o, i] = W[o, i]·(s[n, i] + bias)`, then with demodulation
//! `W''[n, o, ·] = W'[n, o, ·] / σ[n, o]`, `σ = sqrt(Σ_i W'² + eps)`. From `G = ∂L/∂W''` (the fp16
//! gradient of the modulated kernels, in the forward output's layout `[N, cin, 1, cout]`):
//!
//! - demodulation: `dW'[n, o, i] = (G[n, o, i] − W''[n, o, i]·Σ_j G[n, o, j]·W''[n, o, j]) / σ[n, o]`
//!   (without it `dW' = G`);
//! - `ds[n, i] = Σ_o dW'[n, o, i]·W[o, i]`, fp16 `[N, 1, 1, cin]`;
//! - `dW[o, i] = Σ_n dW'[n, o, i]·(s[n, i] + bias)`, f32 in PyTorch order `[cout, cin]`.
//!
//! `W` is read from the trainer's f32 master copy; `W'` and `σ` are recomputed in f32 from it and
//! the fp16 style, so nothing of the forward needs saving but the style. Three dispatches: the
//! per-(sample, output channel) demodulation statistics into a small f32 scratch buffer (skipped
//! without demodulation), then ds and dW. Every sum has a single owning invocation and a fixed
//! order (dW sums the batch in sample order): results are bit-identical run to run. Outputs are
//! overwritten, never accumulated.

use super::conv_grad::f32_storage;
use super::linear_grad::check_f32;
use super::modulate::ModulateSpec;
use super::{expect_shape, half_bytes, positive};
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
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

/// The backward of one [`Modulate`](super::modulate::Modulate): its settings.
pub struct ModulateGrad {
    spec: ModulateSpec,
}

impl ModulateGrad {
    /// Backward kernels for the modulation `spec` (the same one the forward was built with).
    pub fn new(spec: ModulateSpec) -> Result<Self> {
        positive("modulate_grad", "cin", spec.cin)?;
        positive("modulate_grad", "cout", spec.cout)?;
        if !spec.eps.is_finite() || spec.eps < 0.0 || !spec.style_bias.is_finite() {
            return Err(Error::param(
                "modulate_grad",
                format!(
                    "eps {} must be finite and ≥ 0, style bias {} finite",
                    spec.eps, spec.style_bias
                ),
            ));
        }
        Ok(ModulateGrad { spec })
    }

    /// The settings.
    pub fn spec(&self) -> &ModulateSpec {
        &self.spec
    }

    /// Floats of the base weights and of dW, `cout · cin`.
    pub fn weight_len(&self) -> usize {
        self.spec.cin * self.spec.cout
    }

    /// Shape of ds for a batch of `n`: `[n, 1, 1, cin]`.
    pub fn style_grad_shape(&self, n: usize) -> Shape {
        Shape::vector(n, self.spec.cin)
    }

    /// Binds the backward of one modulation:
    ///
    /// - `weights`: the base weights, f32 in PyTorch order `[cout, cin]` (at least `cout·cin`
    ///   floats; the trainer's master copy);
    /// - `style`: the forward's style `[N, 1, 1, F]`, features `offset..offset + cin` used (as in
    ///   [`Modulate::bind`](super::modulate::Modulate::bind));
    /// - `dout`: ∂L/∂(modulated weights), `[N, cin, 1, cout]` like the forward output;
    /// - `ds`: receives ∂L/∂s for the `cin` style features used, `[N, 1, 1, cin]` (None: skipped);
    /// - `dw`: receives ∂L/∂W, f32 `[cout, cin]`, summed over the batch (None: skipped).
    ///
    /// Returns the dispatches to record in order (the statistics pass first when demodulating;
    /// none when both outputs are skipped).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        ctx: &Context,
        weights: &wgpu::Buffer,
        style: &Tensor,
        offset: usize,
        dout: &Tensor,
        ds: Option<&Tensor>,
        dw: Option<&wgpu::Buffer>,
    ) -> Result<Vec<Dispatch>> {
        let sp = &self.spec;
        let s = style.shape();
        if s.c != 1 || s.h != 1 || offset + sp.cin > s.w {
            return Err(Error::shape(
                "modulate_grad",
                format!(
                    "style must be [N, 1, 1, ≥{}] (offset {offset}), found {:?}",
                    offset + sp.cin,
                    s.dims()
                ),
            ));
        }
        let n = s.n;
        expect_shape(
            "modulate_grad",
            "dOut",
            dout,
            Shape::new(n, sp.cin, 1, sp.cout),
        )?;
        if let Some(ds) = ds {
            expect_shape("modulate_grad", "ds", ds, self.style_grad_shape(n))?;
        }
        check_f32("modulate_grad", "weights", weights, self.weight_len())?;
        if let Some(dw) = dw {
            check_f32("modulate_grad", "dW", dw, self.weight_len())?;
        }
        if ds.is_none() && dw.is_none() {
            return Ok(Vec::new());
        }
        let params = Params {
            n: n as u32,
            cin: sp.cin as u32,
            cout: sp.cout as u32,
            s_stride: s.row_stride() as u32,
            s_offset: offset as u32,
            demod: sp.demodulate as u32,
            s_bias: sp.style_bias,
            eps: sp.eps,
        };
        let stats_buf = f32_storage(
            ctx,
            "modulate_grad stats",
            if sp.demodulate { 2 * n * sp.cout } else { 1 },
        )?;
        let elems = (n * sp.cin * sp.cout) as u64;
        let (oqs, iqs) = (sp.cout.div_ceil(4), sp.cin.div_ceil(4));
        let w_bytes = self.weight_len() as u64 * 4;
        let st_bytes = if sp.demodulate {
            8 * (n * sp.cout) as u64
        } else {
            0
        };
        let style_bytes = (n * sp.cin * 2) as u64;
        let label = |what: &str| format!("{what} modulate {}x{}", sp.cout, sp.cin);
        let mut out = Vec::new();
        if sp.demodulate {
            out.push(ctx.dispatch_at(
                label("stats"),
                ctx.pipeline("modulate_grad", "grad_stats", &[])?,
                &[
                    (0, &Binding::from(weights)),
                    (1, &Binding::from(style)),
                    (2, &Binding::from(dout)),
                    (3, &Binding::from(&stats_buf)),
                ],
                (6, &params),
                grid((oqs * n) as u64, WORKGROUP),
                DispatchStats {
                    flops: 5 * elems,
                    bytes: w_bytes + style_bytes + half_bytes(dout.shape()) + st_bytes,
                },
            ));
        }
        // dW' = a·G − c·W' (4 flops, 2 more for W' itself) and one multiply-add into the sum.
        let flops = elems * if sp.demodulate { 8 } else { 3 };
        if let Some(ds) = ds {
            out.push(ctx.dispatch_at(
                label("ds"),
                ctx.pipeline("modulate_grad", "grad_style", &[])?,
                &[
                    (0, &Binding::from(weights)),
                    (1, &Binding::from(style)),
                    (2, &Binding::from(dout)),
                    (3, &Binding::from(&stats_buf)),
                    (4, &Binding::from(ds)),
                ],
                (6, &params),
                grid((iqs * n) as u64, WORKGROUP),
                DispatchStats {
                    flops,
                    bytes: w_bytes + 2 * style_bytes + half_bytes(dout.shape()) + st_bytes,
                },
            ));
        }
        if let Some(dw) = dw {
            out.push(ctx.dispatch_at(
                label("dW"),
                ctx.pipeline("modulate_grad", "grad_weight", &[])?,
                &[
                    (0, &Binding::from(weights)),
                    (1, &Binding::from(style)),
                    (2, &Binding::from(dout)),
                    (3, &Binding::from(&stats_buf)),
                    (5, &Binding::from(dw)),
                ],
                (6, &params),
                grid((oqs * sp.cin) as u64, WORKGROUP),
                DispatchStats {
                    flops,
                    bytes: 2 * w_bytes + style_bytes + half_bytes(dout.shape()) + st_bytes,
                },
            ));
        }
        Ok(out)
    }
}
