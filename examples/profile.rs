//! Per-dispatch GPU profile of a model on seeded random weights:
//! `cargo run --release --example profile -- [idn|injection|arcface] [batch]`.
//! Prints each kernel's time (timestamp queries), FLOPs and bytes, sorted by time.

use fswap::models::bench::build;
use fswap::{Context, ContextOptions};

fn main() -> fswap::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().map(String::as_str).unwrap_or("idn");
    let batch: usize = args.get(1).and_then(|b| b.parse().ok()).unwrap_or(1);
    let ctx = Context::new(&ContextOptions::from_env()?)?;
    println!("{} — {model}, batch {batch}", ctx.describe());
    let bench = build(&ctx, model, batch, None)?;
    let prof = ctx.profile(&bench.plan.refs(), 2, 5)?;
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
