"""Tests of fastdfkd_jax.synthesis.deepinversion (the original DeepInversion) on tiny models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax.synthesis import deepinversion

from synthesis_testlib import (BATCH, IMAGE_SHAPE, MEAN, PADDING, STD, host_steps, init,
                               run)


def make_di(nets, **hp):
  teacher, student, _, _, _ = nets
  hp = dict(dict(k=2, batch_size=BATCH, lr=0.1, betas=(0.5, 0.99), bn=10.0, oh=1.0,
                 tv=1e-3, tv_l2=1e-4, l2=1e-5, jitter=0.125, flip=True, js_T=3.0,
                 student_bn=0.001, unroll=True), **hp)
  return deepinversion.DeepInversionSynthesizer(
      teacher=teacher, student=student, hp=deepinversion.DeepInversionHParams(**hp),
      num_classes=10, image_shape=IMAGE_SHAPE, mean=MEAN, std=STD, padding=PADDING,
      axis_name=None)


@pytest.fixture(scope="module")
def one_call(tiny_nets):
  synth = make_di(tiny_nets)
  s0 = init(synth, tiny_nets, jax.random.key(0))
  s1, x, m = run(synth, s0, tiny_nets, jax.random.key(1))
  return synth, s0, s1, x, m


def test_deepinversion_outputs(one_call):
  _, s0, s1, x, m = one_call
  chex.assert_shape(x, (BATCH,) + IMAGE_SHAPE)
  assert x.dtype == jnp.uint8
  assert int(s0.calls) == 0 and int(s1.calls) == 1
  for name in ("loss", "loss_bn", "loss_oh", "loss_adv", "loss_tv", "best_loss"):
    assert np.isfinite(float(m[name])), name
  assert float(m["loss_adv"]) <= 0.0 and float(m["loss_tv"]) > 0.0
  assert float(m["best_loss"]) <= float(m["loss"]) + 1e-6


def test_steps_clip_pixels_to_the_valid_range(tiny_nets, one_call):
  synth, s0 = one_call[0], one_call[1]
  begin, inner, _ = host_steps(synth, s0, tiny_nets, jax.random.key(1))   # one_call's
  carry, keys = begin(s0, jax.random.key(3))
  lo, hi = -MEAN[0] / STD[0], (1 - MEAN[0]) / STD[0]
  assert float(carry.x.min()) < lo or float(carry.x.max()) > hi   # N(0, 1) start
  _, _, _, tv, sv = tiny_nets
  carry = inner(carry, keys[0], s0, tv, sv, jnp.float32(1.0))
  assert float(carry.x.min()) >= lo - 1e-6 and float(carry.x.max()) <= hi + 1e-6


def test_jitter_flip_rolls_and_flips_the_whole_batch(one_call):
  synth = one_call[0]
  x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)
  lim = int(8 * synth.hp.jitter)
  assert lim == 1
  candidates = [(dy, dx, f) for dy in range(-lim, lim + 1) for dx in range(-lim, lim + 1)
                for f in (False, True)]

  def moved(dy, dx, f):
    y = np.roll(x, (dy, dx), (1, 2))
    return y[:, :, ::-1] if f else y

  jitter_flip = jax.jit(synth.jitter_flip)
  seen = set()
  for seed in range(8):
    out = np.asarray(jitter_flip(jax.random.key(seed), x))
    found = [c for c in candidates if np.array_equal(out, moved(*c))]
    assert len(found) == 1, (seed, found)
    seen.update(found)
  assert len(seen) > 2   # the shift and the flip are drawn, not fixed
  still = make_di((synth.teacher, synth.student, None, None, None), jitter=0.0, flip=False)
  np.testing.assert_array_equal(np.asarray(jax.jit(still.jitter_flip)(jax.random.key(0), x)),
                                x)
