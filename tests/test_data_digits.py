"""Tests of fastdfkd_jax.data.digits (scikit-learn's 8x8 digits)."""

import numpy as np

from fastdfkd_jax import data


def test_digits():
  ds = data.load_dataset("digits")
  assert ds.train_images.shape == (1437, 8, 8, 1)
  assert ds.test_images.shape == (data.DIGITS_NUM_TEST, 8, 8, 1) == (360, 8, 8, 1)
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  assert ds.train_labels.shape == (1437,) and ds.test_labels.shape == (360,)
  assert ds.train_images.max() == 255 and ds.train_images.min() == 0
  assert set(np.unique(ds.train_labels)) == set(range(10))
  # Deterministic split.
  again, _ = data.load_split("digits", "test")
  np.testing.assert_array_equal(again, ds.test_images)
  # The table's constants are the train split's statistics.
  x = ds.train_images / 255.0
  info = data.get_info("digits")
  assert abs(x.mean() - info.mean[0]) < 1e-3
  assert abs(x.std() - info.std[0]) < 1e-3
