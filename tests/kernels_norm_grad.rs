//! Training-time normalisation (`kernels::norm_grad`) vs f64 references on every storage path:
//! batch norm forward in train and eval mode (output, saved statistics, running-stat updates) and
//! backward (dx, dγ, dβ) in both layouts, and the backward (and GPU-buffer forward) of instance
//! norm / AdaIN / conditional batch norm. The f64 adjoints are checked against central finite
//! differences of the f64 forward.
//!
//! Tolerances, per element, from how the GPU computes (never a blanket constant). With
//! U32 = 2^-24, U16 = 2^-11 (unit roundoffs) and M the values a statistic averages:
//! - Inputs (x, dy, style) are drawn already rounded to f16, so the reference sees what the GPU
//!   stores; γ, β and running statistics are f32 on both sides.
//! - Statistics: a sum of M terms in any order (lanes, workgroup tree, chunks) errs by at most
//!   (M − 1)·U32·Σ|terms|; the mean then errs by ≤ (M + 8)·U32·mean|x| and, through it and the
//!   squared deviations, 1/√(var + eps) by a relative ρ = (M + 16)·U32·(1 + 2·mean|x|·invstd)
//!   (running statistics: ρ = 8·U32, inverseSqrt's 2 ulp and one rounding). So x̂ = (x − μ)·invstd
//!   errs by ≤ ρ·(1 + |x̂|).
//! - Forward y: z = γ·x̂ + β errs by |γ|·δx̂ plus a few f32 roundings; the activation is Lipschitz
//!   (1, or the leaky slope); sigmoid/tanh add Vulkan's exp precision (3 + 2|x| ulp); storing the
//!   fp16 result adds U16·|y| (2^-25 absolute below the normal range).
//! - Backward: the reference takes dz = dy·act'(y) at the y the GPU stored (the kernel's contract:
//!   the derivative is read from y), so the rest is f32 arithmetic: 4·U32·|dy| per dz, the sums as
//!   above plus δx̂ per term, and for dx (stored fp16) U16 relative on top. dγ, dβ are f32 results.
//!
//! Every check reports its worst error as a fraction of its bound.
mod common;

use common::{contexts, label, Rng};
use fswap::kernels::conv_grad::{f32_storage, read_f32};
use fswap::kernels::norm::{Affine, NormSpec, Stats};
use fswap::kernels::norm_grad::{
    BatchNorm, BnBuffers, BnLayout, BnMode, BnState, NormGrad, NormParamGrads,
};
use fswap::kernels::Activation;
use fswap::{Context, Shape, Tensor};

const U32: f64 = 1.0 / (1u64 << 24) as f64; // f32 unit roundoff
const U16: f64 = 1.0 / (1u64 << 11) as f64; // f16 unit roundoff
const SUB16: f64 = 1.0 / (1u64 << 25) as f64; // half the fp16 subnormal step
const EPS: f32 = 1e-5;

fn d(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

/// d act / d z from the output y, PyTorch's side at the kinks (as the shader).
fn act_grad(act: &Activation, y: f64) -> f64 {
    match act {
        Activation::None => 1.0,
        Activation::Relu => (y > 0.0) as u8 as f64,
        Activation::Relu6 => (y > 0.0 && y < 6.0) as u8 as f64,
        Activation::Leaky(s) => {
            if y > 0.0 {
                1.0
            } else {
                *s as f64
            }
        }
        Activation::Sigmoid => y * (1.0 - y),
        Activation::Tanh => 1.0 - y * y,
        Activation::PRelu(_) => unreachable!("not fusable"),
    }
}

/// Lipschitz constant of the activation.
fn act_lip(act: &Activation) -> f64 {
    match act {
        Activation::Leaky(s) => (*s as f64).max(1.0),
        _ => 1.0,
    }
}

/// Error of the GPU's transcendental activations at z beyond the f32 roundings: exp within
/// (3 + 2|x|) ulp = (6 + 4|x|)·U32 relative (Vulkan), damped by σ(1 − σ) ≤ 1/4 for the sigmoid and
/// (1 − t²)/2 ≤ 1/2 for tanh = (e^{2z} − 1)/(e^{2z} + 1); plus the divisions' roundings.
fn act_extra(act: &Activation, z: f64) -> f64 {
    match act {
        Activation::Sigmoid => (6.0 + 4.0 * z.abs()) * U32 / 4.0 + 4.0 * U32,
        Activation::Tanh => (6.0 + 8.0 * z.abs()) * U32 / 2.0 + 4.0 * U32,
        _ => 0.0,
    }
}

/// A reference normalisation: which elements share statistics (groups) and which γ/β each group
/// uses.
struct Layer {
    groups: Vec<Vec<usize>>,
    param: Vec<usize>,
    nparams: usize,
    len: usize,
    act: Activation,
    eps: f64,
}

/// Gradients of L = Σ dy·y and the bound on the GPU's error for each.
struct Adj {
    dx: Vec<f64>,
    dg: Vec<f64>,
    db: Vec<f64>,
    dx_b: Vec<f64>,
    dg_b: Vec<f64>,
    db_b: Vec<f64>,
    /// dx with the eval-mode formula γ·invstd·dz (for mutation checks).
    dx_eval: Vec<f64>,
}

impl Layer {
    /// BatchNorm2d over [n, c, h, w]: one group per channel.
    fn bn_channels(n: usize, c: usize, h: usize, w: usize, act: Activation) -> Layer {
        let plane = h * w;
        let groups = (0..c)
            .map(|ch| {
                (0..n)
                    .flat_map(|b| {
                        ((b * c + ch) * plane..(b * c + ch + 1) * plane).collect::<Vec<_>>()
                    })
                    .collect()
            })
            .collect();
        Layer {
            groups,
            param: (0..c).collect(),
            nparams: c,
            len: n * c * plane,
            act,
            eps: EPS as f64,
        }
    }

    /// BatchNorm1d over [n, f]: one group per feature.
    fn bn_features(n: usize, f: usize, act: Activation) -> Layer {
        Layer {
            groups: (0..f)
                .map(|j| (0..n).map(|b| b * f + j).collect())
                .collect(),
            param: (0..f).collect(),
            nparams: f,
            len: n * f,
            act,
            eps: EPS as f64,
        }
    }

    /// One group per (sample, channel) row; γ/β per channel or per row.
    fn rows(n: usize, c: usize, plane: usize, per_row: bool, act: Activation) -> Layer {
        Layer {
            groups: (0..n * c)
                .map(|r| (r * plane..(r + 1) * plane).collect())
                .collect(),
            param: (0..n * c)
                .map(|r| if per_row { r } else { r % c })
                .collect(),
            nparams: if per_row { n * c } else { c },
            len: n * c * plane,
            act,
            eps: EPS as f64,
        }
    }

    /// Mean and biased variance of each group.
    fn batch_stats(&self, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
        self.groups
            .iter()
            .map(|g| {
                let m = g.iter().map(|&i| x[i]).sum::<f64>() / g.len() as f64;
                let v = g.iter().map(|&i| (x[i] - m) * (x[i] - m)).sum::<f64>() / g.len() as f64;
                (m, v)
            })
            .unzip()
    }

    /// y and z = γ·x̂ + β.
    fn forward(
        &self,
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        mean: &[f64],
        var: &[f64],
    ) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0.0; self.len];
        let mut z = vec![0.0; self.len];
        for (g, members) in self.groups.iter().enumerate() {
            let s = 1.0 / (var[g] + self.eps).sqrt();
            let p = self.param[g];
            for &i in members {
                z[i] = gamma[p] * (x[i] - mean[g]) * s + beta[p];
                y[i] = self.act.apply(z[i], 0);
            }
        }
        (y, z)
    }

    /// Relative error bound ρ of the GPU's statistics per group (see the header).
    fn rho(&self, x: &[f64], var: &[f64], batch: bool) -> Vec<f64> {
        self.groups
            .iter()
            .enumerate()
            .map(|(g, members)| {
                if !batch {
                    return 8.0 * U32;
                }
                let m = members.len() as f64;
                let mean_abs = members.iter().map(|&i| x[i].abs()).sum::<f64>() / m;
                let s = 1.0 / (var[g] + self.eps).sqrt();
                (m + 16.0) * U32 * (1.0 + 2.0 * mean_abs * s)
            })
            .collect()
    }

    /// Bound on |y_gpu − y| per element.
    #[allow(clippy::too_many_arguments)]
    fn y_bound(
        &self,
        x: &[f64],
        y: &[f64],
        z: &[f64],
        gamma: &[f64],
        beta: &[f64],
        mean: &[f64],
        var: &[f64],
        rho: &[f64],
    ) -> Vec<f64> {
        let mut b = vec![0.0; self.len];
        let lip = act_lip(&self.act);
        for (g, members) in self.groups.iter().enumerate() {
            let s = 1.0 / (var[g] + self.eps).sqrt();
            let p = self.param[g];
            for &i in members {
                let xh = (x[i] - mean[g]) * s;
                let dxh = rho[g] * (1.0 + xh.abs()) + 2.0 * U32 * xh.abs();
                let dz = gamma[p].abs() * dxh + 4.0 * U32 * ((gamma[p] * xh).abs() + beta[p].abs());
                let e = lip * dz + act_extra(&self.act, z[i]);
                b[i] = e * (1.0 + U16) + U16 * y[i].abs() + SUB16;
            }
        }
        b
    }

    /// The adjoint of `forward` at (x, y) for the statistics used (batch statistics depend on x
    /// when `batch`), with error bounds for the GPU from `rho` (zeros when unused).
    #[allow(clippy::too_many_arguments)]
    fn adjoint(
        &self,
        x: &[f64],
        y: &[f64],
        dy: &[f64],
        gamma: &[f64],
        mean: &[f64],
        var: &[f64],
        batch: bool,
        rho: &[f64],
    ) -> Adj {
        let np = self.nparams;
        let mut a = Adj {
            dx: vec![0.0; self.len],
            dg: vec![0.0; np],
            db: vec![0.0; np],
            dx_b: vec![0.0; self.len],
            dg_b: vec![0.0; np],
            db_b: vec![0.0; np],
            dx_eval: vec![0.0; self.len],
        };
        // Per parameter: count, Σ|dz|, Σ|dz·x̂|, Σ|dz|·δx̂, Σe, Σe·|x̂|.
        let mut acc = vec![[0.0f64; 6]; np];
        let lip = act_lip(&self.act);
        for (g, members) in self.groups.iter().enumerate() {
            let s = 1.0 / (var[g] + self.eps).sqrt();
            let p = self.param[g];
            let m = members.len() as f64;
            let k = gamma[p] * s;
            let (mut s1, mut s2, mut a1, mut a2, mut d2, mut e1, mut e2) =
                (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
            for &i in members {
                let dz = dy[i] * act_grad(&self.act, y[i]);
                let e = 4.0 * U32 * dy[i].abs() * lip;
                let xh = (x[i] - mean[g]) * s;
                let dxh = rho[g] * (1.0 + xh.abs());
                s1 += dz;
                s2 += dz * xh;
                a1 += dz.abs();
                a2 += (dz * xh).abs();
                d2 += dz.abs() * dxh;
                e1 += e;
                e2 += e * xh.abs();
            }
            a.db[p] += s1;
            a.dg[p] += s2;
            for (t, v) in acc[p].iter_mut().zip([1.0 * m, a1, a2, d2, e1, e2]) {
                *t += v;
            }
            let (ma, mb) = (s1 / m, s2 / m);
            let da = ((m + 8.0) * U32 * a1 + e1) / m + U32 * ma.abs();
            let dmb = ((m + 8.0) * U32 * a2 + d2 + e2) / m + U32 * mb.abs();
            for &i in members {
                let dz = dy[i] * act_grad(&self.act, y[i]);
                let e = 4.0 * U32 * dy[i].abs() * lip;
                let xh = (x[i] - mean[g]) * s;
                let dxh = rho[g] * (1.0 + xh.abs());
                let (v, dv) = if batch {
                    (
                        dz - ma - xh * mb,
                        e + da
                            + xh.abs() * dmb
                            + mb.abs() * dxh
                            + 3.0 * U32 * (dz.abs() + ma.abs() + (xh * mb).abs()),
                    )
                } else {
                    (dz, e + U32 * dz.abs())
                };
                a.dx[i] = k * v;
                a.dx_eval[i] = k * dz;
                let err = k.abs() * dv + (k * v).abs() * (rho[g] + 3.0 * U32);
                a.dx_b[i] = err * (1.0 + U16) + U16 * (k * v).abs() + SUB16;
            }
        }
        for (p, &[m, a1, a2, d2, e1, e2]) in acc.iter().enumerate() {
            a.db_b[p] = (m + 8.0) * U32 * a1 + e1 + U32 * a.db[p].abs() + 1e-30;
            a.dg_b[p] = (m + 8.0) * U32 * a2 + d2 + e2 + U32 * a.dg[p].abs() + 1e-30;
        }
        a
    }
}

/// Asserts |got − want| ≤ bound[i] everywhere; returns the worst |err|/bound.
fn assert_within(got: &[f32], want: &[f64], bound: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0f64);
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i]).abs();
        let r = if got[i].is_finite() {
            err / bound[i]
        } else {
            f64::INFINITY
        };
        if r > worst.1 || r.is_nan() {
            worst = (i, if r.is_nan() { f64::INFINITY } else { r });
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= 1.0,
        "{what}: element {i} got {} want {} (err {:.3e}, bound {:.3e})",
        got[i],
        want[i],
        (got[i] as f64 - want[i]).abs(),
        bound[i]
    );
    worst.1
}

/// Whether `got` would fail against `want` with `bound` somewhere (for mutation checks).
fn fails(got: &[f64], want: &[f64], bound: &[f64]) -> bool {
    got.iter()
        .zip(want)
        .zip(bound)
        .any(|((g, w), b)| (g - w).abs() > *b)
}

fn upload(ctx: &Context, data: &[f32]) -> wgpu::Buffer {
    let b = f32_storage(ctx, "test f32", data.len()).unwrap();
    ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(data));
    b
}

fn run(ctx: &Context, ds: &[fswap::gpu::Dispatch]) {
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
}

/// Whether every pre-activation is farther than `margin` from a kink of the activation (finite
/// differences across a kink measure nothing).
fn off_kinks(act: &Activation, z: &[f64], margin: f64) -> bool {
    let kinks: &[f64] = match act {
        Activation::Relu | Activation::Leaky(_) => &[0.0],
        Activation::Relu6 => &[0.0, 6.0],
        _ => &[],
    };
    z.iter()
        .all(|v| kinks.iter().all(|k| (v - k).abs() > margin))
}

// ---------------------------------------------------------------------------------------------
// f64 adjoints vs finite differences

/// Checks the adjoint against central differences of L = Σ dy·forward for x, γ and β; returns
/// it. `fixed` holds per-group running statistics (else batch statistics, which depend on x).
#[allow(clippy::too_many_arguments)]
fn check_fd(
    layer: &Layer,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    dy: &[f64],
    fixed: Option<(Vec<f64>, Vec<f64>)>,
    what: &str,
) -> Adj {
    let batch = fixed.is_none();
    let stats = |x: &[f64]| fixed.clone().unwrap_or_else(|| layer.batch_stats(x));
    let loss = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
        let (m, v) = stats(x);
        let (y, _) = layer.forward(x, g, b, &m, &v);
        y.iter().zip(dy).map(|(a, b)| a * b).sum()
    };
    let (m, v) = stats(x);
    let (y, z) = layer.forward(x, gamma, beta, &m, &v);
    assert!(off_kinks(&layer.act, &z, 1e-3), "{what}: z near a kink");
    let zero = vec![0.0; layer.groups.len()];
    let adj = layer.adjoint(x, &y, dy, gamma, &m, &v, batch, &zero);
    let h = 1e-5;
    let fd = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
    let close = |fd: f64, a: f64, name: &str, i: usize| {
        assert!(
            (fd - a).abs() <= 1e-6 * (1.0 + a.abs()),
            "{what} {name}[{i}]: finite difference {fd}, adjoint {a}"
        );
    };
    for i in 0..x.len() {
        let f = |e: f64| {
            let mut xp = x.to_vec();
            xp[i] += e;
            loss(&xp, gamma, beta)
        };
        close(fd(&f), adj.dx[i], "dx", i);
    }
    for p in 0..gamma.len() {
        let f = |e: f64| {
            let mut gp = gamma.to_vec();
            gp[p] += e;
            loss(x, &gp, beta)
        };
        close(fd(&f), adj.dg[p], "dgamma", p);
        let f = |e: f64| {
            let mut bp = beta.to_vec();
            bp[p] += e;
            loss(x, gamma, &bp)
        };
        close(fd(&f), adj.db[p], "dbeta", p);
    }
    adj
}

#[test]
fn adjoints_match_finite_differences() {
    let mut rng = Rng::new(0xF1E);
    let acts = [
        Activation::None,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Leaky(0.2),
        Activation::Relu,
        Activation::Relu6,
    ];
    for (ai, act) in acts.iter().enumerate() {
        // γ large enough for ReLU6 to clamp at 6 somewhere.
        let (glo, ghi) = if *act == Activation::Relu6 {
            (3.5, 4.5)
        } else {
            (-1.5, 1.5)
        };
        let layers: Vec<(&str, Layer, bool)> = vec![
            (
                "bn channels",
                Layer::bn_channels(2, 3, 3, 5, act.clone()),
                true,
            ),
            ("bn features", Layer::bn_features(3, 5, act.clone()), true),
            (
                "instance static",
                Layer::rows(2, 3, 7, false, act.clone()),
                true,
            ),
            ("adain", Layer::rows(2, 2, 9, true, act.clone()), true),
            (
                "bn eval",
                Layer::bn_channels(2, 3, 2, 3, act.clone()),
                false,
            ),
            (
                "cond bn eval",
                Layer::rows(2, 3, 5, true, act.clone()),
                false,
            ),
        ];
        for (name, layer, batch) in layers {
            let what = format!("{name} {act:?}");
            // Draw until no pre-activation sits within 1e-3 of a kink (the steps move z by
            // less than 1e-4).
            let (x, dy, gamma, beta, fixed) = loop {
                let x: Vec<f64> = (0..layer.len)
                    .map(|_| rng.uniform(-2.0, 3.0) as f64)
                    .collect();
                let dy: Vec<f64> = (0..layer.len)
                    .map(|_| rng.uniform(-1.0, 1.0) as f64)
                    .collect();
                let np = layer.nparams;
                let gamma: Vec<f64> = (0..np).map(|_| rng.uniform(glo, ghi) as f64).collect();
                let beta: Vec<f64> = (0..np).map(|_| rng.uniform(-0.5, 0.5) as f64).collect();
                let ng = layer.groups.len();
                let fixed: Option<(Vec<f64>, Vec<f64>)> = (!batch).then(|| {
                    (
                        (0..ng).map(|_| rng.uniform(-0.5, 1.0) as f64).collect(),
                        (0..ng).map(|_| rng.uniform(0.5, 2.0) as f64).collect(),
                    )
                });
                let (m, v) = fixed.clone().unwrap_or_else(|| layer.batch_stats(&x));
                let (_, z) = layer.forward(&x, &gamma, &beta, &m, &v);
                if off_kinks(act, &z, 1e-3) {
                    break (x, dy, gamma, beta, fixed);
                }
            };
            let adj = check_fd(&layer, &x, &gamma, &beta, &dy, fixed, &what);
            if batch && ai == 0 {
                // Mutation: the eval-mode dx (dropping the batch-statistics terms) is wrong here.
                let worst = adj
                    .dx
                    .iter()
                    .zip(&adj.dx_eval)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(
                    worst > 1e-2,
                    "{what}: the mean terms should matter ({worst})"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Batch norm on the GPU

struct BnCase {
    layout: BnLayout,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    act: Activation,
    momentum: f32,
}

fn bn(layout: BnLayout, dims: [usize; 4], act: Activation) -> BnCase {
    BnCase {
        layout,
        n: dims[0],
        c: dims[1],
        h: dims[2],
        w: dims[3],
        act,
        momentum: 0.1,
    }
}

impl BnCase {
    fn shape(&self) -> Shape {
        match self.layout {
            BnLayout::Channels => Shape::new(self.n, self.c, self.h, self.w),
            BnLayout::Features => Shape::vector(self.n, self.c),
        }
    }
    fn layer(&self) -> Layer {
        match self.layout {
            BnLayout::Channels => {
                Layer::bn_channels(self.n, self.c, self.h, self.w, self.act.clone())
            }
            BnLayout::Features => Layer::bn_features(self.n, self.c, self.act.clone()),
        }
    }
    fn name(&self) -> String {
        format!("{:?} {:?} {:?}", self.layout, self.shape().dims(), self.act)
    }
}

/// Host data of one batch-norm case: x, dy (fp16 values), γ, β, running mean and variance.
struct BnData {
    x: Vec<f32>,
    dy: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    rm: Vec<f32>,
    rv: Vec<f32>,
}

fn bn_data(rng: &mut Rng, c: &BnCase) -> BnData {
    let len = c.shape().numel();
    let (glo, ghi) = if c.act == Activation::Relu6 {
        (3.5, 4.5)
    } else {
        (-1.5, 1.5)
    };
    BnData {
        x: rng.vec(len, -2.0, 3.0),
        dy: rng.vec(len, -1.0, 1.0),
        gamma: (0..c.c).map(|_| rng.uniform(glo, ghi)).collect(),
        beta: (0..c.c).map(|_| rng.uniform(-0.5, 0.5)).collect(),
        rm: (0..c.c).map(|_| rng.uniform(-0.5, 1.0)).collect(),
        rv: (0..c.c).map(|_| rng.uniform(0.5, 2.0)).collect(),
    }
}

fn bn_cases() -> Vec<BnCase> {
    use Activation::*;
    use BnLayout::*;
    vec![
        bn(Channels, [2, 5, 7, 9], Leaky(0.2)),
        bn(Channels, [2, 5, 7, 9], None),
        bn(Channels, [1, 3, 5, 3], Relu), // batch 1 with spatial extent
        bn(Channels, [3, 6, 1, 1], Sigmoid), // N·H·W = 3
        bn(Channels, [2, 3, 6, 7], Relu6),
        bn(Channels, [2, 3, 40, 37], Tanh), // several chunks
        bn(Features, [3, 13, 1, 1], None),
        bn(Features, [2, 6, 1, 1], Tanh),
        bn(Features, [5, 9, 1, 1], Relu),
        bn(Features, [4, 7, 1, 1], Leaky(0.01)),
    ]
}

#[test]
fn batch_norm_forward_train_updates_running_stats() {
    let mut rng = Rng::new(0xB0);
    let mut worst = [0f64; 5];
    for case in bn_cases() {
        let data = bn_data(&mut rng, &case);
        let layer = case.layer();
        let x = d(&data.x);
        let (mean, var) = layer.batch_stats(&x);
        let (y, z) = layer.forward(&x, &d(&data.gamma), &d(&data.beta), &mean, &var);
        let rho = layer.rho(&x, &var, true);
        let yb = layer.y_bound(
            &x,
            &y,
            &z,
            &d(&data.gamma),
            &d(&data.beta),
            &mean,
            &var,
            &rho,
        );
        let m = layer.groups[0].len() as f64;
        let mom = case.momentum as f64;
        // Saved statistics and two steps of running-stat updates, with bounds.
        let mut mean_b = Vec::new();
        let mut inv = Vec::new();
        let mut inv_b = Vec::new();
        let (mut rm, mut rv) = (d(&data.rm), d(&data.rv));
        let (mut rm_b, mut rv_b) = (vec![0.0; case.c], vec![0.0; case.c]);
        let mut rv_biased = d(&data.rv); // mutation: running var from the biased variance
        for (g, members) in layer.groups.iter().enumerate() {
            let mean_abs = members.iter().map(|&i| x[i].abs()).sum::<f64>() / m;
            let dmu = (m + 8.0) * U32 * mean_abs + U32 * mean[g].abs();
            mean_b.push(dmu + 1e-30);
            let s = 1.0 / (var[g] + EPS as f64).sqrt();
            inv.push(s);
            inv_b.push(rho[g] * s);
            let vu = var[g] * m / (m - 1.0);
            for _ in 0..2 {
                rm_b[g] +=
                    3.0 * U32 * ((1.0 - mom) * rm[g].abs() + mom * mean[g].abs()) + mom * dmu;
                rm[g] = (1.0 - mom) * rm[g] + mom * mean[g];
                rv_b[g] += 3.0 * U32 * ((1.0 - mom) * rv[g].abs() + mom * vu)
                    + mom * vu * (rho[g] + 2.0 * U32);
                rv[g] = (1.0 - mom) * rv[g] + mom * vu;
                rv_biased[g] = (1.0 - mom) * rv_biased[g] + mom * var[g];
            }
        }
        // (With thousands of values per channel the n/(n − 1) correction drops below the f32
        // reduction bound, so only the small cases can tell.)
        assert!(
            m > 1000.0 || fails(&rv_biased, &rv, &rv_b),
            "{}: a biased running variance should fail the check",
            case.name()
        );
        for ctx in contexts() {
            let what = format!("{} {}", case.name(), label(ctx));
            let bnl = BatchNorm::new(
                ctx,
                case.c,
                EPS,
                case.momentum,
                case.act.clone(),
                case.layout,
            )
            .unwrap();
            let st = BnState::from_host(ctx, &data.gamma, &data.beta, &data.rm, &data.rv).unwrap();
            let xt = Tensor::from_f32(ctx, case.shape(), &data.x, "x").unwrap();
            let yt = Tensor::new(ctx, case.shape(), "y").unwrap();
            let fwd = bnl
                .bind_forward(ctx, BnMode::Train, &xt, &st.buffers(), &yt)
                .unwrap();
            run(ctx, &fwd);
            run(ctx, &fwd); // a second training step on the same batch
            worst[0] = worst[0].max(assert_within(
                &yt.to_f32(ctx).unwrap(),
                &y,
                &yb,
                &format!("y {what}"),
            ));
            let saved = read_f32(ctx, &st.saved, 2 * case.c).unwrap();
            worst[1] = worst[1].max(assert_within(
                &saved[..case.c],
                &mean,
                &mean_b,
                &format!("saved mean {what}"),
            ));
            worst[2] = worst[2].max(assert_within(
                &saved[case.c..],
                &inv,
                &inv_b,
                &format!("saved invstd {what}"),
            ));
            worst[3] = worst[3].max(assert_within(
                &read_f32(ctx, &st.running_mean, case.c).unwrap(),
                &rm,
                &rm_b,
                &format!("running mean {what}"),
            ));
            worst[4] = worst[4].max(assert_within(
                &read_f32(ctx, &st.running_var, case.c).unwrap(),
                &rv,
                &rv_b,
                &format!("running var {what}"),
            ));
        }
    }
    eprintln!(
        "worst error / bound: y {:.3}, mean {:.3}, invstd {:.3}, running mean {:.3}, running var {:.3}",
        worst[0], worst[1], worst[2], worst[3], worst[4]
    );
}

#[test]
fn batch_norm_forward_eval_uses_running_stats() {
    let mut rng = Rng::new(0xE7);
    let mut worst = 0f64;
    for case in bn_cases() {
        let data = bn_data(&mut rng, &case);
        let layer = case.layer();
        let x = d(&data.x);
        let (mean, var) = (d(&data.rm), d(&data.rv));
        let (y, z) = layer.forward(&x, &d(&data.gamma), &d(&data.beta), &mean, &var);
        let rho = layer.rho(&x, &var, false);
        let yb = layer.y_bound(
            &x,
            &y,
            &z,
            &d(&data.gamma),
            &d(&data.beta),
            &mean,
            &var,
            &rho,
        );
        for ctx in contexts() {
            let what = format!("{} {}", case.name(), label(ctx));
            let bnl = BatchNorm::new(
                ctx,
                case.c,
                EPS,
                case.momentum,
                case.act.clone(),
                case.layout,
            )
            .unwrap();
            let st = BnState::from_host(ctx, &data.gamma, &data.beta, &data.rm, &data.rv).unwrap();
            let xt = Tensor::from_f32(ctx, case.shape(), &data.x, "x").unwrap();
            let yt = Tensor::new(ctx, case.shape(), "y").unwrap();
            let fwd = bnl
                .bind_forward(ctx, BnMode::Eval, &xt, &st.buffers(), &yt)
                .unwrap();
            run(ctx, &fwd);
            worst = worst.max(assert_within(
                &yt.to_f32(ctx).unwrap(),
                &y,
                &yb,
                &format!("eval y {what}"),
            ));
            let saved = read_f32(ctx, &st.saved, 2 * case.c).unwrap();
            assert_eq!(&saved[..case.c], &data.rm[..], "saved mean {what}");
            let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + EPS as f64).sqrt()).collect();
            let inv_b: Vec<f64> = inv.iter().map(|s| 8.0 * U32 * s).collect();
            assert_within(
                &saved[case.c..],
                &inv,
                &inv_b,
                &format!("saved invstd {what}"),
            );
            assert_eq!(
                read_f32(ctx, &st.running_mean, case.c).unwrap(),
                data.rm,
                "{what}"
            );
            assert_eq!(
                read_f32(ctx, &st.running_var, case.c).unwrap(),
                data.rv,
                "{what}"
            );
        }
    }
    eprintln!("eval y: worst error / bound {worst:.3}");
}

/// Runs forward then backward of one batch-norm case on `ctx`; returns (y, dx, dγ, dβ).
fn bn_gpu(
    ctx: &Context,
    case: &BnCase,
    data: &BnData,
    mode: BnMode,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let bnl = BatchNorm::new(
        ctx,
        case.c,
        EPS,
        case.momentum,
        case.act.clone(),
        case.layout,
    )
    .unwrap();
    let st = BnState::from_host(ctx, &data.gamma, &data.beta, &data.rm, &data.rv).unwrap();
    let s = case.shape();
    let xt = Tensor::from_f32(ctx, s, &data.x, "x").unwrap();
    let yt = Tensor::new(ctx, s, "y").unwrap();
    let dyt = Tensor::from_f32(ctx, s, &data.dy, "dy").unwrap();
    let dxt = Tensor::new(ctx, s, "dx").unwrap();
    let dg = f32_storage(ctx, "dgamma", case.c).unwrap();
    let db = f32_storage(ctx, "dbeta", case.c).unwrap();
    let p = st.buffers();
    let fwd = bnl.bind_forward(ctx, mode, &xt, &p, &yt).unwrap();
    let bwd = bnl
        .bind_backward(ctx, mode, &yt, &dyt, &xt, &p, &dxt, &dg, &db)
        .unwrap();
    run(ctx, &fwd);
    run(ctx, &bwd);
    (
        yt.to_f32(ctx).unwrap(),
        dxt.to_f32(ctx).unwrap(),
        read_f32(ctx, &dg, case.c).unwrap(),
        read_f32(ctx, &db, case.c).unwrap(),
    )
}

#[test]
fn batch_norm_backward_matches_adjoint() {
    let mut rng = Rng::new(0xBAC);
    let mut worst = [0f64; 3];
    let mut cases = bn_cases();
    // Chunk cap: 64 chunks of a channel's quads, chunk length not a multiple of the workgroup.
    cases.push(bn(
        BnLayout::Channels,
        [1, 2, 300, 283],
        Activation::Leaky(0.2),
    ));
    for case in cases {
        let data = bn_data(&mut rng, &case);
        let layer = case.layer();
        let x = d(&data.x);
        for mode in [BnMode::Train, BnMode::Eval] {
            let train = mode == BnMode::Train;
            let (mean, var) = if train {
                layer.batch_stats(&x)
            } else {
                (d(&data.rm), d(&data.rv))
            };
            let rho = layer.rho(&x, &var, train);
            for ctx in contexts() {
                let what = format!("{} {mode:?} {}", case.name(), label(ctx));
                let (y, dx, dg, db) = bn_gpu(ctx, &case, &data, mode);
                let adj = layer.adjoint(
                    &x,
                    &d(&y),
                    &d(&data.dy),
                    &d(&data.gamma),
                    &mean,
                    &var,
                    train,
                    &rho,
                );
                worst[0] = worst[0].max(assert_within(
                    &dx,
                    &adj.dx,
                    &adj.dx_b,
                    &format!("dx {what}"),
                ));
                worst[1] = worst[1].max(assert_within(
                    &dg,
                    &adj.dg,
                    &adj.dg_b,
                    &format!("dgamma {what}"),
                ));
                worst[2] = worst[2].max(assert_within(
                    &db,
                    &adj.db,
                    &adj.db_b,
                    &format!("dbeta {what}"),
                ));
                if train && layer.groups[0].len() < 1000 {
                    // Mutation: the eval formula would not pass as a training gradient (with very
                    // many values per channel the batch-statistics terms become tiny).
                    assert!(
                        fails(&adj.dx_eval, &adj.dx, &adj.dx_b),
                        "{what}: dropping the batch-statistics terms should fail"
                    );
                }
            }
        }
    }
    eprintln!(
        "worst error / bound: dx {:.3}, dgamma {:.3}, dbeta {:.3}",
        worst[0], worst[1], worst[2]
    );
}

#[test]
fn batch_norm_is_bitwise_deterministic() {
    let mut rng = Rng::new(7);
    for case in [
        bn(BnLayout::Channels, [2, 3, 40, 37], Activation::Leaky(0.2)),
        bn(BnLayout::Features, [6, 11, 1, 1], Activation::None),
    ] {
        let data = bn_data(&mut rng, &case);
        for ctx in contexts() {
            let bnl = BatchNorm::new(ctx, case.c, EPS, 0.0, case.act.clone(), case.layout).unwrap();
            let st = BnState::from_host(ctx, &data.gamma, &data.beta, &data.rm, &data.rv).unwrap();
            let s = case.shape();
            let xt = Tensor::from_f32(ctx, s, &data.x, "x").unwrap();
            let yt = Tensor::new(ctx, s, "y").unwrap();
            let dyt = Tensor::from_f32(ctx, s, &data.dy, "dy").unwrap();
            let dxt = Tensor::new(ctx, s, "dx").unwrap();
            let dg = f32_storage(ctx, "dgamma", case.c).unwrap();
            let db = f32_storage(ctx, "dbeta", case.c).unwrap();
            let p = st.buffers();
            let mut all = bnl.bind_forward(ctx, BnMode::Train, &xt, &p, &yt).unwrap();
            all.extend(
                bnl.bind_backward(ctx, BnMode::Train, &yt, &dyt, &xt, &p, &dxt, &dg, &db)
                    .unwrap(),
            );
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            let snap = || {
                (
                    bits(read_f32(ctx, &st.saved, 2 * case.c).unwrap()),
                    bits(read_f32(ctx, &dg, case.c).unwrap()),
                    bits(read_f32(ctx, &db, case.c).unwrap()),
                    dxt.to_f16(ctx).unwrap(),
                )
            };
            run(ctx, &all);
            let first = snap();
            for _ in 0..3 {
                run(ctx, &all);
                assert!(snap() == first, "{} {}", case.name(), label(ctx));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Instance norm / AdaIN / conditional batch norm

struct NgCase {
    name: &'static str,
    dims: [usize; 4],
    stats_running: bool,
    /// 0 none, 1 static, 2 style with (gamma_offset, beta_offset, gamma_bias, style width).
    affine: u8,
    style: (usize, usize, f32, usize),
    act: Activation,
}

fn ng_cases() -> Vec<NgCase> {
    use Activation::*;
    let c5 = |f| (1, 5 + 2, 1.0, f);
    vec![
        NgCase {
            name: "instance static",
            dims: [2, 5, 7, 9],
            stats_running: false,
            affine: 1,
            style: (0, 0, 0.0, 0),
            act: Leaky(0.2),
        },
        NgCase {
            name: "adain",
            dims: [2, 5, 7, 9],
            stats_running: false,
            affine: 2,
            style: c5(2 * 5 + 3),
            act: None,
        },
        NgCase {
            name: "instance plain",
            dims: [1, 6, 17, 19],
            stats_running: false,
            affine: 0,
            style: (0, 0, 0.0, 0),
            act: Tanh,
        },
        NgCase {
            name: "conditional bn",
            dims: [2, 5, 7, 9],
            stats_running: true,
            affine: 2,
            style: (0, 5, 0.0, 10),
            act: Leaky(0.01),
        },
        NgCase {
            name: "running static",
            dims: [2, 3, 1, 3],
            stats_running: true,
            affine: 1,
            style: (0, 0, 0.0, 0),
            act: Sigmoid,
        },
        NgCase {
            name: "adain overlapping ranges",
            dims: [2, 3, 5, 5],
            stats_running: false,
            affine: 2,
            style: (2, 1, 1.0, 6),
            act: Relu,
        },
        NgCase {
            name: "instance relu6",
            dims: [2, 3, 9, 8],
            stats_running: false,
            affine: 1,
            style: (0, 0, 0.0, 0),
            act: Relu6,
        },
    ]
}

#[test]
fn norm_grad_matches_adjoint() {
    let mut rng = Rng::new(0xAD);
    let mut worst = [0f64; 4];
    for case in ng_cases() {
        let [n, c, h, w] = case.dims;
        let plane = h * w;
        let shape = Shape::new(n, c, h, w);
        let x = rng.vec(shape.numel(), -2.0, 3.0);
        let dy = rng.vec(shape.numel(), -1.0, 1.0);
        let (glo, ghi) = if case.act == Activation::Relu6 {
            (3.5, 4.5)
        } else {
            (-1.5, 1.5)
        };
        let gamma: Vec<f32> = (0..c).map(|_| rng.uniform(glo, ghi)).collect();
        let beta: Vec<f32> = (0..c).map(|_| rng.uniform(-0.5, 0.5)).collect();
        let rmean: Vec<f32> = (0..c).map(|_| rng.uniform(-0.5, 1.0)).collect();
        let rvar: Vec<f32> = (0..c).map(|_| rng.uniform(0.5, 2.0)).collect();
        let (g_off, b_off, g_bias, fw) = case.style;
        let style = rng.vec(n * fw.max(1), -0.5, 0.5);
        // Per-group γ/β of the reference.
        let per_row = case.affine == 2;
        let layer = Layer::rows(n, c, plane, per_row, case.act.clone());
        let (pg, pb): (Vec<f64>, Vec<f64>) = match case.affine {
            0 => (vec![1.0; c], vec![0.0; c]),
            1 => (d(&gamma), d(&beta)),
            _ => (0..n * c)
                .map(|r| {
                    let (b, ch) = (r / c, r % c);
                    (
                        style[b * fw + g_off + ch] as f64 + g_bias as f64,
                        style[b * fw + b_off + ch] as f64,
                    )
                })
                .unzip(),
        };
        let xd = d(&x);
        let (mean, var) = if case.stats_running {
            (
                (0..n * c).map(|r| rmean[r % c] as f64).collect(),
                (0..n * c).map(|r| rvar[r % c] as f64).collect(),
            )
        } else {
            layer.batch_stats(&xd)
        };
        let batch = !case.stats_running;
        let rho = layer.rho(&xd, &var, batch);
        let (y, z) = layer.forward(&xd, &pg, &pb, &mean, &var);
        let yb = layer.y_bound(&xd, &y, &z, &pg, &pb, &mean, &var, &rho);
        let spec = NormSpec {
            channels: c,
            stats: if case.stats_running {
                Stats::Running {
                    mean: rmean.clone(),
                    var: rvar.clone(),
                }
            } else {
                Stats::Instance
            },
            affine: match case.affine {
                0 => Affine::None,
                1 => Affine::Static {
                    gamma: gamma.clone(),
                    beta: beta.clone(),
                },
                _ => Affine::Style {
                    gamma_offset: g_off,
                    beta_offset: b_off,
                    gamma_bias: g_bias,
                },
            },
            eps: EPS,
            act: case.act.clone(),
        };
        for ctx in contexts() {
            let what = format!(
                "{} {:?} {:?} {}",
                case.name,
                case.dims,
                case.act,
                label(ctx)
            );
            let ng = NormGrad::new(ctx, spec.clone()).unwrap();
            let xt = Tensor::from_f32(ctx, shape, &x, "x").unwrap();
            let yt = Tensor::new(ctx, shape, "y").unwrap();
            let dyt = Tensor::from_f32(ctx, shape, &dy, "dy").unwrap();
            let dxt = Tensor::new(ctx, shape, "dx").unwrap();
            let sshape = Shape::vector(n, fw.max(1));
            let st = Tensor::from_f32(ctx, sshape, &style, "style").unwrap();
            let sentinel = 0.375f32;
            let dst =
                Tensor::from_f32(ctx, sshape, &vec![sentinel; sshape.numel()], "dstyle").unwrap();
            let dg = f32_storage(ctx, "dgamma", c).unwrap();
            let db = f32_storage(ctx, "dbeta", c).unwrap();
            let style_arg = (case.affine == 2).then_some(&st);
            let grads = match case.affine {
                0 => NormParamGrads::None,
                1 => NormParamGrads::Static {
                    dgamma: &dg,
                    dbeta: &db,
                },
                _ => NormParamGrads::Style(&dst),
            };
            let fwd = ng.bind_forward(ctx, &xt, style_arg, &yt).unwrap();
            let bwd = ng
                .bind_backward(ctx, &yt, &dyt, &xt, style_arg, &dxt, grads)
                .unwrap();
            run(ctx, &fwd);
            run(ctx, &bwd);
            let yg = yt.to_f32(ctx).unwrap();
            worst[0] = worst[0].max(assert_within(&yg, &y, &yb, &format!("y {what}")));
            let adj = layer.adjoint(&xd, &d(&yg), &d(&dy), &pg, &mean, &var, batch, &rho);
            worst[1] = worst[1].max(assert_within(
                &dxt.to_f32(ctx).unwrap(),
                &adj.dx,
                &adj.dx_b,
                &format!("dx {what}"),
            ));
            if batch {
                assert!(
                    fails(&adj.dx_eval, &adj.dx, &adj.dx_b),
                    "{what}: dropping the row-statistics terms should fail"
                );
            }
            match case.affine {
                1 => {
                    worst[2] = worst[2].max(assert_within(
                        &read_f32(ctx, &dg, c).unwrap(),
                        &adj.dg,
                        &adj.dg_b,
                        &format!("dgamma {what}"),
                    ));
                    worst[2] = worst[2].max(assert_within(
                        &read_f32(ctx, &db, c).unwrap(),
                        &adj.db,
                        &adj.db_b,
                        &format!("dbeta {what}"),
                    ));
                }
                2 => {
                    // The style gradient: dγ and dβ per row at their feature offsets (summed
                    // where the ranges overlap), fp16; other features keep the sentinel.
                    let got = dst.to_f32(ctx).unwrap();
                    let mut want = vec![sentinel as f64; sshape.numel()];
                    let mut bound = vec![0.0; sshape.numel()];
                    let mut touched = vec![false; sshape.numel()];
                    for r in 0..n * c {
                        let (b, ch) = (r / c, r % c);
                        for (off, v, e) in [
                            (g_off, adj.dg[r], adj.dg_b[r]),
                            (b_off, adj.db[r], adj.db_b[r]),
                        ] {
                            let i = b * fw + off + ch;
                            if !touched[i] {
                                (want[i], bound[i], touched[i]) = (0.0, 0.0, true);
                            }
                            want[i] += v;
                            bound[i] += e;
                        }
                    }
                    for i in 0..want.len() {
                        bound[i] = if touched[i] {
                            bound[i] * (1.0 + U16) + U16 * want[i].abs() + SUB16
                        } else {
                            0.0
                        };
                    }
                    let untouched: Vec<f32> = (0..got.len())
                        .filter(|&i| !touched[i])
                        .map(|i| got[i])
                        .collect();
                    assert!(
                        untouched.iter().all(|&v| v == sentinel),
                        "{what}: features outside the γ/β ranges were written: {untouched:?}"
                    );
                    let (g2, w2, b2): (Vec<f32>, Vec<f64>, Vec<f64>) = (0..got.len())
                        .filter(|&i| touched[i])
                        .map(|i| (got[i], want[i], bound[i]))
                        .fold((vec![], vec![], vec![]), |mut a, (g, w, b)| {
                            a.0.push(g);
                            a.1.push(w);
                            a.2.push(b);
                            a
                        });
                    worst[3] =
                        worst[3].max(assert_within(&g2, &w2, &b2, &format!("style grad {what}")));
                }
                _ => {}
            }
        }
    }
    eprintln!(
        "worst error / bound: y {:.3}, dx {:.3}, static dgamma/dbeta {:.3}, style grad {:.3}",
        worst[0], worst[1], worst[2], worst[3]
    );
}

#[test]
fn norm_grad_reads_affine_from_gpu_buffers() {
    // Affine::Static from a trainer's buffers: the forward sees an in-place update without
    // rebinding.
    let ctx = &contexts()[0];
    let mut rng = Rng::new(3);
    let (n, c, h, w) = (2, 3, 5, 7);
    let shape = Shape::new(n, c, h, w);
    let x = rng.vec(shape.numel(), -1.0, 2.0);
    let spec = NormSpec {
        channels: c,
        stats: Stats::Instance,
        affine: Affine::Static {
            gamma: vec![],
            beta: vec![],
        },
        eps: EPS,
        act: Activation::None,
    };
    let g = upload(ctx, &[1.0, 1.0, 1.0]);
    let b = upload(ctx, &[0.0, 0.0, 0.0]);
    let ng = NormGrad::with_affine_buffers(ctx, spec, g.clone(), b.clone()).unwrap();
    let xt = Tensor::from_f32(ctx, shape, &x, "x").unwrap();
    let yt = Tensor::new(ctx, shape, "y").unwrap();
    let fwd = ng.bind_forward(ctx, &xt, None, &yt).unwrap();
    let layer = Layer::rows(n, c, h * w, false, Activation::None);
    let xd = d(&x);
    let (mean, var) = layer.batch_stats(&xd);
    let rho = layer.rho(&xd, &var, true);
    for (gamma, beta) in [
        ([1.0f32, 1.0, 1.0], [0.0f32, 0.0, 0.0]),
        ([2.0, -0.5, 0.25], [0.5, 1.0, -1.0]),
    ] {
        ctx.queue.write_buffer(&g, 0, bytemuck::cast_slice(&gamma));
        ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(&beta));
        run(ctx, &fwd);
        let (y, z) = layer.forward(&xd, &d(&gamma), &d(&beta), &mean, &var);
        let yb = layer.y_bound(&xd, &y, &z, &d(&gamma), &d(&beta), &mean, &var, &rho);
        assert_within(&yt.to_f32(ctx).unwrap(), &y, &yb, &format!("y γ {gamma:?}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The message of an expected error.
fn err<T>(r: fswap::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_are_errors() {
    let ctx = &contexts()[0];
    let ch = BnLayout::Channels;
    let e = err(BatchNorm::new(
        ctx,
        4,
        EPS,
        0.1,
        Activation::PRelu(vec![0.25]),
        ch,
    ));
    assert!(e.contains("PReLU"), "{e}");
    let e = err(BatchNorm::new(
        ctx,
        4,
        EPS,
        0.1,
        Activation::Leaky(-0.1),
        ch,
    ));
    assert!(e.contains("slope -0.1"), "{e}");
    let e = err(BatchNorm::new(ctx, 4, EPS, 1.5, Activation::None, ch));
    assert!(e.contains("momentum 1.5"), "{e}");
    let e = err(BatchNorm::new(ctx, 0, EPS, 0.1, Activation::None, ch));
    assert!(e.contains("channels must be at least 1"), "{e}");

    let bnl = BatchNorm::new(ctx, 3, EPS, 0.1, Activation::Relu, ch).unwrap();
    let st = BnState::new(ctx, 3).unwrap();
    let p = st.buffers();
    // N·H·W = 1 in training mode: PyTorch raises too; eval is fine.
    let x1 = Tensor::new(ctx, [1, 3, 1, 1], "x").unwrap();
    let y1 = Tensor::new(ctx, [1, 3, 1, 1], "y").unwrap();
    let e = err(bnl.bind_forward(ctx, BnMode::Train, &x1, &p, &y1));
    assert!(e.contains("more than one value per channel"), "{e}");
    bnl.bind_forward(ctx, BnMode::Eval, &x1, &p, &y1).unwrap();
    let x = Tensor::new(ctx, [2, 4, 3, 3], "x").unwrap();
    let e = err(bnl.bind_forward(ctx, BnMode::Train, &x, &p, &x));
    assert!(e.contains("has 4 channels, the layer 3"), "{e}");
    let x = Tensor::new(ctx, [2, 3, 3, 3], "x").unwrap();
    let y = Tensor::new(ctx, [2, 3, 3, 4], "y").unwrap();
    let e = err(bnl.bind_forward(ctx, BnMode::Train, &x, &p, &y));
    assert!(
        e.contains("output expected [2, 3, 3, 3], found [2, 3, 3, 4]"),
        "{e}"
    );
    let small = f32_storage(ctx, "small", 1).unwrap(); // 4 floats
    let short = BnBuffers { saved: &small, ..p };
    let e = err(bnl.bind_forward(ctx, BnMode::Eval, &x, &short, &x.clone()));
    assert!(e.contains("saved statistics buffer of 16 bytes"), "{e}");
    let dy = Tensor::new(ctx, [2, 3, 3, 3], "dy").unwrap();
    let dx = Tensor::new(ctx, [2, 3, 3, 3], "dx").unwrap();
    let e = err(bnl.bind_backward(ctx, BnMode::Train, &y, &dy, &x, &p, &dx, &small, &small));
    assert!(e.contains("y expected [2, 3, 3, 3]"), "{e}");
    let one = f32_storage(ctx, "one", 1).unwrap();
    let bnl5 = BatchNorm::new(ctx, 5, EPS, 0.1, Activation::Relu, ch).unwrap();
    let st5 = BnState::new(ctx, 5).unwrap();
    let x5 = Tensor::new(ctx, [2, 5, 3, 3], "x").unwrap();
    let e = err(bnl5.bind_backward(
        ctx,
        BnMode::Eval,
        &x5,
        &x5,
        &x5,
        &st5.buffers(),
        &x5,
        &one,
        &one,
    ));
    assert!(e.contains("dgamma buffer of 16 bytes"), "{e}");

    let feat = BatchNorm::new(ctx, 6, EPS, 0.1, Activation::None, BnLayout::Features).unwrap();
    let st6 = BnState::new(ctx, 6).unwrap();
    let v = Tensor::new(ctx, [2, 6, 1, 1], "v").unwrap();
    let e = err(feat.bind_forward(ctx, BnMode::Eval, &v, &st6.buffers(), &v));
    assert!(e.contains("vector batch [N, 1, 1, 6]"), "{e}");
    let v1 = Tensor::new(ctx, Shape::vector(1, 6), "v").unwrap();
    let e = err(feat.bind_forward(ctx, BnMode::Train, &v1, &st6.buffers(), &v1.clone()));
    assert!(e.contains("more than one value per channel"), "{e}");

    let e = err(BnState::from_host(
        ctx,
        &[1.0; 3],
        &[0.0; 3],
        &[0.0; 3],
        &[1.0, -1.0, 1.0],
    ));
    assert!(e.contains("negative"), "{e}");

    // NormGrad.
    let spec = |affine: Affine, act: Activation| NormSpec {
        channels: 3,
        stats: Stats::Instance,
        affine,
        eps: EPS,
        act,
    };
    let style_affine = Affine::Style {
        gamma_offset: 0,
        beta_offset: 3,
        gamma_bias: 1.0,
    };
    let e = err(NormGrad::new(
        ctx,
        spec(Affine::None, Activation::PRelu(vec![0.2])),
    ));
    assert!(e.contains("PReLU"), "{e}");
    let e = err(NormGrad::new(
        ctx,
        spec(
            Affine::Static {
                gamma: vec![1.0; 2],
                beta: vec![0.0; 3],
            },
            Activation::None,
        ),
    ));
    assert!(e.contains("gamma has 2 values for 3 channels"), "{e}");
    let e = err(NormGrad::with_affine_buffers(
        ctx,
        spec(Affine::None, Activation::None),
        one.clone(),
        one.clone(),
    ));
    assert!(e.contains("Affine::Static"), "{e}");
    let ng = NormGrad::new(ctx, spec(style_affine, Activation::None)).unwrap();
    let e = err(ng.bind_backward(ctx, &x, &x, &x, None, &x, NormParamGrads::None));
    assert!(e.contains("style tensor is required"), "{e}");
    let style = Tensor::new(ctx, Shape::vector(2, 5), "style").unwrap();
    let e = err(ng.bind_forward(ctx, &x, Some(&style), &x.clone()));
    assert!(e.contains("style must be [2, 1, 1, ≥6]"), "{e}");
    let style = Tensor::new(ctx, Shape::vector(2, 6), "style").unwrap();
    let e = err(ng.bind_backward(
        ctx,
        &x,
        &x,
        &x,
        Some(&style),
        &dx,
        NormParamGrads::Static {
            dgamma: &one,
            dbeta: &one,
        },
    ));
    assert!(e.contains("expected NormParamGrads::Style or None"), "{e}");
    let wrong = Tensor::new(ctx, Shape::vector(2, 7), "dstyle").unwrap();
    let e = err(ng.bind_backward(
        ctx,
        &x,
        &x,
        &x,
        Some(&style),
        &dx,
        NormParamGrads::Style(&wrong),
    ));
    assert!(e.contains("style gradient expected [2, 1, 1, 6]"), "{e}");
}
