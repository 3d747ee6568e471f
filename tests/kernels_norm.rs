//! Instance norm / AdaIN and conditional batch norm vs the f64 reference on every storage path.
mod common;

use common::reference::row_stats;
use common::{assert_close, contexts, label, Rng};
use fswap::kernels::norm::{Affine, Norm, NormSpec, Stats};
use fswap::kernels::Activation;
use fswap::{Shape, Tensor};

/// Outputs are O(1..4) after normalisation; fp16 rounding gives ≤ 2^-11 relative. Statistics are
/// f32 over ≤ 1000 values (error ~1e-6).
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-3;

#[test]
fn instance_norm_and_adain() {
    let mut rng = Rng::new(21);
    // (n, c, h, w): odd planes, a plane larger than one workgroup's stride, 1×1 edge.
    for (i, &(n, c, h, w)) in [(2, 3, 5, 7), (1, 6, 17, 19), (2, 5, 1, 3), (3, 2, 33, 9)]
        .iter()
        .enumerate()
    {
        let plane = h * w;
        let x = rng.vec(n * c * plane, -2.0, 3.0);
        let gamma = rng.vec(c, 0.5, 1.5);
        let beta = rng.vec(c, -0.5, 0.5);
        let fstyle = 2 * c + 3; // γ at 1, β at c + 2: offsets not at 0
        let style = rng.vec(n * fstyle, -0.5, 0.5);
        for adain in [false, true] {
            let want: Vec<f64> = (0..n * c)
                .flat_map(|row| {
                    let (b, ch) = (row / c, row % c);
                    let xr: Vec<f64> = x[row * plane..(row + 1) * plane]
                        .iter()
                        .map(|&v| v as f64)
                        .collect();
                    let (m, var) = row_stats(&xr);
                    let (g, bt) = if adain {
                        (
                            style[b * fstyle + 1 + ch] as f64 + 1.0,
                            style[b * fstyle + c + 2 + ch] as f64,
                        )
                    } else {
                        (gamma[ch] as f64, beta[ch] as f64)
                    };
                    xr.into_iter().map(move |v| {
                        let y = (v - m) / (var + 1e-5f32 as f64).sqrt() * g + bt;
                        if y >= 0.0 {
                            y
                        } else {
                            0.2f32 as f64 * y
                        }
                    })
                })
                .collect();
            let affine = if adain {
                Affine::Style {
                    gamma_offset: 1,
                    beta_offset: c + 2,
                    gamma_bias: 1.0,
                }
            } else {
                Affine::Static {
                    gamma: gamma.clone(),
                    beta: beta.clone(),
                }
            };
            for ctx in contexts() {
                let norm = Norm::new(
                    ctx,
                    NormSpec {
                        channels: c,
                        stats: Stats::Instance,
                        affine: affine.clone(),
                        eps: 1e-5,
                        act: Activation::Leaky(0.2),
                    },
                )
                .unwrap();
                let xt = Tensor::from_f32(ctx, [n, c, h, w], &x, "x").unwrap();
                let st = Tensor::from_f32(ctx, Shape::vector(n, fstyle), &style, "style").unwrap();
                let yt = Tensor::new(ctx, [n, c, h, w], "y").unwrap();
                ctx.run(&[&norm.bind(ctx, &xt, Some(&st), &yt).unwrap()])
                    .unwrap();
                assert_close(
                    &yt.to_f32(ctx).unwrap(),
                    &want,
                    ATOL,
                    RTOL,
                    &format!("instance norm case {i} adain {adain} {}", label(ctx)),
                );
            }
        }
    }
}

#[test]
fn conditional_batch_norm() {
    let mut rng = Rng::new(22);
    for &(n, c, h, w) in &[(2, 5, 7, 3), (1, 8, 4, 4), (3, 3, 1, 1)] {
        let plane = h * w;
        let x = rng.vec(n * c * plane, -2.0, 2.0);
        let mean = rng.vec(c, -0.5, 0.5);
        let var = rng.vec(c, 0.2, 2.0);
        let style = rng.vec(n * 2 * c, -1.0, 1.0); // [γ | β] per sample
        let want: Vec<f64> = (0..x.len())
            .map(|j| {
                let row = j / plane;
                let (b, ch) = (row / c, row % c);
                let g = style[b * 2 * c + ch] as f64;
                let bt = style[b * 2 * c + c + ch] as f64;
                ((x[j] as f64 - mean[ch] as f64) / (var[ch] as f64 + 1e-5f32 as f64).sqrt() * g
                    + bt)
                    .max(0.0)
            })
            .collect();
        for ctx in contexts() {
            let spec = NormSpec {
                channels: c,
                stats: Stats::Running {
                    mean: mean.clone(),
                    var: var.clone(),
                },
                affine: Affine::Style {
                    gamma_offset: 0,
                    beta_offset: c,
                    gamma_bias: 0.0,
                },
                eps: 1e-5,
                act: Activation::Relu,
            };
            let norm = Norm::new(ctx, spec).unwrap();
            let xt = Tensor::from_f32(ctx, [n, c, h, w], &x, "x").unwrap();
            let st = Tensor::from_f32(ctx, Shape::vector(n, 2 * c), &style, "style").unwrap();
            let yt = Tensor::new(ctx, [n, c, h, w], "y").unwrap();
            ctx.run(&[&norm.bind(ctx, &xt, Some(&st), &yt).unwrap()])
                .unwrap();
            assert_close(
                &yt.to_f32(ctx).unwrap(),
                &want,
                ATOL,
                RTOL,
                &format!("cbn {:?} {}", (n, c, h, w), label(ctx)),
            );
        }
    }
}

#[test]
fn norm_rejects_bad_input() {
    let ctx = &contexts()[0];
    let e = Norm::new(
        ctx,
        NormSpec {
            channels: 3,
            stats: Stats::Instance,
            affine: Affine::Static {
                gamma: vec![1.0; 2],
                beta: vec![0.0; 3],
            },
            eps: 1e-5,
            act: Activation::None,
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("gamma has 2 values for 3 channels"), "{e}");
    let norm = Norm::new(
        ctx,
        NormSpec {
            channels: 3,
            stats: Stats::Instance,
            affine: Affine::Style {
                gamma_offset: 0,
                beta_offset: 3,
                gamma_bias: 0.0,
            },
            eps: 1e-5,
            act: Activation::None,
        },
    )
    .unwrap();
    let x = Tensor::new(ctx, [2, 3, 4, 4], "x").unwrap();
    let y = Tensor::new(ctx, [2, 3, 4, 4], "y").unwrap();
    let e = norm.bind(ctx, &x, None, &y).err().unwrap().to_string();
    assert!(e.contains("style tensor is required"), "{e}");
    let st = Tensor::new(ctx, Shape::vector(2, 5), "s").unwrap();
    let e = norm.bind(ctx, &x, Some(&st), &y).err().unwrap().to_string();
    assert!(e.contains("style must be [2, 1, 1, ≥6]"), "{e}");
}
