"""Tests of fastdfkd_jax.data.tfds (no network: TFDS is made to fail)."""

import os
import subprocess
import sys

import pytest

from fastdfkd_jax import data, errors

from conftest import REPO


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


def test_package_import_does_not_import_tfds():
  code = ("import sys; import fastdfkd_jax.data, fastdfkd_jax.distill, fastdfkd_jax.teacher.train; "
          "assert 'tensorflow_datasets' not in sys.modules; "
          "assert 'sklearn' not in sys.modules")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"),
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
