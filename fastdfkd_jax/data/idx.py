"""MNIST-style IDX files (gzipped or not) in one directory.

The directory holds `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
`t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz` (`.gz` optional,
`-idx` or `.idx` accepted), as MNIST and Fashion-MNIST ship.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from fastdfkd_jax import errors
from fastdfkd_jax.data.info import LAYOUT_HELP, DatasetInfo, Split

_IDX_PREFIX = {"train": "train", "test": "t10k"}

# IDX type code -> numpy dtype (big-endian).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
               0x0D: ">f4", 0x0E: ">f8"}


def _idx_candidates(prefix: str, kind: str) -> list[str]:
  """File names accepted for one IDX file, e.g. ('t10k', 'images')."""
  ndim = 3 if kind == "images" else 1
  names = []
  for sep in ("-", "."):
    base = f"{prefix}-{kind}{sep}idx{ndim}-ubyte"
    names += [base + ".gz", base]
  return names


def _has_any_idx(path: str) -> bool:
  try:
    entries = os.listdir(path)
  except OSError:
    return False
  return any("idx1-ubyte" in e or "idx3-ubyte" in e for e in entries)


def _idx_files(path: str, split: Split,
               must_exist: bool = True) -> tuple[str, str] | None:
  """(images file, labels file) of `split` in directory `path`."""
  prefix = _IDX_PREFIX[split]
  found = []
  for kind in ("images", "labels"):
    names = _idx_candidates(prefix, kind)
    hit = next((os.path.join(path, n) for n in names
                if os.path.isfile(os.path.join(path, n))), None)
    if hit is None:
      if must_exist:
        raise errors.UserError(
            f"IDX directory {path!r} lacks the {split} {kind} file (looked for "
            f"{', '.join(names)}).\n{LAYOUT_HELP}")
      return None
    found.append(hit)
  return found[0], found[1]


def is_idx_dir(path: str, split: Split) -> bool:
  """Whether directory `path` holds the IDX files of `split`, or any IDX file."""
  return _idx_files(path, split, must_exist=False) is not None or _has_any_idx(path)


def read_idx(path: str) -> np.ndarray:
  """Parses one IDX file (gzipped when the name ends in .gz).

  Header: two zero bytes, a type code (0x08 = uint8, ...), the number of
  dimensions d, then d big-endian uint32 sizes; the data follows, big-endian.

  Returns:
    An array of the stored shape and dtype (native byte order).

  Raises:
    UserError: the file is not a well-formed IDX file (message names `path`).
  """
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        raw = f.read()
    else:
      with open(path, "rb") as f:
        raw = f.read()
  except (OSError, EOFError, zlib.error) as e:  # zlib.error: damaged deflate data in a .gz
    raise errors.UserError(f"Corrupt IDX file {path!r}: cannot read it ({e}).\n"
                           f"{LAYOUT_HELP}") from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise errors.UserError(
        f"Corrupt IDX file {path!r}: bad magic number {raw[:4].hex()!r} "
        f"(expected 00 00 <type> <ndim>, e.g. 2051 for images, 2049 for "
        f"labels).\n{LAYOUT_HELP}")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if ndim == 0 or len(raw) < header:
    raise errors.UserError(f"Corrupt IDX file {path!r}: truncated header "
                           f"(ndim={ndim}).\n{LAYOUT_HELP}")
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  expected = math.prod(dims) * dtype.itemsize  # exact: np.prod wraps around past 2**63
  if len(raw) - header != expected:
    raise errors.UserError(
        f"Corrupt IDX file {path!r}: header dims {dims} need {expected} data "
        f"bytes, file has {len(raw) - header}.\n{LAYOUT_HELP}")
  try:
    data = np.frombuffer(raw, dtype, offset=header).reshape(dims)
  except ValueError as e:  # e.g. dims (0, 2**32 - 1, 2**32 - 1, 2**32 - 1): "too big"
    raise errors.UserError(f"Corrupt IDX file {path!r}: header dims {dims} ({e}).\n"
                           f"{LAYOUT_HELP}") from e
  return data.astype(dtype.newbyteorder("="))


def load(info: DatasetInfo, split: Split,
         path: str) -> tuple[np.ndarray, np.ndarray]:
  """uint8 (N, H, W, C) images and int32 (N,) labels of `split` in directory `path`."""
  images_path, labels_path = _idx_files(path, split)
  images = read_idx(images_path)
  labels = read_idx(labels_path)
  h, w, c = info.image_shape
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise errors.UserError(
        f"IDX images {images_path!r}: expected uint8 (N, H, W), got "
        f"{images.dtype} {images.shape}")
  if images.ndim == 3:
    images = images[..., None]
  if images.shape[1:] != (h, w, c):
    raise errors.UserError(
        f"IDX images {images_path!r} have shape {images.shape[1:]}, dataset "
        f"{info.name!r} expects {(h, w, c)}")
  if not len(images):
    raise errors.UserError(f"IDX images {images_path!r} hold no images (header dims "
                           f"{images.shape[:-1]})")
  if labels.dtype.kind not in "iu":
    raise errors.UserError(f"IDX labels {labels_path!r} are {labels.dtype}; class indices "
                           "are an integer type (IDX type code 0x08, 0x09, 0x0B or 0x0C)")
  if labels.ndim != 1 or len(labels) != len(images):
    raise errors.UserError(
        f"IDX labels {labels_path!r}: shape {labels.shape} does not match "
        f"{len(images)} images in {images_path!r}")
  return np.ascontiguousarray(images), labels.astype(np.int32)
