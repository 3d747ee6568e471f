//! `fswap grad`: one forward and backward of a model for given output seeds, writing the gradient
//! of every input and every parameter (check the trainer against the training framework).

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args as ClapArgs;
use fswap::train::grad::{grad, MODELS};
use fswap::weights::{write_safetensors, Weights};
use fswap::{Context, ContextOptions, Error, Result};

use crate::eval::read_inputs;

/// Arguments of `fswap grad`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model: idn (an injected UNet state dict), mobilefaceswap (BuildFaceSwap) or arcface.
    #[arg(long)]
    model: String,
    /// Weights (safetensors, from tools/export.py or `fswap identity`).
    #[arg(long)]
    weights: PathBuf,
    /// An input as NAME=FILE (.npy float32, or safetensors); repeat.
    #[arg(long = "input", value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// The gradient seed of an output as OUTPUT=FILE (same shape as the output); repeat. The
    /// gradients written are those of Σ output·seed over the seeded outputs.
    #[arg(long = "seed", value_name = "OUTPUT=FILE", required = true)]
    seeds: Vec<String>,
    /// Output safetensors file: one f32 gradient per input (by input name) and per parameter (by
    /// its name and layout in the weights file); written atomically.
    #[arg(long)]
    output: PathBuf,
    /// Batch norms on batch statistics (training semantics) instead of the running statistics.
    #[arg(long)]
    train_mode: bool,
}

/// Runs the command.
pub fn run(options: &ContextOptions, args: &Args) -> Result<()> {
    if !MODELS.iter().any(|(m, _)| *m == args.model) {
        let known: Vec<&str> = MODELS.iter().map(|m| m.0).collect();
        return Err(Error::param(
            "grad",
            format!(
                "unknown model '{}' (known: {})",
                args.model,
                known.join(", ")
            ),
        ));
    }
    let inputs = read_inputs(&args.inputs)?;
    let seeds = read_inputs(&args.seeds)?;
    let weights = Weights::open(&args.weights)?;
    let ctx = Context::new(options)?;
    eprintln!("device: {}", ctx.describe());
    let grads = grad(
        &ctx,
        &args.model,
        &weights,
        &inputs,
        &seeds,
        args.train_mode,
    )?;
    let meta = HashMap::from([
        ("fswap.model".to_string(), args.model.clone()),
        ("fswap.device".to_string(), ctx.describe()),
        (
            "fswap.norm_mode".to_string(),
            if args.train_mode { "train" } else { "eval" }.to_string(),
        ),
        (
            "fswap.linear_layout".to_string(),
            weights
                .metadata()
                .get("fswap.linear_layout")
                .cloned()
                .unwrap_or_else(|| "out_in".into()),
        ),
    ]);
    write_safetensors(&args.output, &grads, meta)?;
    eprintln!(
        "{} gradients written to {}",
        grads.len(),
        args.output.display()
    );
    Ok(())
}
