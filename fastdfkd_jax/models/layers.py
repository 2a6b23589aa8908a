"""Shared layers for the model zoo.

`BatchNorm` is `flax.linen.BatchNorm` with PyTorch defaults that can also report
the batch statistics of its *input*, the quantities the DeepInversion feature
prior (reference doc, section 3) compares with the running statistics. It
reports them by `sow`ing into the `'bn_stats'` collection, only when the caller
asks for that collection to be mutable, so there are no forward hooks and no
hidden state:

    logits, aux = model.apply(variables, x, train=False, mutable=['bn_stats'])
    # aux['bn_stats'] mirrors the module tree; each BN layer holds
    # {'input': {'mean', 'var', 'running_mean', 'running_var'}}, each (C,).

The same way it sows each sample's spatial mean of its input, (N, C), into
`'instance_means'` (CMI's feature of an image: the release's `InstanceMeanHook`).

Every classifier likewise sows its penultimate features (what the release's
`return_features=True` returns: the pooled features entering the classifier; LeNet's
120-d layer) into `'features'` when asked:
`model.apply(..., mutable=['features'])`, then `penultimate(aux)`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from fastdfkd_jax.models import cpu_bf16

BN_STATS = "bn_stats"
INSTANCE_MEANS = "instance_means"
FEATURES = "features"

# PyTorch BatchNorm2d: momentum 0.1 on the new value, i.e. flax momentum 0.9.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class BatchNorm(nn.BatchNorm):
  """BatchNorm (PyTorch defaults) that sows its input's batch mean and biased var.

  When `axis_name` is set (inside `shard_map`), both the train-mode batch
  statistics and the reported input statistics are computed over the global
  batch across that mesh axis.
  """

  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON

  def __call__(self, x, use_running_average=None, **kwargs):
    train = not nn.merge_param("use_running_average", self.use_running_average,
                               use_running_average)
    if (train and not kwargs and not self.is_initializing()
        and cpu_bf16.fast_batch_norm(x, self.axis_name)):
      y = self._train_fast(x)
    else:
      y = super().__call__(x, use_running_average=use_running_average, **kwargs)
    if self.is_mutable_collection(BN_STATS):
      mean, var = input_moments(x, self.axis_name)
      self.sow(
          BN_STATS, "input",
          dict(mean=mean, var=var,
               running_mean=self.get_variable("batch_stats", "mean"),
               running_var=self.get_variable("batch_stats", "var")),
          init_fn=lambda: None, reduce_fn=lambda _, new: new)
    if self.is_mutable_collection(INSTANCE_MEANS):
      spatial = tuple(range(1, x.ndim - 1))
      self.sow(INSTANCE_MEANS, "input", x.astype(jnp.float32).mean(spatial),
               init_fn=lambda: None, reduce_fn=lambda _, new: new)
    return y

  def _train_fast(self, x):
    """The train-mode forward of flax's BatchNorm through `cpu_bf16.batch_norm_train`
    (bfloat16 on one CPU device): the variables flax's `init` made, the same statistics
    and running updates."""
    scale, bias = (self.get_variable("params", k) for k in ("scale", "bias"))
    y, mean, var = cpu_bf16.batch_norm_train(x, scale, bias, self.epsilon, self.axis_name)
    if self.is_mutable_collection("batch_stats"):
      for name, batch in (("mean", mean), ("var", var)):
        running = self.get_variable("batch_stats", name)
        self.put_variable("batch_stats", name,
                          self.momentum * running + (1 - self.momentum) * batch)
    return y

def batch_norm(module: nn.Module, train: bool, name: str) -> BatchNorm:
  """The zoo's BN layer `name` inside `module`, with the module's `dtype` and `axis_name`.

  Normalises with the batch statistics (and updates the running ones) when `train`,
  with the running statistics otherwise.
  """
  return BatchNorm(use_running_average=not train, dtype=module.dtype,
                   axis_name=module.axis_name, name=name)


def input_moments(x: jax.Array, axis_name: str | None = None):
  """Per-channel mean and biased variance over all but the last axis, in float32.

  Two-pass (variance around the global mean) so the all-reduced result equals
  the single-device one to float32 rounding.
  """
  axes = tuple(range(x.ndim - 1))
  xf = x.astype(jnp.float32)
  mean = xf.mean(axes)
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  var = jnp.square(xf - mean).mean(axes)
  if axis_name is not None:
    var = jax.lax.pmean(var, axis_name)
  return mean, var


def sow_features(module: nn.Module, x: jax.Array) -> jax.Array:
  """Sows a classifier's penultimate features (N, D) into FEATURES when that collection
  is mutable; returns x."""
  if module.is_mutable_collection(FEATURES):
    module.sow(FEATURES, "penultimate", x, init_fn=lambda: None,
               reduce_fn=lambda _, new: new)
  return x


def penultimate(aux: dict) -> jax.Array:
  """The features sown by `sow_features`, from the mutable collections of an apply."""
  return aux[FEATURES]["penultimate"]


# Kaiming-normal (fan_out) for convs, as in the release's CIFAR models.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
Dtype = Any
