"""scikit-learn's 8x8 digits: the offline data set of the embedded default run."""

from __future__ import annotations

import numpy as np

from fastdfkd_jax.data.info import Split

# Number of images held out as the digits test split (the last ones after a
# RandomState(0) shuffle of the 1797 images).
DIGITS_NUM_TEST = 360


def load(split: Split) -> tuple[np.ndarray, np.ndarray]:
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
