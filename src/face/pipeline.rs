//! The face pipeline over whole images: find faces (FaceBoxes → 3DDFA landmarks), choose which to
//! swap, swap them (one [`PasteStage`] per face, chained through ping-pong frame tensors, all in one
//! submit), and report identity similarity under MobileFaceNet-128.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::align::umeyama;
use super::align::{arcface_template, invert, lstsq_affine};
use super::detect::{detect, Detection};
use super::landmarks::{landmarks_batch, landmarks_rois, FaceLandmarks, Roi};
use super::paste::{PasteOptions, PasteStage};
use crate::error::{Error, Result};
use crate::gpu::{Context, Plan};
use crate::kernels::warp::Warp;
use crate::media::image as img_io;
use crate::models::faceboxes::FaceBoxes;
use crate::models::mobilefacenet::{self, MobileFaceNet};
use crate::models::mobilefaceswap::{statics, Identity};
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

    /// The frame → crop matrix for 5 landmarks and a crop of `size`.
    pub fn fit(self, pts: &[[f64; 2]; 5], size: usize) -> Result<super::align::Affine> {
        match self {
            Align::Affine => lstsq_affine(pts, &arcface_template(size)),
            Align::Similarity => umeyama(pts, &arcface_template(size)),
        }
    }
}

/// Swaps into frames of one size, for up to `max_faces` faces: frame tensors and paste stages are
/// built once and reused for every frame of that size.
pub struct FrameSwapper {
    frames: Vec<Tensor>,
    stages: Vec<PasteStage>,
    /// `plans[k]`: the first `k + 1` stages in one plan, built once.
    plans: Vec<Plan>,
    align: Align,
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
        for i in 0..max_faces.max(1) {
            let (src, dst) = (
                &all[if i == 0 { 0 } else { 1 + (i + 1) % 2 }],
                &all[1 + i % 2],
            );
            stages.push(PasteStage::with_options(
                ctx, identity, statics_w, src, dst, options,
            )?);
        }
        let plans = (0..stages.len())
            .map(|k| {
                let mut plan = Plan::default();
                stages[..=k]
                    .iter()
                    .for_each(|st: &PasteStage| plan.extend(st.plan.clone()));
                plan
            })
            .collect();
        Ok(FrameSwapper {
            frames: all,
            stages,
            plans,
            align,
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
            stage.set_alignment(
                ctx,
                &self.align.fit(pts, crate::models::mobilefaceswap::SIZE)?,
            )?;
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
