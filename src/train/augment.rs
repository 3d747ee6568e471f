//! Host-side training augmentation as deepfakes/faceswap does it (`lib/training/augmentation.py`,
//! `lib/training/generator.py`; defaults from spec alignment.md §B.2), seeded, on planar RGB `f32`
//! images in [0, 1] (`[3, S, S]`, the layout the engine uploads), and the landmark masks of
//! faceswap's penalised mask loss.
//!
//! Per face, in faceswap's order ([`Augmenter::apply`]):
//! 1. **Colour** (image only): to CIE L\*a\*b\* (OpenCV's sRGB/D65 formulas), each of L, a, b in
//!    OpenCV's 8-bit scale (`L·255/100`, `a + 128`, `b + 128`, here divided by 255) moved by a
//!    uniform random amount `r` in ±(0.30, 0.08, 0.08): towards 1 by `(1 − x)·r` when `r ≥ 0`,
//!    towards 0 by `x·r` otherwise; then, with probability 0.5, CLAHE on L (clip limit 2, a
//!    `g × g` tile grid with `g = base + k·(base/2)`, `base = max(2, S/128)`, `k` uniform in
//!    0..=4), and back to RGB, clipped to [0, 1]. faceswap does this on 8-bit images; here L, a, b
//!    stay in floating point except under CLAHE, which works on 256 levels of L as OpenCV's does.
//! 2. **Transform** (image and any extra channels, e.g. masks): OpenCV's
//!    `getRotationMatrix2D((S/2, S/2), angle, scale)` with angle uniform in ±10°, scale in
//!    1 ± 0.05, plus a shift uniform in ±5 % of S on each axis, applied as `warpAffine` (bilinear,
//!    replicated border).
//! 3. **Flip**: horizontal, with probability 0.5.
//! 4. The **target** is the result so far; the **input** is the target through the **random grid
//!    warp**: a 5×5 grid `linspace(0, S, 5)` in x and y plus normal noise of standard deviation
//!    `5/256·S`, resized (bilinear, half-pixel centres) to `P = ⌊1.25·S⌋` and cut to the central
//!    `S × S` from `⌊P/10⌋`, then `remap` (bilinear, black outside).
//!
//! Differences from OpenCV: interpolation is exact `f32` bilinear (OpenCV quantises sub-pixel
//! positions to 1/32 and works on 8-bit pixels), and the anti-aliased polygon edges of the masks
//! are a 4×4-supersampled coverage of the polygon grown by half a pixel instead of OpenCV's
//! `LINE_AA` rasteriser (same area within 2 px² on a 64 px face).

use crate::error::{Error, Result};
use crate::face::align::Affine;

/// A small seeded generator (xoshiro256**, seeded through SplitMix64): the same seed gives the
/// same augmentations on every machine.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Integer uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Augmentation ranges; [`Default`] is faceswap's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Zoom range: scale uniform in `1 ± zoom` (0.05).
    pub zoom: f32,
    /// Rotation range in degrees: uniform in `±rotation` (10).
    pub rotation: f32,
    /// Shift range as a fraction of the size: uniform in `±shift·S` pixels per axis (0.05).
    pub shift: f32,
    /// Probability of a horizontal flip (0.5).
    pub flip: f32,
    /// Lightness adjustment range (0.30).
    pub lightness: f32,
    /// a\*/b\* adjustment range (0.08).
    pub ab: f32,
    /// Probability of CLAHE on the lightness (0.5).
    pub clahe_chance: f32,
    /// Largest CLAHE grid step `k` (4).
    pub clahe_max_size: u32,
    /// Random grid warp of the input (on).
    pub warp: bool,
    /// Grid warp noise standard deviation as a fraction of the size (5/256).
    pub warp_scale: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            zoom: 0.05,
            rotation: 10.0,
            shift: 0.05,
            flip: 0.5,
            lightness: 0.30,
            ab: 0.08,
            clahe_chance: 0.5,
            clahe_max_size: 4,
            warp: true,
            warp_scale: 5.0 / 256.0,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all: input and target are the face itself.
    pub fn none() -> Self {
        AugmentConfig {
            zoom: 0.0,
            rotation: 0.0,
            shift: 0.0,
            flip: 0.0,
            lightness: 0.0,
            ab: 0.0,
            clahe_chance: 0.0,
            clahe_max_size: 0,
            warp: false,
            warp_scale: 0.0,
        }
    }

    /// Checks the ranges.
    pub fn check(&self) -> Result<()> {
        let ok = |v: f32, lo: f32, hi: f32| v.is_finite() && v >= lo && v <= hi;
        let checks = [
            ("zoom", ok(self.zoom, 0.0, 0.9)),
            ("rotation", ok(self.rotation, 0.0, 180.0)),
            ("shift", ok(self.shift, 0.0, 1.0)),
            ("flip", ok(self.flip, 0.0, 1.0)),
            ("lightness", ok(self.lightness, 0.0, 1.0)),
            ("ab", ok(self.ab, 0.0, 1.0)),
            ("clahe_chance", ok(self.clahe_chance, 0.0, 1.0)),
            ("clahe_max_size", self.clahe_max_size <= 64),
            ("warp_scale", ok(self.warp_scale, 0.0, 1.0)),
        ];
        match checks.iter().find(|(_, good)| !good) {
            Some((name, _)) => Err(Error::param(
                "augmentation",
                format!("{name} out of range: {self:?}"),
            )),
            None => Ok(()),
        }
    }
}

/// The random draw for one face (what [`Augmenter::apply`] does to it).
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentParams {
    /// Rotation in degrees (counter-clockwise on screen, as OpenCV).
    pub rotation: f32,
    /// Zoom.
    pub scale: f32,
    /// Shift in pixels (x, y).
    pub shift: [f32; 2],
    /// Horizontal flip.
    pub flip: bool,
    /// L, a, b adjustments.
    pub lab: [f32; 3],
    /// CLAHE tile grid (`g × g`), when applied.
    pub clahe: Option<u32>,
    /// Grid warp noise in pixels, x then y, 5×5 row-major each (`None`: no warp).
    pub warp: Option<[[f32; 25]; 2]>,
}

impl AugmentParams {
    /// The identity draw.
    pub fn identity() -> Self {
        AugmentParams {
            rotation: 0.0,
            scale: 1.0,
            shift: [0.0; 2],
            flip: false,
            lab: [0.0; 3],
            clahe: None,
            warp: None,
        }
    }
}

/// One augmented face.
#[derive(Clone, Debug, PartialEq)]
pub struct Augmented {
    /// The network input (target plus grid warp), `[3, S, S]`.
    pub input: Vec<f32>,
    /// The target (colour, transform, flip), `[3, S, S]`.
    pub target: Vec<f32>,
    /// The extra channels with the target's transform and flip (e.g. masks), `[k, S, S]`.
    pub extra: Vec<f32>,
}

/// A batch, NCHW.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Inputs `[N, 3, S, S]`.
    pub input: Vec<f32>,
    /// Targets `[N, 3, S, S]`.
    pub target: Vec<f32>,
    /// Extra channels `[N, k, S, S]` (empty without).
    pub extra: Vec<f32>,
    /// The draws, per face.
    pub params: Vec<AugmentParams>,
}

/// Seeded augmentation of `S × S` faces.
#[derive(Clone, Debug)]
pub struct Augmenter {
    config: AugmentConfig,
    size: usize,
    rng: Rng,
}

impl Augmenter {
    /// An augmenter of `size × size` faces (16 to 1024).
    pub fn new(config: AugmentConfig, size: usize, seed: u64) -> Result<Self> {
        config.check()?;
        if !(16..=1024).contains(&size) {
            return Err(Error::param(
                "augmentation",
                format!("size {size} (16 to 1024)"),
            ));
        }
        Ok(Augmenter {
            config,
            size,
            rng: Rng::new(seed),
        })
    }

    /// The face side.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Draws one face's parameters (a fixed number of draws per face, whatever is enabled, so a
    /// seed's sequence does not depend on the configuration's zeros).
    pub fn draw(&mut self) -> AugmentParams {
        let c = self.config;
        let s = self.size as f64;
        let r = &mut self.rng;
        let rotation = r.uniform(-1.0, 1.0) * c.rotation as f64;
        let scale = 1.0 + r.uniform(-1.0, 1.0) * c.zoom as f64;
        let shift = [
            r.uniform(-1.0, 1.0) * c.shift as f64 * s,
            r.uniform(-1.0, 1.0) * c.shift as f64 * s,
        ];
        let flip = r.unit() < c.flip as f64;
        let lab = [
            r.uniform(-1.0, 1.0) * c.lightness as f64,
            r.uniform(-1.0, 1.0) * c.ab as f64,
            r.uniform(-1.0, 1.0) * c.ab as f64,
        ];
        let clahe_draw = r.unit();
        let k = r.below(c.clahe_max_size as u64 + 1) as u32;
        let base = (self.size as u32 / 128).max(2);
        let clahe = (clahe_draw < c.clahe_chance as f64).then_some(base + k * (base / 2));
        let mut noise = [[0f32; 25]; 2];
        for v in noise.iter_mut().flatten() {
            *v = (r.normal() * c.warp_scale as f64 * s) as f32;
        }
        AugmentParams {
            rotation: rotation as f32,
            scale: scale as f32,
            shift: shift.map(|v| v as f32),
            flip,
            lab: lab.map(|v| v as f32),
            clahe,
            warp: c.warp.then_some(noise),
        }
    }

    /// The forward transform matrix (source → augmented pixels): OpenCV's
    /// `getRotationMatrix2D((S/2, S/2), rotation, scale)` (integer centre, as faceswap's `S // 2`)
    /// with the shift added to its translation.
    pub fn matrix(&self, p: &AugmentParams) -> Affine {
        transform_matrix(self.size, p)
    }

    /// Augments one face `[3, S, S]` (and `extra`, `[k, S, S]`, transformed and flipped like the
    /// target but not colour-adjusted or warped) with the draw `p`.
    pub fn apply(&self, p: &AugmentParams, face: &[f32], extra: &[f32]) -> Result<Augmented> {
        let s = self.size;
        let plane = s * s;
        if face.len() != 3 * plane || !extra.len().is_multiple_of(plane) {
            return Err(Error::shape(
                "augmentation",
                format!(
                    "face of {} and extra of {} values for {s}x{s} (3 and k planes expected)",
                    face.len(),
                    extra.len()
                ),
            ));
        }
        if face.iter().chain(extra).any(|v| !v.is_finite()) {
            return Err(Error::param("augmentation", "non-finite pixel values"));
        }
        let mut img = face.to_vec();
        if p.lab != [0.0; 3] || p.clahe.is_some() {
            colour_adjust(&mut img, s, p.lab, p.clahe)?;
        }
        let m = self.matrix(p);
        let identity = m == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        let (mut target, mut extra) = if identity {
            (img, extra.to_vec())
        } else {
            (
                warp_affine_replicate(&img, 3, s, &m)?,
                warp_affine_replicate(extra, extra.len() / plane, s, &m)?,
            )
        };
        if p.flip {
            flip_planes(&mut target, s);
            flip_planes(&mut extra, s);
        }
        let input = match &p.warp {
            Some(noise) => {
                let (mx, my) = warp_maps(s, noise);
                remap(&target, 3, s, &mx, &my)?
            }
            None => target.clone(),
        };
        Ok(Augmented {
            input,
            target,
            extra,
        })
    }

    /// Draws and applies augmentations to a batch of faces (each `[3, S, S]`), with optional extra
    /// channels per face (each `[k, S, S]`, the same `k` for all; empty slice for none).
    pub fn batch(&mut self, faces: &[&[f32]], extra: &[&[f32]]) -> Result<Batch> {
        if !extra.is_empty() && extra.len() != faces.len() {
            return Err(Error::shape(
                "augmentation",
                format!("{} faces, {} extra", faces.len(), extra.len()),
            ));
        }
        let k = extra.first().map_or(0, |e| e.len());
        if extra.iter().any(|e| e.len() != k) {
            return Err(Error::shape(
                "augmentation",
                "extra channels differ per face",
            ));
        }
        let mut out = Batch {
            input: Vec::with_capacity(faces.len() * 3 * self.size * self.size),
            target: Vec::with_capacity(faces.len() * 3 * self.size * self.size),
            extra: Vec::with_capacity(faces.len() * k),
            params: Vec::with_capacity(faces.len()),
        };
        for (i, f) in faces.iter().enumerate() {
            let p = self.draw();
            let a = self.apply(&p, f, extra.get(i).copied().unwrap_or(&[]))?;
            out.input.extend(a.input);
            out.target.extend(a.target);
            out.extra.extend(a.extra);
            out.params.push(p);
        }
        Ok(out)
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::shape(what, format!("{got} values, expected {want}")));
    }
    Ok(())
}

/// [`Augmenter::matrix`] for a size.
pub fn transform_matrix(size: usize, p: &AugmentParams) -> Affine {
    let c = (size / 2) as f64;
    let a = (p.rotation as f64).to_radians();
    let (alpha, beta) = (p.scale as f64 * a.cos(), p.scale as f64 * a.sin());
    [
        [
            alpha,
            beta,
            (1.0 - alpha) * c - beta * c + p.shift[0] as f64,
        ],
        [
            -beta,
            alpha,
            beta * c + (1.0 - alpha) * c + p.shift[1] as f64,
        ],
    ]
}

/// Bilinear sample of a plane at `(x, y)` (pixel centres at integers) with a border rule: `clamp`
/// replicates edge pixels, otherwise outside is 0.
fn sample(plane: &[f32], s: usize, x: f64, y: f64, clamp: bool) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = ((x - x0) as f32, (y - y0) as f32);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let n = s as i64;
    let tap = |xi: i64, yi: i64| -> f32 {
        if clamp {
            plane[(yi.clamp(0, n - 1) * n + xi.clamp(0, n - 1)) as usize]
        } else if xi < 0 || yi < 0 || xi >= n || yi >= n {
            0.0
        } else {
            plane[(yi * n + xi) as usize]
        }
    };
    let top = tap(x0, y0) * (1.0 - fx) + tap(x0 + 1, y0) * fx;
    let bot = tap(x0, y0 + 1) * (1.0 - fx) + tap(x0 + 1, y0 + 1) * fx;
    top * (1.0 - fy) + bot * fy
}

/// `cv2.warpAffine(planes, m, (s, s), INTER_LINEAR, BORDER_REPLICATE)`: every output pixel samples
/// the source at `m⁻¹·(x, y)`.
pub fn warp_affine_replicate(src: &[f32], c: usize, s: usize, m: &Affine) -> Result<Vec<f32>> {
    check_len("affine warp", src.len(), c * s * s)?;
    let inv = crate::face::align::invert(m)?;
    let plane = s * s;
    let mut out = vec![0f32; c * plane];
    for ch in 0..c {
        let sp = &src[ch * plane..(ch + 1) * plane];
        for y in 0..s {
            for x in 0..s {
                let (xf, yf) = (x as f64, y as f64);
                let sx = inv[0][0] * xf + inv[0][1] * yf + inv[0][2];
                let sy = inv[1][0] * xf + inv[1][1] * yf + inv[1][2];
                out[ch * plane + y * s + x] = sample(sp, s, sx, sy, true);
            }
        }
    }
    Ok(out)
}

/// Mirrors every plane left–right.
pub fn flip_planes(planes: &mut [f32], s: usize) {
    for row in planes.chunks_exact_mut(s) {
        row.reverse();
    }
}

/// The grid warp's per-pixel source maps (x, y) for a noise draw: faceswap's 5×5 grid plus noise,
/// resized to `⌊1.25·s⌋` with `cv2.resize` INTER_LINEAR semantics and cut from `⌊P/10⌋`.
pub fn warp_maps(s: usize, noise: &[[f32; 25]; 2]) -> (Vec<f32>, Vec<f32>) {
    let p = (1.25 * s as f64) as usize;
    let start = p / 10;
    let taps: Vec<(usize, usize, f32)> = (start..start + s)
        .map(|d| {
            let f = (d as f64 + 0.5) * (5.0 / p as f64) - 0.5;
            let i = f.floor();
            if i < 0.0 {
                (0, 0, 0.0)
            } else if i >= 4.0 {
                (4, 4, 0.0)
            } else {
                (i as usize, i as usize + 1, (f - i) as f32)
            }
        })
        .collect();
    let grid = |k: usize, gy: usize, gx: usize| -> f32 {
        let base = (if k == 0 { gx } else { gy }) as f32 * s as f32 / 4.0;
        base + noise[k][gy * 5 + gx]
    };
    let mut maps = [vec![0f32; s * s], vec![0f32; s * s]];
    for (k, map) in maps.iter_mut().enumerate() {
        for (y, &(y0, y1, fy)) in taps.iter().enumerate() {
            for (x, &(x0, x1, fx)) in taps.iter().enumerate() {
                let top = grid(k, y0, x0) * (1.0 - fx) + grid(k, y0, x1) * fx;
                let bot = grid(k, y1, x0) * (1.0 - fx) + grid(k, y1, x1) * fx;
                map[y * s + x] = top * (1.0 - fy) + bot * fy;
            }
        }
    }
    let [mx, my] = maps;
    (mx, my)
}

/// `cv2.remap(planes, mx, my, INTER_LINEAR)` with a constant black border.
pub fn remap(src: &[f32], c: usize, s: usize, mx: &[f32], my: &[f32]) -> Result<Vec<f32>> {
    let plane = s * s;
    check_len("remap", src.len(), c * plane)?;
    check_len("remap x map", mx.len(), plane)?;
    check_len("remap y map", my.len(), plane)?;
    let mut out = vec![0f32; c * plane];
    for ch in 0..c {
        let sp = &src[ch * plane..(ch + 1) * plane];
        for i in 0..plane {
            out[ch * plane + i] = sample(sp, s, mx[i] as f64, my[i] as f64, false);
        }
    }
    Ok(out)
}

/// OpenCV's RGB → XYZ (D65) matrix rows.
const RGB2XYZ: [[f64; 3]; 3] = [
    [0.412453, 0.357580, 0.180423],
    [0.212671, 0.715160, 0.072169],
    [0.019334, 0.119193, 0.950227],
];
/// D65 white point (X, Z) as OpenCV normalises.
const WHITE: [f64; 2] = [0.950456, 1.088754];

fn srgb_to_linear(c: f64) -> f64 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(c: f64) -> f64 {
    if c <= 0.0031308 {
        12.92 * c
    } else {
        1.055 * c.powf(1.0 / 2.4) - 0.055
    }
}

/// sRGB in [0, 1] → (L in 0..100, a, b), OpenCV's formulas.
pub fn rgb_to_lab(rgb: [f64; 3]) -> [f64; 3] {
    let lin = rgb.map(|c| srgb_to_linear(c.clamp(0.0, 1.0)));
    let xyz = RGB2XYZ.map(|r| r[0] * lin[0] + r[1] * lin[1] + r[2] * lin[2]);
    let (x, y, z) = (xyz[0] / WHITE[0], xyz[1], xyz[2] / WHITE[1]);
    let f = |t: f64| {
        if t > 0.008856 {
            t.cbrt()
        } else {
            7.787 * t + 16.0 / 116.0
        }
    };
    let l = if y > 0.008856 {
        116.0 * y.cbrt() - 16.0
    } else {
        903.3 * y
    };
    [l, 500.0 * (f(x) - f(y)), 200.0 * (f(y) - f(z))]
}

/// (L, a, b) → sRGB, the inverse of [`rgb_to_lab`] (not clipped).
pub fn lab_to_rgb(lab: [f64; 3]) -> [f64; 3] {
    let [l, a, b] = lab;
    let y = if l <= 903.3 * 0.008856 {
        l / 903.3
    } else {
        ((l + 16.0) / 116.0).powi(3)
    };
    let fy = if y > 0.008856 {
        y.cbrt()
    } else {
        7.787 * y + 16.0 / 116.0
    };
    let finv = |f: f64| {
        let t = f * f * f;
        if t > 0.008856 {
            t
        } else {
            (f - 16.0 / 116.0) / 7.787
        }
    };
    let x = finv(fy + a / 500.0) * WHITE[0];
    let z = finv(fy - b / 200.0) * WHITE[1];
    // Inverse of RGB2XYZ (OpenCV's XYZ2RGB, D65).
    const XYZ2RGB: [[f64; 3]; 3] = [
        [3.240479, -1.53715, -0.498535],
        [-0.969256, 1.875991, 0.041556],
        [0.055648, -0.204043, 1.057311],
    ];
    XYZ2RGB.map(|r| linear_to_srgb((r[0] * x + r[1] * y + r[2] * z).max(0.0)))
}

/// The colour step in place: L\*a\*b\* adjustment and optional CLAHE on L (see the module docs),
/// on a planar RGB `[3, s, s]` image.
pub fn colour_adjust(
    img: &mut [f32],
    s: usize,
    lab: [f32; 3],
    clahe_grid: Option<u32>,
) -> Result<()> {
    let plane = s * s;
    check_len("colour adjustment", img.len(), 3 * plane)?;
    // OpenCV 8-bit Lab scale, divided by 255: L·255/100, a + 128, b + 128.
    let mut l8 = vec![0f64; plane];
    let mut ab = vec![[0f64; 2]; plane];
    let adj = |x: f64, r: f32| {
        let r = r as f64;
        if r >= 0.0 {
            x + (1.0 - x) * r
        } else {
            x * (1.0 + r)
        }
    };
    for i in 0..plane {
        let v = rgb_to_lab([0, 1, 2].map(|c| img[c * plane + i] as f64));
        l8[i] = adj(v[0] / 100.0, lab[0]);
        ab[i] = [
            adj((v[1] + 128.0) / 255.0, lab[1]),
            adj((v[2] + 128.0) / 255.0, lab[2]),
        ];
    }
    if let Some(g) = clahe_grid {
        let q: Vec<u8> = l8
            .iter()
            .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
            .collect();
        let out = clahe(&q, s, s, g.max(1) as usize, 2.0)?;
        for (d, v) in l8.iter_mut().zip(out) {
            *d = v as f64 / 255.0;
        }
    }
    for i in 0..plane {
        let rgb = lab_to_rgb([
            l8[i] * 100.0,
            ab[i][0] * 255.0 - 128.0,
            ab[i][1] * 255.0 - 128.0,
        ]);
        for c in 0..3 {
            img[c * plane + i] = rgb[c].clamp(0.0, 1.0) as f32;
        }
    }
    Ok(())
}

/// OpenCV's CLAHE (`createCLAHE(clip, (g, g)).apply`) on an 8-bit `w × h` plane: the image padded
/// (reflect-101, right and bottom) as OpenCV pads it, per-tile histograms clipped at
/// `max(⌊clip·area/256⌋, 1)` with the excess spread evenly (then one extra count every
/// `256/residual` bins), tile LUTs `round(cdf·255/area)`, and bilinear interpolation between the
/// four nearest tiles' LUTs, in `f32` with OpenCV's rounding (half to even).
///
/// The grid must be 1 to `min(w, h)` tiles per side.
pub fn clahe(src: &[u8], w: usize, h: usize, g: usize, clip: f64) -> Result<Vec<u8>> {
    check_len("clahe", src.len(), w * h)?;
    if g == 0 || g > w.min(h) || !clip.is_finite() {
        return Err(Error::param(
            "clahe",
            format!("grid {g} for a {w}x{h} image, clip {clip}"),
        ));
    }
    // As OpenCV: when either side is not a multiple of the grid, *both* are padded by
    // `g − side % g` (a whole extra tile on a side that was a multiple).
    let (pw, ph) = if w.is_multiple_of(g) && h.is_multiple_of(g) {
        (w, h)
    } else {
        (w + g - w % g, h + g - h % g)
    };
    let refl = |i: usize, n: usize| -> usize {
        if i < n {
            i
        } else {
            2 * n - 2 - i
        }
    };
    let (tw, th) = (pw / g, ph / g);
    let area = tw * th;
    let limit = if clip > 0.0 {
        ((clip * area as f64 / 256.0) as usize).max(1)
    } else {
        usize::MAX
    };
    let scale = 255.0f32 / area as f32;
    let mut luts = vec![[0u8; 256]; g * g];
    for ty in 0..g {
        for tx in 0..g {
            let mut hist = [0usize; 256];
            for y in ty * th..(ty + 1) * th {
                for x in tx * tw..(tx + 1) * tw {
                    hist[src[refl(y, h) * w + refl(x, w)] as usize] += 1;
                }
            }
            if limit != usize::MAX {
                let mut clipped = 0;
                for v in hist.iter_mut() {
                    if *v > limit {
                        clipped += *v - limit;
                        *v = limit;
                    }
                }
                let batch = clipped / 256;
                let mut residual = clipped - batch * 256;
                for v in hist.iter_mut() {
                    *v += batch;
                }
                if let Some(step) = 256usize.checked_div(residual) {
                    let step = step.max(1);
                    let mut i = 0;
                    while i < 256 && residual > 0 {
                        hist[i] += 1;
                        i += step;
                        residual -= 1;
                    }
                }
            }
            let mut sum = 0usize;
            for (i, v) in hist.iter().enumerate() {
                sum += v;
                luts[ty * g + tx][i] =
                    (sum as f32 * scale).round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
    }
    let coord = |p: usize, t: usize| -> (usize, usize, f32) {
        let f = p as f32 * (1.0 / t as f32) - 0.5;
        let i1 = f.floor() as i64;
        let a = f - i1 as f32;
        (i1.max(0) as usize, ((i1 + 1) as usize).min(g - 1), a)
    };
    let mut out = vec![0u8; w * h];
    for y in 0..h {
        let (y1, y2, ya) = coord(y, th);
        for x in 0..w {
            let (x1, x2, xa) = coord(x, tw);
            let v = src[y * w + x] as usize;
            let l = |ty: usize, tx: usize| luts[ty * g + tx][v] as f32;
            let r = (l(y1, x1) * (1.0 - xa) + l(y1, x2) * xa) * (1.0 - ya)
                + (l(y2, x1) * (1.0 - xa) + l(y2, x2) * xa) * ya;
            out[y * w + x] = r.round_ties_even().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(out)
}

/// Which landmark mask ([`landmark_mask`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskArea {
    /// faceswap's "components": the union of 8 convex hulls over landmark groups.
    Components,
    /// faceswap's "extended": components with the brows pushed up by half their distance from
    /// the eyes (the penalised mask loss's default mask).
    Extended,
    /// Both eyes (hulls of 36–41 and 42–47).
    Eyes,
    /// The outer mouth (hull of 48–59).
    Mouth,
}

/// How far polygons are grown for the anti-aliased fill ([`fill_convex`]), pixels.
const GROW: f64 = 0.5;

/// Landmark groups of the components/extended masks (faceswap `plugins/extract/mask/
/// components.py`, `extended.py`): r_jaw, l_jaw, r_cheek, l_cheek, nose_ridge, r_eye, l_eye, nose,
/// as `[start, end)` ranges.
const FACE_PARTS: [&[(usize, usize)]; 8] = [
    &[(0, 9), (17, 18)],
    &[(8, 17), (26, 27)],
    &[(17, 20), (8, 9)],
    &[(24, 27), (8, 9)],
    &[(19, 25), (8, 9)],
    &[(17, 22), (27, 28), (31, 36), (8, 9)],
    &[(22, 27), (27, 28), (31, 36), (8, 9)],
    &[(27, 31), (31, 36)],
];

/// faceswap's `_adjust_mask_top`: brows 17–26 moved away from the eye line by half their offset
/// (floor division as numpy's `//` on the float landmarks).
fn extend_brows(l: &mut [[f64; 2]]) {
    let half =
        |a: [f64; 2], b: [f64; 2]| [((a[0] + b[0]) / 2.0).floor(), ((a[1] + b[1]) / 2.0).floor()];
    let ml = half(l[36], l[0]);
    let mr = half(l[16], l[45]);
    let ql = half(l[36], ml);
    let qr = half(l[45], mr);
    let bot_l = [ql, l[36], l[37], l[38], l[39]];
    let bot_r = [l[42], l[43], l[44], l[45], qr];
    for k in 0..5 {
        for d in 0..2 {
            let (t, b) = (l[17 + k][d], bot_l[k][d]);
            l[17 + k][d] = t + ((t - b) / 2.0).floor();
            let (t, b) = (l[22 + k][d], bot_r[k][d]);
            l[22 + k][d] = t + ((t - b) / 2.0).floor();
        }
    }
}

/// Convex hull (Andrew's monotone chain), counter-clockwise in image axes, no repeated points.
fn convex_hull(mut pts: Vec<[f64; 2]>) -> Vec<[f64; 2]> {
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let cross = |o: [f64; 2], a: [f64; 2], b: [f64; 2]| {
        (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    };
    let mut hull: Vec<[f64; 2]> = Vec::with_capacity(2 * pts.len());
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &[f64; 2]>> = if pass == 0 {
            Box::new(pts.iter())
        } else {
            Box::new(pts.iter().rev())
        };
        for &p in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// Fills a convex polygon into `mask` (max with its coverage): the coverage of each pixel's square
/// (centred on its integer coordinates, 4×4 samples) by the polygon grown by a disc of half a
/// pixel (rounded corners), which reproduces OpenCV's `fillConvexPoly(..., LINE_AA)` (edge pixels
/// full, a soft band outside). Checked locally against OpenCV 5.0 on a 64 px face's hulls: areas
/// 1311 vs 1313 px² (components), 1503 vs 1504 (extended), 57 vs 56 (eyes), 113 vs 113 (mouth);
/// mean |difference| ≤ 0.007, max 0.56. Fewer than 3 distinct points draw nothing.
fn fill_convex(mask: &mut [f32], s: usize, hull: &[[f64; 2]]) {
    if hull.is_empty() {
        return;
    }
    let (mut lo, mut hi) = ([f64::MAX; 2], [f64::MIN; 2]);
    for p in hull {
        for k in 0..2 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    let inside = |x: f64, y: f64| -> bool {
        if hull.len() < 3 {
            return false;
        }
        // Signed distances to the edges' lines (positive inside).
        let mut strictly = true;
        for i in 0..hull.len() {
            let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
            let len = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt();
            let d = ((b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])) / len;
            if d < -GROW {
                return false;
            }
            strictly &= d >= 0.0;
        }
        // Inside, or within GROW of an edge segment (a disc-grown polygon: rounded corners).
        strictly
            || (0..hull.len()).any(|i| {
                let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
                let (ex, ey) = (b[0] - a[0], b[1] - a[1]);
                let t = (((x - a[0]) * ex + (y - a[1]) * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0);
                (a[0] + t * ex - x).powi(2) + (a[1] + t * ey - y).powi(2) <= GROW * GROW
            })
    };
    let x0 = (lo[0] - 2.0).floor().max(0.0) as usize;
    let y0 = (lo[1] - 2.0).floor().max(0.0) as usize;
    let x1 = ((hi[0] + 2.0).ceil().max(0.0) as usize).min(s.saturating_sub(1));
    let y1 = ((hi[1] + 2.0).ceil().max(0.0) as usize).min(s.saturating_sub(1));
    if x0 > x1 || y0 > y1 || lo[0] > s as f64 || lo[1] > s as f64 {
        return;
    }
    for y in y0..=y1 {
        for x in x0..=x1 {
            let mut n = 0;
            for sy in 0..4 {
                for sx in 0..4 {
                    let px = x as f64 - 0.375 + 0.25 * sx as f64;
                    let py = y as f64 - 0.375 + 0.25 * sy as f64;
                    n += inside(px, py) as u32;
                }
            }
            let v = n as f32 / 16.0;
            let m = &mut mask[y * s + x];
            *m = m.max(v);
        }
    }
}

/// A landmark mask `[s × s]` in [0, 1] from 68 landmarks in the crop's pixels (e.g.
/// [`crate::face::faceset::Faceset::aligned_landmarks`]): the union of the area's convex hulls,
/// points rounded to integers first (as faceswap's `np.rint`).
pub fn landmark_mask(area: MaskArea, landmarks: &[[f32; 2]], s: usize) -> Result<Vec<f32>> {
    if landmarks.len() != 68 || landmarks.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::param(
            "landmark mask",
            format!("need 68 finite landmarks, got {}", landmarks.len()),
        ));
    }
    if s == 0 {
        return Err(Error::param("landmark mask", "size 0"));
    }
    let mut l: Vec<[f64; 2]> = landmarks
        .iter()
        .map(|p| [p[0] as f64, p[1] as f64])
        .collect();
    if area == MaskArea::Extended {
        extend_brows(&mut l);
    }
    let groups: Vec<Vec<(usize, usize)>> = match area {
        MaskArea::Components | MaskArea::Extended => {
            FACE_PARTS.iter().map(|g| g.to_vec()).collect()
        }
        MaskArea::Eyes => vec![vec![(36, 42)], vec![(42, 48)]],
        MaskArea::Mouth => vec![vec![(48, 60)]],
    };
    let mut mask = vec![0f32; s * s];
    for g in groups {
        let pts: Vec<[f64; 2]> = g
            .iter()
            .flat_map(|&(a, b)| l[a..b].iter().map(|p| p.map(f64::round_ties_even)))
            .collect();
        fill_convex(&mut mask, s, &convex_hull(pts));
    }
    Ok(mask)
}

/// OpenCV's `GaussianBlur(mask, (k, k), 0)` on an `s × s` plane: OpenCV's fixed kernels for
/// k = 3, 5, 7, else σ = 0.3·((k − 1)/2 − 1) + 0.8; separable, reflect-101 border (`k` odd; even
/// values are raised by one as faceswap does).
pub fn gaussian_blur(mask: &[f32], s: usize, k: usize) -> Result<Vec<f32>> {
    check_len("gaussian blur", mask.len(), s * s)?;
    if k > 2 * s {
        return Err(Error::param(
            "gaussian blur",
            format!("kernel {k} for a {s}x{s} plane"),
        ));
    }
    if k <= 1 || s < 2 {
        return Ok(mask.to_vec());
    }
    let k = if k.is_multiple_of(2) { k + 1 } else { k };
    let r = (k / 2) as i64;
    // OpenCV's getGaussianKernel(k, 0): fixed tables up to 7, else the σ formula.
    let w: Vec<f64> = match k {
        3 => vec![0.25, 0.5, 0.25],
        5 => vec![0.0625, 0.25, 0.375, 0.25, 0.0625],
        7 => vec![
            0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125,
        ],
        _ => {
            let sigma = 0.3 * ((k as f64 - 1.0) * 0.5 - 1.0) + 0.8;
            let w: Vec<f64> = (-r..=r)
                .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
                .collect();
            let sum: f64 = w.iter().sum();
            w.into_iter().map(|v| v / sum).collect()
        }
    };
    let n = s as i64;
    let refl = |i: i64| -> usize {
        let mut j = i;
        while j < 0 || j >= n {
            j = if j < 0 { -j } else { 2 * n - 2 - j };
        }
        j as usize
    };
    let mut tmp = vec![0f32; s * s];
    for y in 0..s {
        for x in 0..s {
            tmp[y * s + x] = (-r..=r)
                .map(|d| w[(d + r) as usize] * mask[y * s + refl(x as i64 + d)] as f64)
                .sum::<f64>() as f32;
        }
    }
    let mut out = vec![0f32; s * s];
    for y in 0..s {
        for x in 0..s {
            out[y * s + x] = (-r..=r)
                .map(|d| w[(d + r) as usize] * tmp[refl(y as i64 + d) * s + x] as f64)
                .sum::<f64>() as f32;
        }
    }
    Ok(out)
}

/// The mask of faceswap's penalised mask loss with its defaults: "extended", values below 4 %
/// set to 0 and above 96 % to 1 (threshold 4), then a Gaussian blur of kernel 3.
pub fn penalized_mask(landmarks: &[[f32; 2]], s: usize) -> Result<Vec<f32>> {
    let mut m = landmark_mask(MaskArea::Extended, landmarks, s)?;
    for v in &mut m {
        if *v < 0.04 {
            *v = 0.0;
        } else if *v > 0.96 {
            *v = 1.0;
        }
    }
    gaussian_blur(&m, s, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_round_trip() {
        for rgb in [
            [0.0, 0.0, 0.0],
            [1.0, 1.0, 1.0],
            [0.2, 0.5, 0.8],
            [0.9, 0.1, 0.3],
        ] {
            let back = lab_to_rgb(rgb_to_lab(rgb));
            for c in 0..3 {
                assert!((back[c] - rgb[c]).abs() < 1e-4, "{rgb:?} → {back:?}");
            }
        }
        let white = rgb_to_lab([1.0, 1.0, 1.0]);
        assert!((white[0] - 100.0).abs() < 1e-3 && white[1].abs() < 0.01 && white[2].abs() < 0.01);
    }

    #[test]
    fn hull_and_fill() {
        let h = convex_hull(vec![
            [0.0, 0.0],
            [4.0, 0.0],
            [4.0, 4.0],
            [0.0, 4.0],
            [2.0, 2.0],
        ]);
        assert_eq!(h.len(), 4);
        let mut m = vec![0f32; 64];
        fill_convex(&mut m, 8, &h);
        // Inside pixels full, the corner pixel on the boundary partly covered, outside empty.
        assert_eq!(m[2 * 8 + 2], 1.0);
        assert!(m[0] > 0.0 && m[0] < 1.0, "{}", m[0]);
        assert_eq!(m[6 * 8 + 6], 0.0);
    }

    #[test]
    fn clahe_flat_and_ramp() {
        // A flat image stays flat (every tile maps its single level to the same value).
        let flat = vec![100u8; 64 * 64];
        let o = clahe(&flat, 64, 64, 4, 2.0).unwrap();
        assert!(o.iter().all(|&v| v == o[0]));
        // A ramp keeps its order.
        let ramp: Vec<u8> = (0..64 * 64).map(|i| ((i % 64) * 4) as u8).collect();
        let o = clahe(&ramp, 64, 64, 2, 2.0).unwrap();
        for y in 0..64 {
            for x in 1..64 {
                assert!(o[y * 64 + x] >= o[y * 64 + x - 1]);
            }
        }
    }
}
