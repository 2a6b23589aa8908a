"""TensorFlow Datasets, via `data_source` (no TensorFlow) or the `load` fallback.

`tensorflow_datasets` is imported inside `load` only, so importing the package
never imports it.
"""

from __future__ import annotations

import numpy as np

from fastdfkd_jax import errors
from fastdfkd_jax.data.info import LAYOUT_HELP, DatasetInfo, Split


def load(info: DatasetInfo, split: Split) -> tuple[np.ndarray, np.ndarray]:
  """uint8 (N, H, W, C) images and int32 (N,) labels of `split` from TFDS.

  Raises:
    UserError: TFDS is not installed or could not provide the data (e.g. no
      network access to download it); the message names each attempt's error.
  """
  failures = []
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    failures.append(f"import tensorflow_datasets: {e!r}")
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
      failures.append(f"tfds.data_source: {e!r}")
    try:
      data = tfds.as_numpy(tfds.load(
          info.tfds_name, split=split, batch_size=-1, download=True))
      return (np.asarray(data["image"], np.uint8),
              np.asarray(data["label"], np.int32))
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f"tfds.load: {e!r}")
  detail = "\n  ".join(err[:500] for err in failures)
  raise errors.UserError(
      f"TensorFlow Datasets could not load {info.tfds_name!r} split {split!r} "
      f"(e.g. no network access to download it). Set "
      f"--config.dataset.data_dir=<path> to a local copy instead.\n{LAYOUT_HELP}"
      f"\nTFDS errors:\n  {detail}")
