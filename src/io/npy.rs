//! NumPy `.npy` reader (format versions 1–3, C order, little-endian float arrays).

use std::path::Path;

use half::f16;

use crate::error::{Error, Result};
use crate::weights::HostTensor;

/// Reads a `.npy` file of float32, float64 or float16 values in C order.
pub fn read_npy(path: &Path) -> Result<HostTensor> {
    let shown = path.display().to_string();
    let bad = |d: String| Error::Format {
        path: shown.clone(),
        detail: d,
    };
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: shown.clone(),
        source,
    })?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (bad magic)".into()));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header".into()))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[i..].trim_start_matches([':', ' ']))
    };
    let descr = field("descr")
        .and_then(|s| s.split('\'').nth(1))
        .ok_or_else(|| bad("no descr".into()))?;
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err(bad(
            "Fortran-order arrays are not supported; save with np.ascontiguousarray".into(),
        ));
    }
    let shape_txt = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape".into()))?;
    let shape = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(format!("bad shape '{shape_txt}'")))
        })
        .collect::<Result<Vec<_>>>()?;
    let n: usize = shape.iter().product();
    let data = &bytes[start + hlen..];
    let (width, conv): (usize, fn(&[u8]) -> f32) = match descr {
        "<f4" => (4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        "<f8" => (8, |c| {
            f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32
        }),
        "<f2" => (2, |c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        other => return Err(bad(format!("dtype '{other}' unsupported (use float32)"))),
    };
    if data.len() < n * width {
        return Err(bad(format!(
            "truncated: {} data bytes for shape {shape:?} ({} needed)",
            data.len(),
            n * width
        )));
    }
    let values: Vec<f32> = data[..n * width].chunks_exact(width).map(conv).collect();
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(bad(format!("element {i} is {v}")));
    }
    Ok(HostTensor::new(shape, values))
}
