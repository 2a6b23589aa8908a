"""The ImageNet options of fast_meta (the release's fast_meta_imagenet.py) on tiny models:
a meta-learned latent with its own meta step, separate meta learning rates, reinit,
RandomResizedCrop in the synthesis loss and the last step's images in the pool.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fastdfkd_jax.synthesis import fast_meta

from synthesis_testlib import BATCH, IMAGE_SHAPE, NZ, init, make_synth, run

IMAGENET = dict(meta_latent=True, meta_lr_g=1e-4, meta_lr_z=5e-3, lr_g=2e-4, lr_z=0.01,
                augment="resized_crop", keep="last")


class RecordLatentStep(fast_meta.FastMetaSynthesizer):
  """The latent's 'meta optimiser' keeps its gradient z - z'_k as its state, no update."""

  def meta_latent_tx(self):
    return optax.GradientTransformation(
        init=jnp.zeros_like, update=lambda g, state, params=None: (jnp.zeros_like(g), g))


@pytest.fixture(scope="module")
def nets(tiny_nets):
  return tiny_nets


@pytest.fixture(scope="module")
def two_calls(nets):
  synth = make_synth(nets, fast_meta.FastMetaSynthesizer, **IMAGENET)
  s0 = init(synth, nets, jax.random.key(0))
  s1, x1, m1 = run(synth, s0, nets, jax.random.key(10))
  s2, x2, m2 = run(synth, s1, nets, jax.random.key(11))
  return synth, (s0, s1, s2), (x1, x2), (m1, m2)


def _max_step(a, b) -> float:
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_meta_latent_state_and_meta_steps(two_calls):
  synth, (s0, s1, s2), (x1, _), (m1, _) = two_calls
  chex.assert_shape(s0.latent, (BATCH, NZ))
  chex.assert_shape(x1, (BATCH,) + IMAGE_SHAPE)
  assert int(s2.calls) == 2
  # First Adam steps move each element by at most its lr: the generator by meta_lr_g
  # (not lr_g * k), the latent by meta_lr_z; both move.
  assert 0 < _max_step(s1.gen_params, s0.gen_params) <= 1e-4 * (1 + 1e-3)
  assert 0 < _max_step(s1.latent, s0.latent) <= 5e-3 * (1 + 1e-3)
  # keep='last': the pool gets the last inner step's images, best_loss is its loss.
  np.testing.assert_allclose(float(m1["best_loss"]), float(m1["loss"]), rtol=1e-6)
  assert all(np.isfinite(float(v)) for v in m1.values())


def test_latent_changes_only_through_its_meta_step(nets):
  """With a meta step that does not move it, the latent is the same across calls, and
  the step's gradient is z - z'_k (the latent fed back and the inner loop's result)."""
  synth = make_synth(nets, RecordLatentStep, **IMAGENET)
  s0 = init(synth, nets, jax.random.key(0))
  s1, _, _ = run(synth, s0, nets, jax.random.key(10))
  s2, _, _ = run(synth, s1, nets, jax.random.key(11))
  np.testing.assert_array_equal(np.asarray(s1.latent), np.asarray(s0.latent))
  np.testing.assert_array_equal(np.asarray(s2.latent), np.asarray(s0.latent))
  g1, g2 = np.asarray(s1.latent_opt), np.asarray(s2.latent_opt)
  assert np.abs(g1).max() > 0 and np.abs(g2).max() > 0
  # Each inner Adam step moves z by about lr_z (its first step exactly, at most):
  # |z - z'_k| is of the order k * lr_z.
  assert np.abs(g1).max() <= 2 * synth.hp.k * synth.hp.lr_z


def test_reinit_draws_a_fresh_latent_and_restarts_the_meta_optimizers(nets):
  synth = make_synth(nets, fast_meta.FastMetaSynthesizer, reinit_every=2, **IMAGENET)
  keep = make_synth(nets, fast_meta.FastMetaSynthesizer, **IMAGENET)
  assert [bool(synth.reinit(jnp.int32(c))) for c in range(4)] == [False, True, False, True]
  s0 = init(synth, nets, jax.random.key(0))
  s1, _, _ = run(synth, s0, nets, jax.random.key(10))
  s2, _, _ = run(synth, s1, nets, jax.random.key(11))   # the 2nd call: reinit
  k1, _, _ = run(keep, s0, nets, jax.random.key(10))
  k2, _, _ = run(keep, k1, nets, jax.random.key(11))
  chex.assert_trees_all_close(s1, k1)                   # the first call is the same
  # Adam's step count: restarted (1) at the reinit call, else 2.
  count = lambda opt: [int(c) for c in jax.tree.leaves(opt) if np.ndim(c) == 0 and
                       np.issubdtype(np.asarray(c).dtype, np.integer)]
  assert count(s2.latent_opt) == [1] and count(k2.latent_opt) == [2]
  assert set(count(s2.opt_state)) == {1} and set(count(k2.opt_state)) == {2}
  # The reinit call started from a fresh N(0, I) latent, not from s1's.
  assert _max_step(s2.latent, s1.latent) > 0.5
  assert _max_step(k2.latent, k1.latent) <= 2 * 5e-3   # Adam step 2: about meta_lr_z


def test_cifar_defaults_keep_no_latent(nets):
  synth = make_synth(nets, fast_meta.FastMetaSynthesizer)
  s0 = init(synth, nets, jax.random.key(0))
  assert s0.latent is None and s0.latent_opt is None
  assert synth.meta_tx is not None and synth.hp.meta_lr_g == 0.0
