//! The face pipeline over whole images: find faces (FaceBoxes → 3DDFA landmarks), choose which to
//! swap, swap them (one stage per face, chained through ping-pong frame tensors, all in one
//! submit), and report identity similarity under MobileFaceNet-128.
//!
//! Two swap networks ([`SourceIdentity`]):
//! - MobileFaceSwap: a [`PasteStage`] per face (224 ArcFace template, the IDN, its own mask
//!   post-processed as the official `dealign`);
//! - MobileFSGAN: the 256 template of [`fsgan_template`]; per face, warp in, map to [−1, 1], the
//!   generator (one, shared by the faces of a frame: they run one after another), back to [0, 1],
//!   optional colour match, and paste back under the soft face ellipse of [`fsgan_mask`]. The
//!   source identity comes from [`fsgan_identity_from_image`] (MobileFaceNet-512 on the source's
//!   [26:230] crop resized to 112, then the σ(e)/μ(e) injection, once).

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::align::umeyama;
use super::align::{arcface_template, invert, lstsq_affine, ARCFACE_112};
use super::detect::{detect, Detection};
use super::landmarks::{landmarks_batch, landmarks_rois, FaceLandmarks, Roi};
use super::paste::{PasteOptions, PasteStage};
use crate::error::{Error, Result};
use crate::gpu::{Context, Plan};
use crate::kernels::colour::mean_shift;
use crate::kernels::concat::copy_channels;
use crate::kernels::eltwise::{Eltwise, EltwiseOp};
use crate::kernels::fusion::fusion;
use crate::kernels::warp::Warp;
use crate::kernels::Activation;
use crate::media::image as img_io;
use crate::models::faceboxes::FaceBoxes;
use crate::models::mobilefacenet::{self, MobileFaceNet};
use crate::models::mobilefacenet512::{CropResize, MobileFaceNet512};
use crate::models::mobilefaceswap::{statics, Identity};
use crate::models::mobilefsgan::{self, Generator, Injection};
use crate::models::tddfa::{Bfm, Tddfa};
use crate::tensor::{Shape, Tensor};
use crate::weights::Weights;

/// The files `--models DIR` holds (see `weights/README.md` for where each comes from).
pub const FILES: &[(&str, &str)] = &[
    ("faceboxes.safetensors", "tools/export.py FaceBoxesProd.pth faceboxes.safetensors --model faceboxes"),
    ("3ddfa_mb05.safetensors", "tools/export.py mb05_120x120.pth 3ddfa_mb05.safetensors --model 3ddfa_mb05"),
    ("3ddfa_bfm68.safetensors", "tools/export.py 3ddfa/ 3ddfa_bfm68.safetensors --model 3ddfa_bfm68"),
    ("mobilefacenet128.safetensors", "tools/export.py mobilefacenet_128.pt mobilefacenet128.safetensors --model mobilefacenet128"),
    ("arcface.safetensors", "tools/export.py arcface.pdparams arcface.safetensors --model arcface"),
    ("mobilefaceswap.safetensors", "tools/export.py MobileFaceSwap_224.pdparams mobilefaceswap.safetensors --model mobilefaceswap"),
    ("mobilefsgan.safetensors", "tools/export.py 199_G.pth mobilefsgan.safetensors --model mobilefsgan"),
    ("mobilefacenet.safetensors", "tools/export.py RGB_model_mobilefacenet.pth mobilefacenet.safetensors --model mobilefacenet"),
];

/// Loads `DIR/NAME`, or explains which file is missing and how to make it.
pub fn model_file(dir: &Path, name: &str) -> Result<Weights> {
    let path = dir.join(name);
    if !path.exists() {
        let how = FILES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, h)| *h)
            .unwrap_or("see weights/README.md");
        return Err(Error::Format {
            path: path.display().to_string(),
            detail: format!(
                "missing model file (make it with: python3 {how}; see weights/README.md)"
            ),
        });
    }
    Weights::open(&path)
}

/// A face found in an image.
#[derive(Clone, Debug)]
pub struct Face {
    /// The detection.
    pub detection: Detection,
    /// Its landmarks.
    pub landmarks: FaceLandmarks,
}

impl Face {
    /// Box area in pixels.
    pub fn area(&self) -> f32 {
        let b = self.detection.box_;
        (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
    }
}

/// Detection and landmarks, with the detector rebuilt only when the image size changes.
pub struct Analyzer {
    faceboxes_w: Weights,
    detector: Option<((usize, usize), FaceBoxes)>,
    tddfa: Tddfa,
}

impl Analyzer {
    /// From `--models DIR`.
    pub fn open(ctx: &Context, dir: &Path) -> Result<Self> {
        let faceboxes_w = model_file(dir, "faceboxes.safetensors")?;
        let bfm = Bfm::open(dir.join("3ddfa_bfm68.safetensors")).map_err(|e| match e {
            Error::Io { .. } => Error::Format {
                path: dir.join("3ddfa_bfm68.safetensors").display().to_string(),
                detail: "missing model file (see weights/README.md)".into(),
            },
            e => e,
        })?;
        let tddfa = Tddfa::with_batch(ctx, &model_file(dir, "3ddfa_mb05.safetensors")?, &bfm, 4)?;
        Ok(Analyzer {
            faceboxes_w,
            detector: None,
            tddfa,
        })
    }

    /// Faces of `img` in descending detection score.
    pub fn faces(&mut self, ctx: &Context, img: &RgbImage) -> Result<Vec<Face>> {
        let size = (img.width() as usize, img.height() as usize);
        if self.detector.as_ref().map(|(s, _)| *s) != Some(size) {
            self.detector = Some((
                size,
                FaceBoxes::new(ctx, &self.faceboxes_w, size.1, size.0)?,
            ));
        }
        let (_, fb) = self.detector.as_ref().expect("just built");
        let dets = detect(ctx, fb, img)?;
        if dets.is_empty() {
            return Ok(vec![]);
        }
        let boxes: Vec<[f32; 4]> = dets.iter().map(|d| d.box_).collect();
        let lms = landmarks_batch(ctx, &self.tddfa, img, &boxes)?;
        Ok(dets
            .into_iter()
            .zip(lms)
            .map(|(detection, landmarks)| Face {
                detection,
                landmarks,
            })
            .collect())
    }
}

impl Analyzer {
    /// Follows `prev` (the previous frame's faces) into `img` without detection: each face's
    /// landmarks from the ROI of its previous 68 points, as 3DDFA_V2 does in video. Scores carry over
    /// and boxes become the new points' bounds.
    pub fn track(&mut self, ctx: &Context, img: &RgbImage, prev: &[Face]) -> Result<Vec<Face>> {
        if prev.is_empty() {
            return Ok(vec![]);
        }
        let rois = prev
            .iter()
            .map(|f| Roi::from_landmarks(&f.landmarks.pts68))
            .collect::<Result<Vec<_>>>()?;
        let lms = landmarks_rois(ctx, &self.tddfa, img, &rois)?;
        Ok(prev
            .iter()
            .zip(lms)
            .map(|(f, landmarks)| {
                let b = landmarks.pts68.iter().fold(
                    [f32::MAX, f32::MAX, f32::MIN, f32::MIN],
                    |b, p| {
                        [
                            b[0].min(p[0]),
                            b[1].min(p[1]),
                            b[2].max(p[0]),
                            b[3].max(p[1]),
                        ]
                    },
                );
                Face {
                    detection: Detection {
                        box_: b,
                        score: f.detection.score,
                    },
                    landmarks,
                }
            })
            .collect())
    }
}

/// Which target faces to swap.
#[derive(Clone, Debug, PartialEq)]
pub enum Select {
    /// Every face.
    All,
    /// The largest face.
    Largest,
    /// The N-th face in descending score.
    Index(usize),
    /// Faces whose MobileFaceNet-128 cosine to a reference face is at least the threshold.
    Similar {
        /// The reference face's embedding.
        embedding: Vec<f32>,
        /// Minimum cosine.
        threshold: f32,
    },
}

impl Select {
    /// Parses `all`, `largest` or `index:N` (similarity is built by the caller from an image).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Select::All),
            "largest" => Ok(Select::Largest),
            _ => s
                .strip_prefix("index:")
                .and_then(|n| n.parse().ok())
                .map(Select::Index)
                .ok_or_else(|| {
                    Error::param(
                        "--select",
                        format!("'{s}' (expected all, largest, index:N or --reference IMAGE)"),
                    )
                }),
        }
    }
}

/// How landmarks are fitted to the crop template.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Align {
    /// MobileFaceSwap's official least-squares 6-DoF affine.
    #[default]
    Affine,
    /// A similarity (Umeyama): no shear or anisotropic scale.
    Similarity,
}

impl Align {
    /// Parses `affine` or `similarity`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "affine" => Ok(Align::Affine),
            "similarity" | "umeyama" => Ok(Align::Similarity),
            other => Err(Error::param(
                "--align",
                format!("'{other}' (expected affine or similarity)"),
            )),
        }
    }

    /// The frame → crop matrix for 5 landmarks and a crop of `size` (the ArcFace template scaled).
    pub fn fit(self, pts: &[[f64; 2]; 5], size: usize) -> Result<super::align::Affine> {
        self.fit_to(pts, &arcface_template(size))
    }

    /// The frame → crop matrix for 5 landmarks and a 5-point `template` in crop pixels.
    pub fn fit_to(
        self,
        pts: &[[f64; 2]; 5],
        template: &[[f64; 2]; 5],
    ) -> Result<super::align::Affine> {
        match self {
            Align::Affine => lstsq_affine(pts, template),
            Align::Similarity => umeyama(pts, template),
        }
    }
}

/// MobileFSGAN's 256 crop template (mobilefsgan.md §4, inferred: the repo has no alignment code):
/// the ArcFace 112 template scaled by 204/112 and shifted by 26 px, so the identity model's crop
/// `[26:230]` is exactly the ArcFace crop; the mouth centre lands at (128, 194).
pub fn fsgan_template() -> [[f64; 2]; 5] {
    let k = 204.0 / 112.0;
    ARCFACE_112.map(|[x, y]| [x * k + 26.0, y * k + 26.0])
}

/// The paste mask of MobileFSGAN swaps (the network has none): a soft ellipse over the face in the
/// 256 crop, centre [`FSGAN_MASK`]`.0`, semi-axes `.1`, 1 inside `FSGAN_MASK.2` of the radius and
/// falling to 0 at the edge (smoothstep), 0 outside; `[256 × 256]`, computed once on the host.
pub fn fsgan_mask() -> Vec<f32> {
    let ((cx, cy), (ax, ay), inner) = FSGAN_MASK;
    let n = mobilefsgan::SIZE;
    let mut out = Vec::with_capacity(n * n);
    for y in 0..n {
        for x in 0..n {
            let (dx, dy) = ((x as f64 - cx) / ax, (y as f64 - cy) / ay);
            let r = (dx * dx + dy * dy).sqrt();
            let t = ((1.0 - r) / (1.0 - inner)).clamp(0.0, 1.0);
            out.push((t * t * (3.0 - 2.0 * t)) as f32);
        }
    }
    out
}

/// The face ellipse of [`fsgan_mask`]: centre (x, y), semi-axes (x, y) in 256-crop pixels, and the
/// fraction of the radius inside which the mask is 1. Eyebrows (y ≈ 66) to chin (y ≈ 234), cheek to
/// cheek (x ≈ 58 to 198) for the template of [`fsgan_template`] (eyes at y ≈ 120, mouth at 194).
pub const FSGAN_MASK: ((f64, f64), (f64, f64), f64) = ((128.0, 150.0), (70.0, 84.0), 0.8);

/// The source identity a [`FrameSwapper`] swaps in, with the swap network it belongs to.
pub enum SourceIdentity {
    /// MobileFaceSwap: the IDN's injected kernels and its static `final.*` / `mask.*` weights.
    MobileFaceSwap {
        /// The injected kernels.
        identity: Identity,
        /// `final.*` and `mask.*`.
        statics: Weights,
    },
    /// MobileFSGAN: the generator's weights and the injection holding the source's σ(e), μ(e).
    MobileFsgan {
        /// The generator checkpoint (`weights/mobilefsgan.json`).
        generator: Weights,
        /// The conditioning, already run on the source embedding.
        injection: Injection,
    },
}

/// MobileFSGAN's per-face GPU work, shared by every face of a frame (faces are swapped one after
/// another, so one generator and its activations serve them all).
struct FsganCore {
    /// `[1, 3, 256, 256]` the aligned crop in [0, 1] (each face's warp writes it).
    crop: Tensor,
    /// The swapped crop in [0, 1] (colour-matched when asked).
    face: Tensor,
    /// `[1, 1, 256, 256]` the constant paste mask.
    mask: Tensor,
    /// Frame-size warps of `face` and `mask`.
    gen_full: Tensor,
    mask_full: Tensor,
    /// crop → [−1, 1] → generator → [0, 1] (→ colour match): 126 dispatches (127 with --colour-match).
    plan: Plan,
}

impl FsganCore {
    fn new(
        ctx: &Context,
        generator: &Weights,
        injection: &Injection,
        frame: Shape,
        options: PasteOptions,
    ) -> Result<Self> {
        let n = mobilefsgan::SIZE;
        let g = Generator::new(ctx, generator, &injection.style, 1, n, n)?;
        let crop = Tensor::new(ctx, Shape::new(1, 3, n, n), "fsgan crop")?;
        let mut plan = Plan::default();
        let affine = |scale: f32, shift: f32| {
            EltwiseOp::new(
                Eltwise::Affine {
                    scale: vec![scale],
                    shift: vec![shift],
                },
                Activation::None,
            )
        };
        plan.push(affine(2.0, -1.0)?.bind(ctx, &crop, None, None, &g.target)?);
        plan.extend(g.plan.clone());
        let swapped = Tensor::new(ctx, crop.shape(), "fsgan swapped")?;
        plan.push(affine(0.5, 0.5)?.bind(ctx, &g.images256, None, None, &swapped)?);
        let mask = Tensor::from_f32(ctx, Shape::new(1, 1, n, n), &fsgan_mask(), "fsgan mask")?;
        let face = if options.colour_match {
            let matched = Tensor::new(ctx, crop.shape(), "fsgan colour matched")?;
            plan.push(mean_shift(ctx, &crop, &swapped, &mask, &matched)?);
            matched
        } else {
            swapped
        };
        Ok(FsganCore {
            crop,
            face,
            mask,
            gen_full: Tensor::new(ctx, frame, "fsgan swapped in frame")?,
            mask_full: Tensor::new(
                ctx,
                Shape::new(frame.n, 1, frame.h, frame.w),
                "fsgan mask in frame",
            )?,
            plan,
        })
    }
}

/// One face's MobileFSGAN swap into a frame: warp in, the shared core, warp back, composite.
struct FsganStage {
    warp_in: Warp,
    warp_gen: Warp,
    warp_mask: Warp,
    plan: Plan,
}

impl FsganStage {
    fn new(ctx: &Context, core: &FsganCore, frame: &Tensor, out: &Tensor) -> Result<Self> {
        let warp_in = Warp::new(ctx, frame, &core.crop)?;
        let warp_gen = Warp::new(ctx, &core.face, &core.gen_full)?;
        let warp_mask = Warp::new(ctx, &core.mask, &core.mask_full)?;
        let mut plan = Plan::default();
        plan.push(warp_in.dispatch().clone());
        plan.extend(core.plan.clone());
        plan.push(warp_gen.dispatch().clone());
        plan.push(warp_mask.dispatch().clone());
        plan.push(fusion(
            ctx,
            &core.gen_full,
            frame,
            &core.mask_full,
            false,
            out,
        )?);
        Ok(FsganStage {
            warp_in,
            warp_gen,
            warp_mask,
            plan,
        })
    }

    fn set_alignment(&self, ctx: &Context, m: &super::align::Affine) -> Result<()> {
        self.warp_in.set(ctx, &[(invert(m)?, 0)])?;
        self.warp_gen.set(ctx, &[(*m, 0)])?;
        self.warp_mask.set(ctx, &[(*m, 0)])
    }
}

/// One face's stage of either network.
enum Stage {
    MobileFaceSwap(PasteStage),
    MobileFsgan(FsganStage),
}

impl Stage {
    fn plan(&self) -> &Plan {
        match self {
            Stage::MobileFaceSwap(s) => &s.plan,
            Stage::MobileFsgan(s) => &s.plan,
        }
    }

    fn set_alignment(&self, ctx: &Context, m: &super::align::Affine) -> Result<()> {
        match self {
            Stage::MobileFaceSwap(s) => s.set_alignment(ctx, m),
            Stage::MobileFsgan(s) => s.set_alignment(ctx, m),
        }
    }
}

/// Swaps into frames of one size, for up to `max_faces` faces: frame tensors and paste stages are
/// built once and reused for every frame of that size.
pub struct FrameSwapper {
    frames: Vec<Tensor>,
    stages: Vec<Stage>,
    /// `plans[k]`: the first `k + 1` stages in one plan, built once.
    plans: Vec<Plan>,
    align: Align,
    /// The crop template the landmarks are fitted to.
    template: [[f64; 2]; 5],
    /// MobileFSGAN's shared per-face work (kept alive with the stages that record it).
    _core: Option<FsganCore>,
}

impl FrameSwapper {
    /// Builds the chain for `width × height` frames.
    pub fn new(
        ctx: &Context,
        identity: &Identity,
        statics_w: &Weights,
        width: usize,
        height: usize,
        max_faces: usize,
    ) -> Result<Self> {
        Self::with_options(
            ctx,
            identity,
            statics_w,
            width,
            height,
            max_faces,
            Align::default(),
            PasteOptions::default(),
        )
    }

    /// [`FrameSwapper::new`] with the alignment fit and paste options.
    #[allow(clippy::too_many_arguments)]
    pub fn with_options(
        ctx: &Context,
        identity: &Identity,
        statics_w: &Weights,
        width: usize,
        height: usize,
        max_faces: usize,
        align: Align,
        options: PasteOptions,
    ) -> Result<Self> {
        Self::build(
            ctx,
            Model::MobileFaceSwap(identity, statics_w),
            width,
            height,
            max_faces,
            align,
            options,
        )
    }

    /// A chain for either network's source identity (MobileFSGAN: its 256 template, the
    /// generator run once per face, a soft face-ellipse paste mask).
    #[allow(clippy::too_many_arguments)]
    pub fn for_identity(
        ctx: &Context,
        identity: &SourceIdentity,
        width: usize,
        height: usize,
        max_faces: usize,
        align: Align,
        options: PasteOptions,
    ) -> Result<Self> {
        let model = match identity {
            SourceIdentity::MobileFaceSwap { identity, statics } => {
                Model::MobileFaceSwap(identity, statics)
            }
            SourceIdentity::MobileFsgan {
                generator,
                injection,
            } => Model::MobileFsgan(generator, injection),
        };
        Self::build(ctx, model, width, height, max_faces, align, options)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        ctx: &Context,
        model: Model,
        width: usize,
        height: usize,
        max_faces: usize,
        align: Align,
        options: PasteOptions,
    ) -> Result<Self> {
        let frames = (0..2)
            .map(|i| {
                img_io::frame_tensor(
                    ctx,
                    width,
                    height,
                    if i == 0 { "frame a" } else { "frame b" },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let input = img_io::frame_tensor(ctx, width, height, "input frame")?;
        let mut stages = Vec::new();
        let mut all = vec![input];
        all.extend(frames);
        let core = match &model {
            Model::MobileFsgan(generator, injection) => Some(FsganCore::new(
                ctx,
                generator,
                injection,
                all[0].shape(),
                options,
            )?),
            Model::MobileFaceSwap(..) => None,
        };
        for i in 0..max_faces.max(1) {
            let (src, dst) = (
                &all[if i == 0 { 0 } else { 1 + (i + 1) % 2 }],
                &all[1 + i % 2],
            );
            stages.push(match (&model, &core) {
                (Model::MobileFaceSwap(identity, statics_w), _) => Stage::MobileFaceSwap(
                    PasteStage::with_options(ctx, identity, statics_w, src, dst, options)?,
                ),
                (Model::MobileFsgan(..), Some(core)) => {
                    Stage::MobileFsgan(FsganStage::new(ctx, core, src, dst)?)
                }
                (Model::MobileFsgan(..), None) => unreachable!("core built above"),
            });
        }
        let plans = (0..stages.len())
            .map(|k| {
                let mut plan = Plan::default();
                stages[..=k]
                    .iter()
                    .for_each(|st: &Stage| plan.extend(st.plan().clone()));
                plan
            })
            .collect();
        let template = match model {
            Model::MobileFaceSwap(..) => arcface_template(crate::models::mobilefaceswap::SIZE),
            Model::MobileFsgan(..) => fsgan_template(),
        };
        Ok(FrameSwapper {
            frames: all,
            stages,
            plans,
            align,
            template,
            _core: core,
        })
    }

    /// Uploads `img`, sets each face's alignment, and returns the plan that swaps them (the
    /// per-frame GPU work, built once per face count); the result lands in
    /// [`FrameSwapper::output`]. `None` when there are no faces.
    pub fn prepare(
        &self,
        ctx: &Context,
        img: &RgbImage,
        faces: &[[[f64; 2]; 5]],
    ) -> Result<Option<&Plan>> {
        if faces.len() > self.stages.len() {
            return Err(Error::param(
                "swap",
                format!(
                    "{} faces but the chain was built for {}",
                    faces.len(),
                    self.stages.len()
                ),
            ));
        }
        img_io::upload(ctx, &self.frames[0], img)?;
        for (stage, pts) in self.stages.iter().zip(faces) {
            stage.set_alignment(ctx, &self.align.fit_to(pts, &self.template)?)?;
        }
        Ok(faces.len().checked_sub(1).map(|k| &self.plans[k]))
    }

    /// The frame tensor holding the result after swapping `faces` faces.
    pub fn output(&self, faces: usize) -> &Tensor {
        if faces == 0 {
            &self.frames[0]
        } else {
            &self.frames[1 + (faces - 1) % 2]
        }
    }

    /// Swaps the faces with these 5-point landmarks (at most the chain's length) into `img`.
    pub fn swap(&self, ctx: &Context, img: &RgbImage, faces: &[[[f64; 2]; 5]]) -> Result<RgbImage> {
        if faces.is_empty() {
            return Ok(img.clone());
        }
        if let Some(plan) = self.prepare(ctx, img, faces)? {
            plan.run(ctx)?;
        }
        img_io::download(ctx, self.output(faces.len()))
    }

    /// How many faces one frame can take.
    pub fn capacity(&self) -> usize {
        self.stages.len()
    }
}

/// The source identity from a source image's largest face.
pub fn identity_from_image(
    ctx: &Context,
    analyzer: &mut Analyzer,
    arcface: &Weights,
    mobilefaceswap: &Weights,
    source: &RgbImage,
    source_path: &Path,
) -> Result<(Identity, Face)> {
    let faces = analyzer.faces(ctx, source)?;
    let face = faces
        .into_iter()
        .max_by(|a, b| a.area().total_cmp(&b.area()))
        .ok_or_else(|| Error::Format {
            path: source_path.display().to_string(),
            detail: "no face found in the source image".into(),
        })?;
    let frame = img_io::frame_tensor(
        ctx,
        source.width() as usize,
        source.height() as usize,
        "source",
    )?;
    img_io::upload(ctx, &frame, source)?;
    let (identity, _) = super::identity::source_identity(
        ctx,
        arcface,
        mobilefaceswap,
        &frame,
        &face.landmarks.pts5_f64(),
    )?;
    Ok((identity, face))
}

/// The network a [`FrameSwapper`] is built for (borrowed from a [`SourceIdentity`]).
enum Model<'a> {
    MobileFaceSwap(&'a Identity, &'a Weights),
    MobileFsgan(&'a Weights, &'a Injection),
}

/// MobileFSGAN's source identity from a source image's largest face: aligned to the 256 template,
/// cropped `[26:230]` and resized to 112 (bilinear, align_corners=True), mapped to [−1, 1], embedded
/// by MobileFaceNet-512 and injected (σ(e), μ(e) of the 9 identity blocks), all on the GPU in one
/// submit. `mobilefacenet` and `mobilefsgan` are the two models' weights.
pub fn fsgan_identity_from_image(
    ctx: &Context,
    analyzer: &mut Analyzer,
    mobilefacenet: &Weights,
    mobilefsgan_w: &Weights,
    source: &RgbImage,
    source_path: &Path,
) -> Result<(SourceIdentity, Face)> {
    crate::weights::Manifest::builtin(mobilefsgan::MODEL)?.check(mobilefsgan_w)?;
    let faces = analyzer.faces(ctx, source)?;
    let face = faces
        .into_iter()
        .max_by(|a, b| a.area().total_cmp(&b.area()))
        .ok_or_else(|| Error::Format {
            path: source_path.display().to_string(),
            detail: "no face found in the source image".into(),
        })?;
    let frame = img_io::frame_tensor(
        ctx,
        source.width() as usize,
        source.height() as usize,
        "source",
    )?;
    img_io::upload(ctx, &frame, source)?;
    let n = mobilefsgan::SIZE;
    let crop = Tensor::new(ctx, Shape::new(1, 3, n, n), "source crop 256")?;
    let warp = Warp::new(ctx, &frame, &crop)?;
    warp.set(
        ctx,
        &[(
            invert(&lstsq_affine(
                &face.landmarks.pts5_f64(),
                &fsgan_template(),
            )?)?,
            0,
        )],
    )?;
    let net = MobileFaceNet512::new(ctx, mobilefacenet, 1)?;
    let small = Tensor::new(ctx, net.input.shape(), "source 112")?;
    let resize = CropResize::new(ctx, &crop, &small)?;
    let injection = Injection::new(ctx, mobilefsgan_w, 1)?;
    let mut plan = Plan::default();
    plan.push(warp.dispatch().clone());
    plan.push(resize.dispatch().clone());
    plan.push(
        EltwiseOp::new(
            Eltwise::Affine {
                scale: vec![2.0],
                shift: vec![-1.0],
            },
            Activation::None,
        )?
        .bind(ctx, &small, None, None, &net.input)?,
    );
    plan.extend(net.plan.clone());
    plan.push(copy_channels(ctx, &net.embedding, &injection.embedding, 0)?);
    plan.extend(injection.plan.clone());
    plan.run(ctx)?;
    ctx.wait()?;
    Ok((
        SourceIdentity::MobileFsgan {
            generator: mobilefsgan_w.clone(),
            injection,
        },
        face,
    ))
}

/// MobileFaceNet-128 embeddings of faces (aligned to its 112 template) in an image.
pub struct IdentityMeter {
    net: MobileFaceNet,
}

impl IdentityMeter {
    /// Loads `mobilefacenet128.safetensors` from `dir`.
    pub fn open(ctx: &Context, dir: &Path) -> Result<Self> {
        Ok(IdentityMeter {
            net: MobileFaceNet::new(ctx, &model_file(dir, "mobilefacenet128.safetensors")?, 1)?,
        })
    }

    /// The unit embedding of the face with these 5 landmarks in `img`.
    pub fn embed(&self, ctx: &Context, img: &RgbImage, pts5: &[[f64; 2]; 5]) -> Result<Vec<f32>> {
        let frame = img_io::frame_tensor(
            ctx,
            img.width() as usize,
            img.height() as usize,
            "meter frame",
        )?;
        img_io::upload(ctx, &frame, img)?;
        let crop = Tensor::new(
            ctx,
            Shape::new(1, 3, mobilefacenet::INPUT, mobilefacenet::INPUT),
            "meter crop",
        )?;
        let warp = Warp::new(ctx, &frame, &crop)?;
        warp.set(
            ctx,
            &[(
                invert(&lstsq_affine(
                    pts5,
                    &arcface_template(mobilefacenet::INPUT),
                )?)?,
                0,
            )],
        )?;
        ctx.run(&[warp.dispatch()])?;
        let px: Vec<f32> = crop.to_f32(ctx)?.iter().map(|v| v * 255.0).collect();
        let faces = mobilefacenet::normalize(&px, 1, mobilefacenet::INPUT, mobilefacenet::INPUT)?;
        self.net.embed(ctx, &faces)
    }
}

/// Images in a folder (sorted), or the file itself.
pub fn image_list(target: &Path) -> Result<Vec<PathBuf>> {
    if !target.is_dir() {
        return Ok(vec![target.to_path_buf()]);
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(target)
        .map_err(|source| Error::Io {
            path: target.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("png" | "jpg" | "jpeg" | "bmp")
            )
        })
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(Error::Format {
            path: target.display().to_string(),
            detail: "no images (png, jpg) in this folder".into(),
        });
    }
    Ok(v)
}

/// The faces `select` picks, largest first where it matters.
pub fn choose(
    faces: &[Face],
    select: &Select,
    meter: Option<(&IdentityMeter, &Context, &RgbImage)>,
) -> Result<Vec<usize>> {
    Ok(match select {
        Select::All => (0..faces.len()).collect(),
        Select::Largest => faces
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.area().total_cmp(&b.1.area()))
            .map(|(i, _)| vec![i])
            .unwrap_or_default(),
        Select::Index(i) => {
            if *i < faces.len() {
                vec![*i]
            } else {
                vec![]
            }
        }
        Select::Similar {
            embedding,
            threshold,
        } => {
            let (meter, ctx, img) = meter
                .ok_or_else(|| Error::param("--reference", "needs mobilefacenet128.safetensors"))?;
            let mut v = Vec::new();
            for (i, f) in faces.iter().enumerate() {
                if mobilefacenet::cosine(
                    &meter.embed(ctx, img, &f.landmarks.pts5_f64())?,
                    embedding,
                ) >= *threshold
                {
                    v.push(i);
                }
            }
            v
        }
    })
}

/// `statics` re-exported for the CLI.
pub fn idn_statics(mobilefaceswap: &Weights) -> Weights {
    statics(mobilefaceswap)
}

/// Wall and GPU time of each stage of one frame (milliseconds).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StageTimes {
    /// Host decode-side work: 8-bit RGB to fp16 planes and the upload.
    pub upload_ms: f64,
    /// FaceBoxes: GPU pass, readback of scores and boxes, decoding and NMS on the host.
    pub detect_ms: f64,
    /// 3DDFA for every face: host crops, GPU pass, readback, decoding.
    pub landmarks_ms: f64,
    /// The swap plan (warp in, IDN, mask, warp back, composite) for every face, GPU time.
    pub swap_gpu_ms: f64,
    /// Readback of the composited frame and conversion to 8-bit.
    pub download_ms: f64,
    /// Dispatches of the swap plan.
    pub swap_dispatches: usize,
    /// Faces found.
    pub faces: usize,
}

impl StageTimes {
    /// Wall time of the frame, all stages.
    pub fn total_ms(&self) -> f64 {
        self.upload_ms + self.detect_ms + self.landmarks_ms + self.swap_gpu_ms + self.download_ms
    }
}

/// Times every stage of one frame (after the detector and swap chain exist for its size).
pub fn time_frame(
    ctx: &Context,
    analyzer: &mut Analyzer,
    swapper: &FrameSwapper,
    img: &RgbImage,
) -> Result<StageTimes> {
    use std::time::Instant;
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let mut st = StageTimes::default();
    let size = (img.width() as usize, img.height() as usize);
    if analyzer.detector.as_ref().map(|(s, _)| *s) != Some(size) {
        analyzer.detector = Some((
            size,
            FaceBoxes::new(ctx, &analyzer.faceboxes_w, size.1, size.0)?,
        ));
    }
    let t = Instant::now();
    let (_, fb) = analyzer.detector.as_ref().expect("just built");
    let dets = detect(ctx, fb, img)?;
    st.detect_ms = ms(t);
    let t = Instant::now();
    let boxes: Vec<[f32; 4]> = dets
        .iter()
        .map(|d| d.box_)
        .take(swapper.capacity())
        .collect();
    let lms = if boxes.is_empty() {
        vec![]
    } else {
        landmarks_batch(ctx, &analyzer.tddfa, img, &boxes)?
    };
    st.landmarks_ms = ms(t);
    st.faces = lms.len();
    let pts: Vec<[[f64; 2]; 5]> = lms.iter().map(|l| l.pts5_f64()).collect();
    let t = Instant::now();
    let plan = swapper.prepare(ctx, img, &pts)?;
    ctx.wait()?;
    st.upload_ms = ms(t);
    if let Some(plan) = plan {
        st.swap_dispatches = plan.len();
        st.swap_gpu_ms = ctx.time(&plan.refs(), 0, 1)?.total_micros / 1e3;
    }
    let t = Instant::now();
    img_io::download(ctx, swapper.output(pts.len()))?;
    st.download_ms = ms(t);
    Ok(st)
}
