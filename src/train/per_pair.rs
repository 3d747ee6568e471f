//! `fswap train autoencoder`: faceswap's per-pair training (spec alignment.md B.2) on the GPU.
//! One shared encoder, one decoder per identity; each step feeds a batch of augmented faces of
//! each side (warped input, unwarped target: faceswap's augmentation) and minimises per side
//! `λ_ssim·DSSIM + λ_mse·MSE` (faceswap's default loss: SSIM plus MSE at 100%), the MSE weighted
//! by the "extended" landmark mask when the mask penalty is on (faceswap's `penalized_mask_loss`;
//! here it weights the MSE term, the SSIM term sees the whole face), plus the MSE of the learned
//! mask against the landmark mask when the model has a mask branch. Adam with faceswap's lr 5e-5
//! and ε 1e-7.
//!
//! The run folder holds `loss.csv` (`step,loss_a,loss_b,lr`), `loss.png`, `preview.png` (rows
//! A→A, A→B, B→B, B→A), `checkpoint.safetensors` and `model.safetensors` (what `fswap convert`
//! reads).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::RgbImage;

use super::augment::{penalized_mask, AugmentConfig, Augmenter};
use super::autoencoder::{build_pair, export, init_file};
use super::losses::Losses;
use super::run::{train_loop, Cadence, Checkpoint, Feed, LossLog, RunDir};
use super::step::TrainStep;
use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::face::convert::{save_run_model, Layout, RunMeta};
use crate::face::faceset::Faceset;
use crate::gpu::{Context, Plan};
use crate::kernels::loss::{Distance, PixelSpec, SsimSpec};
use crate::kernels::optim::{LossScale, Optimizer, Scaler, Schedule};
use crate::models::faceswap_ae::{Arch, Autoencoder, Config as AeConfig, Side};
use crate::tensor::{Shape, Tensor};
use crate::weights::Weights;

/// Options of a per-pair run.
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// `lightweight` or `original`.
    pub arch: Arch,
    /// Faceset of identity A.
    pub a: PathBuf,
    /// Faceset of identity B.
    pub b: PathBuf,
    /// The run folder.
    pub out: PathBuf,
    /// Total steps.
    pub steps: u64,
    /// Faces per side per step.
    pub batch: usize,
    /// Model input side.
    pub size: usize,
    /// Add the learned-mask branch.
    pub learn_mask: bool,
    /// ICNR initialisation of the upscale convolutions.
    pub icnr: bool,
    /// Seed of the initialisation, the sample order and the augmentation.
    pub seed: u64,
    /// Adam learning rate.
    pub lr: f64,
    /// Adam ε.
    pub eps: f64,
    /// DSSIM weight.
    pub ssim: f32,
    /// MSE weight.
    pub mse: f32,
    /// Weight the MSE by the landmark mask.
    pub mask_penalty: bool,
    /// Augment (faceswap's defaults); off: input = target = the face.
    pub augment: bool,
    /// Log every this many steps.
    pub log_every: u64,
    /// Preview every this many steps (at the next log).
    pub preview_every: u64,
    /// Checkpoint (and export the model) every this many steps.
    pub checkpoint_every: u64,
    /// Continue from the run folder's checkpoint.
    pub resume: bool,
}

/// A side's faces at the model size, and their masks.
struct SideData {
    faces: Vec<Vec<f32>>,
    masks: Vec<Vec<f32>>,
}

fn load_side(set: &Faceset, size: usize) -> Result<SideData> {
    let mut faces = Vec::with_capacity(set.len());
    let mut masks = Vec::with_capacity(set.len());
    for i in 0..set.len() {
        faces.push(set.load_planar(i, size)?);
        masks.push(penalized_mask(&set.aligned_landmarks(i, size), size)?);
    }
    Ok(SideData { faces, masks })
}

struct PairFeed<'c> {
    ctx: &'c Context,
    sides: [SideData; 2],
    inputs: [Tensor; 2],
    targets: [Tensor; 2],
    masks: [Tensor; 2],
    aug: AugmentConfig,
    size: usize,
    batch: usize,
    seed: u64,
    /// Loss slots per side (summed into loss_a, loss_b).
    slots: [Vec<usize>; 2],
    arch: Arch,
    run_dir: PathBuf,
    preview: PathBuf,
    preview_every: u64,
    last_preview: Option<u64>,
    cfg: AeConfig,
    meta: RunMeta,
}

impl Feed for PairFeed<'_> {
    fn feed(&mut self, ctx: &Context, step: u64) -> Result<()> {
        for s in 0..2 {
            let data = &self.sides[s];
            let n = data.faces.len();
            let idx: Vec<usize> = (0..self.batch)
                .map(|j| {
                    super::data::sample_index(
                        self.seed ^ (s as u64 + 1),
                        n,
                        step * self.batch as u64 + j as u64,
                    )
                })
                .collect();
            let faces: Vec<&[f32]> = idx.iter().map(|&i| data.faces[i].as_slice()).collect();
            let masks: Vec<&[f32]> = idx.iter().map(|&i| data.masks[i].as_slice()).collect();
            // A fresh generator per (step, side): a resumed run draws the same augmentations.
            let seed = self.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (s as u64) << 60;
            let mut aug = Augmenter::new(self.aug, self.size, seed)?;
            let b = aug.batch(&faces, &masks)?;
            self.inputs[s].write_f32(ctx, &b.input)?;
            self.targets[s].write_f32(ctx, &b.target)?;
            self.masks[s].write_f32(ctx, &b.extra)?;
        }
        Ok(())
    }

    fn columns(&self, slots: &[f64]) -> Vec<f64> {
        self.slots
            .iter()
            .map(|side| side.iter().map(|&i| slots[i]).sum())
            .collect()
    }

    fn on_log(&mut self, _ctx: &Context, train: &TrainStep<'_>) -> Result<()> {
        let due = match self.last_preview {
            None => true,
            Some(p) => train.step >= p + self.preview_every,
        };
        if due {
            self.write_preview(train)?;
            self.last_preview = Some(train.step);
        }
        Ok(())
    }

    fn on_checkpoint(&mut self, _ctx: &Context, train: &TrainStep<'_>) -> Result<()> {
        let tensors = export(&train.graph, &self.cfg, false)?;
        save_run_model(&self.run_dir, &self.meta, &tensors, Layout::File)?;
        Ok(())
    }
}

/// Faces shown per preview row.
const PREVIEW: usize = 4;

impl PairFeed<'_> {
    /// `preview.png`: rows A→A, A→B, B→B, B→A over the first faces of each set (unaugmented),
    /// each face beside its source in the first column of the pair.
    fn write_preview(&self, train: &TrainStep<'_>) -> Result<()> {
        let ctx = self.ctx;
        let file = Weights::from_tensors(
            "preview",
            export(&train.graph, &self.cfg, false)?,
            HashMap::new(),
        );
        let k = PREVIEW;
        let ae = Autoencoder::new(ctx, self.arch, &file, k, &[Side::A, Side::B])?;
        let s = self.size;
        let mut grid = RgbImage::new((s * (k * 2)) as u32, (s * 4) as u32);
        for (row0, side) in [(0usize, 0usize), (2, 1)] {
            let data = &self.sides[side];
            let faces: Vec<f32> = (0..k)
                .flat_map(|i| data.faces[i % data.faces.len()].iter().copied())
                .collect();
            ae.input.write_f32(ctx, &faces)?;
            ae.plan.run(ctx)?;
            let own = if side == 0 { Side::A } else { Side::B };
            let other = if side == 0 { Side::B } else { Side::A };
            for (dr, out) in [(0, own), (1, other)] {
                let d = ae
                    .side(out)
                    .ok_or_else(|| Error::param("preview", "missing decoder"))?;
                let img = d.face.to_f32(ctx)?;
                for i in 0..k {
                    let src = &faces[i * 3 * s * s..(i + 1) * 3 * s * s];
                    let dst = &img[i * 3 * s * s..(i + 1) * 3 * s * s];
                    paste(&mut grid, src, s, 2 * i, row0 + dr);
                    paste(&mut grid, dst, s, 2 * i + 1, row0 + dr);
                }
            }
        }
        crate::media::image::save(&self.preview, &grid)
    }
}

/// Writes a planar `[3, s, s]` image in [0, 1] into cell (`col`, `row`) of `grid`.
fn paste(grid: &mut RgbImage, planar: &[f32], s: usize, col: usize, row: usize) {
    let bytes = crate::media::image::from_planar(planar, s, s);
    for y in 0..s {
        for x in 0..s {
            let i = (y * s + x) * 3;
            grid.put_pixel(
                (col * s + x) as u32,
                (row * s + y) as u32,
                image::Rgb([bytes[i], bytes[i + 1], bytes[i + 2]]),
            );
        }
    }
}

/// What a finished run reports.
#[derive(Debug)]
pub struct PairSummary {
    /// Step the run started at.
    pub start_step: u64,
    /// Steps taken in total.
    pub steps: u64,
    /// First logged (loss_a, loss_b).
    pub first: Option<(f64, f64)>,
    /// Last logged (loss_a, loss_b).
    pub last: Option<(f64, f64)>,
    /// The exported model.
    pub model: PathBuf,
}

/// Runs (or resumes) a per-pair training.
pub fn run(ctx: &Context, o: &PairOptions) -> Result<PairSummary> {
    if o.steps == 0 || o.batch == 0 || o.log_every == 0 || o.checkpoint_every == 0 {
        return Err(Error::param(
            "train autoencoder",
            "steps, batch, log and checkpoint intervals must be at least 1",
        ));
    }
    let fa = Faceset::open(&o.a)?;
    let fb = Faceset::open(&o.b)?;
    if fa.centering != fb.centering || (fa.coverage - fb.coverage).abs() > 1e-9 {
        return Err(Error::param(
            "train autoencoder",
            format!(
                "the facesets were extracted differently (A: {} centring, coverage {}; B: {}, {}): \
                 extract both with the same --centering and --coverage",
                fa.centering.name(),
                fa.coverage,
                fb.centering.name(),
                fb.coverage
            ),
        ));
    }
    let kind = format!("autoencoder:{}", o.arch.name());
    let run_dir = RunDir::create(&o.out)?;
    let start = Weights::from_tensors(
        "initialisation",
        init_file(o.arch, o.size, o.learn_mask, o.seed, o.icnr)?,
        HashMap::new(),
    );
    let mut g = Graph::new(ctx);
    let (cfg, v) = build_pair(&mut g, o.arch, &start, o.batch)?;
    let n = o.batch;
    let face_shape = cfg.input_shape(n);
    let mask_shape = Shape::new(n, 1, o.size, o.size);
    let targets = [
        Tensor::new(ctx, face_shape, "targets a")?,
        Tensor::new(ctx, face_shape, "targets b")?,
    ];
    let masks = [
        Tensor::new(ctx, mask_shape, "masks a")?,
        Tensor::new(ctx, mask_shape, "masks b")?,
    ];
    let scaler = Scaler::new(ctx, LossScale::dynamic())?;
    let mut losses = Losses::new(&g, scaler.buffer())?;
    let mut slots: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
    for (s, (tag, dec)) in [("a", &v.a), ("b", &v.b)].into_iter().enumerate() {
        let face: Var = dec.face;
        if o.ssim > 0.0 {
            slots[s].push(losses.names.len());
            let spec = SsimSpec {
                weight: o.ssim,
                ..SsimSpec::default()
            };
            losses.ssim(&g, &format!("ssim_{tag}"), face, &targets[s], spec, None)?;
        }
        if o.mse > 0.0 {
            slots[s].push(losses.names.len());
            let spec = PixelSpec {
                distance: Distance::Mse,
                weight: o.mse,
                ..PixelSpec::l1()
            };
            let mask = o.mask_penalty.then_some(&masks[s]);
            losses.pixel(
                &g,
                &format!("mse_{tag}"),
                face,
                &targets[s],
                mask,
                spec,
                None,
            )?;
        }
        if let Some(m) = dec.mask {
            slots[s].push(losses.names.len());
            let spec = PixelSpec {
                distance: Distance::Mse,
                ..PixelSpec::l1()
            };
            losses.pixel(&g, &format!("mask_{tag}"), m, &masks[s], None, spec, None)?;
        }
    }
    if slots.iter().any(|s| s.is_empty()) {
        return Err(Error::param("train autoencoder", "every loss weight is 0"));
    }
    let inputs = [g.tensor(v.faces_a).clone(), g.tensor(v.faces_b).clone()];
    let optimizer = Optimizer::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: o.eps,
        weight_decay: 0.0,
    };
    let mut plan = Plan::default();
    plan.extend(losses.plan);
    let names = losses.names.clone();
    let mut train = TrainStep::new(
        g,
        plan,
        &losses.seeds,
        losses.values,
        names.len(),
        optimizer,
        Schedule::constant(o.lr),
        &scaler,
        None,
    )?;
    let start_step = if o.resume {
        let c = Checkpoint::load(&run_dir.checkpoint())?;
        c.restore(ctx, &kind, &mut train, &scaler)?;
        eprintln!("resuming from step {}", c.step);
        c.step
    } else {
        0
    };
    if start_step >= o.steps {
        return Err(Error::param(
            "resume",
            format!("the checkpoint is at step {start_step}; ask for more --steps than that"),
        ));
    }
    let columns = vec!["loss_a".to_string(), "loss_b".to_string()];
    let mut log = LossLog::open(
        &run_dir.file("loss.csv"),
        &columns,
        o.resume.then_some(start_step),
    )?;
    let mut feed = PairFeed {
        ctx,
        sides: [load_side(&fa, o.size)?, load_side(&fb, o.size)?],
        inputs,
        targets,
        masks,
        aug: if o.augment {
            AugmentConfig::default()
        } else {
            AugmentConfig::none()
        },
        size: o.size,
        batch: n,
        seed: o.seed,
        slots,
        arch: o.arch,
        run_dir: run_dir.dir.clone(),
        preview: run_dir.file("preview.png"),
        preview_every: o.preview_every.max(1),
        last_preview: None,
        meta: RunMeta {
            arch: o.arch,
            size: cfg.size,
            learn_mask: cfg.learn_mask,
            centering: fa.centering,
            coverage: fa.coverage,
            faceset_a: absolute(&o.a),
            faceset_b: absolute(&o.b),
        },
        cfg,
    };
    let extra = HashMap::from([("fswap.slots".to_string(), names.join(","))]);
    train_loop(
        ctx,
        &run_dir,
        &kind,
        &mut train,
        &scaler,
        &mut log,
        &mut feed,
        Cadence {
            steps: o.steps,
            log_every: o.log_every,
            checkpoint_every: o.checkpoint_every,
        },
        &extra,
    )?;
    let pair = |r: &(u64, Vec<f64>, f64)| (r.1[0], r.1[1]);
    Ok(PairSummary {
        start_step,
        steps: train.step,
        first: log.rows().first().map(pair),
        last: log.rows().last().map(pair),
        model: run_dir.file("model.safetensors"),
    })
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
