//! `fswap convert`: swap the faces of one identity in images and video with a trained per-pair
//! autoencoder ([`crate::models::faceswap_ae`]), as deepfakes/faceswap's convert stage does
//! (spec alignment.md §B.3).
//!
//! **The run folder** ([`RunModel`]): `RUN_DIR/model.safetensors` holds the autoencoder in the
//! faceswap *file* layout ([`crate::models::faceswap_ae::to_file`]) with the metadata
//! [`keys`]: the model (`lightweight` | `original`), its side `S`, whether it has the learned-mask
//! branch, the crop's centring and coverage, and the two training facesets. The trainer writes it
//! with [`save_run_model`]; [`RunModel::open`] reads and checks it.
//!
//! **Per frame** ([`Converter::frame`]):
//! 1. Detect faces and their 68 landmarks, align each exactly as the faceset was extracted
//!    ([`crate::face::faceset::align`] at the model's `S`, centring and coverage: faceswap's
//!    `AlignedFace` at the model input size), cut the crop and its MobileFaceNet-128 embedding
//!    ([`Extractor::candidates`]).
//! 2. Keep the faces of the source identity: cosine of the embedding to the mean embedding of the
//!    source side's faceset ≥ `similarity` ([`DEFAULT_SIMILARITY`]), or every face (`all_faces`).
//! 3. Encoder + the *other* side's decoder on the GPU ([`Autoencoder`], batch 1, built once):
//!    `a2b` feeds faces like A and decodes with `decoder_b`.
//! 4. In aligned-face space, on the host (faceswap's `_pre_warp_adjustments`, numpy there):
//!    the mask ([`face_mask`]: [`MaskMode`] box | hull | learned, blurred, then eroded or dilated,
//!    then `min(mask, box)`), and colour matching ([`match_colour`]: [`ColourMode`] none |
//!    avg-color | hist-match) of the decoded face to the original crop inside the *raw* mask
//!    (before erosion), clipped to [0, 1].
//! 5. Back into the frame on the GPU ([`PasteBack`]): the face and its mask warped through the
//!    crop matrix with the engine's `warp` kernel (OpenCV `warpAffine` with `WARP_INVERSE_MAP`,
//!    bilinear, zero border), then `frame + m·(face − frame)` (`fusion`), faces one after another.
//!    This is the last part of [`crate::face::paste::PasteStage`] (same kernels, same order);
//!    its IDN-specific mask post-processing does not apply here. faceswap warps back with the
//!    inverse of the extract interpolator (`INTER_CUBIC` where the crop shrank the face); this
//!    is bilinear. Pixels where the warped mask is 0 leave the frame bit-exact (8-bit values pass
//!    through fp16 unchanged).
//!
//! **Masks** (faceswap `plugins/convert/mask/mask_blend.py`, `lib/align/aligned_mask.py`):
//! - *box*: the box alone (faceswap's mask type `none`, whose frame-edge blending is the box);
//!   the raw mask for colour matching is the whole crop.
//! - *hull*: the landmark mask "extended" (the union of 8 convex hulls, brows pushed up;
//!   [`crate::train::augment::landmark_mask`]) of the crop's landmarks.
//! - *learned*: the decoder's mask branch output (needs a model trained with `learn_mask`).
//!
//! hull and learned are blurred by a normalised box filter (`cv2.blur`, reflect-101 border) of
//! `blur` pixels in 4 passes, each pass's kernel half the last (faceswap's defaults: kernel 3,
//! 4 passes, factor 0.5). Erosion ([`Erode`]) takes pixels (an elliptic kernel of side `2|n| + 1`)
//! or, as faceswap, a percentage of the mask radius `√Σmask / 2` (kernel side
//! `⌊|p|·r/100⌋`); negative values dilate. The box is 1 inside a margin of `S/32 + 1` pixels, its
//! edge Gaussian-blurred with a kernel of `2·round(max(1, 0.06·√Σbox)) + 1` (faceswap's
//! `BlurMask("gaussian", box, 6, is_ratio=True)`), hard when `blur` is 0.
//!
//! **Colour** (faceswap `plugins/convert/color/`): *avg-color* adds the mask-weighted mean
//! difference (original − swapped) per channel, twice; an empty mask makes the result the
//! original. *hist-match* maps, per channel, the swapped values inside the mask (mask > 0) through
//! their CDF (scaled by the threshold 0.99) onto the original's inverse CDF (linear interpolation
//! as `np.interp`).
//!
//! The host arithmetic (blur, erosion and dilation with even and odd elliptic kernels, the box,
//! avg-color, match-hist) was compared with faceswap's own numpy code and OpenCV 5.0 on a 64 px
//! landmark mask and random faces: equal to 2.4e-7 (a local check; CI has no OpenCV, the unit
//! tests below hold f64 references and OpenCV's values for small cases).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use image::RgbImage;

use super::align::{apply, Affine};
use super::faceset::{check_settings, Alignment, Centering, Extractor, Faceset, Settings};
use crate::error::{Error, Result};
use crate::gpu::{Context, Plan};
use crate::kernels::fusion::fusion;
use crate::kernels::warp::Warp;
use crate::media::image as img_io;
use crate::models::faceswap_ae::{self, Arch, Autoencoder, Config, Side};
use crate::models::mobilefacenet::{self, cosine};
use crate::tensor::Shape;
use crate::train::augment::{gaussian_blur, landmark_mask, MaskArea};
use crate::weights::{write_safetensors, HostTensor, Weights};

/// The model file in a run folder.
pub const MODEL_FILE: &str = "model.safetensors";

/// Default cosine threshold between a face's MobileFaceNet-128 embedding and the mean embedding of
/// the source faceset. Measured on the shared data with two facesets A of 5 frames from the first
/// second of the Obama clip (at 320×180): the same person in 11 frames spanning the whole 2.2 s
/// clip scores 0.69–0.98 against their mean, the four faces of the shared photos (three other
/// people) −0.08–0.31; 0.5 sits about midway, 0.19 from both.
pub const DEFAULT_SIMILARITY: f32 = 0.5;

/// faceswap's histogram-matching threshold (`match_hist_defaults.py`: 99 %).
pub const HIST_THRESHOLD: f64 = 0.99;

/// faceswap's mask blur defaults: kernel 3 pixels, 4 passes, each pass's kernel scaled by 0.5.
pub const BLUR_PASSES: usize = 4;

/// Metadata keys of a run model (`RUN_DIR/model.safetensors`).
pub mod keys {
    /// `lightweight` or `original`.
    pub const MODEL: &str = "fswap.model";
    /// The model's input side S (e.g. `64`).
    pub const SIZE: &str = "fswap.size";
    /// `true` or `false`: the decoders have the learned-mask branch.
    pub const LEARN_MASK: &str = "fswap.learn_mask";
    /// `legacy`, `face` or `head`.
    pub const CENTERING: &str = "fswap.centering";
    /// The crop coverage (0.625 to 1).
    pub const COVERAGE: &str = "fswap.coverage";
    /// Absolute path of the faceset of identity A.
    pub const FACESET_A: &str = "fswap.faceset_a";
    /// Absolute path of the faceset of identity B.
    pub const FACESET_B: &str = "fswap.faceset_b";
    /// Written as `file`: the tensors are in faceswap's file layout.
    pub const LAYOUT: &str = "fswap.layout";
    /// Linear weights `[out, in]` (`out_in`), as every faceswap autoencoder file.
    pub const LINEAR_LAYOUT: &str = "fswap.linear_layout";
}

// ---------------------------------------------------------------------------------------------
// the run model

/// What a run model's metadata says.
#[derive(Clone, Debug, PartialEq)]
pub struct RunMeta {
    /// The architecture.
    pub arch: Arch,
    /// Input and output side S.
    pub size: usize,
    /// Whether the decoders have the learned-mask branch.
    pub learn_mask: bool,
    /// Centring of the crops it was trained on.
    pub centering: Centering,
    /// Coverage of the crops it was trained on.
    pub coverage: f64,
    /// The faceset of identity A.
    pub faceset_a: PathBuf,
    /// The faceset of identity B.
    pub faceset_b: PathBuf,
}

impl RunMeta {
    /// Checks the values: a supported size for the architecture, crop settings in range, both
    /// faceset paths given.
    pub fn check(&self) -> Result<()> {
        self.config()?;
        check_settings(self.size, self.coverage)?;
        for (k, p) in [
            (keys::FACESET_A, &self.faceset_a),
            (keys::FACESET_B, &self.faceset_b),
        ] {
            if p.as_os_str().is_empty() {
                return Err(Error::param("run model", format!("{k} is empty")));
            }
        }
        Ok(())
    }

    /// The model configuration these settings describe (lowmem is read from the weights).
    pub fn config(&self) -> Result<Config> {
        Ok(Config::new(self.arch, self.size)?.with_mask(self.learn_mask))
    }

    /// The crop settings (size, centring, coverage) faces are aligned with.
    pub fn settings(&self) -> Settings {
        Settings {
            size: self.size,
            centering: self.centering,
            coverage: self.coverage,
        }
    }

    /// The faceset of a side.
    pub fn faceset(&self, side: Side) -> &Path {
        match side {
            Side::A => &self.faceset_a,
            Side::B => &self.faceset_b,
        }
    }

    /// The metadata entries (plus `fswap.layout = file` and `fswap.linear_layout = out_in`).
    pub fn to_metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            (keys::MODEL.into(), self.arch.name().into()),
            (keys::SIZE.into(), self.size.to_string()),
            (keys::LEARN_MASK.into(), self.learn_mask.to_string()),
            (keys::CENTERING.into(), self.centering.name().into()),
            (keys::COVERAGE.into(), self.coverage.to_string()),
            (keys::FACESET_A.into(), self.faceset_a.display().to_string()),
            (keys::FACESET_B.into(), self.faceset_b.display().to_string()),
            (keys::LAYOUT.into(), "file".into()),
            (keys::LINEAR_LAYOUT.into(), "out_in".into()),
        ])
    }

    /// Parses and checks the metadata of the file `origin` (named in errors).
    pub fn from_metadata(meta: &HashMap<String, String>, origin: &str) -> Result<RunMeta> {
        let bad = |d: String| Error::Format {
            path: origin.to_string(),
            detail: d,
        };
        let get = |k: &str| -> Result<&str> {
            meta.get(k).map(|v| v.trim()).ok_or_else(|| {
                bad(format!(
                    "metadata key {k} is missing: not a run model of `fswap train autoencoder` \
                     (it records {}, {}, {}, {}, {}, {} and {})",
                    keys::MODEL,
                    keys::SIZE,
                    keys::LEARN_MASK,
                    keys::CENTERING,
                    keys::COVERAGE,
                    keys::FACESET_A,
                    keys::FACESET_B
                ))
            })
        };
        if let Some(layout) = meta.get(keys::LAYOUT) {
            if layout != "file" {
                return Err(bad(format!(
                    "{} is '{layout}': a run model holds faceswap's file layout \
                     (faceswap_ae::to_file), not the engine's",
                    keys::LAYOUT
                )));
            }
        }
        let model = get(keys::MODEL)?;
        let arch = match model {
            "lightweight" | "faceswap_lightweight" => Arch::Lightweight,
            "original" | "faceswap_original" => Arch::Original,
            other => {
                return Err(bad(format!(
                    "{} is '{other}' (expected lightweight or original)",
                    keys::MODEL
                )))
            }
        };
        let size_s = get(keys::SIZE)?;
        let size: usize = size_s.parse().map_err(|_| {
            bad(format!(
                "{} is '{size_s}', not a size in pixels",
                keys::SIZE
            ))
        })?;
        let learn_mask = match get(keys::LEARN_MASK)? {
            "true" => true,
            "false" => false,
            other => {
                return Err(bad(format!(
                    "{} is '{other}' (expected true or false)",
                    keys::LEARN_MASK
                )))
            }
        };
        let c = get(keys::CENTERING)?;
        let centering = Centering::parse(c).map_err(|_| {
            bad(format!(
                "{} is '{c}' (expected legacy, face or head)",
                keys::CENTERING
            ))
        })?;
        let cov_s = get(keys::COVERAGE)?;
        let coverage: f64 = cov_s
            .parse()
            .map_err(|_| bad(format!("{} is '{cov_s}', not a number", keys::COVERAGE)))?;
        let m = RunMeta {
            arch,
            size,
            learn_mask,
            centering,
            coverage,
            faceset_a: PathBuf::from(get(keys::FACESET_A)?),
            faceset_b: PathBuf::from(get(keys::FACESET_B)?),
        };
        m.check().map_err(|e| bad(format!("metadata: {e}")))?;
        Ok(m)
    }
}

/// Which layout the tensors handed to [`save_run_model`] are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The engine's (a training graph's parameters, [`faceswap_ae::to_engine`]).
    Engine,
    /// faceswap's file layout ([`faceswap_ae::to_file`], `train::autoencoder::export`).
    File,
}

/// Writes `RUN_DIR/model.safetensors` atomically (creating `run_dir`): `tensors` converted to the
/// file layout when given in the engine's, checked against the model `meta` describes (every
/// tensor present with its shape, mask branch as `meta.learn_mask`, size as `meta.size`), with
/// `meta`'s metadata. Returns the file's path.
pub fn save_run_model(
    run_dir: &Path,
    meta: &RunMeta,
    tensors: &BTreeMap<String, HostTensor>,
    layout: Layout,
) -> Result<PathBuf> {
    meta.check()?;
    let mut cfg = meta.config()?;
    cfg.lowmem = meta.arch == Arch::Original
        && !tensors.contains_key("encoder.conv4.weight")
        && tensors.contains_key("encoder.conv3.weight");
    let file_tensors = match layout {
        Layout::File => tensors.clone(),
        Layout::Engine => faceswap_ae::to_file(&cfg, tensors.clone()),
    };
    let path = run_dir.join(MODEL_FILE);
    let shown = path.display().to_string();
    let w = Weights::from_tensors(&shown, file_tensors, meta.to_metadata());
    let found = Config::from_weights(meta.arch, &w)?;
    check_config(&found, meta, &shown)?;
    std::fs::create_dir_all(run_dir).map_err(|source| Error::Io {
        path: run_dir.display().to_string(),
        source,
    })?;
    write_safetensors(&path, w.tensors(), meta.to_metadata())?;
    Ok(path)
}

fn check_config(found: &Config, meta: &RunMeta, origin: &str) -> Result<()> {
    let bad = |d: String| Error::Format {
        path: origin.to_string(),
        detail: d,
    };
    if found.size != meta.size {
        return Err(bad(format!(
            "{} says {} but the weights are built for {}x{} faces",
            keys::SIZE,
            meta.size,
            found.size,
            found.size
        )));
    }
    if found.learn_mask != meta.learn_mask {
        return Err(bad(format!(
            "{} says {} but the decoders {} the mask branch",
            keys::LEARN_MASK,
            meta.learn_mask,
            if found.learn_mask { "have" } else { "lack" }
        )));
    }
    Ok(())
}

/// A trained model read back from a run folder.
#[derive(Clone, Debug)]
pub struct RunModel {
    /// The run folder.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: RunMeta,
    /// The model configuration read from the weights (agrees with `meta`).
    pub config: Config,
    /// The weights, faceswap file layout (what [`Autoencoder::new`] takes).
    pub weights: Weights,
}

impl RunModel {
    /// Reads `RUN_DIR/model.safetensors` and checks it: the metadata ([`RunMeta::from_metadata`]),
    /// every tensor against the model it names, and the size and mask branch the weights imply
    /// against the metadata.
    pub fn open(run_dir: impl AsRef<Path>) -> Result<RunModel> {
        let dir = run_dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the run folder does not exist (train one with `fswap train autoencoder`)",
                ),
            });
        }
        let path = dir.join(MODEL_FILE);
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(Error::Format {
                path: shown,
                detail: format!(
                    "no {MODEL_FILE} in the run folder: `fswap train autoencoder` writes it \
                     (is this a run folder, and did the training save its model?)"
                ),
            });
        }
        let weights = Weights::open(&path)?;
        let meta = RunMeta::from_metadata(weights.metadata(), &shown)?;
        let config = Config::from_weights(meta.arch, &weights)?;
        check_config(&config, &meta, &shown)?;
        Ok(RunModel {
            dir: dir.to_path_buf(),
            meta,
            config,
            weights,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// options

/// Which way faces are swapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    /// Faces of identity A decoded as B (faceswap's default).
    #[default]
    AtoB,
    /// Faces of identity B decoded as A (faceswap's `--swap-model`).
    BtoA,
}

impl Direction {
    /// Parses `a2b` or `b2a`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "a2b" => Ok(Direction::AtoB),
            "b2a" => Ok(Direction::BtoA),
            other => Err(Error::param(
                "--direction",
                format!("'{other}' (expected a2b or b2a)"),
            )),
        }
    }

    /// The identity whose faces are replaced.
    pub fn source(self) -> Side {
        match self {
            Direction::AtoB => Side::A,
            Direction::BtoA => Side::B,
        }
    }

    /// The decoder that draws the new face.
    pub fn target(self) -> Side {
        match self {
            Direction::AtoB => Side::B,
            Direction::BtoA => Side::A,
        }
    }
}

/// The blending mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MaskMode {
    /// The crop with blurred edges.
    Box,
    /// The landmark hulls ("extended").
    #[default]
    Hull,
    /// The decoder's learned mask.
    Learned,
}

impl MaskMode {
    /// Parses `box`, `hull` or `learned`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "box" => Ok(MaskMode::Box),
            "hull" => Ok(MaskMode::Hull),
            "learned" => Ok(MaskMode::Learned),
            other => Err(Error::param(
                "--mask",
                format!("'{other}' (expected box, hull or learned)"),
            )),
        }
    }
}

/// Colour matching of the swapped face to the original.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColourMode {
    /// None.
    None,
    /// faceswap's `avg-color` (its default).
    #[default]
    AvgColor,
    /// faceswap's `match-hist`.
    HistMatch,
}

impl ColourMode {
    /// Parses `none`, `avg-color` or `hist-match` (`avg-colour`, `match-hist` also).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(ColourMode::None),
            "avg-color" | "avg-colour" => Ok(ColourMode::AvgColor),
            "hist-match" | "match-hist" => Ok(ColourMode::HistMatch),
            other => Err(Error::param(
                "--colour",
                format!("'{other}' (expected none, avg-color or hist-match)"),
            )),
        }
    }
}

/// Mask erosion (positive) or dilation (negative).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Erode {
    /// Pixels: an elliptic kernel of side `2|n| + 1`.
    Pixels(i32),
    /// faceswap's percentage of the mask radius `√Σmask / 2`: a kernel of side `⌊|p|·r/100⌋`.
    Percent(f64),
}

impl Default for Erode {
    fn default() -> Self {
        Erode::Pixels(0)
    }
}

impl Erode {
    /// Parses `N` (pixels, e.g. `3`, `-2`) or `P%` (e.g. `10%`, `-5%`; −100 to 100).
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        let err = || {
            Error::param(
                "--erode",
                format!(
                    "'{s}' (expected pixels such as 3 or -2, or a percentage of the mask radius \
                     such as 10% or -5%)"
                ),
            )
        };
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| err())?;
            if !v.is_finite() || v.abs() > 100.0 {
                return Err(err());
            }
            return Ok(Erode::Percent(v));
        }
        t.parse::<i32>().map(Erode::Pixels).map_err(|_| err())
    }

    /// The kernel side for a mask of `sum` (0: nothing to do) and whether it erodes.
    pub fn kernel(self, sum: f64) -> (usize, bool) {
        match self {
            Erode::Pixels(n) => {
                if n == 0 {
                    (0, true)
                } else {
                    (2 * n.unsigned_abs() as usize + 1, n > 0)
                }
            }
            Erode::Percent(p) => {
                let radius = sum.max(0.0).sqrt() / 2.0;
                ((p / 100.0 * radius).abs().floor() as usize, p > 0.0)
            }
        }
    }
}

/// The choices of a conversion.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvertOptions {
    /// Which identity is replaced by which.
    pub direction: Direction,
    /// The blending mask.
    pub mask: MaskMode,
    /// Erosion or dilation of the mask.
    pub erode: Erode,
    /// Box-blur kernel of the mask in pixels (0: no blur, and a hard-edged box).
    pub blur: usize,
    /// Colour matching.
    pub colour: ColourMode,
    /// Cosine threshold to the source faceset's mean embedding.
    pub similarity: f32,
    /// Swap every face, whoever it is.
    pub all_faces: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            direction: Direction::AtoB,
            mask: MaskMode::Hull,
            erode: Erode::Pixels(0),
            blur: 3,
            colour: ColourMode::AvgColor,
            similarity: DEFAULT_SIMILARITY,
            all_faces: false,
        }
    }
}

impl ConvertOptions {
    /// Checks the options against a model of side `size` (with or without a mask branch).
    pub fn check(&self, size: usize, learn_mask: bool) -> Result<()> {
        if self.mask == MaskMode::Learned && !learn_mask {
            return Err(Error::param(
                "--mask",
                "learned needs a model trained with the learned-mask branch (fswap.learn_mask = \
                 true); this run's decoders have none: use --mask hull or box",
            ));
        }
        if self.blur > size {
            return Err(Error::param(
                "--blur",
                format!("{} pixels for {size}x{size} faces", self.blur),
            ));
        }
        if let Erode::Pixels(n) = self.erode {
            if n.unsigned_abs() as usize > size / 2 {
                return Err(Error::param(
                    "--erode",
                    format!("{n} pixels for {size}x{size} faces"),
                ));
            }
        }
        if !(-1.0..=1.0).contains(&self.similarity) {
            return Err(Error::param(
                "--similarity",
                format!("{} (a cosine threshold in [-1, 1])", self.similarity),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// masks

fn check_plane(what: &str, len: usize, s: usize) -> Result<()> {
    if s == 0 || len != s * s {
        return Err(Error::shape(
            what,
            format!("{len} values for a {s}x{s} plane"),
        ));
    }
    Ok(())
}

/// Reflect-101 index (OpenCV's default border: `dcb|abcd|cba`).
fn reflect101(i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    let mut j = i;
    while j < 0 || j >= n {
        j = if j < 0 { -j } else { 2 * n - 2 - j };
    }
    j as usize
}

/// OpenCV's normalised box filter `cv2.blur(mask, (k, k))` on an `s × s` plane (reflect-101
/// border); `k` odd.
pub fn box_blur(mask: &[f32], s: usize, k: usize) -> Result<Vec<f32>> {
    check_plane("box blur", mask.len(), s)?;
    if k <= 1 {
        return Ok(mask.to_vec());
    }
    if k.is_multiple_of(2) {
        return Err(Error::param("box blur", format!("kernel {k} is even")));
    }
    let r = (k / 2) as i64;
    let mut tmp = vec![0f64; s * s];
    for y in 0..s {
        for x in 0..s {
            tmp[y * s + x] = (-r..=r)
                .map(|d| mask[y * s + reflect101(x as i64 + d, s)] as f64)
                .sum::<f64>();
        }
    }
    let norm = (k * k) as f64;
    let mut out = vec![0f32; s * s];
    for y in 0..s {
        for x in 0..s {
            out[y * s + x] = ((-r..=r)
                .map(|d| tmp[reflect101(y as i64 + d, s) * s + x])
                .sum::<f64>()
                / norm) as f32;
        }
    }
    Ok(out)
}

/// The kernels of faceswap's multi-pass mask blur from `kernel` pixels: made odd, then each
/// pass's kernel `round(k·0.5)` (half to even) made odd; empty for 0.
pub fn blur_kernels(kernel: usize) -> Vec<usize> {
    if kernel == 0 {
        return vec![];
    }
    let odd = |k: usize| if k.is_multiple_of(2) { k + 1 } else { k };
    let mut k = odd(kernel);
    let mut v = Vec::with_capacity(BLUR_PASSES);
    for _ in 0..BLUR_PASSES {
        v.push(k);
        k = odd((k as f64 * 0.5).round_ties_even() as usize);
    }
    v
}

/// faceswap's mask blur: [`box_blur`] with each of [`blur_kernels`]`(kernel)` in turn.
pub fn blur_mask(mask: &[f32], s: usize, kernel: usize) -> Result<Vec<f32>> {
    check_plane("mask blur", mask.len(), s)?;
    let mut m = mask.to_vec();
    for k in blur_kernels(kernel) {
        m = box_blur(&m, s, k)?;
    }
    Ok(m)
}

/// OpenCV's `getStructuringElement(MORPH_ELLIPSE, (k, k))`, row-major `k × k`.
pub fn ellipse_kernel(k: usize) -> Vec<bool> {
    let mut out = vec![false; k * k];
    let r = (k / 2) as i64;
    let c = (k / 2) as i64;
    let inv_r2 = if r > 0 { 1.0 / (r * r) as f64 } else { 0.0 };
    for i in 0..k as i64 {
        let dy = i - r;
        if dy.abs() > r {
            continue;
        }
        // cvRound: half to even.
        let dx = (c as f64 * (((r * r - dy * dy) as f64) * inv_r2).sqrt()).round_ties_even() as i64;
        let j1 = (c - dx).max(0);
        let j2 = (c + dx + 1).min(k as i64);
        for j in j1..j2 {
            out[i as usize * k + j as usize] = true;
        }
    }
    out
}

/// `cv2.erode` (or `cv2.dilate`) of an `s × s` plane with the `k × k` structuring element
/// `kernel`, anchor at its centre, pixels outside the plane ignored (OpenCV's default border for
/// morphology).
pub fn morph(mask: &[f32], s: usize, kernel: &[bool], k: usize, erode: bool) -> Result<Vec<f32>> {
    check_plane("erode", mask.len(), s)?;
    if kernel.len() != k * k {
        return Err(Error::shape(
            "erode",
            format!("{} kernel values for {k}x{k}", kernel.len()),
        ));
    }
    let a = (k / 2) as i64;
    let taps: Vec<(i64, i64)> = (0..k * k)
        .filter(|&i| kernel[i])
        .map(|i| ((i / k) as i64 - a, (i % k) as i64 - a))
        .collect();
    let n = s as i64;
    let mut out = vec![0f32; s * s];
    for y in 0..n {
        for x in 0..n {
            let mut v = if erode {
                f32::INFINITY
            } else {
                f32::NEG_INFINITY
            };
            for &(dy, dx) in &taps {
                let (yy, xx) = (y + dy, x + dx);
                if yy < 0 || xx < 0 || yy >= n || xx >= n {
                    continue;
                }
                let m = mask[(yy * n + xx) as usize];
                v = if erode { v.min(m) } else { v.max(m) };
            }
            out[(y * n + x) as usize] = if v.is_finite() {
                v
            } else {
                mask[(y * n + x) as usize]
            };
        }
    }
    Ok(out)
}

/// faceswap's erosion of the (blurred) mask: an elliptic kernel sized by [`Erode::kernel`].
pub fn erode_mask(mask: &[f32], s: usize, erode: Erode) -> Result<Vec<f32>> {
    check_plane("erode", mask.len(), s)?;
    let sum: f64 = mask.iter().map(|&v| v as f64).sum();
    let (k, eroding) = erode.kernel(sum);
    if k == 0 {
        return Ok(mask.to_vec());
    }
    morph(mask, s, &ellipse_kernel(k), k, eroding)
}

/// faceswap's box mask of an `s` crop: 1 inside a margin of `s/32 + 1` pixels, 0 outside, its
/// edges Gaussian-blurred (kernel `2·round(max(1, 0.06·√Σ)) + 1`) when `blurred`.
pub fn box_mask(s: usize, blurred: bool) -> Result<Vec<f32>> {
    let edge = s / 32 + 1;
    if s <= 2 * edge {
        return Err(Error::param("box mask", format!("size {s} is too small")));
    }
    let mut m = vec![0f32; s * s];
    for y in edge..s - edge {
        for x in edge..s - edge {
            m[y * s + x] = 1.0;
        }
    }
    if !blurred {
        return Ok(m);
    }
    // √Σbox: the side of the square of ones.
    let diameter = (s - 2 * edge) as f64;
    let radius = (diameter * 6.0 / 100.0).max(1.0).round_ties_even() as usize;
    gaussian_blur(&m, s, 2 * radius + 1)
}

/// The blending mask of one face (all `s × s`): returns `(mask, raw)` — `mask` blurred, eroded
/// and limited by the box, what the face is pasted with; `raw` blurred only, what colour matching
/// weighs. `landmarks` are the face's 68 points in crop pixels; `predicted` the decoder's mask
/// (needed for [`MaskMode::Learned`]).
pub fn face_mask(
    mode: MaskMode,
    landmarks: &[[f32; 2]],
    predicted: Option<&[f32]>,
    s: usize,
    erode: Erode,
    blur: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let bx = box_mask(s, blur > 0)?;
    let raw = match mode {
        MaskMode::Box => return Ok((bx, vec![1.0; s * s])),
        MaskMode::Hull => blur_mask(&landmark_mask(MaskArea::Extended, landmarks, s)?, s, blur)?,
        MaskMode::Learned => {
            let p = predicted
                .ok_or_else(|| Error::param("--mask", "learned needs the decoder's mask branch"))?;
            check_plane("learned mask", p.len(), s)?;
            blur_mask(p, s, blur)?
        }
    };
    let eroded = erode_mask(&raw, s, erode)?;
    let mask = eroded.iter().zip(&bx).map(|(a, b)| a.min(*b)).collect();
    Ok((mask, raw))
}

// ---------------------------------------------------------------------------------------------
// colour

fn check_faces(what: &str, old: &[f32], new: &[f32], raw: &[f32]) -> Result<usize> {
    let plane = raw.len();
    if plane == 0 || old.len() != 3 * plane || new.len() != 3 * plane {
        return Err(Error::shape(
            what,
            format!(
                "faces of {} and {} values with a mask of {plane} (planar RGB expected)",
                old.len(),
                new.len()
            ),
        ));
    }
    Ok(plane)
}

/// faceswap's `avg-color` on planar RGB `[3, plane]` faces (not clipped; [`match_colour`] clips):
/// twice, `new += Σ raw·(old − new) / Σ raw` per channel, or `new = old` when the mask is empty.
pub fn avg_color(old: &[f32], new: &[f32], raw: &[f32]) -> Result<Vec<f32>> {
    let plane = check_faces("avg-color", old, new, raw)?;
    let mut out = new.to_vec();
    let wsum: f64 = raw.iter().map(|&v| v as f64).sum();
    let any = raw.iter().any(|&v| v != 0.0);
    for _ in 0..2 {
        for c in 0..3 {
            let (o, n) = (
                &old[c * plane..(c + 1) * plane],
                &mut out[c * plane..(c + 1) * plane],
            );
            if any {
                let d: f64 = o
                    .iter()
                    .zip(n.iter())
                    .zip(raw)
                    .map(|((&a, &b), &m)| (a as f64 - b as f64) * m as f64)
                    .sum::<f64>()
                    / wsum;
                for v in n.iter_mut() {
                    *v = (*v as f64 + d) as f32;
                }
            } else {
                for (v, &a) in n.iter_mut().zip(o) {
                    *v = (*v as f64 + (a as f64 - *v as f64)) as f32;
                }
            }
        }
    }
    Ok(out)
}

/// `np.unique` with counts, cumulated and normalised: sorted distinct values and their CDF.
fn cdf(mut v: Vec<f32>) -> (Vec<f32>, Vec<f64>) {
    v.sort_by(f32::total_cmp);
    let n = v.len() as f64;
    let (mut vals, mut cum) = (Vec::new(), Vec::new());
    for (i, &x) in v.iter().enumerate() {
        if vals.last() == Some(&x) {
            *cum.last_mut().expect("pushed with vals") = (i + 1) as f64 / n;
        } else {
            vals.push(x);
            cum.push((i + 1) as f64 / n);
        }
    }
    (vals, cum)
}

/// `np.interp(x, xp, fp)` (`xp` increasing): `fp[0]` left of `xp[0]`, `fp[-1]` right of
/// `xp[-1]`, linear between.
fn interp(x: f64, xp: &[f64], fp: &[f32]) -> f64 {
    let j = xp.partition_point(|&q| q <= x);
    if j == 0 {
        return fp[0] as f64;
    }
    if j == xp.len() {
        return fp[xp.len() - 1] as f64;
    }
    let (x0, x1) = (xp[j - 1], xp[j]);
    let (y0, y1) = (fp[j - 1] as f64, fp[j] as f64);
    y0 + (x - x0) * (y1 - y0) / (x1 - x0)
}

/// faceswap's `match-hist` on planar RGB `[3, plane]` faces (not clipped): per channel, the
/// swapped values where `raw > 0` mapped through their CDF times `threshold` onto the original's
/// inverse CDF there; other pixels keep the swapped values.
pub fn hist_match(old: &[f32], new: &[f32], raw: &[f32], threshold: f64) -> Result<Vec<f32>> {
    let plane = check_faces("hist-match", old, new, raw)?;
    let mut out = new.to_vec();
    let idx: Vec<usize> = (0..plane).filter(|&i| raw[i] != 0.0).collect();
    if idx.is_empty() {
        return Ok(out);
    }
    for c in 0..3 {
        let (o, n) = (&old[c * plane..(c + 1) * plane], &new[c * plane..]);
        let (s_vals, s_cdf) = cdf(idx.iter().map(|&i| n[i]).collect());
        let (t_vals, t_cdf) = cdf(idx.iter().map(|&i| o[i]).collect());
        let mapped: Vec<f32> = s_cdf
            .iter()
            .map(|&q| interp(threshold * q, &t_cdf, &t_vals) as f32)
            .collect();
        for &i in &idx {
            let k = s_vals
                .binary_search_by(|v| v.total_cmp(&n[i]))
                .expect("every masked value is in the histogram");
            out[c * plane + i] = mapped[k];
        }
    }
    Ok(out)
}

/// Colour-matches the swapped face `new` to the original `old` (planar RGB in [0, 1]) inside the
/// raw mask, then clips to [0, 1] (as faceswap's colour adjustments all do).
pub fn match_colour(mode: ColourMode, old: &[f32], new: &[f32], raw: &[f32]) -> Result<Vec<f32>> {
    let mut out = match mode {
        ColourMode::None => {
            check_faces("colour", old, new, raw)?;
            new.to_vec()
        }
        ColourMode::AvgColor => avg_color(old, new, raw)?,
        ColourMode::HistMatch => hist_match(old, new, raw, HIST_THRESHOLD)?,
    };
    for v in &mut out {
        *v = v.clamp(0.0, 1.0);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// paste-back

/// One swapped face to paste: crop-space face and mask, and the crop's matrix.
#[derive(Clone, Debug)]
pub struct Patch {
    /// Planar RGB `[3, S, S]` in [0, 1].
    pub face: Vec<f32>,
    /// `[S, S]` in [0, 1].
    pub mask: Vec<f32>,
    /// Frame pixels → crop pixels (the alignment's adjusted matrix).
    pub matrix: Affine,
}

/// Pastes crop-space faces into frames of one size on the GPU: per face, the face and its mask
/// warped into the frame (the crop matrix as `WARP_INVERSE_MAP`), then
/// `out = frame + m·(face − frame)`; two frame tensors ping-pong between faces. Its tensors and
/// dispatches are made once per frame size; a paste writes the frame, each face, mask and matrix,
/// and reads the final frame back.
pub struct PasteBack {
    width: usize,
    height: usize,
    size: usize,
    frames: [crate::tensor::Tensor; 2],
    face: crate::tensor::Tensor,
    mask: crate::tensor::Tensor,
    warp_face: Warp,
    warp_mask: Warp,
    plans: [Plan; 2],
}

impl PasteBack {
    /// For `width × height` frames and `size × size` crops.
    pub fn new(ctx: &Context, width: usize, height: usize, size: usize) -> Result<Self> {
        use crate::tensor::Tensor;
        let fs = Shape::new(1, 3, height, width);
        let frames = [
            Tensor::new(ctx, fs, "convert frame a")?,
            Tensor::new(ctx, fs, "convert frame b")?,
        ];
        let face = Tensor::new(ctx, Shape::new(1, 3, size, size), "convert face")?;
        let mask = Tensor::new(ctx, Shape::new(1, 1, size, size), "convert mask")?;
        let face_full = Tensor::new(ctx, fs, "convert face in frame")?;
        let mask_full = Tensor::new(
            ctx,
            Shape::new(1, 1, height, width),
            "convert mask in frame",
        )?;
        let warp_face = Warp::new(ctx, &face, &face_full)?;
        let warp_mask = Warp::new(ctx, &mask, &mask_full)?;
        let plan = |from: &Tensor, to: &Tensor| -> Result<Plan> {
            let mut p = Plan::default();
            p.push(warp_face.dispatch().clone());
            p.push(warp_mask.dispatch().clone());
            p.push(fusion(ctx, &face_full, from, &mask_full, false, to)?);
            Ok(p)
        };
        let plans = [plan(&frames[0], &frames[1])?, plan(&frames[1], &frames[0])?];
        Ok(PasteBack {
            width,
            height,
            size,
            frames,
            face,
            mask,
            warp_face,
            warp_mask,
            plans,
        })
    }

    /// Frame width and height, crop side.
    pub fn dims(&self) -> (usize, usize, usize) {
        (self.width, self.height, self.size)
    }

    /// `img` with `patches` pasted in order (a copy of `img` when there are none).
    pub fn paste(&self, ctx: &Context, img: &RgbImage, patches: &[Patch]) -> Result<RgbImage> {
        if (img.width() as usize, img.height() as usize) != (self.width, self.height) {
            return Err(Error::shape(
                "paste",
                format!(
                    "frame {}x{}, built for {}x{}",
                    img.width(),
                    img.height(),
                    self.width,
                    self.height
                ),
            ));
        }
        if patches.is_empty() {
            return Ok(img.clone());
        }
        img_io::upload(ctx, &self.frames[0], img)?;
        for (i, p) in patches.iter().enumerate() {
            self.face.write_f32(ctx, &p.face)?;
            self.mask.write_f32(ctx, &p.mask)?;
            self.warp_face.set(ctx, &[(p.matrix, 0)])?;
            self.warp_mask.set(ctx, &[(p.matrix, 0)])?;
            self.plans[i % 2].run(ctx)?;
        }
        img_io::download(ctx, &self.frames[patches.len() % 2])
    }
}

// ---------------------------------------------------------------------------------------------
// the converter

/// The unit mean of a faceset's embeddings (the identity's prototype).
pub fn mean_embedding(set: &Faceset) -> Result<Vec<f32>> {
    let mut m = vec![0f64; mobilefacenet::EMBEDDING];
    for f in &set.faces {
        for (a, &b) in m.iter_mut().zip(&f.embedding) {
            *a += b as f64;
        }
    }
    let n = m.iter().map(|v| v * v).sum::<f64>().sqrt();
    if set.is_empty() || n < 1e-6 {
        return Err(Error::Format {
            path: set.dir.display().to_string(),
            detail: "the faceset's embeddings cancel out: no identity to compare with".into(),
        });
    }
    Ok(m.iter().map(|v| (v / n) as f32).collect())
}

/// One swapped face and every intermediate of its conversion (crop space, `S × S`).
#[derive(Clone, Debug)]
pub struct SwappedFace {
    /// Index among the frame's detections (best score first).
    pub index: usize,
    /// Cosine of its embedding to the source identity's mean (`None` when no faceset was read:
    /// `all_faces`).
    pub cosine: Option<f32>,
    /// The alignment (its `adjusted` matrix maps the frame into the crop).
    pub alignment: Alignment,
    /// The 68 landmarks in crop pixels.
    pub landmarks: Vec<[f32; 2]>,
    /// The original crop, planar RGB in [0, 1] (8-bit values).
    pub original: Vec<f32>,
    /// The decoder's face, planar RGB in [0, 1].
    pub decoded: Vec<f32>,
    /// The decoder's mask, with the mask branch.
    pub predicted_mask: Option<Vec<f32>>,
    /// The mask the face is pasted with.
    pub mask: Vec<f32>,
    /// The mask colour matching weighs.
    pub raw_mask: Vec<f32>,
    /// The colour-matched face that is pasted.
    pub face: Vec<f32>,
}

/// One converted frame.
#[derive(Clone, Debug)]
pub struct FrameResult {
    /// The output frame.
    pub image: RgbImage,
    /// Faces detected.
    pub found: usize,
    /// Faces whose alignment failed (left as they are).
    pub unaligned: usize,
    /// The swapped faces.
    pub swapped: Vec<SwappedFace>,
    /// Cosines of the faces not swapped because they did not look like the source identity.
    pub rejected: Vec<f32>,
}

/// Converts frames with a run's model: holds the detector, the aligner, the autoencoder and the
/// paste stage (rebuilt only when the frame size changes).
pub struct Converter {
    meta: RunMeta,
    options: ConvertOptions,
    extractor: Extractor,
    ae: Autoencoder,
    reference: Option<Vec<f32>>,
    paste: Option<PasteBack>,
}

impl Converter {
    /// Loads the `--models DIR` detector, landmarks and identity models, builds the run's encoder
    /// and target decoder for one face, and (unless `options.all_faces`) reads the mean embedding
    /// of the source identity's faceset: `reference_faceset`, or the run's training faceset of
    /// that side.
    pub fn new(
        ctx: &Context,
        run: &RunModel,
        models: &Path,
        options: ConvertOptions,
        reference_faceset: Option<&Path>,
    ) -> Result<Self> {
        options.check(run.config.size, run.config.learn_mask)?;
        let side = options.direction.source();
        let reference = if options.all_faces {
            None
        } else {
            let dir = reference_faceset.unwrap_or(run.meta.faceset(side));
            if !dir.join(super::faceset::ALIGNMENTS).is_file() {
                let detail = if reference_faceset.is_some() {
                    format!("not a faceset (no {})", super::faceset::ALIGNMENTS)
                } else {
                    format!(
                        "the faceset of identity {} recorded in the run's model is not there: \
                         pass --faceset DIR to pick faces by another faceset of that person, or \
                         --all-faces",
                        side.letter().to_uppercase()
                    )
                };
                return Err(Error::Format {
                    path: dir.display().to_string(),
                    detail,
                });
            }
            Some(mean_embedding(&Faceset::open(dir)?)?)
        };
        let extractor = Extractor::new(ctx, models, run.meta.settings())?;
        let ae = Autoencoder::new(
            ctx,
            run.meta.arch,
            &run.weights,
            1,
            &[options.direction.target()],
        )?;
        Ok(Converter {
            meta: run.meta.clone(),
            options,
            extractor,
            ae,
            reference,
            paste: None,
        })
    }

    /// The options.
    pub fn options(&self) -> &ConvertOptions {
        &self.options
    }

    /// Converts one frame: every face of the source identity swapped, the rest untouched.
    pub fn frame(&mut self, ctx: &Context, img: &RgbImage) -> Result<FrameResult> {
        let s = self.meta.size;
        let faces = self.extractor.candidates(ctx, img, 0.0)?;
        let mut result = FrameResult {
            image: RgbImage::new(1, 1),
            found: faces.found,
            unaligned: faces.unaligned,
            swapped: vec![],
            rejected: vec![],
        };
        let decoded = self
            .ae
            .side(self.options.direction.target())
            .expect("built with the target side");
        for c in faces.candidates {
            let cos = self.reference.as_ref().map(|r| cosine(&c.embedding, r));
            if let (Some(cos), false) = (cos, self.options.all_faces) {
                if cos < self.options.similarity {
                    result.rejected.push(cos);
                    continue;
                }
            }
            let original = img_io::to_planar(c.image.as_raw(), s, s);
            self.ae.input.write_f32(ctx, &original)?;
            self.ae.plan.run(ctx)?;
            let face_out = decoded.face.to_f32(ctx)?;
            let predicted_mask = match (&decoded.mask, self.options.mask) {
                (Some(m), MaskMode::Learned) => Some(m.to_f32(ctx)?),
                _ => None,
            };
            let landmarks: Vec<[f32; 2]> = c
                .face
                .landmarks
                .pts68
                .iter()
                .map(|p| {
                    let q = apply(&c.alignment.adjusted, [p[0] as f64, p[1] as f64]);
                    [q[0] as f32, q[1] as f32]
                })
                .collect();
            let (mask, raw_mask) = face_mask(
                self.options.mask,
                &landmarks,
                predicted_mask.as_deref(),
                s,
                self.options.erode,
                self.options.blur,
            )?;
            let face = match_colour(self.options.colour, &original, &face_out, &raw_mask)?;
            result.swapped.push(SwappedFace {
                index: c.index,
                cosine: cos,
                alignment: c.alignment,
                landmarks,
                original,
                decoded: face_out,
                predicted_mask,
                mask,
                raw_mask,
                face,
            });
        }
        let (w, h) = (img.width() as usize, img.height() as usize);
        if result.swapped.is_empty() {
            result.image = img.clone();
            return Ok(result);
        }
        if self.paste.as_ref().map(|p| (p.width, p.height)) != Some((w, h)) {
            self.paste = Some(PasteBack::new(ctx, w, h, s)?);
        }
        let patches: Vec<Patch> = result
            .swapped
            .iter()
            .map(|f| Patch {
                face: f.face.clone(),
                mask: f.mask.clone(),
                matrix: f.alignment.adjusted,
            })
            .collect();
        result.image = self
            .paste
            .as_ref()
            .expect("built above")
            .paste(ctx, img, &patches)?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain f64 avg-color: two passes of the masked mean difference per channel.
    fn avg_color_ref(old: &[f64], new: &[f64], m: &[f64]) -> Vec<f64> {
        let plane = m.len();
        let mut out = new.to_vec();
        for _ in 0..2 {
            let mut adj = [0.0; 3];
            for (c, a) in adj.iter_mut().enumerate() {
                let (mut num, mut den) = (0.0, 0.0);
                for i in 0..plane {
                    num += (old[c * plane + i] - out[c * plane + i]) * m[i];
                    den += m[i];
                }
                *a = num / den;
            }
            for c in 0..3 {
                for i in 0..plane {
                    out[c * plane + i] += adj[c];
                }
            }
        }
        out.iter().map(|v| v.clamp(0.0, 1.0)).collect()
    }

    /// A plain f64 histogram match by counting (O(n²)): for each masked pixel the fraction of
    /// masked swapped values ≤ it, times the threshold, located among the original's distinct
    /// values by a linear scan of their cumulative fractions.
    fn hist_match_ref(old: &[f64], new: &[f64], m: &[f64], threshold: f64) -> Vec<f64> {
        let plane = m.len();
        let mut out = new.to_vec();
        let inside: Vec<usize> = (0..plane).filter(|&i| m[i] != 0.0).collect();
        let n = inside.len() as f64;
        for c in 0..3 {
            let ov: Vec<f64> = inside.iter().map(|&i| old[c * plane + i]).collect();
            let mut distinct: Vec<f64> = Vec::new();
            for &v in &ov {
                if !distinct.contains(&v) {
                    distinct.push(v);
                }
            }
            distinct.sort_by(f64::total_cmp);
            let frac = |vals: &[f64], v: f64| vals.iter().filter(|&&x| x <= v).count() as f64 / n;
            let xp: Vec<f64> = distinct.iter().map(|&v| frac(&ov, v)).collect();
            for &i in &inside {
                let v = new[c * plane + i];
                let nv: Vec<f64> = inside.iter().map(|&j| new[c * plane + j]).collect();
                let q = threshold * frac(&nv, v);
                let mut y = distinct[distinct.len() - 1];
                if q <= xp[0] {
                    y = distinct[0];
                } else {
                    for k in 1..xp.len() {
                        if q < xp[k] {
                            y = distinct[k - 1]
                                + (q - xp[k - 1]) / (xp[k] - xp[k - 1])
                                    * (distinct[k] - distinct[k - 1]);
                            break;
                        }
                    }
                }
                out[c * plane + i] = y;
            }
        }
        out.iter().map(|v| v.clamp(0.0, 1.0)).collect()
    }

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// 8-bit-like values (so histograms have ties), planar RGB `[3, plane]`.
    fn faces(rng: &mut Lcg, plane: usize, levels: f64, offset: f64) -> Vec<f32> {
        (0..3 * plane)
            .map(|_| (((rng.next() * levels).floor() / 255.0) + offset).min(1.0) as f32)
            .collect()
    }

    fn to64(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    #[test]
    fn avg_color_matches_the_f64_reference() {
        let mut rng = Lcg(7);
        let plane = 7 * 7;
        let old = faces(&mut rng, plane, 120.0, 0.3);
        let new = faces(&mut rng, plane, 200.0, 0.0);
        // A soft mask with zeros, partial and full weights.
        let m: Vec<f32> = (0..plane)
            .map(|i| [0.0, 0.25, 1.0, 0.5][i % 4] as f32)
            .collect();
        let got = match_colour(ColourMode::AvgColor, &old, &new, &m).unwrap();
        let want = avg_color_ref(&to64(&old), &to64(&new), &to64(&m));
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-6, "max error {err}");
        // The masked means now agree (before clipping moves anything: no value clipped here).
        assert!(want.iter().all(|v| *v > 0.0 && *v < 1.0));
        for c in 0..3 {
            let mean = |f: &[f32]| -> f64 {
                (0..plane)
                    .map(|i| f[c * plane + i] as f64 * m[i] as f64)
                    .sum::<f64>()
                    / m.iter().map(|&v| v as f64).sum::<f64>()
            };
            assert!((mean(&got) - mean(&old)).abs() < 1e-6);
        }
        // A hand case: one channel shifted by 0.1 inside a 2-pixel mask, clipped at 1.
        let old = [0.5, 0.5, 0.2, 0.2, 1.0, 1.0].map(|v| v as f32);
        let new = [0.4, 0.6, 0.2, 0.2, 0.9, 0.96].map(|v| v as f32);
        let got = match_colour(ColourMode::AvgColor, &old, &new, &[1.0, 1.0]).unwrap();
        let want = [0.4, 0.6, 0.2, 0.2, 0.97, 1.0];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?}");
        }
        // An empty mask gives the original back (faceswap adds the whole difference).
        let got = match_colour(ColourMode::AvgColor, &old, &new, &[0.0, 0.0]).unwrap();
        assert_eq!(got, old.to_vec());
    }

    #[test]
    fn hist_match_matches_the_f64_reference() {
        let mut rng = Lcg(11);
        let plane = 9 * 9;
        let old = faces(&mut rng, plane, 40.0, 0.4);
        let new = faces(&mut rng, plane, 60.0, 0.1);
        let m: Vec<f32> = (0..plane)
            .map(|i| {
                if i % 5 == 0 {
                    0.0
                } else {
                    0.1 + (i % 3) as f32 * 0.4
                }
            })
            .collect();
        for threshold in [HIST_THRESHOLD, 1.0] {
            let got = hist_match(&old, &new, &m, threshold).unwrap();
            let want = hist_match_ref(&to64(&old), &to64(&new), &to64(&m), threshold);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-6, "threshold {threshold}: max error {err}");
            // Unmasked pixels keep the swapped values.
            for c in 0..3 {
                for i in (0..plane).step_by(5) {
                    assert_eq!(got[c * plane + i], new[c * plane + i]);
                }
            }
        }
        // A hand case: four masked values, threshold 0.99: CDF quantiles 0.2475, 0.495, 0.7425,
        // 0.99 against the original's 0.25, 0.5, 0.75, 1 over 0.1..0.4.
        let one = |v: [f32; 4]| -> Vec<f32> { v.iter().cycle().take(12).copied().collect() };
        let old = one([0.1, 0.2, 0.3, 0.4]);
        let new = one([0.8, 0.5, 0.7, 0.6]);
        let got = match_colour(ColourMode::HistMatch, &old, &new, &[1.0; 4]).unwrap();
        let want = [0.396, 0.1, 0.297, 0.198];
        for (g, w) in got.iter().zip(want.iter().cycle()) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?}");
        }
        // With threshold 1 the histograms map exactly.
        let got = hist_match(&old, &new, &[1.0; 4], 1.0).unwrap();
        assert_eq!(&got[..4], &[0.4, 0.1, 0.3, 0.2]);
    }

    #[test]
    fn colour_modes_clip_and_check_shapes() {
        let old = vec![1.0f32; 12];
        let new = vec![0.9f32; 12];
        let got = match_colour(ColourMode::AvgColor, &old, &new, &[1.0; 4]).unwrap();
        assert!(got.iter().all(|&v| (v - 1.0).abs() < 1e-6));
        let none = match_colour(ColourMode::None, &old, &[1.5; 12], &[1.0; 4]).unwrap();
        assert_eq!(none, vec![1.0; 12]);
        assert!(match_colour(ColourMode::HistMatch, &old, &new, &[1.0; 3]).is_err());
    }

    #[test]
    fn ellipse_kernels_are_opencvs() {
        // cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)), OpenCV 5.0.
        let k3 = [0, 1, 0, 1, 1, 1, 0, 1, 0];
        let k5 = [
            0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0,
        ];
        let k4 = [0, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
        let k7 = [
            0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
            1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0,
        ];
        for (k, want) in [(3, &k3[..]), (4, &k4[..]), (5, &k5[..]), (7, &k7[..])] {
            let got: Vec<i32> = ellipse_kernel(k).iter().map(|&b| b as i32).collect();
            assert_eq!(got, want, "k = {k}");
        }
    }

    #[test]
    fn blur_kernels_follow_faceswap() {
        assert_eq!(blur_kernels(3), vec![3, 3, 3, 3]);
        assert_eq!(blur_kernels(8), vec![9, 5, 3, 3]);
        assert_eq!(blur_kernels(20), vec![21, 11, 7, 5]);
        assert!(blur_kernels(0).is_empty());
    }

    /// A 10×10 test mask: a 5×5 block (rows 2–6, columns 3–7), its last column 0.5.
    fn blob() -> Vec<f32> {
        let mut m = vec![0f32; 100];
        for y in 2..7 {
            for x in 3..8 {
                m[y * 10 + x] = if x == 7 { 0.5 } else { 1.0 };
            }
        }
        m
    }

    #[test]
    fn box_blur_is_reflect101_mean() {
        let m = blob();
        let b = box_blur(&m, 10, 3).unwrap();
        // Interior: the plain 3×3 mean.
        let mean = |y: usize, x: usize| -> f64 {
            let mut s = 0.0;
            for dy in 0..3 {
                for dx in 0..3 {
                    s += m[(y + dy - 1) * 10 + x + dx - 1] as f64;
                }
            }
            s / 9.0
        };
        for (y, x) in [(2, 3), (6, 8), (4, 5), (1, 2)] {
            assert!((b[y * 10 + x] as f64 - mean(y, x)).abs() < 1e-6);
        }
        // Edge: reflect-101 (row and column −1 are 1): a 1 at (1, 1) is 4 times in the window of
        // (0, 0) (OpenCV 5.0 `cv2.blur` gives 4/9; a reflect or replicate border would give 1/9).
        let mut e = vec![0f32; 100];
        e[11] = 1.0;
        let b = box_blur(&e, 10, 3).unwrap();
        assert!((b[0] - 4.0 / 9.0).abs() < 1e-6, "{}", b[0]);
        assert!((b[1] - 2.0 / 9.0).abs() < 1e-6, "{}", b[1]);
        // Mass is kept away from borders.
        let c: f64 = box_blur(&m, 10, 3).unwrap().iter().map(|&v| v as f64).sum();
        let o: f64 = m.iter().map(|&v| v as f64).sum();
        assert!((c - o).abs() < 1e-5);
    }

    #[test]
    fn erosion_and_dilation_use_the_ellipse() {
        let m = blob();
        // 3×3 ellipse (a cross) erosion: a pixel keeps its value only if its 4 neighbours are as
        // large.
        let e = erode_mask(&m, 10, Erode::Pixels(1)).unwrap();
        for y in 0..10usize {
            for x in 0..10usize {
                let mut want = m[y * 10 + x];
                for (dy, dx) in [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)] {
                    let (yy, xx) = (y as i64 + dy, x as i64 + dx);
                    if (0..10).contains(&yy) && (0..10).contains(&xx) {
                        want = want.min(m[(yy * 10 + xx) as usize]);
                    }
                }
                assert_eq!(e[y * 10 + x], want, "({y}, {x})");
            }
        }
        // Dilation by 1 px grows the block by one pixel along rows and columns, not diagonally.
        let d = erode_mask(&m, 10, Erode::Pixels(-1)).unwrap();
        assert_eq!(d[10 + 3], 1.0);
        assert_eq!(d[10 + 2], 0.0);
        assert_eq!(d[2 * 10 + 2], 1.0);
        assert_eq!(d[6 * 10 + 8], 0.5);
        // An even kernel (anchor (2, 2) of 4×4): sums from OpenCV 5.0 `cv2.erode` / `cv2.dilate`
        // with `getStructuringElement(MORPH_ELLIPSE, (4, 4))` on this mask.
        let k4 = ellipse_kernel(4);
        let sum = |v: Vec<f32>| v.iter().map(|&x| x as f64).sum::<f64>();
        assert_eq!(sum(morph(&m, 10, &k4, 4, true).unwrap()), 3.0);
        assert_eq!(sum(morph(&m, 10, &k4, 4, false).unwrap()), 57.0);
        // Percent: kernel side ⌊p·√Σ/2/100⌋; Σ = 22.5 → radius 2.37: 100 % → 2, 10 % → nothing.
        let sum: f64 = m.iter().map(|&v| v as f64).sum();
        assert_eq!(Erode::Percent(100.0).kernel(sum), (2, true));
        assert_eq!(Erode::Percent(-100.0).kernel(sum), (2, false));
        assert_eq!(erode_mask(&m, 10, Erode::Percent(10.0)).unwrap(), m);
        assert_eq!(Erode::Pixels(3).kernel(0.0), (7, true));
    }

    #[test]
    fn box_mask_follows_faceswap() {
        // 64: edge 3, ones on [3, 61); blurred with a 7-tap Gaussian (0.06·58 = 3.48 → 3).
        let hard = box_mask(64, false).unwrap();
        assert_eq!(hard[3 * 64 + 3], 1.0);
        assert_eq!(hard[2 * 64 + 30], 0.0);
        assert_eq!(hard[60 * 64 + 60], 1.0);
        assert_eq!(hard[61 * 64 + 30], 0.0);
        let soft = box_mask(64, true).unwrap();
        assert_eq!(soft, gaussian_blur(&hard, 64, 7).unwrap());
        assert_eq!(soft[32 * 64 + 32], 1.0);
        // OpenCV's fixed 7-tap Gaussian [2 7 14 18 14 7 2]/64 across the edge: row 3 sees the
        // ones of rows 3..=6 (OpenCV 5.0 `GaussianBlur` gives 41/64 there too).
        let want_row3 = (18.0 + 14.0 + 7.0 + 2.0) / 64.0;
        assert!((soft[3 * 64 + 32] - want_row3).abs() < 1e-6);
        // The corner: reflect-101 brings row and column 3 in twice at 2/64 each (OpenCV: 1/256).
        assert!((soft[0] - 1.0 / 256.0).abs() < 1e-7, "{}", soft[0]);
        // 128: edge 5, kernel 2·round(0.06·118 = 7.08) + 1 = 15.
        let hard = box_mask(128, false).unwrap();
        assert_eq!(
            box_mask(128, true).unwrap(),
            gaussian_blur(&hard, 128, 15).unwrap()
        );
    }

    #[test]
    fn face_mask_modes() {
        let s = 64;
        // Landmarks of a mean face placed in the crop.
        let pts: Vec<[f32; 2]> = (0..68)
            .map(|i| {
                let a = i as f32 / 68.0 * std::f32::consts::TAU;
                [32.0 + 18.0 * a.cos(), 34.0 + 20.0 * a.sin()]
            })
            .collect();
        let (bm, braw) = face_mask(MaskMode::Box, &pts, None, s, Erode::Pixels(2), 3).unwrap();
        assert_eq!(bm, box_mask(s, true).unwrap());
        assert!(braw.iter().all(|&v| v == 1.0));
        let (hm, hraw) = face_mask(MaskMode::Hull, &pts, None, s, Erode::Pixels(0), 3).unwrap();
        let want_raw =
            blur_mask(&landmark_mask(MaskArea::Extended, &pts, s).unwrap(), s, 3).unwrap();
        assert_eq!(hraw, want_raw);
        for i in 0..s * s {
            assert_eq!(hm[i], hraw[i].min(bm[i]));
        }
        // Erosion shrinks the mask, dilation grows it.
        let area = |m: &[f32]| m.iter().map(|&v| v as f64).sum::<f64>();
        let (he, _) = face_mask(MaskMode::Hull, &pts, None, s, Erode::Pixels(3), 3).unwrap();
        let (hd, _) = face_mask(MaskMode::Hull, &pts, None, s, Erode::Pixels(-3), 3).unwrap();
        assert!(area(&he) < area(&hm) && area(&hm) < area(&hd));
        // Learned needs the predicted mask.
        assert!(face_mask(MaskMode::Learned, &pts, None, s, Erode::Pixels(0), 3).is_err());
        let pred = vec![0.5f32; s * s];
        let (lm, lraw) =
            face_mask(MaskMode::Learned, &pts, Some(&pred), s, Erode::Pixels(0), 0).unwrap();
        assert!(lraw.iter().all(|&v| (v - 0.5).abs() < 1e-6));
        assert_eq!(
            lm,
            box_mask(s, false)
                .unwrap()
                .iter()
                .map(|v| v.min(0.5))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn options_parse() {
        assert_eq!(Direction::parse("b2a").unwrap().target(), Side::A);
        assert_eq!(Direction::parse("a2b").unwrap().source(), Side::A);
        assert!(Direction::parse("ab").is_err());
        assert_eq!(MaskMode::parse("learned").unwrap(), MaskMode::Learned);
        assert!(MaskMode::parse("components").is_err());
        assert_eq!(
            ColourMode::parse("match-hist").unwrap(),
            ColourMode::HistMatch
        );
        assert!(ColourMode::parse("seamless").is_err());
        assert_eq!(Erode::parse("-2").unwrap(), Erode::Pixels(-2));
        assert_eq!(Erode::parse("10%").unwrap(), Erode::Percent(10.0));
        for bad in ["", "1.5", "abc", "200%"] {
            assert!(Erode::parse(bad).is_err(), "{bad}");
        }
        let o = ConvertOptions {
            mask: MaskMode::Learned,
            ..ConvertOptions::default()
        };
        let e = o.check(64, false).unwrap_err().to_string();
        assert!(e.contains("learned-mask branch"), "{e}");
        assert!(o.check(64, true).is_ok());
        let o = ConvertOptions {
            erode: Erode::Pixels(40),
            ..ConvertOptions::default()
        };
        assert!(o.check(64, false).is_err());
    }

    fn meta() -> RunMeta {
        RunMeta {
            arch: Arch::Lightweight,
            size: 64,
            learn_mask: false,
            centering: Centering::Face,
            coverage: 0.875,
            faceset_a: "/data/a".into(),
            faceset_b: "/data/b".into(),
        }
    }

    #[test]
    fn metadata_round_trips_and_reports_errors() {
        let m = meta();
        let md = m.to_metadata();
        assert_eq!(RunMeta::from_metadata(&md, "x").unwrap(), m);
        let with = |k: &str, v: Option<&str>| {
            let mut d = md.clone();
            match v {
                Some(v) => d.insert(k.to_string(), v.to_string()),
                None => d.remove(k),
            };
            RunMeta::from_metadata(&d, "run/model.safetensors")
                .unwrap_err()
                .to_string()
        };
        for (k, v, needle) in [
            (
                keys::MODEL,
                Some("dfl-sae"),
                "expected lightweight or original",
            ),
            (keys::SIZE, Some("sixty-four"), "not a size"),
            (keys::SIZE, Some("72"), "size 72 is not supported"),
            (keys::LEARN_MASK, Some("yes"), "expected true or false"),
            (
                keys::CENTERING,
                Some("middle"),
                "expected legacy, face or head",
            ),
            (keys::COVERAGE, Some("0.3"), "0.625 to 1.0"),
            (keys::FACESET_B, Some(""), "fswap.faceset_b is empty"),
            (
                keys::FACESET_A,
                None,
                "metadata key fswap.faceset_a is missing",
            ),
            (keys::LAYOUT, Some("engine"), "file layout"),
        ] {
            let e = with(k, v);
            assert!(e.contains(needle), "{k}={v:?}: {e}");
            assert!(e.contains("run/model.safetensors"), "{e}");
        }
        // faceswap_ae::init_weights' model names are accepted too.
        let mut d = md.clone();
        d.insert(keys::MODEL.into(), "faceswap_original".into());
        assert_eq!(
            RunMeta::from_metadata(&d, "x").unwrap().arch,
            Arch::Original
        );
    }
}
