"""Real data sets and the training augmentation.

The teacher is trained, and the student scored, on real data; synthesis never
reads it. Modules:

  info.py          the table of data sets (`DatasetInfo`, `DATASETS`, `get_info`).
  datasets.py      `load_split` / `load_dataset` (dispatch over the sources), host batches.
  digits.py        scikit-learn's 8x8 digits (offline).
  idx.py           MNIST-style IDX files.
  image_folder.py  image-folder trees and archives of them, with a decode cache.
  tfds.py          TensorFlow Datasets (imported only when used).
  streaming.py     splits decoded per batch in a background pipeline (imagenet).
  procedural_folder.py  a procedural ImageNet-layout image folder (offline).
  augment.py       crop / flip / normalise, device-count invariant under shard_map.
  transfer_set.py  exported synthetic transfer sets: layouts, writer, reader.
"""

from fastdfkd_jax.data import augment
from fastdfkd_jax.data.datasets import Dataset, iterate_batches, load_dataset, load_split
from fastdfkd_jax.data.datasets import num_batches
from fastdfkd_jax.data.digits import DIGITS_NUM_TEST
from fastdfkd_jax.data.idx import read_idx
from fastdfkd_jax.data.image_folder import CIFAR10_CLASSES, archive_cache_dir, class_names
from fastdfkd_jax.data.image_folder import load_image_tree
from fastdfkd_jax.data.info import DATASETS, LAYOUT_HELP, SPLITS, DatasetInfo, Split, get_info

__all__ = [
    "CIFAR10_CLASSES", "DATASETS", "DIGITS_NUM_TEST", "Dataset", "DatasetInfo",
    "LAYOUT_HELP", "SPLITS", "Split", "archive_cache_dir", "augment", "class_names",
    "get_info", "iterate_batches", "load_dataset", "load_image_tree", "load_split",
    "num_batches", "read_idx"]
