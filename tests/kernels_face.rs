//! Warp and mask post-processing kernels vs f64 references of OpenCV's semantics, on every path.
mod common;

use common::{assert_close, contexts, label, Rng};
use fswap::face::align::{invert, Affine};
use fswap::kernels::morph::Morph;
use fswap::kernels::warp::Warp;
use fswap::Tensor;

/// Bilinear interpolation of fp16 inputs in f32: output fp16 rounding (2^-11 relative) dominates;
/// the sample position is computed in f32 (≈1e-5 px at these sizes), adding < 1e-4.
const TOL: f64 = 2e-3;

/// `cv2.warpAffine(src, M, (wo, ho), flags=WARP_INVERSE_MAP | INTER_LINEAR, BORDER_CONSTANT 0)`.
fn warp_ref(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    m: &Affine,
    ho: usize,
    wo: usize,
) -> Vec<f64> {
    let px = |ch: usize, x: i64, y: i64| -> f64 {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            0.0
        } else {
            src[(ch * h + y as usize) * w + x as usize] as f64
        }
    };
    let mut out = Vec::new();
    for ch in 0..c {
        for oy in 0..ho {
            for ox in 0..wo {
                let sx = m[0][0] * ox as f64 + m[0][1] * oy as f64 + m[0][2];
                let sy = m[1][0] * ox as f64 + m[1][1] * oy as f64 + m[1][2];
                let (x0, y0) = (sx.floor() as i64, sy.floor() as i64);
                let (fx, fy) = (sx - x0 as f64, sy - y0 as f64);
                let top = px(ch, x0, y0) * (1.0 - fx) + px(ch, x0 + 1, y0) * fx;
                let bot = px(ch, x0, y0 + 1) * (1.0 - fx) + px(ch, x0 + 1, y0 + 1) * fx;
                out.push(top * (1.0 - fy) + bot * fy);
            }
        }
    }
    out
}

#[test]
fn warp_aligns_several_faces_from_one_frame() {
    let mut rng = Rng::new(51);
    let (c, h, w) = (3, 37, 53);
    let frame = rng.vec(c * h * w, 0.0, 1.0);
    // Two crops of 19×22 with rotations, scales and a crop partly outside the frame.
    let fits: [Affine; 2] = [
        [[0.9, -0.2, 4.0], [0.2, 0.9, -3.0]],
        [[1.7, 0.4, -30.0], [-0.4, 1.7, 5.0]],
    ];
    let (ho, wo) = (19, 22);
    let mut want = Vec::new();
    for m in &fits {
        want.extend(warp_ref(&frame, c, h, w, &invert(m).unwrap(), ho, wo));
    }
    for ctx in contexts() {
        let src = Tensor::from_f32(ctx, [1, c, h, w], &frame, "frame").unwrap();
        let dst = Tensor::new(ctx, [2, c, ho, wo], "crops").unwrap();
        let warp = Warp::new(ctx, &src, &dst).unwrap();
        warp.set(
            ctx,
            &[
                (invert(&fits[0]).unwrap(), 0),
                (invert(&fits[1]).unwrap(), 0),
            ],
        )
        .unwrap();
        ctx.run(&[warp.dispatch()]).unwrap();
        assert_close(
            &dst.to_f32(ctx).unwrap(),
            &want,
            TOL,
            TOL,
            &format!("warp {}", label(ctx)),
        );
        let e = warp.set(ctx, &[(fits[0], 0)]).err().unwrap().to_string();
        assert!(e.contains("1 matrices for 2 output samples"), "{e}");
    }
}

fn filter_ref(x: &[f32], h: usize, w: usize, op: &str, r: i64, vertical: bool) -> Vec<f64> {
    let mut out = Vec::new();
    for y in 0..h as i64 {
        for xx in 0..w as i64 {
            let (c, n) = if vertical {
                (y, h as i64)
            } else {
                (xx, w as i64)
            };
            let mut vals = Vec::new();
            for k in -r..=r {
                let mut i = c + k;
                if op == "mean" {
                    i = i.abs();
                    if i >= n {
                        i = 2 * n - 2 - i;
                    }
                } else if i < 0 || i >= n {
                    continue;
                }
                let (yy, xi) = if vertical { (i, xx) } else { (y, i) };
                vals.push(x[(yy * w as i64 + xi) as usize] as f64);
            }
            out.push(match op {
                "max" => vals.iter().cloned().fold(f64::MIN, f64::max),
                "min" => vals.iter().cloned().fold(f64::MAX, f64::min),
                _ => vals.iter().sum::<f64>() / (2 * r + 1) as f64,
            });
        }
    }
    out
}

#[test]
fn morphology_and_blur_match_opencv_rules() {
    let mut rng = Rng::new(52);
    let (h, w) = (23, 29);
    let x = rng.vec(h * w, 0.0, 1.0);
    for ctx in contexts() {
        let xt = Tensor::from_f32(ctx, [1, 1, h, w], &x, "mask").unwrap();
        let yt = Tensor::new(ctx, [1, 1, h, w], "out").unwrap();
        for (op, name, r, vertical) in [
            (
                Morph::Dilate {
                    radius: 5,
                    vertical: false,
                },
                "max",
                5,
                false,
            ),
            (
                Morph::Dilate {
                    radius: 5,
                    vertical: true,
                },
                "max",
                5,
                true,
            ),
            (
                Morph::Erode {
                    radius: 5,
                    vertical: true,
                },
                "min",
                5,
                true,
            ),
            (
                Morph::Blur {
                    radius: 3,
                    vertical: false,
                },
                "mean",
                3,
                false,
            ),
            (
                Morph::Blur {
                    radius: 5,
                    vertical: true,
                },
                "mean",
                5,
                true,
            ),
        ] {
            ctx.run(&[&op.bind(ctx, &xt, &yt).unwrap()]).unwrap();
            let want = filter_ref(&x, h, w, name, r, vertical);
            assert_close(
                &yt.to_f32(ctx).unwrap(),
                &want,
                1e-3,
                1e-3,
                &format!("{op:?} {}", label(ctx)),
            );
        }
        ctx.run(&[&Morph::Threshold(0.5).bind(ctx, &xt, &yt).unwrap()])
            .unwrap();
        let want: Vec<f64> = x
            .iter()
            .map(|&v| if v > 0.5 { 1.0 } else { v as f64 })
            .collect();
        assert_close(
            &yt.to_f32(ctx).unwrap(),
            &want,
            0.0,
            0.0,
            &format!("threshold {}", label(ctx)),
        );
        let e = Morph::Blur {
            radius: 30,
            vertical: false,
        }
        .bind(ctx, &xt, &yt)
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("radius 30"), "{e}");
    }
}
