//! Per-dispatch GPU profile of a model on seeded random weights:
//! `cargo run --release --example profile -- [idn|injection|arcface|train|train-id] [batch]`
//! (`train`: one MobileFaceSwap distillation step at 224; `train-id` with the identity loss).
//! Prints each kernel's time (timestamp queries), FLOPs and bytes, sorted by time.

use fswap::models::bench::build;
use fswap::train::bench::{distill_session, profile_step, DistillBench};
use fswap::{Context, ContextOptions};

fn main() -> fswap::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().map(String::as_str).unwrap_or("idn");
    let batch: usize = args.get(1).and_then(|b| b.parse().ok()).unwrap_or(1);
    let ctx = Context::new(&ContextOptions::from_env()?)?;
    println!("{} — {model}, batch {batch}", ctx.describe());
    let prof = if let Some(rest) = model.strip_prefix("train") {
        let b = DistillBench {
            batch,
            identity_loss: rest == "-id",
        };
        let mut session = distill_session(&ctx, b, None)?;
        profile_step(&ctx, &mut session, 2)?
    } else if let Some(ae) = model.strip_prefix("ae-") {
        // faceswap's autoencoder: forward and backward of encoder + both decoders at 64.
        let arch = fswap::models::faceswap_ae::Arch::from_name(ae)?;
        let file = fswap::train::autoencoder::init_file(arch, 64, false, 0, false)?;
        let w = fswap::weights::Weights::from_tensors("init", file, Default::default());
        let face =
            fswap::weights::HostTensor::new(vec![batch, 3, 64, 64], vec![0.5; batch * 3 * 64 * 64]);
        let inputs = std::collections::BTreeMap::from([("face".to_string(), face)]);
        let mut g = fswap::autograd::Graph::new(&ctx);
        let (_, outs) = fswap::train::autoencoder::grad_graph(&mut g, ae, &w, &inputs)?;
        let seeds = outs
            .iter()
            .map(|(_, v, _)| {
                Ok((
                    *v,
                    fswap::Tensor::from_f32(
                        &ctx,
                        g.shape(*v),
                        &vec![0.01; g.shape(*v).numel()],
                        "seed",
                    )?,
                ))
            })
            .collect::<fswap::Result<Vec<_>>>()?;
        let grads = g.backward(&seeds)?;
        g.sync().run(&ctx)?;
        let mut all = g.forward().refs();
        all.extend(grads.plan.refs());
        ctx.profile(&all, 1, 2)?
    } else {
        let bench = build(&ctx, model, batch, None)?;
        ctx.profile(&bench.plan.refs(), 2, 5)?
    };
    let mut rows = prof.entries.clone();
    rows.sort_by(|a, b| b.micros.total_cmp(&a.micros));
    println!(
        "{:>9} {:>7} {:>8} {:>8}  kernel",
        "µs", "%", "GFLOP/s", "GB/s"
    );
    let sum: f64 = rows.iter().map(|r| r.micros).sum();
    for r in &rows {
        println!(
            "{:>9.1} {:>6.1}% {:>8.2} {:>8.2}  {}",
            r.micros,
            100.0 * r.micros / sum,
            r.stats.flops as f64 / r.micros / 1e3,
            r.stats.bytes as f64 / r.micros / 1e3,
            r.label
        );
    }
    println!(
        "{} dispatches; one-pass total {:.1} µs ({}), sum of per-dispatch passes {:.1} µs",
        rows.len(),
        prof.total_micros,
        prof.timing,
        sum
    );
    Ok(())
}
