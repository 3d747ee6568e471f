//! Layers by official tensor name: the training-graph counterpart of
//! [`crate::models::builder::Builder`], so a model's training graph reads like its inference plan.

use std::collections::BTreeMap;

use super::{BnSpec, Graph, ParamKind, Var};
use crate::error::Result;
use crate::kernels::conv::ConvSpec;
use crate::kernels::modulate::ModulateSpec;
use crate::kernels::Activation;
use crate::weights::{HostTensor, Weights};

/// A graph under construction over a weights file.
pub struct Net<'g, 'c> {
    /// The graph.
    pub g: &'g mut Graph<'c>,
    /// Where parameters come from.
    pub w: &'g Weights,
}

impl<'g, 'c> Net<'g, 'c> {
    /// Builds into `g` with parameters read from `w`.
    pub fn new(g: &'g mut Graph<'c>, w: &'g Weights) -> Self {
        Net { g, w }
    }

    /// `{prefix}.weight` (+ `{prefix}.bias`) convolution, then an optional batch norm `bn`, then
    /// `act` (fused into the convolution when there is no batch norm).
    pub fn conv(
        &mut self,
        x: Var,
        spec: ConvSpec,
        prefix: &str,
        bias: bool,
        bn: Option<&str>,
        act: Activation,
    ) -> Result<Var> {
        let (kh, kw) = spec.kernel;
        let shape = [spec.cout, spec.cin / spec.groups, kh, kw];
        let name = format!("{prefix}.weight");
        let wt = self.w.get(&name, &shape)?;
        let weight = self.g.add_param(&name, &shape, wt, ParamKind::Weight)?;
        let bias = if bias {
            let name = format!("{prefix}.bias");
            let b = self.w.get(&name, &[spec.cout])?;
            Some(
                self.g
                    .add_param(&name, &[spec.cout], b, ParamKind::Weight)?,
            )
        } else {
            None
        };
        match bn {
            Some(bn) => {
                let z = self.g.conv(x, spec, weight, bias, Activation::None)?;
                self.batch_norm(z, bn, act)
            }
            None => self.g.conv(x, spec, weight, bias, act),
        }
    }

    /// The batch norm `{prefix}` (Paddle `_mean`/`_variance` or PyTorch `running_*` names), then
    /// `act`, in the graph's [`super::NormMode`].
    pub fn batch_norm(&mut self, x: Var, prefix: &str, act: Activation) -> Result<Var> {
        let spec = self.bn_spec(x, prefix)?;
        self.g.batch_norm(x, spec, act)
    }

    /// A batch norm's parameters, by the names the file uses.
    pub fn bn_spec(&mut self, x: Var, prefix: &str) -> Result<BnSpec> {
        let s = self.g.shape(x);
        let c = if s.c == 1 && s.h == 1 { s.w } else { s.c };
        let bn = self.w.batch_norm(prefix, c)?;
        let paddle = self.w.contains(&format!("{prefix}._mean"));
        let (m, v) = if paddle {
            ("_mean", "_variance")
        } else {
            ("running_mean", "running_var")
        };
        let names = [
            format!("{prefix}.weight"),
            format!("{prefix}.bias"),
            format!("{prefix}.{m}"),
            format!("{prefix}.{v}"),
        ];
        self.g.bn_params(
            [&names[0], &names[1], &names[2], &names[3]],
            &bn.gamma,
            &bn.beta,
            &bn.mean,
            &bn.var,
        )
    }

    /// Linear `{prefix}.weight` `[out, in]` (Paddle `[in, out]` files are transposed on load and
    /// back on export) + optional bias, then `act`.
    pub fn linear(&mut self, x: Var, prefix: &str, out: usize, act: Activation) -> Result<Var> {
        let s = self.g.shape(x);
        let inp = s.c * s.h * s.w;
        let name = format!("{prefix}.weight");
        let wt = self.w.linear(&name, out, inp)?;
        let weight = self
            .g
            .add_param(&name, &[out, inp], &wt, ParamKind::Weight)?;
        let bname = format!("{prefix}.bias");
        let bias = match self.w.optional(&bname, &[out])? {
            Some(b) => Some(self.g.add_param(&bname, &[out], b, ParamKind::Weight)?),
            None => None,
        };
        self.g.linear(x, weight, bias, act)
    }
}

impl Net<'_, '_> {
    /// PReLU `{name}` (`_weight` in Paddle, `weight` in PyTorch; one shared slope or one per
    /// channel) on `x`.
    pub fn prelu(&mut self, x: Var, name: &str) -> Result<Var> {
        let key = [format!("{name}._weight"), format!("{name}.weight")]
            .into_iter()
            .find(|k| self.w.contains(k))
            .unwrap_or_else(|| format!("{name}._weight"));
        let s = self.g.shape(x);
        let c = if s.c == 1 && s.h == 1 { s.w } else { s.c };
        let stored = self.w.tensors().get(&key).map(|t| t.shape.clone());
        let n = if stored.as_deref() == Some(&[1][..]) {
            1
        } else {
            c
        };
        let slopes = self.w.get(&key, &[n])?;
        let p = self.g.add_param(&key, &[n], slopes, ParamKind::Weight)?;
        self.g.prelu(x, p)
    }

    /// Modulated kernels from base weights `{name}` `[cout, cin, 1, 1]` and style `s`.
    pub fn modulate(&mut self, s: Var, name: &str, spec: ModulateSpec) -> Result<Var> {
        let shape = [spec.cout, spec.cin, 1, 1];
        let wt = self.w.get(name, &shape)?;
        let p = self.g.add_param(name, &shape, wt, ParamKind::Weight)?;
        self.g.modulate(s, p, spec)
    }
}

/// Host tensors of a graph's parameters (values or gradients) under their file names and in the
/// file's layout (Linear weights back to `[in, out]` when `w` stores them so).
pub fn export(g: &Graph<'_>, w: &Weights, grads: bool) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    for p in g.params() {
        if grads && !p.trainable {
            continue;
        }
        let data = if grads {
            p.read_grad(g.ctx())?
        } else {
            p.read(g.ctx())?
        };
        let stored = w.tensors().get(&p.name).map(|t| t.shape.clone());
        let transposed = p.shape.len() == 2
            && w.linear_in_out()
            && stored.as_deref() == Some(&[p.shape[1], p.shape[0]][..]);
        let t = if transposed {
            let (o, i) = (p.shape[0], p.shape[1]);
            let mut d = vec![0.0; data.len()];
            for r in 0..o {
                for c in 0..i {
                    d[c * o + r] = data[r * i + c];
                }
            }
            HostTensor::new(vec![i, o], d)
        } else {
            HostTensor::new(stored.unwrap_or_else(|| p.shape.clone()), data)
        };
        out.insert(p.name.clone(), t);
    }
    Ok(out)
}
