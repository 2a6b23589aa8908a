"""NAYER's generator (Tran et al., CVPR 2024, "Noisy Layer Data Generation"), NHWC.

  targets -> their label embeddings (N, le_size), constant per class
  -> BatchNorm over the batch `bn_le` (NAYER's `n1`)
  -> a noisy Linear layer per chunk of `chunk` images (le_size -> nz; NAYER's `le1`: its
     weights are drawn N(0, 1), its bias 0, for every new batch, then trained with it)
  -> the FastDFKD generator body `body` (`generator.Generator` with that nz: `l1`, BN,
     two upsample-conv-BN-LeakyReLU blocks, conv, sigmoid) -> images in [0, 1].

The randomness of a batch lives in the noisy layer, not in an input noise vector: the
input is the same embedding for every image of a class. NAYER groups a batch into
chunks of `num_classes` images, one noisy layer each (its `nle = ceil(batch / nl)`
layers with nl = num_classes), so a class seen several times in a batch meets a
different noisy layer each time. Here the noisy layers are an input of the module
(`noisy_w`, `noisy_b`), drawn and trained by the synthesis method (`synthesis.nayer`),
so the module's own parameters (`bn_le`, `body`) are what the generator keeps across
batches.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastdfkd_jax.models import register, util as model_util
from fastdfkd_jax.models.generator import Generator
from fastdfkd_jax.models.layers import BatchNorm


def apply_noisy_layers(e: jax.Array, noisy_w: jax.Array, noisy_b: jax.Array) -> jax.Array:
  """e (N, le_size) through chunk c's layer for rows [c * size, (c + 1) * size), size =
  ceil(N / n_chunks) (the last chunk may be short): (N, nz)."""
  n, chunks = e.shape[0], noisy_w.shape[0]
  size = -(-n // chunks)
  padded = jnp.pad(e, ((0, chunks * size - n), (0, 0))).reshape(chunks, size, -1)
  v = jnp.einsum("csd,cdz->csz", padded, noisy_w.astype(e.dtype)) + noisy_b[:, None]
  return v.reshape(chunks * size, -1)[:n]


class NoisyLayerGenerator(nn.Module):
  """(embeddings (N, le_size), noisy_w (chunks, le_size, nz), noisy_b (chunks, nz)) ->
  images (N, img_size, img_size, channels) in [0, 1]."""

  le_size: int = 512
  nz: int = 1000           # the noisy layer's width: NAYER's le_emb_size
  ngf: int = 64
  img_size: int = 32
  channels: int = 3
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, emb, noisy_w, noisy_b, train: bool = True):
    e = BatchNorm(use_running_average=not train, axis_name=self.axis_name,
                  name="bn_le")(emb.astype(jnp.float32))
    v = apply_noisy_layers(e, noisy_w, noisy_b)
    return Generator(nz=self.nz, ngf=self.ngf, img_size=self.img_size,
                     channels=self.channels, dtype=self.dtype, axis_name=self.axis_name,
                     name="body")(v, train)

  def init_variables(self, key: jax.Array) -> dict:
    """{'params', 'batch_stats'} of a fresh generator (traceable: a re-init under jit)."""
    emb = jnp.zeros((2, self.le_size), jnp.float32)
    w, b = jnp.zeros((1, self.le_size, self.nz)), jnp.zeros((1, self.nz))
    init = functools.partial(self.clone(axis_name=None).init, train=True)
    variables = model_util.run_init(init, key, emb, w, b)
    return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


@register("noisy_generator")
def noisy_generator(num_classes: int | None = None, **kw) -> NoisyLayerGenerator:
  """Factory; `num_classes` is accepted for the registry and ignored."""
  del num_classes
  return NoisyLayerGenerator(**kw)
