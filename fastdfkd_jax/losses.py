"""Knowledge-distillation losses (reference doc, section 3), pure functions.

Reductions over the batch accept `axis_name`: inside `shard_map` the batch
means are taken over the global batch, so any device count gives the same value.
The synthesis losses live in `fastdfkd_jax.synthesis.losses`.
"""

import jax
import jax.numpy as jnp

from fastdfkd_jax import parallel


def kl_per_sample(student_logits: jax.Array, teacher_logits: jax.Array,
                  temperature: float = 1.0) -> jax.Array:
  """sum_c p_t (log p_t - log p_s) at temperature T, per sample: (N,)."""
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, -1)
  log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, -1)
  return jnp.sum(jnp.exp(log_t) * (log_t - s), -1)


def kd_loss(student_logits, teacher_logits, temperature: float,
            axis_name: str | None = None) -> jax.Array:
  """KL(softmax(t/T) || softmax(s/T)) * T^2, batch mean (PyTorch 'batchmean')."""
  kl = kl_per_sample(student_logits, teacher_logits, temperature).mean()
  return parallel.pmean(kl, axis_name) * temperature ** 2


def l1_loss(student_logits, teacher_logits, axis_name: str | None = None) -> jax.Array:
  """mean |s - t| over the batch and classes (PyTorch `L1Loss()`; DFAD's criterion)."""
  diff = jnp.abs(student_logits.astype(jnp.float32) - teacher_logits.astype(jnp.float32))
  return parallel.pmean(diff.mean(), axis_name)


def kd_objective(student_logits, teacher_logits, loss: str, temperature: float,
                 axis_name: str | None = None) -> jax.Array:
  """The KD criterion `config.kd.loss`: 'kl' (`kd_loss` at T) or 'l1' (`l1_loss`)."""
  if loss == "l1":
    return l1_loss(student_logits, teacher_logits, axis_name)
  return kd_loss(student_logits, teacher_logits, temperature, axis_name)
