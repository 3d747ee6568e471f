//! Training-step benchmarks on synthetic data and seeded random weights: the MobileFaceSwap
//! distillation step at 224 (what `fswap bench --train` and `benches/train.rs` report).

use super::config::Config;
use super::data::SwapData;
use super::distill::{prepare, Inputs, Mode, Session};
use crate::error::{Error, Result};
use crate::gpu::{Context, Profile};
use crate::models::bench::ARCFACE_DEPTHS;
use crate::models::mobilefaceswap::SIZE;
use crate::models::random::{random_weights, SplitMix};
use crate::weights::{Manifest, Weights};

/// What one distillation step includes.
#[derive(Clone, Copy, Debug)]
pub struct DistillBench {
    /// Samples per step.
    pub batch: usize,
    /// Include the identity loss (a frozen ArcFace forward and backward per step).
    pub identity_loss: bool,
}

fn random_crops(rng: &mut SplitMix, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            (0..SIZE * SIZE * 3)
                .map(|_| (rng.next_u64() >> 56) as u8)
                .collect()
        })
        .collect()
}

/// Builds a distillation step on random data (teacher outputs from folders, α reweighting on)
/// with `arcface` (seeded random full-depth weights when None), in a temporary run folder.
pub fn distill_session<'c>(
    ctx: &'c Context,
    bench: DistillBench,
    arcface: Option<Weights>,
) -> Result<Session<'c>> {
    let dir = std::env::temp_dir().join(format!("fswap-train-bench-{}", std::process::id()));
    let text = format!(
        "[student]\nweights = \"random:1\"\n[identity]\narcface = \"unused\"\n\
         [data]\ndir = \"unused\"\n[train]\nbatch = {}\nsteps = 1000000\nlr = 1e-4\n\
         [loss]\nl1 = 1.0\nidentity = {}\n[output]\ndir = \"{}\"\n",
        bench.batch,
        if bench.identity_loss { 1.0 } else { 0.0 },
        dir.display()
    );
    let cfg: Config =
        toml::from_str(&text).map_err(|e| Error::param("train bench", e.to_string()))?;
    cfg.validate()?;
    let n = bench.batch.max(2);
    let mut rng = SplitMix::new(3);
    let data = SwapData {
        names: (0..n).map(|i| format!("s{i}")).collect(),
        targets: random_crops(&mut rng, n),
        sources: random_crops(&mut rng, n),
        teachers: random_crops(&mut rng, n),
        quality: vec![1.0; n],
        backgrounds: None,
    };
    let arcface = match arcface {
        Some(w) => w,
        None => random_weights(
            &crate::models::arcface::manifest(ARCFACE_DEPTHS, &Weights::default()),
            2,
        ),
    };
    let inputs = Inputs {
        data,
        student: random_weights(&Manifest::builtin("mobilefaceswap")?, 1),
        arcface,
        teacher: None,
    };
    let s = prepare(ctx, Mode::Distill, &cfg, inputs)?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(s)
}

/// Profiles `iters` steps (after one warm-up) of `session`: per-dispatch GPU times (timestamps
/// where the adapter has them).
pub fn profile_step(ctx: &Context, session: &mut Session<'_>, iters: u32) -> Result<Profile> {
    session.feed(ctx, 0)?;
    let lr = session.train.schedule.lr(0);
    session.train.optim.set_step(ctx, lr, 1)?;
    session.train.graph.sync().run(ctx)?;
    ctx.profile(&session.train.dispatches(), 1, iters)
}
