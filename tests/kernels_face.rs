//! Warp and mask post-processing kernels vs f64 references of OpenCV's semantics, on every path.
mod common;

use common::reference::{filter_ref, warp_ref};
use common::{assert_close, contexts, label, Rng};
use fswap::face::align::{invert, Affine};
use fswap::kernels::morph::Morph;
use fswap::kernels::warp::Warp;
use fswap::Tensor;

/// Bilinear interpolation of fp16 inputs in f32: output fp16 rounding (2^-11 relative) dominates;
/// the sample position is computed in f32 (≈1e-5 px at these sizes), adding < 1e-4.
const TOL: f64 = 2e-3;

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

#[test]
fn colour_match_adds_the_masked_mean_difference() {
    use fswap::kernels::colour::mean_shift;
    let mut rng = Rng::new(53);
    let (n, h, w) = (2, 13, 11);
    let plane = h * w;
    let t = rng.vec(n * 3 * plane, 0.2, 0.9);
    let s = rng.vec(n * 3 * plane, 0.0, 0.6);
    let mut m = rng.vec(n * plane, 0.0, 1.0);
    m[plane..].iter_mut().for_each(|v| *v = 0.0); // sample 1: empty mask, copied unchanged
    let mut want = vec![0f64; t.len()];
    for b in 0..n {
        let msum: f64 = m[b * plane..(b + 1) * plane]
            .iter()
            .map(|&v| v as f64)
            .sum();
        for c in 0..3 {
            let base = (b * 3 + c) * plane;
            let d: f64 = (0..plane)
                .map(|i| m[b * plane + i] as f64 * (t[base + i] as f64 - s[base + i] as f64))
                .sum();
            let shift = if msum > 1e-6 { d / msum } else { 0.0 };
            for i in 0..plane {
                want[base + i] = (s[base + i] as f64 + shift).clamp(0.0, 1.0);
            }
        }
    }
    for ctx in contexts() {
        let tt = Tensor::from_f32(ctx, [n, 3, h, w], &t, "target").unwrap();
        let st = Tensor::from_f32(ctx, [n, 3, h, w], &s, "swapped").unwrap();
        let mt = Tensor::from_f32(ctx, [n, 1, h, w], &m, "mask").unwrap();
        let out = Tensor::new(ctx, [n, 3, h, w], "out").unwrap();
        ctx.run(&[&mean_shift(ctx, &tt, &st, &mt, &out).unwrap()])
            .unwrap();
        assert_close(
            &out.to_f32(ctx).unwrap(),
            &want,
            1e-3,
            1e-3,
            &format!("colour match {}", label(ctx)),
        );
    }
}
