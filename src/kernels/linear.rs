//! `shaders/linear.wgsl`: batched fully connected layer with the fused epilogue.
//!
//! Input: any tensor `[N, C, H, W]`, read as `C·H·W` features in PyTorch flatten order (a vector
//! batch is `[N, 1, 1, F]`). Output: `[N, 1, 1, out]`.

use super::{expect_shape, f32_buffer, half_bytes, positive, Epilogue};
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    fq: u32,
    out: u32,
    act: u32,
    prelu_pc: u32,
    slope: f32,
    _pad: [u32; 2],
}

/// A configured linear layer for inputs of one per-sample shape `(C, H, W)`.
pub struct Linear {
    input: (usize, usize, usize),
    out: usize,
    weights: Tensor,
    epilogue: wgpu::Buffer,
    act: (u32, f32, bool),
}

impl Linear {
    /// Weights in PyTorch order `[out, C·H·W]` for per-sample input shape `input = (C, H, W)`;
    /// bias and activation go in `epilogue`.
    pub fn new(
        ctx: &Context,
        input: (usize, usize, usize),
        out: usize,
        weights: &[f32],
        epilogue: &Epilogue,
    ) -> Result<Self> {
        let (c, h, w) = input;
        for (name, v) in [
            ("input channels", c),
            ("input height", h),
            ("input width", w),
            ("out features", out),
        ] {
            positive("linear", name, v)?;
        }
        let feats = c * h * w;
        if weights.len() != out * feats {
            return Err(Error::shape(
                "linear weights",
                format!(
                    "expected {} values ([{out}, {feats}]), found {}",
                    out * feats,
                    weights.len()
                ),
            ));
        }
        // Each weight row is laid out like the input's padded rows (zeros in the pad slots): the
        // tensor [out, C, H, W] holding the PyTorch weights in order has exactly that layout.
        let weights = Tensor::from_f32(ctx, Shape::new(out, c, h, w), weights, "linear weights")?;
        let packed = epilogue.pack("linear epilogue", out)?;
        Ok(Linear {
            input,
            out,
            weights,
            epilogue: f32_buffer(ctx, "linear epilogue", &packed),
            act: epilogue.act.code(),
        })
    }

    /// The fp16 weight tensor the forward reads (training-forward hook: a trainer refreshes it
    /// from its f32 master weights after each optimiser step, e.g. with the cast kernel, no
    /// transpose). Shape `[out, C, H, W]`: PyTorch's `[out, in]` matrix, **not transposed**, with
    /// each output row viewed as one input sample `(C, H, W)`, so its logical NCHW order is exactly
    /// PyTorch's row-major `[out, in]` order and its padded rows match the input's.
    pub fn weight_tensor(&self) -> &Tensor {
        &self.weights
    }

    /// The f32 epilogue buffer the forward reads (training-forward hook): `3·out` floats laid out
    /// `[scale(out) | shift(out) | prelu(out)]` (scale 1 and shift = bias for a plain linear
    /// layer; the PReLU slopes are used only when the activation has one per output). Usage
    /// `STORAGE | COPY_DST`: a trainer writes the bias at offset `out` floats.
    pub fn epilogue_buffer(&self) -> &wgpu::Buffer {
        &self.epilogue
    }

    /// Per-sample input shape `(C, H, W)`.
    pub fn input_dims(&self) -> (usize, usize, usize) {
        self.input
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.out
    }

    /// Output shape `[N, 1, 1, out]` for input `x`.
    pub fn output_shape(&self, x: Shape) -> Result<Shape> {
        if (x.c, x.h, x.w) != self.input {
            return Err(Error::shape(
                "linear",
                format!(
                    "input per sample is {:?}, layer expects {:?}",
                    (x.c, x.h, x.w),
                    self.input
                ),
            ));
        }
        Ok(Shape::vector(x.n, self.out))
    }

    /// Binds input and output.
    pub fn bind(&self, ctx: &Context, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
        let out = self.output_shape(x.shape())?;
        expect_shape("linear", "output", y, out)?;
        let xs = x.shape();
        let params = Params {
            n: xs.n as u32,
            fq: (xs.c * xs.row_stride() / 4) as u32,
            out: self.out as u32,
            act: self.act.0,
            prelu_pc: self.act.2 as u32,
            slope: self.act.1,
            _pad: [0; 2],
        };
        let stats = DispatchStats {
            flops: 2 * (xs.numel() * self.out) as u64,
            bytes: half_bytes(xs) + half_bytes(out) + (self.out * xs.c * xs.plane() * 2) as u64,
        };
        Ok(ctx.dispatch(
            format!("linear {}->{}", xs.c * xs.plane(), self.out),
            ctx.pipeline("linear", "linear", &[])?,
            &[
                x.into(),
                (&self.weights).into(),
                (&self.epilogue).into(),
                y.into(),
            ],
            &params,
            grid((self.out.div_ceil(4) * xs.n) as u64, WORKGROUP),
            stats,
        ))
    }
}
