//! Resampling and pooling backward (dX) vs f64 adjoints on every storage path; each adjoint is
//! checked against central finite differences of the f64 forward it is written from, and that
//! forward against the shared references the forward kernels are tested with.
//!
//! Every operation here is linear in X (max pooling piecewise so): `y[o] = Σ w·x[i]` over a list of
//! taps per output. The f64 forward and the adjoint are written from the same tap list, which is
//! built with PyTorch's semantics (bilinear coordinates and border clamping for both
//! align_corners modes, nearest `floor(d·s)` with PyTorch's f32 scale, pixel shuffle, max with the
//! first maximum in window raster order, average divisors with or without padding).
//!
//! Tolerances, per element, from how the GPU computes (never a blanket constant); dY is drawn
//! already rounded to f16, so the reference sees exactly what the GPU stores:
//! - Summation: the kernel adds `T` terms (each a product of dY and one or two weights, or a
//!   quotient by a divisor) in f32, so it errs by at most `(T + 3)·2^-24·Σ|term|` (recursive
//!   summation with the products' roundings).
//! - Bilinear weights: the kernel computes source coordinates in f32 from an f32 scale; a
//!   coordinate up to `size` errs by at most `3·2^-24·(size + 1)` (scale, product and offset
//!   roundings), `l = f − floor(f)` is exact (Sterbenz) and `1 − l` adds `2^-24`, so each axis's
//!   weight errs by `e = 4·2^-24·(size + 1)`. Where a coordinate lies within that of an integer the
//!   floor may differ from f64's, which moves at most `e` of weight to the neighbouring index: the
//!   bound therefore charges `(e_y + e_x)·Σ|dY|` over every output whose taps are within one index
//!   of the element (`N` below), not only over the f64 taps.
//! - Nearest, pixel shuffle and max pooling select samples exactly (the same f32 index arithmetic
//!   on both sides; x is fp16 on both sides for max), average pooling divides by the same integer.
//! - Storing dX as fp16 adds half an ulp: `2^-11` relative, `2^-25` absolute in the subnormals.
//!
//! Every check reports the worst error as a fraction of its bound, and mutation checks confirm the
//! bounds are tight enough to catch a wrong adjoint (align_corners flipped, the other tie rule).
mod common;

use common::reference::{bilinear, nearest, pool};
use common::{contexts, label, Rng};
use fswap::kernels::conv_grad::read_f32;
use fswap::kernels::pool::Pool;
use fswap::kernels::resample::Resample;
use fswap::kernels::{pool_grad, resample_grad};
use fswap::{Context, Shape, Tensor};

const U32: f64 = 1.0 / (1u64 << 24) as f64; // f32 unit roundoff
const U16: f64 = 1.0 / (1u64 << 11) as f64; // f16 unit roundoff
const SUB16: f64 = 1.0 / (1u64 << 25) as f64; // half the f16 subnormal spacing

/// A linear map given by its taps: output `o` is `Σ w·x[i]` over `taps[o]`.
struct Lin {
    taps: Vec<Vec<(usize, f64)>>,
    nx: usize,
}

/// An adjoint and what its error bound needs.
struct Adj {
    /// `dX[i] = Σ w·dY[o]` over every tap (o → i).
    dx: Vec<f64>,
    /// `Σ |w·dY[o]|` over the same taps.
    abs: Vec<f64>,
    /// Number of taps.
    count: Vec<usize>,
}

impl Lin {
    fn forward(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), self.nx);
        self.taps
            .iter()
            .map(|t| t.iter().map(|&(i, w)| w * x[i]).sum())
            .collect()
    }

    /// The adjoint, written from the same taps: every term `w·x[i]` the forward adds into `y[o]`
    /// sends `w·dY[o]` to `dX[i]`.
    fn adjoint(&self, dy: &[f64]) -> Adj {
        assert_eq!(dy.len(), self.taps.len());
        let mut a = Adj {
            dx: vec![0.0; self.nx],
            abs: vec![0.0; self.nx],
            count: vec![0; self.nx],
        };
        for (t, &g) in self.taps.iter().zip(dy) {
            for &(i, w) in t {
                a.dx[i] += w * g;
                a.abs[i] += (w * g).abs();
                a.count[i] += 1;
            }
        }
        a
    }
}

/// Per-axis taps, one list per output index.
type Axis = Vec<Vec<(usize, f64)>>;

/// A separable 2-D map over `rows` planes: output (oy, ox) takes the products of the axes' taps.
fn separable(rows: usize, h: usize, w: usize, ay: &Axis, ax: &Axis) -> Lin {
    let mut taps = Vec::with_capacity(rows * ay.len() * ax.len());
    for r in 0..rows {
        for ty in ay {
            for tx in ax {
                let mut t = Vec::with_capacity(ty.len() * tx.len());
                for &(iy, wy) in ty {
                    for &(ix, wx) in tx {
                        t.push(((r * h + iy) * w + ix, wy * wx));
                    }
                }
                taps.push(t);
            }
        }
    }
    Lin {
        taps,
        nx: rows * h * w,
    }
}

/// PyTorch bilinear source coordinate of output index `d` (input `i`, output `o` samples).
fn bilinear_coord(d: usize, i: usize, o: usize, align: bool) -> f64 {
    if align {
        if o > 1 {
            d as f64 * (i - 1) as f64 / (o - 1) as f64
        } else {
            0.0
        }
    } else {
        ((d as f64 + 0.5) * i as f64 / o as f64 - 0.5).max(0.0)
    }
}

/// Bilinear taps along one axis: indices clamped at the border as PyTorch does.
fn bilinear_axis(i: usize, o: usize, align: bool) -> Axis {
    (0..o)
        .map(|d| {
            let f = bilinear_coord(d, i, o, align);
            let i0 = (f.floor() as usize).min(i - 1);
            let i1 = (i0 + 1).min(i - 1);
            let l = f - i0 as f64;
            vec![(i0, 1.0 - l), (i1, l)]
        })
        .collect()
}

/// Every index within one of a bilinear tap, weight 1: where f32 coordinates may move weight.
fn bilinear_near(i: usize, o: usize, align: bool) -> Axis {
    (0..o)
        .map(|d| {
            let i0 = (bilinear_coord(d, i, o, align).floor() as usize).min(i - 1);
            (i0.saturating_sub(1)..(i0 + 3).min(i))
                .map(|k| (k, 1.0))
                .collect()
        })
        .collect()
}

/// Nearest taps along one axis: `min(floor(d·s), i − 1)` with PyTorch's f32 scale `s = i/o`.
fn nearest_axis(i: usize, o: usize) -> Axis {
    let s = i as f32 / o as f32;
    (0..o)
        .map(|d| vec![(((d as f32 * s).floor() as usize).min(i - 1), 1.0)])
        .collect()
}

/// The taps of a resampling mode for `x` `[n, c, h, w]` to `ho × wo` (pixel shuffle: its own size).
fn resample_taps(mode: Resample, xs: Shape, ho: usize, wo: usize) -> Lin {
    let rows = xs.n * xs.c;
    match mode {
        Resample::Bilinear { align_corners } => separable(
            rows,
            xs.h,
            xs.w,
            &bilinear_axis(xs.h, ho, align_corners),
            &bilinear_axis(xs.w, wo, align_corners),
        ),
        Resample::Nearest => separable(
            rows,
            xs.h,
            xs.w,
            &nearest_axis(xs.h, ho),
            &nearest_axis(xs.w, wo),
        ),
        Resample::PixelShuffle(r) => {
            let c = xs.c / (r * r);
            let mut taps = Vec::new();
            for b in 0..xs.n {
                for ch in 0..c {
                    for oy in 0..xs.h * r {
                        for ox in 0..xs.w * r {
                            let ci = ch * r * r + (oy % r) * r + ox % r;
                            let i = ((b * xs.c + ci) * xs.h + oy / r) * xs.w + ox / r;
                            taps.push(vec![(i, 1.0)]);
                        }
                    }
                }
            }
            Lin {
                taps,
                nx: xs.numel(),
            }
        }
    }
}

/// The taps of a pooling mode for `x` (max pooling depends on the values: the first maximum of
/// each window in raster order gets weight 1).
fn pool_taps(op: Pool, xs: Shape, x: &[f64]) -> Lin {
    let rows = xs.n * xs.c;
    let (h, w) = (xs.h, xs.w);
    let mut taps = Vec::new();
    let (k, s, pad) = match op {
        Pool::Max { k, stride, pad } | Pool::Avg { k, stride, pad, .. } => (k, stride, pad),
        Pool::GlobalAvg => {
            for r in 0..rows {
                taps.push(
                    (0..h * w)
                        .map(|i| (r * h * w + i, 1.0 / (h * w) as f64))
                        .collect(),
                );
            }
            return Lin {
                taps,
                nx: xs.numel(),
            };
        }
    };
    let ho = (h + 2 * pad - k) / s + 1;
    let wo = (w + 2 * pad - k) / s + 1;
    for r in 0..rows {
        for oy in 0..ho {
            for ox in 0..wo {
                let y0 = (oy * s) as i64 - pad as i64;
                let x0 = (ox * s) as i64 - pad as i64;
                let inside: Vec<usize> = (y0..y0 + k as i64)
                    .flat_map(|iy| (x0..x0 + k as i64).map(move |ix| (iy, ix)))
                    .filter(|&(iy, ix)| iy >= 0 && ix >= 0 && iy < h as i64 && ix < w as i64)
                    .map(|(iy, ix)| (r * h + iy as usize) * w + ix as usize)
                    .collect();
                taps.push(match op {
                    Pool::Max { .. } => {
                        let mut best = inside[0];
                        for &i in &inside[1..] {
                            if x[i] > x[best] {
                                best = i;
                            }
                        }
                        vec![(best, 1.0)]
                    }
                    Pool::Avg {
                        count_include_pad, ..
                    } => {
                        let div = if count_include_pad {
                            let hy = (y0 + k as i64).min((h + pad) as i64) - y0;
                            let hx = (x0 + k as i64).min((w + pad) as i64) - x0;
                            (hy * hx) as f64
                        } else {
                            inside.len() as f64
                        };
                        inside.iter().map(|&i| (i, 1.0 / div)).collect()
                    }
                    Pool::GlobalAvg => unreachable!(),
                });
            }
        }
    }
    Lin {
        taps,
        nx: xs.numel(),
    }
}

/// Per-element bounds: `(T + 3)·u32·Σ|term| + e·N` for the f32 computation, then the fp16 store.
fn bounds(a: &Adj, near: Option<(&Adj, f64)>) -> Vec<f64> {
    (0..a.dx.len())
        .map(|i| {
            let (t, n) = match near {
                Some((nr, e)) => (nr.count[i].max(a.count[i]), e * nr.abs[i]),
                None => (a.count[i], 0.0),
            };
            let acc = (t as f64 + 3.0) * U32 * a.abs[i] + n;
            U16 * (a.dx[i].abs() + acc) + acc + SUB16
        })
        .collect()
}

/// The worst |got − want| / bound (∞ for a non-finite value) and where.
fn worst_ratio(got: &[f32], want: &[f64], bound: &[f64]) -> (f64, usize) {
    assert_eq!(got.len(), want.len(), "length");
    let mut worst = (0f64, 0usize);
    for i in 0..got.len() {
        let r = if got[i].is_finite() {
            (got[i] as f64 - want[i]).abs() / bound[i]
        } else {
            f64::INFINITY
        };
        if r > worst.0 || r.is_nan() {
            worst = (if r.is_nan() { f64::INFINITY } else { r }, i);
        }
    }
    worst
}

/// Asserts |got − want| ≤ bound everywhere; returns the worst ratio.
fn assert_within(got: &[f32], want: &[f64], bound: &[f64], what: &str) -> f64 {
    let (r, i) = worst_ratio(got, want, bound);
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

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

/// Runs the resampling backward on `ctx` and reads dX.
fn gpu_resample_grad(ctx: &Context, mode: Resample, xs: Shape, ys: Shape, dy: &[f32]) -> Vec<f32> {
    let dyt = Tensor::from_f32(ctx, ys, dy, "dy").unwrap();
    let dxt = Tensor::new(ctx, xs, "dx").unwrap();
    ctx.run(&[&resample_grad::bind(ctx, mode, &dyt, &dxt).unwrap()])
        .unwrap();
    dxt.to_f32(ctx).unwrap()
}

/// Runs the pooling backward on `ctx` and reads dX.
fn gpu_pool_grad(ctx: &Context, op: Pool, xs: Shape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let ys = op.output_shape(xs).unwrap();
    let xt = Tensor::from_f32(ctx, xs, x, "x").unwrap();
    let dyt = Tensor::from_f32(ctx, ys, dy, "dy").unwrap();
    let dxt = Tensor::new(ctx, xs, "dx").unwrap();
    ctx.run(&[&pool_grad::bind(ctx, op, Some(&xt), &dyt, &dxt).unwrap()])
        .unwrap();
    dxt.to_f32(ctx).unwrap()
}

const BILINEAR_MODES: [Resample; 2] = [
    Resample::Bilinear {
        align_corners: true,
    },
    Resample::Bilinear {
        align_corners: false,
    },
];

/// Asserts the central difference of `L(x) = Σ dY·f(x)` matches the adjoint at every element.
fn check_fd(
    name: &str,
    x: &[f64],
    dy: &[f64],
    eps: f64,
    f: impl Fn(&[f64]) -> Vec<f64>,
    dx: &[f64],
) {
    let loss = |x: &[f64]| -> f64 { f(x).iter().zip(dy).map(|(a, b)| a * b).sum() };
    for i in 0..x.len() {
        let (mut xp, mut xm) = (x.to_vec(), x.to_vec());
        xp[i] += eps;
        xm[i] -= eps;
        let fd = (loss(&xp) - loss(&xm)) / (2.0 * eps);
        assert!(
            (fd - dx[i]).abs() < 1e-9,
            "{name} dX[{i}]: fd {fd} adjoint {}",
            dx[i]
        );
    }
}

#[test]
fn adjoints_match_finite_differences() {
    // Each loss is linear in X (max pooling too, away from ties, which the distinct inputs below
    // avoid: values 0.01 apart, perturbation 1e-3), so a central difference is exact up to f64
    // rounding: any disagreement beyond 1e-9 is a bug in the adjoint, not truncation error.
    let mut rng = Rng::new(0x5A6);
    let mut draw = |n: usize| -> Vec<f64> {
        (0..n)
            .map(|_| rng.uniform(-1.0, 1.0) as f64)
            .collect::<Vec<_>>()
    };
    // Resampling: up, down, non-integer, 1-sample axes.
    for &(n, c, h, w, ho, wo) in &[
        (2, 2, 5, 4, 7, 3),
        (2, 1, 6, 7, 3, 4),
        (1, 2, 3, 5, 8, 11),
        (2, 1, 1, 4, 3, 2),
        (1, 1, 4, 3, 1, 1),
    ] {
        let xs = Shape::new(n, c, h, w);
        let x = draw(xs.numel());
        let dy = draw(n * c * ho * wo);
        for mode in BILINEAR_MODES.into_iter().chain([Resample::Nearest]) {
            let lin = resample_taps(mode, xs, ho, wo);
            let name = format!("{mode:?} {h}x{w}->{ho}x{wo}");
            // The tap list is the forward the kernels are tested against.
            let want = match mode {
                Resample::Bilinear { align_corners } => {
                    bilinear(&x, n * c, h, w, ho, wo, align_corners)
                }
                _ => nearest(&x, n * c, h, w, ho, wo),
            };
            for (a, b) in lin.forward(&x).iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "{name}: taps forward {a} vs {b}");
            }
            check_fd(
                &name,
                &x,
                &dy,
                1e-3,
                |x| lin.forward(x),
                &lin.adjoint(&dy).dx,
            );
        }
    }
    // Pixel shuffle.
    let xs = Shape::new(2, 12, 3, 5);
    let x = draw(xs.numel());
    let dy = draw(xs.numel());
    let lin = resample_taps(Resample::PixelShuffle(2), xs, 6, 10);
    check_fd(
        "shuffle",
        &x,
        &dy,
        1e-3,
        |x| lin.forward(x),
        &lin.adjoint(&dy).dx,
    );
    // Pooling, including padded windows at odd sizes.
    for &(n, c, h, w, k, s, pad) in &[
        (2, 2, 7, 9, 3, 2, 1),
        (1, 2, 6, 5, 2, 2, 1),
        (1, 1, 8, 7, 4, 3, 2),
    ] {
        let xs = Shape::new(n, c, h, w);
        // Distinct values 0.01 apart in random order.
        let mut x: Vec<f64> = (0..xs.numel()).map(|i| i as f64 * 0.01 - 1.0).collect();
        for i in (1..x.len()).rev() {
            let j = rng.range(0, i);
            x.swap(i, j);
        }
        let ops = [
            (Pool::Max { k, stride: s, pad }, "max"),
            (
                Pool::Avg {
                    k,
                    stride: s,
                    pad,
                    count_include_pad: true,
                },
                "avg_incl",
            ),
            (
                Pool::Avg {
                    k,
                    stride: s,
                    pad,
                    count_include_pad: false,
                },
                "avg_excl",
            ),
        ];
        for (op, mode) in ops {
            let lin = pool_taps(op, xs, &x);
            let (want, ho, wo) = pool(&x, n * c, h, w, k, s, pad, mode);
            let name = format!("{op:?} {h}x{w}");
            for (a, b) in lin.forward(&x).iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "{name}: taps forward {a} vs {b}");
            }
            let dy: Vec<f64> = (0..n * c * ho * wo)
                .map(|_| rng.uniform(-1.0, 1.0) as f64)
                .collect();
            // Max: the taps (argmax) are recomputed from the perturbed input.
            check_fd(
                &name,
                &x,
                &dy,
                1e-3,
                |xp| pool_taps(op, xs, xp).forward(xp),
                &lin.adjoint(&dy).dx,
            );
        }
        let lin = pool_taps(Pool::GlobalAvg, xs, &x);
        let dy: Vec<f64> = (0..n * c).map(|_| rng.uniform(-1.0, 1.0) as f64).collect();
        check_fd(
            "global avg",
            &x,
            &dy,
            1e-3,
            |x| lin.forward(x),
            &lin.adjoint(&dy).dx,
        );
    }
}

/// Resampling cases `(n, c, h, w, ho, wo)`: odd sizes, ×2 and non-integer up and down, large
/// factors, the 224 → 112 → 56 pyramid of the multi-scale losses, 1-sample axes, identity.
const RESAMPLE_CASES: &[(usize, usize, usize, usize, usize, usize)] = &[
    (2, 3, 7, 9, 14, 18),
    (2, 5, 13, 11, 6, 5),
    (1, 3, 7, 9, 10, 13),
    (2, 5, 13, 11, 9, 4),
    (1, 3, 3, 2, 17, 19),
    (1, 5, 31, 29, 7, 6),
    (1, 2, 2, 3, 64, 61),
    (1, 2, 97, 5, 3, 2),
    (1, 3, 224, 224, 112, 112),
    (2, 3, 112, 112, 56, 56),
    (2, 3, 1, 4, 3, 9),
    (1, 3, 9, 9, 1, 1),
    (1, 5, 5, 6, 5, 6),
];

#[test]
fn resample_grad_matches_adjoint() {
    let mut rng = Rng::new(0x8E5);
    for &(n, c, h, w, ho, wo) in RESAMPLE_CASES {
        let xs = Shape::new(n, c, h, w);
        let ys = Shape::new(n, c, ho, wo);
        let dy = rng.vec(ys.numel(), -1.0, 1.0);
        let dyd = f64s(&dy);
        let abs: Vec<f64> = dyd.iter().map(|v| v.abs()).collect();
        for mode in BILINEAR_MODES.into_iter().chain([Resample::Nearest]) {
            let adj = resample_taps(mode, xs, ho, wo).adjoint(&dyd);
            let bound = match mode {
                Resample::Bilinear { align_corners } => {
                    let near = separable(
                        n * c,
                        h,
                        w,
                        &bilinear_near(h, ho, align_corners),
                        &bilinear_near(w, wo, align_corners),
                    )
                    .adjoint(&abs);
                    let e = 4.0 * U32 * ((h + 1) + (w + 1)) as f64;
                    bounds(&adj, Some((&near, e)))
                }
                _ => bounds(&adj, None),
            };
            let mut worst = 0f64;
            for ctx in contexts() {
                let got = gpu_resample_grad(ctx, mode, xs, ys, &dy);
                let what = format!("{mode:?} n{n} c{c} {h}x{w}<-{ho}x{wo} {}", label(ctx));
                worst = worst.max(assert_within(&got, &adj.dx, &bound, &what));
            }
            eprintln!("{mode:?} {h}x{w}<-{ho}x{wo}: worst error / bound {worst:.3}");
        }
    }
}

#[test]
fn resample_grad_bound_catches_a_wrong_adjoint() {
    // Mutation check: the adjoint of the other align_corners mode, and one whose taps are shifted
    // by one output index, must both fail the bound the right adjoint passes.
    let mut rng = Rng::new(0x3D);
    let (n, c, h, w, ho, wo) = (2, 3, 7, 9, 10, 13);
    let xs = Shape::new(n, c, h, w);
    let ys = Shape::new(n, c, ho, wo);
    let dy = rng.vec(ys.numel(), -1.0, 1.0);
    let dyd = f64s(&dy);
    let mut shifted = dyd.clone();
    shifted.rotate_left(1);
    for ctx in contexts() {
        for align in [true, false] {
            let mode = Resample::Bilinear {
                align_corners: align,
            };
            let got = gpu_resample_grad(ctx, mode, xs, ys, &dy);
            let wrong = resample_taps(
                Resample::Bilinear {
                    align_corners: !align,
                },
                xs,
                ho,
                wo,
            );
            let right = resample_taps(mode, xs, ho, wo);
            for (adj, what) in [
                (wrong.adjoint(&dyd), "align_corners flipped"),
                (right.adjoint(&shifted), "dY shifted"),
            ] {
                let (r, _) = worst_ratio(&got, &adj.dx, &bounds(&adj, None));
                assert!(
                    r > 10.0,
                    "{what} {}: a wrong adjoint passed (ratio {r})",
                    label(ctx)
                );
            }
        }
    }
}

#[test]
fn pixel_shuffle_grad_is_exact() {
    // The adjoint is a permutation: dX must equal the permuted dY bit for bit.
    let mut rng = Rng::new(0x5F);
    for &(n, c, h, w, r) in &[(2, 12, 5, 7, 2), (1, 18, 3, 5, 3), (2, 4, 1, 1, 2)] {
        let xs = Shape::new(n, c, h, w);
        let ys = Resample::PixelShuffle(r).output_shape(xs, (0, 0)).unwrap();
        let dy = rng.vec(ys.numel(), -1.0, 1.0);
        let want = resample_taps(Resample::PixelShuffle(r), xs, 0, 0)
            .adjoint(&f64s(&dy))
            .dx;
        for ctx in contexts() {
            let got = gpu_resample_grad(ctx, Resample::PixelShuffle(r), xs, ys, &dy);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    *g as f64,
                    *w,
                    "shuffle r{r} {c}x{h}x{w} {} dX[{i}]",
                    label(ctx)
                );
            }
        }
    }
}

/// Pooling cases `(n, c, h, w, k, stride, pad)`.
const POOL_CASES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
    (2, 3, 7, 9, 3, 2, 1),
    (2, 5, 13, 11, 3, 2, 1),
    (1, 5, 8, 8, 2, 2, 0),
    (1, 3, 11, 5, 3, 1, 1),
    (2, 3, 9, 13, 5, 3, 2),
    (1, 3, 10, 7, 4, 3, 2),
    (2, 5, 15, 17, 2, 3, 1),
];

fn pool_ops(k: usize, s: usize, pad: usize) -> [Pool; 3] {
    [
        Pool::Max { k, stride: s, pad },
        Pool::Avg {
            k,
            stride: s,
            pad,
            count_include_pad: true,
        },
        Pool::Avg {
            k,
            stride: s,
            pad,
            count_include_pad: false,
        },
    ]
}

#[test]
fn pool_grad_matches_adjoint() {
    let mut rng = Rng::new(0x9001);
    for &(n, c, h, w, k, s, pad) in POOL_CASES {
        let xs = Shape::new(n, c, h, w);
        // Continuous inputs, and inputs from three values (ties in almost every max window).
        let smooth = rng.vec(xs.numel(), -1.0, 1.0);
        let ties: Vec<f32> = (0..xs.numel())
            .map(|_| [-0.5, 0.0, 0.5][rng.range(0, 2)])
            .collect();
        for op in pool_ops(k, s, pad).into_iter().chain([Pool::GlobalAvg]) {
            let ys = op.output_shape(xs).unwrap();
            let dy = rng.vec(ys.numel(), -1.0, 1.0);
            let dyd = f64s(&dy);
            for (x, xname) in [(&smooth, "smooth"), (&ties, "ties")] {
                if xname == "ties" && !matches!(op, Pool::Max { .. }) {
                    continue;
                }
                let adj = pool_taps(op, xs, &f64s(x)).adjoint(&dyd);
                let bound = bounds(&adj, None);
                let mut worst = 0f64;
                for ctx in contexts() {
                    let got = gpu_pool_grad(ctx, op, xs, x, &dy);
                    let what = format!("{op:?} {xname} n{n} c{c} {h}x{w} {}", label(ctx));
                    worst = worst.max(assert_within(&got, &adj.dx, &bound, &what));
                }
                eprintln!("{op:?} {xname} {h}x{w}: worst error / bound {worst:.3}");
            }
        }
    }
}

#[test]
fn max_pool_grad_tie_rule_is_first_in_raster_order() {
    // Mutation check: the adjoint that sends ties to the LAST maximum must fail where the kernel
    // (first maximum) passes. All-equal planes make every window a tie.
    let xs = Shape::new(2, 3, 7, 9);
    let op = Pool::Max {
        k: 3,
        stride: 2,
        pad: 1,
    };
    let ys = op.output_shape(xs).unwrap();
    let x = vec![0.25f32; xs.numel()];
    let dy = Rng::new(0x71).vec(ys.numel(), 0.5, 1.0);
    let first = pool_taps(op, xs, &f64s(&x)).adjoint(&f64s(&dy));
    // Last maximum: every window's last in-bounds element (the average's taps list them in
    // raster order).
    let mut last_taps = pool_taps(
        Pool::Avg {
            k: 3,
            stride: 2,
            pad: 1,
            count_include_pad: false,
        },
        xs,
        &f64s(&x),
    );
    for t in &mut last_taps.taps {
        *t = vec![(t.last().unwrap().0, 1.0)];
    }
    let last = last_taps.adjoint(&f64s(&dy));
    for ctx in contexts() {
        let got = gpu_pool_grad(ctx, op, xs, &x, &dy);
        assert_within(&got, &first.dx, &bounds(&first, None), "first-max rule");
        let (r, _) = worst_ratio(&got, &last.dx, &bounds(&last, None));
        assert!(
            r > 10.0,
            "{}: the last-max adjoint passed (ratio {r})",
            label(ctx)
        );
    }
}

#[test]
fn grads_write_whole_quads_with_zero_pad_and_are_deterministic() {
    // dX rows of 7·9 = 63 halves leave one pad half per row: prefill the buffer with garbage, run
    // every backward twice, and check the pad halves are zero and the results bit-identical.
    let mut rng = Rng::new(0xD7);
    let xs = Shape::new(2, 12, 7, 9);
    let x = rng.vec(xs.numel(), -1.0, 1.0);
    for ctx in contexts() {
        let xt = Tensor::from_f32(ctx, xs, &x, "x").unwrap();
        let dxt = Tensor::new(ctx, xs, "dx").unwrap();
        let mut cases: Vec<(String, fswap::gpu::Dispatch)> = Vec::new();
        let mut dys = Vec::new();
        for mode in [
            BILINEAR_MODES[0],
            BILINEAR_MODES[1],
            Resample::Nearest,
            Resample::PixelShuffle(2),
        ] {
            let ys = mode.output_shape(xs, (11, 5)).unwrap();
            let dyt = Tensor::from_f32(ctx, ys, &rng.vec(ys.numel(), -1.0, 1.0), "dy").unwrap();
            let d = resample_grad::bind(ctx, mode, &dyt, &dxt).unwrap();
            cases.push((format!("{mode:?}"), d));
            dys.push(dyt);
        }
        for op in pool_ops(3, 2, 1).into_iter().chain([Pool::GlobalAvg]) {
            let ys = op.output_shape(xs).unwrap();
            let dyt = Tensor::from_f32(ctx, ys, &rng.vec(ys.numel(), -1.0, 1.0), "dy").unwrap();
            let d = pool_grad::bind(ctx, op, Some(&xt), &dyt, &dxt).unwrap();
            cases.push((format!("{op:?}"), d));
            dys.push(dyt);
        }
        let stored = xs.stored();
        for (name, d) in &cases {
            let mut runs = Vec::new();
            for _ in 0..2 {
                ctx.queue
                    .write_buffer(dxt.buffer(), 0, &vec![0x3Cu8; stored * 2]);
                ctx.run(&[d]).unwrap();
                let words = read_f32(ctx, dxt.buffer(), stored / 2).unwrap();
                let halves: Vec<u16> = words
                    .iter()
                    .flat_map(|f| {
                        let b = f.to_bits();
                        [(b & 0xFFFF) as u16, (b >> 16) as u16]
                    })
                    .collect();
                for r in 0..xs.rows() {
                    for j in xs.plane()..xs.row_stride() {
                        assert_eq!(
                            halves[r * xs.row_stride() + j],
                            0,
                            "{name} {}: pad half {j} of row {r}",
                            label(ctx)
                        );
                    }
                }
                runs.push(halves);
            }
            assert_eq!(runs[0], runs[1], "{name} {}: not deterministic", label(ctx));
        }
    }
}

#[test]
fn grads_reject_bad_input() {
    let ctx = &contexts()[0];
    let dx = Tensor::new(ctx, [1, 5, 4, 4], "dx").unwrap();
    let dy = Tensor::new(ctx, [1, 1, 8, 8], "dy").unwrap();
    let e = resample_grad::bind(ctx, Resample::PixelShuffle(2), &dy, &dx)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("5 channels are not divisible by r² = 4"), "{e}");
    let e = resample_grad::bind(ctx, Resample::Nearest, &dy, &dx)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("dY expected [1, 5, 8, 8]"), "{e}");
    let op = Pool::Max {
        k: 3,
        stride: 2,
        pad: 1,
    };
    let dyp = Tensor::new(ctx, [1, 5, 2, 2], "dy").unwrap();
    let e = pool_grad::bind(ctx, op, None, &dyp, &dx)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("needs the forward input x"), "{e}");
    let e = pool_grad::bind(ctx, op, Some(&dy), &dyp, &dx)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("x expected [1, 5, 4, 4]"), "{e}");
    let e = pool_grad::bind(ctx, Pool::GlobalAvg, None, &dyp, &dx)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("dY expected [1, 5, 1, 1]"), "{e}");
    let e = pool_grad::bind(
        ctx,
        Pool::Max {
            k: 3,
            stride: 1,
            pad: 2,
        },
        None,
        &dyp,
        &dx,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("padding 2 exceeds half the window 3"), "{e}");
}
