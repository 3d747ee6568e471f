//! Facesets: faces aligned the way deepfakes/faceswap aligns them (spec alignment.md §B.1), cut out
//! of images and videos by `fswap extract`, and read back by the trainer.
//!
//! **Alignment** ([`align`]):
//! 1. The *legacy* matrix: an Umeyama similarity (with scale) of the 51 landmarks 17–67 (the jaw is
//!    dropped) onto [`MEAN_FACE_51`], faceswap's mean face normalised to the unit square
//!    (`lib/align/constants.py`, values copied from the faceswap source). It maps frame pixels into
//!    the unit square, the nose tip near its centre.
//! 2. *Centring* ([`Centering`]): `legacy` keeps that matrix; `face` and `head` estimate the head
//!    pose as faceswap's `PoseEstimate` does ([`HeadPose`]: a perspective-n-point fit of 26 of the
//!    unit-square landmarks to faceswap's 26-point 3-D mean head, camera `fx = fy = 4`,
//!    `cx = cy = 0.5`, no distortion), project the centre point of the choice (`face` (0, −1.5, 4.2),
//!    `head` (0, 0, −2.3)) and move the matrix's translation by that point's offset from (0.5, 0.5).
//!    OpenCV's `solvePnP(ITERATIVE)` is replaced by a Levenberg–Marquardt fit started from a
//!    weak-perspective (scaled orthographic) solution: both minimise the same reprojection error.
//!    faceswap's 3-D head is left-handed in image axes (x and y flipped, z towards the viewer), and
//!    OpenCV's fit (a DLT start forced to a proper rotation) ends with the head *behind* the camera
//!    (negative depth), which projects exactly like the z-mirrored head in front of it: this fits
//!    the z-mirrored head (and mirrors the centre points) with positive depth, the same
//!    projections. Checked against OpenCV 5.0 `solvePnP` on the shared photos: the offsets agree to
//!    1e-4 of the unit square (a local check; CI has no OpenCV).
//! 3. *Padding and coverage* ([`padding`]): `pad = round(size·(r + c − 1)/(2c))` with the centring's
//!    ratio `r` ([`Centering::ratio`]: legacy 0.375, face 0.5, head 0.625) and the coverage `c`
//!    (spec formula; Python's round, half to even). The crop matrix is
//!    `matrix·(size − 2·pad)` with `pad` added to the translation: the unit square spans the central
//!    `size − 2·pad` pixels.
//!
//! **Warp**: on the GPU with the engine's `warp` kernel (OpenCV `warpAffine` semantics: pixel centres
//! at integer coordinates, bilinear, black outside the frame). faceswap asks OpenCV for `INTER_AREA`
//! when a crop shrinks the face, which `warpAffine` runs as bilinear (it maps `INTER_AREA` to
//! `INTER_LINEAR`), so downscaling matches; when the crop enlarges the face faceswap uses
//! `INTER_CUBIC` and this uses bilinear (slightly softer). Pixels pass through fp16 on the GPU
//! (within 0.13 of an 8-bit level at 1.0).
//!
//! **Identity**: every face's MobileFaceNet-128 unit embedding, from a 112×112 crop fitted to the
//! ArcFace 5-point template (the same crop as [`crate::face::pipeline::IdentityMeter`]).
//!
//! **On disk**: one folder per faceset, the aligned faces as PNG named
//! `<source stem>_<frame:06>_<face>.png` (`face`: the face's index in that frame's detections, best
//! score first) and one [`ALIGNMENTS`] JSON file ([`FaceRecord`] per face, one per line), written
//! atomically once the input is done (an interrupted run leaves PNGs without entries; they are
//! overwritten by the next run). [`Faceset::open`] reads and validates it for the trainer.
//!
//! **Filters** ([`Filters`], [`FacesetWriter::consider`]): a minimum face size (the detection
//! box's longer side, pixels or percent of the frame's shorter side); similarity to a reference
//! face (MobileFaceNet-128 cosine ≥ a threshold); and two de-duplications against every face
//! already in the faceset, this run's and earlier ones': by identity (`1 − cos ≤ d`: drops
//! repeated frames of a person, but also other poses of the same person when `d` is large; same
//! person across video frames measured at cos 0.71–0.98, different people ≤ 0.33) and by pixels
//! (mean absolute difference of 32×32 grey thumbnails of the aligned crops ≤ `d`: drops
//! near-identical frames only).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::align::{apply, arcface_template, invert, lstsq_affine, umeyama, Affine};
use super::pipeline::{model_file, Analyzer, Face};
use crate::error::{Error, Result};
use crate::gpu::{Context, Plan};
use crate::kernels::warp::Warp;
use crate::media::image as img_io;
use crate::models::mobilefacenet::{self, MobileFaceNet};
use crate::tensor::{Shape, Tensor};

/// faceswap's 51-point mean face (`_MEAN_FACE[LandmarkType.LM_2D_51]`, lib/align/constants.py),
/// the iBUG-68 landmarks 17–67 normalised to the unit square.
pub const MEAN_FACE_51: [[f64; 2]; 51] = [
    [0.010086, 0.106454],
    [0.085135, 0.038915],
    [0.191003, 0.018748],
    [0.300643, 0.034489],
    [0.403270, 0.077391],
    [0.596729, 0.077391],
    [0.699356, 0.034489],
    [0.808997, 0.018748],
    [0.914864, 0.038915],
    [0.989913, 0.106454],
    [0.500000, 0.203352],
    [0.500000, 0.307009],
    [0.500000, 0.409805],
    [0.500000, 0.515625],
    [0.376753, 0.587326],
    [0.435909, 0.609345],
    [0.500000, 0.628106],
    [0.564090, 0.609345],
    [0.623246, 0.587326],
    [0.131610, 0.216423],
    [0.196995, 0.178758],
    [0.275698, 0.179852],
    [0.344479, 0.231733],
    [0.270791, 0.245099],
    [0.192616, 0.244077],
    [0.655520, 0.231733],
    [0.724301, 0.179852],
    [0.803005, 0.178758],
    [0.868389, 0.216423],
    [0.807383, 0.244077],
    [0.729208, 0.245099],
    [0.264022, 0.780233],
    [0.350858, 0.745405],
    [0.438731, 0.727388],
    [0.500000, 0.742578],
    [0.561268, 0.727388],
    [0.649141, 0.745405],
    [0.735977, 0.780233],
    [0.652032, 0.864805],
    [0.566594, 0.902192],
    [0.500000, 0.909281],
    [0.433405, 0.902192],
    [0.347967, 0.864805],
    [0.300252, 0.784792],
    [0.437969, 0.778746],
    [0.500000, 0.785343],
    [0.562030, 0.778746],
    [0.699747, 0.784792],
    [0.563237, 0.824182],
    [0.500000, 0.831803],
    [0.436763, 0.824182],
];

/// faceswap's 26-point 3-D mean head (`_MEAN_FACE[LandmarkType.LM_3D_26]`), y up, z towards the
/// viewer; matched to the 68-point landmarks [`POSE_LANDMARKS`].
pub const MEAN_HEAD_26: [[f64; 3]; 26] = [
    [4.056931, -11.432347, 1.636229],
    [1.833492, -12.542305, 4.061275],
    [0.0, -12.901019, 4.070434],
    [-1.833492, -12.542305, 4.061275],
    [-4.056931, -11.432347, 1.636229],
    [6.825897, 1.275284, 4.402142],
    [1.330353, 1.636816, 6.903745],
    [-1.330353, 1.636816, 6.903745],
    [-6.825897, 1.275284, 4.402142],
    [1.930245, -5.060977, 5.914376],
    [0.746313, -5.136947, 6.263227],
    [0.0, -5.485328, 6.76343],
    [-0.746313, -5.136947, 6.263227],
    [-1.930245, -5.060977, 5.914376],
    [5.311432, 0.0, 3.987654],
    [1.78993, -0.091703, 4.413414],
    [-1.78993, -0.091703, 4.413414],
    [-5.311432, 0.0, 3.987654],
    [2.774015, -7.566103, 5.048531],
    [0.509714, -7.056507, 6.566167],
    [0.0, -7.131772, 6.704956],
    [-0.509714, -7.056507, 6.566167],
    [-2.774015, -7.566103, 5.048531],
    [-0.589441, -8.443925, 6.109526],
    [0.0, -8.601736, 6.097667],
    [0.589441, -8.443925, 6.109526],
];

/// The 68-point landmarks that [`MEAN_HEAD_26`] models, in its order (faceswap `pose.py`).
pub const POSE_LANDMARKS: [usize; 26] = [
    6, 7, 8, 9, 10, 17, 21, 22, 26, 31, 32, 33, 34, 35, 36, 39, 42, 45, 48, 50, 51, 52, 54, 56, 57,
    58,
];

/// Focal length and principal point of the pose camera (unit-square image).
const POSE_FOCAL: f64 = 4.0;
const POSE_CENTRE: f64 = 0.5;

/// The name of the alignments file in a faceset folder.
pub const ALIGNMENTS: &str = "alignments.json";
/// Format tag written in the alignments file.
pub const FORMAT: &str = "fswap-faceset";
/// Alignments file version.
pub const VERSION: u32 = 1;
/// Smallest and largest aligned face sizes.
pub const SIZES: std::ops::RangeInclusive<usize> = 64..=256;
/// Coverage range (faceswap's training option: 62.5 % to 100 %).
pub const COVERAGE: std::ops::RangeInclusive<f64> = 0.625..=1.0;
/// Side of the grey thumbnails compared by pixel de-duplication.
pub const THUMB: usize = 32;

/// Where the aligned crop is centred (faceswap's `CenteringType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Centering {
    /// The nose tip at the centre (the original alignment).
    Legacy,
    /// The face centred, corrected for pitch and yaw.
    #[default]
    Face,
    /// The middle of the skull centred: the crop holds the whole head.
    Head,
}

impl Centering {
    /// Parses `legacy`, `face` or `head`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "legacy" => Ok(Centering::Legacy),
            "face" => Ok(Centering::Face),
            "head" => Ok(Centering::Head),
            other => Err(Error::param(
                "--centering",
                format!("'{other}' (expected legacy, face or head)"),
            )),
        }
    }

    /// The name (as parsed and stored).
    pub fn name(self) -> &'static str {
        match self {
            Centering::Legacy => "legacy",
            Centering::Face => "face",
            Centering::Head => "head",
        }
    }

    /// faceswap's `EXTRACT_RATIOS`: the padding ratio of each centring.
    pub fn ratio(self) -> f64 {
        match self {
            Centering::Legacy => 0.375,
            Centering::Face => 0.5,
            Centering::Head => 0.625,
        }
    }
}

/// Checks an aligned face size and coverage.
pub fn check_settings(size: usize, coverage: f64) -> Result<()> {
    if !SIZES.contains(&size) {
        return Err(Error::param(
            "--size",
            format!("{size} (aligned faces are 64 to 256 pixels)"),
        ));
    }
    if !coverage.is_finite() || !COVERAGE.contains(&coverage) {
        return Err(Error::param(
            "--coverage",
            format!("{coverage} (expected 0.625 to 1.0)"),
        ));
    }
    Ok(())
}

/// Padding in pixels on each side of a `size` crop: `round(size·(r + c − 1)/(2c))`, half to even
/// (spec alignment.md §B.1, `r` = [`Centering::ratio`], `c` = coverage).
pub fn padding(size: usize, centering: Centering, coverage: f64) -> Result<i64> {
    check_settings(size, coverage)?;
    let v = size as f64 * (centering.ratio() + coverage - 1.0) / (2.0 * coverage);
    Ok(v.round_ties_even() as i64)
}

/// faceswap's legacy matrix: Umeyama of landmarks 17–67 onto [`MEAN_FACE_51`] (frame pixels →
/// unit square).
pub fn legacy_matrix(pts68: &[[f32; 2]]) -> Result<Affine> {
    check_landmarks(pts68)?;
    let src: Vec<[f64; 2]> = pts68[17..]
        .iter()
        .map(|p| [p[0] as f64, p[1] as f64])
        .collect();
    umeyama(&src, &MEAN_FACE_51)
}

fn check_landmarks(pts68: &[[f32; 2]]) -> Result<()> {
    if pts68.len() != 68 || pts68.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::param(
            "alignment",
            format!("need 68 finite landmarks, got {}", pts68.len()),
        ));
    }
    Ok(())
}

/// 3×3 matrices as rows.
type Mat3 = [[f64; 3]; 3];

fn mat_mul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut o = [[0.0; 3]; 3];
    for (i, row) in o.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    o
}

fn mat_vec(a: &Mat3, v: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|i| a[i][0] * v[0] + a[i][1] * v[1] + a[i][2] * v[2])
}

/// The rotation `exp([r]×)` of a rotation vector (Rodrigues' formula).
pub fn rodrigues(r: [f64; 3]) -> [[f64; 3]; 3] {
    let th = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
    if th < 1e-15 {
        return [[1.0, -r[2], r[1]], [r[2], 1.0, -r[0]], [-r[1], r[0], 1.0]];
    }
    let k = r.map(|v| v / th);
    let (c, s) = (th.cos(), th.sin());
    let mut m = [[0.0; 3]; 3];
    for (i, row) in m.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (1.0 - c) * k[i] * k[j] + if i == j { c } else { 0.0 };
        }
    }
    m[0][1] -= s * k[2];
    m[0][2] += s * k[1];
    m[1][0] += s * k[2];
    m[1][2] -= s * k[0];
    m[2][0] -= s * k[1];
    m[2][1] += s * k[0];
    m
}

/// Solves the small dense system `a·x = b` (Gaussian elimination, partial pivoting).
fn solve<const N: usize>(mut a: [[f64; N]; N], mut b: [f64; N]) -> Option<[f64; N]> {
    for col in 0..N {
        let piv = (col..N).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        for row in col + 1..N {
            let f = a[row][col] / a[col][col];
            let pr = a[col];
            for (x, p) in a[row].iter_mut().zip(pr).skip(col) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; N];
    for row in (0..N).rev() {
        let s: f64 = (row + 1..N).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Head pose in faceswap's normalised space (`lib/align/pose.py`): the rotation and translation
/// that project the z-mirrored [`MEAN_HEAD_26`] ([`mirrored`]) onto the unit-square landmarks with
/// the camera `fx = fy = 4`, `cx = cy = 0.5` (see the module docs for the mirror).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadPose {
    /// Rotation (model → camera), rows.
    pub rotation: [[f64; 3]; 3],
    /// Translation (camera frame).
    pub translation: [f64; 3],
    /// Root-mean-square reprojection error of the 26 points, unit-square units.
    pub rms: f64,
}

impl HeadPose {
    /// Projects a point of faceswap's head model (unmirrored coordinates) to the unit square.
    pub fn project(&self, p: [f64; 3]) -> [f64; 2] {
        project(&self.rotation, &self.translation, mirrored(p))
    }

    /// faceswap's offset of a centring: the projection of its centre point minus (0.5, 0.5)
    /// (`legacy`: none).
    pub fn offset(&self, centering: Centering) -> [f64; 2] {
        let p = match centering {
            Centering::Legacy => return [0.0, 0.0],
            Centering::Face => [0.0, -1.5, 4.2],
            Centering::Head => [0.0, 0.0, -2.3],
        };
        let q = self.project(p);
        [q[0] - POSE_CENTRE, q[1] - POSE_CENTRE]
    }

    /// Fits the pose to 68 landmarks already in the unit square (the legacy matrix applied):
    /// a weak-perspective start, then Levenberg–Marquardt on the reprojection error of the 26
    /// [`POSE_LANDMARKS`] (rotation updated multiplicatively, `R ← R·exp([δ]×)`).
    pub fn solve(unit68: &[[f64; 2]]) -> Result<HeadPose> {
        if unit68.len() != 68 || unit68.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::param("head pose", "need 68 finite landmarks"));
        }
        let img: Vec<[f64; 2]> = POSE_LANDMARKS.iter().map(|&i| unit68[i]).collect();
        let model = MEAN_HEAD_26.map(mirrored);
        let (mut rot, mut t) = weak_perspective(&model, &img)?;
        let cost = |r: &Mat3, t: &[f64; 3]| -> f64 {
            model
                .iter()
                .zip(&img)
                .map(|(x, u)| {
                    let p = project(r, t, *x);
                    (p[0] - u[0]).powi(2) + (p[1] - u[1]).powi(2)
                })
                .sum()
        };
        let mut c = cost(&rot, &t);
        let mut lambda = 1e-3;
        for _ in 0..200 {
            // Jacobian of the 52 residuals w.r.t. (δ, t), central differences.
            let resid = |d: [f64; 6]| -> Vec<f64> {
                let r = mat_mul(&rot, &rodrigues([d[0], d[1], d[2]]));
                let tt = [t[0] + d[3], t[1] + d[4], t[2] + d[5]];
                model
                    .iter()
                    .zip(&img)
                    .flat_map(|(x, u)| {
                        let p = project(&r, &tt, *x);
                        [p[0] - u[0], p[1] - u[1]]
                    })
                    .collect()
            };
            let r0 = resid([0.0; 6]);
            let mut jac = vec![[0.0; 6]; r0.len()];
            for k in 0..6 {
                let h = if k < 3 {
                    1e-6
                } else {
                    1e-6 * t[k - 3].abs().max(1.0)
                };
                let (mut dp, mut dm) = ([0.0; 6], [0.0; 6]);
                dp[k] = h;
                dm[k] = -h;
                let (rp, rm) = (resid(dp), resid(dm));
                for (row, (a, b)) in jac.iter_mut().zip(rp.iter().zip(&rm)) {
                    row[k] = (a - b) / (2.0 * h);
                }
            }
            let mut jtj = [[0.0; 6]; 6];
            let mut jtr = [0.0; 6];
            for (row, r) in jac.iter().zip(&r0) {
                for i in 0..6 {
                    jtr[i] += row[i] * r;
                    for j in 0..6 {
                        jtj[i][j] += row[i] * row[j];
                    }
                }
            }
            let mut improved = false;
            let mut step = 0.0;
            while lambda < 1e12 {
                let mut a = jtj;
                for (i, row) in a.iter_mut().enumerate() {
                    row[i] += lambda * jtj[i][i].max(1e-12);
                }
                let Some(d) = solve(a, jtr.map(|v| -v)) else {
                    lambda *= 10.0;
                    continue;
                };
                let r2 = mat_mul(&rot, &rodrigues([d[0], d[1], d[2]]));
                let t2 = [t[0] + d[3], t[1] + d[4], t[2] + d[5]];
                let c2 = cost(&r2, &t2);
                if c2.is_finite() && c2 <= c {
                    step = d.iter().map(|v| v * v).sum::<f64>().sqrt();
                    let gain = c - c2;
                    (rot, t, c) = (r2, t2, c2);
                    lambda = (lambda / 10.0).max(1e-12);
                    improved = gain > 1e-18 * c.max(1e-30);
                    break;
                }
                lambda *= 10.0;
            }
            if !improved || step < 1e-12 {
                break;
            }
        }
        if !(c.is_finite() && t[2] > 0.0) {
            return Err(Error::param(
                "head pose",
                "the perspective fit failed (landmarks far from a face)",
            ));
        }
        Ok(HeadPose {
            rotation: rot,
            translation: t,
            rms: (c / MEAN_HEAD_26.len() as f64).sqrt(),
        })
    }
}

/// A head-model point with its depth axis mirrored (`z → −z`).
pub fn mirrored(p: [f64; 3]) -> [f64; 3] {
    [p[0], p[1], -p[2]]
}

fn project(r: &Mat3, t: &[f64; 3], p: [f64; 3]) -> [f64; 2] {
    let c = mat_vec(r, p);
    let (x, y, z) = (c[0] + t[0], c[1] + t[1], c[2] + t[2]);
    [
        POSE_FOCAL * x / z + POSE_CENTRE,
        POSE_FOCAL * y / z + POSE_CENTRE,
    ]
}

/// Scaled orthographic fit of `model` to image points: least-squares 2×3 linear map plus offset,
/// rows orthonormalised into a rotation, mean scale as inverse depth.
fn weak_perspective(model: &[[f64; 3]], img: &[[f64; 2]]) -> Result<(Mat3, [f64; 3])> {
    let n = img.len() as f64;
    let norm: Vec<[f64; 2]> = img
        .iter()
        .map(|u| {
            [
                (u[0] - POSE_CENTRE) / POSE_FOCAL,
                (u[1] - POSE_CENTRE) / POSE_FOCAL,
            ]
        })
        .collect();
    let mx = [0, 1, 2].map(|k| model.iter().map(|p| p[k]).sum::<f64>() / n);
    let mu = [0, 1].map(|k| norm.iter().map(|p| p[k]).sum::<f64>() / n);
    let mut xx = [[0.0; 3]; 3];
    let mut ux = [[0.0; 3]; 2];
    for (p, u) in model.iter().zip(&norm) {
        let d = [p[0] - mx[0], p[1] - mx[1], p[2] - mx[2]];
        for i in 0..3 {
            for j in 0..3 {
                xx[i][j] += d[i] * d[j];
            }
            ux[0][i] += (u[0] - mu[0]) * d[i];
            ux[1][i] += (u[1] - mu[1]) * d[i];
        }
    }
    // Rows a_k of the linear map: xx·a_k = ux_k (xx symmetric).
    let fail = || Error::param("head pose", "degenerate landmarks");
    let a1 = solve(xx, ux[0]).ok_or_else(fail)?;
    let a2 = solve(xx, ux[1]).ok_or_else(fail)?;
    let len = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let (l1, l2) = (len(a1), len(a2));
    if l1 < 1e-12 || l2 < 1e-12 {
        return Err(fail());
    }
    let r1 = a1.map(|v| v / l1);
    let d = r1[0] * a2[0] + r1[1] * a2[1] + r1[2] * a2[2];
    let o = [a2[0] - d * r1[0], a2[1] - d * r1[1], a2[2] - d * r1[2]];
    let lo = len(o);
    if lo < 1e-12 {
        return Err(fail());
    }
    let r2 = o.map(|v| v / lo);
    let r3 = [
        r1[1] * r2[2] - r1[2] * r2[1],
        r1[2] * r2[0] - r1[0] * r2[2],
        r1[0] * r2[1] - r1[1] * r2[0],
    ];
    let s = (l1 + l2) / 2.0;
    let tz = 1.0 / s;
    // The model mean projects to the image mean: (R·mx + t)_xy / tz = mu.
    let rm = mat_vec(&[r1, r2, r3], mx);
    let t = [mu[0] * tz - rm[0], mu[1] * tz - rm[1], tz - rm[2]];
    Ok(([r1, r2, r3], t))
}

/// One face's alignment to a crop (faceswap's `AlignedFace` matrices).
#[derive(Clone, Debug, PartialEq)]
pub struct Alignment {
    /// Frame pixels → unit square (legacy, uncentred).
    pub legacy: Affine,
    /// Frame pixels → unit square of the chosen centring (`legacy` minus the offset).
    pub matrix: Affine,
    /// Frame pixels → crop pixels (`matrix·(size − 2·pad)` + pad): what the warp uses.
    pub adjusted: Affine,
    /// The centring offset subtracted from the legacy translation.
    pub offset: [f64; 2],
    /// Padding in pixels.
    pub padding: i64,
    /// faceswap's `average_distance`: mean absolute difference between landmarks 17–67 in the
    /// unit square and [`MEAN_FACE_51`].
    pub average_distance: f64,
    /// The head pose (`None` for legacy centring, which does not need it).
    pub pose: Option<HeadPose>,
}

/// Aligns a face with these 68 landmarks (frame pixels) to a `size` crop.
pub fn align(
    pts68: &[[f32; 2]],
    size: usize,
    centering: Centering,
    coverage: f64,
) -> Result<Alignment> {
    let legacy = legacy_matrix(pts68)?;
    let pad = padding(size, centering, coverage)?;
    let unit: Vec<[f64; 2]> = pts68
        .iter()
        .map(|p| apply(&legacy, [p[0] as f64, p[1] as f64]))
        .collect();
    let average_distance = unit[17..]
        .iter()
        .zip(&MEAN_FACE_51)
        .map(|(p, m)| (p[0] - m[0]).abs() + (p[1] - m[1]).abs())
        .sum::<f64>()
        / (2.0 * MEAN_FACE_51.len() as f64);
    let pose = match centering {
        Centering::Legacy => None,
        _ => Some(HeadPose::solve(&unit)?),
    };
    let offset = pose.map_or([0.0, 0.0], |p| p.offset(centering));
    let mut matrix = legacy;
    matrix[0][2] -= offset[0];
    matrix[1][2] -= offset[1];
    let k = (size as i64 - 2 * pad) as f64;
    let mut adjusted = matrix.map(|row| row.map(|v| v * k));
    adjusted[0][2] += pad as f64;
    adjusted[1][2] += pad as f64;
    Ok(Alignment {
        legacy,
        matrix,
        adjusted,
        offset,
        padding: pad,
        average_distance,
        pose,
    })
}

/// A face's entry in the alignments file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceRecord {
    /// The PNG's file name in the faceset folder.
    pub file: String,
    /// The source image or video (absolute path when it could be resolved).
    pub source: String,
    /// Frame index in the source (0 for an image).
    pub frame: u64,
    /// The face's index among the frame's detections (best score first).
    pub face: usize,
    /// Detection box `[x1, y1, x2, y2]`, frame pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Detection score.
    pub score: f32,
    /// The 68 landmarks (iBUG order), frame pixels.
    pub landmarks: Vec<[f32; 2]>,
    /// Frame pixels → aligned crop pixels (2×3, OpenCV `warpAffine` convention).
    pub matrix: Affine,
    /// Frame pixels → faceswap's legacy unit square.
    pub legacy_matrix: Affine,
    /// Crop side in pixels.
    pub size: usize,
    /// Centring of the crop.
    pub centering: Centering,
    /// Coverage of the crop.
    pub coverage: f64,
    /// Padding in pixels ([`padding`]).
    pub padding: i64,
    /// The centring offset (unit square) subtracted from the legacy translation.
    pub offset: [f64; 2],
    /// Mean absolute distance of landmarks 17–67 from the mean face (unit square).
    pub average_distance: f64,
    /// MobileFaceNet-128 unit embedding.
    pub embedding: Vec<f32>,
}

impl FaceRecord {
    /// The 68 landmarks in the aligned crop's pixels (through [`FaceRecord::matrix`]).
    pub fn aligned_landmarks(&self) -> Vec<[f32; 2]> {
        self.landmarks
            .iter()
            .map(|p| {
                let q = apply(&self.matrix, [p[0] as f64, p[1] as f64]);
                [q[0] as f32, q[1] as f32]
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct AlignmentsFile {
    format: String,
    version: u32,
    embedding_model: String,
    faces: Vec<FaceRecord>,
}

fn bad(path: &Path, detail: impl Into<String>) -> Error {
    Error::Format {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// A faceset read back from its folder: the alignments and the aligned PNGs.
#[derive(Clone, Debug)]
pub struct Faceset {
    /// The folder.
    pub dir: PathBuf,
    /// Crop side of every face.
    pub size: usize,
    /// Centring of every face.
    pub centering: Centering,
    /// Coverage of every face.
    pub coverage: f64,
    /// The faces, in the file's order.
    pub faces: Vec<FaceRecord>,
}

impl Faceset {
    /// Reads `DIR/alignments.json` and checks it: the format, at least one face, one size,
    /// centring and coverage for all, padding consistent with them, every file a PNG of that size
    /// in the folder (header read), names unique, 68 finite landmarks, an invertible finite matrix,
    /// a finite unit embedding of 128 values.
    pub fn open(dir: impl AsRef<Path>) -> Result<Faceset> {
        let dir = dir.as_ref();
        let path = dir.join(ALIGNMENTS);
        let faces = read_alignments(&path)?;
        let first = faces
            .first()
            .ok_or_else(|| bad(&path, "the faceset has no faces"))?;
        let (size, centering, coverage) = (first.size, first.centering, first.coverage);
        let mut names = HashSet::new();
        for (i, f) in faces.iter().enumerate() {
            let at = |d: String| bad(&path, format!("face {i} ({}): {d}", f.file));
            if (f.size, f.centering, f.coverage) != (size, centering, coverage) {
                return Err(at(format!(
                    "size {} / {} / coverage {} differs from the first face's {size} / {} / {coverage}",
                    f.size,
                    f.centering.name(),
                    f.coverage,
                    centering.name()
                )));
            }
            if padding(f.size, f.centering, f.coverage).map_err(|e| at(e.to_string()))? != f.padding
            {
                return Err(at(format!(
                    "padding {} does not match its settings",
                    f.padding
                )));
            }
            if f.file.is_empty()
                || f.file.contains(['/', '\\'])
                || !f.file.to_ascii_lowercase().ends_with(".png")
            {
                return Err(at("the file must be a PNG name inside the faceset".into()));
            }
            if !names.insert(f.file.clone()) {
                return Err(at("listed twice".into()));
            }
            if f.landmarks.len() != 68 || f.landmarks.iter().flatten().any(|v| !v.is_finite()) {
                return Err(at(format!(
                    "{} landmarks (68 finite values expected)",
                    f.landmarks.len()
                )));
            }
            for m in [&f.matrix, &f.legacy_matrix] {
                if m.iter().flatten().any(|v| !v.is_finite()) || invert(m).is_err() {
                    return Err(at("matrix not finite or not invertible".into()));
                }
            }
            let n2: f64 = f.embedding.iter().map(|v| (*v as f64).powi(2)).sum();
            if f.embedding.len() != mobilefacenet::EMBEDDING
                || f.embedding.iter().any(|v| !v.is_finite())
                || (n2.sqrt() - 1.0).abs() > 1e-2
            {
                return Err(at(format!(
                    "embedding of {} values with norm {:.4} (a unit vector of {} expected)",
                    f.embedding.len(),
                    n2.sqrt(),
                    mobilefacenet::EMBEDDING
                )));
            }
            let png = dir.join(&f.file);
            let dims = image::ImageReader::open(&png)
                .map_err(|e| at(format!("{}: {e}", png.display())))?
                .with_guessed_format()
                .map_err(|e| at(format!("{}: {e}", png.display())))?
                .into_dimensions()
                .map_err(|e| at(format!("{}: {e}", png.display())))?;
            if dims != (size as u32, size as u32) {
                return Err(at(format!(
                    "the image is {}x{}, the faceset's faces are {size}x{size}",
                    dims.0, dims.1
                )));
            }
        }
        Ok(Faceset {
            dir: dir.to_path_buf(),
            size,
            centering,
            coverage,
            faces,
        })
    }

    /// Number of faces.
    pub fn len(&self) -> usize {
        self.faces.len()
    }

    /// Whether there are no faces (never, for an opened faceset).
    pub fn is_empty(&self) -> bool {
        self.faces.is_empty()
    }

    /// The PNG of face `i`.
    ///
    /// # Panics
    /// When `i ≥ len()`, as slice indexing.
    pub fn path(&self, i: usize) -> PathBuf {
        self.dir.join(&self.faces[i].file)
    }

    /// Face `i` as 8-bit RGB (`size × size`).
    pub fn load(&self, i: usize) -> Result<RgbImage> {
        if i >= self.len() {
            return Err(Error::param(
                "faceset",
                format!("face {i} of {} ({})", self.len(), self.dir.display()),
            ));
        }
        let p = self.path(i);
        let img = img_io::load(&p)?;
        if img.dimensions() != (self.size as u32, self.size as u32) {
            return Err(bad(&p, format!("not {0}x{0}", self.size)));
        }
        Ok(img)
    }

    /// Face `i` as planar RGB `[3, size, size]` in [0, 1], resized to `size` ([`resize_planar`]).
    pub fn load_planar(&self, i: usize, size: usize) -> Result<Vec<f32>> {
        let img = self.load(i)?;
        let planar = img_io::to_planar(img.as_raw(), self.size, self.size);
        resize_planar(&planar, 3, self.size, size)
    }

    /// Face `i`'s 68 landmarks in pixels of its crop resized to `size` (half-pixel centres).
    ///
    /// # Panics
    /// When `i ≥ len()`, as slice indexing.
    pub fn aligned_landmarks(&self, i: usize, size: usize) -> Vec<[f32; 2]> {
        let k = size as f64 / self.size as f64;
        self.faces[i]
            .aligned_landmarks()
            .iter()
            .map(|p| [p[0] as f64, p[1] as f64].map(|v| ((v + 0.5) * k - 0.5) as f32))
            .collect()
    }
}

fn read_alignments(path: &Path) -> Result<Vec<FaceRecord>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let file: AlignmentsFile = serde_json::from_str(&text)
        .map_err(|e| bad(path, format!("not a faceset alignments file: {e}")))?;
    if file.format != FORMAT || file.version != VERSION {
        return Err(bad(
            path,
            format!(
                "format '{}' version {} (expected '{FORMAT}' version {VERSION})",
                file.format, file.version
            ),
        ));
    }
    if file.embedding_model != mobilefacenet::MODEL {
        return Err(bad(
            path,
            format!(
                "embeddings from '{}' (expected {})",
                file.embedding_model,
                mobilefacenet::MODEL
            ),
        ));
    }
    Ok(file.faces)
}

/// Resizes planar `[c, s, s]` images to `[c, t, t]`: area averaging when shrinking (OpenCV
/// `INTER_AREA`: each output pixel the mean of its `s/t`-wide source footprint, fractional pixels
/// weighted), bilinear with half-pixel centres and clamped edges when enlarging, a copy at equal
/// size.
pub fn resize_planar(src: &[f32], c: usize, s: usize, t: usize) -> Result<Vec<f32>> {
    if s == 0 || t == 0 || src.len() != c * s * s {
        return Err(Error::shape(
            "resize",
            format!("{} values for {c} planes of {s}x{s} → {t}x{t}", src.len()),
        ));
    }
    if s == t {
        return Ok(src.to_vec());
    }
    // Per output index: (source index, weight) taps, identical for rows and columns.
    let taps: Vec<Vec<(usize, f32)>> = if t < s {
        let k = s as f64 / t as f64;
        (0..t)
            .map(|o| {
                let (a, b) = (o as f64 * k, (o + 1) as f64 * k);
                let mut v = Vec::new();
                let mut i = a.floor() as usize;
                while (i as f64) < b && i < s {
                    let w = (b.min(i as f64 + 1.0) - a.max(i as f64)) / k;
                    if w > 1e-12 {
                        v.push((i, w as f32));
                    }
                    i += 1;
                }
                v
            })
            .collect()
    } else {
        let k = s as f64 / t as f64;
        (0..t)
            .map(|o| {
                let f = ((o as f64 + 0.5) * k - 0.5).max(0.0);
                let i = (f.floor() as usize).min(s - 1);
                let fr = if i + 1 < s { f - i as f64 } else { 0.0 };
                vec![(i, (1.0 - fr) as f32), ((i + 1).min(s - 1), fr as f32)]
            })
            .collect()
    };
    let mut out = vec![0f32; c * t * t];
    let mut rows = vec![0f32; s * t];
    for ch in 0..c {
        let plane = &src[ch * s * s..(ch + 1) * s * s];
        // Horizontal pass: every source row to t columns.
        for y in 0..s {
            for (x, tp) in taps.iter().enumerate() {
                rows[y * t + x] = tp.iter().map(|&(i, w)| plane[y * s + i] * w).sum();
            }
        }
        for (y, tp) in taps.iter().enumerate() {
            for x in 0..t {
                out[ch * t * t + y * t + x] = tp.iter().map(|&(i, w)| rows[i * t + x] * w).sum();
            }
        }
    }
    Ok(out)
}

/// A minimum face size: the detection box's longer side, in pixels or as a percentage of the
/// frame's shorter side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MinSize {
    /// Pixels.
    Pixels(f64),
    /// Percent of the frame's shorter side.
    Percent(f64),
}

impl MinSize {
    /// Parses `80` / `80px` (pixels) or `10%`.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        let err = || {
            Error::param(
                "--min-size",
                format!("'{s}' (expected pixels such as 80, or a percentage such as 10%)"),
            )
        };
        let (num, pct) = match t.strip_suffix('%') {
            Some(n) => (n, true),
            None => (t.strip_suffix("px").unwrap_or(t), false),
        };
        let v: f64 = num.trim().parse().map_err(|_| err())?;
        if !v.is_finite() || v < 0.0 || (pct && v > 100.0) {
            return Err(err());
        }
        Ok(if pct {
            MinSize::Percent(v)
        } else {
            MinSize::Pixels(v)
        })
    }

    /// The minimum in pixels for a `width × height` frame.
    pub fn pixels(self, width: u32, height: u32) -> f64 {
        match self {
            MinSize::Pixels(p) => p,
            MinSize::Percent(p) => p / 100.0 * width.min(height) as f64,
        }
    }
}

/// The longer side of a detection box, in pixels.
pub fn face_size(bbox: [f32; 4]) -> f64 {
    ((bbox[2] - bbox[0]) as f64).max((bbox[3] - bbox[1]) as f64)
}

/// A face found and aligned in a frame, before the faceset's filters.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Its index among the frame's detections (best score first).
    pub index: usize,
    /// Detection and landmarks.
    pub face: Face,
    /// The alignment.
    pub alignment: Alignment,
    /// The aligned crop.
    pub image: RgbImage,
    /// MobileFaceNet-128 unit embedding.
    pub embedding: Vec<f32>,
}

/// The faces of one frame ([`Extractor::candidates`]).
#[derive(Clone, Debug, Default)]
pub struct FrameFaces {
    /// Aligned, cropped and embedded faces, best detection first.
    pub candidates: Vec<Candidate>,
    /// Faces detected.
    pub found: usize,
    /// Faces under the minimum size.
    pub small: usize,
    /// Faces whose alignment failed.
    pub unaligned: usize,
}

/// The crop settings of a faceset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Crop side (64 to 256).
    pub size: usize,
    /// Centring.
    pub centering: Centering,
    /// Coverage (0.625 to 1).
    pub coverage: f64,
}

impl Settings {
    /// Checks the ranges.
    pub fn check(&self) -> Result<()> {
        check_settings(self.size, self.coverage)
    }
}

/// Per frame-size GPU state: the frame tensor and the two warps reading it.
struct FrameGpu {
    dims: (u32, u32),
    frame: Tensor,
    warp_face: Warp,
    warp_id: Warp,
    plan: Plan,
}

/// Finds, aligns and embeds faces on the GPU: FaceBoxes + 3DDFA ([`Analyzer`]), then per face one
/// submit that warps the aligned crop and the 112 identity crop out of the uploaded frame and runs
/// MobileFaceNet-128 on the latter.
pub struct Extractor {
    analyzer: Analyzer,
    net: MobileFaceNet,
    crop: Tensor,
    id_crop: Tensor,
    settings: Settings,
    gpu: Option<FrameGpu>,
}

impl Extractor {
    /// Loads the models of `--models DIR` (`faceboxes`, `3ddfa_mb05`, `3ddfa_bfm68`,
    /// `mobilefacenet128`) and allocates the crops.
    pub fn new(ctx: &Context, models: &Path, settings: Settings) -> Result<Self> {
        settings.check()?;
        let analyzer = Analyzer::open(ctx, models)?;
        let net = MobileFaceNet::new(ctx, &model_file(models, "mobilefacenet128.safetensors")?, 1)?;
        let crop = Tensor::new(
            ctx,
            Shape::new(1, 3, settings.size, settings.size),
            "aligned face",
        )?;
        let id_crop = Tensor::new(
            ctx,
            Shape::new(1, 3, mobilefacenet::INPUT, mobilefacenet::INPUT),
            "identity crop",
        )?;
        Ok(Extractor {
            analyzer,
            net,
            crop,
            id_crop,
            settings,
            gpu: None,
        })
    }

    /// The crop settings.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Uploads `img` (rebuilding the frame state when its size changed).
    fn upload(&mut self, ctx: &Context, img: &RgbImage) -> Result<&FrameGpu> {
        let dims = img.dimensions();
        if self.gpu.as_ref().map(|g| g.dims) != Some(dims) {
            let frame = img_io::frame_tensor(ctx, dims.0 as usize, dims.1 as usize, "frame")?;
            let warp_face = Warp::new(ctx, &frame, &self.crop)?;
            let warp_id = Warp::new(ctx, &frame, &self.id_crop)?;
            let mut plan = Plan::default();
            plan.push(warp_face.dispatch().clone());
            plan.push(warp_id.dispatch().clone());
            plan.push(mobilefacenet::normalize_dispatch(
                ctx,
                &self.id_crop,
                &self.net.input,
            )?);
            plan.extend(self.net.plan.clone());
            self.gpu = Some(FrameGpu {
                dims,
                frame,
                warp_face,
                warp_id,
                plan,
            });
        }
        let gpu = self.gpu.as_ref().expect("built above");
        img_io::upload(ctx, &gpu.frame, img)?;
        Ok(gpu)
    }

    /// Crops and embeds one face of the uploaded frame: `(aligned crop, unit embedding)`.
    fn crop_and_embed(
        &self,
        ctx: &Context,
        alignment: &Alignment,
        pts5: &[[f64; 2]; 5],
    ) -> Result<(RgbImage, Vec<f32>)> {
        let gpu = self.gpu.as_ref().expect("uploaded");
        gpu.warp_face
            .set(ctx, &[(invert(&alignment.adjusted)?, 0)])?;
        let id = lstsq_affine(pts5, &arcface_template(mobilefacenet::INPUT))?;
        gpu.warp_id.set(ctx, &[(invert(&id)?, 0)])?;
        gpu.plan.run(ctx)?;
        let s = self.settings.size;
        let px = self.crop.to_f32(ctx)?;
        let image = RgbImage::from_raw(s as u32, s as u32, img_io::from_planar(&px, s, s))
            .ok_or_else(|| Error::Readback("aligned crop size".into()))?;
        let embedding = self.net.embedding.to_f32(ctx)?;
        Ok((image, embedding))
    }

    /// Every face of `img` whose box's longer side is at least `min_pixels`, aligned, cropped
    /// and embedded, best detection first; faces whose alignment fails (degenerate landmarks, a
    /// pose fit that does not converge) are counted in [`FrameFaces::unaligned`] and skipped.
    pub fn candidates(
        &mut self,
        ctx: &Context,
        img: &RgbImage,
        min_pixels: f64,
    ) -> Result<FrameFaces> {
        let faces = self.analyzer.faces(ctx, img)?;
        let mut out = FrameFaces {
            found: faces.len(),
            ..FrameFaces::default()
        };
        let keep: Vec<(usize, Face)> = faces
            .into_iter()
            .enumerate()
            .filter(|(_, f)| face_size(f.detection.box_) >= min_pixels)
            .collect();
        out.small = out.found - keep.len();
        if keep.is_empty() {
            return Ok(out);
        }
        self.upload(ctx, img)?;
        let s = self.settings;
        for (index, face) in keep {
            let Ok(alignment) = align(&face.landmarks.pts68, s.size, s.centering, s.coverage)
            else {
                out.unaligned += 1;
                continue;
            };
            let (image, embedding) =
                self.crop_and_embed(ctx, &alignment, &face.landmarks.pts5_f64())?;
            out.candidates.push(Candidate {
                index,
                face,
                alignment,
                image,
                embedding,
            });
        }
        Ok(out)
    }

    /// The embedding of the largest face of a reference image (an error naming `path` when it
    /// has none).
    pub fn reference_embedding(
        &mut self,
        ctx: &Context,
        img: &RgbImage,
        path: &Path,
    ) -> Result<Vec<f32>> {
        self.candidates(ctx, img, 0.0)?
            .candidates
            .into_iter()
            .max_by(|a, b| a.face.area().total_cmp(&b.face.area()))
            .map(|c| c.embedding)
            .ok_or_else(|| bad(path, "no face found in the reference image"))
    }
}

/// Which faces a faceset keeps.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    /// Keep only faces whose cosine to this embedding is at least the threshold.
    pub reference: Option<(Vec<f32>, f32)>,
    /// Drop a face whose identity distance `1 − cos` to a kept face is at most this.
    pub dedupe: Option<f32>,
    /// Drop a face whose 32×32 grey thumbnail differs from a kept face's by at most this mean
    /// absolute difference (values in [0, 1]).
    pub dedupe_pixels: Option<f32>,
}

/// What became of a candidate.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Written, under this file name.
    Kept(String),
    /// Below the reference similarity (its cosine).
    NotSimilar(f32),
    /// A near-duplicate of this kept file.
    Duplicate(String),
}

/// The faceset already in `dir`, if any, checked (as [`Faceset::open`]) and required to have these
/// settings: extending it with other crops would mix faces the trainer cannot batch.
pub fn existing_faceset(dir: &Path, settings: Settings) -> Result<Option<Faceset>> {
    let path = dir.join(ALIGNMENTS);
    if !path.exists() {
        return Ok(None);
    }
    let old = Faceset::open(dir)?;
    if (old.size, old.centering, old.coverage)
        != (settings.size, settings.centering, settings.coverage)
    {
        return Err(bad(
            &path,
            format!(
                "the faceset holds {}px {} faces at coverage {}; extract with the same --size, \
                 --centering and --coverage, or into another folder",
                old.size,
                old.centering.name(),
                old.coverage
            ),
        ));
    }
    Ok(Some(old))
}

/// Writes faces into a faceset folder: each PNG as it is kept, the alignments file (atomically)
/// on [`FacesetWriter::finish`]. An existing faceset in the folder is extended: its settings must
/// match, its faces count for de-duplication, and a new face with the name of an old one replaces
/// it.
pub struct FacesetWriter {
    dir: PathBuf,
    settings: Settings,
    filters: Filters,
    records: Vec<FaceRecord>,
    thumbs: Vec<Option<Vec<f32>>>,
    existing: usize,
}

impl FacesetWriter {
    /// Opens (or creates) the faceset folder `dir`.
    pub fn create(dir: &Path, settings: Settings, filters: Filters) -> Result<Self> {
        settings.check()?;
        for (name, v) in [
            ("--dedupe", filters.dedupe),
            ("--dedupe-pixels", filters.dedupe_pixels),
        ] {
            if v.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                return Err(Error::param(name, "expected a threshold in [0, 1]"));
            }
        }
        if let Some((e, t)) = &filters.reference {
            if e.len() != mobilefacenet::EMBEDDING || !(-1.0..=1.0).contains(t) {
                return Err(Error::param(
                    "--similarity",
                    "expected a cosine threshold in [-1, 1]",
                ));
            }
        }
        if dir.exists() && !dir.is_dir() {
            return Err(bad(dir, "the faceset must be a folder"));
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let records = existing_faceset(dir, settings)?.map_or(vec![], |f| f.faces);
        let thumbs = if filters.dedupe_pixels.is_some() {
            records
                .iter()
                .map(|r| {
                    let img = img_io::load(&dir.join(&r.file))?;
                    Ok(Some(thumbnail(&img)))
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![None; records.len()]
        };
        Ok(FacesetWriter {
            dir: dir.to_path_buf(),
            settings,
            filters,
            existing: records.len(),
            records,
            thumbs,
        })
    }

    /// Faces in the faceset now (old and new).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the faceset has no faces yet.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Faces the folder held before.
    pub fn existing(&self) -> usize {
        self.existing
    }

    /// Applies the filters to a candidate of `source`'s `frame` and writes it when kept.
    pub fn consider(&mut self, c: &Candidate, source: &Path, frame: u64) -> Result<Verdict> {
        let stem = source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "face".into());
        let file = format!("{stem}_{frame:06}_{}.png", c.index);
        if let Some((e, t)) = &self.filters.reference {
            let cos = mobilefacenet::cosine(&c.embedding, e);
            if cos < *t {
                return Ok(Verdict::NotSimilar(cos));
            }
        }
        let replaced = self.records.iter().position(|r| r.file == file);
        let others = |i: &usize| Some(*i) != replaced;
        if let Some(d) = self.filters.dedupe {
            if let Some(i) = (0..self.records.len()).filter(others).find(|&i| {
                1.0 - mobilefacenet::cosine(&c.embedding, &self.records[i].embedding) <= d
            }) {
                return Ok(Verdict::Duplicate(self.records[i].file.clone()));
            }
        }
        let thumb = self.filters.dedupe_pixels.map(|_| thumbnail(&c.image));
        if let (Some(d), Some(th)) = (self.filters.dedupe_pixels, &thumb) {
            if let Some(i) = (0..self.records.len()).filter(others).find(|&i| {
                self.thumbs[i].as_ref().is_some_and(|o| {
                    o.iter().zip(th).map(|(a, b)| (a - b).abs()).sum::<f32>() / th.len() as f32 <= d
                })
            }) {
                return Ok(Verdict::Duplicate(self.records[i].file.clone()));
            }
        }
        img_io::save(&self.dir.join(&file), &c.image)?;
        let s = self.settings;
        let a = &c.alignment;
        let record = FaceRecord {
            file: file.clone(),
            source: std::fs::canonicalize(source)
                .unwrap_or_else(|_| source.to_path_buf())
                .display()
                .to_string(),
            frame,
            face: c.index,
            bbox: c.face.detection.box_,
            score: c.face.detection.score,
            landmarks: c.face.landmarks.pts68.clone(),
            matrix: a.adjusted,
            legacy_matrix: a.legacy,
            size: s.size,
            centering: s.centering,
            coverage: s.coverage,
            padding: a.padding,
            offset: a.offset,
            average_distance: a.average_distance,
            embedding: c.embedding.clone(),
        };
        match replaced {
            Some(i) => {
                self.records[i] = record;
                self.thumbs[i] = thumb;
            }
            None => {
                self.records.push(record);
                self.thumbs.push(thumb);
            }
        }
        Ok(Verdict::Kept(file))
    }

    /// Writes the alignments file atomically; returns the number of faces. An error when the
    /// faceset would be empty.
    pub fn finish(self) -> Result<usize> {
        let path = self.dir.join(ALIGNMENTS);
        if self.records.is_empty() {
            return Err(bad(&path, "no face was kept: the faceset would be empty"));
        }
        // Compact JSON with one face per line (a faceset can hold thousands).
        let mut json = format!(
            "{{\"format\": {}, \"version\": {VERSION}, \"embedding_model\": {}, \"faces\": [\n",
            to_json(&FORMAT, &path)?,
            to_json(&mobilefacenet::MODEL, &path)?
        );
        for (i, r) in self.records.iter().enumerate() {
            json.push_str(&to_json(r, &path)?);
            json.push_str(if i + 1 < self.records.len() {
                ",\n"
            } else {
                "\n"
            });
        }
        json.push_str("]}\n");
        crate::util::atomic_write(&path, json.as_bytes())?;
        Ok(self.records.len())
    }
}

fn to_json<T: Serialize + ?Sized>(v: &T, path: &Path) -> Result<String> {
    serde_json::to_string(v).map_err(|e| bad(path, format!("cannot serialise: {e}")))
}

/// A 32×32 grey thumbnail (area-averaged mean of R, G, B in [0, 1]).
pub fn thumbnail(img: &RgbImage) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let planar = img_io::to_planar(img.as_raw(), w, h);
    let plane = w * h;
    let grey: Vec<f32> = (0..plane)
        .map(|i| (planar[i] + planar[plane + i] + planar[2 * plane + i]) / 3.0)
        .collect();
    if w != h {
        return grey;
    }
    resize_planar(&grey, 1, w, THUMB).unwrap_or(grey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_face_maps_to_itself() {
        // Landmarks placed on the mean face (scaled, rotated, shifted in a "frame").
        let m: Affine = [[180.0, -30.0, 400.0], [30.0, 180.0, 120.0]];
        let mut pts = vec![[0f32; 2]; 68];
        for (i, p) in MEAN_FACE_51.iter().enumerate() {
            let q = apply(&m, *p);
            pts[17 + i] = [q[0] as f32, q[1] as f32];
        }
        for (i, p) in pts.iter_mut().take(17).enumerate() {
            *p = [300.0 + 10.0 * i as f32, 300.0];
        }
        let a = align(&pts, 64, Centering::Legacy, 1.0).unwrap();
        assert_eq!(a.padding, 12); // round(64·0.375/2) = round(12.0)
        assert!(a.average_distance < 1e-6, "{}", a.average_distance);
        for (i, p) in MEAN_FACE_51.iter().enumerate() {
            let q = apply(&a.adjusted, [pts[17 + i][0] as f64, pts[17 + i][1] as f64]);
            let want = [12.0 + p[0] * 40.0, 12.0 + p[1] * 40.0];
            assert!((q[0] - want[0]).abs() < 1e-3 && (q[1] - want[1]).abs() < 1e-3);
        }
    }

    #[test]
    fn padding_follows_the_spec() {
        assert_eq!(padding(64, Centering::Face, 1.0).unwrap(), 16);
        assert_eq!(padding(256, Centering::Head, 1.0).unwrap(), 80);
        // 256·(0.5 + 0.75 − 1)/(1.5) = 42.67 → 43.
        assert_eq!(padding(256, Centering::Face, 0.75).unwrap(), 43);
        // 64·(0.375 + 0.625 − 1)/1.25 = 0.
        assert_eq!(padding(64, Centering::Legacy, 0.625).unwrap(), 0);
        assert!(padding(32, Centering::Face, 1.0).is_err());
        assert!(padding(64, Centering::Face, 0.5).is_err());
    }

    #[test]
    fn pose_recovers_a_known_projection() {
        // A head turned 20° and tilted 10°, projected with the pose camera: the fit must find the
        // same rotation and translation, and the centring offsets follow.
        let r = mat_mul(
            &rodrigues([0.0, 0.0, std::f64::consts::PI]),
            &mat_mul(&rodrigues([0.0, 0.35, 0.0]), &rodrigues([0.17, 0.0, 0.05])),
        );
        let t = [0.3, -0.8, 60.0];
        let mut unit = vec![[0.0; 2]; 68];
        for (k, &i) in POSE_LANDMARKS.iter().enumerate() {
            unit[i] = project(&r, &t, mirrored(MEAN_HEAD_26[k]));
        }
        let pose = HeadPose::solve(&unit).unwrap();
        assert!(pose.rms < 1e-9, "rms {}", pose.rms);
        for (got, want) in pose.rotation.iter().flatten().zip(r.iter().flatten()) {
            assert!((got - want).abs() < 1e-6, "{pose:?}");
        }
        for (got, want) in pose.translation.iter().zip(&t) {
            assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{pose:?}");
        }
        let truth = HeadPose {
            rotation: r,
            translation: t,
            rms: 0.0,
        };
        for c in [Centering::Face, Centering::Head] {
            let (a, b) = (pose.offset(c), truth.offset(c));
            assert!((a[0] - b[0]).abs() < 1e-8 && (a[1] - b[1]).abs() < 1e-8);
        }
    }

    #[test]
    fn resize_area_and_linear() {
        // 4×4 → 2×2 area: means of 2×2 blocks.
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let out = resize_planar(&src, 1, 4, 2).unwrap();
        assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5]);
        // A constant stays constant both ways, and 3 → 2 keeps the mean.
        let c = vec![0.25f32; 9];
        for t in [2, 5] {
            let o = resize_planar(&c, 1, 3, t).unwrap();
            assert!(o.iter().all(|v| (v - 0.25).abs() < 1e-6), "{o:?}");
        }
        let ramp: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let o = resize_planar(&ramp, 1, 3, 2).unwrap();
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean(&o) - mean(&ramp)).abs() < 1e-5);
        assert!(resize_planar(&ramp, 1, 4, 2).is_err());
    }

    #[test]
    fn min_size_parses() {
        assert_eq!(MinSize::parse("80").unwrap(), MinSize::Pixels(80.0));
        assert_eq!(MinSize::parse("80px").unwrap(), MinSize::Pixels(80.0));
        assert_eq!(MinSize::parse("10%").unwrap(), MinSize::Percent(10.0));
        assert_eq!(MinSize::parse("10%").unwrap().pixels(1280, 720), 72.0);
        for bad in ["", "-1", "abc", "120%"] {
            assert!(MinSize::parse(bad).is_err(), "{bad}");
        }
    }
}
