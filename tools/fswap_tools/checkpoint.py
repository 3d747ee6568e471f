"""Read training checkpoints (PyTorch zip, PyTorch legacy, Paddle ``.pdparams``) into named numpy tensors.

Pure Python + numpy; every pickle goes through ``safepickle.SafeUnpickler``.

Formats
- PyTorch zip (torch >= 1.6): ``<archive>/data.pkl`` plus one record ``<archive>/data/<key>`` per storage and an
  optional ``<archive>/byteorder``. Persistent ids are ``('storage', storage_type, key, location, numel)``.
- PyTorch legacy (< 1.6, or ``_use_new_zipfile_serialization=False``): pickles of the magic number
  0x1950a86a20f9469cfc6c, the protocol version (1001) and a sys_info dict, then the object pickle with persistent
  ids ``('storage', storage_type, root_key, location, numel, view_metadata)``, then a pickled list of storage keys,
  then for each key an 8-byte element count and the raw bytes.
- Paddle ``.pdparams`` (or any plain pickle of a dict of numpy arrays), protocol 2..5. The
  ``StructuredToParameterName@@`` name map is skipped; ``UnpackBigParamInfor@@`` slices (Paddle's > 1 GiB split
  under protocol 2/3) are joined back.
"""

import collections
import io
import os
import pickle
import zipfile
import zlib

import numpy as np

from .errors import ExportError
from .safepickle import ST_TO_NUMPY, SafeUnpickler, StorageRef, StorageType, TensorRef

TORCH_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PROTOCOL = 1001

# Keys under which training scripts commonly nest the state dict, tried in this order when the top-level dict
# holds no tensors itself.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "params", "params_ema", "weights")

PADDLE_NAME_MAP = "StructuredToParameterName@@"
PADDLE_BIG_PARAMS = "UnpackBigParamInfor@@"


class Tensor:
    """A C-contiguous little-endian numpy array plus its safetensors dtype (BF16/F8 are raw uint bit patterns)."""

    __slots__ = ("array", "dtype")

    def __init__(self, array, dtype):
        self.array, self.dtype = array, dtype

    @property
    def shape(self):
        return list(self.array.shape)


class Checkpoint:
    """What ``load_checkpoint`` returns.

    ``tensors``: OrderedDict name -> Tensor, in file order; ``source``: "torch" or "paddle"; ``fmt``:
    "torch-zip", "torch-legacy" or "pickle"; ``state_path``: wrapper keys walked to reach the state dict;
    ``notes``: human-readable remarks (skipped entries and the like).
    """

    def __init__(self, tensors, source, fmt, state_path, notes):
        self.tensors, self.source, self.fmt = tensors, source, fmt
        self.state_path, self.notes = state_path, notes


def numpy_to_st(dtype):
    """safetensors dtype for a numpy dtype, or None when it is not a plain numeric type."""
    kinds = {("f", 8): "F64", ("f", 4): "F32", ("f", 2): "F16",
             ("i", 8): "I64", ("i", 4): "I32", ("i", 2): "I16", ("i", 1): "I8",
             ("u", 8): "U64", ("u", 4): "U32", ("u", 2): "U16", ("u", 1): "U8", ("b", 1): "BOOL"}
    return kinds.get((dtype.kind, dtype.itemsize))


def _load_pickle(f, src, what, persistent_load=None, encoding="latin1"):
    """Run the restricted unpickler and turn every failure into an ExportError with a clear message."""
    try:
        return SafeUnpickler(f, src, persistent_load, encoding=encoding).load()
    except ExportError:
        raise
    except EOFError:
        raise ExportError(f"{src}: truncated {what} (unexpected end of data)") from None
    except pickle.UnpicklingError as e:
        if "truncated" in str(e):
            raise ExportError(f"{src}: truncated {what} ({e})") from None
        raise ExportError(f"{src}: corrupt {what} ({e})") from None
    except MemoryError:
        raise ExportError(f"{src}: corrupt {what} (it asks for more memory than is available)") from None
    except Exception as e:  # anything else the pickle machinery throws on crafted or damaged input
        raise ExportError(f"{src}: corrupt {what} ({type(e).__name__}: {e})") from None


def _decode_pid(pid, src, expected_len):
    if not isinstance(pid, tuple) or not pid:
        raise ExportError(f"{src}: corrupt checkpoint: persistent id {pid!r}")
    typename = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    if typename == "module":
        raise ExportError(f"{src}: the checkpoint pickles a whole nn.Module, not a state dict; "
                          "re-save it with torch.save(model.state_dict(), ...)")
    if typename != "storage" or len(pid) != expected_len:
        raise ExportError(f"{src}: corrupt checkpoint: unexpected persistent id {pid!r}")
    stype, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(stype, StorageType):
        raise ExportError(f"{src}: corrupt checkpoint: storage type {stype!r}")
    if not isinstance(key, str) or type(numel) is not int or numel < 0:
        raise ExportError(f"{src}: corrupt checkpoint: storage record {pid!r}")
    return stype, key, numel


def _register(storages, src, key, stype, numel):
    old = storages.setdefault(key, (stype, numel))
    if old[0] is not stype or old[1] != numel:
        raise ExportError(f"{src}: corrupt checkpoint: storage {key} is described twice with different types/sizes")


def _load_torch_legacy(f, src):
    """Parse the rest of a legacy torch file (after the magic number). Returns (object, materialize)."""
    proto = _load_pickle(f, src, "legacy torch header", encoding="utf-8")
    if proto != TORCH_LEGACY_PROTOCOL:
        raise ExportError(f"{src}: unsupported legacy torch protocol version {proto!r} (expected 1001)")
    sys_info = _load_pickle(f, src, "legacy torch header", encoding="utf-8")
    if not isinstance(sys_info, dict):
        raise ExportError(f"{src}: corrupt legacy torch header (sys_info is {type(sys_info).__name__})")
    little = bool(sys_info.get("little_endian", True))
    roots = {}

    def persistent_load(pid):
        stype, root_key, numel = _decode_pid(pid, src, 6)
        _register(roots, src, root_key, stype, numel)
        item = stype.itemsize
        view = pid[5]
        if view is None:
            return StorageRef(root_key, 0, numel * item, stype)
        if (not isinstance(view, tuple) or len(view) != 3 or type(view[1]) is not int
                or type(view[2]) is not int or view[1] < 0 or view[2] < 0 or view[1] + view[2] > numel):
            raise ExportError(f"{src}: corrupt legacy torch checkpoint: storage view {view!r} of {root_key}")
        return StorageRef(root_key, view[1] * item, view[2] * item, stype)

    obj = _load_pickle(f, src, "legacy torch checkpoint", persistent_load, encoding="utf-8")
    keys = _load_pickle(f, src, "legacy torch checkpoint (storage list)", encoding="utf-8")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ExportError(f"{src}: corrupt legacy torch checkpoint (storage list is {type(keys).__name__})")
    order = "<" if little else ">"
    raw = {}
    for i, key in enumerate(keys):
        if key not in roots:
            raise ExportError(f"{src}: corrupt legacy torch checkpoint: storage list names unknown storage {key}")
        stype, numel = roots[key]
        head = f.read(8)
        if len(head) < 8:
            raise ExportError(f"{src}: truncated legacy torch checkpoint: the file ends before storage {key} "
                              f"({i} of {len(keys)} storages read)")
        count = int(np.frombuffer(head, dtype=order + "i8")[0])
        if count != numel:
            raise ExportError(f"{src}: corrupt legacy torch checkpoint: storage {key} has {count} elements, "
                              f"the pickle says {numel}")
        nbytes = numel * stype.itemsize
        data = f.read(nbytes)
        if len(data) < nbytes:
            raise ExportError(f"{src}: truncated legacy torch checkpoint: storage {key} has {len(data)} of "
                              f"{nbytes} bytes ({i} of {len(keys)} storages complete)")
        raw[key] = data

    def materialize(tref, name):
        data = raw.get(tref.storage.root_key)
        if data is None:
            raise ExportError(f"{src}: tensor {name}: its storage {tref.storage.root_key} is missing from the file")
        return tref.materialize(data, little, name)

    return obj, materialize


def _read_member(zf, name, src):
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError, NotImplementedError) as e:
        raise ExportError(f"{src}: truncated or corrupt zip archive: cannot read {name} ({e})") from None


def _open_torch_zip(f, src):
    """Parse a torch zip checkpoint. Returns (object, materialize); ``f`` must stay open until done."""
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ExportError(f"{src}: truncated or corrupt zip archive ({e})") from None
    names = set(zf.namelist())
    pkls = sorted(n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1))
    if not pkls:
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            raise ExportError(f"{src}: a TorchScript archive, not a state-dict checkpoint; "
                              "save model.state_dict() with torch.save instead")
        raise ExportError(f"{src}: a zip archive without data.pkl, not a PyTorch checkpoint")
    if len(pkls) > 1:
        raise ExportError(f"{src}: zip archive with several data.pkl records ({', '.join(pkls)})")
    prefix = pkls[0][: -len("data.pkl")]
    little = True
    if prefix + "byteorder" in names:
        order = _read_member(zf, prefix + "byteorder", src).decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise ExportError(f"{src}: corrupt torch zip: byteorder record says {order!r}")
        little = order == "little"
    storages = {}

    def persistent_load(pid):
        stype, key, numel = _decode_pid(pid, src, 5)
        _register(storages, src, key, stype, numel)
        return StorageRef(key, 0, numel * stype.itemsize, stype)

    data = _read_member(zf, pkls[0], src)
    obj = _load_pickle(io.BytesIO(data), src, "torch zip checkpoint (data.pkl)", persistent_load, encoding="utf-8")
    cache = {}

    def materialize(tref, name):
        key = tref.storage.root_key
        if key not in cache:
            member = f"{prefix}data/{key}"
            if member not in names:
                raise ExportError(f"{src}: tensor {name}: storage record {member} is missing from the archive")
            raw = _read_member(zf, member, src)
            stype, numel = storages[key]
            need = numel * stype.itemsize
            if len(raw) < need:
                raise ExportError(f"{src}: tensor {name}: storage record {member} has {len(raw)} of {need} bytes "
                                  "(truncated)")
            cache[key] = raw
        return tref.materialize(cache[key], little, name)

    return obj, materialize


def _looks_like_safetensors(head, size):
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _select_state_dict(obj, src, key):
    """Walk wrapper dicts ({'state_dict': ...}, {'model': ...}) down to the dict that holds the tensors."""
    path = []
    if key is not None:
        for part in key.split("/"):
            if not isinstance(obj, dict) or part not in obj:
                have = ", ".join(repr(k) for k in list(obj)[:20]) if isinstance(obj, dict) else type(obj).__name__
                raise ExportError(f"{src}: --key {key}: no entry {part!r} (available: {have})")
            obj = obj[part]
            path.append(part)
        if not isinstance(obj, dict):
            raise ExportError(f"{src}: --key {key} selects a {type(obj).__name__}, not a dict of tensors")
        return obj, path
    for _ in range(4):
        if not isinstance(obj, dict):
            raise ExportError(f"{src}: not a checkpoint: the pickle holds a {type(obj).__name__}, "
                              "not a dict of tensors")
        if any(isinstance(v, (TensorRef, np.ndarray)) for v in obj.values()):
            return obj, path
        for w in WRAPPER_KEYS:
            if isinstance(obj.get(w), dict):
                obj = obj[w]
                path.append(w)
                break
        else:
            have = ", ".join(repr(k) for k in list(obj)[:20])
            raise ExportError(f"{src}: not a checkpoint: no tensors found (keys: {have or 'none'}); "
                              "use --key to name the entry that holds the state dict")
    raise ExportError(f"{src}: not a checkpoint: no tensors found within {len(path)} levels of wrappers")


def _join_paddle_slices(sd, src, notes):
    info = sd.get(PADDLE_BIG_PARAMS)
    if not isinstance(info, dict):
        return sd
    out = collections.OrderedDict()
    consumed = set()
    for name, meta in info.items():
        try:
            parts = [sd[p] for p in meta["slices"]]
            shape = tuple(meta["OriginShape"])
            out_arr = np.concatenate([np.asarray(p).reshape(-1) for p in parts]).reshape(shape)
        except Exception as e:
            raise ExportError(f"{src}: corrupt Paddle big-parameter record for {name} ({type(e).__name__}: {e})") \
                from None
        out[name] = out_arr
        consumed.update(meta["slices"])
        notes.append(f"joined {len(parts)} Paddle slices into {name}")
    for k, v in sd.items():
        if k not in consumed and k != PADDLE_BIG_PARAMS:
            out[k] = v
    return out


def load_checkpoint(path, key=None):
    """Load ``path`` and return a ``Checkpoint``. Raises ExportError / RefusedGlobal with a clear message."""
    src = str(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ExportError(f"{src}: no such file") from None
    except IsADirectoryError:
        raise ExportError(f"{src}: is a directory, not a checkpoint file") from None
    except OSError as e:
        raise ExportError(f"{src}: cannot open ({e.strerror or e})") from None
    notes = []
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(512)
        f.seek(0)
        if size == 0:
            raise ExportError(f"{src}: empty file, not a checkpoint")
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            obj, materialize = _open_torch_zip(f, src)
            fmt, source = "torch-zip", "torch"
        elif head[257:262] == b"ustar":
            raise ExportError(f"{src}: a tar archive (the pre-0.4 torch tar format is not supported; re-save it "
                              "with a current torch)")
        elif _looks_like_safetensors(head, size):
            raise ExportError(f"{src}: already a safetensors file, not a training checkpoint")
        else:
            if head[:1] != b"\x80" and head[:1] not in (b"(", b"}", b"]", b"c", b"I", b"L"):
                raise ExportError(f"{src}: not a checkpoint (neither a zip archive nor a pickle)")
            first = _load_pickle(f, src, "pickle")
            if type(first) is int and first == TORCH_MAGIC:
                obj, materialize = _load_torch_legacy(f, src)
                fmt, source = "torch-legacy", "torch"
            elif isinstance(first, (int, float, str, bytes)) or first is None:
                raise ExportError(f"{src}: not a checkpoint: the pickle holds a {type(first).__name__}")
            else:
                obj, materialize = first, None
                fmt, source = "pickle", "paddle"
        sd, state_path = _select_state_dict(obj, src, key)
        if source == "paddle":
            sd = _join_paddle_slices(sd, src, notes)
        tensors = collections.OrderedDict()
        for name, value in sd.items():
            if not isinstance(name, str):
                notes.append(f"skipped entry with non-string key {name!r}")
            elif isinstance(value, TensorRef):
                if materialize is None:
                    raise ExportError(f"{src}: corrupt checkpoint: torch tensor {name} in a plain pickle")
                tensors[name] = Tensor(materialize(value, name), value.st_dtype)
            elif isinstance(value, np.ndarray):
                st = numpy_to_st(value.dtype)
                if st is None:
                    notes.append(f"skipped {name}: numpy dtype {value.dtype} is not a tensor type")
                    continue
                if st == "U16" and source == "paddle":
                    notes.append(f"{name} is uint16 (Paddle's container for bfloat16); written as U16 unchanged")
                arr = np.array(value, dtype=ST_TO_NUMPY[st], order="C", copy=True)
                tensors[name] = Tensor(arr, st)
            elif name == PADDLE_NAME_MAP:
                notes.append(f"skipped {name} (Paddle structured-name map, not a tensor)")
            else:
                notes.append(f"skipped {name}: a {type(value).__name__}, not a tensor")
        if not tensors:
            raise ExportError(f"{src}: not a checkpoint: no tensors found")
    return Checkpoint(tensors, source, fmt, state_path, notes)
