"""The distillation state (fastdfkd_jax.distill.state): initialisation on the mesh."""

import jax
import numpy as np
import pytest

from fastdfkd_jax import data, models
from fastdfkd_jax.distill import pool as pool_lib, sources, state as state_lib, steps
from fastdfkd_jax.models import util as model_util
from fastdfkd_jax.run import parallel
from fastdfkd_jax.training import train_state

from conftest import TEACHER_ARCH, tiny_distill


@pytest.fixture(scope="module")
def setup(mesh1):
  """The suite's tiny digits config with the default pool (capacity 0: one slot per
  synthesis call of the run), its teacher variables (random) on one device."""
  c = tiny_distill("", **{"pool.capacity": 0})
  info = data.get_info("digits")
  t = parallel.put_replicated(model_util.init_variables(
      models.get_model(TEACHER_ARCH, info.num_classes), jax.random.key(1),
      info.image_shape), mesh1)
  return c, info, t


def _distiller(c, info, mesh, kind):
  return steps.build(c, info, TEACHER_ARCH, mesh, kind, "float32")


def test_init_state_student_pool_and_student_variables(setup, mesh1):
  c, info, t = setup
  kind = sources.kind(c, uses_pool=True)
  assert kind == "pool"
  d = _distiller(c, info, mesh1, kind)
  state = state_lib.init_state(d, c, info, t, jax.random.key(0))
  assert isinstance(state.student, train_state.TrainState) and int(state.student.step) == 0
  slots = pool_lib.num_slots(c.pool.capacity, c.batch_size, c.epochs)
  assert slots == pool_lib.config_slots(c) == c.epochs
  assert state.pool.images.shape == (slots, c.batch_size) + tuple(info.image_shape)
  assert int(state.pool.filled) == int(state.pool.cursor) == 0
  assert not np.asarray(state.pool.images).any()
  variables = state_lib.student_variables(state)
  assert set(variables) == {"params", "batch_stats"}
  assert variables["params"] is state.student.params
  # KD sources without an on-device pool (here noise and a host pool) keep none.
  for other in ("noise", "host_pool"):
    d = _distiller(c, info, mesh1, other)
    assert state_lib.init_state(d, c, info, t, jax.random.key(0)).pool is None, other


def test_put_pool_shards_rows_and_keeps_counters(mesh8):
  n = parallel.num_shards(mesh8)
  assert n == 8
  images = np.arange(3 * 2 * n * 4, dtype=np.uint8).reshape(3, 2 * n, 2, 2, 1)
  pool = state_lib.put_pool(images, 2, 1, mesh8)
  np.testing.assert_array_equal(parallel.gather_to_host(pool.images), images)
  # Rows (axis 1) are split over the devices: each holds 2 rows of every slot.
  shards = pool.images.addressable_shards
  assert len(shards) == n and {s.data.shape for s in shards} == {(3, 2, 2, 2, 1)}
  assert (int(pool.filled), int(pool.cursor)) == (2, 1)
