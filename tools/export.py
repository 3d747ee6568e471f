#!/usr/bin/env python3
"""Convert a training checkpoint (PyTorch .pth/.pt, Paddle .pdparams) to safetensors for fswap.

Developer / CI tooling, never on the runtime path. Needs Python 3 and numpy only (no torch, no paddle, no
safetensors package):

    python3 tools/export.py INPUT OUTPUT.safetensors [--model NAME] [--check [NAME]] [--allow-nonfinite]
                            [--key PATH] [--source auto|torch|paddle] [--manifest FILE] [--quiet]

Inputs
- PyTorch zip checkpoints (torch >= 1.6) and legacy ones (magic-number pickle stream), Paddle ``.pdparams``
  (a pickle of name -> numpy array). The state dict may be plain, an OrderedDict, or wrapped in
  ``{'state_dict': ...}``, ``{'model': ...}`` (see fswap_tools.checkpoint.WRAPPER_KEYS; ``--key a/b`` picks any
  other entry). Entries that are not tensors (epoch counters, Paddle's ``StructuredToParameterName@@`` map) are
  skipped with a note on stderr.
- Every pickle is read by a restricted unpickler that only rebuilds tensors, arrays and containers; any other
  global is refused before it can run ("refused to load global MODULE.NAME from INPUT: checkpoints may only
  contain tensors", exit code 2).

Output
- Names are the checkpoint's own state-dict names, with a leading ``module.`` (DataParallel) removed. Values are
  copied bit for bit in their own dtype: int64 ``num_batches_tracked`` counters are kept as I64 (the official
  state dict has them; the engine ignores them); bfloat16 and float8 keep their bit patterns.
- Nothing is transposed. Paddle Linear weights stay [in, out]; the layout is recorded instead.
- ``__metadata__``: ``fswap.exporter`` (tool version), ``fswap.source`` (``torch`` | ``paddle``),
  ``fswap.linear_layout`` (``out_in`` for torch, ``in_out`` for paddle), ``fswap.input_format``
  (``torch-zip`` | ``torch-legacy`` | ``pickle``), ``fswap.input`` (input file name), and ``fswap.model`` when
  a model name is given (``--model`` or ``--check NAME``).
- The write is atomic (temporary file in the same directory, fsync, rename): on any failure OUTPUT is left as it
  was (absent or the previous file).

Checks
- Non-finite values (NaN/Inf) in float tensors fail the conversion (exit 1, tensor names listed) unless
  ``--allow-nonfinite``.
- ``--check NAME`` (or ``--model NAME --check``) compares the converted tensors with the manifest
  ``weights/NAME.json`` (``--manifest`` to use another file) and lists missing, unexpected and mis-shaped
  tensors; any difference fails (exit 1) and OUTPUT is not written. Manifest shapes of ``linear`` tensors are
  PyTorch's [out, in]; with ``fswap.linear_layout = in_out`` the 2-D ones are compared transposed.
  ``num_batches_tracked`` counters that the manifest does not list are not reported as unexpected. A manifest
  with ``"template": true`` (variable depth, e.g. arcface) is skipped with a note: the Rust loader checks it.

Exit codes: 0 success; 1 conversion error or failed check; 2 refused pickle global (and command-line errors).
Set FSWAP_EXPORT_DEBUG=1 to get a traceback for unexpected internal errors.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from fswap_tools import EXPORTER_VERSION  # noqa: E402
from fswap_tools.checkpoint import load_checkpoint  # noqa: E402
from fswap_tools.errors import ExportError  # noqa: E402
from fswap_tools.safetensors_io import write_safetensors  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE_PREFIX = "module."
LINEAR_LAYOUT = {"torch": "out_in", "paddle": "in_out"}
MAX_LISTED = 60  # per category in a failed --check


def strip_module_prefix(tensors, notes):
    """Drop a leading ``module.`` (torch DataParallel) from every name that has one."""
    if not any(name.startswith(MODULE_PREFIX) for name in tensors):
        return tensors
    out = {}
    stripped = 0
    for name, t in tensors.items():
        new = name[len(MODULE_PREFIX):] if name.startswith(MODULE_PREFIX) else name
        stripped += new != name
        if new in out:
            raise ExportError(f"removing the '{MODULE_PREFIX}' prefix makes two tensors named {new}")
        out[new] = t
    notes.append(f"removed the '{MODULE_PREFIX}' prefix from {stripped} tensor names")
    return out


def nonfinite_counts(t):
    """Number of NaN/Inf values in a float tensor (0 for integer types)."""
    a = t.array
    if t.dtype in ("F64", "F32", "F16"):
        return int(a.size - np.count_nonzero(np.isfinite(a)))
    if t.dtype == "BF16":  # exponent all ones
        return int(np.count_nonzero((a & 0x7F80) == 0x7F80))
    if t.dtype == "F8_E4M3":  # e4m3fn: no Inf, NaN is S.1111.111
        return int(np.count_nonzero((a & 0x7F) == 0x7F))
    if t.dtype == "F8_E5M2":
        return int(np.count_nonzero((a & 0x7C) == 0x7C))
    return 0


def load_manifest(model, manifest_path):
    path = manifest_path or os.path.join(REPO, "weights", f"{model}.json")
    if not os.path.isfile(path):
        raise ExportError(f"--check {model}: manifest {path} not found (weights/<model>.json lists the expected "
                          "tensors; write it first or pass --manifest)")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"--check {model}: cannot read manifest {path} ({e})") from None
    if not isinstance(manifest, dict) or (
            not manifest.get("template") and not isinstance(manifest.get("tensors"), dict)):
        raise ExportError(f"--check {model}: manifest {path} has no 'tensors' object")
    if manifest.get("model") not in (None, model):
        raise ExportError(f"--check {model}: manifest {path} is for model {manifest.get('model')!r}")
    return manifest, path


def check_against_manifest(tensors, manifest, linear_layout):
    """Return (missing, unexpected, misshaped, ignored) lists; misshaped items are (name, expected, found)."""
    expected = manifest["tensors"]
    missing, misshaped = [], []
    for name, spec in expected.items():
        t = tensors.get(name)
        if t is None:
            missing.append((name, spec.get("shape")))
            continue
        shape = list(spec.get("shape", []))
        want = shape
        if spec.get("kind") == "linear" and linear_layout == "in_out" and len(shape) == 2:
            want = shape[::-1]
        if t.shape != want:
            misshaped.append((name, shape, want, t.shape))
    unexpected, ignored = [], []
    for name, t in tensors.items():
        if name in expected:
            continue
        if name.endswith("num_batches_tracked"):
            ignored.append(name)
        else:
            unexpected.append((name, t.shape))
    return missing, unexpected, misshaped, ignored


BFM68_ROWS = 204  # 68 points x 3 coordinates


def export_bfm68(folder, output, quiet):
    """The 3DDFA 68-point bases as one safetensors file: `param_mean`, `param_std` (62) from
    param_mean_std_62d_120x120.pkl (read with the restricted loader), `u_base` [204, 1],
    `w_shp_base` [204, 40], `w_exp_base` [204, 10] from the three .txt files of ../shared/data/3ddfa."""
    if not os.path.isdir(folder):
        raise ExportError(f"{folder}: --model 3ddfa_bfm68 takes the folder holding "
                          "param_mean_std_62d_120x120.pkl, u_base.txt, w_shp_base.txt and w_exp_base.txt")
    pkl = os.path.join(folder, "param_mean_std_62d_120x120.pkl")
    stats = load_checkpoint(pkl).tensors
    out = {}
    for key, name in (("mean", "param_mean"), ("std", "param_std")):
        if key not in stats:
            raise ExportError(f"{pkl}: no '{key}' array (has: {', '.join(sorted(stats))})")
        arr = np.asarray(stats[key].array, dtype=np.float32).reshape(-1)
        if arr.shape != (62,):
            raise ExportError(f"{pkl}: '{key}' has {arr.size} values, expected 62")
        out[name] = arr
    for name, cols in (("u_base", 1), ("w_shp_base", 40), ("w_exp_base", 10)):
        path = os.path.join(folder, name + ".txt")
        try:
            arr = np.loadtxt(path, dtype=np.float64, ndmin=2).astype(np.float32)
        except (OSError, ValueError) as e:
            raise ExportError(f"{path}: {e}") from None
        if arr.size != BFM68_ROWS * cols:
            raise ExportError(f"{path}: {arr.size} values, expected {BFM68_ROWS} x {cols}")
        out[name] = arr.reshape(BFM68_ROWS, cols)
    bad = [n for n, a in out.items() if not np.isfinite(a).all()]
    if bad:
        raise ExportError(f"{folder}: non-finite values in {', '.join(bad)}")
    meta = {"fswap.exporter": EXPORTER_VERSION, "fswap.model": "3ddfa_bfm68", "fswap.source": "3ddfa",
            "fswap.linear_layout": "out_in", "fswap.input": os.path.basename(os.path.normpath(folder))}
    write_safetensors(output, {n: (a, "F32") for n, a in out.items()}, meta)
    if not quiet:
        print(f"wrote {output}: 3DDFA 68-point bases ({', '.join(out)})")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="export.py", description="Convert a PyTorch/Paddle checkpoint to safetensors (numpy only).")
    parser.add_argument("input", metavar="INPUT", help="checkpoint: .pth/.pt (zip or legacy) or .pdparams")
    parser.add_argument("output", metavar="OUTPUT", help="safetensors file to write (atomically)")
    parser.add_argument("--model", metavar="NAME", help="model name, recorded as fswap.model")
    parser.add_argument("--check", nargs="?", const=True, metavar="NAME",
                        help="compare with weights/NAME.json (NAME defaults to --model); fail on differences")
    parser.add_argument("--manifest", metavar="FILE", help="manifest to check against instead of weights/NAME.json")
    parser.add_argument("--allow-nonfinite", action="store_true", help="write tensors holding NaN/Inf anyway")
    parser.add_argument("--key", metavar="PATH", help="entry that holds the state dict, e.g. 'ema/model' "
                        "(default: top level, else state_dict / model_state_dict / model / ...)")
    parser.add_argument("--source", choices=("auto", "torch", "paddle"), default="auto",
                        help="override the detected framework (decides fswap.linear_layout)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no notes or summary")
    args = parser.parse_args(argv)

    model = args.model
    check = args.check is not None
    if isinstance(args.check, str):
        if model is not None and model != args.check:
            parser.error(f"--model {model} and --check {args.check} name different models")
        model = args.check
    if check and model is None:
        parser.error("--check needs a model name: --check NAME or --model NAME --check")
    if args.manifest and not check:
        parser.error("--manifest only makes sense with --check")

    def note(msg):
        if not args.quiet:
            print(f"export.py: note: {msg}", file=sys.stderr)

    try:
        if os.path.exists(args.output) and os.path.exists(args.input) and os.path.samefile(args.input, args.output):
            raise ExportError(f"{args.output}: OUTPUT is the INPUT file; refusing to overwrite it")
        manifest = None
        if check:  # fail early when the manifest is missing, before the (possibly long) conversion
            manifest, manifest_path = load_manifest(model, args.manifest)
        if model == "3ddfa_bfm68":
            return export_bfm68(args.input, args.output, args.quiet)
        ckpt = load_checkpoint(args.input, key=args.key)
        notes = list(ckpt.notes)
        tensors = strip_module_prefix(ckpt.tensors, notes)
        source = ckpt.source if args.source == "auto" else args.source
        if ckpt.fmt == "pickle" and args.source == "auto":
            notes.append("a plain pickle of numpy arrays: treated as Paddle (Linear weights [in, out]); "
                         "pass --source torch if it is not")
        layout = LINEAR_LAYOUT[source]
        if ckpt.state_path:
            notes.insert(0, f"state dict found under {'/'.join(ckpt.state_path)}")
        for n in notes:
            note(n)

        bad = [(name, c) for name, c in ((name, nonfinite_counts(t)) for name, t in tensors.items()) if c]
        if bad:
            listing = ", ".join(f"{name} ({c} values)" for name, c in bad[:20])
            more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
            if not args.allow_nonfinite:
                raise ExportError(f"{args.input}: non-finite values (NaN/Inf) in {len(bad)} tensors: {listing}{more}; "
                                  "pass --allow-nonfinite to write them anyway")
            note(f"non-finite values kept (--allow-nonfinite) in: {listing}{more}")

        if manifest is not None:
            if manifest.get("template"):
                note(f"manifest {manifest_path} is a template (variable depth): check skipped, "
                     "the Rust loader validates this model")
            else:
                missing, unexpected, misshaped, ignored = check_against_manifest(tensors, manifest, layout)
                if ignored:
                    note(f"{len(ignored)} num_batches_tracked counters are not in the manifest (ignored)")
                if missing or unexpected or misshaped:
                    lines = [f"{args.input}: does not match {manifest_path} (model {model}, "
                             f"linear layout {layout}):"]
                    def listing(items, fmt):
                        out = [fmt(*item) for item in items[:MAX_LISTED]]
                        if len(items) > MAX_LISTED:
                            out.append(f"  ... and {len(items) - MAX_LISTED} more")
                        return out

                    lines += listing(missing, lambda name, shape: f"  missing     {name}: expected shape {shape}")
                    lines += listing(unexpected, lambda name, shape: f"  unexpected  {name}: shape {shape}")
                    lines += listing(misshaped, lambda name, shape, want, found: (
                        f"  mis-shaped  {name}: expected {want}"
                        + (f" (manifest [out, in] {shape}, stored [in, out])" if want != shape else "")
                        + f", found {found}"))
                    lines.append(f"  {len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} "
                                 f"mis-shaped; {args.output} left unchanged")
                    raise ExportError("\n".join(lines))
                note(f"all {len(manifest['tensors'])} tensors of {manifest_path} present with the expected shapes")

        metadata = {
            "fswap.exporter": EXPORTER_VERSION,
            "fswap.source": source,
            "fswap.linear_layout": layout,
            "fswap.input_format": ckpt.fmt,
            "fswap.input": os.path.basename(args.input),
        }
        if model is not None:
            metadata["fswap.model"] = model
        write_safetensors(args.output, {n: (t.array, t.dtype) for n, t in tensors.items()}, metadata)
        if not args.quiet:
            nbytes = sum(t.array.nbytes for t in tensors.values())
            print(f"wrote {args.output}: {len(tensors)} tensors, {nbytes / 1e6:.2f} MB, source {source} "
                  f"({ckpt.fmt}), linear layout {layout}")
        return 0
    except ExportError as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("export.py: interrupted; OUTPUT not written", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - report, do not dump a traceback at the user
        if os.environ.get("FSWAP_EXPORT_DEBUG"):
            raise
        print(f"export.py: error: unexpected failure converting {args.input}: {type(e).__name__}: {e} "
              "(set FSWAP_EXPORT_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
