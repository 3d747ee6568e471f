//! `shaders/conv_grad.wgsl`: backward of [`Conv2d`](super::conv::Conv2d) for the trainer.
//!
//! - [`ConvGrad::bind_input`]: dX = ∂L/∂X from dY, as a gather (each invocation owns whole quads of
//!   dX and sums every tap and output channel that read them: no atomics). Any [`ConvSpec`] the
//!   forward takes: stride, dilation, groups (depthwise included), zero or reflect padding.
//!   With zero padding, x stride and dilation 1 and rows of whole quads (the depthwise 3×3 layers
//!   of the face-swap nets) it takes a row-quad path, the depthwise conv with the flipped kernel of
//!   engines.md T20: dY is read as aligned vector windows shared by the kx taps.
//! - [`ConvGrad::bind_weight`]: dW `[cout, cin/groups, kh, kw]` and dBias `[cout]` in f32, as a
//!   two-pass deterministic reduction (engines.md T20, P23): pass 1 runs one workgroup per (output
//!   channel, chunk of the N·Ho·Wo positions, tile of that channel's weights) and writes fp32
//!   partial sums; pass 2 sums each weight's partials in chunk order. Results are bit-identical from
//!   run to run. Tilings: four output channels × 8 weights per workgroup where a group has several
//!   output channels (each x gather feeds four sums); one channel × 16 weights for depthwise. Both
//!   have a row-quad variant (x read as vector windows shared by the kx taps) under the dX row-path
//!   conditions: four channels × whole kernel rows, or one channel when all K + 1 sums fit a tile.
//!
//! Parameters and their gradients are f32 (plain storage buffers); activations and their gradients
//! are fp16 [`Tensor`]s.

use super::conv::{ConvSpec, Geometry, Padding};
use super::{expect_shape, half_bytes};
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

/// Weights per pass-1 workgroup of one output channel (`KT` in the shader).
const WEIGHT_TILE: usize = 16;
/// Weights per pass-1 workgroup of four output channels (`KT4` in the shader).
const WEIGHT_TILE4: usize = 8;
/// Most chunks the N·Ho·Wo positions are split into: bounds the partials buffer at
/// `64 · cout · (K + 1)` floats whatever the batch and resolution.
const MAX_CHUNKS: usize = 64;
/// Target dY quads per chunk (4 per lane of a 64-lane workgroup) before the cap above applies.
const CHUNK_QUADS: usize = 4 * WORKGROUP as usize;
/// At most this many dY quads in all (batch included): dW takes the one-invocation-per-weight
/// path (`grad_weight_small`), whose lanes never idle on tiny maps.
const SMALL_QUADS: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    geometry: Geometry,
    kp: u32,
    chunks: u32,
    chunk_quads: u32,
    ntiles: u32,
    rows_per_tile: u32,
    _pad: u32,
}

/// Usage of the f32 buffers: bound as storage, read back in tests, overwritten by optimisers.
const F32_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// A zero-filled f32 storage buffer of `len` floats (at least one, so it can be bound).
pub fn f32_storage(ctx: &Context, label: &str, len: usize) -> Result<wgpu::Buffer> {
    let bytes = (len.max(4) * 4) as u64;
    let limit = ctx.limits().max_storage_buffer_binding_size;
    if bytes > limit {
        return Err(Error::TooLarge {
            what: label.to_string(),
            bytes,
            limit,
        });
    }
    Ok(ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes,
        usage: F32_USAGE,
        mapped_at_creation: false,
    }))
}

/// Reads the first `len` floats of an f32 storage buffer (made by [`f32_storage`] or with
/// `COPY_SRC`) back to the host, waiting for the queue. For tests and diagnostics, not per step.
pub fn read_f32(ctx: &Context, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
    let bytes = (len * 4) as u64;
    if bytes > buffer.size() {
        return Err(Error::param(
            "read_f32",
            format!("{len} floats asked of a {}-byte buffer", buffer.size()),
        ));
    }
    if len == 0 {
        return Ok(Vec::new());
    }
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("fswap f32 readback"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes);
    ctx.queue.submit([enc.finish()]);
    let raw = ctx.map_read(&staging, bytes)?;
    Ok(bytemuck::pod_collect_to_vec(&raw))
}

/// The weight-gradient pass bound to one `(x, dY)` pair: its two dispatches (record them in order,
/// in one pass or several) and the f32 buffers they write.
pub struct WeightGrad {
    /// Pass 1 (partials) then pass 2 (finalize).
    pub dispatches: Vec<Dispatch>,
    /// dW, `cout · cin/groups · kh · kw` floats in PyTorch order `[cout, cin/groups, kh, kw]`.
    pub dw: wgpu::Buffer,
    /// dBias, `cout` floats.
    pub db: wgpu::Buffer,
    /// Number of position chunks pass 1 splits N·Ho·Wo into (partials per weight).
    pub chunks: usize,
    /// The partials buffer (`chunks · cout · (K + 1)` floats), kept alive with the dispatches.
    pub partials: wgpu::Buffer,
    spec: ConvSpec,
}

impl WeightGrad {
    /// Reads dW back (`[cout, cin/groups, kh, kw]`).
    pub fn read_dw(&self, ctx: &Context) -> Result<Vec<f32>> {
        read_f32(ctx, &self.dw, self.spec.weight_len())
    }
    /// Reads dBias back (`[cout]`).
    pub fn read_db(&self, ctx: &Context) -> Result<Vec<f32>> {
        read_f32(ctx, &self.db, self.spec.cout)
    }
    /// The dispatches as references, ready for [`Context::run`].
    pub fn refs(&self) -> Vec<&Dispatch> {
        self.dispatches.iter().collect()
    }
}

/// The backward of one convolution: geometry and the f32 weights dX needs.
pub struct ConvGrad {
    spec: ConvSpec,
    weights: wgpu::Buffer,
    small_quads: usize,
}

impl ConvGrad {
    /// Sets the largest dY size (in quads, batch included) whose dW takes the
    /// one-invocation-per-weight path (default 64; 0 forces the tiled, chunked path; tests use it
    /// to cover both).
    pub fn small_weight_limit(mut self, quads: usize) -> Self {
        self.small_quads = quads;
        self
    }

    /// Backward kernels for `spec` with f32 weights in PyTorch order `[cout, cin/groups, kh, kw]`
    /// (dX needs them; dW does not).
    pub fn new(ctx: &Context, spec: ConvSpec, weights: &[f32]) -> Result<Self> {
        spec.output_shape(Shape::new(1, spec.cin, 1 << 20, 1 << 20))?; // validates the spec
        let weights_buf = f32_storage(ctx, "conv_grad weights", spec.weight_len())?;
        let g = ConvGrad {
            spec,
            weights: weights_buf,
            small_quads: SMALL_QUADS,
        };
        g.set_weights(ctx, weights)?;
        Ok(g)
    }

    /// Backward kernels for `spec` reading the weights from a caller-owned f32 storage buffer of at
    /// least `weight_len` floats in PyTorch order (a trainer's parameter arena, updated in place
    /// by a GPU optimiser): no host copy.
    pub fn with_weight_buffer(spec: ConvSpec, weights: wgpu::Buffer) -> Result<Self> {
        spec.output_shape(Shape::new(1, spec.cin, 1 << 20, 1 << 20))?; // validates the spec
        let need = (spec.weight_len() * 4) as u64;
        if weights.size() < need || !weights.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::param(
                "conv_grad weights",
                format!(
                    "buffer of {} bytes ({:?}): needs STORAGE and {need} bytes",
                    weights.size(),
                    weights.usage()
                ),
            ));
        }
        Ok(ConvGrad {
            spec,
            weights,
            small_quads: SMALL_QUADS,
        })
    }

    /// Replaces the weights (queued: lands at the next submit), e.g. after an optimiser step done
    /// on the host.
    pub fn set_weights(&self, ctx: &Context, weights: &[f32]) -> Result<()> {
        if weights.len() != self.spec.weight_len() {
            return Err(Error::shape(
                "conv_grad weights",
                format!(
                    "expected {} values ([{}, {}, {}, {}]), found {}",
                    self.spec.weight_len(),
                    self.spec.cout,
                    self.spec.cin / self.spec.groups,
                    self.spec.kernel.0,
                    self.spec.kernel.1,
                    weights.len()
                ),
            ));
        }
        if let Some(i) = weights.iter().position(|v| !v.is_finite()) {
            return Err(Error::Data {
                what: "conv_grad weights".into(),
                detail: format!("element {i} is {}: not finite", weights[i]),
            });
        }
        ctx.queue
            .write_buffer(&self.weights, 0, bytemuck::cast_slice(weights));
        Ok(())
    }

    /// The geometry.
    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }

    /// The f32 weight buffer dX reads (an optimiser on the GPU may write it in place).
    pub fn weights(&self) -> &wgpu::Buffer {
        &self.weights
    }

    fn params(&self, x: Shape, y: Shape, chunks: usize, chunk_quads: usize) -> Params {
        let s = &self.spec;
        let kp = s.weights_per_output() + 1;
        Params {
            geometry: s.geometry(x, y),
            kp: kp as u32,
            chunks: chunks as u32,
            chunk_quads: chunk_quads as u32,
            ntiles: kp.div_ceil(WEIGHT_TILE) as u32,
            rows_per_tile: 0,
            _pad: 0,
        }
    }

    fn label(&self, what: &str) -> String {
        let s = &self.spec;
        format!(
            "{what} conv{}x{}/s{} {}->{} g{}",
            s.kernel.0, s.kernel.1, s.stride.0, s.cin, s.cout, s.groups
        )
    }

    /// Whether dX can take the row-quad path: zero padding, x stride and dilation 1, whole quads
    /// per row of dX and dY, and a dY window of at most 6 quads (the shader's register array).
    fn row_quads(&self, x: Shape, y: Shape) -> bool {
        let s = &self.spec;
        let (kw, px) = (s.kernel.1, s.pad.1);
        let roff = (px + 3 * kw + 1) % 4; // (px − (kw − 1)) mod 4, as GROFF
        s.padding == Padding::Zero
            && s.stride.1 == 1
            && s.dilation.1 == 1
            && (roff + kw + 6) / 4 <= 6
            && x.w.is_multiple_of(4)
            && y.w.is_multiple_of(4)
    }

    /// Whether the dW row-quad path applies: zero padding, x stride and dilation 1, whole quads per
    /// row of x and dY, and an x window of at most 6 quads.
    fn weight_rows(&self, x: Shape, y: Shape) -> bool {
        let s = &self.spec;
        let (kw, px) = (s.kernel.1, s.pad.1);
        let roff = (3 * px) % 4; // (−px) mod 4, as WROFF
        s.padding == Padding::Zero
            && s.stride.1 == 1
            && s.dilation.1 == 1
            && (roff + kw + 6) / 4 <= 6
            && x.w.is_multiple_of(4)
            && y.w.is_multiple_of(4)
    }

    /// Binds dY (the forward output's shape) and dX (the forward input's shape) into the dX
    /// dispatch. dX is overwritten, not accumulated.
    pub fn bind_input(&self, ctx: &Context, dy: &Tensor, dx: &Tensor) -> Result<Dispatch> {
        let spec = &self.spec;
        let xs = dx.shape();
        let out = spec.output_shape(xs)?;
        expect_shape("conv_grad input", "dY", dy, out)?;
        let cin_g = spec.cin / spec.groups;
        let ct = if cin_g >= 2 { 4 } else { 1 };
        let invocations = (xs.row_stride() / 4) * cin_g.div_ceil(ct) * spec.groups * xs.n;
        let pipeline = if self.row_quads(xs, out) {
            let (kw, px) = (spec.kernel.1 as f64, spec.pad.1 as f64);
            ctx.pipeline(
                "conv_grad",
                "grad_input_rows",
                &[("CT", ct as f64), ("RKW", kw), ("RPX", px)],
            )?
        } else {
            let entry = match spec.padding {
                Padding::Zero => "grad_input",
                Padding::Reflect => "grad_input_reflect",
            };
            ctx.pipeline("conv_grad", entry, &[("CT", ct as f64)])?
        };
        let params = self.params(xs, out, 0, 0);
        let stats = DispatchStats {
            flops: 2 * out.numel() as u64 * spec.weights_per_output() as u64,
            bytes: half_bytes(out) + half_bytes(xs) + spec.weight_len() as u64 * 4,
        };
        Ok(ctx.dispatch_at(
            self.label("dX"),
            pipeline,
            &[
                (1, &Binding::from(dy)),
                (2, &Binding::from(&self.weights)),
                (3, &Binding::from(dx)),
            ],
            (7, &params),
            grid(invocations as u64, WORKGROUP),
            stats,
        ))
    }

    /// Adds pass 2 (the fixed-order sum of the chunks' partials into dW and dBias) to pass 1.
    #[allow(clippy::too_many_arguments)]
    fn finish_weight(
        &self,
        ctx: &Context,
        d1: Dispatch,
        params: Params,
        chunks: usize,
        partials: wgpu::Buffer,
        dw: wgpu::Buffer,
        db: wgpu::Buffer,
    ) -> Result<WeightGrad> {
        let spec = &self.spec;
        let kp = params.kp as usize;
        let mut params = params;
        params.chunks = chunks as u32;
        let pass2 = ctx.pipeline("conv_grad", "grad_finalize", &[])?;
        let d2 = ctx.dispatch_at(
            self.label("dW finalize"),
            pass2,
            &[
                (4, &Binding::from(&partials)),
                (5, &Binding::from(&dw)),
                (6, &Binding::from(&db)),
            ],
            (7, &params),
            grid((spec.cout * kp) as u64, WORKGROUP),
            DispatchStats {
                flops: (chunks * spec.cout * kp) as u64,
                bytes: ((chunks + 1) * spec.cout * kp * 4) as u64,
            },
        );
        Ok(WeightGrad {
            dispatches: vec![d1, d2],
            dw,
            db,
            chunks,
            partials,
            spec: *spec,
        })
    }

    /// Binds the forward input `x` and dY into the two dW/dBias dispatches, with fresh f32 output
    /// buffers (overwritten by every run, not accumulated).
    pub fn bind_weight(&self, ctx: &Context, x: &Tensor, dy: &Tensor) -> Result<WeightGrad> {
        let dw = f32_storage(ctx, "conv_grad dW", self.spec.weight_len())?;
        let db = f32_storage(ctx, "conv_grad dBias", self.spec.cout)?;
        self.bind_weight_into(ctx, x, dy, dw, db)
    }

    /// Like [`ConvGrad::bind_weight`] but writing into caller-owned f32 storage buffers (a
    /// trainer's gradient arena): `dw` of at least `weight_len` floats, `db` of at least `cout`.
    pub fn bind_weight_into(
        &self,
        ctx: &Context,
        x: &Tensor,
        dy: &Tensor,
        dw: wgpu::Buffer,
        db: wgpu::Buffer,
    ) -> Result<WeightGrad> {
        let spec = &self.spec;
        for (what, buf, len) in [("dW", &dw, spec.weight_len()), ("dBias", &db, spec.cout)] {
            if buf.size() < (len * 4) as u64 || !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
                return Err(Error::param(
                    "conv_grad weight",
                    format!(
                        "{what} buffer of {} bytes ({:?}): needs STORAGE and {} bytes",
                        buf.size(),
                        buf.usage(),
                        len * 4
                    ),
                ));
            }
        }
        let xs = x.shape();
        let out = spec.output_shape(xs)?;
        expect_shape("conv_grad weight", "dY", dy, out)?;
        let total_quads = out.n * out.row_stride() / 4;
        let kp = spec.weights_per_output() + 1;
        if total_quads <= self.small_quads {
            // One chunk; one invocation per (channel, weight).
            let params = self.params(xs, out, 1, total_quads);
            let partials = f32_storage(ctx, "conv_grad partials", spec.cout * kp)?;
            let d1 = ctx.dispatch_at(
                self.label("dW small"),
                ctx.pipeline("conv_grad", "grad_weight_small", &[])?,
                &[
                    (0, &Binding::from(x)),
                    (1, &Binding::from(dy)),
                    (4, &Binding::from(&partials)),
                ],
                (7, &params),
                grid((spec.cout * kp) as u64, WORKGROUP),
                DispatchStats {
                    flops: 2 * out.numel() as u64 * kp as u64,
                    bytes: half_bytes(xs) + half_bytes(out) + (spec.cout * kp * 4) as u64,
                },
            );
            return self.finish_weight(ctx, d1, params, 1, partials, dw, db);
        }
        let chunks = total_quads.div_ceil(CHUNK_QUADS).clamp(1, MAX_CHUNKS);
        let chunk_quads = total_quads.div_ceil(chunks);
        let chunks = total_quads.div_ceil(chunk_quads);
        let mut params = self.params(xs, out, chunks, chunk_quads);
        // Four output channels per workgroup where a group has several (dense, grouped): each x
        // gather then feeds four sums. Depthwise keeps one channel and 16 weights per workgroup.
        let cout_g = spec.cout / spec.groups;
        // Where rows are whole quads (and, for one channel, its K + 1 sums fit one tile), x is
        // read as vector windows shared by the kx taps.
        let rows = self.weight_rows(xs, out);
        let kw = spec.kernel.1;
        let (entry, rows, ntiles, otiles) = if cout_g >= 2 && rows && kw <= WEIGHT_TILE4 {
            // Tiles of whole kernel rows, plus one tile for dBias.
            let per_tile = WEIGHT_TILE4 / kw;
            params.rows_per_tile = per_tile as u32;
            let kernel_rows = spec.cin / spec.groups * spec.kernel.0;
            let ntiles = kernel_rows.div_ceil(per_tile) + 1;
            (
                "grad_weight4_rows",
                true,
                ntiles,
                cout_g.div_ceil(4) * spec.groups,
            )
        } else if cout_g >= 2 {
            let ntiles = kp.div_ceil(WEIGHT_TILE4);
            (
                "grad_weight4",
                false,
                ntiles,
                cout_g.div_ceil(4) * spec.groups,
            )
        } else if rows && kp <= WEIGHT_TILE {
            ("grad_weight_rows", true, 1, spec.cout)
        } else {
            ("grad_weight", false, kp.div_ceil(WEIGHT_TILE), spec.cout)
        };
        params.ntiles = ntiles as u32;
        let partials = f32_storage(ctx, "conv_grad partials", chunks * spec.cout * kp)?;
        let pass1 = if rows {
            let (kw, px) = (spec.kernel.1 as f64, spec.pad.1 as f64);
            ctx.pipeline("conv_grad", entry, &[("WKW", kw), ("WPX", px)])?
        } else {
            ctx.pipeline("conv_grad", entry, &[])?
        };
        let workgroups = (ntiles * otiles * chunks) as u64;
        let d1 = ctx.dispatch_at(
            self.label("dW"),
            pass1,
            &[
                (0, &Binding::from(x)),
                (1, &Binding::from(dy)),
                (4, &Binding::from(&partials)),
            ],
            (7, &params),
            grid(workgroups * WORKGROUP as u64, WORKGROUP),
            DispatchStats {
                flops: 2 * out.numel() as u64 * kp as u64,
                bytes: half_bytes(xs) + half_bytes(out) + (chunks * spec.cout * kp * 4) as u64,
            },
        );
        self.finish_weight(ctx, d1, params, chunks, partials, dw, db)
    }
}
