"""Optimizers and learning-rate schedules shared by teacher training and KD.

The schedule lives inside the optax optimizer (optax counts the steps), so a
jitted step only calls `tx.update`; no learning rate is passed around.
"""

import ml_collections
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


def teacher_optimizer(optim: ml_collections.ConfigDict, steps_per_epoch: int,
                      epochs: int) -> optax.GradientTransformation:
  """SGD of `config.optim` with the per-step cosine (and warmup) of a teacher run."""
  schedule = cosine_schedule(optim.lr, steps_per_epoch * epochs,
                             optim.warmup_epochs * steps_per_epoch)
  return sgd(schedule, optim.momentum, optim.weight_decay)
