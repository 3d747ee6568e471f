#!/usr/bin/env python3
"""PyTorch goldens for the fswap kernel tests.

Run by developers only, when a kernel family or a case is added:

    pip install -r tools/requirements.txt
    python3 tools/golden.py [--out tests/fixtures]

It writes one small safetensors file per kernel family, ``tests/fixtures/<family>.safetensors``
(forward goldens, read by tests/kernels_golden.rs), and one per backward family,
``tests/fixtures/grads_kernels/<family>.safetensors`` (PyTorch autograd goldens of every backward
kernel and of the losses' gradient seeds, read by tests/kernels_grad_golden.rs; see "Backward
goldens" below). The fixtures are committed; ``cargo test`` (and CI) only reads them, so neither
needs Python or torch. This script is never on the runtime path.

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
import struct

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


# ============================================================================================
# Backward goldens: tests/fixtures/grads_kernels/<family>.safetensors
#
# Every case is a small PyTorch graph in float64 (the layer as the engine's autograd records it),
# a seeded upstream gradient dY, and torch.autograd.grad(sum(y * dY), leaves): the gradient of
# every input and every parameter. Tensors: ``<case>/<role>`` for the fp16-exact inputs and
# parameters (float32), ``<case>/dy`` (fp16-exact), ``<case>/grad.<role>`` (float64 results stored
# as float32) and, where a layer has state, ``<case>/<state>_out``. The case list (JSON, under
# ``cases``) names each case's op, parameters and ``grads`` (the roles with a gradient).


class GradFamily(Family):
    """A backward fixture file: cases of inputs, dY and PyTorch autograd gradients."""

    def normal16(self, shape, std=1.0):
        """N(0, std^2) float32, rounded to float16 values (kept as float32)."""
        t = torch.randn(shape, generator=self.gen, dtype=torch.float32) * std
        return t.half().float()

    def grad_case(self, name, op, params, inputs, fn, dy_std=1.0, state=None, no_grad=(),
                  seed_one=False):
        """Records a backward case. `inputs` are fp16-exact float32 tensors by role; `fn(leaves)`
        maps the float64 leaves (requires_grad except roles in `no_grad`) to the output `y`;
        dY ~ N(0, dy_std^2) rounded to fp16; the gradients of every leaf that requires one are
        autograd's of sum(y * dY). `state()` (optional), called after `fn`, returns extra float64
        tensors to store (e.g. updated running statistics). `seed_one`: dY = 1 (a loss, the
        head of the graph)."""
        assert not any(c["name"] == name for c in self.cases), name
        leaves = {}
        for role, t in inputs.items():
            assert t.dtype == torch.float32, (name, role)
            assert torch.equal(t, t.half().float()), f"{name}/{role} is not fp16-exact"
            self.tensors[f"{name}/{role}"] = t.contiguous()
            leaves[role] = d(t).requires_grad_(role not in no_grad)
        y = fn(leaves)
        assert y.dtype == torch.float64 and torch.isfinite(y).all(), name
        dy = torch.ones(tuple(y.shape)) if seed_one else self.normal16(tuple(y.shape), dy_std)
        self.tensors[f"{name}/dy"] = dy.contiguous()
        roles = [r for r in inputs if r not in no_grad]
        grads = torch.autograd.grad((y * d(dy)).sum(), [leaves[r] for r in roles],
                                    allow_unused=True)
        for role, g in zip(roles, grads):
            g = torch.zeros_like(leaves[role]) if g is None else g
            assert torch.isfinite(g).all(), (name, role)
            self.tensors[f"{name}/grad.{role}"] = g.detach().float().contiguous()
        if state is not None:
            for role, t in state().items():
                self.tensors[f"{name}/{role}"] = t.detach().float().contiguous()
        self.cases.append({"name": name, "op": op, "grads": roles, **params})

    def save(self, out_dir):
        """Writes the file deterministically (sorted header; safetensors' own writer orders
        several metadata keys at random)."""
        path = os.path.join(out_dir, f"{self.name}.safetensors")
        meta = {"cases": json.dumps(self.cases), "generator": "tools/golden.py", "how": GRAD_HOW}
        header, blobs, offset = {"__metadata__": meta}, [], 0
        for name in sorted(self.tensors):
            t = self.tensors[name]
            b = t.numpy().astype("<f4").tobytes()
            header[name] = {"dtype": "F32", "shape": list(t.shape),
                            "data_offsets": [offset, offset + len(b)]}
            blobs.append(b)
            offset += len(b)
        h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
        return path, os.path.getsize(path)


GRAD_HOW = ("inputs and parameters drawn in float32 (uniform unless stated), rounded to float16; "
            "dY ~ N(0, 1) rounded to float16; y computed by PyTorch float64 operators; "
            "grad.<role> = torch.autograd.grad(sum(y * dY), role) in float64, stored as float32")


def act64(y, act, slope=LEAKY):
    """An activation on a float64 tensor by the engine's name (PyTorch's functions, whose
    backward rules the engine follows: no gradient at the ReLU kinks, the leaky slope at 0)."""
    if act == "leaky":
        return F.leaky_relu(y, slope)
    return activation(y, act)


def conv_grad(out_dir):
    fam = GradFamily("conv", 2001)
    # (name, n, cin, cout, h, w, k, stride, pad, groups, padding, act, bias)
    #   padding "same": TensorFlow / Keras 'same' (ConvSpec::same): the odd remainder at the end.
    #   Sizes pick the engine's paths: dY of <= 64 quads in all (batch included) takes the
    #   one-invocation-per-weight dW path, more the tiled one; x and y widths that are multiples of
    #   4 with zero padding and stride 1 take the row-quad dX / dW paths.
    cases = [
        ("dense_k3_relu_bias_small", 2, 5, 6, 9, 11, 3, 1, 1, 1, "zero", "relu", True),
        ("dense_k3_rows_tiled", 2, 3, 7, 16, 12, 3, 1, 1, 1, "zero", "none", True),
        ("dense_k3_s2_reflect_leaky", 2, 6, 5, 23, 21, 3, 2, 1, 1, "reflect", "leaky", True),
        ("dense_k5_s2_same_even_sigmoid", 2, 4, 6, 12, 10, 5, 2, None, 1, "same", "sigmoid", True),
        ("dense_k5_s2_same_odd_tanh", 1, 3, 9, 19, 17, 5, 2, None, 1, "same", "tanh", False),
        ("dense_k5_s1_reflect", 1, 4, 5, 13, 11, 5, 1, 2, 1, "reflect", "none", True),
        ("dense_k1_pointwise_relu6", 2, 13, 6, 7, 9, 1, 1, 0, 1, "zero", "relu6", True),
        ("dense_k1_s2_downsample", 2, 6, 10, 15, 13, 1, 2, 0, 1, "zero", "none", False),
        ("grouped_g2_k3", 2, 6, 4, 11, 9, 3, 1, 1, 2, "zero", "relu", True),
        ("dw_k3_small_relu", 2, 7, 7, 9, 7, 3, 1, 1, 7, "zero", "relu", True),
        ("dw_k3_s2_tiled", 2, 10, 10, 25, 23, 3, 2, 1, 10, "zero", "none", True),
        ("dw_k3_rows", 2, 6, 6, 12, 16, 3, 1, 1, 6, "zero", "leaky", False),
        ("dw_k5_s2_reflect", 1, 5, 5, 21, 19, 5, 2, 2, 5, "reflect", "tanh", True),
        ("dw_k4_s2_idn", 2, 3, 3, 18, 14, 4, 2, 1, 3, "zero", "none", False),
    ]
    for name, n, cin, cout, h, w, k, s, p, g, padding, act, bias in cases:
        x = fam.uniform((n, cin, h, w))
        fan_in = cin // g * k * k
        bound = (3.0 / fan_in) ** 0.5
        wt = fam.uniform((cout, cin // g, k, k), -bound, bound)
        inputs = {"x": x, "weight": wt}
        if bias:
            inputs["bias"] = fam.uniform((cout,), -0.5, 0.5)
        if padding == "same":
            def split(size):
                out = -(-size // s)
                total = max((out - 1) * s + k - size, 0)
                return total // 2, total - total // 2
            (pt, pb), (pl, pr) = split(h), split(w)
            pads, conv_pad = (pl, pr, pt, pb), 0
            params_pad = dict(pad=None, pad_before=[pt, pl], pad_after=[pb, pr])
        elif padding == "reflect":
            pads, conv_pad = None, 0
            params_pad = dict(pad=p)
        else:
            pads, conv_pad = None, p
            params_pad = dict(pad=p)

        def fn(v, padding=padding, pads=pads, conv_pad=conv_pad, p=p, s=s, g=g, act=act):
            xx = v["x"]
            if padding == "reflect":
                xx = F.pad(xx, (p, p, p, p), mode="reflect")
            elif padding == "same":
                xx = F.pad(xx, pads)
            z = F.conv2d(xx, v["weight"], v.get("bias"), stride=s, padding=conv_pad, groups=g)
            return act64(z, act)

        params = dict(n=n, cin=cin, cout=cout, h=h, w=w, kernel=k, stride=s, groups=g,
                      padding=padding, act=act, slope=LEAKY, bias=bias, **params_pad)
        fam.grad_case(name, "conv2d", params, inputs, fn)
    return fam.save(out_dir)


def dynamic_grad(out_dir):
    """Convolutions whose weights are values (predicted depthwise kernels, modulated pointwise
    kernels): the gradient flows into the weights as into an activation."""
    fam = GradFamily("dynamic", 2002)
    # depthwise: (name, n, c, h, w, k, stride, pad, per_sample, act)
    for name, n, c, h, w, k, s, p, per_sample, act in [
        ("dw_shared_k4_s2", 2, 5, 14, 10, 4, 2, 1, False, "none"),
        ("dw_shared_k3_leaky", 2, 6, 9, 11, 3, 1, 1, False, "leaky"),
        ("dw_per_sample_k3", 2, 7, 11, 9, 3, 1, 1, True, "none"),
        ("dw_per_sample_k4_s2_relu", 3, 3, 10, 12, 4, 2, 1, True, "relu"),
    ]:
        x = fam.uniform((n, c, h, w))
        wt = fam.uniform((n if per_sample else 1, c, k, k), -0.5, 0.5)

        def fn(v, n=n, c=c, s=s, p=p, per_sample=per_sample, act=act):
            if per_sample:
                z = torch.cat([F.conv2d(v["x"][i:i + 1], v["weight"][i][:, None], stride=s,
                                        padding=p, groups=c) for i in range(n)])
            else:
                z = F.conv2d(v["x"], v["weight"][0][:, None], stride=s, padding=p, groups=c)
            return act64(z, act)

        params = dict(n=n, c=c, h=h, w=w, kernel=k, stride=s, pad=p, per_sample=per_sample,
                      act=act, slope=LEAKY, weight_layout="[n_w, C, k, k]")
        fam.grad_case(name, "depthwise_dynamic", params, {"x": x, "weight": wt}, fn)
    # pointwise: (name, n, cin, cout, h, w, per_sample, act)
    for name, n, cin, cout, h, w, per_sample, act in [
        ("pw_shared_5to7", 2, 5, 7, 9, 11, False, "leaky"),
        ("pw_per_sample_6to9", 2, 6, 9, 7, 5, True, "none"),
        ("pw_per_sample_13to3_relu", 3, 13, 3, 5, 9, True, "relu"),
    ]:
        x = fam.uniform((n, cin, h, w))
        wt = fam.uniform((n if per_sample else 1, cout, cin), -(3.0 / cin) ** 0.5,
                         (3.0 / cin) ** 0.5)

        def fn(v, n=n, per_sample=per_sample, act=act):
            if per_sample:
                z = torch.einsum("noi,nihw->nohw", v["weight"], v["x"])
            else:
                z = torch.einsum("oi,nihw->nohw", v["weight"][0], v["x"])
            return act64(z, act)

        params = dict(n=n, cin=cin, cout=cout, h=h, w=w, per_sample=per_sample, act=act,
                      slope=LEAKY, weight_layout="[n_w, cout, cin] (PyTorch)")
        fam.grad_case(name, "pointwise_dynamic", params, {"x": x, "weight": wt}, fn)
    # modulated pointwise, as the IDN's modulations feed its pointwise convolutions:
    # W'' = demod(W * (s + bias)), y = act(conv1x1(x, W''[n])) per sample.
    for name, n, cin, cout, h, w, demod, bias, act in [
        ("modulated_pw_demod", 2, 6, 5, 7, 9, True, 1.0, "leaky"),
        ("modulated_pw_nodemod", 2, 5, 3, 5, 7, False, 0.0, "none"),
    ]:
        x = fam.uniform((n, cin, h, w))
        wt = fam.uniform((cout, cin, 1, 1), -1.0, 1.0)
        style = fam.uniform((n, cin), -0.8, 0.8)

        def fn(v, demod=demod, bias=bias, act=act):
            wp = v["weight"][None, :, :, 0, 0] * (v["style"] + bias)[:, None, :]
            if demod:
                wp = wp * torch.rsqrt((wp * wp).sum(dim=2, keepdim=True) + DEMOD_EPS)
            return act64(torch.einsum("noi,nihw->nohw", wp, v["x"]), act)

        params = dict(n=n, cin=cin, cout=cout, h=h, w=w, demod=demod, style_bias=bias,
                      eps=DEMOD_EPS, act=act, slope=LEAKY)
        fam.grad_case(name, "modulated_pointwise", params,
                      {"x": x, "weight": wt, "style": style}, fn)
    return fam.save(out_dir)


def modulate_grad(out_dir):
    fam = GradFamily("modulate", 2003)
    # (name, n, out, in, demod, style bias)
    for name, n, o, i, demod, bias in [
        ("mod_demod_2x6x5", 2, 6, 5, True, 1.0),
        ("mod_demod_1x17x13", 1, 17, 13, True, 1.0),
        ("mod_nodemod_2x7x9", 2, 7, 9, False, 1.0),
        ("mod_demod_3x4x64_bias0", 3, 4, 64, True, 0.0),
    ]:
        wt = fam.uniform((o, i, 1, 1))
        s = fam.uniform((n, i), -0.8, 0.8)

        def fn(v, demod=demod, bias=bias):
            wp = v["weight"][None, :, :, 0, 0] * (v["style"] + bias)[:, None, :]
            if demod:
                wp = wp * torch.rsqrt((wp * wp).sum(dim=2, keepdim=True) + DEMOD_EPS)
            return wp

        params = dict(n=n, out_features=o, in_features=i, demod=demod, style_bias=bias,
                      eps=DEMOD_EPS, y_layout="[n, out, in]")
        fam.grad_case(name, "modulate", params, {"weight": wt, "style": s}, fn)
    return fam.save(out_dir)


def norm_grad(out_dir):
    fam = GradFamily("norm", 2004)

    def spread_x(shape, c):
        # a per-channel offset and spread, so the statistics are not trivially ~0 and ~1/3
        x = fam.uniform(shape) * fam.uniform((1, c) + (1,) * (len(shape) - 2), 0.5, 3.0) \
            + fam.uniform((1, c) + (1,) * (len(shape) - 2), -1.0, 1.0)
        return x.half().float()

    # batch norm (the trainer's BatchNorm): (name, mode, x shape, act)
    #   train: batch statistics (biased variance), running statistics updated with momentum 0.1
    #   (PyTorch: running = 0.9 running + 0.1 batch, the variance unbiased): *_out are the updated
    #   running statistics; eval: the running statistics. [N, F] shapes are BatchNorm1d.
    for name, mode, shape, act in [
        ("bn_train_2x5x7x9", "train", (2, 5, 7, 9), "none"),
        ("bn_train_relu_1x3x11x13", "train", (1, 3, 11, 13), "relu"),
        ("bn_train_leaky_3x6x5x3", "train", (3, 6, 5, 3), "leaky"),
        ("bn_train_big_2x3x37x29", "train", (2, 3, 37, 29), "none"),
        ("bn_train_features_4x13", "train", (4, 13), "none"),
        ("bn_train_features_sigmoid_3x6", "train", (3, 6), "sigmoid"),
        ("bn_eval_2x5x7x9", "eval", (2, 5, 7, 9), "none"),
        ("bn_eval_tanh_2x3x5x7", "eval", (2, 3, 5, 7), "tanh"),
        ("bn_eval_features_2x9", "eval", (2, 9), "none"),
    ]:
        c = shape[1]
        x = spread_x(shape, c)
        inputs = {"x": x, "gamma": fam.uniform((c,), 0.5, 1.5),
                  "beta": fam.uniform((c,), -0.5, 0.5),
                  "running_mean": fam.uniform((c,), -1.0, 1.0),
                  "running_var": fam.uniform((c,), 0.25, 4.0)}
        rm = d(inputs["running_mean"]).clone()
        rv = d(inputs["running_var"]).clone()

        def fn(v, mode=mode, act=act, rm=rm, rv=rv):
            y = F.batch_norm(v["x"], rm, rv, v["gamma"], v["beta"], training=mode == "train",
                             momentum=BN_MOMENTUM, eps=IN_EPS)
            return act64(y, act)

        params = dict(mode=mode, shape=list(shape), c=c, eps=IN_EPS, momentum=BN_MOMENTUM,
                      act=act, slope=LEAKY)
        fam.grad_case(name, "batch_norm", params, inputs, fn,
                      state=lambda rm=rm, rv=rv: {"running_mean_out": rm, "running_var_out": rv},
                      no_grad=("running_mean", "running_var"))
    # instance norm / AdaIN / conditional batch norm (the inference Norm family's backward):
    #   instance_norm: gamma/beta [C]; adain: style [N, 2C] = [gamma | beta], y = IN(x)(1 + g) + b;
    #   cond_batch_norm: running statistics [C] (constants), the same style affine.
    for name, op, n, c, h, w, act in [
        ("in_static_2x5x7x9", "instance_norm", 2, 5, 7, 9, "none"),
        ("in_static_relu_1x3x13x11", "instance_norm", 1, 3, 13, 11, "relu"),
        ("adain_2x6x9x11", "adain", 2, 6, 9, 11, "none"),
        ("adain_leaky_2x3x13x5", "adain", 2, 3, 13, 5, "leaky"),
        ("cbn_2x5x7x9", "cond_batch_norm", 2, 5, 7, 9, "none"),
        ("cbn_relu_2x7x5x3", "cond_batch_norm", 2, 7, 5, 3, "relu"),
    ]:
        x = spread_x((n, c, h, w), c)
        inputs = {"x": x}
        no_grad = ()
        if op == "instance_norm":
            inputs["gamma"] = fam.uniform((c,), 0.5, 1.5)
            inputs["beta"] = fam.uniform((c,), -0.5, 0.5)
        else:
            inputs["style"] = torch.cat([fam.uniform((n, c), -0.5, 0.5),
                                         fam.uniform((n, c), -0.5, 0.5)], dim=1)
        if op == "cond_batch_norm":
            inputs["running_mean"] = fam.uniform((c,), -1.0, 1.0)
            inputs["running_var"] = fam.uniform((c,), 0.25, 4.0)
            no_grad = ("running_mean", "running_var")

        def fn(v, op=op, c=c, act=act):
            if op == "instance_norm":
                y = F.instance_norm(v["x"], weight=v["gamma"], bias=v["beta"], eps=IN_EPS)
            else:
                g = 1.0 + v["style"][:, :c, None, None]
                b = v["style"][:, c:, None, None]
                if op == "adain":
                    z = F.instance_norm(v["x"], eps=IN_EPS)
                else:
                    z = F.batch_norm(v["x"], v["running_mean"], v["running_var"], training=False,
                                     eps=IN_EPS)
                y = z * g + b
            return act64(y, act)

        params = dict(n=n, c=c, h=h, w=w, eps=IN_EPS, act=act, slope=LEAKY, gamma_bias=1.0,
                      style_layout="[N, 2C] = [gamma | beta]")
        fam.grad_case(name, op, params, inputs, fn, no_grad=no_grad)
    return fam.save(out_dir)


def linear_grad(out_dir):
    fam = GradFamily("linear", 2005)
    # (name, x shape, out features, act, bias); an NCHW x is flattened per sample (C*H*W features)
    for name, xshape, out_f, act, bias in [
        ("fc_map_2x5x3x3_to_7", (2, 5, 3, 3), 7, "none", True),
        ("fc_3x37_to_10_relu", (3, 37), 10, "relu", True),
        ("fc_1x512_to_13_leaky", (1, 512), 13, "leaky", True),
        ("fc_2x1x7x9_to_6_tanh", (2, 1, 7, 9), 6, "tanh", True),
        ("fc_5x64_to_3_sigmoid_nobias", (5, 64), 3, "sigmoid", False),
        ("fc_map_2x8x7x7_to_5", (2, 8, 7, 7), 5, "none", True),
    ]:
        x = fam.uniform(xshape)
        n = xshape[0]
        feat = x[0].numel()
        bnd = (3.0 / feat) ** 0.5
        inputs = {"x": x, "weight": fam.uniform((out_f, feat), -bnd, bnd)}
        if bias:
            inputs["bias"] = fam.uniform((out_f,), -0.5, 0.5)

        def fn(v, n=n, feat=feat, act=act):
            return act64(F.linear(v["x"].reshape(n, feat), v["weight"], v.get("bias")), act)

        params = dict(n=n, x_shape=list(xshape), in_features=feat, out_features=out_f, act=act,
                      slope=LEAKY, bias=bias)
        fam.grad_case(name, "linear", params, inputs, fn)
    return fam.save(out_dir)


def eltwise_grad(out_dir):
    fam = GradFamily("eltwise", 2006)
    # activations alone (dx from the forward output): (name, act, n, c, h, w, lo, hi)
    for name, act, n, c, h, w, lo, hi in [
        ("act_none_2x3x5x7", "none", 2, 3, 5, 7, -2.0, 2.0),
        ("act_relu_2x5x7x9", "relu", 2, 5, 7, 9, -2.0, 2.0),
        ("act_relu6_1x3x9x11", "relu6", 1, 3, 9, 11, -2.0, 8.0),
        ("act_leaky_2x7x5x3", "leaky", 2, 7, 5, 3, -2.0, 2.0),
        ("act_sigmoid_2x5x7x9", "sigmoid", 2, 5, 7, 9, -6.0, 6.0),
        ("act_tanh_1x6x11x13", "tanh", 1, 6, 11, 13, -3.0, 3.0),
    ]:
        x = fam.uniform((n, c, h, w), lo, hi)
        params = dict(n=n, c=c, h=h, w=w, act=act, slope=LEAKY)
        fam.grad_case(name, "activation", params, {"x": x}, lambda v, act=act: act64(v["x"], act))
    # PReLU with learned slopes: shared (one), per channel, per feature of a vector [N, F].
    # Large cases span several reduction chunks; the 55x55 one has ArcFace's odd plane.
    for name, shape, mode in [
        ("prelu_shared_2x5x7x9", (2, 5, 7, 9), "shared"),
        ("prelu_channels_2x6x9x11", (2, 6, 9, 11), "channels"),
        ("prelu_channels_chunks_2x3x37x29", (2, 3, 37, 29), "channels"),
        ("prelu_shared_chunks_1x6x55x55", (1, 6, 55, 55), "shared"),
        ("prelu_features_3x13", (3, 13), "features"),
        ("prelu_features_shared_2x6", (2, 6), "shared"),
    ]:
        x = fam.uniform(shape, -1.5, 1.0)
        count = 1 if mode == "shared" else shape[1]
        slope = fam.uniform((count,), -0.1, 0.4)

        def fn(v, shape=shape, mode=mode):
            if len(shape) == 2 and mode != "shared":
                return torch.where(v["x"] >= 0, v["x"], v["x"] * v["slope"][None, :])
            return F.prelu(v["x"], v["slope"])

        params = dict(shape=list(shape), mode=mode)
        fam.grad_case(name, "prelu", params, {"x": x, "slope": slope}, fn)
    # One PReLU module applied twice, as ArcFace's IR block: y = prelu(prelu(x) * g + x). The
    # slope's gradient sums both uses, x's gradient both paths (the graph's gradient sums).
    for name, shape in [("prelu_twice_shared_2x4x9x7", (2, 4, 9, 7))]:
        x = fam.uniform(shape, -1.5, 1.0)
        g = fam.uniform(shape, -1.0, 1.0)
        slope = fam.uniform((1,), 0.1, 0.3)

        def fn(v):
            h = F.prelu(v["x"], v["slope"])
            return F.prelu(h * v["g"] + v["x"], v["slope"])

        fam.grad_case(name, "prelu_twice", dict(shape=list(shape)),
                      {"x": x, "g": g, "slope": slope}, fn)
    # a * g: g of a's shape, per channel [N, C, 1, 1], or a vector [N, C] (engine [N, 1, 1, C])
    for name, n, c, h, w, gate in [
        ("mul_same_2x5x9x11", 2, 5, 9, 11, "same"),
        ("mul_channel_2x6x5x7", 2, 6, 5, 7, "channel"),
        ("mul_vector_2x7x9x5", 2, 7, 9, 5, "vector"),
        ("mul_vector_big_1x3x37x29", 1, 3, 37, 29, "vector"),
    ]:
        a = fam.uniform((n, c, h, w), -2.0, 2.0)
        gshape = {"same": (n, c, h, w), "channel": (n, c, 1, 1), "vector": (n, c)}[gate]
        g = fam.uniform(gshape, -2.0, 2.0)

        def fn(v, gate=gate):
            gg = v["g"][:, :, None, None] if gate == "vector" else v["g"]
            return v["a"] * gg

        fam.grad_case(name, "mul", dict(n=n, c=c, h=h, w=w, gate=gate), {"a": a, "g": g}, fn)
    # a + b with b of a's shape (db = dy) or broadcast per channel ([N, C, 1, 1] or a vector
    # [N, C]): db = sum_hw dy
    for name, n, c, h, w, bshape in [
        ("add_same_2x3x5x7", 2, 3, 5, 7, "same"),
        ("add_channel_2x5x7x9", 2, 5, 7, 9, "channel"),
        ("add_vector_2x6x11x13", 2, 6, 11, 13, "vector"),
    ]:
        a = fam.uniform((n, c, h, w))
        b = fam.uniform({"same": (n, c, h, w), "channel": (n, c, 1, 1), "vector": (n, c)}[bshape])

        def fn(v, bshape=bshape):
            bb = v["b"][:, :, None, None] if bshape == "vector" else v["b"]
            return v["a"] + bb

        fam.grad_case(name, "add_broadcast", dict(n=n, c=c, h=h, w=w, b=bshape),
                      {"a": a, "b": b}, fn, no_grad=("a",))
    # y = a * scale[c] + shift[c] with constants
    for name, n, c, h, w in [("affine_2x7x5x3", 2, 7, 5, 3), ("affine_1x3x11x9", 1, 3, 11, 9)]:
        a = fam.uniform((n, c, h, w))
        scale = fam.uniform((c,), -2.0, 2.0)
        shift = fam.uniform((c,), -1.0, 1.0)

        def fn(v):
            return v["a"] * v["scale"][None, :, None, None] + v["shift"][None, :, None, None]

        fam.grad_case(name, "affine", dict(n=n, c=c, h=h, w=w),
                      {"a": a, "scale": scale, "shift": shift}, fn, no_grad=("scale", "shift"))
    return fam.save(out_dir)


def fusion_grad(out_dir):
    fam = GradFamily("fusion", 2007)
    # y = m' a + (1 - m') b, m' = m (raw, as the autograd graph) or sigmoid(m)
    for name, n, c, h, w, sig in [
        ("blend_raw_2x3x7x9", 2, 3, 7, 9, False),
        ("blend_raw_1x1x13x5", 1, 1, 13, 5, False),
        ("blend_sigmoid_2x5x9x11", 2, 5, 9, 11, True),
        ("blend_sigmoid_1x6x5x3", 1, 6, 5, 3, True),
    ]:
        a = fam.uniform((n, c, h, w))
        b = fam.uniform((n, c, h, w))
        m = fam.uniform((n, 1, h, w), -4.0, 4.0) if sig else fam.uniform((n, 1, h, w), 0.0, 1.0)

        def fn(v, sig=sig):
            mm = torch.sigmoid(v["mask"]) if sig else v["mask"]
            return mm * v["a"] + (1.0 - mm) * v["b"]

        fam.grad_case(name, "blend", dict(n=n, c=c, h=h, w=w, sigmoid=sig),
                      {"a": a, "b": b, "mask": m}, fn)
    return fam.save(out_dir)


def resample_grad(out_dir):
    fam = GradFamily("resample", 2008)
    # (name, op, n, c, h, w, ho, wo, align_corners)
    for name, op, n, c, h, w, ho, wo, align in [
        ("bilinear_x2", "bilinear", 2, 3, 7, 9, 14, 18, False),
        ("bilinear_x2_align", "bilinear", 1, 5, 7, 9, 14, 18, True),
        ("bilinear_up_odd", "bilinear", 1, 3, 7, 9, 13, 20, False),
        ("bilinear_up_odd_align", "bilinear", 2, 2, 7, 9, 13, 20, True),
        ("bilinear_down", "bilinear", 1, 3, 15, 17, 6, 5, False),
        ("bilinear_down_align", "bilinear", 1, 3, 15, 17, 6, 5, True),
        ("bilinear_mixed", "bilinear", 1, 2, 11, 6, 5, 13, False),
        ("bilinear_mixed_align", "bilinear", 2, 3, 6, 11, 13, 5, True),
        ("nearest_x2", "nearest", 2, 3, 5, 7, 10, 14, None),
        ("nearest_up_odd", "nearest", 1, 5, 7, 9, 13, 20, None),
        ("nearest_down", "nearest", 1, 3, 15, 17, 6, 5, None),
    ]:
        x = fam.uniform((n, c, h, w))

        def fn(v, op=op, ho=ho, wo=wo, align=align):
            if op == "bilinear":
                return F.interpolate(v["x"], size=(ho, wo), mode="bilinear", align_corners=align)
            return F.interpolate(v["x"], size=(ho, wo), mode="nearest")

        params = dict(n=n, c=c, h=h, w=w, out_h=ho, out_w=wo)
        if align is not None:
            params["align_corners"] = align
        fam.grad_case(name, op, params, {"x": x}, fn)
    for name, n, c, h, w, r in [
        ("pixel_shuffle_r2", 2, 12, 5, 7, 2),
        ("pixel_shuffle_r3", 1, 18, 3, 5, 3),
    ]:
        x = fam.uniform((n, c, h, w))
        params = dict(n=n, c=c, h=h, w=w, factor=r, out_h=h * r, out_w=w * r)
        fam.grad_case(name, "pixel_shuffle", params, {"x": x},
                      lambda v, r=r: F.pixel_shuffle(v["x"], r))
    return fam.save(out_dir)


def pool_grad(out_dir):
    fam = GradFamily("pool", 2009)
    # (name, op, n, c, h, w, k, stride, pad, count_include_pad)
    for name, op, n, c, h, w, k, s, p, incl in [
        ("max_k3_s2_p1", "max_pool", 2, 5, 11, 13, 3, 2, 1, None),
        ("max_k2_s2_odd", "max_pool", 2, 3, 9, 7, 2, 2, 0, None),
        ("max_k3_s1_p1", "max_pool", 1, 6, 7, 5, 3, 1, 1, None),
        ("avg_k3_s2_p1_incl", "avg_pool", 2, 5, 11, 13, 3, 2, 1, True),
        ("avg_k3_s2_p1_excl", "avg_pool", 2, 5, 11, 13, 3, 2, 1, False),
        ("avg_k2_s2_odd", "avg_pool", 1, 3, 9, 7, 2, 2, 0, True),
        ("avg_k3_s1_p1_excl", "avg_pool", 1, 7, 5, 9, 3, 1, 1, False),
        ("gap_2x5x7x9", "global_avg_pool", 2, 5, 7, 9, None, None, None, None),
        ("gap_1x6x23x19", "global_avg_pool", 1, 6, 23, 19, None, None, None, None),
    ]:
        # distinct values, so no window has a tie (PyTorch and the engine both take the first
        # maximum, but a tie would test that rule, not the gradient)
        numel = n * c * h * w
        perm = torch.randperm(numel, generator=fam.gen).float()
        x = ((perm / numel) * 2.0 - 1.0).reshape(n, c, h, w).half().float()
        assert x.flatten().unique().numel() == numel or op != "max_pool", name

        def fn(v, op=op, k=k, s=s, p=p, incl=incl):
            if op == "max_pool":
                return F.max_pool2d(v["x"], k, stride=s, padding=p)
            if op == "avg_pool":
                return F.avg_pool2d(v["x"], k, stride=s, padding=p, count_include_pad=incl)
            return F.adaptive_avg_pool2d(v["x"], 1)

        params = dict(n=n, c=c, h=h, w=w)
        if k is not None:
            params.update(kernel=k, stride=s, pad=p)
        if incl is not None:
            params["count_include_pad"] = incl
        fam.grad_case(name, op, params, {"x": x}, fn)
    return fam.save(out_dir)


def concat_grad(out_dir):
    fam = GradFamily("concat", 2010)
    for name, n, parts, h, w in [
        ("cat_3_1_5", 2, [3, 1, 5], 7, 9),
        ("cat_4_4", 1, [4, 4], 5, 3),
        ("cat_2_7_6", 2, [2, 7, 6], 1, 5),
    ]:
        inputs = {f"part{i}": fam.uniform((n, c, h, w)) for i, c in enumerate(parts)}
        fam.grad_case(name, "concat", dict(n=n, parts=parts, h=h, w=w), inputs,
                      lambda v, k=len(parts): torch.cat([v[f"part{i}"] for i in range(k)], dim=1))
    return fam.save(out_dir)


def reduce_grad(out_dir):
    fam = GradFamily("reduce", 2011)
    for name, n, f in [("l2_3x37", 3, 37), ("l2_2x512", 2, 512), ("l2_1x5", 1, 5)]:
        x = fam.uniform((n, f), -2.0, 2.0)
        fam.grad_case(name, "l2_normalize", dict(n=n, features=f, eps=L2_EPS), {"x": x},
                      lambda v: F.normalize(v["x"], p=2.0, dim=1, eps=L2_EPS))
    for name, n, c, h, w in [
        ("softmax_2x5x7x9", 2, 5, 7, 9),
        ("softmax_1x3x11x13", 1, 3, 11, 13),
        ("softmax_2x19x3x5", 2, 19, 3, 5),
    ]:
        x = fam.uniform((n, c, h, w), -4.0, 4.0)
        fam.grad_case(name, "softmax_channels", dict(n=n, c=c, h=h, w=w), {"x": x},
                      lambda v: torch.softmax(v["x"], dim=1))
    return fam.save(out_dir)


def ssim_window(k, sigma):
    """faceswap's DSSIMObjective window: the outer product of a normalised 1-D Gaussian."""
    x = torch.arange(k, dtype=torch.float64) - (k - 1) / 2.0
    g = torch.exp(-0.5 * x * x / (sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(x, y, k, sigma, c1, c2):
    """Per-position SSIM (valid windows, per channel) as faceswap computes it:
    E[xy] - mu_x mu_y for the (co)variances."""
    c = x.shape[1]
    w = ssim_window(k, sigma)[None, None].repeat(c, 1, 1, 1)

    def f(t):
        return F.conv2d(t, w, groups=c)

    mx, my = f(x), f(y)
    sxx = f(x * x) - mx * mx
    syy = f(y * y) - my * my
    sxy = f(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def loss_grad(out_dir):
    """The losses: their value and their gradient seed (scale * d total / d prediction), against
    autograd of the same formula (kernels::loss module docs). "dy" is 1 (the loss is the head);
    total_out is lambda * sum_n w_n l_n / N (or / active samples), values_out the per-sample l_n."""
    fam = GradFamily("loss", 2012)
    # pixel: (name, distance, apply, normalize, factor, weight, mask, target, per-sample w, scale)
    for name, dist, apply, norm, factor, lam, mask, target, weighted, scale, shape in [
        ("l1_mean", "l1", "weight", "elements", 1.0, 1.0, None, True, False, 1.0, (2, 3, 7, 9)),
        ("mse_mean_weighted", "mse", "weight", "elements", 1.0, 2.0, None, True, True, 16.0,
         (3, 2, 5, 7)),
        ("l1_masksum_broadcast", "l1", "weight", "mask_sum", 1.0, 1.0, "broadcast", True, False,
         32.0, (2, 3, 9, 11)),
        ("mse_masksum_full", "mse", "weight", "mask_sum", 1.0, 1.0, "full", True, True, 8.0,
         (2, 2, 6, 5)),
        ("faceswap_penalized_l1", "l1", "inputs", "elements", 1.0, 1.0, "broadcast", True, False,
         64.0, (2, 3, 8, 8)),
        ("faceswap_penalized_mse", "mse", "inputs", "elements", 1.0, 1.0, "broadcast", True, False,
         64.0, (1, 3, 9, 7)),
        ("mobilefsgan_rec", "mse", "weight", "batch_mask_sum", 0.5, 1.0, "broadcast", True, False,
         16.0, (2, 3, 7, 9)),
        ("mask_loss_bg", "l1", "weight", "mask_sum", 1.0, 1.0, "broadcast", False, False, 16.0,
         (2, 1, 9, 11)),
    ]:
        n, c, h, w = shape
        inputs = {"pred": fam.uniform(shape, 0.0, 1.0)}
        if target:
            inputs["target"] = fam.uniform(shape, 0.0, 1.0)
        if mask == "broadcast":
            inputs["mask"] = (fam.uniform((n, 1, h, w), 0.0, 1.0) > 0.3).float() \
                * fam.uniform((n, 1, h, w), 0.5, 1.0)
        elif mask == "full":
            inputs["mask"] = fam.uniform(shape, 0.0, 1.0)
        if mask is not None:
            inputs["mask"] = inputs["mask"].half().float()
        if weighted:
            inputs["weights"] = fam.uniform((n,), 0.2, 1.5)
        no_grad = tuple(r for r in inputs if r != "pred")
        vals = {}

        def fn(v, dist=dist, apply=apply, norm=norm, factor=factor, lam=lam, n=n, vals=vals):
            dd = v["pred"] - v["target"] if "target" in v else v["pred"]
            m = v.get("mask")
            if m is not None and apply == "inputs":
                e, k = m * dd, 1.0
            else:
                e, k = dd, (1.0 if m is None else m)
            phi = e.abs() if dist == "l1" else e * e
            ssum = (k * phi).flatten(1).sum(1) if m is not None and apply == "weight" \
                else phi.flatten(1).sum(1)
            if norm == "elements":
                denom = torch.full((n,), float(dd[0].numel()), dtype=torch.float64)
            else:
                msum = m.flatten(1).sum(1)
                denom = msum if norm == "mask_sum" else msum.mean().expand(n)
            ln = factor * torch.where(denom > 0, ssum / denom.clamp_min(1e-300),
                                      torch.zeros_like(ssum))
            wn = v["weights"] if "weights" in v else torch.ones(n, dtype=torch.float64)
            vals["values_out"] = ln.detach()
            total = lam * (wn * ln).sum() / n
            vals["total_out"] = total.detach().reshape(1)
            return total * scale

        params = dict(kind="pixel", shape=list(shape), distance=dist, apply=apply,
                      normalize=norm, factor=factor, weight=lam, mask=mask, scale=scale,
                      weighted=weighted)
        fam.grad_case(name, "pixel", params, inputs, fn, state=lambda vals=vals: vals,
                      no_grad=no_grad, seed_one=True)
    # SSIM (faceswap's DSSIMObjective; valid 11x11 Gaussian window, sigma 1.5)
    for name, shape, k, sigma, form, mask, scale in [
        ("dssim_faceswap", (2, 3, 16, 15), 11, 1.5, "dssim", None, 64.0),
        ("dssim_masked", (1, 3, 14, 17), 11, 1.5, "dssim", "broadcast", 64.0),
        ("one_minus_ssim_k7", (2, 2, 12, 13), 7, 1.0, "one_minus", None, 32.0),
    ]:
        n, c, h, w = shape
        # a target near the prediction (SSIM well above 0, as in training)
        pred = fam.uniform(shape, 0.0, 1.0)
        target = (pred + fam.uniform(shape, -0.2, 0.2)).clamp(0.0, 1.0).half().float()
        inputs = {"pred": pred, "target": target}
        if mask:
            inputs["mask"] = fam.uniform((n, 1, h, w), 0.0, 1.0)
        c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
        vals = {}

        def fn(v, k=k, sigma=sigma, form=form, n=n, vals=vals, c1=c1, c2=c2):
            x, y = v["pred"], v["target"]
            if "mask" in v:
                x, y = x * v["mask"], y * v["mask"]
            s_n = ssim_map(x, y, k, sigma, c1, c2).flatten(1).mean(1)
            ln = (1.0 - s_n) / 2.0 if form == "dssim" else 1.0 - s_n
            vals["values_out"] = ln.detach()
            total = ln.sum() / n
            vals["total_out"] = total.detach().reshape(1)
            return total * scale

        params = dict(kind="ssim", shape=list(shape), window=k, sigma=sigma, k1=0.01, k2=0.03,
                      max_value=1.0, form=form, mask=mask, scale=scale)
        fam.grad_case(name, "ssim", params, inputs, fn, state=lambda vals=vals: vals,
                      no_grad=tuple(r for r in inputs if r != "pred"), seed_one=True)
    # identity: l_n = 1 - cos(a_n, b_n), or relu(1 - cos - margin) / active samples
    for name, n, f, margin, weighted, scale in [
        ("identity_mean_3x37", 3, 37, None, False, 8.0),
        ("identity_weighted_2x512", 2, 512, None, True, 64.0),
        ("identity_margin_active_4x20", 4, 20, 0.02, False, 8.0),
    ]:
        a = fam.uniform((n, f))
        b = (a + fam.uniform((n, f), -0.6, 0.6)).half().float()
        if margin is not None:
            b[0] = (a[0] + fam.uniform((f,), -0.01, 0.01)).half().float()  # cos > 0.98: inactive
        inputs = {"a": a, "b": b}
        if weighted:
            inputs["weights"] = fam.uniform((n,), 0.2, 1.5)
        vals = {}

        def fn(v, n=n, margin=margin, vals=vals):
            na = v["a"].norm(dim=1).clamp_min(1e-8)
            nb = v["b"].norm(dim=1).clamp_min(1e-8)
            cos = (v["a"] * v["b"]).sum(1) / (na * nb)
            if margin is None:
                ln, div = 1.0 - cos, n
            else:
                ln = F.relu(1.0 - cos - margin)
                div = max(int((ln > 0).sum()), 1)
            wn = v["weights"] if "weights" in v else torch.ones(n, dtype=torch.float64)
            vals["values_out"] = ln.detach()
            total = (wn * ln).sum() / div
            vals["total_out"] = total.detach().reshape(1)
            return total * scale

        params = dict(kind="identity", n=n, features=f, margin=margin, weighted=weighted,
                      scale=scale)
        fam.grad_case(name, "identity", params, inputs, fn, state=lambda vals=vals: vals,
                      no_grad=("weights",) if weighted else (), seed_one=True)
    return fam.save(out_dir)


GRAD_FAMILIES = [conv_grad, dynamic_grad, modulate_grad, norm_grad, linear_grad, eltwise_grad,
                 fusion_grad, resample_grad, pool_grad, concat_grad, reduce_grad, loss_grad]
BN_MOMENTUM = 0.1  # PyTorch's default (Paddle's momentum 0.9 is the same update)


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
    grad_dir = os.path.join(args.out, "grads_kernels")
    os.makedirs(grad_dir, exist_ok=True)
    for fam in GRAD_FAMILIES:
        path, size = fam(grad_dir)
        assert size < 1_000_000, (path, size)
        total += size
        print(f"{os.path.normpath(path)}: {size / 1024:.1f} KiB")
    print(f"total {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
