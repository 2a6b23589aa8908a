"""Tests for fastdfkd_jax/data/segmentation.py and shapes_seg.py (NumPy golden values)."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fastdfkd_jax import errors
from fastdfkd_jax.data import segmentation as seg
from fastdfkd_jax.data import shapes_seg
from fastdfkd_jax.run import parallel

from conftest import REPO, compile_unoptimized


def _write(root, split, name, image, label, num_classes=13):
  for sub, arr, mode in (("image", image, "RGB"), (f"seg{num_classes}", label, "L")):
    os.makedirs(os.path.join(root, sub, split), exist_ok=True)
    Image.fromarray(arr, mode).save(os.path.join(root, sub, split, name))


def _pair(seed, h=6, w=8):
  rng = np.random.default_rng(seed)
  label = rng.integers(0, seg.NYUV2_NUM_CLASSES, (h, w)).astype(np.uint8)
  label[0, 0] = seg.IGNORE_INDEX
  return rng.integers(0, 256, (h, w, 3)).astype(np.uint8), label


def test_load_split_reads_pairs_sorted(tmp_path):
  pairs = {n: _pair(i) for i, n in enumerate(["b.png", "a.png"])}
  for n, (im, lb) in pairs.items():
    _write(tmp_path, "train", n, im, lb)
  split = seg.load_split(str(tmp_path), "train", 13)
  assert split.names == ("a.png", "b.png")
  assert split.images.shape == (2, 6, 8, 3) and split.labels.shape == (2, 6, 8)
  np.testing.assert_array_equal(split.images[0], pairs["a.png"][0])
  np.testing.assert_array_equal(split.labels[1], pairs["b.png"][1])


def test_load_split_resize_shorter_side(tmp_path):
  im, lb = _pair(0, 6, 8)
  _write(tmp_path, "test", "x.png", im, lb)
  split = seg.load_split(str(tmp_path), "test", 13, resize=3)
  assert split.images.shape == (1, 3, 4, 3)
  # Nearest keeps label values (no blends of class indices).
  assert set(np.unique(split.labels)) <= set(np.unique(lb))
  assert seg.resized_size(480, 640, 256) == (256, 341)


@pytest.mark.parametrize("problem,match", [
    ("missing_label", "1 images without a label"),
    ("orphan_label", "1 labels without an image"),
    ("size", "is 8x6 but its image"),
    ("value", r"holds values \[13\] outside 0..12"),
    ("rgb_label", "has mode RGB"),
    ("no_dir", "no folder"),
])
def test_load_split_errors(tmp_path, problem, match):
  im, lb = _pair(0)
  if problem != "no_dir":
    _write(tmp_path, "train", "a.png", im, lb)
  if problem == "missing_label":
    os.remove(tmp_path / "seg13" / "train" / "a.png")
  elif problem == "orphan_label":
    Image.fromarray(lb, "L").save(tmp_path / "seg13" / "train" / "zz.png")
  elif problem == "size":
    Image.fromarray(im[:5]).save(tmp_path / "image" / "train" / "a.png")
  elif problem == "value":
    lb2 = lb.copy()
    lb2[1, 1] = 13
    Image.fromarray(lb2, "L").save(tmp_path / "seg13" / "train" / "a.png")
  elif problem == "rgb_label":
    Image.fromarray(im, "RGB").save(tmp_path / "seg13" / "train" / "a.png")
  with pytest.raises(errors.UserError, match=match):
    seg.load_split(str(tmp_path), "train", 13)


def test_augment_crops_and_flips_image_and_label_together():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 13, (4, 10, 12)).astype(np.int32)
  # Each image channel encodes its label, so image and label must stay aligned.
  images = np.repeat(labels[..., None], 3, -1).astype(np.float32) / 20.0
  key = jax.random.key(3)

  def augment_and_params(k, x, y):
    return (seg.augment_stripe(k, x, y, (6, 7), seg.NYUV2_MEAN, seg.NYUV2_STD),
            seg.crop_flip_params(k, 4, (10, 12), (6, 7)))

  (x, y), (offsets, flips) = compile_unoptimized(augment_and_params, key, images, labels)(
      key, images, labels)
  assert x.shape == (4, 6, 7, 3) and y.shape == (4, 6, 7)
  np.testing.assert_allclose(np.asarray(x[..., 0]) * 0.5 + 0.5, np.asarray(y) / 20.0,
                             atol=1e-6)
  for i in range(4):  # NumPy golden crop + flip
    dy, dx = np.asarray(offsets[i])
    want = labels[i, dy:dy + 6, dx:dx + 7]
    want = want[:, ::-1] if bool(flips[i]) else want
    np.testing.assert_array_equal(np.asarray(y[i]), want)


def _stripe_result(mesh):
  """augment_stripe of a fixed batch of 8 under shard_map over the mesh's devices."""
  rng = np.random.default_rng(1)
  labels = jnp.asarray(rng.integers(0, 13, (8, 8, 8)), jnp.int32)
  images = jnp.asarray(rng.uniform(size=(8, 8, 8, 3)), jnp.float32)
  spec = parallel.P(parallel.AXIS)
  fn = parallel.shard(
      lambda k, x, y: seg.augment_stripe(k, x, y, (5, 5), (0.5,) * 3, (0.5,) * 3,
                                         parallel.AXIS),
      mesh, (parallel.P(), spec, spec), (spec, spec))
  key = jax.random.key(0)
  x, y = compile_unoptimized(fn, key, images, labels)(key, images, labels)
  return np.asarray(x), np.asarray(y), images, labels


def test_augment_device_count_invariant(mesh1, mesh8):
  """1 device equals no shard_map; 8 devices (in process) draw the same crops and flips.
  Labels are compared exactly; images to 1e-6 (a few ulp: each device count is its own
  compiled program, and XLA may round the normalisation differently; a wrong crop or
  flip moves in another pixel, a difference of order 0.1 or more)."""
  x1, y1, images, labels = _stripe_result(mesh1)
  key = jax.random.key(0)
  want = compile_unoptimized(
      lambda k, x, y: seg.augment_stripe(k, x, y, (5, 5), (0.5,) * 3, (0.5,) * 3),
      key, images, labels)(key, images, labels)
  np.testing.assert_allclose(x1, np.asarray(want[0]), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(y1, np.asarray(want[1]))
  x8, y8, _, _ = _stripe_result(mesh8)
  np.testing.assert_allclose(x8, x1, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(y8, y1)


def _numpy_cm(labels, preds, k):
  cm = np.zeros((k, k), np.int64)
  for t, p in zip(labels.ravel(), preds.ravel()):
    if t != 255 and t < k:
      cm[t, p] += 1
  return cm


def test_confusion_matrix_and_scores_golden():
  labels = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
  preds = np.array([[0, 1, 1, 1], [2, 0, 2, 2]])
  confusion = jax.jit(seg.confusion_matrix, static_argnums=2)
  cm = np.asarray(confusion(labels, preds, 4))
  want = np.array([[1, 1, 0, 0], [0, 2, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(cm, want)
  s = seg.scores(cm)
  assert s["pixel_acc"] == pytest.approx(4 / 7)
  # IoU = tp / (row + col - tp): class 0: 1/(2+2-1), class 1: 2/(3+3-2), class 2: 1/(2+2-1).
  np.testing.assert_allclose(s["iou"][:3], [1 / 3, 1 / 2, 1 / 3])
  assert np.isnan(s["iou"][3])  # absent class: left out of the mean
  assert s["miou"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 6, (3, 9, 9))
  labels[labels == 5] = 255
  preds = rng.integers(0, 5, (3, 9, 9))
  np.testing.assert_array_equal(np.asarray(confusion(labels, preds, 5)),
                                _numpy_cm(labels, preds, 5))
  perfect = seg.scores(np.diag([3, 0, 5]))
  assert perfect["miou"] == 1.0 and perfect["pixel_acc"] == 1.0


def test_colorize_matches_release_palette():
  cmap = seg.colormap()
  assert cmap[1].tolist() == [128, 0, 0] and cmap[2].tolist() == [0, 128, 0]
  out = seg.colorize(np.array([[0, 255]]))
  assert out.tolist() == [[[128, 0, 0], [0, 0, 0]]]


def test_shapes_set_deterministic_and_loadable(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  shapes_seg.write_shapes(str(a), 7, 6, 3, 32, 3)
  shapes_seg.write_shapes(str(b), 7, 6, 3, 32, 3)
  k = len(shapes_seg.SHAPE_CLASSES)
  train = seg.load_split(str(a), "train", k)
  test = seg.load_split(str(a), "test", k)
  assert train.images.shape == (6, 32, 32, 3) and test.labels.shape == (3, 32, 32)
  again = seg.load_split(str(b), "train", k)
  np.testing.assert_array_equal(train.images, again.images)
  np.testing.assert_array_equal(train.labels, again.labels)
  values = set(np.unique(train.labels).tolist())
  assert 0 in values and 255 in values and len(values - {0, 255}) >= 2
  assert not np.array_equal(train.images[0], test.images[0])
  other = shapes_seg.make_example(8, "train", 0, 32, 3)
  assert not np.array_equal(other[0], train.images[0])


def _make_shapes_tool():
  """experiments/make_shapes_seg.py as a module (a script, not part of the package)."""
  path = os.path.join(REPO, "experiments", "make_shapes_seg.py")
  spec = importlib.util.spec_from_file_location("make_shapes_seg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_make_shapes_tool(tmp_path, capsys):
  tool = _make_shapes_tool()
  assert tool.main([str(tmp_path), "--train", "2", "--test", "1", "--size", "16"]) == 0
  assert "wrote 2 train and 1 test images of 16x16" in capsys.readouterr().out
  assert len(seg.load_split(str(tmp_path), "test", 5).names) == 1
  with pytest.raises(SystemExit) as e:
    tool.main([str(tmp_path / "x"), "--size", "4"])
  assert e.value.code == 2
  assert capsys.readouterr().err.startswith("error: need size >= 8")
