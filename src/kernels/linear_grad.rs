//! `shaders/linear_grad.wgsl`: backward of [`Linear`](super::linear::Linear) for the trainer.
//!
//! The forward computes `y[n, o] = act(scale[o]·z[n, o] + shift[o])` with
//! `z[n, o] = Σ_f W[o, f]·x[n, f]`; these kernels are the backward of `z` (and of a bias added to
//! it): the epilogue's activation backward is recorded separately by the tape, and in training the
//! epilogue scale is 1 and the shift is the bias.
//!
//! - [`LinearGrad::bind_input`]: `dX = dY·W` from the f32 master weights (PyTorch `[out, in]`),
//!   written in the input's own shape (a flattened feature map `[N, C, H, W]` keeps its padded
//!   rows; pad slots get zeros).
//! - [`LinearGrad::bind_weight`]: `dW = Σ_n dYᵀ·x` (`[out, in]`) and `dBias = Σ_n dY` (`[out]`),
//!   f32. The sums run over the batch only, so each invocation owns its outputs and adds the
//!   samples in order: deterministic (bit-identical run to run) in one dispatch, no partials.
//!
//! Both overwrite their outputs (never accumulate).

use super::conv_grad::f32_storage;
use super::{expect_shape, half_bytes, positive};
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{align4, Shape, Tensor};

/// Samples per `grad_input` invocation (`NB` in the shader).
const SAMPLES_PER_INVOCATION: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    plane: u32,
    qpr: u32,
    out: u32,
    oqs: u32,
    feats: u32,
    _pad: u32,
}

/// Checks that `buf` is a storage buffer of at least `len` floats.
pub(crate) fn check_f32(op: &str, what: &str, buf: &wgpu::Buffer, len: usize) -> Result<()> {
    let need = (len * 4) as u64;
    if buf.size() < need || !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::param(
            op,
            format!(
                "{what} buffer of {} bytes ({:?}): needs STORAGE and {need} bytes ({len} f32)",
                buf.size(),
                buf.usage()
            ),
        ));
    }
    Ok(())
}

/// The backward of one linear layer: per-sample input shape `(C, H, W)` and `out` features.
pub struct LinearGrad {
    input: (usize, usize, usize),
    out: usize,
}

impl LinearGrad {
    /// Backward kernels for a [`Linear`](super::linear::Linear) with per-sample input shape
    /// `input = (C, H, W)` (read as `C·H·W` features in PyTorch flatten order) and `out` outputs.
    pub fn new(ctx: &Context, input: (usize, usize, usize), out: usize) -> Result<Self> {
        let (c, h, w) = input;
        for (name, v) in [
            ("input channels", c),
            ("input height", h),
            ("input width", w),
            ("out features", out),
        ] {
            positive("linear_grad", name, v)?;
        }
        // The f32 weight matrix must be bindable whole.
        let bytes = (c * h * w * out * 4) as u64;
        let limit = ctx.limits().max_storage_buffer_binding_size;
        if bytes > limit {
            return Err(Error::TooLarge {
                what: format!("linear_grad weights [{out}, {}]", c * h * w),
                bytes,
                limit,
            });
        }
        Ok(LinearGrad { input, out })
    }

    /// Input features per sample (`C·H·W`): the column count of the weight matrix.
    pub fn in_features(&self) -> usize {
        self.input.0 * self.input.1 * self.input.2
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.out
    }

    /// Floats of the weight (and dW) matrix, `out · in`.
    pub fn weight_len(&self) -> usize {
        self.out * self.in_features()
    }

    /// A zero-filled f32 dW buffer (`[out, in]`) and dBias buffer (`[out]`) of the right sizes.
    pub fn grad_buffers(&self, ctx: &Context) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        Ok((
            f32_storage(ctx, "linear_grad dW", self.weight_len())?,
            f32_storage(ctx, "linear_grad dBias", self.out)?,
        ))
    }

    fn check_x(&self, op: &str, x: Shape) -> Result<()> {
        if (x.c, x.h, x.w) != self.input {
            return Err(Error::shape(
                op,
                format!(
                    "input per sample is {:?}, layer expects {:?}",
                    (x.c, x.h, x.w),
                    self.input
                ),
            ));
        }
        Ok(())
    }

    fn params(&self, n: usize) -> Params {
        let (c, h, w) = self.input;
        Params {
            n: n as u32,
            c: c as u32,
            plane: (h * w) as u32,
            qpr: (align4(h * w) / 4) as u32,
            out: self.out as u32,
            oqs: self.out.div_ceil(4) as u32,
            feats: self.in_features() as u32,
            _pad: 0,
        }
    }

    fn label(&self, what: &str) -> String {
        format!("{what} linear {}->{}", self.in_features(), self.out)
    }

    /// Binds the f32 weights (PyTorch `[out, in]`, at least `out·in` floats, e.g. the trainer's
    /// master copy), dY `[N, 1, 1, out]` and dX (the forward input's shape `[N, C, H, W]`) into the
    /// dX dispatch: `dX[n, f] = Σ_o dY[n, o]·W[o, f]`, overwritten.
    pub fn bind_input(
        &self,
        ctx: &Context,
        weights: &wgpu::Buffer,
        dy: &Tensor,
        dx: &Tensor,
    ) -> Result<Dispatch> {
        let xs = dx.shape();
        self.check_x("linear_grad input", xs)?;
        expect_shape("linear_grad input", "dY", dy, Shape::vector(xs.n, self.out))?;
        check_f32("linear_grad input", "weights", weights, self.weight_len())?;
        let params = self.params(xs.n);
        let tiles = xs.n.div_ceil(SAMPLES_PER_INVOCATION);
        let invocations = (params.qpr * params.c) as u64 * tiles as u64;
        Ok(ctx.dispatch_at(
            self.label("dX"),
            ctx.pipeline("linear_grad", "grad_input", &[])?,
            &[
                (1, &Binding::from(dy)),
                (2, &Binding::from(weights)),
                (3, &Binding::from(dx)),
            ],
            (6, &params),
            grid(invocations, WORKGROUP),
            DispatchStats {
                flops: 2 * (xs.n * self.weight_len()) as u64,
                bytes: half_bytes(dy.shape()) + half_bytes(xs) + self.weight_len() as u64 * 4,
            },
        ))
    }

    /// Binds the forward input `x` (`[N, C, H, W]`), dY `[N, 1, 1, out]` and caller-owned f32
    /// outputs (`dw` of at least `out·in` floats, PyTorch `[out, in]`; `db` of at least `out`)
    /// into the dW/dBias dispatches (one today), overwritten by every run:
    /// `dW[o, f] = Σ_n dY[n, o]·x[n, f]`, `dBias[o] = Σ_n dY[n, o]`, summed in sample order.
    pub fn bind_weight(
        &self,
        ctx: &Context,
        x: &Tensor,
        dy: &Tensor,
        dw: &wgpu::Buffer,
        db: &wgpu::Buffer,
    ) -> Result<Vec<Dispatch>> {
        let xs = x.shape();
        self.check_x("linear_grad weight", xs)?;
        expect_shape(
            "linear_grad weight",
            "dY",
            dy,
            Shape::vector(xs.n, self.out),
        )?;
        check_f32("linear_grad weight", "dW", dw, self.weight_len())?;
        check_f32("linear_grad weight", "dBias", db, self.out)?;
        let params = self.params(xs.n);
        let invocations = (params.qpr * params.c * params.oqs) as u64;
        Ok(vec![ctx.dispatch_at(
            self.label("dW"),
            ctx.pipeline("linear_grad", "grad_weight", &[])?,
            &[
                (0, &Binding::from(x)),
                (1, &Binding::from(dy)),
                (4, &Binding::from(dw)),
                (5, &Binding::from(db)),
            ],
            (6, &params),
            grid(invocations, WORKGROUP),
            DispatchStats {
                flops: 2 * (xs.n * self.weight_len()) as u64 + (xs.n * self.out) as u64,
                bytes: half_bytes(xs)
                    + half_bytes(dy.shape())
                    + (self.weight_len() + self.out) as u64 * 4,
            },
        )])
    }
}
