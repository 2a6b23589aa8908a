"""Tests of fastdfkd_jax.synthesis.deepinversion (the original DeepInversion) on tiny models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax.synthesis import deepinversion

from synthesis_testlib import BATCH, IMAGE_SHAPE, MEAN, PADDING, STD, run


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
  s0 = synth.init(jax.random.key(0), tiny_nets[3])
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
  synth = one_call[0]
  carry, keys = synth.begin(one_call[1], jax.random.key(3))
  lo, hi = -MEAN[0] / STD[0], (1 - MEAN[0]) / STD[0]
  assert float(carry.x.min()) < lo or float(carry.x.max()) > hi   # N(0, 1) start
  _, _, _, tv, sv = tiny_nets
  carry = jax.jit(synth.inner_step)(carry, keys[0], one_call[1], tv, sv, jnp.float32(1.0))
  assert float(carry.x.min()) >= lo - 1e-6 and float(carry.x.max()) <= hi + 1e-6


def test_jitter_flip_rolls_and_flips_the_whole_batch(one_call):
  synth = one_call[0]
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  lim = int(8 * synth.hp.jitter)
  for seed in range(4):
    out = np.asarray(synth.jitter_flip(jax.random.key(seed), x))
    found = [(dy, dx, f) for dy in range(-lim, lim + 1) for dx in range(-lim, lim + 1)
             for f in (False, True)
             if np.array_equal(out, np.asarray(jnp.flip(jnp.roll(x, (dy, dx), (1, 2)), 2)
                                               if f else jnp.roll(x, (dy, dx), (1, 2))))]
    assert found, seed
  still = make_di((synth.teacher, synth.student, None, None, None), jitter=0.0, flip=False)
  np.testing.assert_array_equal(np.asarray(still.jitter_flip(jax.random.key(0), x)), x)
