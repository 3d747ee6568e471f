//! `fswap train`: training on the GPU. `distill` and `finetune` train the MobileFaceSwap student
//! from a TOML config (see `fswap::train::config`).

use std::path::PathBuf;

use clap::Subcommand;
use fswap::models::faceswap_ae::Arch;
use fswap::train::config::Config;
use fswap::train::distill::{self, Mode};
use fswap::train::per_pair::{self, PairOptions};
use fswap::{Context, ContextOptions, Result};

/// Arguments of `fswap train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: TrainCommand,
}

#[derive(Subcommand, Debug)]
enum TrainCommand {
    /// Distil a teacher (its outputs in the data folder, or a model the engine runs) into the
    /// MobileFaceSwap student, with α = cos²·Q loss reweighting.
    Distill(ConfigArgs),
    /// Fine-tune exported MobileFaceSwap weights on your own frames (one identity onto them).
    Finetune(ConfigArgs),
    /// Train faceswap's per-pair autoencoder (shared encoder, one decoder per identity) on two
    /// facesets from `fswap extract`.
    Autoencoder(AutoencoderArgs),
}

#[derive(clap::Args, Debug)]
struct AutoencoderArgs {
    /// `lightweight` or `original`.
    #[arg(long, default_value = "lightweight")]
    model: String,
    /// Faceset of identity A.
    #[arg(long)]
    a: PathBuf,
    /// Faceset of identity B.
    #[arg(long)]
    b: PathBuf,
    /// The run folder (loss.csv, loss.png, preview.png, checkpoint, model.safetensors).
    #[arg(short, long)]
    out: PathBuf,
    /// Total steps.
    #[arg(long, default_value_t = 10000)]
    steps: u64,
    /// Faces per identity per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Model input side (64 is faceswap's; up to 256, a multiple of 16).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Add the learned-mask branch to both decoders.
    #[arg(long)]
    learn_mask: bool,
    /// ICNR initialisation of the upscale convolutions.
    #[arg(long)]
    icnr: bool,
    /// Seed of the initialisation, the sample order and the augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Adam learning rate (faceswap: 5e-5).
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    /// Adam epsilon (faceswap: 1e-7).
    #[arg(long, default_value_t = 1e-7)]
    eps: f64,
    /// DSSIM weight.
    #[arg(long, default_value_t = 1.0)]
    ssim: f32,
    /// MSE weight.
    #[arg(long, default_value_t = 1.0)]
    mse: f32,
    /// Do not weight the MSE by the landmark mask.
    #[arg(long)]
    no_mask_penalty: bool,
    /// No augmentation (input and target are the face itself).
    #[arg(long)]
    no_augment: bool,
    /// Log the losses every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// Write preview.png every N steps.
    #[arg(long, default_value_t = 100)]
    preview_every: u64,
    /// Checkpoint and export model.safetensors every N steps.
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// Continue from the run folder's checkpoint.
    #[arg(long)]
    resume: bool,
}

#[derive(clap::Args, Debug)]
struct ConfigArgs {
    /// The run's TOML config.
    #[arg(long, short)]
    config: PathBuf,
    /// Continue from the run folder's checkpoint (same config, more steps allowed).
    #[arg(long)]
    resume: bool,
}

/// Runs `fswap train`.
pub fn run(options: &ContextOptions, args: &Args) -> Result<()> {
    let (mode, a) = match &args.command {
        TrainCommand::Distill(a) => (Mode::Distill, a),
        TrainCommand::Finetune(a) => (Mode::Finetune, a),
        TrainCommand::Autoencoder(a) => return autoencoder(options, a),
    };
    let cfg = Config::load(&a.config)?;
    let ctx = Context::new(options)?;
    eprintln!("device: {}", ctx.describe());
    let s = distill::run(&ctx, mode, &cfg, a.resume)?;
    let show = |v: Option<f64>| v.map(|x| format!("{x:.5}")).unwrap_or("-".into());
    println!(
        "steps {}..{}: loss {} -> {}",
        s.start_step,
        s.steps,
        show(s.first_loss),
        show(s.last_loss)
    );
    println!("run folder: {}", s.dir.display());
    println!("student:    {}", s.student.display());
    Ok(())
}

fn autoencoder(options: &ContextOptions, a: &AutoencoderArgs) -> Result<()> {
    let o = PairOptions {
        arch: Arch::from_name(&a.model)?,
        a: a.a.clone(),
        b: a.b.clone(),
        out: a.out.clone(),
        steps: a.steps,
        batch: a.batch,
        size: a.size,
        learn_mask: a.learn_mask,
        icnr: a.icnr,
        seed: a.seed,
        lr: a.lr,
        eps: a.eps,
        ssim: a.ssim,
        mse: a.mse,
        mask_penalty: !a.no_mask_penalty,
        augment: !a.no_augment,
        log_every: a.log_every,
        preview_every: a.preview_every,
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
    };
    let ctx = Context::new(options)?;
    eprintln!("device: {}", ctx.describe());
    let s = per_pair::run(&ctx, &o)?;
    let show = |v: Option<(f64, f64)>| {
        v.map(|(x, y)| format!("a {x:.5}, b {y:.5}"))
            .unwrap_or("-".into())
    };
    println!(
        "steps {}..{}: loss {} -> {}",
        s.start_step,
        s.steps,
        show(s.first),
        show(s.last)
    );
    println!("model: {}", s.model.display());
    Ok(())
}
