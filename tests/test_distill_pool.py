"""Tests of the synthetic pool (fastdfkd_jax.distill.pool): ring buffer and sampling."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax.config import schema
from fastdfkd_jax.distill import pool as pool_lib

SHAPE = (2, 2, 1)


def empty_pool(slots, batch, image_shape):
  """An empty unsharded pool of `slots` x `batch` images."""
  return pool_lib.Pool(images=jnp.zeros((slots, batch) + tuple(image_shape), jnp.uint8),
                       filled=jnp.int32(0), cursor=jnp.int32(0))


def const_batch(value, b=8):
  return jnp.full((b,) + SHAPE, value, jnp.uint8)


def test_init_empty():
  p = empty_pool(3, 8, SHAPE)
  chex.assert_shape(p.images, (3, 8) + SHAPE)
  assert p.images.dtype == jnp.uint8
  assert int(p.filled) == 0 and int(p.cursor) == 0


def test_add_wraps_around_the_ring():
  p = empty_pool(3, 8, SHAPE)
  expected_filled = [1, 2, 3, 3, 3]
  expected_cursor = [1, 2, 0, 1, 2]
  for i in range(5):
    p = pool_lib.add(p, const_batch(10 + i))
    assert int(p.filled) == expected_filled[i]
    assert int(p.cursor) == expected_cursor[i]
  # Slots now hold batches 3, 4, 2 (batches 0 and 1 were overwritten).
  np.testing.assert_array_equal(np.asarray(p.images)[:, 0, 0, 0, 0], [13, 14, 12])


def test_add_jits():
  add = jax.jit(pool_lib.add)
  p = empty_pool(2, 8, SHAPE)
  for i in range(3):
    p = add(p, const_batch(i + 1))
  assert int(p.filled) == 2 and int(p.cursor) == 1
  np.testing.assert_array_equal(np.asarray(p.images)[:, 0, 0, 0, 0], [3, 2])


def test_sample_only_returns_filled_slots():
  slots, b = 5, 8
  p = empty_pool(slots, b, SHAPE)
  p = pool_lib.add(p, const_batch(7, b))
  p = pool_lib.add(p, const_batch(9, b))   # slots 2..4 stay zero (unfilled)
  sample = jax.jit(pool_lib.sample, static_argnums=(2,))
  seen = set()
  for seed in range(10):
    x = sample(p, jax.random.key(seed), 8)
    chex.assert_shape(x, (8,) + SHAPE)
    assert x.dtype == jnp.uint8
    values = np.unique(np.asarray(x))
    assert set(values.tolist()) <= {7, 9}, values
    seen |= set(values.tolist())
  assert seen == {7, 9}  # both filled slots get drawn


def test_sample_rows_come_from_their_images():
  """Each row value identifies (slot, row); sampled images are whole pool images."""
  slots, b = 3, 8
  p = empty_pool(slots, b, SHAPE)
  for s in range(slots):
    rows = jnp.arange(b, dtype=jnp.uint8) + 10 * (s + 1)
    p = pool_lib.add(p, jnp.broadcast_to(rows[:, None, None, None], (b,) + SHAPE))
  x = np.asarray(pool_lib.sample(p, jax.random.key(3), 4))
  for img in x:
    assert np.all(img == img.flat[0])
  slot, row = pool_lib.sample_indices(jax.random.key(3), 4, b, p.filled)
  np.testing.assert_array_equal(x[:, 0, 0, 0], 10 * (np.asarray(slot) + 1) + np.asarray(row))


@pytest.mark.parametrize("n,synth_batch", [(4, 16), (8, 8), (16, 4)])
def test_sample_indices_stripes(n, synth_batch):
  filled = 3
  for seed in range(5):
    slot, row = jax.device_get(pool_lib.sample_indices(jax.random.key(seed), n,
                                                       synth_batch, filled))
    chex.assert_shape((slot, row), (n,))
    assert np.all((slot >= 0) & (slot < filled))
    j = np.arange(n)
    if n <= synth_batch:
      span = synth_batch // n
      lo = j * span
      assert np.all((row >= lo) & (row < lo + span)), (row, lo)
    else:
      np.testing.assert_array_equal(row, (j * synth_batch) // n)
    assert np.all((row >= 0) & (row < synth_batch))


def test_sample_indices_uses_whole_stripe():
  rows = set()
  for seed in range(30):
    _, row = pool_lib.sample_indices(jax.random.key(seed), 2, 8, 1)
    rows.add(int(row[0]))
  assert rows == {0, 1, 2, 3}


def test_sample_indices_bad_sizes():
  with pytest.raises(ValueError, match="divide"):
    pool_lib.sample_indices(jax.random.key(0), 3, 8, 1)
  with pytest.raises(ValueError, match="multiple"):
    pool_lib.sample_indices(jax.random.key(0), 12, 8, 1)


def test_sample_deterministic_per_key():
  p = empty_pool(4, 8, SHAPE)
  rng = np.random.default_rng(0)
  for _ in range(4):
    p = pool_lib.add(p, jnp.asarray(rng.integers(0, 256, (8,) + SHAPE), jnp.uint8))
  a = pool_lib.sample(p, jax.random.key(1), 8)
  b = pool_lib.sample(p, jax.random.key(1), 8)
  c = pool_lib.sample(p, jax.random.key(2), 8)
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_num_slots():
  assert pool_lib.num_slots(0, 64, 40) == 40
  assert pool_lib.num_slots(1000, 64, 40) == 16
  assert pool_lib.num_slots(64, 64, 40) == 1
  assert pool_lib.num_slots(1, 64, 40) == 1


def test_host_pool_equals_device_pool():
  slots, b = 3, 8
  rng = np.random.default_rng(0)
  dev = empty_pool(slots, b, SHAPE)
  host = pool_lib.HostPool(slots, b, SHAPE)
  for _ in range(4):  # wraps once
    batch = rng.integers(0, 256, (b,) + SHAPE).astype(np.uint8)
    dev = pool_lib.add(dev, jnp.asarray(batch))
    host.add(batch)
    assert host.filled == int(dev.filled) and host.cursor == int(dev.cursor)
  np.testing.assert_array_equal(host.images, np.asarray(dev.images))
  for seed in range(3):
    key = jax.random.key(seed)
    np.testing.assert_array_equal(host.sample(key, 8), np.asarray(pool_lib.sample(dev, key, 8)))
    np.testing.assert_array_equal(host.sample(key, 16),
                                  np.asarray(pool_lib.sample(dev, key, 16)))


def test_host_pool_state_roundtrip():
  host = pool_lib.HostPool(2, 4, SHAPE)
  host.add(np.full((4,) + SHAPE, 5, np.uint8))
  other = pool_lib.HostPool(2, 4, SHAPE)
  other.load(host.state())
  assert other.filled == 1 and other.cursor == 1
  np.testing.assert_array_equal(other.images, host.images)
  key = jax.random.key(0)
  np.testing.assert_array_equal(other.sample(key, 4), host.sample(key, 4))


def test_fixed_set_shuffles_and_drops_the_remainder():
  images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * np.ones((1,) + SHAPE, np.uint8)
  full = pool_lib.fixed_set(images, 4, seed=0)
  assert full.shape == (2, 4) + SHAPE
  firsts = full[:, :, 0, 0, 0].ravel()
  assert len(set(firsts)) == 8 and set(firsts) <= set(range(10))   # 2 dropped, none twice
  np.testing.assert_array_equal(full, pool_lib.fixed_set(images, 4, seed=0))
  assert not np.array_equal(full, pool_lib.fixed_set(images, 4, seed=1))
  with pytest.raises(ValueError, match="cannot fill one pool slot"):
    pool_lib.fixed_set(images, 16, seed=0)


def test_host_pool_of_a_fixed_set_samples_only_it():
  full = np.random.default_rng(0).integers(0, 256, (3, 4) + SHAPE).astype(np.uint8)
  host = pool_lib.HostPool.of(full)
  assert host.filled == 3
  batch = host.sample(jax.random.key(0), 4)
  flat = full.reshape((12,) + SHAPE)
  for image in batch:
    assert any(np.array_equal(image, f) for f in flat)


def test_memory_mapped_host_pool_samples_as_the_in_memory_one_and_reopens(tmp_path):
  """pool.memmap: the same ring and draws as the in-memory pool; the checkpoint keeps
  only the counters and a resumed pool reopens the file."""
  path = str(tmp_path / "pool.npy")
  mapped, plain = pool_lib.HostPool(3, 8, SHAPE, path), pool_lib.HostPool(3, 8, SHAPE)
  rng = np.random.default_rng(0)
  for _ in range(4):   # wraps once
    batch = rng.integers(0, 256, (8,) + SHAPE).astype(np.uint8)
    mapped.add(batch)
    plain.add(batch)
  assert isinstance(mapped.images, np.memmap)
  np.testing.assert_array_equal(mapped.images, plain.images)
  for seed in range(3):
    key = jax.random.key(seed)
    np.testing.assert_array_equal(mapped.sample(key, 8), plain.sample(key, 8))
  state = mapped.state()
  assert sorted(state) == ["cursor", "filled"]
  resumed = pool_lib.HostPool(3, 8, SHAPE, path)
  resumed.load(state)
  assert (resumed.filled, resumed.cursor) == (3, 1)
  np.testing.assert_array_equal(resumed.sample(jax.random.key(0), 16),
                                plain.sample(jax.random.key(0), 16))
  fresh = pool_lib.HostPool(2, 8, SHAPE, path)   # another shape: a new, empty file
  assert fresh.images.shape == (2, 8) + SHAPE and not fresh.images.any()


def test_config_slots_count_every_call():
  c = schema.base_config()
  c.epochs, c.batch_size, c.synth.calls_per_epoch = 4, 8, 10
  assert pool_lib.config_slots(c) == 40
  c.pool.capacity = 64
  assert pool_lib.config_slots(c) == 8
