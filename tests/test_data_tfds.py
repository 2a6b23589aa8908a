"""Tests of fastdfkd_jax.data.tfds (no network: TFDS is made to fail)."""

import importlib
import importlib.abc
import sys

import pytest

from fastdfkd_jax import data, errors


def test_tfds_failure_is_user_error(monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def boom(*args, **kwargs):
    raise ConnectionError("no network")

  monkeypatch.setattr(tfds, "data_source", boom)
  monkeypatch.setattr(tfds, "load", boom)
  with pytest.raises(errors.UserError) as e:
    data.load_split("mnist", "train")
  msg = str(e.value)
  assert "--config.dataset.data_dir" in msg and "TensorFlow Datasets" in msg
  assert "train-images-idx3-ubyte" in msg
  assert "ConnectionError('no network')" in msg


class _Blocker(importlib.abc.MetaPathFinder):
  """Refuses (and records) every import of the given top-level packages."""

  def __init__(self, blocked):
    self.blocked, self.attempts = tuple(blocked), []

  def find_spec(self, name, path=None, target=None):
    del path, target
    if name.split(".")[0] in self.blocked:
      self.attempts.append(name)
      raise ImportError(f"{name} is blocked by the test")
    return None


def test_package_import_does_not_import_tfds():
  """Importing the package imports neither TensorFlow Datasets nor scikit-learn (both load
  on first use). In process: the package is imported afresh with both blocked and
  unloaded, then the process's modules are put back as they were."""
  blocked = ("tensorflow_datasets", "sklearn")
  saved = dict(sys.modules)
  for name in saved:
    if name.split(".")[0] in blocked + ("fastdfkd_jax",):
      del sys.modules[name]
  blocker = _Blocker(blocked)
  sys.meta_path.insert(0, blocker)
  try:
    for name in ("fastdfkd_jax.data", "fastdfkd_jax.distill", "fastdfkd_jax.teacher.train"):
      assert importlib.import_module(name) is not saved.get(name)   # a fresh import
    fresh = [name for name in sys.modules if name.split(".")[0] in blocked]
  finally:
    sys.meta_path.remove(blocker)
    for name in set(sys.modules) - set(saved):
      del sys.modules[name]
    sys.modules.update(saved)
  assert blocker.attempts == [] and fresh == []
  assert sys.modules["fastdfkd_jax.data"] is saved["fastdfkd_jax.data"]
