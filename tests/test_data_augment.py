"""Tests of fastdfkd_jax.data.augment: shapes, determinism, numpy references, device counts.

Run as a script (`python tests/test_data_augment.py OUT.npz`) it is the
subprocess worker of the multi-device test: the device count must be fixed
(XLA_FLAGS=--xla_force_host_platform_device_count=8) before jax is imported.
"""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax.data import augment as aug

from conftest import REPO
DEVICE_COUNTS = (1, 2, 4, 8)
# (padding, flip) settings the multi-device test covers.
STRIPE_CASES = ((4, True), (1, True), (0, True), (4, False))

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


def images(b=8, h=12, w=10, c=3, seed=0):
  # Positive everywhere so that zero padding is distinguishable.
  return jax.random.uniform(jax.random.key(seed), (b, h, w, c), jnp.float32,
                            0.1, 1.0)


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
  for fn in (lambda: aug.random_crop(key, x, 4), lambda: aug.random_flip(key, x),
             lambda: aug.normalize(x, MEAN, STD),
             lambda: aug.augment(key, x, MEAN, STD, 4)):
    y = fn()
    chex.assert_shape(y, x.shape)
    chex.assert_type(y, jnp.float32)
  offsets = aug.crop_offsets(key, 8, 4)
  chex.assert_shape(offsets, (8, 2))
  chex.assert_type(offsets, jnp.int32)
  assert int(offsets.min()) >= 0 and int(offsets.max()) <= 8
  mask = aug.flip_mask(key, 8)
  chex.assert_shape(mask, (8,))
  assert mask.dtype == jnp.bool_


def test_uint8_roundtrip():
  u = jnp.arange(256, dtype=jnp.uint8).reshape(1, 16, 16, 1)
  f = aug.to_float(u)
  chex.assert_type(f, jnp.float32)
  chex.assert_shape(f, u.shape)
  assert float(f.min()) == 0.0 and float(f.max()) == 1.0
  back = aug.to_uint8(f)
  chex.assert_type(back, jnp.uint8)
  np.testing.assert_array_equal(back, u)
  np.testing.assert_array_equal(
      aug.to_uint8(jnp.array([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 1.0, 2.0])),
      np.array([0, 0, 0, 1, 255, 255], np.uint8))  # Round, clip.


def test_deterministic_per_key():
  x = images(b=32)
  a = aug.augment(jax.random.key(3), x, MEAN, STD, 4)
  b = aug.augment(jax.random.key(3), x, MEAN, STD, 4)
  c = aug.augment(jax.random.key(4), x, MEAN, STD, 4)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_identity_without_crop_or_flip():
  x = images()
  y = aug.augment(jax.random.key(0), x, (0.0,) * 3, (1.0,) * 3, padding=0,
                  flip=False)
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(aug.random_crop(jax.random.key(0), x, 0), x)


def test_flip_matches_mask():
  x = images(b=32)
  key = jax.random.key(5)
  mask = np.asarray(aug.flip_mask(key, 32))
  assert 0 < mask.sum() < 32
  y = np.asarray(aug.random_flip(key, x))
  np.testing.assert_array_equal(y[mask], jnp.flip(x[mask], axis=2))
  np.testing.assert_array_equal(y[~mask], x[~mask])


@pytest.mark.parametrize("padding", [1, 4])
def test_crop_matches_numpy(padding):
  x = images(b=16)
  key = jax.random.key(7)
  offsets = aug.crop_offsets(key, 16, padding)
  assert len(np.unique(np.asarray(offsets), axis=0)) > 1
  np.testing.assert_array_equal(aug.random_crop(key, x, padding),
                                numpy_crop(x, offsets, padding))


def test_crop_offset_range_covers_all_values():
  offsets = np.asarray(aug.crop_offsets(jax.random.key(0), 4096, 4))
  assert set(np.unique(offsets)) == set(range(9))
  # Centre offset gives back the image.
  x = images(b=1)
  np.testing.assert_array_equal(numpy_crop(x, [[4, 4]], 4), x)


def test_augment_is_normalize_flip_crop():
  x = images(b=16)
  key = jax.random.key(11)
  k_crop, k_flip = jax.random.split(key)
  expected = numpy_crop(x, aug.crop_offsets(k_crop, 16, 4), 4)
  mask = np.asarray(aug.flip_mask(k_flip, 16))
  expected[mask] = expected[mask][:, :, ::-1]
  expected = (expected - np.array(MEAN)) / np.array(STD)
  np.testing.assert_allclose(aug.augment(key, x, MEAN, STD, 4), expected,
                             rtol=1e-5, atol=1e-5)


def test_normalize_matches_numpy():
  x = images()
  expected = (np.asarray(x) - np.array(MEAN)) / np.array(STD)
  np.testing.assert_allclose(aug.normalize(x, MEAN, STD), expected, rtol=1e-6,
                             atol=1e-6)
  u = (np.asarray(x) * 255).astype(np.uint8)
  np.testing.assert_allclose(aug.normalize(aug.to_float(u), MEAN, STD),
                             (u / 255.0 - np.array(MEAN)) / np.array(STD),
                             rtol=1e-5, atol=1e-5)
  grey = images(c=1)
  chex.assert_shape(aug.normalize(grey, (0.1307,), (0.3081,)), grey.shape)


def test_under_jit():
  x = images(b=16)
  key = jax.random.key(2)
  jitted = jax.jit(aug.augment, static_argnames=("padding", "flip"))
  np.testing.assert_allclose(
      jitted(key, x, jnp.array(MEAN), jnp.array(STD), padding=4),
      aug.augment(key, x, MEAN, STD, 4), rtol=1e-6, atol=1e-6)
  for fn in (jax.jit(lambda k, v: aug.random_crop(k, v, 2)),
             jax.jit(aug.random_flip)):
    y = fn(key, x)
    chex.assert_shape(y, x.shape)
  np.testing.assert_array_equal(jax.jit(aug.to_uint8)(jax.jit(aug.to_float)(
      jnp.full((2, 4, 4, 3), 77, jnp.uint8))), 77)
  # Batch 256 CIFAR-sized works under jit (the KD step's shape).
  big = jax.jit(lambda k, v: aug.augment(k, v, MEAN, STD, 4))(
      key, jnp.zeros((256, 32, 32, 3)))
  chex.assert_shape(big, (256, 32, 32, 3))
  chex.assert_tree_all_finite(big)


def test_augment_stripe_without_axis_is_augment():
  x = images(b=6, h=8, w=8, c=1)
  key = jax.random.key(7)
  a = aug.augment_stripe(key, x, (0.3,), (0.4,), 1, None)
  chex.assert_equal_shape((a, x))
  np.testing.assert_array_equal(a, aug.augment(key, x, jnp.asarray((0.3,)),
                                               jnp.asarray((0.4,)), 1))
  chex.assert_trees_all_equal(a, aug.augment_stripe(key, x, (0.3,), (0.4,), 1, None))
  c = aug.augment_stripe(jax.random.key(8), x, (0.3,), (0.4,), 1, None)
  assert not np.allclose(np.asarray(a), np.asarray(c))
  np.testing.assert_array_equal(aug.augment_stripe(key, x, (0.3,), (0.4,), 0, None),
                                aug.augment(key, x, (0.3,), (0.4,), 0))


def stripe_results(num_devices):
  """augment_stripe under shard_map on `num_devices` devices, per STRIPE_CASES."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from fastdfkd_jax.run import parallel  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  x = images(b=16)
  out = {}
  for padding, flip in STRIPE_CASES:
    fn = parallel.shard(
        lambda k, v, p=padding, f=flip: aug.augment_stripe(k, v, MEAN, STD, p, parallel.AXIS, f),
        mesh, in_specs=(P(), P(parallel.AXIS)), out_specs=P(parallel.AXIS))
    out[f"pad{padding}_flip{flip}"] = np.asarray(jax.jit(fn)(jax.random.key(9), x))
  return out


@pytest.mark.slow  # 1, 2, 4 and 8 forced CPU devices in a subprocess
def test_augment_stripe_is_device_count_invariant(tmp_path):
  # 1 device in this process; 1, 2, 4 and 8 forced CPU devices in a subprocess.
  x = images(b=16)
  one = stripe_results(1)
  for padding, flip in STRIPE_CASES:
    np.testing.assert_array_equal(
        one[f"pad{padding}_flip{flip}"],
        aug.augment(jax.random.key(9), x, MEAN, STD, padding, flip))
  out = tmp_path / "stripes.npz"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(out)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with np.load(out) as got:
    assert len(got.files) == len(DEVICE_COUNTS) * len(STRIPE_CASES)
    for name in got.files:
      np.testing.assert_array_equal(got[name], one[name.split("/")[1]], err_msg=name)


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  np.savez(sys.argv[1], **{f"d{n}/{k}": v for n in DEVICE_COUNTS
                           for k, v in stripe_results(n).items()})
