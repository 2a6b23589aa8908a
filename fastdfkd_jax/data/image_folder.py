"""Image-folder trees and `.tar.gz` / `.tgz` / `.tar` archives of them, with a decode cache.

A tree is `<root>/train/<class>/*.{jpg,jpeg,png}` and `<root>/test/<class>/*`
(or `<root>/val/<class>/*`, the ImageNet layout; possibly under one top-level
folder). A data set with `info.resize` takes images of any size through the
ImageNet eval transform scaled to its size (`resize_center_crop`). An archive of
one is extracted once into `<cache_root>/<stem>-<hash of its content>/tree` (into a
temporary folder, then renamed: a failed extraction leaves nothing behind; a
changed archive gets a new folder); a plain tree gets its own
`<cache_root>/<name>-<short hash>/` folder. Decoded splits are cached there as
`<dataset>-<split>-<H>x<W>x<C>-v<version>.npz` and reused. A cached `.npz` that
does not load or does not fit the data set, or an extracted tree that no longer
decodes, is logged and rebuilt.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil

import numpy as np
from absl import logging

from fastdfkd_jax import errors
from fastdfkd_jax.data import archives
from fastdfkd_jax.data.info import EVAL_RESIZE, LAYOUT_HELP, DatasetInfo, Split

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES, FOLDERS = archives.ARCHIVE_SUFFIXES, archives.FOLDERS
find_tree_root, archive_cache_dir = archives.find_tree_root, archives.archive_cache_dir

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck")


def load_archive(info: DatasetInfo, split: Split, path: str,
                 cache_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """`split` of the archive at `path`: cached `.npz`, else extract (once) and decode."""
  cache = archives.archive_cache_dir(path, cache_dir)
  cached = archives.read_npz(archives.npz_path(cache, info, split), info)
  if cached is not None:
    return cached
  tree = archives.extract_archive(path, cache)
  try:
    return _load_extracted(info, split, path, tree, cache)
  except errors.UserError as e:  # the extracted copy may be damaged: extract afresh once
    logging.warning("the extracted copy %s of %s does not load (%s); extracting it again",
                    tree, path, errors.one_line(str(e)))
    shutil.rmtree(tree)
    try:
      return _load_extracted(info, split, path, archives.extract_archive(path, cache), cache)
    except errors.UserError as again:  # the archive itself holds it: name the archive
      if path in str(again):
        raise
      raise errors.UserError(f"Archive {path!r}: {again}") from again


def _load_extracted(info: DatasetInfo, split: Split, path: str, tree: str,
                    cache: str) -> tuple[np.ndarray, np.ndarray]:
  root = archives.find_tree_root(tree)
  if root is None:
    raise errors.UserError(
        f"Archive {path!r} (extracted to {tree!r}) holds no train/ or test/ "
        f"folder.\n{LAYOUT_HELP}")
  return _load_tree_cached(info, split, root, cache)


def load_tree(info: DatasetInfo, split: Split, root: str,
              cache_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """`split` of the tree at `root` (see `find_tree_root`): cached `.npz`, else decode."""
  return _load_tree_cached(info, split, root, archives.tree_cache_dir(root, cache_dir))


def _load_tree_cached(info: DatasetInfo, split: Split, root: str,
                      cache: str) -> tuple[np.ndarray, np.ndarray]:
  npz = archives.npz_path(cache, info, split)
  cached = archives.read_npz(npz, info)
  if cached is not None:
    return cached
  images, labels = load_image_tree(info, split, root)
  try:
    archives.write_npz(npz, images, labels)
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
  for split in FOLDERS:
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


def split_folder(root: str, split: Split) -> str:
  """The folder of `split` in the tree at `root`: test/, or val/ where test/ is absent."""
  path = os.path.join(root, split)
  if split == "test" and not os.path.isdir(path):
    return os.path.join(root, "val")
  return path


def resize_center_crop(img, hw: tuple[int, int]):
  """The ImageNet eval transform scaled to hw = (H, W): shorter side to
  round(max(H, W) * 256 / 224) (bilinear), then the centre H x W crop (a PIL image)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  short = round(max(hw) * EVAL_RESIZE)
  w, h = img.size
  scale = short / min(w, h)
  new = (max(hw[1], round(w * scale)), max(hw[0], round(h * scale)))
  img = img.resize(new, Image.BILINEAR)
  left, top = (new[0] - hw[1]) // 2, (new[1] - hw[0]) // 2
  return img.crop((left, top, left + hw[1], top + hw[0]))


def decode_image(path: str, mode: str, hw: tuple[int, int], resize: bool) -> np.ndarray:
  """uint8 (H, W, channels of `mode`) of the file at `path` (`resize`: through
  `resize_center_crop`, else its size must be hw)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as img:
      img.load()
      img = img if img.mode == mode else img.convert(mode)
      array = np.asarray(resize_center_crop(img, hw) if resize else img, dtype=np.uint8)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(f"Cannot decode image {path!r}: {e}") from e
  if array.shape[:2] != hw:
    raise errors.UserError(
        f"Image {path!r} is {array.shape[1]}x{array.shape[0]} (WxH); "
        f"expected {hw[1]}x{hw[0]}.\n{LAYOUT_HELP}")
  return array


def list_split(info: DatasetInfo, split: Split, root: str) -> tuple[list[str], np.ndarray]:
  """(files, int32 labels (N,)) of `<root>/<split>/<class>/*.{jpg,jpeg,png}`, in class
  order (`class_names`), files sorted within a class."""
  folder = split_folder(root, split)
  if not os.path.isdir(folder):
    raise errors.UserError(
        f"Image-folder tree {root!r} has no {split}/ folder (expected "
        f"{folder!r}).\n{LAYOUT_HELP}")
  classes = class_names(info, root)
  if len(classes) != info.num_classes:
    raise errors.UserError(
        f"Image-folder tree {root!r} has {len(classes)} class folders "
        f"({', '.join(classes[:12])}{'...' if len(classes) > 12 else ''}); "
        f"dataset {info.name!r} has {info.num_classes} classes.\n{LAYOUT_HELP}")
  files: list[str] = []
  labels: list[int] = []
  for label, cls in enumerate(classes):
    cdir = os.path.join(folder, cls)
    if not os.path.isdir(cdir):
      continue
    names = sorted(e for e in os.listdir(cdir)
                   if e.lower().endswith(_IMAGE_EXTENSIONS)
                   and not e.startswith("."))
    files += [os.path.join(cdir, n) for n in names]
    labels += [label] * len(names)
  if not files:
    raise errors.UserError(
        f"Image-folder split {folder!r} holds no .jpg/.jpeg/.png images in "
        f"its class folders.\n{LAYOUT_HELP}")
  return files, np.asarray(labels, np.int32)


def load_image_tree(info: DatasetInfo, split: Split,
                    root: str) -> tuple[np.ndarray, np.ndarray]:
  """Decodes `<root>/<split>/<class>/*.{jpg,jpeg,png}` with Pillow (no cache).

  Returns:
    images: uint8 (N, H, W, C), converted to the data set's channel count.
    labels: int32 (N,), class index per `class_names`.
  """
  files, labels = list_split(info, split, root)
  h, w, c = info.image_shape
  mode = {1: "L", 3: "RGB"}[c]
  images = np.empty((len(files), h, w, c), np.uint8)

  def decode_chunk(start: int, stop: int) -> None:
    for i in range(start, stop):
      images[i] = decode_image(files[i], mode, (h, w), info.resize).reshape(h, w, c)

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
  return images, labels
