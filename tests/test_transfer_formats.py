"""Transfer-set layouts: every format reads back pixel for pixel, the image folder is
a tree the data loader reads, and clear errors."""

import json
import os
import sys

import numpy as np
import pytest

from fastdfkd_jax import data, errors
from fastdfkd_jax.transfer import formats


def _set(n=23, shape=(8, 8, 1), classes=10, seed=0):
  rng = np.random.default_rng(seed)
  return formats.TransferSet(
      images=rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
      labels=rng.integers(0, classes - 1, n).astype(np.int32),   # class 9 left empty
      confidence=rng.uniform(0.1, 1.0, n).astype(np.float32),
      synthesis_call=(np.arange(3, 3 + n) // 4).astype(np.int32))


@pytest.mark.parametrize("shape", [(8, 8, 1), (4, 6, 3)])
@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_round_trip_is_byte_identical(tmp_path, fmt, shape):
  ts = _set(shape=shape)
  formats.write(ts, str(tmp_path), fmt, num_classes=10)
  assert formats.detect_format(str(tmp_path)) == fmt
  back = formats.load(str(tmp_path))
  assert back.images.dtype == np.uint8 and back.images.shape == ts.images.shape
  assert back.images.tobytes() == ts.images.tobytes()
  np.testing.assert_array_equal(back.labels, ts.labels)
  np.testing.assert_array_equal(back.confidence, ts.confidence)
  np.testing.assert_array_equal(back.synthesis_call, ts.synthesis_call)
  assert back.labels.dtype == np.int32 and back.synthesis_call.dtype == np.int32


def test_image_folder_is_a_tree_the_data_loader_reads(tmp_path):
  ts = _set(n=30, shape=(28, 28, 1))
  out = tmp_path / "set"
  formats.write(ts, str(out), "image_folder", num_classes=10)
  # Every class has its folder (class 9 has no image), named by the teacher's class.
  assert sorted(os.listdir(out / "train"), key=int) == [str(c) for c in range(10)]
  assert not os.listdir(out / "train" / "9")
  # The loader of local image-folder data (here as an MNIST-shaped set) reads it
  # class-major; each image keeps its teacher class as label.
  images, labels = data.load_split("mnist", "train", str(out), str(tmp_path / "cache"))
  order = np.lexsort((np.arange(len(ts.labels)), ts.labels))
  assert images.tobytes() == ts.images[order].tobytes()
  np.testing.assert_array_equal(labels, ts.labels[order])
  with open(out / formats.JSONL_FILE) as f:
    rows = [json.loads(line) for line in f]
  assert [r["index"] for r in rows] == list(range(30))
  assert rows[4]["file"] == os.path.join("train", str(ts.labels[4]), "0000004.png")


def test_no_export_and_bad_format_are_user_errors(tmp_path):
  with pytest.raises(errors.UserError, match="no exported transfer set"):
    formats.load(str(tmp_path))
  with pytest.raises(errors.UserError, match="npz"):
    formats.write(_set(), str(tmp_path), "tfrecord", num_classes=10)


def test_array_record_missing_names_the_fix(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "array_record.python", None)   # import fails
  monkeypatch.setitem(sys.modules, "array_record.python.array_record_module", None)
  with pytest.raises(errors.UserError, match="pip install array_record"):
    formats.write(_set(), str(tmp_path), "array_record", num_classes=10)


def test_load_images_checks_the_image_shape(tmp_path):
  formats.write(_set(shape=(8, 8, 1)), str(tmp_path), "npz", num_classes=10)
  assert formats.load_images(str(tmp_path), (8, 8, 1)).shape == (23, 8, 8, 1)
  with pytest.raises(errors.UserError, match="dataset.name"):
    formats.load_images(str(tmp_path), (28, 28, 1))


def test_a_new_export_replaces_the_previous_one(tmp_path):
  formats.write(_set(n=30), str(tmp_path), "image_folder", num_classes=10)
  ts = _set(n=5, seed=1)
  formats.write(ts, str(tmp_path), "npz", num_classes=10)
  assert not os.path.exists(tmp_path / "train")
  assert not os.path.exists(tmp_path / formats.JSONL_FILE)
  assert formats.load(str(tmp_path)).images.tobytes() == ts.images.tobytes()
