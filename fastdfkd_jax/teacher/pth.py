"""PyTorch checkpoints (`torch.save` files) read into NumPy without importing torch.

`read` takes the zip format of torch >= 1.6 (`<archive>/data.pkl`, `data/<key>` per storage,
`byteorder`, `version`), the legacy one (pickles of magic number, protocol, sys_info, the
object and the storage keys, then each storage as an int64 count and its bytes), and a
plain `pickle.dump` of tensors (each storage a legacy torch.save of its own). Only plain
containers, torch's tensor rebuild functions and storage types unpickle: anything else (a
pickled `nn.Module`, `os.system`) is refused before it runs. `write` makes test fixtures.
"""

import collections
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from typing import Any, Mapping

import numpy as np

from fastdfkd_jax import errors

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # then protocol version 1001
_REFUSED = ("{path} holds Python objects besides tensors ({what}), refused: re-save just its "
            "state_dict (torch.save(model.state_dict(), path))")
# torch.<X>Storage -> NumPy dtype code ("bf16": bfloat16, stored as uint16).
_STORAGES = dict(DoubleStorage="f8", FloatStorage="f4", HalfStorage="f2", BFloat16Storage="bf16",
                 LongStorage="i8", IntStorage="i4", ShortStorage="i2", CharStorage="i1",
                 ByteStorage="u1", BoolStorage="?", ComplexFloatStorage="c8",
                 ComplexDoubleStorage="c16")


class _Type(str):
  """A torch storage type as its NumPy dtype code (empty __slots__: BUILD cannot alter it)."""
  __slots__ = ()


class _Tensor(tuple):
  """(storage, dtype code, offset, size, stride), cut out once all storages are read."""
  __slots__ = ()


class _Storage:
  """One storage: dtype code, byte count, and its bytes (legacy files: filled in later)."""
  __slots__ = ("code", "numel", "nbytes", "data")
  __setstate__ = None  # pickle's BUILD on it fails


# (module, name) -> what find_class gives (functions in a fresh lambda: BUILD cannot alter them).
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): lambda storage, offset, size, stride, *_: (
        _Tensor((storage, getattr(storage, "code", None), offset, size, stride))),
    ("torch._utils", "_rebuild_parameter"): lambda data, *_: data,
    ("torch._utils", "_rebuild_parameter_with_state"): lambda data, *_: data,
    ("torch", "Size"): tuple,
    # A tensor pickled with plain `pickle.dump` (NAYER's label embeddings): its storage is
    # a legacy torch.save of the storage alone, read here like a legacy file.
    ("torch.storage", "_load_from_bytes"): lambda data: _read_legacy("<bytes>", io.BytesIO(data)),
    **{("torch", name): _Type(code) for name, code in _STORAGES.items()},
}


class _Unpickler(pickle.Unpickler):
  """Unpickles allow-listed globals only, and storage ids as one _Storage a key.

  An id is ("storage", type, key, location, numel[, view]); bytes: `fetch(key)`, or legacy: later.
  """

  def __init__(self, file, path: str, storages: dict | None = None, fetch=None):
    # Parse it first, running nothing: refuse protocol-5 buffers, and memo indices past its
    # length (CPython's unpickler allocates up to them: 10 GB for a damaged 10**9).
    start = file.tell()
    for op, arg, pos in pickletools.genops(file):
      if op.proto > 4 or ("PUT" in op.name and arg > pos - start):
        raise ValueError(f"a damaged pickle ({op.name} {arg} at byte {pos})")
    file.seek(start)
    super().__init__(file)
    self._path, self._storages, self._fetch = path, storages, fetch

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      what = ascii(f"{module}.{name}")[1:-1][:200]  # one printable line
      raise errors.UserError(_REFUSED.format(path=self._path, what=what))
    found = _ALLOWED[module, name]
    return found if isinstance(found, (type, _Type)) else lambda *args: found(*args)

  def persistent_load(self, pid):
    legacy = self._fetch is None
    if (self._storages is None or not isinstance(pid, tuple) or len(pid) != 5 + legacy
        or pid[0] != "storage" or not isinstance(pid[1], _Type) or not isinstance(pid[2], str)
        or type(pid[4]) is not int or pid[4] < 0 or (legacy and pid[5] is not None)):
      raise ValueError(f"unexpected storage id {ascii(pid)[:100]}")
    code, key, storages = pid[1], pid[2], self._storages
    nbytes = pid[4] * (2 if code == "bf16" else np.dtype(code).itemsize)
    if key not in storages:  # as in torch, later ids of a key reuse the first one's storage
      storages[key] = st = _Storage()
      st.code, st.numel, st.nbytes = code, pid[4], nbytes
      st.data = None if legacy else self._fetch(key)
      if st.data is not None and len(st.data) != nbytes:
        raise ValueError(f"storage data/{key} holds {len(st.data)} bytes, expected {nbytes}")
    return storages[key]


def _record(zf: zipfile.ZipFile, f, name: str) -> bytes:
  """The bytes of an uncompressed zip record, checked against its CRC-32 unless that is 0."""
  try:
    info = zf.getinfo(name)
  except KeyError:
    raise ValueError(f"record {name} is missing") from None
  if info.compress_type != zipfile.ZIP_STORED:
    raise ValueError(f"record {name} is compressed (torch.save stores records uncompressed)")
  size = f.seek(0, os.SEEK_END)
  f.seek(info.header_offset)
  head = f.read(30)
  if len(head) != 30 or head[:4] != b"PK\x03\x04":
    raise ValueError(f"record {name} has a damaged zip header")
  start = info.header_offset + 30 + sum(struct.unpack("<HH", head[26:30]))
  if start + info.file_size > size:
    raise ValueError(f"record {name} is truncated")
  f.seek(start)
  data = f.read(info.file_size)
  if info.CRC and zlib.crc32(data) != info.CRC:  # torch writes 0 with compute_crc32=False
    raise ValueError(f"record {name} fails its CRC-32 check")
  return data


def _read_zip(path: str, f) -> tuple[Any, bool]:
  """(object, big-endian?) of a torch >= 1.6 zip checkpoint."""
  zf = zipfile.ZipFile(f)
  names = set(zf.namelist())
  pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
  if len(pkls) != 1:
    raise ValueError("a zip archive without one <archive>/data.pkl: not a torch.save file")
  prefix = pkls[0][:-len("data.pkl")]
  order = _record(zf, f, prefix + "byteorder") if prefix + "byteorder" in names else b"little"
  if order not in (b"little", b"big"):
    raise ValueError(f"unknown byte order {order[:20]!r}")
  unpickler = _Unpickler(io.BytesIO(_record(zf, f, pkls[0])), path, {},
                         lambda key: _record(zf, f, f"{prefix}data/{key}"))
  return unpickler.load(), order == b"big"


def _read_legacy(path: str, f) -> Any:
  """The object of a torch < 1.6 checkpoint (its storages are little-endian)."""
  f = io.BytesIO(f.read())  # a damaged length in a pickle cannot make f.read() allocate it
  if _Unpickler(f, path).load() != _LEGACY_MAGIC or _Unpickler(f, path).load() != 1001:
    raise ValueError("a damaged legacy header (magic number, protocol version)")
  _Unpickler(f, path).load()  # sys_info
  storages = {}
  obj = _Unpickler(f, path, storages).load()
  keys = _Unpickler(f, path).load()
  if not isinstance(keys, list) or sorted(keys) != sorted(storages):
    raise ValueError("the storage keys do not match the storages the object uses")
  for key in keys:
    st, head = storages[key], f.read(8)
    if len(head) != 8 or struct.unpack("<q", head)[0] != st.numel:
      raise ValueError(f"storage {key} has a damaged size header")
    st.data = f.read(st.nbytes)
    if len(st.data) != st.nbytes:
      raise ValueError(f"storage {key} is truncated")
  return obj


def _array(tensor: _Tensor, big_endian: bool) -> np.ndarray:
  """An owned, C-contiguous copy of a tensor (float16 and bfloat16 as float32)."""
  storage, code, offset, size, stride = tensor
  if (not isinstance(storage, _Storage) or storage.data is None or not isinstance(size, tuple)
      or not isinstance(stride, tuple) or len(size) != len(stride)
      or any(type(v) is not int or v < 0 for v in size + stride + (offset,))):
    raise ValueError("a tensor with a malformed storage, size, stride or offset")
  dtype = np.dtype({"bf16": "u2", "?": "u1"}.get(code, code))
  dtype = dtype.newbyteorder(">" if big_endian else "<")
  flat = np.frombuffer(storage.data, dtype, len(storage.data) // dtype.itemsize)
  if not math.prod(size):
    view = np.empty(size, dtype)
  elif offset + sum((n - 1) * s for n, s in zip(size, stride)) < flat.size:
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], size, [s * dtype.itemsize for s in stride], writeable=False)
  else:
    raise ValueError("a tensor reaches past the end of its storage")
  arr = np.array(view, dtype=dtype.newbyteorder("="), order="C")
  if code == "bf16":  # the high half of a float32
    arr = arr.astype(np.uint32)
    arr <<= 16  # in place: a 0-d array stays an array
    return arr.view(np.float32)
  return arr.astype({"f2": np.float32, "?": bool}[code]) if code in ("f2", "?") else arr


def _resolve(obj, big_endian: bool):
  """`obj` with each tensor as its array; dicts and lists are updated in place."""
  if isinstance(obj, _Tensor):
    return _array(obj, big_endian)
  if isinstance(obj, (_Type, _Storage, type)) or callable(obj):
    raise ValueError(f"a bare {type(obj).__name__} outside a tensor")
  if isinstance(obj, dict):
    for key in list(obj):
      if isinstance(key, (_Tensor, _Type, _Storage)):
        raise ValueError("a tensor or storage as a dict key")
      obj[key] = _resolve(obj[key], big_endian)
    if getattr(obj, "__dict__", None):  # e.g. a state_dict's _metadata
      _resolve(obj.__dict__, big_endian)
  elif isinstance(obj, list):
    obj[:] = [_resolve(v, big_endian) for v in obj]
  elif isinstance(obj, tuple):
    return tuple(_resolve(v, big_endian) for v in obj)
  return obj


def _has_tensor(obj) -> bool:
  if isinstance(obj, _Tensor):
    return True
  values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
  return any(_has_tensor(v) for v in values)


def read(path: str) -> Any:
  """Loads a `torch.save` file with every tensor as a NumPy array, without torch.

  Args:
    path: a zip-format (torch >= 1.6) or legacy (torch < 1.6) checkpoint.

  Returns:
    The saved object (dicts, OrderedDicts, lists, tuples, scalars, strings) with each tensor or
    parameter as an owned `np.ndarray` of its dtype and shape (float16, bfloat16: float32).

  Raises:
    errors.UserError: no such file; not a torch checkpoint; a truncated or damaged one; or one
      pickling Python objects besides tensors and plain containers (e.g. a whole `nn.Module`),
      refused without running them.
  """
  if not os.path.isfile(path):
    raise errors.UserError(f"no PyTorch checkpoint at {path}")
  try:
    with open(path, "rb") as f:
      head = f.read(32)
      f.seek(0)
      if head.startswith(b"PK\x03\x04"):
        obj, big_endian = _read_zip(path, f)
      elif _LEGACY_MAGIC.to_bytes(10, "little") in head:  # its pickled magic number
        obj, big_endian = _read_legacy(path, f), False
      elif head[:1] == b"\x80":   # a plain pickle: tensors pickle.dump-ed
        obj, big_endian = _Unpickler(io.BytesIO(f.read()), path).load(), False
        if not _has_tensor(obj):
          raise ValueError("a pickle without tensors: not a torch.save file")
      else:
        raise ValueError("neither a zip archive (torch >= 1.6), a legacy torch.save file nor "
                         "a pickle")
    return _resolve(obj, big_endian)
  except errors.UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # damaged files raise anything
    problem = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    raise errors.UserError(f"{path} is not a readable PyTorch checkpoint ({problem})") from e


def _ops(value) -> bytes:
  """Protocol-2 pickle opcodes of an int, str or tuple of those; bytes are opcodes already."""
  if isinstance(value, bytes):
    return value
  if isinstance(value, str):
    return b"X" + struct.pack("<I", len(value.encode())) + value.encode()  # BINUNICODE
  if isinstance(value, tuple):
    return b"(" + b"".join(map(_ops, value)) + b"t" if value else b")"  # MARK...TUPLE
  if 0 <= value < 256:
    return b"K" + bytes([value])  # BININT1
  return b"\x8a\x08" + value.to_bytes(8, "little", signed=True)  # LONG1


def write(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
  """Writes `state_dict` like torch.save: an OrderedDict of tensors, a storage each, zip format.

  Args:
    path: the file to write.
    state_dict: name -> array of float64/32/16, int64/32/16/8, uint8, bool, complex64/128.

  Raises:
    errors.UserError: a key that is not a string, or an array of another dtype.
  """
  arrays = [(k, np.asarray(v)) for k, v in state_dict.items()]
  pickled = b"\x80\x02ccollections\nOrderedDict\n)R" + (b"(" if arrays else b"")
  for i, (key, arr) in enumerate(arrays):
    storage = {np.dtype(c): n for n, c in _STORAGES.items() if c != "bf16"}.get(
        arr.dtype.newbyteorder("="))
    if not isinstance(key, str) or storage is None:
      raise errors.UserError(f"cannot write {key!r} ({arr.dtype}) as a torch tensor")
    pid = ("storage", f"ctorch\n{storage}\n".encode(), str(i), "cpu", arr.size)
    strides = tuple(math.prod(arr.shape[d + 1:]) for d in range(arr.ndim))
    args = (_ops(pid) + b"Q", 0, arr.shape, strides, b"\x89",  # NEWFALSE: requires_grad
            b"ccollections\nOrderedDict\n)R")  # backward hooks
    pickled += _ops(key) + b"ctorch._utils\n_rebuild_tensor_v2\n" + _ops(args) + b"R"
  records = [("data.pkl", pickled + (b"u." if arrays else b".")), (".format_version", b"1"),
             (".storage_alignment", b"64"), ("byteorder", b"little")]
  records += [(f"data/{i}", np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes())
              for i, (_, a) in enumerate(arrays)] + [("version", b"3\n")]
  with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
    for name, data in records:
      info = zipfile.ZipInfo("archive/" + name, date_time=(1980, 1, 1, 0, 0, 0))
      if name.startswith("data/"):  # pad the local header so that the payload is 64-aligned
        pad = -(f.tell() + 30 + len(info.filename) + 4) % 64
        info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
      zf.writestr(info, data)
