"""Small data fixtures written into tmp_path: IDX files, image-folder trees, archives.

Shared by the tests of fastdfkd_jax.data (no network and no shared data).
"""

import gzip
import struct
import tarfile

import numpy as np
from PIL import Image


def write_idx(path, array, gz=True):
  """Writes `array` (uint8) as an IDX file: magic 0x0000 08 ndim, BE dims."""
  array = np.asarray(array, np.uint8)
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  opener = gzip.open if gz else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def make_idx_dir(root, n_train=12, n_test=5, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  data = {}
  suffix = ".gz" if gz else ""
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    data[prefix] = (images, labels)
  return data


def make_tree(root, classes, size=(32, 32), mode="RGB", per_class=(2, 1),
              ext="png"):
  """train/<class>/ and test/<class>/ with images whose pixel value encodes
  the class index (so labels can be checked from the pixels)."""
  for split, n in zip(("train", "test"), per_class):
    for ci, cls in enumerate(classes):
      d = root / split / cls
      d.mkdir(parents=True, exist_ok=True)
      for j in range(n):
        value = 20 * ci + 5
        shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
        Image.fromarray(np.full(shape, value, np.uint8), mode).save(
            d / f"{j:04d}.{ext}")
  return root


def make_tar(tree_root, archive, top="cifar-images"):
  with tarfile.open(archive, "w:gz") as tar:
    for split in ("train", "test"):
      tar.add(tree_root / split, arcname=f"{top}/{split}" if top else split)
  return archive
