"""A procedural segmentation set: coloured shapes on textured backgrounds, offline.

Each image is a random texture (two-colour sinusoidal stripes at a random
angle and frequency, plus pixel noise) with one to `max_shapes` shapes of
random colour, size and position painted over it; later shapes occlude earlier
ones. The class of a pixel is the shape it shows (`SHAPE_CLASSES`; 0 is the
background), so colour carries no class information and a model has to learn
form. A one-pixel band along every shape's outline is labelled 255 (ignored), as
the unlabelled pixels of NYUv2. `write_shapes` writes the NYUv2-style layout of
`segmentation.py` (`image/` and `seg5/`), so `segmentation.load_split` reads it.

Every image is drawn from its own generator seeded by (seed, split, index):
the same seed gives the same files, and a split's first n images do not depend
on how many are written.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from fastdfkd_jax import errors
from fastdfkd_jax.data import segmentation

SHAPE_CLASSES = ("background", "disk", "square", "triangle", "cross")
_SPLIT_IDS = {"train": 0, "test": 1}


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
  """float (size, size, 3) in [0, 1]: stripes between two random colours, plus noise."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
  angle, freq = rng.uniform(0, np.pi), rng.uniform(1.0, 6.0)
  phase = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
  c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
  t = (0.5 + 0.5 * phase)[..., None]
  return np.clip(c0 * (1 - t) + c1 * t + rng.normal(0, 0.05, (size, size, 3)), 0, 1)


def _shape_mask(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
  """bool (size, size): a random disk, square, triangle or cross (class 1..4)."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
  r = rng.uniform(0.12, 0.3) * size
  cy, cx = rng.uniform(r, size - r, 2)
  dy, dx = yy - cy, xx - cx
  if cls == 1:
    return dy ** 2 + dx ** 2 <= r ** 2
  if cls == 2:
    return (np.abs(dy) <= r) & (np.abs(dx) <= r)
  if cls == 3:  # upward triangle of height 2r
    return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
  arm = r / 3
  return ((np.abs(dy) <= r) & (np.abs(dx) <= arm)) | ((np.abs(dx) <= r) & (np.abs(dy) <= arm))


def _outline(mask: np.ndarray) -> np.ndarray:
  """bool: pixels of `mask` with a 4-neighbour outside it, and the outside neighbours."""
  p = np.pad(mask, 1, mode="edge")
  neighbours = [p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]
  inner = mask & ~np.logical_and.reduce(neighbours)
  outer = ~mask & np.logical_or.reduce(neighbours)
  return inner | outer


def make_example(seed: int, split: str, index: int, size: int,
                 max_shapes: int) -> tuple[np.ndarray, np.ndarray]:
  """One (image uint8 (size, size, 3), label uint8 (size, size)) pair, deterministic."""
  rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
  image = _texture(rng, size)
  label = np.zeros((size, size), np.uint8)
  border = np.zeros((size, size), bool)
  for _ in range(rng.integers(1, max_shapes + 1)):
    cls = int(rng.integers(1, len(SHAPE_CLASSES)))
    mask = _shape_mask(rng, cls, size)
    colour = rng.uniform(0, 1, 3)
    shade = 1 + rng.normal(0, 0.05, (size, size, 1))
    image = np.where(mask[..., None], np.clip(colour * shade, 0, 1), image)
    label[mask] = cls
    border = (border & ~mask) | _outline(mask)
  label[border] = segmentation.IGNORE_INDEX
  return np.round(image * 255).astype(np.uint8), label


def write_shapes(root: str, seed: int, num_train: int, num_test: int, size: int,
                 max_shapes: int) -> dict[str, int]:
  """Writes `<root>/image/{train,test}/NNNNN.png` and `<root>/seg5/{train,test}/NNNNN.png`.

  Returns:
    {split: images written}.

  Raises:
    errors.UserError: size < 8, max_shapes < 1 or a negative image count.
  """
  if size < 8 or max_shapes < 1 or min(num_train, num_test) < 0:
    raise errors.UserError(
        f"need size >= 8, max_shapes >= 1 and image counts >= 0; got size {size}, "
        f"max_shapes {max_shapes}, {num_train} train and {num_test} test images")
  seg = segmentation.label_dir(len(SHAPE_CLASSES))
  counts = {"train": num_train, "test": num_test}
  for split, n in counts.items():
    image_dir = os.path.join(root, "image", split)
    label_dir = os.path.join(root, seg, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    for i in range(n):
      image, label = make_example(seed, split, i, size, max_shapes)
      Image.fromarray(image, "RGB").save(os.path.join(image_dir, f"{i:05d}.png"))
      Image.fromarray(label, "L").save(os.path.join(label_dir, f"{i:05d}.png"))
  return counts
