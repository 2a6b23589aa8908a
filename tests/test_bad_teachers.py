"""Bad teachers are refused with the reason before any training starts.

A release `.pth` whose input channels, class count or architecture do not fit the config, or
whose weights hold NaN/Inf. The state_dicts are built with numpy in the release layout
(`torch_import.torch_layout`) and written as real `.pth` files with `teacher.pth.write`.
"""

import jax
import numpy as np
import pytest

from fastdfkd_jax import errors
from fastdfkd_jax.run import checkpoint
from fastdfkd_jax.teacher import loader, pth, torch_import

DIGITS = (8, 8, 1)


def _state_dict(arch="resnet8", num_classes=10, input_shape=DIGITS, seed=0):
  rng = np.random.default_rng(seed)
  return {key: rng.uniform(0.5, 1.5, shape).astype(np.float32)
          for key, shape in torch_import.torch_layout(arch, num_classes, input_shape).items()}


def test_a_fitting_state_dict_converts():
  """Each value lands where the Flax resnet8 reads it: conv OIHW -> HWIO, Linear (out, in) ->
  Dense (in, out), BN affine in params, running statistics in batch_stats."""
  sd = _state_dict()
  variables = torch_import.convert_state_dict(sd, "resnet8", 10, DIGITS)
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["conv1"]["kernel"],
                                sd["conv1.weight"].transpose(2, 3, 1, 0))
  assert params["conv1"]["kernel"].shape == (3, 3, 1, 16)
  np.testing.assert_array_equal(params["layer2_0"]["downsample_0"]["kernel"],
                                sd["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight"].T)
  np.testing.assert_array_equal(params["fc"]["bias"], sd["fc.bias"])
  for flax, torch in (("scale", "weight"), ("bias", "bias")):
    np.testing.assert_array_equal(params["layer1_0"]["bn2"][flax], sd[f"layer1.0.bn2.{torch}"])
  for flax, torch in (("mean", "running_mean"), ("var", "running_var")):
    np.testing.assert_array_equal(stats["bn1"][flax], sd[f"bn1.{torch}"])
    np.testing.assert_array_equal(stats["layer3_0"]["downsample_1"][flax],
                                  sd[f"layer3.0.downsample.1.{torch}"])
  # Every value is used once: as many numbers in as out, and the fitting weights are finite.
  assert (sum(x.size for x in jax.tree_util.tree_leaves(variables))
          == sum(v.size for v in sd.values()))
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
def test_a_pth_with_non_finite_weights_is_refused_by_the_loader(tmp_path, bad):
  sd = _state_dict()
  sd["layer1.0.conv2.weight"][0, 0, 0, 0] = bad
  path = str(tmp_path / "teacher.pth")
  pth.write(path, sd)
  with pytest.raises(checkpoint.CheckpointError, match="NaN or Inf") as info:
    loader.load(path, arch="resnet8", num_classes=10, input_shape=DIGITS)
  assert "layer1_0" in str(info.value) and path in str(info.value)


def test_a_pth_that_does_not_fit_the_config_is_refused_by_the_loader(tmp_path):
  path = str(tmp_path / "teacher.pth")
  pth.write(path, _state_dict())
  variables, meta = loader.load(path, arch="resnet8", num_classes=10, input_shape=DIGITS)
  assert meta == dict(arch="resnet8", num_classes=10, input_shape=list(DIGITS), source=path)
  assert set(variables) == {"params", "batch_stats"}
  with pytest.raises(errors.UserError, match="does not fit resnet8"):
    loader.load(path, arch="resnet8", num_classes=10, input_shape=(8, 8, 3))
  with pytest.raises(checkpoint.CheckpointError, match="carries no meta"):
    loader.load(path, arch="resnet8")
