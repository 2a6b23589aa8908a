"""Precise BN: running statistics recomputed over a whole split instead of an EMA.

A BN layer's running mean and variance are an exponential moving average
(momentum 0.1 on the new value, as PyTorch) of the last few hundred training
batches, taken while the weights still move. Test accuracy then depends on
which batches came last (measured on the digits teacher: the test accuracy of
one run moves by 0.5-1 point from epoch to epoch at a learning rate near zero),
and two runs that differ only in float rounding, e.g. the same run on 1 and on
8 devices, end up to 1.9 points apart. "Precise BN" (Wu & Johnson, "Rethinking
'Batch' in BatchNorm", 2021; fvcore's `update_bn_stats`) replaces the EMA by the
statistics of the final weights over many batches: each batch runs the model
in train mode (every layer normalised by its batch statistics, as in training),
and the per-layer input moments are averaged over the batches:
  mean = E_b[mean_b],  var = E_b[var_b + mean_b^2] - mean^2  (biased, as flax),
which for equal batches is the variance of the whole split. Batch moments are
taken over the global batch (`axis_name`), so the result does not depend on the
number of devices beyond float rounding.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from fastdfkd_jax.run import parallel
from fastdfkd_jax.data import augment
from fastdfkd_jax.models.layers import BN_STATS

AXIS = parallel.AXIS


def make_moments_step(model, mean, std, mesh):
  """jitted (variables, images u8 (B, H, W, C)) -> {layer path: (mean, mean of x^2)}.

  `model` carries `axis_name=AXIS`; the moments are over the global batch.
  """
  mean, std = jnp.asarray(mean), jnp.asarray(std)

  def step(variables, images):
    x = augment.normalize(augment.to_float(images), mean, std)
    _, aux = model.apply(variables, x, train=True, mutable=["batch_stats", BN_STATS])
    flat = traverse_util.flatten_dict(aux.get(BN_STATS, {}))  # (..., layer, 'input', stat)
    layers = [path[:-2] for path in flat if path[-1] == "mean"]
    return {layer: (flat[layer + ("input", "mean")],
                    flat[layer + ("input", "var")] + jnp.square(flat[layer + ("input", "mean")]))
            for layer in layers}

  return jax.jit(parallel.shard(step, mesh, in_specs=(P(), P(AXIS)), out_specs=P()))


def recompute(moments_step, variables: dict[str, Any], images: np.ndarray,
              batch_size: int, mesh) -> dict[str, Any]:
  """`variables` with every BN layer's running statistics recomputed over `images`.

  Args:
    moments_step: from `make_moments_step`.
    variables: {'params', 'batch_stats'} (replicated over `mesh`).
    images: uint8 (N, H, W, C), un-augmented; read in order in batches of
      `batch_size` (a multiple of the device count), the last partial batch
      dropped so that every batch weighs the same.
    batch_size: the global batch.
    mesh: the device mesh.

  Returns:
    The same pytree with 'batch_stats' replaced (float32).

  Raises:
    ValueError: fewer images than one batch.
  """
  if not variables.get("batch_stats"):
    return variables
  num_batches = len(images) // batch_size
  if num_batches == 0:
    raise ValueError(f"precise BN needs at least one batch of {batch_size} images, "
                     f"got {len(images)}")
  sums = None
  for b in range(num_batches):
    batch = parallel.put_batch((images[b * batch_size:(b + 1) * batch_size],), mesh)[0]
    moments = moments_step(variables, batch)
    sums = moments if sums is None else jax.tree.map(jnp.add, sums, moments)
  flat = traverse_util.flatten_dict(variables["batch_stats"])
  for path, (s1, s2) in jax.device_get(sums).items():
    m = s1 / num_batches
    flat[path + ("mean",)] = jnp.asarray(m, flat[path + ("mean",)].dtype)
    flat[path + ("var",)] = jnp.asarray(np.maximum(s2 / num_batches - np.square(m), 0.0),
                                        flat[path + ("var",)].dtype)
  stats = parallel.put_replicated(traverse_util.unflatten_dict(flat), mesh)
  return dict(variables, batch_stats=stats)
