//! Every kernel family against PyTorch goldens (`tests/fixtures/<family>.safetensors`, written by
//! `tools/golden.py`), on every test context (Vulkan f16, Vulkan packed, GL packed).
//!
//! The fixtures hold fp16-exact inputs and float64 PyTorch outputs (stored as f32), tensors named
//! `<case>/<role>`, and the case parameters as JSON under the metadata key `cases`. A missing
//! fixture fails the test: regenerate with `python3 tools/golden.py`.
mod common;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use common::{assert_close, contexts, label};
use fswap::kernels::concat::copy_channels;
use fswap::kernels::conv::{Conv2d, ConvSpec};
use fswap::kernels::eltwise::{Eltwise, EltwiseOp};
use fswap::kernels::fusion::fusion;
use fswap::kernels::linear::Linear;
use fswap::kernels::modulate::{Modulate, ModulateSpec};
use fswap::kernels::norm::{Affine, Norm, NormSpec, Stats};
use fswap::kernels::pointwise::{transpose_weights, Pointwise};
use fswap::kernels::pool::Pool;
use fswap::kernels::reduce::{l2_normalize, softmax_channels};
use fswap::kernels::resample::Resample;
use fswap::kernels::{Activation, Epilogue, Residual};
use fswap::{Context, Shape, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// The GPU stores every output in fp16: rounding alone costs up to half an ulp, 2^-11 ≈ 4.9e-4
/// relative, while the kernels accumulate in f32, which adds orders of magnitude less (the inputs
/// are fp16-exact in both the golden and the GPU run, so input rounding costs nothing). For the
/// O(1) outputs of these fixtures (every golden is within ±4) 1e-3 relative plus 1e-3 absolute
/// leaves a factor ~2 of margin and nothing more; no case needs a larger absolute tolerance.
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-3;

// ---------------------------------------------------------------------------------------------
// fixture access

/// One family's fixture: the file's bytes and its case list.
struct Fixture {
    family: &'static str,
    bytes: Vec<u8>,
    cases: Vec<Value>,
}

/// One case's parameters (a JSON object with at least `name` and `op`).
#[derive(Clone, Copy)]
struct Case<'a>(&'a Value);

impl<'a> Case<'a> {
    fn get(&self, key: &str) -> &'a Value {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("case {} has no parameter '{key}'", self.name()))
    }
    fn name(&self) -> &'a str {
        self.0["name"].as_str().expect("case name")
    }
    fn op(&self) -> &'a str {
        self.get("op").as_str().expect("case op")
    }
    fn u(&self, key: &str) -> usize {
        self.get(key)
            .as_u64()
            .unwrap_or_else(|| panic!("{}: '{key}' is not an integer", self.name()))
            as usize
    }
    fn f(&self, key: &str) -> f64 {
        self.get(key)
            .as_f64()
            .unwrap_or_else(|| panic!("{}: '{key}' is not a number", self.name()))
    }
    fn b(&self, key: &str) -> bool {
        self.get(key)
            .as_bool()
            .unwrap_or_else(|| panic!("{}: '{key}' is not a bool", self.name()))
    }
    fn s(&self, key: &str) -> &'a str {
        self.get(key)
            .as_str()
            .unwrap_or_else(|| panic!("{}: '{key}' is not a string", self.name()))
    }
}

/// A tensor read from a fixture: PyTorch shape and row-major f32 values.
struct Host {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Host {
    fn f64(&self) -> Vec<f64> {
        self.data.iter().map(|&v| v as f64).collect()
    }
    /// The shape as NCHW, right-aligned (`[F]` → `[1, 1, 1, F]`, `[N, F]` → `[N, 1, 1, F]`).
    fn nchw(&self) -> Shape {
        assert!(self.shape.len() <= 4, "rank {} tensor", self.shape.len());
        let mut d = [1usize; 4];
        if self.shape.len() == 2 {
            d[0] = self.shape[0];
            d[3] = self.shape[1];
        } else {
            d[4 - self.shape.len()..].copy_from_slice(&self.shape);
        }
        Shape::from(d)
    }
}

impl Fixture {
    fn path(family: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("fixtures")
            .join(format!("{family}.safetensors"))
    }

    /// Loads `tests/fixtures/<family>.safetensors`; a missing or malformed file fails the test.
    fn load(family: &'static str) -> Fixture {
        let path = Self::path(family);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "golden fixture {} is missing ({e}): regenerate it with `python3 tools/golden.py` \
                 (needs tools/requirements.txt) and commit it",
                path.display()
            )
        });
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .unwrap_or_else(|e| panic!("{}: not a safetensors file: {e}", path.display()));
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("cases"))
            .unwrap_or_else(|| panic!("{}: no 'cases' in __metadata__", path.display()))
            .clone();
        let cases: Vec<Value> = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("{}: bad cases JSON: {e}", path.display()));
        assert!(!cases.is_empty(), "{}: no cases", path.display());
        Fixture {
            family,
            bytes,
            cases,
        }
    }

    fn cases(&self) -> impl Iterator<Item = Case<'_>> {
        self.cases.iter().map(Case)
    }

    fn try_get(&self, case: Case, role: &str) -> Option<Host> {
        let st = SafeTensors::deserialize(&self.bytes).expect("safetensors");
        let name = format!("{}/{role}", case.name());
        let view = st.tensor(&name).ok()?;
        assert_eq!(
            view.dtype(),
            Dtype::F32,
            "{}: {name} is not f32",
            self.family
        );
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(data.len(), view.shape().iter().product::<usize>(), "{name}");
        Some(Host {
            shape: view.shape().to_vec(),
            data,
        })
    }

    fn get(&self, case: Case, role: &str) -> Host {
        self.try_get(case, role).unwrap_or_else(|| {
            panic!(
                "{}: fixture has no tensor {}/{role}",
                self.family,
                case.name()
            )
        })
    }
}

/// Runs every case of a family through `run`, on every context, and fails once at the end with
/// every disagreement listed (so one bad case does not hide the others). `run` returns the GPU
/// output and the golden for one case on one context.
fn check_family(
    family: &'static str,
    ops: &[&str],
    run: impl Fn(&Context, &Fixture, Case) -> Vec<f32>,
) {
    let fx = Fixture::load(family);
    let known: BTreeSet<&str> = ops.iter().copied().collect();
    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    for case in fx.cases() {
        assert!(
            known.contains(case.op()),
            "{family}: case {} has op '{}' this test does not know ({known:?})",
            case.name(),
            case.op()
        );
        seen.insert(case.op());
        let want = fx.get(case, "y").f64();
        for ctx in contexts() {
            let what = format!("{family}/{} ({}) on {}", case.name(), case.op(), label(ctx));
            let result = catch_unwind(AssertUnwindSafe(|| {
                let got = run(ctx, &fx, case);
                assert_close(&got, &want, ATOL, RTOL, &what);
            }));
            if let Err(e) = result {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| format!("{what}: panicked"));
                failures.push(msg);
            }
        }
    }
    for op in ops {
        assert!(
            seen.contains(op),
            "{family}: fixture has no case for op '{op}'"
        );
    }
    assert!(
        failures.is_empty(),
        "{family}: {} of {} case runs disagree with the PyTorch golden:\n  {}",
        failures.len(),
        fx.cases.len() * contexts().len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// shared helpers

fn upload(ctx: &Context, t: &Host, role: &str) -> Tensor {
    Tensor::from_f32(ctx, t.nchw(), &t.data, role).unwrap()
}

/// The activation a case names (`act`, `slope` for leaky, tensor `slope` for PReLU).
fn activation(fx: &Fixture, case: Case) -> Activation {
    match case.s("act") {
        "none" => Activation::None,
        "relu" => Activation::Relu,
        "relu6" => Activation::Relu6,
        "leaky" => Activation::Leaky(case.f("slope") as f32),
        "prelu" => Activation::PRelu(fx.get(case, "slope").data),
        "sigmoid" => Activation::Sigmoid,
        "tanh" => Activation::Tanh,
        other => panic!("{}: unknown activation {other}", case.name()),
    }
}

fn residual(case: Case) -> Residual {
    match case.s("residual") {
        "none" => Residual::None,
        "after" => Residual::AfterAct,
        "before" => Residual::BeforeAct,
        other => panic!("{}: unknown residual {other}", case.name()),
    }
}

/// The epilogue of a conv / pointwise case: tensors `scale`, `shift`, optional `slope`.
fn epilogue(fx: &Fixture, case: Case) -> Epilogue {
    Epilogue {
        scale: Some(fx.get(case, "scale").data),
        shift: Some(fx.get(case, "shift").data),
        act: activation(fx, case),
    }
}

// ---------------------------------------------------------------------------------------------
// families

#[test]
fn conv_matches_pytorch() {
    check_family("conv", &["conv2d"], |ctx, fx, case| {
        let mut spec = ConvSpec::new(
            case.u("cin"),
            case.u("cout"),
            case.u("kernel"),
            case.u("stride"),
            case.u("pad"),
        )
        .groups(case.u("groups"))
        .dilation(case.u("dilation"));
        match case.s("padding") {
            "zero" => {}
            "reflect" => spec = spec.reflect(),
            other => panic!("unknown padding {other}"),
        }
        let x = fx.get(case, "x");
        let w = fx.get(case, "weight");
        let y = fx.get(case, "y");
        let conv = Conv2d::new(ctx, spec, &w.data, &epilogue(fx, case)).unwrap();
        let xt = upload(ctx, &x, "x");
        let out = y.nchw();
        assert_eq!(spec.output_shape(xt.shape()).unwrap(), out, "output shape");
        let yt = Tensor::new(ctx, out, "y").unwrap();
        let r = fx.try_get(case, "r").map(|r| upload(ctx, &r, "r"));
        let d = conv
            .bind(ctx, &xt, &yt, r.as_ref().map(|r| (r, residual(case))))
            .unwrap();
        ctx.run(&[&d]).unwrap();
        yt.to_f32(ctx).unwrap()
    });
}

#[test]
fn pointwise_matches_pytorch() {
    check_family("pointwise", &["pointwise"], |ctx, fx, case| {
        let (n, cin, cout) = (case.u("n"), case.u("cin"), case.u("cout"));
        let w = fx.get(case, "weight");
        let epi = epilogue(fx, case);
        let pw = if case.b("per_sample") {
            // One [cout, cin] matrix per sample, laid out as the kernel's [n, cin, 1, cout].
            assert_eq!(w.shape, [n, cout, cin]);
            let t: Vec<f32> = w
                .data
                .chunks(cout * cin)
                .flat_map(|m| transpose_weights(m, cin, cout))
                .collect();
            let wt = Tensor::from_f32(ctx, [n, cin, 1, cout], &t, "weights").unwrap();
            Pointwise::with_weights(ctx, wt, &epi).unwrap()
        } else {
            Pointwise::new(ctx, cin, cout, &w.data, &epi).unwrap()
        };
        let xt = upload(ctx, &fx.get(case, "x"), "x");
        let out = fx.get(case, "y").nchw();
        assert_eq!(pw.output_shape(xt.shape()).unwrap(), out, "output shape");
        let yt = Tensor::new(ctx, out, "y").unwrap();
        let r = fx.try_get(case, "r").map(|r| upload(ctx, &r, "r"));
        let d = pw
            .bind(ctx, &xt, &yt, r.as_ref().map(|r| (r, residual(case))))
            .unwrap();
        ctx.run(&[&d]).unwrap();
        yt.to_f32(ctx).unwrap()
    });
}

#[test]
fn linear_matches_pytorch() {
    check_family("linear", &["linear"], |ctx, fx, case| {
        let x = fx.get(case, "x");
        let xs = x.nchw();
        assert_eq!(xs.c * xs.h * xs.w, case.u("in_features"));
        let out_f = case.u("out_features");
        let epi = Epilogue {
            scale: None,
            shift: fx.try_get(case, "bias").map(|b| b.data),
            act: activation(fx, case),
        };
        let w = fx.get(case, "weight");
        let lin = Linear::new(ctx, (xs.c, xs.h, xs.w), out_f, &w.data, &epi).unwrap();
        let xt = upload(ctx, &x, "x");
        let yt = Tensor::new(ctx, Shape::vector(xs.n, out_f), "y").unwrap();
        ctx.run(&[&lin.bind(ctx, &xt, &yt).unwrap()]).unwrap();
        yt.to_f32(ctx).unwrap()
    });
}

#[test]
fn modulate_matches_pytorch() {
    check_family("modulate", &["modulate"], |ctx, fx, case| {
        let (n, o, i) = (case.u("n"), case.u("out_features"), case.u("in_features"));
        let spec = ModulateSpec {
            cin: i,
            cout: o,
            style_bias: 1.0, // the golden's (1 + s) convention
            demodulate: case.b("demod"),
            eps: case.f("eps") as f32,
        };
        let m = Modulate::new(ctx, spec, &fx.get(case, "weight").data).unwrap();
        let st = upload(ctx, &fx.get(case, "style"), "style");
        let wt = Tensor::new(ctx, m.output_shape(n), "modulated").unwrap();
        ctx.run(&[&m.bind(ctx, &st, 0, &wt).unwrap()]).unwrap();
        // The kernel writes [n, cin, 1, cout] (pointwise layout); the golden is [n, out, in].
        let got = wt.to_f32(ctx).unwrap();
        let mut t = vec![0.0; n * o * i];
        for b in 0..n {
            for oo in 0..o {
                for ii in 0..i {
                    t[(b * o + oo) * i + ii] = got[(b * i + ii) * o + oo];
                }
            }
        }
        t
    });
}

#[test]
fn norm_matches_pytorch() {
    check_family(
        "norm",
        &["instance_norm", "adain", "cond_batch_norm"],
        |ctx, fx, case| {
            let x = fx.get(case, "x");
            let (n, c) = (case.u("n"), case.u("c"));
            let gamma = fx.get(case, "gamma");
            let beta = fx.get(case, "beta");
            // Per-sample γ and β travel in one style row per sample: [γ (c) | β (c)].
            let style_affine = || {
                assert_eq!(gamma.shape, [n, c]);
                let mut s = Vec::with_capacity(2 * n * c);
                for b in 0..n {
                    s.extend_from_slice(&gamma.data[b * c..(b + 1) * c]);
                    s.extend_from_slice(&beta.data[b * c..(b + 1) * c]);
                }
                let affine = Affine::Style {
                    gamma_offset: 0,
                    beta_offset: c,
                    gamma_bias: 0.0,
                };
                (
                    affine,
                    Some(Tensor::from_f32(ctx, Shape::vector(n, 2 * c), &s, "style").unwrap()),
                )
            };
            let (stats, (affine, style)) = match case.op() {
                "instance_norm" => (
                    Stats::Instance,
                    (
                        Affine::Static {
                            gamma: gamma.data.clone(),
                            beta: beta.data.clone(),
                        },
                        None,
                    ),
                ),
                "adain" => (Stats::Instance, style_affine()),
                "cond_batch_norm" => (
                    Stats::Running {
                        mean: fx.get(case, "running_mean").data,
                        var: fx.get(case, "running_var").data,
                    },
                    style_affine(),
                ),
                other => unreachable!("{other}"),
            };
            let norm = Norm::new(
                ctx,
                NormSpec {
                    channels: c,
                    stats,
                    affine,
                    eps: case.f("eps") as f32,
                    act: activation(fx, case),
                },
            )
            .unwrap();
            let xt = upload(ctx, &x, "x");
            let yt = Tensor::new(ctx, xt.shape(), "y").unwrap();
            ctx.run(&[&norm.bind(ctx, &xt, style.as_ref(), &yt).unwrap()])
                .unwrap();
            yt.to_f32(ctx).unwrap()
        },
    );
}

#[test]
fn fusion_matches_pytorch() {
    check_family("fusion", &["blend"], |ctx, fx, case| {
        let a = upload(ctx, &fx.get(case, "a"), "a");
        let b = upload(ctx, &fx.get(case, "b"), "b");
        let m = upload(ctx, &fx.get(case, "mask"), "mask");
        let y = Tensor::new(ctx, a.shape(), "y").unwrap();
        ctx.run(&[&fusion(ctx, &a, &b, &m, case.b("sigmoid"), &y).unwrap()])
            .unwrap();
        y.to_f32(ctx).unwrap()
    });
}

#[test]
fn resample_matches_pytorch() {
    check_family(
        "resample",
        &["bilinear", "nearest", "pixel_shuffle"],
        |ctx, fx, case| {
            let mode = match case.op() {
                "bilinear" => Resample::Bilinear {
                    align_corners: case.b("align_corners"),
                },
                "nearest" => Resample::Nearest,
                "pixel_shuffle" => Resample::PixelShuffle(case.u("factor")),
                other => unreachable!("{other}"),
            };
            let x = upload(ctx, &fx.get(case, "x"), "x");
            let out = fx.get(case, "y").nchw();
            assert_eq!(
                mode.output_shape(x.shape(), (out.h, out.w)).unwrap(),
                out,
                "output shape"
            );
            let y = Tensor::new(ctx, out, "y").unwrap();
            ctx.run(&[&mode.bind(ctx, &x, &y).unwrap()]).unwrap();
            y.to_f32(ctx).unwrap()
        },
    );
}

#[test]
fn pool_matches_pytorch() {
    check_family(
        "pool",
        &["max_pool", "avg_pool", "global_avg_pool"],
        |ctx, fx, case| {
            let pool = match case.op() {
                "max_pool" => Pool::Max {
                    k: case.u("kernel"),
                    stride: case.u("stride"),
                    pad: case.u("pad"),
                },
                "avg_pool" => Pool::Avg {
                    k: case.u("kernel"),
                    stride: case.u("stride"),
                    pad: case.u("pad"),
                    count_include_pad: case.b("count_include_pad"),
                },
                "global_avg_pool" => Pool::GlobalAvg,
                other => unreachable!("{other}"),
            };
            let x = upload(ctx, &fx.get(case, "x"), "x");
            let out = fx.get(case, "y").nchw();
            assert_eq!(pool.output_shape(x.shape()).unwrap(), out, "output shape");
            let y = Tensor::new(ctx, out, "y").unwrap();
            ctx.run(&[&pool.bind(ctx, &x, &y).unwrap()]).unwrap();
            y.to_f32(ctx).unwrap()
        },
    );
}

#[test]
fn eltwise_matches_pytorch() {
    check_family("eltwise", &["add", "mul", "affine"], |ctx, fx, case| {
        let act = activation(fx, case);
        let (op, a, b) = match case.op() {
            "affine" => (
                Eltwise::Affine {
                    scale: fx.get(case, "scale").data,
                    shift: fx.get(case, "shift").data,
                },
                upload(ctx, &fx.get(case, "x"), "x"),
                None,
            ),
            name => (
                if name == "add" {
                    Eltwise::Add
                } else {
                    Eltwise::Mul
                },
                upload(ctx, &fx.get(case, "a"), "a"),
                Some(upload(ctx, &fx.get(case, "b"), "b")),
            ),
        };
        let k = EltwiseOp::new(op, act).unwrap();
        let y = Tensor::new(ctx, a.shape(), "y").unwrap();
        ctx.run(&[&k.bind(ctx, &a, b.as_ref(), None, &y).unwrap()])
            .unwrap();
        y.to_f32(ctx).unwrap()
    });
}

#[test]
fn concat_matches_pytorch() {
    check_family("concat", &["concat"], |ctx, fx, case| {
        let out = fx.get(case, "y").nchw();
        let y = Tensor::new(ctx, out, "y").unwrap();
        let n_parts = case.get("parts").as_array().expect("parts").len();
        // Keep every part alive until the run: a dropped tensor's buffer returns to the pool and
        // the next upload of the same size would overwrite it before the copies execute.
        let parts: Vec<Tensor> = (0..n_parts)
            .map(|p| upload(ctx, &fx.get(case, &format!("part{p}")), "part"))
            .collect();
        let mut offset = 0;
        let mut ds = Vec::new();
        for t in &parts {
            ds.push(copy_channels(ctx, t, &y, offset).unwrap());
            offset += t.shape().c;
        }
        assert_eq!(offset, out.c, "parts fill the output");
        ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
        y.to_f32(ctx).unwrap()
    });
}

#[test]
fn reduce_matches_pytorch() {
    check_family(
        "reduce",
        &["l2_normalize", "softmax_channels"],
        |ctx, fx, case| {
            let x = upload(ctx, &fx.get(case, "x"), "x");
            let y = Tensor::new(ctx, x.shape(), "y").unwrap();
            let d = match case.op() {
                "l2_normalize" => l2_normalize(ctx, &x, case.f("eps") as f32, &y).unwrap(),
                "softmax_channels" => softmax_channels(ctx, &x, &y).unwrap(),
                other => unreachable!("{other}"),
            };
            ctx.run(&[&d]).unwrap();
            y.to_f32(ctx).unwrap()
        },
    );
}
