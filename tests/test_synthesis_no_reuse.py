"""Tests of fastdfkd_jax.synthesis.no_reuse (per-batch pixel inversion) on tiny models.

Its k = 1 calls also serve the BN momentum test of the shared engine (`inversion`).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax.data import augment
from fastdfkd_jax.synthesis import no_reuse, losses

from synthesis_testlib import (BATCH, IMAGE_SHAPE, MEAN, PADDING, STD, assert_tree_close,
                               compiled, init, make_synth, run)


@pytest.fixture(scope="module")
def nets(tiny_nets):
  return tiny_nets


# deepinv (k = 1) also serves the momentum test (e): its single inner step
# renders sigmoid(latent), so the last step's teacher statistics are recomputable.
@pytest.fixture(scope="module")
def deepinv_k1(nets):
  synth = make_synth(nets, no_reuse.DeepInvSynthesizer, k=1)
  s0 = init(synth, nets, jax.random.key(0))
  k1, k2 = jax.random.key(11), jax.random.key(12)
  s1, x1, m1 = run(synth, s0, nets, k1)
  s2, x2, m2 = run(synth, s1, nets, k2)
  return synth, (s0, s1, s2), (k1, k2), (x1, x2), (m1, m2)


def test_deepinv_outputs(deepinv_k1):
  _, (s0, s1, s2), _, (x1, x2), (m1, _) = deepinv_k1
  for x in (x1, x2):
    chex.assert_shape(x, (BATCH,) + IMAGE_SHAPE)
    assert x.dtype == jnp.uint8
  assert np.isfinite(float(m1["best_loss"]))
  assert not np.array_equal(np.asarray(x1), np.asarray(x2))
  # No reuse: the generator is untouched.
  chex.assert_trees_all_equal(s2.gen_params, s0.gen_params)
  assert int(s2.calls) == 2


# ------------------------------------------------------------------ (e)
def _last_stats(synth, nets, key):
  """Teacher BN input stats of the single inner step of a deepinv k=1 call."""
  return compiled(lambda tv, key: _last_stats_fn(synth, tv, key), nets[3], key)(nets[3], key)


def _last_stats_fn(synth, tv, key):
  k_z, _, k_steps = jax.random.split(key, 3)
  x = jax.nn.sigmoid(jax.random.normal(k_z, (BATCH,) + IMAGE_SHAPE))
  xa = augment.augment_stripe(jax.random.split(k_steps, 1)[0], x, MEAN, STD, PADDING, None)
  _, aux = synth.teacher.apply(tv, xa, train=False, mutable=[losses.BN_STATS_COLLECTION])
  return [dict(mean=l["mean"], var=l["var"])
          for l in losses.flatten_bn_stats(aux[losses.BN_STATS_COLLECTION])]


def test_bn_momentum_buffers(nets, deepinv_k1):
  synth, (s0, s1, s2), (k1, k2), _, _ = deepinv_k1
  assert not bool(s0.has_momentum)
  assert len(s0.bn_momentum) == 9  # resnet8 has 9 BN layers
  chex.assert_trees_all_equal_shapes(s0.bn_momentum, s1.bn_momentum)
  assert bool(s1.has_momentum) and bool(s2.has_momentum)
  # First call: the buffers are the last inner step's statistics.
  assert_tree_close(s1.bn_momentum, _last_stats(synth, nets, k1),
                    rtol=1e-4, atol=1e-5)
  # Later calls: buffer <- m * buffer + (1 - m) * last.
  m = synth.hp.bn_mmt
  expected = jax.tree.map(lambda b, l: m * b + (1 - m) * l, s1.bn_momentum,
                          _last_stats(synth, nets, k2))
  assert_tree_close(s2.bn_momentum, expected, rtol=1e-4, atol=1e-5)
