//! `fswap convert` end to end, and its library parts, on the shared photos and video: a `--models`
//! folder exported by `tools/export.py` from the real FaceBoxes, 3DDFA and MobileFaceNet-128
//! weights; two facesets extracted in the test by `fswap extract` itself (A: the 5 frames of a
//! 1 s, 320×180, 5 frames/s cut of the Obama clip; B: `JianzhuGuo.jpg`), both 64 px, face centring, coverage
//! 0.875; and run folders holding seeded random Lightweight-64 weights
//! (`faceswap_ae::init_weights`, no trained model exists here) written by `save_run_model`.
//!
//! What is checked against what:
//! - the paste stage (GPU warp + blend) against an f64 `warpAffine`-and-blend reference on every
//!   device configuration (Vulkan f16, Vulkan packed, GL), and in situ inside a real conversion;
//! - the decoded face against `faceswap_ae::eval` of the same crop (the right decoder is used);
//! - the CLI's outputs: sizes, frame count and audio stream (ffprobe), pixels outside every
//!   pasted crop bit-exact, the face region changed, mask and colour modes doing what they say;
//! - the run folder's round trip and every error a user can hit, as one clear line.
//!
//! Colour matching and mask arithmetic are checked against f64 references in the unit tests of
//! `fswap::face::convert`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use fswap::face::align::apply;
use fswap::face::convert::{
    face_mask, match_colour, save_run_model, ColourMode, ConvertOptions, Converter, Direction,
    Erode, Layout, MaskMode, PasteBack, Patch, RunMeta, RunModel, MODEL_FILE,
};
use fswap::face::faceset::{Centering, Faceset};
use fswap::models::faceswap_ae::{self, Arch, Autoencoder, Config, Side};
use fswap::weights::{write_safetensors, HostTensor};
use image::RgbImage;

const SIZE: usize = 64;
const COVERAGE: &str = "0.875";

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

fn run_cmd(cmd: &mut Command, what: &str) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        o.status.success(),
        "{what}:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The test's scratch folder (this process only; removed at the start of the next run).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::temp_dir();
        // Run folders hold 200+ MB of weights: drop those of earlier, finished test processes.
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("fswap-cli-convert-") {
                    if Path::new("/proc").is_dir() && !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = base.join(format!("fswap-cli-convert-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fn tmp(name: &str) -> PathBuf {
    let p = scratch().join(name);
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
    // fswap's error is the last `error:` line (drivers may print their own before it).
    let last = e
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("");
    assert!(
        last.contains(needle),
        "{what}: expected '{needle}' in the error line, got: {e}"
    );
    assert!(!e.contains("internal error"), "{what}: a panic: {e}");
}

/// Everything the tests share, made once.
struct Setup {
    models: PathBuf,
    /// 1 s of the Obama clip at 320×180 and 5 frames/s, with its audio.
    clip: PathBuf,
    faceset_a: PathBuf,
    faceset_b: PathBuf,
    /// Lightweight 64, no mask branch.
    run: PathBuf,
    /// Lightweight 64 with the learned-mask branch.
    run_mask: PathBuf,
}

fn meta(s_a: &Path, s_b: &Path, learn_mask: bool) -> RunMeta {
    RunMeta {
        arch: Arch::Lightweight,
        size: SIZE,
        learn_mask,
        centering: Centering::Face,
        coverage: COVERAGE.parse().unwrap(),
        faceset_a: s_a.to_path_buf(),
        faceset_b: s_b.to_path_buf(),
    }
}

/// A run folder with seeded random weights, saved from the engine layout (as a training graph
/// holds them).
fn make_run(dir: &Path, m: &RunMeta, seed: u64) {
    let cfg = Config::new(m.arch, m.size).unwrap().with_mask(m.learn_mask);
    let w = faceswap_ae::init_weights(&cfg, seed, false);
    let (_, engine) = faceswap_ae::to_engine(m.arch, &w).unwrap();
    let path = save_run_model(dir, m, engine.tensors(), Layout::Engine).unwrap();
    assert_eq!(path, dir.join(MODEL_FILE));
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let models = scratch().join("models");
        std::fs::create_dir_all(&models).unwrap();
        let out = |n: &str| models.join(n).to_str().unwrap().to_string();
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
            ("3ddfa", "3ddfa_bfm68.safetensors", "3ddfa_bfm68"),
        ] {
            run_cmd(
                Command::new("python3")
                    .args(["tools/export.py", data(src).to_str().unwrap(), &out(name)])
                    .args(["--model", model, "-q"])
                    .current_dir(root()),
                "tools/export.py (python3 with numpy)",
            );
        }
        let clip = scratch().join("clip.mp4");
        run_cmd(
            Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-t", "1", "-i"])
                .arg(data("video/obama.mp4"))
                .args(["-vf", "scale=320:180,fps=5", "-c:v", "libx264", "-preset"])
                .args(["ultrafast", "-c:a", "copy"])
                .arg(&clip),
            "ffmpeg (cut the test clip)",
        );
        let faceset_a = scratch().join("faceset_a");
        let faceset_b = scratch().join("faceset_b");
        let crop = [
            "--size",
            "64",
            "--centering",
            "face",
            "--coverage",
            COVERAGE,
        ];
        for (input, out, extra) in [
            (clip.clone(), &faceset_a, &[][..]),
            (data("photos/JianzhuGuo.jpg"), &faceset_b, &[][..]),
        ] {
            let mut args = vec![
                "extract",
                "-i",
                input.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--models",
                models.to_str().unwrap(),
            ];
            args.extend_from_slice(&crop);
            args.extend_from_slice(extra);
            ok(&fswap(&args), "fswap extract");
        }
        let run = scratch().join("run");
        let run_mask = scratch().join("run_mask");
        make_run(&run, &meta(&faceset_a, &faceset_b, false), 7);
        make_run(&run_mask, &meta(&faceset_a, &faceset_b, true), 8);
        Setup {
            models,
            clip,
            faceset_a,
            faceset_b,
            run,
            run_mask,
        }
    })
}

/// `fswap convert -i INPUT -o OUTPUT --run RUN --models M` plus `extra`.
fn convert(input: &Path, output: &Path, run: &Path, extra: &[&str]) -> Output {
    let s = setup();
    let mut args = vec![
        "convert",
        "-i",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
        "--models",
        s.models.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    fswap(&args)
}

fn load(p: &Path) -> RgbImage {
    image::open(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .to_rgb8()
}

/// Whether frame pixel (x, y) can be touched by a paste through `m` (frame → crop): its crop
/// position within the bilinear footprint of the `SIZE` crop.
fn in_footprint(m: &[[f64; 3]; 2], x: u32, y: u32) -> bool {
    let q = apply(m, [x as f64, y as f64]);
    q.iter().all(|&v| v > -1.0 && v < SIZE as f64)
}

/// Pixel counts of a converted photo against its input: (changed outside every crop footprint,
/// changed inside the landmark box of the face, pixels in that box).
fn compare(input: &RgbImage, output: &RgbImage, set: &Faceset) -> (usize, usize, usize) {
    assert_eq!(input.dimensions(), output.dimensions());
    let mut outside = 0;
    for (x, y, p) in output.enumerate_pixels() {
        if p != input.get_pixel(x, y) && !set.faces.iter().any(|f| in_footprint(&f.matrix, x, y)) {
            outside += 1;
        }
    }
    let (x0, x1, y0, y1) = face_box(set);
    let (mut inside, mut total) = (0, 0);
    for y in y0..y1 {
        for x in x0..x1 {
            total += 1;
            inside += (output.get_pixel(x, y) != input.get_pixel(x, y)) as usize;
        }
    }
    (outside, inside, total)
}

/// The box of the first face's eyes, nose and mouth (landmarks 27–67: inside every mask mode):
/// `(x0, x1, y0, y1)`, frame pixels.
fn face_box(set: &Faceset) -> (u32, u32, u32, u32) {
    let f = &set.faces[0];
    let (mut lo, mut hi) = ([f32::MAX; 2], [f32::MIN; 2]);
    for p in &f.landmarks[27..] {
        for k in 0..2 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    (
        lo[0].ceil() as u32,
        hi[0].floor() as u32,
        lo[1].ceil() as u32,
        hi[1].floor() as u32,
    )
}

/// Mean absolute difference (8-bit levels) over [`face_box`].
fn face_diff(a: &RgbImage, b: &RgbImage, set: &Faceset) -> f64 {
    let (x0, x1, y0, y1) = face_box(set);
    let mut s = 0.0;
    let mut n = 0.0;
    for y in y0..y1 {
        for x in x0..x1 {
            for c in 0..3 {
                s += (a.get_pixel(x, y).0[c] as f64 - b.get_pixel(x, y).0[c] as f64).abs();
                n += 1.0;
            }
        }
    }
    s / n
}

#[test]
fn photo_storage_paths_masks_and_colours() {
    // One face per run costs seconds on lavapipe (3.3 GMAC): four runs cover the storage paths,
    // the three masks and the three colour modes; the arithmetic of each is unit-tested.
    let s = setup();
    let photo = data("photos/JianzhuGuo.jpg");
    let input = load(&photo);
    let set_b = Faceset::open(&s.faceset_b).unwrap();
    let changed = |img: &RgbImage| -> usize {
        img.pixels()
            .zip(input.pixels())
            .filter(|(a, b)| a != b)
            .count()
    };
    let run = |name: &str, run: &Path, extra: &[&str]| -> RgbImage {
        let out = tmp(name);
        let mut args = vec!["--direction", "b2a"];
        args.extend_from_slice(extra);
        let log = ok(&convert(&photo, &out, run, &args), name);
        assert!(
            log.contains("1 face(s) swapped in 1 of 1 frame(s) (1 found, 0 not of identity B"),
            "{name}: {log}"
        );
        let img = load(&out);
        let (outside, inside, total) = compare(&input, &img, &set_b);
        assert_eq!(outside, 0, "{name}: pixels changed outside the crop");
        assert!(
            inside as f64 > 0.8 * total as f64,
            "{name}: only {inside} of {total} face pixels changed"
        );
        img
    };
    // Defaults: hull mask, avg-color, on both storage paths.
    let hull = run("hull.png", &s.run, &[]);
    let packed = run("packed.png", &s.run, &["--storage", "packed"]);
    // The same picture up to fp16 arithmetic differences (random weights amplify them a little).
    let d = face_diff(&hull, &packed, &set_b);
    eprintln!("f16 vs packed: mean difference {d:.3} levels over the face");
    assert!(d < 0.5, "f16 vs packed: mean difference {d:.3} levels");
    // The box covers the whole crop (its 58 px core of 64): more of the frame than the hull.
    let boxed = run(
        "box.png",
        &s.run,
        &["--mask", "box", "--colour", "hist-match"],
    );
    let (cb, ch) = (changed(&boxed), changed(&hull));
    assert!(cb as f64 > 1.2 * ch as f64, "box {cb} vs hull {ch} pixels");
    assert!(
        face_diff(&boxed, &hull, &set_b) > 1.0,
        "hist-match vs avg-color"
    );
    // The learned mask of a model with the branch, dilated by 5 % of its radius, no colour
    // matching.
    let learned = run(
        "learned.png",
        &s.run_mask,
        &["--mask", "learned", "--erode", "-5%", "--colour", "none"],
    );
    assert!(face_diff(&learned, &hull, &set_b) > 1.0);
}

#[test]
fn folder_swaps_only_the_identity() {
    let s = setup();
    let input = tmp("folder_in");
    std::fs::create_dir_all(&input).unwrap();
    for name in ["JianzhuGuo.jpg", "trump_hillary.jpg"] {
        std::fs::copy(data(&format!("photos/{name}")), input.join(name)).unwrap();
    }
    let out = tmp("folder_out");
    let log = ok(
        &convert(&input, &out, &s.run, &["--direction", "b2a"]),
        "convert folder",
    );
    // JianzhuGuo is identity B; neither face of trump_hillary is (cosines 0.01, −0.08).
    assert!(
        log.contains("1 face(s) swapped in 1 of 2 frame(s) (3 found, 2 not of identity B"),
        "{log}"
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["JianzhuGuo.png", "trump_hillary.png"],
        "no staging left"
    );
    let th = load(&data("photos/trump_hillary.jpg"));
    assert_eq!(
        load(&out.join("trump_hillary.png")),
        th,
        "passes through unchanged"
    );
    let jz = load(&data("photos/JianzhuGuo.jpg"));
    let set_b = Faceset::open(&s.faceset_b).unwrap();
    let (outside, inside, total) = compare(&jz, &load(&out.join("JianzhuGuo.png")), &set_b);
    assert_eq!(outside, 0);
    assert!(inside as f64 > 0.8 * total as f64);

    // --all-faces swaps a face that is not identity B (test2.jpg, cos 0.09 to B).
    let all = tmp("all.png");
    let log = ok(
        &convert(
            &data("photos/test2.jpg"),
            &all,
            &s.run,
            &["--direction", "b2a", "--all-faces"],
        ),
        "convert --all-faces",
    );
    assert!(
        log.contains("1 face(s) swapped in 1 of 1 frame(s)"),
        "{log}"
    );
    // Around the official detection box centre (data/README.md: 179.1, 68.1, 266.3, 189.9).
    let (all, t2) = (load(&all), load(&data("photos/test2.jpg")));
    let n = (119..139)
        .flat_map(|y| (212..232).map(move |x| (x, y)))
        .filter(|&(x, y)| all.get_pixel(x, y) != t2.get_pixel(x, y))
        .count();
    assert!(n > 300, "{n} of 400 face pixels changed");
}

#[test]
fn video_keeps_frames_and_audio() {
    let s = setup();
    let out = tmp("video.mp4");
    let log = ok(&convert(&s.clip, &out, &s.run, &[]), "convert video");
    let probe = |p: &Path, stream: &str| -> String {
        let o = run_cmd(
            Command::new("ffprobe")
                .args(["-v", "error", "-count_frames", "-select_streams", stream])
                .args([
                    "-show_entries",
                    "stream=codec_type,width,height,nb_read_frames",
                    "-of",
                    "csv=p=0",
                ])
                .arg(p),
            "ffprobe",
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let video_in = probe(&s.clip, "v:0");
    let video_out = probe(&out, "v:0");
    assert_eq!(video_in, "video,320,180,5");
    assert_eq!(video_out, video_in, "same size and frame count");
    assert!(probe(&out, "a:0").starts_with("audio"), "audio kept");
    // Obama is identity A in every frame (cosines to the faceset's mean 0.69–0.95).
    assert!(
        log.contains("5 face(s) swapped in 5 of 5 frame(s)"),
        "{log}"
    );
    assert!(!scratch().join("video.partial.mp4").exists());
}

#[test]
fn errors_are_one_clear_line() {
    let s = setup();
    let photo = data("photos/JianzhuGuo.jpg");
    let out = tmp("err.png");
    fails(
        &convert(&photo, &out, &tmp("no_such_run"), &[]),
        "missing run folder",
        "the run folder does not exist",
    );
    let empty = tmp("empty_run");
    std::fs::create_dir_all(&empty).unwrap();
    fails(
        &convert(&photo, &out, &empty, &[]),
        "run folder without model",
        "no model.safetensors in the run folder",
    );
    // A model file with the wrong metadata, then one with the right metadata and wrong tensors.
    let bad = tmp("bad_run");
    std::fs::create_dir_all(&bad).unwrap();
    let t = std::collections::BTreeMap::from([(
        "encoder.conv1.weight".to_string(),
        HostTensor::new(vec![2, 3, 5, 5], vec![0.0; 150]),
    )]);
    let mut m = meta(&s.faceset_a, &s.faceset_b, false).to_metadata();
    m.insert("fswap.centering".into(), "middle".into());
    write_safetensors(bad.join(MODEL_FILE), &t, m.clone()).unwrap();
    fails(
        &convert(&photo, &out, &bad, &[]),
        "bad centring",
        "fswap.centering is 'middle' (expected legacy, face or head)",
    );
    m.insert("fswap.centering".into(), "face".into());
    write_safetensors(bad.join(MODEL_FILE), &t, m).unwrap();
    let o = convert(&photo, &out, &bad, &[]);
    fails(
        &o,
        "wrong tensors",
        "does not match the faceswap_lightweight manifest",
    );
    // ... and the lines after it name every problem.
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("'encoder.conv1.weight'") && e.contains("missing 'decoder_b.face_out.bias'"),
        "{e}"
    );
    fails(
        &convert(&photo, &out, &s.run, &["--mask", "learned"]),
        "learned mask without a branch",
        "learned needs a model trained with the learned-mask branch",
    );
    fails(
        &convert(&photo, &out, &s.run, &["--direction", "sideways"]),
        "bad direction",
        "expected a2b or b2a",
    );
    fails(
        &convert(&s.clip, &out, &s.run, &[]),
        "video into an image",
        "a video input needs a video output",
    );
    // Nobody in trump_hillary looks like B: an error, and nothing written.
    fails(
        &convert(
            &data("photos/trump_hillary.jpg"),
            &out,
            &s.run,
            &["--direction", "b2a"],
        ),
        "no face of the identity",
        "no face of identity B in 1 frame(s): 2 faces were found but none looks like identity B",
    );
    assert!(!out.exists(), "nothing written");
    // The training faceset moved away: say so, and how to go on.
    let moved = tmp("moved_run");
    let lost = meta(&scratch().join("gone_a"), &s.faceset_b, false);
    let w = fswap::weights::Weights::open(s.run.join(MODEL_FILE)).unwrap();
    save_run_model(&moved, &lost, w.tensors(), Layout::File).unwrap();
    drop(w);
    fails(
        &convert(&photo, &out, &moved, &[]),
        "faceset moved",
        "pass --faceset DIR",
    );
    let _ = std::fs::remove_dir_all(&moved);
}

#[test]
fn run_model_round_trip_and_checks() {
    let s = setup();
    let run = RunModel::open(&s.run).unwrap();
    assert_eq!(run.meta, meta(&s.faceset_a, &s.faceset_b, false));
    assert_eq!((run.config.size, run.config.learn_mask), (64, false));
    // Saved from the engine layout, stored in the file layout: the init weights exactly.
    let cfg = Config::new(Arch::Lightweight, SIZE).unwrap();
    let want = faceswap_ae::init_weights(&cfg, 7, false);
    assert_eq!(run.weights.tensors(), want.tensors());
    let masked = RunModel::open(&s.run_mask).unwrap();
    assert!(masked.config.learn_mask && masked.meta.learn_mask);
    // The metadata must agree with the weights.
    let wrong = tmp("wrong_meta");
    let mut m = meta(&s.faceset_a, &s.faceset_b, false);
    m.size = 80;
    let e = save_run_model(&wrong, &m, run.weights.tensors(), Layout::File)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fswap.size says 80"), "{e}");
    let mut m = meta(&s.faceset_a, &s.faceset_b, true);
    let e = save_run_model(&wrong, &m, run.weights.tensors(), Layout::File)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fswap.learn_mask says true"), "{e}");
    m.learn_mask = false;
    m.arch = Arch::Original;
    assert!(save_run_model(&wrong, &m, run.weights.tensors(), Layout::File).is_err());
    assert!(!wrong.join(MODEL_FILE).exists());
}

/// f64 reference of the paste: OpenCV `warpAffine(WARP_INVERSE_MAP)` bilinear with a zero border
/// of the face and mask, then `frame·(1 − m) + face·m`, rounded to 8 bits.
fn reference_paste(frame: &RgbImage, patches: &[Patch], size: usize) -> Vec<f64> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let mut out: Vec<f64> = frame.as_raw().iter().map(|&v| v as f64 / 255.0).collect();
    for p in patches {
        let tap = |plane: &[f32], x: i64, y: i64| -> f64 {
            if x < 0 || y < 0 || x >= size as i64 || y >= size as i64 {
                0.0
            } else {
                plane[y as usize * size + x as usize] as f64
            }
        };
        let sample = |plane: &[f32], q: [f64; 2]| -> f64 {
            let (x0, y0) = (q[0].floor(), q[1].floor());
            let (fx, fy) = (q[0] - x0, q[1] - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let top = tap(plane, x0, y0) * (1.0 - fx) + tap(plane, x0 + 1, y0) * fx;
            let bot = tap(plane, x0, y0 + 1) * (1.0 - fx) + tap(plane, x0 + 1, y0 + 1) * fx;
            top * (1.0 - fy) + bot * fy
        };
        let plane = size * size;
        for y in 0..h {
            for x in 0..w {
                let q = apply(&p.matrix, [x as f64, y as f64]);
                let m = sample(&p.mask, q);
                for c in 0..3 {
                    let f = sample(&p.face[c * plane..(c + 1) * plane], q);
                    let o = &mut out[(y * w + x) * 3 + c];
                    *o = *o * (1.0 - m) + f * m;
                }
            }
        }
    }
    out
}

/// Compares a pasted frame with [`reference_paste`]: every channel within one 8-bit level (the
/// final rounding, 0.5, plus four fp16 roundings of values ≤ 1 — the face, the warped face, the
/// warped mask, the blended frame — of at most 2⁻¹²·255 = 0.062 level each: 0.75), the mean
/// within 0.3, and bit-exact wherever no mask reaches.
fn check_paste(got: &RgbImage, want: &[f64], frame: &RgbImage, untouched: &[bool], what: &str) {
    let mut max = 0.0f64;
    let mut sum = 0.0;
    for (i, (&g, &r)) in got.as_raw().iter().zip(want).enumerate() {
        let d = (g as f64 - r * 255.0).abs();
        max = max.max(d);
        sum += d;
        if untouched[i / 3] {
            assert_eq!(g, frame.as_raw()[i], "{what}: pixel {} moved", i / 3);
        }
    }
    let mean = sum / want.len() as f64;
    eprintln!("{what}: paste vs f64: max {max:.3}, mean {mean:.4} levels");
    assert!(
        max < 1.0 && mean < 0.3,
        "{what}: max {max:.3} mean {mean:.3} levels"
    );
}

#[test]
fn paste_matches_the_f64_reference_on_every_device() {
    let (w, h, size) = (150usize, 110usize, 64usize);
    let mut rng = common::Rng::new(5);
    let frame = RgbImage::from_fn(w as u32, h as u32, |_, _| {
        image::Rgb([0, 1, 2].map(|_| (rng.next_u64() % 256) as u8))
    });
    let mut patches = Vec::new();
    for (scale, angle, cx, cy) in [(1.3, 0.3, 60.0, 50.0), (0.7, -0.5, 95.0, 60.0)] {
        let face: Vec<f32> = (0..3 * size * size)
            .map(|_| (rng.next_u64() % 1000) as f32 / 999.0)
            .collect();
        // A soft disc with a hard core.
        let mask: Vec<f32> = (0..size * size)
            .map(|i| {
                let (x, y) = ((i % size) as f64 - 31.5, (i / size) as f64 - 31.5);
                let r = (x * x + y * y).sqrt();
                ((26.0 - r) / 6.0).clamp(0.0, 1.0) as f32
            })
            .collect();
        // Frame → crop: rotate and scale about (cx, cy) onto the crop centre.
        let (c, s) = (f64::cos(angle) * scale, f64::sin(angle) * scale);
        let m = [
            [c, -s, 32.0 - (c * cx - s * cy)],
            [s, c, 32.0 - (s * cx + c * cy)],
        ];
        patches.push(Patch {
            face,
            mask,
            matrix: m,
        });
    }
    let want = reference_paste(&frame, &patches, size);
    let untouched: Vec<bool> = (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as u32, (i / w) as u32);
            patches.iter().all(|p| {
                let q = apply(&p.matrix, [x as f64, y as f64]);
                // Beyond the mask's support (radius 26 about 31.5) plus the bilinear footprint.
                ((q[0] - 31.5).powi(2) + (q[1] - 31.5).powi(2)).sqrt() > 28.0
            })
        })
        .collect();
    assert!(untouched.iter().filter(|&&u| u).count() > w * h / 4);
    for ctx in common::contexts() {
        let what = ctx.describe();
        let paste = PasteBack::new(ctx, w, h, size).unwrap();
        let got = paste.paste(ctx, &frame, &patches).unwrap();
        check_paste(&got, &want, &frame, &untouched, &what);
        // One face only (the other ping-pong buffer), and none (a copy).
        let want1 = reference_paste(&frame, &patches[..1], size);
        let got1 = paste.paste(ctx, &frame, &patches[..1]).unwrap();
        check_paste(&got1, &want1, &frame, &untouched, &what);
        assert_eq!(paste.paste(ctx, &frame, &[]).unwrap(), frame);
        // A frame of another size is refused.
        let small = RgbImage::new(20, 20);
        assert!(paste.paste(ctx, &small, &patches).is_err());
    }
}

#[test]
fn converter_in_situ() {
    // The library path of `fswap convert` on one device: the decoded face is decoder A's output
    // for the aligned crop (b2a), and the frame is the f64 paste of the final face and mask.
    let s = setup();
    let ctx = &common::contexts()[0];
    let run = RunModel::open(&s.run).unwrap();
    let options = ConvertOptions {
        direction: Direction::BtoA,
        ..ConvertOptions::default()
    };
    let mut conv = Converter::new(ctx, &run, &s.models, options, None).unwrap();
    let img = load(&data("photos/JianzhuGuo.jpg"));
    let r = conv.frame(ctx, &img).unwrap();
    assert_eq!((r.found, r.swapped.len(), r.rejected.len()), (1, 1, 0));
    let f = &r.swapped[0];
    let cos = f.cosine.unwrap();
    assert!(cos > 0.95, "the photo of faceset B: cos {cos}");
    // The crop is the faceset's (same photo, same settings): same alignment.
    let set_b = Faceset::open(&s.faceset_b).unwrap();
    for (a, b) in f
        .alignment
        .adjusted
        .iter()
        .flatten()
        .zip(set_b.faces[0].matrix.iter().flatten())
    {
        assert!((a - b).abs() < 1e-6 * b.abs().max(1.0), "{a} vs {b}");
    }
    let planar = set_b.load_planar(0, SIZE).unwrap();
    assert_eq!(f.original, planar);
    // Decoder A (b2a) on the crop, built on its own.
    let ae = Autoencoder::new(ctx, Arch::Lightweight, &run.weights, 1, &[Side::A]).unwrap();
    ae.input.write_f32(ctx, &f.original).unwrap();
    ae.plan.run(ctx).unwrap();
    assert_eq!(f.decoded, ae.a.as_ref().unwrap().face.to_f32(ctx).unwrap());
    // The default mask (hull, blur 3) from the crop's landmarks, and avg-color inside its raw
    // version (not the eroded, box-limited one).
    let lm = set_b.aligned_landmarks(0, SIZE);
    for (a, b) in f.landmarks.iter().zip(&lm) {
        assert!((a[0] - b[0]).abs() < 1e-3 && (a[1] - b[1]).abs() < 1e-3);
    }
    let (mask, raw) = face_mask(
        MaskMode::Hull,
        &f.landmarks,
        None,
        SIZE,
        Erode::Pixels(0),
        3,
    )
    .unwrap();
    assert_eq!((&f.mask, &f.raw_mask), (&mask, &raw));
    let face = match_colour(ColourMode::AvgColor, &f.original, &f.decoded, &raw).unwrap();
    assert_eq!(f.face, face);
    let patch = Patch {
        face: f.face.clone(),
        mask: f.mask.clone(),
        matrix: f.alignment.adjusted,
    };
    let want = reference_paste(&img, &[patch], SIZE);
    let untouched: Vec<bool> = (0..img.width() * img.height())
        .map(|i| !in_footprint(&f.alignment.adjusted, i % img.width(), i / img.width()))
        .collect();
    check_paste(&r.image, &want, &img, &untouched, "in situ");
}
