"""Precise BN: running statistics recomputed over a split (models/precise_bn.py)."""

import functools

import jax
import numpy as np
import pytest
from flax import traverse_util

from fastdfkd_jax import models
from fastdfkd_jax.run import parallel
from fastdfkd_jax.models import layers, precise_bn, util as model_util

MEAN, STD = (0.5,), (0.25,)


@pytest.fixture(scope="module")
def setup():
  model = models.get_model("resnet8", 10, axis_name=parallel.AXIS)
  variables = model_util.init_variables(model.clone(axis_name=None), jax.random.key(0),
                                        (8, 8, 1))
  images = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 1), dtype=np.uint8)
  mesh = parallel.make_mesh()
  step = precise_bn.make_moments_step(model, MEAN, STD, mesh)
  return model, variables, images, mesh, step


def _batch_moments(model, variables, images):
  """NumPy: per-layer (mean, biased var) of each BN input, one train-mode batch."""
  x = (images.astype(np.float32) / 255.0 - MEAN[0]) / STD[0]
  flat = traverse_util.flatten_dict(_bn_stats(model.clone(axis_name=None), variables, x))
  return {p[:-2]: (np.asarray(flat[p]), np.asarray(flat[p[:-1] + ("var",)]))
          for p in flat if p[-1] == "mean"}


@functools.partial(jax.jit, static_argnums=(0,))
def _bn_stats(model, variables, x):
  """The BN inputs' statistics sown by a train-mode forward (one program per shape)."""
  _, aux = model.apply(variables, x, train=True, mutable=["batch_stats", layers.BN_STATS])
  return aux[layers.BN_STATS]


def test_statistics_are_the_average_over_equal_batches(setup):
  model, variables, images, mesh, step = setup
  out = precise_bn.recompute(step, parallel.put_replicated(variables, mesh), images, 16, mesh)
  # Three batches of 16 (the last 2 images dropped): mean = E_b[m_b],
  # var = E_b[v_b + m_b^2] - mean^2.
  per_batch = [_batch_moments(model, variables, images[b * 16:(b + 1) * 16])
               for b in range(3)]
  flat = traverse_util.flatten_dict(jax.device_get(out["batch_stats"]))
  assert len(per_batch[0]) == len(flat) // 2 > 3
  for layer in per_batch[0]:
    m = np.mean([pb[layer][0] for pb in per_batch], axis=0)
    v = np.mean([pb[layer][1] + pb[layer][0] ** 2 for pb in per_batch], axis=0) - m ** 2
    np.testing.assert_allclose(flat[layer + ("mean",)], m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat[layer + ("var",)], v, rtol=1e-4, atol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(out["params"]),
               variables["params"])


def test_first_layer_gets_the_whole_split_statistics(setup):
  # The first BN's input (the stem conv of the images) does not depend on other BN
  # layers, so equal batches give exactly the whole split's mean and variance.
  model, variables, images, mesh, step = setup
  out = precise_bn.recompute(step, parallel.put_replicated(variables, mesh), images[:48],
                             16, mesh)
  whole = _batch_moments(model, variables, images[:48])
  first = min(whole, key=lambda p: (len(p), p))
  stats = traverse_util.flatten_dict(jax.device_get(out["batch_stats"]))
  np.testing.assert_allclose(stats[first + ("mean",)], whole[first][0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats[first + ("var",)], whole[first][1], rtol=1e-4, atol=1e-6)


def test_too_few_images_is_an_error(setup):
  _, variables, images, mesh, step = setup
  with pytest.raises(ValueError, match="at least one batch"):
    precise_bn.recompute(step, parallel.put_replicated(variables, mesh), images[:10], 16, mesh)
