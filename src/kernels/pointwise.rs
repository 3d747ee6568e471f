//! `shaders/pointwise.wgsl`: 1×1 convolution as a register-tiled matrix product (8 output channels
//! × 4 positions per invocation) with the fused epilogue.
//!
//! Weights are held transposed as a tensor `[n, cin, 1, cout]` (row `i` holds `W[·, i]`), shared
//! (`n = 1`) or one matrix per sample (modulated weights, see [`super::modulate`]).

use super::{expect_shape, f32_buffer, half_bytes, positive, residual_binding, Epilogue, Residual};
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cin: u32,
    cout: u32,
    plane: u32,
    w_nstride: u32,
    act: u32,
    res_mode: u32,
    prelu_pc: u32,
    slope: f32,
    _pad: [u32; 3],
}

/// Transposes PyTorch `[cout, cin]` (or `[cout, cin, 1, 1]`) weights to the kernel's `[cin, cout]`.
pub fn transpose_weights(w: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let mut t = vec![0.0; cin * cout];
    for o in 0..cout {
        for i in 0..cin {
            t[i * cout + o] = w[o * cin + i];
        }
    }
    t
}

/// How many output positions one invocation computes (a per-adapter tuning knob).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointwiseTile {
    /// 8 channels × 4 positions (`pointwise`): GPUs.
    Narrow,
    /// 8 channels × 16 positions (`pointwise_wide`): CPU devices such as lavapipe, where loads
    /// dominate (about 2x faster there).
    Wide,
}

impl PointwiseTile {
    /// The default for a context: wide on CPU adapters, narrow elsewhere (and on host devices,
    /// whose adapter is unknown).
    pub fn for_context(ctx: &Context) -> Self {
        match &ctx.adapter_info {
            Some(i) if i.device_type == wgpu::DeviceType::Cpu => PointwiseTile::Wide,
            _ => PointwiseTile::Narrow,
        }
    }
}

/// A configured pointwise convolution.
pub struct Pointwise {
    cin: usize,
    cout: usize,
    weights: Tensor,
    epilogue: wgpu::Buffer,
    act: (u32, f32, bool),
    tile: Option<PointwiseTile>,
}

impl Pointwise {
    /// Overrides the per-adapter tile choice (tests, autotuning).
    pub fn with_tile(mut self, tile: PointwiseTile) -> Self {
        self.tile = Some(tile);
        self
    }

    /// Static weights in PyTorch order `[cout, cin]` (a `[cout, cin, 1, 1]` conv weight).
    pub fn new(
        ctx: &Context,
        cin: usize,
        cout: usize,
        weights: &[f32],
        epilogue: &Epilogue,
    ) -> Result<Self> {
        positive("pointwise", "cin", cin)?;
        positive("pointwise", "cout", cout)?;
        if weights.len() != cin * cout {
            return Err(Error::shape(
                "pointwise weights",
                format!(
                    "expected {} values ([{cout}, {cin}, 1, 1]), found {}",
                    cin * cout,
                    weights.len()
                ),
            ));
        }
        let t = Tensor::from_f32(
            ctx,
            [1, cin, 1, cout],
            &transpose_weights(weights, cin, cout),
            "pointwise weights",
        )?;
        Self::with_weights(ctx, t, epilogue)
    }

    /// Weights already on the GPU in the kernel layout `[n, cin, 1, cout]` (e.g. from
    /// [`super::modulate::Modulate`]); `n` is 1 or the batch.
    pub fn with_weights(ctx: &Context, weights: Tensor, epilogue: &Epilogue) -> Result<Self> {
        let s = weights.shape();
        if s.h != 1 {
            return Err(Error::shape(
                "pointwise weights",
                format!("expected [n, cin, 1, cout], found {:?}", s.dims()),
            ));
        }
        let packed = epilogue.pack("pointwise epilogue", s.w)?;
        Ok(Pointwise {
            cin: s.c,
            cout: s.w,
            weights,
            epilogue: f32_buffer(ctx, "pointwise epilogue", &packed),
            act: epilogue.act.code(),
            tile: None,
        })
    }

    /// The fp16 weight tensor `[n, cin, 1, cout]` the kernel reads (a trainer refreshes it from
    /// its f32 masters).
    pub fn weight_tensor(&self) -> &Tensor {
        &self.weights
    }

    /// The f32 epilogue buffer `[scale(cout) | shift(cout) | prelu(cout)]`.
    pub fn epilogue_buffer(&self) -> &wgpu::Buffer {
        &self.epilogue
    }

    /// Output shape for an input shape.
    pub fn output_shape(&self, x: Shape) -> Result<Shape> {
        if x.c != self.cin {
            return Err(Error::shape(
                "pointwise",
                format!("input has {} channels, layer expects {}", x.c, self.cin),
            ));
        }
        Ok(Shape::new(x.n, self.cout, x.h, x.w))
    }

    /// Binds input, output and an optional residual (output's shape).
    pub fn bind(
        &self,
        ctx: &Context,
        x: &Tensor,
        y: &Tensor,
        residual: Option<(&Tensor, Residual)>,
    ) -> Result<Dispatch> {
        let out = self.output_shape(x.shape())?;
        expect_shape("pointwise", "output", y, out)?;
        let ws = self.weights.shape();
        if ws.n != 1 && ws.n != out.n {
            return Err(Error::shape(
                "pointwise",
                format!("weights for {} samples, input batch {}", ws.n, out.n),
            ));
        }
        let (res_buf, res_mode) = residual_binding(ctx, "pointwise", residual, out)?;
        let params = Params {
            n: out.n as u32,
            cin: self.cin as u32,
            cout: self.cout as u32,
            plane: out.plane() as u32,
            w_nstride: if ws.n == 1 {
                0
            } else {
                (ws.c * ws.row_stride()) as u32
            },
            act: self.act.0,
            res_mode: res_mode.code(),
            prelu_pc: self.act.2 as u32,
            slope: self.act.1,
            _pad: [0; 3],
        };
        let tile = self.tile.unwrap_or_else(|| PointwiseTile::for_context(ctx));
        let quads = out.row_stride() / 4;
        let (entry, per_row) = match tile {
            PointwiseTile::Narrow => ("pointwise", quads),
            PointwiseTile::Wide => ("pointwise_wide", quads.div_ceil(4)),
        };
        let invocations = per_row * self.cout.div_ceil(8) * out.n;
        let res_bytes = if res_mode == Residual::None {
            0
        } else {
            half_bytes(out)
        };
        let stats = DispatchStats {
            flops: 2 * (out.numel() * self.cin) as u64,
            bytes: half_bytes(x.shape()) + half_bytes(out) + half_bytes(ws) + res_bytes,
        };
        Ok(ctx.dispatch(
            format!("pointwise {}->{} {}x{}", self.cin, self.cout, out.h, out.w),
            ctx.pipeline("pointwise", entry, &[])?,
            &[
                x.into(),
                (&self.weights).into(),
                (&self.epilogue).into(),
                res_buf,
                y.into(),
            ],
            &params,
            grid(invocations as u64, WORKGROUP),
            stats,
        ))
    }
}
