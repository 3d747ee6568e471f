"""Independent float64 PyTorch reference of MobileFaceSwap and its ArcFace (developer tooling only).

Written from the architecture spec (``/work/shared/spec/mobilefaceswap.md``: sections 1-3 and 2.1),
not from the engine, so the engine's goldens share no code with it. Never on the runtime path.

* ``arcface.ArcFace(depths)``: IR-SE ResNet; ``forward(face) -> (id_emb_l2 [N,512],
  id_feature_map [N,512,7,7])``.
* ``mobilefaceswap.BuildFaceSwap``: the IIN (weight prediction + modulation) plus the static
  ``final`` / ``mask`` heads; ``mobilefaceswap.inject(bfs, id_emb, id_feature_map)`` -> the 92
  UNet tensors (spec 1.6 names); ``mobilefaceswap.unet_forward(state, img) -> (swapped, mask)``.
* ``load_paddle_state(module, state)``: loads a Paddle state dict (name -> numpy array, Paddle
  names and layouts) into these modules, strictly.

Everything is float64 (``module.double()``); modules are used in eval mode.
"""

import numpy as np
import torch
from torch import nn

PADDLE_BN_EPS = 1e-5
LEAKY_SLOPE = 0.1


def _as_f64(v):
    if isinstance(v, torch.Tensor):
        return v.detach().to(torch.float64).clone()
    return torch.from_numpy(np.array(v, dtype=np.float64, copy=True))


def load_paddle_state(module, state, skip=("StructuredToParameterName@@",)):
    """Copies a Paddle state dict into `module` (float64), explicitly per layer type:

    * ``nn.Conv2d``: ``weight`` [out, in/groups, kh, kw] as is, ``bias`` if the conv has one;
    * ``nn.BatchNorm1d/2d``: ``weight``, ``bias``, ``_mean`` -> running_mean, ``_variance`` ->
      running_var (Paddle has no num_batches_tracked);
    * ``nn.PReLU``: ``_weight`` -> weight;
    * ``nn.Linear``: Paddle ``weight`` is [in, out]: always transposed (never guessed from the
      shape: 512 -> 512 styles are square), ``bias``;
    * any other module's own parameters (``Mod2Weight.weight``) by their name.

    Strict: every module tensor must be present with the exact shape, and every key of `state`
    (other than `skip`) must be used. Returns the list of keys used.
    """
    used = []

    def take(key, shape, transpose=False):
        if key not in state:
            raise KeyError(f"missing key {key}")
        v = _as_f64(state[key])
        if transpose:
            if v.ndim != 2:
                raise ValueError(f"{key}: Linear weight must be 2-D, got {tuple(v.shape)}")
            v = v.t().contiguous()
        if tuple(v.shape) != tuple(shape):
            raise ValueError(f"{key}: shape {tuple(v.shape)} (after layout mapping), module wants {tuple(shape)}")
        used.append(key)
        return v

    with torch.no_grad():
        for name, m in module.named_modules():
            p = f"{name}." if name else ""
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(take(p + "weight", m.weight.shape))
                if m.bias is not None:
                    m.bias.copy_(take(p + "bias", m.bias.shape))
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.copy_(take(p + "weight", m.weight.shape))
                m.bias.copy_(take(p + "bias", m.bias.shape))
                m.running_mean.copy_(take(p + "_mean", m.running_mean.shape))
                m.running_var.copy_(take(p + "_variance", m.running_var.shape))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(take(p + "_weight", m.weight.shape))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(take(p + "weight", m.weight.shape, transpose=True))
                if m.bias is not None:
                    m.bias.copy_(take(p + "bias", m.bias.shape))
            else:
                for pn, prm in m.named_parameters(recurse=False):
                    prm.copy_(take(p + pn, prm.shape))
    extra = sorted(set(state) - set(used) - set(skip))
    if extra:
        raise KeyError(f"unused keys in state dict: {extra[:10]}{' ...' if len(extra) > 10 else ''}")
    if len(used) != len(set(used)):
        raise RuntimeError("a key was used twice")
    return used


def load_pdparams(path):
    """Reads a .pdparams (pickle of name -> ndarray) and drops non-array entries."""
    import pickle

    with open(path, "rb") as f:
        obj = pickle.load(f)
    return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


from . import arcface, mobilefaceswap  # noqa: E402  (they use the helpers above)
from .arcface import ArcFace  # noqa: E402
from .mobilefaceswap import BuildFaceSwap, UNet, inject, unet_forward  # noqa: E402

__all__ = [
    "ArcFace",
    "BuildFaceSwap",
    "UNet",
    "inject",
    "unet_forward",
    "load_paddle_state",
    "load_pdparams",
    "arcface",
    "mobilefaceswap",
]
