#!/usr/bin/env python3
"""Whole-model gradient goldens for ``fswap grad``, from the float64 PyTorch reference.

Run by developers only (needs torch; see tools/requirements.txt), when the reference, the inputs
or the checkpoint generator change:

    python3 tools/golden_grads.py [--out tests/fixtures/grads] [--keep DIR] [--case NAME]...

What ``fswap grad`` computes
----------------------------
``fswap grad --model NAME --weights FILE [--input KEY=FILE.npy]... --seed OUTPUT=FILE.npy
--output GRADS.safetensors [--train-mode]`` runs the forward, back-propagates the seeds (the
gradient of L = sum over outputs of sum(output * seed)) and writes, in f32, the gradient of every
input (key = the input name) and every parameter (key = its name in the weights file). Here, as in
PyTorch: batch norm uses its running statistics unless ``--train-mode`` (then batch statistics,
biased variance); BN running statistics (``*._mean`` / ``*._variance``) are buffers, not
parameters, and get no gradient; the fusion-mask branch reads e4 detached (spec 3), so the mask
seed reaches the mask parameters only; Linear weight gradients are in PyTorch layout [out, in]
(the Paddle-exported weights files store those weights as [in, out]: transpose to compare).

Cases
-----
=================  ==============  =====  ======  =================================================
case               --model         batch  BN      weights file (made by tools/grad_inputs.py)
=================  ==============  =====  ======  =================================================
``idn``            idn             2      eval    idn.safetensors (injected UNet state dict)
``idn_train``      idn             2      batch   idn.safetensors, ``--train-mode``
``mobilefaceswap`` mobilefaceswap  1      eval    mobilefaceswap.safetensors (export of seed 1)
``arcface``        arcface         2      eval    arcface.safetensors (export of depths 1,1,1,1, seed 2)
=================  ==============  =====  ======  =================================================

Inputs and seeds: see ``tools/grad_inputs.py`` (float16 .npy; targets U(0,1), faces
clip(N(0,1), +-3), the identity of tests/fixtures/models/mobilefaceswap_golden.safetensors, seeds
N(0,1) * 1).

How tests/models_grad.rs reproduces everything in CI (python3 + numpy, no torch)
-------------------------------------------------------------------------------
1. ``python3 tools/grad_inputs.py DIR --weights`` (the ``command_inputs`` metadata entry, with
   ``{dir}`` = DIR). It writes every case's inputs and seeds, regenerates the two seeded Paddle
   checkpoints of tools/golden_models.py (checking their sha256 against the model goldens),
   exports them with tools/export.py, and assembles ``idn.safetensors`` = the 18 kernels stored in
   tests/fixtures/models/mobilefaceswap_golden.safetensors (as F32) + 18 zero F32 biases +
   ``final.*`` / ``mask.*`` of the exported mobilefaceswap.safetensors (the same state dict
   tests/models_parity.rs builds in memory in ``injected_unet_state_dict_loads_as_idn``).
2. Checks each file's sha256 against ``sha256.<file>`` in the case's metadata (the exported
   .safetensors hashes also depend on tools/export.py's version string; the .npy and .pdparams
   ones only on the seeds).
3. Runs ``command_fswap_grad`` (``{dir}`` = DIR, ``{output}`` = the gradient file) and compares
   with the fixture.

Fixture layout: ``tests/fixtures/grads/<case>.safetensors`` (each < 1 MB)
--------------------------------------------------------------------------
For every input and parameter NAME, with numel elements (f64 results stored as F32):

* numel <= 16384: ``grad.NAME``, the whole gradient, in its own shape;
* otherwise ``grad_sample.NAME`` [k] = the flattened (C-order) gradient at indices
  ``arange(0, numel, stride)``, stride = ceil(numel / 4096), and ``grad_norm.NAME`` [1] = the L2
  norm of the whole gradient.

Metadata (all strings): ``format``, ``case``, ``model``, ``train_mode`` (true/false), ``batch``,
``inputs`` / ``outputs`` / ``parameters`` (JSON lists, file order), ``buffers_without_grad``,
``linear_weights`` (gradients stored [out, in]), ``loss`` (L, 12 digits), per gradient
``grad_shape.NAME`` (JSON list), ``grad_stride.NAME`` (1 when whole), ``grad_max_abs.NAME`` and
``grad_rms.NAME`` (of the whole gradient, 7 digits: set tolerances relative to these),
``grad_fp16_err.NAME`` (max |g16 - g| where g16 is the same gradient computed with every
activation and activation gradient rounded to float16 where the reference materialises one: the
error fp16 storage alone causes, a scale for per-tensor tolerances);
``grad_fp16_spread.NAME`` (max over 8 seeded draws of max |g_k - g|, g_k the same emulation with
dithered rounding: +-1/2 ulp of uniform noise before rounding each value; one draw can be far
below the typical fp16 error where a gradient sums many kink-sensitive terms, e.g. ArcFace's
shared PReLU slopes, see ``fp16_spread``);
``structurally_zero`` (JSON list: gradients that are mathematically 0, e.g. a conv bias before a
train-mode BN; stored values are float64 round-off < 1e-9, compare them absolutely);
``sha256.<file>`` for every file used (inputs, seeds, checkpoints, weights, the model golden the
IDN kernels come from), ``command_*`` (the command lines), ``input_seed`` / ``seed_sigma``,
``grad_stats`` (JSON: fractions of exact zeros, of non-zero |g| < 6e-8 (flush to 0 in fp16) and
< 6.1e-5 (fp16 subnormal)), ``activation_grad_stats`` (JSON: max_abs, rms and the same fractions
for the gradient reaching each intermediate activation, which the engine holds in fp16),
``fd_check`` (central finite differences of the float64 forward along a random direction per
input and per parameter group, against autograd without the e4 detach: the true derivative),
``detach_effect`` (how much the e4 detach changes the gradients: a test that ignores it fails).

The safetensors files are written by golden_models.write_safetensors (fixed tensor order, JSON
with sorted keys) and metadata numbers are rounded (7 digits; finite-difference errors 2), so
running the script twice writes identical bytes. (On another CPU, float64 summation order may
differ: a stored f32 could then move by one ulp, which no sensible tolerance notices.)
"""

import argparse
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import golden_models  # noqa: E402
import grad_inputs  # noqa: E402
from fswap_tools.safetensors_io import read_safetensors  # noqa: E402
from golden_models import write_safetensors  # noqa: E402
from reference import ArcFace, BuildFaceSwap, UNet, load_paddle_state  # noqa: E402
from reference.arcface import l2_normalize  # noqa: E402
from reference.mobilefaceswap import swap_apply, unet_apply  # noqa: E402

FORMAT = "fswap-grad-golden/1"
FULL_MAX = 16384  # gradients up to this many elements are stored whole
SAMPLES = 4096  # about this many samples of a bigger one
F16_MAX = 65504.0
F16_TINY = 6e-8  # ~ smallest float16 subnormal (5.96e-8): below it a value flushes to 0
F16_NORMAL = 6.1e-5  # smallest normal float16: below it relative precision degrades
ZERO_GRAD = 1e-9  # |g| below this everywhere: a structurally zero gradient (round-off only)
FD_TOL = 1e-4  # finite differences vs autograd (a wrong gradient is off by O(1))
SPREAD_DRAWS = 8  # dithered fp16 emulations behind grad_fp16_spread.NAME
SPREAD_SEED = 16
INPUTS_COMMAND = "python3 tools/grad_inputs.py {dir} --weights"
GOLDEN_COMMAND = "python3 tools/golden_grads.py"

PRECISION = ("Gradients are float64 autograd results rounded to F32 (<= 2^-24 relative). Inputs, "
             "seeds and weights are float16-exact, so the engine reads exactly the reference's "
             "values; its error is its own (fp16 activations and activation gradients, f32 "
             "parameter gradients).")


# --------------------------------------------------------------------------------------------
# files


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_state(path):
    """A weights .safetensors as name -> ndarray (its own names and layouts)."""
    st = read_safetensors(path)
    return {k: st.array(k) for k in st.names()}


def f64(a):
    return torch.from_numpy(np.asarray(a).astype(np.float64))


def file_parameters(module):
    """[(name in the weights file, parameter, is a Linear weight)] in module order: Paddle names
    (PReLU ``_weight``); BN running statistics are buffers and not listed."""
    out = []
    for mname, m in module.named_modules():
        prefix = f"{mname}." if mname else ""
        for pn, prm in m.named_parameters(recurse=False):
            name = prefix + ("_weight" if isinstance(m, nn.PReLU) else pn)
            out.append((name, prm, isinstance(m, nn.Linear) and pn == "weight"))
    return out


# --------------------------------------------------------------------------------------------
# statistics


def grad_stats(g):
    """max |g|, rms, L2 norm, and the fractions of exact zeros (max-pool, structurally zero
    gradients), of non-zero values below 6e-8 (would flush to 0 in float16) and below 6.1e-5
    (float16 subnormals)."""
    a = g.detach().abs().flatten()
    n = a.numel()
    nz = a > 0
    return {
        "max_abs": float(a.max()),
        "rms": float(a.pow(2).mean().sqrt()),
        "norm": float(a.pow(2).sum().sqrt()),
        "frac_zero": float((~nz).sum()) / n,
        "frac_tiny": float((nz & (a < F16_TINY)).sum()) / n,
        "frac_subnormal": float((nz & (a < F16_NORMAL)).sum()) / n,
        "numel": n,
    }


def underflows(s):
    """Most non-zero values below 6e-8."""
    return s["frac_tiny"] > 0.5 * (1.0 - s["frac_zero"]) and s["frac_zero"] < 1.0


def _fmt(stats):
    return {k: (v if isinstance(v, int) else float(f"{v:.4g}")) for k, v in stats.items()}


ACT_KEYS = ("max_abs", "rms", "frac_zero", "frac_tiny", "frac_subnormal")


def _compact(stats, keys):
    """The metadata form of some statistics (3 digits)."""
    return {k: float(f"{stats[k]:.3g}") for k in keys}


def _num(v, digits=7):
    """A float for the metadata, rounded so that float64 summation-order noise does not show."""
    return f"{v:.{digits}g}"


class ActivationGrads:
    """Statistics of the gradient reaching intermediate activations: ``tap(name, t)`` (for the
    functional IDN) and forward hooks on every leaf module. A module called twice (IRBlock.prelu)
    keeps the worst of each statistic."""

    def __init__(self):
        self.stats = {}
        self.handles = []
        self.enabled = True

    def _add(self, name, g):
        if not self.enabled:
            return
        s = grad_stats(g)
        old = self.stats.get(name)
        if old:
            s = {k: (v + old[k] if k == "numel" else max(v, old[k])) for k, v in s.items()}
        self.stats[name] = s

    def tap(self, name, t):
        if t.requires_grad:
            t.register_hook(lambda g, name=name: self._add(name, g))
        return t

    def attach(self, model, tag):
        for name, m in model.named_modules():
            if any(True for _ in m.children()):
                continue

            def hook(mod, inp, out, key=f"{tag}:{name}"):
                if isinstance(out, torch.Tensor):
                    self.tap(key, out)

            self.handles.append(m.register_forward_hook(hook))

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles = []


# --------------------------------------------------------------------------------------------
# cases


class Case:
    """One case: its float64 model (weights from the file the engine reads, train/eval mode),
    inputs and seeds (from grad_inputs.py's files), its parameters under their file names, and
    ``forward(detach_mask_input, tap) -> {output name: tensor}``."""

    def __init__(self, name, work):
        self.name = name
        self.spec = grad_inputs.CASES[name]
        self.work = work
        self.inputs = {}
        self.seeds = {}
        for key, _, _ in self.spec["inputs"]:
            a = np.load(os.path.join(work, grad_inputs.input_file(name, key)))
            assert a.dtype == np.float16, (key, a.dtype)
            self.inputs[key] = f64(a).requires_grad_(True)
        for out, _ in self.spec["outputs"]:
            a = np.load(os.path.join(work, grad_inputs.seed_file(name, out)))
            assert a.dtype == np.float16, (out, a.dtype)
            self.seeds[out] = f64(a)
        self.weights_path = os.path.join(work, self.spec["weights"])
        state = load_state(self.weights_path)
        model = self.spec["model"]
        if model == "idn":
            self.module = UNet().double()
        elif model == "mobilefaceswap":
            self.module = BuildFaceSwap().double()
        elif model == "arcface":
            self.module = ArcFace(golden_models.ARCFACE_DEPTHS).double()
        else:
            raise AssertionError(model)
        load_paddle_state(self.module, state)
        self.module.train(self.spec["train_mode"])
        self.params = file_parameters(self.module)
        names = [n for n, _, _ in self.params]
        buffers = sorted(k for k in state if k.endswith("._mean") or k.endswith("._variance"))
        assert sorted(names + buffers) == sorted(state), "parameters + BN statistics != weights file"
        self.buffers = buffers
        self.state = state

    def forward(self, detach_mask_input=True, tap=None):
        x = self.inputs
        model = self.spec["model"]
        if model == "idn":
            s, m = unet_apply(self.module, x["target"], detach_mask_input, tap)
            return {"swapped": s, "mask": m}
        if model == "mobilefaceswap":
            s, m = swap_apply(self.module, x["id_embedding"], x["id_feature_map"], x["target"],
                              detach_mask_input, tap)
            return {"swapped": s, "mask": m}
        emb_raw, fmap = self.module.features(x["face"])
        emb = l2_normalize(emb_raw)
        if tap:
            emb = tap("id_embedding", emb)
            fmap = tap("id_feature_map", fmap)
        return {"id_embedding": emb, "id_feature_map": fmap}

    def loss(self, outputs):
        return sum((outputs[k] * self.seeds[k]).sum() for k, _ in self.spec["outputs"])

    def leaves(self):
        """[(name, tensor)]: the inputs, then the parameters in file order."""
        return [(k, self.inputs[k]) for k, _, _ in self.spec["inputs"]] + \
            [(n, p) for n, p, _ in self.params]

    def grads(self, detach_mask_input=True, tap=None):
        out = self.forward(detach_mask_input, tap)
        loss = self.loss(out)
        leaves = self.leaves()
        g = torch.autograd.grad(loss, [t for _, t in leaves], allow_unused=True)
        missing = [n for (n, _), gi in zip(leaves, g) if gi is None]
        g = [torch.zeros_like(t) if gi is None else gi for (_, t), gi in zip(leaves, g)]
        return loss.detach(), out, dict(zip([n for n, _ in leaves], g)), missing


def check_functional_forward(case, out):
    """The functional forwards used for autograd equal the reference's module forwards bit for bit
    (eval-mode cases only: the module forward would update train-mode running statistics)."""
    if case.spec["train_mode"]:
        return "skipped (train mode)"
    from reference.mobilefaceswap import inject, unet_forward

    with torch.no_grad():
        model = case.spec["model"]
        if model == "idn":
            s, m = case.module(case.inputs["target"])
        elif model == "mobilefaceswap":
            unet_state = inject(case.module, case.inputs["id_embedding"],
                                case.inputs["id_feature_map"])
            s, m = unet_forward(unet_state, case.inputs["target"])
        else:
            emb, fmap = case.module(case.inputs["face"])
            assert torch.equal(emb, out["id_embedding"]) and torch.equal(fmap, out["id_feature_map"])
            return "bit-identical to ArcFace.forward"
        assert torch.equal(s, out["swapped"]) and torch.equal(m, out["mask"]), model
        return "bit-identical to the module forward (UNet / inject + unet_forward)"


def fd_check(case, grads_full):
    """Central finite differences of L along a random direction, one per input and per group of
    parameters (first name component), against the autograd gradient without the e4 detach (the
    true derivative): {group: relative error}."""
    gen = torch.Generator().manual_seed(7)
    leaves = case.leaves()
    inputs = {k for k, _, _ in case.spec["inputs"]}
    groups = {}
    for n, t in leaves:
        scale = float(t.detach().pow(2).mean().sqrt()) + 1e-3
        d = torch.randn(t.shape, generator=gen, dtype=torch.float64) * scale
        groups.setdefault(n if n in inputs else n.split(".")[0], []).append((n, t, d))
    # LeakyReLU / PReLU kinks and max-pool switches make L piecewise smooth: a kink crossed by
    # the +-h step biases the difference by O(h * crossings) (~1e-5 relative at h = 1e-6 here),
    # hence the small h; float64 round-off of L then adds ~1e-8 relative.
    h = 1e-7
    out = {}
    with torch.no_grad():
        for g, items in groups.items():
            analytic = sum(float((grads_full[n] * d).sum()) for n, _, d in items)
            saved = [t.detach().clone() for _, t, _ in items]
            vals = []
            for sign in (1.0, -1.0):
                for (_, t, d), s in zip(items, saved):
                    t.copy_(s + sign * h * d)
                vals.append(float(case.loss(case.forward(detach_mask_input=False))))
            for (_, t, _), s in zip(items, saved):
                t.copy_(s)
            numeric = (vals[0] - vals[1]) / (2 * h)
            out[g] = abs(numeric - analytic) / max(abs(analytic), 1e-30)
    return {"h": h, "rel_err": out, "max_rel_err": max(out.values())}


def fp16_emulation(case):
    """The gradients again with every activation and every activation gradient rounded to
    float16 where the reference materialises one (each module output that is a tensor, and the
    functional IDN's intermediates), the rest in float64: a model of the engine's storage error,
    not of its exact rounding points. Returns {name: gradient}."""

    def r16(t):
        t = t + (t.detach().to(torch.float16).to(torch.float64) - t.detach())
        if t.requires_grad:
            t.register_hook(lambda g: g.to(torch.float16).to(torch.float64))
        return t

    handles = [m.register_forward_hook(lambda mod, inp, out: r16(out)
                                       if isinstance(out, torch.Tensor) else None)
               for m in case.module.modules()]
    try:
        _, _, g16, _ = case.grads(detach_mask_input=True, tap=lambda _name, t: r16(t))
    finally:
        for h in handles:
            h.remove()
    return g16


def _dither16(t, gen):
    """``t`` rounded to float16 after a uniform perturbation of +-1/2 float16 ulp: an unbiased
    rounding whose error (up to 1 ulp) varies from draw to draw."""
    v = t.detach()
    _, e = torch.frexp(v)
    ulp = torch.clamp(torch.ldexp(torch.ones_like(v), e - 11), min=2.0 ** -24)
    u = torch.rand(v.shape, generator=gen, dtype=torch.float64) - 0.5
    return (v + u * ulp).to(torch.float16).to(torch.float64)


def fp16_spread(case, grads):
    """max over SPREAD_DRAWS draws of max |g_k - g|, per gradient, where g_k is ``fp16_emulation``
    with dithered instead of round-to-nearest rounding (seeded, so deterministic). One emulation
    is one draw of the fp16 noise: for gradients that sum many kink-sensitive terms (ArcFace's
    shared PReLU slopes) a single draw can be far below the typical error (layer1.0's slope: 0.2%
    off for the round-to-nearest draw, up to 12% over the 8 dithered ones). Returns
    {name: spread}."""
    gen = torch.Generator().manual_seed(SPREAD_SEED)

    def r16(t):
        t = t + (_dither16(t, gen) - t.detach())
        if t.requires_grad:
            t.register_hook(lambda g: _dither16(g, gen))
        return t

    handles = [m.register_forward_hook(lambda mod, inp, out: r16(out)
                                       if isinstance(out, torch.Tensor) else None)
               for m in case.module.modules()]
    spread = {n: 0.0 for n in grads}
    try:
        for _ in range(SPREAD_DRAWS):
            _, _, gk, _ = case.grads(detach_mask_input=True, tap=lambda _name, t: r16(t))
            for n, g in grads.items():
                spread[n] = max(spread[n], float((gk[n] - g).abs().max()))
    finally:
        for h in handles:
            h.remove()
    return spread


def detach_effect(grads, grads_full):
    """max over gradients of ||g_detached - g_full|| / ||g_full|| (0 for models without the mask
    branch)."""
    worst, arg = 0.0, None
    for n, g in grads.items():
        d = float((g - grads_full[n]).norm()) / max(float(grads_full[n].norm()), 1e-300)
        if d > worst:
            worst, arg = d, n
    return {"max_rel_change": worst, "where": arg}


def fswap_grad_command(case):
    spec = grad_inputs.CASES[case]
    parts = [f"fswap grad --model {spec['model']} --weights {{dir}}/{spec['weights']}"]
    for key, _, _ in spec["inputs"]:
        parts.append(f"--input {key}={{dir}}/{grad_inputs.input_file(case, key)}")
    for out, _ in spec["outputs"]:
        parts.append(f"--seed {out}={{dir}}/{grad_inputs.seed_file(case, out)}")
    parts.append("--output {output}")
    if spec["train_mode"]:
        parts.append("--train-mode")
    return " ".join(parts)


def case_files(case):
    """Every file a case's gradients depend on: (name in the work dir or repository path)."""
    spec = grad_inputs.CASES[case]
    files = [grad_inputs.input_file(case, k) for k, _, _ in spec["inputs"]]
    files += [grad_inputs.seed_file(case, o) for o, _ in spec["outputs"]]
    files.append(spec["weights"])
    model = spec["model"]
    if model in ("idn", "mobilefaceswap"):
        files += [grad_inputs.CHECKPOINTS["mobilefaceswap"]["file"], "mobilefaceswap.safetensors"]
    if model == "arcface":
        files.append(grad_inputs.CHECKPOINTS["arcface"]["file"])
    return files


def run_case(name, work, out_dir):
    case = Case(name, work)
    spec = case.spec
    rec = ActivationGrads()
    rec.attach(case.module, spec["model"])
    loss, out, grads, missing = case.grads(detach_mask_input=True, tap=rec.tap)
    rec.detach()
    assert not missing, f"{name}: no gradient reaches {missing}"
    forward_check = check_functional_forward(case, out)

    rec.enabled = False
    if spec["model"] == "arcface":
        grads_full = grads
        detach = {"max_rel_change": 0.0, "where": None, "note": "no mask branch"}
    else:
        _, _, grads_full, _ = case.grads(detach_mask_input=False)
        detach = detach_effect(grads, grads_full)
    fd = fd_check(case, grads_full)
    assert fd["max_rel_err"] < FD_TOL, (name, fd)
    g16 = fp16_emulation(case)
    spread = fp16_spread(case, grads)

    zero = sorted(n for n, g in grads.items() if float(g.abs().max()) < ZERO_GRAD)
    tensors, stats, flat = [], {}, {}
    for n, g in sorted(grads.items()):
        s = grad_stats(g)
        stats[n] = _fmt(s)
        numel = g.numel()
        flat[f"grad_shape.{n}"] = json.dumps(list(g.shape))
        flat[f"grad_max_abs.{n}"] = _num(s["max_abs"])
        flat[f"grad_rms.{n}"] = _num(s["rms"])
        err16 = float((g16[n] - g).abs().max())
        flat[f"grad_fp16_err.{n}"] = _num(err16, 4)
        stats[n]["fp16_err"] = float(f"{err16:.4g}")
        flat[f"grad_fp16_spread.{n}"] = _num(spread[n], 4)
        a = g.detach().numpy()
        if numel <= FULL_MAX:
            flat[f"grad_stride.{n}"] = "1"
            tensors.append((f"grad.{n}", a.astype(np.float32)))
        else:
            stride = math.ceil(numel / SAMPLES)
            flat[f"grad_stride.{n}"] = str(stride)
            tensors.append((f"grad_sample.{n}", a.reshape(-1)[::stride].astype(np.float32)))
            tensors.append((f"grad_norm.{n}", np.array([s["norm"]], dtype=np.float32)))

    hashes = {}
    for f in case_files(name):
        hashes[f"sha256.{f}"] = sha256(os.path.join(work, f))
    hashes["sha256.tests/fixtures/models/mobilefaceswap_golden.safetensors"] = \
        sha256(grad_inputs.MODEL_GOLDEN)
    commands = {
        "command_inputs": INPUTS_COMMAND,
        "command_golden": GOLDEN_COMMAND,
        "command_export": grad_inputs.EXPORT_COMMAND,
        "command_fswap_grad": fswap_grad_command(name),
    }
    for m, c in grad_inputs.CHECKPOINTS.items():
        commands[f"command_checkpoint_{m}"] = c["command"]
    input_meta = {k: {"file": grad_inputs.input_file(name, k), "shape": shape,
                      "distribution": grad_inputs.DISTRIBUTIONS[how]}
                  for k, shape, how in spec["inputs"]}
    seed_meta = {o: {"file": grad_inputs.seed_file(name, o), "shape": shape,
                     "distribution": grad_inputs.DISTRIBUTIONS["seed"]}
                 for o, shape in spec["outputs"]}
    meta = {
        "format": FORMAT,
        "generator": "tools/golden_grads.py (float64 PyTorch autograd on tools/reference)",
        "precision": PRECISION,
        "case": name,
        "model": spec["model"],
        "train_mode": "true" if spec["train_mode"] else "false",
        "batch": str(spec["inputs"][0][1][0]),
        "input_seed": str(spec["seed"]),
        "seed_sigma": _num(grad_inputs.SEED_SIGMA),
        "inputs": json.dumps([k for k, _, _ in spec["inputs"]]),
        "outputs": json.dumps([o for o, _ in spec["outputs"]]),
        "input_files": json.dumps(input_meta, sort_keys=True),
        "seed_files": json.dumps(seed_meta, sort_keys=True),
        "weights_file": spec["weights"],
        "parameters": json.dumps([n for n, _, _ in case.params]),
        "buffers_without_grad": json.dumps(case.buffers),
        "linear_weights": json.dumps([n for n, _, lin in case.params if lin]),
        "layout": "gradients in PyTorch layout: Linear weights [out, in] (the Paddle-exported weights "
                  "file stores them [in, out]); everything else as in the weights file",
        "mask_branch": "reads e4 detached (spec 3)" if spec["model"] != "arcface" else "n/a",
        "loss": _num(float(loss), 12),
        "loss_definition": "sum over outputs of sum(output * seed), float64",
        "forward_check": forward_check,
        "fd_check": json.dumps({"h": fd["h"], "tolerance": FD_TOL,
                                "rel_err": {k: float(f"{v:.1e}") for k, v in fd["rel_err"].items()}},
                               sort_keys=True),
        "detach_effect": json.dumps({k: float(f"{v:.3g}") if isinstance(v, float) else v
                                     for k, v in detach.items()}, sort_keys=True),
        "structurally_zero": json.dumps(zero),
        "structurally_zero_note": "gradients that are mathematically 0 (a bias followed, through "
                                  "per-channel-constant maps, by a train-mode batch norm); the float64 "
                                  "values are round-off (|g| < 1e-9): compare them absolutely, e.g. "
                                  "with a multiple of grad_fp16_err.NAME (the noise fp16 storage "
                                  "gives them)",
        "grad_stats": json.dumps({n: _compact(v, ACT_KEYS[2:]) for n, v in stats.items()},
                                 sort_keys=True),
        "activation_grad_stats": json.dumps({k: _compact(v, ACT_KEYS) for k, v in rec.stats.items()},
                                            sort_keys=True),
        "layout_rule": f"grad.NAME whole if numel <= {FULL_MAX}; else grad_sample.NAME = "
                       f"flat[arange(0, numel, stride)], stride = ceil(numel / {SAMPLES}), "
                       "and grad_norm.NAME = [L2 norm of the whole gradient]",
        **commands,
        **hashes,
        **flat,
    }
    path = os.path.join(out_dir, f"{name}.safetensors")
    size = write_safetensors(path, tensors, meta)
    return {"path": path, "size": size, "loss": float(loss), "stats": stats, "act": rec.stats,
            "fd": fd, "detach": detach, "forward_check": forward_check, "zero": zero}


def summarize(name, r):
    print(f"\n== {name}: {r['path']} {r['size']} bytes, loss {r['loss']:.6g}")
    print(f"   forward: {r['forward_check']}")
    print(f"   fd: max rel err {r['fd']['max_rel_err']:.2e} "
          f"({', '.join(f'{k} {v:.1e}' for k, v in r['fd']['rel_err'].items())})")
    print(f"   detach effect: {r['detach']}")
    st = r["stats"]
    worst = max(st.items(), key=lambda kv: kv[1]["max_abs"])
    small = min(st.items(), key=lambda kv: kv[1]["rms"])
    print(f"   largest gradient: {worst[0]} max|g| {worst[1]['max_abs']:.4g}")
    print(f"   smallest gradient: {small[0]} rms {small[1]['rms']:.4g} max {small[1]['max_abs']:.4g}")
    for n, s in sorted(st.items()):
        print(f"     {n:45s} numel {s['numel']:9d} max {s['max_abs']:.3e} rms {s['rms']:.3e} "
              f"zero {s['frac_zero']:.3f} tiny {s['frac_tiny']:.3f} subn {s['frac_subnormal']:.3f}")
    act = r["act"]
    worst = max(act.items(), key=lambda kv: kv[1]["max_abs"])
    print(f"   activation gradients: largest {worst[0]} max|g| {worst[1]['max_abs']:.4g}")
    for n, s in sorted(act.items(), key=lambda kv: -kv[1]["frac_subnormal"])[:5]:
        print(f"     most subnormal: {n} rms {s['rms']:.3e} max {s['max_abs']:.3e} "
              f"zero {s['frac_zero']:.3f} tiny {s['frac_tiny']:.3f} subn {s['frac_subnormal']:.3f}")
    over = [n for n, s in list(st.items()) + list(act.items()) if s["max_abs"] > 6e4]
    under = [n for n, s in list(st.items()) + list(act.items())
             if underflows(s) and n not in r["zero"]]
    print(f"   fp16 overflow (max > 6e4): {over or 'none'}")
    print(f"   fp16 underflow (most non-zero |g| < 6e-8): {under or 'none'}")
    print(f"   structurally zero: {r['zero'] or 'none'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "grads"))
    ap.add_argument("--keep", help="write the inputs and weights here (default: a temporary directory)")
    ap.add_argument("--case", action="append", choices=sorted(grad_inputs.CASES))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    # grad_inputs.py (numpy only) duplicates the checkpoint commands of golden_models.py
    for m, c in grad_inputs.CHECKPOINTS.items():
        assert c["command"] == golden_models.CHECKPOINTS[m]["command"], m
        assert c["file"] == golden_models.CHECKPOINTS[m]["file"], m

    tmp = None
    work = args.keep
    if work is None:
        tmp = tempfile.TemporaryDirectory()
        work = tmp.name
    os.makedirs(work, exist_ok=True)
    cmd = shlex.split(INPUTS_COMMAND.format(dir=shlex.quote(work)))
    cmd[0] = sys.executable
    subprocess.run(cmd, cwd=ROOT, check=True)

    results = {}
    for name in args.case or grad_inputs.CASES:
        results[name] = run_case(name, work, args.out)
        summarize(name, results[name])
    for name, r in results.items():
        assert r["size"] < 1_000_000, (name, r["size"])
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
