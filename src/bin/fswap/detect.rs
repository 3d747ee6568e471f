//! `fswap detect`: faces of an image with boxes, 68 and 5 landmarks and head pose.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use fswap::face::pipeline::{Analyzer, Face};
use fswap::media::image as img_io;
use fswap::{Context, ContextOptions, Result};
use image::{Rgb, RgbImage};
use serde_json::json;

/// Arguments of `fswap detect`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The image.
    image: PathBuf,
    /// Folder with faceboxes.safetensors, 3ddfa_mb05.safetensors, 3ddfa_bfm68.safetensors.
    #[arg(long)]
    models: PathBuf,
    /// Print one JSON object: {"faces": [{"box", "score", "landmarks68", "landmarks5", "pose"}]}.
    #[arg(long)]
    json: bool,
    /// Write the image with boxes and landmarks drawn.
    #[arg(long, value_name = "OUT.png")]
    draw: Option<PathBuf>,
}

fn round2(v: f32) -> f64 {
    (v as f64 * 100.0).round() / 100.0
}

/// The JSON object for one face.
pub fn face_json(f: &Face) -> serde_json::Value {
    let pts = |p: &[[f32; 2]]| {
        p.iter()
            .map(|q| [round2(q[0]), round2(q[1])])
            .collect::<Vec<_>>()
    };
    let pose = &f.landmarks.pose;
    json!({
        "box": f.detection.box_.map(round2),
        "score": (f.detection.score as f64 * 10000.0).round() / 10000.0,
        "landmarks68": pts(&f.landmarks.pts68),
        "landmarks5": pts(&f.landmarks.pts5),
        "pose": {"yaw": round2(pose.yaw), "pitch": round2(pose.pitch), "roll": round2(pose.roll)},
    })
}

fn draw(img: &mut RgbImage, faces: &[Face]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mut put = |x: i64, y: i64, c: Rgb<u8>| {
        if x >= 0 && y >= 0 && x < w && y < h {
            img.put_pixel(x as u32, y as u32, c);
        }
    };
    for f in faces {
        let b = f.detection.box_.map(|v| v.round() as i64);
        for t in 0..2 {
            for x in b[0]..=b[2] {
                put(x, b[1] + t, Rgb([0, 255, 0]));
                put(x, b[3] - t, Rgb([0, 255, 0]));
            }
            for y in b[1]..=b[3] {
                put(b[0] + t, y, Rgb([0, 255, 0]));
                put(b[2] - t, y, Rgb([0, 255, 0]));
            }
        }
        for (pts, c, r) in [
            (&f.landmarks.pts68[..], Rgb([255, 64, 64]), 1),
            (&f.landmarks.pts5[..], Rgb([64, 128, 255]), 2),
        ] {
            for p in pts {
                for dy in -r..=r {
                    for dx in -r..=r {
                        put(p[0].round() as i64 + dx, p[1].round() as i64 + dy, c);
                    }
                }
            }
        }
    }
}

/// Runs the command.
pub fn run(options: &ContextOptions, args: &Args) -> Result<()> {
    let img = img_io::load(&args.image)?;
    let ctx = Context::new(options)?;
    let mut analyzer = Analyzer::open(&ctx, &args.models)?;
    let faces = analyzer.faces(&ctx, &img)?;
    if args.json {
        println!(
            "{}",
            json!({"faces": faces.iter().map(face_json).collect::<Vec<_>>()})
        );
    } else {
        println!("{}: {} face(s)", args.image.display(), faces.len());
        for (i, f) in faces.iter().enumerate() {
            let b = f.detection.box_;
            let p = &f.landmarks.pose;
            println!(
                "  #{i} box [{:.1}, {:.1}, {:.1}, {:.1}] score {:.3} yaw {:.1} pitch {:.1} roll {:.1}",
                b[0], b[1], b[2], b[3], f.detection.score, p.yaw, p.pitch, p.roll
            );
        }
    }
    if let Some(out) = &args.draw {
        let mut canvas = img.clone();
        draw(&mut canvas, &faces);
        img_io::save(out, &canvas)?;
    }
    Ok(())
}
