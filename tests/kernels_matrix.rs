//! Pointwise, linear and modulation kernels vs the f64 reference on every storage path.
mod common;

use common::reference::{act, modulate, pointwise};
use common::{assert_close, contexts, label, Rng};
use fswap::kernels::linear::Linear;
use fswap::kernels::modulate::{Modulate, ModulateSpec};
use fswap::kernels::pointwise::{Pointwise, PointwiseTile};
use fswap::kernels::{Activation, Epilogue, Residual};
use fswap::{Shape, Tensor};

/// fp16 output rounding is ≤ 2^-11 relative; f32 accumulation over ≤ 600 terms adds < 1e-4.
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-3;

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn pointwise_random_shapes() {
    let mut rng = Rng::new(11);
    // (n, cin, cout, h, w): channels off multiples of 4 and 8, odd planes, batch 2, a tail tile.
    let cases = [
        (1, 3, 5, 7, 9),
        (2, 17, 13, 5, 3),
        (1, 32, 24, 8, 8),
        (2, 9, 1, 1, 1),
        (1, 64, 40, 11, 13),
        (2, 6, 9, 1, 7),
        // Planes whose quad count is not a multiple of 4 (the wide tile's tail): 42, 65, 20 positions.
        (2, 5, 11, 6, 7),
        (1, 16, 8, 13, 5),
        (1, 7, 17, 4, 5),
    ];
    for (i, &(n, cin, cout, h, w)) in cases.iter().enumerate() {
        let x = rng.vec(n * cin * h * w, -1.0, 1.0);
        let wt = rng.vec(cin * cout, -0.5, 0.5);
        let bias = rng.vec(cout, -0.5, 0.5);
        let res = rng.vec(n * cout * h * w, -1.0, 1.0);
        let slopes = rng.vec(cout, 0.0, 0.3);
        let acc = pointwise(&to64(&x), n, cin, h * w, &to64(&wt), cout, false);
        let (act_name, activation, residual) = match i % 3 {
            0 => (
                "prelu",
                Activation::PRelu(slopes.clone()),
                Residual::AfterAct,
            ),
            1 => ("relu", Activation::Relu, Residual::None),
            _ => ("leaky", Activation::Leaky(0.2), Residual::BeforeAct),
        };
        let want: Vec<f64> = acc
            .iter()
            .enumerate()
            .map(|(j, &a)| {
                let c = (j / (h * w)) % cout;
                let slope = if act_name == "prelu" {
                    slopes[c] as f64
                } else {
                    0.2f32 as f64
                };
                let r = res[j] as f64;
                let mut v = a + bias[c] as f64;
                if residual == Residual::BeforeAct {
                    v += r;
                }
                v = act(act_name, v, slope);
                if residual == Residual::AfterAct {
                    v += r;
                }
                v
            })
            .collect();
        // Both tiles on every context: the narrow one is what GPUs run, the wide one CPU devices.
        for (ctx, tile) in contexts()
            .iter()
            .flat_map(|c| [(c, PointwiseTile::Narrow), (c, PointwiseTile::Wide)])
        {
            let pw = Pointwise::new(
                ctx,
                cin,
                cout,
                &wt,
                &Epilogue::bias(&bias).with_act(activation.clone()),
            )
            .unwrap()
            .with_tile(tile);
            let xt = Tensor::from_f32(ctx, [n, cin, h, w], &x, "x").unwrap();
            let yt = Tensor::new(ctx, [n, cout, h, w], "y").unwrap();
            let rt = Tensor::from_f32(ctx, [n, cout, h, w], &res, "r").unwrap();
            ctx.run(&[&pw.bind(ctx, &xt, &yt, Some((&rt, residual))).unwrap()])
                .unwrap();
            assert_close(
                &yt.to_f32(ctx).unwrap(),
                &want,
                ATOL,
                RTOL,
                &format!("pointwise case {i} {tile:?} {}", label(ctx)),
            );
        }
    }
}

#[test]
fn modulated_pointwise_per_sample_matches_reference() {
    // Style → modulated + demodulated weights on the GPU → per-sample pointwise conv.
    let mut rng = Rng::new(12);
    for &(n, cin, cout, h, w, demod) in &[
        (2, 7, 10, 5, 6, true),
        (1, 16, 3, 4, 4, false),
        (3, 5, 9, 3, 1, true),
    ] {
        let wt = rng.vec(cin * cout, -1.0, 1.0);
        let style = rng.vec(n * cin, -0.5, 0.5);
        let x = rng.vec(n * cin * h * w, -1.0, 1.0);
        let wmod = modulate(&to64(&wt), cout, cin, &to64(&style), n, 1.0, demod, 1e-8);
        let want = pointwise(&to64(&x), n, cin, h * w, &wmod, cout, true);
        // The modulated weights themselves, in the kernel layout [n, cin, 1, cout].
        let mut want_w = vec![0f64; n * cin * cout];
        for b in 0..n {
            for o in 0..cout {
                for i in 0..cin {
                    want_w[(b * cin + i) * cout + o] = wmod[(b * cout + o) * cin + i];
                }
            }
        }
        for ctx in contexts() {
            let spec = ModulateSpec {
                cin,
                cout,
                style_bias: 1.0,
                demodulate: demod,
                eps: 1e-8,
            };
            let m = Modulate::new(ctx, spec, &wt).unwrap();
            let st = Tensor::from_f32(ctx, Shape::vector(n, cin), &style, "style").unwrap();
            let wm = Tensor::new(ctx, m.output_shape(n), "modulated").unwrap();
            let dm = m.bind(ctx, &st, 0, &wm).unwrap();
            let pw = Pointwise::with_weights(ctx, wm.clone(), &Epilogue::none()).unwrap();
            let xt = Tensor::from_f32(ctx, [n, cin, h, w], &x, "x").unwrap();
            let yt = Tensor::new(ctx, [n, cout, h, w], "y").unwrap();
            let dp = pw.bind(ctx, &xt, &yt, None).unwrap();
            ctx.run(&[&dm, &dp]).unwrap();
            let tag = format!("n{n} {cin}->{cout} demod {demod} {}", label(ctx));
            assert_close(
                &wm.to_f32(ctx).unwrap(),
                &want_w,
                ATOL,
                RTOL,
                &format!("modulated weights {tag}"),
            );
            // The conv consumes fp16-rounded weights: allow their rounding (2^-11 each) summed over cin.
            assert_close(
                &yt.to_f32(ctx).unwrap(),
                &want,
                2e-3,
                2e-3,
                &format!("modulated conv {tag}"),
            );
        }
    }
}

#[test]
fn linear_flattens_maps_and_vectors() {
    let mut rng = Rng::new(13);
    // (n, c, h, w, out): a map with an odd plane (flatten through padded rows), vectors, batch 3.
    for &(n, c, h, w, out) in &[
        (2, 5, 3, 3, 7),
        (3, 1, 1, 37, 10),
        (1, 8, 7, 7, 4),
        (2, 3, 2, 5, 1),
    ] {
        let feats = c * h * w;
        let x = rng.vec(n * feats, -1.0, 1.0);
        let wt = rng.vec(out * feats, -0.3, 0.3);
        let bias = rng.vec(out, -0.5, 0.5);
        let want: Vec<f64> = (0..n * out)
            .map(|j| {
                let (b, o) = (j / out, j % out);
                let s: f64 = (0..feats)
                    .map(|f| wt[o * feats + f] as f64 * x[b * feats + f] as f64)
                    .sum();
                (s + bias[o] as f64).tanh()
            })
            .collect();
        for ctx in contexts() {
            let lin = Linear::new(
                ctx,
                (c, h, w),
                out,
                &wt,
                &Epilogue::bias(&bias).with_act(Activation::Tanh),
            )
            .unwrap();
            let xt = Tensor::from_f32(ctx, [n, c, h, w], &x, "x").unwrap();
            let yt = Tensor::new(ctx, Shape::vector(n, out), "y").unwrap();
            ctx.run(&[&lin.bind(ctx, &xt, &yt).unwrap()]).unwrap();
            assert_close(
                &yt.to_f32(ctx).unwrap(),
                &want,
                ATOL,
                RTOL,
                &format!("linear {:?} {}", (n, c, h, w, out), label(ctx)),
            );
        }
    }
}

#[test]
fn matrix_kernels_reject_mismatches() {
    let ctx = &contexts()[0];
    let e = Pointwise::new(ctx, 4, 3, &[0.0; 11], &Epilogue::none())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("expected 12 values") && e.contains("found 11"),
        "{e}"
    );
    let pw = Pointwise::new(ctx, 4, 3, &[0.0; 12], &Epilogue::bias(&[0.0; 3])).unwrap();
    let x = Tensor::new(ctx, [1, 5, 2, 2], "x").unwrap();
    let y = Tensor::new(ctx, [1, 3, 2, 2], "y").unwrap();
    let e = pw.bind(ctx, &x, &y, None).err().unwrap().to_string();
    assert!(e.contains("input has 5 channels, layer expects 4"), "{e}");
    let e = Pointwise::new(ctx, 4, 3, &[0.0; 12], &Epilogue::bias(&[0.0; 2]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("bias/shift has 2 values for 3 channels"), "{e}");
    let lin = Linear::new(ctx, (2, 2, 2), 3, &[0.0; 24], &Epilogue::none()).unwrap();
    let x = Tensor::new(ctx, [1, 2, 2, 3], "x").unwrap();
    let y = Tensor::new(ctx, Shape::vector(1, 3), "y").unwrap();
    let e = lin.bind(ctx, &x, &y).err().unwrap().to_string();
    assert!(
        e.contains("input per sample is (2, 2, 3), layer expects (2, 2, 2)"),
        "{e}"
    );
}
