//! Seeded random weights with a manifest's names and shapes: what `fswap bench` runs on a fresh
//! machine, where no trained weights exist. Scales keep activations O(1) through deep stacks in
//! fp16 (fan-in scaled convolutions, near-identity batch norms).

use std::collections::{BTreeMap, HashMap};

use crate::weights::{HostTensor, Manifest, Weights};

/// SplitMix64: small, seedable, identical everywhere.
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
}

/// Random values for one tensor of `kind` and `shape` named `name`.
fn values(rng: &mut SplitMix, name: &str, kind: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
    let (lo, hi) = match kind {
        "bn" if name.ends_with("weight") => (0.8, 1.2),
        "bn" if name.ends_with("_variance") || name.ends_with("running_var") => (0.8, 1.2),
        "bn" => (-0.1, 0.1),
        "prelu" => (0.2, 0.3),
        _ if name.ends_with("bias") || shape.len() == 1 => (-0.1, 0.1),
        _ => {
            let a = (3.0 / fan_in as f32).sqrt();
            (-a, a)
        }
    };
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

/// Weights for every tensor of `manifest`, from `seed`.
pub fn random_weights(manifest: &Manifest, seed: u64) -> Weights {
    let mut rng = SplitMix::new(seed);
    let tensors: BTreeMap<String, HostTensor> = manifest
        .tensors
        .iter()
        .filter(|(_, spec)| !spec.optional)
        .map(|(name, spec)| {
            (
                name.clone(),
                HostTensor::new(
                    spec.shape.clone(),
                    values(&mut rng, name, &spec.kind, &spec.shape),
                ),
            )
        })
        .collect();
    let meta = HashMap::from([
        ("fswap.source".to_string(), format!("random seed {seed}")),
        ("fswap.linear_layout".to_string(), "out_in".to_string()),
    ]);
    Weights::from_tensors(
        &format!("random {} weights (seed {seed})", manifest.model),
        tensors,
        meta,
    )
}
