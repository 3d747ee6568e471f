//! `shaders/conv.wgsl`: direct k×k convolution (dense, grouped, depthwise), static or predicted
//! weights, fused epilogue.

use super::{expect_shape, f32_buffer, half_bytes, positive, residual_binding, Epilogue, Residual};
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

/// How out-of-range input positions are filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Padding {
    /// Zeros.
    #[default]
    Zero,
    /// Mirror about the edge, edge not repeated (PyTorch `ReflectionPad2d`).
    Reflect,
}

/// Geometry of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Stride (y, x).
    pub stride: (usize, usize),
    /// Padding on each side (y, x).
    pub pad: (usize, usize),
    /// Extra zero padding at the end of each axis only (bottom, right), on top of `pad`:
    /// TensorFlow / Keras `'same'` pads one more at the end than at the start when the total is
    /// odd (kernel 5, stride 2, even input). Only the output size depends on it: every kernel
    /// bounds its reads by the input size and its writes by the output size.
    pub pad_extra: (usize, usize),
    /// Dilation (y, x).
    pub dilation: (usize, usize),
    /// Groups: 1 dense, `cin` depthwise.
    pub groups: usize,
    /// Padding mode.
    pub padding: Padding,
}

impl ConvSpec {
    /// A dense square convolution `cin → cout`, kernel `k`, stride `s`, padding `pad`.
    pub fn new(cin: usize, cout: usize, k: usize, s: usize, pad: usize) -> Self {
        ConvSpec {
            cin,
            cout,
            kernel: (k, k),
            stride: (s, s),
            pad: (pad, pad),
            pad_extra: (0, 0),
            dilation: (1, 1),
            groups: 1,
            padding: Padding::Zero,
        }
    }
    /// TensorFlow / Keras `'same'` padding for a square kernel `k` at stride `s` on an input of
    /// `h`×`w`: output `ceil(size / s)`, total padding `max((out − 1)·s + k − size, 0)`, the
    /// smaller half before (`pad`) and the rest after (`pad + pad_extra`).
    pub fn same(mut self, h: usize, w: usize) -> Self {
        let split = |size: usize, k: usize, s: usize| -> (usize, usize) {
            let out = size.div_ceil(s.max(1));
            let total = ((out.max(1) - 1) * s + k).saturating_sub(size);
            (total / 2, total - total / 2 - total / 2)
        };
        let (py, ey) = split(h, self.kernel.0, self.stride.0);
        let (px, ex) = split(w, self.kernel.1, self.stride.1);
        self.pad = (py, px);
        self.pad_extra = (ey, ex);
        self
    }
    /// A depthwise square convolution on `c` channels.
    pub fn depthwise(c: usize, k: usize, s: usize, pad: usize) -> Self {
        ConvSpec {
            groups: c,
            ..Self::new(c, c, k, s, pad)
        }
    }
    /// Sets the groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    /// Sets reflection padding.
    pub fn reflect(mut self) -> Self {
        self.padding = Padding::Reflect;
        self
    }
    /// Sets the dilation.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = (d, d);
        self
    }
    /// Weights per output channel: `cin/groups · kh · kw`.
    pub fn weights_per_output(&self) -> usize {
        self.cin / self.groups.max(1) * self.kernel.0 * self.kernel.1
    }
    /// Weight count `cout · cin/groups · kh · kw` (PyTorch `[cout, cin/groups, kh, kw]`).
    pub fn weight_len(&self) -> usize {
        self.cout * self.weights_per_output()
    }

    fn validate(&self) -> Result<()> {
        let op = "conv";
        for (name, v) in [
            ("cin", self.cin),
            ("cout", self.cout),
            ("kernel height", self.kernel.0),
            ("kernel width", self.kernel.1),
            ("stride y", self.stride.0),
            ("stride x", self.stride.1),
            ("dilation y", self.dilation.0),
            ("dilation x", self.dilation.1),
            ("groups", self.groups),
        ] {
            positive(op, name, v)?;
        }
        if !self.cin.is_multiple_of(self.groups) || !self.cout.is_multiple_of(self.groups) {
            return Err(Error::param(
                op,
                format!(
                    "groups {} must divide cin {} and cout {}",
                    self.groups, self.cin, self.cout
                ),
            ));
        }
        Ok(())
    }

    /// The uniform geometry for input `x` and output `out` (both already checked).
    pub(crate) fn geometry(&self, x: Shape, out: Shape) -> Geometry {
        Geometry {
            n: x.n as u32,
            cin: self.cin as u32,
            h: x.h as u32,
            w: x.w as u32,
            cout: self.cout as u32,
            ho: out.h as u32,
            wo: out.w as u32,
            kh: self.kernel.0 as u32,
            kw: self.kernel.1 as u32,
            sy: self.stride.0 as u32,
            sx: self.stride.1 as u32,
            py: self.pad.0 as u32,
            px: self.pad.1 as u32,
            dy: self.dilation.0 as u32,
            dx: self.dilation.1 as u32,
            cin_g: (self.cin / self.groups) as u32,
            cout_g: (self.cout / self.groups) as u32,
            reflect: (self.padding == Padding::Reflect) as u32,
        }
    }

    /// Output shape for an input shape, or an error naming the mismatch.
    pub fn output_shape(&self, x: Shape) -> Result<Shape> {
        self.validate()?;
        if x.c != self.cin {
            return Err(Error::shape(
                "conv",
                format!("input has {} channels, conv expects {}", x.c, self.cin),
            ));
        }
        if self.padding == Padding::Reflect && self.pad_extra != (0, 0) {
            return Err(Error::param(
                "conv",
                "extra end padding is zero padding only (not reflect)",
            ));
        }
        if self.padding == Padding::Reflect && (self.pad.0 >= x.h || self.pad.1 >= x.w) {
            return Err(Error::param(
                "conv",
                format!(
                    "reflect padding {:?} needs an input larger than it, got {}x{}",
                    self.pad, x.h, x.w
                ),
            ));
        }
        let out = |size: usize, k: usize, s: usize, p: usize, d: usize| -> Option<usize> {
            let span = d * (k - 1) + 1;
            (size + 2 * p).checked_sub(span).map(|v| v / s + 1)
        };
        match (
            out(
                x.h + self.pad_extra.0,
                self.kernel.0,
                self.stride.0,
                self.pad.0,
                self.dilation.0,
            ),
            out(
                x.w + self.pad_extra.1,
                self.kernel.1,
                self.stride.1,
                self.pad.1,
                self.dilation.1,
            ),
        ) {
            (Some(h), Some(w)) => Ok(Shape::new(x.n, self.cout, h, w)),
            _ => Err(Error::shape(
                "conv",
                format!(
                    "input {}x{} is smaller than the dilated kernel {:?} with padding {:?}",
                    x.h, x.w, self.kernel, self.pad
                ),
            )),
        }
    }
}

/// The convolution geometry every convolution kernel's uniforms start with (forward and
/// backward share it field for field, as their WGSL `Params` structs do).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Geometry {
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    sy: u32,
    sx: u32,
    py: u32,
    px: u32,
    dy: u32,
    dx: u32,
    cin_g: u32,
    cout_g: u32,
    reflect: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    geometry: Geometry,
    w_nstride: u32,
    w_ostride: u32,
    act: u32,
    res_mode: u32,
    prelu_pc: u32,
    slope: f32,
}

/// A configured convolution: geometry, weights and epilogue, ready to bind to tensors.
pub struct Conv2d {
    spec: ConvSpec,
    weights: Tensor,
    epilogue: wgpu::Buffer,
    act: (u32, f32, bool),
}

impl Conv2d {
    /// A convolution with static weights in PyTorch order `[cout, cin/groups, kh, kw]`.
    pub fn new(
        ctx: &Context,
        spec: ConvSpec,
        weights: &[f32],
        epilogue: &Epilogue,
    ) -> Result<Self> {
        spec.validate()?;
        if weights.len() != spec.weight_len() {
            return Err(Error::shape(
                "conv weights",
                format!(
                    "expected {} values ([{}, {}, {}, {}]), found {}",
                    spec.weight_len(),
                    spec.cout,
                    spec.cin / spec.groups,
                    spec.kernel.0,
                    spec.kernel.1,
                    weights.len()
                ),
            ));
        }
        let w = Tensor::flat(ctx, weights, "conv weights")?;
        Self::with_weights(ctx, spec, w, epilogue)
    }

    /// A convolution whose weights live in a GPU tensor written at run time (predicted kernels).
    /// Per sample it holds `[cout, cin/groups, kh, kw]` either as one row (shape `[n, 1, 1, L]`) or
    /// as `cout` rows (shape `[n, cout, 1, cin/groups·kh·kw]`); `n` is 1 (shared) or the batch.
    pub fn with_weights(
        ctx: &Context,
        spec: ConvSpec,
        weights: Tensor,
        epilogue: &Epilogue,
    ) -> Result<Self> {
        spec.validate()?;
        let packed = epilogue.pack("conv epilogue", spec.cout)?;
        let s = weights.shape();
        let per_sample = s.c * s.h * s.w;
        let ok_layout = per_sample == spec.weight_len()
            && (s.plane() == spec.weight_len()
                || (s.c == spec.cout && s.plane() == spec.weights_per_output()));
        if !ok_layout {
            return Err(Error::shape(
                "conv weights",
                format!(
                    "weight tensor {:?} is neither [n, 1, 1, {}] nor [n, {}, 1, {}]",
                    s.dims(),
                    spec.weight_len(),
                    spec.cout,
                    spec.weights_per_output()
                ),
            ));
        }
        Ok(Conv2d {
            spec,
            weights,
            epilogue: f32_buffer(ctx, "conv epilogue", &packed),
            act: epilogue.act.code(),
        })
    }

    /// The geometry.
    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }

    /// The fp16 weight tensor the kernel reads (a trainer refreshes it from its f32 masters).
    pub fn weight_tensor(&self) -> &Tensor {
        &self.weights
    }

    /// The f32 epilogue buffer `[scale(cout) | shift(cout) | prelu(cout)]` (a trainer writes the
    /// bias into the shift segment after every optimiser step).
    pub fn epilogue_buffer(&self) -> &wgpu::Buffer {
        &self.epilogue
    }

    /// Whether the row-quad fast path applies: whole quads per image row in and out, square kernel,
    /// equal strides and paddings, dilation 1, zero padding, and an input window of at most 6 quads
    /// (the shader's register array) for the 4 outputs.
    fn row_quads(&self, x: Shape, y: Shape) -> bool {
        let s = &self.spec;
        let (k, st, p) = (s.kernel.0, s.stride.0, s.pad.0);
        let window_quads = ((4 * p.div_ceil(4) - p) + 3 * st + k).div_ceil(4);
        s.kernel.0 == s.kernel.1
            && s.stride.0 == s.stride.1
            && s.pad.0 == s.pad.1
            && window_quads <= 6
            && s.dilation == (1, 1)
            && s.padding == Padding::Zero
            && x.w.is_multiple_of(4)
            && y.w.is_multiple_of(4)
    }

    /// Binds input `x`, output `y` (shape from [`ConvSpec::output_shape`]) and an optional residual
    /// of `y`'s shape into a dispatch.
    pub fn bind(
        &self,
        ctx: &Context,
        x: &Tensor,
        y: &Tensor,
        residual: Option<(&Tensor, Residual)>,
    ) -> Result<Dispatch> {
        let spec = &self.spec;
        let out = spec.output_shape(x.shape())?;
        expect_shape("conv", "output", y, out)?;
        let ws = self.weights.shape();
        if ws.n != 1 && ws.n != x.shape().n {
            return Err(Error::shape(
                "conv",
                format!("weights for {} samples, input batch {}", ws.n, x.shape().n),
            ));
        }
        let (res_buf, res_mode) = residual_binding(ctx, "conv", residual, out)?;
        let one_row = ws.plane() == spec.weight_len();
        let w_ostride = if one_row {
            spec.weights_per_output()
        } else {
            ws.row_stride()
        };
        let w_nstride = if ws.n == 1 {
            0
        } else if one_row {
            ws.row_stride()
        } else {
            spec.cout * ws.row_stride()
        };
        let xs = x.shape();
        let cout_g = spec.cout / spec.groups;
        let params = Params {
            geometry: spec.geometry(xs, out),
            w_nstride: w_nstride as u32,
            w_ostride: w_ostride as u32,
            act: self.act.0,
            res_mode: res_mode.code(),
            prelu_pc: self.act.2 as u32,
            slope: self.act.1,
        };
        let quads = out.row_stride() / 4;
        let tile = if cout_g >= 2 { 4 } else { 1 };
        let invocations = quads * cout_g.div_ceil(tile) * spec.groups * out.n;
        let pipeline = if self.row_quads(xs, out) {
            let k = spec.kernel.0 as f64;
            let (s, p, t) = (spec.stride.0 as f64, spec.pad.0 as f64, tile as f64);
            ctx.pipeline(
                "conv",
                "conv_rows",
                &[("RK", k), ("RS", s), ("RP", p), ("RT", t)],
            )?
        } else if tile == 4 {
            ctx.pipeline("conv", "conv_tile4", &[])?
        } else {
            ctx.pipeline("conv", "conv_single", &[])?
        };
        let macs = out.numel() as u64 * spec.weights_per_output() as u64;
        let res_bytes = if res_mode == Residual::None {
            0
        } else {
            half_bytes(out)
        };
        let stats = DispatchStats {
            flops: 2 * macs,
            bytes: half_bytes(xs) + half_bytes(out) + half_bytes(ws) + res_bytes,
        };
        let label = format!(
            "conv{}x{}/s{} {}->{} g{}",
            spec.kernel.0, spec.kernel.1, spec.stride.0, spec.cin, spec.cout, spec.groups
        );
        Ok(ctx.dispatch(
            label,
            pipeline,
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
