//! Every backward kernel against PyTorch autograd goldens (`tests/fixtures/grads_kernels/
//! <family>.safetensors`, written by `tools/golden.py`), on every test context (Vulkan f16, Vulkan
//! packed, GL packed).
//!
//! A case is a small PyTorch graph in float64: fp16-exact inputs and parameters, a seeded upstream
//! gradient dY (N(0, 1) rounded to fp16), and `torch.autograd.grad(Σ y·dY)` for every input and
//! parameter (`<case>/grad.<role>`), plus, for a training batch norm, the updated running
//! statistics (`<case>/running_*_out`). The engine runs the same layer forward and backward the way
//! the trainer does: through a one-layer autograd [`Graph`] where the graph has the layer (conv,
//! predicted depthwise / pointwise kernels, modulation, batch norm, linear, PReLU, multiply, fusion,
//! resample, pool, concat, L2 normalise), and through the kernel's public backward API where only
//! other callers use it (instance norm / AdaIN / conditional BN, activations alone, broadcast add,
//! constant affine, sigmoid fusion, softmax). The losses (L1 / MSE with their mask modes, the
//! background mask loss, SSIM, identity) are checked the same way: their gradient seed
//! `scale·∂total/∂prediction` against autograd of the same formula, and their per-sample values and
//! batch total (`values_out`, `total_out`). A missing fixture fails the test: regenerate with
//! `python3 tools/golden.py`.
//!
//! **Tolerance**, per gradient tensor `g` (golden), element-wise
//! `|ours − g| ≤ TOL_MAX·max|g| + TOL_REL·|g_i|`, from how the engine stores things:
//! activation gradients are fp16 (½ ulp = 2⁻¹¹ ≈ 4.9e-4 relative on store), and the backward reads
//! fp16 intermediates (the forward output an activation's derivative is taken from, the dZ between
//! an activation and its convolution), each another 2⁻¹¹ of the terms it enters. A sum over
//! cancelling terms (dW, dγ, a channel sum) carries those relative errors of its *terms*, which for
//! random data are of the order of the tensor's largest element, hence the part relative to
//! `max|g|`; f32 accumulation adds orders of magnitude less. Three fp16 roundings of 2⁻¹¹ make
//! 1.5e-3; [`TOL_MAX`] = [`TOL_REL`] = 2e-3 is that with a little margin. Each family prints its
//! worst error as a fraction of the bound: measured on lavapipe (f16 and packed) and llvmpipe GL,
//! at most 0.33 (sigmoid's derivative `y(1 − y)` read from an fp16 `y`), most families below 0.2.
//! A wrong adjoint misses by O(1) of `max|g|`, and [`perturbed_seed_fails`] checks that a 1% error
//! is caught.
mod common;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Mutex;

use common::{contexts, label};
use fswap::autograd::{Graph, NormMode, ParamKind, Var};
use fswap::kernels::conv::{ConvSpec, Padding};
use fswap::kernels::conv_grad::{f32_storage, read_f32};
use fswap::kernels::eltwise::{Eltwise, EltwiseOp};
use fswap::kernels::eltwise_grad::{activation_backward, add_backward, affine_backward};
use fswap::kernels::fusion::fusion;
use fswap::kernels::fusion_grad::fusion_backward;
use fswap::kernels::loss::{
    Distance, IdentityLoss, IdentityReduction, IdentitySpec, LossOut, MaskApply, MaskLoss,
    MaskLossSpec, Normalize, PixelLoss, PixelSpec, SsimForm, SsimLoss, SsimSpec,
};
use fswap::kernels::modulate::ModulateSpec;
use fswap::kernels::norm::{Affine, NormSpec, Stats};
use fswap::kernels::norm_grad::{NormGrad, NormParamGrads};
use fswap::kernels::pointwise::transpose_weights;
use fswap::kernels::pool::Pool;
use fswap::kernels::reduce::softmax_channels;
use fswap::kernels::reduce_grad::softmax_channels_grad;
use fswap::kernels::resample::Resample;
use fswap::kernels::Activation;
use fswap::{Context, Shape, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// Bound relative to the gradient tensor's largest magnitude (see the module docs).
const TOL_MAX: f64 = 2e-3;
/// Bound relative to each element.
const TOL_REL: f64 = 2e-3;

// ---------------------------------------------------------------------------------------------
// fixture access

/// One family's fixture: the file's bytes and its case list.
struct Fixture {
    family: &'static str,
    bytes: Vec<u8>,
    cases: Vec<Value>,
}

/// One case's parameters (a JSON object with at least `name`, `op` and `grads`).
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
    /// The roles with a golden gradient.
    fn grads(&self) -> Vec<&'a str> {
        self.get("grads")
            .as_array()
            .expect("grads list")
            .iter()
            .map(|v| v.as_str().expect("role"))
            .collect()
    }
}

/// A tensor read from a fixture: PyTorch shape and row-major f32 values.
#[derive(Clone)]
struct Host {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Host {
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
            .join("tests/fixtures/grads_kernels")
            .join(format!("{family}.safetensors"))
    }

    /// Loads `tests/fixtures/grads_kernels/<family>.safetensors`; a missing or malformed file
    /// fails the test.
    fn load(family: &'static str) -> Fixture {
        let path = Self::path(family);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "backward golden {} is missing ({e}): regenerate it with `python3 tools/golden.py` \
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

    /// The state outputs a case records (`<case>/<name>_out`), by name.
    fn state_roles(&self, case: Case) -> Vec<String> {
        let st = SafeTensors::deserialize(&self.bytes).expect("safetensors");
        let prefix = format!("{}/", case.name());
        let mut v: Vec<String> = st
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
            .filter(|r| r.ends_with("_out"))
            .collect();
        v.sort();
        v
    }
}

// ---------------------------------------------------------------------------------------------
// comparison

/// What one run of a case produced: `(role, values)` with roles `grad.<input>` and `<state>_out`,
/// values in the golden's layout.
type Outputs = Vec<(String, Vec<f32>)>;

/// The worst error of one output against its golden, as a fraction of the bound.
struct Score {
    ratio: f64,
    max_abs: f64,
    scale: f64,
    worst: usize,
}

fn score(got: &[f32], want: &[f32]) -> Score {
    assert_eq!(got.len(), want.len(), "length");
    let scale = want.iter().fold(0f64, |m, v| m.max((*v as f64).abs()));
    let mut s = Score {
        ratio: 0.0,
        max_abs: 0.0,
        scale,
        worst: 0,
    };
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = if g.is_finite() {
            (g as f64 - w as f64).abs()
        } else {
            f64::INFINITY
        };
        let bound = TOL_MAX * scale + TOL_REL * (w as f64).abs();
        // A tensor that is exactly zero in the golden must be (near) zero here too.
        let r = if bound > 0.0 {
            err / bound
        } else if err <= 1e-6 {
            0.0
        } else {
            f64::INFINITY
        };
        s.max_abs = s.max_abs.max(err);
        if r > s.ratio {
            s.ratio = r;
            s.worst = i;
        }
    }
    s
}

/// Compares one run's outputs with the case's goldens; returns the worst ratio and a message per
/// failing output.
fn compare(fx: &Fixture, case: Case, out: &Outputs, what: &str) -> (f64, String, Vec<String>) {
    let mut roles: Vec<String> = case.grads().iter().map(|r| format!("grad.{r}")).collect();
    roles.extend(fx.state_roles(case));
    let mut worst = (0.0, String::new());
    let mut failures = Vec::new();
    for role in &roles {
        let want = fx.get(case, role);
        let Some((_, got)) = out.iter().find(|(r, _)| r == role) else {
            failures.push(format!("{what}: no output for {role}"));
            continue;
        };
        let s = score(got, &want.data);
        if s.ratio > worst.0 {
            worst = (s.ratio, role.clone());
        }
        if s.ratio > 1.0 {
            failures.push(format!(
                "{what} {role}: element {} got {} want {} (max abs err {:.3e}, scale {:.3e}, \
                 {:.2}x the bound)",
                s.worst, got[s.worst], want.data[s.worst], s.max_abs, s.scale, s.ratio
            ));
        }
    }
    if let Some((extra, _)) = out.iter().find(|(r, _)| !roles.contains(r)) {
        failures.push(format!("{what}: output {extra} has no golden"));
    }
    (worst.0, worst.1, failures)
}

/// Runs every case of a family through `run`, on every context, and fails once at the end with
/// every disagreement listed.
fn check_family(
    family: &'static str,
    ops: &[&str],
    run: impl Fn(&Context, &Fixture, Case, &Host) -> Outputs,
) {
    let fx = Fixture::load(family);
    let known: BTreeSet<&str> = ops.iter().copied().collect();
    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    let mut worst = (0.0f64, String::new());
    for case in fx.cases() {
        assert!(
            known.contains(case.op()),
            "{family}: case {} has op '{}' this test does not know ({known:?})",
            case.name(),
            case.op()
        );
        seen.insert(case.op());
        let dy = fx.get(case, "dy");
        for ctx in contexts() {
            let what = format!("{family}/{} ({}) on {}", case.name(), case.op(), label(ctx));
            let result = catch_unwind(AssertUnwindSafe(|| {
                let out = run(ctx, &fx, case, &dy);
                compare(&fx, case, &out, &what)
            }));
            match result {
                Ok((ratio, role, fails)) => {
                    if ratio > worst.0 {
                        worst = (ratio, format!("{}/{role} on {}", case.name(), label(ctx)));
                    }
                    failures.extend(fails);
                }
                Err(e) => failures.push(
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| format!("{what}: panicked")),
                ),
            }
        }
    }
    for op in ops {
        assert!(
            seen.contains(op),
            "{family}: fixture has no case for op '{op}'"
        );
    }
    let line = format!(
        "{family}: {} cases x {} contexts, worst error/bound {:.3} at {}",
        fx.cases.len(),
        contexts().len(),
        worst.0,
        if worst.1.is_empty() {
            "(bit-exact everywhere)"
        } else {
            &worst.1
        }
    );
    eprintln!("{line}");
    assert!(
        failures.is_empty(),
        "{family}: {} disagreements with the PyTorch golden:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// helpers

fn upload(ctx: &Context, t: &Host, role: &str) -> Tensor {
    Tensor::from_f32(ctx, t.nchw(), &t.data, role).unwrap()
}

/// The activation a case names (`act`, `slope` for leaky).
fn activation(case: Case) -> Activation {
    match case.s("act") {
        "none" => Activation::None,
        "relu" => Activation::Relu,
        "relu6" => Activation::Relu6,
        "leaky" => Activation::Leaky(case.f("slope") as f32),
        "sigmoid" => Activation::Sigmoid,
        "tanh" => Activation::Tanh,
        other => panic!("{}: unknown activation {other}", case.name()),
    }
}

/// A one-layer training graph: leaves and parameters by golden role, then [`Layer::run`].
struct Layer<'c> {
    g: Graph<'c>,
    inputs: Vec<(String, Var)>,
    params: Vec<String>,
}

impl<'c> Layer<'c> {
    fn new(ctx: &'c Context) -> Self {
        Layer {
            g: Graph::new(ctx),
            inputs: Vec::new(),
            params: Vec::new(),
        }
    }

    /// A leaf holding `data` in `shape`; its gradient is reported as `grad.<role>` when
    /// `requires_grad`.
    fn leaf(&mut self, role: &str, shape: Shape, data: &[f32], requires_grad: bool) -> Var {
        let v = self.g.input(shape, role, requires_grad).unwrap();
        self.g.tensor(v).write_f32(self.g.ctx(), data).unwrap();
        if requires_grad {
            self.inputs.push((role.to_string(), v));
        }
        v
    }

    /// A leaf from the fixture tensor `role`, in its NCHW shape.
    fn input(&mut self, fx: &Fixture, case: Case, role: &str) -> Var {
        let t = fx.get(case, role);
        self.leaf(role, t.nchw(), &t.data, true)
    }

    /// A trainable parameter from the fixture tensor `role` (PyTorch shape and layout).
    fn param(&mut self, fx: &Fixture, case: Case, role: &str) -> fswap::autograd::ParamId {
        let t = fx.get(case, role);
        self.params.push(role.to_string());
        self.g
            .add_param(role, &t.shape, &t.data, ParamKind::Weight)
            .unwrap()
    }

    /// Seeds `y` with `dy` (already in the engine's layout), runs sync, forward and backward
    /// once, and reads every requested gradient.
    fn run(&self, y: Var, dy: &[f32]) -> Outputs {
        let ctx = self.g.ctx();
        let seed = Tensor::from_f32(ctx, self.g.shape(y), dy, "dy").unwrap();
        let grads = self.g.backward(&[(y, seed)]).unwrap();
        let mut all = self.g.sync().refs();
        all.extend(self.g.forward().refs());
        all.extend(grads.plan.refs());
        ctx.run(&all).unwrap();
        ctx.wait().unwrap();
        LABELS
            .lock()
            .unwrap()
            .extend(grads.plan.dispatches.iter().map(|d| d.label.clone()));
        let mut out = Vec::new();
        for (role, v) in &self.inputs {
            let t = grads
                .input(*v)
                .unwrap_or_else(|| panic!("no gradient reached {role}"));
            out.push((format!("grad.{role}"), t.to_f32(ctx).unwrap()));
        }
        for role in &self.params {
            let p = self.g.param_named(role).unwrap();
            out.push((format!("grad.{role}"), p.read_grad(ctx).unwrap()));
        }
        out
    }
}

/// The labels of every backward dispatch a [`Layer`] ran (which kernel paths the cases reached).
static LABELS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// `[n, rows, cols]` matrices transposed to `[n, cols, rows]`.
fn transpose_batch(v: &[f32], n: usize, rows: usize, cols: usize) -> Vec<f32> {
    v.chunks(rows * cols)
        .take(n)
        .flat_map(|m| transpose_weights(m, cols, rows))
        .collect()
}

/// Runs `ds` and reads the listed fp16 tensors and f32 buffers as outputs.
fn run_direct(
    ctx: &Context,
    ds: &[fswap::gpu::Dispatch],
    tensors: &[(&str, &Tensor)],
    buffers: &[(&str, &wgpu::Buffer, usize)],
) -> Outputs {
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    ctx.wait().unwrap();
    let mut out = Vec::new();
    for (role, t) in tensors {
        out.push((format!("grad.{role}"), t.to_f32(ctx).unwrap()));
    }
    for (role, b, len) in buffers {
        out.push((format!("grad.{role}"), read_f32(ctx, b, *len).unwrap()));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// families

fn conv_spec(case: Case) -> ConvSpec {
    let (cin, cout, k, s) = (
        case.u("cin"),
        case.u("cout"),
        case.u("kernel"),
        case.u("stride"),
    );
    let g = case.u("groups");
    match case.s("padding") {
        "zero" => ConvSpec::new(cin, cout, k, s, case.u("pad")).groups(g),
        "reflect" => ConvSpec::new(cin, cout, k, s, case.u("pad"))
            .groups(g)
            .reflect(),
        "same" => {
            let spec = ConvSpec::new(cin, cout, k, s, 0)
                .groups(g)
                .same(case.u("h"), case.u("w"));
            let before = case.get("pad_before");
            let after = case.get("pad_after");
            let b = |v: &Value, i: usize| v[i].as_u64().unwrap() as usize;
            assert_eq!(spec.pad, (b(before, 0), b(before, 1)), "'same' split");
            assert_eq!(
                (spec.pad.0 + spec.pad_extra.0, spec.pad.1 + spec.pad_extra.1),
                (b(after, 0), b(after, 1)),
                "'same' split"
            );
            spec
        }
        other => panic!("unknown padding {other}"),
    }
}

#[test]
fn conv_backward_matches_pytorch() {
    check_family("conv", &["conv2d"], |ctx, fx, case, dy| {
        let spec = conv_spec(case);
        assert!(spec.padding == Padding::Reflect || case.s("padding") != "reflect");
        let mut l = Layer::new(ctx);
        let x = l.input(fx, case, "x");
        let w = l.param(fx, case, "weight");
        let b = case.b("bias").then(|| l.param(fx, case, "bias"));
        let y = l.g.conv(x, spec, w, b, activation(case)).unwrap();
        assert_eq!(l.g.shape(y), dy.nchw(), "output shape");
        l.run(y, &dy.data)
    });
    // Both dW paths ran: one invocation per weight (small dY) and the tiled, chunked reduction.
    let labels = LABELS.lock().unwrap();
    for path in ["dW small conv", "dW conv"] {
        assert!(
            labels.iter().any(|l| l.starts_with(path)),
            "no case reached the '{path}' path"
        );
    }
}

#[test]
fn dynamic_kernels_backward_matches_pytorch() {
    check_family(
        "dynamic",
        &[
            "depthwise_dynamic",
            "pointwise_dynamic",
            "modulated_pointwise",
        ],
        |ctx, fx, case, dy| {
            let mut l = Layer::new(ctx);
            let x = l.input(fx, case, "x");
            let act = activation(case);
            match case.op() {
                "depthwise_dynamic" => {
                    let (c, k) = (case.u("c"), case.u("kernel"));
                    let spec = ConvSpec::depthwise(c, k, case.u("stride"), case.u("pad"));
                    let w = l.input(fx, case, "weight");
                    let y = l.g.conv_dynamic(x, spec, w, act).unwrap();
                    l.run(y, &dy.data)
                }
                "pointwise_dynamic" => {
                    // PyTorch [n_w, cout, cin] → the engine's [n_w, cin, 1, cout].
                    let wt = fx.get(case, "weight");
                    let (nw, cout, cin) = (wt.shape[0], wt.shape[1], wt.shape[2]);
                    let data = transpose_batch(&wt.data, nw, cout, cin);
                    let w = l.leaf("weight", Shape::new(nw, cin, 1, cout), &data, true);
                    let y = l.g.pointwise_dynamic(x, w, act).unwrap();
                    let mut out = l.run(y, &dy.data);
                    for (role, v) in &mut out {
                        if role == "grad.weight" {
                            *v = transpose_batch(v, nw, cin, cout);
                        }
                    }
                    out
                }
                "modulated_pointwise" => {
                    let (n, cin, cout) = (case.u("n"), case.u("cin"), case.u("cout"));
                    let st = fx.get(case, "style");
                    let s = l.leaf("style", Shape::vector(n, cin), &st.data, true);
                    let w = l.param(fx, case, "weight");
                    let spec = ModulateSpec {
                        cin,
                        cout,
                        style_bias: case.f("style_bias") as f32,
                        demodulate: case.b("demod"),
                        eps: case.f("eps") as f32,
                    };
                    let m = l.g.modulate(s, w, spec).unwrap();
                    let y = l.g.pointwise_dynamic(x, m, act).unwrap();
                    l.run(y, &dy.data)
                }
                other => unreachable!("{other}"),
            }
        },
    );
}

#[test]
fn modulate_backward_matches_pytorch() {
    check_family("modulate", &["modulate"], |ctx, fx, case, dy| {
        let (n, o, i) = (case.u("n"), case.u("out_features"), case.u("in_features"));
        let mut l = Layer::new(ctx);
        let st = fx.get(case, "style");
        let s = l.leaf("style", Shape::vector(n, i), &st.data, true);
        let w = l.param(fx, case, "weight");
        let spec = ModulateSpec {
            cin: i,
            cout: o,
            style_bias: case.f("style_bias") as f32,
            demodulate: case.b("demod"),
            eps: case.f("eps") as f32,
        };
        let y = l.g.modulate(s, w, spec).unwrap();
        // The golden's y is [n, out, in]; the engine's modulated kernels are [n, in, 1, out].
        assert_eq!(l.g.shape(y), Shape::new(n, i, 1, o));
        l.run(y, &transpose_batch(&dy.data, n, o, i))
    });
}

#[test]
fn norm_backward_matches_pytorch() {
    check_family(
        "norm",
        &["batch_norm", "instance_norm", "adain", "cond_batch_norm"],
        |ctx, fx, case, dy| {
            if case.op() == "batch_norm" {
                let mut l = Layer::new(ctx);
                l.g.norm_mode = match case.s("mode") {
                    "train" => NormMode::Train,
                    "eval" => NormMode::Eval,
                    other => panic!("mode {other}"),
                };
                let x = l.input(fx, case, "x");
                let get = |r: &str| fx.get(case, r).data;
                let bn =
                    l.g.bn_params(
                        ["gamma", "beta", "running_mean", "running_var"],
                        &get("gamma"),
                        &get("beta"),
                        &get("running_mean"),
                        &get("running_var"),
                    )
                    .unwrap();
                l.params = vec!["gamma".into(), "beta".into()];
                let y = l.g.batch_norm(x, bn, activation(case)).unwrap();
                let mut out = l.run(y, &dy.data);
                for r in ["running_mean", "running_var"] {
                    let p = l.g.param_named(r).unwrap();
                    out.push((format!("{r}_out"), p.read(ctx).unwrap()));
                }
                return out;
            }
            let (n, c) = (case.u("n"), case.u("c"));
            let style_affine = Affine::Style {
                gamma_offset: 0,
                beta_offset: c,
                gamma_bias: case.f("gamma_bias") as f32,
            };
            let (stats, affine) = match case.op() {
                "instance_norm" => (
                    Stats::Instance,
                    Affine::Static {
                        gamma: fx.get(case, "gamma").data,
                        beta: fx.get(case, "beta").data,
                    },
                ),
                "adain" => (Stats::Instance, style_affine),
                "cond_batch_norm" => (
                    Stats::Running {
                        mean: fx.get(case, "running_mean").data,
                        var: fx.get(case, "running_var").data,
                    },
                    style_affine,
                ),
                other => unreachable!("{other}"),
            };
            let spec = NormSpec {
                channels: c,
                stats,
                affine,
                eps: case.f("eps") as f32,
                act: activation(case),
            };
            let ng = NormGrad::new(ctx, spec).unwrap();
            let x = upload(ctx, &fx.get(case, "x"), "x");
            let style = fx
                .try_get(case, "style")
                .map(|s| Tensor::from_f32(ctx, Shape::vector(n, 2 * c), &s.data, "style").unwrap());
            let y = Tensor::new(ctx, x.shape(), "y").unwrap();
            let dyt = upload(ctx, dy, "dy");
            let dx = Tensor::new(ctx, x.shape(), "dx").unwrap();
            let mut ds = ng.bind_forward(ctx, &x, style.as_ref(), &y).unwrap();
            if let Some(s) = &style {
                let dstyle = Tensor::new(ctx, s.shape(), "dstyle").unwrap();
                ds.extend(
                    ng.bind_backward(
                        ctx,
                        &y,
                        &dyt,
                        &x,
                        Some(s),
                        &dx,
                        NormParamGrads::Style(&dstyle),
                    )
                    .unwrap(),
                );
                run_direct(ctx, &ds, &[("x", &dx), ("style", &dstyle)], &[])
            } else {
                let dg = f32_storage(ctx, "dgamma", c).unwrap();
                let db = f32_storage(ctx, "dbeta", c).unwrap();
                let grads = NormParamGrads::Static {
                    dgamma: &dg,
                    dbeta: &db,
                };
                ds.extend(
                    ng.bind_backward(ctx, &y, &dyt, &x, None, &dx, grads)
                        .unwrap(),
                );
                run_direct(
                    ctx,
                    &ds,
                    &[("x", &dx)],
                    &[("gamma", &dg, c), ("beta", &db, c)],
                )
            }
        },
    );
}

#[test]
fn linear_backward_matches_pytorch() {
    check_family("linear", &["linear"], |ctx, fx, case, dy| {
        let mut l = Layer::new(ctx);
        let x = l.input(fx, case, "x");
        let w = l.param(fx, case, "weight");
        let b = case.b("bias").then(|| l.param(fx, case, "bias"));
        let y = l.g.linear(x, w, b, activation(case)).unwrap();
        l.run(y, &dy.data)
    });
}

#[test]
fn eltwise_backward_matches_pytorch() {
    check_family(
        "eltwise",
        &[
            "activation",
            "prelu",
            "prelu_twice",
            "mul",
            "add_broadcast",
            "affine",
        ],
        |ctx, fx, case, dy| match case.op() {
            "activation" => {
                // The forward output the backward reads, from the engine's own forward.
                let act = activation(case);
                let x = upload(ctx, &fx.get(case, "x"), "x");
                let y = Tensor::new(ctx, x.shape(), "y").unwrap();
                let identity = Eltwise::Affine {
                    scale: vec![1.0],
                    shift: vec![0.0],
                };
                let fwd = EltwiseOp::new(identity, act.clone())
                    .unwrap()
                    .bind(ctx, &x, None, None, &y)
                    .unwrap();
                let dyt = upload(ctx, dy, "dy");
                let dx = Tensor::new(ctx, x.shape(), "dx").unwrap();
                let bwd = activation_backward(ctx, &act, &y, &dyt, &dx).unwrap();
                run_direct(ctx, &[fwd, bwd], &[("x", &dx)], &[])
            }
            "prelu" => {
                let mut l = Layer::new(ctx);
                let x = l.input(fx, case, "x");
                let s = l.param(fx, case, "slope");
                let y = l.g.prelu(x, s).unwrap();
                l.run(y, &dy.data)
            }
            "prelu_twice" => {
                let mut l = Layer::new(ctx);
                let x = l.input(fx, case, "x");
                let g = l.input(fx, case, "g");
                let s = l.param(fx, case, "slope");
                let h = l.g.prelu(x, s).unwrap();
                let hg = l.g.mul(h, g).unwrap();
                let sum = l.g.add(hg, x).unwrap();
                let y = l.g.prelu(sum, s).unwrap();
                l.run(y, &dy.data)
            }
            "mul" => {
                let mut l = Layer::new(ctx);
                let a = l.input(fx, case, "a");
                let g = l.input(fx, case, "g");
                let y = l.g.mul(a, g).unwrap();
                l.run(y, &dy.data)
            }
            "add_broadcast" => {
                let dyt = upload(ctx, dy, "dy");
                let b = fx.get(case, "b");
                let db = Tensor::new(ctx, b.nchw(), "db").unwrap();
                let ds = add_backward(ctx, &dyt, &db).unwrap();
                run_direct(ctx, &ds, &[("b", &db)], &[])
            }
            "affine" => {
                let dyt = upload(ctx, dy, "dy");
                let da = Tensor::new(ctx, dyt.shape(), "da").unwrap();
                let scale = fx.get(case, "scale").data;
                let d = affine_backward(ctx, &scale, &dyt, &da).unwrap();
                run_direct(ctx, &[d], &[("a", &da)], &[])
            }
            other => unreachable!("{other}"),
        },
    );
}

#[test]
fn fusion_backward_matches_pytorch() {
    check_family("fusion", &["blend"], |ctx, fx, case, dy| {
        if !case.b("sigmoid") {
            // Raw mask: the autograd graph's fusion node.
            let mut l = Layer::new(ctx);
            let a = l.input(fx, case, "a");
            let b = l.input(fx, case, "b");
            let m = l.input(fx, case, "mask");
            let y = l.g.fusion(a, b, m).unwrap();
            return l.run(y, &dy.data);
        }
        let a = upload(ctx, &fx.get(case, "a"), "a");
        let b = upload(ctx, &fx.get(case, "b"), "b");
        let m = upload(ctx, &fx.get(case, "mask"), "mask");
        let y = Tensor::new(ctx, a.shape(), "y").unwrap();
        let fwd = fusion(ctx, &a, &b, &m, true, &y).unwrap();
        let dyt = upload(ctx, dy, "dy");
        let da = Tensor::new(ctx, a.shape(), "da").unwrap();
        let db = Tensor::new(ctx, a.shape(), "db").unwrap();
        let dm = Tensor::new(ctx, m.shape(), "dm").unwrap();
        let bwd = fusion_backward(ctx, &a, &b, &m, true, &dyt, &da, &dm, Some(&db)).unwrap();
        run_direct(
            ctx,
            &[fwd, bwd],
            &[("a", &da), ("b", &db), ("mask", &dm)],
            &[],
        )
    });
}

#[test]
fn resample_backward_matches_pytorch() {
    check_family(
        "resample",
        &["bilinear", "nearest", "pixel_shuffle"],
        |ctx, fx, case, dy| {
            let mode = match case.op() {
                "bilinear" => Resample::Bilinear {
                    align_corners: case.b("align_corners"),
                },
                "nearest" => Resample::Nearest,
                "pixel_shuffle" => Resample::PixelShuffle(case.u("factor")),
                other => unreachable!("{other}"),
            };
            let mut l = Layer::new(ctx);
            let x = l.input(fx, case, "x");
            let y =
                l.g.resample(x, mode, (case.u("out_h"), case.u("out_w")))
                    .unwrap();
            assert_eq!(l.g.shape(y), dy.nchw(), "output shape");
            l.run(y, &dy.data)
        },
    );
}

#[test]
fn pool_backward_matches_pytorch() {
    check_family(
        "pool",
        &["max_pool", "avg_pool", "global_avg_pool"],
        |ctx, fx, case, dy| {
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
            let mut l = Layer::new(ctx);
            let x = l.input(fx, case, "x");
            let y = l.g.pool(x, pool).unwrap();
            assert_eq!(l.g.shape(y), dy.nchw(), "output shape");
            l.run(y, &dy.data)
        },
    );
}

#[test]
fn concat_backward_matches_pytorch() {
    check_family("concat", &["concat"], |ctx, fx, case, dy| {
        let parts = case.get("parts").as_array().expect("parts").len();
        let mut l = Layer::new(ctx);
        let vs: Vec<Var> = (0..parts)
            .map(|p| l.input(fx, case, &format!("part{p}")))
            .collect();
        let y = l.g.concat(&vs).unwrap();
        l.run(y, &dy.data)
    });
}

#[test]
fn reduce_backward_matches_pytorch() {
    check_family(
        "reduce",
        &["l2_normalize", "softmax_channels"],
        |ctx, fx, case, dy| match case.op() {
            "l2_normalize" => {
                let mut l = Layer::new(ctx);
                let x = l.input(fx, case, "x");
                let y = l.g.l2_normalize(x).unwrap();
                l.run(y, &dy.data)
            }
            "softmax_channels" => {
                let x = upload(ctx, &fx.get(case, "x"), "x");
                let y = Tensor::new(ctx, x.shape(), "y").unwrap();
                let fwd = softmax_channels(ctx, &x, &y).unwrap();
                let dyt = upload(ctx, dy, "dy");
                let dx = Tensor::new(ctx, x.shape(), "dx").unwrap();
                let bwd = softmax_channels_grad(ctx, &y, &dyt, &dx).unwrap();
                run_direct(ctx, &[fwd, bwd], &[("x", &dx)], &[])
            }
            other => unreachable!("{other}"),
        },
    );
}

/// The comparison can fail: with dY scaled by 1.01 every gradient (linear in dY) is off by 1% of
/// itself, which the bound (≤ 0.4% of the largest element) must reject, on a case of each kind
/// of output (an activation gradient, an f32 parameter gradient, a reduction).
#[test]
fn perturbed_seed_fails() {
    let ctx = &contexts()[0];
    let fx = Fixture::load("eltwise");
    let case = fx
        .cases()
        .find(|c| c.name() == "prelu_channels_chunks_2x3x37x29")
        .expect("case");
    let mut dy = fx.get(case, "dy");
    let run = |dy: &Host| {
        let mut l = Layer::new(ctx);
        let x = l.input(&fx, case, "x");
        let s = l.param(&fx, case, "slope");
        let y = l.g.prelu(x, s).unwrap();
        l.run(y, &dy.data)
    };
    let (ratio, _, fails) = compare(&fx, case, &run(&dy), "golden seed");
    assert!(fails.is_empty() && ratio < 1.0, "{fails:?}");
    for v in &mut dy.data {
        *v *= 1.01; // rounded to fp16 on upload: 1% ± 0.05%
    }
    let out = run(&dy);
    for role in ["grad.x", "grad.slope"] {
        let want = fx.get(case, role);
        let got = &out.iter().find(|(r, _)| r == role).unwrap().1;
        let s = score(got, &want.data);
        assert!(
            s.ratio > 1.0,
            "{role}: a 1% error passed ({:.2}x the bound)",
            s.ratio
        );
    }
}

/// Reads a loss's per-sample values after the run.
type Values<'a> = Box<dyn Fn() -> Vec<f32> + 'a>;

/// An f32 storage buffer holding `data`.
fn f32_buffer(ctx: &Context, label: &str, data: &[f32]) -> wgpu::Buffer {
    let b = f32_storage(ctx, label, data.len()).unwrap();
    ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(data));
    b
}

#[test]
fn loss_gradients_match_pytorch() {
    check_family(
        "loss",
        &["pixel", "ssim", "identity"],
        |ctx, fx, case, _dy| {
            // The seed is scale·∂total/∂prediction (mixed-precision loss scaling); slot 2 of 4.
            let scale = f32_buffer(ctx, "scale", &[case.f("scale") as f32]);
            let losses = f32_storage(ctx, "losses", 4).unwrap();
            let weights = fx
                .try_get(case, "weights")
                .map(|w| f32_buffer(ctx, "weights", &w.data));
            let mut out = LossOut::new(&losses, 2, &scale);
            if let Some(w) = &weights {
                out = out.weighted(w);
            }
            let get = |role: &str| fx.try_get(case, role).map(|t| upload(ctx, &t, role));
            let (ds, values, grads): (Vec<_>, Values, Vec<(&str, Tensor)>) = match case.op() {
                "pixel" | "ssim" => {
                    let pred = get("pred").unwrap();
                    let (target, mask) = (get("target"), get("mask"));
                    let grad = Tensor::new(ctx, pred.shape(), "grad").unwrap();
                    let ds;
                    let values: Values;
                    if case.op() == "ssim" {
                        let spec = SsimSpec {
                            window: case.u("window"),
                            sigma: case.f("sigma") as f32,
                            k1: case.f("k1") as f32,
                            k2: case.f("k2") as f32,
                            max_value: case.f("max_value") as f32,
                            form: match case.s("form") {
                                "dssim" => SsimForm::Dssim,
                                _ => SsimForm::OneMinus,
                            },
                            weight: 1.0,
                        };
                        let l = SsimLoss::new(ctx, spec, pred.shape()).unwrap();
                        ds = l
                            .bind(
                                ctx,
                                &pred,
                                target.as_ref().unwrap(),
                                mask.as_ref(),
                                &out,
                                &grad,
                            )
                            .unwrap();
                        values = Box::new(move || l.read_values(ctx).unwrap());
                    } else if target.is_none() {
                        // The background-only mask loss.
                        let spec = MaskLossSpec {
                            distance: Distance::L1,
                            weight: case.f("weight") as f32,
                        };
                        assert_eq!(case.s("distance"), "l1");
                        let l = MaskLoss::new(ctx, spec, pred.shape()).unwrap();
                        ds = l
                            .bind(ctx, &pred, mask.as_ref().unwrap(), &out, &grad)
                            .unwrap();
                        values = Box::new(move || l.read_values(ctx).unwrap());
                    } else {
                        let spec = PixelSpec {
                            distance: match case.s("distance") {
                                "l1" => Distance::L1,
                                _ => Distance::Mse,
                            },
                            apply: match case.s("apply") {
                                "weight" => MaskApply::Weight,
                                _ => MaskApply::Inputs,
                            },
                            normalize: match case.s("normalize") {
                                "elements" => Normalize::Elements,
                                "mask_sum" => Normalize::MaskSum,
                                _ => Normalize::BatchMaskSum,
                            },
                            factor: case.f("factor") as f32,
                            weight: case.f("weight") as f32,
                        };
                        let l = PixelLoss::new(ctx, spec, pred.shape()).unwrap();
                        ds = l
                            .bind(ctx, &pred, target.as_ref(), mask.as_ref(), &out, &grad)
                            .unwrap();
                        values = Box::new(move || l.read_values(ctx).unwrap());
                    }
                    (ds, values, vec![("pred", grad)])
                }
                "identity" => {
                    let (n, f) = (case.u("n"), case.u("features"));
                    let spec = IdentitySpec {
                        margin: case.get("margin").as_f64().map(|m| m as f32),
                        reduction: if case.get("margin").is_null() {
                            IdentityReduction::Mean
                        } else {
                            IdentityReduction::Active
                        },
                        weight: 1.0,
                    };
                    let (a, b) = (get("a").unwrap(), get("b").unwrap());
                    let ga = Tensor::new(ctx, Shape::vector(n, f), "grad a").unwrap();
                    let gb = Tensor::new(ctx, Shape::vector(n, f), "grad b").unwrap();
                    let l = IdentityLoss::new(ctx, spec, n, f).unwrap();
                    let ds = l.bind(ctx, &a, &b, &out, &ga, Some(&gb)).unwrap();
                    let values: Values = Box::new(move || l.read_values(ctx).unwrap());
                    (ds, values, vec![("a", ga), ("b", gb)])
                }
                other => unreachable!("{other}"),
            };
            let tensors: Vec<(&str, &Tensor)> = grads.iter().map(|(r, t)| (*r, t)).collect();
            let mut outputs = run_direct(ctx, &ds, &tensors, &[]);
            outputs.push(("values_out".into(), values()));
            outputs.push((
                "total_out".into(),
                vec![read_f32(ctx, &losses, 4).unwrap()[2]],
            ));
            outputs
        },
    );
}
