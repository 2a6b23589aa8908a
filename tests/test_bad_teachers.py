"""Bad teachers are refused with the reason before any training starts.

A release `.pth` whose input channels, class count or architecture do not fit
the config, or whose weights hold NaN/Inf. The state_dicts are built with numpy
in the release layout (`torch_import.torch_layout`), so these run without
PyTorch; the real `.pth` file route runs where PyTorch is installed.
"""

import numpy as np
import pytest

from fastdfkd_jax.run import checkpoint
from fastdfkd_jax import errors
from fastdfkd_jax.teacher import torch_import
from fastdfkd_jax.teacher import loader

DIGITS = (8, 8, 1)


def _state_dict(arch="resnet8", num_classes=10, input_shape=DIGITS, seed=0):
  rng = np.random.default_rng(seed)
  return {key: rng.uniform(0.5, 1.5, shape).astype(np.float32)
          for key, shape in torch_import.torch_layout(arch, num_classes, input_shape).items()}


def test_a_fitting_state_dict_converts():
  variables = torch_import.convert_state_dict(_state_dict(), "resnet8", 10, DIGITS)
  loader.check_finite(variables, "x.pth")


@pytest.mark.parametrize("made_for, reason", [
    (dict(input_shape=(8, 8, 3)), "conv1.weight: expected (16, 1, 3, 3), got (16, 3, 3, 3)"),
    (dict(num_classes=100), "expected (10, 64), got (100, 64)"),
    (dict(arch="resnet20"), "unexpected keys"),
])
def test_a_mismatched_state_dict_is_refused_with_the_reason(made_for, reason):
  with pytest.raises(errors.UserError, match="does not fit resnet8") as info:
    torch_import.convert_state_dict(_state_dict(**made_for), "resnet8", 10, DIGITS)
  assert reason in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_pth_with_non_finite_weights_is_refused_by_the_loader(monkeypatch, bad):
  sd = _state_dict()
  sd["layer1.0.conv2.weight"][0, 0, 0, 0] = bad
  monkeypatch.setattr(import_torch, "load_pth",
                      lambda path, *args: torch_import.convert_state_dict(sd, *args))
  with pytest.raises(checkpoint.CheckpointError, match="NaN or Inf") as info:
    loader.load("teacher.pth", arch="resnet8", num_classes=10, input_shape=DIGITS)
  assert "layer1_0" in str(info.value) and "teacher.pth" in str(info.value)


def test_a_real_pth_file_with_nan_weights_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  sd = {k: torch.from_numpy(v) for k, v in _state_dict().items()}
  sd["fc.bias"][3] = float("nan")
  path = str(tmp_path / "teacher.pth")
  torch.save(sd, path)
  with pytest.raises(checkpoint.CheckpointError, match="NaN or Inf"):
    loader.load(path, arch="resnet8", num_classes=10, input_shape=DIGITS)
  sd["fc.bias"][3] = 0.0
  torch.save(sd, path)
  with pytest.raises(errors.UserError, match="does not fit resnet8"):
    loader.load(path, arch="resnet8", num_classes=10, input_shape=(8, 8, 3))
