//! Parity with the independent PyTorch reference (tools/reference), end to end through the real
//! tool chain: the seeded random Paddle checkpoints are regenerated with numpy alone
//! (`tools/random_checkpoint.py`, byte-identical: their sha256 is checked against the goldens'
//! metadata), converted by `tools/export.py`, loaded by the engine and run on every storage path.
//! Goldens: `tools/golden_models.py` (PyTorch, float64), committed in tests/fixtures/models.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{assert_close, contexts, label};
use fswap::eval::{eval, Tensors};
use fswap::weights::{HostTensor, Weights};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> Weights {
    Weights::open(
        root()
            .join("tests/fixtures/models")
            .join(format!("{name}.safetensors")),
    )
    .unwrap_or_else(|e| panic!("fixture {name} (regenerate with tools/golden_models.py): {e}"))
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

/// Regenerates a checkpoint from the command recorded in the golden, checks its hash, exports it.
fn exported(model: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("fswap-parity-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    let out = dir.join(format!("{model}.safetensors"));
    if out.exists() {
        return out;
    }
    let meta = fixture("mobilefaceswap_golden").metadata().clone();
    let cmd = &meta[&format!("{model}_pdparams_command")];
    let pd = dir.join(format!("{model}.pdparams"));
    let args: Vec<String> = cmd
        .split_whitespace()
        .map(|a| a.replace("{out}", pd.to_str().unwrap()))
        .collect();
    run(
        Command::new(&args[0]).args(&args[1..]),
        &format!("{cmd} (needs python3 + numpy)"),
    );
    assert_eq!(
        sha256(&pd),
        meta[&format!("{model}_pdparams_sha256")],
        "{model}: regenerated checkpoint differs from the goldens'"
    );
    let tmp = dir.join(format!("{model}.tmp.safetensors"));
    run(
        Command::new("python3").args([
            "tools/export.py",
            pd.to_str().unwrap(),
            tmp.to_str().unwrap(),
            "--model",
            model,
            "-q",
        ]),
        "tools/export.py",
    );
    std::fs::rename(&tmp, &out).unwrap();
    let _ = std::fs::remove_file(&pd);
    out
}

fn weights(model: &str) -> &'static Weights {
    static W: OnceLock<std::sync::Mutex<BTreeMap<String, &'static Weights>>> = OnceLock::new();
    let map = W.get_or_init(Default::default);
    let mut m = map.lock().unwrap();
    if let Some(w) = m.get(model) {
        return w;
    }
    let w: &'static Weights = Box::leak(Box::new(Weights::open(exported(model)).unwrap()));
    assert_eq!(w.metadata()["fswap.source"], "paddle");
    assert_eq!(w.metadata()["fswap.linear_layout"], "in_out");
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

fn max_err(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn report(name: &str, ctx: &str, got: &HostTensor, want: &HostTensor) {
    let w = f64s(want);
    let mean = got
        .data
        .iter()
        .zip(&w)
        .map(|(x, y)| (*x as f64 - y).abs())
        .sum::<f64>()
        / w.len() as f64;
    eprintln!(
        "{ctx} {name}: max abs err {:.2e}, mean {:.2e}",
        max_err(&got.data, &w),
        mean
    );
}

#[test]
fn arcface_matches_reference() {
    let golden = fixture("arcface_golden");
    let w = weights("arcface");
    let inputs: Tensors = BTreeMap::from([("face".to_string(), t(&golden, "face"))]);
    for ctx in contexts() {
        let out = eval(ctx, "arcface", w, &inputs).unwrap();
        let l = label(ctx);
        for name in ["id_embedding", "id_feature_map"] {
            report(name, &l, &out[name], &t(&golden, name));
        }
        // Every activation is stored in fp16 (≤ 2^-11 relative per layer, ~10 layers deep here):
        // the map (|x| ≤ 6) is held to 2e-2 absolute, the unit embedding (rms 0.044) to 2e-3.
        assert_close(
            &out["id_feature_map"].data,
            &f64s(&t(&golden, "id_feature_map")),
            2e-2,
            1e-2,
            &format!("id_feature_map {l}"),
        );
        assert_close(
            &out["id_embedding"].data,
            &f64s(&t(&golden, "id_embedding")),
            2e-3,
            1e-2,
            &format!("id_embedding {l}"),
        );
        for (g, r) in out["id_embedding"]
            .data
            .chunks(512)
            .zip(t(&golden, "id_embedding").data.chunks(512))
        {
            let cos: f64 = g.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!(cos > 0.9995, "{l}: embedding cosine {cos}");
        }
    }
}

#[test]
fn mobilefaceswap_matches_reference() {
    let golden = fixture("mobilefaceswap_golden");
    let unet = fixture("mobilefaceswap_unet_golden");
    let swapped = fixture("mobilefaceswap_swapped_golden");
    let w = weights("mobilefaceswap");
    let inputs: Tensors = BTreeMap::from([
        ("target".to_string(), t(&unet, "target")),
        ("id_embedding".to_string(), t(&golden, "id_embedding")),
        ("id_feature_map".to_string(), t(&golden, "id_feature_map")),
    ]);
    for ctx in contexts() {
        let out = eval(ctx, "mobilefaceswap", w, &inputs).unwrap();
        let l = label(ctx);
        // Predicted and modulated kernels: |k| ≤ 1.5 after a chain of fp16-stored convs.
        for (name, want) in golden
            .tensors()
            .iter()
            .filter(|(k, _)| k.starts_with("Encoder.") || k.starts_with("Decoder."))
        {
            let got = &out[name];
            assert_eq!(got.shape, want.shape, "{name}");
            assert_close(&got.data, &f64s(want), 1e-2, 1e-2, &format!("{name} {l}"));
        }
        for (name, g) in [("swapped", &swapped), ("mask", &unet)] {
            let want = t(g, name);
            report(name, &l, &out[name], &want);
            // The bar: max ≤ 1e-2 on [0,1] images.
            assert_close(
                &out[name].data,
                &f64s(&want),
                1e-2,
                0.0,
                &format!("{name} {l}"),
            );
        }
    }
}

#[test]
fn saved_identity_reproduces_the_swap() {
    // Bake the identity once (as `fswap identity` does), reload it as an `idn` model: same output.
    let golden = fixture("mobilefaceswap_golden");
    let unet = fixture("mobilefaceswap_unet_golden");
    let swapped = fixture("mobilefaceswap_swapped_golden");
    let w = weights("mobilefaceswap");
    let ctx = &contexts()[0];
    let baked = fswap::eval::bake_identity(
        ctx,
        w,
        &t(&golden, "id_embedding"),
        &t(&golden, "id_feature_map"),
    )
    .unwrap();
    let path =
        std::env::temp_dir().join(format!("fswap-identity-{}.safetensors", std::process::id()));
    fswap::weights::write_safetensors(
        &path,
        &baked,
        fswap::models::mobilefaceswap::identity_metadata(),
    )
    .unwrap();
    let id = Weights::open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let out = eval(
        ctx,
        "idn",
        &id,
        &BTreeMap::from([("target".to_string(), t(&unet, "target"))]),
    )
    .unwrap();
    assert_close(
        &out["swapped"].data,
        &f64s(&t(&swapped, "swapped")),
        1e-2,
        0.0,
        "idn swapped",
    );
    assert_close(
        &out["mask"].data,
        &f64s(&t(&unet, "mask")),
        1e-2,
        0.0,
        "idn mask",
    );
}

#[test]
fn injected_unet_state_dict_loads_as_idn() {
    // An official injected UNet state dict (spec §1.6 names, zero dynamic biases, Paddle metadata),
    // built from the reference's kernels and the checkpoint's final/mask, loads as `idn`.
    let golden = fixture("mobilefaceswap_golden");
    let unet = fixture("mobilefaceswap_unet_golden");
    let swapped = fixture("mobilefaceswap_swapped_golden");
    let w = weights("mobilefaceswap");
    let mut state: BTreeMap<String, HostTensor> = golden
        .tensors()
        .iter()
        .filter(|(k, _)| k.starts_with("Encoder.") || k.starts_with("Decoder."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in state.clone() {
        let bias = k.replace(".weight", ".bias");
        state.insert(
            bias,
            HostTensor::new(vec![v.shape[0]], vec![0.0; v.shape[0]]),
        );
    }
    state.extend(
        w.tensors()
            .iter()
            .filter(|(k, _)| k.starts_with("final.") || k.starts_with("mask."))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    assert_eq!(state.len(), 92, "spec §1.6: 92 tensors");
    let id = Weights::from_tensors("injected unet", state, w.metadata().clone());
    let ctx = &contexts()[1];
    let out = eval(
        ctx,
        "idn",
        &id,
        &BTreeMap::from([("target".to_string(), t(&unet, "target"))]),
    )
    .unwrap();
    assert_close(
        &out["swapped"].data,
        &f64s(&t(&swapped, "swapped")),
        1e-2,
        0.0,
        "unet swapped",
    );
    assert_close(
        &out["mask"].data,
        &f64s(&t(&unet, "mask")),
        1e-2,
        0.0,
        "unet mask",
    );
}
