//! `fswap extract` → `fswap train autoencoder` → the run folder `fswap convert` reads, end to end
//! through the binary on lavapipe: facesets cut from the shared photos, a short Lightweight run
//! (loss log with `step,loss_a,loss_b`, curve, preview grid, checkpoint, exported model with the
//! run metadata), resume, and argument errors.
mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::cli::{python, root, text};

use fswap::weights::Weights;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fswap-cli-ae-{}-{name}", std::process::id()))
}

/// The detector, landmark and identity models `fswap extract` needs, exported by the tool chain.
fn models(dir: &Path) -> PathBuf {
    let m = dir.join("models");
    std::fs::create_dir_all(&m).unwrap();
    let data = root().join("../shared/data");
    for (src, name) in [
        ("faceboxes/FaceBoxesProd.pth", "faceboxes"),
        ("3ddfa/mb05_120x120.pth", "3ddfa_mb05"),
        ("3ddfa", "3ddfa_bfm68"),
        ("identity/mobilefacenet_128.pt", "mobilefacenet128"),
    ] {
        python(&[
            "tools/export.py",
            data.join(src).to_str().unwrap(),
            m.join(format!("{name}.safetensors")).to_str().unwrap(),
            "--model",
            name,
            "-q",
        ]);
    }
    m
}

#[test]
fn extract_then_train_a_short_run_and_resume() {
    let dir = tmp("run");
    std::fs::create_dir_all(&dir).unwrap();
    let m = models(&dir);
    let photos = root().join("../shared/data/photos");
    let faces = dir.join("faces");
    let o = fswap(&[
        "extract",
        "-i",
        photos.to_str().unwrap(),
        "-o",
        faces.to_str().unwrap(),
        "--models",
        m.to_str().unwrap(),
        "--size",
        "64",
    ]);
    assert!(o.status.success(), "extract: {}", text(&o));
    let run = dir.join("ae");
    let train = |steps: &str, resume: bool| {
        let mut args = vec![
            "train",
            "autoencoder",
            "--model",
            "lightweight",
            "--a",
            faces.to_str().unwrap(),
            "--b",
            faces.to_str().unwrap(),
            "-o",
            run.to_str().unwrap(),
            "--steps",
            steps,
            "--batch",
            "2",
            "--log-every",
            "1",
            "--preview-every",
            "1",
            "--checkpoint-every",
            "1",
            "--lr",
            "1e-4",
        ];
        if resume {
            args.push("--resume");
        }
        fswap(&args)
    };
    let o = train("2", false);
    assert!(o.status.success(), "train: {}", text(&o));
    let csv = std::fs::read_to_string(run.join("loss.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("step,loss_a,loss_b,lr"));
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        // DSSIM ∈ [0, 1] plus a mask-weighted MSE of [0, 1] images ∈ [0, 1].
        assert!(
            r[1] > 0.0 && r[1] < 2.0 && r[2] > 0.0 && r[2] < 2.0,
            "{r:?}"
        );
        assert!((r[3] - 1e-4).abs() < 1e-12);
    }
    let preview = image::open(run.join("preview.png")).unwrap();
    assert_eq!((preview.width(), preview.height()), (8 * 64, 4 * 64));
    let curve = image::open(run.join("loss.png")).unwrap();
    assert_eq!(curve.width(), 960);
    let model = Weights::open(run.join("model.safetensors")).unwrap();
    assert_eq!(model.metadata()["fswap.model"], "lightweight");
    assert_eq!(model.metadata()["fswap.size"], "64");
    // The same tensors as a fresh weights file of the architecture.
    let fresh = fswap::train::autoencoder::init_file(
        fswap::models::faceswap_ae::Arch::Lightweight,
        64,
        false,
        0,
        false,
    )
    .unwrap();
    assert_eq!(
        fresh.keys().collect::<Vec<_>>(),
        model.tensors().keys().collect::<Vec<_>>()
    );
    let moved = fresh
        .iter()
        .filter(|(k, t)| t.data != model.tensors()[*k].data)
        .count();
    assert!(moved > fresh.len() / 2, "only {moved} tensors trained");
    // Resume: one more step, the log continues.
    let o = train("3", true);
    assert!(o.status.success(), "resume: {}", text(&o));
    assert!(text(&o).contains("resuming from step 2"), "{}", text(&o));
    let csv = std::fs::read_to_string(run.join("loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    let ck = Weights::open(run.join("checkpoint.safetensors")).unwrap();
    assert_eq!(ck.metadata()["fswap.step"], "3");
    assert_eq!(ck.metadata()["fswap.run"], "autoencoder:lightweight");
    // Errors.
    let o = fswap(&[
        "train",
        "autoencoder",
        "--model",
        "tiny",
        "--a",
        faces.to_str().unwrap(),
        "--b",
        faces.to_str().unwrap(),
        "-o",
        run.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("tiny"), "{}", text(&o));
    let o = fswap(&[
        "train",
        "autoencoder",
        "--a",
        dir.join("nothing").to_str().unwrap(),
        "--b",
        faces.to_str().unwrap(),
        "-o",
        run.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("nothing"), "{}", text(&o));
    std::fs::remove_dir_all(&dir).ok();
}

fn fswap(args: &[&str]) -> Output {
    common::cli::fswap(env!("CARGO_BIN_EXE_fswap"), args)
}
