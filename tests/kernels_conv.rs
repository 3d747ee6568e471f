//! Convolution kernel vs the f64 reference over random awkward shapes, on every storage path.
mod common;

use common::reference::{act, conv2d};
use common::{assert_close, contexts, label, Rng};
use fswap::kernels::conv::{Conv2d, ConvSpec, Padding};
use fswap::kernels::{Activation, Epilogue, Residual};
use fswap::{Shape, Tensor};

/// fp16 storage of the output bounds the error at half an ulp (2^-11 relative); f32 accumulation
/// adds far less. 1e-3 relative plus 1e-3 absolute leaves a factor ~2 of margin and nothing more.
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-3;

struct Case {
    spec: ConvSpec,
    n: usize,
    h: usize,
    w: usize,
    act: (&'static str, Activation),
    residual: Residual,
}

fn random_case(rng: &mut Rng, i: usize) -> Case {
    let k = [1, 2, 3, 3, 5, 7][rng.range(0, 5)];
    let s = [1, 1, 2, 4][rng.range(0, 3)];
    let d = if k > 1 && rng.range(0, 4) == 0 { 2 } else { 1 };
    let reflect = rng.range(0, 2) == 0;
    let p = rng.range(0, (d * (k - 1)) / 2 + 1);
    let h = rng.range((d * (k - 1) + 1).max(p + 1), 19);
    let w = rng.range((d * (k - 1) + 1).max(p + 1), 23);
    let mode = i % 3; // dense, depthwise, grouped
    let (cin, cout, groups) = match mode {
        0 => (rng.range(1, 9), rng.range(1, 11), 1),
        1 => {
            let c = rng.range(1, 13);
            (c, c, c)
        }
        _ => {
            let g = rng.range(2, 3);
            (g * rng.range(1, 3), g * rng.range(1, 5), g)
        }
    };
    let mut spec = ConvSpec::new(cin, cout, k, s, p).groups(groups);
    spec.dilation = (d, d);
    if reflect {
        spec.padding = Padding::Reflect;
    }
    let acts: [(&str, Activation); 7] = [
        ("none", Activation::None),
        ("relu", Activation::Relu),
        ("relu6", Activation::Relu6),
        ("leaky", Activation::Leaky(0.1)),
        ("prelu", Activation::PRelu(vec![])), // filled per channel below
        ("sigmoid", Activation::Sigmoid),
        ("tanh", Activation::Tanh),
    ];
    let act = acts[rng.range(0, 6)].clone();
    let residual = [Residual::None, Residual::AfterAct, Residual::BeforeAct][rng.range(0, 2)];
    Case {
        spec,
        n: rng.range(1, 2),
        h,
        w,
        act,
        residual,
    }
}

fn run_case(rng: &mut Rng, c: &Case, name: &str) {
    let spec = &c.spec;
    let x = rng.vec(c.n * spec.cin * c.h * c.w, -1.0, 1.0);
    let wt = rng.vec(spec.weight_len(), -1.0, 1.0);
    let scale = rng.vec(spec.cout, 0.5, 1.5);
    let shift = rng.vec(spec.cout, -0.5, 0.5);
    let slopes = rng.vec(spec.cout, 0.0, 0.3);
    let (act_name, mut act_kind) = c.act.clone();
    if act_name == "prelu" {
        act_kind = Activation::PRelu(slopes.clone());
    }
    let epi = Epilogue {
        scale: Some(scale.clone()),
        shift: Some(shift.clone()),
        act: act_kind,
    };
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let wd: Vec<f64> = wt.iter().map(|&v| v as f64).collect();
    let (acc, ho, wo) = conv2d(
        &xd,
        c.n,
        spec.cin,
        c.h,
        c.w,
        &wd,
        spec.cout,
        spec.kernel.0,
        spec.kernel.1,
        spec.stride,
        spec.pad,
        spec.dilation,
        spec.groups,
        spec.padding == Padding::Reflect,
    );
    let res = rng.vec(acc.len(), -1.0, 1.0);
    let plane = ho * wo;
    let want: Vec<f64> = acc
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let ch = (i / plane) % spec.cout;
            let slope = if act_name == "leaky" {
                0.1f32 as f64
            } else {
                slopes[ch] as f64
            };
            let r = res[i] as f64;
            let mut v = a * scale[ch] as f64 + shift[ch] as f64;
            if c.residual == Residual::BeforeAct {
                v += r;
            }
            v = act(act_name, v, slope);
            if c.residual == Residual::AfterAct {
                v += r;
            }
            v
        })
        .collect();
    for ctx in contexts() {
        let conv = Conv2d::new(ctx, *spec, &wt, &epi).unwrap();
        let xt = Tensor::from_f32(ctx, [c.n, spec.cin, c.h, c.w], &x, "x").unwrap();
        let out = Shape::new(c.n, spec.cout, ho, wo);
        let yt = Tensor::new(ctx, out, "y").unwrap();
        let rt = Tensor::from_f32(ctx, out, &res, "r").unwrap();
        let d = conv.bind(ctx, &xt, &yt, Some((&rt, c.residual))).unwrap();
        ctx.run(&[&d]).unwrap();
        let got = yt.to_f32(ctx).unwrap();
        assert_close(
            &got,
            &want,
            ATOL,
            RTOL,
            &format!(
                "{name} {} {spec:?} act {act_name} res {:?} n{} {}x{}",
                label(ctx),
                c.residual,
                c.n,
                c.h,
                c.w
            ),
        );
    }
}

#[test]
fn conv_random_shapes_match_f64_reference() {
    let mut rng = Rng::new(0xC0DE);
    for i in 0..36 {
        let c = random_case(&mut rng, i);
        run_case(&mut rng, &c, &format!("case {i}"));
    }
}

#[test]
fn predicted_depthwise_weights_per_sample() {
    // Weights written by the GPU at run time, one set per sample: [n, c, 1, k·k] rows.
    let mut rng = Rng::new(7);
    let (n, c, h, w, k) = (2, 5, 9, 11, 3);
    let spec = ConvSpec::depthwise(c, k, 1, 1);
    let x = rng.vec(n * c * h * w, -1.0, 1.0);
    let wt = rng.vec(n * c * k * k, -1.0, 1.0);
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut want = Vec::new();
    for b in 0..n {
        let wd: Vec<f64> = wt[b * c * k * k..(b + 1) * c * k * k]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let xs = &xd[b * c * h * w..(b + 1) * c * h * w];
        want.extend(
            conv2d(
                xs,
                1,
                c,
                h,
                w,
                &wd,
                c,
                k,
                k,
                (1, 1),
                (1, 1),
                (1, 1),
                c,
                false,
            )
            .0,
        );
    }
    for ctx in contexts() {
        for shape in [Shape::new(n, c, 1, k * k), Shape::new(n, 1, 1, c * k * k)] {
            let wt_t = Tensor::from_f32(ctx, shape, &wt, "predicted").unwrap();
            let conv = Conv2d::with_weights(ctx, spec, wt_t, &Epilogue::none()).unwrap();
            let xt = Tensor::from_f32(ctx, [n, c, h, w], &x, "x").unwrap();
            let yt = Tensor::new(ctx, [n, c, h, w], "y").unwrap();
            ctx.run(&[&conv.bind(ctx, &xt, &yt, None).unwrap()])
                .unwrap();
            assert_close(
                &yt.to_f32(ctx).unwrap(),
                &want,
                ATOL,
                RTOL,
                &format!("predicted dw {} {shape:?}", label(ctx)),
            );
        }
    }
}

#[test]
fn conv_rejects_bad_shapes_with_clear_errors() {
    let ctx = &contexts()[0];
    let spec = ConvSpec::new(3, 4, 3, 1, 1);
    let e = Conv2d::new(ctx, spec, &[0.0; 10], &Epilogue::none())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("expected 108 values") && e.contains("found 10"),
        "{e}"
    );
    let conv = Conv2d::new(ctx, spec, &[0.0; 108], &Epilogue::none()).unwrap();
    let x = Tensor::new(ctx, [1, 5, 8, 8], "x").unwrap();
    let y = Tensor::new(ctx, [1, 4, 8, 8], "y").unwrap();
    let e = conv.bind(ctx, &x, &y, None).err().unwrap().to_string();
    assert!(e.contains("input has 5 channels, conv expects 3"), "{e}");
    let x = Tensor::new(ctx, [1, 3, 8, 8], "x").unwrap();
    let y = Tensor::new(ctx, [1, 4, 7, 8], "y").unwrap();
    let e = conv.bind(ctx, &x, &y, None).err().unwrap().to_string();
    assert!(
        e.contains("output expected [1, 4, 8, 8], found [1, 4, 7, 8]"),
        "{e}"
    );
    let e = Conv2d::new(
        ctx,
        ConvSpec::new(3, 4, 3, 1, 1).groups(2),
        &[0.0; 1],
        &Epilogue::none(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("groups 2 must divide cin 3"), "{e}");
    let e = ConvSpec::new(3, 4, 3, 1, 2)
        .reflect()
        .output_shape(Shape::new(1, 3, 2, 5))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("reflect padding"), "{e}");
}

#[test]
fn row_quad_fast_path_matches_reference() {
    // Widths that are multiples of 4 in and out take the row-quad path (kernel, stride, padding
    // as pipeline constants); cover its window arithmetic: k 1..7, stride 1 and 2, padding 0..3,
    // odd heights, channels off multiples of 4, dense, grouped and depthwise, batch 2.
    let mut rng = Rng::new(0xFA57);
    type RowCase = (usize, usize, usize, usize, usize, usize, usize, usize);
    let cases: &[RowCase] = &[
        // (n, cin, cout, groups, k, s, p, h) with w chosen below
        (2, 5, 5, 5, 3, 1, 1, 9),
        (1, 3, 3, 3, 4, 2, 1, 13),
        (2, 6, 9, 3, 3, 1, 1, 7),
        (1, 3, 7, 1, 5, 1, 2, 11),
        (1, 4, 4, 4, 7, 1, 3, 10),
        (2, 2, 5, 1, 7, 2, 3, 15),
        (1, 8, 3, 1, 3, 2, 1, 9),
        (1, 7, 7, 7, 1, 1, 0, 5),
        (2, 3, 6, 1, 4, 2, 1, 8),
        (1, 9, 9, 9, 5, 2, 2, 17),
        (1, 3, 5, 1, 7, 4, 3, 19),
        (2, 4, 4, 4, 3, 4, 1, 9),
    ];
    for (i, &(n, cin, cout, groups, k, s, p, h)) in cases.iter().enumerate() {
        // Smallest input width, a multiple of 4, whose output width is a multiple of 4 too.
        let spec = ConvSpec::new(cin, cout, k, s, p).groups(groups);
        let w = (1..=8)
            .map(|m| 4 * m)
            .find(|&w| w >= k && spec.output_shape(Shape::new(n, cin, h, w)).unwrap().w % 4 == 0)
            .expect("a width with whole quads in and out");
        let c = Case {
            spec,
            n,
            h,
            w,
            act: ("relu", Activation::Relu),
            residual: Residual::AfterAct,
        };
        run_case(&mut rng, &c, &format!("row-quad case {i}"));
    }
}
