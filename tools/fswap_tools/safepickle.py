"""A restricted unpickler for checkpoints: it can rebuild tensors, numpy arrays and containers, nothing else.

Checkpoints are pickles, and a pickle can call any importable function. ``SafeUnpickler.find_class`` therefore
resolves only the exact ``(module, name)`` pairs in ``ALLOWED`` and maps every one of them to an object defined
or vetted here (torch is never imported: its rebuild functions and storage classes become the placeholders
below). Any other global raises ``RefusedGlobal`` before the pickle can call it.

Torch tensors come out of the unpickler as ``TensorRef`` placeholders that point into a ``StorageRef``; the
caller reads the storage bytes (zip record or legacy stream) and calls ``TensorRef.materialize``.
"""

import collections
import pickle

import numpy as np

from .errors import ExportError, RefusedGlobal


# safetensors dtype -> little-endian numpy storage dtype. BF16 and the float8 types have no numpy dtype:
# they are carried as raw uint16 / uint8 bit patterns and written back unchanged.
ST_TO_NUMPY = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "|i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "|u1",
    "BOOL": "|b1", "F8_E4M3": "|u1", "F8_E5M2": "|u1",
}

# torch legacy typed-storage class name -> safetensors dtype (None: no safetensors equivalent).
TORCH_STORAGES = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
    "ComplexDoubleStorage": None, "ComplexFloatStorage": None, "QUInt8Storage": None, "QInt8Storage": None,
    "QInt32Storage": None, "QUInt4x2Storage": None, "QUInt2x4Storage": None,
}

_UNSUPPORTED_ITEMSIZE = {"ComplexDoubleStorage": 16, "ComplexFloatStorage": 8, "QInt32Storage": 4}

# torch dtype attribute name (as pickled by _rebuild_tensor_v3) -> safetensors dtype.
TORCH_DTYPES = {
    "float64": "F64", "double": "F64", "float32": "F32", "float": "F32", "float16": "F16", "half": "F16",
    "bfloat16": "BF16", "int64": "I64", "long": "I64", "int32": "I32", "int": "I32", "int16": "I16",
    "short": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16", "uint32": "U32",
    "uint64": "U64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "complex64": None, "complex128": None, "cfloat": None, "cdouble": None, "complex32": None,
    "float8_e4m3fnuz": None, "float8_e5m2fnuz": None, "float8_e8m0fnu": None,
}


class _Frozen:
    """Placeholders refuse pickle BUILD (no ``__dict__``, ``__setstate__`` raises)."""

    __slots__ = ()

    def __setstate__(self, state):
        raise ExportError("checkpoint pickle tries to set state on a tensor placeholder (corrupt or crafted file)")


class StorageType(_Frozen):
    """Stands for ``torch.FloatStorage`` & co. (``st_dtype``; None when unsupported, e.g. complex) or
    ``torch.storage.UntypedStorage`` (``st_dtype`` None, elements are bytes)."""

    __slots__ = ("name", "st_dtype")

    def __init__(self, name, st_dtype):
        self.name, self.st_dtype = name, st_dtype

    @property
    def itemsize(self):
        """Bytes per storage element (1 for untyped; unsupported types: their torch element size)."""
        if self.st_dtype is not None:
            return np.dtype(ST_TO_NUMPY[self.st_dtype]).itemsize
        return _UNSUPPORTED_ITEMSIZE.get(self.name, 1)

    def __repr__(self):
        return f"<torch.{self.name}>"


class DType(_Frozen):
    """Stands for a ``torch.<dtype>`` global (argument of ``_rebuild_tensor_v3``)."""

    __slots__ = ("name", "st_dtype")

    def __init__(self, name, st_dtype):
        self.name, self.st_dtype = name, st_dtype

    def __repr__(self):
        return f"<torch.{self.name}>"


class StorageRef(_Frozen):
    """A (view of a) storage: ``nbytes`` bytes at ``byte_offset`` in the raw data of storage ``root_key``.

    ``st_dtype`` is the element type of a typed storage, or None for an untyped (byte) storage.
    """

    __slots__ = ("root_key", "byte_offset", "nbytes", "st_dtype", "stype")

    def __init__(self, root_key, byte_offset, nbytes, stype):
        self.root_key, self.byte_offset, self.nbytes = root_key, byte_offset, nbytes
        self.st_dtype, self.stype = stype.st_dtype, stype


class TensorRef(_Frozen):
    """A strided tensor over a ``StorageRef``; offsets and strides are in elements of ``st_dtype``."""

    __slots__ = ("storage", "offset", "size", "stride", "st_dtype")

    def __init__(self, storage, offset, size, stride, st_dtype):
        self.storage, self.offset, self.size, self.stride, self.st_dtype = storage, offset, size, stride, st_dtype

    def materialize(self, raw, little_endian, name):
        """Copy the tensor out of ``raw`` (the bytes of its root storage) into a C-contiguous LE array."""
        st = self.storage
        if self.st_dtype is None:
            raise ExportError(f"tensor {name}: storage type torch.{st.stype.name} has no safetensors equivalent")
        le = np.dtype(ST_TO_NUMPY[self.st_dtype])
        file_dt = le if little_endian else le.newbyteorder(">")
        item = le.itemsize
        if st.byte_offset + st.nbytes > len(raw):
            raise ExportError(
                f"tensor {name}: storage {st.root_key} holds {len(raw)} bytes, the tensor needs "
                f"{st.byte_offset + st.nbytes} (truncated storage)")
        if st.nbytes % item:
            raise ExportError(f"tensor {name}: storage of {st.nbytes} bytes is not a whole number of "
                              f"{self.st_dtype} elements")
        count = st.nbytes // item
        numel = 1
        for n in self.size:
            numel *= n
        if numel == 0:
            return np.zeros(self.size, dtype=le)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= count:
            raise ExportError(
                f"tensor {name}: shape {list(self.size)}, stride {list(self.stride)}, offset {self.offset} "
                f"reaches element {last} but its storage has only {count} (truncated or corrupt)")
        flat = np.frombuffer(raw, dtype=file_dt, count=count, offset=st.byte_offset)
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=tuple(self.size), strides=tuple(s * item for s in self.stride),
            writeable=False)
        return np.array(view, dtype=le, order="C", copy=True)


def _int_tuple(value, what):
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise ExportError(f"corrupt tensor record: {what} is {value!r}, expected a tuple of non-negative ints")
    return value


def _make_tensor(storage, storage_offset, size, stride, st_dtype):
    if not isinstance(storage, StorageRef):
        raise ExportError(f"corrupt tensor record: storage argument is {type(storage).__name__}")
    if type(storage_offset) is not int or storage_offset < 0:
        raise ExportError(f"corrupt tensor record: storage offset {storage_offset!r}")
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise ExportError(f"corrupt tensor record: size {size} and stride {stride} differ in rank")
    return TensorRef(storage, storage_offset, size, stride, st_dtype)


def rebuild_tensor(storage, storage_offset, size, stride):
    """``torch._utils._rebuild_tensor`` (very old checkpoints).

    The element type is the storage's; an untyped storage gives uint8, as in ``torch.load``; an unsupported
    storage type (complex, quantized) gives None and fails only if that tensor is exported.
    """
    if not isinstance(storage, StorageRef):
        raise ExportError(f"corrupt tensor record: storage argument is {type(storage).__name__}")
    st_dtype = storage.st_dtype
    if storage.stype.name == "UntypedStorage":
        st_dtype = "U8"
    return _make_tensor(storage, storage_offset, size, stride, st_dtype)


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                      metadata=None):
    """``torch._utils._rebuild_tensor_v2``: the element type is the storage's."""
    return rebuild_tensor(storage, storage_offset, size, stride)


def rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    """``torch._utils._rebuild_tensor_v3``: an untyped storage plus an explicit dtype (float8, uint16, ...)."""
    if not isinstance(dtype, DType):
        raise ExportError(f"corrupt tensor record: dtype argument is {type(dtype).__name__}")
    if dtype.st_dtype is None:
        raise ExportError(f"tensor dtype torch.{dtype.name} has no safetensors equivalent")
    if isinstance(storage, StorageRef) and storage.stype.name != "UntypedStorage":
        raise ExportError("corrupt tensor record: _rebuild_tensor_v3 expects an untyped storage")
    return _make_tensor(storage, storage_offset, size, stride, dtype.st_dtype)


def rebuild_parameter(data, requires_grad, backward_hooks):
    """``torch._utils._rebuild_parameter``: a Parameter is just its tensor here."""
    if not isinstance(data, TensorRef):
        raise ExportError(f"corrupt parameter record: data is {type(data).__name__}")
    return data


def rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return rebuild_parameter(data, requires_grad, backward_hooks)


class _NdarrayType(_Frozen):
    """Stands for the ``numpy.ndarray`` global: only usable as the subtype argument of ``_reconstruct`` (calling
    the real class from a pickle could hand out uninitialised memory)."""

    __slots__ = ()

    def __repr__(self):
        return "<numpy.ndarray>"


NDARRAY = _NdarrayType()


def np_reconstruct(subtype, shape, dtype):
    """numpy's array pickle entry point (``_reconstruct``), allowed only for plain ndarrays.

    Returns a zero-filled array (numpy's own leaves it uninitialised); ``__setstate__`` (pickle BUILD) then
    replaces shape, dtype and data, exactly as with numpy's function.
    """
    if subtype is not NDARRAY:
        raise ExportError(f"refusing to reconstruct numpy subtype {subtype!r}")
    return np.zeros(shape, dtype=np.dtype(dtype))


def np_scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar``: a numeric numpy scalar from its raw bytes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise ExportError("refusing to reconstruct a numpy object scalar")
    if len(data) != dtype.itemsize:
        raise ExportError(f"corrupt numpy scalar: {len(data)} bytes for dtype {dtype}")
    return np.frombuffer(data, dtype=dtype)[0]


def np_frombuffer(buf, dtype, shape, order):
    """numpy's protocol-5 array entry point (``numpy._core.numeric._frombuffer``)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise ExportError("refusing to reconstruct a numpy object array")
    if order not in ("C", "F"):
        raise ExportError(f"corrupt numpy record: order {order!r}")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order).copy(order="K")


def codecs_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as numpy uses it in protocol 2 (latin-1 round trip of raw bytes) and nothing more."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise ExportError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin-1", errors if errors in ("strict",) else "strict")


def empty_bytes(*args):
    """``builtins.bytes()``: how protocols 0-2 pickle an empty bytes object. Nothing else is accepted."""
    if args:
        raise ExportError("refusing builtins.bytes with arguments in a checkpoint pickle")
    return b""


def _build_allowed():
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter_with_state,
        ("torch", "Size"): tuple,
        ("numpy", "ndarray"): NDARRAY,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(core + ".multiarray", "_reconstruct")] = np_reconstruct
        allowed[(core + ".multiarray", "scalar")] = np_scalar
        allowed[(core + ".numeric", "_frombuffer")] = np_frombuffer
    for builtins in ("builtins", "__builtin__"):
        for name, obj in (("set", set), ("frozenset", frozenset), ("bytes", empty_bytes)):
            allowed[(builtins, name)] = obj
    for name, st in TORCH_STORAGES.items():
        allowed[("torch", name)] = StorageType(name, st)
    untyped = StorageType("UntypedStorage", None)
    allowed[("torch", "UntypedStorage")] = untyped
    allowed[("torch.storage", "UntypedStorage")] = untyped
    for name, st in TORCH_DTYPES.items():
        allowed[("torch", name)] = DType(name, st)
    return allowed


ALLOWED = _build_allowed()


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals are limited to ``ALLOWED``.

    ``source`` names the input in messages; ``persistent_load`` handles torch storage ids (None: refuse them).
    """

    def __init__(self, file, source, persistent_load=None, encoding="latin1"):
        super().__init__(file, encoding=encoding)
        self._source = source
        self._persistent = persistent_load

    def find_class(self, module, name):
        obj = ALLOWED.get((module, name))
        if obj is None:
            raise RefusedGlobal(
                f"refused to load global {module}.{name} from {self._source}: checkpoints may only contain tensors")
        return obj

    def persistent_load(self, pid):
        if self._persistent is None:
            raise ExportError(f"{self._source}: unexpected persistent id {pid!r} in a plain pickle")
        return self._persistent(pid)
