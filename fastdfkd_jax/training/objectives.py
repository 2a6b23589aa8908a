"""Knowledge-distillation losses (reference doc, section 3), pure functions.

The KD losses take logits (N, classes) or per-pixel logits (N, H, W, classes) (then
the means run over pixels too: pixel-wise KD). Reductions over the batch accept
`axis_name`: inside `shard_map` the batch means are taken over the global batch, so
any device count gives the same value.
The synthesis losses live in `fastdfkd_jax.synthesis.losses`.
"""

import jax
import jax.numpy as jnp
import optax

from fastdfkd_jax.run import parallel
from fastdfkd_jax.data import segmentation


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


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array,
                        axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
  """Segmentation: (mean cross-entropy, pixel accuracy) over the labelled pixels.

  Args:
    logits: (N, H, W, classes).
    labels: integer (N, H, W); `segmentation.IGNORE_INDEX` (255) pixels are left out.
    axis_name: inside `shard_map`, the batch axis: sums and pixel counts are
      taken over the global batch (a device's share of labelled pixels varies).
  """
  valid = labels != segmentation.IGNORE_INDEX
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(valid, labels, 0).astype(jnp.int32))
  sums = (jnp.where(valid, ce, 0.0).sum(),
          jnp.where(valid, logits.argmax(-1) == labels, False).sum().astype(jnp.float32),
          valid.sum().astype(jnp.float32))
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  ce_sum, correct, count = sums
  count = jnp.maximum(count, 1.0)
  return ce_sum / count, correct / count
