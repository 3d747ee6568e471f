//! Convolution backward (dX, dW, dBias) vs an f64 adjoint of the reference convolution, on every
//! storage path; the adjoint itself is checked against finite differences of `reference::conv2d`.
//!
//! Tolerances, per element, from how the GPU computes (never a blanket constant):
//! - X and dY are drawn already rounded to f16, so the reference sees exactly what the GPU stores;
//!   weights are f32 on both sides.
//! - dX: f32 accumulation of `T` products dY·W (T = cout/groups·kh·kw taps at most) errs by at most
//!   `(T + 1)·2^-24·Σ|dY·W|` (the standard recursive-summation bound, products included); storing the
//!   result as fp16 adds half an ulp, `2^-11` relative (`2^-25` absolute in the subnormal range).
//! - dW, dBias: products of two f16 values are exact in f32; summing the `M = N·Ho·Wo` products in
//!   any order (lane, workgroup tree, chunks) errs by at most `M·2^-24·Σ|dY·X|`, and the result is
//!   stored as f32 (another 2^-24 relative).
//!
//! Every check also reports the worst error as a fraction of its bound.
mod common;

use common::reference::{conv2d, pad_index};
use common::{contexts, label, Rng};
use fswap::kernels::conv::{Conv2d, ConvSpec, Padding};
use fswap::kernels::conv_grad::ConvGrad;
use fswap::kernels::Epilogue;
use fswap::{Shape, Tensor};

const U32: f64 = 1.0 / (1u64 << 24) as f64; // f32 unit roundoff
const U16: f64 = 1.0 / (1u64 << 11) as f64; // f16 unit roundoff

/// Gradients of `L = Σ dY·conv(X, W)` with respect to X, W and the bias, and the sums of the
/// absolute values of the terms each one adds up (for the error bounds).
struct Grads {
    dx: Vec<f64>,
    dx_abs: Vec<f64>,
    dw: Vec<f64>,
    dw_abs: Vec<f64>,
    db: Vec<f64>,
    db_abs: Vec<f64>,
}

/// The adjoint of `reference::conv2d`, written from the same loop: every term `x·w` the forward adds
/// into `y` sends `dy·w` to that `x` and `dy·x` to that `w` (reflection included: a mirrored read
/// sends its gradient to the element it read).
#[allow(clippy::too_many_arguments)]
fn conv2d_adjoint(
    x: &[f64],
    dy: &[f64],
    n: usize,
    h: usize,
    w: usize,
    wt: &[f64],
    spec: &ConvSpec,
) -> (Grads, usize, usize) {
    let (kh, kw) = spec.kernel;
    let (stride, pad, dil) = (spec.stride, spec.pad, spec.dilation);
    let reflect = spec.padding == Padding::Reflect;
    let (cin, cout) = (spec.cin, spec.cout);
    let ho = (h + 2 * pad.0 - dil.0 * (kh - 1) - 1) / stride.0 + 1;
    let wo = (w + 2 * pad.1 - dil.1 * (kw - 1) - 1) / stride.1 + 1;
    let (cin_g, cout_g) = (cin / spec.groups, cout / spec.groups);
    let mut g = Grads {
        dx: vec![0.0; x.len()],
        dx_abs: vec![0.0; x.len()],
        dw: vec![0.0; wt.len()],
        dw_abs: vec![0.0; wt.len()],
        db: vec![0.0; cout],
        db_abs: vec![0.0; cout],
    };
    for b in 0..n {
        for o in 0..cout {
            let grp = o / cout_g;
            for oy in 0..ho {
                for ox in 0..wo {
                    let gy = dy[((b * cout + o) * ho + oy) * wo + ox];
                    g.db[o] += gy;
                    g.db_abs[o] += gy.abs();
                    for i in 0..cin_g {
                        let ci = grp * cin_g + i;
                        for ky in 0..kh {
                            let Some(iy) = pad_index(
                                (oy * stride.0 + ky * dil.0) as i64 - pad.0 as i64,
                                h as i64,
                                reflect,
                            ) else {
                                continue;
                            };
                            for kx in 0..kw {
                                let Some(ix) = pad_index(
                                    (ox * stride.1 + kx * dil.1) as i64 - pad.1 as i64,
                                    w as i64,
                                    reflect,
                                ) else {
                                    continue;
                                };
                                let xi = ((b * cin + ci) * h + iy) * w + ix;
                                let wi = ((o * cin_g + i) * kh + ky) * kw + kx;
                                g.dx[xi] += gy * wt[wi];
                                g.dx_abs[xi] += (gy * wt[wi]).abs();
                                g.dw[wi] += gy * x[xi];
                                g.dw_abs[wi] += (gy * x[xi]).abs();
                            }
                        }
                    }
                }
            }
        }
    }
    (g, ho, wo)
}

fn forward(x: &[f64], n: usize, h: usize, w: usize, wt: &[f64], s: &ConvSpec) -> Vec<f64> {
    conv2d(
        x,
        n,
        s.cin,
        h,
        w,
        wt,
        s.cout,
        s.kernel.0,
        s.kernel.1,
        s.stride,
        s.pad,
        s.dilation,
        s.groups,
        s.padding == Padding::Reflect,
    )
    .0
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

#[derive(Clone, Copy)]
struct Case {
    spec: ConvSpec,
    n: usize,
    h: usize,
    w: usize,
    /// dW's small-output path limit (`ConvGrad::small_weight_limit`; 0 forces the tiled path).
    small: Option<usize>,
}

fn case(spec: ConvSpec, n: usize, h: usize, w: usize) -> Case {
    Case {
        spec,
        n,
        h,
        w,
        small: None,
    }
}

/// Runs dX, dW and dBias for one case on every context; returns the worst error/bound ratios seen
/// for each.
fn run_case(rng: &mut Rng, c: &Case, name: &str) -> [f64; 3] {
    let s = &c.spec;
    let xshape = Shape::new(c.n, s.cin, c.h, c.w);
    let yshape = s.output_shape(xshape).unwrap();
    let x = rng.vec(xshape.numel(), -1.0, 1.0);
    let gy = rng.vec(yshape.numel(), -1.0, 1.0);
    let wt: Vec<f32> = (0..s.weight_len())
        .map(|_| rng.uniform(-1.0, 1.0))
        .collect();
    let d = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (g, ho, wo) = conv2d_adjoint(&d(&x), &d(&gy), c.n, c.h, c.w, &d(&wt), s);
    assert_eq!((ho, wo), (yshape.h, yshape.w), "{name}: reference geometry");
    let taps = (s.cout / s.groups * s.kernel.0 * s.kernel.1) as f64;
    let m = (c.n * ho * wo) as f64;
    let dx_bound: Vec<f64> =
        g.dx.iter()
            .zip(&g.dx_abs)
            .map(|(v, a)| {
                let acc = (taps + 1.0) * U32 * a;
                U16 * (v.abs() + acc) + acc + U32 / 2.0
            })
            .collect();
    let sum_bound = |abs: &[f64], v: &[f64]| -> Vec<f64> {
        abs.iter()
            .zip(v)
            .map(|(a, v)| (m + 1.0) * U32 * a + U32 * v.abs() + 1e-30)
            .collect()
    };
    let dw_bound = sum_bound(&g.dw_abs, &g.dw);
    let db_bound = sum_bound(&g.db_abs, &g.db);
    let mut worst = [0f64; 3];
    for ctx in contexts() {
        let what = format!("{name} {} {s:?} n{} {}x{}", label(ctx), c.n, c.h, c.w);
        let mut grad = ConvGrad::new(ctx, *s, &wt).unwrap();
        if let Some(limit) = c.small {
            grad = grad.small_weight_limit(limit);
        }
        let xt = Tensor::from_f32(ctx, xshape, &x, "x").unwrap();
        let dyt = Tensor::from_f32(ctx, yshape, &gy, "dy").unwrap();
        let dxt = Tensor::new(ctx, xshape, "dx").unwrap();
        let di = grad.bind_input(ctx, &dyt, &dxt).unwrap();
        let wg = grad.bind_weight(ctx, &xt, &dyt).unwrap();
        let mut all = vec![&di];
        all.extend(wg.refs());
        ctx.run(&all).unwrap();
        let got_dx = dxt.to_f32(ctx).unwrap();
        worst[0] = worst[0].max(assert_within(
            &got_dx,
            &g.dx,
            &dx_bound,
            &format!("dX {what}"),
        ));
        let got_dw = wg.read_dw(ctx).unwrap();
        worst[1] = worst[1].max(assert_within(
            &got_dw,
            &g.dw,
            &dw_bound,
            &format!("dW {what}"),
        ));
        let got_db = wg.read_db(ctx).unwrap();
        worst[2] = worst[2].max(assert_within(
            &got_db,
            &g.db,
            &db_bound,
            &format!("dBias {what}"),
        ));
    }
    worst
}

fn dil(mut s: ConvSpec, d: usize) -> ConvSpec {
    s.dilation = (d, d);
    s
}

/// Sets different y and x strides and y and x dilations; padding becomes (dilation.0, pad.1).
fn rect(mut s: ConvSpec, stride: (usize, usize), dilation: (usize, usize)) -> ConvSpec {
    s.stride = stride;
    s.dilation = dilation;
    s.pad.0 = dilation.0 * (s.kernel.0 / 2);
    s
}

#[test]
fn adjoint_reference_matches_finite_differences() {
    // L(X, W) = Σ dY·conv(X, W) is linear in X and in W, so a central difference is exact up to
    // f64 rounding: any disagreement beyond 1e-9 is a bug in the adjoint, not truncation error.
    let mut rng = Rng::new(0xFD);
    let specs = [
        ConvSpec::new(4, 4, 3, 2, 1).groups(2),
        dil(ConvSpec::new(2, 3, 3, 1, 2), 2).reflect(),
        ConvSpec::depthwise(3, 4, 2, 1).reflect(),
    ];
    for s in specs {
        let (n, h, w) = (2, 7, 6);
        let xs = Shape::new(n, s.cin, h, w);
        let ys = s.output_shape(xs).unwrap();
        let x: Vec<f64> = (0..xs.numel())
            .map(|_| rng.uniform(-1.0, 1.0) as f64)
            .collect();
        let wt: Vec<f64> = (0..s.weight_len())
            .map(|_| rng.uniform(-1.0, 1.0) as f64)
            .collect();
        let gy: Vec<f64> = (0..ys.numel())
            .map(|_| rng.uniform(-1.0, 1.0) as f64)
            .collect();
        let (g, _, _) = conv2d_adjoint(&x, &gy, n, h, w, &wt, &s);
        let loss = |x: &[f64], wt: &[f64]| -> f64 {
            forward(x, n, h, w, wt, &s)
                .iter()
                .zip(&gy)
                .map(|(a, b)| a * b)
                .sum()
        };
        let eps = 1e-3;
        for i in 0..x.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += eps;
            xm[i] -= eps;
            let fd = (loss(&xp, &wt) - loss(&xm, &wt)) / (2.0 * eps);
            assert!(
                (fd - g.dx[i]).abs() < 1e-9,
                "{s:?} dX[{i}]: fd {fd} adjoint {}",
                g.dx[i]
            );
        }
        for i in 0..wt.len() {
            let (mut wp, mut wm) = (wt.clone(), wt.clone());
            wp[i] += eps;
            wm[i] -= eps;
            let fd = (loss(&x, &wp) - loss(&x, &wm)) / (2.0 * eps);
            assert!(
                (fd - g.dw[i]).abs() < 1e-9,
                "{s:?} dW[{i}]: fd {fd} adjoint {}",
                g.dw[i]
            );
        }
        // dBias: L gains Σ dY[o]·b[o], so the gradient is Σ dY over each channel.
        for o in 0..s.cout {
            let want: f64 = (0..n)
                .flat_map(|b| {
                    let start = (b * s.cout + o) * ys.plane();
                    gy[start..start + ys.plane()].to_vec()
                })
                .sum();
            assert!((want - g.db[o]).abs() < 1e-12);
        }
    }
}

#[test]
fn conv_grad_listed_shapes_match_adjoint() {
    let mut rng = Rng::new(0x6AD);
    let cases = [
        ("dense k3 s1", case(ConvSpec::new(3, 5, 3, 1, 1), 2, 9, 11)),
        ("dense k3 s2", case(ConvSpec::new(6, 7, 3, 2, 1), 1, 13, 10)),
        ("dense k1", case(ConvSpec::new(5, 6, 1, 1, 0), 2, 7, 5)),
        ("dense k1 s2", case(ConvSpec::new(5, 3, 1, 2, 0), 1, 9, 9)),
        ("dense k4 s4", case(ConvSpec::new(3, 2, 4, 4, 0), 2, 19, 21)),
        (
            "dense k4 s2 p1",
            case(ConvSpec::new(2, 5, 4, 2, 1), 1, 11, 12),
        ),
        (
            "dense k5 d2",
            case(dil(ConvSpec::new(3, 4, 5, 1, 4), 2), 1, 13, 9),
        ),
        (
            "dense k3 s4 p1",
            case(ConvSpec::new(4, 3, 3, 4, 1), 2, 17, 15),
        ),
        ("dw k3", case(ConvSpec::depthwise(5, 3, 1, 1), 2, 17, 15)),
        ("dw k3 s2", case(ConvSpec::depthwise(7, 3, 2, 1), 2, 13, 11)),
        ("dw k5 s2", case(ConvSpec::depthwise(6, 5, 2, 2), 1, 15, 14)),
        (
            "dw k3 d2",
            case(dil(ConvSpec::depthwise(3, 3, 1, 2), 2), 2, 10, 9),
        ),
        ("dw k4 s4", case(ConvSpec::depthwise(9, 4, 4, 0), 1, 18, 17)),
        (
            "grouped g3 k3 d2",
            case(dil(ConvSpec::new(6, 9, 3, 1, 2), 2).groups(3), 2, 11, 10),
        ),
        (
            "grouped g2 k5 s2",
            case(ConvSpec::new(4, 6, 5, 2, 2).groups(2), 1, 13, 13),
        ),
        (
            "grouped g2 cin_g 3",
            case(ConvSpec::new(6, 2, 3, 1, 1).groups(2), 2, 8, 7),
        ),
        // Several position chunks and weight tiles in the dW reduction.
        (
            "dense k3 many chunks",
            case(ConvSpec::new(3, 8, 3, 1, 1), 2, 40, 37),
        ),
        (
            "dense K 180",
            case(ConvSpec::new(20, 6, 3, 1, 1), 1, 23, 21),
        ),
        ("dw 64ch", case(ConvSpec::depthwise(64, 3, 1, 1), 1, 32, 30)),
        // dX row-quad path: zero padding, x stride and dilation 1, W and Wo multiples of 4.
        (
            "rows dw k3",
            case(ConvSpec::depthwise(5, 3, 1, 1), 2, 9, 12),
        ),
        ("rows dense k3", case(ConvSpec::new(6, 5, 3, 1, 1), 1, 7, 8)),
        (
            "rows dense k5 p0",
            case(ConvSpec::new(3, 2, 5, 1, 0), 2, 9, 16),
        ),
        (
            "rows dw k7 p3",
            case(ConvSpec::depthwise(3, 7, 1, 3), 1, 10, 8),
        ),
        ("rows k1", case(ConvSpec::new(5, 6, 1, 1, 0), 1, 3, 8)),
        (
            "rows grouped sy2",
            case(
                rect(ConvSpec::new(6, 4, 3, 1, 1).groups(2), (2, 1), (1, 1)),
                2,
                11,
                8,
            ),
        ),
        (
            "rows dw dy2",
            case(
                rect(ConvSpec::depthwise(4, 3, 1, 1), (1, 1), (2, 1)),
                1,
                9,
                12,
            ),
        ),
        (
            "rows dw 64ch",
            case(ConvSpec::depthwise(64, 3, 1, 1), 1, 16, 16),
        ),
        // Reflect padding.
        (
            "reflect dw k3",
            case(ConvSpec::depthwise(5, 3, 1, 1).reflect(), 2, 9, 10),
        ),
        (
            "reflect dense k5 p2",
            case(ConvSpec::new(3, 4, 5, 1, 2).reflect(), 1, 8, 9),
        ),
        (
            "reflect s2",
            case(ConvSpec::new(4, 4, 3, 2, 1).groups(2).reflect(), 2, 11, 8),
        ),
        (
            "reflect d2",
            case(dil(ConvSpec::new(3, 2, 3, 1, 2), 2).reflect(), 1, 7, 8),
        ),
        (
            "reflect k7 p3",
            case(ConvSpec::depthwise(2, 7, 1, 3).reflect(), 1, 5, 6),
        ),
    ];
    for (name, c) in &cases {
        // The listed shapes through the tiled dW paths (the default sends small outputs to the
        // one-invocation-per-weight path, which the random shapes and the injection shapes
        // below cover).
        let c = Case {
            small: Some(0),
            ..*c
        };
        let r = run_case(&mut rng, &c, name);
        eprintln!(
            "{name}: worst error / bound: dX {:.3}, dW {:.3}, dBias {:.3}",
            r[0], r[1], r[2]
        );
    }
}

#[test]
fn conv_grad_random_shapes_match_adjoint() {
    let mut rng = Rng::new(0xBAC);
    for i in 0..30 {
        let k = [1, 2, 3, 3, 4, 5][rng.range(0, 5)];
        let st = [1, 1, 2, 4][rng.range(0, 3)];
        let d = if k > 1 && rng.range(0, 3) == 0 { 2 } else { 1 };
        let reflect = rng.range(0, 3) == 0;
        let p = rng.range(0, (d * (k - 1)) / 2 + 1);
        let h = rng.range((d * (k - 1) + 1).max(p + 1), 19);
        let w = rng.range((d * (k - 1) + 1).max(p + 1), 23);
        let (cin, cout, groups) = match i % 3 {
            0 => (rng.range(1, 9), rng.range(1, 11), 1),
            1 => {
                let c = rng.range(1, 13);
                (c, c, c)
            }
            _ => {
                let g = rng.range(2, 3);
                (g * rng.range(1, 3), g * rng.range(1, 5), g)
            }
        };
        let mut spec = dil(ConvSpec::new(cin, cout, k, st, p).groups(groups), d);
        if reflect {
            spec = spec.reflect();
        }
        let n = rng.range(1, 2);
        run_case(&mut rng, &case(spec, n, h, w), &format!("random {i}"));
    }
}

#[test]
fn conv_grad_small_outputs_match_adjoint() {
    // The injection network's shapes (dense convs on 7×7 and 4×4 maps, batch > 1), cut to few
    // channels: the one-invocation-per-weight dW path, and the same through the tiled path.
    let mut rng = Rng::new(0x5A1);
    let cases = [
        ("k4 p0 on 7x7", case(ConvSpec::new(6, 5, 4, 1, 0), 3, 7, 7)),
        ("k3 p1 on 4x4", case(ConvSpec::new(5, 7, 3, 1, 1), 2, 4, 4)),
        ("k2 p0 on 4x4", case(ConvSpec::new(9, 6, 2, 1, 0), 2, 4, 4)),
        (
            "dw k3 on 5x3",
            case(ConvSpec::depthwise(6, 3, 1, 1), 2, 5, 3),
        ),
        (
            "k3 s2 reflect",
            case(ConvSpec::new(4, 3, 3, 2, 1).reflect(), 1, 9, 7),
        ),
    ];
    for (name, c) in &cases {
        let quads = {
            let y = c
                .spec
                .output_shape(Shape::new(c.n, c.spec.cin, c.h, c.w))
                .unwrap();
            c.n * y.plane().div_ceil(4)
        };
        assert!(quads <= 64, "{name}: {quads} quads is not a small output");
        for small in [None, Some(0)] {
            let c = Case { small, ..*c };
            run_case(&mut rng, &c, &format!("{name} small {small:?}"));
        }
    }
}

#[test]
fn weight_gradient_is_bitwise_deterministic() {
    // One case per pass-1 variant: four channels per workgroup (dense), one channel with
    // gathers (depthwise, odd width), one channel with row windows (depthwise, width 32).
    let mut rng = Rng::new(11);
    let cases = [
        (ConvSpec::new(5, 6, 3, 1, 1), 2, 33, 29),
        (ConvSpec::depthwise(3, 3, 1, 1), 2, 33, 29),
        (ConvSpec::depthwise(3, 3, 1, 1), 2, 40, 32),
    ];
    for (spec, n, h, w) in cases {
        let xs = Shape::new(n, spec.cin, h, w);
        let ys = spec.output_shape(xs).unwrap();
        let x = rng.vec(xs.numel(), -1.0, 1.0);
        let gy = rng.vec(ys.numel(), -1.0, 1.0);
        for ctx in contexts() {
            let grad = ConvGrad::new(ctx, spec, &vec![0.5; spec.weight_len()]).unwrap();
            let xt = Tensor::from_f32(ctx, xs, &x, "x").unwrap();
            let dyt = Tensor::from_f32(ctx, ys, &gy, "dy").unwrap();
            let wg = grad.bind_weight(ctx, &xt, &dyt).unwrap();
            assert!(wg.chunks > 1, "the case should split positions into chunks");
            ctx.run(&wg.refs()).unwrap();
            let first = (wg.read_dw(ctx).unwrap(), wg.read_db(ctx).unwrap());
            for _ in 0..3 {
                ctx.run(&wg.refs()).unwrap();
                let again = (wg.read_dw(ctx).unwrap(), wg.read_db(ctx).unwrap());
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let what = format!("{} {spec:?}", label(ctx));
                assert_eq!(bits(&first.0), bits(&again.0), "dW {what}");
                assert_eq!(bits(&first.1), bits(&again.1), "dBias {what}");
            }
        }
    }
}

#[test]
fn caller_owned_buffers_and_large_planes() {
    // Weights from a caller's f32 buffer, gradients into the caller's buffers, and a plane large
    // enough that the position chunks hit their cap (64) with a chunk length that is not a
    // multiple of the workgroup.
    use fswap::kernels::conv_grad::{f32_storage, read_f32};
    let mut rng = Rng::new(99);
    let spec = ConvSpec::depthwise(2, 3, 1, 1);
    let (n, h, w) = (1, 300, 283);
    let xs = Shape::new(n, 2, h, w);
    let x = rng.vec(xs.numel(), -1.0, 1.0);
    let gy = rng.vec(xs.numel(), -1.0, 1.0);
    let wt: Vec<f32> = (0..spec.weight_len())
        .map(|_| rng.uniform(-1.0, 1.0))
        .collect();
    let d = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (g, _, _) = conv2d_adjoint(&d(&x), &d(&gy), n, h, w, &d(&wt), &spec);
    let m = (n * h * w) as f64;
    for ctx in contexts() {
        let wbuf = f32_storage(ctx, "params", spec.weight_len()).unwrap();
        ctx.queue.write_buffer(&wbuf, 0, bytemuck::cast_slice(&wt));
        let grad = ConvGrad::with_weight_buffer(spec, wbuf).unwrap();
        let dw = f32_storage(ctx, "dw arena", 64).unwrap();
        let db = f32_storage(ctx, "db arena", 64).unwrap();
        let xt = Tensor::from_f32(ctx, xs, &x, "x").unwrap();
        let dyt = Tensor::from_f32(ctx, xs, &gy, "dy").unwrap();
        let dxt = Tensor::new(ctx, xs, "dx").unwrap();
        let wg = grad
            .bind_weight_into(ctx, &xt, &dyt, dw.clone(), db.clone())
            .unwrap();
        assert_eq!(wg.chunks, 64, "chunk cap");
        let di = grad.bind_input(ctx, &dyt, &dxt).unwrap();
        let mut all = vec![&di];
        all.extend(wg.refs());
        ctx.run(&all).unwrap();
        let what = label(ctx);
        let got = read_f32(ctx, &dw, spec.weight_len()).unwrap();
        let bound: Vec<f64> = g.dw_abs.iter().map(|a| (m + 1.0) * U32 * a).collect();
        assert_within(&got, &g.dw, &bound, &format!("dW large {what}"));
        let got = read_f32(ctx, &db, spec.cout).unwrap();
        let bound: Vec<f64> = g.db_abs.iter().map(|a| (m + 1.0) * U32 * a).collect();
        assert_within(&got, &g.db, &bound, &format!("dBias large {what}"));
        let bound: Vec<f64> =
            g.dx.iter()
                .zip(&g.dx_abs)
                .map(|(v, a)| {
                    let acc = 10.0 * U32 * a;
                    U16 * (v.abs() + acc) + acc + U32 / 2.0
                })
                .collect();
        assert_within(
            &dxt.to_f32(ctx).unwrap(),
            &g.dx,
            &bound,
            &format!("dX large {what}"),
        );
    }
}

#[test]
fn conv_grad_rejects_bad_shapes() {
    let ctx = &contexts()[0];
    let spec = ConvSpec::new(3, 4, 3, 1, 1);
    let e = ConvGrad::new(ctx, spec, &[0.0; 10])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("expected 108 values") && e.contains("found 10"),
        "{e}"
    );
    let grad = ConvGrad::new(ctx, spec, &[0.0; 108]).unwrap();
    let dx = Tensor::new(ctx, [1, 3, 8, 8], "dx").unwrap();
    let dy = Tensor::new(ctx, [1, 4, 7, 8], "dy").unwrap();
    let e = grad.bind_input(ctx, &dy, &dx).err().unwrap().to_string();
    assert!(
        e.contains("dY expected [1, 4, 8, 8], found [1, 4, 7, 8]"),
        "{e}"
    );
    let x = Tensor::new(ctx, [1, 5, 8, 8], "x").unwrap();
    let e = grad.bind_weight(ctx, &x, &dy).err().unwrap().to_string();
    assert!(e.contains("input has 5 channels"), "{e}");
    let e = ConvGrad::new(ctx, ConvSpec::new(3, 4, 3, 1, 1).groups(2), &[0.0; 1])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("groups 2 must divide cin 3"), "{e}");
    let small = fswap::kernels::conv_grad::f32_storage(ctx, "small", 4).unwrap();
    let e = ConvGrad::with_weight_buffer(spec, small.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("needs STORAGE and 432 bytes"), "{e}");
    let x = Tensor::new(ctx, [1, 3, 8, 8], "x").unwrap();
    let dy = Tensor::new(ctx, [1, 4, 8, 8], "dy").unwrap();
    let e = grad
        .bind_weight_into(ctx, &x, &dy, small.clone(), small)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("dW buffer of 16 bytes"), "{e}");
}

/// Timings for the report: `cargo test --release --test kernels_conv_grad -- --ignored --nocapture`.
#[test]
#[ignore]
fn conv_grad_timings() {
    let mut rng = Rng::new(5);
    let layers = [
        (
            "depthwise 3x3 64ch 112^2",
            ConvSpec::depthwise(64, 3, 1, 1),
            112,
        ),
        ("dense 3x3 32->32 56^2", ConvSpec::new(32, 32, 3, 1, 1), 56),
    ];
    for ctx in contexts() {
        for (name, spec, size) in &layers {
            let xs = Shape::new(1, spec.cin, *size, *size);
            let ys = spec.output_shape(xs).unwrap();
            let x = rng.vec(xs.numel(), -1.0, 1.0);
            let gy = rng.vec(ys.numel(), -1.0, 1.0);
            let wt = rng.vec(spec.weight_len(), -1.0, 1.0);
            let grad = ConvGrad::new(ctx, *spec, &wt).unwrap();
            let xt = Tensor::from_f32(ctx, xs, &x, "x").unwrap();
            let dyt = Tensor::from_f32(ctx, ys, &gy, "dy").unwrap();
            let dxt = Tensor::new(ctx, xs, "dx").unwrap();
            let di = grad.bind_input(ctx, &dyt, &dxt).unwrap();
            let wg = grad.bind_weight(ctx, &xt, &dyt).unwrap();
            // The forward pass of the same layer, for scale.
            let fwd = Conv2d::new(ctx, *spec, &wt, &Epilogue::none()).unwrap();
            let yt = Tensor::new(ctx, ys, "y").unwrap();
            let df = fwd.bind(ctx, &xt, &yt, None).unwrap();
            let mut all = vec![&df, &di];
            all.extend(wg.refs());
            let prof = ctx.profile(&all, 3, 10).unwrap();
            let parts: Vec<String> = prof
                .entries
                .iter()
                .map(|e| format!("{} {:.0} µs", e.label, e.micros))
                .collect();
            eprintln!(
                "{} {name}: total {:.0} µs ({}) [{}] chunks {}",
                label(ctx),
                prof.total_micros,
                prof.timing,
                parts.join(", "),
                wg.chunks
            );
        }
    }
}
