//! `fswap train distill` and `fswap train finetune`: the MobileFaceSwap student (identity
//! injection network + IDN, spec §5) trained on the GPU.
//!
//! Every step is one submit: the teacher (folders: uploaded outputs; a model: its forward on the
//! same inputs), the teacher's ArcFace identity and the per-sample weights
//! `α = cos(z_id, z'_id)² · Q` (spec §5), the student forward with per-sample predicted kernels,
//! the losses (α-weighted L1 / DSSIM at each configured scale, `1 − cos` through the frozen
//! ArcFace, the background-only mask loss), the backward and the optimiser.
//!
//! **Fine-tuning** has no teacher: a share `self_swap` of each batch swaps a target frame with its
//! own identity and is pulled to the frame itself (pixel weight 1); the rest swap in the new
//! identity's photos and are driven by the identity loss alone (pixel weight 0).
//!
//! Source identities (ArcFace embedding and feature map of every source crop, resized to 112 and
//! ImageNet-normalised as at inference, spec §4.3) are computed once before the loop.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::config::Config;
use super::data::{planar_batch, sample_index, Crop, SwapData};
use super::graphs::{arcface, idn, idn_input, injection, IdnVars};
use super::losses::Losses;
use super::run::{train_loop, Cadence, Checkpoint, Feed, LossLog, RunDir};
use super::step::TrainStep;
use crate::autograd::net::{export, Net};
use crate::autograd::{Graph, NormMode, Var};
use crate::error::{Error, Result};
use crate::face::identity::{arcface_input, normalisation};
use crate::gpu::{Context, Plan};
use crate::kernels::conv_grad::f32_storage;
use crate::kernels::loss::{IdentitySpec, MaskLossSpec, PixelSpec, SsimSpec};
use crate::kernels::optim::Scaler;
use crate::kernels::resample::Resample;
use crate::models::arcface::{ArcFace, EMBEDDING, INPUT};
use crate::models::mobilefaceswap::SIZE;
use crate::models::random::random_weights;
use crate::tensor::{Shape, Tensor};
use crate::weights::{write_safetensors, HostTensor, Manifest, Weights};

/// Which loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Learn from a teacher's outputs.
    Distill,
    /// Adapt to one identity on the user's frames.
    Finetune,
}

impl Mode {
    fn kind(self) -> &'static str {
        match self {
            Mode::Distill => "distill",
            Mode::Finetune => "finetune",
        }
    }
}

/// What a finished run reports.
#[derive(Debug)]
pub struct Summary {
    /// The run folder.
    pub dir: PathBuf,
    /// The exported student (loads with `fswap eval --model mobilefaceswap` and `fswap swap`).
    pub student: PathBuf,
    /// Step the run started at (0, or the checkpoint's).
    pub start_step: u64,
    /// Steps taken in total.
    pub steps: u64,
    /// First and last logged total loss.
    pub first_loss: Option<f64>,
    /// Last logged total loss.
    pub last_loss: Option<f64>,
}

/// Opens the student's starting weights (`random:SEED` for a fresh start).
pub fn student_weights(spec: &str) -> Result<Weights> {
    let manifest = Manifest::builtin("mobilefaceswap")?;
    let w = match spec.strip_prefix("random:") {
        Some(seed) => {
            let seed = seed
                .parse()
                .map_err(|_| Error::param("student.weights", format!("'{spec}': random:SEED")))?;
            random_weights(&manifest, seed)
        }
        None => Weights::open(spec)?,
    };
    manifest.check(&w)?;
    Ok(w)
}

/// ArcFace on 224² crops: resize, normalise, forward (no readback).
struct IdentityNet {
    crops: Tensor,
    net: ArcFace,
    plan: Plan,
}

impl IdentityNet {
    /// Reads `crops` (`[n, 3, 224, 224]` in [0, 1]); a new tensor when None.
    fn new(ctx: &Context, w: &Weights, n: usize, crops: Option<Tensor>) -> Result<Self> {
        let crops = match crops {
            Some(c) => c,
            None => Tensor::new(ctx, idn_input(n), "identity crops")?,
        };
        let small = Tensor::new(ctx, Shape::new(n, 3, INPUT, INPUT), "identity 112")?;
        let net = ArcFace::new(ctx, w, n)?;
        let mut plan = Plan::default();
        plan.extend(arcface_input(ctx, &crops, &small, &net.input)?);
        plan.extend(net.plan.clone());
        Ok(IdentityNet { crops, net, plan })
    }
}

/// ArcFace embeddings and feature maps of `crops`, computed in batches of `n`.
fn identities(
    ctx: &Context,
    net: &IdentityNet,
    crops: &[Crop],
) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
    let n = net.crops.shape().n;
    let map_len = EMBEDDING * 49;
    let mut out = Vec::with_capacity(crops.len());
    for chunk in crops.chunks(n) {
        let mut refs: Vec<&Crop> = chunk.iter().collect();
        while refs.len() < n {
            refs.push(&chunk[0]); // pad the last batch; its extra rows are dropped
        }
        net.crops.write_f32(ctx, &planar_batch(&refs))?;
        net.plan.run(ctx)?;
        let emb = net.net.embedding.to_f32(ctx)?;
        let map = net.net.feature_map.to_f32(ctx)?;
        for i in 0..chunk.len() {
            let e = emb[i * EMBEDDING..(i + 1) * EMBEDDING].to_vec();
            if e.iter().any(|v| !v.is_finite()) {
                return Err(Error::Data {
                    what: "source identity".into(),
                    detail: "ArcFace produced a non-finite embedding".into(),
                });
            }
            out.push((e, map[i * map_len..(i + 1) * map_len].to_vec()));
        }
    }
    Ok(out)
}

/// The student graph's named values.
struct Student {
    emb: Var,
    map: Var,
    target: Var,
    out: IdnVars,
    arc_embedding: Option<Var>,
    /// Parameters of the student (the rest of the graph's are the frozen ArcFace's).
    params: usize,
}

fn build_student(
    g: &mut Graph<'_>,
    w: &Weights,
    arc: &Weights,
    n: usize,
    identity_loss: bool,
) -> Result<Student> {
    let emb = g.input(Shape::vector(n, EMBEDDING), "source embedding", false)?;
    let map = g.input(Shape::new(n, EMBEDDING, 7, 7), "source feature map", false)?;
    let target = g.input(idn_input(n), "target", false)?;
    let mut net = Net::new(g, w);
    let k = injection(&mut net, emb, map)?;
    let out = idn(&mut net, target, Some(&k))?;
    let params = g.params().len();
    let arc_embedding = if identity_loss {
        // ArcFace of the output as at inference: 112², ImageNet-normalised, running statistics.
        let mode = g.norm_mode;
        g.norm_mode = NormMode::Eval;
        let small = g.resample(
            out.swapped,
            Resample::Bilinear {
                align_corners: false,
            },
            (INPUT, INPUT),
        )?;
        let (scale, shift) = normalisation();
        let face = g.affine(small, scale, shift)?;
        let v = arcface(&mut Net::new(g, arc), face)?;
        g.freeze_from(params);
        g.norm_mode = mode;
        Some(v.embedding)
    } else {
        None
    };
    Ok(Student {
        emb,
        map,
        target,
        out,
        arc_embedding,
        params,
    })
}

/// Host data of each step, written by [`Feed::feed`].
struct SwapFeed {
    mode: Mode,
    data: SwapData,
    /// Identities of `data.sources` (distill: by sample; finetune: the photos).
    source_ids: Vec<(Vec<f32>, Vec<f32>)>,
    /// Finetune: identities of the target frames (self-swaps).
    target_ids: Vec<(Vec<f32>, Vec<f32>)>,
    /// Distill: α of each sample (cos²·Q, or 1 without reweighting).
    alpha_by_sample: Vec<f32>,
    batch: usize,
    seed: u64,
    self_swaps: usize,
    emb: Tensor,
    map: Tensor,
    target: Tensor,
    teacher: Option<Tensor>,
    alpha: wgpu::Buffer,
    background: Option<Tensor>,
    export: Option<Exporter>,
}

struct Exporter {
    path: PathBuf,
    weights: Weights,
}

impl SwapFeed {
    /// Writes samples `idx` with identities `ids` and pixel weights `alpha`.
    fn write(
        &self,
        ctx: &Context,
        idx: &[usize],
        ids: &[&(Vec<f32>, Vec<f32>)],
        alpha: &[f32],
    ) -> Result<()> {
        let emb: Vec<f32> = ids.iter().flat_map(|id| id.0.iter().copied()).collect();
        let map: Vec<f32> = ids.iter().flat_map(|id| id.1.iter().copied()).collect();
        self.emb.write_f32(ctx, &emb)?;
        self.map.write_f32(ctx, &map)?;
        let crops: Vec<&Crop> = idx.iter().map(|&i| &self.data.targets[i]).collect();
        self.target.write_f32(ctx, &planar_batch(&crops))?;
        if let (Some(t), false) = (&self.teacher, self.data.teachers.is_empty()) {
            let crops: Vec<&Crop> = idx.iter().map(|&i| &self.data.teachers[i]).collect();
            t.write_f32(ctx, &planar_batch(&crops))?;
        }
        ctx.queue
            .write_buffer(&self.alpha, 0, bytemuck::cast_slice(alpha));
        if let (Some(t), Some(bg)) = (&self.background, &self.data.backgrounds) {
            let v: Vec<f32> = idx.iter().flat_map(|&i| bg[i].iter().copied()).collect();
            t.write_f32(ctx, &v)?;
        }
        Ok(())
    }
}

impl Feed for SwapFeed {
    fn feed(&mut self, ctx: &Context, step: u64) -> Result<()> {
        let (n, b) = (self.data.len(), self.batch);
        let k0 = step * b as u64;
        let idx: Vec<usize> = (0..b)
            .map(|j| sample_index(self.seed, n, k0 + j as u64))
            .collect();
        let (ids, alpha): (Vec<_>, Vec<f32>) = match self.mode {
            Mode::Distill => idx
                .iter()
                .map(|&i| (&self.source_ids[i], self.alpha_by_sample[i]))
                .unzip(),
            // Self-swaps first (pulled to the frame), then the new identity (identity loss only).
            Mode::Finetune => idx
                .iter()
                .enumerate()
                .map(|(j, &i)| {
                    if j < self.self_swaps {
                        (&self.target_ids[i], 1.0)
                    } else {
                        let m = self.source_ids.len();
                        let k = sample_index(self.seed ^ 0x5EED, m, k0 + j as u64);
                        (&self.source_ids[k], 0.0)
                    }
                })
                .unzip(),
        };
        self.write(ctx, &idx, &ids, &alpha)
    }

    fn on_checkpoint(&mut self, ctx: &Context, train: &TrainStep<'_>) -> Result<()> {
        if let Some(e) = &self.export {
            export_student(ctx, &train.graph, &e.weights, &e.path)?;
        }
        Ok(())
    }
}

/// Writes the student's current weights as a MobileFaceSwap file: the starting file's tensors
/// with every trained one replaced (in the file's own layout), atomically.
pub fn export_student(ctx: &Context, g: &Graph<'_>, start: &Weights, path: &Path) -> Result<()> {
    let _ = ctx;
    let trained = export(g, start, false)?;
    let mut out: BTreeMap<String, HostTensor> = start.tensors().clone();
    for (name, t) in trained {
        if let Some(slot) = out.get_mut(&name) {
            *slot = t;
        }
    }
    let mut meta = start.metadata().clone();
    meta.remove(super::run::CHECKPOINT_KEY);
    meta.insert("fswap.source".into(), "fswap train (student export)".into());
    write_safetensors(path, &out, meta)
}

/// A built run: the training step and everything it reads, before the loop.
pub struct Session<'c> {
    /// The step (graph, losses, backward, optimiser).
    pub train: TrainStep<'c>,
    /// The loss scaler.
    pub scaler: Scaler,
    /// Loss column names.
    pub names: Vec<String>,
    /// The run folder.
    pub run: RunDir,
    feed: SwapFeed,
    // Kept alive: their dispatches are part of the step.
    _teacher: Option<Graph<'c>>,
}

impl Session<'_> {
    /// Writes the inputs of `step` (for benches: then run `train.dispatches()`).
    pub fn feed(&mut self, ctx: &Context, step: u64) -> Result<()> {
        self.feed.feed(ctx, step)
    }
}

/// Runs a distillation or fine-tuning from `cfg`; `resume` continues from the run folder's
/// checkpoint.
pub fn run(ctx: &Context, mode: Mode, cfg: &Config, resume: bool) -> Result<Summary> {
    let kind = mode.kind();
    let mut s = prepare(ctx, mode, cfg, Inputs::load(mode, cfg)?)?;
    let ckpt_path = s.run.checkpoint();
    let start_step = if resume {
        let c = Checkpoint::load(&ckpt_path)?;
        c.restore(ctx, kind, &mut s.train, &s.scaler)?;
        eprintln!("resuming from step {} ({})", c.step, ckpt_path.display());
        c.step
    } else {
        0
    };
    if start_step >= cfg.train.steps {
        return Err(Error::param(
            "resume",
            format!(
                "the checkpoint is at step {start_step}, the config asks for {} steps: raise train.steps",
                cfg.train.steps
            ),
        ));
    }
    let mut log = LossLog::open(
        &s.run.file("loss.csv"),
        &s.names,
        resume.then_some(start_step),
    )?;
    let extra = HashMap::from([("fswap.config".to_string(), format!("{cfg:?}"))]);
    train_loop(
        ctx,
        &s.run,
        kind,
        &mut s.train,
        &s.scaler,
        &mut log,
        &mut s.feed,
        Cadence {
            steps: cfg.train.steps,
            log_every: cfg.output.log_every,
            checkpoint_every: cfg.output.checkpoint_every,
        },
        &extra,
    )?;
    let total = |r: &(u64, Vec<f64>, f64)| r.1.iter().sum::<f64>();
    Ok(Summary {
        dir: s.run.dir.clone(),
        student: s.run.file("student.safetensors"),
        start_step,
        steps: s.train.step,
        first_loss: log.rows().first().map(total),
        last_loss: log.rows().last().map(total),
    })
}

/// What a run reads, loaded.
pub struct Inputs {
    /// The training set.
    pub data: SwapData,
    /// The student's starting weights.
    pub student: Weights,
    /// ArcFace.
    pub arcface: Weights,
    /// The teacher model, when the engine runs one.
    pub teacher: Option<Weights>,
}

impl Inputs {
    /// Loads what `cfg` names, checking it fits `mode`.
    pub fn load(mode: Mode, cfg: &Config) -> Result<Inputs> {
        let teacher = match (&cfg.teacher, mode) {
            (Some(t), Mode::Distill) => {
                let w = Weights::open(&t.weights)?;
                Manifest::builtin("mobilefaceswap")?.check(&w)?;
                Some(w)
            }
            (Some(_), Mode::Finetune) => {
                return Err(Error::param(
                    "teacher",
                    "fine-tuning has no teacher; remove [teacher] or use `fswap train distill`",
                ))
            }
            (None, _) => None,
        };
        let data = SwapData::load(&cfg.data.dir, mode == Mode::Distill, teacher.is_none())?;
        if cfg.loss.mask > 0.0 && data.backgrounds.is_none() {
            return Err(Error::param(
                "loss.mask",
                format!(
                    "the mask loss needs background masks in {}",
                    cfg.data.dir.join("background").display()
                ),
            ));
        }
        Ok(Inputs {
            data,
            student: student_weights(&cfg.student.weights)?,
            arcface: Weights::open(&cfg.identity.arcface)?,
            teacher,
        })
    }
}

/// Computes the source identities and builds the step for `cfg` on `inputs`.
pub fn prepare<'c>(
    ctx: &'c Context,
    mode: Mode,
    cfg: &Config,
    inputs: Inputs,
) -> Result<Session<'c>> {
    let b = cfg.train.batch;
    let Inputs {
        data,
        student: student_w,
        arcface: arc_w,
        teacher: teacher_model,
    } = inputs;
    if mode == Mode::Finetune && cfg.loss.identity == 0.0 && cfg.data.self_swap < 1.0 {
        return Err(Error::param(
            "loss.identity",
            "fine-tuning without the identity loss gives the new identity's samples no loss",
        ));
    }
    let run = RunDir::create(&cfg.output.dir)?;

    // Source identities, once.
    eprintln!("computing source identities ...");
    let id_net = IdentityNet::new(ctx, &arc_w, b, None)?;
    let source_ids = identities(ctx, &id_net, &data.sources)?;
    let target_ids = match mode {
        Mode::Finetune => identities(ctx, &id_net, &data.targets)?,
        Mode::Distill => Vec::new(),
    };
    drop(id_net);

    // The student, with the frozen ArcFace behind the identity loss.
    let mut g = Graph::new(ctx);
    if cfg.student.batch_norm == "train" {
        g.norm_mode = NormMode::Train;
    }
    let st = build_student(&mut g, &student_w, &arc_w, b, cfg.loss.identity > 0.0)?;
    for prefix in &cfg.student.freeze {
        g.freeze(prefix);
    }
    let emb_t = g.tensor(st.emb).clone();
    let map_t = g.tensor(st.map).clone();
    let target_t = g.tensor(st.target).clone();

    // What the pixel losses compare with, and α.
    let mut prep = Plan::default();
    let mut teacher_graph = None;
    let (reference, teacher_upload) = match mode {
        Mode::Finetune => (target_t.clone(), None),
        Mode::Distill => match &teacher_model {
            Some(tw) => {
                let mut tg = Graph::new(ctx);
                let emb = tg.leaf(emb_t.clone(), "teacher embedding", false);
                let map = tg.leaf(map_t.clone(), "teacher feature map", false);
                let target = tg.leaf(target_t.clone(), "teacher target", false);
                let mut net = Net::new(&mut tg, tw);
                let k = injection(&mut net, emb, map)?;
                let out = idn(&mut net, target, Some(&k))?;
                let t = tg.tensor(out.swapped).clone();
                tg.sync().run(ctx)?; // the teacher never changes: cast its weights once
                prep.extend(tg.forward().clone());
                teacher_graph = Some(tg);
                (t, None)
            }
            None => {
                let t = Tensor::new(ctx, idn_input(b), "teacher outputs")?;
                (t.clone(), Some(t))
            }
        },
    };
    let alpha = f32_storage(ctx, "alpha", b)?;
    let background = if cfg.loss.mask > 0.0 {
        Some(Tensor::new(
            ctx,
            Shape::new(b, 1, SIZE, SIZE),
            "background",
        )?)
    } else {
        None
    };
    let mut feed = SwapFeed {
        mode,
        alpha_by_sample: vec![1.0; data.len()],
        data,
        source_ids,
        target_ids,
        batch: b,
        seed: cfg.train.seed,
        self_swaps: (cfg.data.self_swap * b as f64).round() as usize,
        emb: emb_t.clone(),
        map: map_t,
        target: target_t,
        teacher: teacher_upload,
        alpha: alpha.clone(),
        background: background.clone(),
        export: Some(Exporter {
            path: run.file("student.safetensors"),
            weights: student_w,
        }),
    };
    if mode == Mode::Distill && cfg.loss.reweight {
        // α = cos(z_id, z'_id)² · Q per sample, once: the teacher's output for a sample never
        // changes, so neither does its identity.
        eprintln!("computing teacher identities ...");
        let net = IdentityNet::new(ctx, &arc_w, b, Some(reference.clone()))?;
        let n = feed.data.len();
        for start in (0..n).step_by(b) {
            let idx: Vec<usize> = (start..start + b).map(|i| i.min(n - 1)).collect();
            let ids: Vec<_> = idx.iter().map(|&i| &feed.source_ids[i]).collect();
            feed.write(ctx, &idx, &ids, &vec![1.0; b])?;
            if let Some(tg) = &teacher_graph {
                tg.forward().run(ctx)?;
            }
            net.plan.run(ctx)?;
            let z = net.net.embedding.to_f32(ctx)?;
            for (j, &i) in idx.iter().enumerate().take(n - start) {
                let cos: f64 = feed.source_ids[i]
                    .0
                    .iter()
                    .zip(&z[j * EMBEDDING..(j + 1) * EMBEDDING])
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                feed.alpha_by_sample[i] = (cos * cos * feed.data.quality[i] as f64) as f32;
            }
        }
        let mean = feed.alpha_by_sample.iter().map(|&a| a as f64).sum::<f64>() / n as f64;
        eprintln!("alpha: mean {mean:.4} over {n} samples");
    }
    let weights = (mode == Mode::Finetune || cfg.loss.reweight).then_some(&alpha);

    // Losses.
    let scaler = Scaler::new(ctx, cfg.train.loss_scale()?)?;
    let mut losses = Losses::new(&g, scaler.buffer())?;
    let l = &cfg.loss;
    for &s in &l.scales {
        let (pred, refer, tag) = if s == 1 {
            (st.out.swapped, reference.clone(), String::new())
        } else {
            let side = SIZE / s;
            let bilinear = Resample::Bilinear {
                align_corners: false,
            };
            let pred = g.resample(st.out.swapped, bilinear, (side, side))?;
            let r = Tensor::new(ctx, Shape::new(b, 3, side, side), "reference scaled")?;
            prep.push(bilinear.bind(ctx, &reference, &r)?);
            (pred, r, format!("@{side}"))
        };
        if l.l1 > 0.0 {
            let spec = PixelSpec {
                weight: l.l1,
                ..PixelSpec::l1()
            };
            losses.pixel(&g, &format!("l1{tag}"), pred, &refer, None, spec, weights)?;
        }
        if l.ssim > 0.0 {
            let spec = SsimSpec {
                weight: l.ssim,
                ..SsimSpec::default()
            };
            losses.ssim(&g, &format!("ssim{tag}"), pred, &refer, spec, weights)?;
        }
    }
    if let Some(e) = st.arc_embedding {
        let spec = IdentitySpec {
            margin: l.identity_margin,
            weight: l.identity,
            ..IdentitySpec::default()
        };
        losses.identity(&g, "identity", e, &emb_t, spec)?;
    }
    if let Some(t) = &background {
        let spec = MaskLossSpec {
            weight: l.mask,
            ..MaskLossSpec::default()
        };
        losses.background_mask(&g, "mask", st.out.mask, t, spec)?;
    }
    let names = losses.names.clone();
    prep.extend(losses.plan);
    let mut train = TrainStep::new(
        g,
        prep,
        &losses.seeds,
        losses.values,
        names.len(),
        cfg.train.optimizer()?,
        cfg.train.schedule()?,
        &scaler,
        cfg.train.clip,
    )?;
    train.checkpointed = st.params;
    Ok(Session {
        train,
        scaler,
        names,
        run,
        feed,
        _teacher: teacher_graph,
    })
}
