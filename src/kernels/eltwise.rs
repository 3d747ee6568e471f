//! `shaders/eltwise.wgsl`: element-wise add, multiply (same shape or per-channel broadcast) and
//! per-channel affine, each with an activation.

use super::{expect_shape, f32_buffer, half_bytes, Activation};
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    plane: u32,
    op: u32,
    b_bcast: u32,
    act: u32,
    slope: f32,
    _pad: u32,
}

/// An element-wise operation.
#[derive(Clone, Debug, PartialEq)]
pub enum Eltwise {
    /// `a + b`.
    Add,
    /// `a ⊙ b`.
    Mul,
    /// `a·scale[c] + shift[c]` (one value each for all channels, or one per channel).
    Affine {
        /// Multiplier: length 1 or C.
        scale: Vec<f32>,
        /// Offset: length 1 or C.
        shift: Vec<f32>,
    },
}

/// A configured element-wise kernel.
pub struct EltwiseOp {
    op: Eltwise,
    act: Activation,
}

impl EltwiseOp {
    /// Configures `op` followed by `act` (shared-slope activations only).
    pub fn new(op: Eltwise, act: Activation) -> Result<Self> {
        if matches!(&act, Activation::PRelu(v) if v.len() != 1) {
            return Err(Error::param(
                "eltwise",
                "per-channel PReLU is not fused here; use a shared slope",
            ));
        }
        if let Eltwise::Affine { scale, shift } = &op {
            if scale.is_empty() || shift.is_empty() {
                return Err(Error::param(
                    "affine",
                    "scale and shift need at least one value",
                ));
            }
            if let Some(v) = scale.iter().chain(shift).find(|v| !v.is_finite()) {
                return Err(Error::param("affine", format!("non-finite constant {v}")));
            }
        }
        Ok(EltwiseOp { op, act })
    }

    /// Binds `a`, `b` (for add/mul: `a`'s shape or `[N, C, 1, 1]`) and output `y` (`a`'s shape).
    pub fn bind(
        &self,
        ctx: &Context,
        a: &Tensor,
        b: Option<&Tensor>,
        y: &Tensor,
    ) -> Result<Dispatch> {
        let s = a.shape();
        expect_shape("eltwise", "output", y, s)?;
        let (op, b_buf, bcast, consts) = match &self.op {
            Eltwise::Affine { scale, shift } => {
                let per_channel = |name: &str, v: &Vec<f32>| -> Result<Vec<f32>> {
                    match v.len() {
                        1 => Ok(vec![v[0]; s.c]),
                        l if l == s.c => Ok(v.clone()),
                        l => Err(Error::shape(
                            "affine",
                            format!("{name} has {l} values; input has {} channels", s.c),
                        )),
                    }
                };
                let mut k = per_channel("scale", scale)?;
                k.extend(per_channel("shift", shift)?);
                (
                    2,
                    Binding::from(ctx.dummy()),
                    false,
                    Some(f32_buffer(ctx, "affine constants", &k)),
                )
            }
            Eltwise::Add | Eltwise::Mul => {
                let b =
                    b.ok_or_else(|| Error::param("eltwise", "add/mul needs a second operand"))?;
                let bs = b.shape();
                let bcast = bs == Shape::new(s.n, s.c, 1, 1) && s.plane() != 1;
                if bs != s && !bcast {
                    return Err(Error::shape(
                        "eltwise",
                        format!(
                            "b is {:?}; expected {:?} or [{}, {}, 1, 1]",
                            bs.dims(),
                            s.dims(),
                            s.n,
                            s.c
                        ),
                    ));
                }
                (
                    (self.op == Eltwise::Mul) as u32,
                    Binding::from(b),
                    bcast,
                    None,
                )
            }
        };
        let (act, slope, _) = self.act.code();
        let params = Params {
            n: s.n as u32,
            c: s.c as u32,
            plane: s.plane() as u32,
            op,
            b_bcast: bcast as u32,
            act,
            slope,
            _pad: 0,
        };
        let operands = if op == 2 { 2 } else { 3 };
        Ok(ctx.dispatch(
            format!(
                "eltwise {} c{} {}x{}",
                ["add", "mul", "affine"][op as usize],
                s.c,
                s.h,
                s.w
            ),
            ctx.pipeline("eltwise", "binary", &[])?,
            &[
                a.into(),
                b_buf,
                consts.as_ref().unwrap_or(ctx.dummy()).into(),
                y.into(),
            ],
            &params,
            grid((s.rows() * s.row_stride() / 4) as u64, WORKGROUP),
            DispatchStats {
                flops: 2 * s.numel() as u64,
                bytes: operands * half_bytes(s),
            },
        ))
    }
}
