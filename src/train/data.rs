//! The data of a MobileFaceSwap training run, read once into memory: aligned 224² crops as 8-bit
//! RGB (source, target, teacher output), quality scores and background masks, paired by file name.
//!
//! ```text
//! DIR/target/NAME.png      the frame whose attributes are kept (required)
//! DIR/source/NAME.png      distill: the identity put in, same NAME as the target;
//!                          finetune: any number of photos of the one identity put in
//! DIR/teacher/NAME.png     distill: the teacher's swap of (source NAME, target NAME), unless the
//!                          config names a teacher model the engine runs itself
//! DIR/scores.csv           optional `name,q` rows: Q of the teacher output (1 when absent)
//! DIR/background/NAME.png  optional: 1 (white) where the target is background (mask loss)
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::face::pipeline::image_list;
use crate::media::image as img_io;
use crate::models::mobilefaceswap::SIZE;

/// One 224² RGB crop, interleaved bytes.
pub type Crop = Vec<u8>;

/// A loaded training set.
pub struct SwapData {
    /// Sample names (file stems of `target/`), sorted.
    pub names: Vec<String>,
    /// Target crops, by sample.
    pub targets: Vec<Crop>,
    /// Source crops: distill, one per sample; finetune, the identity's photos.
    pub sources: Vec<Crop>,
    /// Teacher outputs by sample (distill from folders only).
    pub teachers: Vec<Crop>,
    /// Q per sample (1 where the score file has no row).
    pub quality: Vec<f32>,
    /// Background masks by sample (`SIZE²` values in [0, 1]), when `background/` exists.
    pub backgrounds: Option<Vec<Vec<f32>>>,
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn crop(path: &Path) -> Result<Crop> {
    let img = img_io::load(path)?;
    if (img.width() as usize, img.height() as usize) != (SIZE, SIZE) {
        return Err(Error::Format {
            path: path.display().to_string(),
            detail: format!(
                "is {}x{}; training crops must be aligned {SIZE}x{SIZE} faces \
                 (MobileFaceSwap's template)",
                img.width(),
                img.height()
            ),
        });
    }
    Ok(img.into_raw())
}

/// The file of `dir` whose stem is `name`.
fn by_stem(dir: &Path, files: &[PathBuf], name: &str, what: &str) -> Result<PathBuf> {
    files
        .iter()
        .find(|p| stem(p) == name)
        .cloned()
        .ok_or_else(|| Error::Format {
            path: dir.display().to_string(),
            detail: format!("no {what} image named '{name}' (it pairs with target/{name})"),
        })
}

fn folder(dir: &Path, sub: &str) -> Result<Vec<PathBuf>> {
    let d = dir.join(sub);
    if !d.is_dir() {
        return Err(Error::Format {
            path: d.display().to_string(),
            detail: format!("missing folder '{sub}/' in the training data"),
        });
    }
    image_list(&d)
}

/// `name,q` rows (a header row is allowed); names are file stems or file names.
fn scores(path: &Path) -> Result<HashMap<String, f32>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |detail: String| Error::Format {
            path: path.display().to_string(),
            detail: format!("line {}: {detail}", i + 1),
        };
        let (name, q) = line
            .split_once(',')
            .ok_or_else(|| bad("expected 'name,q'".into()))?;
        let q: f32 = match q.trim().parse() {
            Ok(q) => q,
            Err(_) if i == 0 => continue, // header
            Err(_) => return Err(bad(format!("'{}' is not a number", q.trim()))),
        };
        if !(q.is_finite() && (0.0..=1.0).contains(&q)) {
            return Err(bad(format!("q = {q} is outside [0, 1]")));
        }
        out.insert(stem(Path::new(name.trim())), q);
    }
    Ok(out)
}

impl SwapData {
    /// Reads `dir`. `distill`: sources and teachers pair with targets by name (teachers only
    /// when `teacher_folder`); otherwise sources are the identity's photos.
    pub fn load(dir: &Path, distill: bool, teacher_folder: bool) -> Result<SwapData> {
        let targets = folder(dir, "target")?;
        let names: Vec<String> = targets.iter().map(|p| stem(p)).collect();
        let sources_dir = dir.join("source");
        let sources = folder(dir, "source")?;
        let sources = if distill {
            names
                .iter()
                .map(|n| crop(&by_stem(&sources_dir, &sources, n, "source")?))
                .collect::<Result<Vec<_>>>()?
        } else {
            sources
                .iter()
                .map(|p| crop(p))
                .collect::<Result<Vec<_>>>()?
        };
        let teachers = if distill && teacher_folder {
            let files = folder(dir, "teacher")?;
            let tdir = dir.join("teacher");
            names
                .iter()
                .map(|n| crop(&by_stem(&tdir, &files, n, "teacher")?))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let score_file = dir.join("scores.csv");
        let q = if score_file.exists() {
            scores(&score_file)?
        } else {
            HashMap::new()
        };
        let quality = names.iter().map(|n| *q.get(n).unwrap_or(&1.0)).collect();
        let backgrounds = if dir.join("background").is_dir() {
            let files = folder(dir, "background")?;
            let bdir = dir.join("background");
            Some(
                names
                    .iter()
                    .map(|n| {
                        let c = crop(&by_stem(&bdir, &files, n, "background")?)?;
                        // A grey mask: the red channel, 255 = background.
                        Ok(c.chunks(3).map(|p| p[0] as f32 / 255.0).collect())
                    })
                    .collect::<Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        Ok(SwapData {
            names,
            targets: targets.iter().map(|p| crop(p)).collect::<Result<_>>()?,
            sources,
            teachers,
            quality,
            backgrounds,
        })
    }

    /// Number of samples (targets).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when there are no samples (never, after a successful load).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The sample order: epoch `e` visits a permutation seeded by `(seed, e)`, so the batch of any
/// step is a pure function of `(seed, step)` and a resumed run sees the same data.
pub fn sample_index(seed: u64, n: usize, k: u64) -> usize {
    let epoch = k / n as u64;
    let pos = (k % n as u64) as usize;
    permutation(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15), n)[pos]
}

/// Fisher–Yates with SplitMix64.
pub fn permutation(seed: u64, n: usize) -> Vec<usize> {
    let mut rng = crate::models::random::SplitMix::new(seed);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// Interleaved crops into one planar `[B, 3, H, W]` f32 batch in [0, 1].
pub fn planar_batch(crops: &[&Crop]) -> Vec<f32> {
    crops
        .iter()
        .flat_map(|c| img_io::to_planar(c, SIZE, SIZE))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_visit_every_sample_once() {
        let n = 7;
        for e in 0..3u64 {
            let mut seen: Vec<usize> = (0..n as u64)
                .map(|k| sample_index(5, n, e * n as u64 + k))
                .collect();
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
        let a: Vec<usize> = (0..7).map(|k| sample_index(5, n, k)).collect();
        let b: Vec<usize> = (7..14).map(|k| sample_index(5, n, k)).collect();
        assert_ne!(a, b, "epochs are reshuffled");
    }

    #[test]
    fn score_file_parses_and_rejects() {
        let dir = std::env::temp_dir().join(format!("fswap-scores-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("scores.csv");
        std::fs::write(&f, "name,q\na.png,0.5\nb,1\n").unwrap();
        let s = scores(&f).unwrap();
        assert_eq!(s["a"], 0.5);
        assert_eq!(s["b"], 1.0);
        std::fs::write(&f, "a,1.5\n").unwrap();
        assert!(scores(&f).unwrap_err().to_string().contains("outside"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
