"""A procedural ImageNet-layout image folder, offline: `train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`.

Class c of n gets its own colour pair (hues c/n and c/n + 1/2) and stripe angle
(c * pi / n); each image draws a stripe frequency, phase, a brightness jitter
and pixel noise, and a random size (each side in [size * 0.75, size * 1.5]), so
the ImageNet eval transform (`image_folder.resize_center_crop`) has work to do.
Class folders are fake WordNet ids `n000000<c>`; files are named as ImageNet's
(`<wnid>_<i>.JPEG`, `ILSVRC2012_val_<8 digits>.JPEG`). Every image is drawn from
its own generator seeded by (seed, split, class, index): the same arguments give
the same files.
"""

from __future__ import annotations

import colorsys
import os

import numpy as np
from PIL import Image

_SPLIT_IDS = {"train": 0, "val": 1}


def wnid(c: int) -> str:
  """The fake WordNet id of class c (sorted order = class order)."""
  return f"n{c:08d}"


def draw(c: int, num_classes: int, rng: np.random.Generator, size: int) -> np.ndarray:
  """uint8 (h, w, 3) image of class c, h and w in [0.75 size, 1.5 size]."""
  h, w = (int(rng.integers(round(0.75 * size), round(1.5 * size) + 1)) for _ in range(2))
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) / size
  angle = np.pi * c / num_classes
  freq, phase = rng.uniform(2.0, 4.0), rng.uniform(0, 2 * np.pi)
  t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle))
                         + phase)
  hue = c / num_classes
  c0 = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9))
  c1 = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.6, 0.4))
  x = (c0 * t[..., None] + c1 * (1 - t[..., None])) * rng.uniform(0.8, 1.2)
  x = x + rng.normal(0, 0.06, x.shape)
  return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def write(root: str, num_classes: int, train_per_class: int, val_per_class: int,
          size: int, seed: int = 0) -> dict[str, int]:
  """Writes the tree under `root`; returns the image count per split folder."""
  counts = {}
  for split, per_class in (("train", train_per_class), ("val", val_per_class)):
    for c in range(num_classes):
      folder = os.path.join(root, split, wnid(c))
      os.makedirs(folder, exist_ok=True)
      for i in range(per_class):
        rng = np.random.default_rng((seed, _SPLIT_IDS[split], c, i))
        name = (f"{wnid(c)}_{i}.JPEG" if split == "train"
                else f"ILSVRC2012_val_{c * per_class + i + 1:08d}.JPEG")
        Image.fromarray(draw(c, num_classes, rng, size)).save(
            os.path.join(folder, name), format="JPEG", quality=90)
    counts[split] = num_classes * per_class
  return counts
