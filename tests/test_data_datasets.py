"""Tests of fastdfkd_jax.data's table (info.py) and dispatch and batches (datasets.py)."""

import numpy as np
import pytest

from fastdfkd_jax import data, errors


def test_info_table():
  assert set(data.DATASETS) == {"digits", "mnist", "fashion_mnist", "cifar10",
                                "cifar100", "svhn_cropped", "imagenet", "imagenet_mini",
                                "shapes_seg", "nyuv2"}
  for name, info in data.DATASETS.items():
    assert info.name == name
    assert len(info.mean) == len(info.std) == info.image_shape[2]
    imagenet = name.startswith("imagenet")
    padding = {"digits": 1, "nyuv2": 16}.get(name, 0 if imagenet else 4)
    assert info.crop_padding == padding
    assert info.resize == imagenet and info.streaming == (name == "imagenet")
    assert info.task == ("segmentation" if name in ("shapes_seg", "nyuv2")
                         else "classification")
  assert data.get_info("mnist").image_shape == (28, 28, 1)
  assert data.get_info("cifar100").num_classes == 100


def test_unknown_name_lists_valid_names():
  with pytest.raises(errors.UserError) as e:
    data.get_info("imagenet21k")
  for name in data.DATASETS:
    assert name in str(e.value)
  with pytest.raises(errors.UserError, match="cifar10"):
    data.load_split("nope", "train")


def test_unknown_split():
  with pytest.raises(ValueError, match="split"):
    data.load_split("digits", "validation")


def test_missing_path(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(errors.UserError) as e:
    data.load_split("mnist", "train", str(missing))
  msg = str(e.value)
  assert str(missing) in msg and "train-images-idx3-ubyte" in msg
  assert "train/<class>" in msg and ".tar.gz" in msg


def test_empty_dir(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(errors.UserError) as e:
    data.load_split("cifar10", "train", str(empty))
  msg = str(e.value)
  assert str(empty) in msg and "train-images-idx3-ubyte" in msg
  assert "train/<class>" in msg


def test_file_that_is_not_an_archive(tmp_path):
  path = tmp_path / "cifar10.zip"
  path.write_bytes(b"PK")
  with pytest.raises(errors.UserError, match="not a .tar.gz/.tgz/.tar archive"):
    data.load_split("cifar10", "train", str(path))


@pytest.mark.parametrize("drop", [False, True])
def test_iterate_batches_covers_epoch(drop):
  n, bs = 23, 5
  images = np.arange(n)[:, None, None, None].astype(np.uint8)
  labels = np.arange(n, dtype=np.int32)
  rng = np.random.default_rng(0)
  batches = list(data.iterate_batches(images, labels, bs, rng, drop))
  assert len(batches) == data.num_batches(n, bs, drop) == (4 if drop else 5)
  seen = np.concatenate([lab for _, lab in batches])
  for img, lab in batches:
    np.testing.assert_array_equal(img[:, 0, 0, 0], lab)
    if drop:
      assert len(lab) == bs
  assert len(np.unique(seen)) == len(seen)
  if not drop:
    assert sorted(seen.tolist()) == list(range(n))
  assert seen.tolist() != sorted(seen.tolist())  # Shuffled.
  second = np.concatenate(
      [lab for _, lab in data.iterate_batches(images, labels, bs, rng, drop)])
  assert second.tolist() != seen.tolist()  # Fresh order per epoch.


def test_iterate_batches_sequential():
  labels = np.arange(10, dtype=np.int32)
  batches = [lab.tolist() for _, lab in
             data.iterate_batches(labels, labels, 4, None, False)]
  assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert data.num_batches(10, 4, True) == 2
  assert data.num_batches(0, 4, False) == 0
