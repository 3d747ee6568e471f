//! Video through the system `ffmpeg`: raw RGB frames over pipes in and out, audio copied from the
//! input. A clear error if `ffmpeg`/`ffprobe` are missing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::error::{Error, Result};

/// Video stream properties.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoInfo {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Frames per second (as a rational string for ffmpeg, and as a number).
    pub fps: (String, f64),
    /// Frame count when the container says (for progress).
    pub frames: Option<u64>,
}

fn tool_err(tool: &str, e: std::io::Error) -> Error {
    Error::Format {
        path: tool.to_string(),
        detail: if e.kind() == std::io::ErrorKind::NotFound {
            format!("`{tool}` is not installed (video needs ffmpeg on the PATH: apt-get install ffmpeg)")
        } else {
            format!("cannot run `{tool}`: {e}")
        },
    }
}

/// Whether a path looks like a video by extension.
pub fn is_video(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("mp4" | "mov" | "mkv" | "avi" | "webm" | "m4v")
    )
}

/// Reads width, height, frame rate and frame count with `ffprobe`.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height,r_frame_rate,nb_frames",
            "-of",
            "default=nw=1",
        ])
        .arg(path)
        .output()
        .map_err(|e| tool_err("ffprobe", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    let bad = |d: String| Error::Format {
        path: path.display().to_string(),
        detail: d,
    };
    if !out.status.success() {
        return Err(bad(format!(
            "ffprobe failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let num = |k: &str| {
        field(k)
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| bad(format!("no video stream {k}")))
    };
    let rate = field("r_frame_rate").ok_or_else(|| bad("no frame rate".into()))?;
    let fps = match rate.split_once('/') {
        Some((a, b)) => a.parse::<f64>().unwrap_or(0.0) / b.parse::<f64>().unwrap_or(1.0).max(1.0),
        None => rate.parse().unwrap_or(0.0),
    };
    Ok(VideoInfo {
        width: num("width")?,
        height: num("height")?,
        fps: (rate, fps),
        frames: field("nb_frames").and_then(|v| v.parse().ok()),
    })
}

/// Decoded frames of a video, as RGB bytes.
pub struct Decoder {
    child: Child,
    out: ChildStdout,
    frame_bytes: usize,
}

impl Decoder {
    /// Starts decoding `path`.
    pub fn open(path: &Path, info: &VideoInfo) -> Result<Self> {
        let mut child = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(path)
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| tool_err("ffmpeg", e))?;
        let out = child.stdout.take().expect("piped stdout");
        Ok(Decoder {
            child,
            out,
            frame_bytes: info.width * info.height * 3,
        })
    }

    /// The next frame into `buf`, or `false` at the end.
    pub fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        buf.resize(self.frame_bytes, 0);
        let mut got = 0;
        while got < self.frame_bytes {
            match self.out.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => {
                    return Err(Error::Io {
                        path: "ffmpeg decoder".into(),
                        source: e,
                    })
                }
            }
        }
        Ok(got == self.frame_bytes)
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Encodes RGB frames to a video, copying the audio of `audio_from` if it has any. Writes to a
/// temporary file and renames it over the output on [`Encoder::finish`]: nothing partial is left.
pub struct Encoder {
    /// Taken by [`Encoder::finish`]; still here on drop means the encode was abandoned.
    child: Option<Child>,
    input: Option<ChildStdin>,
    tmp: PathBuf,
    out: PathBuf,
}

impl Encoder {
    /// Starts an encoder for `info`'s size and rate.
    pub fn create(out: &Path, info: &VideoInfo, audio_from: &Path) -> Result<Self> {
        let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("mp4");
        let tmp = out.with_extension(format!("partial.{ext}"));
        let mut child = Command::new("ffmpeg")
            .args([
                "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
            ])
            .arg(format!("{}x{}", info.width, info.height))
            .args(["-r", &info.fps.0, "-i", "-", "-i"])
            .arg(audio_from)
            .args([
                "-map",
                "0:v:0",
                "-map",
                "1:a?",
                "-c:a",
                "copy",
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-shortest",
            ])
            .arg(&tmp)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| tool_err("ffmpeg", e))?;
        let input = child.stdin.take();
        Ok(Encoder {
            child: Some(child),
            input,
            tmp,
            out: out.to_path_buf(),
        })
    }

    /// Appends one frame.
    pub fn write_frame(&mut self, rgb: &[u8]) -> Result<()> {
        let input = self.input.as_mut().expect("open until finish");
        input.write_all(rgb).map_err(|e| Error::Io {
            path: "ffmpeg encoder".into(),
            source: e,
        })
    }

    /// Closes the stream, waits for ffmpeg and moves the file into place.
    pub fn finish(mut self) -> Result<()> {
        drop(self.input.take());
        let child = self.child.take().expect("present until finish");
        let out = child.wait_with_output().map_err(|e| Error::Io {
            path: "ffmpeg encoder".into(),
            source: e,
        })?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(Error::Format {
                path: self.out.display().to_string(),
                detail: format!(
                    "ffmpeg failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        std::fs::rename(&self.tmp, &self.out).map_err(|source| Error::Io {
            path: self.out.display().to_string(),
            source,
        })
    }
}

impl Drop for Encoder {
    /// An encoder dropped without [`Encoder::finish`] (an error mid-video) stops ffmpeg and removes
    /// its partial file: the output path is never left half-written.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(self.input.take());
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
