//! `fswap swap`: put the source's face on every selected face of an image, a folder of images or a
//! video (through the system ffmpeg, audio kept), with landmark smoothing across video frames.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args as ClapArgs;
use fswap::face::pipeline::{
    choose, fsgan_identity_from_image, identity_from_image, idn_statics, image_list, model_file,
    Analyzer, Face, FrameSwapper, IdentityMeter, Select, SourceIdentity,
};
use fswap::face::smooth::{OneEuro, Smoother};
use fswap::media::{image as img_io, video};
use fswap::models::mobilefacenet::cosine;
use fswap::{Context, ContextOptions, Error, Result};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `fswap swap`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The source image (its largest face is the identity put in).
    #[arg(short, long)]
    source: PathBuf,
    /// The target: an image, a folder of images, or a video (mp4, mov, mkv, avi, webm).
    #[arg(short, long)]
    target: PathBuf,
    /// The output: an image, a folder (for a folder target) or a video.
    #[arg(short, long)]
    output: PathBuf,
    /// Folder with the model files (see weights/README.md).
    #[arg(long)]
    models: PathBuf,
    /// The swap network: mobilefaceswap (224 template; arcface + mobilefaceswap files) or
    /// mobilefsgan (256 template; mobilefacenet + mobilefsgan files).
    #[arg(long, default_value = "mobilefaceswap")]
    model: String,
    /// Which target faces: all, largest, index:N.
    #[arg(long, default_value = "all")]
    select: String,
    /// Swap only faces similar to the face in this image (MobileFaceNet-128 cosine ≥ --threshold).
    #[arg(long, value_name = "IMAGE")]
    reference: Option<PathBuf>,
    /// Cosine threshold for --reference.
    #[arg(long, default_value_t = 0.4)]
    threshold: f32,
    /// Print, per swapped face, the MobileFaceNet-128 cosine of the result to the source and to the
    /// target face.
    #[arg(long)]
    report: bool,
    /// At most this many faces per frame.
    #[arg(long, default_value_t = 4)]
    max_faces: usize,
    /// Stop a video after this many frames.
    #[arg(long, value_name = "N")]
    max_frames: Option<u64>,
    /// No landmark smoothing across video frames.
    #[arg(long)]
    no_smooth: bool,
    /// Fit of the landmarks to the crop template: affine (official) or similarity (Umeyama).
    #[arg(long, default_value = "affine")]
    align: String,
    /// Match the swapped face's colours to the target's before pasting.
    #[arg(long)]
    colour_match: bool,
    /// In video, run the detector every N frames and track faces by their landmarks in between
    /// (1 = detect every frame).
    #[arg(long, default_value_t = 10, value_name = "N")]
    redetect: u64,
}

struct Session {
    ctx: Context,
    analyzer: Analyzer,
    identity: SourceIdentity,
    meter: Option<IdentityMeter>,
    source_embedding: Option<Vec<f32>>,
    select: Select,
    swapper: Option<((u32, u32), FrameSwapper)>,
    max_faces: usize,
    /// Faces of the previous video frame, for tracking.
    tracked: Vec<Face>,
    align: fswap::face::pipeline::Align,
    paste: fswap::face::paste::PasteOptions,
}

impl Session {
    /// Swaps the selected faces of `img`; `smooth` maps face slot → smoother (video).
    fn frame(
        &mut self,
        img: &RgbImage,
        smooth: Option<(&mut Vec<Smoother>, f64)>,
        track: bool,
        report: bool,
        name: &str,
    ) -> Result<RgbImage> {
        // Between detections, follow the previous frame's faces by their landmarks.
        let faces = if track && !self.tracked.is_empty() {
            self.analyzer.track(&self.ctx, img, &self.tracked)?
        } else {
            self.analyzer.faces(&self.ctx, img)?
        };
        self.tracked = faces.clone();
        let meter = self.meter.as_ref().map(|m| (m, &self.ctx, img));
        let mut picked: Vec<Face> = choose(&faces, &self.select, meter)?
            .into_iter()
            .map(|i| faces[i].clone())
            .collect();
        picked.truncate(self.max_faces);
        let mut pts: Vec<[[f64; 2]; 5]> = picked.iter().map(|f| f.landmarks.pts5_f64()).collect();
        if let Some((smoothers, dt)) = smooth {
            if smoothers.len() != pts.len() {
                smoothers.clear();
                smoothers.resize(pts.len(), Smoother::new(OneEuro::default()));
            }
            for (p, s) in pts.iter_mut().zip(smoothers.iter_mut()) {
                let flat: Vec<f64> = p.iter().flatten().copied().collect();
                let out = s.filter(&flat, dt);
                for (k, q) in p.iter_mut().enumerate() {
                    *q = [out[2 * k], out[2 * k + 1]];
                }
            }
        }
        let size = (img.width(), img.height());
        if self.swapper.as_ref().map(|(s, _)| *s) != Some(size) {
            let sw = FrameSwapper::for_identity(
                &self.ctx,
                &self.identity,
                size.0 as usize,
                size.1 as usize,
                self.max_faces,
                self.align,
                self.paste,
            )?;
            self.swapper = Some((size, sw));
        }
        let (_, swapper) = self.swapper.as_ref().expect("built above");
        let out = swapper.swap(&self.ctx, img, &pts)?;
        if report {
            let (meter, src) = (
                self.meter.as_ref().expect("--report loads it"),
                self.source_embedding.as_ref().expect("with the meter"),
            );
            for (i, p) in pts.iter().enumerate() {
                let result = meter.embed(&self.ctx, &out, p)?;
                let target = meter.embed(&self.ctx, img, p)?;
                println!(
                    "{name} face {i}: cos(result, source) {:.4}  cos(result, target) {:.4}",
                    cosine(&result, src),
                    cosine(&result, &target)
                );
            }
        }
        Ok(out)
    }
}

/// Runs the command.
pub fn run(options: &ContextOptions, args: &Args) -> Result<()> {
    let source = img_io::load(&args.source)?;
    if !args.target.exists() {
        return Err(Error::Io {
            path: args.target.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "target not found"),
        });
    }
    if args.max_faces == 0 {
        return Err(Error::param("--max-faces", "must be at least 1"));
    }
    if !["mobilefaceswap", "mobilefsgan"].contains(&args.model.as_str()) {
        return Err(Error::param(
            "--model",
            format!("'{}' (expected mobilefaceswap or mobilefsgan)", args.model),
        ));
    }
    let ctx = Context::new(options)?;
    eprintln!("device: {}", ctx.describe());
    let mut analyzer = Analyzer::open(&ctx, &args.models)?;
    let (identity, source_face) = if args.model == "mobilefsgan" {
        let mfn = model_file(&args.models, "mobilefacenet.safetensors")?;
        let gen = model_file(&args.models, "mobilefsgan.safetensors")?;
        fsgan_identity_from_image(&ctx, &mut analyzer, &mfn, &gen, &source, &args.source)?
    } else {
        let arcface = model_file(&args.models, "arcface.safetensors")?;
        let mfs = model_file(&args.models, "mobilefaceswap.safetensors")?;
        let (identity, face) =
            identity_from_image(&ctx, &mut analyzer, &arcface, &mfs, &source, &args.source)?;
        (
            SourceIdentity::MobileFaceSwap {
                identity,
                statics: idn_statics(&mfs),
            },
            face,
        )
    };
    let meter = if args.report || args.reference.is_some() {
        Some(IdentityMeter::open(&ctx, &args.models)?)
    } else {
        None
    };
    let source_embedding = match &meter {
        Some(m) => Some(m.embed(&ctx, &source, &source_face.landmarks.pts5_f64())?),
        None => None,
    };
    let select = match &args.reference {
        Some(r) => {
            let img = img_io::load(r)?;
            let faces = analyzer.faces(&ctx, &img)?;
            let f = faces.first().ok_or_else(|| Error::Format {
                path: r.display().to_string(),
                detail: "no face found in the reference image".into(),
            })?;
            let embedding = meter.as_ref().expect("loaded for --reference").embed(
                &ctx,
                &img,
                &f.landmarks.pts5_f64(),
            )?;
            Select::Similar {
                embedding,
                threshold: args.threshold,
            }
        }
        None => Select::parse(&args.select)?,
    };
    let mut s = Session {
        ctx,
        analyzer,
        identity,
        meter,
        source_embedding,
        select,
        swapper: None,
        max_faces: args.max_faces,
        tracked: vec![],
        align: fswap::face::pipeline::Align::parse(&args.align)?,
        paste: fswap::face::paste::PasteOptions {
            colour_match: args.colour_match,
        },
    };
    if args.redetect == 0 {
        return Err(Error::param("--redetect", "must be at least 1"));
    }
    if video::is_video(&args.target) {
        return swap_video(&mut s, args);
    }
    let list = image_list(&args.target)?;
    let folder = args.target.is_dir();
    if folder {
        std::fs::create_dir_all(&args.output).map_err(|source| Error::Io {
            path: args.output.display().to_string(),
            source,
        })?;
    }
    let bar = progress(list.len() as u64);
    for path in &list {
        let img = img_io::load(path)?;
        let out = s.frame(&img, None, false, args.report, &path.display().to_string())?;
        let dest = if folder {
            args.output
                .join(path.file_name().expect("a file"))
                .with_extension("png")
        } else {
            args.output.clone()
        };
        img_io::save(&dest, &out)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

fn progress(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} frames, {per_sec} ({eta} left)")
    {
        bar.set_style(style);
    }
    bar
}

fn swap_video(s: &mut Session, args: &Args) -> Result<()> {
    let info = video::probe(&args.target)?;
    let mut dec = video::Decoder::open(&args.target, &info)?;
    let mut enc = video::Encoder::create(&args.output, &info, &args.target)?;
    let total = info
        .frames
        .map(|f| args.max_frames.map_or(f, |m| m.min(f)))
        .unwrap_or(0);
    let bar = progress(total);
    let dt = if info.fps.1 > 0.0 {
        1.0 / info.fps.1
    } else {
        1.0 / 25.0
    };
    let mut smoothers: Vec<Smoother> = Vec::new();
    let mut buf = Vec::new();
    let (mut n, t0) = (0u64, Instant::now());
    while args.max_frames.is_none_or(|m| n < m) && dec.next_frame(&mut buf)? {
        let img = RgbImage::from_raw(
            info.width as u32,
            info.height as u32,
            std::mem::take(&mut buf),
        )
        .expect("frame size");
        let smooth = (!args.no_smooth).then_some((&mut smoothers, dt));
        let out = s.frame(
            &img,
            smooth,
            n % args.redetect != 0,
            args.report,
            &format!("frame {n}"),
        )?;
        enc.write_frame(out.as_raw())?;
        buf = img.into_raw();
        n += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if n == 0 {
        return Err(Error::Format {
            path: args.target.display().to_string(),
            detail: "ffmpeg decoded no frame from this video".into(),
        });
    }
    enc.finish()?;
    eprintln!(
        "wrote {}: {n} frames at {:.2} fps",
        args.output.display(),
        n as f64 / t0.elapsed().as_secs_f64()
    );
    Ok(())
}
