"""Real data sets: a table of their constants, loaders and a host batch iterator.

The teacher is trained, and the student scored, on real data; synthesis never
reads it. Every loader returns host numpy arrays:

  images: uint8 (N, H, W, C), pixels 0..255 (C = 1 for grey sets, 3 for RGB)
  labels: int32 (N,), values in [0, num_classes)

Where the data comes from (see `load_split`):

  * `digits` always comes from scikit-learn (offline, 8x8 grey, 1797 images).
  * `data_dir=''`: TensorFlow Datasets (downloads; needs network the first time).
  * `data_dir=<path>`: a local copy in one of three layouts, detected from the path:
      (a) a directory with the IDX files `train-images-idx3-ubyte.gz`,
          `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`,
          `t10k-labels-idx1-ubyte.gz` (gzipped or not), as MNIST ships;
      (b) an image-folder tree `<data_dir>/train/<class>/*.{jpg,jpeg,png}` and
          `<data_dir>/test/<class>/*` (possibly under one top-level folder);
      (c) a `.tar.gz` / `.tgz` / `.tar` archive of such a tree, extracted once into
          a cache directory.
    Decoded image-folder splits are cached as `.npz` files and reused.

Normalisation constants follow the release (reference doc, section 7); the
`digits` ones are computed from its training split here.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
from typing import Iterator, Literal

import numpy as np

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")

# Bump when the decoded `.npz` contents change meaning, so stale caches are ignored.
_CACHE_VERSION = 1
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_IDX_PREFIX = {"train": "train", "test": "t10k"}

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck")

# Number of images held out as the digits test split (the last ones after a
# RandomState(0) shuffle of the 1797 images).
DIGITS_NUM_TEST = 360

LAYOUT_HELP = (
    "Accepted local layouts for --config.dataset.data_dir:\n"
    "  (a) a directory holding the IDX files train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz (gzipped or not), as MNIST / Fashion-MNIST ship;\n"
    "  (b) an image-folder tree <data_dir>/train/<class>/*.jpg|*.jpeg|*.png and "
    "<data_dir>/test/<class>/* (possibly under one top-level folder);\n"
    "  (c) a .tar.gz / .tgz / .tar archive of such a tree (extracted once into a "
    "cache directory).")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a data set.

  Attributes:
    name: the key in `DATASETS`.
    num_classes: number of labels.
    image_shape: (H, W, C) of one image.
    mean: per-channel mean of the [0, 1] pixels, length C.
    std: per-channel standard deviation of the [0, 1] pixels, length C.
    tfds_name: the TensorFlow Datasets name ('' where there is none).
    crop_padding: zero padding of the random-crop augmentation.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  tfds_name: str
  crop_padding: int

  @property
  def channels(self) -> int:
    return self.image_shape[2]


DATASETS: dict[str, DatasetInfo] = {
    info.name: info for info in (
        # Mean/std of round(x * 255 / 16) / 255 over the 1437 training images.
        DatasetInfo("digits", 10, (8, 8, 1), (0.3054,), (0.3757,), "", 1),
        DatasetInfo("mnist", 10, (28, 28, 1), (0.1307,), (0.3081,), "mnist", 4),
        DatasetInfo("fashion_mnist", 10, (28, 28, 1), (0.2860,), (0.3530,),
                    "fashion_mnist", 4),
        DatasetInfo("cifar10", 10, (32, 32, 3), (0.4914, 0.4822, 0.4465),
                    (0.2023, 0.1994, 0.2010), "cifar10", 4),
        DatasetInfo("cifar100", 100, (32, 32, 3), (0.5071, 0.4867, 0.4408),
                    (0.2675, 0.2565, 0.2761), "cifar100", 4),
        DatasetInfo("svhn_cropped", 10, (32, 32, 3), (0.4377, 0.4438, 0.4728),
                    (0.198, 0.201, 0.197), "svhn_cropped", 4),
    )
}


def get_info(name: str) -> DatasetInfo:
  """Returns the `DatasetInfo` of `name`; ValueError listing the valid names."""
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(
        f"Unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}"
    ) from None


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """Both splits of a data set on the host.

  Attributes:
    info: the data set's `DatasetInfo`.
    train_images: uint8 (N_train, H, W, C).
    train_labels: int32 (N_train,).
    test_images: uint8 (N_test, H, W, C).
    test_labels: int32 (N_test,).
  """

  info: DatasetInfo
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


def load_dataset(name: str, data_dir: str = "",
                 cache_dir: str | None = None) -> Dataset:
  """Loads the train and test splits of `name` (see `load_split`)."""
  info = get_info(name)
  train_images, train_labels = load_split(name, "train", data_dir, cache_dir)
  test_images, test_labels = load_split(name, "test", data_dir, cache_dir)
  return Dataset(info, train_images, train_labels, test_images, test_labels)


def load_split(name: str, split: Split, data_dir: str = "",
               cache_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Loads one split of a data set.

  Args:
    name: a key of `DATASETS`.
    split: 'train' or 'test'.
    data_dir: '' for TensorFlow Datasets, else a local directory or archive in
      one of the layouts of `LAYOUT_HELP`. Ignored for `digits`.
    cache_dir: root of the extraction / decoded-split cache; default
      `~/.cache/fastdfkd_jax`. Each archive or image tree gets its own
      sub-folder `<stem>-<short hash>` under it.

  Returns:
    images: uint8 (N, H, W, C) with (H, W, C) = `get_info(name).image_shape`.
    labels: int32 (N,) in [0, num_classes).

  Raises:
    ValueError: unknown name or split, unreadable or mismatching data.
    FileNotFoundError: `data_dir` or a needed file / folder is missing.
    RuntimeError: TensorFlow Datasets could not provide the data.
  """
  info = get_info(name)
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}")
  if name == "digits":
    images, labels = _load_digits(split)
  elif not data_dir:
    images, labels = _load_tfds(info, split)
  else:
    images, labels = _load_local(info, split, data_dir, cache_dir)
  _check_arrays(info, images, labels, data_dir or info.tfds_name or name)
  return images, labels


def num_batches(n: int, batch_size: int, drop_remainder: bool) -> int:
  """Number of batches `iterate_batches` yields for `n` examples."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  return n // batch_size if drop_remainder else -(-n // batch_size)


def iterate_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int,
    rng: np.random.Generator | None = None, drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """One epoch of host batches.

  Args:
    images: (N, ...) array, any dtype.
    labels: (N,) array.
    batch_size: examples per batch.
    rng: shuffles the order when given; sequential order when None.
    drop_remainder: drop the last batch when it is smaller than `batch_size`.

  Yields:
    (images[idx], labels[idx]) numpy batches, idx of length `batch_size` (the
    last one may be shorter unless `drop_remainder`); each example appears at
    most once per epoch (exactly once unless dropped).
  """
  n = len(images)
  if len(labels) != n:
    raise ValueError(f"images ({n}) and labels ({len(labels)}) differ in length")
  count = num_batches(n, batch_size, drop_remainder)
  order = rng.permutation(n) if rng is not None else np.arange(n)
  for b in range(count):
    idx = order[b * batch_size:(b + 1) * batch_size]
    yield images[idx], labels[idx]


# ----------------------------------------------------------------------------
# Sources.


def _load_digits(split: Split) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits, pixels 0..16 rescaled to 0..255.

  The split is fixed: a RandomState(0) permutation of the 1797 images, the last
  `DIGITS_NUM_TEST` (360) are the test split, the first 1437 the train split.
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255)
  images = images.astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  perm = np.random.RandomState(0).permutation(len(images))
  idx = perm[:-DIGITS_NUM_TEST] if split == "train" else perm[-DIGITS_NUM_TEST:]
  return images[idx], labels[idx]


def _load_tfds(info: DatasetInfo, split: Split) -> tuple[np.ndarray, np.ndarray]:
  """TensorFlow Datasets, via `data_source` (no TensorFlow) or `load` fallback."""
  errors = []
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    errors.append(f"import tensorflow_datasets: {e!r}")
    tfds = None
  if tfds is not None:
    try:
      source = tfds.data_source(info.tfds_name, split=split, download=True)
      n = len(source)
      images = np.empty((n,) + info.image_shape, np.uint8)
      labels = np.empty((n,), np.int32)
      for i in range(n):
        ex = source[i]
        images[i] = np.asarray(ex["image"]).reshape(info.image_shape)
        labels[i] = ex["label"]
      return images, labels
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f"tfds.data_source: {e!r}")
    try:
      data = tfds.as_numpy(tfds.load(
          info.tfds_name, split=split, batch_size=-1, download=True))
      return (np.asarray(data["image"], np.uint8),
              np.asarray(data["label"], np.int32))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f"tfds.load: {e!r}")
  detail = "\n  ".join(err[:500] for err in errors)
  raise RuntimeError(
      f"TensorFlow Datasets could not load {info.tfds_name!r} split {split!r} "
      f"(e.g. no network access to download it). Set "
      f"--config.dataset.data_dir=<path> to a local copy instead.\n{LAYOUT_HELP}"
      f"\nTFDS errors:\n  {detail}")


def _load_local(info: DatasetInfo, split: Split, data_dir: str,
                cache_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """Dispatches on the layout found at `data_dir`."""
  path = os.path.abspath(os.path.expanduser(data_dir))
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"Data path {path!r} (dataset {info.name!r}) does not exist.\n"
        f"{LAYOUT_HELP}")
  if os.path.isfile(path):
    if not path.lower().endswith(_ARCHIVE_SUFFIXES):
      raise ValueError(
          f"Data path {path!r} is a file but not a .tar.gz/.tgz/.tar archive.\n"
          f"{LAYOUT_HELP}")
    return _load_archive(info, split, path, cache_dir)
  if _idx_files(path, split, must_exist=False) is not None or _has_any_idx(path):
    return _load_idx(info, split, path)
  root = _find_tree_root(path)
  if root is not None:
    cache = _tree_cache_dir(root, cache_dir)
    return _load_tree_cached(info, split, root, cache)
  raise ValueError(
      f"Data directory {path!r} matches none of the accepted layouts "
      f"(no IDX files, no train/ or test/ folder).\n{LAYOUT_HELP}")


# ----------------------------------------------------------------------------
# IDX files.

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
        raise FileNotFoundError(
            f"IDX directory {path!r} lacks the {split} {kind} file (looked for "
            f"{', '.join(names)}).\n{LAYOUT_HELP}")
      return None
    found.append(hit)
  return found[0], found[1]


def read_idx(path: str) -> np.ndarray:
  """Parses one IDX file (gzipped when the name ends in .gz).

  Header: two zero bytes, a type code (0x08 = uint8, ...), the number of
  dimensions d, then d big-endian uint32 sizes; the data follows, big-endian.

  Returns:
    An array of the stored shape and dtype (native byte order).

  Raises:
    ValueError: the file is not a well-formed IDX file (message names `path`).
  """
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        raw = f.read()
    else:
      with open(path, "rb") as f:
        raw = f.read()
  except (OSError, EOFError) as e:
    raise ValueError(f"Corrupt IDX file {path!r}: cannot read it ({e}).\n"
                     f"{LAYOUT_HELP}") from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(
        f"Corrupt IDX file {path!r}: bad magic number {raw[:4].hex()!r} "
        f"(expected 00 00 <type> <ndim>, e.g. 2051 for images, 2049 for "
        f"labels).\n{LAYOUT_HELP}")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if ndim == 0 or len(raw) < header:
    raise ValueError(f"Corrupt IDX file {path!r}: truncated header "
                     f"(ndim={ndim}).\n{LAYOUT_HELP}")
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  expected = int(np.prod(dims)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(
        f"Corrupt IDX file {path!r}: header dims {dims} need {expected} data "
        f"bytes, file has {len(raw) - header}.\n{LAYOUT_HELP}")
  data = np.frombuffer(raw, dtype, offset=header).reshape(dims)
  return data.astype(dtype.newbyteorder("="))


def _load_idx(info: DatasetInfo, split: Split,
              path: str) -> tuple[np.ndarray, np.ndarray]:
  images_path, labels_path = _idx_files(path, split)
  images = read_idx(images_path)
  labels = read_idx(labels_path)
  h, w, c = info.image_shape
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise ValueError(
        f"IDX images {images_path!r}: expected uint8 (N, H, W), got "
        f"{images.dtype} {images.shape}")
  if images.ndim == 3:
    images = images[..., None]
  if images.shape[1:] != (h, w, c):
    raise ValueError(
        f"IDX images {images_path!r} have shape {images.shape[1:]}, dataset "
        f"{info.name!r} expects {(h, w, c)}")
  if labels.ndim != 1 or len(labels) != len(images):
    raise ValueError(
        f"IDX labels {labels_path!r}: shape {labels.shape} does not match "
        f"{len(images)} images in {images_path!r}")
  return np.ascontiguousarray(images), labels.astype(np.int32)


# ----------------------------------------------------------------------------
# Image-folder trees and archives of them.


def _cache_root(cache_dir: str | None) -> str:
  if cache_dir:
    return os.path.abspath(os.path.expanduser(cache_dir))
  return os.path.join(os.path.expanduser("~"), ".cache", "fastdfkd_jax")


def _short_hash(*parts: object) -> str:
  return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:12]


def _archive_stem(path: str) -> str:
  base = os.path.basename(path)
  for suffix in _ARCHIVE_SUFFIXES:
    if base.lower().endswith(suffix):
      return base[:-len(suffix)]
  return base


def archive_cache_dir(path: str, cache_dir: str | None = None) -> str:
  """Cache folder of an archive: `<root>/<stem>-<hash(path, size, mtime)>`."""
  st = os.stat(path)
  return os.path.join(
      _cache_root(cache_dir),
      f"{_archive_stem(path)}-{_short_hash(path, st.st_size, st.st_mtime_ns)}")


def _tree_cache_dir(root: str, cache_dir: str | None) -> str:
  """Cache folder of a plain image tree, keyed on its path and class folders."""
  parts: list[object] = [root]
  for split in SPLITS:
    split_dir = os.path.join(root, split)
    if os.path.isdir(split_dir):
      for cls in sorted(os.listdir(split_dir)):
        cdir = os.path.join(split_dir, cls)
        if os.path.isdir(cdir):
          parts += [split, cls, os.stat(cdir).st_mtime_ns,
                    len(os.listdir(cdir))]
  name = os.path.basename(root.rstrip(os.sep)) or "tree"
  return os.path.join(_cache_root(cache_dir), f"{name}-{_short_hash(*parts)}")


def _find_tree_root(path: str) -> str | None:
  """`path` or its single sub-folder when it holds train/ or test/."""
  def is_root(p: str) -> bool:
    return any(os.path.isdir(os.path.join(p, s)) for s in SPLITS)
  if is_root(path):
    return path
  subdirs = [e for e in os.listdir(path)
             if not e.startswith((".", "__MACOSX"))
             and os.path.isdir(os.path.join(path, e))]
  if len(subdirs) == 1 and is_root(os.path.join(path, subdirs[0])):
    return os.path.join(path, subdirs[0])
  return None


def _safe_members(tar: tarfile.TarFile, archive: str) -> list[tarfile.TarInfo]:
  """Regular files and folders of `tar`; rejects absolute or '..' paths."""
  members = []
  for m in tar.getmembers():
    name = m.name
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts:
      raise ValueError(
          f"Archive {archive!r} holds an unsafe member path {name!r} (absolute "
          f"or containing '..'); refusing to extract it.")
    if m.isfile() or m.isdir():
      members.append(m)
  return members


def _extract_archive(path: str, cache: str) -> str:
  """Extracts `path` once into `<cache>/tree`, atomically; returns that folder."""
  tree = os.path.join(cache, "tree")
  if os.path.isdir(tree):
    return tree
  os.makedirs(cache, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".extract-", dir=cache)
  try:
    try:
      with tarfile.open(path, "r:*") as tar:
        members = _safe_members(tar, path)
        if hasattr(tarfile, "data_filter"):
          tar.extractall(tmp, members=members, filter="data")
        else:  # Python without extraction filters; members are checked above.
          tar.extractall(tmp, members=members)  # noqa: S202
    except (tarfile.TarError, OSError, EOFError) as e:
      raise ValueError(
          f"Cannot extract archive {path!r}: {e}.\n{LAYOUT_HELP}") from e
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only.
    try:
      os.replace(tmp, tree)
    except OSError:
      if not os.path.isdir(tree):  # Not a lost race with another process.
        raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return tree


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _npz_path(cache: str, info: DatasetInfo, split: Split) -> str:
  h, w, c = info.image_shape
  return os.path.join(
      cache, f"{info.name}-{split}-{h}x{w}x{c}-v{_CACHE_VERSION}.npz")


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray] | None:
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path) as data:
      return data["images"], data["labels"]
  except Exception:  # pylint: disable=broad-except  # Stale/corrupt: rebuild.
    return None


def _write_npz(path: str, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes the decoded split atomically (temp file + os.replace)."""
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, images=images, labels=labels)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _load_archive(info: DatasetInfo, split: Split, path: str,
                  cache_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  cache = archive_cache_dir(path, cache_dir)
  cached = _read_npz(_npz_path(cache, info, split))
  if cached is not None:
    return cached
  tree = _extract_archive(path, cache)
  root = _find_tree_root(tree)
  if root is None:
    raise ValueError(
        f"Archive {path!r} (extracted to {tree!r}) holds no train/ or test/ "
        f"folder.\n{LAYOUT_HELP}")
  return _load_tree_cached(info, split, root, cache)


def _load_tree_cached(info: DatasetInfo, split: Split, root: str,
                      cache: str) -> tuple[np.ndarray, np.ndarray]:
  npz = _npz_path(cache, info, split)
  cached = _read_npz(npz)
  if cached is not None:
    return cached
  images, labels = load_image_tree(info, split, root)
  try:
    _write_npz(npz, images, labels)
  except OSError:  # An unwritable cache only costs speed.
    pass
  return images, labels


def class_names(info: DatasetInfo, root: str) -> list[str]:
  """Class folder names of the tree at `root`, in label order.

  The order is the sorted union of the class folders of train/ and test/
  (numeric order when all names are integers), except for cifar10 whose
  canonical order (airplane, automobile, ..., truck) is used when the folders
  carry those names.
  """
  names: set[str] = set()
  for split in SPLITS:
    split_dir = os.path.join(root, split)
    if os.path.isdir(split_dir):
      names.update(e for e in os.listdir(split_dir)
                   if not e.startswith(".")
                   and os.path.isdir(os.path.join(split_dir, e)))
  if info.name == "cifar10" and names == set(CIFAR10_CLASSES):
    return list(CIFAR10_CLASSES)
  if names and all(n.isdigit() for n in names):
    return sorted(names, key=int)
  return sorted(names)


def _decode_image(path: str, mode: str, hw: tuple[int, int]) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as img:
      img.load()
      array = np.asarray(img if img.mode == mode else img.convert(mode),
                         dtype=np.uint8)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Cannot decode image {path!r}: {e}") from e
  if array.shape[:2] != hw:
    raise ValueError(
        f"Image {path!r} is {array.shape[1]}x{array.shape[0]} (WxH); "
        f"expected {hw[1]}x{hw[0]}.\n{LAYOUT_HELP}")
  return array


def load_image_tree(info: DatasetInfo, split: Split,
                    root: str) -> tuple[np.ndarray, np.ndarray]:
  """Decodes `<root>/<split>/<class>/*.{jpg,jpeg,png}` with Pillow (no cache).

  Returns:
    images: uint8 (N, H, W, C), converted to the data set's channel count.
    labels: int32 (N,), class index per `class_names`.
  """
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise FileNotFoundError(
        f"Image-folder tree {root!r} has no {split}/ folder (expected "
        f"{split_dir!r}).\n{LAYOUT_HELP}")
  classes = class_names(info, root)
  if len(classes) != info.num_classes:
    raise ValueError(
        f"Image-folder tree {root!r} has {len(classes)} class folders "
        f"({', '.join(classes[:12])}{'...' if len(classes) > 12 else ''}); "
        f"dataset {info.name!r} has {info.num_classes} classes.\n{LAYOUT_HELP}")
  files: list[str] = []
  labels: list[int] = []
  for label, cls in enumerate(classes):
    cdir = os.path.join(split_dir, cls)
    if not os.path.isdir(cdir):
      continue
    names = sorted(e for e in os.listdir(cdir)
                   if e.lower().endswith(_IMAGE_EXTENSIONS)
                   and not e.startswith("."))
    files += [os.path.join(cdir, n) for n in names]
    labels += [label] * len(names)
  if not files:
    raise ValueError(
        f"Image-folder split {split_dir!r} holds no .jpg/.jpeg/.png images in "
        f"its class folders.\n{LAYOUT_HELP}")
  h, w, c = info.image_shape
  mode = {1: "L", 3: "RGB"}[c]
  images = np.empty((len(files), h, w, c), np.uint8)

  def decode_chunk(start: int, stop: int) -> None:
    for i in range(start, stop):
      images[i] = _decode_image(files[i], mode, (h, w)).reshape(h, w, c)

  chunk = 2048
  workers = min(8, os.cpu_count() or 1)
  ranges = [(s, min(s + chunk, len(files))) for s in range(0, len(files), chunk)]
  if workers <= 1 or len(ranges) <= 1:
    for s, e in ranges:
      decode_chunk(s, e)
  else:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for fut in [pool.submit(decode_chunk, s, e) for s, e in ranges]:
        fut.result()
  return images, np.asarray(labels, np.int32)


def _check_arrays(info: DatasetInfo, images: np.ndarray, labels: np.ndarray,
                  source: str) -> None:
  if images.dtype != np.uint8 or images.shape[1:] != info.image_shape:
    raise ValueError(
        f"{source!r}: images are {images.dtype} {images.shape}, expected uint8 "
        f"(N,) + {info.image_shape} for {info.name!r}")
  if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
    raise ValueError(
        f"{source!r}: labels are {labels.dtype} {labels.shape}, expected int32 "
        f"({images.shape[0]},)")
  if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
    raise ValueError(
        f"{source!r}: labels span [{labels.min()}, {labels.max()}], expected "
        f"[0, {info.num_classes})")


__all__ = [
    "CIFAR10_CLASSES", "DATASETS", "Dataset", "DatasetInfo", "LAYOUT_HELP",
    "archive_cache_dir", "class_names", "get_info", "iterate_batches",
    "load_dataset", "load_image_tree", "load_split", "num_batches", "read_idx"]
