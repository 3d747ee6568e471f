//! The GPU optimiser step (SGD, Adam, AdamW), global-norm clipping, dynamic loss scaling and the
//! parameter cast/copy kernels, on every storage path, against f64 host implementations of
//! PyTorch's formulas (`torch.optim.SGD/Adam/AdamW`, `clip_grad_norm_`, `GradScaler`).
//!
//! Tolerances: the reference carries, beside every f64 value, a rigorous first-order bound on the
//! error the GPU's f32 evaluation of the same formula can make ([`B`]): each f32 add, subtract and
//! multiply is correctly rounded (Vulkan: at most 2^-24 relative, `U`), a division is at most
//! 2.5 ulp (`DIV` = 5U relative), a square root is `1/inversesqrt` (2 + 2.5 ulp, `SQRT` = 10U),
//! every f64 host constant (β, lr, eps, 1 − β, 1 − lr·wd) is rounded to f32 once (U). The bias
//! corrections `1 − β^t` are evaluated in the shader by series (a few ulp; `BC` = 24U budget).
//! The global norm sums squares of unscaled gradients in f32 (all terms positive): at most `depth·U`
//! relative, `depth` the longest chain of additions in the GPU's fixed reduction tree
//! ([`sumsq_rel`]), so the norm carries `depth·U/2 + SQRT + DIV` relative. The bounds propagate
//! through every step (parameters, `exp_avg`, `exp_avg_sq`, momentum). A GPU value passes when it
//! is within twice its bound (the factor 2 covers the neglected second-order terms); every check
//! reports its worst error as a fraction of the bound. Power-of-two loss scales make unscaling exact,
//! so loss-scale bookkeeping is compared exactly.
//!
//! The casts are exact: f16 → f32 is exact and f32 → f16 may round to either neighbouring half
//! (WGSL leaves the choice to the implementation), so a half must be one of the two halves
//! around the f32 value (the value itself when representable), clamped to ±65504.
mod common;

use common::{contexts, f16r, label, Rng};
use fswap::kernels::cast::{self, Transpose};
use fswap::kernels::conv_grad::{f32_storage, read_f32};
use fswap::kernels::optim::{
    LossScale, OptimParam, Optimizer, OptimizerStep, Scaler, Schedule, ScheduleKind, STATE_SCALER,
    STATE_STEP,
};
use fswap::{Context, Shape, Tensor};
use half::f16;

const U: f64 = 1.0 / (1u64 << 24) as f64;
const DIV: f64 = 5.0 * U;
const SQRT: f64 = 10.0 * U;
const BC: f64 = 24.0 * U;

// ---------------------------------------------------------------------------------------------
// Bounded f64 arithmetic

/// A value and a bound on the error an f32 evaluation of the same expression can have.
#[derive(Clone, Copy, Debug)]
struct B {
    v: f64,
    e: f64,
}

impl B {
    fn exact(v: f64) -> B {
        B { v, e: 0.0 }
    }
    /// A host f64 constant the GPU sees rounded to f32.
    fn konst(v: f64) -> B {
        B { v, e: U * v.abs() }
    }
    fn rel(v: f64, rel: f64) -> B {
        B {
            v,
            e: rel * v.abs(),
        }
    }
    fn add(self, o: B) -> B {
        let v = self.v + o.v;
        B {
            v,
            e: self.e + o.e + U * v.abs(),
        }
    }
    fn sub(self, o: B) -> B {
        self.add(B { v: -o.v, e: o.e })
    }
    fn mul(self, o: B) -> B {
        let v = self.v * o.v;
        B {
            v,
            e: self.v.abs() * o.e + o.v.abs() * self.e + self.e * o.e + U * v.abs(),
        }
    }
    fn mulc(self, c: f64) -> B {
        self.mul(B::konst(c))
    }
    fn div(self, o: B) -> B {
        assert!(o.v.abs() > o.e, "divisor {o:?} not bounded away from 0");
        let v = self.v / o.v;
        B {
            v,
            e: (self.e + v.abs() * o.e) / (o.v.abs() - o.e) + DIV * v.abs(),
        }
    }
    fn sqrt(self) -> B {
        let v = self.v.max(0.0).sqrt();
        B {
            v,
            e: v - (self.v - self.e).max(0.0).sqrt() + SQRT * v,
        }
    }
}

/// Worst |got − want| as a fraction of twice the bound; `Err` names the first failure.
fn within(got: &[f32], want: &[B], what: &str) -> Result<f64, String> {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f64;
    for (i, (&g, w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w.v).abs();
        let bound = 2.0 * w.e + f64::MIN_POSITIVE;
        if err.is_nan() || err > bound {
            return Err(format!(
                "{what}: element {i} got {g} want {} (err {err:.3e}, bound {bound:.3e})",
                w.v
            ));
        }
        worst = worst.max(err / bound);
    }
    Ok(worst)
}

fn assert_within(got: &[f32], want: &[B], what: &str) -> f64 {
    match within(got, want, what) {
        Ok(f) => f,
        Err(msg) => panic!("{msg}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Reference optimiser (PyTorch's single-tensor formulas in f64, with bounds)

#[derive(Clone)]
struct RefParam {
    p: Vec<B>,
    m: Vec<B>,
    v: Vec<B>,
}

impl RefParam {
    fn new(p: &[f32]) -> Self {
        let z = vec![B::exact(0.0); p.len()];
        RefParam {
            p: p.iter().map(|&x| B::exact(x as f64)).collect(),
            m: z.clone(),
            v: z,
        }
    }
}

/// Relative error bound of the GPU's sum of squares: the recursive-summation bound `depth·U`,
/// where `depth` is the longest chain of f32 additions any term goes through (the square itself,
/// a lane's stride over its chunk, the 64 lanes, a finalize lane's stride over the partials, the
/// 64 finalize lanes), from the chunking `OptimizerStep` documents (chunks of at least 1024
/// gradients, at most 128 per parameter).
fn sumsq_rel(lens: &[usize]) -> f64 {
    let mut per_lane = 0;
    let mut slots = 0;
    for &len in lens {
        let chunks = len.div_ceil(1024).clamp(1, 128);
        let chunk_len = len.div_ceil(chunks);
        per_lane = usize::max(per_lane, chunk_len.div_ceil(64));
        slots += len.div_ceil(chunk_len);
    }
    (1 + per_lane + 64 + slots.div_ceil(64) + 64) as f64 * U
}

/// The global norm of the unscaled gradients, and the factor the update multiplies the scaled
/// gradients by (`1/scale × clip coefficient`), both bounded.
fn ref_factor(grads: &[Vec<f32>], scale: f64, max_norm: Option<f32>) -> (B, B) {
    let lens: Vec<usize> = grads.iter().map(|g| g.len()).collect();
    let ss: f64 = grads
        .iter()
        .flatten()
        .map(|&g| (g as f64 / scale).powi(2))
        .sum();
    let norm_rel = sumsq_rel(&lens) / 2.0 + SQRT + DIV;
    let norm = B::rel(ss.sqrt(), norm_rel);
    let inv = B::rel(1.0 / scale, DIV);
    let factor = match max_norm {
        Some(mx) => {
            let c = mx as f64 / (norm.v + 1e-6);
            assert!(
                (c - 1.0).abs() > 1e-3,
                "clip coefficient {c} too close to 1 for a clear test"
            );
            if c < 1.0 {
                let coef = B::exact(mx as f64).div(norm.add(B::konst(1e-6)));
                inv.mul(coef)
            } else {
                inv
            }
        }
        None => inv,
    };
    (norm, factor)
}

/// One optimiser step on the reference state, with the effective step count `t`.
fn ref_step(opt: Optimizer, ps: &mut [RefParam], grads: &[Vec<f32>], factor: B, lr: f64, t: u64) {
    let lr_b = B::konst(lr);
    for (rp, gs) in ps.iter_mut().zip(grads) {
        assert_eq!(gs.len(), rp.p.len());
        for (i, &gi) in gs.iter().enumerate() {
            let mut g = B::exact(gi as f64).mul(factor);
            let mut x = rp.p[i];
            match opt {
                Optimizer::Sgd {
                    momentum,
                    dampening,
                    nesterov,
                    weight_decay,
                } => {
                    if weight_decay != 0.0 {
                        g = g.add(x.mulc(weight_decay));
                    }
                    if momentum != 0.0 {
                        let buf = if t == 1 {
                            g
                        } else {
                            rp.m[i].mulc(momentum).add(g.mulc(1.0 - dampening))
                        };
                        rp.m[i] = buf;
                        g = if nesterov {
                            g.add(buf.mulc(momentum))
                        } else {
                            buf
                        };
                    }
                    rp.p[i] = x.sub(lr_b.mul(g));
                }
                Optimizer::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                }
                | Optimizer::AdamW {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    if matches!(opt, Optimizer::AdamW { .. }) {
                        x = x.mul(B::konst(1.0 - lr * weight_decay));
                    } else if weight_decay != 0.0 {
                        g = g.add(x.mulc(weight_decay));
                    }
                    let m0 = rp.m[i];
                    // torch.lerp(m, g, 1 − β1), both of its branches.
                    let m1 = if 1.0 - beta1 < 0.5 {
                        m0.add(g.sub(m0).mulc(1.0 - beta1))
                    } else {
                        g.sub(g.sub(m0).mulc(beta1))
                    };
                    let v1 = rp.v[i].mulc(beta2).add(g.mul(g).mulc(1.0 - beta2));
                    rp.m[i] = m1;
                    rp.v[i] = v1;
                    let bc1 = B::rel(1.0 - beta1.powi(t as i32), BC);
                    let bc2s = B::rel((1.0 - beta2.powi(t as i32)).sqrt(), BC);
                    let step = lr_b.div(bc1);
                    let denom = v1.sqrt().div(bc2s).add(B::konst(eps));
                    rp.p[i] = x.sub(step.mul(m1.div(denom)));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GPU harness

fn upload(ctx: &Context, data: &[f32], what: &str) -> wgpu::Buffer {
    let b = f32_storage(ctx, what, data.len()).expect("f32 buffer");
    ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(data));
    b
}

fn make_params(ctx: &Context, init: &[Vec<f32>]) -> Vec<OptimParam> {
    init.iter()
        .enumerate()
        .map(|(k, data)| OptimParam {
            name: format!("layer{k}.weight"),
            value: upload(ctx, data, "param"),
            grad: f32_storage(ctx, "grad", data.len()).expect("grad buffer"),
            len: data.len(),
        })
        .collect()
}

/// Writes the (scaled) gradients, sets lr and t, and runs one optimiser step.
fn gpu_step(ctx: &Context, opt: &OptimizerStep, grads: &[Vec<f32>], lr: f64, t: u64) {
    for (p, g) in opt.params().iter().zip(grads) {
        ctx.queue.write_buffer(&p.grad, 0, bytemuck::cast_slice(g));
    }
    opt.set_step(ctx, lr, t).expect("set_step");
    ctx.run(&opt.dispatches()).expect("run");
}

fn read_params(ctx: &Context, opt: &OptimizerStep) -> Vec<Vec<f32>> {
    opt.params()
        .iter()
        .map(|p| read_f32(ctx, &p.value, p.len).expect("read param"))
        .collect()
}

/// The state entries of one kind (`exp_avg`, ...) in parameter order.
fn state_of(state: &[(String, Vec<f32>)], suffix: &str) -> Vec<Vec<f32>> {
    state
        .iter()
        .filter(|(n, _)| n.ends_with(&format!(".{suffix}")))
        .map(|(_, v)| v.clone())
        .collect()
}

/// Compares parameters and optimiser state with the reference; returns the worst fraction.
fn compare(ctx: &Context, opt: &OptimizerStep, rp: &[RefParam], what: &str) -> f64 {
    let mut worst = 0f64;
    let got = read_params(ctx, opt);
    let state = opt.state(ctx).expect("state");
    for (k, (g, r)) in got.iter().zip(rp).enumerate() {
        worst = worst.max(assert_within(g, &r.p, &format!("{what} param {k}")));
    }
    let (m_name, v_name) = match opt.optimizer() {
        Optimizer::Sgd { momentum, .. } if momentum != 0.0 => (Some("momentum_buffer"), None),
        Optimizer::Sgd { .. } => (None, None),
        _ => (Some("exp_avg"), Some("exp_avg_sq")),
    };
    if let Some(mn) = m_name {
        for (k, (g, r)) in state_of(&state, mn).iter().zip(rp).enumerate() {
            worst = worst.max(assert_within(g, &r.m, &format!("{what} {mn} {k}")));
        }
    }
    if let Some(vn) = v_name {
        for (k, (g, r)) in state_of(&state, vn).iter().zip(rp).enumerate() {
            worst = worst.max(assert_within(g, &r.v, &format!("{what} {vn} {k}")));
        }
    }
    worst
}

fn random_vecs(rng: &mut Rng, lens: &[usize], amp: &[f32]) -> Vec<Vec<f32>> {
    lens.iter()
        .zip(amp)
        .map(|(&n, &a)| (0..n).map(|_| rng.uniform(-a, a)).collect())
        .collect()
}

/// Lengths of the test parameters: a scalar, sizes off multiples of 4 and of the workgroup, one
/// split into several norm chunks and one into many.
const LENS: [usize; 5] = [1, 6, 37, 2500, 70001];
const AMPS: [f32; 5] = [0.5, 2.0, 1.0, 0.3, 0.05];

#[derive(Clone, Copy, Debug)]
enum Clip {
    Off,
    /// `max_norm` at this fraction of the first step's gradient norm.
    At(f64),
}

fn sgd(momentum: f64, dampening: f64, nesterov: bool, weight_decay: f64) -> Optimizer {
    Optimizer::Sgd {
        momentum,
        dampening,
        nesterov,
        weight_decay,
    }
}

#[test]
fn optimizers_match_pytorch_formulas() {
    let schedule = Schedule {
        base_lr: 0.01,
        warmup_steps: 1,
        total_steps: 6,
        min_lr: 0.001,
        kind: ScheduleKind::Cosine,
    };
    let cases: Vec<(&str, Optimizer, LossScale, Clip)> = vec![
        (
            "sgd momentum+dampening+wd",
            sgd(0.9, 0.1, false, 0.01),
            LossScale::Static(1.0),
            Clip::Off,
        ),
        (
            "sgd nesterov, dynamic scale, clipped",
            sgd(0.8, 0.0, true, 0.001),
            LossScale::Dynamic {
                init_scale: 1024.0,
                growth_factor: 2.0,
                backoff_factor: 0.5,
                growth_interval: 1000,
            },
            Clip::At(0.3),
        ),
        (
            "sgd plain, clip inactive",
            sgd(0.0, 0.0, false, 0.0),
            LossScale::Static(1.0),
            Clip::At(3.0),
        ),
        (
            "adam L2",
            Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            LossScale::Static(1.0),
            Clip::Off,
        ),
        (
            "adam, dynamic scale, clipped",
            Optimizer::adam(),
            LossScale::Dynamic {
                init_scale: 4096.0,
                growth_factor: 2.0,
                backoff_factor: 0.5,
                growth_interval: 1000,
            },
            Clip::At(0.25),
        ),
        (
            "adamw, static scale 4, clip inactive",
            Optimizer::AdamW {
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-6,
                weight_decay: 0.05,
            },
            LossScale::Static(4.0),
            Clip::At(5.0),
        ),
        (
            "adamw small betas (lerp's other branch, bias correction by squaring)",
            Optimizer::AdamW {
                beta1: 0.3,
                beta2: 0.6,
                eps: 1e-8,
                weight_decay: 0.1,
            },
            LossScale::Static(1.0),
            Clip::Off,
        ),
    ];
    for ctx in contexts() {
        for (ci, (name, opt, mode, clip)) in cases.iter().enumerate() {
            let what = format!("{} {name}", label(ctx));
            let mut rng = Rng::new(100 + ci as u64);
            let init = random_vecs(&mut rng, &LENS, &[1.0; 5]);
            let steps: Vec<Vec<Vec<f32>>> = (0..4)
                .map(|_| random_vecs(&mut rng, &LENS, &AMPS))
                .collect();
            let first_norm = ref_factor(&steps[0], 1.0, None).0.v;
            let max_norm = match clip {
                Clip::Off => None,
                Clip::At(f) => Some((f * first_norm) as f32),
            };
            let scale = match mode {
                LossScale::Static(s) => *s as f64,
                LossScale::Dynamic { init_scale, .. } => *init_scale as f64,
            };
            let params = make_params(ctx, &init);
            let scaler = Scaler::new(ctx, *mode).expect("scaler");
            let gpu = OptimizerStep::new(ctx, *opt, &params, &scaler, max_norm).expect("optimizer");
            let mut rp: Vec<RefParam> = init.iter().map(|p| RefParam::new(p)).collect();
            // The same run without clipping: the GPU must be told apart from it (mutation check).
            let mut unclipped = rp.clone();
            let mut worst = 0f64;
            for (s, grads) in steps.iter().enumerate() {
                let t = s as u64 + 1;
                let lr = schedule.lr(s as u64);
                let scaled: Vec<Vec<f32>> = grads
                    .iter()
                    .map(|g| g.iter().map(|&x| (x as f64 * scale) as f32).collect())
                    .collect();
                gpu_step(ctx, &gpu, &scaled, lr, t);
                let (norm, factor) = ref_factor(&scaled, scale, max_norm);
                ref_step(*opt, &mut rp, &scaled, factor, lr, t);
                let (_, f0) = ref_factor(&scaled, scale, None);
                ref_step(*opt, &mut unclipped, &scaled, f0, lr, t);
                worst = worst.max(compare(ctx, &gpu, &rp, &format!("{what} step {t}")));
                let sc = scaler.read(ctx).expect("scaler");
                assert_within(
                    &sc[Scaler::NORM..=Scaler::NORM],
                    &[norm],
                    &format!("{what} norm"),
                );
                assert_eq!(sc[Scaler::SKIP], 0.0, "{what}: skip flag");
                assert_eq!(sc[Scaler::SCALE] as f64, scale, "{what}: scale");
                assert_eq!(sc[Scaler::GOOD_STEPS], t as f32, "{what}: good steps");
            }
            if matches!(clip, Clip::At(f) if *f < 1.0) {
                let got = read_params(ctx, &gpu);
                let diverged = got
                    .iter()
                    .zip(&unclipped)
                    .any(|(g, r)| within(g, &r.p, "unclipped").is_err());
                assert!(diverged, "{what}: clipping made no detectable difference");
            }
            eprintln!("{what}: worst error {:.3} of bound", worst);
        }
    }
}

#[test]
fn dynamic_loss_scale_skips_backs_off_and_grows() {
    let opt = Optimizer::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mode = LossScale::Dynamic {
        init_scale: 1024.0,
        growth_factor: 2.0,
        backoff_factor: 0.5,
        growth_interval: 2,
    };
    // (gradient poison, scale the grads carry, scale after, good steps after, skipped so far)
    let plan: [(Option<f32>, f64, f32, f32, f32); 6] = [
        (None, 1024.0, 1024.0, 1.0, 0.0),
        (None, 1024.0, 2048.0, 0.0, 0.0), // growth after 2 good steps
        (Some(f32::INFINITY), 2048.0, 1024.0, 0.0, 1.0),
        (None, 1024.0, 1024.0, 1.0, 1.0),
        (Some(f32::NAN), 1024.0, 512.0, 0.0, 2.0),
        (None, 512.0, 512.0, 1.0, 2.0),
    ];
    for ctx in contexts() {
        let what = label(ctx);
        let mut rng = Rng::new(7);
        let lens = [5usize, 1030];
        let init = random_vecs(&mut rng, &lens, &[1.0, 1.0]);
        let params = make_params(ctx, &init);
        let scaler = Scaler::new(ctx, mode).expect("scaler");
        assert_eq!(scaler.read(ctx).unwrap()[..2], [1024.0, 1.0 / 1024.0]);
        let gpu = OptimizerStep::new(ctx, opt, &params, &scaler, None).expect("optimizer");
        let mut rp: Vec<RefParam> = init.iter().map(|p| RefParam::new(p)).collect();
        let mut taken = 0u64;
        for (s, &(poison, scale, after, good, skipped)) in plan.iter().enumerate() {
            let t = s as u64 + 1;
            let lr = 1e-2;
            let mut scaled: Vec<Vec<f32>> = random_vecs(&mut rng, &lens, &[1.0, 0.5])
                .iter()
                .map(|g| g.iter().map(|&x| (x as f64 * scale) as f32).collect())
                .collect();
            let before = (read_params(ctx, &gpu), gpu.state(ctx).expect("state"));
            if let Some(bad) = poison {
                scaled[1][777] = bad;
            }
            gpu_step(ctx, &gpu, &scaled, lr, t);
            let sc = scaler.read(ctx).expect("scaler");
            let step = format!("{what} step {t}");
            assert_eq!(sc[Scaler::SCALE], after, "{step}: scale");
            assert_eq!(sc[Scaler::GOOD_STEPS], good, "{step}: good steps");
            assert_eq!(sc[Scaler::SKIPPED], skipped, "{step}: skipped steps");
            if poison.is_some() {
                assert_eq!(sc[Scaler::SKIP], 1.0, "{step}: skip flag");
                assert_eq!(sc[Scaler::NORM], f32::INFINITY, "{step}: norm");
                let after_step = (read_params(ctx, &gpu), gpu.state(ctx).expect("state"));
                assert_eq!(
                    before.0, after_step.0,
                    "{step}: parameters changed on a skipped step"
                );
                let strip = |s: &[(String, Vec<f32>)]| {
                    s.iter()
                        .filter(|(n, _)| n != STATE_SCALER)
                        .cloned()
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    strip(&before.1)[..4],
                    strip(&after_step.1)[..4],
                    "{step}: optimizer state changed on a skipped step"
                );
                continue;
            }
            assert_eq!(sc[Scaler::SKIP], 0.0, "{step}: skip flag");
            let f = sc[Scaler::FACTOR] as f64;
            assert!((f * scale - 1.0).abs() <= DIV, "{step}: factor {f}");
            taken += 1;
            let (_, factor) = ref_factor(&scaled, scale, None);
            let mut wrong = rp.clone();
            ref_step(opt, &mut rp, &scaled, factor, lr, taken);
            let worst = compare(ctx, &gpu, &rp, &step);
            eprintln!("{step}: worst error {worst:.3} of bound");
            // Mutation check: counting the skipped steps in Adam's bias correction is detectable.
            if taken != t {
                ref_step(opt, &mut wrong, &scaled, factor, lr, t);
                let got = read_params(ctx, &gpu);
                let bad = got
                    .iter()
                    .zip(&wrong)
                    .any(|(g, r)| within(g, &r.p, "t without skips").is_err());
                assert!(
                    bad,
                    "{step}: bias correction with t = {t} indistinguishable"
                );
            }
        }
    }
}

/// Static scaling still skips a non-finite step, and SGD's first momentum step is the first step
/// taken (the momentum buffer starts as a copy of the gradient then, not before).
#[test]
fn static_scale_skip_and_first_momentum_step() {
    let opt = sgd(0.9, 0.5, false, 0.0);
    for ctx in contexts() {
        let what = label(ctx);
        let mut rng = Rng::new(11);
        let lens = [9usize];
        let init = random_vecs(&mut rng, &lens, &[1.0]);
        let params = make_params(ctx, &init);
        let scaler = Scaler::new(ctx, LossScale::Static(1.0)).expect("scaler");
        let gpu = OptimizerStep::new(ctx, opt, &params, &scaler, Some(100.0)).expect("optimizer");
        let mut g = random_vecs(&mut rng, &lens, &[1.0]);
        g[0][3] = f32::NEG_INFINITY;
        gpu_step(ctx, &gpu, &g, 0.1, 1);
        let sc = scaler.read(ctx).unwrap();
        assert_eq!(
            (sc[Scaler::SCALE], sc[Scaler::SKIP], sc[Scaler::SKIPPED]),
            (1.0, 1.0, 1.0),
            "{what}: static skip"
        );
        assert_eq!(read_params(ctx, &gpu), init, "{what}: skipped step wrote");
        let g = random_vecs(&mut rng, &lens, &[1.0]);
        gpu_step(ctx, &gpu, &g, 0.1, 2);
        let mut rp = vec![RefParam::new(&init[0])];
        let mut wrong = rp.clone();
        let (_, factor) = ref_factor(&g, 1.0, None);
        ref_step(opt, &mut rp, &g, factor, 0.1, 1);
        ref_step(opt, &mut wrong, &g, factor, 0.1, 2); // dampened first step: wrong
        compare(ctx, &gpu, &rp, &format!("{what} first momentum step"));
        let got = read_params(ctx, &gpu);
        assert!(
            within(&got[0], &wrong[0].p, "dampened").is_err(),
            "{what}: first momentum step indistinguishable from a dampened one"
        );
    }
}

#[test]
fn state_save_and_restore_continue_identically() {
    let opt = Optimizer::adamw();
    let mode = LossScale::Dynamic {
        init_scale: 256.0,
        growth_factor: 2.0,
        backoff_factor: 0.5,
        growth_interval: 2,
    };
    for ctx in contexts() {
        let what = label(ctx);
        let mut rng = Rng::new(21);
        let lens = [3usize, 1500];
        let init = random_vecs(&mut rng, &lens, &[1.0, 1.0]);
        let a_params = make_params(ctx, &init);
        let a_scaler = Scaler::new(ctx, mode).unwrap();
        let a = OptimizerStep::new(ctx, opt, &a_params, &a_scaler, Some(0.5)).unwrap();
        let mut scale = 256.0f64;
        for t in 1..=3u64 {
            let g: Vec<Vec<f32>> = random_vecs(&mut rng, &lens, &[1.0, 1.0])
                .iter()
                .map(|v| v.iter().map(|&x| (x as f64 * scale) as f32).collect())
                .collect();
            gpu_step(ctx, &a, &g, 1e-3, t);
            scale = a_scaler.read(ctx).unwrap()[Scaler::SCALE] as f64;
        }
        let saved = a.state(ctx).unwrap();
        let names: Vec<&str> = saved.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "layer0.weight.exp_avg",
                "layer0.weight.exp_avg_sq",
                "layer1.weight.exp_avg",
                "layer1.weight.exp_avg_sq",
                STATE_SCALER,
                STATE_STEP
            ],
            "{what}: state names"
        );
        assert_eq!(saved[5].1, [3.0], "{what}: step");
        assert_eq!(saved[4].1[Scaler::SCALE], 512.0, "{what}: saved scale");

        // A fresh optimiser on fresh buffers holding the same values, restored from the state.
        let b_params = make_params(ctx, &read_params(ctx, &a));
        let b_scaler = Scaler::new(ctx, mode).unwrap();
        let b = OptimizerStep::new(ctx, opt, &b_params, &b_scaler, Some(0.5)).unwrap();
        let mut missing = saved.clone();
        missing.remove(1);
        assert!(
            b.load_state(ctx, &missing).is_err(),
            "{what}: missing entry accepted"
        );
        let mut short = saved.clone();
        short[0].1.pop();
        assert!(
            b.load_state(ctx, &short).is_err(),
            "{what}: short entry accepted"
        );
        let mut extra = saved.clone();
        extra.push(("other.exp_avg".into(), vec![0.0]));
        assert!(
            b.load_state(ctx, &extra).is_err(),
            "{what}: unknown entry accepted"
        );
        b.load_state(ctx, &saved).unwrap();
        assert_eq!(b.step(), 3);
        assert_eq!(b.state(ctx).unwrap(), saved, "{what}: state round trip");

        let g: Vec<Vec<f32>> = random_vecs(&mut rng, &lens, &[1.0, 1.0])
            .iter()
            .map(|v| v.iter().map(|&x| (x as f64 * scale) as f32).collect())
            .collect();
        gpu_step(ctx, &a, &g, 1e-3, 4);
        gpu_step(ctx, &b, &g, 1e-3, 4);
        // Same inputs, same chunking, fixed reduction order: bit-identical.
        assert_eq!(read_params(ctx, &a), read_params(ctx, &b), "{what}: params");
        assert_eq!(
            a.state(ctx).unwrap(),
            b.state(ctx).unwrap(),
            "{what}: state"
        );
    }
}

#[test]
fn bad_configurations_are_errors() {
    let ctx = &contexts()[0];
    let init = vec![vec![1.0f32; 4]];
    let params = make_params(ctx, &init);
    let scaler = Scaler::new(ctx, LossScale::Static(1.0)).unwrap();
    let bad_opts = [
        sgd(0.9, 0.1, true, 0.0), // Nesterov with dampening
        sgd(0.0, 0.0, true, 0.0), // Nesterov without momentum
        sgd(-0.1, 0.0, false, 0.0),
        Optimizer::Adam {
            beta1: 1.0,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: -1.0,
            weight_decay: 0.0,
        },
        Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: f64::NAN,
        },
    ];
    for o in bad_opts {
        assert!(
            OptimizerStep::new(ctx, o, &params, &scaler, None).is_err(),
            "{o:?} accepted"
        );
    }
    let adam = Optimizer::adam();
    assert!(OptimizerStep::new(ctx, adam, &[], &scaler, None).is_err());
    assert!(OptimizerStep::new(ctx, adam, &params, &scaler, Some(0.0)).is_err());
    let mut twice = params.clone();
    twice.push(params[0].clone());
    assert!(OptimizerStep::new(ctx, adam, &twice, &scaler, None).is_err());
    let mut same = params.clone();
    same[0].grad = same[0].value.clone();
    assert!(OptimizerStep::new(ctx, adam, &same, &scaler, None).is_err());
    let mut long = params.clone();
    long[0].len = 5;
    assert!(OptimizerStep::new(ctx, adam, &long, &scaler, None).is_err());
    for m in [
        LossScale::Static(0.0),
        LossScale::Static(f32::INFINITY),
        LossScale::Dynamic {
            init_scale: 1.0,
            growth_factor: 1.0,
            backoff_factor: 0.5,
            growth_interval: 1,
        },
        LossScale::Dynamic {
            init_scale: 1.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 0,
        },
    ] {
        assert!(Scaler::new(ctx, m).is_err(), "{m:?} accepted");
    }
    let o = OptimizerStep::new(ctx, adam, &params, &scaler, None).unwrap();
    assert!(o.set_step(ctx, 1e-3, 0).is_err(), "t = 0 accepted");
    assert!(o.set_step(ctx, f64::NAN, 1).is_err(), "NaN lr accepted");
}

#[test]
fn schedule_warmup_peak_and_end() {
    let s = Schedule {
        base_lr: 0.1,
        warmup_steps: 10,
        total_steps: 110,
        min_lr: 0.001,
        kind: ScheduleKind::Cosine,
    };
    s.validate().unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-15 * b.abs().max(1e-300);
    assert_eq!(s.lr(0), 0.0);
    assert!(close(s.lr(5), 0.05), "half-way warm-up {}", s.lr(5));
    assert!(close(s.lr(9), 0.09));
    assert!(close(s.lr(10), 0.1), "peak {}", s.lr(10));
    assert!(
        close(s.lr(60), 0.001 + 0.099 * 0.5),
        "mid cosine {}",
        s.lr(60)
    );
    let quarter = 0.001 + 0.099 * 0.5 * (1.0 + (std::f64::consts::PI * 0.25).cos());
    assert!(close(s.lr(35), quarter), "quarter {}", s.lr(35));
    assert!(close(s.lr(110), 0.001), "end {}", s.lr(110));
    assert!(close(s.lr(1000), 0.001), "past the end {}", s.lr(1000));
    for k in 10..110 {
        assert!(s.lr(k + 1) <= s.lr(k), "cosine not decreasing at {k}");
    }
    let c = Schedule {
        base_lr: 0.02,
        warmup_steps: 4,
        total_steps: 0,
        min_lr: 0.0,
        kind: ScheduleKind::Constant,
    };
    assert_eq!(c.lr(0), 0.0);
    assert!(close(c.lr(2), 0.01));
    assert_eq!(c.lr(4), 0.02);
    assert_eq!(c.lr(1_000_000), 0.02);
    assert_eq!(Schedule::constant(3e-4).lr(0), 3e-4);
    let bad = Schedule {
        total_steps: 5,
        ..s
    };
    assert!(bad.validate().is_err(), "total before warm-up end accepted");
    assert!(Schedule { base_lr: -1.0, ..s }.validate().is_err());
}

// ---------------------------------------------------------------------------------------------
// Casts and f32 ops

/// Where logical element `l` of the tensor side reads/writes on the flat side.
fn flat_index(l: usize, tr: Option<Transpose>) -> usize {
    match tr {
        None => l,
        Some(t) => {
            let rc = t.rows * t.cols;
            let (b, rem) = (l / rc, l % rc);
            let (j, i) = (rem / t.rows, rem % t.rows);
            b * rc + i * t.cols + j
        }
    }
}

/// Whether the half `got` is a rounding of `v` the WGSL conversion allows: `v` itself when
/// representable, else one of the two halves around it (after clamping to ±65504).
fn half_ok(got: f32, v: f32) -> bool {
    let v = v.clamp(-65504.0, 65504.0);
    let near = f16::from_f32(v);
    if near.to_f32() == v {
        return got == v;
    }
    let other = if near.to_f32() < v {
        f16::from_bits(if v > 0.0 {
            near.to_bits() + 1
        } else {
            near.to_bits() - 1
        })
    } else {
        f16::from_bits(if v > 0.0 {
            near.to_bits() - 1
        } else {
            near.to_bits() + 1
        })
    };
    let (lo, hi) = (
        near.to_f32().min(other.to_f32()),
        near.to_f32().max(other.to_f32()),
    );
    assert!(lo < v && v < hi, "neighbours of {v}: {lo} {hi}");
    got == near.to_f32() || got == other.to_f32()
}

/// The raw halves of a tensor's buffer, padding included.
fn raw_halves(ctx: &Context, t: &Tensor) -> Vec<f16> {
    let words = read_f32(ctx, t.buffer(), t.shape().stored() / 2).unwrap();
    bytemuck::cast_slice::<f32, f16>(&words).to_vec()
}

fn cast_cases() -> Vec<(Shape, Option<Transpose>, usize)> {
    let tr = |batch, rows, cols| Some(Transpose { batch, rows, cols });
    vec![
        (Shape::new(2, 3, 5, 7), None, 3),
        (Shape::new(1, 1, 1, 1), None, 0),
        // Pointwise weights: PyTorch [cout=5, cin=3] stored transposed as [cin, cout] rows.
        (Shape::new(1, 3, 1, 5), tr(1, 5, 3), 2),
        // Two batches of [3, 5] transposed, rows of 3 (not a multiple of 4).
        (Shape::new(2, 5, 1, 3), tr(2, 3, 5), 0),
        (Shape::new(1, 1, 1, 30), tr(1, 5, 6), 7),
        (Shape::new(1, 3, 2, 3), tr(1, 6, 3), 1),
    ]
}

#[test]
fn cast_to_half_and_back_with_transposes() {
    for ctx in contexts() {
        let what = label(ctx);
        let mut rng = Rng::new(5);
        for (shape, tr, off) in cast_cases() {
            let n = shape.numel();
            let case = format!("{what} {:?} {tr:?} +{off}", shape.dims());
            // f32 source: values that need rounding, and some beyond the f16 range.
            let mut src: Vec<f32> = (0..off + n + 3).map(|_| rng.uniform(-3.0, 3.0)).collect();
            if n > 4 {
                src[off + 1] = 1.0e6;
                src[off + 2] = -7.0e4;
                src[off + 3] = 1.0;
            }
            let src_buf = upload(ctx, &src, "cast src");
            let t = Tensor::new(ctx, shape, "cast dst").unwrap();
            // Poison every half (padding included) with 1.0: to_half must write every quad.
            let ones = vec![0x3C00u16; shape.stored()];
            ctx.queue
                .write_buffer(t.buffer(), 0, bytemuck::cast_slice(&ones));
            let d = cast::to_half(ctx, &src_buf, off, &t, tr).unwrap();
            ctx.run(&[&d]).unwrap();
            let got = t.to_f32(ctx).unwrap();
            for (l, &g) in got.iter().enumerate() {
                let v = src[off + flat_index(l, tr)];
                assert!(
                    half_ok(g, v),
                    "{case}: to_half element {l} got {g} from {v}"
                );
            }
            let raw = raw_halves(ctx, &t);
            let (plane, stride) = (shape.plane(), shape.row_stride());
            for r in 0..shape.rows() {
                for e in plane..stride {
                    assert_eq!(raw[r * stride + e], f16::ZERO, "{case}: padding not zeroed");
                }
            }

            // Back to f32 into a poisoned buffer at another offset: the inverse mapping, exact.
            let doff = off + 1;
            let sentinel = -7.5f32;
            let dst = upload(ctx, &vec![sentinel; doff + n + 2], "cast back");
            let d = cast::to_f32(ctx, &t, &dst, doff, tr).unwrap();
            ctx.run(&[&d]).unwrap();
            let back = read_f32(ctx, &dst, doff + n + 2).unwrap();
            let mut want = vec![sentinel; doff + n + 2];
            for (l, &g) in got.iter().enumerate() {
                want[doff + flat_index(l, tr)] = g;
            }
            assert_eq!(back, want, "{case}: to_f32");

            // Round trip of f16-exact values: the original positions come back unchanged.
            let exact: Vec<f32> = (0..n).map(|_| f16r(rng.uniform(-2.0, 2.0))).collect();
            let exact_buf = upload(ctx, &exact, "exact");
            let out = f32_storage(ctx, "round trip", n).unwrap();
            let d1 = cast::to_half(ctx, &exact_buf, 0, &t, tr).unwrap();
            let d2 = cast::to_f32(ctx, &t, &out, 0, tr).unwrap();
            ctx.run(&[&d1, &d2]).unwrap();
            assert_eq!(read_f32(ctx, &out, n).unwrap(), exact, "{case}: round trip");
        }
        // Mutation check: the transposed mapping is not the identity on these shapes.
        let (shape, tr, _) = cast_cases()[3];
        assert!((0..shape.numel()).any(|l| flat_index(l, tr) != l));

        // Errors.
        let t = Tensor::new(ctx, Shape::new(1, 2, 3, 3), "t").unwrap();
        let small = f32_storage(ctx, "small", 17).unwrap();
        assert!(
            cast::to_half(ctx, &small, 0, &t, None).is_err(),
            "{what}: short source"
        );
        let big = f32_storage(ctx, "big", 18).unwrap();
        assert!(
            cast::to_half(ctx, &big, 1, &t, None).is_err(),
            "{what}: offset overrun"
        );
        let bad_tr = Some(Transpose {
            batch: 1,
            rows: 4,
            cols: 4,
        });
        assert!(
            cast::to_half(ctx, &big, 0, &t, bad_tr).is_err(),
            "{what}: transpose size"
        );
        assert!(
            cast::to_f32(ctx, &t, &small, 0, None).is_err(),
            "{what}: short destination"
        );
    }
}

#[test]
fn f32_copy_add_fill() {
    for ctx in contexts() {
        let what = label(ctx);
        let mut rng = Rng::new(9);
        let len = 1003;
        let a: Vec<f32> = (0..len + 20).map(|_| rng.uniform(-5.0, 5.0)).collect();
        let b: Vec<f32> = (0..len + 20).map(|_| rng.uniform(-5.0, 5.0)).collect();
        let (ab, bb) = (upload(ctx, &a, "a"), upload(ctx, &b, "b"));
        let dst0 = vec![-1.0f32; len + 20];
        let dst = upload(ctx, &dst0, "dst");
        let copy = cast::copy_f32(ctx, &ab, 5, &dst, 11, len).unwrap();
        ctx.run(&[&copy]).unwrap();
        let mut want = dst0.clone();
        want[11..11 + len].copy_from_slice(&a[5..5 + len]);
        assert_eq!(read_f32(ctx, &dst, len + 20).unwrap(), want, "{what}: copy");

        let fill = cast::fill_f32(ctx, &dst, 3, 7, 2.5).unwrap();
        ctx.run(&[&fill]).unwrap();
        want[3..10].fill(2.5);
        assert_eq!(read_f32(ctx, &dst, len + 20).unwrap(), want, "{what}: fill");

        let out = f32_storage(ctx, "out", len).unwrap();
        let add = cast::add_f32(ctx, &ab, &bb, &out, len).unwrap();
        ctx.run(&[&add]).unwrap();
        // f32 addition is correctly rounded on every target: exact comparison.
        let sum: Vec<f32> = (0..len).map(|i| a[i] + b[i]).collect();
        assert_eq!(read_f32(ctx, &out, len).unwrap(), sum, "{what}: add");
        let twice = cast::add_f32(ctx, &ab, &ab, &out, len).unwrap();
        ctx.run(&[&twice]).unwrap();
        let dbl: Vec<f32> = (0..len).map(|i| a[i] * 2.0).collect();
        assert_eq!(read_f32(ctx, &out, len).unwrap(), dbl, "{what}: a + a");

        assert!(
            cast::copy_f32(ctx, &ab, 0, &ab, 100, 10).is_err(),
            "{what}: copy alias"
        );
        assert!(
            cast::add_f32(ctx, &ab, &bb, &ab, 10).is_err(),
            "{what}: add alias a"
        );
        assert!(
            cast::add_f32(ctx, &ab, &bb, &bb, 10).is_err(),
            "{what}: add alias b"
        );
        assert!(
            cast::copy_f32(ctx, &ab, 30, &dst, 0, len).is_err(),
            "{what}: overrun"
        );
        assert!(
            cast::fill_f32(ctx, &out, 0, 0, 1.0).is_err(),
            "{what}: empty fill"
        );
        assert!(
            cast::fill_f32(ctx, &out, 1, len, 1.0).is_err(),
            "{what}: fill overrun"
        );
        ctx.check("f32 ops").unwrap();
    }
}
