"""The synthetic pool: a fixed-capacity ring buffer of uint8 images.

The release writes every synthesized batch to disk as PNGs and rebuilds a
DataLoader each epoch; here the pool stays on device. Layout: `images` is
(slots, B, H, W, C) uint8, one slot per synthesis call of B images; inside
`shard_map` each device holds its stripe (slots, B/n, H, W, C) of every slot.

Sampling is device-count invariant: for KD position j of a global batch of n,
the slot is uniform over the filled slots and the row is drawn from the rows
of the synthesis batch that "line up" with j (rows [j*B/n, (j+1)*B/n) when
n <= B). Rows of a synthesis batch are exchangeable (i.i.d. z and targets), so
this samples the pool uniformly per position while every device reads only
its own stripe: no cross-device gather, and 1 or 8 devices draw the same batch.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fastdfkd_jax.run import parallel


@struct.dataclass
class Pool:
  images: jax.Array   # (slots, B_local, H, W, C) uint8
  filled: jax.Array   # int32: slots holding data
  cursor: jax.Array   # int32: next slot to write


def num_slots(capacity_images: int, synth_batch: int, calls: int) -> int:
  """Slots for a capacity in images (0: one slot per synthesis call of the run's
  `calls`, i.e. keep everything)."""
  if capacity_images <= 0:
    return calls
  return max(1, -(-capacity_images // synth_batch))


def config_slots(config) -> int:
  """The pool slots of a run: pool.capacity, or every call of epochs x calls_per_epoch."""
  return num_slots(config.pool.capacity, config.batch_size,
                   config.epochs * config.synth.calls_per_epoch)


def add(pool: Pool, batch_uint8: jax.Array) -> Pool:
  """Writes one synthesis batch (B_local, H, W, C) into the next slot (ring)."""
  slots = pool.images.shape[0]
  images = jax.lax.dynamic_update_index_in_dim(pool.images, batch_uint8, pool.cursor, 0)
  return Pool(images=images, filled=jnp.minimum(pool.filled + 1, slots),
              cursor=(pool.cursor + 1) % slots)


def fixed_set(images: np.ndarray, batch: int, seed: int) -> np.ndarray:
  """A full pool (slots, batch, H, W, C) uint8 of a fixed image set, e.g. the real
  training set for the KD-on-real-data upper bound: shuffled with `seed`, the last
  N mod batch images dropped. Wrap it with `state.put_pool` (device) or `HostPool.of`."""
  slots = len(images) // batch
  if slots == 0:
    raise ValueError(f"{len(images)} images cannot fill one pool slot of {batch}")
  order = np.random.default_rng(seed).permutation(len(images))[:slots * batch]
  return np.asarray(images)[order].reshape((slots, batch) + images.shape[1:])


def sample_indices(key: jax.Array, n: int, synth_batch: int, filled) -> tuple[jax.Array, jax.Array]:
  """(slot, row) of each of the n positions of a *global* sample, each (n,)."""
  if n <= synth_batch:
    if synth_batch % n:
      raise ValueError(f"KD batch {n} must divide the synthesis batch {synth_batch}")
    span = synth_batch // n
  else:
    if n % synth_batch:
      raise ValueError(f"KD batch {n} must be a multiple of the synthesis batch {synth_batch}")
    span = 1
  k_slot, k_row = jax.random.split(key)
  slot = jax.random.randint(k_slot, (n,), 0, jnp.maximum(filled, 1))
  base = (jnp.arange(n) * synth_batch) // n
  row = base + jax.random.randint(k_row, (n,), 0, span)
  return slot, row


def sample(pool: Pool, key: jax.Array, n: int, axis_name: str | None = None) -> jax.Array:
  """Draws n (global) images; returns this device's stripe (n_local, H, W, C) uint8.

  Requires at least one filled slot (the caller adds before sampling).
  """
  devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
  local_rows = pool.images.shape[1]
  slot, row = sample_indices(key, n, local_rows * devices, pool.filled)
  if axis_name is not None:
    slot = parallel.local_stripe(slot, axis_name)
    row = parallel.local_stripe(row, axis_name) - jax.lax.axis_index(axis_name) * local_rows
  return pool.images[slot, row]


class HostPool:
  """The same ring buffer in host memory, for pools that do not fit on device.

  Holds the global (slots, B, H, W, C) array on the host, or with `path` in a
  memory-mapped `.npy` file there (pool.memmap: a 224 px pool larger than host
  memory; the OS pages it); `sample` returns the global batch as numpy (the caller
  shards it with `parallel.put_batch`). A memory-mapped pool is referenced from the
  checkpoint, not copied into it: `state()` holds only the counters, and a resumed
  run reopens the file (slots written after that checkpoint lie beyond `filled`, or,
  once the ring has wrapped, hold newer images than the checkpoint's).
  """

  def __init__(self, slots: int, batch: int, image_shape: tuple[int, ...],
               path: str | None = None):
    shape = (slots, batch) + tuple(image_shape)
    self.path = path
    if path is None:
      self.images = np.zeros(shape, np.uint8)
    else:
      reuse = os.path.exists(path) and np.load(path, mmap_mode="r").shape == shape
      self.images = np.lib.format.open_memmap(path, mode="r+" if reuse else "w+",
                                              dtype=np.uint8, shape=shape)
    self.filled = 0
    self.cursor = 0

  @classmethod
  def of(cls, images: np.ndarray) -> "HostPool":
    """A full host pool holding `images` (slots, B, H, W, C) uint8."""
    pool = cls(0, images.shape[1], images.shape[2:])
    pool.images, pool.filled = images, len(images)
    return pool

  def add(self, batch_uint8: np.ndarray) -> None:
    self.images[self.cursor] = np.asarray(batch_uint8)
    self.cursor = (self.cursor + 1) % len(self.images)
    self.filled = min(self.filled + 1, len(self.images))

  def sample(self, key: jax.Array, n: int) -> np.ndarray:
    slot, row = jax.device_get(sample_indices(key, n, self.images.shape[1], self.filled))
    return self.images[slot, row]

  def state(self) -> dict[str, Any]:
    """What the checkpoint keeps: the counters, and the images unless memory-mapped."""
    counters = dict(filled=np.array(self.filled, np.int32),
                    cursor=np.array(self.cursor, np.int32))
    if self.path is not None:
      self.images.flush()
      return counters
    return dict(counters, images=self.images)

  def load(self, state: dict[str, Any]) -> None:
    if self.path is None:
      self.images = np.asarray(state["images"]).copy()
    self.filled, self.cursor = int(state["filled"]), int(state["cursor"])
