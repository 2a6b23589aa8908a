"""Tests of fastdfkd_jax.synthesis.losses against numpy references and golden values.

Reference doc, section 3: L_BN with/without momentum, the momentum update, the
adversarial (masked KL) term and the CE term.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax.synthesis import losses

from reference_logits import STUDENT, TARGETS, TEACHER, np_kl, np_log_softmax

# Golden values, computed once in float64 with the numpy formulas.
GOLDEN_ADV = -0.09592097582909527
GOLDEN_CE = 1.0107341594807802


# ----------------------------------------------------------------- golden
def test_adversarial_loss_golden():
  agree = STUDENT.argmax(-1) == TEACHER.argmax(-1)
  np.testing.assert_array_equal(agree, [True, False, True])
  expected = -np.mean(np_kl(STUDENT, TEACHER) * agree)
  assert expected == pytest.approx(GOLDEN_ADV, abs=1e-12)
  got = losses.adversarial_loss(jnp.asarray(STUDENT, jnp.float32),
                                jnp.asarray(TEACHER, jnp.float32))
  chex.assert_shape(got, ())
  np.testing.assert_allclose(float(got), GOLDEN_ADV, rtol=0, atol=1e-6)
  # The disagreeing sample does not contribute: changing it leaves the loss alone.
  s2 = STUDENT.copy()
  s2[1] = [0.0, 9.0, -3.0, 4.0]
  got2 = losses.adversarial_loss(jnp.asarray(s2, jnp.float32),
                                 jnp.asarray(TEACHER, jnp.float32))
  np.testing.assert_allclose(float(got2), GOLDEN_ADV, rtol=0, atol=1e-6)


def test_adversarial_loss_all_disagree_is_zero():
  s = jnp.asarray([[0.0, 1.0], [1.0, 0.0]])
  t = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
  assert float(losses.adversarial_loss(s, t)) == 0.0


def test_one_hot_loss_matches_numpy_ce():
  expected = -np_log_softmax(TEACHER)[np.arange(3), TARGETS].mean()
  assert expected == pytest.approx(GOLDEN_CE, abs=1e-12)
  got = losses.one_hot_loss(jnp.asarray(TEACHER, jnp.float32), jnp.asarray(TARGETS))
  np.testing.assert_allclose(float(got), GOLDEN_CE, rtol=0, atol=1e-6)


def test_one_hot_loss_random_vs_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(16, 10)) * 3
  y = rng.integers(0, 10, 16)
  expected = -np_log_softmax(logits)[np.arange(16), y].mean()
  got = losses.one_hot_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(y))
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


# ---------------------------------------------------------------- L_BN
def fake_bn_stats(seed=0):
  """A 'bn_stats' tree as the teacher sows it: 2 layers (4 and 3 channels)."""
  rng = np.random.default_rng(seed)

  def layer(c):
    return {"input": dict(
        mean=jnp.asarray(rng.normal(size=c), jnp.float32),
        var=jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32),
        running_mean=jnp.asarray(rng.normal(size=c), jnp.float32),
        running_var=jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32))}

  return {"bn1": layer(4), "layer1_0": {"bn1": layer(3)}}


def fake_buffers(stats, seed=1):
  rng = np.random.default_rng(seed)
  return [dict(mean=jnp.asarray(rng.normal(size=l["mean"].shape), jnp.float32),
               var=jnp.asarray(rng.uniform(0.5, 2.0, l["var"].shape), jnp.float32))
          for l in losses.flatten_bn_stats(stats)]


def np_bn_loss(stats, buffers, m, has_momentum):
  total = 0.0
  for layer, buf in zip(losses.flatten_bn_stats(stats), buffers):
    mu, v = np.asarray(layer["mean"], np.float64), np.asarray(layer["var"], np.float64)
    rm = np.asarray(layer["running_mean"], np.float64)
    rv = np.asarray(layer["running_var"], np.float64)
    if has_momentum:
      v = (1 - m) * v + m * np.asarray(buf["var"], np.float64)
      mu = (1 - m) * mu + m * np.asarray(buf["mean"], np.float64)
    total += np.linalg.norm(rv - v) + np.linalg.norm(rm - mu)
  return total


def test_flatten_bn_stats_finds_both_layers():
  layers = losses.flatten_bn_stats(fake_bn_stats())
  assert len(layers) == 2
  assert sorted(l["mean"].shape[0] for l in layers) == [3, 4]


@pytest.mark.parametrize("has_momentum", [False, True])
def test_bn_prior_loss_matches_numpy(has_momentum):
  stats = fake_bn_stats()
  buffers = fake_buffers(stats)
  loss, last = losses.bn_prior_loss(stats, buffers, jnp.array(has_momentum), 0.9)
  expected = np_bn_loss(stats, buffers, 0.9, has_momentum)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  # `last` holds this call's plain batch statistics, whatever the momentum.
  for l, layer in zip(last, losses.flatten_bn_stats(stats)):
    np.testing.assert_array_equal(l["mean"], layer["mean"])
    np.testing.assert_array_equal(l["var"], layer["var"])


def test_bn_prior_loss_without_momentum_ignores_buffers():
  stats = fake_bn_stats()
  a, _ = losses.bn_prior_loss(stats, fake_buffers(stats, 1), jnp.array(False), 0.9)
  b, _ = losses.bn_prior_loss(stats, fake_buffers(stats, 2), jnp.array(False), 0.9)
  assert float(a) == float(b)


def test_bn_prior_loss_jits():
  stats = fake_bn_stats()
  buffers = fake_buffers(stats)
  f = jax.jit(lambda s, b, h: losses.bn_prior_loss(s, b, h, 0.9)[0])
  np.testing.assert_allclose(float(f(stats, buffers, jnp.array(True))),
                             np_bn_loss(stats, buffers, 0.9, True), rtol=1e-5)


def test_init_momentum_zeros():
  stats = fake_bn_stats()
  buf = losses.init_momentum(stats)
  chex.assert_trees_all_equal_shapes(buf, [dict(mean=l["mean"], var=l["var"])
                                           for l in losses.flatten_bn_stats(stats)])
  assert all(float(jnp.abs(x).sum()) == 0 for x in jax.tree.leaves(buf))


def test_update_momentum_first_call_copies_last():
  stats = fake_bn_stats()
  buffers = fake_buffers(stats, 3)
  _, last = losses.bn_prior_loss(stats, buffers, jnp.array(False), 0.9)
  new = losses.update_momentum(buffers, last, jnp.array(False), 0.9)
  chex.assert_trees_all_equal(new, last)


def test_update_momentum_later_calls_mix():
  stats = fake_bn_stats()
  buffers = fake_buffers(stats, 3)
  _, last = losses.bn_prior_loss(stats, buffers, jnp.array(True), 0.9)
  new = losses.update_momentum(buffers, last, jnp.array(True), 0.9)
  for n, b, l in zip(new, buffers, last):
    for key in ("mean", "var"):
      np.testing.assert_allclose(
          n[key], 0.9 * np.asarray(b[key]) + 0.1 * np.asarray(l[key]), rtol=1e-6)
