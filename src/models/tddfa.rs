//! 3DDFA_V2 MobileNet-V1 ×0.5 at 120×120 (spec alignment.md A.2): regresses the 62 3DMM parameters
//! of a face crop (`fc_param`) and, from the same features, 68 2-D landmarks directly (`fc_lm`).
//! Weights by their official state-dict names (`weights/3ddfa_mb05.json`), either as
//! `tools/export.py` writes them or with the checkpoint's `module.` (DataParallel) prefix kept, as in
//! `mb05_120x120.pth`; batch norms folded into the conv epilogues.
//!
//! ```text
//! input   [N, 3, 120, 120] BGR, (pixel − 127.5)/128
//! stem    conv3x3/2 3→16 · BN · ReLU                                        120 → 60
//! blocks  dw3x3/s · BN · ReLU · conv1x1 · BN · ReLU, 13×, no residuals        60 → 4
//!         dw2_1 16→32 · dw2_2 /2 →64 · dw3_1 · dw3_2 /2 →128 · dw4_1 · dw4_2 /2 →256
//!         dw5_1…dw5_5 · dw5_6 /2 →512 · dw6
//! head    global average → [fc_param 62 | fc_lm 136] (one 512→198 linear)
//! ```
//!
//! The 62 outputs are normalised: `p = out·param_std + param_mean` ([`Bfm`]); decoding to
//! landmarks, the roi mapping and the pose are in [`crate::face::landmarks`].

use std::collections::BTreeMap;
use std::path::Path;

use super::builder::Builder;
use crate::error::{Error, Result};
use crate::gpu::{Context, Plan};
use crate::kernels::conv::ConvSpec;
use crate::kernels::linear::Linear;
use crate::kernels::pool::Pool;
use crate::kernels::{Activation, Epilogue};
use crate::tensor::{Shape, Tensor};
use crate::weights::{write_safetensors, HostTensor, Manifest, Weights};

/// Manifest name (`weights/3ddfa_mb05.json`).
pub const MODEL: &str = "3ddfa_mb05";
/// Input side in pixels.
pub const SIZE: usize = 120;
/// 3DMM parameters: 12 pose (`[sR | t]`, 3×4 row-major), 40 shape, 10 expression.
pub const PARAMS: usize = 62;
/// Shape coefficients.
pub const SHAPE_DIM: usize = 40;
/// Expression coefficients.
pub const EXP_DIM: usize = 10;
/// Sparse landmarks.
pub const POINTS: usize = 68;
/// Rows of the landmark bases: x, y, z of each of the 68 points, interleaved.
pub const BASE_ROWS: usize = 3 * POINTS;
/// Outputs of the `fc_lm` head: 68 x, then 68 y.
pub const LM: usize = 2 * POINTS;
/// Outputs of the fused head: the 62 normalised parameters, then the 136 `fc_lm` values.
pub const OUTPUTS: usize = PARAMS + LM;
/// Features after global pooling (1024 × 0.5).
pub const FEATURES: usize = 512;
/// Stem output channels (32 × 0.5).
pub const STEM: usize = 16;
/// Prefix of every name in the original checkpoint (PyTorch `DataParallel`); `tools/export.py`
/// removes it, and both forms load.
pub const PREFIX: &str = "module.";

/// The 13 depthwise-separable blocks at width ×0.5: name, input and output channels, stride.
pub const BLOCKS: [(&str, usize, usize, usize); 13] = [
    ("dw2_1", 16, 32, 1),
    ("dw2_2", 32, 64, 2),
    ("dw3_1", 64, 64, 1),
    ("dw3_2", 64, 128, 2),
    ("dw4_1", 128, 128, 1),
    ("dw4_2", 128, 256, 2),
    ("dw5_1", 256, 256, 1),
    ("dw5_2", 256, 256, 1),
    ("dw5_3", 256, 256, 1),
    ("dw5_4", 256, 256, 1),
    ("dw5_5", 256, 256, 1),
    ("dw5_6", 256, 512, 2),
    ("dw6", 512, 512, 1),
];

/// The parameter whitening and the 68-landmark BFM bases: everything needed to turn the network's
/// 62 outputs into 3-D landmarks.
///
/// Sources: `param_mean_std_62d_120x120` of 3DDFA_V2 (`mean`, `std`) and the `u_base.txt`,
/// `w_shp_base.txt`, `w_exp_base.txt` of 3DDFA's C++ port, or one `3ddfa_bfm68.safetensors`
/// (`param_mean`, `param_std`, `u_base`, `w_shp_base`, `w_exp_base`; see [`Bfm::save`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Bfm {
    /// Mean of each of the 62 parameters.
    pub param_mean: Vec<f32>,
    /// Standard deviation of each of the 62 parameters.
    pub param_std: Vec<f32>,
    /// Mean shape at the 68 landmarks, `[204]`: x0, y0, z0, x1, ….
    pub u_base: Vec<f32>,
    /// Shape basis, `[204, 40]` row-major.
    pub w_shp_base: Vec<f32>,
    /// Expression basis, `[204, 10]` row-major.
    pub w_exp_base: Vec<f32>,
}

fn bad(path: &str, detail: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_string(),
        detail: detail.into(),
    }
}

/// Parses a whitespace-separated text matrix with exactly `rows` non-empty lines of `cols` numbers.
fn parse_rows(origin: &str, text: &str, rows: usize, cols: usize, what: &str) -> Result<Vec<f32>> {
    let meaning = if rows == BASE_ROWS {
        format!("x, y, z of the {POINTS} landmarks")
    } else {
        format!("the {rows} 3DMM parameters")
    };
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    if lines.len() != rows {
        return Err(bad(
            origin,
            format!(
                "{what} has {} rows, expected {rows} ({meaning})",
                lines.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(rows * cols);
    for (i, line) in lines {
        let before = out.len();
        for tok in line.split_whitespace() {
            let v: f32 = tok.parse().map_err(|_| {
                bad(
                    origin,
                    format!("{what} line {}: '{tok}' is not a number", i + 1),
                )
            })?;
            if !v.is_finite() {
                return Err(bad(origin, format!("{what} line {}: {v}", i + 1)));
            }
            out.push(v);
        }
        if out.len() - before != cols {
            return Err(bad(
                origin,
                format!(
                    "{what} line {} has {} columns, expected {cols}",
                    i + 1,
                    out.len() - before
                ),
            ));
        }
    }
    Ok(out)
}

fn read_text(path: &Path) -> Result<(String, String)> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: shown.clone(),
        source,
    })?;
    Ok((shown, text))
}

impl Bfm {
    /// Parses the C++ port's text bases (`u_base` 204 rows × 1, `w_shp_base` 204 × 40,
    /// `w_exp_base` 204 × 10) and takes the 62-value whitening `mean`/`std`. `origin` names the
    /// source in errors; a wrong row or column count is an error saying which file and what was
    /// expected.
    pub fn from_text(
        origin: &str,
        u_base: &str,
        w_shp_base: &str,
        w_exp_base: &str,
        param_mean: &[f32],
        param_std: &[f32],
    ) -> Result<Self> {
        let bfm = Bfm {
            param_mean: param_mean.to_vec(),
            param_std: param_std.to_vec(),
            u_base: parse_rows(origin, u_base, BASE_ROWS, 1, "u_base")?,
            w_shp_base: parse_rows(origin, w_shp_base, BASE_ROWS, SHAPE_DIM, "w_shp_base")?,
            w_exp_base: parse_rows(origin, w_exp_base, BASE_ROWS, EXP_DIM, "w_exp_base")?,
        };
        bfm.check(origin)?;
        Ok(bfm)
    }

    /// Reads `u_base.txt`, `w_shp_base.txt`, `w_exp_base.txt` and the whitening from `dir`:
    /// `param_mean_std_62d_120x120.safetensors` (`mean`, `std`) if present, else
    /// `param_mean_v2.txt` and `param_std_v2.txt`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let (mean, std) = {
            let st = dir.join("param_mean_std_62d_120x120.safetensors");
            if st.exists() {
                let w = Weights::open(&st)?;
                (
                    w.get("mean", &[PARAMS])?.to_vec(),
                    w.get("std", &[PARAMS])?.to_vec(),
                )
            } else {
                let one = |name: &str| -> Result<Vec<f32>> {
                    let (shown, text) = read_text(&dir.join(name))?;
                    parse_rows(&shown, &text, PARAMS, 1, name)
                };
                (one("param_mean_v2.txt")?, one("param_std_v2.txt")?)
            }
        };
        let mut texts = Vec::new();
        for name in ["u_base.txt", "w_shp_base.txt", "w_exp_base.txt"] {
            texts.push(read_text(&dir.join(name))?);
        }
        let bfm = Bfm {
            param_mean: mean,
            param_std: std,
            u_base: parse_rows(&texts[0].0, &texts[0].1, BASE_ROWS, 1, "u_base")?,
            w_shp_base: parse_rows(&texts[1].0, &texts[1].1, BASE_ROWS, SHAPE_DIM, "w_shp_base")?,
            w_exp_base: parse_rows(&texts[2].0, &texts[2].1, BASE_ROWS, EXP_DIM, "w_exp_base")?,
        };
        bfm.check(&dir.display().to_string())?;
        Ok(bfm)
    }

    /// Reads a `3ddfa_bfm68.safetensors` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_weights(&Weights::open(path)?)
    }

    /// Takes `param_mean` `[62]`, `param_std` `[62]`, `u_base` `[204]` (or `[204, 1]`),
    /// `w_shp_base` `[204, 40]` and `w_exp_base` `[204, 10]` from named tensors.
    pub fn from_weights(w: &Weights) -> Result<Self> {
        let u_shape: &[usize] = match w.tensors().get("u_base") {
            Some(t) if t.shape == [BASE_ROWS, 1] => &[BASE_ROWS, 1],
            _ => &[BASE_ROWS],
        };
        let bfm = Bfm {
            param_mean: w.get("param_mean", &[PARAMS])?.to_vec(),
            param_std: w.get("param_std", &[PARAMS])?.to_vec(),
            u_base: w.get("u_base", u_shape)?.to_vec(),
            w_shp_base: w.get("w_shp_base", &[BASE_ROWS, SHAPE_DIM])?.to_vec(),
            w_exp_base: w.get("w_exp_base", &[BASE_ROWS, EXP_DIM])?.to_vec(),
        };
        bfm.check(&w.origin)?;
        Ok(bfm)
    }

    /// Writes the five tensors as one `3ddfa_bfm68.safetensors` (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let t = |shape: Vec<usize>, v: &[f32]| HostTensor::new(shape, v.to_vec());
        let tensors = BTreeMap::from([
            ("param_mean".to_string(), t(vec![PARAMS], &self.param_mean)),
            ("param_std".to_string(), t(vec![PARAMS], &self.param_std)),
            ("u_base".to_string(), t(vec![BASE_ROWS], &self.u_base)),
            (
                "w_shp_base".to_string(),
                t(vec![BASE_ROWS, SHAPE_DIM], &self.w_shp_base),
            ),
            (
                "w_exp_base".to_string(),
                t(vec![BASE_ROWS, EXP_DIM], &self.w_exp_base),
            ),
        ]);
        let meta = [(
            "fswap.source".to_string(),
            "3DDFA c++ *_base.txt + 3DDFA_V2 param_mean_std_62d_120x120".to_string(),
        )];
        write_safetensors(path, &tensors, meta.into_iter().collect())
    }

    /// Checks every length (the fields are public) and that the standard deviations are finite.
    pub fn check(&self, origin: &str) -> Result<()> {
        for (name, v, n) in [
            ("param_mean", &self.param_mean, PARAMS),
            ("param_std", &self.param_std, PARAMS),
            ("u_base", &self.u_base, BASE_ROWS),
            ("w_shp_base", &self.w_shp_base, BASE_ROWS * SHAPE_DIM),
            ("w_exp_base", &self.w_exp_base, BASE_ROWS * EXP_DIM),
        ] {
            if v.len() != n {
                return Err(bad(
                    origin,
                    format!("{name} has {} values, expected {n}", v.len()),
                ));
            }
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(bad(origin, format!("{name} holds {x}")));
            }
        }
        Ok(())
    }

    /// De-normalises the network's 62 outputs: `out·std + mean` (in f64).
    pub fn denormalise(&self, out: &[f32]) -> [f64; PARAMS] {
        let mut p = [0f64; PARAMS];
        for (i, v) in p.iter_mut().enumerate() {
            *v = out[i] as f64 * self.param_std[i] as f64 + self.param_mean[i] as f64;
        }
        p
    }
}

/// The weights manifest (`weights/3ddfa_mb05.json`, written by `tools/landmarks_reference.py`):
/// names without the [`PREFIX`], as `tools/export.py` writes them.
pub fn manifest() -> Result<Manifest> {
    serde_json::from_str(include_str!("../../weights/3ddfa_mb05.json"))
        .map_err(|e| Error::param("manifest", format!("weights/{MODEL}.json: {e}")))
}

/// The prefix of `w`'s names: [`PREFIX`] when it holds `module.conv1.weight` (the checkpoint's
/// own names), else none.
pub fn prefix(w: &Weights) -> &'static str {
    if w.contains(&format!("{PREFIX}conv1.weight")) {
        PREFIX
    } else {
        ""
    }
}

/// The manifest with `w`'s [`prefix`], so that problems are reported by the file's own names.
pub fn manifest_for(w: &Weights) -> Result<Manifest> {
    let m = manifest()?;
    let p = prefix(w);
    Ok(Manifest::from_specs(
        &m.model,
        m.tensors
            .into_iter()
            .map(|(k, v)| (format!("{p}{k}"), v))
            .collect(),
    ))
}

/// 3DDFA MobileNet ×0.5 on the GPU for a fixed batch: write crops into [`Tddfa::input`], run
/// [`Tddfa::plan`], read [`Tddfa::output`]. [`crate::face::landmarks`] does all of it from an image
/// and boxes.
pub struct Tddfa {
    /// Faces per run.
    pub batch: usize,
    /// `[N, 3, 120, 120]`: BGR crops, `(pixel − 127.5)/128`.
    pub input: Tensor,
    /// `[N, 1, 1, 198]`: the 62 normalised parameters, then the 136 `fc_lm` values.
    pub output: Tensor,
    /// The forward pass.
    pub plan: Plan,
    /// Whitening and landmark bases used to decode the output.
    pub bfm: Bfm,
}

impl Tddfa {
    /// Checks `w` against the manifest (every missing, unexpected or mis-shaped tensor by name) and
    /// builds the plan for one face per run.
    pub fn new(ctx: &Context, w: &Weights, bfm: &Bfm) -> Result<Self> {
        Self::with_batch(ctx, w, bfm, 1)
    }

    /// Like [`Tddfa::new`] for `batch` faces per run.
    pub fn with_batch(ctx: &Context, w: &Weights, bfm: &Bfm, batch: usize) -> Result<Self> {
        if batch == 0 {
            return Err(Error::param("3ddfa", "batch must be at least 1"));
        }
        manifest_for(w)?.check(w)?;
        bfm.check("3ddfa bases")?;
        let mut b = Builder::new(ctx, w);
        let input = b.tensor(Shape::new(batch, 3, SIZE, SIZE), "3ddfa input")?;
        let pre = prefix(w);
        let p = |s: &str| format!("{pre}{s}");
        let mut x = b.conv(
            &input,
            ConvSpec::new(3, STEM, 3, 2, 1),
            &p("conv1"),
            false,
            Some(&p("bn1")),
            Activation::Relu,
        )?;
        for (name, cin, cout, stride) in BLOCKS {
            x = b.conv(
                &x,
                ConvSpec::depthwise(cin, 3, stride, 1),
                &p(&format!("{name}.conv_dw")),
                false,
                Some(&p(&format!("{name}.bn_dw"))),
                Activation::Relu,
            )?;
            x = b.conv(
                &x,
                ConvSpec::new(cin, cout, 1, 1, 0),
                &p(&format!("{name}.conv_sep")),
                false,
                Some(&p(&format!("{name}.bn_sep"))),
                Activation::Relu,
            )?;
        }
        let pooled = b.tensor(Pool::GlobalAvg.output_shape(x.shape())?, "3ddfa pool")?;
        b.plan.push(Pool::GlobalAvg.bind(ctx, &x, &pooled)?);
        // Both heads read the same features: one linear with their rows stacked.
        let mut weight = w.linear(&p("fc_param.weight"), PARAMS, FEATURES)?;
        weight.extend(w.linear(&p("fc_lm.weight"), LM, FEATURES)?);
        let mut bias = w.get(&p("fc_param.bias"), &[PARAMS])?.to_vec();
        bias.extend_from_slice(w.get(&p("fc_lm.bias"), &[LM])?);
        let heads = Linear::new(
            ctx,
            (FEATURES, 1, 1),
            OUTPUTS,
            &weight,
            &Epilogue::bias(&bias),
        )?;
        let output = b.tensor(heads.output_shape(pooled.shape())?, "3ddfa heads")?;
        b.plan.push(heads.bind(ctx, &pooled, &output)?);
        Ok(Tddfa {
            batch,
            input,
            output,
            plan: b.plan,
            bfm: bfm.clone(),
        })
    }
}
