//! Face detection with [`FaceBoxes`], exactly as 3DDFA_V2's `FaceBoxes.__call__` does it (spec
//! alignment.md §A.3): resize by the official rule with OpenCV's `INTER_LINEAR`, B, G, R planes
//! minus the means, the network on the GPU, then on the host: softmax, prior boxes, decoding with
//! the variances, score threshold, top-k, NMS and the final score filter. The heads are the one
//! readback.

use image::RgbImage;

use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::models::faceboxes::{
    feature_maps, input_size, FaceBoxes, InputSize, RawOutputs, MEANS_BGR, MIN_SIZES, STEPS,
};

/// Box variances of the decoder: centre offsets ×0.1, log sizes ×0.2 (`cfg['variance']`).
pub const VARIANCES: [f64; 2] = [0.1, 0.2];
/// Candidates need a score above this (`confidence_threshold`).
pub const CONFIDENCE_THRESHOLD: f32 = 0.05;
/// At most this many candidates, best first, go to NMS (`top_k`).
pub const TOP_K: usize = 5000;
/// NMS suppresses a box whose IoU with a kept one is at least this (`nms_threshold`).
pub const NMS_THRESHOLD: f32 = 0.3;
/// At most this many boxes survive NMS (`keep_top_k`).
pub const KEEP_TOP_K: usize = 750;
/// Detections returned need a score above this (`vis_thres`).
pub const VIS_THRESHOLD: f32 = 0.5;

/// One detected face.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// `[x1, y1, x2, y2]` in pixels of the original image (not clipped to it).
    pub box_: [f32; 4],
    /// Face probability (softmax of the two class logits).
    pub score: f32,
}

/// `cv2.resize(image, (width, height), interpolation=INTER_LINEAR)` on 8-bit pixels, as OpenCV 4
/// computes it: half-pixel centres, no antialiasing, 11-bit fixed-point coefficients rounded from
/// f32 (half to even), an exact horizontal pass, and the vertical pass of its vector path
/// (`((S0>>4)·b0 >> 16) + ((S1>>4)·b1 >> 16)`, then `(v + 2) >> 2`). Its scalar row tails round
/// once instead, which can differ by one level in a few pixels per row. An exact 2× reduction,
/// where OpenCV switches to `INTER_AREA`, gives the same `(a + b + c + d + 2) >> 2` here.
pub fn resize_linear(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (sw, sh) = image.dimensions();
    if (sw, sh) == (width, height) {
        return image.clone();
    }
    let xs = linear_taps(sw as usize, width as usize);
    let ys = linear_taps(sh as usize, height as usize);
    let src = image.as_raw();
    let stride = 3 * sw as usize;
    // Horizontal pass of every source row that some output row reads.
    let mut rows: Vec<Option<Vec<i32>>> = vec![None; sh as usize];
    let hpass = |y: usize| -> Vec<i32> {
        let row = &src[y * stride..(y + 1) * stride];
        let mut out = Vec::with_capacity(3 * width as usize);
        for &(i, a0, a1) in &xs {
            let i1 = (i + 1).min(sw as usize - 1);
            for c in 0..3 {
                out.push(row[3 * i + c] as i32 * a0 + row[3 * i1 + c] as i32 * a1);
            }
        }
        out
    };
    let mut dst = Vec::with_capacity(3 * (width * height) as usize);
    for &(i, b0, b1) in &ys {
        let i1 = (i + 1).min(sh as usize - 1);
        for r in [i, i1] {
            if rows[r].is_none() {
                rows[r] = Some(hpass(r));
            }
        }
        let (r0, r1) = (rows[i].as_ref().unwrap(), rows[i1].as_ref().unwrap());
        for (s0, s1) in r0.iter().zip(r1) {
            let v = (((s0 >> 4) * b0) >> 16) + (((s1 >> 4) * b1) >> 16);
            dst.push(((v + 2) >> 2).clamp(0, 255) as u8);
        }
    }
    RgbImage::from_raw(width, height, dst).expect("sized above")
}

/// Per output index: source index and the two 11-bit coefficients (OpenCV's `xofs`, `ialpha`).
fn linear_taps(src: usize, dst: usize) -> Vec<(usize, i32, i32)> {
    let scale = 1.0 / (dst as f64 / src as f64);
    (0..dst)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut i = f.floor() as i64;
            let mut f = f - i as f32;
            if i < 0 {
                (i, f) = (0, 0.0);
            }
            if i >= src as i64 - 1 {
                (i, f) = (src as i64 - 1, 0.0);
            }
            let q = |v: f32| (v * 2048.0).round_ties_even() as i32;
            (i as usize, q(1.0 - f), q(f))
        })
        .collect()
}

/// The network input for an RGB image, as `[3, h, w]` values (the official rule's size): resized
/// with [`resize_linear`] when the rule scales it, then B, G, R planes minus [`MEANS_BGR`].
pub fn preprocess(image: &RgbImage) -> Vec<f32> {
    let size = input_size(image.height() as usize, image.width() as usize);
    let resized;
    let img = if size.scale == 1.0 {
        image
    } else {
        resized = resize_linear(image, size.width as u32, size.height as u32);
        &resized
    };
    let plane = size.height * size.width;
    let mut out = vec![0.0f32; 3 * plane];
    for (p, px) in img.pixels().enumerate() {
        for (c, (rgb_index, mean)) in [2usize, 1, 0].iter().zip(MEANS_BGR).enumerate() {
            out[c * plane + p] = px.0[*rgb_index] as f32 - mean;
        }
    }
    out
}

/// The prior boxes `(cx, cy, w, h)`, normalised by the network input size, in the heads' order:
/// per source, row, column, then anchor (size, then y offset, then x offset).
pub fn prior_boxes(input: InputSize) -> Vec<[f64; 4]> {
    let (h, w) = (input.height as f64, input.width as f64);
    let mut out = Vec::new();
    for ((step, sizes), (fh, fw)) in STEPS.iter().zip(MIN_SIZES).zip(feature_maps(input)) {
        let step = *step as f64;
        for i in 0..fh {
            for j in 0..fw {
                for &m in sizes {
                    let offsets: &[f64] = match m {
                        32 => &[0.0, 0.25, 0.5, 0.75],
                        64 => &[0.0, 0.5],
                        _ => &[0.5],
                    };
                    let (sw, sh) = (m as f64 / w, m as f64 / h);
                    for oy in offsets {
                        for ox in offsets {
                            out.push([
                                (j as f64 + ox) * step / w,
                                (i as f64 + oy) * step / h,
                                sw,
                                sh,
                            ]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Greedy NMS of Fast R-CNN's `cpu_nms` over `dets` sorted best first: areas and overlaps count
/// `+1` pixel, and a box is dropped when its IoU with a kept box is at least `threshold`.
/// Returns the kept indices, in order.
pub fn nms(dets: &[Detection], threshold: f32) -> Vec<usize> {
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut suppressed = vec![false; dets.len()];
    let mut keep = Vec::new();
    for i in 0..dets.len() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let a = &dets[i].box_;
        let area_a = area(a);
        for j in i + 1..dets.len() {
            if suppressed[j] {
                continue;
            }
            let c = &dets[j].box_;
            let iw = (a[2].min(c[2]) - a[0].max(c[0]) + 1.0).max(0.0);
            let ih = (a[3].min(c[3]) - a[1].max(c[1]) + 1.0).max(0.0);
            let inter = iw * ih;
            if inter / (area_a + area(c) - inter) >= threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// The official post-processing of raw outputs for an image of `input`'s rule: decode against the
/// priors with [`VARIANCES`], scale to image pixels (÷ `input.scale`), softmax, keep scores above
/// [`CONFIDENCE_THRESHOLD`], the best [`TOP_K`], [`nms`], the first [`KEEP_TOP_K`], and return
/// those scoring above [`VIS_THRESHOLD`], best first.
pub fn postprocess(raw: &RawOutputs, input: InputSize) -> Result<Vec<Detection>> {
    let priors = prior_boxes(input);
    if raw.loc.len() != 4 * priors.len() || raw.conf.len() != 2 * priors.len() {
        return Err(Error::shape(
            "faceboxes postprocess",
            format!(
                "{} loc and {} conf values for {} priors",
                raw.loc.len(),
                raw.conf.len(),
                priors.len()
            ),
        ));
    }
    let (w, h) = (input.width as f64, input.height as f64);
    let mut dets: Vec<Detection> = Vec::new();
    for (k, p) in priors.iter().enumerate() {
        let (c0, c1) = (raw.conf[2 * k] as f64, raw.conf[2 * k + 1] as f64);
        let score = (1.0 / (1.0 + (c0 - c1).exp())) as f32;
        if score <= CONFIDENCE_THRESHOLD {
            continue;
        }
        let l = &raw.loc[4 * k..4 * k + 4];
        let cx = p[0] + l[0] as f64 * VARIANCES[0] * p[2];
        let cy = p[1] + l[1] as f64 * VARIANCES[0] * p[3];
        let bw = p[2] * (l[2] as f64 * VARIANCES[1]).exp();
        let bh = p[3] * (l[3] as f64 * VARIANCES[1]).exp();
        let s = input.scale;
        dets.push(Detection {
            box_: [
                ((cx - bw / 2.0) * w / s) as f32,
                ((cy - bh / 2.0) * h / s) as f32,
                ((cx + bw / 2.0) * w / s) as f32,
                ((cy + bh / 2.0) * h / s) as f32,
            ],
            score,
        });
    }
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    dets.truncate(TOP_K);
    let kept = nms(&dets, NMS_THRESHOLD);
    Ok(kept
        .into_iter()
        .take(KEEP_TOP_K)
        .map(|i| dets[i])
        .filter(|d| d.score > VIS_THRESHOLD)
        .collect())
}

/// Detects faces in `image` (which must have the size `model` was built for): host preprocessing,
/// the plan, one readback of the heads, host post-processing. Boxes are in image pixels, best
/// first.
pub fn detect(ctx: &Context, model: &FaceBoxes, image: &RgbImage) -> Result<Vec<Detection>> {
    let (w, h) = image.dimensions();
    if (h as usize, w as usize) != (model.image_height, model.image_width) {
        return Err(Error::shape(
            "detect",
            format!(
                "image is {h}x{w}, the FaceBoxes plan was built for {}x{}",
                model.image_height, model.image_width
            ),
        ));
    }
    model.input.write_f32(ctx, &preprocess(image))?;
    model.plan.run(ctx)?;
    let raw = model.read_outputs(ctx)?;
    postprocess(&raw, model.input_size)
}
