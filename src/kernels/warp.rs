//! `shaders/warp.wgsl`: affine warps with OpenCV `warpAffine` semantics (bilinear, constant-zero
//! border), one matrix and source image per output sample: aligning every face of a frame into
//! crops, and pasting crops back into the frame.

use super::{expect_shape, half_bytes};
use crate::error::{Error, Result};
use crate::face::align::Affine;
use crate::gpu::{grid, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    src_n: u32,
    _pad: u32,
}

/// A warp from `src` `[S, C, H, W]` to `dst` `[N, C, Ho, Wo]` whose per-sample matrices are
/// rewritten each frame with [`Warp::set`] (a queue write into a buffer made once: no allocation).
pub struct Warp {
    mats: wgpu::Buffer,
    n: usize,
    dispatch: Dispatch,
}

impl Warp {
    /// Binds source and destination; the matrices start as identity on source 0.
    pub fn new(ctx: &Context, src: &Tensor, dst: &Tensor) -> Result<Self> {
        let (s, d) = (src.shape(), dst.shape());
        if s.c != d.c {
            return Err(Error::shape(
                "warp",
                format!("source has {} channels, destination {}", s.c, d.c),
            ));
        }
        expect_shape("warp", "destination", dst, d)?;
        let mats = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("warp matrices"),
            size: (d.n * 32) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let params = Params {
            n: d.n as u32,
            c: d.c as u32,
            h: s.h as u32,
            w: s.w as u32,
            ho: d.h as u32,
            wo: d.w as u32,
            src_n: s.n as u32,
            _pad: 0,
        };
        let dispatch = ctx.dispatch(
            format!("warp {}x{}->{}x{} n{}", s.h, s.w, d.h, d.w, d.n),
            ctx.pipeline("warp", "warp_affine", &[])?,
            &[src.into(), (&mats).into(), dst.into()],
            &params,
            grid((d.rows() * d.row_stride() / 4) as u64, WORKGROUP),
            DispatchStats {
                flops: 12 * d.numel() as u64,
                bytes: 4 * half_bytes(d) + half_bytes(d),
            },
        );
        let warp = Warp {
            mats,
            n: d.n,
            dispatch,
        };
        warp.set(ctx, &vec![([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 0); d.n])?;
        Ok(warp)
    }

    /// Sets, per output sample, the matrix mapping *output* pixels to *source* pixels (OpenCV's
    /// `WARP_INVERSE_MAP` convention; pass [`crate::face::align::invert`] of a frame→crop fit to
    /// align, or the fit itself to paste back) and the source image index.
    pub fn set(&self, ctx: &Context, samples: &[(Affine, usize)]) -> Result<()> {
        if samples.len() != self.n {
            return Err(Error::param(
                "warp",
                format!("{} matrices for {} output samples", samples.len(), self.n),
            ));
        }
        // One 32-byte write per sample from the stack: nothing is allocated per frame.
        for (k, (m, src)) in samples.iter().enumerate() {
            if m.iter().flatten().any(|v| !v.is_finite()) {
                return Err(Error::param("warp", "non-finite matrix"));
            }
            let row = [
                m[0][0],
                m[0][1],
                m[0][2],
                m[1][0],
                m[1][1],
                m[1][2],
                *src as f64,
                0.0,
            ]
            .map(|v| v as f32);
            ctx.queue
                .write_buffer(&self.mats, (32 * k) as u64, bytemuck::cast_slice(&row));
        }
        Ok(())
    }

    /// The dispatch to record.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }
}
