"""Tests of fastdfkd_jax.data.augment: shapes, determinism, numpy references, device counts
(1, 2, 4 and 8 of the suite's 8 CPU devices, in process).

The functions run jitted, on one shape of test images throughout, so the file compiles a
handful of programs (op by op, each call of `augment` compiles a program per operation);
the device-count programs are compiled unoptimised.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax.data import augment as aug
from fastdfkd_jax.run import parallel

from conftest import compile_unoptimized, make_mesh

DEVICE_COUNTS = (1, 2, 4, 8)
# (padding, flip) settings the multi-device test covers.
STRIPE_CASES = ((4, True), (1, True), (0, True), (4, False))

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
B = 16

augment = jax.jit(aug.augment, static_argnames=("padding", "flip"))
crop = jax.jit(aug.random_crop, static_argnames=("padding",))
crop_offsets = jax.jit(aug.crop_offsets, static_argnums=(1, 2))
flip = jax.jit(aug.random_flip)
flip_mask = jax.jit(aug.flip_mask, static_argnums=(1,))
normalize = jax.jit(aug.normalize)


def images(b=B, h=12, w=10, c=3, seed=0):
  # Positive everywhere so that zero padding is distinguishable.
  return np.random.default_rng(seed).uniform(0.1, 1.0, (b, h, w, c)).astype(np.float32)


def numpy_crop(x, offsets, padding):
  """Reference: zero-pad, then slice H x W at (dy, dx) per image."""
  x = np.asarray(x)
  _, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  return np.stack([p[dy:dy + h, dx:dx + w]
                   for p, (dy, dx) in zip(padded, np.asarray(offsets))])


def test_shapes_and_dtypes():
  x = images()
  key = jax.random.key(1)
  for y in (crop(key, x, padding=4), flip(key, x), normalize(x, MEAN, STD),
            augment(key, x, MEAN, STD, padding=4)):
    chex.assert_shape(y, x.shape)
    chex.assert_type(y, jnp.float32)
  offsets = crop_offsets(key, B, 4)
  chex.assert_shape(offsets, (B, 2))
  chex.assert_type(offsets, jnp.int32)
  assert int(offsets.min()) >= 0 and int(offsets.max()) <= 8
  mask = flip_mask(key, B)
  chex.assert_shape(mask, (B,))
  assert mask.dtype == jnp.bool_


def test_uint8_roundtrip():
  u = jnp.arange(256, dtype=jnp.uint8).reshape(1, 16, 16, 1)
  f = jax.jit(aug.to_float)(u)
  chex.assert_type(f, jnp.float32)
  chex.assert_shape(f, u.shape)
  assert float(f.min()) == 0.0 and float(f.max()) == 1.0
  back = jax.jit(aug.to_uint8)(f)
  chex.assert_type(back, jnp.uint8)
  np.testing.assert_array_equal(back, u)
  np.testing.assert_array_equal(
      jax.jit(aug.to_uint8)(jnp.array([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 1.0, 2.0])),
      np.array([0, 0, 0, 1, 255, 255], np.uint8))  # Round, clip.


def test_deterministic_per_key():
  x = images()
  a = augment(jax.random.key(3), x, MEAN, STD, padding=4)
  b = augment(jax.random.key(3), x, MEAN, STD, padding=4)
  c = augment(jax.random.key(4), x, MEAN, STD, padding=4)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_identity_without_crop_or_flip():
  x = images()
  y = augment(jax.random.key(0), x, (0.0,) * 3, (1.0,) * 3, padding=0, flip=False)
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(aug.random_crop(jax.random.key(0), x, 0), x)


def test_flip_matches_mask():
  x = images()
  key = jax.random.key(5)
  mask = np.asarray(flip_mask(key, B))
  assert 0 < mask.sum() < B
  y = np.asarray(flip(key, x))
  np.testing.assert_array_equal(y[mask], x[mask][:, :, ::-1])
  np.testing.assert_array_equal(y[~mask], x[~mask])


@pytest.mark.parametrize("padding", [1, 4])
def test_crop_matches_numpy(padding):
  x = images()
  key = jax.random.key(7)
  offsets = crop_offsets(key, B, padding)
  assert len(np.unique(np.asarray(offsets), axis=0)) > 1
  np.testing.assert_array_equal(crop(key, x, padding=padding),
                                numpy_crop(x, offsets, padding))


def test_crop_offset_range_covers_all_values():
  offsets = np.asarray(crop_offsets(jax.random.key(0), 4096, 4))
  assert set(np.unique(offsets)) == set(range(9))
  # Centre offset gives back the image.
  x = images(b=1)
  np.testing.assert_array_equal(numpy_crop(x, [[4, 4]], 4), x)


def test_augment_is_normalize_flip_crop():
  x = images()
  key = jax.random.key(11)
  k_crop, k_flip = jax.random.split(key)
  expected = numpy_crop(x, crop_offsets(k_crop, B, 4), 4)
  mask = np.asarray(flip_mask(k_flip, B))
  expected[mask] = expected[mask][:, :, ::-1]
  expected = (expected - np.array(MEAN)) / np.array(STD)
  np.testing.assert_allclose(augment(key, x, MEAN, STD, padding=4), expected,
                             rtol=1e-5, atol=1e-5)


def test_normalize_matches_numpy():
  x = images()
  expected = (x - np.array(MEAN)) / np.array(STD)
  np.testing.assert_allclose(normalize(x, MEAN, STD), expected, rtol=1e-6, atol=1e-6)
  u = (x * 255).astype(np.uint8)
  np.testing.assert_allclose(jax.jit(lambda u: aug.normalize(aug.to_float(u), MEAN, STD))(u),
                             (u / 255.0 - np.array(MEAN)) / np.array(STD),
                             rtol=1e-5, atol=1e-5)
  grey = images(c=1)
  chex.assert_shape(jax.eval_shape(aug.normalize, grey, (0.1307,), (0.3081,)), grey.shape)


def test_under_jit():
  x = images()
  key = jax.random.key(2)
  # Mean and std as traced arrays, not Python constants.
  jitted = jax.jit(aug.augment, static_argnames=("padding", "flip"))
  np.testing.assert_allclose(
      jitted(key, x, jnp.array(MEAN), jnp.array(STD), padding=4),
      augment(key, x, MEAN, STD, padding=4), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(jax.jit(aug.to_uint8)(jax.jit(aug.to_float)(
      jnp.full((2, 4, 4, 3), 77, jnp.uint8))), 77)
  # Batch 256 CIFAR-sized works under jit (the KD step's shape).
  big = jax.jit(lambda k, v: aug.augment(k, v, MEAN, STD, 4))(
      key, jnp.zeros((256, 32, 32, 3)))
  chex.assert_shape(big, (256, 32, 32, 3))
  chex.assert_tree_all_finite(big)


def test_augment_stripe_without_axis_is_augment():
  x = images(c=1)
  key = jax.random.key(7)

  @functools.partial(jax.jit, static_argnums=(2,))
  def both(key, x, padding):
    return (aug.augment_stripe(key, x, (0.3,), (0.4,), padding, None),
            aug.augment(key, x, jnp.asarray((0.3,)), jnp.asarray((0.4,)), padding))

  a, b = both(key, x, 1)
  chex.assert_equal_shape((a, x))
  np.testing.assert_array_equal(a, b)
  c, _ = both(jax.random.key(8), x, 1)
  assert not np.allclose(np.asarray(a), np.asarray(c))
  a0, b0 = both(key, x, 0)
  np.testing.assert_array_equal(a0, b0)


def stripe_results(num_devices):
  """augment_stripe under shard_map on `num_devices` devices, per STRIPE_CASES (one
  program for all the cases)."""
  def stripes(k, v):
    return tuple(aug.augment_stripe(k, v, MEAN, STD, p, parallel.AXIS, f)
                 for p, f in STRIPE_CASES)

  spec = parallel.P(parallel.AXIS)
  fn = parallel.shard(stripes, make_mesh(num_devices), in_specs=(parallel.P(), spec),
                      out_specs=(spec,) * len(STRIPE_CASES))
  key, x = jax.random.key(9), images()
  return dict(zip(STRIPE_CASES, map(np.asarray, compile_unoptimized(fn, key, x)(key, x))))


def test_augment_stripe_is_device_count_invariant():
  """On 1, 2, 4 and 8 devices augment_stripe draws the crops and flips `augment` draws for
  the global batch. The pixels are compared to a few ulp (rtol = atol = 1e-6, about 8 ulp
  of values of order 1), not bit for bit: each device count is its own compiled program
  (local batches of 16, 8, 4, 2 images) and XLA may round the normalisation differently in
  each (the 8-device program differed from the 1-device one by 1 ulp on an AMD EPYC; op
  by op, `augment` differs from the compiled programs by 1 ulp). A wrong crop offset or
  flip moves in a pixel of another value (the images are uniform in [0.1, 1): a
  normalised difference of order 0.1), far outside that tolerance."""
  key, x = jax.random.key(9), images()
  want = compile_unoptimized(
      lambda k, v: tuple(aug.augment(k, v, MEAN, STD, p, f) for p, f in STRIPE_CASES), key, x)
  one = stripe_results(1)
  for case, expected in zip(STRIPE_CASES, want(key, x)):
    np.testing.assert_allclose(one[case], expected, rtol=1e-6, atol=1e-6,
                               err_msg=f"1 device, (padding, flip)={case}")
  for n in DEVICE_COUNTS[1:]:
    for case, got in stripe_results(n).items():
      np.testing.assert_allclose(got, one[case], rtol=1e-6, atol=1e-6,
                                 err_msg=f"{n} devices, (padding, flip)={case}")
