"""Training augmentation of the release, as pure jittable functions.

All image arguments are float NHWC batches (B, H, W, C) in [0, 1] unless said
otherwise; randomness comes only from the explicit PRNG `key`. The release's
order (reference doc, section 2) is

  augment(x) = normalize(flip(crop(x)))

with a random crop of zero padding 4 (1 for `digits`) and a horizontal flip
with probability 0.5. Under `shard_map`, `augment_stripe` draws the randomness
for the global batch and each device applies its stripe, so a batch is
augmented the same way on any number of devices; it augments the synthetic
batches inside the synthesis loop and the pool batches in the KD step.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from fastdfkd_jax.run import parallel

ArrayLike = jax.typing.ArrayLike


def to_float(images: ArrayLike) -> jax.Array:
  """uint8 (..., H, W, C) in 0..255 -> float32 of the same shape in [0, 1]."""
  return jnp.asarray(images).astype(jnp.float32) / 255.0


def to_uint8(images: ArrayLike) -> jax.Array:
  """Float (..., H, W, C) in [0, 1] -> uint8 of the same shape (round, clip)."""
  x = jnp.round(jnp.asarray(images, jnp.float32) * 255.0)
  return jnp.clip(x, 0, 255).astype(jnp.uint8)


def normalize(images: ArrayLike, mean: Sequence[float] | ArrayLike,
              std: Sequence[float] | ArrayLike) -> jax.Array:
  """(x - mean) / std per channel; same shape and (float) dtype as `images`.

  Args:
    images: float (..., C).
    mean: length-C per-channel mean (a tuple, or an array broadcasting on C).
    std: length-C per-channel standard deviation.
  """
  x = jnp.asarray(images)
  mean = jnp.asarray(mean, x.dtype)
  std = jnp.asarray(std, x.dtype)
  return (x - mean) / std


def crop_offsets(key: jax.Array, batch: int, padding: int) -> jax.Array:
  """Per-image crop offsets: int32 (batch, 2) = (dy, dx), each in [0, 2*padding].

  The offset indexes the zero-padded image (padding on each side), so
  (padding, padding) is the un-shifted crop.
  """
  return jax.random.randint(key, (batch, 2), 0, 2 * padding + 1, jnp.int32)


def random_crop(key: jax.Array, images: ArrayLike, padding: int,
                axis_name: str | None = None) -> jax.Array:
  """Zero-pads by `padding` on each side and crops back to H x W at random.

  Equivalent to torchvision's RandomCrop(H, padding) applied per image.

  Args:
    key: PRNG key; offsets are `crop_offsets(key, B_global, padding)`.
    images: (B, H, W, C).
    padding: static non-negative int; 0 returns the images unchanged.
    axis_name: inside `shard_map`, the batch axis: the offsets are drawn for the
      global batch and this device uses its stripe. None: B_global = B.

  Returns:
    (B, H, W, C), same dtype.
  """
  x = jnp.asarray(images)
  if padding < 0:
    raise ValueError(f"padding must be >= 0, got {padding}")
  if padding == 0:
    return x
  _, h, w, c = x.shape
  offsets = _stripe(crop_offsets(key, _global_batch(x, axis_name), padding), axis_name)
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

  def crop_one(img: jax.Array, off: jax.Array) -> jax.Array:
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

  return jax.vmap(crop_one)(padded, offsets)


def flip_mask(key: jax.Array, batch: int, prob: float = 0.5) -> jax.Array:
  """bool (batch,): True where `random_flip(key, ...)` flips that image."""
  return jax.random.bernoulli(key, prob, (batch,))


def random_flip(key: jax.Array, images: ArrayLike,
                axis_name: str | None = None) -> jax.Array:
  """Flips each image horizontally (the W axis) with probability 0.5.

  Args:
    key: PRNG key; flipped images are where `flip_mask(key, B_global)` is True.
    images: (B, H, W, C).
    axis_name: as in `random_crop`.

  Returns:
    (B, H, W, C), same dtype.
  """
  x = jnp.asarray(images)
  mask = _stripe(flip_mask(key, _global_batch(x, axis_name)), axis_name)
  return jnp.where(mask[:, None, None, None], jnp.flip(x, axis=2), x)


def augment_stripe(key: jax.Array, images: ArrayLike,
                   mean: Sequence[float] | ArrayLike, std: Sequence[float] | ArrayLike,
                   padding: int, axis_name: str | None, flip: bool = True) -> jax.Array:
  """`augment` with its randomness drawn for the *global* batch.

  Per-device code inside `shard_map` over `axis_name`: crop offsets and flip
  decisions are drawn for all B_global = B * axis_size images and each device
  applies its stripe (`parallel.local_stripe`), so the result does not depend
  on the device count. With `axis_name=None` it is `augment`.

  Args:
    key: PRNG key, the same on every device.
    images: float (B, H, W, C) in [0, 1], this device's stripe of the batch.
    mean: length-C per-channel mean.
    std: length-C per-channel standard deviation.
    padding: static crop padding (0: no crop).
    axis_name: the batch axis of the enclosing `shard_map`, or None.
    flip: static; apply the random horizontal flip.

  Returns:
    Normalised float (B, H, W, C), same dtype as `images`.
  """
  k_crop, k_flip = jax.random.split(key)
  x = random_crop(k_crop, images, padding, axis_name)
  if flip:
    x = random_flip(k_flip, x, axis_name)
  return normalize(x, mean, std)


def augment(key: jax.Array, images: ArrayLike,
            mean: Sequence[float] | ArrayLike, std: Sequence[float] | ArrayLike,
            padding: int, flip: bool = True) -> jax.Array:
  """normalize(flip(crop(images))), the release's training augmentation.

  Args:
    key: PRNG key, split into the crop key and the flip key
      (`k_crop, k_flip = jax.random.split(key)`).
    images: float (B, H, W, C) in [0, 1].
    mean: length-C per-channel mean.
    std: length-C per-channel standard deviation.
    padding: static crop padding (0: no crop).
    flip: static; apply the random horizontal flip.

  Returns:
    Normalised float (B, H, W, C), same dtype as `images`.
  """
  return augment_stripe(key, images, mean, std, padding, None, flip)


def resized_crop_stripe(key: jax.Array, images: ArrayLike, scale: Sequence[float],
                        ratio: Sequence[float], axis_name: str | None) -> jax.Array:
  """RandomResizedCrop + flip (CMI's local view), randomness drawn for the global batch.

  Each image gets a box of area fraction ~ U(scale) and aspect ratio
  ~ exp(U(log ratio)) (clipped to the image instead of the release's resampling),
  at a uniform position, resized back to H x W bilinearly (pixel centres,
  differentiable in the images), then flipped with probability 0.5.

  Args:
    key: PRNG key, the same on every device.
    images: float (B, H, W, C), this device's stripe of the batch.
    scale, ratio: (low, high) of the area fraction and the aspect ratio w/h.
    axis_name: as in `augment_stripe`.

  Returns:
    float (B, H, W, C), not normalised.
  """
  x = jnp.asarray(images)
  n, height, width = _global_batch(x, axis_name), x.shape[1], x.shape[2]
  k_s, k_r, k_y, k_x, k_f = jax.random.split(key, 5)
  area = jax.random.uniform(k_s, (n,), minval=scale[0], maxval=scale[1]) * height * width
  r = jnp.exp(jax.random.uniform(k_r, (n,), minval=jnp.log(ratio[0]),
                                 maxval=jnp.log(ratio[1])))
  w = jnp.clip(jnp.round(jnp.sqrt(area * r)), 1, width)
  h = jnp.clip(jnp.round(jnp.sqrt(area / r)), 1, height)
  y0 = jnp.floor(jax.random.uniform(k_y, (n,)) * (height - h + 1))
  x0 = jnp.floor(jax.random.uniform(k_x, (n,)) * (width - w + 1))
  wy = _stripe(_bilinear_rows(y0, h, height), axis_name)
  wx = _stripe(_bilinear_rows(x0, w, width), axis_name)
  out = jnp.einsum("nih,nhwc,njw->nijc", wy, x.astype(jnp.float32), wx).astype(x.dtype)
  mask = _stripe(flip_mask(k_f, n), axis_name)
  return jnp.where(mask[:, None, None, None], jnp.flip(out, axis=2), out)


def _bilinear_rows(start: jax.Array, length: jax.Array, size: int) -> jax.Array:
  """(N, size, size) weights resizing each [start, start + length) span to `size`."""
  centres = start[:, None] + (jnp.arange(size) + 0.5) * (length[:, None] / size) - 0.5
  centres = jnp.clip(centres, 0, size - 1)
  lo = jnp.floor(centres)
  frac = (centres - lo)[..., None]
  lo = lo.astype(jnp.int32)
  hi = jnp.minimum(lo + 1, size - 1)
  return (1 - frac) * jax.nn.one_hot(lo, size) + frac * jax.nn.one_hot(hi, size)


def _global_batch(x: jax.Array, axis_name: str | None) -> int:
  """B_global: the local batch times the size of `axis_name` (1 when None)."""
  return x.shape[0] * (1 if axis_name is None else jax.lax.axis_size(axis_name))


def _stripe(a: jax.Array, axis_name: str | None) -> jax.Array:
  """This device's stripe of an array drawn for the global batch."""
  return a if axis_name is None else parallel.local_stripe(a, axis_name)
