"""The distillation state (fastdfkd_jax.distill.state): initialisation on the mesh."""

import jax
import numpy as np

from fastdfkd_jax.run import parallel
from fastdfkd_jax.training import train_state
from fastdfkd_jax.distill import pool as pool_lib, state as state_lib

from test_distill_builder import tiny_config, tiny_setup


def test_init_state_student_pool_and_student_variables():
  c = tiny_config()
  info, d, t, state = tiny_setup(c)
  assert isinstance(state.student, train_state.TrainState) and int(state.student.step) == 0
  slots = pool_lib.num_slots(c.pool.capacity, c.batch_size, c.epochs)
  assert state.pool.images.shape == (slots, c.batch_size) + tuple(info.image_shape)
  assert int(state.pool.filled) == int(state.pool.cursor) == 0
  variables = state_lib.student_variables(state)
  assert set(variables) == {"params", "batch_stats"}
  assert variables["params"] is state.student.params
  # Baselines keep no synthetic pool.
  c.kd.source = "noise"
  assert state_lib.init_state(d, c, info, t, jax.random.key(0)).pool is None


def test_put_pool_shards_rows_and_keeps_counters():
  mesh = parallel.make_mesh()
  n = parallel.num_shards(mesh)
  images = np.arange(3 * 2 * n * 4, dtype=np.uint8).reshape(3, 2 * n, 2, 2, 1)
  pool = state_lib.put_pool(images, 2, 1, mesh)
  np.testing.assert_array_equal(parallel.gather_to_host(pool.images), images)
  assert (int(pool.filled), int(pool.cursor)) == (2, 1)
