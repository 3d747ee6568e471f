//! `fswap bench`: the suite of [`fswap::bench`] on the chosen device.

use std::time::Instant;

use fswap::bench::{self as suite, BenchCase, BenchResult};
use fswap::models::bench as models;
use fswap::{Context, ContextOptions, Result};
use serde::Serialize;

/// Options of `fswap bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this kernel family (conv, pointwise, linear, ...); default: all of them.
    #[arg(long, value_name = "NAME")]
    family: Option<String>,
    /// Timed iterations per case; default: as many as fit in about half a second (3 to 50).
    #[arg(long, value_name = "N")]
    iters: Option<u32>,
    /// Untimed iterations per case before timing.
    #[arg(long, value_name = "N", default_value_t = 1)]
    warmup: u32,
    /// Print JSON instead of a table: one object per model (an array without --model).
    #[arg(long)]
    json: bool,
    /// Benchmark this model (idn, injection, arcface, mobilefsgan, mobilefacenet); default: every
    /// model. Kernel families are benchmarked with --kernels or --family instead.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["family", "kernels"])]
    model: Option<String>,
    /// Frames per run for model benchmarks.
    #[arg(long, value_name = "N", default_value_t = 1)]
    batch: usize,
    /// Weights for --model (safetensors); default: seeded random weights with the manifest's shapes.
    #[arg(long, value_name = "FILE", requires = "model")]
    weights: Option<std::path::PathBuf>,
    /// Benchmark the kernel families instead of the models.
    #[arg(long)]
    kernels: bool,
    /// Benchmark the whole per-frame face pipeline on --image (needs --models): ms per stage,
    /// frames per second, dispatches per frame.
    #[arg(long, requires_all = ["models", "image"])]
    pipeline: bool,
    /// Folder of model files for --pipeline (see weights/README.md).
    #[arg(long, value_name = "DIR")]
    models: Option<std::path::PathBuf>,
    /// The frame for --pipeline (its largest face is also the source identity).
    #[arg(long, value_name = "FILE")]
    image: Option<std::path::PathBuf>,
}

/// What `--json` prints.
#[derive(Serialize)]
struct Report {
    adapter: String,
    backend: String,
    device_type: String,
    driver: String,
    driver_info: String,
    storage: &'static str,
    /// `"gpu"`: timestamp queries; `"wall"`: submit-to-idle wall time.
    timing: &'static str,
    results: Vec<BenchResult>,
}

/// Time budget per case when `--iters` is not given.
const TARGET_SECS: f64 = 0.5;

/// Iterations that fit in [`TARGET_SECS`], from one timed run (after warm-up).
fn auto_iters(ctx: &Context, case: &BenchCase) -> Result<u32> {
    let refs = case.refs();
    let t0 = Instant::now();
    ctx.run(&refs)?;
    ctx.wait()?;
    let one = t0.elapsed().as_secs_f64().max(1e-6);
    // Profiling with timestamps runs the work twice per iteration (per-dispatch passes + one pass).
    let per_iter = if ctx.has_timestamps() { 2.0 * one } else { one };
    Ok(((TARGET_SECS / per_iter) as u32).clamp(3, 50))
}

/// Width of the case column.
const NAME_W: usize = 40;

fn row(r: &BenchResult) -> String {
    let mut out = format!(
        "{:<10} {:<NAME_W$} {:>11.1} {:>9.2} {:>8.2} {:>5}",
        r.family, r.name, r.micros, r.gflops, r.gbps, r.iters
    );
    // Cases of several dispatches: each one's own time below the case.
    if r.per_dispatch.len() > 1 {
        for d in &r.per_dispatch {
            let t = d
                .micros
                .map(|m| format!("{m:.1}"))
                .unwrap_or_else(|| "-".into());
            out += &format!(
                "\n{:<10} {:<NAME_W$} {:>11}",
                "",
                format!("  {}", d.label),
                t
            );
        }
    }
    out
}

/// Runs `fswap bench`: the models (default) or the kernel families (`--kernels`, `--family`).
pub fn run(options: &ContextOptions, args: &Args) -> Result<()> {
    if args.iters == Some(0) {
        return Err(fswap::Error::param("--iters", "must be at least 1"));
    }
    if args.pipeline {
        run_pipeline(options, args)
    } else if args.kernels || args.family.is_some() {
        run_kernels(options, args)
    } else {
        run_models(options, args)
    }
}

/// The face pipeline, stage by stage, on one frame repeated.
fn run_pipeline(options: &ContextOptions, args: &Args) -> Result<()> {
    use fswap::face::pipeline::{
        identity_from_image, idn_statics, model_file, time_frame, Analyzer, FrameSwapper,
    };
    let (dir, path) = (
        args.models.as_ref().expect("clap requires it"),
        args.image.as_ref().expect("clap requires it"),
    );
    let img = fswap::media::image::load(path)?;
    let ctx = Context::new(options)?;
    let mut analyzer = Analyzer::open(&ctx, dir)?;
    let mfs = model_file(dir, "mobilefaceswap.safetensors")?;
    let (identity, _) = identity_from_image(
        &ctx,
        &mut analyzer,
        &model_file(dir, "arcface.safetensors")?,
        &mfs,
        &img,
        path,
    )?;
    let swapper = FrameSwapper::new(
        &ctx,
        &identity,
        &idn_statics(&mfs),
        img.width() as usize,
        img.height() as usize,
        4,
    )?;
    for _ in 0..args.warmup.max(1) {
        time_frame(&ctx, &mut analyzer, &swapper, &img)?;
    }
    let runs: Vec<_> = (0..args.iters.unwrap_or(3))
        .map(|_| time_frame(&ctx, &mut analyzer, &swapper, &img))
        .collect::<Result<_>>()?;
    let median = |f: &dyn Fn(&fswap::face::pipeline::StageTimes) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m = fswap::face::pipeline::StageTimes {
        upload_ms: median(&|s| s.upload_ms),
        detect_ms: median(&|s| s.detect_ms),
        landmarks_ms: median(&|s| s.landmarks_ms),
        swap_gpu_ms: median(&|s| s.swap_gpu_ms),
        download_ms: median(&|s| s.download_ms),
        swap_dispatches: runs[0].swap_dispatches,
        faces: runs[0].faces,
    };
    if args.json {
        let v = serde_json::json!({"device": ctx.describe(), "image": path.display().to_string(), "width": img.width(), "height": img.height(),
            "stages": m, "total_ms": m.total_ms(), "fps": 1000.0 / m.total_ms()});
        println!("{v}");
    } else {
        println!("device:  {}", ctx.describe());
        println!(
            "frame:   {} ({}x{}), {} face(s), median of {} frames",
            path.display(),
            img.width(),
            img.height(),
            m.faces,
            runs.len()
        );
        for (name, v) in [
            ("upload (8-bit → fp16)", m.upload_ms),
            ("detect (FaceBoxes + NMS)", m.detect_ms),
            ("landmarks (3DDFA)", m.landmarks_ms),
            ("swap (GPU)", m.swap_gpu_ms),
            ("download (→ 8-bit)", m.download_ms),
        ] {
            println!("  {name:<28} {v:>10.1} ms");
        }
        println!(
            "  {:<28} {:>10.1} ms  ({:.2} fps; swap plan {} dispatches)",
            "total",
            m.total_ms(),
            1000.0 / m.total_ms(),
            m.swap_dispatches
        );
    }
    Ok(())
}

/// Whole models, per frame.
fn run_models(options: &ContextOptions, args: &Args) -> Result<()> {
    let names: Vec<&str> = match &args.model {
        Some(m) => vec![m.as_str()],
        None => models::MODELS.iter().map(|m| m.0).collect(),
    };
    if let Some(bad) = names
        .iter()
        .find(|n| !models::MODELS.iter().any(|m| m.0 == **n))
    {
        let known: Vec<&str> = models::MODELS.iter().map(|m| m.0).collect();
        return Err(fswap::Error::param(
            "bench",
            format!("unknown model '{bad}' (known: {})", known.join(", ")),
        ));
    }
    let weights = args
        .weights
        .as_ref()
        .map(fswap::weights::Weights::open)
        .transpose()?;
    let ctx = Context::new(options)?;
    if !args.json {
        println!("device:  {}", ctx.describe());
        println!(
            "{:<10} {:>5} {:>12} {:>10} {:>9} {:>10} {:>8} {:>6}  weights",
            "model", "batch", "ms/frame", "dispatches", "GFLOP/fr", "MB/frame", "GFLOP/s", "timing"
        );
    }
    let mut results = Vec::new();
    for name in names {
        let bench = models::build(&ctx, name, args.batch, weights.as_ref())?;
        // Models run for tenths of a second (ArcFace: seconds) on software devices: a couple of
        // iterations suffice there and keep the default run short.
        let r = models::measure(&ctx, &bench, args.warmup, args.iters.unwrap_or(2))?;
        if !args.json {
            println!(
                "{:<10} {:>5} {:>12.3} {:>10} {:>9.3} {:>10.1} {:>8.2} {:>6}  {}",
                r.model,
                r.batch,
                r.ms_per_frame,
                r.dispatches,
                r.gflop_per_frame,
                r.mb_per_frame,
                r.gflops,
                r.timing,
                r.weights
            );
        }
        results.push(r);
    }
    if args.json {
        let text = if args.model.is_some() {
            serde_json::to_string_pretty(&results[0])
        } else {
            serde_json::to_string_pretty(&results)
        }
        .map_err(|e| fswap::Error::param("bench --json", e.to_string()))?;
        println!("{text}");
    }
    Ok(())
}

/// The kernel families' cases.
fn run_kernels(options: &ContextOptions, args: &Args) -> Result<()> {
    let ctx = Context::new(options)?;
    let info = ctx
        .adapter_info
        .clone()
        .unwrap_or_else(|| wgpu::AdapterInfo::new(wgpu::DeviceType::Other, wgpu::Backend::Noop));
    let timing = if ctx.has_timestamps() { "gpu" } else { "wall" };
    let families: Vec<&str> = match &args.family {
        Some(f) => vec![f.as_str()],
        None => suite::FAMILIES.to_vec(),
    };
    if !args.json {
        println!("device:  {}", ctx.describe());
        println!(
            "timing:  {}",
            if timing == "gpu" {
                "GPU timestamp queries (mean per iteration, all of a case's dispatches in one pass)"
            } else {
                "wall clock, submit to idle (no TIMESTAMP_QUERY; includes submit overhead)"
            }
        );
        println!(
            "{:<10} {:<NAME_W$} {:>11} {:>9} {:>8} {:>5}",
            "family", "case", "µs", "GFLOP/s", "GB/s", "iters"
        );
    }
    let mut results = Vec::new();
    for family in families {
        // Built per family, so only one family's tensors are resident at a time.
        let cases = suite::cases(&ctx, Some(family))?;
        for case in &cases {
            let (warmup, iters) = match args.iters {
                Some(n) => (args.warmup, n),
                None => {
                    // Warm up first so the calibration run measures no first-use costs; the
                    // calibration run then serves as the profile's warm-up.
                    for _ in 0..args.warmup {
                        ctx.run(&case.refs())?;
                    }
                    ctx.wait()?;
                    (0, auto_iters(&ctx, case)?)
                }
            };
            let r = case.measure(&ctx, warmup, iters)?;
            if !args.json {
                println!("{}", row(&r));
            }
            results.push(r);
        }
    }
    if args.json {
        let report = Report {
            adapter: info.name,
            backend: info.backend.to_str().to_string(),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver,
            driver_info: info.driver_info,
            storage: ctx.storage().name(),
            timing,
            results,
        };
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| fswap::Error::param("bench --json", e.to_string()))?;
        println!("{text}");
    }
    Ok(())
}
