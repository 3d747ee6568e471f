//! Tensors: NCHW fp16 in a pooled GPU buffer.
//!
//! Layout: the `N·C` rows (channel planes) each hold `H·W` halves, padded to a multiple of four
//! (the *row stride*). Every kernel reads and writes whole quads of four halves (8 bytes): on the
//! packed path a quad is two `u32` words that one invocation owns, so no two invocations ever write
//! the same word, whatever H·W is; on the native path it is one `vec4<f16>` load. Pad slots hold
//! zeros. A vector is a tensor `[N, 1, 1, F]`; a flat weight array is `[1, 1, 1, len]`. The byte layout
//! is the same on both storage paths.

use half::f16;

use crate::error::{Error, Result};
use crate::gpu::{Context, PooledBuffer};

/// The four NCHW extents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Batch.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

/// Rounds `x` up to a multiple of 4.
pub fn align4(x: usize) -> usize {
    x.div_ceil(4) * 4
}

impl Shape {
    /// `[n, c, h, w]`.
    pub const fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Shape { n, c, h, w }
    }
    /// A vector batch `[n, 1, 1, f]`.
    pub const fn vector(n: usize, f: usize) -> Self {
        Shape {
            n,
            c: 1,
            h: 1,
            w: f,
        }
    }
    /// As an array.
    pub fn dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    /// Logical element count.
    pub fn numel(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    /// Elements per row (channel plane).
    pub fn plane(&self) -> usize {
        self.h * self.w
    }
    /// Halves between the starts of consecutive rows.
    pub fn row_stride(&self) -> usize {
        align4(self.plane())
    }
    /// Number of rows (`N·C`).
    pub fn rows(&self) -> usize {
        self.n * self.c
    }
    /// Halves the buffer holds, padding included.
    pub fn stored(&self) -> usize {
        self.rows() * self.row_stride()
    }
    /// Bytes of the buffer.
    pub fn bytes(&self) -> u64 {
        self.stored() as u64 * 2
    }
}

impl From<[usize; 4]> for Shape {
    fn from(d: [usize; 4]) -> Self {
        Shape::new(d[0], d[1], d[2], d[3])
    }
}

/// An fp16 NCHW tensor resident on the GPU.
#[derive(Clone)]
pub struct Tensor {
    shape: Shape,
    buffer: PooledBuffer,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.shape.dims())
    }
}

/// Usage of every tensor buffer: bound as storage, copied in and out at the edges.
const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Tensor {
    /// A tensor of `shape` with unspecified contents (kernels overwrite every quad they own).
    pub fn new(ctx: &Context, shape: impl Into<Shape>, what: &str) -> Result<Self> {
        let shape = shape.into();
        if shape.numel() == 0 {
            return Err(Error::Empty {
                what: what.to_string(),
                shape: shape.dims(),
            });
        }
        let limit = ctx.limits().max_storage_buffer_binding_size;
        if shape.bytes() > limit {
            return Err(Error::TooLarge {
                what: format!("{what} {:?}", shape.dims()),
                bytes: shape.bytes(),
                limit,
            });
        }
        let buffer = ctx.pool().take(&ctx.device, shape.bytes(), USAGE);
        Ok(Tensor { shape, buffer })
    }

    /// Uploads logical NCHW `data`; fails on a length mismatch, NaN/Inf, or values beyond ±65504.
    pub fn from_f32(
        ctx: &Context,
        shape: impl Into<Shape>,
        data: &[f32],
        what: &str,
    ) -> Result<Self> {
        let shape = shape.into();
        let halves = encode(shape, data, what)?;
        let t = Tensor::new(ctx, shape, what)?;
        ctx.queue
            .write_buffer(&t.buffer, 0, bytemuck::cast_slice(&halves));
        Ok(t)
    }

    /// Uploads logical NCHW halves.
    pub fn from_f16(
        ctx: &Context,
        shape: impl Into<Shape>,
        data: &[f16],
        what: &str,
    ) -> Result<Self> {
        let f: Vec<f32> = data.iter().map(|h| h.to_f32()).collect();
        Self::from_f32(ctx, shape, &f, what)
    }

    /// A `[1, 1, 1, len]` tensor holding `data` in order (weights, predicted kernels).
    pub fn flat(ctx: &Context, data: &[f32], what: &str) -> Result<Self> {
        Self::from_f32(ctx, Shape::vector(1, data.len()), data, what)
    }

    /// Replaces the contents from host data (queued: lands at the next submit).
    pub fn write_f32(&self, ctx: &Context, data: &[f32]) -> Result<()> {
        let halves = encode(self.shape, data, "tensor write")?;
        ctx.queue
            .write_buffer(&self.buffer, 0, bytemuck::cast_slice(&halves));
        Ok(())
    }

    /// Reads the logical NCHW values back (waits for the queue; never on the per-frame path).
    pub fn to_f32(&self, ctx: &Context) -> Result<Vec<f32>> {
        Ok(self.to_f16(ctx)?.iter().map(|h| h.to_f32()).collect())
    }

    /// Reads the logical NCHW halves back.
    pub fn to_f16(&self, ctx: &Context) -> Result<Vec<f16>> {
        let bytes = self.shape.bytes();
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fswap readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&self.buffer, 0, &staging, 0, bytes);
        ctx.queue.submit([enc.finish()]);
        let raw = ctx.map_read(&staging, bytes)?;
        let halves: Vec<f16> = bytemuck::pod_collect_to_vec(&raw);
        let (plane, stride) = (self.shape.plane(), self.shape.row_stride());
        let mut out = Vec::with_capacity(self.shape.numel());
        for r in 0..self.shape.rows() {
            out.extend_from_slice(&halves[r * stride..r * stride + plane]);
        }
        Ok(out)
    }

    /// The shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The GPU buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Views the same buffer with another shape of identical layout (same rows and row length, or
    /// any shape when both have one row): no copy.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let same = shape.numel() == self.shape.numel()
            && (shape.plane() == self.shape.plane()
                || (shape.rows() == 1 && self.shape.rows() == 1));
        if !same {
            return Err(Error::shape(
                "reshape",
                format!(
                    "{:?} -> {:?} changes the row layout (rows of H·W padded to 4); copy instead",
                    self.shape.dims(),
                    shape.dims()
                ),
            ));
        }
        Ok(Tensor {
            shape,
            buffer: self.buffer.clone(),
        })
    }
}

/// Host NCHW f32 → padded rows of halves, with the checks every upload gets.
fn encode(shape: Shape, data: &[f32], what: &str) -> Result<Vec<f16>> {
    if data.len() != shape.numel() {
        return Err(Error::Data {
            what: what.to_string(),
            detail: format!(
                "{} values given for shape {:?} ({} expected)",
                data.len(),
                shape.dims(),
                shape.numel()
            ),
        });
    }
    if let Some((i, v)) = data
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite() || v.abs() > 65504.0)
    {
        return Err(Error::Data {
            what: what.to_string(),
            detail: format!("element {i} is {v}: not a finite value within the f16 range ±65504"),
        });
    }
    let (plane, stride) = (shape.plane(), shape.row_stride());
    let mut out = vec![f16::ZERO; shape.stored()];
    for (r, row) in data.chunks(plane).enumerate() {
        for (j, v) in row.iter().enumerate() {
            out[r * stride + j] = f16::from_f32(*v);
        }
    }
    Ok(out)
}
