//! Landmarks with 3DDFA_V2 (spec alignment.md A.2): from a face box to 68 points, 5 alignment
//! points and the head pose, with the official pre- and post-processing.
//!
//! 1. **ROI** ([`Roi::from_box`], `parse_roi_box_from_bbox`): a square of side `int(1.58·s)` where
//!    `s` is the mean of the box's width and height, centred on the box centre moved down by `0.14·s`.
//!    The box is `f32` (as detectors give it); the roi is computed in `f64` from those values.
//! 2. **Crop** ([`crop_bgr`], `crop_img` + `cv2.resize`): the roi rounded half-to-even (Python
//!    `round`), black outside the image, then resized to 120×120 with OpenCV's `INTER_LINEAR`
//!    reproduced bit for bit on the host (half-pixel centres, edges clamped, 11-bit fixed-point
//!    weights, OpenCV's rounding); channels in BGR order as `cv2.imread` gives them.
//! 3. **Normalise**: `(pixel − 127.5)/128`, CHW.
//! 4. **Network** ([`Tddfa`]): 62 normalised parameters and the 136 `fc_lm` values.
//! 5. **Decode** ([`decode`]): `p = out·std + mean`; `[sR | t] = p[0..12]` (3×4 row-major),
//!    `S = u_base + W_shp·p[12..52] + W_exp·p[52..62]` read as 68 columns (x, y, z), `V = sR·S + t`;
//!    then `similar_transform`: `x − 1`, `120 − y`, `z − 1`, scaled by the roi side / 120 and moved to
//!    the roi origin; depth scaled by the mean scale, its minimum subtracted.
//! 6. **Pose** ([`Pose::from_params`], `P2sRt` + `matrix2angle` of utils/pose.py).
//! 7. **fc_lm** ([`lm_head_points`]): 68 x then 68 y, crop pixel `60·v + 60` (the convention that fits
//!    the BFM points), mapped to the image like step 5; an independent check on the 62-param path.
//! 8. **5 points** ([`five_points`]): mean of points 36–41 and 42–47 (eye centres), 30 (nose tip),
//!    48 and 54 (mouth corners), in the SCRFD / ArcFace order: image-left eye first.
//!
//! Post-processing is `f64` on the host; the network is fp16 on the GPU (f32 accumulation).

use image::RgbImage;

use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::models::tddfa::{Bfm, Tddfa, EXP_DIM, LM, OUTPUTS, PARAMS, POINTS, SHAPE_DIM, SIZE};

/// A square region of the image, in pixels, as floats (`[x0, y0, x1, y1]`, official `roi_box`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Roi {
    /// Left.
    pub x0: f64,
    /// Top.
    pub y0: f64,
    /// Right.
    pub x1: f64,
    /// Bottom.
    pub y1: f64,
}

impl Roi {
    /// `parse_roi_box_from_bbox` for a detection box `[x1, y1, x2, y2]` in image pixels.
    pub fn from_box(bbox: [f32; 4]) -> Result<Roi> {
        let [l, t, r, b] = bbox.map(f64::from);
        if !bbox.iter().all(|v| v.is_finite()) || r <= l || b <= t {
            return Err(Error::param(
                "landmark roi",
                format!("box {bbox:?} must be finite with x2 > x1 and y2 > y1"),
            ));
        }
        let old = (r - l + b - t) / 2.0;
        let cx = r - (r - l) / 2.0;
        let cy = b - (b - t) / 2.0 + old * 0.14;
        let side = (old * 1.58).trunc();
        if side < 1.0 {
            return Err(Error::param(
                "landmark roi",
                format!("box {bbox:?} is too small (roi side {side})"),
            ));
        }
        let (x0, y0) = (cx - side / 2.0, cy - side / 2.0);
        Ok(Roi {
            x0,
            y0,
            x1: x0 + side,
            y1: y0 + side,
        })
    }

    /// `parse_roi_box_from_landmark` (video tracking, the official second pass): the landmarks'
    /// bounding box made square (side = its larger extent), then grown to that square's diagonal.
    pub fn from_landmarks(pts: &[[f32; 2]]) -> Result<Roi> {
        if pts.is_empty() || pts.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::param(
                "landmark roi",
                "landmarks must be non-empty and finite",
            ));
        }
        let (mut lo, mut hi) = ([f64::MAX; 2], [f64::MIN; 2]);
        for p in pts {
            for k in 0..2 {
                lo[k] = lo[k].min(p[k] as f64);
                hi[k] = hi[k].max(p[k] as f64);
            }
        }
        let centre = [(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0];
        let radius = (hi[0] - lo[0]).max(hi[1] - lo[1]) / 2.0;
        let side = (2.0 * radius) * std::f64::consts::SQRT_2;
        if side <= 0.0 {
            return Err(Error::param("landmark roi", "landmarks span no area"));
        }
        let (x0, y0) = (centre[0] - side / 2.0, centre[1] - side / 2.0);
        Ok(Roi {
            x0,
            y0,
            x1: x0 + side,
            y1: y0 + side,
        })
    }

    /// The crop rectangle `[sx, sy, ex, ey]`: each side rounded half to even, as Python's `round`.
    pub fn crop_rect(&self) -> [i64; 4] {
        [self.x0, self.y0, self.x1, self.y1].map(|v| v.round_ties_even() as i64)
    }
}

/// Head pose from the 3DMM's rotation, in degrees (3DDFA_V2 `calc_pose`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pose {
    /// Rotation about the vertical axis, `asin(R[2,0])`.
    pub yaw: f32,
    /// Rotation about the horizontal axis, `atan2(R[2,1], R[2,2])`.
    pub pitch: f32,
    /// In-plane rotation, `atan2(R[1,0], R[0,0])`.
    pub roll: f32,
}

impl Pose {
    /// `P2sRt` (rows 1 and 2 of `sR` normalised, row 3 their cross product) and `matrix2angle`
    /// (gimbal cases at `|R[2,0]| > 0.998`), from de-normalised parameters.
    pub fn from_params(p: &[f64; PARAMS]) -> Pose {
        let unit = |r: [f64; 3]| {
            let n = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
            r.map(|v| v / n)
        };
        let r1 = unit([p[0], p[1], p[2]]);
        let r2 = unit([p[4], p[5], p[6]]);
        let r3 = [
            r1[1] * r2[2] - r1[2] * r2[1],
            r1[2] * r2[0] - r1[0] * r2[2],
            r1[0] * r2[1] - r1[1] * r2[0],
        ];
        let (x, y, z) = if r3[0] > 0.998 {
            (std::f64::consts::FRAC_PI_2, (-r1[1]).atan2(-r1[2]), 0.0)
        } else if r3[0] < -0.998 {
            (-std::f64::consts::FRAC_PI_2, r1[1].atan2(r1[2]), 0.0)
        } else {
            let x = r3[0].asin();
            let c = x.cos();
            (
                x,
                (r3[1] / c).atan2(r3[2] / c),
                (r2[0] / c).atan2(r1[0] / c),
            )
        };
        Pose {
            yaw: x.to_degrees() as f32,
            pitch: y.to_degrees() as f32,
            roll: z.to_degrees() as f32,
        }
    }
}

/// One face's landmarks, in image pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct FaceLandmarks {
    /// The roi the crop was taken from.
    pub roi: Roi,
    /// The 62 de-normalised 3DMM parameters.
    pub params: [f32; PARAMS],
    /// The 68 points (x, y) reconstructed from the parameters (iBUG 68 order).
    pub pts68: Vec<[f32; 2]>,
    /// Depth of each of the 68 points, in image-pixel units, smallest 0; larger is nearer the
    /// camera (the nose tip of a frontal face is the largest).
    pub depth: Vec<f32>,
    /// The 68 points of the `fc_lm` head (a direct 2-D regression, for checks).
    pub lm68: Vec<[f32; 2]>,
    /// Eye centres (image-left first), nose tip, mouth corners (image-left first).
    pub pts5: [[f32; 2]; 5],
    /// Head pose.
    pub pose: Pose,
}

impl FaceLandmarks {
    /// The 5 points in f64, as [`crate::face::align`] takes them.
    pub fn pts5_f64(&self) -> [[f64; 2]; 5] {
        self.pts5.map(|p| p.map(f64::from))
    }
}

/// The 68 3-D points of de-normalised parameters, in image pixels: x, y and depth
/// (`similar_transform` of the sparse reconstruction).
pub fn reconstruct(bfm: &Bfm, p: &[f64; PARAMS], roi: &Roi) -> Vec<[f64; 3]> {
    let size = SIZE as f64;
    let (sx, sy) = ((roi.x1 - roi.x0) / size, (roi.y1 - roi.y0) / size);
    let mut pts: Vec<[f64; 3]> = (0..POINTS)
        .map(|j| {
            let mut s = [0f64; 3];
            for (k, sk) in s.iter_mut().enumerate() {
                let row = 3 * j + k;
                let mut v = bfm.u_base[row] as f64;
                for (i, a) in p[12..12 + SHAPE_DIM].iter().enumerate() {
                    v += bfm.w_shp_base[row * SHAPE_DIM + i] as f64 * a;
                }
                for (i, a) in p[12 + SHAPE_DIM..PARAMS].iter().enumerate() {
                    v += bfm.w_exp_base[row * EXP_DIM + i] as f64 * a;
                }
                *sk = v;
            }
            let v = |r: usize| {
                p[4 * r] * s[0] + p[4 * r + 1] * s[1] + p[4 * r + 2] * s[2] + p[4 * r + 3]
            };
            let (x, y, z) = (v(0) - 1.0, size - v(1), v(2) - 1.0);
            [x * sx + roi.x0, y * sy + roi.y0, z * (sx + sy) / 2.0]
        })
        .collect();
    let zmin = pts.iter().map(|p| p[2]).fold(f64::INFINITY, f64::min);
    for p in &mut pts {
        p[2] -= zmin;
    }
    pts
}

/// The `fc_lm` head's 136 values (68 x, then 68 y) as image pixels: crop pixel `60·v + 60`,
/// mapped through the roi like the reconstructed points.
pub fn lm_head_points(lm: &[f32], roi: &Roi) -> Vec<[f32; 2]> {
    let half = SIZE as f64 / 2.0;
    let (sx, sy) = (
        (roi.x1 - roi.x0) / SIZE as f64,
        (roi.y1 - roi.y0) / SIZE as f64,
    );
    (0..POINTS)
        .map(|j| {
            let x = lm[j] as f64 * half + half;
            let y = lm[POINTS + j] as f64 * half + half;
            [(x * sx + roi.x0) as f32, (y * sy + roi.y0) as f32]
        })
        .collect()
}

/// The 5 alignment points of 68 (iBUG order): mean of 36–41, mean of 42–47, 30, 48, 54.
/// `pts68` must hold the 68 points (it panics on fewer).
pub fn five_points(pts68: &[[f32; 2]]) -> [[f32; 2]; 5] {
    let mean = |r: std::ops::Range<usize>| {
        let n = r.len() as f64;
        let (mut x, mut y) = (0f64, 0f64);
        for p in &pts68[r] {
            x += p[0] as f64;
            y += p[1] as f64;
        }
        [(x / n) as f32, (y / n) as f32]
    };
    [mean(36..42), mean(42..48), pts68[30], pts68[48], pts68[54]]
}

/// Decodes one face's 198 network outputs (62 normalised parameters, 136 `fc_lm` values) for
/// the crop taken from `roi`.
pub fn decode(bfm: &Bfm, out: &[f32], roi: &Roi) -> Result<FaceLandmarks> {
    if out.len() != OUTPUTS {
        return Err(Error::shape(
            "3ddfa decode",
            format!(
                "{} outputs, expected {OUTPUTS} (62 params + 136 fc_lm)",
                out.len()
            ),
        ));
    }
    let p = bfm.denormalise(&out[..PARAMS]);
    let pts = reconstruct(bfm, &p, roi);
    let pts68: Vec<[f32; 2]> = pts.iter().map(|q| [q[0] as f32, q[1] as f32]).collect();
    Ok(FaceLandmarks {
        roi: *roi,
        params: p.map(|v| v as f32),
        depth: pts.iter().map(|q| q[2] as f32).collect(),
        lm68: lm_head_points(&out[PARAMS..PARAMS + LM], roi),
        pts5: five_points(&pts68),
        pose: Pose::from_params(&p),
        pts68,
    })
}

/// Per output index: the two source indices and their 11-bit weights, as `cv2.resize`
/// INTER_LINEAR computes them: `scale = 1/(dst/src)`, `f = float((d + 0.5)·scale − 0.5)`,
/// `s = floor(f)`, weights `round((1 − f)·2048)` and `round(f·2048)` (each half to even).
/// Horizontally (`clamp`) a tap left of 0 or at/after the last pixel becomes (edge pixel, 2048);
/// vertically the weights stay and only the two row indices are clipped into the image.
fn taps(src: usize, dst: usize, clamp: bool) -> Vec<(usize, usize, i32, i32)> {
    let scale = 1.0 / (dst as f64 / src as f64);
    let last = src as i64 - 1;
    (0..dst)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            let mut f = f - s as f32;
            if clamp && s < 0 {
                s = 0;
                f = 0.0;
            }
            if clamp && s >= last {
                s = last;
                f = 0.0;
            }
            let c0 = ((1.0f32 - f) * 2048.0).round_ties_even() as i32;
            let c1 = (f * 2048.0).round_ties_even() as i32;
            (
                s.clamp(0, last) as usize,
                (s + 1).clamp(0, last) as usize,
                c0,
                c1,
            )
        })
        .collect()
}

/// The 120×120 crop of `roi` in BGR, HWC, 8-bit: `crop_img` (black outside the image) followed by
/// `cv2.resize(..., INTER_LINEAR)` with OpenCV's fixed-point arithmetic.
pub fn crop_bgr(img: &RgbImage, roi: &Roi) -> Result<Vec<u8>> {
    let [sx, sy, ex, ey] = roi.crop_rect();
    let (dw, dh) = (ex - sx, ey - sy);
    if dw < 1 || dh < 1 || dw > 1 << 20 || dh > 1 << 20 {
        return Err(Error::param(
            "landmark crop",
            format!("crop {dw}x{dh} from roi {roi:?}"),
        ));
    }
    let (w, h) = (img.width() as i64, img.height() as i64);
    let raw = img.as_raw();
    // Canvas pixel (x, y) of the official crop: the image pixel, or black outside it.
    let px = |x: usize, y: usize, c: usize| -> i32 {
        let (ix, iy) = (sx + x as i64, sy + y as i64);
        if ix < 0 || iy < 0 || ix >= w || iy >= h {
            0
        } else {
            raw[((iy * w + ix) * 3) as usize + c] as i32
        }
    };
    let xt = taps(dw as usize, SIZE, true);
    let yt = taps(dh as usize, SIZE, false);
    // Horizontal pass of one canvas row into `SIZE × 3` ints, BGR.
    let hrow = |y: usize, row: &mut [i32]| {
        for (d, &(x0, x1, c0, c1)) in xt.iter().enumerate() {
            for c in 0..3 {
                row[d * 3 + c] = px(x0, y, 2 - c) * c0 + px(x1, y, 2 - c) * c1;
            }
        }
    };
    let mut out = vec![0u8; SIZE * SIZE * 3];
    let (mut r0, mut r1) = (vec![0i32; SIZE * 3], vec![0i32; SIZE * 3]);
    for (d, &(y0, y1, b0, b1)) in yt.iter().enumerate() {
        hrow(y0, &mut r0);
        hrow(y1, &mut r1);
        for (i, o) in out[d * SIZE * 3..(d + 1) * SIZE * 3].iter_mut().enumerate() {
            let v = (((b0 * (r0[i] >> 4)) >> 16) + ((b1 * (r1[i] >> 4)) >> 16) + 2) >> 2;
            *o = v.clamp(0, 255) as u8;
        }
    }
    Ok(out)
}

/// Writes a BGR HWC 120×120 crop into `dst` (`3·120·120` values, CHW) as `(pixel − 127.5)/128`.
pub fn normalise(bgr: &[u8], dst: &mut [f32]) {
    let plane = SIZE * SIZE;
    for (i, px) in bgr.chunks_exact(3).enumerate() {
        for c in 0..3 {
            dst[c * plane + i] = (px[c] as f32 - 127.5) / 128.0;
        }
    }
}

/// Landmarks of one face given its detection box `[x1, y1, x2, y2]` (image pixels).
pub fn landmarks(
    ctx: &Context,
    net: &Tddfa,
    img: &RgbImage,
    bbox: [f32; 4],
) -> Result<FaceLandmarks> {
    let mut v = landmarks_rois(ctx, net, img, &[Roi::from_box(bbox)?])?;
    Ok(v.remove(0))
}

/// Landmarks of several faces of one image, from their boxes, run `net.batch` at a time.
pub fn landmarks_batch(
    ctx: &Context,
    net: &Tddfa,
    img: &RgbImage,
    boxes: &[[f32; 4]],
) -> Result<Vec<FaceLandmarks>> {
    let rois = boxes
        .iter()
        .map(|b| Roi::from_box(*b))
        .collect::<Result<Vec<_>>>()?;
    landmarks_rois(ctx, net, img, &rois)
}

/// Landmarks from rois directly (e.g. [`Roi::from_landmarks`] of the previous frame), run
/// `net.batch` at a time: crop on the host, one plan run and one readback per batch.
pub fn landmarks_rois(
    ctx: &Context,
    net: &Tddfa,
    img: &RgbImage,
    rois: &[Roi],
) -> Result<Vec<FaceLandmarks>> {
    let per = 3 * SIZE * SIZE;
    let mut out = Vec::with_capacity(rois.len());
    let mut input = vec![0f32; net.batch * per];
    for chunk in rois.chunks(net.batch) {
        for (i, roi) in chunk.iter().enumerate() {
            normalise(&crop_bgr(img, roi)?, &mut input[i * per..(i + 1) * per]);
        }
        net.input.write_f32(ctx, &input)?;
        net.plan.run(ctx)?;
        let y = net.output.to_f32(ctx)?;
        for (i, roi) in chunk.iter().enumerate() {
            out.push(decode(&net.bfm, &y[i * OUTPUTS..(i + 1) * OUTPUTS], roi)?);
        }
    }
    Ok(out)
}
