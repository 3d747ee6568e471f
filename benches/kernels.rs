//! Criterion benches of every kernel family, over the cases of `fswap::bench` (the same ones
//! `fswap bench` runs). Each iteration records a case's dispatches into one pass, submits, and waits
//! for the queue: wall time of a whole GPU round trip, so small kernels include submit latency
//! (`fswap bench` reports GPU timestamps instead).
//!
//! The device comes from `FSWAP_BACKEND`, `FSWAP_ADAPTER` and `FSWAP_STORAGE`, as for the CLI:
//!
//! ```sh
//! cargo bench --bench kernels                          # best adapter, all families
//! FSWAP_STORAGE=packed cargo bench --bench kernels -- conv/
//! ```
//!
//! Throughput is FLOPs as "elements" (so `Gelem/s` reads as GFLOP/s) plus bytes moved; cases with
//! no arithmetic (copies, nearest resampling) report bytes only.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use fswap::bench::{self, FAMILIES};
use fswap::{Context, ContextOptions};

fn kernels(c: &mut Criterion) {
    let options = ContextOptions::from_env().unwrap_or_else(|e| panic!("FSWAP_* options: {e}"));
    let ctx = Context::new(&options).unwrap_or_else(|e| panic!("no device: {e}"));
    let timing = if ctx.has_timestamps() {
        "has timestamps"
    } else {
        "no timestamps"
    };
    eprintln!("fswap kernels on: {} ({timing})", ctx.describe());
    for family in FAMILIES {
        // One family's tensors at a time.
        let cases = bench::cases(&ctx, Some(family))
            .unwrap_or_else(|e| panic!("building the {family} cases: {e}"));
        let mut group = c.benchmark_group(*family);
        // lavapipe runs the biggest cases at a few per second: few, flat samples.
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for case in &cases {
            let stats = case.stats();
            group.throughput(if stats.flops > 0 {
                Throughput::ElementsAndBytes {
                    elements: stats.flops,
                    bytes: stats.bytes,
                }
            } else {
                Throughput::Bytes(stats.bytes)
            });
            let refs = case.refs();
            group.bench_function(case.name.as_str(), |b| {
                b.iter(|| {
                    ctx.run(&refs).expect("submit");
                    ctx.wait().expect("wait");
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
