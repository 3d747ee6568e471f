//! Attention fusion, element-wise ops, channel concat, L2 normalise and softmax vs the f64
//! reference on every storage path; tensor and context errors.
mod common;

use common::{assert_close, contexts, label, Rng};
use fswap::kernels::concat::copy_channels;
use fswap::kernels::eltwise::{Eltwise, EltwiseOp};
use fswap::kernels::fusion::fusion;
use fswap::kernels::reduce::{l2_normalize, softmax_channels};
use fswap::kernels::Activation;
use fswap::{Context, ContextOptions, Error, Shape, Tensor};

/// A few f32 operations per element: only the output's fp16 rounding (≤ 2^-11 relative) matters.
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-3;

#[test]
fn attention_fusion_raw_and_sigmoid() {
    let mut rng = Rng::new(41);
    for &(n, c, h, w) in &[(2, 3, 5, 7), (1, 6, 4, 4), (2, 1, 3, 1)] {
        let plane = h * w;
        let a = rng.vec(n * c * plane, -1.0, 1.0);
        let b = rng.vec(n * c * plane, -1.0, 1.0);
        for sig in [false, true] {
            let m = if sig {
                rng.vec(n * plane, -4.0, 4.0)
            } else {
                rng.vec(n * plane, 0.0, 1.0)
            };
            let want: Vec<f64> = (0..a.len())
                .map(|j| {
                    let bidx = j / (c * plane);
                    let mut mv = m[bidx * plane + j % plane] as f64;
                    if sig {
                        mv = 1.0 / (1.0 + (-mv).exp());
                    }
                    mv * a[j] as f64 + (1.0 - mv) * b[j] as f64
                })
                .collect();
            for ctx in contexts() {
                let at = Tensor::from_f32(ctx, [n, c, h, w], &a, "a").unwrap();
                let bt = Tensor::from_f32(ctx, [n, c, h, w], &b, "b").unwrap();
                let mt = Tensor::from_f32(ctx, [n, 1, h, w], &m, "m").unwrap();
                let yt = Tensor::new(ctx, [n, c, h, w], "y").unwrap();
                ctx.run(&[&fusion(ctx, &at, &bt, &mt, sig, &yt).unwrap()])
                    .unwrap();
                assert_close(
                    &yt.to_f32(ctx).unwrap(),
                    &want,
                    ATOL,
                    RTOL,
                    &format!("fusion sigmoid {sig} {}", label(ctx)),
                );
            }
        }
    }
}

#[test]
fn add_mul_broadcast_affine() {
    let mut rng = Rng::new(42);
    let (n, c, h, w) = (2, 5, 3, 7);
    let plane = h * w;
    let a = rng.vec(n * c * plane, -1.0, 1.0);
    let b = rng.vec(n * c * plane, -1.0, 1.0);
    let g = rng.vec(n * c, 0.0, 1.0);
    let scale = rng.vec(c, 0.5, 2.0);
    let shift = rng.vec(c, -1.0, 1.0);
    let add: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (*x as f64 + *y as f64).max(0.0))
        .collect();
    let mul: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| *x as f64 * *y as f64)
        .collect();
    let gate: Vec<f64> = a
        .iter()
        .enumerate()
        .map(|(j, x)| *x as f64 * g[j / plane] as f64)
        .collect();
    let aff: Vec<f64> = a
        .iter()
        .enumerate()
        .map(|(j, x)| {
            let ch = (j / plane) % c;
            *x as f64 * scale[ch] as f64 + shift[ch] as f64
        })
        .collect();
    let aff1: Vec<f64> = a.iter().map(|x| *x as f64 * 0.5 - 0.25).collect();
    for ctx in contexts() {
        let at = Tensor::from_f32(ctx, [n, c, h, w], &a, "a").unwrap();
        let bt = Tensor::from_f32(ctx, [n, c, h, w], &b, "b").unwrap();
        let gt = Tensor::from_f32(ctx, [n, c, 1, 1], &g, "g").unwrap();
        let y = Tensor::new(ctx, [n, c, h, w], "y").unwrap();
        let cases: Vec<(EltwiseOp, Option<&Tensor>, &Vec<f64>, &str)> = vec![
            (
                EltwiseOp::new(Eltwise::Add, Activation::Relu).unwrap(),
                Some(&bt),
                &add,
                "add+relu",
            ),
            (
                EltwiseOp::new(Eltwise::Mul, Activation::None).unwrap(),
                Some(&bt),
                &mul,
                "mul",
            ),
            (
                EltwiseOp::new(Eltwise::Mul, Activation::None).unwrap(),
                Some(&gt),
                &gate,
                "mul by [N,C,1,1]",
            ),
            (
                EltwiseOp::new(
                    Eltwise::Affine {
                        scale: scale.clone(),
                        shift: shift.clone(),
                    },
                    Activation::None,
                )
                .unwrap(),
                None,
                &aff,
                "affine per channel",
            ),
            (
                EltwiseOp::new(
                    Eltwise::Affine {
                        scale: vec![0.5],
                        shift: vec![-0.25],
                    },
                    Activation::None,
                )
                .unwrap(),
                None,
                &aff1,
                "affine scalar",
            ),
        ];
        for (op, b, want, name) in cases {
            ctx.run(&[&op.bind(ctx, &at, b, None, &y).unwrap()])
                .unwrap();
            assert_close(
                &y.to_f32(ctx).unwrap(),
                want,
                ATOL,
                RTOL,
                &format!("{name} {}", label(ctx)),
            );
        }
    }
}

#[test]
fn concat_by_channel_offsets() {
    let mut rng = Rng::new(43);
    let (n, h, w) = (2, 3, 5);
    let p1 = rng.vec(n * 3 * h * w, -1.0, 1.0);
    let p2 = rng.vec(n * 2 * h * w, -1.0, 1.0);
    let mut want = Vec::new();
    for b in 0..n {
        want.extend(
            p1[b * 3 * h * w..(b + 1) * 3 * h * w]
                .iter()
                .map(|&v| v as f64),
        );
        want.extend(
            p2[b * 2 * h * w..(b + 1) * 2 * h * w]
                .iter()
                .map(|&v| v as f64),
        );
    }
    for ctx in contexts() {
        let t1 = Tensor::from_f32(ctx, [n, 3, h, w], &p1, "p1").unwrap();
        let t2 = Tensor::from_f32(ctx, [n, 2, h, w], &p2, "p2").unwrap();
        let y = Tensor::new(ctx, [n, 5, h, w], "y").unwrap();
        let d1 = copy_channels(ctx, &t1, &y, 0).unwrap();
        let d2 = copy_channels(ctx, &t2, &y, 3).unwrap();
        ctx.run(&[&d1, &d2]).unwrap();
        assert_close(
            &y.to_f32(ctx).unwrap(),
            &want,
            0.0,
            0.0,
            &format!("concat {}", label(ctx)),
        );
        let e = copy_channels(ctx, &t1, &y, 3).err().unwrap().to_string();
        assert!(e.contains("at channel 3"), "{e}");
    }
}

#[test]
fn l2_normalize_and_softmax() {
    let mut rng = Rng::new(44);
    let (n, f) = (3, 513);
    let v = rng.vec(n * f, -1.0, 1.0);
    let want: Vec<f64> = v
        .chunks(f)
        .flat_map(|r| {
            let norm = r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            r.iter().map(move |&x| x as f64 / norm)
        })
        .collect();
    let (c, h, w) = (7, 3, 5);
    let x = rng.vec(2 * c * h * w, -4.0, 4.0);
    let mut sm = vec![0f64; x.len()];
    for b in 0..2 {
        for p in 0..h * w {
            let idx = |ch: usize| (b * c + ch) * h * w + p;
            let m = (0..c).map(|ch| x[idx(ch)] as f64).fold(f64::MIN, f64::max);
            let s: f64 = (0..c).map(|ch| (x[idx(ch)] as f64 - m).exp()).sum();
            for ch in 0..c {
                sm[idx(ch)] = (x[idx(ch)] as f64 - m).exp() / s;
            }
        }
    }
    for ctx in contexts() {
        let vt = Tensor::from_f32(ctx, Shape::vector(n, f), &v, "v").unwrap();
        let yt = Tensor::new(ctx, Shape::vector(n, f), "y").unwrap();
        ctx.run(&[&l2_normalize(ctx, &vt, 1e-12, &yt).unwrap()])
            .unwrap();
        assert_close(
            &yt.to_f32(ctx).unwrap(),
            &want,
            1e-4,
            RTOL,
            &format!("l2 normalize {}", label(ctx)),
        );
        let xt = Tensor::from_f32(ctx, [2, c, h, w], &x, "x").unwrap();
        let st = Tensor::new(ctx, [2, c, h, w], "s").unwrap();
        ctx.run(&[&softmax_channels(ctx, &xt, &st).unwrap()])
            .unwrap();
        assert_close(
            &st.to_f32(ctx).unwrap(),
            &sm,
            1e-4,
            RTOL,
            &format!("softmax {}", label(ctx)),
        );
    }
}

#[test]
fn tensor_errors_are_clear() {
    let ctx = &contexts()[0];
    let e = Tensor::new(ctx, [1, 0, 4, 4], "features").err().unwrap();
    assert!(
        matches!(e, Error::Empty { .. }) && e.to_string().contains("features has zero elements"),
        "{e}"
    );
    let limit = ctx.limits().max_storage_buffer_binding_size as usize;
    let e = Tensor::new(ctx, [1, 1, 1, limit], "huge").err().unwrap();
    assert!(
        matches!(e, Error::TooLarge { .. })
            && e.to_string().contains("max_storage_buffer_binding_size"),
        "{e}"
    );
    let e = Tensor::from_f32(ctx, [1, 1, 2, 2], &[0.0, f32::NAN, 1.0, 2.0], "image")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("image") && e.contains("element 1 is NaN"), "{e}");
    let e = Tensor::from_f32(ctx, [1, 1, 2, 2], &[0.0, 1e6, 1.0, 2.0], "image")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("element 1 is 1000000") && e.contains("±65504"),
        "{e}"
    );
    let e = Tensor::from_f32(ctx, [1, 1, 2, 2], &[0.0; 3], "image")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("3 values given for shape [1, 1, 2, 2] (4 expected)"),
        "{e}"
    );
    let t = Tensor::new(ctx, [2, 3, 5, 5], "t").unwrap();
    assert!(t.reshape([2, 3, 25, 1]).is_ok());
    let e = t.reshape([2, 75, 1, 1]).err().unwrap().to_string();
    assert!(e.contains("changes the row layout"), "{e}");
}

#[test]
fn context_errors_are_clear() {
    let e = fswap::gpu::BackendChoice::parse("vulkann")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unknown backend 'vulkann'"), "{e}");
    let opts = ContextOptions {
        backend: Some(fswap::gpu::BackendChoice::Vulkan),
        adapter: Some(99),
        storage: None,
    };
    let e = Context::new(&opts).err().unwrap().to_string();
    assert!(e.contains("adapter index 99 requested but only"), "{e}");
    let opts = ContextOptions {
        backend: Some(fswap::gpu::BackendChoice::Gl),
        adapter: None,
        storage: Some(fswap::StoragePath::F16),
    };
    if let Err(e) = Context::new(&opts) {
        let e = e.to_string();
        assert!(
            e.contains("SHADER_F16") || e.contains("no GPU adapter"),
            "{e}"
        );
    } else {
        panic!("GL on llvmpipe has no SHADER_F16: forcing f16 must fail");
    }
}

#[test]
fn squeeze_excitation_gate_with_residual_and_prelu() {
    // IR-SE block tail: prelu(out ⊙ gate[n, c] + shortcut), gate a linear layer's [N, 1, 1, C] output.
    let mut rng = Rng::new(45);
    let (n, c, h, w) = (2, 6, 5, 3);
    let plane = h * w;
    let a = rng.vec(n * c * plane, -1.0, 1.0);
    let gate = rng.vec(n * c, 0.0, 1.0);
    let r = rng.vec(n * c * plane, -1.0, 1.0);
    let slopes = rng.vec(c, 0.0, 0.5);
    let want: Vec<f64> = (0..a.len())
        .map(|j| {
            let row = j / plane;
            let v = a[j] as f64 * gate[row] as f64 + r[j] as f64;
            if v >= 0.0 {
                v
            } else {
                v * slopes[row % c] as f64
            }
        })
        .collect();
    for ctx in contexts() {
        let at = Tensor::from_f32(ctx, [n, c, h, w], &a, "a").unwrap();
        let gt = Tensor::from_f32(ctx, Shape::vector(n, c), &gate, "gate").unwrap();
        let rt = Tensor::from_f32(ctx, [n, c, h, w], &r, "r").unwrap();
        let y = Tensor::new(ctx, [n, c, h, w], "y").unwrap();
        let op = EltwiseOp::new(Eltwise::Mul, Activation::PRelu(slopes.clone())).unwrap();
        ctx.run(&[&op.bind(ctx, &at, Some(&gt), Some(&rt), &y).unwrap()])
            .unwrap();
        assert_close(
            &y.to_f32(ctx).unwrap(),
            &want,
            ATOL,
            RTOL,
            &format!("se gate {}", label(ctx)),
        );
    }
}
