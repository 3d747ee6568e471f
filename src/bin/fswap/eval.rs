//! `fswap eval`: run a model on named inputs and write named float32 outputs, to check an export
//! against the training framework.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use clap::Args as ClapArgs;
use fswap::eval::{eval, Tensors, MODELS};
use fswap::io::read_tensor;
use fswap::weights::{write_safetensors, Weights};
use fswap::{Context, ContextOptions, Error, Result};

/// Arguments of `fswap eval`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model: arcface, mobilefaceswap (the official BuildFaceSwap checkpoint) or idn (a saved identity).
    #[arg(long)]
    model: String,
    /// Weights (safetensors, from tools/export.py or `fswap identity`).
    #[arg(long)]
    weights: PathBuf,
    /// An input as NAME=FILE (.npy float32, or safetensors holding NAME or a single tensor); repeat.
    #[arg(long = "input", value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// Output safetensors file of named float32 tensors (written atomically).
    #[arg(long)]
    output: PathBuf,
}

/// Parses `NAME=FILE` pairs and reads each tensor.
pub fn read_inputs(specs: &[String]) -> Result<Tensors> {
    let mut inputs = BTreeMap::new();
    for spec in specs {
        let (name, file) = spec
            .split_once('=')
            .ok_or_else(|| Error::param("--input", format!("'{spec}' is not NAME=FILE")))?;
        if inputs.contains_key(name) {
            return Err(Error::param("--input", format!("'{name}' given twice")));
        }
        inputs.insert(
            name.to_string(),
            read_tensor(std::path::Path::new(file), name)?,
        );
    }
    Ok(inputs)
}

/// Runs the command.
pub fn run(options: &ContextOptions, args: &Args) -> Result<()> {
    if !MODELS.iter().any(|(m, _)| *m == args.model) {
        let known: Vec<&str> = MODELS.iter().map(|m| m.0).collect();
        return Err(Error::param(
            "eval",
            format!(
                "unknown model '{}' (known: {})",
                args.model,
                known.join(", ")
            ),
        ));
    }
    let inputs = read_inputs(&args.inputs)?;
    let weights = Weights::open(&args.weights)?;
    let ctx = Context::new(options)?;
    eprintln!("device: {}", ctx.describe());
    let outputs = eval(&ctx, &args.model, &weights, &inputs)?;
    let meta = HashMap::from([
        ("fswap.model".to_string(), args.model.clone()),
        ("fswap.device".to_string(), ctx.describe()),
    ]);
    write_safetensors(&args.output, &outputs, meta)?;
    for (name, t) in &outputs {
        eprintln!("{name} {:?}", t.shape);
    }
    Ok(())
}
