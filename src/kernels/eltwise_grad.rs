//! `shaders/eltwise_grad.wgsl`: backward of the element-wise kernels for the trainer.
//!
//! - [`activation_backward`]: `dx = dy·act'(·)` from the forward **output** `y` (what follows every
//!   convolution, linear or element-wise op with a fused activation in the tape).
//! - [`prelu_forward`] / [`prelu_backward`]: PReLU with its slopes in an f32 buffer (a trainer's
//!   parameter); the backward works from the forward **input** `x` and also gives the slope gradient.
//! - [`mul_backward`]: `y = a ⊙ g`, `g` of `a`'s shape or broadcast per row (squeeze-excitation gates,
//!   `[N, C, 1, 1]` or a vector `[N, 1, 1, C]`).
//! - [`add_backward`]: the gradient of an add's broadcast operand (`Σ_hw dy`).
//! - [`affine_backward`]: `y = a·scale[c] + shift[c]` with constant scale: `da = dy·scale`.
//!
//! Every output is overwritten (never accumulated). Sums over positions are deterministic two-pass
//! reductions: per (segment, chunk) partials into a scratch f32 buffer made at bind time, then a
//! fixed-order sum of the chunks; results are bit-identical run to run. Gradients of activations
//! are fp16 [`Tensor`]s; parameter gradients (PReLU slopes) are f32 buffers. An output may not be
//! the same tensor as an input (wgpu forbids binding one buffer for reading and writing at once).

use super::eltwise::{Eltwise, EltwiseOp};
use super::{expect_shape, half_bytes, Activation};
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

/// Most chunks a segment's quads are split into (bounds the partials at `64 · segments` floats).
const MAX_CHUNKS: usize = 64;
/// Target quads per chunk (4 per lane of a 64-lane workgroup) before the cap above applies.
const CHUNK_QUADS: usize = 4 * WORKGROUP as usize;

// Binding indices of `shaders/eltwise_grad.wgsl`.
const B_U: u32 = 0;
const B_DY: u32 = 1;
const B_SLOPE: u32 = 2;
const B_G: u32 = 3;
const B_OUT: u32 = 4;
const B_PART: u32 = 5;
const B_DSUM: u32 = 6;
const B_DG: u32 = 7;
const B_PARAMS: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    plane: u32,
    qpr: u32,
    act: u32,
    slope: f32,
    one_slope: u32,
    g_mode: u32,
    segs: u32,
    seg_outer: u32,
    chunks: u32,
    chunk_quads: u32,
}

impl Params {
    fn of(s: Shape) -> Self {
        Params {
            n: s.n as u32,
            c: s.c as u32,
            plane: s.plane() as u32,
            qpr: (s.row_stride() / 4) as u32,
            ..Default::default()
        }
    }
}

/// How a reduction splits its segments into chunks: segment `k` is the rows `j·segs + k` for
/// `j < outer`, each of `qpr` quads.
fn chunking(p: &mut Params, segs: usize, outer: usize) -> usize {
    let total = outer * p.qpr as usize;
    let chunks = total.div_ceil(CHUNK_QUADS).clamp(1, MAX_CHUNKS);
    let chunk_quads = total.div_ceil(chunks);
    let chunks = total.div_ceil(chunk_quads);
    p.segs = segs as u32;
    p.seg_outer = outer as u32;
    p.chunks = chunks as u32;
    p.chunk_quads = chunk_quads as u32;
    chunks
}

/// One invocation per quad of `s`.
fn quad_grid(s: Shape) -> [u32; 3] {
    grid((s.rows() * s.row_stride() / 4) as u64, WORKGROUP)
}

/// One workgroup per (segment, chunk) of a pass-1 reduction.
fn reduce_grid(p: &Params) -> [u32; 3] {
    grid(
        p.segs as u64 * p.chunks as u64 * WORKGROUP as u64,
        WORKGROUP,
    )
}

/// Checks an f32 storage buffer of at least `len` floats.
fn check_f32(op: &str, what: &str, buf: &wgpu::Buffer, len: usize) -> Result<()> {
    if buf.size() < (len * 4) as u64 || !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::param(
            op,
            format!(
                "{what} buffer of {} bytes ({:?}): needs STORAGE and {} bytes ({len} f32)",
                buf.size(),
                buf.usage(),
                len * 4
            ),
        ));
    }
    Ok(())
}

/// `dx = dy·act'(·)`, computed from the forward output `y` (all three of one shape): identity 1,
/// ReLU `y > 0`, ReLU6 `0 < y < 6`, leaky ReLU `1` for `y > 0` else the slope (which must be
/// positive, so that the sign of the input can be read from `y`), sigmoid `y(1 − y)`, tanh `1 − y²`.
/// The masks follow PyTorch's backward rules (no gradient at the kinks; the leaky slope at 0).
/// PReLU is rejected: its backward needs the input and gives a slope gradient, see
/// [`prelu_backward`].
pub fn activation_backward(
    ctx: &Context,
    act: &Activation,
    y: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
) -> Result<Dispatch> {
    let op = "activation backward";
    let (name, flops) = match act {
        Activation::PRelu(_) => {
            return Err(Error::param(
                op,
                "PReLU's backward needs the forward input and has slope gradients: use prelu_backward",
            ))
        }
        Activation::Leaky(s) if !(*s > 0.0 && s.is_finite()) => {
            return Err(Error::param(
                op,
                format!(
                    "leaky ReLU slope {s}: the derivative is recovered from the output only for a finite slope > 0"
                ),
            ))
        }
        Activation::None => ("identity", 0),
        Activation::Relu => ("relu", 1),
        Activation::Relu6 => ("relu6", 1),
        Activation::Leaky(_) => ("leaky", 1),
        Activation::Sigmoid => ("sigmoid", 3),
        Activation::Tanh => ("tanh", 3),
    };
    let s = y.shape();
    expect_shape(op, "dy", dy, s)?;
    expect_shape(op, "dx", dx, s)?;
    let (code, slope, _) = act.code();
    let mut p = Params::of(s);
    p.act = code;
    p.slope = slope;
    Ok(ctx.dispatch_at(
        format!("d{name} c{} {}x{}", s.c, s.h, s.w),
        ctx.pipeline("eltwise_grad", "act_backward", &[])?,
        &[
            (B_U, &Binding::from(y)),
            (B_DY, &Binding::from(dy)),
            (B_OUT, &Binding::from(dx)),
        ],
        (B_PARAMS, &p),
        quad_grid(s),
        DispatchStats {
            flops: flops * s.numel() as u64,
            bytes: 3 * half_bytes(s),
        },
    ))
}

/// How a PReLU's slopes map onto a tensor.
#[derive(Clone, Copy, PartialEq)]
enum Slopes {
    /// One slope for every element.
    Shared,
    /// One per channel `C`.
    Channels,
    /// One per feature `F` of a vector `[N, 1, 1, F]` (a linear layer's output).
    Features,
}

impl Slopes {
    fn of(shared: bool, s: Shape) -> Self {
        if shared {
            Slopes::Shared
        } else if s.c == 1 && s.h == 1 {
            Slopes::Features
        } else {
            Slopes::Channels
        }
    }
    fn count(self, s: Shape) -> usize {
        match self {
            Slopes::Shared => 1,
            Slopes::Channels => s.c,
            Slopes::Features => s.w,
        }
    }
    fn params(self, s: Shape) -> Params {
        let mut p = Params::of(s);
        p.one_slope = (self == Slopes::Shared) as u32;
        p.g_mode = if self == Slopes::Features { 2 } else { 0 };
        p
    }
}

/// PReLU forward `y = x` for `x ≥ 0`, `slope·x` otherwise, with the slopes read from an f32 storage
/// buffer (a trainer's parameter, updated in place by the optimiser): with `shared` one slope for
/// all elements, else one per channel, or, for a vector `[N, 1, 1, F]` (a linear layer's output),
/// one per feature. `y` has `x`'s shape.
pub fn prelu_forward(
    ctx: &Context,
    slopes: &wgpu::Buffer,
    shared: bool,
    x: &Tensor,
    y: &Tensor,
) -> Result<Dispatch> {
    let op = "prelu forward";
    let s = x.shape();
    expect_shape(op, "output", y, s)?;
    let mode = Slopes::of(shared, s);
    check_f32(op, "slopes", slopes, mode.count(s))?;
    let p = mode.params(s);
    Ok(ctx.dispatch_at(
        format!("prelu c{} {}x{}", s.c, s.h, s.w),
        ctx.pipeline("eltwise_grad", "prelu_forward", &[])?,
        &[
            (B_U, &Binding::from(x)),
            (B_SLOPE, &Binding::from(slopes)),
            (B_OUT, &Binding::from(y)),
        ],
        (B_PARAMS, &p),
        quad_grid(s),
        DispatchStats {
            flops: s.numel() as u64,
            bytes: 2 * half_bytes(s) + mode.count(s) as u64 * 4,
        },
    ))
}

/// PReLU backward from the forward input `x`: `dx = dy` where `x > 0`, `slope·dy` elsewhere
/// (PyTorch's rule at 0), and the slope gradient `dslope = Σ dy·x` over the elements with `x < 0`
/// (f32, 1 value when `shared`, else one per channel, or per feature of a vector `[N, 1, 1, F]`, as
/// [`prelu_forward`]). `x`, `dy` and `dx` have one shape. Record the dispatches in order: per
/// channel or shared, pass 1 writes `dx` and per-chunk partials, pass 2 sums them in a fixed order
/// into `dslope`; per feature it is one dispatch looping over the batch.
pub fn prelu_backward(
    ctx: &Context,
    slopes: &wgpu::Buffer,
    shared: bool,
    x: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    dslope: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let op = "prelu backward";
    let s = x.shape();
    expect_shape(op, "dy", dy, s)?;
    expect_shape(op, "dx", dx, s)?;
    let mode = Slopes::of(shared, s);
    let count = mode.count(s);
    check_f32(op, "slopes", slopes, count)?;
    check_f32(op, "dslope", dslope, count)?;
    let mut p = mode.params(s);
    let label = format!("dprelu c{} {}x{}", s.c, s.h, s.w);
    let stats = DispatchStats {
        flops: 3 * s.numel() as u64,
        bytes: 3 * half_bytes(s) + 2 * count as u64 * 4,
    };
    if mode == Slopes::Features {
        return Ok(vec![ctx.dispatch_at(
            label,
            ctx.pipeline("eltwise_grad", "prelu_backward_features", &[])?,
            &[
                (B_U, &Binding::from(x)),
                (B_DY, &Binding::from(dy)),
                (B_SLOPE, &Binding::from(slopes)),
                (B_OUT, &Binding::from(dx)),
                (B_DSUM, &Binding::from(dslope)),
            ],
            (B_PARAMS, &p),
            grid(p.qpr as u64, WORKGROUP),
            stats,
        )]);
    }
    let (segs, outer) = match mode {
        Slopes::Shared => (1, s.rows()),
        _ => (s.c, s.n),
    };
    let chunks = chunking(&mut p, segs, outer);
    let part = super::conv_grad::f32_storage(ctx, "prelu partials", chunks * segs)?;
    let d1 = ctx.dispatch_at(
        label,
        ctx.pipeline("eltwise_grad", "prelu_backward", &[])?,
        &[
            (B_U, &Binding::from(x)),
            (B_DY, &Binding::from(dy)),
            (B_SLOPE, &Binding::from(slopes)),
            (B_OUT, &Binding::from(dx)),
            (B_PART, &Binding::from(&part)),
        ],
        (B_PARAMS, &p),
        reduce_grid(&p),
        DispatchStats {
            bytes: stats.bytes + (chunks * segs * 4) as u64,
            ..stats
        },
    );
    Ok(vec![
        d1,
        finalize_f32(ctx, &p, &part, dslope, "dprelu slopes")?,
    ])
}

/// Pass 2 into an f32 buffer.
fn finalize_f32(
    ctx: &Context,
    p: &Params,
    part: &wgpu::Buffer,
    out: &wgpu::Buffer,
    label: &str,
) -> Result<Dispatch> {
    let (segs, chunks) = (p.segs as u64, p.chunks as u64);
    Ok(ctx.dispatch_at(
        format!("{label} finalize"),
        ctx.pipeline("eltwise_grad", "finalize_f32", &[])?,
        &[
            (B_PART, &Binding::from(part)),
            (B_DSUM, &Binding::from(out)),
        ],
        (B_PARAMS, p),
        grid(segs, WORKGROUP),
        DispatchStats {
            flops: segs * chunks,
            bytes: (chunks + 1) * segs * 4,
        },
    ))
}

/// Pass 2 into an fp16 tensor (`[N, C, 1, 1]` or `[N, 1, 1, C]`, per `p.g_mode`).
fn finalize_half(
    ctx: &Context,
    p: &Params,
    part: &wgpu::Buffer,
    out: &Tensor,
    label: &str,
) -> Result<Dispatch> {
    let (segs, chunks) = (p.segs as u64, p.chunks as u64);
    Ok(ctx.dispatch_at(
        format!("{label} finalize"),
        ctx.pipeline("eltwise_grad", "finalize_half", &[])?,
        &[(B_PART, &Binding::from(part)), (B_DG, &Binding::from(out))],
        (B_PARAMS, p),
        quad_grid(out.shape()),
        DispatchStats {
            flops: segs * chunks,
            bytes: chunks * segs * 4 + half_bytes(out.shape()),
        },
    ))
}

/// How a broadcast operand `b` relates to the full shape `s`: 0 same shape, 1 `[N, C, 1, 1]`,
/// 2 a vector `[N, 1, 1, C]` (the modes of `eltwise.wgsl`).
fn broadcast_mode(op: &str, role: &str, s: Shape, b: Shape) -> Result<u32> {
    if b == s {
        Ok(0)
    } else if b == Shape::new(s.n, s.c, 1, 1) {
        Ok(1)
    } else if b == Shape::vector(s.n, s.c) {
        Ok(2)
    } else {
        Err(Error::shape(
            op,
            format!(
                "{role} is {:?}; expected {:?}, [{n}, {c}, 1, 1] or [{n}, 1, 1, {c}]",
                b.dims(),
                s.dims(),
                n = s.n,
                c = s.c
            ),
        ))
    }
}

/// Backward of `y = a ⊙ g` ([`Eltwise::Mul`]): `da = dy ⊙ g` (`a`'s shape) and `dg` (`g`'s shape):
/// `dy ⊙ a` when `g` has `a`'s shape, else, for a gate broadcast per channel (`[N, C, 1, 1]` or a
/// vector `[N, 1, 1, C]`, as the forward takes), `dg[n, c] = Σ_hw dy·a` by a deterministic two-pass
/// reduction. `dy` has `a`'s shape. Record the dispatches in order.
pub fn mul_backward(
    ctx: &Context,
    a: &Tensor,
    g: &Tensor,
    dy: &Tensor,
    da: &Tensor,
    dg: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "mul backward";
    let s = a.shape();
    expect_shape(op, "dy", dy, s)?;
    expect_shape(op, "da", da, s)?;
    let mode = broadcast_mode(op, "g", s, g.shape())?;
    expect_shape(op, "dg", dg, g.shape())?;
    let mut p = Params::of(s);
    p.g_mode = mode;
    let label = format!("dmul c{} {}x{}", s.c, s.h, s.w);
    if mode == 0 {
        return Ok(vec![ctx.dispatch_at(
            label,
            ctx.pipeline("eltwise_grad", "mul_backward_same", &[])?,
            &[
                (B_U, &Binding::from(a)),
                (B_DY, &Binding::from(dy)),
                (B_G, &Binding::from(g)),
                (B_OUT, &Binding::from(da)),
                (B_DG, &Binding::from(dg)),
            ],
            (B_PARAMS, &p),
            quad_grid(s),
            DispatchStats {
                flops: 2 * s.numel() as u64,
                bytes: 5 * half_bytes(s),
            },
        )]);
    }
    let chunks = chunking(&mut p, s.rows(), 1);
    let part = super::conv_grad::f32_storage(ctx, "mul partials", chunks * s.rows())?;
    let d1 = ctx.dispatch_at(
        label.clone(),
        ctx.pipeline("eltwise_grad", "mul_backward_rows", &[])?,
        &[
            (B_U, &Binding::from(a)),
            (B_DY, &Binding::from(dy)),
            (B_G, &Binding::from(g)),
            (B_OUT, &Binding::from(da)),
            (B_PART, &Binding::from(&part)),
        ],
        (B_PARAMS, &p),
        reduce_grid(&p),
        DispatchStats {
            flops: 3 * s.numel() as u64,
            bytes: 3 * half_bytes(s) + half_bytes(g.shape()) + (chunks * s.rows() * 4) as u64,
        },
    );
    Ok(vec![d1, finalize_half(ctx, &p, &part, dg, &label)?])
}

/// Backward of `y = a + b` ([`Eltwise::Add`]) for the operand `b`: `db = dy` when `b` has `dy`'s
/// shape (a copy), else, for `b` broadcast per channel (`[N, C, 1, 1]` or a vector `[N, 1, 1, C]`),
/// `db[n, c] = Σ_hw dy` by a deterministic two-pass reduction. (`a`'s gradient is `dy` itself and
/// needs no kernel.) Record the dispatches in order.
pub fn add_backward(ctx: &Context, dy: &Tensor, db: &Tensor) -> Result<Vec<Dispatch>> {
    let op = "add backward";
    let s = dy.shape();
    let mode = broadcast_mode(op, "db", s, db.shape())?;
    if mode == 0 {
        return Ok(vec![activation_backward(
            ctx,
            &Activation::None,
            dy,
            dy,
            db,
        )?]);
    }
    let mut p = Params::of(s);
    p.g_mode = mode;
    let chunks = chunking(&mut p, s.rows(), 1);
    let part = super::conv_grad::f32_storage(ctx, "add partials", chunks * s.rows())?;
    let label = format!("dadd c{} {}x{}", s.c, s.h, s.w);
    let d1 = ctx.dispatch_at(
        label.clone(),
        ctx.pipeline("eltwise_grad", "sum_rows", &[])?,
        &[(B_DY, &Binding::from(dy)), (B_PART, &Binding::from(&part))],
        (B_PARAMS, &p),
        reduce_grid(&p),
        DispatchStats {
            flops: s.numel() as u64,
            bytes: half_bytes(s) + (chunks * s.rows() * 4) as u64,
        },
    );
    Ok(vec![d1, finalize_half(ctx, &p, &part, db, &label)?])
}

/// Backward of the constant affine `y = a·scale[c] + shift[c]` ([`Eltwise::Affine`]) for `a`:
/// `da = dy·scale[c]` (`scale`: one value for all channels or one per channel; `da` has `dy`'s
/// shape). The constants are uploaded once, here.
pub fn affine_backward(ctx: &Context, scale: &[f32], dy: &Tensor, da: &Tensor) -> Result<Dispatch> {
    let op = EltwiseOp::new(
        Eltwise::Affine {
            scale: scale.to_vec(),
            shift: vec![0.0],
        },
        Activation::None,
    )?;
    op.bind(ctx, dy, None, None, da)
}
