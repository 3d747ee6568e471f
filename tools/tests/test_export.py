"""Tests for tools/export.py (checkpoint -> safetensors). Stdlib + numpy only.

Run from the repository root:

    python3 -m unittest discover -s tools/tests

The real checkpoints are read in place from ``<repo>/../shared/data``; the tests fail (not skip) when they are
missing. Synthetic torch checkpoints (zip and legacy) are built here byte by byte with a tiny pickle emitter,
so no torch is needed; one extra cross-check against ``torch.save`` runs only where torch is installed.
"""

import collections
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import uuid
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
EXPORT = TOOLS / "export.py"
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(TOOLS))

from fswap_tools.safetensors_io import read_safetensors, write_safetensors  # noqa: E402

REAL = [
    # (checkpoint, reference safetensors, expected tensor count)
    ("3ddfa/mb05_120x120.pth", "3ddfa/mb05_120x120.safetensors", 166),
    ("faceboxes/FaceBoxesProd.pth", "faceboxes/FaceBoxesProd.safetensors", 174),
    ("identity/mobilefacenet_128.pt", "identity/mobilefacenet_128.safetensors", 307),
]

REFUSED = "checkpoints may only contain tensors"


def run_export(*args, env=None):
    return subprocess.run([sys.executable, str(EXPORT), *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


# ---------------------------------------------------------------------------------------------------------------
# A tiny protocol-2 pickle emitter, enough to write torch checkpoints without torch.

class G:
    """A global reference (module.name)."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class Call:
    """func(*args) via REDUCE."""

    def __init__(self, func, args):
        self.func, self.args = func, tuple(args)


class Pid:
    """A persistent id (BINPERSID)."""

    def __init__(self, pid):
        self.pid = tuple(pid)


def emit(obj):
    out = bytearray(b"\x80\x02")

    def put(o):
        if isinstance(o, G):
            out.extend(b"c" + o.module.encode() + b"\n" + o.name.encode() + b"\n")
        elif isinstance(o, Call):
            put(o.func)
            put(o.args)
            out.extend(b"R")
        elif isinstance(o, Pid):
            put(o.pid)
            out.extend(b"Q")
        elif o is None:
            out.extend(b"N")
        elif o is True or o is False:
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            if -2 ** 31 <= o < 2 ** 31:
                out.extend(b"J" + struct.pack("<i", o))
            else:
                n = (o.bit_length() + 8) // 8
                out.extend(b"\x8a" + bytes([n]) + o.to_bytes(n, "little", signed=True))
        elif isinstance(o, str):
            b = o.encode()
            out.extend(b"X" + struct.pack("<I", len(b)) + b)
        elif isinstance(o, tuple):
            if not o:
                out.extend(b")")
            else:
                out.extend(b"(")
                for x in o:
                    put(x)
                out.extend(b"t")
        elif isinstance(o, list):
            out.extend(b"](")
            for x in o:
                put(x)
            out.extend(b"e")
        elif isinstance(o, dict):
            if isinstance(o, collections.OrderedDict):
                put(G("collections", "OrderedDict"))
                out.extend(b")R")
            else:
                out.extend(b"}")
            if o:
                out.extend(b"(")
                for k, v in o.items():
                    put(k)
                    put(v)
                out.extend(b"u")
        else:
            raise TypeError(type(o))

    put(obj)
    out.extend(b".")
    return bytes(out)


TORCH_MAGIC = 0x1950A86A20F9469CFC6C


def torch_tensor(pid, offset, size, stride, v3_dtype=None, parameter=False):
    """A torch tensor record over storage ``pid`` (a Pid)."""
    hooks = Call(G("collections", "OrderedDict"), ())
    if v3_dtype is None:
        t = Call(G("torch._utils", "_rebuild_tensor_v2"), (pid, offset, tuple(size), tuple(stride), False, hooks))
    else:
        t = Call(G("torch._utils", "_rebuild_tensor_v3"),
                 (pid, offset, tuple(size), tuple(stride), False, hooks, G("torch", v3_dtype)))
    if parameter:
        t = Call(G("torch._utils", "_rebuild_parameter"), (t, True, hooks))
    return t


def write_torch_zip(path, data_pkl, storages, prefix="archive", byteorder="little"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", data_pkl)
        if byteorder is not None:
            z.writestr(f"{prefix}/byteorder", byteorder)
        for key, raw in storages.items():
            z.writestr(f"{prefix}/data/{key}", raw)
        z.writestr(f"{prefix}/version", "3\n")


def write_torch_legacy(path, obj_pkl, storages, little=True):
    """``storages``: list of (key, numel, raw bytes) in file order."""
    order = "<" if little else ">"
    with open(path, "wb") as f:
        f.write(emit(TORCH_MAGIC))
        f.write(emit(1001))
        f.write(emit({"protocol_version": 1001, "little_endian": little,
                      "type_sizes": {"short": 2, "int": 4, "long": 4}}))
        f.write(obj_pkl)
        f.write(emit([k for k, _, _ in storages]))
        for _, numel, raw in storages:
            f.write(struct.pack(order + "q", numel))
            f.write(raw)


class Evil:
    """Pickles as os.system('touch MARKER'): must never run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------------------------------------------

class TempDirCase(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="fswap-export-test-"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def assertCleanFailure(self, result, code, *fragments):
        self.assertEqual(result.returncode, code, f"stdout: {result.stdout}\nstderr: {result.stderr}")
        self.assertNotIn("Traceback", result.stderr)
        self.assertIn("error:", result.stderr)
        for fragment in fragments:
            self.assertIn(fragment, result.stderr)

    def assertNoStrayFiles(self, keep=()):
        stray = [p.name for p in self.tmp.iterdir() if p.name.endswith(".tmp") and p.name not in keep]
        self.assertEqual(stray, [], "temporary files left behind")


class RealCheckpoints(TempDirCase):
    """(1) The three real checkpoints convert bit-exactly to their reference safetensors."""

    def test_data_present(self):
        for ckpt, ref, _ in REAL:
            self.assertTrue((DATA / ckpt).is_file(), f"missing real checkpoint {DATA / ckpt}")
            self.assertTrue((DATA / ref).is_file(), f"missing reference {DATA / ref}")

    def test_convert_matches_reference(self):
        for ckpt, ref, count in REAL:
            with self.subTest(ckpt=ckpt):
                self.assertTrue((DATA / ckpt).is_file(), f"missing real checkpoint {DATA / ckpt}")
                out = self.tmp / (Path(ckpt).stem + ".safetensors")
                r = run_export(DATA / ckpt, out, "--model", Path(ckpt).stem)
                self.assertEqual(r.returncode, 0, r.stderr)
                got = read_safetensors(out)
                want = read_safetensors(DATA / ref)
                stripped = {(n[len("module."):] if n.startswith("module.") else n): n for n in want.names()}
                self.assertEqual(sorted(got.names()), sorted(stripped))
                self.assertEqual(len(got.names()), count)
                for name in got.names():
                    ref_name = stripped[name]
                    self.assertEqual(got.entries[name]["dtype"], want.entries[ref_name]["dtype"], name)
                    self.assertEqual(got.entries[name]["shape"], want.entries[ref_name]["shape"], name)
                    self.assertEqual(got.raw(name), want.raw(ref_name), name)
                self.assertEqual(got.metadata["fswap.source"], "torch")
                self.assertEqual(got.metadata["fswap.linear_layout"], "out_in")
                self.assertEqual(got.metadata["fswap.model"], Path(ckpt).stem)
                self.assertEqual(got.metadata["fswap.input_format"], "torch-legacy")
                self.assertTrue(got.metadata["fswap.exporter"].startswith("fswap-export"))

    def test_3ddfa_module_prefix_stripped(self):
        out = self.tmp / "mb05.safetensors"
        r = run_export(DATA / "3ddfa/mb05_120x120.pth", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        ref = read_safetensors(DATA / "3ddfa/mb05_120x120.safetensors")
        self.assertTrue(all(n.startswith("module.") for n in ref.names()))
        got = read_safetensors(out)
        self.assertFalse(any(n.startswith("module.") for n in got.names()))
        for name in ("conv1.weight", "fc_param.weight", "fc_lm.weight", "bn1.num_batches_tracked"):
            self.assertIn(name, got.names())
        self.assertEqual(got.entries["fc_param.weight"]["shape"], [62, 512])
        self.assertEqual(got.entries["bn1.num_batches_tracked"]["dtype"], "I64")
        self.assertEqual(int(got.array("bn1.num_batches_tracked")), 290184)
        self.assertIn("module.", r.stderr)  # the note says the prefix was removed

    def test_truncated_real_legacy(self):
        src = (DATA / "3ddfa/mb05_120x120.pth").read_bytes()
        for cut, what in ((len(src) // 2, "storage"), (3000, "pickle"), (len(src) - 1, "storage")):
            with self.subTest(cut=cut):
                bad = self.tmp / f"cut{cut}.pth"
                bad.write_bytes(src[:cut])
                out = self.tmp / f"cut{cut}.safetensors"
                r = run_export(bad, out)
                self.assertCleanFailure(r, 1, "truncated", str(bad))
                self.assertFalse(out.exists())
        self.assertNoStrayFiles()


class PaddlePickles(TempDirCase):
    """(2) Paddle-style pickles of numpy arrays: round trip and metadata."""

    def state(self):
        rng = np.random.default_rng(7)
        return collections.OrderedDict([
            ("conv.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
            ("style.weight", rng.standard_normal((512, 3)).astype(np.float32)),  # Paddle Linear: [in, out]
            ("style.bias", rng.standard_normal(3).astype(np.float32)),
            ("bn._mean", rng.standard_normal(4).astype(np.float32)),
            ("bn._variance", rng.random(4).astype(np.float32)),
            ("big_endian", np.arange(6, dtype=">f4").reshape(2, 3)),
            ("fortran", np.asfortranarray(rng.standard_normal((3, 5)))),
            ("steps", np.array(12345678901, dtype=np.int64)),
            ("half", rng.standard_normal(7).astype(np.float16)),
            ("flags", np.array([True, False])),
            ("StructuredToParameterName@@", {"conv.weight": "conv2d_0.w_0", "style.weight": "linear_0.w_0"}),
        ])

    def check_roundtrip(self, out, state):
        got = read_safetensors(out)
        arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
        self.assertEqual(sorted(got.names()), sorted(arrays))
        for name, want in arrays.items():
            a = got.array(name)
            self.assertEqual(list(a.shape), list(want.shape), name)
            self.assertEqual(a.dtype.kind, want.dtype.kind, name)
            np.testing.assert_array_equal(a, want, err_msg=name)
        self.assertEqual(got.entries["style.weight"]["shape"], [512, 3])  # not transposed
        self.assertEqual(got.entries["steps"]["dtype"], "I64")
        self.assertEqual(got.entries["half"]["dtype"], "F16")
        self.assertEqual(got.entries["flags"]["dtype"], "BOOL")
        self.assertEqual(got.entries["fortran"]["dtype"], "F64")
        return got

    def test_roundtrip_protocols(self):
        state = self.state()
        for protocol in (2, 3, 4, 5):
            with self.subTest(protocol=protocol):
                src = self.tmp / f"p{protocol}.pdparams"
                src.write_bytes(pickle.dumps(state, protocol=protocol))
                out = self.tmp / f"p{protocol}.safetensors"
                r = run_export(src, out, "--model", "mobilefaceswap")
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("StructuredToParameterName@@", r.stderr)  # skipped with a note
                got = self.check_roundtrip(out, state)
                self.assertEqual(got.metadata["fswap.source"], "paddle")
                self.assertEqual(got.metadata["fswap.linear_layout"], "in_out")
                self.assertEqual(got.metadata["fswap.model"], "mobilefaceswap")
                self.assertEqual(got.metadata["fswap.input_format"], "pickle")
                self.assertTrue(got.metadata["fswap.exporter"])

    def test_numpy1_globals(self):
        """Pickles written by numpy 1.x name numpy.core.multiarray (numpy 2 writes numpy._core)."""
        state = self.state()
        blob = pickle.dumps(state, protocol=2)
        blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        self.assertIn(b"cnumpy.core.multiarray\n_reconstruct\n", blob)
        src = self.tmp / "np1.pdparams"
        src.write_bytes(blob)
        out = self.tmp / "np1.safetensors"
        r = run_export(src, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check_roundtrip(out, state)

    def test_model_wrapper_and_metadata_without_model(self):
        state = self.state()
        src = self.tmp / "wrapped.pdparams"
        src.write_bytes(pickle.dumps({"epoch": 3, "model": state}, protocol=4))
        out = self.tmp / "wrapped.safetensors"
        r = run_export(src, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = self.check_roundtrip(out, state)
        self.assertNotIn("fswap.model", got.metadata)

    def test_big_param_slices_joined(self):
        w = np.arange(10, dtype=np.float32).reshape(2, 5)
        flat = w.reshape(-1)
        state = {"a@@.0": flat[:6], "a@@.1": flat[6:], "b": np.ones(2, np.float32),
                 "UnpackBigParamInfor@@": {"a": {"OriginShape": (2, 5), "slices": ["a@@.0", "a@@.1"]}}}
        src = self.tmp / "big.pdparams"
        src.write_bytes(pickle.dumps(state, protocol=2))
        out = self.tmp / "big.safetensors"
        r = run_export(src, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = read_safetensors(out)
        self.assertEqual(sorted(got.names()), ["a", "b"])
        np.testing.assert_array_equal(got.array("a"), w)

    def manifest(self, tensors, **extra):
        path = self.tmp / f"manifest-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps({"model": "tiny", "tensors": tensors, **extra}))
        return path

    def test_check_manifest(self):
        state = self.state()
        src = self.tmp / "m.pdparams"
        src.write_bytes(pickle.dumps(state, protocol=4))
        good = {name: {"shape": list(v.shape), "kind": "other"} for name, v in state.items()
                if isinstance(v, np.ndarray)}
        good["conv.weight"]["kind"] = "conv"
        good["style.weight"] = {"shape": [3, 512], "kind": "linear"}  # PyTorch [out, in]
        good["style.bias"]["kind"] = "linear"
        out = self.tmp / "m.safetensors"
        r = run_export(src, out, "--check", "tiny", "--manifest", self.manifest(good))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(read_safetensors(out).metadata["fswap.model"], "tiny")

        bad = dict(good)
        bad["conv.weight"] = {"shape": [4, 3, 5, 5], "kind": "conv"}
        bad["extra.weight"] = {"shape": [8], "kind": "bn"}
        del bad["half"]
        out2 = self.tmp / "m2.safetensors"
        r = run_export(src, out2, "--model", "tiny", "--check", "--manifest", self.manifest(bad))
        self.assertCleanFailure(r, 1, "missing     extra.weight", "unexpected  half", "mis-shaped  conv.weight",
                                "[4, 3, 5, 5]", "[4, 3, 3, 3]")
        self.assertFalse(out2.exists())

        # a Paddle Linear compared untransposed is a mismatch
        wrong = dict(good)
        wrong["style.weight"] = {"shape": [512, 3], "kind": "linear"}
        r = run_export(src, out2, "--check", "tiny", "--manifest", self.manifest(wrong))
        self.assertCleanFailure(r, 1, "mis-shaped  style.weight")

    def test_check_template_and_missing_manifest(self):
        src = self.tmp / "t.pdparams"
        src.write_bytes(pickle.dumps({"w": np.ones(3, np.float32)}, protocol=4))
        out = self.tmp / "t.safetensors"
        r = run_export(src, out, "--check", "tiny", "--manifest", self.manifest({}, template=True))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("template", r.stderr)
        r = run_export(src, self.tmp / "u.safetensors", "--check", "no_such_model_xyz")
        self.assertCleanFailure(r, 1, "no_such_model_xyz.json", "not found")
        self.assertFalse((self.tmp / "u.safetensors").exists())
        r = run_export(src, self.tmp / "u.safetensors", "--check")
        self.assertEqual(r.returncode, 2)

    def test_check_real_manifest(self):
        """A synthetic checkpoint built from weights/mobilefaceswap.json (Paddle layout) passes --check."""
        manifest = REPO / "weights" / "mobilefaceswap.json"
        if not manifest.is_file():
            self.skipTest("weights/mobilefaceswap.json not written yet")
        spec = json.loads(manifest.read_text())["tensors"]
        state = {}
        for name, t in spec.items():
            shape = t["shape"]
            if t["kind"] == "linear" and len(shape) == 2:
                shape = shape[::-1]
            state[name] = np.zeros(shape, np.float32)
        src = self.tmp / "MobileFaceSwap_224.pdparams"
        src.write_bytes(pickle.dumps(state, protocol=4))
        out = self.tmp / "mfs.safetensors"
        r = run_export(src, out, "--check", "mobilefaceswap")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_nonfinite(self):
        state = {"ok": np.ones(3, np.float32), "bad.weight": np.array([1.0, np.nan, np.inf], np.float32)}
        src = self.tmp / "nan.pdparams"
        src.write_bytes(pickle.dumps(state, protocol=4))
        out = self.tmp / "nan.safetensors"
        r = run_export(src, out)
        self.assertCleanFailure(r, 1, "bad.weight", "non-finite")
        self.assertFalse(out.exists())
        r = run_export(src, out, "--allow-nonfinite")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(np.isnan(read_safetensors(out).array("bad.weight")[1]))


class TorchFormatsWithoutTorch(TempDirCase):
    """Zip and legacy torch checkpoints built byte by byte: views, offsets, strides, dtypes."""

    def storages(self):
        base = np.arange(60, dtype="<f4")
        bf16 = (np.arange(6, dtype=np.float32) * 1.5).view(np.uint32) >> 16
        return {
            "0": base.tobytes(),
            "1": np.array([7], "<i8").tobytes(),
            "2": bf16.astype("<u2").tobytes(),
            "3": bytes([0x38, 0x40, 0x44, 0xC0]),  # float8_e4m3fn bytes: 1, 2, 3, -2
        }

    def state(self, legacy=False):
        """Zip ids are (storage, type, key, location, numel); legacy ones add view metadata (None here)."""
        def pid(key, stype, numel, module="torch"):
            return Pid(("storage", G(module, stype), key, "cpu", numel) + ((None,) if legacy else ()))
        untyped = pid("3", "UntypedStorage", 4, module="torch.storage")
        return collections.OrderedDict([
            ("module.dense", torch_tensor(pid("0", "FloatStorage", 60), 0, (3, 4, 5), (20, 5, 1), parameter=True)),
            ("module.permuted", torch_tensor(pid("0", "FloatStorage", 60), 0, (5, 3, 4), (1, 20, 5))),
            ("module.sliced", torch_tensor(pid("0", "FloatStorage", 60), 25, (2, 3), (20, 2))),
            ("module.expanded", torch_tensor(pid("0", "FloatStorage", 60), 7, (3, 4), (0, 1))),
            ("module.count", torch_tensor(pid("1", "LongStorage", 1), 0, (), ())),
            ("module.bf16", torch_tensor(pid("2", "BFloat16Storage", 6), 0, (2, 3), (3, 1))),
            ("module.f8", torch_tensor(untyped, 0, (4,), (1,), v3_dtype="float8_e4m3fn")),
        ])

    def expected(self):
        base = np.arange(60, dtype=np.float32)
        b3 = base.reshape(3, 4, 5)
        return {
            "dense": b3,
            "permuted": b3.transpose(2, 0, 1),
            "sliced": np.lib.stride_tricks.as_strided(base[25:], (2, 3), (80, 8)),
            "expanded": np.broadcast_to(base[7:11], (3, 4)),
            "count": np.array(7, np.int64),
        }

    def verify(self, out, fmt):
        got = read_safetensors(out)
        for name, want in self.expected().items():
            np.testing.assert_array_equal(got.array(name), want, err_msg=name)
            self.assertEqual(got.entries[name]["shape"], list(want.shape), name)
        self.assertEqual(got.entries["count"]["dtype"], "I64")
        self.assertEqual(got.entries["bf16"]["dtype"], "BF16")
        bf = got.array("bf16").astype(np.uint32) << 16
        np.testing.assert_array_equal(bf.view(np.float32).reshape(-1), np.arange(6) * 1.5)
        self.assertEqual(got.entries["f8"]["dtype"], "F8_E4M3")
        self.assertEqual(got.raw("f8"), bytes([0x38, 0x40, 0x44, 0xC0]))
        self.assertEqual(got.metadata["fswap.input_format"], fmt)
        self.assertEqual(got.metadata["fswap.linear_layout"], "out_in")
        self.assertFalse(any(n.startswith("module.") for n in got.names()))

    def test_zip(self):
        src = self.tmp / "z.pth"
        write_torch_zip(src, emit({"state_dict": self.state(), "epoch": 3}), self.storages(), prefix="z")
        out = self.tmp / "z.safetensors"
        r = run_export(src, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.verify(out, "torch-zip")

    def test_zip_big_endian(self):
        st = self.storages()
        swapped = {"0": np.frombuffer(st["0"], "<f4").astype(">f4").tobytes(),
                   "1": np.frombuffer(st["1"], "<i8").astype(">i8").tobytes(),
                   "2": np.frombuffer(st["2"], "<u2").astype(">u2").tobytes(),
                   "3": st["3"]}
        src = self.tmp / "be.pth"
        write_torch_zip(src, emit(self.state()), swapped, byteorder="big")
        out = self.tmp / "be.safetensors"
        r = run_export(src, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.verify(out, "torch-zip")

    def test_legacy(self):
        st = self.storages()
        src = self.tmp / "l.pth"
        storages = [("0", 60, st["0"]), ("1", 1, st["1"]), ("2", 6, st["2"]), ("3", 4, st["3"])]
        write_torch_legacy(src, emit(self.state(legacy=True)), storages)
        out = self.tmp / "l.safetensors"
        r = run_export(src, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.verify(out, "torch-legacy")

    def test_legacy_view_metadata(self):
        """Old legacy files describe storage views: (view_key, offset, size) within a root storage."""
        base = np.arange(20, dtype="<f4")
        view = Pid(("storage", G("torch", "FloatStorage"), "root", "cuda:0", 20, ("v1", 8, 6)))
        obj = {"w": torch_tensor(view, 1, (2, 2), (1, 2))}
        src = self.tmp / "v.pth"
        write_torch_legacy(src, emit(obj), [("root", 20, base.tobytes())])
        out = self.tmp / "v.safetensors"
        r = run_export(src, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        np.testing.assert_array_equal(read_safetensors(out).array("w"), [[9, 11], [10, 12]])

    def test_zip_storage_shorter_than_numel(self):
        st = self.storages()
        st["0"] = st["0"][:100]
        src = self.tmp / "short.pth"
        write_torch_zip(src, emit(self.state()), st)
        out = self.tmp / "short.safetensors"
        r = run_export(src, out)
        self.assertCleanFailure(r, 1, "truncated", "data/0")
        self.assertFalse(out.exists())

    def test_legacy_storage_shorter_than_numel(self):
        st = self.storages()
        src = self.tmp / "short.pth"
        write_torch_legacy(src, emit(self.state(legacy=True)), [("1", 1, st["1"]), ("0", 60, st["0"][:100])])
        out = self.tmp / "short.safetensors"
        r = run_export(src, out)
        self.assertCleanFailure(r, 1, "truncated legacy torch checkpoint", "storage 0")
        self.assertFalse(out.exists())

    def test_view_outside_storage(self):
        pid = Pid(("storage", G("torch", "FloatStorage"), "0", "cpu", 4))
        src = self.tmp / "oob.pth"
        write_torch_zip(src, emit({"w": torch_tensor(pid, 2, (3,), (1,))}), {"0": bytes(16)})
        r = run_export(src, self.tmp / "oob.safetensors")
        self.assertCleanFailure(r, 1, "tensor w")

    def test_zip_cut_in_half(self):
        src = self.tmp / "z.pth"
        write_torch_zip(src, emit(self.state()), self.storages())
        blob = src.read_bytes()
        cut = self.tmp / "zcut.pth"
        cut.write_bytes(blob[: len(blob) // 2])
        out = self.tmp / "zcut.safetensors"
        r = run_export(cut, out)
        self.assertCleanFailure(r, 1, "truncated or corrupt zip archive", str(cut))
        self.assertFalse(out.exists())

    def test_torch_crosscheck_if_available(self):
        """Where torch happens to be installed (not in CI), compare with torch.save's own output."""
        probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
        if probe.returncode != 0:
            self.skipTest("torch not installed (optional cross-check)")
        script = r"""
import sys, collections, torch
base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
sd = collections.OrderedDict([
    ('module.perm', base.permute(2, 0, 1)), ('module.slice', base[1:, ::2, 1:4]),
    ('module.expand', torch.ones(3, 1).expand(3, 4)), ('module.scalar', torch.tensor(3.5)),
    ('module.count', torch.tensor(290184)), ('module.bf16', (torch.arange(6.) * 1.5).to(torch.bfloat16)),
    ('module.half', torch.arange(5.).half()[1:]),
    ('module.f8', torch.tensor([1., 2., 3., -2.]).to(torch.float8_e4m3fn)),
    ('module.param', torch.nn.Parameter(torch.arange(6.).reshape(2, 3))), ('module.shared', base.view(-1)[10:20]),
    ('module.empty', torch.zeros(0, 3)),
])
torch.save({'model': sd, 'epoch': 1}, sys.argv[1])
torch.save({'model': sd, 'epoch': 1}, sys.argv[2], _use_new_zipfile_serialization=False)
"""
        zp, lp = self.tmp / "tz.pth", self.tmp / "tl.pth"
        gen = subprocess.run([sys.executable, "-c", script, str(zp), str(lp)], capture_output=True, text=True)
        self.assertEqual(gen.returncode, 0, gen.stderr)
        base = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
        want = {"perm": base.transpose(2, 0, 1), "slice": base[1:, ::2, 1:4], "expand": np.ones((3, 4), np.float32),
                "scalar": np.array(3.5, np.float32), "count": np.array(290184, np.int64),
                "half": np.arange(5, dtype=np.float16)[1:], "param": np.arange(6, dtype=np.float32).reshape(2, 3),
                "shared": base.reshape(-1)[10:20], "empty": np.zeros((0, 3), np.float32)}
        for src in (zp, lp):
            with self.subTest(src=src.name):
                out = self.tmp / (src.stem + ".safetensors")
                r = run_export(src, out)
                self.assertEqual(r.returncode, 0, r.stderr)
                got = read_safetensors(out)
                for name, w in want.items():
                    a = got.array(name)
                    self.assertEqual(a.dtype, w.dtype, name)
                    np.testing.assert_array_equal(a, w, err_msg=name)
                bf = got.array("bf16").astype(np.uint32) << 16
                np.testing.assert_array_equal(bf.view(np.float32), np.arange(6) * 1.5)
                self.assertEqual(got.raw("f8"), bytes([0x38, 0x40, 0x44, 0xC0]))


class MaliciousPickles(TempDirCase):
    """(3) A pickle that would run os.system is refused before anything runs."""

    def marker(self):
        m = Path(tempfile.gettempdir()) / f"fswap-export-pwned-{uuid.uuid4().hex}"
        self.addCleanup(lambda: m.exists() and m.unlink())
        self.assertFalse(m.exists())
        return m

    def assertRefused(self, src, marker, global_name="posix.system"):
        out = self.tmp / "evil.safetensors"
        r = run_export(src, out)
        self.assertCleanFailure(r, 2, f"refused to load global {global_name} from {src}: {REFUSED}")
        self.assertFalse(marker.exists(), "the malicious payload ran")
        self.assertFalse(out.exists())
        self.assertNoStrayFiles()

    def test_pdparams(self):
        for protocol in (0, 2, 4):
            with self.subTest(protocol=protocol):
                m = self.marker()
                src = self.tmp / f"evil{protocol}.pdparams"
                state = {"w": np.ones(3, np.float32), "evil": Evil(m)}
                src.write_bytes(pickle.dumps(state, protocol=protocol))
                self.assertIn(b"system", src.read_bytes())
                self.assertRefused(src, m)

    def test_pth_zip(self):
        m = self.marker()
        src = self.tmp / "evil.pth"
        data = pickle.dumps(collections.OrderedDict([("w", Evil(m))]), protocol=2)
        with zipfile.ZipFile(src, "w") as z:
            z.writestr("archive/data.pkl", data)
            z.writestr("archive/byteorder", "little")
            z.writestr("archive/version", "3\n")
        self.assertRefused(src, m)

    def test_pth_legacy(self):
        m = self.marker()
        src = self.tmp / "evil_legacy.pth"
        write_torch_legacy(src, pickle.dumps({"state_dict": {"w": Evil(m)}}, protocol=2), [])
        self.assertRefused(src, m)

    def test_other_globals(self):
        """eval, getattr chains and torch internals outside the allow-list are refused too."""
        m = self.marker()
        cases = [
            ("builtins.eval", Call(G("builtins", "eval"), (f"__import__('os').system('touch {m}')",))),
            ("builtins.getattr", Call(G("builtins", "getattr"), (G("collections", "OrderedDict"), "fromkeys"))),
            ("torch.load", Call(G("torch", "load"), ("x",))),
            ("numpy.load", Call(G("numpy", "load"), ("x",))),
        ]
        for name, payload in cases:
            with self.subTest(name=name):
                src = self.tmp / "g.pdparams"
                src.write_bytes(emit({"w": payload}))
                self.assertRefused(src, m, name)


class BrokenInputs(TempDirCase):
    """(4) Missing, empty, truncated and non-checkpoint inputs fail cleanly, without an OUTPUT."""

    def expect_failure(self, src, *fragments):
        out = self.tmp / "out.safetensors"
        r = run_export(src, out)
        self.assertCleanFailure(r, 1, *fragments)
        self.assertFalse(out.exists())
        self.assertNoStrayFiles()

    def test_missing_file(self):
        self.expect_failure(self.tmp / "nope.pth", "no such file")

    def test_empty_file(self):
        src = self.tmp / "empty.pth"
        src.write_bytes(b"")
        self.expect_failure(src, "empty file")

    def test_text_file(self):
        src = self.tmp / "readme.pth"
        src.write_text("hello, I am not a checkpoint\n")
        self.expect_failure(src, "not a checkpoint")

    def test_random_bytes(self):
        src = self.tmp / "random.pth"
        src.write_bytes(b"\x80\x04" + bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)))
        self.expect_failure(src, str(src))

    def test_pickle_without_tensors(self):
        for i, obj in enumerate(([1, 2, 3], {"epoch": 3, "lr": 0.1}, 42)):
            with self.subTest(obj=obj):
                src = self.tmp / f"nt{i}.pdparams"
                src.write_bytes(pickle.dumps(obj, protocol=4))
                self.expect_failure(src, "not a checkpoint")

    def test_truncated_pdparams(self):
        state = {"w": np.arange(1000, dtype=np.float32), "b": np.ones(10, np.float32)}
        for protocol in (2, 4):
            blob = pickle.dumps(state, protocol=protocol)
            for cut in (5, len(blob) // 2, len(blob) - 1):
                with self.subTest(protocol=protocol, cut=cut):
                    src = self.tmp / "cut.pdparams"
                    src.write_bytes(blob[:cut])
                    self.expect_failure(src, "truncated")

    def test_safetensors_input(self):
        src = self.tmp / "already.safetensors"
        write_safetensors(src, {"w": (np.ones(2, np.float32), "F32")})
        self.expect_failure(src, "already a safetensors file")

    def test_zip_without_data_pkl(self):
        src = self.tmp / "other.pth"
        with zipfile.ZipFile(src, "w") as z:
            z.writestr("hello.txt", "hi")
        self.expect_failure(src, "not a PyTorch checkpoint")


class AtomicWrite(TempDirCase):
    """(5) A failed conversion leaves an existing OUTPUT untouched; a good one replaces it whole."""

    def test_existing_output_kept_on_failure(self):
        out = self.tmp / "model.safetensors"
        out.write_bytes(b"previous good file")
        failures = []
        cut = self.tmp / "cut.pdparams"
        cut.write_bytes(pickle.dumps({"w": np.ones(100, np.float32)}, protocol=4)[:50])
        failures.append((cut, ()))
        nan = self.tmp / "nan.pdparams"
        nan.write_bytes(pickle.dumps({"w": np.array([np.nan], np.float32)}, protocol=4))
        failures.append((nan, ()))
        evil = self.tmp / "evil.pdparams"
        marker = Path(tempfile.gettempdir()) / f"fswap-export-pwned-{uuid.uuid4().hex}"
        evil.write_bytes(pickle.dumps({"w": Evil(marker)}, protocol=2))
        failures.append((evil, ()))
        manifest = self.tmp / "m.json"
        manifest.write_text(json.dumps({"model": "m", "tensors": {"w": {"shape": [5], "kind": "other"}}}))
        good = self.tmp / "good.pdparams"
        good.write_bytes(pickle.dumps({"w": np.ones(3, np.float32)}, protocol=4))
        failures.append((good, ("--check", "m", "--manifest", manifest)))
        for src, extra in failures:
            with self.subTest(src=src.name):
                r = run_export(src, out, *extra)
                self.assertNotEqual(r.returncode, 0)
                self.assertNotIn("Traceback", r.stderr)
                self.assertEqual(out.read_bytes(), b"previous good file")
        self.assertFalse(marker.exists())
        stray = [p.name for p in self.tmp.iterdir() if p.name.endswith(".tmp")]
        self.assertEqual(stray, [])
        r = run_export(good, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        np.testing.assert_array_equal(read_safetensors(out).array("w"), np.ones(3, np.float32))

    def test_refuses_to_overwrite_input(self):
        src = self.tmp / "same.pdparams"
        blob = pickle.dumps({"w": np.ones(3, np.float32)}, protocol=4)
        src.write_bytes(blob)
        r = run_export(src, src)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(src.read_bytes(), blob)


class SafetensorsFormat(TempDirCase):
    """The writer's layout: aligned header, contiguous data, metadata, readable back."""

    def test_layout(self):
        out = self.tmp / "x.safetensors"
        tensors = {"b": (np.arange(3, dtype="<f4"), "F32"), "a": (np.array([1, 2], "<i8"), "I64"),
                   "c": (np.array([1], "|u1"), "U8"), "s": (np.array(2.5, "<f8"), "F64"),
                   "e": (np.zeros((0, 4), "<f2"), "F16")}
        write_safetensors(out, tensors, {"k": "v"})
        blob = out.read_bytes()
        n = int.from_bytes(blob[:8], "little")
        self.assertEqual(n % 8, 0)
        header = json.loads(blob[8:8 + n])
        self.assertEqual(header["__metadata__"], {"k": "v"})
        self.assertEqual(header["s"], {"dtype": "F64", "shape": [], "data_offsets": [16, 24]})
        for name, (arr, st) in tensors.items():
            begin, end = header[name]["data_offsets"]
            self.assertEqual(begin % arr.dtype.itemsize, 0, name)
            self.assertEqual(blob[8 + n + begin:8 + n + end], arr.tobytes(), name)
        self.assertEqual(len(blob), 8 + n + 8 * 3 + 4 * 3 + 1)
        got = read_safetensors(out)
        self.assertEqual(got.metadata, {"k": "v"})
        np.testing.assert_array_equal(got.array("b"), [0, 1, 2])


if __name__ == "__main__":
    unittest.main()
