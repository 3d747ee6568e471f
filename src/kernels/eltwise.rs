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
    b_mode: u32,
    has_r: u32,
    act: u32,
    prelu_pc: u32,
    slope: f32,
    _pad: [u32; 3],
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

/// A configured element-wise kernel: `act(a op b (+ r))`.
pub struct EltwiseOp {
    op: Eltwise,
    act: Activation,
}

impl EltwiseOp {
    /// Configures `op` followed by `act` (PReLU slopes: one, or one per channel of the input).
    pub fn new(op: Eltwise, act: Activation) -> Result<Self> {
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

    /// Binds `a`, `b` (for add/mul: `a`'s shape, `[N, C, 1, 1]` or a vector `[N, 1, 1, C]`), an
    /// optional residual `r` (`a`'s shape, added before the activation) and output `y` (`a`'s shape).
    pub fn bind(
        &self,
        ctx: &Context,
        a: &Tensor,
        b: Option<&Tensor>,
        r: Option<&Tensor>,
        y: &Tensor,
    ) -> Result<Dispatch> {
        let s = a.shape();
        expect_shape("eltwise", "output", y, s)?;
        let per_channel = |name: &str, v: &Vec<f32>| -> Result<Vec<f32>> {
            match v.len() {
                1 => Ok(vec![v[0]; s.c]),
                l if l == s.c => Ok(v.clone()),
                l => Err(Error::shape(
                    "eltwise",
                    format!("{name} has {l} values; input has {} channels", s.c),
                )),
            }
        };
        let (op, b_bind, b_mode, mut consts) = match &self.op {
            Eltwise::Affine { scale, shift } => {
                let mut k = per_channel("scale", scale)?;
                k.extend(per_channel("shift", shift)?);
                (2, Binding::from(ctx.dummy()), 0, k)
            }
            Eltwise::Add | Eltwise::Mul => {
                let b =
                    b.ok_or_else(|| Error::param("eltwise", "add/mul needs a second operand"))?;
                let bs = b.shape();
                let mode = if bs == s {
                    0
                } else if bs == Shape::new(s.n, s.c, 1, 1) {
                    1
                } else if bs == Shape::vector(s.n, s.c) {
                    2
                } else {
                    return Err(Error::shape(
                        "eltwise",
                        format!(
                            "b is {:?}; expected {:?}, [{n}, {c}, 1, 1] or [{n}, 1, 1, {c}]",
                            bs.dims(),
                            s.dims(),
                            n = s.n,
                            c = s.c
                        ),
                    ));
                };
                (
                    (self.op == Eltwise::Mul) as u32,
                    Binding::from(b),
                    mode,
                    vec![0.0; 2 * s.c],
                )
            }
        };
        let (act, slope, prelu_pc) = self.act.code();
        match &self.act {
            Activation::PRelu(v) if prelu_pc => consts.extend(per_channel("prelu slopes", v)?),
            _ => consts.extend(std::iter::repeat_n(0.0, s.c)),
        }
        let r_bind = match r {
            Some(r) => {
                expect_shape("eltwise", "residual", r, s)?;
                Binding::from(r)
            }
            None => Binding::from(ctx.dummy()),
        };
        let params = Params {
            n: s.n as u32,
            c: s.c as u32,
            plane: s.plane() as u32,
            op,
            b_mode,
            has_r: r.is_some() as u32,
            act,
            prelu_pc: prelu_pc as u32,
            slope,
            _pad: [0; 3],
        };
        let operands = 2 + (op != 2) as u64 + r.is_some() as u64;
        let consts = f32_buffer(ctx, "eltwise constants", &consts);
        Ok(ctx.dispatch(
            format!(
                "eltwise {} c{} {}x{}",
                ["add", "mul", "affine"][op as usize],
                s.c,
                s.h,
                s.w
            ),
            ctx.pipeline("eltwise", "binary", &[])?,
            &[a.into(), b_bind, (&consts).into(), r_bind, y.into()],
            &params,
            grid((s.rows() * s.row_stride() / 4) as u64, WORKGROUP),
            DispatchStats {
                flops: 2 * s.numel() as u64,
                bytes: operands * half_bytes(s),
            },
        ))
    }
}
