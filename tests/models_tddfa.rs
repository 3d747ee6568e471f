//! 3DDFA_V2 MobileNet ×0.5 landmarks with the real weights and bases (`../shared/data/3ddfa`, read
//! in place) against the official pipeline's reference (`tests/fixtures/landmarks_reference.json`,
//! written by `tools/landmarks_reference.py` with PyTorch and OpenCV): the faces of the three sample
//! photos, from the FaceBoxes reference boxes of `../shared/data/README.md`, on every context; the
//! roi, the crop (bit-exact with `cv2.resize` on a synthetic card) and the decoding on the host; and
//! clear errors for mis-shaped weights and bases. The data must be present: these tests fail, never
//! skip.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use common::{contexts, label};
use fswap::face::landmarks::{
    crop_bgr, decode, five_points, landmarks, landmarks_batch, FaceLandmarks, Pose, Roi,
};
use fswap::models::tddfa::{Bfm, Tddfa, OUTPUTS, PARAMS};
use fswap::weights::{HostTensor, Weights};
use image::RgbImage;
use serde_json::Value;

/// Landmark tolerance against the reference, image pixels (every one of the 68 points).
const POINT_TOLERANCE_PX: f64 = 1.5;
/// Pose tolerance, degrees.
const POSE_TOLERANCE_DEG: f64 = 1.0;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn data() -> PathBuf {
    root().join("../shared/data")
}

fn weights() -> &'static Weights {
    static W: OnceLock<Weights> = OnceLock::new();
    W.get_or_init(|| {
        let path = data().join("3ddfa/mb05_120x120.safetensors");
        Weights::open(&path).unwrap_or_else(|e| {
            panic!(
                "3DDFA weights {} (../shared/data must be present): {e}",
                path.display()
            )
        })
    })
}

fn bfm() -> &'static Bfm {
    static B: OnceLock<Bfm> = OnceLock::new();
    B.get_or_init(|| {
        Bfm::from_dir(data().join("3ddfa")).unwrap_or_else(|e| {
            panic!("3DDFA bases in ../shared/data/3ddfa (../shared/data must be present): {e}")
        })
    })
}

fn photo(name: &str) -> &'static RgbImage {
    static P: OnceLock<std::sync::Mutex<BTreeMap<String, &'static RgbImage>>> = OnceLock::new();
    let mut m = P.get_or_init(Default::default).lock().unwrap();
    m.entry(name.to_string()).or_insert_with(|| {
        let path = data().join("photos").join(name);
        let img = image::open(&path)
            .unwrap_or_else(|e| {
                panic!(
                    "photo {} (../shared/data must be present): {e}",
                    path.display()
                )
            })
            .to_rgb8();
        Box::leak(Box::new(img))
    })
}

fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| {
        let path = root().join("tests/fixtures/landmarks_reference.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{} (regenerate with tools/landmarks_reference.py): {e}",
                path.display()
            )
        });
        serde_json::from_str(&text).expect("reference JSON")
    })
}

/// One reference face.
struct RefFace {
    image: String,
    bbox: [f32; 4],
    roi: [f64; 4],
    crop: [i64; 4],
    out: Vec<f32>,
    param: Vec<f64>,
    pts68: Vec<[f64; 3]>,
    lm68: Vec<[f64; 2]>,
    pts5: Vec<[f64; 2]>,
    pose: [f64; 3],
}

fn nums(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn faces() -> Vec<RefFace> {
    reference()["faces"]
        .as_array()
        .expect("faces")
        .iter()
        .map(|f| {
            let b = nums(&f["box"]);
            let rows =
                |k: &str| -> Vec<Vec<f64>> { f[k].as_array().unwrap().iter().map(nums).collect() };
            let mut out: Vec<f32> = nums(&f["out62"]).iter().map(|&v| v as f32).collect();
            out.extend(nums(&f["lm136"]).iter().map(|&v| v as f32));
            RefFace {
                image: f["image"].as_str().unwrap().to_string(),
                bbox: [b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32],
                roi: nums(&f["roi"]).try_into().unwrap(),
                crop: nums(&f["crop"])
                    .iter()
                    .map(|&v| v as i64)
                    .collect::<Vec<_>>()
                    .try_into()
                    .unwrap(),
                out,
                param: nums(&f["param"]),
                pts68: rows("pts68")
                    .into_iter()
                    .map(|r| [r[0], r[1], r[2]])
                    .collect(),
                lm68: rows("lm68").into_iter().map(|r| [r[0], r[1]]).collect(),
                pts5: rows("pts5").into_iter().map(|r| [r[0], r[1]]).collect(),
                pose: [
                    f["pose"]["yaw"].as_f64().unwrap(),
                    f["pose"]["pitch"].as_f64().unwrap(),
                    f["pose"]["roll"].as_f64().unwrap(),
                ],
            }
        })
        .collect()
}

/// Largest Euclidean distance between corresponding points, pixels.
fn max_dev(got: &[[f32; 2]], want: impl Iterator<Item = [f64; 2]>) -> f64 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (g[0] as f64 - w[0]).hypot(g[1] as f64 - w[1]))
        .fold(0.0, f64::max)
}

fn pose_dev(p: &Pose, want: [f64; 3]) -> f64 {
    [p.yaw, p.pitch, p.roll]
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
}

/// Worst deviations of one face: (68 points, fc_lm points, 5 points, pose).
fn deviations(got: &FaceLandmarks, want: &RefFace) -> (f64, f64, f64, f64) {
    assert_eq!(got.pts68.len(), 68);
    assert_eq!(got.lm68.len(), 68);
    (
        max_dev(&got.pts68, want.pts68.iter().map(|p| [p[0], p[1]])),
        max_dev(&got.lm68, want.lm68.iter().copied()),
        max_dev(&got.pts5, want.pts5.iter().copied()),
        pose_dev(&got.pose, want.pose),
    )
}

#[test]
fn roi_and_crop_rect_follow_the_official_rules() {
    for f in faces() {
        let roi = Roi::from_box(f.bbox).unwrap();
        let got = [roi.x0, roi.y0, roi.x1, roi.y1];
        for k in 0..4 {
            assert!(
                (got[k] - f.roi[k]).abs() < 1e-5,
                "{} {:?}: roi {got:?}, reference {:?}",
                f.image,
                f.bbox,
                f.roi
            );
        }
        // trump_hillary's first roi starts at x = 140.5 exactly: Python rounds it to 140 (half to even).
        assert_eq!(roi.crop_rect(), f.crop, "{} {:?}", f.image, f.bbox);
    }
    assert!(Roi::from_box([10.0, 10.0, 5.0, 20.0]).is_err());
    assert!(Roi::from_box([0.0, 0.0, f32::NAN, 20.0]).is_err());
    assert!(Roi::from_box([0.0, 0.0, 0.4, 0.4]).is_err());
    // parse_roi_box_from_landmark: a 30×10 spread → a square of side 30·√2 about its centre.
    let r = Roi::from_landmarks(&[[10.0, 20.0], [40.0, 30.0]]).unwrap();
    let side = 30.0 * std::f64::consts::SQRT_2;
    assert!((r.x1 - r.x0 - side).abs() < 1e-9 && (r.y1 - r.y0 - side).abs() < 1e-9);
    assert!(((r.x0 + r.x1) / 2.0 - 25.0).abs() < 1e-9 && ((r.y0 + r.y1) / 2.0 - 25.0).abs() < 1e-9);
}

/// The synthetic card of tools/landmarks_reference.py.
fn synthetic(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v =
            |c: u32| ((x * (7 + c) + y * (13 + 2 * c) + ((x * y) % 31) * c + 50 * c) % 256) as u8;
        image::Rgb([v(0), v(1), v(2)])
    })
}

#[test]
fn crop_is_bit_exact_with_opencv() {
    let s = &reference()["synthetic"];
    let size = nums(&s["size"]);
    let img = synthetic(size[0] as u32, size[1] as u32);
    let crops = s["crops"].as_array().unwrap();
    assert!(crops.len() >= 4);
    for c in crops {
        let b = nums(&c["box"]);
        let roi = Roi::from_box([b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32]).unwrap();
        let want_rect: Vec<i64> = nums(&c["crop"]).iter().map(|&v| v as i64).collect();
        assert_eq!(roi.crop_rect().to_vec(), want_rect, "box {b:?}");
        let got = crop_bgr(&img, &roi).unwrap();
        assert_eq!(got.len(), 120 * 120 * 3);
        let sum: i64 = got.iter().map(|&v| v as i64).sum();
        let wsum: i64 = got
            .iter()
            .enumerate()
            .map(|(i, &v)| v as i64 * (i as i64 % 1009 + 1))
            .sum();
        let samples: Vec<i64> = got.iter().step_by(97).map(|&v| v as i64).collect();
        let want: Vec<i64> = nums(&c["samples"]).iter().map(|&v| v as i64).collect();
        assert_eq!(
            samples, want,
            "box {b:?}: sampled crop values differ from cv2.resize"
        );
        assert_eq!(
            (sum, wsum),
            (c["sum"].as_i64().unwrap(), c["wsum"].as_i64().unwrap()),
            "box {b:?}: crop checksums differ from cv2.resize"
        );
    }
}

#[test]
fn decoding_the_reference_outputs_reproduces_the_reference() {
    let bfm = bfm();
    for f in faces() {
        let roi = Roi::from_box(f.bbox).unwrap();
        let got = decode(bfm, &f.out, &roi).unwrap();
        for (k, (g, w)) in got.params.iter().zip(&f.param).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 1e-6 * (w.abs() + bfm.param_std[k] as f64),
                "{}: param {k} {g} vs {w}",
                f.image
            );
        }
        let (d68, dlm, d5, dpose) = deviations(&got, &f);
        let dz = got
            .depth
            .iter()
            .zip(&f.pts68)
            .map(|(g, w)| (*g as f64 - w[2]).abs())
            .fold(0.0, f64::max);
        assert!(
            d68 < 2e-3 && dlm < 2e-3 && d5 < 2e-3 && dz < 2e-3 && dpose < 1e-3,
            "{}: host decoding of the reference outputs is off: 68 {d68}, fc_lm {dlm}, 5 {d5}, z {dz}, pose {dpose}",
            f.image
        );
        assert_eq!(got.pts5, five_points(&got.pts68));
    }
    assert!(decode(
        bfm,
        &[0.0; OUTPUTS - 1],
        &Roi::from_box([0.0, 0.0, 10.0, 10.0]).unwrap()
    )
    .is_err());
}

#[test]
fn photos_match_the_reference_on_every_context() {
    let (w, bfm) = (weights(), bfm());
    let faces = faces();
    assert_eq!(faces.len(), 4, "the three photos hold four faces");
    for ctx in contexts() {
        let l = label(ctx);
        let net = Tddfa::new(ctx, w, bfm).unwrap();
        let mut worst = (0f64, 0f64, 0f64, 0f64);
        for f in &faces {
            let t0 = Instant::now();
            let got = landmarks(ctx, &net, photo(&f.image), f.bbox).unwrap();
            let wall = t0.elapsed();
            let (d68, dlm, d5, dpose) = deviations(&got, f);
            eprintln!(
                "{l} {} {:?}: max dev 68 pts {d68:.3} px, fc_lm {dlm:.3} px, 5 pts {d5:.3} px, pose {dpose:.3} deg ({:.1} ms end to end)",
                f.image,
                f.bbox,
                wall.as_secs_f64() * 1e3
            );
            assert!(
                d68 <= POINT_TOLERANCE_PX,
                "{l} {}: a landmark is {d68:.3} px from the reference",
                f.image
            );
            assert!(
                dlm <= POINT_TOLERANCE_PX,
                "{l} {}: an fc_lm point is {dlm:.3} px from the reference",
                f.image
            );
            assert!(
                d5 <= POINT_TOLERANCE_PX,
                "{l} {}: 5 points {d5:.3} px",
                f.image
            );
            assert!(
                dpose <= POSE_TOLERANCE_DEG,
                "{l} {}: pose {:?} vs reference {:?}",
                f.image,
                got.pose,
                f.pose
            );
            worst = (
                worst.0.max(d68),
                worst.1.max(dlm),
                worst.2.max(d5),
                worst.3.max(dpose),
            );
        }
        let prof = ctx.time(&net.plan.refs(), 2, 5).unwrap();
        eprintln!(
            "{l}: worst 68 pts {:.3} px, fc_lm {:.3} px, 5 pts {:.3} px, pose {:.3} deg; network {:.3} ms per face ({}, {} dispatches)",
            worst.0,
            worst.1,
            worst.2,
            worst.3,
            prof.total_micros / 1e3,
            prof.timing,
            net.plan.len()
        );
    }
}

#[test]
fn a_batch_gives_the_single_face_results() {
    let ctx = &contexts()[0];
    let (w, bfm) = (weights(), bfm());
    let single = Tddfa::new(ctx, w, bfm).unwrap();
    let batched = Tddfa::with_batch(ctx, w, bfm, 2).unwrap();
    let faces: Vec<RefFace> = faces()
        .into_iter()
        .filter(|f| f.image == "trump_hillary.jpg")
        .collect();
    let boxes: Vec<[f32; 4]> = faces.iter().map(|f| f.bbox).collect();
    // Three boxes on a batch of two: one full run and one partial.
    let three = [boxes[0], boxes[1], boxes[0]];
    let img = photo("trump_hillary.jpg");
    let got = landmarks_batch(ctx, &batched, img, &three).unwrap();
    assert_eq!(got.len(), 3);
    for (g, b) in got.iter().zip(three) {
        let one = landmarks(ctx, &single, img, b).unwrap();
        let d = max_dev(&g.pts68, one.pts68.iter().map(|p| p.map(f64::from)));
        assert!(d < 1e-3, "batched vs single: {d} px");
    }
    assert!(Tddfa::with_batch(ctx, w, bfm, 0).is_err());
}

fn with_tensor(name: &str, t: Option<HostTensor>) -> Weights {
    let mut all = weights().tensors().clone();
    match t {
        Some(t) => {
            all.insert(name.to_string(), t);
        }
        None => {
            all.remove(name);
        }
    }
    Weights::from_tensors("edited mb05", all, Default::default())
}

#[test]
fn wrong_weights_are_named() {
    let ctx = &contexts()[0];
    let name = "module.dw3_1.conv_dw.weight";
    let bad = with_tensor(
        name,
        Some(HostTensor::new(vec![64, 1, 1, 9], vec![0.0; 576])),
    );
    let e = Tddfa::new(ctx, &bad, bfm())
        .err()
        .expect("mis-shaped weight")
        .to_string();
    assert!(
        e.contains(name) && e.contains("[64, 1, 1, 9]") && e.contains("[64, 1, 3, 3]"),
        "{e}"
    );
    let e = Tddfa::new(ctx, &with_tensor("module.fc_lm.bias", None), bfm())
        .err()
        .expect("missing head")
        .to_string();
    assert!(e.contains("missing 'module.fc_lm.bias'"), "{e}");
    let e = Tddfa::new(
        ctx,
        &with_tensor("fc.weight", Some(HostTensor::new(vec![1], vec![0.0]))),
        bfm(),
    )
    .err()
    .expect("unexpected tensor")
    .to_string();
    assert!(e.contains("unexpected 'fc.weight'"), "{e}");
}

#[test]
fn the_exporters_names_load_too() {
    // tools/export.py (numpy only) drops the checkpoint's `module.` prefix; both forms must give the
    // same network.
    let dir = temp_dir("export");
    let out = dir.join("mb05.safetensors");
    let pth = data().join("3ddfa/mb05_120x120.pth");
    let run = std::process::Command::new("python3")
        .args([
            "tools/export.py",
            pth.to_str().unwrap(),
            out.to_str().unwrap(),
        ])
        .args(["--model", "3ddfa_mb05", "--check", "-q"])
        .current_dir(root())
        .output()
        .expect("python3 with numpy must be installed");
    assert!(
        run.status.success(),
        "tools/export.py --check 3ddfa_mb05 failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let exported = Weights::open(&out).unwrap();
    assert!(exported.contains("conv1.weight") && !exported.contains("module.conv1.weight"));
    let ctx = &contexts()[0];
    let img = photo("JianzhuGuo.jpg");
    let bbox = [119.6, 93.5, 290.7, 312.4];
    let a = landmarks(ctx, &Tddfa::new(ctx, &exported, bfm()).unwrap(), img, bbox).unwrap();
    let b = landmarks(ctx, &Tddfa::new(ctx, weights(), bfm()).unwrap(), img, bbox).unwrap();
    assert_eq!(a, b);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fswap-tddfa-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn read(name: &str) -> String {
    let p = data().join("3ddfa").join(name);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{} (../shared/data must be present): {e}", p.display()))
}

#[test]
fn bases_with_the_wrong_row_count_are_refused() {
    let (u, shp, exp) = (
        read("u_base.txt"),
        read("w_shp_base.txt"),
        read("w_exp_base.txt"),
    );
    let b = bfm();
    let (mean, std) = (&b.param_mean, &b.param_std);
    assert_eq!(
        &Bfm::from_text("text", &u, &shp, &exp, mean, std).unwrap(),
        b,
        "text and directory loads differ"
    );
    let drop_last = |t: &str| t.lines().take(203).collect::<Vec<_>>().join("\n");
    let e = Bfm::from_text("text", &u, &drop_last(&shp), &exp, mean, std)
        .unwrap_err()
        .to_string();
    assert!(e.contains("w_shp_base has 203 rows, expected 204"), "{e}");
    let e = Bfm::from_text(
        "text",
        &u,
        &shp,
        &format!("{exp}\n{}", exp.lines().next().unwrap()),
        mean,
        std,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("w_exp_base has 205 rows, expected 204"), "{e}");
    let e = Bfm::from_text("text", &u, &exp, &exp, mean, std)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("w_shp_base line 1 has 10 columns, expected 40"),
        "{e}"
    );
    let e = Bfm::from_text("text", &u, &shp, &exp, &mean[..61], std)
        .unwrap_err()
        .to_string();
    assert!(e.contains("param_mean has 61 values, expected 62"), "{e}");

    // From a directory: the message names the file.
    let dir = temp_dir("rows");
    std::fs::write(dir.join("u_base.txt"), drop_last(&u)).unwrap();
    std::fs::write(dir.join("w_shp_base.txt"), &shp).unwrap();
    std::fs::write(dir.join("w_exp_base.txt"), &exp).unwrap();
    std::fs::write(dir.join("param_mean_v2.txt"), read("param_mean_v2.txt")).unwrap();
    std::fs::write(dir.join("param_std_v2.txt"), read("param_std_v2.txt")).unwrap();
    let e = Bfm::from_dir(&dir).unwrap_err().to_string();
    assert!(
        e.contains("u_base.txt") && e.contains("u_base has 203 rows, expected 204"),
        "{e}"
    );
    // The text whitening equals the safetensors one.
    std::fs::write(dir.join("u_base.txt"), &u).unwrap();
    assert_eq!(&Bfm::from_dir(&dir).unwrap(), b);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bases_round_trip_through_safetensors() {
    let b = bfm();
    let dir = temp_dir("st");
    let path = dir.join("3ddfa_bfm68.safetensors");
    b.save(&path).unwrap();
    assert_eq!(&Bfm::open(&path).unwrap(), b);
    let mut t = Weights::open(&path).unwrap().tensors().clone();
    t.insert(
        "w_exp_base".into(),
        HostTensor::new(vec![203, 10], vec![0.0; 2030]),
    );
    let e = Bfm::from_weights(&Weights::from_tensors("bfm68", t, Default::default()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("w_exp_base") && e.contains("[203, 10]") && e.contains("[204, 10]"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pose_follows_matrix2angle() {
    let params = |r: [[f64; 3]; 3], s: f64| {
        let mut p = [0f64; PARAMS];
        for i in 0..3 {
            for j in 0..3 {
                p[4 * i + j] = s * r[i][j];
            }
        }
        p
    };
    let eye = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    assert_eq!(Pose::from_params(&params(eye, 4.6e-4)), Pose::default());
    // matrix2angle reads yaw = asin(R20), pitch = atan2(R21, R22), roll = atan2(R10, R00): the
    // decomposition R = Rz(roll)·Ry(−yaw)·Rx(pitch).
    let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
        let mut c = [[0f64; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                c[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
            }
        }
        c
    };
    let (yaw, pitch, roll) = (20f64.to_radians(), -10f64.to_radians(), 5f64.to_radians());
    let rz = [
        [roll.cos(), -roll.sin(), 0.0],
        [roll.sin(), roll.cos(), 0.0],
        [0.0, 0.0, 1.0],
    ];
    let ry = [
        [(-yaw).cos(), 0.0, (-yaw).sin()],
        [0.0, 1.0, 0.0],
        [-(-yaw).sin(), 0.0, (-yaw).cos()],
    ];
    let rx = [
        [1.0, 0.0, 0.0],
        [0.0, pitch.cos(), -pitch.sin()],
        [0.0, pitch.sin(), pitch.cos()],
    ];
    let p = Pose::from_params(&params(mul(rz, mul(ry, rx)), 4.6e-4));
    for (g, w) in [(p.yaw, 20.0), (p.pitch, -10.0), (p.roll, 5.0)] {
        assert!((g as f64 - w).abs() < 1e-4, "{p:?}");
    }
    // Gimbal case: R[2,0] > 0.998 gives yaw 90 and roll 0.
    let g = [[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]];
    let p = Pose::from_params(&params(g, 1.0));
    assert!((p.yaw - 90.0).abs() < 1e-4 && p.roll == 0.0, "{p:?}");
}
