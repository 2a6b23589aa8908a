"""Tests of fastdfkd_jax.synthesis.inversion (the engine's loss and hyper-parameters).

The engine's calls are tested per method: test_synthesis_fast_meta.py (the scanned call
== its host-dispatched inner steps, the meta step) and test_synthesis_no_reuse.py (BN
momentum buffers).
"""

import dataclasses

import chex
import jax
import numpy as np
import pytest

from fastdfkd_jax.config import schema
from fastdfkd_jax.synthesis import fast_meta, inversion

from synthesis_testlib import ADV, BATCH, IMAGE_SHAPE, compiled, init, make_synth


@pytest.fixture(scope="module")
def nets(tiny_nets):
  return tiny_nets


# ------------------------------------------------------------------ (d)
def test_teacher_and_student_get_no_gradient(nets):
  _, _, _, tv, sv = nets
  synth = make_synth(nets, fast_meta.FastMetaSynthesizer)
  state = init(synth, nets, jax.random.key(0))
  x = jax.random.uniform(jax.random.key(3), (BATCH,) + IMAGE_SHAPE)
  y = jax.random.randint(jax.random.key(4), (BATCH,), 0, 10)

  def objective(x, tv, sv):
    return synth.loss_terms(x, y, jax.random.key(5), tv, sv, state.bn_momentum,
                            state.has_momentum, ADV)[0]

  grad = jax.grad(objective, argnums=(0, 1, 2))
  g_x, g_t, g_s = compiled(grad, x, tv, sv)(x, tv, sv)
  assert np.abs(np.asarray(g_x)).sum() > 0  # the images do get a gradient
  chex.assert_trees_all_equal_structs(g_t, tv)
  for leaf in jax.tree.leaves((g_t, g_s)):
    assert np.abs(np.asarray(leaf)).max() == 0.0


def test_hparams_from_config():
  c = schema.base_config()
  hp = inversion.hparams_from_config(c, unroll=True)
  assert hp.k == c.k and hp.lr_g == c.synth.lr_g and hp.unroll
  assert hp.betas == tuple(c.synth.betas) and hp.meta_grad == c.synth.meta_grad
  assert dataclasses.replace(hp, k=2).k == 2
