"""NumPy golden tests of the CMI and DeepInversion losses in fastdfkd_jax.synthesis.losses.

Each reference is the release's formula written in NumPy (float64, NCHW where the
release indexes NCHW): `contrastive.py`'s L_cr, `criterions.py`'s `jsdiv` and
`get_image_prior_losses`, and the original DeepInversion's l2 variation prior.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax.synthesis import losses

RNG = np.random.default_rng(0)


def _unit(n, d):
  v = RNG.normal(size=(n, d))
  return v / np.linalg.norm(v, axis=1, keepdims=True)


def np_contrastive(local, cached_local, global_, cached_global, temperature):
  """The release: rows [local; cached], columns [global; cached], CE against arange."""
  rows = np.concatenate([local, cached_local])
  cols = np.concatenate([global_, cached_global])
  logits = rows @ cols.T / temperature
  logits = logits - logits.max(1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  ce = -logp[np.arange(len(rows)), np.arange(len(rows))]
  n = len(local)
  return ce[:n].mean() + ce[n:].mean() if len(cached_local) else ce.mean()


@pytest.mark.parametrize("n_valid", [6, 3, 0])
def test_contrastive_loss_golden(n_valid):
  """A full bank (6 of 6 negatives), a partly filled one (3) and an empty one (0)."""
  n, n_neg, d, temperature = 4, 6, 5, 0.2
  local, global_ = _unit(n, d), _unit(n, d)
  cached_local, cached_global = _unit(n_neg, d), _unit(n_neg, d)
  valid = np.arange(n_neg) < n_valid
  expected = np_contrastive(local, cached_local[:n_valid], global_, cached_global[:n_valid],
                            temperature)
  got = losses.contrastive_loss(*(jnp.asarray(a, jnp.float32) for a in (
      local, global_, cached_local, cached_global)), jnp.asarray(valid), temperature)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def np_jsdiv(logits, targets, temperature):
  def softmax(a):
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
  p, q = softmax(logits / temperature), softmax(targets / temperature)
  m = np.clip(0.5 * (p + q), 0.01, 0.99)
  p, q = np.clip(p, 0.01, 0.99), np.clip(q, 0.01, 0.99)
  kl_div = lambda log_input, target: (target * (np.log(target) - log_input)).sum() / len(target)
  return 0.5 * kl_div(np.log(p), m) + 0.5 * kl_div(np.log(q), m)


def test_js_divergence_golden():
  s, t = RNG.normal(size=(5, 10)) * 3, RNG.normal(size=(5, 10)) * 3
  expected = np_jsdiv(s, t, 3.0)
  got = losses.js_divergence(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), 3.0)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  assert float(losses.js_divergence(jnp.asarray(s), jnp.asarray(s), 3.0)) == pytest.approx(
      0.0, abs=1e-6)


def _np_diffs(x):
  """The release's four differences on NCHW."""
  return [x[:, :, :, :-1] - x[:, :, :, 1:], x[:, :, :-1, :] - x[:, :, 1:, :],
          x[:, :, 1:, :-1] - x[:, :, :-1, 1:], x[:, :, :-1, :-1] - x[:, :, 1:, 1:]]


def test_total_variation_and_l2_golden():
  x = RNG.normal(size=(3, 6, 7, 2))           # NHWC, non-square
  nchw = x.transpose(0, 3, 1, 2)
  tv1 = sum((np.abs(d) / 255.0).mean() for d in _np_diffs(nchw)) * 255.0
  tv2 = sum(np.linalg.norm(d.ravel()) for d in _np_diffs(nchw))
  xj = jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(float(losses.tv_l1(xj)), tv1, rtol=1e-5)
  np.testing.assert_allclose(float(losses.tv_l2(xj)), tv2, rtol=1e-5)
  np.testing.assert_allclose(float(losses.l2_norm(xj)), np.linalg.norm(x.ravel()), rtol=1e-5)


def test_bn_prior_plain_is_the_momentum_free_prior():
  layer = dict(mean=jnp.array([0.1, 0.2]), var=jnp.array([1.0, 2.0]),
               running_mean=jnp.array([0.0, 0.5]), running_var=jnp.array([1.5, 1.0]))
  stats = {"bn": {"input": layer}}
  expected = np.linalg.norm([0.5, -1.0]) + np.linalg.norm([-0.1, 0.3])
  np.testing.assert_allclose(float(losses.bn_prior_plain(stats)), expected, rtol=1e-6)
  same, _ = losses.bn_prior_loss(stats, losses.init_momentum(stats), False, 0.9)
  np.testing.assert_allclose(float(losses.bn_prior_plain(stats)), float(same), rtol=1e-6)
