"""Optimizers and learning-rate schedules shared by teacher training and KD.

The schedule lives inside the optax optimizer (optax counts the steps), so a
jitted step only calls `tx.update`; no learning rate is passed around.
"""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def sgd(learning_rate: optax.ScalarOrSchedule, momentum: float,
        weight_decay: float) -> optax.GradientTransformation:
  """PyTorch SGD: weight decay added to the gradient before momentum."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum))


def cosine_schedule(lr: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
  """Cosine decay from `lr` to 0 over `total_steps`, after a linear warmup from 0."""
  if not warmup_steps:
    return optax.cosine_decay_schedule(lr, total_steps)
  return optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup_steps, max(total_steps, warmup_steps + 1))


def poly_schedule(lr: float, total_steps: int, power: float,
                  warmup_steps: int = 0) -> optax.Schedule:
  """lr (1 - n / total_steps) ** power (the DeepLab 'poly' decay), after a linear warmup
  from 0 over `warmup_steps` (the decay then spans the remaining steps)."""
  decay = optax.polynomial_schedule(lr, 0.0, power, max(total_steps - warmup_steps, 1))
  if not warmup_steps:
    return decay
  warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def teacher_optimizer(optim: ml_collections.ConfigDict, steps_per_epoch: int,
                      epochs: int) -> optax.GradientTransformation:
  """SGD (or Adam) of `config.optim` with the per-step cosine or poly decay (and warmup)
  of a teacher run."""
  total, warmup = steps_per_epoch * epochs, optim.warmup_epochs * steps_per_epoch
  if optim.schedule == "poly":
    schedule = poly_schedule(optim.lr, total, optim.poly_power, warmup)
  else:
    schedule = cosine_schedule(optim.lr, total, warmup)
  return _with_decay(optim.optimizer, schedule, optim.momentum, optim.weight_decay)


def epoch_cosine_schedule(kd: ml_collections.ConfigDict) -> optax.Schedule:
  """The KD learning rate as a function of the optimizer's update count.

  Update n belongs to KD epoch e = n // kd.steps (counted from the first KD
  epoch); its rate is lr_min + (lr - lr_min) (1 + cos(pi e / kd.cosine_epochs)) / 2,
  constant at lr_min after cosine_epochs. The per-epoch values are computed in
  float64 on the host and stored as a float32 table, so they are exactly what
  the host logs.
  """
  table, steps = epoch_cosine_values(kd), kd.steps

  def schedule(count):
    return jnp.asarray(table)[jnp.minimum(count // steps, len(table) - 1)]
  return schedule


def epoch_cosine_values(kd: ml_collections.ConfigDict) -> np.ndarray:
  """The float32 rate of KD epochs 0..kd.cosine_epochs (the last one holds after)."""
  lr, lr_min, t_max = kd.lr, kd.lr_min, kd.cosine_epochs
  return np.asarray([lr_min + (lr - lr_min) * (1 + math.cos(math.pi * e / t_max)) / 2
                     for e in range(t_max + 1)], np.float32)


def kd_optimizer(kd: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD (or Adam) of `config.kd` with the per-epoch cosine of `epoch_cosine_schedule`."""
  return _with_decay(kd.optimizer, epoch_cosine_schedule(kd), kd.momentum, kd.weight_decay)


def _with_decay(name: str, schedule: optax.Schedule, momentum: float,
                weight_decay: float) -> optax.GradientTransformation:
  """PyTorch's SGD or Adam ('sgd' | 'adam'): weight decay added to the gradient."""
  if name == "adam":
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(schedule))
  return sgd(schedule, momentum, weight_decay)
