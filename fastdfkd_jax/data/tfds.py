"""TensorFlow Datasets, via `data_source` (no TensorFlow) or the `load` fallback.

`tensorflow_datasets` is imported inside `load` and `stream` only, so importing
the package never imports it. `stream` serves a streamed data set (`imagenet2012`,
prepared from its manual download in the array_record format that `data_source`
reads) without decoding a split into memory.
"""

from __future__ import annotations

import io

import numpy as np
from absl import logging

from fastdfkd_jax.data import image_folder, streaming

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


# The labelled held-out split of a TFDS data set whose 'test' split has no labels.
_HELD_OUT = {"imagenet2012": "validation"}


def stream(info: DatasetInfo, split: Split, workers: int = 0,
           prefetch: int = 4) -> tuple[streaming.StreamingSplit, np.ndarray]:
  """(images, int32 labels) of `split` read record by record from `tfds.data_source`
  (encoded images, decoded and resized per batch by `streaming`); the labels are read
  once here, one pass over the records. 'test' is imagenet2012's 'validation'.

  Raises:
    UserError: TFDS is not installed or has no prepared copy of the data set.
  """
  name = info.tfds_name
  tfds_split = _HELD_OUT.get(name, split) if split == "test" else split
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    source = tfds.data_source(name, split=tfds_split, download=False,
                              decoders={"image": tfds.decode.SkipDecoding()})
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(
        f"TensorFlow Datasets has no prepared {name!r} split {tfds_split!r} to stream "
        f"({errors.one_line(repr(e))[:300]}). Prepare it once from the manual download "
        f"(tfds build {name} --manual_dir=DIR --file_format=array_record), or set "
        f"--config.dataset.data_dir=<an image-folder tree train/<wnid>/*.JPEG, "
        f"val/<wnid>/*.JPEG>.") from e
  n = len(source)
  logging.info("reading the %d labels of %s/%s once", n, name, tfds_split)
  labels = np.fromiter((int(source[i]["label"]) for i in range(n)), np.int32, n)
  h, w, c = info.image_shape
  mode = {1: "L", 3: "RGB"}[c]

  def read(i: int) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(io.BytesIO(source[i]["image"])) as img:
      img = img if img.mode == mode else img.convert(mode)
      x = image_folder.resize_center_crop(img, (h, w)) if info.resize else img
      return np.asarray(x, np.uint8).reshape(h, w, c)

  return streaming.StreamingSplit(read, n, info.image_shape,
                                  streaming.default_workers(workers), prefetch), labels
