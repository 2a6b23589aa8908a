"""Tests of fastdfkd_jax.synthesis.cmi (Contrastive Model Inversion) on tiny models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax.data import augment
from fastdfkd_jax.synthesis import cmi

from synthesis_testlib import ADV, BATCH, IMAGE_SHAPE, MEAN, NZ, PADDING, STD, init, run

BANK = 12   # < 2 batches: the second call wraps the ring


def make_cmi(nets, **hp):
  teacher, student, generator, _, _ = nets
  hp = dict(dict(k=2, batch_size=BATCH, nz=NZ, lr_g=1e-3, betas=(0.5, 0.999), bn=1.0,
                 oh=1.0, cr=0.8, cr_T=0.2, bank_size=BANK, n_neg=6, head_betas=(0.9, 0.999),
                 local_scale=(0.25, 1.0), local_ratio=(0.75, 4 / 3), init_std=0.02,
                 unroll=True), **hp)
  return cmi.CMISynthesizer(generator=generator, head=cmi.MLPHead(8), teacher=teacher,
                            student=student, hp=cmi.CMIHParams(**hp), num_classes=10,
                            image_shape=IMAGE_SHAPE, mean=MEAN, std=STD, padding=PADDING,
                            axis_name=None)


@pytest.fixture(scope="module")
def two_calls(tiny_nets):
  synth = make_cmi(tiny_nets)
  s0 = init(synth, tiny_nets, jax.random.key(0))
  s1, x1, m1 = run(synth, s0, tiny_nets, jax.random.key(1))
  s2, x2, m2 = run(synth, s1, tiny_nets, jax.random.key(2))
  return synth, (s0, s1, s2), (x1, x2), (m1, m2)


def test_cmi_outputs_and_state(two_calls):
  synth, (s0, s1, s2), (x1, x2), (m1, m2) = two_calls
  for x in (x1, x2):
    chex.assert_shape(x, (BATCH,) + IMAGE_SHAPE)
    assert x.dtype == jnp.uint8
  for m in (m1, m2):
    for name in ("loss", "loss_bn", "loss_oh", "loss_adv", "loss_cr", "best_loss"):
      assert np.isfinite(float(m[name])), name
    assert float(m["best_loss"]) <= float(m["loss"]) + 1e-6
    assert float(m["loss_cr"]) > 0
  # The feature: per-image means of all teacher BN inputs (resnet8: 9 layers), local +
  # global per bank row.
  assert s0.bank.shape[0] == BANK and s0.bank.shape[1] % 2 == 0
  assert int(s2.calls) == 2
  # The head is trained and carried.
  moved = sum(float(jnp.abs(a - b).sum()) for a, b in
              zip(jax.tree.leaves(s0.head_params), jax.tree.leaves(s1.head_params)))
  assert moved > 0


def test_cmi_bank_is_a_ring(two_calls):
  _, (s0, s1, s2), _, _ = two_calls
  assert (int(s1.bank_filled), int(s1.bank_cursor)) == (BATCH, BATCH)
  assert (int(s2.bank_filled), int(s2.bank_cursor)) == (BANK, 2 * BATCH - BANK)
  b0, b1, b2 = (np.asarray(s.bank) for s in (s0, s1, s2))
  assert np.all(b0 == 0) and np.all(b1[BATCH:] == 0) and np.all(np.any(b1[:BATCH], 1))
  # Call 2 wrote rows 8..11 and wrapped to rows 0..3; rows 4..7 keep call 1's features.
  np.testing.assert_array_equal(b2[4:BATCH], b1[4:BATCH])
  assert not np.allclose(b2[:4], b1[:4])


def test_cmi_negatives_are_distinct_filled_rows(two_calls):
  synth, (_, s1, _), _, _ = two_calls
  rows, valid = synth._negatives(jax.random.key(5), s1)
  rows, valid = np.asarray(rows), np.asarray(valid)
  assert valid.sum() == 6
  filled = {tuple(r) for r in np.asarray(s1.bank)[:BATCH]}
  assert all(tuple(r) in filled for r in rows) and len({tuple(r) for r in rows}) == 6


def test_cmi_without_contrastive_term(tiny_nets):
  synth = make_cmi(tiny_nets, cr=0.0, k=1)
  s0 = init(synth, tiny_nets, jax.random.key(0))
  s1, _, m = run(synth, s0, tiny_nets, jax.random.key(1), ADV)
  assert float(m["loss_cr"]) == 0.0
  chex.assert_trees_all_equal(s1.head_params, s0.head_params)
  assert int(s1.bank_filled) == BATCH


def test_resized_crop_of_the_whole_image_is_identity_or_flip():
  x = np.random.default_rng(0).uniform(size=(6, 8, 8, 3)).astype(np.float32)
  crop = jax.jit(augment.resized_crop_stripe, static_argnums=(2, 3, 4))
  out = crop(jax.random.key(1), x, (1.0, 1.0), (1.0, 1.0), None)
  flipped = 0
  for a, b in zip(np.asarray(out), x):
    assert np.allclose(a, b, atol=1e-6) or np.allclose(a, b[:, ::-1], atol=1e-6)
    flipped += not np.allclose(a, b, atol=1e-6)
  assert 0 < flipped < len(x)   # the flip is drawn per image
  small = crop(jax.random.key(2), x, (0.25, 0.25), (1.0, 1.0), None)
  chex.assert_shape(small, x.shape)
  assert not np.allclose(small, x, atol=1e-3)   # a quarter of the area, resized
  assert float(small.min()) >= float(x.min()) - 1e-6
  assert float(small.max()) <= float(x.max()) + 1e-6
