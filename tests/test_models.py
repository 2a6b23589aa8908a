"""Tests for the model zoo: parameter/BN counts (reference doc section 7),
forward shapes, sown BN statistics, registry and generator helpers.

Big models are only traced abstractly (jax.eval_shape); real forwards run only
on the small models at small sizes, each test's computation in one program compiled
unoptimised (op by op, or optimised, XLA:CPU spends seconds compiling them).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from flax import traverse_util

from fastdfkd_jax.models import get_model, list_models
from fastdfkd_jax.models import generator as generator_lib
from fastdfkd_jax.models.generator import Generator, reset_first_layer
from fastdfkd_jax.models.layers import BN_STATS, BatchNorm
from fastdfkd_jax.models.util import count_params, init_variables

from conftest import compile_unoptimized

KEY = jax.random.key(0)


def _run(fn, *args):
  """fn(*args) as one program, compiled unoptimised."""
  return compile_unoptimized(fn, *args)(*args)

# name -> (params with 10 classes, params with 100 classes, BN layers).
TABLE = {
    "resnet18": (11_173_962, 11_220_132, 20),
    "resnet34": (21_282_122, 21_328_292, 36),
    "wrn16_1": (175_066, 180_916, 13),
    "wrn16_2": (691_674, 703_284, 13),
    "wrn40_1": (563_930, 569_780, 37),
    "wrn40_2": (2_243_546, 2_255_156, 37),
    "resnet8": (78_042, 83_892, 9),
    "resnet20": (272_474, 278_324, 21),
    "resnet56": (855_770, 861_620, 57),
    "vgg8": (3_918_858, 3_965_028, 5),
    "vgg11": (9_231_114, 9_277_284, 8),
    "lenet5": (61_706, None, 0),
    "lenet5_half": (15_738, None, 0),
}
ALL_NAMES = set(TABLE) | {"resnet32", "generator"}


def _input_shape(name):
  return (32, 32, 1) if name.startswith("lenet") else (32, 32, 3)


def bn_layer_count(model, variables, input_shape):
  """Number of BN layers, counted as the entries sown into 'bn_stats'.

  Runs `model` abstractly (jax.eval_shape, no real compute) on a batch of 2 of
  shape (2,) + input_shape; train=False for classifiers, True for the generator.
  """
  gen = isinstance(model, Generator)
  mutable = [BN_STATS, "batch_stats"] if gen else [BN_STATS]
  x = jax.ShapeDtypeStruct((2,) + tuple(input_shape), jnp.float32)

  def run(v, x):
    return model.apply(v, x, train=gen, mutable=mutable)[1]

  aux = jax.eval_shape(run, variables, x)
  flat = traverse_util.flatten_dict(dict(aux.get(BN_STATS, {})))
  return sum(1 for path in flat if path[-2:] == ("input", "mean"))


@functools.lru_cache(maxsize=None)
def _abstract_init(model, shape):
  """The variables' shapes and dtypes (traced once per model and input shape: modules
  are hashable, and several tests read the same models)."""
  return jax.eval_shape(lambda k: init_variables(model, k, shape), KEY)


def _randn(seed, shape):
  """Standard-normal float32 input from numpy (no XLA RNG compile)."""
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _fast_init(model, shape, seed=0):
  """Concrete variables with `init_variables`' structure, filled by numpy.

  XLA:CPU compiles the threefry RNG of a real init slowly (seconds per model),
  so forward tests use this; `test_init_variables_real` covers the real init.
  Kernels He-normal (fan_in), BN scale/var 1, BN mean 0, biases N(0, 0.1).
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      value = rng.normal(0.0, std, leaf.shape)
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    elif name == "bias":
      value = rng.normal(0.0, 0.1, leaf.shape)
    else:
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, _abstract_init(model, shape))


@pytest.mark.parametrize("name", sorted(TABLE))
def test_param_and_bn_counts(name):
  p10, p100, n_bn = TABLE[name]
  shape = _input_shape(name)
  for classes, expected in ((10, p10), (100, p100)):
    if expected is None:
      continue
    model = get_model(name, classes)
    variables = _abstract_init(model, shape)
    assert count_params(variables["params"]) == expected, (name, classes)
    assert set(variables) == ({"params", "batch_stats"} if n_bn else
                              {"params"})
    if classes == 10:   # the classifier's width does not change the BN layers
      assert bn_layer_count(model, variables, shape) == n_bn
    # Params stay float32 regardless of the compute dtype.
    assert all(l.dtype == jnp.float32
               for l in jax.tree_util.tree_leaves(variables["params"]))


def test_resnet32_builds():
  model = get_model("resnet32", 10)
  variables = _abstract_init(model, (32, 32, 3))
  assert count_params(variables["params"]) > 0
  assert bn_layer_count(model, variables, (32, 32, 3)) == 33
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables,
                       jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert out.shape == (2, 10) and out.dtype == jnp.float32


def test_generator_counts():
  model = get_model("generator")
  variables = _abstract_init(model, (256,))
  assert count_params(variables["params"]) == 2_328_899
  assert set(variables["params"]) == {"l1", "bn0", "conv1", "bn1", "conv2",
                                      "bn2", "conv3"}
  assert bn_layer_count(model, variables, (256,)) == 3


def test_torch_layout_names():
  """Flax names that the PyTorch importer maps mechanically (section 7)."""
  p = _abstract_init(get_model("resnet8"), (32, 32, 3))["params"]
  assert set(p) == {"conv1", "bn1", "layer1_0", "layer2_0", "layer3_0", "fc"}
  assert set(p["layer1_0"]) == {"conv1", "bn1", "conv2", "bn2"}
  assert set(p["layer2_0"]) == {"conv1", "bn1", "conv2", "bn2",
                                "downsample_0", "downsample_1"}
  p = _abstract_init(get_model("resnet18"), (32, 32, 3))["params"]
  assert "linear" in p and set(p["layer2_0"]) >= {"shortcut_0", "shortcut_1"}
  p = _abstract_init(get_model("wrn16_1"), (32, 32, 3))["params"]
  assert set(p) == {"conv1", "block1_layer_0", "block1_layer_1",
                    "block2_layer_0", "block2_layer_1", "block3_layer_0",
                    "block3_layer_1", "bn1", "fc"}
  assert "convShortcut" not in p["block1_layer_0"]
  assert set(p["block2_layer_0"]) == {"bn1", "conv1", "bn2", "conv2",
                                      "convShortcut"}
  p = _abstract_init(get_model("vgg11"), (32, 32, 3))["params"]
  assert set(p) == {"block0_0", "block0_1", "block1_0", "block1_1",
                    "block2_0", "block2_1", "block2_3", "block2_4",
                    "block3_0", "block3_1", "block3_3", "block3_4",
                    "block4_0", "block4_1", "block4_3", "block4_4",
                    "classifier"}
  p = _abstract_init(get_model("lenet5"), (32, 32, 1))["params"]
  assert set(p) == {"conv1", "conv2", "fc1", "fc2", "fc3"}


@pytest.mark.parametrize("name", ["resnet8", "lenet5_half", "wrn16_1"])
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (8, 8, 1)])
def test_forward_small_models(name, shape):
  model = get_model(name, 10)
  if name.startswith("lenet") and shape[0] < 16:
    with pytest.raises(ValueError, match="16x16"):
      _abstract_init(model, shape)
    return
  variables = _fast_init(model, shape)
  x = _randn(1, (3,) + shape)
  has_bn = "batch_stats" in variables

  def forward(v, x):
    logits = model.apply(v, x, train=False)
    train = model.apply(v, x, train=True, mutable=["batch_stats"]) if has_bn else None
    return logits, train

  logits, train = _run(forward, variables, x)
  chex.assert_shape(logits, (3, 10))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)
  if has_bn:
    train_logits, upd = train
    chex.assert_shape(train_logits, (3, 10))
    chex.assert_tree_all_finite(train_logits)
    chex.assert_trees_all_equal_structs(upd["batch_stats"],
                                        variables["batch_stats"])
    # Train mode normalises with the batch's statistics, not the running ones.
    assert not np.allclose(train_logits, logits)


def test_init_variables_real():
  """A real (jitted) init: structure, float32 params, PyTorch-like init."""
  model = get_model("resnet8", 10)
  # The session's tiny_nets init (same model, key and shape: a compiled program reused).
  variables = init_variables(model, jax.random.key(1), (8, 8, 1))
  assert set(variables) == {"params", "batch_stats"}
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(variables))
  chex.assert_trees_all_equal_shapes(variables, _abstract_init(model, (8, 8, 1)))
  p = variables["params"]
  np.testing.assert_array_equal(p["bn1"]["scale"], 1.0)
  np.testing.assert_array_equal(p["bn1"]["bias"], 0.0)
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"], 1.0)
  # Kaiming normal, fan_out: std sqrt(2 / (3 * 3 * 32)) for layer2_0/conv2.
  k = np.asarray(p["layer2_0"]["conv2"]["kernel"])
  assert abs(k.std() / np.sqrt(2.0 / (9 * 32)) - 1.0) < 0.1


def test_bfloat16_compute_float32_logits():
  model = get_model("resnet8", 10, dtype=jnp.bfloat16)
  variables = _fast_init(model, (8, 8, 1))
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(variables))
  logits = _run(lambda v, x: model.apply(v, x, train=False), variables,
                jnp.ones((2, 8, 8, 1)))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)


def _np_moments(x):
  x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  return x.mean(0), x.var(0)  # biased variance


def test_bn_stats_tiny_module_match_numpy():
  class Tiny(nn.Module):

    @nn.compact
    def __call__(self, x, train: bool = False):
      x = nn.Dense(5, name="dense")(x)
      return BatchNorm(use_running_average=not train, name="bn")(x)

  model = Tiny()
  x = _randn(2, (4, 3, 3, 2)) * 3.0 + 1.0

  def init_and_stats(key, x):
    variables = model.init(key, x)
    return variables, model.apply(variables, x, mutable=[BN_STATS])[1]

  variables, aux = _run(init_and_stats, KEY, x)
  stats = aux[BN_STATS]["bn"]["input"]
  w, b = variables["params"]["dense"]["kernel"], variables["params"]["dense"]["bias"]
  bn_in = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(b)
  mean, var = _np_moments(bn_in)
  np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats["var"], var, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats["running_mean"], 0.0)
  np.testing.assert_allclose(stats["running_var"], 1.0)


def test_bn_stats_resnet8_match_captured_input():
  """bn1's sown stats equal numpy moments of conv1's output (its input)."""
  model = get_model("resnet8", 10)
  variables = _fast_init(model, (8, 8, 3))
  x = _randn(3, (4, 8, 8, 3))
  _, aux = _run(lambda v, x: model.apply(
      v, x, train=False, mutable=[BN_STATS, "intermediates"],
      capture_intermediates=lambda m, _: m.name == "conv1"), variables, x)
  conv1_out = aux["intermediates"]["conv1"]["__call__"][0]
  mean, var = _np_moments(conv1_out)
  stats = aux[BN_STATS]["bn1"]["input"]
  np.testing.assert_allclose(stats["mean"], mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["var"], var, rtol=1e-4, atol=1e-5)
  block_stats = aux[BN_STATS]["layer2_0"]["downsample_1"]["input"]
  chex.assert_shape(block_stats["mean"], (32,))


def test_wide_block_shortcut_uses_activated_input():
  """wrn16_1 block2_layer_0 == a hand-written pre-activation block (train BN)."""
  model = get_model("wrn16_1", 10)
  variables = _fast_init(model, (8, 8, 3))
  p = variables["params"]["block2_layer_0"]
  x = _randn(4, (2, 8, 8, 16))
  from fastdfkd_jax.models.wrn import WideBlock
  got, _ = _run(lambda v, x: WideBlock(32, 2).apply(v, x, train=True, mutable=["batch_stats"]),
                {"params": p, "batch_stats": variables["batch_stats"]["block2_layer_0"]}, x)

  def bn(h, q):
    m, v = h.mean((0, 1, 2)), h.var((0, 1, 2))
    return (h - m) / jnp.sqrt(v + 1e-5) * q["scale"] + q["bias"]

  def conv(h, k, s, pad):
    return jax.lax.conv_general_dilated(h, k, (s, s), [(pad, pad)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  o = jax.nn.relu(bn(x, p["bn1"]))
  y = conv(jax.nn.relu(bn(conv(o, p["conv1"]["kernel"], 2, 1), p["bn2"])),
           p["conv2"]["kernel"], 1, 1)
  want = y + conv(o, p["convShortcut"]["kernel"], 2, 0)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_get_model_unknown_name():
  with pytest.raises(ValueError, match="valid names") as e:
    get_model("nope")
  for name in ("resnet8", "wrn40_2", "generator"):
    assert name in str(e.value)


def test_list_models_has_all():
  assert ALL_NAMES <= set(list_models())


@pytest.mark.parametrize("img_size,channels", [(32, 3), (8, 1)])
def test_generator_output(img_size, channels):
  model = get_model("generator", nz=16, ngf=8, img_size=img_size,
                    channels=channels)
  variables = _fast_init(model, (16,))
  assert set(variables) == {"params", "batch_stats"}
  z = _randn(5, (4, 16))
  imgs, upd = _run(lambda v, z: model.apply(v, z, train=True, mutable=["batch_stats"]),
                   variables, z)
  chex.assert_shape(imgs, (4, img_size, img_size, channels))
  chex.assert_type(imgs, jnp.float32)
  assert float(imgs.min()) >= 0.0 and float(imgs.max()) <= 1.0
  assert "bn0" in upd["batch_stats"]


def test_generator_default_shape():
  model = Generator()
  out = jax.eval_shape(
      lambda k, z: model.apply(init_variables(model, k, (256,)), z,
                               mutable=["batch_stats"])[0],
      KEY, jax.ShapeDtypeStruct((2, 256), jnp.float32))
  assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32


def test_reinitialize_is_the_release_reset_model():
  model = get_model("generator", nz=16, ngf=8, img_size=8, channels=3)
  params = _fast_init(model, (16,))["params"]
  new = _run(lambda p, k: generator_lib.reinitialize(p, k, 0.02), params, jax.random.key(3))
  chex.assert_trees_all_equal_shapes(new, params)
  for name, layer in new.items():
    weight = np.asarray(layer["scale" if name.startswith("bn") else "kernel"])
    centre = 1.0 if name.startswith("bn") else 0.0
    assert abs(weight.mean() - centre) < 0.03 and weight.std() < 0.04, name
    if "bias" in layer:
      np.testing.assert_array_equal(layer["bias"], 0.0)


def test_reset_first_layer():
  model = get_model("generator", nz=16, ngf=8, img_size=8, channels=3)
  variables = _fast_init(model, (16,))
  params = variables["params"]
  new = _run(reset_first_layer, params, jax.random.key(7))
  assert set(new) == set(params)
  for name in params:
    if name not in ("l1", "bn0"):
      chex.assert_trees_all_equal(new[name], params[name])
  np.testing.assert_array_equal(new["l1"]["bias"], 0.0)
  k = np.asarray(new["l1"]["kernel"])
  assert k.shape == params["l1"]["kernel"].shape
  assert not np.allclose(k, params["l1"]["kernel"])
  assert abs(k.std() - 0.02) < 0.004 and abs(k.mean()) < 0.004
  # Pure: the input is untouched.
  assert np.any(np.asarray(params["l1"]["bias"]) != 0.0)
  # The release's reset_l0 also resets the first BN (scale ~ N(0, 0.02), bias 0).
  np.testing.assert_array_equal(new["bn0"]["bias"], 0.0)
  assert float(jnp.abs(new["bn0"]["scale"]).max()) < 0.2
  # Full variables dicts work too.
  new_vars = _run(reset_first_layer, variables, jax.random.key(7))
  chex.assert_trees_all_equal(new_vars["params"], new)
  chex.assert_trees_all_equal(new_vars["batch_stats"], variables["batch_stats"])
