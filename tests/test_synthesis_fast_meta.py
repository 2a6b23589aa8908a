"""Tests of fastdfkd_jax.synthesis.fast_meta (FastDFKD and sequential reuse) on tiny models.

Also the engine's check (`inversion`) that the scanned call (one program, as on TPU/GPU)
equals its k inner steps dispatched from the host (as on CPU), on the fast_meta call.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fastdfkd_jax.synthesis import fast_meta

from synthesis_testlib import (ADV, BATCH, IMAGE_SHAPE, assert_tree_close, compiled,
                               host_steps, init, make_synth, run, run_whole)


@pytest.fixture(scope="module")
def nets(tiny_nets):
  return tiny_nets


class RecordMetaGrad(fast_meta.FastMetaSynthesizer):
  """Plain-SGD inner loop; the 'meta optimiser' stores the meta-gradient as its state."""

  def gen_tx(self, lr):
    return optax.sgd(lr)

  def meta_tx(self):
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda g, state, params=None: (jax.tree.map(jnp.zeros_like, g), g))


@pytest.fixture(scope="module")
def meta_unrolled(nets):
  """fast_meta/param_diff, unrolled: one call from a fresh state."""
  synth = make_synth(nets, fast_meta.FastMetaSynthesizer)
  s0 = init(synth, nets, jax.random.key(0))
  s1, x1, m1 = run(synth, s0, nets, jax.random.key(10))
  return synth, s0, s1, x1, m1


@pytest.fixture(scope="module")
def fast_unrolled(nets):
  """method='fast' (sequential reuse) from the same init and key: params = theta'_k."""
  synth = make_synth(nets, fast_meta.FastSynthesizer)
  f0 = init(synth, nets, jax.random.key(0))
  f1, x, m = run(synth, f0, nets, jax.random.key(10))
  return synth, f0, f1, x, m


# ------------------------------------------------------------------ (f)
def test_fast_meta_outputs(meta_unrolled):
  synth, s0, s1, x1, m1 = meta_unrolled
  chex.assert_shape(x1, (BATCH,) + IMAGE_SHAPE)
  assert x1.dtype == jnp.uint8
  assert int(s1.calls) == 1 and bool(s1.has_momentum)
  chex.assert_trees_all_equal_shapes_and_dtypes(s0.gen_params, s1.gen_params)
  for name in ("loss", "loss_bn", "loss_oh", "loss_adv", "teacher_target_acc", "best_loss"):
    assert np.isfinite(float(m1[name])), name
  assert float(m1["best_loss"]) <= float(m1["loss"]) + 1e-6
  # The generator moved.
  diff = sum(np.abs(np.asarray(a) - np.asarray(b)).sum() for a, b in
             zip(jax.tree.leaves(s0.gen_params), jax.tree.leaves(s1.gen_params)))
  assert diff > 0


def test_fast_method_outputs(fast_unrolled):
  _, f0, f1, x, m = fast_unrolled
  chex.assert_shape(x, (BATCH,) + IMAGE_SHAPE)
  assert x.dtype == jnp.uint8
  assert np.isfinite(float(m["best_loss"])) and int(f1.calls) == 1
  # As the release's fast.py: a fresh inner Adam every call (nothing kept across
  # calls but the generator) and no reset_l0 hook.
  assert jax.tree.leaves(f1.opt_state) == []
  assert not hasattr(fast_meta.FastSynthesizer, "reset_first_layer")
  assert hasattr(fast_meta.FastMetaSynthesizer, "reset_first_layer")


# ------------------------------------------------------------------ (a)
def test_scan_equals_host_steps(nets, meta_unrolled):
  """`synthesize` with its k inner steps in a lax.scan == begin, k inner_step, end."""
  _, s0, s1, x1, m1 = meta_unrolled
  synth = make_synth(nets, fast_meta.FastMetaSynthesizer, unroll=False)
  s1_scan, x_scan, m_scan = run_whole(synth, s0, nets, jax.random.key(10))
  assert_tree_close(s1_scan, s1, rtol=1e-4, atol=1e-5)
  # uint8 rounding of nearly equal floats may differ by one level.
  np.testing.assert_allclose(np.asarray(x_scan, np.int32), np.asarray(x1, np.int32), atol=1)
  assert_tree_close(m_scan, m1, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ (b)
def test_param_diff_meta_step(meta_unrolled, fast_unrolled):
  """theta_new = theta + MetaAdam(g = theta - theta'_k), theta'_k from method='fast'."""
  synth, s0, s1, _, _ = meta_unrolled
  _, f0, f1, _, _ = fast_unrolled
  chex.assert_trees_all_equal(f0.gen_params, s0.gen_params)   # same init key
  theta, theta_k = s0.gen_params, f1.gen_params   # same z, targets and inner steps

  @jax.jit
  def meta_step(theta, theta_k, opt_state):
    g = jax.tree.map(jnp.subtract, theta, theta_k)
    updates, opt = synth.meta_tx().update(g, opt_state, theta)
    return g, optax.apply_updates(theta, updates), opt

  g, expected, opt = meta_step(theta, theta_k, s0.opt_state)
  assert max(np.abs(np.asarray(x)).max() for x in jax.tree.leaves(g)) > 0
  assert_tree_close(s1.gen_params, expected, rtol=1e-5, atol=1e-6)
  assert_tree_close(s1.opt_state, opt, rtol=1e-3, atol=1e-10)
  # Meta Adam lr is lr_g * k: its first step moves each weight by <= lr_g * k.
  step = max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
             zip(jax.tree.leaves(s1.gen_params), jax.tree.leaves(theta)))
  assert step <= synth.hp.lr_g * synth.hp.k * (1 + 1e-4)


# ------------------------------------------------------------------ (c)
def test_sgd_inner_loop_meta_gradients_agree(nets):
  """With SGD(a) inner steps: theta - theta'_k == a * sum_i dL_i/dtheta'. Both meta-
  gradients are taken from the same inner loop (`meta_grad` only changes `end`)."""
  lr_g = 0.05
  _, _, _, tv, sv = nets
  key = jax.random.key(10)
  pd = make_synth(nets, cls=RecordMetaGrad, lr_g=lr_g, meta_grad="param_diff")
  sm = dataclasses.replace(pd, hp=dataclasses.replace(pd.hp, meta_grad="sum_inner_grads"))
  s0 = init(pd, nets, jax.random.key(0))
  begin, inner, end_pd = host_steps(pd, s0, nets, key)
  carry, keys = begin(s0, key)
  for step_key in keys:
    carry = inner(carry, step_key, s0, tv, sv, ADV)
  g_pd = end_pd(s0, carry)[0].opt_state
  g_sum = compiled(sm.end, s0, carry)(s0, carry)[0].opt_state
  norm = np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree.leaves(g_sum)))
  assert norm > 0
  # theta - theta'_k carries float32 cancellation of |theta| * 1e-7.
  assert_tree_close(g_pd, jax.tree.map(lambda x: lr_g * x, g_sum), rtol=2e-3, atol=2e-6)
