//! Host-side augmentation (`fswap::train::augment`): the affine part against an f64 reference
//! written here from OpenCV's formulas, reference values computed with OpenCV 5.0 (rotation matrix,
//! Lab, the grid-warp maps, CLAHE; OpenCV is not in CI, so they are written out below), seeded
//! determinism, flips, the identity when every range is 0, and the landmark masks against a
//! point-in-hull rasterisation.

use fswap::face::faceset::MEAN_FACE_51;
use fswap::train::augment::{
    clahe, gaussian_blur, landmark_mask, penalized_mask, rgb_to_lab, transform_matrix, warp_maps,
    AugmentConfig, AugmentParams, Augmenter, MaskArea, Rng,
};

const S: usize = 64;

/// A smooth, textured test face `[3, S, S]` in [0.1, 0.9] (no clipping under small colour shifts).
fn face(seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    let phase: Vec<f64> = (0..6)
        .map(|_| r.uniform(0.0, std::f64::consts::TAU))
        .collect();
    let mut v = vec![0f32; 3 * S * S];
    for c in 0..3 {
        for y in 0..S {
            for x in 0..S {
                let (xf, yf) = (x as f64 / S as f64, y as f64 / S as f64);
                let t = 0.5
                    + 0.25 * (7.0 * xf + phase[2 * c]).sin() * (5.0 * yf + phase[2 * c + 1]).cos()
                    + 0.1 * ((x * 7 + y * 13 + c * 5) % 11) as f64 / 11.0
                    - 0.05;
                v[c * S * S + y * S + x] = t.clamp(0.1, 0.9) as f32;
            }
        }
    }
    v
}

fn only(f: impl FnOnce(&mut AugmentConfig)) -> AugmentConfig {
    let mut c = AugmentConfig::none();
    f(&mut c);
    c
}

#[test]
fn identity_when_every_range_is_zero() {
    let mut aug = Augmenter::new(AugmentConfig::none(), S, 3).unwrap();
    let (f1, f2) = (face(1), face(2));
    let mask: Vec<f32> = (0..S * S).map(|i| (i % 7) as f32 / 7.0).collect();
    let b = aug.batch(&[&f1, &f2], &[&mask, &mask]).unwrap();
    let both: Vec<f32> = f1.iter().chain(&f2).copied().collect();
    assert_eq!(b.input, both);
    assert_eq!(b.target, both);
    assert_eq!(b.extra, [mask.clone(), mask].concat());
    for p in &b.params {
        assert_eq!(p.scale, 1.0);
        assert!(!p.flip && p.clahe.is_none() && p.warp.is_none());
        assert_eq!(p.lab, [0.0; 3]);
    }
}

#[test]
fn rotation_matrix_is_opencvs() {
    // cv2.getRotationMatrix2D((32, 32), 30.0, 1.1) (OpenCV 5.0).
    let want = [
        [0.9526279441628827, 0.5499999999999999, -16.084094213212243],
        [-0.5499999999999999, 0.9526279441628827, 19.115905786787753],
    ];
    let p = AugmentParams {
        rotation: 30.0,
        scale: 1.1,
        ..AugmentParams::identity()
    };
    let m = transform_matrix(S, &p);
    for r in 0..2 {
        for c in 0..3 {
            assert!((m[r][c] - want[r][c]).abs() < 1e-5, "{m:?}");
        }
    }
    // The shift adds to the translation.
    let q = AugmentParams {
        shift: [2.0, -3.0],
        ..p
    };
    let m2 = transform_matrix(S, &q);
    assert!((m2[0][2] - m[0][2] - 2.0).abs() < 1e-9 && (m2[1][2] - m[1][2] + 3.0).abs() < 1e-9);
}

/// f64 `warpAffine(src, m, INTER_LINEAR, BORDER_REPLICATE)` of one plane, written from OpenCV's
/// definition: dst(x, y) = src(m⁻¹·(x, y)), bilinear, coordinates clamped into the image.
fn reference_affine(plane: &[f32], m: &[[f64; 3]; 2]) -> Vec<f64> {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let (a, b, c, d) = (m[1][1] / det, -m[0][1] / det, -m[1][0] / det, m[0][0] / det);
    let (tx, ty) = (-(a * m[0][2] + b * m[1][2]), -(c * m[0][2] + d * m[1][2]));
    let at = |x: i64, y: i64| {
        plane[(y.clamp(0, S as i64 - 1) as usize) * S + x.clamp(0, S as i64 - 1) as usize] as f64
    };
    let mut out = Vec::with_capacity(S * S);
    for y in 0..S {
        for x in 0..S {
            let sx = a * x as f64 + b * y as f64 + tx;
            let sy = c * x as f64 + d * y as f64 + ty;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            out.push(
                (at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx) * (1.0 - fy)
                    + (at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx) * fy,
            );
        }
    }
    out
}

#[test]
fn affine_part_matches_f64_reference() {
    let config = only(|c| {
        c.rotation = 10.0;
        c.zoom = 0.05;
        c.shift = 0.05;
    });
    let mut aug = Augmenter::new(config, S, 11).unwrap();
    let f = face(5);
    // A mask channel follows the target's transform exactly.
    let mask = f[..S * S].to_vec();
    for _ in 0..6 {
        let p = aug.draw();
        assert!(p.rotation.abs() <= 10.0 && (p.scale - 1.0).abs() <= 0.05);
        assert!(p.shift.iter().all(|s| s.abs() <= 0.05 * S as f32));
        assert!(!p.flip && p.warp.is_none() && p.clahe.is_none());
        let out = aug.apply(&p, &f, &mask).unwrap();
        assert_eq!(out.input, out.target, "no warp: input is the target");
        // The reference matrix from OpenCV's getRotationMatrix2D formula, written here.
        let (al, be) = (
            p.scale as f64 * (p.rotation as f64).to_radians().cos(),
            p.scale as f64 * (p.rotation as f64).to_radians().sin(),
        );
        let c = (S / 2) as f64;
        let m = [
            [al, be, (1.0 - al) * c - be * c + p.shift[0] as f64],
            [-be, al, be * c + (1.0 - al) * c + p.shift[1] as f64],
        ];
        for ch in 0..3 {
            let want = reference_affine(&f[ch * S * S..(ch + 1) * S * S], &m);
            let got = &out.target[ch * S * S..(ch + 1) * S * S];
            let err = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (*g as f64 - w).abs())
                .fold(0.0, f64::max);
            // f32 interpolation of values ≤ 1: a few ulps.
            assert!(err < 1e-5, "channel {ch}: max error {err} for {p:?}");
        }
        assert_eq!(out.extra, out.target[..S * S]);
    }
}

#[test]
fn same_seed_same_batch() {
    let faces = [face(1), face(2), face(3)];
    let refs: Vec<&[f32]> = faces.iter().map(|f| f.as_slice()).collect();
    let run = |seed| {
        Augmenter::new(AugmentConfig::default(), S, seed)
            .unwrap()
            .batch(&refs, &[])
            .unwrap()
    };
    let (a, b, c) = (run(42), run(42), run(43));
    assert_eq!(a, b, "same seed, same batch");
    assert_ne!(a.input, c.input, "another seed, another batch");
    assert_eq!(a.input.len(), 3 * 3 * S * S);
    assert!(a.extra.is_empty());
    // Defaults draw inside faceswap's ranges, and the input differs from the target (grid warp).
    for p in &a.params {
        assert!(p.rotation.abs() <= 10.0 && (p.scale - 1.0).abs() <= 0.05);
        assert!(p.lab[0].abs() <= 0.3 && p.lab[1].abs() <= 0.08 && p.lab[2].abs() <= 0.08);
        assert!(p.warp.is_some());
        if let Some(g) = p.clahe {
            assert!((2..=6).contains(&g), "grid {g} at 64 px");
        }
    }
    assert_ne!(a.input, a.target);
    assert!(a
        .input
        .iter()
        .chain(&a.target)
        .all(|v| (0.0..=1.0).contains(v)));
    // Over many draws: flips about half the time, CLAHE about half the time.
    let mut aug = Augmenter::new(AugmentConfig::default(), S, 9).unwrap();
    let draws: Vec<AugmentParams> = (0..2000).map(|_| aug.draw()).collect();
    let flips = draws.iter().filter(|p| p.flip).count();
    let clahes = draws.iter().filter(|p| p.clahe.is_some()).count();
    assert!((900..1100).contains(&flips), "{flips} flips of 2000");
    assert!((900..1100).contains(&clahes), "{clahes} CLAHE of 2000");
}

#[test]
fn flip_mirrors_target_and_extra() {
    let f = face(4);
    let mask: Vec<f32> = (0..S * S).map(|i| (i % S) as f32).collect();
    let mut aug = Augmenter::new(only(|c| c.flip = 1.0), S, 1).unwrap();
    let p = aug.draw();
    assert!(p.flip);
    let out = aug.apply(&p, &f, &mask).unwrap();
    for c in 0..3 {
        for y in 0..S {
            for x in 0..S {
                assert_eq!(
                    out.target[c * S * S + y * S + x],
                    f[c * S * S + y * S + (S - 1 - x)]
                );
            }
        }
    }
    for y in 0..S {
        for x in 0..S {
            assert_eq!(out.extra[y * S + x], (S - 1 - x) as f32);
        }
    }
    let mut aug = Augmenter::new(only(|c| c.flip = 0.0), S, 1).unwrap();
    let p = aug.draw();
    assert_eq!(aug.apply(&p, &f, &[]).unwrap().target, f);
}

#[test]
fn grid_warp_maps_are_faceswaps() {
    // faceswap's maps for this noise with OpenCV 5.0: linspace(0, 64, 5) + noise, cv2.resize to
    // 80×80 (INTER_LINEAR), [8:-8] — values at (y, x): (map_x, map_y).
    let mut noise = [[0f32; 25]; 2];
    for (k, n) in noise.iter_mut().enumerate() {
        for (i, v) in n.iter_mut().enumerate() {
            *v = ((0.37 * i as f64 + 1.3 * k as f64).sin() * 2.0) as f32;
        }
    }
    let (mx, my) = warp_maps(S, &noise);
    for ((y, x), (wx, wy)) in [
        ((0, 0), (0.581_652_6, 2.367_572)),
        ((10, 37), (38.548_75, 10.068_397)),
        ((63, 63), (64.562_52, 62.246_45)),
        ((31, 5), (4.349_606, 29.745_338)),
    ] {
        let (gx, gy) = (mx[y * S + x], my[y * S + x]);
        assert!(
            (gx - wx).abs() < 1e-4 && (gy - wy).abs() < 1e-4,
            "({y}, {x}): ({gx}, {gy}) vs OpenCV ({wx}, {wy})"
        );
    }
    // Without noise the warp samples half a pixel down-right (faceswap's grid spans 0..S): the
    // interior of the input is the mean of 2×2 target pixels.
    let mut aug = Augmenter::new(only(|c| c.warp = true), S, 1).unwrap();
    let p = aug.draw();
    assert!(p
        .warp
        .is_some_and(|n| n.iter().flatten().all(|v| *v == 0.0)));
    let f = face(6);
    let out = aug.apply(&p, &f, &[]).unwrap();
    assert_eq!(out.target, f);
    for c in 0..3 {
        for y in 0..S - 1 {
            for x in 0..S - 1 {
                let at = |yy: usize, xx: usize| f[c * S * S + yy * S + xx];
                let want = (at(y, x) + at(y, x + 1) + at(y + 1, x) + at(y + 1, x + 1)) / 4.0;
                let got = out.input[c * S * S + y * S + x];
                assert!(
                    (got - want).abs() < 1e-6,
                    "({c}, {y}, {x}): {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn lab_and_lightness() {
    // cv2.cvtColor(float32 BGR, COLOR_BGR2Lab) (OpenCV 5.0) for red, (0.8, 0.5, 0.2) and white.
    // OpenCV interpolates the sRGB curve from a table, which moves (0.8, 0.5, 0.2) by up to 0.13
    // from the exact formula used here (L = 116·0.28382^(1/3) − 16 = 60.238 by hand).
    for (rgb, want) in [
        ([1.0, 0.0, 0.0], [53.240966796875, 80.09375, 67.203125]),
        ([0.8, 0.5, 0.2], [60.205078125, 23.234375, 51.859375]),
        ([1.0, 1.0, 1.0], [100.0, 0.0, 0.0]),
    ] {
        let got = rgb_to_lab(rgb);
        for k in 0..3 {
            assert!(
                (got[k] - want[k]).abs() < 0.15,
                "{rgb:?}: {got:?} vs {want:?}"
            );
        }
    }
    // A lightness-only draw moves every pixel's L a fraction r of the way to 100 (r > 0) and keeps
    // a*, b*.
    let f = face(8);
    let aug = Augmenter::new(AugmentConfig::none(), S, 1).unwrap();
    for r in [0.2f32, -0.25] {
        let p = AugmentParams {
            lab: [r, 0.0, 0.0],
            ..AugmentParams::identity()
        };
        let out = aug.apply(&p, &f, &[]).unwrap();
        for i in (0..S * S).step_by(97) {
            let px = |v: &[f32]| [0, 1, 2].map(|c| v[c * S * S + i] as f64);
            let (before, after) = (rgb_to_lab(px(&f)), rgb_to_lab(px(&out.target)));
            let want = if r >= 0.0 {
                before[0] + (100.0 - before[0]) * r as f64
            } else {
                before[0] * (1.0 + r as f64)
            };
            // Out-of-gamut results are clipped to [0, 1] RGB: only check in-gamut pixels.
            if px(&out.target).iter().all(|v| *v > 0.0 && *v < 1.0) {
                assert!((after[0] - want).abs() < 0.05, "L {} vs {want}", after[0]);
                assert!((after[1] - before[1]).abs() < 0.05 && (after[2] - before[2]).abs() < 0.05);
            }
        }
    }
}

#[test]
fn clahe_matches_opencv() {
    // cv2.createCLAHE(clipLimit=2.0, tileGridSize=(g, g)).apply(img) (OpenCV 5.0) on the 20×12
    // image img[y, x] = (x·x·3 + y·17 + (x·y) % 23) % 256 (grids 3 and 5 exercise OpenCV's
    // padding of a side that is not a multiple of the grid): a position-weighted sum and the row
    // sums of the result (bit-exact when checked locally on this and 64×64 random images).
    let (w, h) = (20usize, 12usize);
    let img: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).map(move |x| ((x * x * 3 + y * 17 + (x * y) % 23) % 256) as u8))
        .collect();
    for (g, weighted, want) in REFERENCE_CLAHE {
        let out = clahe(&img, w, h, g, 2.0).unwrap();
        let rows: Vec<u32> = out
            .chunks(w)
            .map(|r| r.iter().map(|v| *v as u32).sum())
            .collect();
        assert_eq!(rows, want, "grid {g}");
        let ws: u64 = out
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64 + 1) * *v as u64)
            .sum();
        assert_eq!(ws, weighted, "grid {g}");
    }
}

/// OpenCV's CLAHE output for [`clahe_matches_opencv`]'s image: grid, Σ out[i]·(i + 1) over the
/// row-major pixels, row sums.
const REFERENCE_CLAHE: [(usize, u64, [u32; 12]); 5] = [
    (
        1,
        3994042,
        [
            2085, 2083, 2444, 2540, 2624, 2716, 2558, 2902, 2714, 2808, 3158, 2724,
        ],
    ),
    (
        2,
        3961448,
        [
            2250, 2262, 2663, 2769, 2784, 2801, 2576, 2864, 2624, 2698, 3034, 2638,
        ],
    ),
    (
        3,
        4077559,
        [
            2307, 2340, 2730, 2864, 2876, 2843, 2614, 2931, 2687, 2818, 3129, 2724,
        ],
    ),
    (
        5,
        4148420,
        [
            2559, 2687, 3112, 3000, 2966, 2970, 2700, 3070, 2828, 2755, 3005, 2721,
        ],
    ),
    (
        7,
        4575905,
        [
            2868, 3314, 3130, 3392, 3060, 3280, 2787, 3465, 2910, 3330, 3269, 3095,
        ],
    ),
];

#[test]
fn gaussian_blur_kernel_is_opencvs() {
    // cv2.getGaussianKernel(3, 0) = [0.25, 0.5, 0.25]: an impulse becomes its outer product.
    let mut m = vec![0f32; 49];
    m[3 * 7 + 3] = 1.0;
    let b = gaussian_blur(&m, 7, 3).unwrap();
    assert!((b[3 * 7 + 3] - 0.25).abs() < 1e-6);
    assert!((b[3 * 7 + 4] - 0.125).abs() < 1e-6);
    assert!((b[2 * 7 + 2] - 0.0625).abs() < 1e-6);
    let ones = gaussian_blur(&[1.0; 49], 7, 5).unwrap();
    assert!(ones.iter().all(|v| (v - 1.0).abs() < 1e-6));
}

/// 68 landmarks in a 64 crop: faceswap's mean face for 17–67 in the central 40 px, a jaw arc.
fn crop_landmarks() -> Vec<[f32; 2]> {
    let (pad, k) = (12.0, 40.0);
    let mut l = Vec::with_capacity(68);
    for i in 0..17 {
        let t = std::f64::consts::PI * i as f64 / 16.0;
        l.push([
            (pad + k * (0.5 - 0.5 * t.cos())) as f32,
            (pad + k * (0.15 + 0.85 * t.sin())) as f32,
        ]);
    }
    for p in MEAN_FACE_51 {
        l.push([(pad + k * p[0]) as f32, (pad + k * p[1]) as f32]);
    }
    l
}

/// Whether `p` is inside the convex hull of `pts` at least `margin` from its edges (`margin` < 0:
/// within that distance outside). Brute force: an edge (a, b) is a hull edge when every point is
/// on its left or on it.
fn hull_margin(pts: &[[f64; 2]], p: [f64; 2]) -> f64 {
    let mut inside = true;
    let mut dist = f64::MAX;
    for (i, a) in pts.iter().enumerate() {
        for (j, b) in pts.iter().enumerate() {
            if i == j || a == b {
                continue;
            }
            let side = |q: &[f64; 2]| (b[0] - a[0]) * (q[1] - a[1]) - (b[1] - a[1]) * (q[0] - a[0]);
            if pts.iter().all(|q| side(q) >= -1e-9) {
                let len = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt();
                let s = side(&p) / len;
                inside &= s >= 0.0;
                // Distance to the segment.
                let t = (((p[0] - a[0]) * (b[0] - a[0]) + (p[1] - a[1]) * (b[1] - a[1]))
                    / (len * len))
                    .clamp(0.0, 1.0);
                let d = ((a[0] + t * (b[0] - a[0]) - p[0]).powi(2)
                    + (a[1] + t * (b[1] - a[1]) - p[1]).powi(2))
                .sqrt();
                dist = dist.min(d);
            }
        }
    }
    if inside {
        dist
    } else {
        -dist
    }
}

/// faceswap's `_adjust_mask_top` (extended.py), written here from its numpy: `//` is a floor.
fn extend(l: &[[f32; 2]]) -> Vec<[f32; 2]> {
    let f = |v: f32| v.floor();
    let half = |a: [f32; 2], b: [f32; 2]| [f((a[0] + b[0]) / 2.0), f((a[1] + b[1]) / 2.0)];
    let ml = half(l[36], l[0]);
    let mr = half(l[16], l[45]);
    let ql = half(l[36], ml);
    let qr = half(l[45], mr);
    let bot_l = [ql, l[36], l[37], l[38], l[39]];
    let bot_r = [l[42], l[43], l[44], l[45], qr];
    let mut out = l.to_vec();
    for k in 0..5 {
        let (t, b) = (l[17 + k], bot_l[k]);
        out[17 + k] = [t[0] + f((t[0] - b[0]) / 2.0), t[1] + f((t[1] - b[1]) / 2.0)];
        let (t, b) = (l[22 + k], bot_r[k]);
        out[22 + k] = [t[0] + f((t[0] - b[0]) / 2.0), t[1] + f((t[1] - b[1]) / 2.0)];
    }
    out
}

#[test]
fn face_masks_match_hulls() {
    for area in [MaskArea::Components, MaskArea::Extended] {
        let l = match area {
            MaskArea::Extended => extend(&crop_landmarks()),
            _ => crop_landmarks(),
        };
        check_hulls(&landmark_mask(area, &crop_landmarks(), S).unwrap(), &l);
    }
}

/// Pixels inside a group's hull (centre more than 0.25 px in) are 1; pixels whose centre is more
/// than 1.25 px outside every hull are 0 (the fill grows hulls by half a pixel and samples ±0.375
/// px around the centre, as OpenCV's anti-aliased fill covers edge pixels fully).
fn check_hulls(mask: &[f32], l: &[[f32; 2]]) {
    // faceswap's components groups, points rounded as np.rint (half to even).
    let groups: [&[(usize, usize)]; 8] = [
        &[(0, 9), (17, 18)],
        &[(8, 17), (26, 27)],
        &[(17, 20), (8, 9)],
        &[(24, 27), (8, 9)],
        &[(19, 25), (8, 9)],
        &[(17, 22), (27, 28), (31, 36), (8, 9)],
        &[(22, 27), (27, 28), (31, 36), (8, 9)],
        &[(27, 31), (31, 36)],
    ];
    let hulls: Vec<Vec<[f64; 2]>> = groups
        .iter()
        .map(|g| {
            g.iter()
                .flat_map(|&(a, b)| {
                    l[a..b]
                        .iter()
                        .map(|p| [p[0].round_ties_even() as f64, p[1].round_ties_even() as f64])
                })
                .collect()
        })
        .collect();
    let (mut full, mut empty) = (0, 0);
    for y in 0..S {
        for x in 0..S {
            let p = [x as f64, y as f64];
            let best = hulls
                .iter()
                .map(|h| hull_margin(h, p))
                .fold(f64::MIN, f64::max);
            let v = mask[y * S + x];
            assert!((0.0..=1.0).contains(&v));
            if best > 0.25 {
                assert_eq!(v, 1.0, "({x}, {y}) inside by {best}");
                full += 1;
            } else if best < -1.25 {
                assert_eq!(v, 0.0, "({x}, {y}) outside by {}", -best);
                empty += 1;
            }
        }
    }
    assert!(full > 600 && empty > 1500, "{full} inside, {empty} outside");
}

#[test]
fn extended_mask_reaches_above_the_brows() {
    let l = crop_landmarks();
    let comp = landmark_mask(MaskArea::Components, &l, S).unwrap();
    let ext = landmark_mask(MaskArea::Extended, &l, S).unwrap();
    let top = |m: &[f32]| (0..S).find(|y| (0..S).any(|x| m[y * S + x] > 0.5)).unwrap();
    // Brows 17–26 are pushed away from the eyes by half their distance (about 2 px here).
    assert!(
        top(&ext) + 2 <= top(&comp),
        "extended top {} vs {}",
        top(&ext),
        top(&comp)
    );
    let area = |m: &[f32]| m.iter().sum::<f32>();
    assert!(
        area(&ext) > area(&comp) + 20.0,
        "{} vs {}",
        area(&ext),
        area(&comp)
    );
    // Eyes and mouth: inside the face, around their landmarks.
    let eyes = landmark_mask(MaskArea::Eyes, &l, S).unwrap();
    let mouth = landmark_mask(MaskArea::Mouth, &l, S).unwrap();
    let at = |m: &[f32], p: [f32; 2]| m[p[1].round() as usize * S + p[0].round() as usize];
    let mid = |a: usize, b: usize| {
        let n = (b - a) as f32;
        let s = l[a..b]
            .iter()
            .fold([0.0, 0.0], |s, p| [s[0] + p[0], s[1] + p[1]]);
        [s[0] / n, s[1] / n]
    };
    assert_eq!(at(&eyes, mid(36, 42)), 1.0);
    assert_eq!(at(&eyes, mid(42, 48)), 1.0);
    assert_eq!(at(&mouth, mid(48, 60)), 1.0);
    assert_eq!(at(&eyes, l[30]), 0.0);
    assert_eq!(at(&mouth, l[30]), 0.0);
    // The training mask: thresholded, blurred, in [0, 1], 1 deep inside.
    let pen = penalized_mask(&l, S).unwrap();
    assert!(pen.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(at(&pen, l[30]), 1.0);
    assert_eq!(pen[0], 0.0);
    assert!(landmark_mask(MaskArea::Extended, &l[..60], S).is_err());
}

#[test]
fn bad_inputs_are_errors() {
    assert!(Augmenter::new(AugmentConfig::default(), 8, 1).is_err());
    let bad = AugmentConfig {
        flip: 1.5,
        ..AugmentConfig::default()
    };
    assert!(Augmenter::new(bad, S, 1).is_err());
    let mut aug = Augmenter::new(AugmentConfig::default(), S, 1).unwrap();
    let p = aug.draw();
    assert!(aug.apply(&p, &vec![0.5; 3 * S * S - 1], &[]).is_err());
    assert!(aug.apply(&p, &vec![0.5; 3 * S * S], &[0.0; 5]).is_err());
    let mut nan = vec![0.5; 3 * S * S];
    nan[7] = f32::NAN;
    assert!(aug.apply(&p, &nan, &[]).is_err());
    let f = face(1);
    assert!(aug.batch(&[&f, &f], &[&f[..S * S]]).is_err());
    assert!(clahe(&[0; 15], 4, 4, 2, 2.0).is_err());
    assert!(clahe(&[0; 16], 4, 4, 5, 2.0).is_err());
    assert!(gaussian_blur(&[0.0; 15], 4, 3).is_err());
}
