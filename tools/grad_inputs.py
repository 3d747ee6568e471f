#!/usr/bin/env python3
"""Inputs, seeds and weights for the whole-model gradient goldens of ``fswap grad`` (NumPy only).

    python3 tools/grad_inputs.py OUT_DIR [--weights] [--case NAME]...

``tools/golden_grads.py`` (torch) runs this to make what it differentiates; CI runs the same command
to give ``tests/models_grad.rs`` the same files without torch. The sha256 of every file written is
recorded in the fixtures (``tests/fixtures/grads/<case>.safetensors``), so a test can check that it
got the bytes the goldens were computed from.

Written into OUT_DIR (flat):

* ``<case>.<input>.npy``: the model inputs, float16 .npy (format 1.0, C order, little-endian);
* ``<case>.seed.<output>.npy``: the seeds, float16 .npy, one per model output: ``fswap grad``
  back-propagates the gradient of ``sum over outputs of sum(output * seed)``;
* with ``--weights`` (all cases share them):
  - ``mobilefaceswap_seed1.pdparams``, ``arcface_d1111_seed2.pdparams``: the seeded Paddle
    checkpoints of ``tools/golden_models.py`` (same commands, same bytes: the sha256 is checked
    against ``tests/fixtures/models/mobilefaceswap_golden.safetensors``);
  - ``mobilefaceswap.safetensors``, ``arcface.safetensors``: those, converted by
    ``python3 tools/export.py IN OUT --model NAME -q`` (names and layouts as stored: Paddle Linear
    weights stay [in, out]);
  - ``idn.safetensors``: the injected UNet state dict of ``tests/models_parity.rs``
    (``injected_unet_state_dict_loads_as_idn``): the 18 dynamic kernels stored in
    ``tests/fixtures/models/mobilefaceswap_golden.safetensors`` (F16 there, written as F32), the
    18 encoder/decoder biases as F32 zeros, and ``final.*`` / ``mask.*`` copied from
    ``mobilefaceswap.safetensors``; 92 tensors, metadata ``fswap.model = idn``,
    ``fswap.source = paddle``, ``fswap.linear_layout = in_out`` (the IDN has no Linear).

Cases (``CASES``): ``idn`` (batch 2, eval mode), ``idn_train`` (batch 2, ``--train-mode``),
``mobilefaceswap`` (batch-1 target, one identity), ``arcface`` (batch 2, depths 1,1,1,1).
Each case draws from its own ``numpy.random.RandomState(seed)`` (the legacy generator, whose stream
NumPy keeps frozen): its inputs in the listed order, then one seed per output in the listed order.

* ``target`` ~ U(0, 1) (an RGB image, as golden_models.py), ``face`` ~ clip(N(0, 1), -3, 3)
  (an already-normalised ArcFace input), rounded to float16;
* ``id_embedding`` [1,512] / ``id_feature_map`` [1,512,7,7] of ``mobilefaceswap`` are not drawn:
  they are the identity of ``mobilefaceswap_golden.safetensors`` (a seeded ArcFace's outputs,
  float16), the identity whose kernels ``idn.safetensors`` holds;
* seeds ~ N(0, 1) * sigma rounded to float16, with sigma = ``SEED_SIGMA`` = 1. With unit seeds the
  float64 reference's gradients stay well inside the float16 range (tools/golden_grads.py measures
  and records this per case): activation gradients peak at 119 (idn_train's mask branch; 30 idn,
  28 mobilefaceswap, 53 arcface), none is below 6e-8 and at most 5% of any one activation's
  gradient is in the fp16 subnormal range (< 6.1e-5); input gradients peak at 12 (|d/d
  id_embedding| at 39); parameter gradients, up to 3.1e3 because they sum over N*H*W, are f32 in
  the engine. A smaller sigma would push the mask-branch gradients into the subnormals, a larger
  one buys nothing.
"""

import argparse
import hashlib
import os
import shlex
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from fswap_tools.safetensors_io import read_safetensors, write_safetensors  # noqa: E402

SEED_SIGMA = 1.0
SIZE = 224

# The checkpoints of tools/golden_models.py (CHECKPOINTS there; golden_grads.py checks they agree).
# {out} is the path to write; the commands run from the repository root.
CHECKPOINTS = {
    "mobilefaceswap": {
        "command": "python3 tools/random_checkpoint.py --model mobilefaceswap --seed 1 {out}",
        "file": "mobilefaceswap_seed1.pdparams",
    },
    "arcface": {
        "command": "python3 tools/random_checkpoint.py --model arcface --arcface-depths 1,1,1,1 "
                   "--seed 2 {out}",
        "file": "arcface_d1111_seed2.pdparams",
    },
}
EXPORT_COMMAND = "python3 tools/export.py {input} {output} --model {model} -q"
MODEL_GOLDEN = os.path.join(ROOT, "tests", "fixtures", "models", "mobilefaceswap_golden.safetensors")

# inputs: (name, shape, how) in draw order; "fixture" = copied from MODEL_GOLDEN, draws nothing
CASES = {
    "idn": {
        "model": "idn", "train_mode": False, "seed": 51, "weights": "idn.safetensors",
        "inputs": [("target", [2, 3, SIZE, SIZE], "uniform01")],
        "outputs": [("swapped", [2, 3, SIZE, SIZE]), ("mask", [2, 1, SIZE, SIZE])],
    },
    "idn_train": {
        "model": "idn", "train_mode": True, "seed": 52, "weights": "idn.safetensors",
        "inputs": [("target", [2, 3, SIZE, SIZE], "uniform01")],
        "outputs": [("swapped", [2, 3, SIZE, SIZE]), ("mask", [2, 1, SIZE, SIZE])],
    },
    "mobilefaceswap": {
        "model": "mobilefaceswap", "train_mode": False, "seed": 53,
        "weights": "mobilefaceswap.safetensors",
        "inputs": [("target", [1, 3, SIZE, SIZE], "uniform01"),
                   ("id_embedding", [1, 512], "fixture"),
                   ("id_feature_map", [1, 512, 7, 7], "fixture")],
        "outputs": [("swapped", [1, 3, SIZE, SIZE]), ("mask", [1, 1, SIZE, SIZE])],
    },
    "arcface": {
        "model": "arcface", "train_mode": False, "seed": 54, "weights": "arcface.safetensors",
        "inputs": [("face", [2, 3, 112, 112], "normal_clip3")],
        "outputs": [("id_embedding", [2, 512]), ("id_feature_map", [2, 512, 7, 7])],
    },
}

DISTRIBUTIONS = {
    "uniform01": "numpy.random.RandomState(seed).uniform(0, 1, shape), rounded to float16",
    "normal_clip3": "clip(RandomState(seed).standard_normal(shape), -3, 3), rounded to float16",
    "fixture": "copied (float16) from tests/fixtures/models/mobilefaceswap_golden.safetensors",
    "seed": "RandomState(seed).standard_normal(shape) * sigma, rounded to float16",
}

UNET_KERNELS = ([f"Encoder.{i}.{k}.weight" for i in range(5) for k in (0, 1)]
                + [f"Decoder.{j}.{k}.weight" for j in range(4) for k in (0, 1)])


def input_file(case, name):
    """File name (in OUT_DIR) of one input of a case."""
    return f"{case}.{name}.npy"


def seed_file(case, output):
    """File name (in OUT_DIR) of the seed of one output of a case."""
    return f"{case}.seed.{output}.npy"


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def case_arrays(case):
    """-> ([(input name, float16 array)], [(output name, float16 seed)]) of a case, deterministic."""
    c = CASES[case]
    rs = np.random.RandomState(c["seed"])
    golden = None
    inputs = []
    for name, shape, how in c["inputs"]:
        if how == "uniform01":
            a = rs.uniform(0.0, 1.0, shape)
        elif how == "normal_clip3":
            a = np.clip(rs.standard_normal(shape), -3.0, 3.0)
        elif how == "fixture":
            golden = golden or read_safetensors(MODEL_GOLDEN)
            a = golden.array(name)
            if a.dtype != np.float16 or list(a.shape) != shape:
                raise SystemExit(f"{MODEL_GOLDEN}: {name} is {a.dtype} {list(a.shape)}, "
                                 f"expected float16 {shape}")
        else:
            raise AssertionError(how)
        inputs.append((name, np.ascontiguousarray(a.astype(np.float16))))
    seeds = [(out, np.ascontiguousarray((rs.standard_normal(shape) * SEED_SIGMA).astype(np.float16)))
             for out, shape in c["outputs"]]
    return inputs, seeds


def write_case(case, out_dir):
    """Writes a case's .npy files; returns {file name: sha256}."""
    inputs, seeds = case_arrays(case)
    written = {}
    for name, a in inputs:
        written[input_file(case, name)] = a
    for out, a in seeds:
        written[seed_file(case, out)] = a
    hashes = {}
    for fname, a in written.items():
        path = os.path.join(out_dir, fname)
        np.save(path, a, allow_pickle=False)
        hashes[fname] = sha256(path)
    return hashes


def _run(cmd_template, **paths):
    cmd = shlex.split(cmd_template.format(**{k: shlex.quote(v) for k, v in paths.items()}))
    cmd[0] = sys.executable
    subprocess.run(cmd, cwd=ROOT, check=True)


def write_weights(out_dir):
    """Regenerates and exports the checkpoints and assembles idn.safetensors; returns
    {file name: sha256} of everything written."""
    golden = read_safetensors(MODEL_GOLDEN)
    hashes = {}
    for model, c in CHECKPOINTS.items():
        pd = os.path.join(out_dir, c["file"])
        _run(c["command"], out=pd)
        got = sha256(pd)
        want = golden.metadata.get(f"{model}_pdparams_sha256")
        if got != want:
            raise SystemExit(f"{pd}: sha256 {got} differs from the model goldens' {want} "
                             f"({MODEL_GOLDEN})")
        hashes[c["file"]] = got
        st = os.path.join(out_dir, f"{model}.safetensors")
        _run(EXPORT_COMMAND, input=pd, output=st, model=model)
        hashes[f"{model}.safetensors"] = sha256(st)

    mfs = read_safetensors(os.path.join(out_dir, "mobilefaceswap.safetensors"))
    tensors = {}
    for k in UNET_KERNELS:
        tensors[k] = (golden.array(k).astype(np.float32), "F32")
        c = tensors[k][0].shape[0]
        tensors[k.replace(".weight", ".bias")] = (np.zeros(c, np.float32), "F32")
    for k in mfs.names():
        if k.startswith("final.") or k.startswith("mask."):
            tensors[k] = (mfs.array(k).copy(), mfs.entries[k]["dtype"])
    assert len(tensors) == 92, len(tensors)
    path = os.path.join(out_dir, "idn.safetensors")
    write_safetensors(path, tensors, {
        "fswap.model": "idn",
        "fswap.source": "paddle",
        "fswap.linear_layout": "in_out",
        "fswap.note": "injected UNet state dict: kernels of tests/fixtures/models/"
                      "mobilefaceswap_golden.safetensors, zero encoder/decoder biases, final.*/mask.* "
                      "of mobilefaceswap.safetensors (tools/grad_inputs.py)",
    })
    hashes["idn.safetensors"] = sha256(path)
    return hashes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", metavar="OUT_DIR")
    ap.add_argument("--weights", action="store_true",
                    help="also write the checkpoints, their exports and idn.safetensors")
    ap.add_argument("--case", action="append", choices=sorted(CASES),
                    help="only these cases (default: all)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    hashes = {}
    for case in args.case or CASES:
        hashes.update(write_case(case, args.out))
    if args.weights:
        hashes.update(write_weights(args.out))
    for fname in sorted(hashes):
        print(f"{hashes[fname]}  {fname}")


if __name__ == "__main__":
    main()
