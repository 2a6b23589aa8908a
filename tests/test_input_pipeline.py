"""Tests of fastdfkd_jax.input_pipeline on small fixtures built in tmp_path.

No network and no shared data: the IDX, image-folder and archive fixtures are
written here.
"""

import gzip
import os
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from fastdfkd_jax import input_pipeline as ip

CIFAR_CLASSES = ip.CIFAR10_CLASSES


# ---------------------------------------------------------------------------
# Fixtures.


def write_idx(path, array, gz=True):
  """Writes `array` (uint8) as an IDX file: magic 0x0000 08 ndim, BE dims."""
  array = np.asarray(array, np.uint8)
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  opener = gzip.open if gz else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def make_idx_dir(root, n_train=12, n_test=5, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  data = {}
  suffix = ".gz" if gz else ""
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    data[prefix] = (images, labels)
  return data


def make_tree(root, classes, size=(32, 32), mode="RGB", per_class=(2, 1),
              ext="png"):
  """train/<class>/ and test/<class>/ with images whose pixel value encodes
  the class index (so labels can be checked from the pixels)."""
  for split, n in zip(("train", "test"), per_class):
    for ci, cls in enumerate(classes):
      d = root / split / cls
      d.mkdir(parents=True, exist_ok=True)
      for j in range(n):
        value = 20 * ci + 5
        shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
        Image.fromarray(np.full(shape, value, np.uint8), mode).save(
            d / f"{j:04d}.{ext}")
  return root


def make_tar(tree_root, archive, top="cifar-images"):
  with tarfile.open(archive, "w:gz") as tar:
    for split in ("train", "test"):
      tar.add(tree_root / split, arcname=f"{top}/{split}" if top else split)
  return archive


# ---------------------------------------------------------------------------
# Table and digits.


def test_info_table():
  assert set(ip.DATASETS) == {"digits", "mnist", "fashion_mnist", "cifar10",
                              "cifar100", "svhn_cropped"}
  for name, info in ip.DATASETS.items():
    assert info.name == name
    assert len(info.mean) == len(info.std) == info.image_shape[2]
    assert info.crop_padding == (1 if name == "digits" else 4)
  assert ip.get_info("mnist").image_shape == (28, 28, 1)
  assert ip.get_info("cifar100").num_classes == 100


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError) as e:
    ip.get_info("imagenet")
  for name in ip.DATASETS:
    assert name in str(e.value)
  with pytest.raises(ValueError, match="cifar10"):
    ip.load_split("nope", "train")


def test_unknown_split():
  with pytest.raises(ValueError, match="split"):
    ip.load_split("digits", "validation")


def test_digits():
  ds = ip.load_dataset("digits")
  assert ds.train_images.shape == (1437, 8, 8, 1)
  assert ds.test_images.shape == (360, 8, 8, 1)
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  assert ds.train_labels.shape == (1437,) and ds.test_labels.shape == (360,)
  assert ds.train_images.max() == 255 and ds.train_images.min() == 0
  assert set(np.unique(ds.train_labels)) == set(range(10))
  # Deterministic split.
  again, _ = ip.load_split("digits", "test")
  np.testing.assert_array_equal(again, ds.test_images)
  # The table's constants are the train split's statistics.
  x = ds.train_images / 255.0
  info = ip.get_info("digits")
  assert abs(x.mean() - info.mean[0]) < 1e-3
  assert abs(x.std() - info.std[0]) < 1e-3


# ---------------------------------------------------------------------------
# IDX.


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
  data = make_idx_dir(tmp_path / "mnist", gz=gz)
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images, labels = ip.load_split("mnist", split, str(tmp_path / "mnist"))
    assert images.shape == (len(data[prefix][0]), 28, 28, 1)
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(images[..., 0], data[prefix][0])
    np.testing.assert_array_equal(labels, data[prefix][1])


def test_read_idx_header(tmp_path):
  arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  write_idx(tmp_path / "x-idx3-ubyte.gz", arr)
  with gzip.open(tmp_path / "x-idx3-ubyte.gz", "rb") as f:
    assert struct.unpack(">I", f.read(4))[0] == 2051
  np.testing.assert_array_equal(ip.read_idx(str(tmp_path / "x-idx3-ubyte.gz")),
                                arr)


def test_corrupt_idx(tmp_path):
  make_idx_dir(tmp_path / "d")
  bad = tmp_path / "d" / "train-images-idx3-ubyte.gz"
  with gzip.open(bad, "wb") as f:  # Header says 12x28x28, data is short.
    f.write(struct.pack(">BBBB3I", 0, 0, 8, 3, 12, 28, 28) + b"\0" * 100)
  with pytest.raises(ValueError) as e:
    ip.load_split("mnist", "train", str(tmp_path / "d"))
  assert str(bad) in str(e.value) and "train-images-idx3-ubyte" in str(e.value)
  bad.write_bytes(b"this is not gzip")
  with pytest.raises(ValueError, match="Corrupt IDX"):
    ip.load_split("mnist", "train", str(tmp_path / "d"))
  with gzip.open(bad, "wb") as f:  # Bad magic.
    f.write(b"\x12\x34\x08\x03" + b"\0" * 20)
  with pytest.raises(ValueError, match="magic"):
    ip.load_split("mnist", "train", str(tmp_path / "d"))


def test_idx_wrong_image_size(tmp_path):
  root = tmp_path / "d"
  root.mkdir()
  write_idx(root / "t10k-images-idx3-ubyte.gz", np.zeros((3, 8, 8)))
  write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros((3,)))
  with pytest.raises(ValueError, match="expects"):
    ip.load_split("mnist", "test", str(root))
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    ip.load_split("mnist", "train", str(root))


# ---------------------------------------------------------------------------
# Image folders and archives.


def test_image_folder_cifar_canonical_order(tmp_path):
  # Folders created in a shuffled order; canonical order must win over sorted.
  classes = list(CIFAR_CLASSES)
  created = [classes[i] for i in np.random.default_rng(0).permutation(10)]
  assert created != classes
  make_tree(tmp_path / "tree", created)
  cache = tmp_path / "cache"
  images, labels = ip.load_split("cifar10", "train", str(tmp_path / "tree"),
                                 str(cache))
  assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  names = ip.class_names(ip.get_info("cifar10"), str(tmp_path / "tree"))
  assert names == classes
  # Pixel value encodes the position in the shuffled creation list; map it
  # back to the class name and check the label is its canonical index.
  for img, label in zip(images, labels):
    ci = (int(img[0, 0, 0]) - 5 + 10) // 20
    assert CIFAR_CLASSES.index(created[ci]) == label
  test_images, test_labels = ip.load_split(
      "cifar10", "test", str(tmp_path / "tree"), str(cache))
  assert test_images.shape == (10, 32, 32, 3)
  assert sorted(test_labels.tolist()) == list(range(10))


def test_image_folder_sorted_order_grey_jpeg(tmp_path):
  classes = [f"c{i}" for i in range(10)]
  make_tree(tmp_path / "t", classes[::-1], size=(28, 28), mode="RGB",
            ext="jpg")
  images, labels = ip.load_split("fashion_mnist", "test", str(tmp_path / "t"),
                                 str(tmp_path / "cache"))
  assert images.shape == (10, 28, 28, 1)  # RGB converted to grey.
  assert labels.tolist() == list(range(10))
  # Created reversed: folder c{i} got pixel 20*(9-i)+5 (JPEG: approximately).
  expected = 20 * (9 - np.arange(10)) + 5
  np.testing.assert_allclose(images[:, 14, 14, 0], expected, atol=3)


def test_image_folder_numeric_class_names(tmp_path):
  classes = [str(i) for i in range(10)]
  make_tree(tmp_path / "t", classes, size=(32, 32))
  names = ip.class_names(ip.get_info("svhn_cropped"), str(tmp_path / "t"))
  assert names == classes


def test_tar_extracts_once_and_reuses_cache(tmp_path, monkeypatch):
  make_tree(tmp_path / "tree", list(CIFAR_CLASSES))
  archive = make_tar(tmp_path / "tree", tmp_path / "cifar10_jpeg.tar.gz")
  cache = tmp_path / "cache"
  direct = ip.load_split("cifar10", "train", str(tmp_path / "tree"),
                         str(tmp_path / "cache2"))
  images, labels = ip.load_split("cifar10", "train", str(archive), str(cache))
  np.testing.assert_array_equal(images, direct[0])
  np.testing.assert_array_equal(labels, direct[1])
  sub = ip.archive_cache_dir(str(archive), str(cache))
  assert os.path.isdir(os.path.join(sub, "tree"))
  assert any(f.endswith(".npz") for f in os.listdir(sub))
  assert os.path.basename(sub).startswith("cifar10_jpeg-")
  assert not [f for f in os.listdir(sub) if f.startswith(".")]  # No temps.

  calls = []
  orig_extract = ip._extract_archive
  orig_tree = ip.load_image_tree
  monkeypatch.setattr(ip, "_extract_archive",
                      lambda *a: calls.append("extract") or orig_extract(*a))
  monkeypatch.setattr(ip, "load_image_tree",
                      lambda *a: calls.append("decode") or orig_tree(*a))
  again = ip.load_split("cifar10", "train", str(archive), str(cache))
  np.testing.assert_array_equal(again[0], images)
  assert calls == []  # npz reused: no extraction, no decoding.
  # The test split: tree already extracted (extract returns early), decoded.
  ip.load_split("cifar10", "test", str(archive), str(cache))
  assert calls == ["extract", "decode"]
  assert len([f for f in os.listdir(sub) if f.endswith(".npz")]) == 2
  calls.clear()
  ip.load_dataset("cifar10", str(archive), str(cache))
  assert calls == []


def test_tar_without_top_folder(tmp_path):
  make_tree(tmp_path / "tree", list(CIFAR_CLASSES), per_class=(1, 1))
  archive = make_tar(tmp_path / "tree", tmp_path / "flat.tgz", top="")
  images, _ = ip.load_split("cifar10", "test", str(archive),
                            str(tmp_path / "c"))
  assert images.shape == (10, 32, 32, 3)


def test_tar_rejects_unsafe_members(tmp_path):
  evil = tmp_path / "evil.tar.gz"
  payload = tmp_path / "payload.txt"
  payload.write_text("x")
  with tarfile.open(evil, "w:gz") as tar:
    tar.add(payload, arcname="../escape.txt")
  with pytest.raises(ValueError, match="unsafe"):
    ip.load_split("cifar10", "train", str(evil), str(tmp_path / "c"))
  assert not (tmp_path / "c" / "escape.txt").exists()
  assert not (tmp_path / "escape.txt").exists()


def test_missing_path(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError) as e:
    ip.load_split("mnist", "train", str(missing))
  msg = str(e.value)
  assert str(missing) in msg and "train-images-idx3-ubyte" in msg
  assert "train/<class>" in msg and ".tar.gz" in msg


def test_empty_dir(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError) as e:
    ip.load_split("cifar10", "train", str(empty))
  msg = str(e.value)
  assert str(empty) in msg and "train-images-idx3-ubyte" in msg
  assert "train/<class>" in msg


def test_missing_split_folder(tmp_path):
  make_tree(tmp_path / "t", list(CIFAR_CLASSES), per_class=(1, 1))
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(tmp_path / "t" / "test")
  with pytest.raises(FileNotFoundError) as e:
    ip.load_split("cifar10", "test", str(tmp_path / "t"), str(tmp_path / "c"))
  assert str(tmp_path / "t") in str(e.value) and "test/" in str(e.value)


def test_wrong_image_size(tmp_path):
  make_tree(tmp_path / "t", list(CIFAR_CLASSES), size=(32, 32),
            per_class=(1, 1))
  bad = tmp_path / "t" / "train" / "cat" / "0000.png"
  Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(bad)
  with pytest.raises(ValueError) as e:
    ip.load_split("cifar10", "train", str(tmp_path / "t"), str(tmp_path / "c"))
  assert str(bad) in str(e.value) and "expected 32x32" in str(e.value)


def test_wrong_class_count(tmp_path):
  make_tree(tmp_path / "t", ["a", "b", "c"], per_class=(1, 1))
  with pytest.raises(ValueError, match="3 class folders"):
    ip.load_split("cifar10", "train", str(tmp_path / "t"), str(tmp_path / "c"))


def test_tfds_failure_is_runtime_error(monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def boom(*args, **kwargs):
    raise ConnectionError("no network")

  monkeypatch.setattr(tfds, "data_source", boom)
  monkeypatch.setattr(tfds, "load", boom)
  with pytest.raises(RuntimeError) as e:
    ip.load_split("mnist", "train")
  msg = str(e.value)
  assert "--config.dataset.data_dir" in msg and "TensorFlow Datasets" in msg
  assert "train-images-idx3-ubyte" in msg


# ---------------------------------------------------------------------------
# Batching.


@pytest.mark.parametrize("drop", [False, True])
def test_iterate_batches_covers_epoch(drop):
  n, bs = 23, 5
  images = np.arange(n)[:, None, None, None].astype(np.uint8)
  labels = np.arange(n, dtype=np.int32)
  rng = np.random.default_rng(0)
  batches = list(ip.iterate_batches(images, labels, bs, rng, drop))
  assert len(batches) == ip.num_batches(n, bs, drop) == (4 if drop else 5)
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
      [lab for _, lab in ip.iterate_batches(images, labels, bs, rng, drop)])
  assert second.tolist() != seen.tolist()  # Fresh order per epoch.


def test_iterate_batches_sequential():
  labels = np.arange(10, dtype=np.int32)
  batches = [lab.tolist() for _, lab in
             ip.iterate_batches(labels, labels, 4, None, False)]
  assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert ip.num_batches(10, 4, True) == 2
  assert ip.num_batches(0, 4, False) == 0
