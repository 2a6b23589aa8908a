"""The resumable state of a distillation run and its initialisation on the mesh."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fastdfkd_jax import models
from fastdfkd_jax.run import parallel
from fastdfkd_jax.training import train_state
from fastdfkd_jax.distill import pool as pool_lib
from fastdfkd_jax.models import util as model_util


@struct.dataclass
class DistillState:
  """The whole resumable state of a distillation run (pool sharded, rest replicated)."""
  synth: Any                 # the synthesis method's state pytree
  student: train_state.TrainState
  pool: pool_lib.Pool | None


def student_variables(state: DistillState) -> dict:
  """The student's {'params', 'batch_stats'} (what evaluation and checkpoints take)."""
  return state.student.variables


def put_pool(images: np.ndarray, filled: int, cursor: int, mesh) -> pool_lib.Pool:
  """A host (slots, B, H, W, C) uint8 array as a Pool on the mesh: rows sharded, counters
  replicated."""
  return pool_lib.Pool(images=parallel.put_batch(np.asarray(images), mesh, axis=1),
                       filled=parallel.put_replicated(jnp.int32(filled), mesh),
                       cursor=parallel.put_replicated(jnp.int32(cursor), mesh))


def init_state(distiller, config, info, teacher_vars, key) -> DistillState:
  """Fresh replicated state (and an empty sharded pool) on the distiller's mesh."""
  student_model = models.get_model(config.student.arch, info.num_classes)

  def fresh(key, teacher_vars):
    k_gen, k_student = jax.random.split(key)
    student_vars = model_util.init_variables(student_model, k_student, info.image_shape)
    return DistillState(synth=distiller.synth.init(k_gen, teacher_vars),
                        student=train_state.TrainState.create(student_vars, distiller.tx),
                        pool=None)

  mesh = distiller.mesh
  # One program for the whole fresh state (generator, student, optimizer states, BN
  # momentum): run eagerly, each of its operations would compile on its own.
  state = parallel.put_replicated(model_util.run_init(fresh, key, teacher_vars), mesh)
  if distiller.on_device_pool:
    slots = pool_lib.config_slots(config)
    empty = np.zeros((slots, config.batch_size) + tuple(info.image_shape), np.uint8)
    state = state.replace(pool=put_pool(empty, 0, 0, mesh))
  return state
