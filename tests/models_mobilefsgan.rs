//! MobileFSGAN (generator) and its MobileFaceNet-512 identity model against the independent float64
//! PyTorch reference (`tools/reference/mobilefsgan.py`), end to end through the real tool chain: the
//! seeded random PyTorch checkpoints are regenerated with numpy alone (`tools/random_checkpoint.py`,
//! byte-identical: their sha256 is checked against the goldens' metadata; the generator's keys carry
//! the `module.` prefix of the official DDP checkpoints), converted by `tools/export.py --check`,
//! loaded by the engine and run through `fswap::eval` on every storage path. Eval-mode semantics:
//! the goldens use the running statistics of every batch norm.
//! Goldens: `tools/golden_models.py --only mobilefsgan`, committed in tests/fixtures/models.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use common::{assert_close, contexts, label};
use fswap::eval::{eval, Tensors};
use fswap::models::mobilefacenet512::{CropResize, MobileFaceNet512};
use fswap::models::mobilefsgan::{Injection, MobileFsgan, STYLE};
use fswap::tensor::{Shape, Tensor};
use fswap::weights::{HostTensor, Weights};

/// The bar on [−1, 1] images.
const MAX_ERR: f64 = 2e-2;
/// Mean absolute error bar. For scale: the reference with every module output rounded to fp16
/// (golden metadata `fp16_emulated_max_err`) is off by at most 1.4e-3 (64×96) and 2.0e-3 (256),
/// by 1.2e-4 to 3.4e-4 on average.
const MEAN_ERR: f64 = 1e-3;
/// A second, derived bar on the max error: this many times the fp16-emulated reference's own max
/// error (an estimate of what fp16 storage costs that shares no code with the engine), plus 1e-3.
const EMULATED_FACTOR: f64 = 4.0;

/// The golden's `fp16_emulated_max_err` per output.
fn fp16_emulated(golden: &Weights) -> BTreeMap<String, f64> {
    serde_json::from_str(&golden.metadata()["fp16_emulated_max_err"]).unwrap()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> Weights {
    Weights::open(
        root()
            .join("tests/fixtures/models")
            .join(format!("{name}.safetensors")),
    )
    .unwrap_or_else(|e| {
        panic!("fixture {name} (regenerate with tools/golden_models.py --only mobilefsgan): {e}")
    })
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

fn workdir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("fswap-mobilefsgan-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// Regenerates a checkpoint from the command recorded in the golden, checks its hash, and exports
/// it with `--check` against the manifest.
fn exported(model: &str) -> PathBuf {
    let dir = workdir();
    let out = dir.join(format!("{model}.safetensors"));
    if out.exists() {
        return out;
    }
    let meta = fixture("mobilefsgan_golden").metadata().clone();
    let cmd = &meta[&format!("{model}_pth_command")];
    let pth = dir.join(format!("{model}.pth"));
    let args: Vec<String> = cmd
        .split_whitespace()
        .map(|a| a.replace("{out}", pth.to_str().unwrap()))
        .collect();
    run(
        Command::new(&args[0]).args(&args[1..]),
        &format!("{cmd} (needs python3 + numpy)"),
    );
    assert_eq!(
        sha256(&pth),
        meta[&format!("{model}_pth_sha256")],
        "{model}: regenerated checkpoint differs from the goldens'"
    );
    let tmp = dir.join(format!("{model}.tmp.safetensors"));
    run(
        Command::new("python3").args([
            "tools/export.py",
            pth.to_str().unwrap(),
            tmp.to_str().unwrap(),
            "--model",
            model,
            "--check",
            "-q",
        ]),
        "tools/export.py",
    );
    std::fs::rename(&tmp, &out).unwrap();
    let _ = std::fs::remove_file(&pth);
    out
}

fn weights(model: &str) -> &'static Weights {
    static W: OnceLock<Mutex<BTreeMap<String, &'static Weights>>> = OnceLock::new();
    let map = W.get_or_init(Default::default);
    let mut m = map.lock().unwrap();
    if let Some(w) = m.get(model) {
        return w;
    }
    let w: &'static Weights = Box::leak(Box::new(Weights::open(exported(model)).unwrap()));
    assert_eq!(w.metadata()["fswap.source"], "torch");
    assert_eq!(w.metadata()["fswap.linear_layout"], "out_in");
    m.insert(model.to_string(), w);
    w
}

fn t(w: &Weights, name: &str) -> HostTensor {
    w.tensors()
        .get(name)
        .unwrap_or_else(|| panic!("golden tensor {name}"))
        .clone()
}

fn f64s(t: &HostTensor) -> Vec<f64> {
    t.data.iter().map(|&v| v as f64).collect()
}

/// (max, mean) absolute error.
fn errors(got: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let e: Vec<f64> = got
        .iter()
        .zip(want)
        .map(|(x, y)| (*x as f64 - y).abs())
        .collect();
    (
        e.iter().copied().fold(0.0, f64::max),
        e.iter().sum::<f64>() / e.len() as f64,
    )
}

fn check_images(golden: &Weights, out: &Tensors, what: &str) {
    let emu = fp16_emulated(golden);
    for name in ["images256", "images128", "images64"] {
        let want = t(golden, name);
        let got = &out[name];
        assert_eq!(got.shape, want.shape, "{name} shape");
        let (max, mean) = errors(&got.data, &f64s(&want));
        eprintln!("{what} {name}: max abs err {max:.2e}, mean {mean:.2e}");
        assert!(got.data.iter().all(|v| v.is_finite()), "{what} {name}");
        assert!(
            max <= MAX_ERR,
            "{what} {name}: max abs err {max:.3e} > {MAX_ERR}"
        );
        let derived = EMULATED_FACTOR * emu[name] + 1e-3;
        assert!(
            max <= derived,
            "{what} {name}: max abs err {max:.3e} > {EMULATED_FACTOR} x the fp16-emulated {:.3e} + 1e-3",
            emu[name]
        );
        assert!(
            mean <= MEAN_ERR,
            "{what} {name}: mean abs err {mean:.3e} > {MEAN_ERR}"
        );
    }
}

#[test]
fn goldens_can_see_every_quirk() {
    // The golden script re-ran its reference with each plausible misreading of the spec (sigmoid
    // attention, BN folded across zero padding, half-pixel or zero-padded upsampling, 1 + σ, the
    // residual on the fused features, train-mode batch statistics): each must move images256 by
    // far more than the tolerance, or passing the tolerance would not prove the quirk is right.
    let meta = fixture("mobilefsgan_golden").metadata().clone();
    let controls: BTreeMap<String, f64> = serde_json::from_str(&meta["negative_controls"]).unwrap();
    assert_eq!(controls.len(), 7, "{controls:?}");
    for (quirk, diff) in &controls {
        assert!(
            *diff > 5.0 * MAX_ERR,
            "{quirk}: only {diff} from the golden"
        );
    }
    for fixture_name in ["mobilefsgan_golden", "mobilefsgan256_golden"] {
        let emu = fp16_emulated(&fixture(fixture_name));
        assert_eq!(emu.len(), 3);
        for (name, e) in emu {
            assert!(
                e < MAX_ERR / 4.0,
                "{fixture_name} {name}: fp16 rounding alone costs {e}: the bar would be too tight"
            );
        }
    }
}

#[test]
fn mobilefsgan_matches_reference() {
    // Batch 2 at 64×96 (H, W multiples of 32), a different identity per sample.
    let golden = fixture("mobilefsgan_golden");
    let w = weights("mobilefsgan");
    let inputs: Tensors = BTreeMap::from([
        ("target".to_string(), t(&golden, "target")),
        ("id_embedding".to_string(), t(&golden, "id_embedding")),
    ]);
    for ctx in contexts() {
        let out = eval(ctx, "mobilefsgan", w, &inputs).unwrap();
        check_images(&golden, &out, &label(ctx));
    }
}

#[test]
fn mobilefsgan_256_matches_reference() {
    // The trained size, batch 1: 64.8 GFLOP, about a minute per run on lavapipe, so on the packed
    // Vulkan path only (the batch-2 case above covers every path).
    let golden = fixture("mobilefsgan256_golden");
    let w = weights("mobilefsgan");
    let inputs: Tensors = BTreeMap::from([
        ("target".to_string(), t(&golden, "target")),
        ("id_embedding".to_string(), t(&golden, "id_embedding")),
    ]);
    let ctx = &contexts()[1];
    let out = eval(ctx, "mobilefsgan", w, &inputs).unwrap();
    check_images(&golden, &out, &format!("256 {}", label(ctx)));
}

#[test]
fn injection_matches_reference() {
    // σ(e), μ(e) of the 9 identity blocks: |v| ≤ 3, one fp16 rounding of a 512-term dot product.
    let golden = fixture("mobilefsgan_golden");
    let w = weights("mobilefsgan");
    let emb = t(&golden, "id_embedding");
    let want = t(&golden, "style");
    for ctx in contexts() {
        let inj = Injection::new(ctx, w, 2).unwrap();
        inj.embedding.write_f32(ctx, &emb.data).unwrap();
        inj.plan.run(ctx).unwrap();
        let got = inj.style.to_f32(ctx).unwrap();
        assert_eq!(got.len(), 2 * STYLE);
        assert_close(
            &got,
            &f64s(&want),
            4e-3,
            2e-3,
            &format!("style {}", label(ctx)),
        );
    }
}

#[test]
fn mobilefacenet_matches_reference() {
    let golden = fixture("mobilefacenet512_golden");
    let w = weights("mobilefacenet");
    let inputs: Tensors = BTreeMap::from([("face".to_string(), t(&golden, "face"))]);
    for ctx in contexts() {
        let out = eval(ctx, "mobilefacenet", w, &inputs).unwrap();
        let l = label(ctx);
        let got = &out["id_embedding"];
        assert_eq!(got.shape, vec![2, 512]);
        let want = t(&golden, "id_embedding");
        let (max, mean) = errors(&got.data, &f64s(&want));
        eprintln!("{l} id_embedding: max abs err {max:.2e}, mean {mean:.2e}");
        // Unit vector of 512 (rms 0.044), ~25 fp16-stored layers deep.
        assert_close(
            &got.data,
            &f64s(&want),
            2e-3,
            1e-2,
            &format!("embedding {l}"),
        );
        for (g, r) in got.data.chunks(512).zip(want.data.chunks(512)) {
            let cos: f64 = g.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!(cos > 0.9995, "{l}: embedding cosine {cos}");
        }
    }
}

#[test]
fn crop_resize_and_embedding_of_a_256_crop() {
    // helpers.get_embeddings: rows/cols [26:230] of the 256 image, bilinear align_corners=True to
    // 112, then the identity model, all on the GPU.
    let g256 = fixture("mobilefsgan256_golden");
    let golden = fixture("mobilefacenet512_golden");
    let w = weights("mobilefacenet");
    let target = t(&g256, "target");
    for ctx in contexts() {
        let l = label(ctx);
        let x = Tensor::from_f32(ctx, Shape::new(1, 3, 256, 256), &target.data, "t").unwrap();
        let net = MobileFaceNet512::new(ctx, w, 1).unwrap();
        let crop = CropResize::new(ctx, &x, &net.input).unwrap();
        let mut plan = fswap::gpu::Plan::default();
        plan.push(crop.dispatch().clone());
        plan.extend(net.plan.clone());
        plan.run(ctx).unwrap();
        // Bilinear of fp16 values, stored in fp16: ≤ 2^-11 relative plus the f32 weights.
        assert_close(
            &net.input.to_f32(ctx).unwrap(),
            &f64s(&t(&golden, "crop112")),
            1e-3,
            1e-3,
            &format!("crop112 {l}"),
        );
        let got = net.embedding.to_f32(ctx).unwrap();
        let want = t(&golden, "crop_embedding");
        let cos: f64 = got
            .iter()
            .zip(&want.data)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        assert!(cos > 0.9995, "{l}: crop embedding cosine {cos}");
        assert_close(
            &got,
            &f64s(&want),
            2e-3,
            1e-2,
            &format!("crop embedding {l}"),
        );
    }
}

#[test]
fn missing_or_misshaped_tensors_are_named() {
    let ctx = &contexts()[0];
    let w = weights("mobilefsgan");
    let without = |drop: &str| {
        let mut m = w.tensors().clone();
        m.remove(drop).expect("key");
        Weights::from_tensors("edited", m, w.metadata().clone())
    };
    let err = MobileFsgan::new(
        ctx,
        &without("decoder.b128_2.conv_attention.weight"),
        1,
        64,
        64,
    )
    .err()
    .expect("a missing tensor is an error")
    .to_string();
    assert!(
        err.contains("missing 'decoder.b128_2.conv_attention.weight' (expected [1, 64, 1, 1])"),
        "{err}"
    );
    let mut m = w.tensors().clone();
    m.insert(
        "identity_encoder.b32_up.fc_var.weight".into(),
        HostTensor::new(vec![64, 256], vec![0.0; 64 * 256]),
    );
    m.insert(
        "decoder.extra.weight".into(),
        HostTensor::new(vec![3], vec![0.0; 3]),
    );
    let err = MobileFsgan::new(
        ctx,
        &Weights::from_tensors("edited", m, w.metadata().clone()),
        1,
        64,
        64,
    )
    .err()
    .expect("a mis-shaped tensor is an error")
    .to_string();
    assert!(
        err.contains(
            "'identity_encoder.b32_up.fc_var.weight' has shape [64, 256], expected [64, 512]"
        ),
        "{err}"
    );
    assert!(err.contains("unexpected 'decoder.extra.weight'"), "{err}");
    // The identity model too.
    let mfn = weights("mobilefacenet");
    let mut m = mfn.tensors().clone();
    m.remove("conv_4.model.3.conv_dw.prelu.weight");
    let err = MobileFaceNet512::new(
        ctx,
        &Weights::from_tensors("edited", m, Default::default()),
        1,
    )
    .err()
    .expect("missing prelu")
    .to_string();
    assert!(
        err.contains("missing 'conv_4.model.3.conv_dw.prelu.weight' (expected [256])"),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let ctx = &contexts()[0];
    let w = weights("mobilefsgan");
    let emb = HostTensor::new(vec![1, 512], vec![0.04; 512]);
    let call = |target: HostTensor, emb: HostTensor| {
        eval(
            ctx,
            "mobilefsgan",
            w,
            &BTreeMap::from([
                ("target".to_string(), target),
                ("id_embedding".to_string(), emb),
            ]),
        )
        .expect_err("an error")
        .to_string()
    };
    let img = |h: usize, wd: usize| HostTensor::new(vec![1, 3, h, wd], vec![0.0; 3 * h * wd]);
    let err = call(img(64, 80), emb.clone());
    assert!(err.contains("multiples of 32"), "{err}");
    let err = call(img(64, 64), HostTensor::new(vec![2, 512], vec![0.0; 1024]));
    assert!(
        err.contains("'id_embedding'") && err.contains("[1, 512]"),
        "{err}"
    );
    let err = call(
        HostTensor::new(vec![1, 4, 32, 32], vec![0.0; 4 * 1024]),
        emb,
    );
    assert!(err.contains("'target'"), "{err}");
    let err = eval(
        ctx,
        "mobilefacenet",
        weights("mobilefacenet"),
        &BTreeMap::from([(
            "face".to_string(),
            HostTensor::new(vec![1, 3, 96, 96], vec![0.0; 3 * 96 * 96]),
        )]),
    )
    .expect_err("wrong face size")
    .to_string();
    assert!(err.contains("112"), "{err}");
}

#[test]
fn plan_has_123_dispatches_and_the_spec_flops() {
    // Spec §5: 64,766,476,288 FLOPs per 256² frame (FlopCounterMode, convolutions and linears),
    // of which the 18 identity FCs are 2·18·64·512 = 1,179,648 (run once per identity here, in the
    // injection). The rest must be exactly the convolutions of the per-frame plan.
    let ctx = &contexts()[1];
    let w = fswap::models::random::random_weights(
        &fswap::weights::Manifest::builtin("mobilefsgan").unwrap(),
        3,
    );
    let net = MobileFsgan::new(ctx, &w, 1, 256, 256).unwrap();
    let plan = &net.generator.plan;
    assert_eq!(plan.len(), 123);
    let conv_flops: u64 = plan
        .dispatches
        .iter()
        .filter(|d| d.label.starts_with("conv") || d.label.starts_with("pointwise"))
        .map(|d| d.stats.flops)
        .sum();
    assert_eq!(conv_flops + 1_179_648, 64_766_476_288);
    assert_eq!(net.injection.plan.stats().flops, 1_179_648);
    let count = |p: &str| {
        plan.dispatches
            .iter()
            .filter(|d| d.label.starts_with(p))
            .count()
    };
    // 7 explicit batch norms (the Downsamples), 9 conditional ones, 12 fusions, 5 upsamplings.
    assert_eq!(count("eltwise affine"), 7);
    assert_eq!(count("cond_batch_norm"), 9);
    assert_eq!(count("fusion"), 12);
    assert_eq!(count("bilinear"), 5);
}
