"""Where KD batches come from, decided in one place (`kind`).

  pool       synthetic images in the on-device pool (a pool method, pool.on_device);
  host_pool  synthetic images in a host-memory ring buffer (pool.on_device=False;
             pool.memmap: memory-mapped in WORKDIR/pool.npy), batches fed per step;
  generator  fresh samples of the generator (a generator-vs-student method: DAFL,
             ZSKT, DFQ, DFAD), no pool;
  noise      fresh uniform-noise images each step (kd.source=noise: the lower bound);
  data       a fixed set of real images (kd.source=real) or an exported transfer set
             (kd.source=dataset) on device;
  data_host  the same fixed set in host memory (pool.on_device=False).

The distiller's KD step, the step builder and the run's checkpoints all read the
kind from here.
"""

import dataclasses
import os

import ml_collections
import numpy as np

from fastdfkd_jax.distill import pool as pool_lib
from fastdfkd_jax.distill.state import put_pool

KINDS = ("pool", "host_pool", "generator", "noise", "data", "data_host")
SYNTHETIC = ("pool", "host_pool", "generator")


def kind(config: ml_collections.ConfigDict, uses_pool: bool) -> str:
  """The KD source of a config whose method keeps a pool (`uses_pool`) or not."""
  source = config.kd.source
  if source == "noise":
    return "noise"
  if source == "synthetic":
    if not uses_pool:
      return "generator"
    return "pool" if config.pool.on_device else "host_pool"
  return "data" if config.pool.on_device else "data_host"   # 'real' | 'dataset'


@dataclasses.dataclass
class KDSource:
  """The run's KD source and the pool it needs besides the state's on-device pool:
  `data_pool` (kind 'data') or `host_pool` ('host_pool', 'data_host')."""
  kind: str
  data_pool: pool_lib.Pool | None = None
  host_pool: pool_lib.HostPool | None = None

  @property
  def synthetic(self) -> bool:
    return self.kind in SYNTHETIC

  @property
  def on_host(self) -> bool:
    """KD batches are sampled on the host and fed one step at a time."""
    return self.kind in ("host_pool", "data_host")

  def saved_state(self) -> dict:
    """What the run's checkpoints keep of the host pool (synthetic images only)."""
    return self.host_pool.state() if self.kind == "host_pool" else {}

  def load_saved(self, saved: dict) -> None:
    if self.kind == "host_pool":
      self.host_pool.load(saved)


def build(source_kind: str, config: ml_collections.ConfigDict, image_shape, mesh,
          workdir: str, images: np.ndarray | None = None) -> KDSource:
  """The KD source of `source_kind`; `images`: the fixed set of the 'data' kinds."""
  if source_kind in ("data", "data_host"):
    fixed = pool_lib.fixed_set(images, config.batch_size, config.seed)
    if source_kind == "data":
      return KDSource(source_kind, data_pool=put_pool(fixed, len(fixed), 0, mesh))
    return KDSource(source_kind, host_pool=pool_lib.HostPool.of(fixed))
  if source_kind == "host_pool":
    path = os.path.join(workdir, "pool.npy") if config.pool.memmap else None
    return KDSource(source_kind, host_pool=pool_lib.HostPool(
        pool_lib.config_slots(config), config.batch_size, tuple(image_shape), path))
  return KDSource(source_kind)
