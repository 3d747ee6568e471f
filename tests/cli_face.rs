//! `fswap detect` and `fswap swap` end to end on the shared photos and video, as a user runs them:
//! a `--models` folder made by `tools/export.py` from the official files in ../shared/data (real
//! FaceBoxes, 3DDFA and MobileFaceNet weights) plus seeded random ArcFace and MobileFaceSwap
//! checkpoints (no trained ones exist here). Detection must match the official boxes, landmarks the
//! official pipeline's reference.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn data(rel: &str) -> PathBuf {
    let p = root().join("../shared/data").join(rel);
    assert!(
        p.exists(),
        "{} is missing: these tests need ../shared/data",
        p.display()
    );
    p
}

fn python(args: &[&str]) {
    let o = Command::new("python3")
        .args(args)
        .current_dir(root())
        .output()
        .expect("python3 (with numpy) is needed");
    assert!(
        o.status.success(),
        "python3 {args:?}:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The models folder, built once per test run.
fn models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fswap-models-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = |n: &str| dir.join(n).to_str().unwrap().to_string();
        for (src, name, model) in [
            (
                "faceboxes/FaceBoxesProd.pth",
                "faceboxes.safetensors",
                "faceboxes",
            ),
            (
                "3ddfa/mb05_120x120.pth",
                "3ddfa_mb05.safetensors",
                "3ddfa_mb05",
            ),
            (
                "identity/mobilefacenet_128.pt",
                "mobilefacenet128.safetensors",
                "mobilefacenet128",
            ),
        ] {
            python(&[
                "tools/export.py",
                data(src).to_str().unwrap(),
                &out(name),
                "--model",
                model,
                "--check",
                "-q",
            ]);
        }
        python(&[
            "tools/export.py",
            data("3ddfa").to_str().unwrap(),
            &out("3ddfa_bfm68.safetensors"),
            "--model",
            "3ddfa_bfm68",
            "-q",
        ]);
        for (model, extra, name) in [
            (
                "arcface",
                vec!["--arcface-depths", "1,1,1,1", "--seed", "2"],
                "arcface",
            ),
            ("mobilefaceswap", vec!["--seed", "1"], "mobilefaceswap"),
        ] {
            let pd = out(&format!("{name}.pdparams"));
            let mut args = vec!["tools/random_checkpoint.py", "--model", model];
            args.extend(extra.iter().copied());
            args.push(&pd);
            python(&args);
            python(&[
                "tools/export.py",
                &pd,
                &out(&format!("{name}.safetensors")),
                "--model",
                model,
                "-q",
            ]);
            std::fs::remove_file(&pd).unwrap();
        }
        // MobileFSGAN: seeded random PyTorch checkpoints (the generator's keys carry the
        // `module.` prefix of the official DDP checkpoints; export removes it).
        for (model, seed) in [("mobilefsgan", "4"), ("mobilefacenet", "5")] {
            let pth = out(&format!("{model}.pth"));
            python(&[
                "tools/random_checkpoint.py",
                "--model",
                model,
                "--seed",
                seed,
                &pth,
            ]);
            python(&[
                "tools/export.py",
                &pth,
                &out(&format!("{model}.safetensors")),
                "--model",
                model,
                "--check",
                "-q",
            ]);
            std::fs::remove_file(&pth).unwrap();
        }
        dir
    })
}

fn fswap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fswap"))
        .args(["--backend", "vulkan"])
        .args(args)
        .output()
        .expect("run fswap")
}

fn ok(o: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{what} failed:\n{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fswap-cli-face-{}-{name}", std::process::id()))
}

#[test]
fn detect_matches_official_boxes_and_landmarks() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/landmarks_reference.json")).unwrap(),
    )
    .unwrap();
    // data/README.md: the official FaceBoxes boxes (x1, y1, x2, y2, score).
    let boxes: &[(&str, &[[f64; 5]])] = &[
        (
            "trump_hillary.jpg",
            &[
                [228.9, 103.1, 466.1, 390.7, 0.998],
                [1040.4, 122.0, 1257.8, 428.4, 0.996],
            ],
        ),
        ("JianzhuGuo.jpg", &[[119.6, 93.5, 290.7, 312.4, 0.999]]),
        ("test2.jpg", &[[179.1, 68.1, 266.3, 189.9, 0.99]]),
    ];
    for (photo, want) in boxes {
        let draw = tmp(&format!("{photo}.png"));
        let out = ok(
            &fswap(&[
                "detect",
                data(&format!("photos/{photo}")).to_str().unwrap(),
                "--models",
                models().to_str().unwrap(),
                "--json",
                "--draw",
                draw.to_str().unwrap(),
            ]),
            "detect",
        );
        let got: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("detect --json printed {out}: {e}"));
        let faces = got["faces"].as_array().unwrap();
        assert_eq!(faces.len(), want.len(), "{photo}: faces");
        for (f, w) in faces.iter().zip(want.iter()) {
            let b: Vec<f64> = f["box"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            for k in 0..4 {
                assert!(
                    (b[k] - w[k]).abs() <= 2.0,
                    "{photo}: box {b:?} vs official {w:?}"
                );
            }
            let score = f["score"].as_f64().unwrap();
            assert!(
                if *photo == "test2.jpg" {
                    score > 0.99
                } else {
                    (score - w[4]).abs() <= 0.01
                },
                "{photo}: score {score}"
            );
            // The official pipeline's landmarks for this face (ROI from the official box).
            let r = reference["faces"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| {
                    r["image"] == *photo && (r["box"][0].as_f64().unwrap() - w[0]).abs() < 0.01
                })
                .expect("reference face");
            let pts = |v: &serde_json::Value| -> Vec<[f64; 2]> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()])
                    .collect()
            };
            let (g, rr) = (pts(&f["landmarks68"]), pts(&r["pts68"]));
            assert_eq!(g.len(), 68);
            let worst = g
                .iter()
                .zip(&rr)
                .map(|(a, b)| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt())
                .fold(0.0, f64::max);
            // The reference's ROI comes from the README boxes (rounded to 0.1 px); here it comes from
            // our own detection, within 0.12 px of them, which can flip the official crop's integer
            // rounding by a pixel (trump_hillary's first ROI sits exactly on a .5 tie). The 1.5 px
            // bar with the official boxes is checked in models_tddfa.rs; that one-pixel crop shift
            // moved points by 2.6 px at most here (measured), so 3 px.
            assert!(
                worst <= 3.0,
                "{photo}: landmarks {worst:.2} px from the reference"
            );
            assert_eq!(f["landmarks5"].as_array().unwrap().len(), 5);
            for k in ["yaw", "pitch", "roll"] {
                let d = (f["pose"][k].as_f64().unwrap() - r["pose"][k].as_f64().unwrap()).abs();
                assert!(d <= 1.0, "{photo}: {k} off by {d:.2}°");
            }
        }
        let img = image::open(&draw).unwrap();
        let _ = std::fs::remove_file(&draw);
        assert!(img.width() > 100, "--draw wrote an image");
    }
}

#[test]
fn swap_images_and_folder_with_report() {
    let out = tmp("swap.png");
    let stdout = ok(
        &fswap(&[
            "swap",
            "-s",
            data("photos/JianzhuGuo.jpg").to_str().unwrap(),
            "-t",
            data("photos/trump_hillary.jpg").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--models",
            models().to_str().unwrap(),
            "--report",
        ]),
        "swap image",
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("cos(result, source)"))
            .count(),
        2,
        "{stdout}"
    );
    let (a, b) = (
        image::open(&out).unwrap().to_rgb8(),
        image::open(data("photos/trump_hillary.jpg"))
            .unwrap()
            .to_rgb8(),
    );
    assert_eq!(a.dimensions(), b.dimensions());
    // Inside the faces the image changed; far from them it did not (beyond JPEG-free rounding).
    let diff = |x: u32, y: u32| {
        a.get_pixel(x, y)
            .0
            .iter()
            .zip(b.get_pixel(x, y).0)
            .map(|(p, q)| (*p as i32 - q as i32).abs())
            .max()
            .unwrap()
    };
    assert!(diff(347, 250) > 0 || diff(340, 260) > 0, "face 1 unchanged");
    assert!(
        diff(1149, 270) > 0 || diff(1150, 280) > 0,
        "face 2 unchanged"
    );
    for (x, y) in [(5, 5), (760, 650), (1530, 5)] {
        assert_eq!(
            diff(x, y),
            0,
            "pixel ({x}, {y}) away from the faces changed"
        );
    }
    let _ = std::fs::remove_file(&out);
    // A folder of targets into a folder.
    let dir = tmp("targets");
    std::fs::create_dir_all(&dir).unwrap();
    for p in ["JianzhuGuo.jpg", "test2.jpg"] {
        std::fs::copy(data(&format!("photos/{p}")), dir.join(p)).unwrap();
    }
    let out_dir = tmp("swapped");
    ok(
        &fswap(&[
            "swap",
            "-s",
            data("photos/test2.jpg").to_str().unwrap(),
            "-t",
            dir.to_str().unwrap(),
            "-o",
            out_dir.to_str().unwrap(),
            "--models",
            models().to_str().unwrap(),
            "--select",
            "largest",
            "--align",
            "similarity",
            "--colour-match",
        ]),
        "swap folder",
    );
    for p in ["JianzhuGuo.png", "test2.png"] {
        assert!(out_dir.join(p).exists(), "{p} written");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn swap_mobilefsgan_changes_only_the_face() {
    // The whole pipeline with MobileFSGAN (seeded random weights: the face it paints is not a
    // face): source identity through MobileFaceNet-512, the target face aligned to the 256
    // template, the generator, and the soft face ellipse pasted back. The output must have the
    // input's size, differ inside the ellipse, and equal the input exactly everywhere else.
    use fswap::face::align::{apply, lstsq_affine};
    use fswap::face::pipeline::{fsgan_template, FSGAN_MASK};
    let target = data("photos/test2.jpg");
    let out = tmp("fsgan.png");
    ok(
        &fswap(&[
            "swap",
            "-s",
            data("photos/JianzhuGuo.jpg").to_str().unwrap(),
            "-t",
            target.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--models",
            models().to_str().unwrap(),
            "--model",
            "mobilefsgan",
        ]),
        "swap --model mobilefsgan",
    );
    let detected: serde_json::Value = serde_json::from_str(&ok(
        &fswap(&[
            "detect",
            target.to_str().unwrap(),
            "--models",
            models().to_str().unwrap(),
            "--json",
        ]),
        "detect",
    ))
    .unwrap();
    let faces = detected["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1);
    let pts: Vec<[f64; 2]> = faces[0]["landmarks5"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()])
        .collect();
    let m = lstsq_affine(&pts, &fsgan_template()).unwrap(); // frame -> 256 crop
    let (a, b) = (
        image::open(&out).unwrap().to_rgb8(),
        image::open(&target).unwrap().to_rgb8(),
    );
    assert_eq!(a.dimensions(), b.dimensions());
    let ((cx, cy), (ax, ay), inner) = FSGAN_MASK;
    let (mut inside, mut inside_diff, mut outside) = (0usize, 0f64, 0usize);
    for y in 0..a.height() {
        for x in 0..a.width() {
            let [u, v] = apply(&m, [x as f64, y as f64]);
            let r = (((u - cx) / ax).powi(2) + ((v - cy) / ay).powi(2)).sqrt();
            let d = a
                .get_pixel(x, y)
                .0
                .iter()
                .zip(b.get_pixel(x, y).0)
                .map(|(p, q)| (*p as i32 - q as i32).abs())
                .max()
                .unwrap();
            // One crop pixel of bilinear support beyond the ellipse (≈ 0.015 of its radius).
            if r > 1.03 {
                assert_eq!(
                    d, 0,
                    "pixel ({x}, {y}) outside the face ellipse (r = {r:.3}) changed"
                );
                outside += 1;
            } else if r < inner {
                inside += 1;
                inside_diff += d as f64;
            }
        }
    }
    assert!(
        inside > 500 && outside > 100_000,
        "{inside} inside, {outside} outside"
    );
    let mean = inside_diff / inside as f64;
    assert!(
        mean > 10.0,
        "mean change {mean:.1} inside the face: the swap did nothing"
    );
    let _ = std::fs::remove_file(&out);
}

#[test]
fn swap_video_keeps_frames_and_audio() {
    let out = tmp("obama.mp4");
    let o = fswap(&[
        "swap",
        "-s",
        data("photos/JianzhuGuo.jpg").to_str().unwrap(),
        "-t",
        data("video/obama.mp4").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--models",
        models().to_str().unwrap(),
    ]);
    ok(&o, "swap video");
    let probe = |p: &Path, entries: &str| -> String {
        let o = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-count_frames",
                "-show_entries",
                entries,
                "-of",
                "default=nw=1",
            ])
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (src, dst) = (
        probe(
            &data("video/obama.mp4"),
            "stream=codec_type,width,height,nb_read_frames",
        ),
        probe(&out, "stream=codec_type,width,height,nb_read_frames"),
    );
    let _ = std::fs::remove_file(&out);
    assert!(dst.contains("codec_type=audio"), "audio kept: {dst}");
    let frames = |s: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix("nb_read_frames="))
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(
        frames(&dst),
        frames(&src),
        "every frame written: {dst} vs {src}"
    );
    assert!(
        dst.contains("width=1280") && dst.contains("height=720"),
        "{dst}"
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let gray = tmp("gray.png");
    image::RgbImage::from_pixel(200, 160, image::Rgb([128, 128, 128]))
        .save(&gray)
        .unwrap();
    let o = fswap(&[
        "swap",
        "-s",
        gray.to_str().unwrap(),
        "-t",
        data("photos/test2.jpg").to_str().unwrap(),
        "-o",
        tmp("x.png").to_str().unwrap(),
        "--models",
        models().to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("no face found in the source image"), "{e}");
    // A flat target passes through unchanged.
    let out = tmp("gray_out.png");
    ok(
        &fswap(&[
            "swap",
            "-s",
            data("photos/test2.jpg").to_str().unwrap(),
            "-t",
            gray.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--models",
            models().to_str().unwrap(),
        ]),
        "faceless target",
    );
    assert_eq!(
        image::open(&out).unwrap().to_rgb8(),
        image::open(&gray).unwrap().to_rgb8(),
        "a frame without a face is unchanged"
    );
    let empty = tmp("empty_models");
    std::fs::create_dir_all(&empty).unwrap();
    let o = fswap(&[
        "detect",
        data("photos/test2.jpg").to_str().unwrap(),
        "--models",
        empty.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("faceboxes.safetensors") && e.contains("missing model file"),
        "{e}"
    );
    // An unknown swap network is named.
    let o = fswap(&[
        "swap",
        "-s",
        data("photos/test2.jpg").to_str().unwrap(),
        "-t",
        gray.to_str().unwrap(),
        "-o",
        tmp("y.png").to_str().unwrap(),
        "--models",
        models().to_str().unwrap(),
        "--model",
        "simswap",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("'simswap'") && e.contains("mobilefsgan"), "{e}");
    for p in [gray, out, empty] {
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_dir_all(&p);
    }
}
