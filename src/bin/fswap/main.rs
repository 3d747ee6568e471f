//! `fswap`: the command-line front end. `fswap info` describes adapters and the chosen device;
//! `fswap bench` benchmarks the models and kernels on it; `fswap eval` runs a model on named inputs;
//! `fswap identity` bakes a source identity into the per-frame model.

mod bench;
mod convert;
mod detect;
mod eval;
mod extract;
mod grad;
mod identity;
mod info;
mod swap;
mod train;

use clap::{Parser, Subcommand};
use fswap::gpu::BackendChoice;
use fswap::{ContextOptions, Result, StoragePath};

/// Real-time face-swap networks on any GPU wgpu reaches: fp16 WGSL kernels.
#[derive(Parser, Debug)]
#[command(name = "fswap", version, about, propagate_version = true)]
struct Cli {
    /// Graphics API to use: vulkan, metal, dx12 or gl (default: the best adapter of any).
    #[arg(long, global = true, env = "FSWAP_BACKEND", value_name = "API")]
    backend: Option<String>,
    /// Index of the adapter to use, in the order `fswap info` lists them.
    #[arg(long, global = true, env = "FSWAP_ADAPTER", value_name = "N")]
    adapter: Option<String>,
    /// Tensor storage: f16 (native, needs SHADER_F16) or packed (u32 pairs, runs everywhere).
    /// Default: f16 where the adapter has it.
    #[arg(long, global = true, env = "FSWAP_STORAGE", value_name = "PATH")]
    storage: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List adapters, then describe the chosen device: backend, driver, storage path, features,
    /// limits.
    Info(info::Args),
    /// Benchmark the models per frame (default: all, on seeded random weights) or the kernel
    /// families (--kernels).
    Bench(bench::Args),
    /// Run a model on named inputs and write named float32 outputs (check an export).
    Eval(eval::Args),
    /// Back-propagate seeds through a model and write the gradients of every input and
    /// parameter (check the trainer against the training framework).
    Grad(grad::Args),
    /// Inject a source identity once and save the per-frame model's weights.
    Identity(identity::Args),
    /// Find faces: boxes, 68 and 5 landmarks, head pose.
    Detect(detect::Args),
    /// Swap the source's face into images, folders or videos.
    Swap(swap::Args),
    /// Cut aligned faces out of videos, images or folders into a faceset.
    Extract(extract::Args),
    /// Train on the GPU: distil or fine-tune MobileFaceSwap, or a per-pair autoencoder.
    Train(train::Args),
    /// Swap the faces of a video or images with a trained per-pair autoencoder.
    Convert(convert::Args),
}

/// A non-empty option value (an empty environment variable counts as unset).
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl Cli {
    /// The device options from the command line and environment (the command line wins: clap
    /// reads the environment only for options not given).
    fn options(&self) -> Result<ContextOptions> {
        Ok(ContextOptions {
            backend: given(&self.backend).map(BackendChoice::parse).transpose()?,
            adapter: given(&self.adapter)
                .map(|a| {
                    a.parse::<usize>().map_err(|_| {
                        fswap::Error::param(
                            "--adapter",
                            format!("'{a}' is not an adapter index (see `fswap info`)"),
                        )
                    })
                })
                .transpose()?,
            storage: given(&self.storage).map(StoragePath::parse).transpose()?,
        })
    }
}

fn run(cli: &Cli) -> Result<()> {
    let options = cli.options()?;
    match &cli.command {
        Command::Info(args) => info::run(&options, args),
        Command::Bench(args) => bench::run(&options, args),
        Command::Eval(args) => eval::run(&options, args),
        Command::Grad(args) => grad::run(&options, args),
        Command::Identity(args) => identity::run(&options, args),
        Command::Detect(args) => detect::run(&options, args),
        Command::Swap(args) => swap::run(&options, args),
        Command::Extract(args) => extract::run(&options, args),
        Command::Train(args) => train::run(&options, args),
        Command::Convert(args) => convert::run(&options, args),
    }
}

fn main() {
    // A panic is a bug, in fswap or below it; still report it as one line and exit 1, like any
    // other error, instead of a backtrace dump (RUST_BACKTRACE=1 still prints the backtrace).
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{at}: {msg}");
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
        std::process::exit(1);
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Err(e) = run(&cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
