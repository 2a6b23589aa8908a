"""The state of a supervised or distilled classifier: one type for teacher and student."""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
  """Params, BN running statistics, optimizer state and step count (replicated)."""
  params: Any
  batch_stats: Any
  opt_state: Any
  step: jax.Array

  @classmethod
  def create(cls, variables: dict, tx: optax.GradientTransformation) -> "TrainState":
    """Step 0 of `init_variables` output (`batch_stats` empty for models without BN)."""
    return cls(params=variables["params"], batch_stats=variables.get("batch_stats", {}),
               opt_state=tx.init(variables["params"]), step=jnp.int32(0))

  @property
  def variables(self) -> dict:
    """{'params', 'batch_stats'}: what `model.apply` and the checkpoints take."""
    return {"params": self.params, "batch_stats": self.batch_stats}
