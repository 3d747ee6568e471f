"""Minimal safetensors writer and reader (numpy only).

Layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON (padded with spaces to a multiple of 8),
then the raw little-endian tensor bytes. The JSON maps each tensor name to
``{"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}`` (offsets relative to the start of the data)
and may hold ``"__metadata__"``, a map of string to string.

The writer lays the tensors out back to back without holes, largest element size first and then by name, so
every tensor starts at a multiple of its element size (the header is 8-aligned) and the output is deterministic.
Writes are atomic: a temporary file in the destination directory, fsync, ``os.replace``.
"""

import json
import os
import tempfile

import numpy as np

from .errors import ExportError
from .safepickle import ST_TO_NUMPY

MAX_HEADER = 100 * 1024 * 1024  # the limit the safetensors crate enforces


def _itemsize(st_dtype):
    return np.dtype(ST_TO_NUMPY[st_dtype]).itemsize


def build_header(tensors, metadata=None):
    """Return (header_bytes, ordered [(name, array)]). ``tensors``: name -> (array, st_dtype)."""
    order = sorted(tensors, key=lambda n: (-_itemsize(tensors[n][1]), n))
    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ExportError(f"safetensors metadata must map str to str, got {k!r}: {v!r}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    layout = []
    for name in order:
        array, st = tensors[name]
        want = np.dtype(ST_TO_NUMPY[st])
        if array.dtype != want:
            raise ExportError(f"tensor {name}: array dtype {array.dtype} does not match {st}")
        nbytes = array.size * want.itemsize
        header[name] = {"dtype": st, "shape": [int(d) for d in array.shape], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        layout.append((name, array))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return text, layout


def write_safetensors(path, tensors, metadata=None):
    """Atomically write ``tensors`` (name -> (array, st_dtype)) to ``path``. On failure ``path`` is untouched."""
    header, layout = build_header(tensors, metadata)
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ExportError(f"{path}: output directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    except OSError as e:
        raise ExportError(f"{path}: cannot create a temporary file in {directory} ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            for _, array in layout:
                f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise ExportError(f"{path}: write failed ({e.strerror or e})") from None
        raise
    try:  # make the rename itself durable; best effort (not every filesystem allows opening a directory)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


class SafetensorsFile:
    """A parsed safetensors file: ``metadata`` (dict), ``entries`` name -> {dtype, shape, data_offsets}."""

    def __init__(self, path):
        with open(path, "rb") as f:
            blob = f.read()
        if len(blob) < 8:
            raise ExportError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        n = int.from_bytes(blob[:8], "little")
        if n > MAX_HEADER or 8 + n > len(blob):
            raise ExportError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(blob[8:8 + n].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ExportError(f"{path}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise ExportError(f"{path}: corrupt safetensors header (not an object)")
        self.path = path
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries = header
        self._data = memoryview(blob)[8 + n:]
        spans = []
        for name, e in header.items():
            begin, end = e["data_offsets"]
            if e["dtype"] not in ST_TO_NUMPY:
                raise ExportError(f"{path}: tensor {name}: unknown dtype {e['dtype']}")
            numel = 1
            for d in e["shape"]:
                numel *= d
            if end - begin != numel * _itemsize(e["dtype"]) or not 0 <= begin <= end <= len(self._data):
                raise ExportError(f"{path}: tensor {name}: bad data_offsets {e['data_offsets']}")
            spans.append((begin, end))
        spans.sort()
        pos = 0
        for begin, end in spans:
            if begin != pos:
                raise ExportError(f"{path}: data section has a hole or an overlap at byte {pos}")
            pos = end
        if pos != len(self._data):
            raise ExportError(f"{path}: data section is {len(self._data)} bytes, tensors cover {pos}")

    def names(self):
        return list(self.entries)

    def raw(self, name):
        """The tensor's bytes, exactly as stored."""
        begin, end = self.entries[name]["data_offsets"]
        return bytes(self._data[begin:end])

    def array(self, name):
        """The tensor as a numpy array (BF16 / F8 as their raw uint bit patterns)."""
        e = self.entries[name]
        return np.frombuffer(self.raw(name), dtype=ST_TO_NUMPY[e["dtype"]]).reshape(e["shape"])


def read_safetensors(path):
    return SafetensorsFile(path)
