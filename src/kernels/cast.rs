//! `shaders/cast.wgsl`: moving parameters between the trainer's f32 masters and fp16 tensors, and
//! small f32 buffer operations (copy, sum of two, fill) for gradient bookkeeping.
//!
//! - [`to_half`]: f32 values (PyTorch layout) into an fp16 [`Tensor`], optionally as a per-batch
//!   transpose ([`Transpose`]): refreshes the forward's half weights from the masters after an
//!   optimiser step (pointwise weights are stored `[cin, cout]` where PyTorch has `[cout, cin]`).
//! - [`to_f32`]: the inverse, fp16 tensor into f32 (gradients of predicted weights, which a kernel
//!   produced as fp16, into an f32 gradient buffer).
//! - [`copy_f32`], [`add_f32`], [`fill_f32`]: f32 ranges.
//!
//! Every function returns one [`Dispatch`] built once and recorded every step. f32 buffers must
//! have `STORAGE` usage (as made by [`f32_storage`](super::conv_grad::f32_storage)); a buffer a
//! dispatch writes may not also be one it reads (wgpu forbids a buffer being bound read-only and
//! writable in the same dispatch).

use super::half_bytes;
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::Tensor;

/// A per-batch matrix transpose between the flat f32 side and the tensor side of a cast.
///
/// The flat side holds `batch` matrices `[rows, cols]` row-major; the tensor side, read as a flat
/// sequence of its logical elements (NCHW order, padding ignored), holds their transposes
/// `[cols, rows]`: tensor element `(b, j, i)` is flat element `b·rows·cols + i·cols + j`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transpose {
    /// Number of matrices.
    pub batch: usize,
    /// Rows of each matrix on the flat (f32) side.
    pub rows: usize,
    /// Columns of each matrix on the flat (f32) side.
    pub cols: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    plane: u32,
    row_quads: u32,
    off: u32,
    off2: u32,
    transpose: u32,
    rows: u32,
    cols: u32,
    value: f32,
    _p: [u32; 3],
}

/// The uniform binding slot of every cast entry point.
const UNIFORM: u32 = 7;

/// Checks an f32 buffer can be bound as storage and holds `[offset, offset + len)`.
fn check_f32(op: &str, role: &str, buf: &wgpu::Buffer, offset: usize, len: usize) -> Result<()> {
    if !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::param(
            op,
            format!("{role} buffer lacks STORAGE usage ({:?})", buf.usage()),
        ));
    }
    let end = offset
        .checked_add(len)
        .filter(|e| *e <= u32::MAX as usize)
        .ok_or_else(|| Error::param(op, format!("{role} range {offset}+{len} overflows u32")))?;
    let have = (buf.size() / 4) as usize;
    if end > have {
        return Err(Error::shape(
            op,
            format!("{role} needs floats [{offset}, {end}) but its buffer holds {have}"),
        ));
    }
    Ok(())
}

fn check_len(op: &str, len: usize) -> Result<()> {
    if len == 0 {
        return Err(Error::param(op, "len must be at least 1"));
    }
    if len > u32::MAX as usize {
        return Err(Error::param(op, format!("len {len} exceeds u32")));
    }
    Ok(())
}

fn check_distinct(op: &str, a: &wgpu::Buffer, b: &wgpu::Buffer, what: &str) -> Result<()> {
    if a == b {
        return Err(Error::param(
            op,
            format!("{what} are the same buffer: a dispatch cannot read and write one buffer"),
        ));
    }
    Ok(())
}

/// Common parameters of the two tensor casts.
fn cast_params(
    op: &str,
    t: &Tensor,
    offset: usize,
    transpose: Option<Transpose>,
) -> Result<Params> {
    let s = t.shape();
    let mut p = Params {
        count: (s.stored() / 4) as u32,
        plane: s.plane() as u32,
        row_quads: (s.row_stride() / 4) as u32,
        off: offset as u32,
        ..Default::default()
    };
    if let Some(tr) = transpose {
        let numel = tr
            .batch
            .checked_mul(tr.rows)
            .and_then(|v| v.checked_mul(tr.cols));
        if numel != Some(s.numel()) || tr.batch == 0 {
            return Err(Error::shape(
                op,
                format!(
                    "transpose {}×[{}, {}] does not cover the {} elements of tensor {:?}",
                    tr.batch,
                    tr.rows,
                    tr.cols,
                    s.numel(),
                    s.dims()
                ),
            ));
        }
        p.transpose = 1;
        p.rows = tr.rows as u32;
        p.cols = tr.cols as u32;
    }
    Ok(p)
}

/// Writes `src[src_offset..src_offset + numel]` (f32) into the fp16 tensor `dst`: logical element
/// `l` of `dst` (NCHW order, padding ignored) reads `src[src_offset + l]`, or with `transpose`
/// the element given by [`Transpose`]. Padding lanes are written as 0; values are rounded to the
/// nearest half and clamped to ±65504.
pub fn to_half(
    ctx: &Context,
    src: &wgpu::Buffer,
    src_offset: usize,
    dst: &Tensor,
    transpose: Option<Transpose>,
) -> Result<Dispatch> {
    let op = "cast to_half";
    let s = dst.shape();
    check_f32(op, "source", src, src_offset, s.numel())?;
    let params = cast_params(op, dst, src_offset, transpose)?;
    let pipeline = ctx.pipeline("cast", "to_half", &[])?;
    Ok(ctx.dispatch_at(
        format!("to_half {:?}", s.dims()),
        pipeline,
        &[(1, &Binding::from(dst)), (2, &Binding::from(src))],
        (UNIFORM, &params),
        grid(params.count as u64, WORKGROUP),
        DispatchStats {
            flops: 0,
            bytes: s.numel() as u64 * 4 + s.bytes(),
        },
    ))
}

/// Writes the fp16 tensor `src` into `dst[dst_offset..dst_offset + numel]` (f32): logical element
/// `l` of `src` goes to `dst[dst_offset + l]`, or with `transpose` to the element given by
/// [`Transpose`] (the inverse of [`to_half`]). Other floats of `dst` are left alone.
pub fn to_f32(
    ctx: &Context,
    src: &Tensor,
    dst: &wgpu::Buffer,
    dst_offset: usize,
    transpose: Option<Transpose>,
) -> Result<Dispatch> {
    let op = "cast to_f32";
    let s = src.shape();
    check_f32(op, "destination", dst, dst_offset, s.numel())?;
    let params = cast_params(op, src, dst_offset, transpose)?;
    let pipeline = ctx.pipeline("cast", "to_f32", &[])?;
    Ok(ctx.dispatch_at(
        format!("to_f32 {:?}", s.dims()),
        pipeline,
        &[(0, &Binding::from(src)), (3, &Binding::from(dst))],
        (UNIFORM, &params),
        grid(params.count as u64, WORKGROUP),
        DispatchStats {
            flops: 0,
            bytes: half_bytes(s) + s.numel() as u64 * 4,
        },
    ))
}

/// `dst[dst_offset + i] = src[src_offset + i]` for `i < len`. `src` and `dst` must be different
/// buffers.
pub fn copy_f32(
    ctx: &Context,
    src: &wgpu::Buffer,
    src_offset: usize,
    dst: &wgpu::Buffer,
    dst_offset: usize,
    len: usize,
) -> Result<Dispatch> {
    let op = "copy_f32";
    check_len(op, len)?;
    check_f32(op, "source", src, src_offset, len)?;
    check_f32(op, "destination", dst, dst_offset, len)?;
    check_distinct(op, src, dst, "source and destination")?;
    let params = Params {
        count: len as u32,
        off: src_offset as u32,
        off2: dst_offset as u32,
        ..Default::default()
    };
    let pipeline = ctx.pipeline("cast", "copy_f32", &[])?;
    Ok(ctx.dispatch_at(
        format!("copy_f32 {len}"),
        pipeline,
        &[(2, &Binding::from(src)), (3, &Binding::from(dst))],
        (UNIFORM, &params),
        grid(len as u64, WORKGROUP),
        DispatchStats {
            flops: 0,
            bytes: len as u64 * 8,
        },
    ))
}

/// `out[i] = a[i] + b[i]` for `i < len` (f32, from offset 0). `a` and `b` may be the same buffer;
/// `out` may alias neither.
pub fn add_f32(
    ctx: &Context,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    out: &wgpu::Buffer,
    len: usize,
) -> Result<Dispatch> {
    let op = "add_f32";
    check_len(op, len)?;
    check_f32(op, "a", a, 0, len)?;
    check_f32(op, "b", b, 0, len)?;
    check_f32(op, "out", out, 0, len)?;
    check_distinct(op, a, out, "a and out")?;
    check_distinct(op, b, out, "b and out")?;
    let params = Params {
        count: len as u32,
        ..Default::default()
    };
    let pipeline = ctx.pipeline("cast", "add_f32", &[])?;
    Ok(ctx.dispatch_at(
        format!("add_f32 {len}"),
        pipeline,
        &[
            (2, &Binding::from(a)),
            (3, &Binding::from(out)),
            (4, &Binding::from(b)),
        ],
        (UNIFORM, &params),
        grid(len as u64, WORKGROUP),
        DispatchStats {
            flops: len as u64,
            bytes: len as u64 * 12,
        },
    ))
}

/// `dst[offset + i] = value` for `i < len`.
pub fn fill_f32(
    ctx: &Context,
    dst: &wgpu::Buffer,
    offset: usize,
    len: usize,
    value: f32,
) -> Result<Dispatch> {
    let op = "fill_f32";
    check_len(op, len)?;
    check_f32(op, "destination", dst, offset, len)?;
    let params = Params {
        count: len as u32,
        off2: offset as u32,
        value,
        ..Default::default()
    };
    let pipeline = ctx.pipeline("cast", "fill_f32", &[])?;
    Ok(ctx.dispatch_at(
        format!("fill_f32 {len}"),
        pipeline,
        &[(3, &Binding::from(dst))],
        (UNIFORM, &params),
        grid(len as u64, WORKGROUP),
        DispatchStats {
            flops: 0,
            bytes: len as u64 * 4,
        },
    ))
}
