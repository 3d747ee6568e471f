//! `fswap extract` end to end on the shared photos and the first 2 s of the shared video, with the
//! real FaceBoxes, 3DDFA and MobileFaceNet-128 weights exported by `tools/export.py` into a temporary
//! `--models` folder; then the faceset read back with `Faceset::open`.
//!
//! What is checked against what:
//! - the crop pixels against an f64 bilinear warp of the decoded source (same decoder) through the
//!   stored matrix: the GPU warp (fp16 frame and crop) is within one 8-bit level;
//! - the matrix against faceswap's construction from the stored legacy matrix, offset and padding,
//!   and the legacy matrix against the mean face (landmarks 17–67 within 0.05 of the unit square on
//!   average: measured 0.011–0.034 on these faces);
//! - the face-centring offsets of the photos against OpenCV 5.0 `solvePnP(ITERATIVE)` +
//!   `projectPoints` run on the same unit-square landmarks (values below; OpenCV is not in CI);
//! - embeddings unit-norm, `--reference` keeping the reference's own face, `--dedupe`, `--min-size`,
//!   extending a faceset, and clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use fswap::face::faceset::{Faceset, MEAN_FACE_51};

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

/// The `--models` folder (the four files extract needs), exported once per test run.
fn models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fswap-extract-models-{}", std::process::id()));
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
        dir
    })
}

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("fswap-cli-extract-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

fn fswap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fswap"))
        .args(["--backend", "vulkan"])
        .args(args)
        .output()
        .expect("run fswap")
}

/// `fswap extract -i INPUT -o OUT --models M` plus `extra`.
fn extract(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "extract",
        "-i",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--models",
        models().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    fswap(&args)
}

fn ok(o: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "{what} failed:\n{}{stderr}",
        String::from_utf8_lossy(&o.stdout)
    );
    stderr
}

fn fails(o: &Output, what: &str, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{what} should fail: {e}");
    assert!(
        e.contains(needle),
        "{what}: expected '{needle}' in the error, got: {e}"
    );
    // fswap's error is the last `error:` line (drivers may print their own before it).
    let last = e
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("");
    assert!(
        last.contains(needle),
        "{what}: the last error line names it: {e}"
    );
}

fn apply(m: &[[f64; 3]; 2], p: [f64; 2]) -> [f64; 2] {
    [
        m[0][0] * p[0] + m[0][1] * p[1] + m[0][2],
        m[1][0] * p[0] + m[1][1] * p[1] + m[1][2],
    ]
}

fn invert(m: &[[f64; 3]; 2]) -> [[f64; 3]; 2] {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let (a, b, c, d) = (m[1][1] / det, -m[0][1] / det, -m[1][0] / det, m[0][0] / det);
    [
        [a, b, -(a * m[0][2] + b * m[1][2])],
        [c, d, -(c * m[0][2] + d * m[1][2])],
    ]
}

/// f64 bilinear warp of `img` to `size` with OpenCV `warpAffine` semantics (pixel centres at
/// integers, black outside), `m` frame → crop; rounded to 8 bits.
fn reference_warp(img: &image::RgbImage, m: &[[f64; 3]; 2], size: usize) -> Vec<u8> {
    let inv = invert(m);
    let (w, h) = (img.width() as i64, img.height() as i64);
    let tap = |x: i64, y: i64, c: usize| -> f64 {
        if x < 0 || y < 0 || x >= w || y >= h {
            0.0
        } else {
            img.get_pixel(x as u32, y as u32).0[c] as f64
        }
    };
    let mut out = Vec::with_capacity(size * size * 3);
    for y in 0..size {
        for x in 0..size {
            let s = apply(&inv, [x as f64, y as f64]);
            let (x0, y0) = (s[0].floor(), s[1].floor());
            let (fx, fy) = (s[0] - x0, s[1] - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            for c in 0..3 {
                let top = tap(x0, y0, c) * (1.0 - fx) + tap(x0 + 1, y0, c) * fx;
                let bot = tap(x0, y0 + 1, c) * (1.0 - fx) + tap(x0 + 1, y0 + 1, c) * fx;
                out.push((top * (1.0 - fy) + bot * fy).round() as u8);
            }
        }
    }
    out
}

/// Checks every face of a faceset as the module docs say; returns the parsed faceset.
fn check_faceset(dir: &Path, size: usize, centering: &str, check_pixels: bool) -> Faceset {
    // The raw file: every field a face record must have.
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("alignments.json")).unwrap())
            .unwrap();
    assert_eq!(raw["format"], "fswap-faceset");
    assert_eq!(raw["embedding_model"], "mobilefacenet128");
    for f in raw["faces"].as_array().unwrap() {
        for key in [
            "file",
            "source",
            "frame",
            "face",
            "box",
            "score",
            "landmarks",
            "matrix",
            "legacy_matrix",
            "size",
            "centering",
            "coverage",
            "padding",
            "offset",
            "embedding",
        ] {
            assert!(f.get(key).is_some(), "{key} missing in {f}");
        }
    }
    let set = Faceset::open(dir).unwrap_or_else(|e| panic!("Faceset::open: {e}"));
    assert_eq!((set.size, set.centering.name()), (size, centering));
    // The mean face constants are faceswap's (spot checks against spec alignment.md §B.1).
    assert_eq!(MEAN_FACE_51[0], [0.010086, 0.106454]);
    assert_eq!(MEAN_FACE_51[9], [0.989913, 0.106454]);
    assert_eq!(MEAN_FACE_51[16], [0.5, 0.628106]);
    assert_eq!(MEAN_FACE_51[40], [0.5, 0.909281]);
    for (i, f) in set.faces.iter().enumerate() {
        let what = &f.file;
        // File name: <stem>_<frame:06>_<face>.png.
        let stem = Path::new(&f.source).file_stem().unwrap().to_string_lossy();
        assert_eq!(
            f.file,
            format!("{stem}_{:06}_{}.png", f.frame, f.face),
            "file name"
        );
        // Unit embedding.
        let n: f64 = f
            .embedding
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert_eq!(f.embedding.len(), 128);
        assert!((n - 1.0).abs() < 1e-3, "{what}: embedding norm {n}");
        // Landmarks 17–67 through the legacy matrix near the mean face.
        let unit: Vec<[f64; 2]> = f
            .landmarks
            .iter()
            .map(|p| apply(&f.legacy_matrix, [p[0] as f64, p[1] as f64]))
            .collect();
        let dist = unit[17..]
            .iter()
            .zip(&MEAN_FACE_51)
            .map(|(p, m)| (p[0] - m[0]).abs() + (p[1] - m[1]).abs())
            .sum::<f64>()
            / 102.0;
        assert!(
            dist < 0.05,
            "{what}: mean distance from the mean face {dist}"
        );
        assert!((dist - f.average_distance).abs() < 1e-9);
        // The crop matrix is faceswap's: (legacy − offset)·(size − 2·pad) + pad ...
        let pad = f.padding as f64;
        let k = size as f64 - 2.0 * pad;
        for r in 0..2 {
            for c in 0..3 {
                let mut want = f.legacy_matrix[r][c];
                if c == 2 {
                    want = (want - f.offset[r]) * k + pad;
                } else {
                    want *= k;
                }
                assert!(
                    (f.matrix[r][c] - want).abs() < 1e-9 * want.abs().max(1.0),
                    "{what}: matrix {:?}",
                    f.matrix
                );
            }
        }
        // ... so the aligned landmarks sit on the shifted mean face (crop pixels).
        let crop = set.aligned_landmarks(i, size);
        let err = crop[17..]
            .iter()
            .zip(&MEAN_FACE_51)
            .map(|(p, m)| {
                let want = [
                    pad + (m[0] - f.offset[0]) * k,
                    pad + (m[1] - f.offset[1]) * k,
                ];
                (p[0] as f64 - want[0]).abs() + (p[1] as f64 - want[1]).abs()
            })
            .sum::<f64>()
            / 102.0;
        assert!(err < 0.05 * k, "{what}: {err} px from the mean face");
        // Pixels: the PNG is the source warped through the matrix.
        let png = image::open(set.path(i)).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (size as u32, size as u32));
        if check_pixels {
            let src = image::open(&f.source).unwrap().to_rgb8();
            let want = reference_warp(&src, &f.matrix, size);
            let diffs: Vec<i32> = png
                .as_raw()
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as i32 - *b as i32).abs())
                .collect();
            let max = *diffs.iter().max().unwrap();
            let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
            assert!(
                max <= 1 && mean < 0.05,
                "{what}: crop vs f64 warp: max {max} mean {mean:.4}"
            );
        }
    }
    set
}

#[test]
fn photos_folder_to_faceset() {
    let out = tmp("photos");
    let log = ok(
        &extract(&data("photos"), &out, &["--size", "128"]),
        "extract photos",
    );
    assert!(
        log.contains("4 faces kept of 4 found in 3 frame(s)"),
        "{log}"
    );
    let set = check_faceset(&out, 128, "face", true);
    let mut files: Vec<&str> = set.faces.iter().map(|f| f.file.as_str()).collect();
    files.sort();
    assert_eq!(
        files,
        [
            "JianzhuGuo_000000_0.png",
            "test2_000000_0.png",
            "trump_hillary_000000_0.png",
            "trump_hillary_000000_1.png"
        ]
    );
    // Face centring offsets vs OpenCV 5.0 solvePnP(ITERATIVE) + projectPoints of (0, −1.5, 4.2)
    // on the same unit-square landmarks (a local check with faceswap's PoseEstimate code path).
    let opencv = [
        ("JianzhuGuo_000000_0.png", [-0.000878, -0.166157]),
        ("test2_000000_0.png", [0.070040, -0.186686]),
        ("trump_hillary_000000_0.png", [-0.032126, -0.183499]),
        ("trump_hillary_000000_1.png", [-0.037892, -0.182402]),
    ];
    for (file, want) in opencv {
        let f = set.faces.iter().find(|f| f.file == file).unwrap();
        for k in 0..2 {
            assert!(
                (f.offset[k] - want[k]).abs() < 1e-3,
                "{file}: offset {:?} vs OpenCV {want:?}",
                f.offset
            );
        }
    }
    // Different people are far apart in identity (measured cos ≤ 0.33).
    let e = |name: &str| &set.faces.iter().find(|f| f.file == name).unwrap().embedding;
    let cos = fswap::models::mobilefacenet::cosine(
        e("trump_hillary_000000_0.png"),
        e("trump_hillary_000000_1.png"),
    );
    assert!(cos < 0.4, "two people at cos {cos}");
    // The trainer's view: planar floats at another size, landmarks scaled with it.
    let planar = set.load_planar(0, 64).unwrap();
    assert_eq!(planar.len(), 3 * 64 * 64);
    assert!(planar.iter().all(|v| (0.0..=1.0).contains(v)));
    let l128 = set.aligned_landmarks(0, 128);
    let l64 = set.aligned_landmarks(0, 64);
    assert!(((l128[30][0] + 0.5) / 2.0 - 0.5 - l64[30][0]).abs() < 1e-4);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn reference_min_size_dedupe_and_extend() {
    // --reference keeps the reference's own face; --min-size 150 drops test2 (box 87×122).
    let out = tmp("reference");
    let log = ok(
        &extract(
            &data("photos"),
            &out,
            &[
                "--size",
                "64",
                "--centering",
                "head",
                "--reference",
                data("photos/JianzhuGuo.jpg").to_str().unwrap(),
                "--min-size",
                "150",
            ],
        ),
        "extract --reference",
    );
    assert!(
        log.contains(
            "1 faces kept of 4 found in 3 frame(s) (1 too small, 0 not alignable, 2 not similar"
        ),
        "{log}"
    );
    let set = check_faceset(&out, 64, "head", true);
    assert_eq!(set.len(), 1);
    assert_eq!(set.faces[0].file, "JianzhuGuo_000000_0.png");
    // Its padding is the spec's: round(64·(0.625 + 1 − 1)/2) = 20.
    assert_eq!(set.faces[0].padding, 20);
    let _ = std::fs::remove_dir_all(&out);

    // --dedupe: the same photo twice keeps one face; then the faceset is extended by another
    // photo, and a second run with other crop settings is refused before any work.
    let input = tmp("dupes");
    std::fs::create_dir_all(&input).unwrap();
    for name in ["a.jpg", "b.jpg"] {
        std::fs::copy(data("photos/test2.jpg"), input.join(name)).unwrap();
    }
    let out = tmp("dedupe");
    let log = ok(
        &extract(
            &input,
            &out,
            &[
                "--size",
                "64",
                "--dedupe",
                "0.01",
                "--dedupe-pixels",
                "0.01",
            ],
        ),
        "extract --dedupe",
    );
    assert!(log.contains("1 duplicates"), "{log}");
    assert_eq!(Faceset::open(&out).unwrap().len(), 1);
    let log = ok(
        &extract(&data("photos/JianzhuGuo.jpg"), &out, &["--size", "64"]),
        "extend",
    );
    assert!(log.contains("the faceset has 2 faces (1 before)"), "{log}");
    let set = check_faceset(&out, 64, "face", true);
    assert_eq!(set.len(), 2);
    fails(
        &extract(&data("photos/JianzhuGuo.jpg"), &out, &["--size", "128"]),
        "other settings",
        "extract with the same --size",
    );
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&input);
}

#[test]
fn video_first_two_seconds() {
    let out = tmp("video");
    let log = ok(
        &extract(
            &data("video/obama.mp4"),
            &out,
            &[
                "--size",
                "64",
                "--centering",
                "legacy",
                "--every",
                "10",
                "--max-frames",
                "50",
            ],
        ),
        "extract video",
    );
    assert!(
        log.contains("5 faces kept of 5 found in 5 frame(s)"),
        "{log}"
    );
    let set = check_faceset(&out, 64, "legacy", false);
    let frames: Vec<u64> = set.faces.iter().map(|f| f.frame).collect();
    assert_eq!(frames, [0, 10, 20, 30, 40]);
    for f in &set.faces {
        // Legacy centring: no offset, padding round(64·0.375/2) = 12.
        assert_eq!((f.offset, f.padding), ([0.0, 0.0], 12));
    }
    // One person: identity cosines between the frames are high (measured 0.71–0.98).
    for f in &set.faces[1..] {
        let c = fswap::models::mobilefacenet::cosine(&f.embedding, &set.faces[0].embedding);
        assert!(c > 0.5, "{}: cos {c} to frame 0", f.file);
    }
    // Every face too small: a clear error, no faceset written.
    let none = tmp("video-none");
    fails(
        &extract(
            &data("video/obama.mp4"),
            &none,
            &["--size", "64", "--max-frames", "1", "--min-size", "90%"],
        ),
        "min-size 90%",
        "no face was kept",
    );
    assert!(!none.join("alignments.json").exists());
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&none);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let out = tmp("errors-out");
    fails(
        &extract(Path::new("/nonexistent/video.mp4"), &out, &[]),
        "missing input",
        "input not found",
    );
    let empty = tmp("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails(&extract(&empty, &out, &[]), "empty folder", "no images");
    let junk = tmp("junk.png");
    std::fs::write(&junk, b"not an image").unwrap();
    fails(
        &extract(&junk, &out, &[]),
        "unreadable image",
        "cannot decode",
    );
    let junk_video = tmp("junk.mp4");
    std::fs::write(&junk_video, b"not a video").unwrap();
    fails(
        &extract(&junk_video, &out, &[]),
        "unreadable video",
        "ffprobe",
    );
    for (args, needle) in [
        (&["--size", "32"][..], "64 to 256"),
        (
            &["--centering", "nose"][..],
            "expected legacy, face or head",
        ),
        (&["--coverage", "0.3"][..], "0.625 to 1.0"),
        (&["--min-size", "big"][..], "--min-size"),
        (&["--every", "0"][..], "--every"),
    ] {
        fails(
            &extract(&data("photos/test2.jpg"), &out, args),
            needle,
            needle,
        );
    }
    // A photo without a face (needs the models).
    let gray = tmp("gray.png");
    image::RgbImage::from_pixel(200, 160, image::Rgb([128, 128, 128]))
        .save(&gray)
        .unwrap();
    fails(&extract(&gray, &out, &[]), "faceless", "no face found");
    assert!(!out.join("alignments.json").exists());
    // Missing model files are named.
    fails(
        &fswap(&[
            "extract",
            "-i",
            data("photos/test2.jpg").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--models",
            empty.to_str().unwrap(),
        ]),
        "no models",
        "faceboxes.safetensors",
    );
    for p in [out, empty, junk, junk_video, gray] {
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
    }
}

#[test]
fn faceset_open_validates() {
    let missing = tmp("not-a-faceset");
    std::fs::create_dir_all(&missing).unwrap();
    let e = Faceset::open(&missing).unwrap_err().to_string();
    assert!(e.contains("alignments.json"), "{e}");
    // A tiny faceset written by hand: one face, then broken in several ways.
    let dir = tmp("handmade");
    std::fs::create_dir_all(&dir).unwrap();
    image::RgbImage::from_pixel(64, 64, image::Rgb([10, 20, 30]))
        .save(dir.join("x_000000_0.png"))
        .unwrap();
    let mut emb = vec![0.0f32; 128];
    emb[3] = 1.0;
    let face = serde_json::json!({
        "file": "x_000000_0.png", "source": "x.png", "frame": 0, "face": 0,
        "box": [0.0, 0.0, 10.0, 10.0], "score": 0.9,
        "landmarks": vec![[1.0f32, 2.0f32]; 68],
        "matrix": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        "legacy_matrix": [[0.01, 0.0, 0.0], [0.0, 0.01, 0.0]],
        "size": 64, "centering": "face", "coverage": 1.0, "padding": 16,
        "offset": [0.0, 0.0], "average_distance": 0.0, "embedding": emb,
    });
    let write = |f: &serde_json::Value| {
        let doc = serde_json::json!({"format": "fswap-faceset", "version": 1,
            "embedding_model": "mobilefacenet128", "faces": [f]});
        std::fs::write(dir.join("alignments.json"), doc.to_string()).unwrap();
    };
    write(&face);
    let set = Faceset::open(&dir).unwrap();
    assert_eq!((set.len(), set.size), (1, 64));
    assert_eq!(set.load(0).unwrap().dimensions(), (64, 64));
    assert!(set.load(1).is_err());
    let broken: [(&str, serde_json::Value, &str); 5] = [
        ("padding", serde_json::json!(15), "padding"),
        (
            "embedding",
            serde_json::json!(vec![0.5f32; 128]),
            "embedding",
        ),
        (
            "landmarks",
            serde_json::json!(vec![[1.0f32, 2.0]; 5]),
            "landmarks",
        ),
        (
            "matrix",
            serde_json::json!([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
            "invertible",
        ),
        ("file", serde_json::json!("gone.png"), "gone.png"),
    ];
    for (key, value, needle) in broken {
        let mut f = face.clone();
        f[key] = value;
        write(&f);
        let e = Faceset::open(&dir).unwrap_err().to_string();
        assert!(e.contains(needle), "{key}: {e}");
    }
    // A PNG of the wrong size.
    write(&face);
    image::RgbImage::from_pixel(32, 32, image::Rgb([0, 0, 0]))
        .save(dir.join("x_000000_0.png"))
        .unwrap();
    let e = Faceset::open(&dir).unwrap_err().to_string();
    assert!(e.contains("32x32"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&missing);
}
