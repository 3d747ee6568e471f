//! Images: decode/encode with the `image` crate, and the conversions between 8-bit RGB and the
//! engine's `[1, 3, H, W]` tensors in [0, 1].

use std::path::Path;

use ::image::RgbImage;

use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::tensor::{Shape, Tensor};

/// Reads an image file as 8-bit RGB; errors name the file.
pub fn load(path: &Path) -> Result<RgbImage> {
    let img = ::image::open(path).map_err(|e| Error::Format {
        path: path.display().to_string(),
        detail: format!("cannot decode image: {e}"),
    })?;
    let rgb = img.to_rgb8();
    if rgb.width() < 16 || rgb.height() < 16 {
        return Err(Error::Format {
            path: path.display().to_string(),
            detail: format!(
                "image is {}x{}; at least 16x16 is needed",
                rgb.width(),
                rgb.height()
            ),
        });
    }
    Ok(rgb)
}

/// Writes an image atomically (format from the extension: png, jpg).
pub fn save(path: &Path, img: &RgbImage) -> Result<()> {
    let format = ::image::ImageFormat::from_path(path).map_err(|e| Error::Format {
        path: path.display().to_string(),
        detail: format!("unknown image format: {e}"),
    })?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, format)
        .map_err(|e| Error::Format {
            path: path.display().to_string(),
            detail: format!("cannot encode: {e}"),
        })?;
    crate::util::atomic_write(path, bytes.get_ref())
}

/// Planar `[3, H, W]` values in [0, 1] from interleaved RGB bytes.
pub fn to_planar(rgb: &[u8], width: usize, height: usize) -> Vec<f32> {
    let plane = width * height;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px[c] as f32 / 255.0;
        }
    }
    out
}

/// Interleaved RGB bytes from planar values, clipped to [0, 1] and rounded.
pub fn from_planar(planar: &[f32], width: usize, height: usize) -> Vec<u8> {
    let plane = width * height;
    let mut out = vec![0u8; 3 * plane];
    for i in 0..plane {
        for c in 0..3 {
            out[3 * i + c] = (planar[c * plane + i].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    out
}

/// A frame tensor `[1, 3, H, W]` for an image size.
pub fn frame_tensor(ctx: &Context, width: usize, height: usize, what: &str) -> Result<Tensor> {
    Tensor::new(ctx, Shape::new(1, 3, height, width), what)
}

/// Uploads an image into a frame tensor of its size.
pub fn upload(ctx: &Context, t: &Tensor, img: &RgbImage) -> Result<()> {
    let s = t.shape();
    if (s.w, s.h) != (img.width() as usize, img.height() as usize) {
        return Err(Error::shape(
            "frame upload",
            format!(
                "image is {}x{}, frame tensor {}x{}",
                img.width(),
                img.height(),
                s.w,
                s.h
            ),
        ));
    }
    t.write_f32(ctx, &to_planar(img.as_raw(), s.w, s.h))
}

/// Reads a frame tensor back as an image.
pub fn download(ctx: &Context, t: &Tensor) -> Result<RgbImage> {
    let s = t.shape();
    let bytes = from_planar(&t.to_f32(ctx)?, s.w, s.h);
    RgbImage::from_raw(s.w as u32, s.h as u32, bytes)
        .ok_or_else(|| Error::Readback("frame size mismatch".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planar_round_trip() {
        let rgb: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 17 % 256) as u8).collect();
        assert_eq!(from_planar(&to_planar(&rgb, 5, 3), 5, 3), rgb);
    }
}
