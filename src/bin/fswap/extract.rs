//! `fswap extract`: cut aligned faces (faceswap's mean-face alignment) out of a video, an image or a
//! folder of images into a faceset folder: one PNG per face and one `alignments.json`
//! (`fswap::face::faceset`).

use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use fswap::face::faceset::{
    existing_faceset, Centering, Extractor, FacesetWriter, Filters, MinSize, Settings, Verdict,
};
use fswap::face::pipeline::image_list;
use fswap::media::{image as img_io, video};
use fswap::{Context, ContextOptions, Error, Result};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};

/// Options of `fswap extract`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// A video (mp4, mov, mkv, avi, webm), an image, or a folder of images.
    #[arg(short, long)]
    input: PathBuf,
    /// The faceset folder (created; an existing faceset there is extended).
    #[arg(short, long)]
    output: PathBuf,
    /// Folder with faceboxes, 3ddfa_mb05, 3ddfa_bfm68 and mobilefacenet128 .safetensors (see
    /// weights/README.md).
    #[arg(long)]
    models: PathBuf,
    /// Side of the aligned faces in pixels (64 to 256).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Centring of the crop: legacy (nose tip), face, or head (faceswap's options).
    #[arg(long, default_value = "face")]
    centering: String,
    /// Coverage of the crop (0.625 to 1; smaller zooms in).
    #[arg(long, default_value_t = 1.0)]
    coverage: f64,
    /// Skip faces whose detection box's longer side is below this: pixels (80) or a percentage
    /// of the frame's shorter side (10%).
    #[arg(long, value_name = "SIZE")]
    min_size: Option<String>,
    /// Keep only faces similar to the (largest) face of this photo (MobileFaceNet-128 cosine ≥
    /// --similarity).
    #[arg(long, value_name = "PHOTO")]
    reference: Option<PathBuf>,
    /// Cosine threshold for --reference.
    #[arg(long, default_value_t = 0.4, value_name = "COS")]
    similarity: f32,
    /// Drop a face whose identity distance (1 − cosine of the MobileFaceNet-128 embeddings) to a
    /// face already in the faceset is at most this.
    #[arg(long, value_name = "DIST")]
    dedupe: Option<f32>,
    /// Drop a face whose 32×32 grey thumbnail differs from one already in the faceset by at most
    /// this mean absolute difference (pixel values in [0, 1]).
    #[arg(long, value_name = "DIFF")]
    dedupe_pixels: Option<f32>,
    /// Process every N-th video frame (or image of a folder).
    #[arg(long, default_value_t = 1, value_name = "N")]
    every: u64,
    /// Stop a video after this many frames (counted before --every).
    #[arg(long, value_name = "N")]
    max_frames: Option<u64>,
}

/// Counts for the summary line.
#[derive(Default)]
struct Tally {
    frames: u64,
    found: usize,
    kept: usize,
    small: usize,
    unaligned: usize,
    dissimilar: usize,
    duplicates: usize,
}

struct Session {
    ctx: Context,
    extractor: Extractor,
    writer: FacesetWriter,
    min_size: Option<MinSize>,
    tally: Tally,
}

impl Session {
    fn frame(&mut self, img: &RgbImage, source: &Path, frame: u64) -> Result<()> {
        let min = self
            .min_size
            .map_or(0.0, |m| m.pixels(img.width(), img.height()));
        let faces = self.extractor.candidates(&self.ctx, img, min)?;
        self.tally.frames += 1;
        self.tally.found += faces.found;
        self.tally.small += faces.small;
        self.tally.unaligned += faces.unaligned;
        for c in &faces.candidates {
            match self.writer.consider(c, source, frame)? {
                Verdict::Kept(_) => self.tally.kept += 1,
                Verdict::NotSimilar(_) => self.tally.dissimilar += 1,
                Verdict::Duplicate(_) => self.tally.duplicates += 1,
            }
        }
        Ok(())
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{bar:30}} {{pos}}/{{len}} {what}, {{per_sec}} ({{eta}} left) {{msg}}"
    )) {
        bar.set_style(style);
    }
    bar
}

/// Runs `fswap extract`.
pub fn run(options: &ContextOptions, args: &Args) -> Result<()> {
    if !args.input.exists() {
        return Err(Error::Io {
            path: args.input.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "input not found"),
        });
    }
    if args.every == 0 {
        return Err(Error::param("--every", "must be at least 1"));
    }
    let settings = Settings {
        size: args.size,
        centering: Centering::parse(&args.centering)?,
        coverage: args.coverage,
    };
    settings.check()?;
    let min_size = args.min_size.as_deref().map(MinSize::parse).transpose()?;
    let is_video = video::is_video(&args.input);
    // Fail on an unreadable input before loading any model.
    let images = if is_video {
        vec![]
    } else {
        image_list(&args.input)?
    };
    for p in &images {
        image::ImageReader::open(p)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| e.to_string())
            .and_then(|r| r.into_dimensions().map_err(|e| e.to_string()))
            .map_err(|e| Error::Format {
                path: p.display().to_string(),
                detail: format!("cannot decode image: {e}"),
            })?;
    }
    let info = if is_video {
        Some(video::probe(&args.input)?)
    } else {
        None
    };
    let reference = args
        .reference
        .as_ref()
        .map(|r| img_io::load(r))
        .transpose()?;
    if args.output.exists() && !args.output.is_dir() {
        return Err(Error::param(
            "--output",
            format!(
                "{} is a file; the faceset is a folder",
                args.output.display()
            ),
        ));
    }
    existing_faceset(&args.output, settings)?;
    let ctx = Context::new(options)?;
    eprintln!("device: {}", ctx.describe());
    let mut extractor = Extractor::new(&ctx, &args.models, settings)?;
    let filters = Filters {
        reference: match (&reference, &args.reference) {
            (Some(img), Some(path)) => Some((
                extractor.reference_embedding(&ctx, img, path)?,
                args.similarity,
            )),
            _ => None,
        },
        dedupe: args.dedupe,
        dedupe_pixels: args.dedupe_pixels,
    };
    let writer = FacesetWriter::create(&args.output, settings, filters)?;
    let mut s = Session {
        ctx,
        extractor,
        writer,
        min_size,
        tally: Tally::default(),
    };
    if let Some(info) = info {
        extract_video(&mut s, args, &info)?;
    } else {
        let picked: Vec<&PathBuf> = images.iter().step_by(args.every as usize).collect();
        let bar = progress(picked.len() as u64, "images");
        for path in picked {
            let img = img_io::load(path)?;
            s.frame(&img, path, 0)?;
            bar.set_message(format!("{} faces", s.tally.kept));
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
    let t = &s.tally;
    if t.found == 0 {
        return Err(Error::Format {
            path: args.input.display().to_string(),
            detail: format!("no face found in {} frame(s)", t.frames),
        });
    }
    let existing = s.writer.existing();
    let total = s.writer.finish()?;
    eprintln!(
        "{}: {} faces kept of {} found in {} frame(s) ({} too small, {} not alignable, {} not \
         similar to the reference, {} duplicates); the faceset has {total} faces{}",
        args.output.display(),
        t.kept,
        t.found,
        t.frames,
        t.small,
        t.unaligned,
        t.dissimilar,
        t.duplicates,
        if existing > 0 {
            format!(" ({existing} before)")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn extract_video(s: &mut Session, args: &Args, info: &video::VideoInfo) -> Result<()> {
    let mut dec = video::Decoder::open(&args.input, info)?;
    let total = info
        .frames
        .map(|f| args.max_frames.map_or(f, |m| m.min(f)))
        .or(args.max_frames)
        .unwrap_or(0);
    let bar = progress(total, "frames");
    let mut buf = Vec::new();
    let mut n = 0u64;
    while args.max_frames.is_none_or(|m| n < m) && dec.next_frame(&mut buf)? {
        if n.is_multiple_of(args.every) {
            let img = RgbImage::from_raw(
                info.width as u32,
                info.height as u32,
                std::mem::take(&mut buf),
            )
            .expect("frame size");
            s.frame(&img, &args.input, n)?;
            buf = img.into_raw();
            bar.set_message(format!("{} faces", s.tally.kept));
        }
        n += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if n == 0 {
        return Err(Error::Format {
            path: args.input.display().to_string(),
            detail: "ffmpeg decoded no frame from this video".into(),
        });
    }
    Ok(())
}
