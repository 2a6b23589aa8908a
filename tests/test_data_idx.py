"""Tests of fastdfkd_jax.data.idx (MNIST-style IDX files) on fixtures in tmp_path."""

import gzip
import struct

import numpy as np
import pytest

from fastdfkd_jax import data, errors

from data_fixtures import make_idx_dir, write_idx


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
  written = make_idx_dir(tmp_path / "mnist", gz=gz)
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images, labels = data.load_split("mnist", split, str(tmp_path / "mnist"))
    assert images.shape == (len(written[prefix][0]), 28, 28, 1)
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(images[..., 0], written[prefix][0])
    np.testing.assert_array_equal(labels, written[prefix][1])


def test_read_idx_header(tmp_path):
  arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  write_idx(tmp_path / "x-idx3-ubyte.gz", arr)
  with gzip.open(tmp_path / "x-idx3-ubyte.gz", "rb") as f:
    assert struct.unpack(">I", f.read(4))[0] == 2051
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "x-idx3-ubyte.gz")),
                                arr)


def test_corrupt_idx(tmp_path):
  make_idx_dir(tmp_path / "d")
  bad = tmp_path / "d" / "train-images-idx3-ubyte.gz"
  with gzip.open(bad, "wb") as f:  # Header says 12x28x28, data is short.
    f.write(struct.pack(">BBBB3I", 0, 0, 8, 3, 12, 28, 28) + b"\0" * 100)
  with pytest.raises(errors.UserError) as e:
    data.load_split("mnist", "train", str(tmp_path / "d"))
  assert str(bad) in str(e.value) and "train-images-idx3-ubyte" in str(e.value)
  bad.write_bytes(b"this is not gzip")
  with pytest.raises(errors.UserError, match="Corrupt IDX"):
    data.load_split("mnist", "train", str(tmp_path / "d"))
  with gzip.open(bad, "wb") as f:  # Bad magic.
    f.write(b"\x12\x34\x08\x03" + b"\0" * 20)
  with pytest.raises(errors.UserError, match="magic"):
    data.load_split("mnist", "train", str(tmp_path / "d"))


def test_idx_wrong_image_size(tmp_path):
  root = tmp_path / "d"
  root.mkdir()
  write_idx(root / "t10k-images-idx3-ubyte.gz", np.zeros((3, 8, 8)))
  write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros((3,)))
  with pytest.raises(errors.UserError, match="expects"):
    data.load_split("mnist", "test", str(root))
  with pytest.raises(errors.UserError, match="train-images-idx3-ubyte"):
    data.load_split("mnist", "train", str(root))


def test_idx_labels_out_of_range(tmp_path):
  root = tmp_path / "d"
  make_idx_dir(root)
  write_idx(root / "t10k-labels-idx1-ubyte.gz", np.full((5,), 12))
  with pytest.raises(errors.UserError, match=r"labels span \[12, 12\]"):
    data.load_split("mnist", "test", str(root))
