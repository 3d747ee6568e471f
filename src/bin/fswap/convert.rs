//! `fswap convert`: swap the faces of one identity in a video, an image or a folder of images with
//! a per-pair autoencoder trained by `fswap train autoencoder` (`fswap::face::convert`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args as ClapArgs;
use fswap::face::convert::{
    ColourMode, ConvertOptions, Converter, Direction, Erode, FrameResult, MaskMode, RunModel,
    DEFAULT_SIMILARITY,
};
use fswap::face::pipeline::image_list;
use fswap::media::{image as img_io, video};
use fswap::{Context, ContextOptions, Error, Result};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};

/// Options of `fswap convert`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// A video (mp4, mov, mkv, avi, webm), an image, or a folder of images.
    #[arg(short, long)]
    input: PathBuf,
    /// The output: a video (for a video, its audio kept), an image, or a folder (PNGs).
    #[arg(short, long)]
    output: PathBuf,
    /// The run folder of `fswap train autoencoder` (its model.safetensors).
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
    /// Folder with faceboxes, 3ddfa_mb05, 3ddfa_bfm68 and mobilefacenet128 .safetensors (see
    /// weights/README.md).
    #[arg(long)]
    models: PathBuf,
    /// a2b: replace faces of identity A with decoder B; b2a: the reverse.
    #[arg(long, default_value = "a2b")]
    direction: String,
    /// Blending mask: box (the crop, edges blurred), hull (landmark hulls, faceswap's
    /// "extended"), learned (the decoder's mask branch).
    #[arg(long, default_value = "hull")]
    mask: String,
    /// Erode the mask by N pixels of the model's face crop (negative dilates), or by a
    /// percentage of the mask radius (10%, as faceswap).
    #[arg(
        long,
        default_value = "0",
        allow_hyphen_values = true,
        value_name = "N"
    )]
    erode: String,
    /// Blur kernel of the mask in pixels of the model's face crop (normalised box filter, 4
    /// passes); 0: hard edges.
    #[arg(long, default_value_t = 3, value_name = "N")]
    blur: usize,
    /// Colour matching inside the mask: none, avg-color, hist-match.
    #[arg(long, visible_alias = "color", default_value = "avg-color")]
    colour: String,
    /// Swap a face when the cosine of its MobileFaceNet-128 embedding to the mean embedding of
    /// the source identity's faceset is at least this.
    #[arg(long, default_value_t = DEFAULT_SIMILARITY, allow_hyphen_values = true, value_name = "COS")]
    similarity: f32,
    /// Swap every face, whoever it is.
    #[arg(long)]
    all_faces: bool,
    /// The faceset whose mean embedding picks the faces to swap (default: the run's training
    /// faceset of the source identity).
    #[arg(long, value_name = "DIR")]
    faceset: Option<PathBuf>,
    /// Stop a video after this many frames.
    #[arg(long, value_name = "N")]
    max_frames: Option<u64>,
}

/// Counts for the summary line.
#[derive(Default)]
struct Tally {
    frames: u64,
    found: usize,
    swapped: usize,
    frames_swapped: u64,
    unaligned: usize,
    best_rejected: Option<f32>,
    rejected: usize,
}

impl Tally {
    fn add(&mut self, r: &FrameResult) {
        self.frames += 1;
        self.found += r.found;
        self.unaligned += r.unaligned;
        self.swapped += r.swapped.len();
        self.frames_swapped += (!r.swapped.is_empty()) as u64;
        self.rejected += r.rejected.len();
        for &c in &r.rejected {
            self.best_rejected = Some(self.best_rejected.map_or(c, |b| b.max(c)));
        }
    }
}

struct Session {
    ctx: Context,
    converter: Converter,
    tally: Tally,
}

impl Session {
    fn frame(&mut self, img: &RgbImage) -> Result<RgbImage> {
        let r = self.converter.frame(&self.ctx, img)?;
        self.tally.add(&r);
        Ok(r.image)
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

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Runs `fswap convert`.
pub fn run(options: &ContextOptions, args: &Args) -> Result<()> {
    if !args.input.exists() {
        return Err(io_err(
            &args.input,
            std::io::Error::new(std::io::ErrorKind::NotFound, "input not found"),
        ));
    }
    let convert = ConvertOptions {
        direction: Direction::parse(&args.direction)?,
        mask: MaskMode::parse(&args.mask)?,
        erode: Erode::parse(&args.erode)?,
        blur: args.blur,
        colour: ColourMode::parse(&args.colour)?,
        similarity: args.similarity,
        all_faces: args.all_faces,
    };
    let is_video = video::is_video(&args.input);
    let folder = args.input.is_dir();
    // The output must suit the input before anything heavy runs.
    if is_video && !video::is_video(&args.output) {
        return Err(Error::param(
            "--output",
            format!(
                "{}: a video input needs a video output (mp4, mov, mkv, avi, webm)",
                args.output.display()
            ),
        ));
    }
    if folder && args.output.exists() && !args.output.is_dir() {
        return Err(Error::param(
            "--output",
            format!(
                "{} is a file; a folder input writes a folder",
                args.output.display()
            ),
        ));
    }
    if !is_video && !folder {
        image::ImageFormat::from_path(&args.output).map_err(|_| {
            Error::param(
                "--output",
                format!(
                    "{}: an image input needs an image output (png, jpg)",
                    args.output.display()
                ),
            )
        })?;
    }
    let images = if is_video {
        vec![]
    } else {
        image_list(&args.input)?
    };
    let info = if is_video {
        Some(video::probe(&args.input)?)
    } else {
        None
    };
    let run = RunModel::open(&args.run)?;
    convert.check(run.config.size, run.config.learn_mask)?;
    let ctx = Context::new(options)?;
    eprintln!("device: {}", ctx.describe());
    eprintln!(
        "model: {} {}px{} ({} centring, coverage {}), {} → {}",
        run.meta.arch.name(),
        run.meta.size,
        if run.meta.learn_mask {
            " with mask branch"
        } else {
            ""
        },
        run.meta.centering.name(),
        run.meta.coverage,
        convert.direction.source().letter().to_uppercase(),
        convert.direction.target().letter().to_uppercase()
    );
    let converter = Converter::new(&ctx, &run, &args.models, convert, args.faceset.as_deref())?;
    let mut s = Session {
        ctx,
        converter,
        tally: Tally::default(),
    };
    let t0 = Instant::now();
    let finish: Box<dyn FnOnce() -> Result<()>> = if let Some(info) = &info {
        convert_video(&mut s, args, info)?
    } else if folder {
        convert_folder(&mut s, args, &images)?
    } else {
        let img = img_io::load(&args.input)?;
        let out = s.frame(&img)?;
        let dest = args.output.clone();
        Box::new(move || img_io::save(&dest, &out))
    };
    let t = &s.tally;
    if t.swapped == 0 {
        // Nothing is written: `finish` (the rename into place) is dropped.
        let side = convert.direction.source().letter().to_uppercase();
        let why = if t.found == 0 {
            "no face was detected".to_string()
        } else if t.unaligned == t.found {
            format!("none of the {} faces found could be aligned", t.found)
        } else {
            format!(
                "{} faces were found but none looks like identity {side} (best cosine {:.3} < \
                 --similarity {}); lower --similarity, pass --faceset, or use --all-faces",
                t.found,
                t.best_rejected.unwrap_or(f32::NAN),
                convert.similarity
            )
        };
        return Err(Error::Format {
            path: args.input.display().to_string(),
            detail: format!(
                "no face of identity {side} in {} frame(s): {why}; nothing written",
                t.frames
            ),
        });
    }
    finish()?;
    eprintln!(
        "wrote {}: {} face(s) swapped in {} of {} frame(s) ({} found, {} not of identity {}, {} \
         not alignable), {:.2} frames/s",
        args.output.display(),
        t.swapped,
        t.frames_swapped,
        t.frames,
        t.found,
        t.rejected,
        convert.direction.source().letter().to_uppercase(),
        t.unaligned,
        t.frames as f64 / t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Converts every image into a hidden staging folder inside the output; the returned closure
/// moves them into place (and removes the staging folder either way).
fn convert_folder(
    s: &mut Session,
    args: &Args,
    images: &[PathBuf],
) -> Result<Box<dyn FnOnce() -> Result<()>>> {
    let created = !args.output.exists();
    std::fs::create_dir_all(&args.output).map_err(|e| io_err(&args.output, e))?;
    let staging = Staging {
        dir: args
            .output
            .join(format!(".fswap-convert-{}", std::process::id())),
        created: created.then(|| args.output.clone()),
    };
    std::fs::create_dir_all(&staging.dir).map_err(|e| io_err(&staging.dir, e))?;
    let bar = progress(images.len() as u64, "images");
    let mut names = Vec::with_capacity(images.len());
    for path in images {
        let img = img_io::load(path)?;
        let out = s.frame(&img)?;
        let name =
            Path::new(path.file_name().expect("listed files have names")).with_extension("png");
        img_io::save(&staging.dir.join(&name), &out)?;
        names.push(name);
        bar.set_message(format!("{} faces swapped", s.tally.swapped));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let out = args.output.clone();
    Ok(Box::new(move || {
        for n in &names {
            std::fs::rename(staging.dir.join(n), out.join(n))
                .map_err(|e| io_err(&out.join(n), e))?;
        }
        drop(staging);
        Ok(())
    }))
}

/// A staging folder, removed when dropped, with the output folder when this run created it and
/// it is still empty (nothing was written).
struct Staging {
    dir: PathBuf,
    created: Option<PathBuf>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(out) = &self.created {
            // Only removes an empty folder.
            let _ = std::fs::remove_dir(out);
        }
    }
}

/// Converts the video into the encoder's temporary file; the returned closure finishes the encode
/// (audio copied from the input) and renames it into place. Dropping it removes the partial file.
fn convert_video(
    s: &mut Session,
    args: &Args,
    info: &video::VideoInfo,
) -> Result<Box<dyn FnOnce() -> Result<()>>> {
    let mut dec = video::Decoder::open(&args.input, info)?;
    let mut enc = video::Encoder::create(&args.output, info, &args.input)?;
    let total = info
        .frames
        .map(|f| args.max_frames.map_or(f, |m| m.min(f)))
        .or(args.max_frames)
        .unwrap_or(0);
    let bar = progress(total, "frames");
    let mut buf = Vec::new();
    let mut n = 0u64;
    while args.max_frames.is_none_or(|m| n < m) && dec.next_frame(&mut buf)? {
        let img = RgbImage::from_raw(
            info.width as u32,
            info.height as u32,
            std::mem::take(&mut buf),
        )
        .ok_or_else(|| Error::Readback("decoded frame size".into()))?;
        let out = s.frame(&img)?;
        enc.write_frame(out.as_raw())?;
        buf = img.into_raw();
        n += 1;
        bar.set_message(format!("{} faces swapped", s.tally.swapped));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if n == 0 {
        return Err(Error::Format {
            path: args.input.display().to_string(),
            detail: "ffmpeg decoded no frame from this video".into(),
        });
    }
    Ok(Box::new(move || enc.finish()))
}
