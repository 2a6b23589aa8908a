"""Semantic segmentation data: NYUv2-style local layouts, synchronised augmentation, mIoU.

Layout (as the release's NYUv2 toolkit writes it; `<label_dir>` is
`seg{num_classes}`, e.g. `seg13`):

    <root>/image/{train,test}/<name>.png       RGB images
    <root>/<label_dir>/{train,test}/<name>.png single-channel labels, same name and size:
                                               0..num_classes-1, 255 = unlabelled (ignored)

`load_split` decodes one split into uint8 arrays, optionally resizing the
shorter side first (the release's `Resize(256)`: bilinear for images, nearest
for labels). `augment_stripe` is the release's training transform on a batch:
the same random crop and horizontal flip for an image and its label map, then
normalisation of the image; its randomness is drawn for the global batch, so
under `shard_map` it does not depend on the device count. `confusion_matrix`
(jittable, accumulate it over batches) and `scores` (pure NumPy) give pixel
accuracy, per-class IoU and mIoU with label 255 ignored.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from fastdfkd_jax import errors
from fastdfkd_jax.run import parallel

IGNORE_INDEX = 255
SEG_SPLITS = ("train", "test")
# NYUv2 with the 13-class labelling, as the release's registry normalises it.
NYUV2_NUM_CLASSES = 13
NYUV2_MEAN = (0.5, 0.5, 0.5)
NYUV2_STD = (0.5, 0.5, 0.5)
SEG_LAYOUT_HELP = (
    "expected <root>/image/{train,test}/*.png and <root>/seg<K>/{train,test}/*.png "
    "(K = the class count, e.g. seg13 for NYUv2-13; one single-channel label PNG per "
    "image, with the same name and size, values 0..K-1 and 255 for unlabelled pixels)")


@dataclasses.dataclass(frozen=True)
class SegSplit:
  """One decoded split: images uint8 (N, H, W, 3), labels uint8 (N, H, W), file names."""

  images: np.ndarray
  labels: np.ndarray
  names: tuple[str, ...]


def label_dir(num_classes: int) -> str:
  """The label folder of a `num_classes` labelling (the release's 'seg%d')."""
  return f"seg{num_classes}"


def list_pairs(root: str, split: str, num_classes: int) -> list[tuple[str, str]]:
  """(image path, label path) of every image of `split`, sorted by name.

  Raises:
    errors.UserError: unknown split, a missing folder, no images, or images and
      labels whose names do not pair up (all such names are listed).
  """
  if split not in SEG_SPLITS:
    raise errors.UserError(f"split must be one of {SEG_SPLITS}, got {split!r}")
  image_dir = os.path.join(root, "image", split)
  seg_dir = os.path.join(root, label_dir(num_classes), split)
  for d in (image_dir, seg_dir):
    if not os.path.isdir(d):
      raise errors.UserError(f"no folder {d}; {SEG_LAYOUT_HELP}")
  images = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(".png"))
  labels = {n for n in os.listdir(seg_dir) if n.lower().endswith(".png")}
  if not images:
    raise errors.UserError(f"no .png images in {image_dir}; {SEG_LAYOUT_HELP}")
  unlabelled = [n for n in images if n not in labels]
  orphans = sorted(labels - set(images))
  if unlabelled or orphans:
    parts = [f"images and labels of {root} ({split}) do not pair up:"]
    if unlabelled:
      parts.append(f"{len(unlabelled)} images without a label in {seg_dir}: "
                   + ", ".join(unlabelled[:10]))
    if orphans:
      parts.append(f"{len(orphans)} labels without an image in {image_dir}: "
                   + ", ".join(orphans[:10]))
    raise errors.UserError(" ".join(parts))
  return [(os.path.join(image_dir, n), os.path.join(seg_dir, n)) for n in images]


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
  """(H, W) with the shorter side `shorter`, as torchvision's Resize(int)."""
  if height <= width:
    return shorter, int(shorter * width / height)
  return int(shorter * height / width), shorter


def _read_pair(image_path: str, label_path: str, num_classes: int,
               resize: int | None) -> tuple[np.ndarray, np.ndarray]:
  """Decodes and checks one image/label pair; uint8 (H, W, 3) and (H, W)."""
  try:
    with Image.open(image_path) as im:
      image = im.convert("RGB")
    with Image.open(label_path) as lb:
      if lb.mode not in ("L", "P"):
        raise errors.UserError(f"label {label_path} has mode {lb.mode}; labels are "
                               "single-channel PNGs of class indices")
      label = lb.copy()
  except OSError as e:
    raise errors.UserError(f"cannot decode {image_path} or {label_path}: {e}") from e
  if image.size != label.size:
    raise errors.UserError(
        f"label {label_path} is {label.size[0]}x{label.size[1]} but its image "
        f"{image_path} is {image.size[0]}x{image.size[1]} (width x height)")
  if resize is not None:
    h, w = resized_size(image.size[1], image.size[0], resize)
    image = image.resize((w, h), Image.BILINEAR)
    label = label.resize((w, h), Image.NEAREST)
  image, label = np.asarray(image, np.uint8), np.asarray(label, np.uint8)
  bad = np.unique(label[(label >= num_classes) & (label != IGNORE_INDEX)])
  if bad.size:
    raise errors.UserError(
        f"label {label_path} holds values {bad.tolist()[:10]} outside 0..{num_classes - 1} "
        f"and {IGNORE_INDEX} (unlabelled)")
  return image, label


def load_split(root: str, split: str, num_classes: int,
               resize: int | None = None) -> SegSplit:
  """Decodes every image/label pair of `split` (see the module docstring for the layout).

  Args:
    root: the data set folder.
    split: 'train' or 'test'.
    num_classes: the labelling's class count (reads `<root>/seg{num_classes}`).
    resize: resize the shorter side to this many pixels first; None keeps the
      files' size (then all images must have the same size).

  Raises:
    errors.UserError: a layout, pairing, size or label-value problem; the
      message names the file.
  """
  pairs = list_pairs(root, split, num_classes)
  images, labels = [], []
  for image_path, label_path in pairs:
    image, label = _read_pair(image_path, label_path, num_classes, resize)
    if images and image.shape != images[0].shape:
      raise errors.UserError(
          f"{image_path} is {image.shape[1]}x{image.shape[0]} but {pairs[0][0]} is "
          f"{images[0].shape[1]}x{images[0].shape[0]}; pass a resize so they match")
    images.append(image)
    labels.append(label)
  names = tuple(os.path.basename(p) for p, _ in pairs)
  return SegSplit(np.stack(images), np.stack(labels), names)


def center_crop(images: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """The central `size` = (height, width) crop of host images (N, H, W, ...); the
  images themselves when they are that size already."""
  (h, w), (ch, cw) = images.shape[1:3], size
  if (h, w) == (ch, cw):
    return images
  top, left = (h - ch) // 2, (w - cw) // 2
  return images[:, top:top + ch, left:left + cw]


def crop_flip_params(key: jax.Array, batch: int, size: Sequence[int],
                     crop: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """Per-image crop offsets int32 (batch, 2) = (dy, dx) and flip decisions bool (batch,)."""
  (h, w), (ch, cw) = size, crop
  if ch > h or cw > w:
    raise ValueError(f"crop {tuple(crop)} is larger than the images {(h, w)}")
  k_crop, k_flip = jax.random.split(key)
  dy = jax.random.randint(k_crop, (batch,), 0, h - ch + 1, jnp.int32)
  dx = jax.random.randint(jax.random.fold_in(k_crop, 1), (batch,), 0, w - cw + 1, jnp.int32)
  return jnp.stack([dy, dx], axis=1), jax.random.bernoulli(k_flip, 0.5, (batch,))


def crop_flip(images: jax.Array, labels: jax.Array, offsets: jax.Array, flips: jax.Array,
              crop: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """Crops (N, H, W, C) images and (N, H, W) labels at `offsets`, flips where `flips`."""
  ch, cw = crop

  def one(image, label, off, flip):
    image = jax.lax.dynamic_slice(image, (off[0], off[1], 0), (ch, cw, image.shape[-1]))
    label = jax.lax.dynamic_slice(label, (off[0], off[1]), (ch, cw))
    image = jnp.where(flip, image[:, ::-1], image)
    return image, jnp.where(flip, label[:, ::-1], label)

  return jax.vmap(one)(images, labels, offsets, flips)


def augment_stripe(key: jax.Array, images: jax.Array, labels: jax.Array,
                   crop: Sequence[int], mean: Sequence[float], std: Sequence[float],
                   axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
  """The release's segmentation training transform on a batch (stripe).

  Args:
    key: PRNG key, the same on every device.
    images: float (B, H, W, C) in [0, 1], this device's stripe of the batch.
    labels: integer (B, H, W) label maps of those images.
    crop: static (height, width) of the random crop (the release: 128 x 128 of
      images resized to a shorter side of 256).
    mean: length-C per-channel mean (NYUv2: 0.5).
    std: length-C per-channel standard deviation (NYUv2: 0.5).
    axis_name: inside `shard_map`, the batch axis: crops and flips are drawn for
      the global batch and each device applies its stripe. None: B is global.

  Returns:
    Normalised float images (B, ch, cw, C) and labels (B, ch, cw), each image
    cropped and flipped exactly as its label map.
  """
  batch = images.shape[0] * (1 if axis_name is None else jax.lax.axis_size(axis_name))
  offsets, flips = crop_flip_params(key, batch, images.shape[1:3], crop)
  if axis_name is not None:
    offsets = parallel.local_stripe(offsets, axis_name)
    flips = parallel.local_stripe(flips, axis_name)
  images, labels = crop_flip(images, labels, offsets, flips, crop)
  mean, std = jnp.asarray(mean, images.dtype), jnp.asarray(std, images.dtype)
  return (images - mean) / std, labels


def confusion_matrix(labels: jax.Array, preds: jax.Array, num_classes: int) -> jax.Array:
  """int32 (K, K): [true class, predicted class] pixel counts; label 255 is skipped.

  Jittable; sum it over batches (and devices). Labels outside 0..K-1 other
  than 255 are skipped as well.
  """
  labels = jnp.asarray(labels).reshape(-1).astype(jnp.int32)
  preds = jnp.asarray(preds).reshape(-1).astype(jnp.int32)
  k = num_classes
  valid = (labels >= 0) & (labels < k) & (preds >= 0) & (preds < k)
  index = jnp.where(valid, labels * k + preds, k * k)
  return jnp.bincount(index, length=k * k + 1)[:k * k].reshape(k, k).astype(jnp.int32)


def scores(cm: np.ndarray) -> dict[str, float | np.ndarray]:
  """Pixel accuracy, per-class IoU and mIoU of a confusion matrix (rows: true class).

  A class absent from both labels and predictions has IoU NaN and is left out
  of the mIoU (the release's metric counts it as 0; on NYUv2's test set every
  class occurs, so the two agree).

  Returns:
    {'pixel_acc': float, 'miou': float, 'iou': float64 (K,)}; NaN where no
    pixel was counted.
  """
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  union = cm.sum(0) + cm.sum(1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, tp / union, np.nan)
    pixel_acc = tp.sum() / cm.sum() if cm.sum() else float("nan")
  miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
  return {"pixel_acc": float(pixel_acc), "miou": miou, "iou": iou}


def colormap(n: int = 256) -> np.ndarray:
  """uint8 (n, 3): the PASCAL VOC palette the release's `colormap()` builds."""
  cmap = np.zeros((n, 3), np.uint8)
  for i in range(n):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    cmap[i] = (r, g, b)
  return cmap


def colorize(labels: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) colours of label maps, as the release's NYUv2 `decode_fn`.

  Class k gets palette entry k + 1 and the unlabelled 255 gets entry 0 (black).
  """
  return colormap()[(np.asarray(labels).astype(np.int64) + 1) % 256]
