//! The loss-curve PNG of a training run: one line per loss series against the step, a log-scale
//! loss axis when the losses are positive and span more than a factor of 5, tick labels and a
//! legend drawn with a built-in 3×5 pixel font (no font files, no plotting dependency).

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::{Error, Result};

/// Image size.
const WIDTH: u32 = 960;
const HEIGHT: u32 = 480;
/// Plot area margins: left (tick labels), right, top (legend), bottom (tick labels).
const LEFT: i64 = 80;
const RIGHT: i64 = 24;
const TOP: i64 = 40;
const BOTTOM: i64 = 40;
/// Font scale: each font pixel is a 2×2 block.
const SCALE: i64 = 2;

/// Distinct series colours (repeated when there are more series).
const COLOURS: [[u8; 3]; 8] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

/// Writes `series` (name, points (step, value)) as a loss curve to `path` (PNG, atomically).
/// Non-finite values are skipped (a skipped step leaves a gap, not a spike to infinity).
pub fn loss_curve(path: &Path, series: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let img = render(series);
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::Format {
            path: path.display().to_string(),
            detail: format!("encoding the loss curve: {e}"),
        })?;
    crate::util::atomic_write(path, &bytes)
}

/// The y axis: linear or log10.
#[derive(Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn fit(values: impl Iterator<Item = f64> + Clone) -> Axis {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.clone() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !lo.is_finite() {
            return Axis {
                lo: 0.0,
                hi: 1.0,
                log: false,
            };
        }
        let log = lo > 0.0 && hi / lo > 5.0;
        if log {
            Axis {
                lo: lo.log10().floor(),
                hi: hi.log10().ceil().max(lo.log10().floor() + 1.0),
                log,
            }
        } else {
            let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-12);
            Axis {
                lo: lo - pad,
                hi: hi + pad,
                log,
            }
        }
    }

    fn map(&self, v: f64) -> f64 {
        let v = if self.log { v.log10() } else { v };
        (v - self.lo) / (self.hi - self.lo)
    }

    /// Tick values (in data units) with their labels.
    fn ticks(&self) -> Vec<(f64, String)> {
        if self.log {
            (self.lo as i64..=self.hi as i64)
                .map(|e| (10f64.powi(e as i32), format!("1e{e}")))
                .collect()
        } else {
            let step = nice_step((self.hi - self.lo) / 5.0);
            let mut t = (self.lo / step).ceil() * step;
            let mut out = Vec::new();
            while t <= self.hi + step * 1e-9 {
                out.push((t, short(t)));
                t += step;
            }
            out
        }
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.max(1e-30).log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= raw {
            return m * p;
        }
    }
    10.0 * p
}

/// A compact label: up to 4 significant digits, exponent form when very large or small.
fn short(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn render(series: &[(String, Vec<(f64, f64)>)]) -> RgbImage {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, Rgb([255, 255, 255]));
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let points = series.iter().flat_map(|s| s.1.iter().filter(finite));
    let y = Axis::fit(points.clone().map(|p| p.1));
    // Steps: exactly the logged range (no padding), at least one step wide.
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in points {
        x0 = x0.min(p.0);
        x1 = x1.max(p.0);
    }
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    let x = Axis {
        lo: x0,
        hi: x1.max(x0 + 1.0),
        log: false,
    };
    let (w, h) = (WIDTH as i64 - LEFT - RIGHT, HEIGHT as i64 - TOP - BOTTOM);
    let px = |v: f64| LEFT + (x.map(v) * w as f64).round() as i64;
    let py = |v: f64| TOP + h - (y.map(v) * h as f64).round() as i64;
    let grid = Rgb([225, 225, 225]);
    let ink = Rgb([40, 40, 40]);
    for (v, label) in y.ticks() {
        let yy = py(v);
        line(&mut img, LEFT, yy, LEFT + w, yy, grid);
        text(&mut img, LEFT - 6 - text_width(&label), yy - 5, &label, ink);
    }
    for (v, label) in x.ticks() {
        let xx = px(v);
        line(&mut img, xx, TOP, xx, TOP + h, grid);
        text(
            &mut img,
            xx - text_width(&label) / 2,
            TOP + h + 8,
            &label,
            ink,
        );
    }
    text(
        &mut img,
        LEFT + w - text_width("step"),
        TOP + h + 24,
        "step",
        ink,
    );
    // Frame.
    line(&mut img, LEFT, TOP, LEFT + w, TOP, ink);
    line(&mut img, LEFT, TOP + h, LEFT + w, TOP + h, ink);
    line(&mut img, LEFT, TOP, LEFT, TOP + h, ink);
    line(&mut img, LEFT + w, TOP, LEFT + w, TOP + h, ink);
    // Series and legend.
    let mut lx = LEFT;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = Rgb(COLOURS[i % COLOURS.len()]);
        let mut prev: Option<(i64, i64)> = None;
        for p in pts {
            if !(p.0.is_finite() && p.1.is_finite()) {
                prev = None;
                continue;
            }
            let q = (px(p.0), py(p.1));
            if let Some(a) = prev {
                line(&mut img, a.0, a.1, q.0, q.1, c);
            } else {
                dot(&mut img, q.0, q.1, c);
            }
            prev = Some(q);
        }
        for d in 0..10 {
            line(&mut img, lx, 14 + d, lx + 10, 14 + d, c);
        }
        text(&mut img, lx + 16, 14, name, ink);
        lx += 16 + text_width(name) + 24;
    }
    img
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn dot(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    for dy in -1..=1 {
        for dx in -1..=1 {
            put(img, x + dx, y + dy, c);
        }
    }
}

/// Bresenham, 2 px wide vertically.
fn line(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        put(img, x, y, c);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

fn text_width(s: &str) -> i64 {
    s.chars().count() as i64 * 4 * SCALE
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, c: Rgb<u8>) {
    for (i, ch) in s.chars().enumerate() {
        let rows = glyph(ch);
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3 {
                if bits & (0b100 >> col) != 0 {
                    for sy in 0..SCALE {
                        for sx in 0..SCALE {
                            let gx = x + (i as i64 * 4 + col) * SCALE + sx;
                            put(img, gx, y + r as i64 * SCALE + sy, c);
                        }
                    }
                }
            }
        }
    }
}

/// 3×5 glyphs (rows top to bottom, 3 bits each); unknown characters draw as a box.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_lowercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'a' => [2, 5, 7, 5, 5],
        'b' => [6, 5, 6, 5, 6],
        'c' => [3, 4, 4, 4, 3],
        'd' => [6, 5, 5, 5, 6],
        'e' => [7, 4, 6, 4, 7],
        'f' => [7, 4, 6, 4, 4],
        'g' => [3, 4, 5, 5, 3],
        'h' => [5, 5, 7, 5, 5],
        'i' => [7, 2, 2, 2, 7],
        'j' => [1, 1, 1, 5, 2],
        'k' => [5, 5, 6, 5, 5],
        'l' => [4, 4, 4, 4, 7],
        'm' => [5, 7, 7, 5, 5],
        'n' => [6, 5, 5, 5, 5],
        'o' => [2, 5, 5, 5, 2],
        'p' => [6, 5, 6, 4, 4],
        'q' => [2, 5, 5, 6, 3],
        'r' => [6, 5, 6, 5, 5],
        's' => [3, 4, 2, 1, 6],
        't' => [7, 2, 2, 2, 2],
        'u' => [5, 5, 5, 5, 7],
        'v' => [5, 5, 5, 5, 2],
        'w' => [5, 5, 7, 7, 5],
        'x' => [5, 5, 2, 5, 5],
        'y' => [5, 5, 2, 2, 2],
        'z' => [7, 1, 2, 4, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '_' => [0, 0, 0, 0, 7],
        '+' => [0, 2, 7, 2, 0],
        ':' => [0, 2, 0, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        ' ' => [0; 5],
        _ => [7, 5, 5, 5, 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_for_decaying_losses() {
        let a = Axis::fit([0.005, 0.7].into_iter());
        assert!(a.log);
        assert_eq!((a.lo, a.hi), (-3.0, 0.0));
        assert!((a.map(0.01) - 1.0 / 3.0).abs() < 1e-12);
        let ticks: Vec<String> = a.ticks().into_iter().map(|t| t.1).collect();
        assert_eq!(ticks, ["1e-3", "1e-2", "1e-1", "1e0"]);
    }

    #[test]
    fn linear_axis_ticks_are_nice_and_inside() {
        let a = Axis::fit([-0.2, 0.9].into_iter());
        assert!(!a.log);
        for (v, _) in a.ticks() {
            assert!(v >= a.lo && v <= a.hi + 1e-12);
        }
        assert_eq!(nice_step(0.23), 0.5);
        assert_eq!(nice_step(0.2), 0.2);
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(120000.0), "1.2e5");
    }

    #[test]
    fn curve_pixels_follow_the_data() {
        // A falling line: its colour appears near the top-left and the bottom-right of the plot.
        let s = vec![("l1".to_string(), vec![(0.0, 1.0), (100.0, 0.01)])];
        let img = render(&s);
        let c = Rgb(COLOURS[0]);
        let near = |x: i64, y: i64| {
            (-3..=3).any(|d: i64| {
                (-3..=3).any(|e: i64| img.get_pixel((x + d) as u32, (y + e) as u32) == &c)
            })
        };
        let (w, h) = (WIDTH as i64 - LEFT - RIGHT, HEIGHT as i64 - TOP - BOTTOM);
        assert!(near(LEFT, TOP));
        assert!(near(LEFT + w, TOP + h));
        assert!(!near(LEFT + w, TOP + 5));
    }
}
