//! The models build and run end to end on seeded random weights (shapes from their manifests),
//! with outputs in range; parity with the PyTorch reference is in `models_parity.rs`.
mod common;

use common::{contexts, Rng};
use fswap::eval::{eval, Tensors};
use fswap::models::arcface;
use fswap::models::random::random_weights;
use fswap::weights::{HostTensor, Manifest, Weights};

#[test]
fn mobilefaceswap_runs_on_random_weights() {
    let w = random_weights(&Manifest::builtin("mobilefaceswap").unwrap(), 3);
    let mut rng = Rng::new(9);
    let mut inputs = Tensors::new();
    inputs.insert(
        "target".into(),
        HostTensor::new(vec![2, 3, 224, 224], rng.vec(2 * 3 * 224 * 224, 0.0, 1.0)),
    );
    let emb = rng.vec(512, -1.0, 1.0);
    let norm = emb.iter().map(|v| v * v).sum::<f32>().sqrt();
    inputs.insert(
        "id_embedding".into(),
        HostTensor::new(vec![1, 512], emb.iter().map(|v| v / norm).collect()),
    );
    inputs.insert(
        "id_feature_map".into(),
        HostTensor::new(vec![1, 512, 7, 7], rng.vec(512 * 49, -1.0, 1.0)),
    );
    let ctx = &contexts()[0];
    let t0 = std::time::Instant::now();
    let out = eval(ctx, "mobilefaceswap", &w, &inputs).unwrap();
    eprintln!("mobilefaceswap eval: {:?}", t0.elapsed());
    let swapped = &out["swapped"];
    let mask = &out["mask"];
    assert_eq!(swapped.shape, vec![2, 3, 224, 224]);
    assert!(
        swapped.data.iter().all(|v| (0.0..=1.0).contains(v)),
        "swapped out of [0,1]"
    );
    assert!(
        mask.data.iter().all(|v| (0.0..=1.0).contains(v)),
        "mask out of [0,1]"
    );
    let (lo, hi) = mask
        .data
        .iter()
        .fold((1f32, 0f32), |(a, b), v| (a.min(*v), b.max(*v)));
    eprintln!("mask range {lo}..{hi}");
    assert_eq!(out["Encoder.0.0.weight"].shape, vec![3, 1, 4, 4]);
    assert_eq!(out["Decoder.3.1.weight"].shape, vec![32, 128, 1, 1]);
    // Demodulated pointwise rows have unit norm.
    let pw = &out["Decoder.1.1.weight"];
    for row in pw.data.chunks(512).take(8) {
        let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 5e-3, "row norm {n}");
    }
}

#[test]
fn arcface_runs_on_random_weights_of_any_depth() {
    let empty = Weights::default();
    let w = random_weights(&arcface::manifest([1, 2, 1, 1], &empty), 4);
    let mut rng = Rng::new(10);
    let mut inputs = Tensors::new();
    inputs.insert(
        "face".into(),
        HostTensor::new(vec![2, 3, 112, 112], rng.vec(2 * 3 * 112 * 112, -2.0, 2.0)),
    );
    let ctx = &contexts()[1];
    let out = eval(ctx, "arcface", &w, &inputs).unwrap();
    let emb = &out["id_embedding"];
    assert_eq!(emb.shape, vec![2, 512]);
    for row in emb.data.chunks(512) {
        let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 2e-3, "embedding norm {n}");
    }
    assert_eq!(out["id_feature_map"].shape, vec![2, 512, 7, 7]);
}

#[test]
fn eval_errors_name_the_problem() {
    let ctx = &contexts()[0];
    let w = Weights::default();
    let e = eval(ctx, "nosuch", &w, &Tensors::new())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("unknown model 'nosuch'") && e.contains("arcface"),
        "{e}"
    );
    let e = eval(ctx, "idn", &w, &Tensors::new())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing input 'target'"), "{e}");
    let mut inputs = Tensors::new();
    inputs.insert(
        "target".into(),
        HostTensor::new(vec![1, 3, 100, 100], vec![0.5; 30000]),
    );
    let e = eval(ctx, "idn", &w, &inputs).err().unwrap().to_string();
    assert!(
        e.contains("input 'target' has shape [1, 3, 100, 100], expected [N, 3, 224, 224]"),
        "{e}"
    );
    inputs.insert(
        "target".into(),
        HostTensor::new(vec![1, 3, 224, 224], vec![0.5; 3 * 224 * 224]),
    );
    let e = eval(ctx, "idn", &w, &inputs).err().unwrap().to_string();
    assert!(
        e.contains("does not match the idn manifest")
            && e.contains("missing 'Encoder.0.0.weight' (expected [3, 1, 4, 4])"),
        "{e}"
    );
}
