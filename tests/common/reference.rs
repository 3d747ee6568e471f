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
