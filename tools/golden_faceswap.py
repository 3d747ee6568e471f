#!/usr/bin/env python3
"""Forward and gradient goldens of faceswap's "Lightweight" and "Original" autoencoders, from the
float64 PyTorch reference ``tools/reference/faceswap_ae.py`` (channels_last, BGR, as faceswap).

Run by developers only (needs torch), when the reference or the inputs change:

    python3 tools/golden_faceswap.py [--out tests/fixtures/models] [--keep DIR] [--case NAME]...

Cases (``tools/faceswap_inputs.py`` CASES; weights, inputs and seeds regenerated there with NumPy
alone, in CI too, sha256-checked by ``tests/models_faceswap_ae.rs``):

=================  ===========  ===  =====  ====  ======================================
case               model        S    batch  mask  parameters
=================  ===========  ===  =====  ====  ======================================
``lightweight``    lightweight  64   2      yes   72.3M (51.07M + two mask branches)
``original``       original     64   2      no    82.06M (the real architecture)
``lightweight_s80`` lightweight  80  1      no    63.6M (dense1 reads 10*10*512)
=================  ===========  ===  =====  ====  ======================================

Per case two fixtures (each < 1 MB):

``faceswap_<case>_forward.safetensors``: ``face_a``, ``face_b`` (+ ``mask_a``, ``mask_b``) F32 (the
float64 outputs of ``eval`` on ``<case>.face.npy``, RGB NCHW); metadata ``fwd_fp16_err.OUT`` (max
|o16 - o| where o16 is the forward with every intermediate the engine stores rounded to float16: the
error fp16 storage alone causes), ``stats.OUT`` (min / max / mean / std: the outputs are not
saturated), ``sha256.<file>``, ``command_*``.

``faceswap_<case>_grads.safetensors``: the gradients of L = sum over outputs of sum(output * seed)
with respect to ``face`` and every parameter (file names, file layouts), in the format of
``tools/golden_grads.py``: ``grad.NAME`` whole when numel <= 16384, else ``grad_sample.NAME``
(flat[arange(0, numel, stride)], stride = ceil(numel / 4096)) and ``grad_norm.NAME``; metadata
``inputs`` / ``outputs`` / ``parameters`` (JSON), ``grad_shape.NAME``, ``grad_stride.NAME``,
``grad_max_abs.NAME``, ``grad_rms.NAME``, ``grad_fp16_err.NAME`` (max |g16 - g| with every
activation and activation gradient the engine stores rounded to float16), ``grad_fp16_rel_l2.NAME``
(||g16 - g|| / ||g|| over the stored elements: the max above is dominated by the few elements whose
sums cross a LeakyReLU kink, the relative L2 is not, so a test holds both), ``fd_check`` (central
finite differences of the float64 forward along one random direction per group: face, encoder,
decoder_a, decoder_b, against autograd), ``linear_weights`` (empty: the files are [out, in] like the
gradients), ``command_fswap_grad``.
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import faceswap_inputs as fi  # noqa: E402
from fswap_tools.safetensors_io import read_safetensors  # noqa: E402
from golden_models import write_safetensors  # noqa: E402
from reference.faceswap_ae import FaceswapAE  # noqa: E402

FORMAT = "fswap-faceswap-golden/1"
FULL_MAX = 16384
SAMPLES = 4096
FD_TOL = 1e-3
INPUTS_COMMAND = "python3 tools/faceswap_inputs.py {dir}"
GOLDEN_COMMAND = "python3 tools/golden_faceswap.py"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def num(v, digits=7):
    return f"{v:.{digits}g}"


def r16(t):
    """Rounds a value to float16 (straight-through) and its gradient too."""
    t = t + (t.detach().to(torch.float16).to(torch.float64) - t.detach())
    if t.requires_grad:
        t.register_hook(lambda g: g.to(torch.float16).to(torch.float64))
    return t


class Case:
    def __init__(self, name, work):
        self.name = name
        self.spec = fi.CASES[name]
        self.work = work
        st = read_safetensors(os.path.join(work, fi.weights_file(name)))
        state = {k: st.array(k) for k in st.names()}
        assert all(a.dtype == np.float16 for a in state.values())
        self.order = sorted(state)
        self.model = FaceswapAE(state)
        assert self.model.size == self.spec["size"], (self.model.size, self.spec)
        assert self.model.learn_mask == self.spec["learn_mask"]
        face = np.load(os.path.join(work, fi.input_file(name)))
        assert face.dtype == np.float16
        self.face = torch.from_numpy(face.astype(np.float64))
        self.seeds = {}
        for o, shape in fi.outputs(name):
            a = np.load(os.path.join(work, fi.seed_file(name, o)))
            assert a.dtype == np.float16 and list(a.shape) == shape
            self.seeds[o] = torch.from_numpy(a.astype(np.float64))

    def leaves(self):
        return [("face", self.face)] + [(k, self.model.params[k]) for k in self.order]

    def loss(self, out):
        return sum((out[k] * self.seeds[k]).sum() for k in self.seeds)

    def grads(self, tap=None):
        for _, t in self.leaves():
            t.requires_grad_(True)
        out = self.model.forward(self.face, tap)
        loss = self.loss(out)
        names = [n for n, _ in self.leaves()]
        g = torch.autograd.grad(loss, [t for _, t in self.leaves()])
        return loss.detach(), out, dict(zip(names, g))


def fd_check(case, grads):
    """Central differences of L along a random direction per group, against autograd."""
    gen = torch.Generator().manual_seed(7)
    groups = {}
    for n, t in case.leaves():
        scale = float(t.detach().pow(2).mean().sqrt()) + 1e-3
        d = torch.randn(t.shape, generator=gen, dtype=torch.float64) * scale
        groups.setdefault(n.split(".")[0], []).append((n, t, d))
    h = 3e-8  # LeakyReLU kinks crossed by the step bias the difference by O(h * crossings)
    out = {}
    with torch.no_grad():
        for g, items in groups.items():
            analytic = sum(float((grads[n] * d).sum()) for n, _, d in items)
            saved = [t.detach().clone() for _, t, _ in items]
            vals = []
            for sign in (1.0, -1.0):
                for (_, t, d), s in zip(items, saved):
                    t.copy_(s + sign * h * d)
                vals.append(float(case.loss(case.model.forward(case.face))))
            for (_, t, _), s in zip(items, saved):
                t.copy_(s)
            numeric = (vals[0] - vals[1]) / (2 * h)
            out[g] = abs(numeric - analytic) / max(abs(analytic), 1e-30)
    return {"h": h, "rel_err": out, "max_rel_err": max(out.values())}


def stats(t):
    a = t.detach()
    return {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
            "std": float(a.std())}


def fswap_grad_command(case):
    parts = [f"fswap grad --model {fi.CASES[case]['model']} --weights {{dir}}/{fi.weights_file(case)}",
             f"--input face={{dir}}/{fi.input_file(case)}"]
    for o, _ in fi.outputs(case):
        parts.append(f"--seed {o}={{dir}}/{fi.seed_file(case, o)}")
    parts.append("--output {output}")
    return " ".join(parts)


def run_case(name, work, out_dir):
    case = Case(name, work)
    files = [fi.weights_file(name), fi.input_file(name)] + \
        [fi.seed_file(name, o) for o, _ in fi.outputs(name)]
    hashes = {f"sha256.{f}": sha256(os.path.join(work, f)) for f in files}
    common = {
        "case": name,
        "model": case.spec["model"],
        "size": str(case.spec["size"]),
        "learn_mask": "true" if case.spec["learn_mask"] else "false",
        "batch": str(case.spec["batch"]),
        "weights_file": fi.weights_file(name),
        "weights_distribution": fi.TENSOR_DISTRIBUTION,
        "input_distribution": "face: RandomState(seed).uniform(0, 1), RGB, rounded to float16 "
                              "(drawn after the weights)",
        "seed_distribution": "RandomState(seed).standard_normal(shape), rounded to float16, per "
                             "output in sorted order (drawn after the face)",
        "input_seed": str(case.spec["seed"]),
        "reference": "tools/reference/faceswap_ae.py (float64, NHWC, BGR: faceswap's own semantics)",
        "command_inputs": INPUTS_COMMAND,
        "command_golden": GOLDEN_COMMAND,
        **hashes,
    }

    # forward, and the fp16-storage model of it
    with torch.no_grad():
        out = case.model.forward(case.face)
        out16 = case.model.forward(case.face, tap=lambda _n, t: t.to(torch.float16).to(torch.float64))
    fwd_meta = {"format": FORMAT, "kind": "forward", "outputs": json.dumps(sorted(out)), **common}
    tensors = []
    for k in sorted(out):
        tensors.append((k, out[k].numpy().astype(np.float32)))
        fwd_meta[f"fwd_fp16_err.{k}"] = num(float((out16[k] - out[k]).abs().max()), 4)
        fwd_meta[f"stats.{k}"] = json.dumps({a: float(f"{b:.4g}") for a, b in stats(out[k]).items()},
                                           sort_keys=True)
    fwd_meta["command_fswap_eval"] = (f"fswap eval --model {case.spec['model']} --weights "
                                      f"{{dir}}/{fi.weights_file(name)} --input face={{dir}}/"
                                      f"{fi.input_file(name)} --output {{output}}")
    fpath = os.path.join(out_dir, f"faceswap_{name}_forward.safetensors")
    fsize = write_safetensors(fpath, tensors, fwd_meta)

    # gradients
    loss, _, grads = case.grads()
    fd = fd_check(case, grads)
    assert fd["max_rel_err"] < FD_TOL, (name, fd)
    _, _, g16 = case.grads(tap=lambda _n, t: r16(t))
    tensors, flat = [], {}
    summary = {}
    for n, g in grads.items():
        a = g.detach()
        numel = a.numel()
        mx = float(a.abs().max())
        rms = float(a.pow(2).mean().sqrt())
        err16 = float((g16[n] - g).abs().max())
        summary[n] = (mx, rms, err16)
        flat[f"grad_shape.{n}"] = json.dumps(list(a.shape))
        flat[f"grad_max_abs.{n}"] = num(mx)
        flat[f"grad_rms.{n}"] = num(rms)
        flat[f"grad_fp16_err.{n}"] = num(err16, 4)
        arr = a.numpy()
        stride = 1 if numel <= FULL_MAX else math.ceil(numel / SAMPLES)
        kept = a.reshape(-1)[::stride]
        diff = (g16[n].detach().reshape(-1)[::stride] - kept).norm()
        flat[f"grad_fp16_rel_l2.{n}"] = num(float(diff) / max(float(kept.norm()), 1e-300), 4)
        if numel <= FULL_MAX:
            flat[f"grad_stride.{n}"] = "1"
            tensors.append((f"grad.{n}", arr.astype(np.float32)))
        else:
            flat[f"grad_stride.{n}"] = str(stride)
            tensors.append((f"grad_sample.{n}", arr.reshape(-1)[::stride].astype(np.float32)))
            tensors.append((f"grad_norm.{n}",
                            np.array([float(a.pow(2).sum().sqrt())], dtype=np.float32)))
    grad_meta = {
        "format": FORMAT,
        "kind": "grads",
        "train_mode": "false",
        "inputs": json.dumps(["face"]),
        "outputs": json.dumps([o for o, _ in fi.outputs(name)]),
        "parameters": json.dumps(case.order),
        "linear_weights": json.dumps([]),
        "layout": "file layout (tools/faceswap_inputs.py): Linear [out, in] as stored; input "
                  "gradient of the RGB NCHW face",
        "loss": num(float(loss), 12),
        "loss_definition": "sum over outputs of sum(output * seed), float64",
        "fd_check": json.dumps({"h": fd["h"], "tolerance": FD_TOL,
                                "rel_err": {k: float(f"{v:.1e}") for k, v in fd["rel_err"].items()}},
                               sort_keys=True),
        "layout_rule": f"grad.NAME whole if numel <= {FULL_MAX}; else grad_sample.NAME = "
                       f"flat[arange(0, numel, stride)], stride = ceil(numel / {SAMPLES}), "
                       "and grad_norm.NAME = [L2 norm of the whole gradient]",
        "command_fswap_grad": fswap_grad_command(name),
        **common,
        **flat,
    }
    gpath = os.path.join(out_dir, f"faceswap_{name}_grads.safetensors")
    gsize = write_safetensors(gpath, tensors, grad_meta)
    return {"forward": (fpath, fsize), "grads": (gpath, gsize), "fd": fd, "out": out,
            "fwd": fwd_meta, "summary": summary, "loss": float(loss)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "models"))
    ap.add_argument("--keep", help="write the inputs and weights here (default: a temporary directory)")
    ap.add_argument("--case", action="append", choices=sorted(fi.CASES))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tmp = None
    work = args.keep
    if work is None:
        tmp = tempfile.TemporaryDirectory()
        work = tmp.name
    os.makedirs(work, exist_ok=True)
    cmd = shlex.split(INPUTS_COMMAND.format(dir=shlex.quote(work)))
    cmd[0] = sys.executable
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for name in args.case or fi.CASES:
        r = run_case(name, work, args.out)
        print(f"== {name}: loss {r['loss']:.6g}")
        for kind in ("forward", "grads"):
            path, size = r[kind]
            print(f"   {kind}: {path} {size} bytes")
            assert size < 1_000_000, (path, size)
        for k in sorted(r["out"]):
            print(f"   {k}: {r['fwd'][f'stats.{k}']} fp16 model err {r['fwd'][f'fwd_fp16_err.{k}']}")
        print(f"   fd: {r['fd']['rel_err']}")
        worst = max(r["summary"].items(), key=lambda kv: kv[1][2] / max(kv[1][0], 1e-30))
        print(f"   largest fp16 model error relative to scale: {worst[0]} "
              f"max {worst[1][0]:.3e} rms {worst[1][1]:.3e} err16 {worst[1][2]:.3e}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
