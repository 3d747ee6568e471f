#!/usr/bin/env python3
"""Seeded weights, inputs and seeds for the faceswap autoencoder goldens (NumPy only).

    python3 tools/faceswap_inputs.py OUT_DIR [--case NAME]...
    python3 tools/faceswap_inputs.py --manifests weights/

``tools/golden_faceswap.py`` (torch) runs the first form to make what it evaluates and
differentiates; CI runs the same command to give ``tests/models_faceswap_ae.rs`` the same files
without torch. The sha256 of every file written is recorded in the fixtures
(``tests/fixtures/models/faceswap_<case>_{forward,grads}.safetensors``), so a test can check that it
got the bytes the goldens were computed from. ``--manifests DIR`` writes
``faceswap_lightweight.json`` and ``faceswap_original.json`` (S = 64; the mask branch optional).

Written into OUT_DIR (flat), per case:

* ``<case>.safetensors``: the weights, F16 (every value float16-exact), in the file layout of
  ``src/models/faceswap_ae.rs`` (PyTorch conv ``[cout, cin, kh, kw]`` and dense ``[out, in]``,
  faceswap's channel orders: BGR input of ``encoder.conv1`` and output of ``*.face_out``,
  channels_last Flatten / Reshape order of the dense layers, PixelShuffler order ``q*F + f`` of the
  upscale convolutions). Metadata ``fswap.model``, ``fswap.linear_layout = out_in``, ``fswap.size``.
* ``<case>.face.npy``: the input ``[N, 3, S, S]``, RGB, U(0, 1), float16 .npy;
* ``<case>.seed.<output>.npy``: one gradient seed per output, N(0, 1), float16 .npy.

Draw order, all from one ``numpy.random.RandomState(case seed)`` (the legacy generator, whose
stream NumPy keeps frozen): the tensors in sorted name order (``TENSOR_DISTRIBUTION``), then the
face, then the seeds in output order.

The weights are *not* the engine's initialisation (``faceswap_ae::init``, a Rust SplitMix stream):
they follow the same distributions (HeUniform convs, Glorot-uniform dense) but the biases are
U(-0.1, 0.1) instead of zero, so that a bias mapped to the wrong channel shows.
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fswap_tools.safetensors_io import write_safetensors  # noqa: E402

BIAS_RANGE = 0.1
TENSOR_DISTRIBUTION = ("conv weight: U(+-sqrt(6 / (cin*kh*kw))) (HeUniform); dense weight [out, in]: "
                       "U(+-sqrt(6 / (in + out))) (Glorot uniform); bias: U(-0.1, 0.1); rounded to "
                       "float16")

# case: model, size, learn_mask, batch, seed
CASES = {
    "lightweight": {"model": "lightweight", "size": 64, "learn_mask": True, "batch": 2, "seed": 61},
    "original": {"model": "original", "size": 64, "learn_mask": False, "batch": 2, "seed": 62},
    "lightweight_s80": {"model": "lightweight", "size": 80, "learn_mask": False, "batch": 1,
                        "seed": 63},
}


def arch(model, lowmem=False):
    """(encoder conv channels, E, bottleneck channels, encoder upscale F, decoder filters)."""
    if model == "lightweight":
        return [128, 256, 512], 512, 512, 256, [512, 256, 128]
    if model == "original":
        convs = [128, 256, 512] if lowmem else [128, 256, 512, 1024]
        return convs, 512 if lowmem else 1024, 1024, 512, [256, 128, 64]
    raise ValueError(model)


def tensor_specs(model, size, learn_mask, lowmem=False):
    """[(name, shape, kind)] of a weights file, kind 'conv' or 'linear' (spec alignment.md B.2)."""
    convs, e, bc, f_enc, dec = arch(model, lowmem)
    out = []

    def conv(prefix, cout, cin, k):
        out.append((f"{prefix}.weight", [cout, cin, k, k], "conv"))
        out.append((f"{prefix}.bias", [cout], "conv"))

    cin = 3
    for i, c in enumerate(convs):
        conv(f"encoder.conv{i + 1}", c, cin, 5)
        cin = c
    side = size >> len(convs)
    b = size // 16
    out.append(("encoder.dense1.weight", [e, side * side * convs[-1]], "linear"))
    out.append(("encoder.dense1.bias", [e], "linear"))
    out.append(("encoder.dense2.weight", [b * b * bc, e], "linear"))
    out.append(("encoder.dense2.bias", [b * b * bc], "linear"))
    conv("encoder.upscale", 4 * f_enc, bc, 3)
    for d in ("decoder_a", "decoder_b"):
        branches = [("upscale", "face_out", 3)]
        if learn_mask:
            branches.append(("mask_upscale", "mask_out", 1))
        for up, o, ch in branches:
            cin = f_enc
            for i, f in enumerate(dec):
                conv(f"{d}.{up}{i + 1}", 4 * f, cin, 3)
                cin = f
            conv(f"{d}.{o}", ch, cin, 5)
    return out


def outputs(case):
    """[(output name, shape)] of a case, in seed order."""
    c = CASES[case]
    n, s = c["batch"], c["size"]
    out = [("face_a", [n, 3, s, s]), ("face_b", [n, 3, s, s])]
    if c["learn_mask"]:
        out += [("mask_a", [n, 1, s, s]), ("mask_b", [n, 1, s, s])]
    return sorted(out)


def weights_file(case):
    return f"{case}.safetensors"


def input_file(case):
    return f"{case}.face.npy"


def seed_file(case, output):
    return f"{case}.seed.{output}.npy"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def case_arrays(case):
    """-> (weights {name: float16 array}, face float16, [(output, float16 seed)]), deterministic."""
    c = CASES[case]
    rs = np.random.RandomState(c["seed"])
    weights = {}
    for name, shape, kind in sorted(tensor_specs(c["model"], c["size"], c["learn_mask"])):
        if name.endswith(".bias"):
            a = rs.uniform(-BIAS_RANGE, BIAS_RANGE, shape)
        elif kind == "linear":
            lim = np.sqrt(6.0 / (shape[0] + shape[1]))
            a = rs.uniform(-lim, lim, shape)
        else:
            lim = np.sqrt(6.0 / int(np.prod(shape[1:])))
            a = rs.uniform(-lim, lim, shape)
        weights[name] = np.ascontiguousarray(a.astype(np.float16))
    n, s = c["batch"], c["size"]
    face = np.ascontiguousarray(rs.uniform(0.0, 1.0, [n, 3, s, s]).astype(np.float16))
    seeds = [(o, np.ascontiguousarray(rs.standard_normal(shape).astype(np.float16)))
             for o, shape in outputs(case)]
    return weights, face, seeds


def write_case(case, out_dir):
    """Writes a case's files; returns {file name: sha256}."""
    c = CASES[case]
    weights, face, seeds = case_arrays(case)
    hashes = {}
    path = os.path.join(out_dir, weights_file(case))
    write_safetensors(path, {k: (v, "F16") for k, v in weights.items()}, {
        "fswap.model": f"faceswap_{c['model']}",
        "fswap.linear_layout": "out_in",
        "fswap.size": str(c["size"]),
        "fswap.source": f"tools/faceswap_inputs.py case {case} (seed {c['seed']})",
    })
    hashes[weights_file(case)] = sha256(path)
    files = [(input_file(case), face)] + [(seed_file(case, o), a) for o, a in seeds]
    for fname, a in files:
        p = os.path.join(out_dir, fname)
        np.save(p, a, allow_pickle=False)
        hashes[fname] = sha256(p)
    return hashes


def manifest(model):
    """The manifest JSON of a model at S = 64 (mask-branch tensors optional)."""
    full = tensor_specs(model, 64, True)
    base = {n for n, _, _ in tensor_specs(model, 64, False)}
    tensors = {}
    for name, shape, kind in full:
        t = {"shape": shape, "kind": kind}
        if name not in base:
            t["optional"] = True
        tensors[name] = t
    convs, e, bc, f_enc, dec = arch(model)
    return {
        "model": f"faceswap_{model}",
        "source": "deepfakes/faceswap plugins/train/model/" + model + ".py (spec alignment.md B.2), "
                  "layers renamed; PyTorch layouts, faceswap channel orders (see src/models/"
                  "faceswap_ae.rs)",
        "size": 64,
        "size_note": "the dense shapes are for S = 64; S in 64..256 (multiple of 16) scales dense1's "
                     "input and dense2's output with (S/64)^2 (Config::manifest)",
        "input": {"face": {"shape": ["N", 3, 64, 64], "range": [0, 1], "colour": "RGB",
                           "note": "the engine's input; the network itself reads BGR (faceswap "
                                   "color_order): encoder.conv1's input channels are BGR in the file"}},
        "output": {"face_a": {"shape": ["N", 3, 64, 64], "range": [0, 1], "colour": "RGB"},
                   "face_b": {"shape": ["N", 3, 64, 64], "range": [0, 1], "colour": "RGB"},
                   "mask_a": {"shape": ["N", 1, 64, 64], "range": [0, 1], "optional": True},
                   "mask_b": {"shape": ["N", 1, 64, 64], "range": [0, 1], "optional": True}},
        "layout": {
            "conv": "[cout, cin, kh, kw] (Keras (kh, kw, cin, cout) transposed (3, 2, 0, 1))",
            "dense": "[out, in] (Keras (in, out) transposed)",
            "encoder.conv1": "input channels B, G, R",
            "face_out": "output channels B, G, R",
            "encoder.dense1": "input feature (h*W + w)*C + c (channels_last Flatten)",
            "encoder.dense2": "output feature (h*W + w)*C + c (Keras Reshape)",
            "upscale": "output channel q*F + f is channel f of sub-pixel q = 2i + j (PixelShuffler)",
        },
        "architecture": {"encoder_convs": convs, "encoder_dim": e, "bottleneck_channels": bc,
                         "encoder_upscale": f_enc, "decoder_upscales": dec,
                         "conv": "5x5 stride 2 'same' (pad 1 before, 2 after), LeakyReLU 0.1",
                         "upscale": "3x3 'same' to 4F, LeakyReLU 0.1, PixelShuffler(2)",
                         "output": "5x5 'same', sigmoid"},
        "tensors": tensors,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", metavar="OUT_DIR", nargs="?")
    ap.add_argument("--case", action="append", choices=sorted(CASES),
                    help="only these cases (default: all)")
    ap.add_argument("--manifests", metavar="DIR", help="write the two manifests into DIR instead")
    args = ap.parse_args()
    if args.manifests:
        for model in ("lightweight", "original"):
            path = os.path.join(args.manifests, f"faceswap_{model}.json")
            with open(path, "w") as f:
                json.dump(manifest(model), f, indent=1)
                f.write("\n")
            print(path)
        return
    if not args.out:
        ap.error("OUT_DIR is required (or --manifests DIR)")
    os.makedirs(args.out, exist_ok=True)
    hashes = {}
    for case in args.case or CASES:
        hashes.update(write_case(case, args.out))
    for fname in sorted(hashes):
        print(f"{hashes[fname]}  {fname}")


if __name__ == "__main__":
    main()
