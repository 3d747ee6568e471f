//! The TOML run configuration of `fswap train distill|finetune`: every field documented, unknown
//! keys rejected (a typo is an error, not a silently ignored setting), relative paths resolved
//! against the config file's folder.
//!
//! ```toml
//! [student]
//! weights = "mobilefaceswap.safetensors"  # injection + IDN (or "random:SEED" for a fresh start)
//! batch_norm = "eval"                      # "eval" (running statistics) or "train" (batch stats)
//! freeze = []                              # parameter-name prefixes kept fixed
//!
//! [identity]
//! arcface = "arcface.safetensors"          # frozen: source identities and the identity loss
//!
//! [teacher]                                # optional: a MobileFaceSwap-format teacher the
//! weights = "teacher.safetensors"          # engine runs itself (else data.dir/teacher/)
//!
//! [data]
//! dir = "data"              # source/, target/, teacher/ (224² aligned crops, same file names),
//!                           # optional scores.csv (name,q) and background/ masks
//! self_swap = 0.5           # finetune: share of samples whose source is the target itself
//!
//! [train]
//! steps = 1000
//! batch = 8
//! optimizer = "adam"        # adam | adamw | sgd
//! lr = 1e-4
//! betas = [0.9, 0.999]
//! eps = 1e-8
//! weight_decay = 0.0
//! momentum = 0.9            # sgd
//! warmup = 0                # steps of linear warm-up
//! schedule = "constant"     # constant | cosine
//! min_lr = 0.0              # cosine floor
//! clip = 1.0                # global-norm clipping (omit: none)
//! loss_scale = "dynamic"    # "dynamic" or a fixed number
//! seed = 0
//!
//! [loss]
//! l1 = 1.0                  # α-weighted L1 to the teacher (finetune: to the target on self-swaps)
//! ssim = 0.0                # α-weighted DSSIM (the structural term)
//! identity = 1.0            # 1 − cos(ArcFace(output), source identity)
//! identity_margin = 0.0     # optional: relu(1 − cos − margin)
//! mask = 0.0                # background-only mask loss (needs data.dir/background/)
//! reweight = true           # α = cos(z_id, z'_id)² · Q; false: α = 1
//! scales = [1]              # output scales compared (1 = 224, 2 = 112, 4 = 56)
//!
//! [output]
//! dir = "runs/distill"
//! log_every = 10
//! checkpoint_every = 100
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::kernels::optim::{LossScale, Optimizer, Schedule, ScheduleKind};

/// A `fswap train distill|finetune` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The model being trained.
    pub student: Student,
    /// The frozen identity network.
    pub identity: IdentityNet,
    /// Optional teacher the engine runs itself.
    #[serde(default)]
    pub teacher: Option<Teacher>,
    /// The training data.
    pub data: Data,
    /// Optimisation.
    #[serde(default)]
    pub train: Train,
    /// Loss weights.
    #[serde(default)]
    pub loss: Loss,
    /// Where the run writes.
    pub output: Output,
}

/// `[student]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Student {
    /// A MobileFaceSwap weights file (injection network + IDN), or `random:SEED`.
    pub weights: String,
    /// `eval` or `train` batch-norm statistics.
    #[serde(default = "default_bn")]
    pub batch_norm: String,
    /// Parameter-name prefixes kept fixed.
    #[serde(default)]
    pub freeze: Vec<String>,
}

fn default_bn() -> String {
    "eval".into()
}

/// `[identity]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityNet {
    /// ArcFace weights.
    pub arcface: PathBuf,
}

/// `[teacher]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Teacher {
    /// A MobileFaceSwap-format weights file.
    pub weights: PathBuf,
}

/// `[data]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// The data folder.
    pub dir: PathBuf,
    /// Fine-tuning: the share of samples whose source is the target frame itself.
    #[serde(default = "default_self_swap")]
    pub self_swap: f64,
}

fn default_self_swap() -> f64 {
    0.5
}

/// `[train]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Train {
    /// Total steps.
    pub steps: u64,
    /// Samples per step.
    pub batch: usize,
    /// `adam`, `adamw` or `sgd`.
    pub optimizer: String,
    /// Peak learning rate.
    pub lr: f64,
    /// Adam β1, β2.
    pub betas: [f64; 2],
    /// Adam ε.
    pub eps: f64,
    /// Weight decay (L2 for adam/sgd, decoupled for adamw).
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// `constant` or `cosine`.
    pub schedule: String,
    /// Cosine floor.
    pub min_lr: f64,
    /// Global-norm clipping threshold.
    pub clip: Option<f32>,
    /// `dynamic` or a fixed scale.
    pub loss_scale: toml::Value,
    /// Seed of the sample order.
    pub seed: u64,
}

impl Default for Train {
    fn default() -> Self {
        Train {
            steps: 1000,
            batch: 8,
            optimizer: "adam".into(),
            lr: 1e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.9,
            warmup: 0,
            schedule: "constant".into(),
            min_lr: 0.0,
            clip: None,
            loss_scale: toml::Value::String("dynamic".into()),
            seed: 0,
        }
    }
}

impl Train {
    /// The optimiser named by the config.
    pub fn optimizer(&self) -> Result<Optimizer> {
        let [beta1, beta2] = self.betas;
        Ok(match self.optimizer.as_str() {
            "adam" => Optimizer::Adam {
                beta1,
                beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
            },
            "adamw" => Optimizer::AdamW {
                beta1,
                beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
            },
            "sgd" => Optimizer::Sgd {
                momentum: self.momentum,
                dampening: 0.0,
                nesterov: false,
                weight_decay: self.weight_decay,
            },
            o => {
                return Err(Error::param(
                    "train.optimizer",
                    format!("'{o}' (expected adam, adamw or sgd)"),
                ))
            }
        })
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> Result<Schedule> {
        let kind = match self.schedule.as_str() {
            "constant" => ScheduleKind::Constant,
            "cosine" => ScheduleKind::Cosine,
            s => {
                return Err(Error::param(
                    "train.schedule",
                    format!("'{s}' (expected constant or cosine)"),
                ))
            }
        };
        let s = Schedule {
            base_lr: self.lr,
            warmup_steps: self.warmup,
            total_steps: self.steps,
            min_lr: if kind == ScheduleKind::Constant {
                self.lr
            } else {
                self.min_lr
            },
            kind,
        };
        s.validate()?;
        Ok(s)
    }

    /// The loss scaling.
    pub fn loss_scale(&self) -> Result<LossScale> {
        match &self.loss_scale {
            toml::Value::String(s) if s == "dynamic" => Ok(LossScale::dynamic()),
            toml::Value::Float(f) if f.is_finite() && *f > 0.0 => Ok(LossScale::Static(*f as f32)),
            toml::Value::Integer(i) if *i > 0 => Ok(LossScale::Static(*i as f32)),
            v => Err(Error::param(
                "train.loss_scale",
                format!("{v:?} (expected \"dynamic\" or a positive number)"),
            )),
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.batch == 0 {
            return Err(Error::param("train", "steps and batch must be at least 1"));
        }
        if let Some(c) = self.clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::param("train.clip", format!("{c} is not positive")));
            }
        }
        self.optimizer()?;
        self.schedule()?;
        self.loss_scale()?;
        Ok(())
    }
}

/// `[loss]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Loss {
    /// L1 weight.
    pub l1: f32,
    /// DSSIM weight.
    pub ssim: f32,
    /// Identity-loss weight.
    pub identity: f32,
    /// Identity-loss margin.
    pub identity_margin: Option<f32>,
    /// Background mask-loss weight.
    pub mask: f32,
    /// α = cos²·Q reweighting.
    pub reweight: bool,
    /// Output scales (downsampling factors).
    pub scales: Vec<usize>,
}

impl Default for Loss {
    fn default() -> Self {
        Loss {
            l1: 1.0,
            ssim: 0.0,
            identity: 1.0,
            identity_margin: None,
            mask: 0.0,
            reweight: true,
            scales: vec![1],
        }
    }
}

/// `[output]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// The run folder.
    pub dir: PathBuf,
    /// Log every this many steps.
    #[serde(default = "default_log")]
    pub log_every: u64,
    /// Checkpoint every this many steps.
    #[serde(default = "default_ckpt")]
    pub checkpoint_every: u64,
}

fn default_log() -> u64 {
    10
}

fn default_ckpt() -> u64 {
    100
}

impl Config {
    /// Reads and checks `path`; relative paths become relative to its folder.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut c: Config = toml::from_str(&text).map_err(|e| Error::Format {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut c.identity.arcface);
        fix(&mut c.data.dir);
        fix(&mut c.output.dir);
        if let Some(t) = &mut c.teacher {
            fix(&mut t.weights);
        }
        if !c.student.weights.starts_with("random:") && Path::new(&c.student.weights).is_relative()
        {
            c.student.weights = base.join(&c.student.weights).display().to_string();
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks values a TOML type cannot.
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        if !["eval", "train"].contains(&self.student.batch_norm.as_str()) {
            return Err(Error::param(
                "student.batch_norm",
                format!("'{}' (expected eval or train)", self.student.batch_norm),
            ));
        }
        if !(0.0..=1.0).contains(&self.data.self_swap) {
            return Err(Error::param(
                "data.self_swap",
                format!("{} is not in [0, 1]", self.data.self_swap),
            ));
        }
        let l = &self.loss;
        for (name, v) in [
            ("l1", l.l1),
            ("ssim", l.ssim),
            ("identity", l.identity),
            ("mask", l.mask),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::param(
                    format!("loss.{name}"),
                    format!("{v} is not a non-negative weight"),
                ));
            }
        }
        if l.l1 + l.ssim + l.identity + l.mask == 0.0 {
            return Err(Error::param("loss", "every loss weight is 0"));
        }
        if l.scales.is_empty() || l.scales.iter().any(|s| ![1, 2, 4].contains(s)) {
            return Err(Error::param(
                "loss.scales",
                format!("{:?} (each of 1, 2, 4)", l.scales),
            ));
        }
        if self.output.log_every == 0 || self.output.checkpoint_every == 0 {
            return Err(Error::param(
                "output",
                "log_every and checkpoint_every must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config> {
        let c: Config = toml::from_str(s).map_err(|e| Error::param("toml", e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    const MIN: &str = r#"
        [student]
        weights = "random:1"
        [identity]
        arcface = "a.safetensors"
        [data]
        dir = "d"
        [output]
        dir = "o"
    "#;

    #[test]
    fn defaults_and_overrides() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.train.batch, 8);
        assert_eq!(c.loss.scales, vec![1]);
        assert!(matches!(
            c.train.loss_scale().unwrap(),
            LossScale::Dynamic { .. }
        ));
        let c = parse(&format!(
            "{MIN}\n[train]\nloss_scale = 128\noptimizer = \"sgd\"\nlr = 0.01"
        ))
        .unwrap();
        assert_eq!(c.train.loss_scale().unwrap(), LossScale::Static(128.0));
        assert!(matches!(
            c.train.optimizer().unwrap(),
            Optimizer::Sgd { .. }
        ));
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let e = parse(&format!("{MIN}\n[train]\nstpes = 3")).unwrap_err();
        assert!(e.to_string().contains("stpes"), "{e}");
        let e = parse(&format!("{MIN}\n[train]\noptimizer = \"adagrad\"")).unwrap_err();
        assert!(e.to_string().contains("adagrad"), "{e}");
        let e = parse(&format!("{MIN}\n[loss]\nscales = [3]")).unwrap_err();
        assert!(e.to_string().contains("scales"), "{e}");
        let e = parse(&format!("{MIN}\n[loss]\nl1 = 0\nidentity = 0")).unwrap_err();
        assert!(e.to_string().contains("every loss weight"), "{e}");
    }
}
