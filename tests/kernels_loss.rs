//! Training losses (L1/MSE with masks, background mask loss, SSIM, identity, cos² reweighting) vs
//! f64 references on every storage path; each reference's gradient is checked against central
//! finite differences of its own f64 loss.
//!
//! Tolerances, per element, from how the GPU computes (never a blanket constant). Inputs are drawn
//! already rounded to f16, so the references see exactly what the GPU stores. `u = 2^-24` (f32).
//! - Sums of `M` terms (any order: lanes, workgroup tree, chunks) err by at most `M·u·Σ|terms|`; each
//!   term carries a few f32 roundings (≤ 8u relative, counted explicitly below).
//! - Gradient seeds are stored as fp16: half an ulp, `2^-11` relative (`2^-25` absolute in the
//!   subnormal range), on top of the f32 error of the value being stored.
//! - Pixel losses: value `factor·(E + 8)·u·Σ|terms|/D + |l|·(ε_D + 4u)`, where `ε_D` is the relative
//!   error of the mask-sum normaliser (`(#mask elements + 4)·u`, 0 for the element count); gradient
//!   `(12u + ε_D)·|g|` before the fp16 rounding.
//! - SSIM (k×k window): window sums are nested (k taps along x, then k along y), so the local means
//!   err by `(2k + 3)·u·Σw|x|` and the centred moments by `(2k + 6)·u` of their absolute sums (the
//!   centre's own error cancels to first order). `pos_bound` propagates these, with every f32
//!   operation's rounding, through `l = n1/d1`, `cs = n2/d2`, `s = l·cs` and the three maps
//!   A = ∂s/∂μx, B = ∂s/∂σx², C = ∂s/∂σxy; the gradient's separable gather adds `(2k + 4)·u` of
//!   `Σ_o w·(|A| + 2|x||B| + |y||C|)`.
//! - Identity: dot products of F terms err by `(F + 2)·u·Σ|a_i·b_i|`, so cos errs by
//!   `ε_c = (F + 2)·u·Σ|a_i b_i|/(|a||b|) + (F + 6)·u·|cos|`; the gradient's two terms
//!   `b/(|a||b|)` and `cos·a/|a|²` carry `(F + 8)·u` relative plus `ε_c·|a_i|/|a|²`.
//!
//! Every check reports its worst error as a fraction of its bound, and the mutation checks assert
//! that a plausible wrong answer (other normalisation, other SSIM form, other window) fails.
#![allow(clippy::needless_range_loop, clippy::type_complexity)] // index-heavy f64 references
mod common;

use common::{contexts, label, Rng};
use fswap::kernels::conv_grad::{f32_storage, read_f32};
use fswap::kernels::loss::{
    Cos2Weights, Distance, IdentityLoss, IdentityReduction, IdentitySpec, LossOut, MaskApply,
    MaskLoss, MaskLossSpec, Normalize, PixelLoss, PixelSpec, SsimForm, SsimLoss, SsimSpec,
};
use fswap::{Context, Shape, Tensor};

const U32: f64 = 1.0 / (1u64 << 24) as f64; // f32 unit roundoff
const U16: f64 = 1.0 / (1u64 << 11) as f64; // f16 unit roundoff
const SUB16: f64 = 1.0 / (1u64 << 25) as f64; // half the smallest f16 subnormal

/// The slot of the `losses` buffer the tests write; the other slots hold a sentinel that must
/// survive.
const SLOT: usize = 3;
const SENTINEL: f32 = -7.25;

fn d64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn sign(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn fbuf(ctx: &Context, what: &str, data: &[f32]) -> wgpu::Buffer {
    let b = f32_storage(ctx, what, data.len()).unwrap();
    ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(data));
    b
}

/// The caller's buffers: losses (sentinels), loss scale, optional per-sample weights.
struct Io {
    losses: wgpu::Buffer,
    scale: wgpu::Buffer,
    weights: Option<wgpu::Buffer>,
}

impl Io {
    fn new(ctx: &Context, scale: f32, w: Option<&[f32]>) -> Self {
        Io {
            losses: fbuf(ctx, "losses", &[SENTINEL; 8]),
            scale: fbuf(ctx, "scale", &[scale]),
            weights: w.map(|w| fbuf(ctx, "weights", w)),
        }
    }
    fn out(&self) -> LossOut<'_> {
        let o = LossOut::new(&self.losses, SLOT, &self.scale);
        match &self.weights {
            Some(w) => o.weighted(w),
            None => o,
        }
    }
    /// The total at SLOT; every other slot must still hold the sentinel.
    fn total(&self, ctx: &Context) -> f32 {
        let v = read_f32(ctx, &self.losses, 8).unwrap();
        for (i, x) in v.iter().enumerate() {
            if i != SLOT {
                assert_eq!(*x, SENTINEL, "losses[{i}] was overwritten");
            }
        }
        v[SLOT]
    }
}

/// Worst |got − want| / bound and its index.
fn ratio(got: &[f32], want: &[f64], bound: &[f64]) -> (f64, usize) {
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

/// Asserts |got − want| ≤ bound everywhere; returns the worst error / bound.
fn assert_within(got: &[f32], want: &[f64], bound: &[f64], what: &str) -> f64 {
    let (r, i) = ratio(got, want, bound);
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

/// A reference result: per-sample values, batch total, d(total)/d(input) at unit loss scale, and
/// the error bounds of each (gradient bounds before the fp16 rounding, per unit scale).
#[derive(Clone, Debug, Default)]
struct Ref {
    vals: Vec<f64>,
    vals_b: Vec<f64>,
    total: f64,
    total_b: f64,
    grad: Vec<f64>,
    grad_b: Vec<f64>,
}

impl Ref {
    /// Total and its bound from the values: `λ·Σ w_n l_n / den`.
    fn finish_total(&mut self, w: &[f64], lambda: f64, den: f64) {
        let n = self.vals.len() as f64;
        let wl: f64 = self.vals.iter().zip(w).map(|(l, w)| w * l).sum();
        let wl_abs: f64 = self.vals.iter().zip(w).map(|(l, w)| (w * l).abs()).sum();
        let wb: f64 = self.vals_b.iter().zip(w).map(|(b, w)| w.abs() * b).sum();
        if den > 0.0 {
            self.total = lambda * wl / den;
            self.total_b = lambda.abs() / den * (wb + (n + 4.0) * U32 * wl_abs) + 1e-30;
        } else {
            self.total = 0.0;
            self.total_b = 1e-30;
        }
    }

    /// Checks GPU values, total and gradient at loss scale `scale`; returns the worst ratios.
    fn check(&self, vals: &[f32], total: f32, grad: &[f32], scale: f64, what: &str) -> [f64; 3] {
        let r0 = assert_within(vals, &self.vals, &self.vals_b, &format!("{what} values"));
        let r1 = assert_within(
            &[total],
            &[self.total],
            &[self.total_b],
            &format!("{what} total"),
        );
        let (want, bound) = self.scaled(scale);
        let r2 = assert_within(grad, &want, &bound, &format!("{what} gradient"));
        [r0, r1, r2]
    }

    /// The gradient and its bound at loss scale `scale`, fp16 rounding included.
    fn scaled(&self, scale: f64) -> (Vec<f64>, Vec<f64>) {
        let want: Vec<f64> = self.grad.iter().map(|g| g * scale).collect();
        let bound = want
            .iter()
            .zip(&self.grad_b)
            .map(|(g, b)| U16 * (g.abs() + scale * b) + scale * b + SUB16)
            .collect();
        (want, bound)
    }
}

fn max3(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0].max(b[0]), a[1].max(b[1]), a[2].max(b[2])]
}

// ---------------------------------------------------------------------------------------------
// Pixel losses

#[derive(Clone, Copy, Debug, PartialEq)]
enum MaskKind {
    None,
    Broadcast,
    Full,
}

struct PixelCase {
    s: Shape,
    p: Vec<f32>,
    t: Option<Vec<f32>>,
    m: Option<Vec<f32>>,
    mk: MaskKind,
    w: Option<Vec<f32>>,
}

impl PixelCase {
    fn mask_shape(&self) -> Shape {
        match self.mk {
            MaskKind::Broadcast => Shape::new(self.s.n, 1, self.s.h, self.s.w),
            _ => self.s,
        }
    }
    fn weights(&self) -> Vec<f64> {
        self.w.as_ref().map_or(vec![1.0; self.s.n], |w| d64(w))
    }
}

/// The f64 pixel loss of `spec` at prediction `p`, with its adjoint.
fn pixel_ref(spec: &PixelSpec, c: &PixelCase, p: &[f64]) -> Ref {
    let s = c.s;
    let (n, ch, plane) = (s.n, s.c, s.h * s.w);
    let t = c.t.as_ref().map(|v| d64(v));
    let m = c.m.as_ref().map(|v| d64(v));
    let mut sum = vec![0.0; n];
    let mut abs = vec![0.0; n];
    let mut msum = vec![0.0; n];
    let mut mcount = vec![0usize; n];
    let mut deriv = vec![0.0; s.numel()];
    for b in 0..n {
        for cc in 0..ch {
            for i in 0..plane {
                let idx = (b * ch + cc) * plane + i;
                let mv = match (c.mk, &m) {
                    (MaskKind::Broadcast, Some(m)) => m[b * plane + i],
                    (MaskKind::Full, Some(m)) => m[idx],
                    _ => 1.0,
                };
                let d = p[idx] - t.as_ref().map_or(0.0, |t| t[idx]);
                let (e, k) = match spec.apply {
                    MaskApply::Weight => (d, mv),
                    MaskApply::Inputs => (mv * d, 1.0),
                };
                let (v, g) = match spec.distance {
                    Distance::L1 => (k * e.abs(), mv * sign(e)),
                    Distance::Mse => (k * e * e, 2.0 * mv * e),
                };
                sum[b] += v;
                abs[b] += v.abs();
                deriv[idx] = g;
                if c.mk == MaskKind::Full || (c.mk == MaskKind::Broadcast && cc == 0) {
                    msum[b] += mv;
                    mcount[b] += 1;
                }
            }
        }
    }
    let nf = n as f64;
    let mtot: f64 = msum.iter().sum();
    let mcount_tot: usize = mcount.iter().sum();
    let w = c.weights();
    let (factor, lambda) = (spec.factor as f64, spec.weight as f64);
    let elems = (ch * plane) as f64;
    let mut r = Ref {
        grad: vec![0.0; s.numel()],
        grad_b: vec![0.0; s.numel()],
        ..Default::default()
    };
    for b in 0..n {
        let (den, eps_d) = match spec.normalize {
            Normalize::Elements => (elems, 0.0),
            Normalize::MaskSum => (msum[b], (mcount[b] as f64 + 4.0) * U32),
            Normalize::BatchMaskSum => (mtot / nf, (mcount_tot as f64 + 4.0) * U32),
        };
        let (l, lb, coef) = if den > 0.0 {
            let l = factor * sum[b] / den;
            let lb = factor.abs() * (elems + 8.0) * U32 * abs[b] / den
                + l.abs() * (eps_d + 4.0 * U32)
                + 1e-30;
            (l, lb, lambda * w[b] * factor / (nf * den))
        } else {
            (0.0, 1e-30, 0.0)
        };
        r.vals.push(l);
        r.vals_b.push(lb);
        for idx in b * ch * plane..(b + 1) * ch * plane {
            r.grad[idx] = coef * deriv[idx];
            r.grad_b[idx] = r.grad[idx].abs() * (12.0 * U32 + eps_d);
        }
    }
    r.finish_total(&w, lambda, nf);
    r
}

fn gpu_pixel(
    ctx: &Context,
    spec: PixelSpec,
    c: &PixelCase,
    scale: f32,
) -> (Vec<f32>, f32, Vec<f32>) {
    let loss = PixelLoss::new(ctx, spec, c.s).unwrap();
    let p = Tensor::from_f32(ctx, c.s, &c.p, "pred").unwrap();
    let t =
        c.t.as_ref()
            .map(|t| Tensor::from_f32(ctx, c.s, t, "target").unwrap());
    let m =
        c.m.as_ref()
            .map(|m| Tensor::from_f32(ctx, c.mask_shape(), m, "mask").unwrap());
    let g = Tensor::new(ctx, c.s, "grad").unwrap();
    let io = Io::new(ctx, scale, c.w.as_deref());
    let ds = loss
        .bind(ctx, &p, t.as_ref(), m.as_ref(), &io.out(), &g)
        .unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    (
        loss.read_values(ctx).unwrap(),
        io.total(ctx),
        g.to_f32(ctx).unwrap(),
    )
}

/// A pixel case: prediction and target in [0, 1] with a few exact ties (L1's kink), a mask in
/// [0, 1] with exact zeros and ones.
fn pixel_case(rng: &mut Rng, s: Shape, mk: MaskKind, target: bool, weights: bool) -> PixelCase {
    let p = rng.vec(s.numel(), 0.0, 1.0);
    let t = target.then(|| {
        let mut t = rng.vec(s.numel(), 0.0, 1.0);
        for i in (0..t.len()).step_by(7) {
            t[i] = p[i];
        }
        t
    });
    let ms = match mk {
        MaskKind::Broadcast => Shape::new(s.n, 1, s.h, s.w),
        _ => s,
    };
    let m = (mk != MaskKind::None).then(|| {
        let mut m = rng.vec(ms.numel(), 0.0, 1.0);
        for i in (0..m.len()).step_by(5) {
            m[i] = if i % 2 == 0 { 0.0 } else { 1.0 };
        }
        m
    });
    let w = weights.then(|| rng.vec(s.n, 0.25, 2.0));
    PixelCase { s, p, t, m, mk, w }
}

fn pixel_specs() -> Vec<(&'static str, PixelSpec, MaskKind)> {
    use MaskKind::*;
    vec![
        ("l1", PixelSpec::l1(), None),
        ("mse", PixelSpec::mse().with_weight(0.7), None),
        ("l1 weighted mask", PixelSpec::l1(), Broadcast),
        (
            "mse mask-sum",
            PixelSpec::mse().normalized(Normalize::MaskSum),
            Broadcast,
        ),
        (
            "l1 same-shape weights, mask-sum",
            PixelSpec::l1()
                .normalized(Normalize::MaskSum)
                .with_weight(2.5),
            Full,
        ),
        (
            "faceswap penalized mse",
            PixelSpec::faceswap_penalized(Distance::Mse),
            Broadcast,
        ),
        (
            "faceswap penalized l1",
            PixelSpec::faceswap_penalized(Distance::L1),
            Full,
        ),
        ("mobilefsgan rec", PixelSpec::mobilefsgan_rec(), Broadcast),
        (
            "l1 inputs batch-mask-sum",
            PixelSpec::l1()
                .applied(MaskApply::Inputs)
                .normalized(Normalize::BatchMaskSum),
            Full,
        ),
    ]
}

#[test]
fn pixel_reference_matches_finite_differences() {
    // MSE is quadratic in p and L1 piecewise linear (no kink within h of a random point; at the
    // exact ties both sides give 0 like sign(0)), so central differences are exact up to f64
    // rounding.
    let mut rng = Rng::new(0x91);
    for (name, spec, mk) in pixel_specs() {
        for target in [true, false] {
            let c = pixel_case(&mut rng, Shape::new(2, 3, 3, 5), mk, target, true);
            let p = d64(&c.p);
            let r = pixel_ref(&spec, &c, &p);
            let h = 1e-5;
            for i in 0..p.len() {
                let (mut pp, mut pm) = (p.clone(), p.clone());
                pp[i] += h;
                pm[i] -= h;
                let fd =
                    (pixel_ref(&spec, &c, &pp).total - pixel_ref(&spec, &c, &pm).total) / (2.0 * h);
                assert!(
                    (fd - r.grad[i]).abs() < 1e-8,
                    "{name} target {target}: d/dp[{i}] fd {fd} adjoint {}",
                    r.grad[i]
                );
            }
        }
    }
}

#[test]
fn pixel_losses_match_reference() {
    let mut rng = Rng::new(0x5EED);
    let shapes = [
        Shape::new(2, 3, 7, 5),
        Shape::new(1, 1, 1, 3),
        // More samples than the 64 lanes of the finalize workgroup.
        Shape::new(70, 1, 1, 5),
        // Several chunks per sample, a chunk length that is not a multiple of 64.
        Shape::new(2, 3, 67, 61),
    ];
    for (name, spec, mk) in pixel_specs() {
        let mut worst = [0f64; 3];
        for s in shapes {
            for (target, weights) in [(true, true), (true, false), (false, true)] {
                let c = pixel_case(&mut rng, s, mk, target, weights);
                let r = pixel_ref(&spec, &c, &d64(&c.p));
                for ctx in contexts() {
                    for scale in [1.0f32, 1024.0] {
                        let (vals, total, grad) = gpu_pixel(ctx, spec, &c, scale);
                        let what = format!(
                            "{name} {} {:?} target {target} weights {weights} scale {scale}",
                            label(ctx),
                            s.dims()
                        );
                        worst = max3(worst, r.check(&vals, total, &grad, scale as f64, &what));
                    }
                }
            }
        }
        eprintln!(
            "{name}: worst error / bound: values {:.3}, total {:.3}, gradient {:.3}",
            worst[0], worst[1], worst[2]
        );
    }
}

#[test]
fn pixel_normalisation_is_checked_against_a_wrong_answer() {
    // Mutation check: the mask-sum-normalised MSE must fail against the element-normalised
    // reference, and the batch mask sum against the per-sample one (the masks differ per sample).
    let mut rng = Rng::new(0xBAD);
    let c = pixel_case(
        &mut rng,
        Shape::new(2, 3, 7, 5),
        MaskKind::Broadcast,
        true,
        false,
    );
    let ctx = &contexts()[0];
    for (spec, wrong) in [
        (
            PixelSpec::mse().normalized(Normalize::MaskSum),
            Normalize::Elements,
        ),
        (
            PixelSpec::mse().normalized(Normalize::BatchMaskSum),
            Normalize::MaskSum,
        ),
    ] {
        let (vals, _, grad) = gpu_pixel(ctx, spec, &c, 1.0);
        let right = pixel_ref(&spec, &c, &d64(&c.p));
        right.check(&vals, right.total as f32, &grad, 1.0, "right normalisation");
        let bad = pixel_ref(&spec.normalized(wrong), &c, &d64(&c.p));
        assert!(
            ratio(&vals, &bad.vals, &bad.vals_b).0 > 1.0,
            "{wrong:?} values"
        );
        let (want, bound) = bad.scaled(1.0);
        assert!(ratio(&grad, &want, &bound).0 > 1.0, "{wrong:?} gradient");
    }
}

#[test]
fn pixel_loss_with_empty_mask_is_zero() {
    // A sample whose mask sums to 0 has no loss and no gradient under mask-sum normalisation.
    let s = Shape::new(2, 3, 5, 3);
    let mut rng = Rng::new(3);
    let mut c = pixel_case(&mut rng, s, MaskKind::Broadcast, true, false);
    let plane = s.h * s.w;
    let m = c.m.as_mut().unwrap();
    m[plane..].iter_mut().for_each(|v| *v = 0.0);
    let spec = PixelSpec::l1().normalized(Normalize::MaskSum);
    let r = pixel_ref(&spec, &c, &d64(&c.p));
    assert_eq!(r.vals[1], 0.0);
    for ctx in contexts() {
        let (vals, total, grad) = gpu_pixel(ctx, spec, &c, 8.0);
        r.check(
            &vals,
            total,
            &grad,
            8.0,
            &format!("empty mask {}", label(ctx)),
        );
        assert_eq!(vals[1], 0.0);
        assert!(grad[s.c * plane..].iter().all(|g| *g == 0.0));
    }
}

#[test]
fn mask_loss_matches_reference() {
    // Predicted mask [N,1,H,W] against a background map; the third sample has no background.
    let mut rng = Rng::new(0x3A5C);
    let s = Shape::new(3, 1, 9, 7);
    let m = rng.vec(s.numel(), 0.0, 1.0);
    let mut bg: Vec<f32> = rng
        .vec(s.numel(), 0.0, 1.0)
        .iter()
        .map(|v| {
            if *v < 0.4 {
                0.0
            } else if *v > 0.8 {
                1.0
            } else {
                *v
            }
        })
        .collect();
    let plane = s.h * s.w;
    bg[2 * plane..].iter_mut().for_each(|v| *v = 0.0);
    let w = rng.vec(s.n, 0.5, 1.5);
    for (distance, weight) in [(Distance::L1, 1.0f32), (Distance::Mse, 3.0)] {
        let spec = MaskLossSpec { distance, weight };
        // The same loss as a pixel loss with target 0, same-shape weights bg, mask-sum norm.
        let c = PixelCase {
            s,
            p: m.clone(),
            t: None,
            m: Some(bg.clone()),
            mk: MaskKind::Full,
            w: Some(w.clone()),
        };
        let pspec = PixelSpec {
            distance,
            apply: MaskApply::Weight,
            normalize: Normalize::MaskSum,
            factor: 1.0,
            weight,
        };
        let r = pixel_ref(&pspec, &c, &d64(&m));
        // Direct check of the formula Σ bg·φ(m)/Σ bg for sample 0.
        let (num, den) = (0..plane).fold((0.0, 0.0), |(a, b), i| {
            let (mv, bv) = (m[i] as f64, bg[i] as f64);
            let phi = if distance == Distance::L1 {
                mv.abs()
            } else {
                mv * mv
            };
            (a + bv * phi, b + bv)
        });
        assert!((r.vals[0] - num / den).abs() < 1e-12);
        assert_eq!(r.vals[2], 0.0);
        for ctx in contexts() {
            let loss = MaskLoss::new(ctx, spec, s).unwrap();
            let mt = Tensor::from_f32(ctx, s, &m, "mask").unwrap();
            let bt = Tensor::from_f32(ctx, s, &bg, "background").unwrap();
            let g = Tensor::new(ctx, s, "grad").unwrap();
            let io = Io::new(ctx, 1024.0, Some(&w));
            let ds = loss.bind(ctx, &mt, &bt, &io.out(), &g).unwrap();
            ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
            let rr = r.check(
                &loss.read_values(ctx).unwrap(),
                io.total(ctx),
                &g.to_f32(ctx).unwrap(),
                1024.0,
                &format!("mask loss {distance:?} {}", label(ctx)),
            );
            eprintln!(
                "mask loss {distance:?} {}: worst ratios {rr:.3?}",
                label(ctx)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SSIM

struct SsimCase {
    s: Shape,
    p: Vec<f32>,
    t: Vec<f32>,
    m: Option<Vec<f32>>,
    mk: MaskKind,
    w: Option<Vec<f32>>,
}

/// Error bounds of one output position's SSIM value and maps, from the f32 error of its local
/// statistics (see the header): nested k-then-k window sums err by `(2k + 3)·u` of their absolute
/// sums, centred moments by `(2k + 6)·u` of theirs (to first order the centre's error cancels).
struct PosBound {
    s: f64,
    a: f64,
    b: f64,
    c: f64,
}

/// The bounds for statistics `mu = (μx, μy)`, absolute means `mua = (Σw|x|, Σw|y|)`, moments
/// `sig = (σx², σy², σxy)` and `sxy_abs = Σw|dx·dy|`, for a window of side k, with the values
/// `(l, cs, s, A, B, C)` they give.
#[allow(clippy::too_many_arguments)]
fn pos_bound(
    k: usize,
    c: (f64, f64),
    mu: (f64, f64),
    mua: (f64, f64),
    sig: (f64, f64, f64),
    sxy_abs: f64,
    v: (f64, f64, f64, f64, f64, f64),
) -> PosBound {
    let u = U32;
    let ks = (2 * k + 3) as f64;
    let (c1, c2) = c;
    let (mux, muy) = mu;
    let (sxx, syy, sxy) = sig;
    let (l, cs, s, a, b, cc) = v;
    let (dmx, dmy) = (ks * u * mua.0, ks * u * mua.1);
    let dsxx = (ks + 3.0) * u * sxx.abs() + dmx * dmx;
    let dsyy = (ks + 3.0) * u * syy.abs() + dmy * dmy;
    let dsxy = (ks + 3.0) * u * sxy_abs + dmx * dmy;
    let d1 = mux * mux + muy * muy + c1;
    let d2 = sxx + syy + c2;
    let dn1 = 2.0 * (muy.abs() * dmx + mux.abs() * dmy) + 3.0 * u * (2.0 * (mux * muy).abs() + c1);
    let dd1 = 2.0 * (mux.abs() * dmx + muy.abs() * dmy) + 3.0 * u * d1;
    let dl = (dn1 + l.abs() * dd1) / d1 + u * l.abs();
    let dn2 = 2.0 * dsxy + 3.0 * u * (2.0 * sxy.abs() + c2);
    let dd2 = dsxx + dsyy + 3.0 * u * d2;
    let dcs = (dn2 + cs.abs() * dd2) / d2 + u * cs.abs();
    let ds = cs.abs() * dl + l.abs() * dcs + u * s.abs();
    let db = (ds + s.abs() * dd2 / d2) / d2 + 2.0 * u * b.abs();
    let dc = 2.0 * (dl + l.abs() * dd2 / d2) / d2 + 2.0 * u * cc.abs();
    // A = a1 − 2μx·B − μy·C with a1 = 2·cs·(μy − l·μx)/d1.
    let diff = muy - l * mux;
    let a1 = 2.0 * cs * diff / d1;
    let da1 = 2.0 * (dcs * diff.abs() + cs.abs() * (dmy + dl * mux.abs() + l.abs() * dmx)) / d1
        + a1.abs() * dd1 / d1
        + 4.0 * u * cs.abs() * (muy.abs() + (l * mux).abs()) / d1
        + 5.0 * u * a1.abs();
    let da = da1
        + 2.0 * (dmx * b.abs() + mux.abs() * db)
        + dmy * cc.abs()
        + muy.abs() * dc
        + 4.0 * u * (a1.abs() + 2.0 * (mux * b).abs() + (muy * cc).abs())
        + 4.0 * u * a.abs();
    PosBound {
        s: ds,
        a: da,
        b: db,
        c: dc,
    }
}

/// The f64 SSIM loss (faceswap's raw moments `E[xy] − μxμy`, the GPU's f32 window weights) with
/// its adjoint written as reverse mode through `s = n1·n2/(d1·d2)`, and error bounds from
/// [`pos_bound`].
fn ssim_ref(spec: &SsimSpec, c: &SsimCase, p: &[f64]) -> Ref {
    let s = c.s;
    let (n, ch, h, w) = (s.n, s.c, s.h, s.w);
    let plane = h * w;
    let k = spec.window;
    let g: Vec<f64> = d64(&spec.window_weights());
    let (c1, c2) = spec.constants();
    let (c1, c2) = (c1 as f64, c2 as f64);
    let kappa = match spec.form {
        SsimForm::Dssim => 0.5,
        SsimForm::OneMinus => 1.0,
    };
    let lambda = spec.weight as f64;
    let (ho, wo) = (h - k + 1, w - k + 1);
    let cnt = (ch * ho * wo) as f64;
    let t = d64(&c.t);
    let m = c.m.as_ref().map(|v| d64(v));
    let wts = c.w.as_ref().map_or(vec![1.0; n], |w| d64(w));
    let nf = n as f64;
    let gather = (2 * k + 4) as f64 * U32; // the gradient's nested window sum and final terms
    let mut r = Ref {
        grad: vec![0.0; s.numel()],
        grad_b: vec![0.0; s.numel()],
        ..Default::default()
    };
    for b in 0..n {
        let (mut ssum, mut sabs, mut serr) = (0.0, 0.0, 0.0);
        let mut rows = Vec::new();
        for cc in 0..ch {
            let row = b * ch + cc;
            let mask: Vec<f64> = (0..plane)
                .map(|i| match (c.mk, &m) {
                    (MaskKind::Broadcast, Some(m)) => m[b * plane + i],
                    (MaskKind::Full, Some(m)) => m[row * plane + i],
                    _ => 1.0,
                })
                .collect();
            let xm: Vec<f64> = (0..plane).map(|i| p[row * plane + i] * mask[i]).collect();
            let ym: Vec<f64> = (0..plane).map(|i| t[row * plane + i] * mask[i]).collect();
            let mut dxm = vec![0.0; plane];
            // Σ_o w·(δA, δB, δC) and Σ_o w·(|A|, |B|, |C|) per input position.
            let mut err = vec![[0.0; 3]; plane];
            let mut mag = vec![[0.0; 3]; plane];
            for oy in 0..ho {
                for ox in 0..wo {
                    let taps: Vec<(usize, f64)> = (0..k)
                        .flat_map(|ky| (0..k).map(move |kx| (ky, kx)))
                        .map(|(ky, kx)| ((oy + ky) * w + ox + kx, g[ky] * g[kx]))
                        .collect();
                    let (mut mux, mut muy, mut exx, mut eyy, mut exy) = (0.0, 0.0, 0.0, 0.0, 0.0);
                    let (mut max, mut may) = (0.0, 0.0);
                    for &(i, wt) in &taps {
                        mux += wt * xm[i];
                        muy += wt * ym[i];
                        exx += wt * xm[i] * xm[i];
                        eyy += wt * ym[i] * ym[i];
                        exy += wt * xm[i] * ym[i];
                        max += wt * xm[i].abs();
                        may += wt * ym[i].abs();
                    }
                    let sxy_abs: f64 = taps
                        .iter()
                        .map(|&(i, wt)| wt * ((xm[i] - mux) * (ym[i] - muy)).abs())
                        .sum();
                    let (sxx, syy, sxy) = (exx - mux * mux, eyy - muy * muy, exy - mux * muy);
                    let n1 = 2.0 * mux * muy + c1;
                    let d1 = mux * mux + muy * muy + c1;
                    let n2 = 2.0 * sxy + c2;
                    let d2 = sxx + syy + c2;
                    let sv = n1 * n2 / (d1 * d2);
                    ssum += sv;
                    sabs += sv.abs();
                    // Reverse mode.
                    let ds_n1 = n2 / (d1 * d2);
                    let ds_d1 = -sv / d1;
                    let ds_n2 = n1 / (d1 * d2);
                    let ds_d2 = -sv / d2;
                    let dmux = 2.0 * muy * ds_n1 + 2.0 * mux * ds_d1
                        - 2.0 * muy * ds_n2
                        - 2.0 * mux * ds_d2;
                    let dexx = ds_d2;
                    let dexy = 2.0 * ds_n2;
                    let pb = pos_bound(
                        k,
                        (c1, c2),
                        (mux, muy),
                        (max, may),
                        (sxx, syy, sxy),
                        sxy_abs,
                        (n1 / d1, n2 / d2, sv, dmux, dexx, dexy),
                    );
                    serr += pb.s;
                    for &(i, wt) in &taps {
                        dxm[i] += wt * (dmux + 2.0 * xm[i] * dexx + ym[i] * dexy);
                        let e = &mut err[i];
                        e[0] += wt * pb.a;
                        e[1] += wt * pb.b;
                        e[2] += wt * pb.c;
                        let a = &mut mag[i];
                        a[0] += wt * dmux.abs();
                        a[1] += wt * dexx.abs();
                        a[2] += wt * dexy.abs();
                    }
                }
            }
            rows.push((row, mask, xm, ym, dxm, err, mag));
        }
        let l = kappa * (1.0 - ssum / cnt);
        r.vals.push(l);
        r.vals_b
            .push(kappa * (serr + (cnt + 4.0) * U32 * sabs) / cnt + 2.0 * U32 * l.abs() + 1e-30);
        let coef = -kappa * lambda * wts[b] / (nf * cnt);
        for (row, mask, xm, ym, dxm, err, mag) in rows {
            for i in 0..plane {
                let idx = row * plane + i;
                let (x, y) = (xm[i].abs(), ym[i].abs());
                let e = err[i][0] + 2.0 * x * err[i][1] + y * err[i][2];
                let a = mag[i][0] + 2.0 * x * mag[i][1] + y * mag[i][2];
                r.grad[idx] = coef * mask[i] * dxm[i];
                r.grad_b[idx] =
                    (coef * mask[i]).abs() * (e + gather * a) + 6.0 * U32 * r.grad[idx].abs();
            }
        }
    }
    r.finish_total(&wts, lambda, nf);
    r
}

fn gpu_ssim(ctx: &Context, spec: SsimSpec, c: &SsimCase, scale: f32) -> (Vec<f32>, f32, Vec<f32>) {
    let loss = SsimLoss::new(ctx, spec, c.s).unwrap();
    let p = Tensor::from_f32(ctx, c.s, &c.p, "pred").unwrap();
    let t = Tensor::from_f32(ctx, c.s, &c.t, "target").unwrap();
    let ms = match c.mk {
        MaskKind::Broadcast => Shape::new(c.s.n, 1, c.s.h, c.s.w),
        _ => c.s,
    };
    let m =
        c.m.as_ref()
            .map(|m| Tensor::from_f32(ctx, ms, m, "mask").unwrap());
    let g = Tensor::new(ctx, c.s, "grad").unwrap();
    let io = Io::new(ctx, scale, c.w.as_deref());
    let ds = loss.bind(ctx, &p, &t, m.as_ref(), &io.out(), &g).unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    (
        loss.read_values(ctx).unwrap(),
        io.total(ctx),
        g.to_f32(ctx).unwrap(),
    )
}

/// Images in [0, 1]; `noise` < 1 makes the target the prediction plus noise of that amplitude
/// (high SSIM), 1 makes it independent.
fn ssim_case(rng: &mut Rng, s: Shape, noise: f32, mk: MaskKind, weights: bool) -> SsimCase {
    let p = rng.vec(s.numel(), 0.0, 1.0);
    let t = if noise >= 1.0 {
        rng.vec(s.numel(), 0.0, 1.0)
    } else {
        p.iter()
            .map(|v| common::f16r((v + rng.uniform(-noise, noise)).clamp(0.0, 1.0)))
            .collect()
    };
    let ms = match mk {
        MaskKind::Broadcast => Shape::new(s.n, 1, s.h, s.w),
        _ => s,
    };
    let m = (mk != MaskKind::None).then(|| rng.vec(ms.numel(), 0.0, 1.0));
    let w = weights.then(|| rng.vec(s.n, 0.25, 2.0));
    SsimCase { s, p, t, m, mk, w }
}

#[test]
fn ssim_reference_matches_finite_differences() {
    let mut rng = Rng::new(0x551);
    let specs = [
        SsimSpec::default(),
        SsimSpec {
            window: 5,
            sigma: 1.0,
            form: SsimForm::OneMinus,
            weight: 1.7,
            ..Default::default()
        },
    ];
    for spec in specs {
        for (noise, mk) in [
            (1.0, MaskKind::None),
            (0.05, MaskKind::Broadcast),
            (0.2, MaskKind::Full),
        ] {
            let s = Shape::new(2, 2, spec.window + 2, spec.window + 1);
            let c = ssim_case(&mut rng, s, noise, mk, true);
            let p = d64(&c.p);
            let r = ssim_ref(&spec, &c, &p);
            let gmax = r.grad.iter().fold(0f64, |a, g| a.max(g.abs()));
            let h = 1e-5;
            for i in 0..p.len() {
                let (mut pp, mut pm) = (p.clone(), p.clone());
                pp[i] += h;
                pm[i] -= h;
                let fd =
                    (ssim_ref(&spec, &c, &pp).total - ssim_ref(&spec, &c, &pm).total) / (2.0 * h);
                assert!(
                    (fd - r.grad[i]).abs() <= 1e-6 * gmax,
                    "window {} noise {noise} {mk:?}: d/dp[{i}] fd {fd} adjoint {}",
                    spec.window,
                    r.grad[i]
                );
            }
        }
    }
}

#[test]
fn ssim_matches_reference() {
    let mut rng = Rng::new(0xD551);
    let cases = [
        // faceswap's settings on the odd shape of the brief: valid output 3×1 per channel.
        (
            "dssim 13x11",
            SsimSpec::default(),
            Shape::new(2, 3, 13, 11),
            1.0,
            MaskKind::None,
            false,
        ),
        (
            "dssim 13x11 similar",
            SsimSpec::default(),
            Shape::new(2, 3, 13, 11),
            0.03,
            MaskKind::None,
            true,
        ),
        (
            "1-ssim 24x19 broadcast mask",
            SsimSpec {
                form: SsimForm::OneMinus,
                weight: 0.4,
                ..Default::default()
            },
            Shape::new(2, 3, 24, 19),
            0.1,
            MaskKind::Broadcast,
            true,
        ),
        // Several position chunks per plane.
        (
            "window 7 40x37 full mask",
            SsimSpec {
                window: 7,
                sigma: 1.0,
                ..Default::default()
            },
            Shape::new(2, 3, 40, 37),
            0.2,
            MaskKind::Full,
            false,
        ),
        // The largest window fills the whole workgroup tile (47 × 35 inputs).
        (
            "window 32 (largest) 35x50",
            SsimSpec {
                window: 32,
                sigma: 6.0,
                ..Default::default()
            },
            Shape::new(1, 2, 35, 50),
            0.3,
            MaskKind::Broadcast,
            false,
        ),
        (
            "window 3 one channel",
            SsimSpec {
                window: 3,
                sigma: 0.8,
                ..Default::default()
            },
            Shape::new(1, 1, 6, 5),
            1.0,
            MaskKind::None,
            true,
        ),
    ];
    for (name, spec, s, noise, mk, weights) in cases {
        let c = ssim_case(&mut rng, s, noise, mk, weights);
        let r = ssim_ref(&spec, &c, &d64(&c.p));
        let mut worst = [0f64; 3];
        for ctx in contexts() {
            for scale in [1.0f32, 1024.0] {
                let (vals, total, grad) = gpu_ssim(ctx, spec, &c, scale);
                let what = format!("{name} {} scale {scale}", label(ctx));
                worst = max3(worst, r.check(&vals, total, &grad, scale as f64, &what));
            }
        }
        eprintln!(
            "{name}: worst error / bound: values {:.3}, total {:.3}, gradient {:.3}",
            worst[0], worst[1], worst[2]
        );
    }
}

#[test]
fn ssim_is_checked_against_wrong_answers() {
    // Mutation check: the faceswap DSSIM must fail against 1 − SSIM (twice the value and
    // gradient), against a window of another σ, and against the window of another size.
    let mut rng = Rng::new(0x77);
    let spec = SsimSpec::default();
    let c = ssim_case(
        &mut rng,
        Shape::new(2, 3, 13, 11),
        0.1,
        MaskKind::None,
        false,
    );
    let ctx = &contexts()[0];
    let (vals, total, grad) = gpu_ssim(ctx, spec, &c, 1.0);
    ssim_ref(&spec, &c, &d64(&c.p)).check(&vals, total, &grad, 1.0, "faceswap dssim");
    let wrongs = [
        SsimSpec {
            form: SsimForm::OneMinus,
            ..spec
        },
        SsimSpec { sigma: 1.6, ..spec },
        SsimSpec { window: 9, ..spec },
    ];
    for wrong in wrongs {
        let bad = ssim_ref(&wrong, &c, &d64(&c.p));
        let (want, bound) = bad.scaled(1.0);
        assert!(ratio(&grad, &want, &bound).0 > 1.0, "{wrong:?} gradient");
        assert!(
            ratio(&vals, &bad.vals, &bad.vals_b).0 > 1.0,
            "{wrong:?} values"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Identity

struct IdRef {
    base: Ref, // gradient for a
    gb: Vec<f64>,
    gb_b: Vec<f64>,
    /// Smallest |1 − cos − margin| over the samples (distance to the relu's kink).
    kink: f64,
}

fn id_ref(spec: &IdentitySpec, n: usize, f: usize, a: &[f64], b: &[f64], w: &[f64]) -> IdRef {
    let lambda = spec.weight as f64;
    let mut r = Ref {
        grad: vec![0.0; n * f],
        grad_b: vec![0.0; n * f],
        ..Default::default()
    };
    let (mut gb, mut gb_b) = (vec![0.0; n * f], vec![0.0; n * f]);
    let mut kink = f64::INFINITY;
    let mut stats = Vec::new();
    for s in 0..n {
        let (a, b) = (&a[s * f..(s + 1) * f], &b[s * f..(s + 1) * f]);
        let ab: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let ab_abs: f64 = a.iter().zip(b).map(|(x, y)| (x * y).abs()).sum();
        let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cos = ab / (na * nb);
        let fe = f as f64;
        let eps_c = (fe + 2.0) * U32 * ab_abs / (na * nb) + (fe + 6.0) * U32 * cos.abs();
        let (l, act) = match spec.margin {
            None => (1.0 - cos, 1.0),
            Some(mg) => {
                let v = 1.0 - cos - mg as f64;
                kink = kink.min(v.abs());
                if v > 0.0 {
                    (v, 1.0)
                } else {
                    (0.0, 0.0)
                }
            }
        };
        r.vals.push(l);
        r.vals_b.push(eps_c + 2.0 * U32 * l.abs() + 1e-30);
        stats.push((na, nb, cos, eps_c, act));
    }
    let den = match spec.reduction {
        IdentityReduction::Mean => n as f64,
        IdentityReduction::Active => stats.iter().map(|s| s.4).sum(),
    };
    for s in 0..n {
        let (na, nb, cos, eps_c, act) = stats[s];
        let coef = if den > 0.0 {
            lambda * w[s] * act / den
        } else {
            0.0
        };
        for i in s * f..(s + 1) * f {
            // ∂(1 − cos)/∂a = −(b/(|a||b|) − cos·a/|a|²), and symmetrically for b.
            for (x, y, nx, ny, out, bound) in [
                (a[i], b[i], na, nb, &mut r.grad, &mut r.grad_b),
                (b[i], a[i], nb, na, &mut gb, &mut gb_b),
            ] {
                let t1 = y / (nx * ny);
                let t2 = cos * x / (nx * nx);
                out[i] = -coef * (t1 - t2);
                bound[i] = coef.abs()
                    * (((f as f64) + 8.0) * U32 * (t1.abs() + t2.abs())
                        + eps_c * x.abs() / (nx * nx));
            }
        }
    }
    r.finish_total(w, lambda, den);
    IdRef {
        base: r,
        gb,
        gb_b,
        kink,
    }
}

/// Embeddings: `b` random, `a` = b + noise of the given amplitude per sample (small noise: cos
/// near 1, so the margin form has inactive samples).
fn embedding_pair(rng: &mut Rng, n: usize, f: usize, noise: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let b = rng.vec(n * f, -1.0, 1.0);
    let a = (0..n * f)
        .map(|i| common::f16r(b[i] + rng.uniform(-noise[i / f], noise[i / f])))
        .collect();
    (a, b)
}

#[test]
fn identity_reference_matches_finite_differences() {
    let mut rng = Rng::new(0x1D);
    let (n, f) = (4, 7);
    let (a, b) = embedding_pair(&mut rng, n, f, &[0.02, 1.0, 0.3, 0.05]);
    let w = d64(&rng.vec(n, 0.5, 2.0));
    let (a, b) = (d64(&a), d64(&b));
    for spec in [
        IdentitySpec::default().with_weight(1.3),
        IdentitySpec::mobilefsgan(),
    ] {
        let r = id_ref(&spec, n, f, &a, &b, &w);
        let h = 1e-6;
        for i in 0..n * f {
            for which in 0..2 {
                let (mut xp, mut xm) = if which == 0 {
                    (a.clone(), a.clone())
                } else {
                    (b.clone(), b.clone())
                };
                xp[i] += h;
                xm[i] -= h;
                let (tp, tm) = if which == 0 {
                    (
                        id_ref(&spec, n, f, &xp, &b, &w).base.total,
                        id_ref(&spec, n, f, &xm, &b, &w).base.total,
                    )
                } else {
                    (
                        id_ref(&spec, n, f, &a, &xp, &w).base.total,
                        id_ref(&spec, n, f, &a, &xm, &w).base.total,
                    )
                };
                let fd = (tp - tm) / (2.0 * h);
                let adj = if which == 0 { r.base.grad[i] } else { r.gb[i] };
                assert!(
                    (fd - adj).abs() < 1e-8,
                    "{spec:?} d/d{}[{i}]: fd {fd} adjoint {adj}",
                    ["a", "b"][which]
                );
            }
        }
    }
}

#[test]
fn identity_matches_reference() {
    let mut rng = Rng::new(0x1DE);
    let cases: [(&str, IdentitySpec, usize, usize, Vec<f32>, bool); 5] = [
        (
            "1-cos F13",
            IdentitySpec::default(),
            5,
            13,
            vec![1.0, 0.5, 0.1, 0.02, 3.0],
            true,
        ),
        (
            "1-cos F512 weighted λ",
            IdentitySpec::default().with_weight(20.0),
            3,
            512,
            vec![1.0, 0.2, 0.05],
            true,
        ),
        // Samples 1 and 3 are within the margin (cos > 0.98): inactive, excluded from the count.
        (
            "mobilefsgan margin F13",
            IdentitySpec::mobilefsgan(),
            5,
            13,
            vec![1.0, 0.01, 0.5, 0.005, 0.3],
            false,
        ),
        // More samples than the finalize workgroup's 64 lanes; 1 in 7 inside the margin.
        (
            "mobilefsgan margin N70",
            IdentitySpec::mobilefsgan(),
            70,
            6,
            (0..70)
                .map(|i| if i % 7 == 3 { 0.002 } else { 0.6 })
                .collect(),
            true,
        ),
        (
            "mobilefsgan all inactive",
            IdentitySpec::mobilefsgan().with_weight(20.0),
            2,
            130,
            vec![0.01, 0.005],
            true,
        ),
    ];
    for (name, spec, n, f, noise, weights) in cases {
        let (a, b) = embedding_pair(&mut rng, n, f, &noise);
        let w = weights.then(|| rng.vec(n, 0.5, 2.0));
        let wd = w.as_ref().map_or(vec![1.0; n], |w| d64(w));
        let r = id_ref(&spec, n, f, &d64(&a), &d64(&b), &wd);
        assert!(r.kink > 1e-3, "{name}: a sample sits on the margin's kink");
        if name.contains("margin") {
            let inactive = r.base.vals.iter().filter(|v| **v == 0.0).count();
            assert_eq!(inactive, if n == 70 { 10 } else { 2 }, "{name}");
        }
        if name.contains("inactive") {
            assert_eq!(r.base.total, 0.0);
        }
        let s = Shape::vector(n, f);
        let mut worst = [0f64; 4];
        for ctx in contexts() {
            for scale in [1.0f32, 1024.0] {
                let loss = IdentityLoss::new(ctx, spec, n, f).unwrap();
                let at = Tensor::from_f32(ctx, s, &a, "a").unwrap();
                let bt = Tensor::from_f32(ctx, s, &b, "b").unwrap();
                let ga = Tensor::new(ctx, s, "grad a").unwrap();
                let gb = Tensor::new(ctx, s, "grad b").unwrap();
                let io = Io::new(ctx, scale, w.as_deref());
                let ds = loss.bind(ctx, &at, &bt, &io.out(), &ga, Some(&gb)).unwrap();
                assert_eq!(ds.len(), 4);
                ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
                let what = format!("{name} {} scale {scale}", label(ctx));
                let rr = r.base.check(
                    &loss.read_values(ctx).unwrap(),
                    io.total(ctx),
                    &ga.to_f32(ctx).unwrap(),
                    scale as f64,
                    &what,
                );
                let rb = Ref {
                    grad: r.gb.clone(),
                    grad_b: r.gb_b.clone(),
                    ..Default::default()
                };
                let (want, bound) = rb.scaled(scale as f64);
                let r3 = assert_within(
                    &gb.to_f32(ctx).unwrap(),
                    &want,
                    &bound,
                    &format!("{what} gradient b"),
                );
                worst = [
                    worst[0].max(rr[0]),
                    worst[1].max(rr[1]),
                    worst[2].max(rr[2]),
                    worst[3].max(r3),
                ];
            }
        }
        eprintln!(
            "{name}: worst error / bound: values {:.3}, total {:.3}, grad a {:.3}, grad b {:.3}",
            worst[0], worst[1], worst[2], worst[3]
        );
    }
}

#[test]
fn identity_without_grad_b_and_wrong_reduction_fails() {
    // Three dispatches without grad_b; the mean-reduced reference (dividing by N, not by the
    // active count) must fail against the margin form's gradient.
    let mut rng = Rng::new(0x2DE);
    let (n, f) = (4, 9);
    let (a, b) = embedding_pair(&mut rng, n, f, &[1.0, 0.01, 0.6, 0.4]);
    let spec = IdentitySpec::mobilefsgan();
    let ones = vec![1.0; n];
    let right = id_ref(&spec, n, f, &d64(&a), &d64(&b), &ones);
    let wrong = IdentitySpec {
        reduction: IdentityReduction::Mean,
        ..spec
    };
    let bad = id_ref(&wrong, n, f, &d64(&a), &d64(&b), &ones);
    let ctx = &contexts()[0];
    let s = Shape::vector(n, f);
    let loss = IdentityLoss::new(ctx, spec, n, f).unwrap();
    let at = Tensor::from_f32(ctx, s, &a, "a").unwrap();
    let bt = Tensor::from_f32(ctx, s, &b, "b").unwrap();
    let ga = Tensor::new(ctx, s, "grad a").unwrap();
    let io = Io::new(ctx, 1.0, None);
    let ds = loss.bind(ctx, &at, &bt, &io.out(), &ga, None).unwrap();
    assert_eq!(ds.len(), 3);
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let grad = ga.to_f32(ctx).unwrap();
    let total = io.total(ctx);
    right
        .base
        .check(&loss.read_values(ctx).unwrap(), total, &grad, 1.0, "margin");
    let (want, bound) = bad.base.scaled(1.0);
    assert!(
        ratio(&grad, &want, &bound).0 > 1.0,
        "mean reduction gradient"
    );
    assert!(
        ratio(&[total], &[bad.base.total], &[bad.base.total_b]).0 > 1.0,
        "mean reduction total"
    );
}

#[test]
fn cos2_weights_match_reference() {
    let mut rng = Rng::new(0xC052);
    for (n, f) in [(5, 13), (3, 512)] {
        let noise: Vec<f32> = (0..n).map(|i| [1.0, 0.1, 0.5, 2.0, 0.02][i % 5]).collect();
        let (a, b) = embedding_pair(&mut rng, n, f, &noise);
        let q = rng.vec(n, 0.0, 1.0);
        let ones = vec![1.0; n];
        let r = id_ref(&IdentitySpec::default(), n, f, &d64(&a), &d64(&b), &ones);
        for ctx in contexts() {
            let s = Shape::vector(n, f);
            let at = Tensor::from_f32(ctx, s, &a, "a").unwrap();
            let bt = Tensor::from_f32(ctx, s, &b, "b").unwrap();
            let qb = fbuf(ctx, "quality", &q);
            let alpha = fbuf(ctx, "alpha", &vec![SENTINEL; n + 1]);
            let k = Cos2Weights::new(n, f).unwrap();
            for quality in [Some(&qb), None] {
                let ds = k.bind(ctx, &at, &bt, quality, &alpha).unwrap();
                ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
                let got = read_f32(ctx, &alpha, n + 1).unwrap();
                assert_eq!(got[n], SENTINEL, "alpha[{n}] was written");
                let mut want = Vec::new();
                let mut bound = Vec::new();
                for i in 0..n {
                    // cos = 1 − l; its error bound is the value bound of 1 − cos.
                    let cos = 1.0 - r.base.vals[i];
                    let qi = quality.map_or(1.0, |_| q[i] as f64);
                    want.push(cos * cos * qi);
                    bound.push(
                        2.0 * cos.abs() * r.base.vals_b[i] * qi
                            + 4.0 * U32 * cos * cos * qi
                            + 1e-30,
                    );
                }
                let rr = assert_within(
                    &got[..n],
                    &want,
                    &bound,
                    &format!("cos2 [{n}, {f}] Q {} {}", quality.is_some(), label(ctx)),
                );
                eprintln!(
                    "cos2 [{n}, {f}] Q {}: worst ratio {rr:.3}",
                    quality.is_some()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Determinism, distillation weights, errors

#[test]
fn losses_are_bitwise_deterministic() {
    let mut rng = Rng::new(0xDE7);
    let s = Shape::new(2, 3, 67, 61);
    let pc = pixel_case(&mut rng, s, MaskKind::Broadcast, true, true);
    let sc = ssim_case(
        &mut rng,
        Shape::new(2, 3, 40, 37),
        0.1,
        MaskKind::None,
        true,
    );
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for ctx in contexts() {
        let spec = PixelSpec::mse().normalized(Normalize::BatchMaskSum);
        let first = gpu_pixel(ctx, spec, &pc, 1.0);
        let again = gpu_pixel(ctx, spec, &pc, 1.0);
        assert_eq!(
            bits(&first.0),
            bits(&again.0),
            "pixel values {}",
            label(ctx)
        );
        assert_eq!(first.1.to_bits(), again.1.to_bits(), "pixel total");
        assert_eq!(bits(&first.2), bits(&again.2), "pixel gradient");
        let first = gpu_ssim(ctx, SsimSpec::default(), &sc, 1.0);
        let again = gpu_ssim(ctx, SsimSpec::default(), &sc, 1.0);
        assert_eq!(bits(&first.0), bits(&again.0), "ssim values {}", label(ctx));
        assert_eq!(first.1.to_bits(), again.1.to_bits(), "ssim total");
        assert_eq!(bits(&first.2), bits(&again.2), "ssim gradient");
    }
}

#[test]
fn distillation_weights_feed_an_l1_loss() {
    // α = cos(z, z')²·Q from Cos2Weights, bound straight as the per-sample weights of an L1 loss:
    // the trainer's reweighted distillation term, all on the GPU.
    let mut rng = Rng::new(0xA1FA);
    let (n, f) = (3, 64);
    let (za, zb) = embedding_pair(&mut rng, n, f, &[0.3, 1.0, 0.05]);
    let q = rng.vec(n, 0.2, 1.0);
    let s = Shape::new(n, 3, 9, 7);
    let mut c = pixel_case(&mut rng, s, MaskKind::None, true, false);
    for ctx in contexts() {
        let vs = Shape::vector(n, f);
        let at = Tensor::from_f32(ctx, vs, &za, "z").unwrap();
        let bt = Tensor::from_f32(ctx, vs, &zb, "z'").unwrap();
        let qb = fbuf(ctx, "quality", &q);
        let alpha = f32_storage(ctx, "alpha", n).unwrap();
        let cw = Cos2Weights::new(n, f).unwrap();
        let loss = PixelLoss::new(ctx, PixelSpec::l1(), s).unwrap();
        let p = Tensor::from_f32(ctx, s, &c.p, "student").unwrap();
        let t = Tensor::from_f32(ctx, s, c.t.as_ref().unwrap(), "teacher").unwrap();
        let g = Tensor::new(ctx, s, "grad").unwrap();
        let io = Io::new(ctx, 256.0, None);
        let out = io.out().weighted(&alpha);
        let mut ds = cw.bind(ctx, &at, &bt, Some(&qb), &alpha).unwrap();
        ds.extend(loss.bind(ctx, &p, Some(&t), None, &out, &g).unwrap());
        ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
        // The reference takes the GPU's α (checked in cos2_weights_match_reference) as weights.
        c.w = Some(read_f32(ctx, &alpha, n).unwrap());
        let r = pixel_ref(&PixelSpec::l1(), &c, &d64(&c.p));
        r.check(
            &loss.read_values(ctx).unwrap(),
            io.total(ctx),
            &g.to_f32(ctx).unwrap(),
            256.0,
            &format!("distillation {}", label(ctx)),
        );
    }
}

#[test]
fn losses_reject_bad_input() {
    let ctx = &contexts()[0];
    let s = Shape::new(2, 3, 13, 11);
    let x = Tensor::new(ctx, s, "x").unwrap();
    let y = Tensor::new(ctx, s, "y").unwrap();
    let g = Tensor::new(ctx, s, "g").unwrap();
    let other = Tensor::new(ctx, [2, 3, 13, 12], "other").unwrap();
    let io = Io::new(ctx, 1.0, None);
    let err = |r: fswap::Result<Vec<fswap::gpu::Dispatch>>| r.expect_err("an error").to_string();

    let pl = PixelLoss::new(ctx, PixelSpec::l1(), s).unwrap();
    let e = err(pl.bind(ctx, &x, Some(&other), None, &io.out(), &g));
    assert!(
        e.contains("target expected [2, 3, 13, 11], found [2, 3, 13, 12]"),
        "{e}"
    );
    let e = err(pl.bind(ctx, &x, Some(&y), Some(&other), &io.out(), &g));
    assert!(
        e.contains("mask expected [2, 1, 13, 11] or [2, 3, 13, 11]"),
        "{e}"
    );
    let e = err(pl.bind(ctx, &x, Some(&y), None, &io.out(), &x));
    assert!(e.contains("gradient tensor is the prediction"), "{e}");
    let pm = PixelLoss::new(ctx, PixelSpec::l1().normalized(Normalize::MaskSum), s).unwrap();
    let e = err(pm.bind(ctx, &x, Some(&y), None, &io.out(), &g));
    assert!(e.contains("no mask was given"), "{e}");
    let bad_slot = LossOut::new(&io.losses, 8, &io.scale);
    let e = err(pl.bind(ctx, &x, Some(&y), None, &bad_slot, &g));
    assert!(e.contains("losses buffer of 32 bytes"), "{e}");
    let same = LossOut::new(&io.losses, 0, &io.losses);
    let e = err(pl.bind(ctx, &x, Some(&y), None, &same, &g));
    assert!(e.contains("scale buffer is the losses buffer"), "{e}");
    // Six samples need 24 bytes of weights; the shortest f32 buffer holds 16.
    let s6 = Shape::new(6, 1, 2, 3);
    let (x6, g6) = (
        Tensor::new(ctx, s6, "x6").unwrap(),
        Tensor::new(ctx, s6, "g6").unwrap(),
    );
    let short = fbuf(ctx, "w", &[1.0]);
    let p6 = PixelLoss::new(ctx, PixelSpec::l1(), s6).unwrap();
    let e = err(p6.bind(ctx, &x6, None, None, &io.out().weighted(&short), &g6));
    assert!(e.contains("per-sample weights buffer of 16 bytes"), "{e}");
    let e = PixelLoss::new(ctx, PixelSpec::l1().with_weight(f32::NAN), s)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("weight is NaN"), "{e}");

    let e = SsimLoss::new(ctx, SsimSpec::default(), Shape::new(1, 3, 10, 40))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("smaller than the 11×11 window"), "{e}");
    for bad in [
        SsimSpec {
            window: 0,
            ..Default::default()
        },
        SsimSpec {
            window: 33,
            ..Default::default()
        },
        SsimSpec {
            sigma: 0.0,
            ..Default::default()
        },
        SsimSpec {
            k2: -0.03,
            ..Default::default()
        },
    ] {
        assert!(SsimLoss::new(ctx, bad, s).is_err(), "{bad:?}");
    }
    let sl = SsimLoss::new(ctx, SsimSpec::default(), s).unwrap();
    let e = err(sl.bind(ctx, &x, &other, None, &io.out(), &g));
    assert!(e.contains("target expected"), "{e}");

    let ml = MaskLoss::new(ctx, MaskLossSpec::default(), Shape::new(2, 1, 5, 5));
    assert!(ml.is_ok());
    let e = MaskLoss::new(ctx, MaskLossSpec::default(), s)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("one channel"), "{e}");

    let vs = Shape::vector(2, 8);
    let a = Tensor::new(ctx, vs, "a").unwrap();
    let b = Tensor::new(ctx, Shape::vector(2, 9), "b").unwrap();
    let ga = Tensor::new(ctx, vs, "ga").unwrap();
    let il = IdentityLoss::new(ctx, IdentitySpec::default(), 2, 8).unwrap();
    let e = err(il.bind(ctx, &a, &b, &io.out(), &ga, None));
    assert!(
        e.contains("embedding b expected [2, 1, 1, 8], found [2, 1, 1, 9]"),
        "{e}"
    );
    let e = err(il.bind(ctx, &a, &a, &io.out(), &ga, Some(&ga)));
    assert!(e.contains("gradient tensor is the gradient b"), "{e}");
    let cw = Cos2Weights::new(2, 8).unwrap();
    let alpha = fbuf(ctx, "alpha", &[0.0; 2]);
    let e = err(cw.bind(ctx, &a, &a, Some(&alpha), &alpha));
    assert!(e.contains("quality buffer is the alpha buffer"), "{e}");
    assert!(Cos2Weights::new(0, 8).is_err());
}

/// Timings for the report: `cargo test --release --test kernels_loss -- --ignored --nocapture`.
/// Batch 8 at 224×224 (the trainer's step); FSWAP_LOSS_BATCH overrides the batch.
#[test]
#[ignore]
fn loss_timings() {
    let n: usize = std::env::var("FSWAP_LOSS_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut rng = Rng::new(5);
    let s = Shape::new(n, 3, 224, 224);
    let ms = Shape::new(n, 1, 224, 224);
    let p = rng.vec(s.numel(), 0.0, 1.0);
    let t = rng.vec(s.numel(), 0.0, 1.0);
    let m = rng.vec(ms.numel(), 0.0, 1.0);
    for ctx in contexts() {
        let pt = Tensor::from_f32(ctx, s, &p, "pred").unwrap();
        let tt = Tensor::from_f32(ctx, s, &t, "target").unwrap();
        let mt = Tensor::from_f32(ctx, ms, &m, "mask").unwrap();
        let g1 = Tensor::new(ctx, s, "grad mse").unwrap();
        let g2 = Tensor::new(ctx, s, "grad ssim").unwrap();
        let io = Io::new(ctx, 1024.0, None);
        let mse = PixelLoss::new(ctx, PixelSpec::faceswap_penalized(Distance::Mse), s).unwrap();
        let ssim = SsimLoss::new(ctx, SsimSpec::default(), s).unwrap();
        let mut all = mse
            .bind(ctx, &pt, Some(&tt), Some(&mt), &io.out(), &g1)
            .unwrap();
        all.extend(ssim.bind(ctx, &pt, &tt, Some(&mt), &io.out(), &g2).unwrap());
        let prof = ctx.profile(&all.iter().collect::<Vec<_>>(), 1, 3).unwrap();
        let parts: Vec<String> = prof
            .entries
            .iter()
            .map(|e| format!("{} {:.0} µs", e.label, e.micros))
            .collect();
        eprintln!(
            "{} batch {n} 224²: total {:.0} µs ({}) [{}]",
            label(ctx),
            prof.total_micros,
            prof.timing,
            parts.join(", ")
        );
    }
}
