"""Streamed splits (fastdfkd_jax.data.streaming): the same pixels as the in-memory
decode, in-order read-ahead, and resident memory bounded while iterating a folder
much larger than the bound; the imagenet data set streams (folder and TFDS)."""

import dataclasses
import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from fastdfkd_jax import data, errors
from fastdfkd_jax.data import image_folder, procedural_folder, streaming, tfds


def _info(size, classes=3):
  return dataclasses.replace(data.get_info("imagenet_mini"), name="imagenet_test",
                             num_classes=classes, image_shape=(size, size, 3),
                             streaming=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("stream")
  procedural_folder.write(str(root), 3, 40, 4, size=48)
  return str(root)


def test_same_pixels_as_the_in_memory_decode(folder):
  info = _info(32)
  images, labels = streaming.from_tree(info, "train", folder, workers=2, prefetch=2)
  whole, whole_labels = image_folder.load_image_tree(info, "train", folder)
  assert len(images) == len(whole) == 120 and images.shape == whole.shape
  np.testing.assert_array_equal(labels, whole_labels)
  for start in range(0, 120, 25):                                  # in order, read ahead
    np.testing.assert_array_equal(images[start:start + 25], whole[start:start + 25])
  idx = np.array([[5, 99], [0, 119]])                              # random access, 2-D
  np.testing.assert_array_equal(images[idx], whole[idx])
  got = np.concatenate(list(images.batches(16, order=np.arange(119, -1, -1))))
  np.testing.assert_array_equal(got, whole[::-1])
  val, val_labels = streaming.from_tree(info, "test", folder)      # test = val/
  assert len(val) == 12 and list(np.bincount(val_labels)) == [4, 4, 4]


def test_resident_memory_is_bounded_while_iterating(tmp_path):
  """Iterating a streamed split holds a few batches, not the split: the traced peak
  (numpy's buffers are traced) stays below 8 batches, a 10th of the decoded split."""
  procedural_folder.write(str(tmp_path), 3, 250, 1, size=48)
  info = _info(96)
  images, _ = streaming.from_tree(info, "train", str(tmp_path), workers=2, prefetch=2)
  whole_bytes = int(np.prod(images.shape))                         # 750 x 96 x 96 x 3
  batch = 8
  tracemalloc.start()
  try:
    seen = 0
    for start in range(0, len(images), batch):                     # evaluate's pattern
      seen += len(images[start:start + batch])
    for x in images.batches(batch):
      seen += len(x)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert seen == 2 * len(images)
  per_batch = batch * 96 * 96 * 3
  assert peak < 8 * per_batch < whole_bytes / 10, (peak, per_batch, whole_bytes)


def test_imagenet_streams_from_a_folder_and_refuses_archives(folder, tmp_path,
                                                             monkeypatch):
  info = _info(32)
  monkeypatch.setitem(data.DATASETS, "imagenet_test", info)
  images, labels = data.load_split("imagenet_test", "test", folder)
  assert isinstance(images, streaming.StreamingSplit) and len(labels) == 12
  archive = tmp_path / "set.tar.gz"
  archive.write_bytes(b"")
  with pytest.raises(errors.UserError, match="extract it"):
    data.load_split("imagenet_test", "train", str(archive))


def test_tfds_stream_decodes_record_by_record(monkeypatch):
  """TFDS `data_source` records (encoded images, SkipDecoding) -> the same transform."""
  import tensorflow_datasets as tfds_module
  rng = np.random.default_rng(0)
  pictures = [rng.integers(0, 256, (40 + i, 50, 3), np.uint8) for i in range(5)]

  def encoded(x):
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="PNG")
    return buf.getvalue()

  records = [dict(image=encoded(x), label=i % 3) for i, x in enumerate(pictures)]
  asked = {}

  def data_source(name, split, download, decoders):
    asked.update(name=name, split=split, download=download)
    return records

  monkeypatch.setattr(tfds_module, "data_source", data_source)
  info = dataclasses.replace(_info(32), tfds_name="imagenet2012")
  images, labels = tfds.stream(info, "test", workers=1)
  assert asked == dict(name="imagenet2012", split="validation", download=False)
  assert list(labels) == [0, 1, 2, 0, 1]
  expected = np.asarray(image_folder.resize_center_crop(Image.fromarray(pictures[3]),
                                                         (32, 32)))
  np.testing.assert_array_equal(images[3:4][0], expected)
