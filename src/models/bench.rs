//! Whole-model benchmarks for `fswap bench --model`: a model built on seeded random weights (shapes
//! from its manifest) or on a weights file, timed per frame with GPU timestamps where the adapter
//! has them (wall time otherwise), with dispatches, FLOPs and bytes per frame.

use serde::Serialize;

use super::arcface::ArcFace;
use super::mobilefaceswap::{statics, Identity, Idn, Injection};
use super::random::random_weights;
use crate::error::{Error, Result};
use crate::gpu::{Context, Plan};
use crate::weights::{Manifest, Weights};

/// Models `fswap bench` knows, in the order it runs them.
pub const MODELS: &[(&str, &str)] = &[
    (
        "idn",
        "MobileFaceSwap per-frame IDN (224², identity baked in)",
    ),
    (
        "injection",
        "MobileFaceSwap identity injection (once per source identity)",
    ),
    (
        "arcface",
        "ArcFace IR-SE-101 identity encoder (112², once per source)",
    ),
    (
        "mobilefsgan",
        "MobileFSGAN generator per frame (256², identity injected once before timing)",
    ),
    (
        "mobilefacenet",
        "MobileFaceNet-512, MobileFSGAN's identity model (112², once per source)",
    ),
];

/// IR-SE-101, the ArcFace of MobileFaceSwap.
pub const ARCFACE_DEPTHS: [usize; 4] = [3, 4, 23, 3];

/// A model ready to time: its plan and everything the plan reads.
pub struct ModelBench {
    /// Model name.
    pub model: &'static str,
    /// Frames per run.
    pub batch: usize,
    /// The work of one run.
    pub plan: Plan,
    /// Where the weights came from.
    pub weights: String,
}

/// One model's figures, as `fswap bench --json` prints them.
#[derive(Clone, Debug, Serialize)]
pub struct ModelResult {
    /// Model name.
    pub model: String,
    /// Adapter name.
    pub adapter: String,
    /// Graphics API.
    pub backend: String,
    /// Storage path (f16 or packed).
    pub storage: String,
    /// Frames per run.
    pub batch: usize,
    /// Milliseconds per frame (run time / batch).
    pub ms_per_frame: f64,
    /// Dispatches per run.
    pub dispatches: usize,
    /// `gpu` (timestamp queries) or `wall` (submit to idle).
    pub timing: String,
    /// GFLOP per frame.
    pub gflop_per_frame: f64,
    /// MB moved per frame (each kernel's reads and writes).
    pub mb_per_frame: f64,
    /// Achieved GFLOP/s.
    pub gflops: f64,
    /// Timed iterations.
    pub iters: u32,
    /// Weights used.
    pub weights: String,
}

fn lookup(model: &str) -> Result<&'static str> {
    MODELS
        .iter()
        .map(|m| m.0)
        .find(|m| *m == model)
        .ok_or_else(|| {
            Error::param(
                "bench",
                format!(
                    "unknown model '{model}' (known: {})",
                    MODELS.iter().map(|m| m.0).collect::<Vec<_>>().join(", ")
                ),
            )
        })
}

/// Builds `model` for `batch` frames on `weights`, or on seeded random weights when `None`.
/// For `idn` the weights are the MobileFaceSwap checkpoint (the identity is injected once, from a
/// seeded random identity, before timing) or a saved identity.
pub fn build(
    ctx: &Context,
    model: &str,
    batch: usize,
    weights: Option<&Weights>,
) -> Result<ModelBench> {
    let model = lookup(model)?;
    if batch == 0 {
        return Err(Error::param("bench", "batch must be at least 1"));
    }
    let random;
    let (w, origin) = match weights {
        Some(w) => (w, w.origin.clone()),
        None => {
            random = match model {
                "arcface" => random_weights(
                    &super::arcface::manifest(ARCFACE_DEPTHS, &Weights::default()),
                    1,
                ),
                "mobilefsgan" | "mobilefacenet" => random_weights(&Manifest::builtin(model)?, 1),
                _ => random_weights(&Manifest::builtin("mobilefaceswap")?, 1),
            };
            (&random, random.origin.clone())
        }
    };
    let plan = match model {
        "arcface" => ArcFace::new(ctx, w, batch)?.plan,
        "mobilefacenet128" => super::mobilefacenet::MobileFaceNet::new(ctx, w, batch)?.plan,
        "injection" => Injection::new(ctx, w)?.plan,
        "mobilefacenet" => super::mobilefacenet512::MobileFaceNet512::new(ctx, w, batch)?.plan,
        "mobilefsgan" => {
            let size = super::mobilefsgan::SIZE;
            let net = super::mobilefsgan::MobileFsgan::new(ctx, w, batch, size, size)?;
            let mut rng = super::random::SplitMix::new(7);
            let mut emb = Vec::with_capacity(batch * 512);
            for _ in 0..batch {
                let e: Vec<f32> = (0..512).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
                emb.extend(e.iter().map(|v| v / norm));
            }
            net.injection.embedding.write_f32(ctx, &emb)?;
            net.injection.plan.run(ctx)?;
            let g = &net.generator;
            let frame: Vec<f32> = (0..g.target.shape().numel())
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            g.target.write_f32(ctx, &frame)?;
            g.plan.clone()
        }
        _ => {
            let (identity, statics) = if w.contains("Encoder.0.0.weight") {
                Manifest::builtin("idn")?.check(w)?;
                (Identity::from_weights(ctx, w)?, statics(w))
            } else {
                let inj = Injection::new(ctx, w)?;
                let mut rng = super::random::SplitMix::new(7);
                let emb: Vec<f32> = (0..512).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let norm = emb.iter().map(|v| v * v).sum::<f32>().sqrt();
                inj.embedding
                    .write_f32(ctx, &emb.iter().map(|v| v / norm).collect::<Vec<_>>())?;
                let map: Vec<f32> = (0..512 * 49).map(|_| rng.uniform(-1.0, 1.0)).collect();
                inj.feature_map.write_f32(ctx, &map)?;
                inj.plan.run(ctx)?;
                (inj.identity, statics(w))
            };
            let idn = Idn::new(ctx, &identity, &statics, batch)?;
            let frame: Vec<f32> = (0..idn.target.shape().numel())
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
                .collect();
            idn.target.write_f32(ctx, &frame)?;
            idn.plan
        }
    };
    ctx.wait()?;
    Ok(ModelBench {
        model,
        batch,
        plan,
        weights: origin,
    })
}

/// Times `bench` (`warmup` untimed runs, then `iters`).
pub fn measure(ctx: &Context, bench: &ModelBench, warmup: u32, iters: u32) -> Result<ModelResult> {
    let refs = bench.plan.refs();
    let prof = ctx.time(&refs, warmup, iters)?;
    let stats = bench.plan.stats();
    let ms = prof.total_micros / 1000.0 / bench.batch as f64;
    let gflop = stats.flops as f64 / 1e9 / bench.batch as f64;
    Ok(ModelResult {
        model: bench.model.to_string(),
        adapter: ctx
            .adapter_info
            .as_ref()
            .map(|i| i.name.clone())
            .unwrap_or_else(|| "host device".into()),
        backend: ctx
            .adapter_info
            .as_ref()
            .map(|i| i.backend.to_str().to_string())
            .unwrap_or_default(),
        storage: ctx.storage().name().to_string(),
        batch: bench.batch,
        ms_per_frame: ms,
        dispatches: bench.plan.len(),
        timing: prof.timing.to_string(),
        gflop_per_frame: gflop,
        mb_per_frame: stats.bytes as f64 / 1e6 / bench.batch as f64,
        gflops: gflop / (ms / 1000.0),
        iters: iters.max(1),
        weights: bench.weights.clone(),
    })
}
