//! Shared test support: one context per storage path, seeded data, f16 rounding and comparisons.
#![allow(dead_code)]

pub mod cli;
pub mod reference;

use std::sync::OnceLock;

use fswap::gpu::BackendChoice;
use fswap::{Context, ContextOptions, StoragePath};

/// Every device configuration the kernels must pass on:
/// - Vulkan with native f16 (lavapipe has SHADER_F16),
/// - Vulkan with the packed path forced,
/// - GL (llvmpipe, no SHADER_F16, so packed) when a GL adapter exists.
///
/// A missing Vulkan adapter fails the tests: CI installs lavapipe, and a test that silently ran
/// nowhere would prove nothing.
pub fn contexts() -> &'static [Context] {
    static CTX: OnceLock<Vec<Context>> = OnceLock::new();
    CTX.get_or_init(|| {
        let vk = |storage| {
            Context::new(&ContextOptions {
                backend: Some(BackendChoice::Vulkan),
                adapter: None,
                storage: Some(storage),
            })
            .unwrap_or_else(|e| {
                panic!("Vulkan {storage} context (install mesa-vulkan-drivers): {e}")
            })
        };
        let mut v = vec![vk(StoragePath::F16), vk(StoragePath::Packed)];
        if std::env::var("FSWAP_TEST_GL").as_deref() != Ok("0") {
            match Context::new(&ContextOptions {
                backend: Some(BackendChoice::Gl),
                ..Default::default()
            }) {
                Ok(gl) => v.push(gl),
                Err(e) if std::env::var("CI").is_ok() => panic!("GL context in CI: {e}"),
                Err(e) => eprintln!("note: no GL context ({e}); packed path tested on Vulkan only"),
            }
        }
        for c in &v {
            eprintln!("test context: {}", c.describe());
        }
        v
    })
}

/// Deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
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
    /// Integer in [lo, hi].
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    /// `n` values in [lo, hi), already rounded to f16 so the reference sees what the GPU stores.
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| f16r(self.uniform(lo, hi))).collect()
    }
}

/// Rounds to the nearest f16 value.
pub fn f16r(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Asserts |got − want| ≤ atol + rtol·|want| everywhere, reporting the worst element.
pub fn assert_close(got: &[f32], want: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0f64, 0f64);
    let mut max_abs = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        max_abs = max_abs.max(err);
        let excess = err - (atol + rtol * w.abs());
        if !(g.is_finite()) || excess > worst.1 || (worst.1 == 0.0 && excess > 0.0) {
            worst = (
                i,
                excess.max(if g.is_finite() { excess } else { f64::INFINITY }),
                err,
            );
        }
    }
    assert!(
        worst.1 <= 0.0,
        "{what}: element {} got {} want {} (err {:.3e}, atol {atol:.1e}, rtol {rtol:.1e}); max abs err {max_abs:.3e}",
        worst.0,
        got[worst.0],
        want[worst.0],
        worst.2
    );
}

/// Label of a context for messages.
pub fn label(ctx: &Context) -> String {
    let backend = ctx
        .adapter_info
        .as_ref()
        .map(|i| format!("{:?}", i.backend))
        .unwrap_or_default();
    format!("{backend}/{}", ctx.storage())
}
