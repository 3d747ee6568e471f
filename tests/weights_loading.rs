//! Weights files: f32, f16 and bf16 load alike; truncated files, NaN/Inf, wrong dtypes and
//! mismatched tensors are reported by name (expected vs found); manifests report every problem.

use std::collections::{BTreeMap, HashMap};

use fswap::weights::{HostTensor, Manifest, TensorSpec, Weights};
use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn file(
    tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
    meta: Option<HashMap<String, String>>,
) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::tensor::serialize(views, meta).unwrap()
}

#[test]
fn f32_f16_bf16_load_to_the_same_values() {
    let vals = [0.5f32, -1.25, 3.0, 0.0];
    let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16b: Vec<u8> = vals
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect();
    let bf16b: Vec<u8> = vals
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect();
    let i64b: Vec<u8> = 7i64.to_le_bytes().to_vec();
    let bytes = file(
        &[
            ("a", Dtype::F32, vec![2, 2], f32b),
            ("b", Dtype::F16, vec![4], f16b),
            ("c", Dtype::BF16, vec![1, 4], bf16b),
            ("bn.num_batches_tracked", Dtype::I64, vec![], i64b),
        ],
        Some(HashMap::from([(
            "fswap.linear_layout".to_string(),
            "in_out".to_string(),
        )])),
    );
    let w = Weights::from_bytes("mem", &bytes).unwrap();
    for n in ["a", "b", "c"] {
        assert_eq!(w.tensors()[n].data, vals, "{n}");
    }
    assert!(
        !w.contains("bn.num_batches_tracked"),
        "integer counters are skipped"
    );
    assert!(w.linear_in_out());
    // Paddle [in, out] Linear comes back as PyTorch [out, in].
    assert_eq!(w.linear("a", 2, 2).unwrap(), vec![0.5, 3.0, -1.25, 0.0]);
}

#[test]
fn bad_files_are_named_errors() {
    let good = file(
        &[(
            "w",
            Dtype::F32,
            vec![3],
            [1f32, 2.0, 3.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )],
        None,
    );
    let e = Weights::from_bytes("cut.safetensors", &good[..good.len() - 5])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("cut.safetensors") && e.contains("truncated or corrupt"),
        "{e}"
    );
    let nan = file(
        &[(
            "w",
            Dtype::F32,
            vec![2],
            [1f32, f32::NAN]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )],
        None,
    );
    let e = Weights::from_bytes("nan.safetensors", &nan)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tensor 'w' holds NaN at element 1"), "{e}");
    let c64 = file(&[("z", Dtype::C64, vec![1], vec![0u8; 8])], None);
    let e = Weights::from_bytes("c.safetensors", &c64)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tensor 'z' has unsupported dtype"), "{e}");
    let w = Weights::from_bytes("ok", &good).unwrap();
    let e = w.get("w", &[4]).err().unwrap().to_string();
    assert!(e.contains("tensor 'w' has shape [3], expected [4]"), "{e}");
    let e = w.get("v", &[4]).err().unwrap().to_string();
    assert!(e.contains("missing tensor 'v' (expected shape [4])"), "{e}");
    let e = Weights::open("/no/such/file.safetensors")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("/no/such/file.safetensors"), "{e}");
}

#[test]
fn manifest_check_lists_every_problem() {
    let spec = |shape: Vec<usize>, kind: &str| TensorSpec {
        shape,
        kind: kind.into(),
        optional: false,
    };
    let m = Manifest::from_specs(
        "toy",
        BTreeMap::from([
            ("conv.weight".to_string(), spec(vec![4, 3, 3, 3], "conv")),
            ("fc.weight".to_string(), spec(vec![10, 4], "linear")),
            ("bn.weight".to_string(), spec(vec![4], "bn")),
        ]),
    );
    let t = BTreeMap::from([
        (
            "conv.weight".to_string(),
            HostTensor::new(vec![4, 3, 1, 1], vec![0.0; 12]),
        ),
        (
            "fc.weight".to_string(),
            HostTensor::new(vec![4, 10], vec![0.0; 40]),
        ),
        ("extra".to_string(), HostTensor::new(vec![1], vec![0.0])),
    ]);
    let paddle = Weights::from_tensors(
        "toy.safetensors",
        t.clone(),
        HashMap::from([("fswap.linear_layout".into(), "in_out".into())]),
    );
    let e = m.check(&paddle).err().unwrap().to_string();
    assert!(e.contains("3 problems"), "{e}");
    assert!(
        e.contains("'conv.weight' has shape [4, 3, 1, 1], expected [4, 3, 3, 3]"),
        "{e}"
    );
    assert!(e.contains("missing 'bn.weight' (expected [4])"), "{e}");
    assert!(e.contains("unexpected 'extra'"), "{e}");
    // The same file read as a PyTorch export: the linear layout now mismatches too.
    let torch = Weights::from_tensors("toy.safetensors", t, HashMap::new());
    let e = m.check(&torch).err().unwrap().to_string();
    assert!(
        e.contains("'fc.weight' has shape [4, 10], expected [10, 4]"),
        "{e}"
    );
}
