//! Alignment: the transform from frame pixels to a model's crop, fitted to 5 landmarks.
//!
//! - [`lstsq_affine`]: MobileFaceSwap's official fit (`utils/align_face.py`): a least-squares full
//!   6-DoF affine over homogeneous points (translation zeroed when the system has rank 2);
//! - [`umeyama`]: a similarity (rotation, uniform scale, translation), scikit-image's `_umeyama`.
//!
//! Matrices are 2×3 row-major `[[a, b, tx], [c, d, ty]]` mapping source `(x, y)` to
//! `(a·x + b·y + tx, c·x + d·y + ty)`, as OpenCV's `warpAffine` takes them.

use crate::error::{Error, Result};

/// A 2×3 affine matrix.
pub type Affine = [[f64; 3]; 2];

/// ArcFace's 5-point template for a 112×112 crop: left eye, right eye, nose tip, left and right
/// mouth corners (the 96×112 points with x + 8).
pub const ARCFACE_112: [[f64; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// The ArcFace template scaled to a `size`×`size` crop (×2 at 224 for MobileFaceSwap).
pub fn arcface_template(size: usize) -> [[f64; 2]; 5] {
    let k = size as f64 / 112.0;
    ARCFACE_112.map(|[x, y]| [x * k, y * k])
}

/// Solves the 3×3 system `a·x = b` by Gaussian elimination with partial pivoting; `None` when singular.
fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let piv = (col..3).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        for row in col + 1..3 {
            let f = a[row][col] / a[col][col];
            let pivot_row = a[col];
            for (x, p) in a[row].iter_mut().zip(pivot_row).skip(col) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; 3];
    for row in (0..3).rev() {
        let s: f64 = (row + 1..3).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Some(x)
}

/// The official MobileFaceSwap fit: least squares of `[src | 1]·A = [dst | 1]`, `M = A[:, :2]ᵀ`.
/// With fewer than 3 points, or collinear ones (rank 2), the translation is 0 as in the original.
pub fn lstsq_affine(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Result<Affine> {
    if src.len() != dst.len() || src.len() < 2 {
        return Err(Error::param(
            "alignment",
            format!(
                "{} source and {} template points (need ≥ 2 pairs)",
                src.len(),
                dst.len()
            ),
        ));
    }
    // Normal equations XᵀX·a = Xᵀy, X rows (x, y, 1), once per output coordinate.
    let mut xtx = [[0.0; 3]; 3];
    let mut xty = [[0.0; 3]; 2];
    for (s, d) in src.iter().zip(dst) {
        let row = [s[0], s[1], 1.0];
        for i in 0..3 {
            for j in 0..3 {
                xtx[i][j] += row[i] * row[j];
            }
            xty[0][i] += row[i] * d[0];
            xty[1][i] += row[i] * d[1];
        }
    }
    match (solve3(xtx, xty[0]), solve3(xtx, xty[1])) {
        (Some(r0), Some(r1)) => Ok([r0, r1]),
        _ => {
            // Rank 2: fit the linear part only (through the origin), translation 0.
            let mut a = [[0.0; 2]; 2];
            let mut b = [[0.0; 2]; 2];
            for (s, d) in src.iter().zip(dst) {
                for i in 0..2 {
                    for j in 0..2 {
                        a[i][j] += s[i] * s[j];
                    }
                    b[0][i] += s[i] * d[0];
                    b[1][i] += s[i] * d[1];
                }
            }
            let det = a[0][0] * a[1][1] - a[0][1] * a[1][0];
            if det.abs() < 1e-12 {
                return Err(Error::param(
                    "alignment",
                    "landmarks are degenerate (all on one point)",
                ));
            }
            let solve = |r: [f64; 2]| {
                [
                    (r[0] * a[1][1] - r[1] * a[0][1]) / det,
                    (a[0][0] * r[1] - a[1][0] * r[0]) / det,
                ]
            };
            let (m0, m1) = (solve(b[0]), solve(b[1]));
            Ok([[m0[0], m0[1], 0.0], [m1[0], m1[1], 0.0]])
        }
    }
}

/// Umeyama's similarity (with scale) mapping `src` onto `dst` in the least-squares sense.
pub fn umeyama(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Result<Affine> {
    let n = src.len();
    if n != dst.len() || n < 2 {
        return Err(Error::param(
            "alignment",
            format!(
                "{} source and {} template points (need ≥ 2 pairs)",
                n,
                dst.len()
            ),
        ));
    }
    let mean = |p: &[[f64; 2]]| {
        let s = p.iter().fold([0.0, 0.0], |a, q| [a[0] + q[0], a[1] + q[1]]);
        [s[0] / n as f64, s[1] / n as f64]
    };
    let (ms, md) = (mean(src), mean(dst));
    // Covariance Σ = (1/n)·Σ (d − md)(s − ms)ᵀ and the source variance.
    let mut cov = [[0.0; 2]; 2];
    let mut var = 0.0;
    for (s, d) in src.iter().zip(dst) {
        let (sx, sy) = (s[0] - ms[0], s[1] - ms[1]);
        let (dx, dy) = (d[0] - md[0], d[1] - md[1]);
        cov[0][0] += dx * sx;
        cov[0][1] += dx * sy;
        cov[1][0] += dy * sx;
        cov[1][1] += dy * sy;
        var += sx * sx + sy * sy;
    }
    var /= n as f64;
    cov.iter_mut().flatten().for_each(|v| *v /= n as f64);
    if var < 1e-12 {
        return Err(Error::param(
            "alignment",
            "landmarks are degenerate (all on one point)",
        ));
    }
    // For 2×2, the optimal rotation comes from atan2 of the antisymmetric/symmetric parts; the
    // singular values' sum (with the reflection sign) gives the scale.
    let (a, b) = (cov[0][0] + cov[1][1], cov[1][0] - cov[0][1]);
    let theta = b.atan2(a);
    let trace_ds = (a * a + b * b).sqrt(); // Σ singular values with det-sign correction
    let scale = trace_ds / var;
    let (c, s) = (theta.cos() * scale, theta.sin() * scale);
    let tx = md[0] - (c * ms[0] - s * ms[1]);
    let ty = md[1] - (s * ms[0] + c * ms[1]);
    Ok([[c, -s, tx], [s, c, ty]])
}

/// The inverse transform (crop → frame), for pasting back; an error when not invertible.
pub fn invert(m: &Affine) -> Result<Affine> {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    if det.abs() < 1e-12 {
        return Err(Error::param(
            "alignment",
            "the alignment matrix is not invertible",
        ));
    }
    let (a, b, c, d) = (m[1][1] / det, -m[0][1] / det, -m[1][0] / det, m[0][0] / det);
    Ok([
        [a, b, -(a * m[0][2] + b * m[1][2])],
        [c, d, -(c * m[0][2] + d * m[1][2])],
    ])
}

/// Applies `m` to a point.
pub fn apply(m: &Affine, p: [f64; 2]) -> [f64; 2] {
    [
        m[0][0] * p[0] + m[0][1] * p[1] + m[0][2],
        m[1][0] * p[0] + m[1][1] * p[1] + m[1][2],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f64; 2], b: [f64; 2]) -> bool {
        (a[0] - b[0]).abs() < 1e-9 && (a[1] - b[1]).abs() < 1e-9
    }

    #[test]
    fn both_fits_recover_an_exact_similarity() {
        let m: Affine = [[0.8, -0.3, 12.0], [0.3, 0.8, -5.0]];
        let src = [
            [100.0, 120.0],
            [160.0, 118.0],
            [131.0, 150.0],
            [108.0, 182.0],
            [155.0, 180.0],
        ];
        let dst: Vec<[f64; 2]> = src.iter().map(|p| apply(&m, *p)).collect();
        for fit in [
            lstsq_affine(&src, &dst).unwrap(),
            umeyama(&src, &dst).unwrap(),
        ] {
            for (s, d) in src.iter().zip(&dst) {
                assert!(close(apply(&fit, *s), *d), "{fit:?}");
            }
        }
    }

    #[test]
    fn lstsq_recovers_a_general_affine_and_inverts() {
        let m: Affine = [[1.2, 0.1, 3.0], [-0.2, 0.7, 9.0]];
        let src = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [7.0, 3.0], [2.0, 9.0]];
        let dst: Vec<[f64; 2]> = src.iter().map(|p| apply(&m, *p)).collect();
        let fit = lstsq_affine(&src, &dst).unwrap();
        let inv = invert(&fit).unwrap();
        for s in src {
            assert!(close(apply(&inv, apply(&fit, s)), s));
        }
    }

    #[test]
    fn degenerate_points_are_errors() {
        let p = [[1.0, 1.0]; 5];
        assert!(umeyama(&p, &ARCFACE_112).is_err());
        assert!(lstsq_affine(&p, &ARCFACE_112).is_err());
    }
}
