"""Synthesis losses (reference doc, section 3), pure functions.

The DeepInversion feature prior on the teacher's BN inputs (with the release's
momentum buffers), the one-hot cross-entropy against drawn targets, and the
adversarial term gated on teacher/student agreement. All batch reductions accept
`axis_name`: inside `shard_map` the means are taken over the global batch, so
any device count gives the same value.
"""

import jax
import jax.numpy as jnp

from fastdfkd_jax import losses as kd_losses
from fastdfkd_jax import parallel
from fastdfkd_jax.models.layers import BN_STATS as BN_STATS_COLLECTION  # noqa: F401  (re-export)


def adversarial_loss(student_logits, teacher_logits,
                     axis_name: str | None = None) -> jax.Array:
  """-mean_n KL(t_n || s_n) [argmax s_n == argmax t_n] at T = 1 (section 3)."""
  agree = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).astype(jnp.float32)
  per = kd_losses.kl_per_sample(student_logits, teacher_logits) * agree
  return -parallel.pmean(per.mean(), axis_name)


def one_hot_loss(teacher_logits, targets, axis_name: str | None = None) -> jax.Array:
  """Cross-entropy of the teacher logits against the drawn targets."""
  logp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), -1)
  ce = -jnp.take_along_axis(logp, targets[:, None], -1).mean()
  return parallel.pmean(ce, axis_name)


def bn_prior_loss(bn_stats, momentum_stats, has_momentum, bn_mmt: float):
  """DeepInversion feature prior summed over BN layers, with momentum mixing.

  Args:
    bn_stats: the teacher's sown `BN_STATS_COLLECTION`; each leaf dict holds the
      layer input's batch `mean`, biased `var` (global over devices) and the
      layer's `running_mean`, `running_var`, all (C,).
    momentum_stats: matching list of {'mean', 'var'} momentum buffers.
    has_momentum: bool scalar; False before the first buffer update (then the
      plain batch statistics are used).
    bn_mmt: m in (1-m) * batch + m * buffer.

  Returns:
    (loss scalar, list of this call's {'mean', 'var'} batch statistics).
  """
  layers = flatten_bn_stats(bn_stats)
  total = 0.0
  for layer, buf in zip(layers, momentum_stats):
    mean, var = layer["mean"], layer["var"]
    mixed_mean = jnp.where(has_momentum, (1 - bn_mmt) * mean + bn_mmt * buf["mean"], mean)
    mixed_var = jnp.where(has_momentum, (1 - bn_mmt) * var + bn_mmt * buf["var"], var)
    total = total + jnp.linalg.norm(layer["running_var"] - mixed_var) \
                  + jnp.linalg.norm(layer["running_mean"] - mixed_mean)
  last = [dict(mean=l["mean"], var=l["var"]) for l in layers]
  return total, last


def flatten_bn_stats(bn_stats) -> list[dict]:
  """The sown per-layer dicts in a fixed (tree-flatten) order."""
  is_leaf = lambda x: isinstance(x, dict) and "running_mean" in x
  return jax.tree.leaves(bn_stats, is_leaf=is_leaf)


def init_momentum(bn_stats) -> list[dict]:
  """Zero momentum buffers shaped like the teacher's BN inputs."""
  return [dict(mean=jnp.zeros_like(l["mean"]), var=jnp.zeros_like(l["var"]))
          for l in flatten_bn_stats(bn_stats)]


def update_momentum(buffers, last, has_momentum, bn_mmt: float):
  """buffer <- m * buffer + (1-m) * last (first call: buffer <- last)."""
  def upd(b, l):
    return jnp.where(has_momentum, bn_mmt * b + (1 - bn_mmt) * l, l)
  return jax.tree.map(upd, buffers, last)
