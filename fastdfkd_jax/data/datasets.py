"""Loading a data set's splits (dispatch over the sources) and a host batch iterator.

Every loader returns host numpy arrays:

  images: uint8 (N, H, W, C), pixels 0..255 (C = 1 for grey sets, 3 for RGB)
  labels: int32 (N,), values in [0, num_classes); for a segmentation set uint8
          label maps (N, H, W), 255 = unlabelled (`segmentation.py`)

Where the data comes from (see `load_split`):

  * `digits` always comes from scikit-learn (`digits.py`: offline, 8x8 grey,
    1797 images).
  * `data_dir=''`: TensorFlow Datasets (`tfds.py`: downloads; needs network the
    first time).
  * `data_dir=<path>`: a local copy in one of three layouts, detected from the path:
      (a) a directory with the IDX files `train-images-idx3-ubyte.gz`,
          `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`,
          `t10k-labels-idx1-ubyte.gz` (gzipped or not), as MNIST ships (`idx.py`);
      (b) an image-folder tree `<data_dir>/train/<class>/*.{jpg,jpeg,png}` and
          `<data_dir>/test/<class>/*` (possibly under one top-level folder);
      (c) a `.tar.gz` / `.tgz` / `.tar` archive of such a tree, extracted once into
          a cache directory (`image_folder.py` for both).
    Decoded image-folder splits are cached as `.npz` files and reused.

  * a segmentation set (`DatasetInfo.task`) is read from `data_dir` in the layout of
    `segmentation.py` (`image/` and `seg<K>/`), resized to `DatasetInfo.seg_resize`; its
    training images must be at least the task's resolution `image_shape` (they are
    cropped to it), its test images are scored at their own size.

A streamed data set (`info.streaming`: imagenet) returns `streaming.StreamingSplit`
images instead of arrays (decoded per batch in a background pipeline, never a
whole split): from an image-folder tree at `data_dir`, or with `data_dir=''` from
a prepared TFDS copy (`tfds.stream`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Sequence

import numpy as np

from fastdfkd_jax import errors
from fastdfkd_jax.data import digits, idx, image_folder, segmentation, streaming, tfds
from fastdfkd_jax.data.info import LAYOUT_HELP, SPLITS, DatasetInfo, Split, get_info


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


def load_dataset(name: str, data_dir: str = "", cache_dir: str | None = None,
                 splits: Sequence[Split] = ("train", "test")) -> Dataset:
  """Loads the `splits` of `name` (see `load_split`); a split not asked for is empty
  (distillation from synthetic images reads the test split alone: a data set without
  its training split serves it, and nothing decodes 50k training images for nothing)."""
  info = get_info(name)
  arrays = []
  for split in SPLITS:
    if split in splits:
      arrays += load_split(name, split, data_dir, cache_dir)
    else:
      arrays += [np.zeros((0, *info.image_shape), np.uint8), np.zeros((0,), np.int32)]
  return Dataset(info, *arrays)


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
    UserError: unknown name; missing, unreadable or mismatching data; TensorFlow
      Datasets could not provide the data.
    ValueError: unknown split (a bug in the caller).
  """
  info = get_info(name)
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}")
  if info.task == "segmentation":
    return _load_segmentation(info, split, data_dir)
  if info.streaming:
    return _stream_split(info, split, data_dir)
  if name == "digits":
    images, labels = digits.load(split)
  elif not data_dir:
    images, labels = tfds.load(info, split)
  else:
    images, labels = _load_local(info, split, data_dir, cache_dir)
  _check_arrays(info, images, labels, data_dir or info.tfds_name or name)
  return images, labels


def _stream_split(info: DatasetInfo, split: Split,
                  data_dir: str) -> tuple[streaming.StreamingSplit, np.ndarray]:
  """A streamed split: an image-folder tree at `data_dir`, or TFDS for ''."""
  if not data_dir:
    return tfds.stream(info, split)
  path = os.path.abspath(os.path.expanduser(data_dir))
  root = image_folder.find_tree_root(path) if os.path.isdir(path) else None
  if root is None:
    raise errors.UserError(
        f"Data path {path!r} (dataset {info.name!r}, streamed) is not an image-folder "
        f"tree train/<class>/*, val/<class>/* (archives are not streamed: extract it "
        f"first).\n{LAYOUT_HELP}")
  return streaming.from_tree(info, split, root)


def _load_local(info: DatasetInfo, split: Split, data_dir: str,
                cache_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """Dispatches on the layout found at `data_dir`."""
  path = os.path.abspath(os.path.expanduser(data_dir))
  if not os.path.exists(path):
    raise errors.UserError(
        f"Data path {path!r} (dataset {info.name!r}) does not exist.\n"
        f"{LAYOUT_HELP}")
  if os.path.isfile(path):
    if not path.lower().endswith(image_folder.ARCHIVE_SUFFIXES):
      raise errors.UserError(
          f"Data path {path!r} is a file but not a .tar.gz/.tgz/.tar archive.\n"
          f"{LAYOUT_HELP}")
    return image_folder.load_archive(info, split, path, cache_dir)
  if idx.is_idx_dir(path, split):
    return idx.load(info, split, path)
  root = image_folder.find_tree_root(path)
  if root is not None:
    return image_folder.load_tree(info, split, root, cache_dir)
  raise errors.UserError(
      f"Data directory {path!r} matches none of the accepted layouts "
      f"(no IDX files, no train/ or test/ folder).\n{LAYOUT_HELP}")


def _load_segmentation(info: DatasetInfo, split: Split,
                       data_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """A segmentation split: images uint8 (N, H, W, 3), label maps uint8 (N, H, W)."""
  if not data_dir:
    raise errors.UserError(
        f"dataset {info.name!r} is read from local files only: set "
        f"--config.dataset.data_dir=DIR ({segmentation.SEG_LAYOUT_HELP}; "
        "experiments/make_shapes_seg.py DIR writes the procedural set)")
  path = os.path.abspath(os.path.expanduser(data_dir))
  loaded = segmentation.load_split(path, split, info.num_classes, info.seg_resize or None)
  (h, w), (ch, cw) = loaded.images.shape[1:3], info.image_shape[:2]
  if loaded.images.shape[3] != info.channels or (split == "train" and (h < ch or w < cw)):
    raise errors.UserError(
        f"{path!r} ({split}): images are {w}x{h}x{loaded.images.shape[3]}, but "
        f"{info.name!r} trains on {cw}x{ch}x{info.channels} crops of them")
  return loaded.images, loaded.labels


def _check_arrays(info: DatasetInfo, images: np.ndarray, labels: np.ndarray,
                  source: str) -> None:
  if images.dtype != np.uint8 or images.shape[1:] != info.image_shape:
    raise errors.UserError(
        f"{source!r}: images are {images.dtype} {images.shape}, expected uint8 "
        f"(N,) + {info.image_shape} for {info.name!r}")
  if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
    raise errors.UserError(
        f"{source!r}: labels are {labels.dtype} {labels.shape}, expected int32 "
        f"({images.shape[0]},)")
  if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
    raise errors.UserError(
        f"{source!r}: labels span [{labels.min()}, {labels.max()}], expected "
        f"[0, {info.num_classes})")


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
    batch = order[b * batch_size:(b + 1) * batch_size]
    yield images[batch], labels[batch]
