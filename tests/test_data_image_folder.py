"""Tests of fastdfkd_jax.data.image_folder: trees, archives and their decode cache.

No network and no shared data: the image-folder and archive fixtures are
written into tmp_path.
"""

import os
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from fastdfkd_jax import data, errors
from fastdfkd_jax.data import archives, image_folder

from data_fixtures import make_tar, make_tree

CIFAR_CLASSES = data.CIFAR10_CLASSES


def test_image_folder_cifar_canonical_order(tmp_path):
  # Folders created in a shuffled order; canonical order must win over sorted.
  classes = list(CIFAR_CLASSES)
  created = [classes[i] for i in np.random.default_rng(0).permutation(10)]
  assert created != classes
  make_tree(tmp_path / "tree", created)
  cache = tmp_path / "cache"
  images, labels = data.load_split("cifar10", "train", str(tmp_path / "tree"),
                                   str(cache))
  assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  names = data.class_names(data.get_info("cifar10"), str(tmp_path / "tree"))
  assert names == classes
  # Pixel value encodes the position in the shuffled creation list; map it
  # back to the class name and check the label is its canonical index.
  for img, label in zip(images, labels):
    ci = (int(img[0, 0, 0]) - 5 + 10) // 20
    assert CIFAR_CLASSES.index(created[ci]) == label
  test_images, test_labels = data.load_split(
      "cifar10", "test", str(tmp_path / "tree"), str(cache))
  assert test_images.shape == (10, 32, 32, 3)
  assert sorted(test_labels.tolist()) == list(range(10))


def test_image_folder_sorted_order_grey_jpeg(tmp_path):
  classes = [f"c{i}" for i in range(10)]
  make_tree(tmp_path / "t", classes[::-1], size=(28, 28), mode="RGB",
            ext="jpg")
  images, labels = data.load_split("fashion_mnist", "test", str(tmp_path / "t"),
                                   str(tmp_path / "cache"))
  assert images.shape == (10, 28, 28, 1)  # RGB converted to grey.
  assert labels.tolist() == list(range(10))
  # Created reversed: folder c{i} got pixel 20*(9-i)+5 (JPEG: approximately).
  expected = 20 * (9 - np.arange(10)) + 5
  np.testing.assert_allclose(images[:, 14, 14, 0], expected, atol=3)


def test_image_folder_numeric_class_names(tmp_path):
  classes = [str(i) for i in range(10)]
  make_tree(tmp_path / "t", classes, size=(32, 32))
  names = data.class_names(data.get_info("svhn_cropped"), str(tmp_path / "t"))
  assert names == classes


def test_tar_extracts_once_and_reuses_cache(tmp_path, monkeypatch):
  make_tree(tmp_path / "tree", list(CIFAR_CLASSES))
  archive = make_tar(tmp_path / "tree", tmp_path / "cifar10_jpeg.tar.gz")
  cache = tmp_path / "cache"
  direct = data.load_split("cifar10", "train", str(tmp_path / "tree"),
                           str(tmp_path / "cache2"))
  images, labels = data.load_split("cifar10", "train", str(archive), str(cache))
  np.testing.assert_array_equal(images, direct[0])
  np.testing.assert_array_equal(labels, direct[1])
  sub = data.archive_cache_dir(str(archive), str(cache))
  assert os.path.isdir(os.path.join(sub, "tree"))
  assert any(f.endswith(".npz") for f in os.listdir(sub))
  assert os.path.basename(sub).startswith("cifar10_jpeg-")
  assert not [f for f in os.listdir(sub) if f.startswith(".")]  # No temps.
  assert sorted(os.listdir(sub)) == ["cifar10-train-32x32x3-v1.npz", "tree"]

  calls = []
  orig_extract = archives.extract_archive
  orig_tree = image_folder.load_image_tree
  monkeypatch.setattr(archives, "extract_archive",
                      lambda *a: calls.append("extract") or orig_extract(*a))
  monkeypatch.setattr(image_folder, "load_image_tree",
                      lambda *a: calls.append("decode") or orig_tree(*a))
  again = data.load_split("cifar10", "train", str(archive), str(cache))
  np.testing.assert_array_equal(again[0], images)
  assert calls == []  # npz reused: no extraction, no decoding.
  # The test split: tree already extracted (extract returns early), decoded.
  data.load_split("cifar10", "test", str(archive), str(cache))
  assert calls == ["extract", "decode"]
  assert len([f for f in os.listdir(sub) if f.endswith(".npz")]) == 2
  calls.clear()
  data.load_dataset("cifar10", str(archive), str(cache))
  assert calls == []


def test_tar_without_top_folder(tmp_path):
  make_tree(tmp_path / "tree", list(CIFAR_CLASSES), per_class=(1, 1))
  archive = make_tar(tmp_path / "tree", tmp_path / "flat.tgz", top="")
  images, _ = data.load_split("cifar10", "test", str(archive),
                              str(tmp_path / "c"))
  assert images.shape == (10, 32, 32, 3)


def test_tar_rejects_unsafe_members(tmp_path):
  evil = tmp_path / "evil.tar.gz"
  payload = tmp_path / "payload.txt"
  payload.write_text("x")
  with tarfile.open(evil, "w:gz") as tar:
    tar.add(payload, arcname="../escape.txt")
  with pytest.raises(errors.UserError, match="unsafe"):
    data.load_split("cifar10", "train", str(evil), str(tmp_path / "c"))
  assert not (tmp_path / "c" / "escape.txt").exists()
  assert not (tmp_path / "escape.txt").exists()


def test_missing_split_folder(tmp_path):
  make_tree(tmp_path / "t", list(CIFAR_CLASSES), per_class=(1, 1))
  shutil.rmtree(tmp_path / "t" / "test")
  with pytest.raises(errors.UserError) as e:
    data.load_split("cifar10", "test", str(tmp_path / "t"), str(tmp_path / "c"))
  assert str(tmp_path / "t") in str(e.value) and "test/" in str(e.value)


def test_a_set_without_its_training_split_serves_the_test_split_alone(tmp_path):
  make_tree(tmp_path / "t", list(CIFAR_CLASSES), per_class=(1, 2))
  with tarfile.open(tmp_path / "test_only.tar.gz", "w:gz") as tar:
    tar.add(tmp_path / "t" / "test", arcname="test")
  ds = data.load_dataset("cifar10", str(tmp_path / "test_only.tar.gz"), str(tmp_path / "c"),
                         splits=("test",))
  assert ds.train_images.shape == (0, 32, 32, 3) and ds.train_labels.shape == (0,)
  assert ds.test_images.shape == (20, 32, 32, 3)
  assert sorted(ds.test_labels.tolist()) == sorted(list(range(10)) * 2)
  with pytest.raises(errors.UserError, match="train/"):
    data.load_dataset("cifar10", str(tmp_path / "test_only.tar.gz"), str(tmp_path / "c"))


def test_wrong_image_size(tmp_path):
  make_tree(tmp_path / "t", list(CIFAR_CLASSES), size=(32, 32),
            per_class=(1, 1))
  bad = tmp_path / "t" / "train" / "cat" / "0000.png"
  Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(bad)
  with pytest.raises(errors.UserError) as e:
    data.load_split("cifar10", "train", str(tmp_path / "t"), str(tmp_path / "c"))
  assert str(bad) in str(e.value) and "expected 32x32" in str(e.value)


def test_wrong_class_count(tmp_path):
  make_tree(tmp_path / "t", ["a", "b", "c"], per_class=(1, 1))
  with pytest.raises(errors.UserError, match="3 class folders"):
    data.load_split("cifar10", "train", str(tmp_path / "t"), str(tmp_path / "c"))


def test_plain_tree_cache_layout(tmp_path):
  make_tree(tmp_path / "cifar", list(CIFAR_CLASSES), per_class=(1, 1))
  cache = tmp_path / "c"
  data.load_split("cifar10", "test", str(tmp_path / "cifar"), str(cache))
  (sub,) = os.listdir(cache)
  assert sub.startswith("cifar-")
  assert os.listdir(cache / sub) == ["cifar10-test-32x32x3-v1.npz"]


def test_corrupt_archive(tmp_path):
  bad = tmp_path / "cifar10.tar.gz"
  bad.write_bytes(b"not a tar archive at all")
  with pytest.raises(errors.UserError, match="Cannot extract archive") as e:
    data.load_split("cifar10", "train", str(bad), str(tmp_path / "c"))
  assert str(bad) in str(e.value)


def test_archive_without_split_folders(tmp_path):
  payload = tmp_path / "readme.txt"
  payload.write_text("x")
  archive = tmp_path / "other.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(payload, arcname="readme.txt")
  with pytest.raises(errors.UserError, match="holds no train/ or test/ folder"):
    data.load_split("cifar10", "train", str(archive), str(tmp_path / "c"))


def test_undecodable_image(tmp_path):
  make_tree(tmp_path / "t", list(CIFAR_CLASSES), per_class=(1, 1))
  bad = tmp_path / "t" / "train" / "dog" / "0000.png"
  bad.write_bytes(b"not a png")
  with pytest.raises(errors.UserError, match="Cannot decode image") as e:
    data.load_split("cifar10", "train", str(tmp_path / "t"), str(tmp_path / "c"))
  assert str(bad) in str(e.value)


def test_truncated_archive_leaves_no_cache_behind(tmp_path):
  make_tree(tmp_path / "tree", list(CIFAR_CLASSES))
  archive = make_tar(tmp_path / "tree", tmp_path / "cifar10.tar.gz")
  os.truncate(archive, os.path.getsize(archive) // 2)
  cache = tmp_path / "cache"
  with pytest.raises(errors.UserError, match="Cannot extract archive"):
    data.load_split("cifar10", "train", str(archive), str(cache))
  assert not os.listdir(cache)  # no half-extracted tree, no empty cache folder


def test_cache_key_follows_the_archive_content(tmp_path):
  """Another archive of the same path, size and mtime (e.g. after `cp -p`) gets a new cache."""
  make_tree(tmp_path / "a", list(CIFAR_CLASSES))
  make_tar(tmp_path / "a", tmp_path / "a.tar.gz", top="")
  for png in (tmp_path / "a" / "train" / "cat").iterdir():  # other pixels
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(png)
  make_tar(tmp_path / "a", tmp_path / "b.tar.gz", top="")
  size = max(os.path.getsize(tmp_path / n) for n in ("a.tar.gz", "b.tar.gz"))
  for name in ("a.tar.gz", "b.tar.gz"):  # gzip ignores trailing zeros: equal sizes
    with open(tmp_path / name, "ab") as f:
      f.write(b"\0" * (size - os.path.getsize(tmp_path / name)))
  archive, cache = tmp_path / "cifar10.tar.gz", str(tmp_path / "cache")
  shutil.copyfile(tmp_path / "a.tar.gz", archive)
  first, _ = data.load_split("cifar10", "train", str(archive), cache)
  stat = os.stat(archive)
  shutil.copyfile(tmp_path / "b.tar.gz", archive)
  os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert os.stat(archive).st_size == stat.st_size
  second, _ = data.load_split("cifar10", "train", str(archive), cache)
  assert len(os.listdir(cache)) == 2
  assert not (first == 7).any() and (second == 7).any()


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 torn", "wrong shape"])
def test_corrupt_decode_cache_is_rebuilt(tmp_path, damage, caplog):
  make_tree(tmp_path / "tree", list(CIFAR_CLASSES))
  archive = make_tar(tmp_path / "tree", tmp_path / "cifar10.tar.gz")
  cache = str(tmp_path / "cache")
  images, labels = data.load_split("cifar10", "train", str(archive), cache)
  npz = os.path.join(data.archive_cache_dir(str(archive), cache),
                     "cifar10-train-32x32x3-v1.npz")
  if isinstance(damage, bytes):
    with open(npz, "wb") as f:
      f.write(damage)
  else:
    np.savez(npz, images=images[:, :16], labels=labels)
  caplog.set_level("WARNING")
  again, again_labels = data.load_split("cifar10", "train", str(archive), cache)
  np.testing.assert_array_equal(again, images)
  np.testing.assert_array_equal(again_labels, labels)
  assert "is corrupt" in caplog.text and "rebuilding" in caplog.text
  with np.load(npz) as rebuilt:
    assert rebuilt["images"].shape == images.shape


def test_damaged_extracted_tree_is_extracted_again(tmp_path, caplog):
  make_tree(tmp_path / "tree", list(CIFAR_CLASSES))
  archive = make_tar(tmp_path / "tree", tmp_path / "cifar10.tar.gz")
  cache = str(tmp_path / "cache")
  expected = data.load_split("cifar10", "test", str(tmp_path / "tree"), str(tmp_path / "c2"))
  data.load_split("cifar10", "train", str(archive), cache)  # extracts the tree
  tree = os.path.join(data.archive_cache_dir(str(archive), cache), "tree", "cifar-images")
  with open(os.path.join(tree, "test", "dog", "0000.png"), "wb") as f:
    f.write(b"bit rot")
  caplog.set_level("WARNING")
  images, labels = data.load_split("cifar10", "test", str(archive), cache)
  np.testing.assert_array_equal(images, expected[0])
  np.testing.assert_array_equal(labels, expected[1])
  assert "extracting it again" in caplog.text
