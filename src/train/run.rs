//! What every training run shares: the step loop with its progress bar, the loss log
//! (`RUN_DIR/loss.csv`) and curve (`RUN_DIR/loss.png`), and checkpoints (safetensors with the
//! parameters, the optimiser state, the loss scaler and the step, written atomically) that a run
//! resumes from exactly.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::step::TrainStep;
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::kernels::optim::Scaler;
use crate::weights::{write_safetensors, HostTensor, Weights};

/// Metadata key marking a checkpoint (value: format version).
pub const CHECKPOINT_KEY: &str = "fswap.checkpoint";
const STEP_KEY: &str = "fswap.step";
const KIND_KEY: &str = "fswap.run";
const PARAM: &str = "param:";
const OPTIM: &str = "optim:";
const SCALER: &str = "scaler";

/// The loss log: one row per logged step, `step,<loss names...>,lr`, rewritten atomically at
/// each log so a crash never leaves a torn row.
pub struct LossLog {
    path: PathBuf,
    names: Vec<String>,
    rows: Vec<(u64, Vec<f64>, f64)>,
}

impl LossLog {
    /// A log at `path` with loss columns `names`. When `resume_at` is given, the rows of an
    /// existing log up to that step are kept (rows after it belonged to steps the checkpoint does
    /// not contain); a log with other columns is an error.
    pub fn open(path: &Path, names: &[String], resume_at: Option<u64>) -> Result<Self> {
        let mut log = LossLog {
            path: path.to_path_buf(),
            names: names.to_vec(),
            rows: Vec::new(),
        };
        let Some(last) = resume_at else {
            return Ok(log);
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(log);
        };
        let bad = |detail: String| Error::Format {
            path: path.display().to_string(),
            detail,
        };
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let expected = log.header();
        if header != expected {
            return Err(bad(format!(
                "header '{header}' does not match this run's '{expected}'"
            )));
        }
        for (i, line) in lines.enumerate() {
            let cols: Vec<&str> = line.split(',').collect();
            if cols.len() != names.len() + 2 {
                return Err(bad(format!("row {} has {} columns", i + 2, cols.len())));
            }
            let step: u64 = cols[0]
                .parse()
                .map_err(|_| bad(format!("row {}: step '{}'", i + 2, cols[0])))?;
            let nums = cols[1..]
                .iter()
                .map(|c| c.parse::<f64>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("row {}: {e}", i + 2)))?;
            if step <= last {
                let lr = nums[names.len()];
                log.rows.push((step, nums[..names.len()].to_vec(), lr));
            }
        }
        Ok(log)
    }

    fn header(&self) -> String {
        format!("step,{},lr", self.names.join(","))
    }

    /// Appends a row and rewrites the file.
    pub fn push(&mut self, step: u64, losses: &[f64], lr: f64) -> Result<()> {
        if losses.len() != self.names.len() {
            return Err(Error::param(
                "loss log",
                format!("{} values for {} columns", losses.len(), self.names.len()),
            ));
        }
        self.rows.push((step, losses.to_vec(), lr));
        let mut text = self.header();
        text.push('\n');
        for (s, v, lr) in &self.rows {
            let cols: Vec<String> = v.iter().map(|x| format!("{x:.6e}")).collect();
            text.push_str(&format!("{s},{},{lr:.6e}\n", cols.join(",")));
        }
        crate::util::atomic_write(&self.path, text.as_bytes())
    }

    /// The logged rows: (step, losses, learning rate).
    pub fn rows(&self) -> &[(u64, Vec<f64>, f64)] {
        &self.rows
    }

    /// Writes the curve of every loss column to `png`.
    pub fn plot(&self, png: &Path) -> Result<()> {
        let series: Vec<(String, Vec<(f64, f64)>)> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let pts = self.rows.iter().map(|r| (r.0 as f64, r.1[i])).collect();
                (n.clone(), pts)
            })
            .collect();
        super::plot::loss_curve(png, &series)
    }
}

/// A checkpoint read back: everything a run needs to continue exactly where it stopped.
pub struct Checkpoint {
    /// Steps taken.
    pub step: u64,
    /// Which run wrote it (`distill`, `finetune`, `autoencoder:lightweight`, ...).
    pub kind: String,
    /// Parameter values (graph layout) by name.
    pub params: BTreeMap<String, HostTensor>,
    /// Optimiser state entries (`name.suffix`).
    pub optimizer: Vec<(String, Vec<f32>)>,
    /// The loss scaler's slots.
    pub scaler: Vec<f32>,
    /// Other metadata (the run's config, ...).
    pub metadata: HashMap<String, String>,
}

impl Checkpoint {
    /// Saves `train`'s parameters, optimiser and scaler state and step to `path`, atomically.
    /// Only the graph's first [`TrainStep::checkpointed`] parameters are saved: frozen networks
    /// built after the trained one (the identity loss's ArcFace) come from their own files.
    pub fn save(
        ctx: &Context,
        path: &Path,
        kind: &str,
        train: &TrainStep<'_>,
        scaler: &Scaler,
        extra: &HashMap<String, String>,
    ) -> Result<()> {
        let mut t = BTreeMap::new();
        for p in train.graph.params().iter().take(train.checkpointed) {
            t.insert(
                format!("{PARAM}{}", p.name),
                HostTensor::new(p.shape.clone(), p.read(ctx)?),
            );
        }
        for (name, data) in train.optim.state(ctx)? {
            let len = data.len();
            t.insert(format!("{OPTIM}{name}"), HostTensor::new(vec![len], data));
        }
        t.insert(
            SCALER.into(),
            HostTensor::new(vec![Scaler::LEN], scaler.read(ctx)?),
        );
        let mut meta = extra.clone();
        meta.insert(CHECKPOINT_KEY.into(), "1".into());
        meta.insert(STEP_KEY.into(), train.step.to_string());
        meta.insert(KIND_KEY.into(), kind.into());
        write_safetensors(path, &t, meta)
    }

    /// Reads a checkpoint, checking it is one.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let w = Weights::open(path)?;
        let bad = |detail: String| Error::Format {
            path: path.display().to_string(),
            detail,
        };
        let meta = w.metadata().clone();
        if !meta.contains_key(CHECKPOINT_KEY) {
            return Err(bad(
                "not a training checkpoint (no fswap.checkpoint metadata); to start from \
                 exported weights, name them in the config instead"
                    .into(),
            ));
        }
        let step = meta
            .get(STEP_KEY)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("missing or bad fswap.step".into()))?;
        let kind = meta.get(KIND_KEY).cloned().unwrap_or_default();
        let mut params = BTreeMap::new();
        let mut optimizer = Vec::new();
        let mut scaler = None;
        for (name, t) in w.tensors() {
            if let Some(p) = name.strip_prefix(PARAM) {
                params.insert(p.to_string(), t.clone());
            } else if let Some(o) = name.strip_prefix(OPTIM) {
                optimizer.push((o.to_string(), t.data.clone()));
            } else if name == SCALER {
                scaler = Some(t.data.clone());
            } else {
                return Err(bad(format!("unexpected tensor '{name}'")));
            }
        }
        let scaler = scaler.ok_or_else(|| bad("no scaler state".into()))?;
        if scaler.len() != Scaler::LEN {
            return Err(bad(format!(
                "scaler state has {} slots, expected {}",
                scaler.len(),
                Scaler::LEN
            )));
        }
        Ok(Checkpoint {
            step,
            kind,
            params,
            optimizer,
            scaler,
            metadata: meta,
        })
    }

    /// Writes the state into a freshly built run: every parameter of the graph must be present
    /// with its shape, and nothing else.
    pub fn restore(
        &self,
        ctx: &Context,
        kind: &str,
        train: &mut TrainStep<'_>,
        scaler: &Scaler,
    ) -> Result<()> {
        let op = "resume";
        if self.kind != kind {
            return Err(Error::param(
                op,
                format!(
                    "the checkpoint is from a '{}' run, this is '{kind}'",
                    self.kind
                ),
            ));
        }
        let saved = &train.graph.params()[..train.checkpointed];
        for p in saved {
            let t = self.params.get(&p.name).ok_or_else(|| {
                Error::param(op, format!("checkpoint lacks parameter '{}'", p.name))
            })?;
            if t.shape != p.shape {
                return Err(Error::shape(
                    op,
                    format!(
                        "parameter '{}': checkpoint {:?}, model {:?}",
                        p.name, t.shape, p.shape
                    ),
                ));
            }
            p.write(ctx, &t.data)?;
        }
        if self.params.len() != saved.len() {
            let extra = self
                .params
                .keys()
                .find(|k| !saved.iter().any(|p| &&p.name == k))
                .cloned()
                .unwrap_or_default();
            return Err(Error::param(
                op,
                format!("checkpoint has parameter '{extra}' the model lacks"),
            ));
        }
        train.optim.load_state(ctx, &self.optimizer)?;
        scaler.write(ctx, &self.scaler)?;
        train.step = self.step;
        train.full_sync = true;
        Ok(())
    }
}

/// Where a run writes: `loss.csv`, `loss.png`, `checkpoint.safetensors` and its exports.
pub struct RunDir {
    /// The folder.
    pub dir: PathBuf,
}

impl RunDir {
    /// Creates the folder if needed.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(RunDir {
            dir: dir.to_path_buf(),
        })
    }

    /// `dir/name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The run's checkpoint.
    pub fn checkpoint(&self) -> PathBuf {
        self.file("checkpoint.safetensors")
    }
}

/// How often the loop logs and checkpoints.
#[derive(Clone, Copy, Debug)]
pub struct Cadence {
    /// Total steps (the loop stops when `step == steps`).
    pub steps: u64,
    /// Log (and read the losses back) every this many steps.
    pub log_every: u64,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
}

/// Callbacks of [`train_loop`].
pub trait Feed {
    /// Writes the inputs of step `step` (queued writes; they land before the step's submit).
    fn feed(&mut self, ctx: &Context, step: u64) -> Result<()>;
    /// The logged columns from the loss slots (default: every slot as it is).
    fn columns(&self, slots: &[f64]) -> Vec<f64> {
        slots.to_vec()
    }
    /// Called after each logged step (previews).
    fn on_log(&mut self, _ctx: &Context, _train: &TrainStep<'_>) -> Result<()> {
        Ok(())
    }
    /// Called after a checkpoint was written (exports, previews).
    fn on_checkpoint(&mut self, _ctx: &Context, _train: &TrainStep<'_>) -> Result<()> {
        Ok(())
    }
}

/// Runs `train` from its current step to `cadence.steps`: feeds, steps, logs the losses (the
/// last step's values at each log), plots, checkpoints. Fails when every step of a log interval
/// was skipped for non-finite gradients (the run diverged; the last checkpoint stays intact).
#[allow(clippy::too_many_arguments)]
pub fn train_loop(
    ctx: &Context,
    run: &RunDir,
    kind: &str,
    train: &mut TrainStep<'_>,
    scaler: &Scaler,
    log: &mut LossLog,
    feed: &mut dyn Feed,
    cadence: Cadence,
    extra: &HashMap<String, String>,
) -> Result<()> {
    if cadence.log_every == 0 || cadence.checkpoint_every == 0 {
        return Err(Error::param(
            "train",
            "log_every and checkpoint_every must be at least 1",
        ));
    }
    let bar = ProgressBar::new(cadence.steps);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  {per_sec} ({eta} left)")
    {
        bar.set_style(style);
    }
    bar.set_position(train.step);
    let mut skipped_before = scaler.read(ctx)?[Scaler::SKIPPED];
    let mut since = (Instant::now(), train.step);
    while train.step < cadence.steps {
        feed.feed(ctx, train.step)?;
        let lr = train.schedule.lr(train.step);
        train.run(ctx)?;
        bar.inc(1);
        let s = train.step;
        let last = s == cadence.steps;
        if s.is_multiple_of(cadence.log_every) || last {
            let slots: Vec<f64> = train.read_losses(ctx)?.iter().map(|&v| v as f64).collect();
            let losses = feed.columns(&slots);
            let skipped = scaler.read(ctx)?[Scaler::SKIPPED];
            let interval = s - since.1;
            if interval > 0 && (skipped - skipped_before) as u64 >= interval {
                bar.abandon();
                return Err(Error::param(
                    "train",
                    format!(
                        "diverged: every step from {} to {s} had non-finite gradients \
                         (losses {losses:?}); lower the learning rate or resume from {}",
                        since.1 + 1,
                        run.checkpoint().display()
                    ),
                ));
            }
            skipped_before = skipped;
            let rate = interval as f64 / since.0.elapsed().as_secs_f64().max(1e-9);
            since = (Instant::now(), s);
            log.push(s, &losses, lr)?;
            log.plot(&run.file("loss.png"))?;
            let total: f64 = losses.iter().sum();
            bar.set_message(format!("loss {total:.5} ({rate:.2} steps/s)"));
            feed.on_log(ctx, train)?;
        }
        if s.is_multiple_of(cadence.checkpoint_every) || last {
            Checkpoint::save(ctx, &run.checkpoint(), kind, train, scaler, extra)?;
            feed.on_checkpoint(ctx, train)?;
        }
    }
    bar.finish();
    Ok(())
}
