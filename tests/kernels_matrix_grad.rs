//! Backward of linear, weight modulation (+ demodulation), L2 normalise and softmax vs f64 adjoints,
//! on every storage path; each adjoint is checked against central finite differences of its f64
//! forward. Also the training-forward hooks of `Linear` and `Modulate` (their weight tensors and
//! the linear epilogue buffer).
//!
//! Tolerances, per element, from how the GPU computes (never a blanket constant). u = 2^-24 (f32
//! unit roundoff), h = 2^-11 (f16):
//! - Activations and gradients (x, dY, style, dOut, y) are drawn already rounded to f16, so the
//!   reference sees exactly what the GPU stores; weights are f32 on both sides.
//! - Every fp16 output adds half an ulp on store: `h·(|v| + e) + 2^-25` (the last term is the
//!   subnormal range) on top of its f32 error `e`.
//! - A sum of `T` rounded terms errs by at most `(T + 1)·u·Σ|terms|` (recursive summation, products
//!   included). Linear dX: T = out products dY·W. Linear dW and dBias: products of two f16 values
//!   are exact in f32, T = N.
//! - Modulation: the relative error of the demodulation factor a = 1/sqrt(Σ W'² + eps) is at most
//!   `(cin/2 + 6)·u` (a sum of positive terms, W' = W·(s + bias) with two roundings, and the
//!   inverse square root's 2 ulp), that of c = (Σ G·W')·a³ adds `(cin + 3)·u·a³·Σ|G·W'|`; so
//!   dW' = a·G − c·W' errs by at most `(1.5·cin + 21)·u·M` with `M = |a·G| + |c·W'| +
//!   a³·Σ_j|G_j·W'_j|·|W'|` (0 without demodulation, where dW' = G exactly). ds and dW then add
//!   their own sums over cout resp. N.
//! - L2 normalise: ν = sqrt(Σ x²) is off by `(F/2 + 3)·u` relative; dX = dY/ν − x·(x·dY)/ν³ errs
//!   by at most `(2.5·F + 20)·u·(|dY|/ν + |x|·Σ|x·dY|/ν³)`.
//! - Softmax: dX = y·(dY − Σ_c y·dY) errs by at most `(C + 3)·u·|y|·(|dY| + Σ_c|y·dY|)`.
//!
//! Every comparison reports the worst error as a fraction of its bound; mutation checks assert
//! that a plausible wrong answer (a missing projection term, a transposed weight read) would be
//! rejected by the same bounds.
#![allow(clippy::needless_range_loop, clippy::type_complexity)] // index-heavy f64 references
mod common;

use common::reference::modulate;
use common::{contexts, label, Rng};
use fswap::kernels::conv_grad::{f32_storage, read_f32};
use fswap::kernels::linear::Linear;
use fswap::kernels::linear_grad::LinearGrad;
use fswap::kernels::modulate::{Modulate, ModulateSpec};
use fswap::kernels::modulate_grad::ModulateGrad;
use fswap::kernels::reduce_grad::{l2_normalize_grad, softmax_channels_grad};
use fswap::kernels::Epilogue;
use fswap::{Context, Shape, Tensor};

const U32: f64 = 1.0 / (1u64 << 24) as f64; // f32 unit roundoff
const U16: f64 = 1.0 / (1u64 << 11) as f64; // f16 unit roundoff
const SUB16: f64 = 1.0 / (1u64 << 25) as f64; // half the smallest f16 subnormal

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// f32 weights (masters are not f16-rounded).
fn weights(rng: &mut Rng, n: usize, r: f32) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-r, r)).collect()
}

/// Bound for an fp16 output whose f32 computation errs by at most `e`.
fn half_bound(v: f64, e: f64) -> f64 {
    U16 * (v.abs() + e) + e + SUB16
}

/// Worst |got − want| / bound: (index, ratio); infinite for a non-finite result.
fn ratio(got: &[f32], want: &[f64], bound: &[f64]) -> (usize, f64) {
    assert_eq!(got.len(), want.len(), "length");
    assert_eq!(bound.len(), want.len(), "bound length");
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

/// Asserts |got − want| ≤ bound[i] everywhere; returns the worst |err|/bound.
fn assert_within(got: &[f32], want: &[f64], bound: &[f64], what: &str) -> f64 {
    let (i, r) = ratio(got, want, bound);
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

/// Central finite difference of `f` along coordinate `i` of `v`.
fn fd(v: &[f64], i: usize, step: f64, f: impl Fn(&[f64]) -> f64) -> f64 {
    let (mut p, mut m) = (v.to_vec(), v.to_vec());
    p[i] += step;
    m[i] -= step;
    (f(&p) - f(&m)) / (2.0 * step)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// ------------------------------------------------------------------------------------------------
// Linear

/// z[n, o] = Σ_f W[o, f]·x[n, f] + b[o].
fn linear_forward(x: &[f64], w: &[f64], b: &[f64], n: usize, feats: usize, out: usize) -> Vec<f64> {
    let mut z = vec![0f64; n * out];
    for s in 0..n {
        for o in 0..out {
            z[s * out + o] = b[o]
                + dot(
                    &w[o * feats..(o + 1) * feats],
                    &x[s * feats..(s + 1) * feats],
                );
        }
    }
    z
}

/// Gradients of L = Σ dY·z and the sums of the absolute values of the terms each one adds.
struct LinearGrads {
    dx: Vec<f64>,
    dx_abs: Vec<f64>,
    dw: Vec<f64>,
    dw_abs: Vec<f64>,
    db: Vec<f64>,
    db_abs: Vec<f64>,
}

/// The adjoint of `linear_forward`: the term w·x sends dy·w to x, dy·x to w; b gets dy.
fn linear_adjoint(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    n: usize,
    feats: usize,
    out: usize,
) -> LinearGrads {
    let mut g = LinearGrads {
        dx: vec![0.0; n * feats],
        dx_abs: vec![0.0; n * feats],
        dw: vec![0.0; out * feats],
        dw_abs: vec![0.0; out * feats],
        db: vec![0.0; out],
        db_abs: vec![0.0; out],
    };
    for s in 0..n {
        for o in 0..out {
            let gy = dy[s * out + o];
            g.db[o] += gy;
            g.db_abs[o] += gy.abs();
            for f in 0..feats {
                let (xi, wi) = (s * feats + f, o * feats + f);
                g.dx[xi] += gy * w[wi];
                g.dx_abs[xi] += (gy * w[wi]).abs();
                g.dw[wi] += gy * x[xi];
                g.dw_abs[wi] += (gy * x[xi]).abs();
            }
        }
    }
    g
}

#[test]
fn linear_adjoint_matches_finite_differences() {
    // L is linear in x, W and b: a central difference is exact up to f64 rounding.
    let mut rng = Rng::new(0x11);
    let (n, feats, out) = (2, 2 * 3 * 3, 5);
    let x = to64(&rng.vec(n * feats, -1.0, 1.0));
    let w = to64(&weights(&mut rng, out * feats, 1.0));
    let b = to64(&weights(&mut rng, out, 1.0));
    let dy = to64(&rng.vec(n * out, -1.0, 1.0));
    let g = linear_adjoint(&x, &w, &dy, n, feats, out);
    let loss = |x: &[f64], w: &[f64], b: &[f64]| dot(&linear_forward(x, w, b, n, feats, out), &dy);
    for i in 0..x.len() {
        let d = fd(&x, i, 1e-3, |v| loss(v, &w, &b));
        assert!(
            (d - g.dx[i]).abs() < 1e-9,
            "dX[{i}]: fd {d} adjoint {}",
            g.dx[i]
        );
    }
    for i in 0..w.len() {
        let d = fd(&w, i, 1e-3, |v| loss(&x, v, &b));
        assert!(
            (d - g.dw[i]).abs() < 1e-9,
            "dW[{i}]: fd {d} adjoint {}",
            g.dw[i]
        );
    }
    for i in 0..b.len() {
        let d = fd(&b, i, 1e-3, |v| loss(&x, &w, v));
        assert!(
            (d - g.db[i]).abs() < 1e-9,
            "dB[{i}]: fd {d} adjoint {}",
            g.db[i]
        );
    }
}

struct LinearRun {
    dx: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
}

fn run_linear(
    ctx: &Context,
    (n, c, h, w): (usize, usize, usize, usize),
    out: usize,
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
) -> LinearRun {
    let grad = LinearGrad::new(ctx, (c, h, w), out).unwrap();
    let wbuf = f32_storage(ctx, "w", wt.len()).unwrap();
    ctx.queue.write_buffer(&wbuf, 0, bytemuck::cast_slice(wt));
    let xt = Tensor::from_f32(ctx, [n, c, h, w], x, "x").unwrap();
    let dyt = Tensor::from_f32(ctx, Shape::vector(n, out), dy, "dy").unwrap();
    let dxt = Tensor::new(ctx, [n, c, h, w], "dx").unwrap();
    let (dw, db) = grad.grad_buffers(ctx).unwrap();
    let di = grad.bind_input(ctx, &wbuf, &dyt, &dxt).unwrap();
    let dws = grad.bind_weight(ctx, &xt, &dyt, &dw, &db).unwrap();
    let mut all = vec![&di];
    all.extend(dws.iter());
    ctx.run(&all).unwrap();
    LinearRun {
        dx: dxt.to_f32(ctx).unwrap(),
        dw: read_f32(ctx, &dw, grad.weight_len()).unwrap(),
        db: read_f32(ctx, &db, out).unwrap(),
    }
}

#[test]
fn linear_grad_matches_adjoint() {
    let mut rng = Rng::new(0x12);
    // (n, c, h, w, out): the listed awkward map (odd plane 21: padded rows inside the flatten),
    // a vector batch, five samples (two grad_input sample tiles), an ArcFace-like 7×7 head, one
    // output.
    let cases = [
        (3, 5, 7, 3, 13),
        (2, 1, 1, 13, 6),
        (5, 4, 2, 2, 9),
        (2, 16, 7, 7, 20),
        (1, 3, 1, 5, 1),
    ];
    let mut worst = [0f64; 3];
    for &(n, c, h, w, out) in &cases {
        let feats = c * h * w;
        let x = rng.vec(n * feats, -1.0, 1.0);
        let wt = weights(&mut rng, out * feats, 1.0);
        let dy = rng.vec(n * out, -1.0, 1.0);
        let g = linear_adjoint(&to64(&x), &to64(&wt), &to64(&dy), n, feats, out);
        let dx_bound: Vec<f64> =
            g.dx.iter()
                .zip(&g.dx_abs)
                .map(|(v, a)| half_bound(*v, (out as f64 + 1.0) * U32 * a))
                .collect();
        let sum_bound = |abs: &[f64], v: &[f64]| -> Vec<f64> {
            abs.iter()
                .zip(v)
                .map(|(a, v)| (n as f64 + 1.0) * U32 * a + U32 * v.abs() + 1e-30)
                .collect()
        };
        let dw_bound = sum_bound(&g.dw_abs, &g.dw);
        let db_bound = sum_bound(&g.db_abs, &g.db);
        // A transposed weight read (Paddle's [in, out]) would be a realistic bug: it must fail.
        let wt_t: Vec<f64> = (0..out * feats)
            .map(|j| wt[(j % feats) * out + j / feats] as f64)
            .collect();
        let bug = linear_adjoint(&to64(&x), &wt_t, &to64(&dy), n, feats, out);
        for ctx in contexts() {
            let what = format!("linear {:?} -> {out} {}", (n, c, h, w), label(ctx));
            let r = run_linear(ctx, (n, c, h, w), out, &x, &wt, &dy);
            worst[0] = worst[0].max(assert_within(
                &r.dx,
                &g.dx,
                &dx_bound,
                &format!("dX {what}"),
            ));
            worst[1] = worst[1].max(assert_within(
                &r.dw,
                &g.dw,
                &dw_bound,
                &format!("dW {what}"),
            ));
            worst[2] = worst[2].max(assert_within(
                &r.db,
                &g.db,
                &db_bound,
                &format!("dB {what}"),
            ));
            if out > 1 && feats > 1 {
                assert!(
                    ratio(&r.dx, &bug.dx, &dx_bound).1 > 1.0,
                    "{what}: the bound would accept a transposed weight read"
                );
            }
        }
    }
    eprintln!(
        "linear grad worst error/bound: dX {:.3} dW {:.3} dB {:.3}",
        worst[0], worst[1], worst[2]
    );
}

#[test]
fn linear_grad_weight_is_deterministic_and_overwrites() {
    let mut rng = Rng::new(0x13);
    let (n, c, h, w, out) = (7, 3, 5, 5, 11);
    let feats = c * h * w;
    let x = rng.vec(n * feats, -2.0, 2.0);
    let dy = rng.vec(n * out, -2.0, 2.0);
    for ctx in contexts() {
        let grad = LinearGrad::new(ctx, (c, h, w), out).unwrap();
        let xt = Tensor::from_f32(ctx, [n, c, h, w], &x, "x").unwrap();
        let dyt = Tensor::from_f32(ctx, Shape::vector(n, out), &dy, "dy").unwrap();
        let (dw, db) = grad.grad_buffers(ctx).unwrap();
        // Garbage in the outputs must be overwritten, not accumulated into.
        ctx.queue
            .write_buffer(&dw, 0, bytemuck::cast_slice(&vec![7.5f32; out * feats]));
        ctx.queue
            .write_buffer(&db, 0, bytemuck::cast_slice(&vec![-3.0f32; out]));
        let d = grad.bind_weight(ctx, &xt, &dyt, &dw, &db).unwrap();
        let refs: Vec<_> = d.iter().collect();
        ctx.run(&refs).unwrap();
        let first = (
            read_f32(ctx, &dw, out * feats).unwrap(),
            read_f32(ctx, &db, out).unwrap(),
        );
        ctx.run(&refs).unwrap();
        let second = (
            read_f32(ctx, &dw, out * feats).unwrap(),
            read_f32(ctx, &db, out).unwrap(),
        );
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&first.0),
            bits(&second.0),
            "dW bits differ between runs {}",
            label(ctx)
        );
        assert_eq!(
            bits(&first.1),
            bits(&second.1),
            "dB bits differ between runs {}",
            label(ctx)
        );
        let g = linear_adjoint(
            &to64(&x),
            &vec![0.0; out * feats],
            &to64(&dy),
            n,
            feats,
            out,
        );
        for o in 0..out {
            assert!(
                (first.1[o] as f64 - g.db[o]).abs() <= (n as f64 + 2.0) * U32 * g.db_abs[o] + 1e-30
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Modulation

struct ModCase {
    n: usize,
    cin: usize,
    cout: usize,
    /// Style features per sample (≥ offset + cin).
    f: usize,
    offset: usize,
    bias: f64,
    demod: bool,
    eps: f64,
}

/// The modulated weights W''[n, o, i] from the style features `offset..offset + cin` of
/// `style` `[n, f]`.
fn mod_forward(c: &ModCase, w: &[f64], style: &[f64]) -> Vec<f64> {
    let s: Vec<f64> = (0..c.n * c.cin)
        .map(|j| style[(j / c.cin) * c.f + c.offset + j % c.cin])
        .collect();
    modulate(w, c.cout, c.cin, &s, c.n, c.bias, c.demod, c.eps)
}

/// L = Σ G·W'' with G in the kernel layout [n, cin, cout].
fn mod_loss(c: &ModCase, w: &[f64], style: &[f64], gk: &[f64]) -> f64 {
    let y = mod_forward(c, w, style);
    let mut l = 0.0;
    for b in 0..c.n {
        for o in 0..c.cout {
            for i in 0..c.cin {
                l += gk[(b * c.cin + i) * c.cout + o] * y[(b * c.cout + o) * c.cin + i];
            }
        }
    }
    l
}

/// ∂L/∂s for the used features (`[n, cin]`), ∂L/∂W (`[cout, cin]`), and their error bounds as the
/// module header derives them. `project: false` drops the demodulation projection term (the
/// mutation check's wrong answer).
struct ModGrads {
    ds: Vec<f64>,
    dw: Vec<f64>,
    ds_bound: Vec<f64>,
    dw_bound: Vec<f64>,
}

fn mod_adjoint(c: &ModCase, w: &[f64], style: &[f64], gk: &[f64], project: bool) -> ModGrads {
    let (n, cin, cout) = (c.n, c.cin, c.cout);
    let mut g = ModGrads {
        ds: vec![0.0; n * cin],
        dw: vec![0.0; cout * cin],
        ds_bound: vec![0.0; n * cin],
        dw_bound: vec![0.0; cout * cin],
    };
    let k_dwp = if c.demod {
        1.5 * cin as f64 + 21.0
    } else {
        0.0
    };
    // Σ |term|·M for the bounds, per output element.
    let mut ds_m = vec![0.0; n * cin];
    let mut ds_abs = vec![0.0; n * cin];
    let mut dw_m = vec![0.0; cout * cin];
    let mut dw_abs = vec![0.0; cout * cin];
    for b in 0..n {
        let sv: Vec<f64> = (0..cin)
            .map(|i| style[b * c.f + c.offset + i] + c.bias)
            .collect();
        for o in 0..cout {
            let gr = |i: usize| gk[(b * cin + i) * cout + o];
            let wp: Vec<f64> = (0..cin).map(|i| w[o * cin + i] * sv[i]).collect();
            let (a, cc, gabs) = if c.demod {
                let a = 1.0 / (wp.iter().map(|v| v * v).sum::<f64>() + c.eps).sqrt();
                let r: f64 = (0..cin).map(|i| gr(i) * wp[i]).sum();
                let gabs: f64 = (0..cin).map(|i| (gr(i) * wp[i]).abs()).sum();
                (
                    a,
                    if project { r * a * a * a } else { 0.0 },
                    gabs * a * a * a,
                )
            } else {
                (1.0, 0.0, 0.0)
            };
            for i in 0..cin {
                let d = a * gr(i) - cc * wp[i];
                let m = (a * gr(i)).abs() + (cc * wp[i]).abs() + gabs * wp[i].abs();
                let wv = w[o * cin + i];
                g.ds[b * cin + i] += d * wv;
                ds_abs[b * cin + i] += (d * wv).abs();
                ds_m[b * cin + i] += m * wv.abs();
                g.dw[o * cin + i] += d * sv[i];
                dw_abs[o * cin + i] += (d * sv[i]).abs();
                dw_m[o * cin + i] += m * sv[i].abs();
            }
        }
    }
    for j in 0..n * cin {
        let e = U32 * (k_dwp * ds_m[j] + (cout as f64 + 2.0) * ds_abs[j]);
        g.ds_bound[j] = half_bound(g.ds[j], e);
    }
    for j in 0..cout * cin {
        // The style sum s + bias is rounded once more in f32.
        g.dw_bound[j] =
            U32 * (k_dwp * dw_m[j] + (n as f64 + 3.0) * dw_abs[j]) + U32 * g.dw[j].abs() + 1e-30;
    }
    g
}

fn mod_cases() -> Vec<ModCase> {
    let c = |n, cin, cout, f, offset, bias, demod, eps| ModCase {
        n,
        cin,
        cout,
        f,
        offset,
        bias,
        demod,
        eps,
    };
    vec![
        // The listed shapes, with the spec's (1 + s) and eps 1e-16, and a style read at an offset.
        c(2, 5, 7, 5, 0, 1.0, true, 1e-16),
        c(2, 32, 3, 32, 0, 1.0, true, 1e-16),
        c(2, 5, 7, 9, 3, 1.0, true, 1e-16),
        // Plain s (bias 0), a larger eps, without demodulation, one output channel, batch 3.
        c(3, 13, 9, 13, 0, 0.0, true, 1e-3),
        c(2, 6, 5, 6, 0, 1.0, false, 1e-8),
        c(3, 9, 1, 12, 2, 1.0, true, 1e-8),
    ]
}

#[test]
fn modulate_adjoint_matches_finite_differences() {
    let mut rng = Rng::new(0x21);
    for c in mod_cases().iter().filter(|c| c.cin <= 13) {
        let w = to64(&weights(&mut rng, c.cout * c.cin, 1.0));
        let style = to64(&rng.vec(c.n * c.f, -0.5, 0.5));
        let gk = to64(&rng.vec(c.n * c.cin * c.cout, -1.0, 1.0));
        let g = mod_adjoint(c, &w, &style, &gk, true);
        // Smooth in W and s: the central difference's truncation error is O(step²) ≈ 1e-10.
        let step = 1e-5;
        for i in 0..w.len() {
            let d = fd(&w, i, step, |v| mod_loss(c, v, &style, &gk));
            assert!(
                (d - g.dw[i]).abs() < 1e-7 * (1.0 + d.abs()),
                "dW[{i}] fd {d} adjoint {}",
                g.dw[i]
            );
        }
        for b in 0..c.n {
            for i in 0..c.cin {
                let d = fd(&style, b * c.f + c.offset + i, step, |v| {
                    mod_loss(c, &w, v, &gk)
                });
                let a = g.ds[b * c.cin + i];
                assert!(
                    (d - a).abs() < 1e-7 * (1.0 + d.abs()),
                    "ds[{b}, {i}] fd {d} adjoint {a}"
                );
            }
        }
        // Features outside offset..offset + cin do not matter.
        let unused = (0..c.f).filter(|&j| j < c.offset || j >= c.offset + c.cin);
        for j in unused {
            let d = fd(&style, j, step, |v| mod_loss(c, &w, v, &gk));
            assert!(d.abs() < 1e-9, "unused feature {j} has gradient {d}");
        }
    }
}

#[test]
fn modulate_grad_matches_adjoint() {
    let mut rng = Rng::new(0x22);
    let mut worst = [0f64; 2];
    for c in &mod_cases() {
        let wt = weights(&mut rng, c.cout * c.cin, 1.0);
        let style = rng.vec(c.n * c.f, -0.5, 0.5);
        let gk = rng.vec(c.n * c.cin * c.cout, -1.0, 1.0);
        let g = mod_adjoint(c, &to64(&wt), &to64(&style), &to64(&gk), true);
        let bug = mod_adjoint(c, &to64(&wt), &to64(&style), &to64(&gk), false);
        let spec = ModulateSpec {
            cin: c.cin,
            cout: c.cout,
            style_bias: c.bias as f32,
            demodulate: c.demod,
            eps: c.eps as f32,
        };
        for ctx in contexts() {
            let what = format!(
                "modulate n{} {}->{} off{} bias {} demod {} {}",
                c.n,
                c.cin,
                c.cout,
                c.offset,
                c.bias,
                c.demod,
                label(ctx)
            );
            let grad = ModulateGrad::new(spec).unwrap();
            let wbuf = f32_storage(ctx, "w", wt.len()).unwrap();
            ctx.queue.write_buffer(&wbuf, 0, bytemuck::cast_slice(&wt));
            let st = Tensor::from_f32(ctx, Shape::vector(c.n, c.f), &style, "style").unwrap();
            let gt = Tensor::from_f32(ctx, [c.n, c.cin, 1, c.cout], &gk, "dout").unwrap();
            let ds = Tensor::new(ctx, grad.style_grad_shape(c.n), "ds").unwrap();
            let dw = f32_storage(ctx, "dw", grad.weight_len()).unwrap();
            let d = grad
                .bind(ctx, &wbuf, &st, c.offset, &gt, Some(&ds), Some(&dw))
                .unwrap();
            assert_eq!(d.len(), if c.demod { 3 } else { 2 });
            ctx.run(&d.iter().collect::<Vec<_>>()).unwrap();
            let got_ds = ds.to_f32(ctx).unwrap();
            let got_dw = read_f32(ctx, &dw, grad.weight_len()).unwrap();
            worst[0] = worst[0].max(assert_within(
                &got_ds,
                &g.ds,
                &g.ds_bound,
                &format!("ds {what}"),
            ));
            worst[1] = worst[1].max(assert_within(
                &got_dw,
                &g.dw,
                &g.dw_bound,
                &format!("dW {what}"),
            ));
            if c.demod {
                // Dropping the demodulation projection must be caught by the same bounds.
                assert!(
                    ratio(&got_ds, &bug.ds, &g.ds_bound).1 > 1.0
                        && ratio(&got_dw, &bug.dw, &g.dw_bound).1 > 1.0,
                    "{what}: the bounds would accept a missing projection term"
                );
            }
        }
    }
    eprintln!(
        "modulate grad worst error/bound: ds {:.3} dW {:.3}",
        worst[0], worst[1]
    );
}

#[test]
fn modulate_grad_partial_outputs_and_determinism() {
    let mut rng = Rng::new(0x23);
    let c = &mod_cases()[1];
    let wt = weights(&mut rng, c.cout * c.cin, 1.0);
    let style = rng.vec(c.n * c.f, -0.5, 0.5);
    let gk = rng.vec(c.n * c.cin * c.cout, -1.0, 1.0);
    let spec = ModulateSpec {
        cin: c.cin,
        cout: c.cout,
        style_bias: 1.0,
        demodulate: true,
        eps: 1e-16,
    };
    for ctx in contexts() {
        let grad = ModulateGrad::new(spec).unwrap();
        let wbuf = f32_storage(ctx, "w", wt.len()).unwrap();
        ctx.queue.write_buffer(&wbuf, 0, bytemuck::cast_slice(&wt));
        let st = Tensor::from_f32(ctx, Shape::vector(c.n, c.f), &style, "style").unwrap();
        let gt = Tensor::from_f32(ctx, [c.n, c.cin, 1, c.cout], &gk, "dout").unwrap();
        let ds = Tensor::new(ctx, grad.style_grad_shape(c.n), "ds").unwrap();
        let dw = f32_storage(ctx, "dw", grad.weight_len()).unwrap();
        let both = grad
            .bind(ctx, &wbuf, &st, 0, &gt, Some(&ds), Some(&dw))
            .unwrap();
        ctx.run(&both.iter().collect::<Vec<_>>()).unwrap();
        let (ds1, dw1) = (
            ds.to_f16(ctx).unwrap(),
            read_f32(ctx, &dw, grad.weight_len()).unwrap(),
        );
        // Only ds (the base weight frozen), then only dW (the style detached): same values.
        let ds2 = Tensor::new(ctx, grad.style_grad_shape(c.n), "ds2").unwrap();
        let dw2 = f32_storage(ctx, "dw2", grad.weight_len()).unwrap();
        let only_ds = grad
            .bind(ctx, &wbuf, &st, 0, &gt, Some(&ds2), None)
            .unwrap();
        let only_dw = grad
            .bind(ctx, &wbuf, &st, 0, &gt, None, Some(&dw2))
            .unwrap();
        assert_eq!((only_ds.len(), only_dw.len()), (2, 2));
        assert!(grad
            .bind(ctx, &wbuf, &st, 0, &gt, None, None)
            .unwrap()
            .is_empty());
        ctx.run(&only_ds.iter().chain(&only_dw).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(ds1, ds2.to_f16(ctx).unwrap(), "ds differs {}", label(ctx));
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&dw1),
            bits(&read_f32(ctx, &dw2, grad.weight_len()).unwrap()),
            "dW differs {}",
            label(ctx)
        );
    }
}

// ------------------------------------------------------------------------------------------------
// L2 normalise and softmax

fn l2_forward(x: &[f64], f: usize, eps: f64) -> Vec<f64> {
    x.chunks(f)
        .flat_map(|r| {
            let d = r.iter().map(|v| v * v).sum::<f64>().sqrt().max(eps);
            r.iter().map(move |v| v / d).collect::<Vec<_>>()
        })
        .collect()
}

/// dX of L = Σ dY·l2(x), its bound, and the wrong answer without the projection term.
fn l2_adjoint(x: &[f64], dy: &[f64], f: usize, eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dx, mut bound, mut bug) = (Vec::new(), Vec::new(), Vec::new());
    for (r, g) in x.chunks(f).zip(dy.chunks(f)) {
        let nu = r.iter().map(|v| v * v).sum::<f64>().sqrt();
        let xdy = dot(r, g);
        let xdy_abs: f64 = r.iter().zip(g).map(|(a, b)| (a * b).abs()).sum();
        let k = (2.5 * f as f64 + 20.0) * U32;
        for i in 0..f {
            let (v, e) = if nu > eps {
                (
                    g[i] / nu - r[i] * xdy / nu.powi(3),
                    k * (g[i].abs() / nu + r[i].abs() * xdy_abs / nu.powi(3)),
                )
            } else {
                (g[i] / eps, 2.0 * U32 * (g[i] / eps).abs())
            };
            dx.push(v);
            bound.push(half_bound(v, e));
            bug.push(g[i] / nu.max(eps));
        }
    }
    (dx, bound, bug)
}

#[test]
fn l2_normalize_adjoint_matches_finite_differences() {
    let mut rng = Rng::new(0x31);
    let (f, eps) = (13, 0.25);
    // Row 0 well above eps, row 1 well below it (the clamped branch).
    let mut x = to64(&rng.vec(2 * f, -1.0, 1.0));
    for v in &mut x[f..] {
        *v *= 0.02;
    }
    let dy = to64(&rng.vec(2 * f, -1.0, 1.0));
    let (dx, _, _) = l2_adjoint(&x, &dy, f, eps);
    for (i, &a) in dx.iter().enumerate() {
        let d = fd(&x, i, 1e-5, |v| dot(&l2_forward(v, f, eps), &dy));
        assert!(
            (d - a).abs() < 1e-7 * (1.0 + d.abs()),
            "dX[{i}] fd {d} adjoint {a}"
        );
    }
}

#[test]
fn l2_normalize_grad_matches_adjoint() {
    let mut rng = Rng::new(0x32);
    // (n, F, eps, rows scaled below eps): the listed F = 13 with one clamped row; a row longer
    // than the workgroup (75 quads over 64 lanes) with PyTorch's eps.
    let cases: [(usize, usize, f32, &[usize]); 2] = [(3, 13, 0.25, &[1]), (2, 300, 1e-12, &[])];
    let mut worst = 0f64;
    for &(n, f, eps, small) in &cases {
        let mut x = rng.vec(n * f, -1.0, 1.0);
        for &r in small {
            for v in &mut x[r * f..(r + 1) * f] {
                *v = common::f16r(*v * 0.02);
            }
        }
        let dy = rng.vec(n * f, -1.0, 1.0);
        let (want, bound, bug) = l2_adjoint(&to64(&x), &to64(&dy), f, eps as f64);
        for ctx in contexts() {
            let what = format!("l2 grad n{n} F{f} eps {eps} {}", label(ctx));
            let xt = Tensor::from_f32(ctx, Shape::vector(n, f), &x, "x").unwrap();
            let dyt = Tensor::from_f32(ctx, Shape::vector(n, f), &dy, "dy").unwrap();
            let dxt = Tensor::new(ctx, Shape::vector(n, f), "dx").unwrap();
            ctx.run(&[&l2_normalize_grad(ctx, &xt, &dyt, eps, &dxt).unwrap()])
                .unwrap();
            let got = dxt.to_f32(ctx).unwrap();
            worst = worst.max(assert_within(&got, &want, &bound, &what));
            assert!(
                ratio(&got, &bug, &bound).1 > 1.0,
                "{what}: accepts a missing projection"
            );
        }
    }
    eprintln!("l2 grad worst error/bound {worst:.3}");
}

fn softmax(x: &[f64], n: usize, c: usize, plane: usize) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for p in 0..plane {
            let at = |ch: usize| (b * c + ch) * plane + p;
            let m = (0..c).map(|ch| x[at(ch)]).fold(f64::MIN, f64::max);
            let s: f64 = (0..c).map(|ch| (x[at(ch)] - m).exp()).sum();
            for ch in 0..c {
                y[at(ch)] = (x[at(ch)] - m).exp() / s;
            }
        }
    }
    y
}

/// dX = y·(dY − Σ_c y·dY), its bound, and the wrong answer y·dY.
fn softmax_adjoint(
    y: &[f64],
    dy: &[f64],
    n: usize,
    c: usize,
    plane: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dx, mut bound, mut bug) = (vec![0.0; y.len()], vec![0.0; y.len()], vec![0.0; y.len()]);
    for b in 0..n {
        for p in 0..plane {
            let at = |ch: usize| (b * c + ch) * plane + p;
            let s: f64 = (0..c).map(|ch| y[at(ch)] * dy[at(ch)]).sum();
            let sa: f64 = (0..c).map(|ch| (y[at(ch)] * dy[at(ch)]).abs()).sum();
            for ch in 0..c {
                let i = at(ch);
                dx[i] = y[i] * (dy[i] - s);
                let e = (c as f64 + 3.0) * U32 * y[i].abs() * (dy[i].abs() + sa);
                bound[i] = half_bound(dx[i], e);
                bug[i] = y[i] * dy[i];
            }
        }
    }
    (dx, bound, bug)
}

#[test]
fn softmax_adjoint_matches_finite_differences() {
    let mut rng = Rng::new(0x41);
    let (n, c, plane) = (2, 5, 3);
    let x = to64(&rng.vec(n * c * plane, -2.0, 2.0));
    let dy = to64(&rng.vec(n * c * plane, -1.0, 1.0));
    let (dx, _, _) = softmax_adjoint(&softmax(&x, n, c, plane), &dy, n, c, plane);
    for (i, &a) in dx.iter().enumerate() {
        let d = fd(&x, i, 1e-5, |v| dot(&softmax(v, n, c, plane), &dy));
        assert!((d - a).abs() < 1e-8, "dX[{i}] fd {d} adjoint {a}");
    }
}

#[test]
fn softmax_grad_matches_adjoint() {
    let mut rng = Rng::new(0x42);
    let mut worst = 0f64;
    // (n, c, h, w): odd plane (21) and 5 channels; one channel (dX = 0); a plane of whole quads.
    for &(n, c, h, w) in &[(2, 5, 3, 7), (1, 1, 2, 3), (2, 3, 4, 4)] {
        let plane = h * w;
        let x = to64(&rng.vec(n * c * plane, -3.0, 3.0));
        // The GPU gets y rounded to f16, as the forward stores it; the reference sees the same.
        let y: Vec<f32> = softmax(&x, n, c, plane)
            .iter()
            .map(|&v| common::f16r(v as f32))
            .collect();
        let dy = rng.vec(n * c * plane, -1.0, 1.0);
        let (want, bound, bug) = softmax_adjoint(&to64(&y), &to64(&dy), n, c, plane);
        for ctx in contexts() {
            let what = format!("softmax grad {:?} {}", (n, c, h, w), label(ctx));
            let yt = Tensor::from_f32(ctx, [n, c, h, w], &y, "y").unwrap();
            let dyt = Tensor::from_f32(ctx, [n, c, h, w], &dy, "dy").unwrap();
            let dxt = Tensor::new(ctx, [n, c, h, w], "dx").unwrap();
            ctx.run(&[&softmax_channels_grad(ctx, &yt, &dyt, &dxt).unwrap()])
                .unwrap();
            let got = dxt.to_f32(ctx).unwrap();
            worst = worst.max(assert_within(&got, &want, &bound, &what));
            if c > 1 {
                assert!(
                    ratio(&got, &bug, &bound).1 > 1.0,
                    "{what}: accepts a missing Σ term"
                );
            }
        }
    }
    eprintln!("softmax grad worst error/bound {worst:.3}");
}

// ------------------------------------------------------------------------------------------------
// Training-forward hooks and errors

#[test]
fn linear_hooks_refresh_the_forward() {
    let mut rng = Rng::new(0x51);
    let (n, c, h, w, out) = (2, 3, 3, 3, 5);
    let feats = c * h * w;
    let x = rng.vec(n * feats, -1.0, 1.0);
    let w1 = rng.vec(out * feats, -0.5, 0.5);
    let w2 = rng.vec(out * feats, -0.5, 0.5);
    let b2 = rng.vec(out, -0.5, 0.5);
    for ctx in contexts() {
        let lin = Linear::new(ctx, (c, h, w), out, &w1, &Epilogue::bias(&[0.25; 5])).unwrap();
        assert_eq!((lin.input_dims(), lin.out_features()), ((c, h, w), out));
        // [out, C, H, W]: PyTorch's [out, in] in logical order, not transposed.
        let wt = lin.weight_tensor();
        assert_eq!(wt.shape(), Shape::new(out, c, h, w));
        assert_eq!(wt.to_f32(ctx).unwrap(), w1);
        // A trainer rewrites the weights and the bias (shift) in place; the forward sees them.
        wt.write_f32(ctx, &w2).unwrap();
        ctx.queue.write_buffer(
            lin.epilogue_buffer(),
            (out * 4) as u64,
            bytemuck::cast_slice(&b2),
        );
        let xt = Tensor::from_f32(ctx, [n, c, h, w], &x, "x").unwrap();
        let yt = Tensor::new(ctx, Shape::vector(n, out), "y").unwrap();
        ctx.run(&[&lin.bind(ctx, &xt, &yt).unwrap()]).unwrap();
        let want = linear_forward(&to64(&x), &to64(&w2), &to64(&b2), n, feats, out);
        let got = yt.to_f32(ctx).unwrap();
        let abs = linear_forward(
            &x.iter().map(|v| v.abs() as f64).collect::<Vec<_>>(),
            &w2.iter().map(|v| v.abs() as f64).collect::<Vec<_>>(),
            &b2.iter().map(|v| v.abs() as f64).collect::<Vec<_>>(),
            n,
            feats,
            out,
        );
        let bound: Vec<f64> = want
            .iter()
            .zip(&abs)
            .map(|(v, a)| half_bound(*v, (feats as f64 + 2.0) * U32 * a))
            .collect();
        assert_within(
            &got,
            &want,
            &bound,
            &format!("linear after refresh {}", label(ctx)),
        );
    }
}

#[test]
fn modulate_hook_refreshes_the_forward() {
    let mut rng = Rng::new(0x52);
    let (n, cin, cout) = (2, 5, 7);
    let w1 = rng.vec(cout * cin, -1.0, 1.0);
    let w2 = rng.vec(cout * cin, -1.0, 1.0);
    let style = rng.vec(n * cin, -0.5, 0.5);
    let spec = ModulateSpec {
        cin,
        cout,
        style_bias: 1.0,
        demodulate: true,
        eps: 1e-16,
    };
    let transpose = |w: &[f32]| -> Vec<f32> {
        (0..cin * cout)
            .map(|j| w[(j % cout) * cin + j / cout])
            .collect()
    };
    for ctx in contexts() {
        let m = Modulate::new(ctx, spec, &w1).unwrap();
        assert_eq!(m.spec(), &spec);
        // [1, cin, 1, cout]: the transpose of PyTorch's [cout, cin].
        let wt = m.weight_tensor();
        assert_eq!(wt.shape(), Shape::new(1, cin, 1, cout));
        assert_eq!(wt.to_f32(ctx).unwrap(), transpose(&w1));
        wt.write_f32(ctx, &transpose(&w2)).unwrap();
        let st = Tensor::from_f32(ctx, Shape::vector(n, cin), &style, "style").unwrap();
        let y = Tensor::new(ctx, m.output_shape(n), "y").unwrap();
        ctx.run(&[&m.bind(ctx, &st, 0, &y).unwrap()]).unwrap();
        let r = modulate(&to64(&w2), cout, cin, &to64(&style), n, 1.0, true, 1e-16);
        let want: Vec<f64> = (0..n * cin * cout)
            .map(|j| {
                let (b, i, o) = (j / (cin * cout), (j / cout) % cin, j % cout);
                r[(b * cout + o) * cin + i]
            })
            .collect();
        // fp16 weights and style, f32 arithmetic over cin terms, fp16 store: a few h relative.
        let bound: Vec<f64> = want.iter().map(|v| 4.0 * U16 * v.abs() + SUB16).collect();
        assert_within(
            &y.to_f32(ctx).unwrap(),
            &want,
            &bound,
            &format!("modulate after refresh {}", label(ctx)),
        );
    }
}

#[test]
fn grad_kernels_reject_mismatches() {
    let ctx = &contexts()[0];
    let err =
        |r: Result<Vec<fswap::gpu::Dispatch>, fswap::Error>| r.expect_err("an error").to_string();
    let lg = LinearGrad::new(ctx, (2, 3, 3), 4).unwrap();
    assert!(LinearGrad::new(ctx, (2, 0, 3), 4).is_err());
    let x = Tensor::new(ctx, [2, 2, 3, 3], "x").unwrap();
    let dy = Tensor::new(ctx, Shape::vector(2, 4), "dy").unwrap();
    let (dw, db) = lg.grad_buffers(ctx).unwrap();
    let small = f32_storage(ctx, "small", 8).unwrap();
    let e = err(lg.bind_weight(ctx, &x, &dy, &small, &db));
    assert!(e.contains("dW buffer") && e.contains("72 f32"), "{e}");
    let bad_x = Tensor::new(ctx, [2, 2, 3, 4], "x").unwrap();
    let e = err(lg.bind_weight(ctx, &bad_x, &dy, &dw, &db));
    assert!(e.contains("layer expects (2, 3, 3)"), "{e}");
    let bad_dy = Tensor::new(ctx, Shape::vector(1, 4), "dy").unwrap();
    let e = lg
        .bind_input(ctx, &dw, &bad_dy, &x)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("dY expected [2, 1, 1, 4]"), "{e}");
    let e = lg
        .bind_input(ctx, &small, &dy, &x)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("weights buffer"), "{e}");

    let spec = ModulateSpec {
        cin: 5,
        cout: 7,
        style_bias: 1.0,
        demodulate: true,
        eps: 1e-16,
    };
    assert!(ModulateGrad::new(ModulateSpec { eps: -1.0, ..spec }).is_err());
    assert!(ModulateGrad::new(ModulateSpec { cin: 0, ..spec }).is_err());
    let mg = ModulateGrad::new(spec).unwrap();
    let w = f32_storage(ctx, "w", 35).unwrap();
    let st = Tensor::new(ctx, Shape::vector(2, 6), "s").unwrap();
    let g = Tensor::new(ctx, [2, 5, 1, 7], "g").unwrap();
    let ds = Tensor::new(ctx, Shape::vector(2, 5), "ds").unwrap();
    let e = err(mg.bind(ctx, &w, &st, 2, &g, Some(&ds), None));
    assert!(e.contains("style must be [N, 1, 1, ≥7] (offset 2)"), "{e}");
    let e = err(mg.bind(ctx, &w, &st, 0, &g, Some(&st), None));
    assert!(e.contains("ds expected [2, 1, 1, 5]"), "{e}");
    let g_bad = Tensor::new(ctx, [2, 7, 1, 5], "g").unwrap();
    let e = err(mg.bind(ctx, &w, &st, 0, &g_bad, Some(&ds), None));
    assert!(e.contains("dOut expected [2, 5, 1, 7]"), "{e}");
    let e = err(mg.bind(ctx, &small, &st, 0, &g, Some(&ds), None));
    assert!(e.contains("weights buffer"), "{e}");

    let v = Tensor::new(ctx, Shape::vector(2, 13), "v").unwrap();
    let map = Tensor::new(ctx, [2, 3, 2, 2], "m").unwrap();
    let e = l2_normalize_grad(ctx, &map, &map, 1e-12, &map)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("vector batch"), "{e}");
    assert!(l2_normalize_grad(ctx, &v, &v, 0.0, &v).is_err());
    let e = softmax_channels_grad(ctx, &map, &v, &map)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("dY expected [2, 3, 2, 2]"), "{e}");
}
