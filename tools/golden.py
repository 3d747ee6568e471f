#!/usr/bin/env python3
"""PyTorch goldens for the fswap kernel tests.

Run by developers only, when a kernel family or a case is added:

    pip install -r tools/requirements.txt
    python3 tools/golden.py [--out tests/fixtures]

It writes one small safetensors file per kernel family, ``tests/fixtures/<family>.safetensors``.
The fixtures are committed; ``cargo test`` (and CI) only reads them, so neither needs Python or
torch. This script is never on the runtime path.

Every file holds tensors named ``<case>/<role>`` (``conv_3/x``, ``conv_3/weight``, ``conv_3/y``)
and, in the safetensors ``__metadata__`` under ``cases``, a JSON list of objects
``{"name": ..., "op": ..., ...params}`` describing each case.

Conventions:
- seeded (one ``torch.Generator`` per family, so adding a case to one family leaves the others'
  bytes unchanged) and deterministic: running it twice writes identical files;
- inputs and weights are drawn in float32 and then rounded to float16 (``x.half().float()``),
  because the GPU stores fp16: the golden sees exactly the values the kernel reads;
- expected outputs are computed by PyTorch's own operators (``F.conv2d``, ``F.interpolate``, ...)
  in float64 from those rounded values and stored as float32, so they share no code with the
  engine or with the Rust f64 reference in ``tests/common/reference.rs``;
- shapes are awkward on purpose: odd H/W, channel counts that are not multiples of 4, batch 2.
"""

import argparse
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

LEAKY = 0.1  # leaky ReLU slope used by the "leaky" activation
IN_EPS = 1e-5  # instance / batch norm epsilon
DEMOD_EPS = 1e-8  # StyleGAN2 demodulation epsilon
L2_EPS = 1e-12  # F.normalize epsilon


class Family:
    """Collects the tensors and case descriptions of one fixture file."""

    def __init__(self, name, seed):
        self.name = name
        self.gen = torch.Generator().manual_seed(seed)
        self.tensors = {}
        self.cases = []

    def uniform(self, shape, lo=-1.0, hi=1.0):
        """Uniform float32 in [lo, hi), rounded to float16 values (kept as float32)."""
        t = torch.rand(shape, generator=self.gen, dtype=torch.float32) * (hi - lo) + lo
        return t.half().float()

    def case(self, name, op, params, inputs, output):
        """Records a case: `inputs` are fp16-rounded float32 tensors, `output` a float64 result."""
        assert not any(c["name"] == name for c in self.cases), name
        for role, t in inputs.items():
            assert t.dtype == torch.float32, (name, role)
            assert torch.equal(t, t.half().float()), f"{name}/{role} is not fp16-exact"
            self.tensors[f"{name}/{role}"] = t.contiguous()
        assert output.dtype == torch.float64, name
        assert torch.isfinite(output).all(), name
        self.tensors[f"{name}/y"] = output.float().contiguous()
        self.cases.append({"name": name, "op": op, **params})

    def save(self, out_dir):
        path = os.path.join(out_dir, f"{self.name}.safetensors")
        save_file(self.tensors, path, metadata={"cases": json.dumps(self.cases)})
        return path, os.path.getsize(path)


def d(t):
    return t.double()


def activation(y, act, slopes=None):
    """The epilogue activations, by the engine's names, with PyTorch's functions."""
    if act == "none":
        return y
    if act == "relu":
        return F.relu(y)
    if act == "relu6":
        return F.relu6(y)
    if act == "leaky":
        return F.leaky_relu(y, LEAKY)
    if act == "prelu":
        return F.prelu(y, d(slopes))
    if act == "sigmoid":
        return torch.sigmoid(y)
    if act == "tanh":
        return torch.tanh(y)
    raise ValueError(act)


def epilogue(fam, acc, cout, act, residual, inputs):
    """y = act(acc*scale[c] + shift[c] (+ r)) (+ r); adds scale/shift/slope/r to `inputs`."""
    scale = fam.uniform((cout,), 0.5, 1.5)
    shift = fam.uniform((cout,), -0.5, 0.5)
    inputs["scale"], inputs["shift"] = scale, shift
    y = acc * d(scale)[None, :, None, None] + d(shift)[None, :, None, None]
    slopes = None
    if act == "prelu":
        slopes = fam.uniform((cout,), 0.0, 0.3)
        inputs["slope"] = slopes
    if residual != "none":
        r = fam.uniform(tuple(acc.shape))
        inputs["r"] = r
        if residual == "before":
            y = y + d(r)
    y = activation(y, act, slopes)
    if residual == "after":
        y = y + d(r)
    return y


# --------------------------------------------------------------------------------------------
# conv


def conv(out_dir):
    fam = Family("conv", 1001)
    # (name, n, cin, cout, h, w, k, stride, pad, dilation, groups, padding, act, residual)
    cases = [
        ("conv_k1_dense", 2, 3, 5, 7, 9, 1, 1, 0, 1, 1, "zero", "none", "none"),
        ("conv_k3_relu_after", 2, 5, 6, 9, 11, 3, 1, 1, 1, 1, "zero", "relu", "after"),
        ("conv_k3_s2_reflect_leaky", 1, 4, 7, 11, 13, 3, 2, 1, 1, 1, "reflect", "leaky", "none"),
        ("conv_k5_refl_prelu_before", 1, 3, 4, 10, 9, 5, 1, 2, 1, 1, "reflect", "prelu", "before"),
        ("conv_k7_s2_reflect_tanh", 1, 3, 8, 15, 13, 7, 2, 3, 1, 1, "reflect", "tanh", "none"),
        ("conv_k3_s4_sigmoid", 2, 6, 3, 17, 15, 3, 4, 1, 1, 1, "zero", "sigmoid", "none"),
        ("conv_k1_s2_relu6", 1, 9, 10, 9, 7, 1, 2, 0, 1, 1, "zero", "relu6", "none"),
        ("conv_k3_dil2", 1, 5, 3, 13, 11, 3, 1, 2, 2, 1, "zero", "none", "after"),
        ("conv_grouped_g2", 2, 6, 4, 9, 9, 3, 1, 1, 1, 2, "zero", "relu", "none"),
        ("dw_k3_relu6", 2, 7, 7, 9, 7, 3, 1, 1, 1, 7, "zero", "relu6", "none"),
        ("dw_k5_s2_after", 1, 10, 10, 11, 13, 5, 2, 2, 1, 10, "zero", "none", "after"),
        ("dw_k7_reflect_prelu", 1, 5, 5, 13, 11, 7, 1, 3, 1, 5, "reflect", "prelu", "none"),
        ("dw_k3_s4_reflect_leaky", 2, 3, 3, 15, 17, 3, 4, 1, 1, 3, "reflect", "leaky", "before"),
        ("dw_k3_dil2_tanh", 1, 6, 6, 10, 9, 3, 1, 2, 2, 6, "zero", "tanh", "none"),
    ]
    for name, n, cin, cout, h, w, k, s, p, dil, g, padding, act, residual in cases:
        x = fam.uniform((n, cin, h, w))
        fan_in = cin // g * k * k
        bound = (3.0 / fan_in) ** 0.5  # unit-variance outputs for unit-variance inputs
        wt = fam.uniform((cout, cin // g, k, k), -bound, bound)
        xd = d(x)
        if padding == "reflect":
            xd = F.pad(xd, (p, p, p, p), mode="reflect")
            acc = F.conv2d(xd, d(wt), stride=s, padding=0, dilation=dil, groups=g)
        else:
            acc = F.conv2d(xd, d(wt), stride=s, padding=p, dilation=dil, groups=g)
        inputs = {"x": x, "weight": wt}
        y = epilogue(fam, acc, cout, act, residual, inputs)
        params = dict(n=n, cin=cin, cout=cout, h=h, w=w, kernel=k, stride=s, pad=p,
                      dilation=dil, groups=g, padding=padding, act=act, slope=LEAKY,
                      residual=residual)
        fam.case(name, "conv2d", params, inputs, y)
    return fam.save(out_dir)


# --------------------------------------------------------------------------------------------
# pointwise


def pointwise(out_dir):
    fam = Family("pointwise", 1002)
    # (name, n, cin, cout, h, w, act, residual, per_sample)
    cases = [
        ("pw_3to5", 2, 3, 5, 7, 9, "none", "none", False),
        ("pw_13to6_relu_after", 1, 13, 6, 9, 11, "relu", "after", False),
        ("pw_6to17_prelu", 2, 6, 17, 5, 7, "prelu", "none", False),
        ("pw_9to9_sigmoid_before", 1, 9, 9, 11, 3, "sigmoid", "before", False),
        ("pw_32to10_leaky", 1, 32, 10, 13, 15, "leaky", "none", False),
        ("pw_persample_5to7", 2, 5, 7, 9, 11, "tanh", "none", True),
        ("pw_persample_12to3_after", 2, 12, 3, 7, 5, "relu6", "after", True),
    ]
    for name, n, cin, cout, h, w, act, residual, per_sample in cases:
        x = fam.uniform((n, cin, h, w))
        bound = (3.0 / cin) ** 0.5
        if per_sample:
            wt = fam.uniform((n, cout, cin), -bound, bound)
            acc = torch.cat([F.conv2d(d(x[i:i + 1]), d(wt[i])[:, :, None, None])
                             for i in range(n)])
        else:
            wt = fam.uniform((cout, cin), -bound, bound)
            acc = F.conv2d(d(x), d(wt)[:, :, None, None])
        inputs = {"x": x, "weight": wt}
        y = epilogue(fam, acc, cout, act, residual, inputs)
        params = dict(n=n, cin=cin, cout=cout, h=h, w=w, act=act, slope=LEAKY,
                      residual=residual, per_sample=per_sample)
        fam.case(name, "pointwise", params, inputs, y)
    return fam.save(out_dir)


# --------------------------------------------------------------------------------------------
# linear


def linear(out_dir):
    fam = Family("linear", 1003)
    # (name, x shape, out features, act, bias)
    cases = [
        ("fc_map_2x5x3x3_to_7", (2, 5, 3, 3), 7, "none", True),
        ("fc_3x37_to_10_relu", (3, 37), 10, "relu", True),
        ("fc_1x512_to_13_leaky", (1, 512), 13, "leaky", True),
        ("fc_2x1x7x9_to_6_tanh", (2, 1, 7, 9), 6, "tanh", True),
        ("fc_2x64_to_3_sigmoid_nobias", (2, 64), 3, "sigmoid", False),
        ("fc_4x10_to_5_prelu", (4, 10), 5, "prelu", True),
    ]
    for name, xshape, out_f, act, bias in cases:
        x = fam.uniform(xshape)
        n = xshape[0]
        feat = x[0].numel()
        bound = (3.0 / feat) ** 0.5
        wt = fam.uniform((out_f, feat), -bound, bound)
        inputs = {"x": x, "weight": wt}
        b = None
        if bias:
            b = fam.uniform((out_f,), -0.5, 0.5)
            inputs["bias"] = b
        y = F.linear(d(x).reshape(n, feat), d(wt), None if b is None else d(b))
        slopes = None
        if act == "prelu":
            slopes = fam.uniform((out_f,), 0.0, 0.3)
            inputs["slope"] = slopes
        y = activation(y, act, slopes)
        params = dict(n=n, x_shape=list(xshape), in_features=feat, out_features=out_f,
                      act=act, slope=LEAKY, bias=bias)
        fam.case(name, "linear", params, inputs, y)
    return fam.save(out_dir)


# --------------------------------------------------------------------------------------------
# modulate


def modulate(out_dir):
    fam = Family("modulate", 1004)
    # (name, n, out, in, demod)
    cases = [
        ("mod_demod_2x6x5", 2, 6, 5, True),
        ("mod_demod_1x17x13", 1, 17, 13, True),
        ("mod_nodemod_2x7x9", 2, 7, 9, False),
        ("mod_demod_3x4x64", 3, 4, 64, True),
    ]
    for name, n, o, i, demod in cases:
        wt = fam.uniform((o, i))
        s = fam.uniform((n, i), -0.8, 0.8)
        wp = d(wt)[None, :, :] * (1.0 + d(s))[:, None, :]
        if demod:
            wp = wp * torch.rsqrt((wp * wp).sum(dim=2, keepdim=True) + DEMOD_EPS)
        params = dict(n=n, out_features=o, in_features=i, demod=demod, eps=DEMOD_EPS)
        fam.case(name, "modulate", params, {"weight": wt, "style": s}, wp)
    return fam.save(out_dir)


# --------------------------------------------------------------------------------------------
# norm


def norm(out_dir):
    fam = Family("norm", 1005)
    # (name, op, n, c, h, w, act)
    #   instance_norm: gamma/beta [C]; adain: gamma/beta [N, C] from a style;
    #   cond_batch_norm: running mean/var [C], gamma/beta [N, C].
    cases = [
        ("in_static", "instance_norm", 2, 5, 7, 9, "none"),
        ("in_static_relu_big", "instance_norm", 1, 3, 37, 29, "relu"),
        ("adain", "adain", 2, 6, 9, 11, "none"),
        ("adain_leaky", "adain", 2, 3, 13, 5, "leaky"),
        ("adain_1x1_plane3", "adain", 2, 7, 3, 1, "none"),
        ("cbn", "cond_batch_norm", 2, 5, 7, 9, "none"),
        ("cbn_relu", "cond_batch_norm", 2, 10, 5, 3, "relu"),
    ]
    for name, op, n, c, h, w, act in cases:
        # a per-channel offset and spread, so the statistics are not trivially ~0 and ~1/3
        x = fam.uniform((n, c, h, w), -1.0, 1.0) * fam.uniform((1, c, 1, 1), 0.5, 3.0) \
            + fam.uniform((1, c, 1, 1), -1.0, 1.0)
        x = x.half().float()
        inputs = {"x": x}
        if op == "instance_norm":
            gamma = fam.uniform((c,), 0.5, 1.5)
            beta = fam.uniform((c,), -0.5, 0.5)
            y = F.instance_norm(d(x), weight=d(gamma), bias=d(beta), eps=IN_EPS)
        elif op == "adain":
            gamma = fam.uniform((n, c), 0.5, 1.5)
            beta = fam.uniform((n, c), -0.5, 0.5)
            y = F.instance_norm(d(x), eps=IN_EPS) * d(gamma)[:, :, None, None] \
                + d(beta)[:, :, None, None]
        else:
            mean = fam.uniform((c,), -1.0, 1.0)
            var = fam.uniform((c,), 0.25, 4.0)
            inputs["running_mean"], inputs["running_var"] = mean, var
            gamma = fam.uniform((n, c), 0.5, 1.5)
            beta = fam.uniform((n, c), -0.5, 0.5)
            y = F.batch_norm(d(x), d(mean), d(var), training=False, eps=IN_EPS) \
                * d(gamma)[:, :, None, None] + d(beta)[:, :, None, None]
        inputs["gamma"], inputs["beta"] = gamma, beta
        y = activation(y, act)
        params = dict(n=n, c=c, h=h, w=w, eps=IN_EPS, act=act, slope=LEAKY)
        fam.case(name, op, params, inputs, y)
    return fam.save(out_dir)


# --------------------------------------------------------------------------------------------
# fusion


def fusion(out_dir):
    fam = Family("fusion", 1006)
    # (name, n, c, h, w, sigmoid)
    cases = [
        ("blend_raw", 2, 3, 7, 9, False),
        ("blend_sigmoid", 2, 5, 9, 11, True),
        ("blend_raw_c1", 1, 1, 13, 5, False),
        ("blend_sigmoid_c6", 1, 6, 5, 3, True),
    ]
    for name, n, c, h, w, sig in cases:
        a = fam.uniform((n, c, h, w))
        b = fam.uniform((n, c, h, w))
        if sig:
            m = fam.uniform((n, 1, h, w), -4.0, 4.0)
            md = torch.sigmoid(d(m))
        else:
            m = fam.uniform((n, 1, h, w), 0.0, 1.0)
            md = d(m)
        y = md * d(a) + (1.0 - md) * d(b)
        params = dict(n=n, c=c, h=h, w=w, sigmoid=sig)
        fam.case(name, "blend", params, {"a": a, "b": b, "mask": m}, y)
    return fam.save(out_dir)


# --------------------------------------------------------------------------------------------
# resample


def resample(out_dir):
    fam = Family("resample", 1007)
    # bilinear / nearest: (name, op, n, c, h, w, ho, wo, align_corners)
    interp = [
        ("bilinear_x2", "bilinear", 2, 3, 7, 9, 14, 18, False),
        ("bilinear_x2_align", "bilinear", 1, 5, 7, 9, 14, 18, True),
        ("bilinear_up_odd", "bilinear", 1, 3, 7, 9, 13, 20, False),
        ("bilinear_up_odd_align", "bilinear", 2, 2, 7, 9, 13, 20, True),
        ("bilinear_down", "bilinear", 1, 3, 15, 17, 6, 5, False),
        ("bilinear_down_align", "bilinear", 1, 3, 15, 17, 6, 5, True),
        ("bilinear_mixed", "bilinear", 1, 2, 11, 6, 5, 13, False),
        ("nearest_x2", "nearest", 2, 3, 5, 7, 10, 14, None),
        ("nearest_up_odd", "nearest", 1, 5, 7, 9, 13, 20, None),
        ("nearest_down", "nearest", 1, 3, 15, 17, 6, 5, None),
    ]
    for name, op, n, c, h, w, ho, wo, align in interp:
        x = fam.uniform((n, c, h, w))
        if op == "bilinear":
            y = F.interpolate(d(x), size=(ho, wo), mode="bilinear", align_corners=align)
        else:
            y = F.interpolate(d(x), size=(ho, wo), mode="nearest")
        params = dict(n=n, c=c, h=h, w=w, out_h=ho, out_w=wo)
        if align is not None:
            params["align_corners"] = align
        fam.case(name, op, params, {"x": x}, y)
    # pixel shuffle: (name, n, c_in, h, w, r)
    for name, n, c, h, w, r in [
        ("pixel_shuffle_r2", 2, 12, 5, 7, 2),
        ("pixel_shuffle_r3", 1, 18, 3, 5, 3),
        ("pixel_shuffle_r2_c4", 1, 4, 7, 3, 2),
    ]:
        x = fam.uniform((n, c, h, w))
        y = F.pixel_shuffle(d(x), r)
        params = dict(n=n, c=c, h=h, w=w, factor=r, out_c=c // (r * r), out_h=h * r,
                      out_w=w * r)
        fam.case(name, "pixel_shuffle", params, {"x": x}, y)
    return fam.save(out_dir)


# --------------------------------------------------------------------------------------------
# pool


def pool(out_dir):
    fam = Family("pool", 1008)
    # (name, op, n, c, h, w, k, stride, pad, count_include_pad)
    cases = [
        ("max_k3_s2_p1", "max_pool", 2, 5, 11, 13, 3, 2, 1, None),
        ("max_k2_s2_odd", "max_pool", 1, 3, 9, 7, 2, 2, 0, None),
        ("max_k3_s1_p1", "max_pool", 1, 6, 7, 5, 3, 1, 1, None),
        ("avg_k3_s2_p1_incl", "avg_pool", 2, 5, 11, 13, 3, 2, 1, True),
        ("avg_k3_s2_p1_excl", "avg_pool", 2, 5, 11, 13, 3, 2, 1, False),
        ("avg_k2_s2_odd", "avg_pool", 1, 3, 9, 7, 2, 2, 0, True),
        ("avg_k3_s1_p1_excl", "avg_pool", 1, 7, 5, 9, 3, 1, 1, False),
    ]
    for name, op, n, c, h, w, k, s, p, incl in cases:
        x = fam.uniform((n, c, h, w))
        if op == "max_pool":
            y = F.max_pool2d(d(x), k, stride=s, padding=p)
        else:
            y = F.avg_pool2d(d(x), k, stride=s, padding=p, count_include_pad=incl)
        params = dict(n=n, c=c, h=h, w=w, kernel=k, stride=s, pad=p,
                      out_h=y.shape[2], out_w=y.shape[3])
        if incl is not None:
            params["count_include_pad"] = incl
        fam.case(name, op, params, {"x": x}, y)
    for name, n, c, h, w in [
        ("gap_2x5x7x9", 2, 5, 7, 9),
        ("gap_1x6x23x19", 1, 6, 23, 19),
        ("gap_2x3x1x3", 2, 3, 1, 3),
    ]:
        x = fam.uniform((n, c, h, w))
        y = F.adaptive_avg_pool2d(d(x), 1)
        fam.case(name, "global_avg_pool", dict(n=n, c=c, h=h, w=w), {"x": x}, y)
    return fam.save(out_dir)


# --------------------------------------------------------------------------------------------
# eltwise


def eltwise(out_dir):
    fam = Family("eltwise", 1009)
    # (name, op, n, c, h, w, act); "mul_bcast" multiplies by b [N, C, 1, 1] (squeeze-excite)
    for name, op, n, c, h, w, act in [
        ("add_2x3x7x9", "add", 2, 3, 7, 9, "none"),
        ("add_relu_1x5x1x3", "add", 1, 5, 1, 3, "relu"),
        ("mul_2x5x9x11", "mul", 2, 5, 9, 11, "none"),
        ("mul_1x1x13x5", "mul", 1, 1, 13, 5, "none"),
        ("mul_bcast_2x6x5x7", "mul", 2, 6, 5, 7, "none"),
        ("affine_2x7x5x3", "affine", 2, 7, 5, 3, "none"),
        ("affine_leaky_1x3x11x9", "affine", 1, 3, 11, 9, "leaky"),
    ]:
        if op == "affine":
            x = fam.uniform((n, c, h, w))
            a = fam.uniform((c,), -2.0, 2.0)
            b = fam.uniform((c,), -1.0, 1.0)
            y = d(x) * d(a)[None, :, None, None] + d(b)[None, :, None, None]
            inputs = {"x": x, "scale": a, "shift": b}
        else:
            a = fam.uniform((n, c, h, w), -2.0, 2.0)
            bshape = (n, c, 1, 1) if "bcast" in name else (n, c, h, w)
            b = fam.uniform(bshape, -2.0, 2.0)
            y = torch.add(d(a), d(b)) if op == "add" else torch.mul(d(a), d(b))
            inputs = {"a": a, "b": b}
        y = activation(y, act)
        fam.case(name, op, dict(n=n, c=c, h=h, w=w, act=act, slope=LEAKY), inputs, y)
    return fam.save(out_dir)


# --------------------------------------------------------------------------------------------
# concat


def concat(out_dir):
    fam = Family("concat", 1011)
    # (name, n, [channels of each part], h, w); parts are tensors part0, part1, ...
    for name, n, parts, h, w in [
        ("cat_3_1_5", 2, [3, 1, 5], 7, 9),
        ("cat_4_4", 1, [4, 4], 5, 3),
        ("cat_2_7", 2, [2, 7], 1, 5),
    ]:
        xs = [fam.uniform((n, c, h, w)) for c in parts]
        y = torch.cat([d(x) for x in xs], dim=1)
        inputs = {f"part{i}": x for i, x in enumerate(xs)}
        fam.case(name, "concat", dict(n=n, parts=parts, h=h, w=w), inputs, y)
    return fam.save(out_dir)


# --------------------------------------------------------------------------------------------
# reduce


def reduce(out_dir):
    fam = Family("reduce", 1010)
    for name, n, f in [("l2_3x37", 3, 37), ("l2_2x512", 2, 512), ("l2_1x5", 1, 5)]:
        x = fam.uniform((n, f), -2.0, 2.0)
        y = F.normalize(d(x), p=2.0, dim=1, eps=L2_EPS)
        fam.case(name, "l2_normalize", dict(n=n, features=f, eps=L2_EPS), {"x": x}, y)
    for name, n, c, h, w in [
        ("softmax_2x5x7x9", 2, 5, 7, 9),
        ("softmax_1x3x11x13", 1, 3, 11, 13),
        ("softmax_2x19x3x5", 2, 19, 3, 5),
    ]:
        x = fam.uniform((n, c, h, w), -4.0, 4.0)
        y = torch.softmax(d(x), dim=1)
        fam.case(name, "softmax_channels", dict(n=n, c=c, h=h, w=w), {"x": x}, y)
    return fam.save(out_dir)


FAMILIES = [conv, pointwise, linear, modulate, norm, fusion, resample, pool, eltwise, concat,
            reduce]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                   "fixtures"))
    ap.add_argument("--models", action="store_true",
                    help="also regenerate the model goldens (tools/golden_models.py: seeded random "
                         "ArcFace and MobileFaceSwap checkpoints with the official names, in Paddle's "
                         "format, run through the PyTorch reference in tools/reference)")
    args = ap.parse_args()
    if args.models:
        import subprocess
        import sys
        subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "golden_models.py")],
                       check=True)
    os.makedirs(args.out, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    total = 0
    for fam in FAMILIES:
        path, size = fam(args.out)
        total += size
        print(f"{os.path.normpath(path)}: {size / 1024:.1f} KiB")
    print(f"total {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
