//! Element-wise backward kernels (activations, PReLU, broadcast multiply / add, affine, attention
//! fusion, channel split) vs f64 adjoints on every storage path; each adjoint is itself checked
//! against central finite differences of the f64 forward.
//!
//! Tolerances, per element, from how the GPU computes (never a blanket constant). Inputs are drawn
//! already rounded to f16, so the reference sees exactly what the GPU stores; f32 constants
//! (slopes, scales) are the same f32 values on both sides. With U32 = 2^-24 and U16 = 2^-11:
//! - an fp16 result whose f32 value v' is within e of the exact v is stored within
//!   `e + U16·(|v| + e) + 2^-25` of v (half an ulp; 2^-25 absolute in the subnormal range);
//! - the product of two f16 values is exact in f32; a product with an f32 constant, a subtraction
//!   or `1 − y²` rounds once (U32 relative);
//! - activations: `dy·act'(y)` is at most three roundings of terms bounded by `|dy|·(1 + y²)`;
//! - sums of M exact products (slope gradient, gate gradient, Σ_hw dy) in any order (lanes, the
//!   workgroup tree, chunks) err by at most `M·U32·Σ|terms|`;
//! - the fusion's sigmoid is `1/(1 + exp(−m))` on the GPU: Vulkan and GLSL allow exp an error of
//!   `3 + 2|x|` ulp (11 ulp for the |m| ≤ 4 drawn here), the add half an ulp and the division 2.5
//!   ulp, about 28·U32 relative in all; the tests allow `SIG = 64·U32` relative.
//!
//! Every check also reports the worst error as a fraction of its bound, and a few mutation checks
//! assert that a wrong answer would be caught by the same bound.
mod common;

use common::{contexts, label, Rng};
use fswap::kernels::concat::{copy_channels, split_channels};
use fswap::kernels::conv_grad::{f32_storage, read_f32};
use fswap::kernels::eltwise_grad::{
    activation_backward, add_backward, affine_backward, mul_backward, prelu_backward, prelu_forward,
};
use fswap::kernels::fusion_grad::fusion_backward;
use fswap::kernels::Activation;
use fswap::{Context, Shape, Tensor};

const U32: f64 = 1.0 / (1u64 << 24) as f64; // f32 unit roundoff
const U16: f64 = 1.0 / (1u64 << 11) as f64; // f16 unit roundoff
const SUB: f64 = 1.0 / (1u64 << 25) as f64; // half the smallest f16 subnormal
const SIG: f64 = 64.0 * U32; // relative error allowed for the GPU's sigmoid

/// Bound for an fp16 result whose f32 value was within `e` of the exact `v`.
fn half_bound(v: f64, e: f64) -> f64 {
    e + U16 * (v.abs() + e) + SUB
}

/// Worst |got − want| / bound and where (infinite for a non-finite value).
fn worst_ratio(got: &[f32], want: &[f64], bound: &[f64]) -> (usize, f64) {
    assert_eq!(got.len(), want.len(), "length");
    assert_eq!(got.len(), bound.len(), "bound length");
    let mut worst = (0usize, 0f64);
    for i in 0..got.len() {
        let r = if got[i].is_finite() {
            (got[i] as f64 - want[i]).abs() / bound[i]
        } else {
            f64::INFINITY
        };
        if r > worst.1 || r.is_nan() {
            worst = (i, if r.is_nan() { f64::INFINITY } else { r });
        }
    }
    worst
}

/// Asserts |got − want| ≤ bound everywhere; returns the worst error / bound.
fn assert_within(got: &[f32], want: &[f64], bound: &[f64], what: &str) -> f64 {
    let (i, r) = worst_ratio(got, want, bound);
    assert!(
        r <= 1.0,
        "{what}: element {i} got {} want {} (err {:.3e}, bound {:.3e})",
        got[i],
        want[i],
        (got[i] as f64 - want[i]).abs(),
        bound[i]
    );
    r
}

/// Asserts the comparison would reject `wrong` (a mutated reference).
fn assert_rejects(got: &[f32], wrong: &[f64], bound: &[f64], what: &str) {
    let (_, r) = worst_ratio(got, wrong, bound);
    assert!(r > 1.0, "{what}: a wrong reference passed (ratio {r:.3})");
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn upload(ctx: &Context, s: Shape, v: &[f32], what: &str) -> Tensor {
    Tensor::from_f32(ctx, s, v, what).unwrap()
}

/// An output tensor pre-filled (pads included) with 1.0, so unwritten quads or pad lanes show.
fn output(ctx: &Context, s: Shape, what: &str) -> Tensor {
    let t = Tensor::new(ctx, s, what).unwrap();
    let ones = vec![half::f16::ONE; s.stored()];
    ctx.queue
        .write_buffer(t.buffer(), 0, bytemuck::cast_slice(&ones));
    t
}

/// Every stored half of `t`, row padding included.
fn raw_halves(ctx: &Context, t: &Tensor) -> Vec<f32> {
    let s = t.shape();
    let flat = Tensor::new(ctx, Shape::vector(1, s.stored()), "raw").unwrap();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(t.buffer(), 0, flat.buffer(), 0, s.bytes());
    ctx.queue.submit([enc.finish()]);
    flat.to_f32(ctx).unwrap()
}

/// Asserts the pad lanes of every row of `t` hold zeros.
fn assert_pads_zero(ctx: &Context, t: &Tensor, what: &str) {
    let s = t.shape();
    let raw = raw_halves(ctx, t);
    for r in 0..s.rows() {
        for j in s.plane()..s.row_stride() {
            let v = raw[r * s.row_stride() + j];
            assert!(v == 0.0, "{what}: row {r} pad lane {j} holds {v}");
        }
    }
}

fn f32_buffer(ctx: &Context, what: &str, data: &[f32]) -> wgpu::Buffer {
    let b = f32_storage(ctx, what, data.len()).unwrap();
    ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(data));
    b
}

/// Central difference of `f` in coordinate `i` of `x`.
fn central(f: &dyn Fn(&[f64]) -> f64, x: &[f64], i: usize, eps: f64) -> f64 {
    let (mut p, mut m) = (x.to_vec(), x.to_vec());
    p[i] += eps;
    m[i] -= eps;
    (f(&p) - f(&m)) / (2.0 * eps)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// ---------------------------------------------------------------------------------------------
// Activations from the output

/// act'(x) written in terms of y = act(x), PyTorch's masks at the kinks.
fn act_grad_from_y(act: &Activation, y: f64) -> f64 {
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
        Activation::PRelu(_) => unreachable!(),
    }
}

fn activations() -> Vec<Activation> {
    vec![
        Activation::None,
        Activation::Relu,
        Activation::Relu6,
        Activation::Leaky(0.2),
        Activation::Sigmoid,
        Activation::Tanh,
    ]
}

/// Pre-activation values in [-8, 8] kept 0.01 away from the kinks at 0 and 6.
fn pre_activations(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| loop {
            let v = common::f16r(rng.uniform(-8.0, 8.0));
            if v.abs() > 0.01 && (v - 6.0).abs() > 0.01 {
                break v;
            }
        })
        .collect()
}

#[test]
fn activation_adjoint_matches_finite_differences() {
    let mut rng = Rng::new(0xAC7);
    let x = f64s(&pre_activations(&mut rng, 200));
    let dy = f64s(&rng.vec(200, -1.0, 1.0));
    for act in activations() {
        for i in 0..x.len() {
            let f = |v: &[f64]| dy[i] * act.apply(v[i], 0);
            let fd = central(&f, &x, i, 1e-5);
            let adj = dy[i] * act_grad_from_y(&act, act.apply(x[i], 0));
            // Piecewise linear: exact up to rounding; sigmoid, tanh: eps²·|f'''|/6 < 1e-10.
            assert!(
                (fd - adj).abs() < 1e-8,
                "{act:?} x {}: fd {fd} adjoint {adj}",
                x[i]
            );
        }
    }
}

#[test]
fn activation_backward_matches_adjoint() {
    let mut rng = Rng::new(0xAC8);
    let shapes = [
        Shape::new(2, 5, 7, 9),
        Shape::new(1, 3, 5, 3),
        Shape::new(2, 3, 1, 13),
    ];
    for s in shapes {
        let x = pre_activations(&mut rng, s.numel());
        let dy = rng.vec(s.numel(), -1.0, 1.0);
        for act in activations() {
            // What the forward stored: act(x) rounded to f16.
            let y: Vec<f32> = x
                .iter()
                .map(|&v| common::f16r(act.apply(v as f64, 0) as f32))
                .collect();
            let want: Vec<f64> = (0..y.len())
                .map(|i| dy[i] as f64 * act_grad_from_y(&act, y[i] as f64))
                .collect();
            let bound: Vec<f64> = (0..y.len())
                .map(|i| {
                    let yv = y[i] as f64;
                    half_bound(want[i], 3.0 * U32 * (dy[i] as f64).abs() * (1.0 + yv * yv))
                })
                .collect();
            let mut worst = 0f64;
            for ctx in contexts() {
                let what = format!("d{act:?} {:?} {}", s.dims(), label(ctx));
                let yt = upload(ctx, s, &y, "y");
                let dyt = upload(ctx, s, &dy, "dy");
                let dxt = output(ctx, s, "dx");
                let d = activation_backward(ctx, &act, &yt, &dyt, &dxt).unwrap();
                ctx.run(&[&d]).unwrap();
                let got = dxt.to_f32(ctx).unwrap();
                worst = worst.max(assert_within(&got, &want, &bound, &what));
                assert_pads_zero(ctx, &dxt, &what);
                // Mutations: sigmoid's derivative taken as 1 − y, ReLU's mask as y ≥ 0.
                let wrong: Option<Vec<f64>> = match act {
                    Activation::Sigmoid => Some(
                        (0..y.len())
                            .map(|i| dy[i] as f64 * (1.0 - y[i] as f64))
                            .collect(),
                    ),
                    Activation::Relu => Some(
                        (0..y.len())
                            .map(|i| dy[i] as f64 * (y[i] >= 0.0) as u8 as f64)
                            .collect(),
                    ),
                    _ => None,
                };
                if let Some(wrong) = wrong {
                    assert_rejects(&got, &wrong, &bound, &what);
                }
            }
            eprintln!("d{act:?} {:?}: worst error / bound {worst:.3}", s.dims());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PReLU

/// Slope index of element `i` of shape `s` (as the kernels map slopes).
fn slope_index(s: Shape, shared: bool, i: usize) -> usize {
    if shared {
        0
    } else if s.c == 1 && s.h == 1 {
        i % s.w
    } else {
        (i / s.plane()) % s.c
    }
}

fn slope_count(s: Shape, shared: bool) -> usize {
    if shared {
        1
    } else if s.c == 1 && s.h == 1 {
        s.w
    } else {
        s.c
    }
}

fn prelu_f64(s: Shape, shared: bool, x: &[f64], slopes: &[f64]) -> Vec<f64> {
    (0..x.len())
        .map(|i| {
            if x[i] >= 0.0 {
                x[i]
            } else {
                slopes[slope_index(s, shared, i)] * x[i]
            }
        })
        .collect()
}

/// The adjoint of `prelu_f64`: dx, dslope, and per slope Σ|dy·x| and the term count (bounds).
struct PreluGrads {
    dx: Vec<f64>,
    dslope: Vec<f64>,
    dslope_abs: Vec<f64>,
    terms: Vec<usize>,
}

fn prelu_adjoint(s: Shape, shared: bool, x: &[f64], slopes: &[f64], dy: &[f64]) -> PreluGrads {
    let k = slope_count(s, shared);
    let mut g = PreluGrads {
        dx: vec![0.0; x.len()],
        dslope: vec![0.0; k],
        dslope_abs: vec![0.0; k],
        terms: vec![0; k],
    };
    for i in 0..x.len() {
        let j = slope_index(s, shared, i);
        g.terms[j] += 1;
        if x[i] > 0.0 {
            g.dx[i] = dy[i];
        } else {
            g.dx[i] = slopes[j] * dy[i];
            if x[i] < 0.0 {
                g.dslope[j] += dy[i] * x[i];
                g.dslope_abs[j] += (dy[i] * x[i]).abs();
            }
        }
    }
    g
}

/// Draws f16 values in [-1, 1] at least 0.01 from 0 (finite differences cross no kink).
fn away_from_zero(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| loop {
            let v = common::f16r(rng.uniform(-1.0, 1.0));
            if v.abs() > 0.01 {
                break v;
            }
        })
        .collect()
}

#[test]
fn prelu_adjoint_matches_finite_differences() {
    let mut rng = Rng::new(0x9E1);
    for (s, shared) in [
        (Shape::new(2, 3, 3, 5), false),
        (Shape::new(2, 3, 3, 5), true),
        (Shape::new(3, 1, 1, 7), false),
    ] {
        let x = f64s(&away_from_zero(&mut rng, s.numel()));
        let dy = f64s(&rng.vec(s.numel(), -1.0, 1.0));
        let slopes: Vec<f64> = (0..slope_count(s, shared))
            .map(|_| rng.uniform(-0.3, 0.6) as f64)
            .collect();
        let g = prelu_adjoint(s, shared, &x, &slopes, &dy);
        let loss_x = |v: &[f64]| dot(&prelu_f64(s, shared, v, &slopes), &dy);
        for i in 0..x.len() {
            let fd = central(&loss_x, &x, i, 1e-4);
            assert!(
                (fd - g.dx[i]).abs() < 1e-9,
                "{s:?} dx[{i}]: fd {fd} {}",
                g.dx[i]
            );
        }
        let loss_s = |v: &[f64]| dot(&prelu_f64(s, shared, &x, v), &dy);
        for j in 0..slopes.len() {
            let fd = central(&loss_s, &slopes, j, 1e-4);
            assert!(
                (fd - g.dslope[j]).abs() < 1e-9,
                "{s:?} dslope[{j}]: fd {fd} {}",
                g.dslope[j]
            );
        }
    }
}

#[test]
fn prelu_forward_and_backward_match_adjoint() {
    let mut rng = Rng::new(0x9E2);
    let cases = [
        (Shape::new(2, 5, 7, 9), false),
        (Shape::new(2, 5, 7, 9), true),
        (Shape::new(1, 3, 5, 11), false),
        (Shape::new(2, 3, 1, 13), true),
        // Vectors [N, 1, 1, F] (a linear layer's output): per feature, and shared.
        (Shape::new(3, 1, 1, 13), false),
        (Shape::new(3, 1, 1, 13), true),
        // Several position chunks per slope.
        (Shape::new(2, 3, 40, 37), false),
        (Shape::new(2, 3, 40, 37), true),
    ];
    for (s, shared) in cases {
        let x = rng.vec(s.numel(), -1.0, 1.0);
        let dy = rng.vec(s.numel(), -1.0, 1.0);
        let k = slope_count(s, shared);
        let slopes: Vec<f32> = (0..k).map(|_| rng.uniform(-0.3, 0.6)).collect();
        let (xd, dyd, sd) = (f64s(&x), f64s(&dy), f64s(&slopes));
        let y = prelu_f64(s, shared, &xd, &sd);
        // slope·x and slope·dy round once in f32, then to f16.
        let y_bound: Vec<f64> = y.iter().map(|v| half_bound(*v, U32 * v.abs())).collect();
        let g = prelu_adjoint(s, shared, &xd, &sd, &dyd);
        let dx_bound: Vec<f64> = g.dx.iter().map(|v| half_bound(*v, U32 * v.abs())).collect();
        let ds_bound: Vec<f64> = (0..k)
            .map(|j| g.terms[j] as f64 * U32 * g.dslope_abs[j] + 1e-30)
            .collect();
        let mut worst = [0f64; 3];
        for ctx in contexts() {
            let what = format!("prelu {:?} shared {shared} {}", s.dims(), label(ctx));
            let sb = f32_buffer(ctx, "slopes", &slopes);
            let xt = upload(ctx, s, &x, "x");
            let dyt = upload(ctx, s, &dy, "dy");
            let yt = output(ctx, s, "y");
            let dxt = output(ctx, s, "dx");
            let ds = f32_storage(ctx, "dslope", k).unwrap();
            let fwd = prelu_forward(ctx, &sb, shared, &xt, &yt).unwrap();
            let bwd = prelu_backward(ctx, &sb, shared, &xt, &dyt, &dxt, &ds).unwrap();
            let mut all = vec![&fwd];
            all.extend(bwd.iter());
            ctx.run(&all).unwrap();
            worst[0] = worst[0].max(assert_within(
                &yt.to_f32(ctx).unwrap(),
                &y,
                &y_bound,
                &format!("y {what}"),
            ));
            let got_dx = dxt.to_f32(ctx).unwrap();
            worst[1] = worst[1].max(assert_within(
                &got_dx,
                &g.dx,
                &dx_bound,
                &format!("dx {what}"),
            ));
            let got_ds = read_f32(ctx, &ds, k).unwrap();
            worst[2] = worst[2].max(assert_within(
                &got_ds,
                &g.dslope,
                &ds_bound,
                &format!("dslope {what}"),
            ));
            assert_pads_zero(ctx, &yt, &format!("y {what}"));
            assert_pads_zero(ctx, &dxt, &format!("dx {what}"));
            // Mutations: the slope gradient summed over x > 0 as well; dx without the slope.
            let wrong: Vec<f64> = (0..k)
                .map(|j| {
                    (0..x.len())
                        .filter(|&i| slope_index(s, shared, i) == j)
                        .map(|i| dyd[i] * xd[i])
                        .sum()
                })
                .collect();
            assert_rejects(&got_ds, &wrong, &ds_bound, &what);
            assert_rejects(&got_dx, &dyd, &dx_bound, &what);
        }
        eprintln!(
            "prelu {:?} shared {shared}: worst error / bound y {:.3}, dx {:.3}, dslope {:.3}",
            s.dims(),
            worst[0],
            worst[1],
            worst[2]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Broadcast multiply and add, affine

/// Index into the gate of `a`'s element `i`: same shape, `[N, C, 1, 1]` or `[N, 1, 1, C]` (both
/// are one value per (n, c) in logical order).
fn gate_index(s: Shape, g: Shape, i: usize) -> usize {
    if g == s {
        i
    } else {
        i / s.plane()
    }
}

/// Gradients of `L = Σ dy·(a ⊙ g)`: da, dg, and per dg element Σ|dy·a| and the term count.
fn mul_adjoint(s: Shape, gs: Shape, a: &[f64], g: &[f64], dy: &[f64]) -> [Vec<f64>; 3] {
    let mut da = vec![0.0; a.len()];
    let mut dg = vec![0.0; gs.numel()];
    let mut dg_abs = vec![0.0; gs.numel()];
    for i in 0..a.len() {
        let j = gate_index(s, gs, i);
        da[i] = dy[i] * g[j];
        dg[j] += dy[i] * a[i];
        dg_abs[j] += (dy[i] * a[i]).abs();
    }
    [da, dg, dg_abs]
}

fn gate_shapes(s: Shape) -> [Shape; 3] {
    [s, Shape::new(s.n, s.c, 1, 1), Shape::vector(s.n, s.c)]
}

#[test]
fn mul_add_affine_adjoints_match_finite_differences() {
    let mut rng = Rng::new(0x3u64);
    let s = Shape::new(2, 3, 3, 5);
    for gs in gate_shapes(s) {
        let a = f64s(&rng.vec(s.numel(), -1.0, 1.0));
        let g = f64s(&rng.vec(gs.numel(), -1.0, 1.0));
        let dy = f64s(&rng.vec(s.numel(), -1.0, 1.0));
        let [da, dg, _] = mul_adjoint(s, gs, &a, &g, &dy);
        let mul = |a: &[f64], g: &[f64]| -> f64 {
            (0..a.len())
                .map(|i| dy[i] * a[i] * g[gate_index(s, gs, i)])
                .sum()
        };
        let add = |g: &[f64]| -> f64 {
            (0..a.len())
                .map(|i| dy[i] * (a[i] + g[gate_index(s, gs, i)]))
                .sum()
        };
        for (i, want) in da.iter().enumerate() {
            let fd = central(&|v| mul(v, &g), &a, i, 1e-3);
            assert!((fd - want).abs() < 1e-9, "mul {gs:?} da[{i}]");
        }
        for (j, want) in dg.iter().enumerate() {
            let fd = central(&|v| mul(&a, v), &g, j, 1e-3);
            assert!((fd - want).abs() < 1e-9, "mul {gs:?} dg[{j}]");
            // Add: the broadcast operand's gradient is Σ dy over what it was added to.
            let fd = central(&add, &g, j, 1e-3);
            let want: f64 = (0..a.len())
                .filter(|&i| gate_index(s, gs, i) == j)
                .map(|i| dy[i])
                .sum();
            assert!((fd - want).abs() < 1e-9, "add {gs:?} db[{j}]");
        }
    }
    // Affine y = a·scale[c] + shift[c]: da = dy·scale[c].
    let scale: Vec<f64> = (0..s.c).map(|_| rng.uniform(-2.0, 2.0) as f64).collect();
    let a = f64s(&rng.vec(s.numel(), -1.0, 1.0));
    let dy = f64s(&rng.vec(s.numel(), -1.0, 1.0));
    let affine = |a: &[f64]| -> f64 {
        (0..a.len())
            .map(|i| dy[i] * (a[i] * scale[(i / s.plane()) % s.c] + 0.25))
            .sum()
    };
    for i in 0..a.len() {
        let fd = central(&affine, &a, i, 1e-3);
        let want = dy[i] * scale[(i / s.plane()) % s.c];
        assert!((fd - want).abs() < 1e-9, "affine da[{i}]");
    }
}

#[test]
fn mul_backward_matches_adjoint() {
    let mut rng = Rng::new(0x3u64 << 8);
    let shapes = [
        Shape::new(2, 5, 7, 9),
        Shape::new(1, 3, 5, 11),
        Shape::new(2, 6, 1, 1),
        // Several position chunks per gate value.
        Shape::new(2, 3, 64, 61),
    ];
    for s in shapes {
        for gs in gate_shapes(s) {
            let a = rng.vec(s.numel(), -1.0, 1.0);
            let g = rng.vec(gs.numel(), -1.0, 1.0);
            let dy = rng.vec(s.numel(), -1.0, 1.0);
            let [da, dg, dg_abs] = mul_adjoint(s, gs, &f64s(&a), &f64s(&g), &f64s(&dy));
            // da and a same-shape dg: one exact product; broadcast dg: a sum of H·W products.
            let m = (s.numel() / gs.numel()) as f64;
            let da_bound: Vec<f64> = da.iter().map(|v| half_bound(*v, 0.0)).collect();
            let dg_bound: Vec<f64> = dg
                .iter()
                .zip(&dg_abs)
                .map(|(v, t)| half_bound(*v, m * U32 * t))
                .collect();
            let mut worst = [0f64; 2];
            for ctx in contexts() {
                let what = format!("mul {:?} gate {:?} {}", s.dims(), gs.dims(), label(ctx));
                let at = upload(ctx, s, &a, "a");
                let gt = upload(ctx, gs, &g, "g");
                let dyt = upload(ctx, s, &dy, "dy");
                let dat = output(ctx, s, "da");
                let dgt = output(ctx, gs, "dg");
                let ds = mul_backward(ctx, &at, &gt, &dyt, &dat, &dgt).unwrap();
                ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
                worst[0] = worst[0].max(assert_within(
                    &dat.to_f32(ctx).unwrap(),
                    &da,
                    &da_bound,
                    &format!("da {what}"),
                ));
                let got = dgt.to_f32(ctx).unwrap();
                worst[1] = worst[1].max(assert_within(&got, &dg, &dg_bound, &format!("dg {what}")));
                assert_pads_zero(ctx, &dat, &format!("da {what}"));
                assert_pads_zero(ctx, &dgt, &format!("dg {what}"));
                if gs != s {
                    // Mutation: the gate gradient of the wrong sample (n and 1 − n swapped).
                    let swapped: Vec<f64> =
                        (0..dg.len()).map(|j| dg[(j + s.c) % dg.len()]).collect();
                    if s.n == 2 {
                        assert_rejects(&got, &swapped, &dg_bound, &what);
                    }
                }
            }
            eprintln!(
                "mul {:?} gate {:?}: worst error / bound da {:.3}, dg {:.3}",
                s.dims(),
                gs.dims(),
                worst[0],
                worst[1]
            );
        }
    }
}

#[test]
fn add_backward_matches_adjoint() {
    let mut rng = Rng::new(0xADD);
    let shapes = [
        Shape::new(2, 5, 7, 9),
        Shape::new(1, 3, 5, 11),
        Shape::new(2, 3, 64, 61),
    ];
    for s in shapes {
        for bs in gate_shapes(s) {
            let dy = rng.vec(s.numel(), -1.0, 1.0);
            let mut db = vec![0f64; bs.numel()];
            let mut db_abs = vec![0f64; bs.numel()];
            for (i, v) in dy.iter().enumerate() {
                let j = gate_index(s, bs, i);
                db[j] += *v as f64;
                db_abs[j] += v.abs() as f64;
            }
            let m = (s.numel() / bs.numel()) as f64;
            let bound: Vec<f64> = db
                .iter()
                .zip(&db_abs)
                .map(|(v, t)| half_bound(*v, m * U32 * t))
                .collect();
            let mut worst = 0f64;
            for ctx in contexts() {
                let what = format!("add {:?} b {:?} {}", s.dims(), bs.dims(), label(ctx));
                let dyt = upload(ctx, s, &dy, "dy");
                let dbt = output(ctx, bs, "db");
                let ds = add_backward(ctx, &dyt, &dbt).unwrap();
                ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
                let got = dbt.to_f32(ctx).unwrap();
                worst = worst.max(assert_within(&got, &db, &bound, &what));
                assert_pads_zero(ctx, &dbt, &what);
                if bs != s {
                    // Mutation: the mean instead of the sum.
                    let mean: Vec<f64> = db.iter().map(|v| v / m).collect();
                    assert_rejects(&got, &mean, &bound, &what);
                }
            }
            eprintln!(
                "add {:?} b {:?}: worst error / bound {worst:.3}",
                s.dims(),
                bs.dims()
            );
        }
    }
}

#[test]
fn affine_backward_matches_adjoint() {
    let mut rng = Rng::new(0xAFF);
    for s in [Shape::new(2, 5, 7, 9), Shape::new(1, 3, 5, 11)] {
        let dy = rng.vec(s.numel(), -1.0, 1.0);
        for per_channel in [true, false] {
            let scale: Vec<f32> = (0..if per_channel { s.c } else { 1 })
                .map(|_| rng.uniform(-2.0, 2.0))
                .collect();
            let sc = |i: usize| {
                scale[if per_channel {
                    (i / s.plane()) % s.c
                } else {
                    0
                }] as f64
            };
            let want: Vec<f64> = (0..dy.len()).map(|i| dy[i] as f64 * sc(i)).collect();
            // dy·scale rounds once in f32 (f32 constant), then to f16.
            let bound: Vec<f64> = want.iter().map(|v| half_bound(*v, U32 * v.abs())).collect();
            for ctx in contexts() {
                let what = format!(
                    "affine {:?} per channel {per_channel} {}",
                    s.dims(),
                    label(ctx)
                );
                let dyt = upload(ctx, s, &dy, "dy");
                let dat = output(ctx, s, "da");
                let d = affine_backward(ctx, &scale, &dyt, &dat).unwrap();
                ctx.run(&[&d]).unwrap();
                assert_within(&dat.to_f32(ctx).unwrap(), &want, &bound, &what);
                assert_pads_zero(ctx, &dat, &what);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Attention fusion

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// `y = m'⊙a + (1 − m')⊙b`, m' = m or σ(m), m `[N, 1, H, W]`.
fn fusion_f64(s: Shape, sig: bool, a: &[f64], b: &[f64], m: &[f64]) -> Vec<f64> {
    (0..a.len())
        .map(|i| {
            let mv = m[(i / (s.c * s.plane())) * s.plane() + i % s.plane()];
            let mv = if sig { sigmoid(mv) } else { mv };
            mv * a[i] + (1.0 - mv) * b[i]
        })
        .collect()
}

struct FusionGrads {
    da: Vec<f64>,
    db: Vec<f64>,
    dm: Vec<f64>,
    /// Per da / db element: its error allowance before the f16 store.
    da_err: Vec<f64>,
    db_err: Vec<f64>,
    dm_err: Vec<f64>,
}

/// The adjoint of `fusion_f64` with the error allowances of the GPU's f32 evaluation.
fn fusion_adjoint(s: Shape, sig: bool, a: &[f64], b: &[f64], m: &[f64], dy: &[f64]) -> FusionGrads {
    let plane = s.plane();
    let mut g = FusionGrads {
        da: vec![0.0; a.len()],
        db: vec![0.0; a.len()],
        dm: vec![0.0; m.len()],
        da_err: vec![0.0; a.len()],
        db_err: vec![0.0; a.len()],
        dm_err: vec![0.0; m.len()],
    };
    for n in 0..s.n {
        for p in 0..plane {
            let mi = n * plane + p;
            let (mv, w) = if sig {
                let sv = sigmoid(m[mi]);
                (sv, sv * (1.0 - sv))
            } else {
                (m[mi], 1.0)
            };
            // Error of m' and 1 − m' as the GPU computes them.
            let e_m = if sig { SIG * mv } else { 0.0 };
            let mut acc = 0.0;
            let mut acc_abs = 0.0;
            for c in 0..s.c {
                let i = (n * s.c + c) * plane + p;
                g.da[i] = dy[i] * mv;
                g.db[i] = dy[i] * (1.0 - mv);
                g.da_err[i] = dy[i].abs() * (e_m + U32 * mv.abs());
                g.db_err[i] = dy[i].abs() * (e_m + 2.0 * U32);
                acc += dy[i] * (a[i] - b[i]);
                acc_abs += dy[i].abs() * (a[i].abs() + b[i].abs());
            }
            // Σ_c of C products of a rounded difference: (C + 1)·U32·Σ|terms|.
            let e_acc = (s.c as f64 + 1.0) * U32 * acc_abs;
            g.dm[mi] = acc * w;
            g.dm_err[mi] = if sig {
                // s(1 − s) from an s within SIG·s, with two roundings, times acc.
                e_acc * w + (acc.abs() + e_acc) * (SIG * mv + 3.0 * U32 * w)
            } else {
                e_acc
            };
        }
    }
    g
}

#[test]
fn fusion_adjoint_matches_finite_differences() {
    let mut rng = Rng::new(0xF05);
    let s = Shape::new(2, 3, 3, 5);
    for sig in [false, true] {
        let a = f64s(&rng.vec(s.numel(), -1.0, 1.0));
        let b = f64s(&rng.vec(s.numel(), -1.0, 1.0));
        let m = f64s(&if sig {
            rng.vec(s.n * s.plane(), -4.0, 4.0)
        } else {
            rng.vec(s.n * s.plane(), 0.0, 1.0)
        });
        let dy = f64s(&rng.vec(s.numel(), -1.0, 1.0));
        let g = fusion_adjoint(s, sig, &a, &b, &m, &dy);
        let eps = 1e-5;
        // Linear in a and b; smooth in m (eps²·|L'''|/6 is far below 1e-8).
        for i in 0..a.len() {
            let fd = central(&|v| dot(&fusion_f64(s, sig, v, &b, &m), &dy), &a, i, eps);
            assert!((fd - g.da[i]).abs() < 1e-8, "sigmoid {sig} da[{i}]");
            let fd = central(&|v| dot(&fusion_f64(s, sig, &a, v, &m), &dy), &b, i, eps);
            assert!((fd - g.db[i]).abs() < 1e-8, "sigmoid {sig} db[{i}]");
        }
        for i in 0..m.len() {
            let fd = central(&|v| dot(&fusion_f64(s, sig, &a, &b, v), &dy), &m, i, eps);
            assert!(
                (fd - g.dm[i]).abs() < 1e-8,
                "sigmoid {sig} dm[{i}]: fd {fd} adjoint {}",
                g.dm[i]
            );
        }
    }
}

#[test]
fn fusion_backward_matches_adjoint() {
    let mut rng = Rng::new(0xF06);
    let shapes = [
        Shape::new(2, 5, 7, 9),
        Shape::new(1, 3, 5, 11),
        Shape::new(2, 1, 3, 1),
        Shape::new(1, 7, 16, 12),
    ];
    for s in shapes {
        let ms = Shape::new(s.n, 1, s.h, s.w);
        let a = rng.vec(s.numel(), -1.0, 1.0);
        let b = rng.vec(s.numel(), -1.0, 1.0);
        let dy = rng.vec(s.numel(), -1.0, 1.0);
        for sig in [false, true] {
            let m = if sig {
                rng.vec(ms.numel(), -4.0, 4.0)
            } else {
                rng.vec(ms.numel(), 0.0, 1.0)
            };
            let g = fusion_adjoint(s, sig, &f64s(&a), &f64s(&b), &f64s(&m), &f64s(&dy));
            let bound = |v: &[f64], e: &[f64]| -> Vec<f64> {
                v.iter().zip(e).map(|(v, e)| half_bound(*v, *e)).collect()
            };
            let (da_b, db_b, dm_b) = (
                bound(&g.da, &g.da_err),
                bound(&g.db, &g.db_err),
                bound(&g.dm, &g.dm_err),
            );
            let mut worst = [0f64; 3];
            for ctx in contexts() {
                for with_db in [true, false] {
                    let what = format!(
                        "fusion {:?} sigmoid {sig} db {with_db} {}",
                        s.dims(),
                        label(ctx)
                    );
                    let at = upload(ctx, s, &a, "a");
                    let bt = upload(ctx, s, &b, "b");
                    let mt = upload(ctx, ms, &m, "m");
                    let dyt = upload(ctx, s, &dy, "dy");
                    let dat = output(ctx, s, "da");
                    let dbt = output(ctx, s, "db");
                    let dmt = output(ctx, ms, "dm");
                    let d = fusion_backward(
                        ctx,
                        &at,
                        &bt,
                        &mt,
                        sig,
                        &dyt,
                        &dat,
                        &dmt,
                        with_db.then_some(&dbt),
                    )
                    .unwrap();
                    ctx.run(&[&d]).unwrap();
                    worst[0] = worst[0].max(assert_within(
                        &dat.to_f32(ctx).unwrap(),
                        &g.da,
                        &da_b,
                        &format!("da {what}"),
                    ));
                    let got_dm = dmt.to_f32(ctx).unwrap();
                    worst[2] =
                        worst[2].max(assert_within(&got_dm, &g.dm, &dm_b, &format!("dm {what}")));
                    assert_pads_zero(ctx, &dat, &format!("da {what}"));
                    assert_pads_zero(ctx, &dmt, &format!("dm {what}"));
                    if with_db {
                        worst[1] = worst[1].max(assert_within(
                            &dbt.to_f32(ctx).unwrap(),
                            &g.db,
                            &db_b,
                            &format!("db {what}"),
                        ));
                        assert_pads_zero(ctx, &dbt, &format!("db {what}"));
                    } else {
                        // Untouched: still the 1.0 it was filled with.
                        assert!(
                            dbt.to_f32(ctx).unwrap().iter().all(|&v| v == 1.0),
                            "db written without being asked for: {what}"
                        );
                    }
                    if sig {
                        // Mutation: dm without the sigmoid's derivative.
                        let raw: Vec<f64> =
                            g.dm.iter()
                                .zip(&m)
                                .map(|(v, &mv)| {
                                    let sv = sigmoid(mv as f64);
                                    v / (sv * (1.0 - sv))
                                })
                                .collect();
                        assert_rejects(&got_dm, &raw, &dm_b, &what);
                    }
                }
            }
            eprintln!(
                "fusion {:?} sigmoid {sig}: worst error / bound da {:.3}, db {:.3}, dm {:.3}",
                s.dims(),
                worst[0],
                worst[1],
                worst[2]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Channel split

#[test]
fn split_channels_is_the_adjoint_of_concat() {
    let mut rng = Rng::new(0x5911);
    let (n, h, w) = (2, 5, 9);
    let parts = [3usize, 1, 5];
    let wide_c: usize = parts.iter().sum();
    let ws = Shape::new(n, wide_c, h, w);
    let wide = rng.vec(ws.numel(), -1.0, 1.0);
    for ctx in contexts() {
        let what = label(ctx);
        let wt = upload(ctx, ws, &wide, "wide");
        let mut off = 0;
        let mut outs = Vec::new();
        let mut ds = Vec::new();
        for &c in &parts {
            let s = Shape::new(n, c, h, w);
            let t = output(ctx, s, "part");
            ds.push(split_channels(ctx, &wt, &t, off).unwrap());
            outs.push((t, off));
            off += c;
        }
        ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
        // Exact: each part is the channel slice, bit for bit.
        for (t, off) in &outs {
            let s = t.shape();
            let got = t.to_f32(ctx).unwrap();
            let want: Vec<f32> = (0..s.numel())
                .map(|i| {
                    let (b, rest) = (i / (s.c * s.plane()), i % (s.c * s.plane()));
                    wide[(b * wide_c + off) * s.plane() + rest]
                })
                .collect();
            assert_eq!(got, want, "split c{} at {off} {what}", s.c);
            assert_pads_zero(ctx, t, &what);
        }
        // And concat of the parts rebuilds the wide tensor: split ∘ copy is the identity.
        let back = output(ctx, ws, "back");
        let cs: Vec<_> = outs
            .iter()
            .map(|(t, off)| copy_channels(ctx, t, &back, *off).unwrap())
            .collect();
        ctx.run(&cs.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(back.to_f32(ctx).unwrap(), wide, "round trip {what}");
    }
}

// ---------------------------------------------------------------------------------------------
// Determinism and errors

#[test]
fn reductions_are_bitwise_deterministic() {
    let mut rng = Rng::new(0xDE7);
    let s = Shape::new(2, 3, 64, 61);
    let x = rng.vec(s.numel(), -1.0, 1.0);
    let dy = rng.vec(s.numel(), -1.0, 1.0);
    let g = rng.vec(s.n * s.c, -1.0, 1.0);
    let slopes = [0.25f32, -0.1, 0.4];
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for ctx in contexts() {
        let what = label(ctx);
        let sb = f32_buffer(ctx, "slopes", &slopes);
        let xt = upload(ctx, s, &x, "x");
        let dyt = upload(ctx, s, &dy, "dy");
        let gt = upload(ctx, Shape::vector(s.n, s.c), &g, "g");
        let dxt = output(ctx, s, "dx");
        let dgt = output(ctx, Shape::vector(s.n, s.c), "dg");
        let dbt = output(ctx, Shape::new(s.n, s.c, 1, 1), "db");
        let dsc = f32_storage(ctx, "dslope c", 3).unwrap();
        let dss = f32_storage(ctx, "dslope shared", 1).unwrap();
        let mut all = prelu_backward(ctx, &sb, false, &xt, &dyt, &dxt, &dsc).unwrap();
        all.extend(prelu_backward(ctx, &sb, true, &xt, &dyt, &dxt, &dss).unwrap());
        let dat = output(ctx, s, "da");
        all.extend(mul_backward(ctx, &xt, &gt, &dyt, &dat, &dgt).unwrap());
        all.extend(add_backward(ctx, &dyt, &dbt).unwrap());
        let refs: Vec<_> = all.iter().collect();
        let read = || {
            (
                bits(&read_f32(ctx, &dsc, 3).unwrap()),
                bits(&read_f32(ctx, &dss, 1).unwrap()),
                bits(&dgt.to_f32(ctx).unwrap()),
                bits(&dbt.to_f32(ctx).unwrap()),
            )
        };
        ctx.run(&refs).unwrap();
        let first = read();
        for _ in 0..3 {
            ctx.run(&refs).unwrap();
            assert_eq!(first, read(), "{what}");
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let ctx = &contexts()[0];
    let s = Shape::new(2, 5, 7, 9);
    let t = |s: Shape| Tensor::new(ctx, s, "t").unwrap();
    let (y, dy, dx) = (t(s), t(s), t(s));
    let err = |r: Result<fswap::gpu::Dispatch, fswap::Error>| r.err().unwrap().to_string();
    let e = err(activation_backward(
        ctx,
        &Activation::PRelu(vec![0.1]),
        &y,
        &dy,
        &dx,
    ));
    assert!(e.contains("prelu_backward"), "{e}");
    for slope in [0.0, -0.2, f32::NAN] {
        let e = err(activation_backward(
            ctx,
            &Activation::Leaky(slope),
            &y,
            &dy,
            &dx,
        ));
        assert!(e.contains("slope"), "{e}");
    }
    let e = err(activation_backward(
        ctx,
        &Activation::Relu,
        &y,
        &t(Shape::new(2, 5, 7, 8)),
        &dx,
    ));
    assert!(
        e.contains("dy expected [2, 5, 7, 9], found [2, 5, 7, 8]"),
        "{e}"
    );
    // Per-channel slopes need C = 5 floats (20 bytes); the buffer holds 4.
    let small = f32_storage(ctx, "small", 4).unwrap();
    let e = err(prelu_forward(ctx, &small, false, &y, &dx));
    assert!(e.contains("needs STORAGE and 20 bytes"), "{e}");
    let ok = f32_storage(ctx, "slopes", 5).unwrap();
    let e = prelu_backward(ctx, &ok, false, &y, &dy, &dx, &small)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("dslope buffer of 16 bytes"), "{e}");
    let e = mul_backward(
        ctx,
        &y,
        &t(Shape::new(2, 5, 1, 2)),
        &dy,
        &dx,
        &t(Shape::new(2, 5, 1, 2)),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("g is [2, 5, 1, 2]"), "{e}");
    let e = mul_backward(
        ctx,
        &y,
        &t(Shape::new(2, 5, 1, 1)),
        &dy,
        &dx,
        &t(Shape::vector(2, 5)),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("dg expected [2, 5, 1, 1]"), "{e}");
    let e = add_backward(ctx, &dy, &t(Shape::new(1, 5, 1, 1)))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("db is [1, 5, 1, 1]"), "{e}");
    let e = err(affine_backward(ctx, &[1.0, 2.0], &dy, &dx));
    assert!(e.contains("scale has 2 values"), "{e}");
    let m = t(Shape::new(2, 1, 7, 9));
    let e = err(fusion_backward(
        ctx,
        &y,
        &y,
        &t(Shape::new(2, 2, 7, 9)),
        false,
        &dy,
        &dx,
        &m,
        None,
    ));
    assert!(e.contains("mask expected [2, 1, 7, 9]"), "{e}");
    let e = err(fusion_backward(
        ctx,
        &y,
        &y,
        &m,
        false,
        &dy,
        &dx,
        &t(Shape::new(2, 1, 7, 8)),
        None,
    ));
    assert!(e.contains("dm expected"), "{e}");
    let e = err(split_channels(ctx, &y, &t(Shape::new(2, 3, 7, 9)), 3));
    assert!(
        e.contains("cannot take [2, 3, 7, 9] from channel 3 of [2, 5, 7, 9]"),
        "{e}"
    );
}
