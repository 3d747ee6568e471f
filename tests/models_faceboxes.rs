//! FaceBoxes with the real weights (`../shared/data/faceboxes/FaceBoxesProd.safetensors`, read in
//! place) on every context: the official pipeline's boxes on the three sample photos
//! (`../shared/data/README.md`), no face on noise or flat gray, and clear errors for mis-shaped
//! weights and a wrong image size. The data must be present: these tests fail, never skip.
mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{contexts, label, Rng};
use fswap::face::detect::{detect, nms, preprocess, prior_boxes, resize_linear, Detection};
use fswap::models::faceboxes::{input_size, FaceBoxes};
use fswap::weights::{HostTensor, Weights};
use image::RgbImage;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

fn weights() -> &'static Weights {
    static W: OnceLock<Weights> = OnceLock::new();
    W.get_or_init(|| {
        let path = data().join("faceboxes/FaceBoxesProd.safetensors");
        Weights::open(&path).unwrap_or_else(|e| {
            panic!(
                "FaceBoxes weights {} (../shared/data must be present): {e}",
                path.display()
            )
        })
    })
}

fn photo(name: &str) -> RgbImage {
    let path = data().join("photos").join(name);
    image::open(&path)
        .unwrap_or_else(|e| {
            panic!(
                "photo {} (../shared/data must be present): {e}",
                path.display()
            )
        })
        .to_rgb8()
}

/// The official pipeline's detections (x1, y1, x2, y2, score), from ../shared/data/README.md.
/// test2.jpg's score is given there as ">0.99".
const REFERENCE: &[(&str, &[[f32; 5]])] = &[
    (
        "trump_hillary.jpg",
        &[
            [228.9, 103.1, 466.1, 390.7, 0.998],
            [1040.4, 122.0, 1257.8, 428.4, 0.996],
        ],
    ),
    ("JianzhuGuo.jpg", &[[119.6, 93.5, 290.7, 312.4, 0.999]]),
    ("test2.jpg", &[[179.1, 68.1, 266.3, 189.9, f32::NAN]]),
];

const BOX_TOLERANCE_PX: f32 = 2.0;
const SCORE_TOLERANCE: f32 = 0.01;

#[test]
fn photos_match_the_official_boxes() {
    let w = weights();
    for (name, want) in REFERENCE {
        let img = photo(name);
        for ctx in contexts() {
            let model =
                FaceBoxes::new(ctx, w, img.height() as usize, img.width() as usize).unwrap();
            let got = detect(ctx, &model, &img).unwrap();
            let l = label(ctx);
            eprintln!("{l} {name}: {got:?}");
            assert_eq!(got.len(), want.len(), "{l} {name}: {got:?}");
            let mut worst = 0f32;
            for (g, r) in got.iter().zip(want.iter()) {
                for k in 0..4 {
                    let d = (g.box_[k] - r[k]).abs();
                    worst = worst.max(d);
                    assert!(
                        d <= BOX_TOLERANCE_PX,
                        "{l} {name}: box {:?} vs reference {:?} (coordinate {k} off by {d:.2} px)",
                        g.box_,
                        &r[..4]
                    );
                }
                if r[4].is_nan() {
                    assert!(
                        g.score > 0.99,
                        "{l} {name}: score {} (want > 0.99)",
                        g.score
                    );
                } else {
                    assert!(
                        (g.score - r[4]).abs() <= SCORE_TOLERANCE,
                        "{l} {name}: score {} vs reference {}",
                        g.score,
                        r[4]
                    );
                }
            }
            eprintln!("{l} {name}: max box deviation {worst:.2} px");
        }
    }
}

#[test]
fn noise_and_flat_gray_have_no_face() {
    let w = weights();
    let (h, wd) = (360u32, 640u32);
    let mut rng = Rng::new(11);
    let noise = RgbImage::from_fn(wd, h, |_, _| {
        image::Rgb([0, 1, 2].map(|_| rng.range(0, 255) as u8))
    });
    let gray = RgbImage::from_pixel(wd, h, image::Rgb([128, 128, 128]));
    for ctx in contexts() {
        let model = FaceBoxes::new(ctx, w, h as usize, wd as usize).unwrap();
        for (what, img) in [("noise", &noise), ("flat gray", &gray)] {
            let got = detect(ctx, &model, img).unwrap();
            assert!(got.is_empty(), "{} {what}: faces {got:?}", label(ctx));
        }
    }
}

#[test]
fn misshaped_tensor_is_named() {
    let mut tensors = weights().tensors().clone();
    let name = "inception2.branch3x3.conv.weight";
    tensors.insert(
        name.to_string(),
        HostTensor::new(vec![32, 24, 3, 1], vec![0.0; 32 * 24 * 3]),
    );
    let bad = Weights::from_tensors("bad.safetensors", tensors, Default::default());
    let err = match FaceBoxes::new(&contexts()[0], &bad, 480, 640) {
        Ok(_) => panic!("a mis-shaped {name} was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(name) && err.contains("[32, 24, 3, 1]") && err.contains("[32, 24, 3, 3]"),
        "{err}"
    );
    assert!(err.contains("bad.safetensors"), "{err}");

    let mut tensors = weights().tensors().clone();
    tensors.remove("conf.2.bias");
    let missing = Weights::from_tensors("short.safetensors", tensors, Default::default());
    let err = FaceBoxes::new(&contexts()[0], &missing, 480, 640)
        .err()
        .expect("a missing tensor was accepted")
        .to_string();
    assert!(err.contains("missing 'conf.2.bias'"), "{err}");
}

#[test]
fn wrong_image_size_is_an_error() {
    let ctx = &contexts()[0];
    let model = FaceBoxes::new(ctx, weights(), 360, 640).unwrap();
    let err = detect(ctx, &model, &RgbImage::new(640, 480))
        .unwrap_err()
        .to_string();
    assert!(err.contains("480x640") && err.contains("360x640"), "{err}");
}

#[test]
fn resize_rule_and_priors_follow_the_spec() {
    // trump_hillary.jpg: 689x1536 -> 484x1080 with scale 1080/1536; 11,596 priors (spec A.3).
    let s = input_size(689, 1536);
    assert_eq!((s.height, s.width, s.scale), (484, 1080, 0.703125));
    assert_eq!(prior_boxes(s).len(), 11_596);
    let s = input_size(1080, 1920);
    assert_eq!((s.height, s.width), (607, 1080));
    let s = input_size(551, 413);
    assert_eq!((s.height, s.width, s.scale), (551, 413, 1.0));
    let s = input_size(2000, 1000);
    assert_eq!((s.height, s.width, s.scale), (720, 360, 0.36));
    // First priors: the 32-px anchors densified 4x4 in the first cell, y offset outer.
    let p = prior_boxes(input_size(64, 96));
    assert_eq!(p[0], [0.0, 0.0, 32.0 / 96.0, 32.0 / 64.0]);
    assert_eq!(p[1], [0.25 * 32.0 / 96.0, 0.0, 32.0 / 96.0, 32.0 / 64.0]);
    assert_eq!(p[4], [0.0, 0.25 * 32.0 / 64.0, 32.0 / 96.0, 32.0 / 64.0]);
    assert_eq!(p[16], [0.0, 0.0, 64.0 / 96.0, 1.0]);
    assert_eq!(
        p[20],
        [0.5 * 32.0 / 96.0, 0.5 * 32.0 / 64.0, 128.0 / 96.0, 2.0]
    );
    // (2x3 cells x 21) + (1x2) + (1x1)
    assert_eq!(p.len(), 6 * 21 + 2 + 1);
}

#[test]
fn preprocess_is_bgr_minus_means() {
    let img = RgbImage::from_fn(5, 2, |x, y| image::Rgb([x as u8, y as u8, 200]));
    let v = preprocess(&img);
    assert_eq!(v.len(), 3 * 10);
    assert_eq!(v[0], 200.0 - 104.0); // B plane first
    assert_eq!(v[10 + 7], 1.0 - 117.0); // G at (y=1, x=2)
    assert_eq!(v[20 + 3], 3.0 - 123.0); // R at (y=0, x=3)
}

#[test]
fn resize_linear_follows_opencv_fixed_point() {
    // 4x1 -> 2x1: source x 0.5 and 2.5, coefficients 1024/1024; rows unchanged (beta 2048/0).
    // (0+100)/2 = 50 exactly; (200+255)/2 = 227.5 rounds up to 228 as cv2.resize does.
    let img = RgbImage::from_fn(4, 1, |x, _| {
        let v = [0u8, 100, 200, 255][x as usize];
        image::Rgb([v, 255 - v, 7])
    });
    let out = resize_linear(&img, 2, 1);
    assert_eq!(out.as_raw(), &[50, 205, 7, 228, 28, 7]);
    // 3 -> 2 in both directions: source 0.25 and 1.75, coefficients (1536, 512) and (512, 1536).
    let img = RgbImage::from_fn(3, 3, |x, y| image::Rgb([(40 * x + 80 * y) as u8, 0, 255]));
    let out = resize_linear(&img, 2, 2);
    let got: Vec<u8> = out.pixels().map(|p| p.0[0]).collect();
    // 40·x + 80·y at x, y in {0.25, 1.75}: exact in fixed point, no rounding involved
    assert_eq!(got, vec![30, 90, 150, 210]);
    assert!(out.pixels().all(|p| p.0[1] == 0 && p.0[2] == 255));
}

#[test]
fn nms_uses_plus_one_areas_and_greater_or_equal() {
    let d = |x1: f32, x2: f32, score: f32| Detection {
        box_: [x1, 0.0, x2, 9.0],
        score,
    };
    // 10x10 boxes (with +1) overlapping by 5 columns: IoU 50/150 = 1/3 >= 0.3 -> suppressed.
    assert_eq!(nms(&[d(0.0, 9.0, 0.9), d(5.0, 14.0, 0.8)], 0.3), vec![0]);
    // Overlap 4 columns: 40/160 = 0.25 < 0.3 -> both kept.
    assert_eq!(nms(&[d(0.0, 9.0, 0.9), d(6.0, 15.0, 0.8)], 0.3), vec![0, 1]);
    // A suppressed box suppresses nothing.
    let chain = [d(0.0, 9.0, 0.9), d(5.0, 14.0, 0.8), d(10.0, 19.0, 0.7)];
    assert_eq!(nms(&chain, 0.3), vec![0, 2]);
    // Exactly at the threshold: IoU 1/3 with threshold 1/3 -> suppressed.
    assert_eq!(
        nms(&[d(0.0, 9.0, 0.9), d(5.0, 14.0, 0.8)], 1.0 / 3.0),
        vec![0]
    );
}

/// Per-image GPU time of the plan and host-side wall time of `detect` (run with
/// `cargo test --release --test models_faceboxes -- --ignored --nocapture`).
#[test]
#[ignore]
fn timing() {
    let w = weights();
    for ctx in contexts() {
        for (name, _) in REFERENCE {
            let img = photo(name);
            let model =
                FaceBoxes::new(ctx, w, img.height() as usize, img.width() as usize).unwrap();
            model.input.write_f32(ctx, &preprocess(&img)).unwrap();
            let prof = ctx.time(&model.plan.refs(), 3, 10).unwrap();
            detect(ctx, &model, &img).unwrap();
            let t0 = std::time::Instant::now();
            let n = 5;
            for _ in 0..n {
                detect(ctx, &model, &img).unwrap();
            }
            let wall = t0.elapsed().as_secs_f64() * 1e3 / n as f64;
            let t1 = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(preprocess(&img));
            }
            let pre = t1.elapsed().as_secs_f64() * 1e3 / n as f64;
            let s = model.input_size;
            eprintln!(
                "{} {name} ({}x{} -> {}x{}): plan {:.2} ms ({}, {} dispatches, {:.2} GFLOP); \
                 detect() {wall:.2} ms wall, of which preprocess {pre:.2} ms",
                label(ctx),
                img.height(),
                img.width(),
                s.height,
                s.width,
                prof.total_micros / 1e3,
                prof.timing,
                model.plan.len(),
                model.plan.stats().flops as f64 / 1e9,
            );
        }
    }
}
