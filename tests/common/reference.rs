//! Plain f64 CPU references, written from the operators' definitions (PyTorch semantics), sharing
//! no code with the engine. Tensors are logical NCHW `Vec<f64>` with explicit shapes.
#![allow(dead_code, clippy::too_many_arguments)]

/// PyTorch `ReflectionPad2d` / zero padding index: `None` means zero.
pub fn pad_index(v: i64, size: i64, reflect: bool) -> Option<usize> {
    if (0..size).contains(&v) {
        return Some(v as usize);
    }
    if !reflect {
        return None;
    }
    let mut r = v.abs();
    if r >= size {
        r = 2 * size - 2 - r;
    }
    Some(r as usize)
}

/// Direct convolution, weights `[cout, cin/groups, kh, kw]`.
pub fn conv2d(
    x: &[f64],
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    wt: &[f64],
    cout: usize,
    kh: usize,
    kw: usize,
    stride: (usize, usize),
    pad: (usize, usize),
    dil: (usize, usize),
    groups: usize,
    reflect: bool,
) -> (Vec<f64>, usize, usize) {
    let ho = (h + 2 * pad.0 - dil.0 * (kh - 1) - 1) / stride.0 + 1;
    let wo = (w + 2 * pad.1 - dil.1 * (kw - 1) - 1) / stride.1 + 1;
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let mut y = vec![0f64; n * cout * ho * wo];
    for b in 0..n {
        for o in 0..cout {
            let g = o / cout_g;
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = 0f64;
                    for i in 0..cin_g {
                        let ci = g * cin_g + i;
                        for ky in 0..kh {
                            let Some(iy) = pad_index(
                                (oy * stride.0 + ky * dil.0) as i64 - pad.0 as i64,
                                h as i64,
                                reflect,
                            ) else {
                                continue;
                            };
                            for kx in 0..kw {
                                let Some(ix) = pad_index(
                                    (ox * stride.1 + kx * dil.1) as i64 - pad.1 as i64,
                                    w as i64,
                                    reflect,
                                ) else {
                                    continue;
                                };
                                acc += x[((b * cin + ci) * h + iy) * w + ix]
                                    * wt[((o * cin_g + i) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    y[((b * cout + o) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    (y, ho, wo)
}

/// Activation by name with its parameter (slope per channel for PReLU).
pub fn act(kind: &str, v: f64, slope: f64) -> f64 {
    match kind {
        "none" => v,
        "relu" => v.max(0.0),
        "relu6" => v.clamp(0.0, 6.0),
        "leaky" | "prelu" => {
            if v >= 0.0 {
                v
            } else {
                v * slope
            }
        }
        "sigmoid" => 1.0 / (1.0 + (-v).exp()),
        "tanh" => v.tanh(),
        other => panic!("unknown activation {other}"),
    }
}

/// Matrix product per sample: y[n, o, p] = Σ_i w[n?][o, i]·x[n, i, p].
pub fn pointwise(
    x: &[f64],
    n: usize,
    cin: usize,
    plane: usize,
    w: &[f64],
    cout: usize,
    per_sample: bool,
) -> Vec<f64> {
    let mut y = vec![0f64; n * cout * plane];
    for b in 0..n {
        let wb = if per_sample { b * cout * cin } else { 0 };
        for o in 0..cout {
            for i in 0..cin {
                let wv = w[wb + o * cin + i];
                for p in 0..plane {
                    y[(b * cout + o) * plane + p] += wv * x[(b * cin + i) * plane + p];
                }
            }
        }
    }
    y
}

/// StyleGAN2 modulation: returns W'[n, o, i].
pub fn modulate(
    w: &[f64],
    cout: usize,
    cin: usize,
    s: &[f64],
    n: usize,
    bias: f64,
    demod: bool,
    eps: f64,
) -> Vec<f64> {
    let mut out = vec![0f64; n * cout * cin];
    for b in 0..n {
        for o in 0..cout {
            let row: Vec<f64> = (0..cin)
                .map(|i| w[o * cin + i] * (s[b * cin + i] + bias))
                .collect();
            let d = if demod {
                1.0 / (row.iter().map(|v| v * v).sum::<f64>() + eps).sqrt()
            } else {
                1.0
            };
            for i in 0..cin {
                out[(b * cout + o) * cin + i] = row[i] * d;
            }
        }
    }
    out
}

/// Per-row mean and biased variance.
pub fn row_stats(row: &[f64]) -> (f64, f64) {
    let m = row.iter().sum::<f64>() / row.len() as f64;
    (
        m,
        row.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / row.len() as f64,
    )
}

/// Bilinear resize with PyTorch semantics.
pub fn bilinear(
    x: &[f64],
    rows: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    align: bool,
) -> Vec<f64> {
    let coord = |d: usize, i: usize, o: usize| -> f64 {
        if align {
            if o > 1 {
                d as f64 * (i - 1) as f64 / (o - 1) as f64
            } else {
                0.0
            }
        } else {
            ((d as f64 + 0.5) * i as f64 / o as f64 - 0.5).max(0.0)
        }
    };
    let mut y = Vec::with_capacity(rows * ho * wo);
    for r in 0..rows {
        let xr = &x[r * h * w..(r + 1) * h * w];
        for oy in 0..ho {
            let fy = coord(oy, h, ho);
            let y0 = (fy.floor() as usize).min(h - 1);
            let y1 = (y0 + 1).min(h - 1);
            let ly = fy - y0 as f64;
            for ox in 0..wo {
                let fx = coord(ox, w, wo);
                let x0 = (fx.floor() as usize).min(w - 1);
                let x1 = (x0 + 1).min(w - 1);
                let lx = fx - x0 as f64;
                let top = xr[y0 * w + x0] * (1.0 - lx) + xr[y0 * w + x1] * lx;
                let bot = xr[y1 * w + x0] * (1.0 - lx) + xr[y1 * w + x1] * lx;
                y.push(top * (1.0 - ly) + bot * ly);
            }
        }
    }
    y
}

/// Nearest resize, PyTorch 'nearest'.
pub fn nearest(x: &[f64], rows: usize, h: usize, w: usize, ho: usize, wo: usize) -> Vec<f64> {
    let mut y = Vec::with_capacity(rows * ho * wo);
    for r in 0..rows {
        for oy in 0..ho {
            let iy = ((oy as f64 * h as f64 / ho as f64).floor() as usize).min(h - 1);
            for ox in 0..wo {
                let ix = ((ox as f64 * w as f64 / wo as f64).floor() as usize).min(w - 1);
                y.push(x[(r * h + iy) * w + ix]);
            }
        }
    }
    y
}

/// Max / average pooling, PyTorch floor mode. `mode`: "max", "avg_incl", "avg_excl".
pub fn pool(
    x: &[f64],
    rows: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    pad: usize,
    mode: &str,
) -> (Vec<f64>, usize, usize) {
    let ho = (h + 2 * pad - k) / s + 1;
    let wo = (w + 2 * pad - k) / s + 1;
    let mut y = Vec::new();
    for r in 0..rows {
        for oy in 0..ho {
            for ox in 0..wo {
                let (y0, x0) = (
                    oy as i64 * s as i64 - pad as i64,
                    ox as i64 * s as i64 - pad as i64,
                );
                let (mut best, mut sum, mut cnt) = (f64::NEG_INFINITY, 0.0, 0);
                for iy in y0..y0 + k as i64 {
                    for ix in x0..x0 + k as i64 {
                        if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                            continue;
                        }
                        let v = x[(r * h + iy as usize) * w + ix as usize];
                        best = best.max(v);
                        sum += v;
                        cnt += 1;
                    }
                }
                let hy = (y0 + k as i64).min((h + pad) as i64) - y0;
                let hx = (x0 + k as i64).min((w + pad) as i64) - x0;
                y.push(match mode {
                    "max" => best,
                    "avg_incl" => sum / (hy * hx) as f64,
                    _ => sum / cnt as f64,
                });
            }
        }
    }
    (y, ho, wo)
}

/// `cv2.warpAffine(src, M, (wo, ho), flags=WARP_INVERSE_MAP | INTER_LINEAR, BORDER_CONSTANT 0)`.
pub fn warp_ref(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    m: &[[f64; 3]; 2],
    ho: usize,
    wo: usize,
) -> Vec<f64> {
    let px = |ch: usize, x: i64, y: i64| -> f64 {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            0.0
        } else {
            src[(ch * h + y as usize) * w + x as usize] as f64
        }
    };
    let mut out = Vec::new();
    for ch in 0..c {
        for oy in 0..ho {
            for ox in 0..wo {
                let sx = m[0][0] * ox as f64 + m[0][1] * oy as f64 + m[0][2];
                let sy = m[1][0] * ox as f64 + m[1][1] * oy as f64 + m[1][2];
                let (x0, y0) = (sx.floor() as i64, sy.floor() as i64);
                let (fx, fy) = (sx - x0 as f64, sy - y0 as f64);
                let top = px(ch, x0, y0) * (1.0 - fx) + px(ch, x0 + 1, y0) * fx;
                let bot = px(ch, x0, y0 + 1) * (1.0 - fx) + px(ch, x0 + 1, y0 + 1) * fx;
                out.push(top * (1.0 - fy) + bot * fy);
            }
        }
    }
    out
}

/// 1-D max/min/mean filter with OpenCV's borders (morphology ignores outside taps; blur reflects 101).
pub fn filter_ref(x: &[f32], h: usize, w: usize, op: &str, r: i64, vertical: bool) -> Vec<f64> {
    let mut out = Vec::new();
    for y in 0..h as i64 {
        for xx in 0..w as i64 {
            let (c, n) = if vertical {
                (y, h as i64)
            } else {
                (xx, w as i64)
            };
            let mut vals = Vec::new();
            for k in -r..=r {
                let mut i = c + k;
                if op == "mean" {
                    i = i.abs();
                    if i >= n {
                        i = 2 * n - 2 - i;
                    }
                } else if i < 0 || i >= n {
                    continue;
                }
                let (yy, xi) = if vertical { (i, xx) } else { (y, i) };
                vals.push(x[(yy * w as i64 + xi) as usize] as f64);
            }
            out.push(match op {
                "max" => vals.iter().cloned().fold(f64::MIN, f64::max),
                "min" => vals.iter().cloned().fold(f64::MAX, f64::min),
                _ => vals.iter().sum::<f64>() / (2 * r + 1) as f64,
            });
        }
    }
    out
}
