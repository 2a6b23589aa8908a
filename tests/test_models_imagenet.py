"""Tests for the ImageNet zoo: torchvision's resnet18/resnet50/mobilenet_v2 and the
release's DeepGenerator.

Parameter counts are checked at 224 px abstractly (jax.eval_shape, no init runs);
real forwards run at 32x32, batch 2, each test's in one program compiled unoptimised.
Logits against PyTorch: test_import_torch_imagenet.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from fastdfkd_jax.models import get_model, list_models
from fastdfkd_jax.models.layers import BN_STATS, FEATURES, penultimate
from fastdfkd_jax.models.util import count_params, init_variables

from conftest import compile_unoptimized

KEY = jax.random.key(0)

# name -> (params at 1000 classes (torchvision's), BN layers, penultimate width).
TABLE = {
    "resnet18_imagenet": (11_689_512, 20, 512),
    "resnet50_imagenet": (25_557_032, 53, 2048),
    "mobilenetv2_imagenet": (3_504_872, 52, 1280),
}


def _abstract_init(model, shape):
  return jax.eval_shape(lambda k: init_variables(model, k, shape), KEY)


def _bn_layers(model, variables, x_shape, train):
  mutable = [BN_STATS, "batch_stats"] if train else [BN_STATS]
  aux = jax.eval_shape(lambda v, x: model.apply(v, x, train=train, mutable=mutable)[1],
                       variables, jax.ShapeDtypeStruct(x_shape, jnp.float32))
  flat = traverse_util.flatten_dict(dict(aux[BN_STATS]))
  return sum(1 for path in flat if path[-2:] == ("input", "mean"))


def _numpy_init(model, shape, seed=0):
  """Concrete variables (He-normal kernels, unit BN) without compiling an XLA RNG."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      value = rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    else:
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, _abstract_init(model, shape))


def test_registered():
  assert set(TABLE) | {"deep_generator"} <= set(list_models())


@pytest.mark.parametrize("name", sorted(TABLE))
def test_torchvision_counts(name):
  params, n_bn, _ = TABLE[name]
  model = get_model(name, 1000)
  variables = _abstract_init(model, (224, 224, 3))
  assert count_params(variables["params"]) == params
  assert set(variables) == {"params", "batch_stats"}
  assert _bn_layers(model, variables, (2, 224, 224, 3), train=False) == n_bn


@pytest.mark.parametrize("name", ["resnet18_imagenet", "mobilenetv2_imagenet"])
def test_forward_small(name):
  _, _, width = TABLE[name]
  model = get_model(name, 10)
  variables = _numpy_init(model, (32, 32, 3))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)

  def run(v, x):
    logits, aux = model.apply(v, x, train=False, mutable=[FEATURES])
    train_logits, new = model.apply(v, x, train=True, mutable=["batch_stats"])
    return logits, penultimate(aux), train_logits, new["batch_stats"]

  logits, feats, train_logits, stats = compile_unoptimized(run, variables, x)(variables, x)
  assert logits.shape == train_logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert feats.shape == (2, width)
  assert np.isfinite(np.asarray(logits)).all() and np.isfinite(np.asarray(train_logits)).all()
  assert (jax.tree_util.tree_structure(stats)
          == jax.tree_util.tree_structure(variables["batch_stats"]))


def test_resnet50_shapes_and_bfloat16():
  model = get_model("resnet50_imagenet", 10, dtype=jnp.bfloat16)
  variables = _abstract_init(model, (32, 32, 3))
  out, aux = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, mutable=[FEATURES]), variables,
      jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  assert out.shape == (2, 10) and out.dtype == jnp.float32
  assert penultimate(aux).shape == (2, 2048)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))


def test_deep_generator_release_counts():
  """nz 256, ngf 64, 224 px, as the release's ImageNet runs: 1,398,403 parameters
  (as PyTorch counts the release's DeepGenerator, its unused `l1` included)."""
  model = get_model("deep_generator", nz=256, ngf=64, img_size=224)
  assert model.latent_shape == (14, 14, 256)
  variables = _abstract_init(model, model.latent_shape)
  assert count_params(variables["params"]) == 1_398_403
  assert count_params(variables["params"]["l1"]) == 256 * 64 * 49 + 64 * 49
  assert _bn_layers(model, variables, (2, 14, 14, 256), train=True) == 5
  out = jax.eval_shape(lambda v, z: model.apply(v, z, mutable=["batch_stats"])[0],
                       variables, jax.ShapeDtypeStruct((2, 14, 14, 256), jnp.float32))
  assert out.shape == (2, 224, 224, 3) and out.dtype == jnp.float32


def test_deep_generator_forward_small():
  model = get_model("deep_generator", nz=8, ngf=4, img_size=32, channels=1)
  variables = init_variables(model, KEY, model.latent_shape)
  z = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 2, 8)), jnp.float32)
  images, new = compile_unoptimized(
      lambda v, z: model.apply(v, z, train=True, mutable=["batch_stats"]), variables, z)(
          variables, z)
  images = np.asarray(images)
  assert images.shape == (3, 32, 32, 1)
  assert (images >= 0).all() and (images <= 1).all() and images.std() > 1e-3
  assert set(new["batch_stats"]) == {f"bn{k}" for k in range(5)}
