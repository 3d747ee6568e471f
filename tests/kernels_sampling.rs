//! Resampling and pooling vs the f64 reference on every storage path.
mod common;

use common::reference::{bilinear, nearest, pool};
use common::{assert_close, contexts, label, Rng};
use fswap::kernels::pool::Pool;
use fswap::kernels::resample::Resample;
use fswap::Tensor;

/// Interpolation and pooling are convex combinations of fp16 inputs in f32: the only error that
/// matters is the output's fp16 rounding (≤ 2^-11 relative).
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-3;

#[test]
fn bilinear_and_nearest_any_size() {
    let mut rng = Rng::new(31);
    // (n, c, h, w, ho, wo): ×2, odd up, down, non-uniform, 1-pixel edge cases.
    for &(n, c, h, w, ho, wo) in &[
        (2, 3, 5, 7, 10, 14),
        (1, 5, 7, 3, 11, 8),
        (1, 2, 16, 12, 5, 7),
        (2, 1, 1, 4, 3, 9),
        (1, 3, 9, 9, 1, 1),
    ] {
        let x = rng.vec(n * c * h * w, -1.0, 1.0);
        let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for ctx in contexts() {
            let xt = Tensor::from_f32(ctx, [n, c, h, w], &x, "x").unwrap();
            for (mode, want) in [
                (
                    Resample::Bilinear {
                        align_corners: true,
                    },
                    bilinear(&xd, n * c, h, w, ho, wo, true),
                ),
                (
                    Resample::Bilinear {
                        align_corners: false,
                    },
                    bilinear(&xd, n * c, h, w, ho, wo, false),
                ),
                (Resample::Nearest, nearest(&xd, n * c, h, w, ho, wo)),
            ] {
                let yt = Tensor::new(ctx, [n, c, ho, wo], "y").unwrap();
                ctx.run(&[&mode.bind(ctx, &xt, &yt).unwrap()]).unwrap();
                assert_close(
                    &yt.to_f32(ctx).unwrap(),
                    &want,
                    ATOL,
                    RTOL,
                    &format!("{mode:?} {h}x{w}->{ho}x{wo} {}", label(ctx)),
                );
            }
        }
    }
}

#[test]
fn pixel_shuffle() {
    let mut rng = Rng::new(32);
    for &(n, c, h, w, r) in &[(2, 3, 3, 5, 2), (1, 2, 4, 3, 3)] {
        let x = rng.vec(n * c * r * r * h * w, -1.0, 1.0);
        let (ho, wo) = (h * r, w * r);
        let mut want = vec![0f64; n * c * ho * wo];
        for b in 0..n {
            for ch in 0..c {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let ci = ch * r * r + (oy % r) * r + ox % r;
                        want[((b * c + ch) * ho + oy) * wo + ox] =
                            x[((b * c * r * r + ci) * h + oy / r) * w + ox / r] as f64;
                    }
                }
            }
        }
        for ctx in contexts() {
            let xt = Tensor::from_f32(ctx, [n, c * r * r, h, w], &x, "x").unwrap();
            let yt = Tensor::new(ctx, [n, c, ho, wo], "y").unwrap();
            ctx.run(&[&Resample::PixelShuffle(r).bind(ctx, &xt, &yt).unwrap()])
                .unwrap();
            assert_close(
                &yt.to_f32(ctx).unwrap(),
                &want,
                0.0,
                0.0,
                &format!("pixel shuffle r{r} {}", label(ctx)),
            );
        }
    }
}

#[test]
fn pooling() {
    let mut rng = Rng::new(33);
    for &(n, c, h, w, k, s, pad) in &[
        (2, 3, 7, 9, 3, 2, 1),
        (1, 5, 8, 8, 2, 2, 0),
        (1, 2, 11, 5, 3, 1, 1),
        (2, 3, 9, 13, 5, 3, 2),
    ] {
        let x = rng.vec(n * c * h * w, -1.0, 1.0);
        let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for ctx in contexts() {
            let xt = Tensor::from_f32(ctx, [n, c, h, w], &x, "x").unwrap();
            for (op, mode) in [
                (Pool::Max { k, stride: s, pad }, "max"),
                (
                    Pool::Avg {
                        k,
                        stride: s,
                        pad,
                        count_include_pad: true,
                    },
                    "avg_incl",
                ),
                (
                    Pool::Avg {
                        k,
                        stride: s,
                        pad,
                        count_include_pad: false,
                    },
                    "avg_excl",
                ),
            ] {
                let (want, ho, wo) = pool(&xd, n * c, h, w, k, s, pad, mode);
                let yt = Tensor::new(ctx, [n, c, ho, wo], "y").unwrap();
                ctx.run(&[&op.bind(ctx, &xt, &yt).unwrap()]).unwrap();
                assert_close(
                    &yt.to_f32(ctx).unwrap(),
                    &want,
                    ATOL,
                    RTOL,
                    &format!("{op:?} {h}x{w} {}", label(ctx)),
                );
            }
            let want: Vec<f64> = xd
                .chunks(h * w)
                .map(|r| r.iter().sum::<f64>() / (h * w) as f64)
                .collect();
            let yt = Tensor::new(ctx, [n, c, 1, 1], "y").unwrap();
            ctx.run(&[&Pool::GlobalAvg.bind(ctx, &xt, &yt).unwrap()])
                .unwrap();
            assert_close(
                &yt.to_f32(ctx).unwrap(),
                &want,
                ATOL,
                RTOL,
                &format!("global avg {h}x{w} {}", label(ctx)),
            );
        }
    }
}

#[test]
fn global_average_of_a_large_plane() {
    // 224×224 plane: many quads per lane of the workgroup reduction.
    let mut rng = Rng::new(34);
    let x = rng.vec(2 * 3 * 224 * 224, 0.0, 1.0);
    let want: Vec<f64> = x
        .chunks(224 * 224)
        .map(|r| r.iter().map(|&v| v as f64).sum::<f64>() / (224.0 * 224.0))
        .collect();
    for ctx in contexts() {
        let xt = Tensor::from_f32(ctx, [2, 3, 224, 224], &x, "x").unwrap();
        let yt = Tensor::new(ctx, [2, 3, 1, 1], "y").unwrap();
        ctx.run(&[&Pool::GlobalAvg.bind(ctx, &xt, &yt).unwrap()])
            .unwrap();
        assert_close(
            &yt.to_f32(ctx).unwrap(),
            &want,
            ATOL,
            RTOL,
            &format!("global avg 224 {}", label(ctx)),
        );
    }
}

#[test]
fn sampling_rejects_bad_shapes() {
    let ctx = &contexts()[0];
    let x = Tensor::new(ctx, [1, 5, 4, 4], "x").unwrap();
    let y = Tensor::new(ctx, [1, 1, 8, 8], "y").unwrap();
    let e = Resample::PixelShuffle(2)
        .bind(ctx, &x, &y)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("5 channels are not divisible by r² = 4"), "{e}");
    let e = Pool::Max {
        k: 3,
        stride: 1,
        pad: 2,
    }
    .bind(ctx, &x, &y)
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("padding 2 exceeds half the window 3"), "{e}");
}
