//! Landmark smoothing across video frames: the One Euro filter (Casiez et al., CHI 2012), per
//! coordinate. Slow motion is smoothed hard (no jitter), fast motion follows with little lag.

/// One Euro filter parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OneEuro {
    /// Cutoff at rest (Hz): lower = smoother.
    pub min_cutoff: f64,
    /// Speed coefficient: higher = less lag when moving.
    pub beta: f64,
    /// Cutoff for the derivative (Hz).
    pub d_cutoff: f64,
}

impl Default for OneEuro {
    fn default() -> Self {
        // Tuned for landmarks in pixels at video rates.
        OneEuro {
            min_cutoff: 1.0,
            beta: 0.05,
            d_cutoff: 1.0,
        }
    }
}

fn alpha(cutoff: f64, dt: f64) -> f64 {
    let tau = 1.0 / (2.0 * std::f64::consts::PI * cutoff);
    1.0 / (1.0 + tau / dt)
}

/// Filters a fixed-length vector of coordinates over time.
#[derive(Clone, Debug)]
pub struct Smoother {
    params: OneEuro,
    prev: Option<(Vec<f64>, Vec<f64>)>, // (value, derivative)
}

impl Smoother {
    /// A smoother with `params`.
    pub fn new(params: OneEuro) -> Self {
        Smoother { params, prev: None }
    }

    /// Forgets the history (a cut, or the face was lost).
    pub fn reset(&mut self) {
        self.prev = None;
    }

    /// Filters `x` observed `dt` seconds after the previous call.
    pub fn filter(&mut self, x: &[f64], dt: f64) -> Vec<f64> {
        let p = self.params;
        match &self.prev {
            Some((v, d)) if v.len() == x.len() && dt > 0.0 => {
                let ad = alpha(p.d_cutoff, dt);
                let dx: Vec<f64> = x
                    .iter()
                    .zip(v)
                    .zip(d)
                    .map(|((xi, vi), di)| ad * (xi - vi) / dt + (1.0 - ad) * di)
                    .collect();
                let out: Vec<f64> = x
                    .iter()
                    .zip(v)
                    .zip(&dx)
                    .map(|((xi, vi), dxi)| {
                        let a = alpha(p.min_cutoff + p.beta * dxi.abs(), dt);
                        a * xi + (1.0 - a) * vi
                    })
                    .collect();
                self.prev = Some((out.clone(), dx));
                out
            }
            _ => {
                self.prev = Some((x.to_vec(), vec![0.0; x.len()]));
                x.to_vec()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooths_jitter_and_follows_motion() {
        let mut s = Smoother::new(OneEuro::default());
        // Jitter of ±2 px around 100: the output varies far less.
        let outs: Vec<f64> = (0..60)
            .map(|i| s.filter(&[100.0 + if i % 2 == 0 { 2.0 } else { -2.0 }], 1.0 / 30.0)[0])
            .collect();
        let spread = outs[30..].iter().cloned().fold(f64::MIN, f64::max)
            - outs[30..].iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread < 1.5, "jitter spread after filtering: {spread}");
        // A steady move of 10 px per frame is followed within a few pixels.
        let mut s = Smoother::new(OneEuro::default());
        let mut last = 0.0;
        for i in 0..60 {
            last = s.filter(&[10.0 * i as f64], 1.0 / 30.0)[0];
        }
        assert!((590.0 - last).abs() < 30.0, "lag {}", 590.0 - last);
    }
}
