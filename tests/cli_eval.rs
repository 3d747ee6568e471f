//! `fswap eval` and `fswap identity` end to end through the binary: outputs written, bad input
//! reported as one clear line with exit code 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fswap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fswap"))
        .args(["--backend", "vulkan"])
        .args(args)
        .output()
        .expect("run fswap")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fswap-cli-eval-{}-{name}", std::process::id()))
}

/// A float32 .npy file.
fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn idn_eval_and_identity_round_trip_on_random_weights() {
    // Seeded random MobileFaceSwap weights written as a file, through the binary.
    let w = fswap::models::random::random_weights(
        &fswap::weights::Manifest::builtin("mobilefaceswap").unwrap(),
        5,
    );
    let weights = tmp("mfs.safetensors");
    fswap::weights::write_safetensors(&weights, w.tensors(), w.metadata().clone()).unwrap();
    let emb = tmp("emb.npy");
    let v: Vec<f32> = (0..512)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    write_npy(
        &emb,
        &[1, 512],
        &v.iter().map(|x| x / n).collect::<Vec<_>>(),
    );
    let map = tmp("map.npy");
    write_npy(
        &map,
        &[1, 512, 7, 7],
        &(0..512 * 49)
            .map(|i| ((i % 13) as f32 - 6.0) / 6.0)
            .collect::<Vec<_>>(),
    );
    let target = tmp("target.npy");
    write_npy(
        &target,
        &[1, 3, 224, 224],
        &(0..3 * 224 * 224)
            .map(|i| (i % 255) as f32 / 255.0)
            .collect::<Vec<_>>(),
    );

    let identity = tmp("identity.safetensors");
    let o = fswap(&[
        "identity",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        &format!("id_embedding={}", emb.display()),
        "--input",
        &format!("id_feature_map={}", map.display()),
        "--output",
        identity.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "identity: {}", stderr(&o));

    let out_full = tmp("full.safetensors");
    let o = fswap(&[
        "eval",
        "--model",
        "mobilefaceswap",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        &format!("target={}", target.display()),
        "--input",
        &format!("id_embedding={}", emb.display()),
        "--input",
        &format!("id_feature_map={}", map.display()),
        "--output",
        out_full.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "eval mobilefaceswap: {}", stderr(&o));
    let out_idn = tmp("idn.safetensors");
    let o = fswap(&[
        "eval",
        "--model",
        "idn",
        "--weights",
        identity.to_str().unwrap(),
        "--input",
        &format!("target={}", target.display()),
        "--output",
        out_idn.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "eval idn: {}", stderr(&o));
    let a = fswap::weights::Weights::open(&out_full).unwrap();
    let b = fswap::weights::Weights::open(&out_idn).unwrap();
    for name in ["swapped", "mask"] {
        let (x, y) = (&a.tensors()[name], &b.tensors()[name]);
        assert_eq!(x.shape, y.shape, "{name}");
        // The saved identity holds the same fp16 kernels the full model computed: identical output.
        let max = x
            .data
            .iter()
            .zip(&y.data)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(max <= 1e-3, "{name}: saved identity differs by {max}");
    }
    for p in [weights, emb, map, target, identity, out_full, out_idn] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn eval_bad_input_is_one_clear_error() {
    let missing = tmp("nope.safetensors");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "eval",
                "--model",
                "nosuch",
                "--weights",
                "x",
                "--output",
                "y",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "unknown model 'nosuch'",
        ),
        (
            vec![
                "eval",
                "--model",
                "idn",
                "--weights",
                missing.to_str().unwrap(),
                "--output",
                "y",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "nope.safetensors",
        ),
        (
            vec![
                "eval",
                "--model",
                "idn",
                "--weights",
                "w",
                "--input",
                "target",
                "--output",
                "y",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "'target' is not NAME=FILE",
        ),
    ];
    for (args, want) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = fswap(&refs);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains(want) && !e.contains("panicked"), "{args:?}: {e}");
    }
    // A truncated weights file.
    let trunc = tmp("trunc.safetensors");
    std::fs::write(&trunc, b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let o = fswap(&[
        "eval",
        "--model",
        "idn",
        "--weights",
        trunc.to_str().unwrap(),
        "--output",
        "y",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not a valid safetensors file"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_file(trunc);
}
