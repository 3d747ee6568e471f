//! `fswap identity`: run the identity injection once for a source and save the per-frame model's
//! kernels (with `final.*` and `mask.*`) as safetensors, loadable by `fswap eval --model idn`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args as ClapArgs;
use fswap::eval::{bake_identity, eval};
use fswap::models::mobilefaceswap::identity_metadata;
use fswap::weights::{write_safetensors, HostTensor, Weights};
use fswap::{Context, ContextOptions, Error, Result};

use crate::eval::read_inputs;

/// Arguments of `fswap identity`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// MobileFaceSwap weights (the official BuildFaceSwap keys, exported by tools/export.py).
    #[arg(long)]
    weights: PathBuf,
    /// ArcFace weights, to compute the identity from `--input face=FILE` (an aligned, normalised
    /// [1, 3, 112, 112] face).
    #[arg(long)]
    arcface: Option<PathBuf>,
    /// Inputs as NAME=FILE: either `face` (with --arcface) or `id_embedding` and `id_feature_map`.
    #[arg(long = "input", value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// Output safetensors (written atomically).
    #[arg(long)]
    output: PathBuf,
}

/// Runs the command.
pub fn run(options: &ContextOptions, args: &Args) -> Result<()> {
    let mut inputs = read_inputs(&args.inputs)?;
    let weights = Weights::open(&args.weights)?;
    let ctx = Context::new(options)?;
    let (emb, map): (HostTensor, HostTensor) = match (&args.arcface, inputs.remove("face")) {
        (Some(path), Some(face)) => {
            if face.shape.first() != Some(&1) {
                return Err(Error::param(
                    "identity",
                    format!(
                        "'face' must be one face [1, 3, 112, 112], got {:?}",
                        face.shape
                    ),
                ));
            }
            let arc = Weights::open(path)?;
            let mut out = eval(
                &ctx,
                "arcface",
                &arc,
                &BTreeMap::from([("face".to_string(), face)]),
            )?;
            (
                out.remove("id_embedding").expect("arcface output"),
                out.remove("id_feature_map").expect("arcface output"),
            )
        }
        (None, Some(_)) => return Err(Error::param("identity", "'face' needs --arcface WEIGHTS")),
        (_, None) => {
            let take = |k: &str, inputs: &mut BTreeMap<String, HostTensor>| {
                inputs.remove(k).ok_or_else(|| {
                    Error::param(
                        "identity",
                        format!("missing input '{k}' (or give face=FILE with --arcface)"),
                    )
                })
            };
            (
                take("id_embedding", &mut inputs)?,
                take("id_feature_map", &mut inputs)?,
            )
        }
    };
    if let Some(extra) = inputs.keys().next() {
        return Err(Error::param("identity", format!("unknown input '{extra}'")));
    }
    let baked = bake_identity(&ctx, &weights, &emb, &map)?;
    write_safetensors(&args.output, &baked, identity_metadata())?;
    eprintln!(
        "identity: {} tensors -> {}",
        baked.len(),
        args.output.display()
    );
    Ok(())
}
