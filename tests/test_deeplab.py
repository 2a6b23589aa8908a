"""Tests for the DeepLabV3 zoo models (fastdfkd_jax/models/deeplab*.py).

Parameter counts are those of the release's builders (`deeplabv3_resnet50`,
`deeplabv3_mobilenet`, output_stride 8, no auxiliary head): they are checked
against the release's module structure rebuilt in PyTorch in
test_import_torch_deeplab.py (Python 3.11 venv with torch). ResNet-50 is only
traced abstractly here; a real forward runs on MobileNetV2 at 64x64, batch 1 (eval and
train mode in one program, compiled unoptimised).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from fastdfkd_jax.models import get_model, list_models
from fastdfkd_jax.models.deeplab_backbones import mobilenet_blocks
from fastdfkd_jax.models.layers import BN_STATS
from fastdfkd_jax.models.util import count_params, init_variables

from conftest import compile_unoptimized

# arch -> {num_classes: parameters}; each class adds 257 (a 256-d 1x1 conv + bias).
PARAMS = {
    "deeplabv3_resnet50": {13: 39_636_813, 21: 39_638_869},
    "deeplabv3_mobilenet": {13: 5_111_821, 21: 5_113_877},
}
# arch -> BN layers (ResNet-50: 53; MobileNetV2 features 0-17: 1 + 16 * 3 + 2; head: 7).
BN_LAYERS = {"deeplabv3_resnet50": 53 + 7, "deeplabv3_mobilenet": 51 + 7}


@functools.lru_cache(maxsize=None)
def _abstract(model, shape=(64, 64, 3)):
  """The variables' shapes and dtypes, traced once per (hashable) module and shape."""
  return jax.eval_shape(lambda k: init_variables(model, k, shape), jax.random.key(0))


def _fill(abstract, seed=0):
  """Concrete variables: He-normal kernels, BN scale/var 1, biases N(0, 0.1), means 0."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      value = rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    elif name == "bias":
      value = rng.normal(0.0, 0.1, leaf.shape)
    else:
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def test_registered():
  assert {"deeplabv3_resnet50", "deeplabv3_mobilenet"} <= set(list_models())


@pytest.mark.parametrize("arch", sorted(PARAMS))
def test_param_and_bn_counts(arch):
  for classes, expected in PARAMS[arch].items():
    model = get_model(arch, classes)
    variables = _abstract(model)
    assert count_params(variables["params"]) == expected
    if classes != 13:   # the head's width changes no BN layer and no output but its own
      continue
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    logits, aux = jax.eval_shape(
        lambda v, x, m=model: m.apply(v, x, train=False, mutable=[BN_STATS]), variables, x)
    assert logits.shape == (1, 64, 64, classes) and logits.dtype == jnp.float32
    flat = traverse_util.flatten_dict(dict(aux[BN_STATS]))
    assert sum(1 for p in flat if p[-2:] == ("input", "mean")) == BN_LAYERS[arch]


@pytest.mark.parametrize("arch,output_stride,size,feature", [
    ("deeplabv3_resnet50", 8, 64, 8), ("deeplabv3_resnet50", 16, 64, 4),
    ("deeplabv3_mobilenet", 8, 64, 8), ("deeplabv3_mobilenet", 16, 64, 4)])
def test_output_stride(arch, output_stride, size, feature):
  """The backbone's feature map is input / output_stride; logits at the input size."""
  model = get_model(arch, 13, output_stride=output_stride)
  # The output stride sets strides and dilations, no parameter: the default model's
  # variables (also those the counts test traced) apply to both.
  variables = _abstract(get_model(arch, 13), (size, size, 3))
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)

  def backbone(v, x):
    return model.apply(v, x, method=lambda m, x: m(x), capture_intermediates=lambda m, _: (
        m.name == "backbone"), mutable=["intermediates"])[1]

  inter = jax.eval_shape(backbone, variables, x)["intermediates"]
  assert inter["backbone"]["__call__"][0].shape[1:3] == (feature, feature)
  assert variables["params"]["classifier"]["classifier_0"]["convs_1_0"]["kernel"].shape == (
      3, 3, 2048 if arch.endswith("resnet50") else 320, 256)


def test_mobilenet_dilations_follow_release():
  """Stride turns into dilation once the stride reaches the output stride."""
  assert [b[1:3] for b in mobilenet_blocks(8)] == (
      [(1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1)] + [(1, 1)] + [(1, 2)] * 3
      + [(1, 2)] * 3 + [(1, 2)] + [(1, 4)] * 2 + [(1, 4)])
  assert [b[1:3] for b in mobilenet_blocks(16)][-7:] == (
      [(1, 1)] * 3 + [(1, 1)] + [(1, 2)] * 2 + [(1, 2)])


def test_mobilenet_forward_and_train_mode():
  model = get_model("deeplabv3_mobilenet", 13)
  variables = _fill(_abstract(model))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 64, 64, 3)), jnp.float32)

  def forward(variables, x, key):
    logits = model.apply(variables, x, train=False)
    # Train mode without a dropout rng (as the generic steps call it) runs; with one it drops.
    xx = jnp.concatenate([x, -x])
    y1, upd = model.apply(variables, xx, train=True, mutable=["batch_stats"])
    y2, _ = model.apply(variables, xx, train=True, mutable=["batch_stats"],
                        rngs={"dropout": key})
    return logits, y1, upd, y2

  key = jax.random.key(0)
  logits, y1, upd, y2 = compile_unoptimized(forward, variables, x, key)(variables, x, key)
  assert logits.shape == (1, 64, 64, 13) and bool(jnp.isfinite(logits).all())
  assert float(logits.std()) > 1e-3
  assert set(upd) == {"batch_stats"} and not np.allclose(y1, y2)
  assert y1.shape == (2, 64, 64, 13) and np.isfinite(np.asarray(y1)).all()


def test_bad_output_stride_and_backbone():
  model = get_model("deeplabv3_mobilenet", 13, output_stride=32)
  with pytest.raises(ValueError, match="output_stride must be one of"):
    _abstract(model)
  with pytest.raises(ValueError, match="backbone must be"):
    _abstract(get_model("deeplabv3_mobilenet", 13).clone(backbone="vgg"))
