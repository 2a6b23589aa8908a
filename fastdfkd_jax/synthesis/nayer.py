"""NAYER (`nayer`; Tran et al., CVPR 2024): noisy-layer data generation, on the inversion
engine of `inversion`.

The generator (`models.noisy_generator`) turns each target's constant label embedding
into an image through a noisy layer that is drawn afresh for every synthesis call
(weights N(0, 1), bias 0, one layer per chunk of `num_classes` images) and trained
with the generator for the call's k steps (NAYER's g_steps); the generator itself
is kept from call to call (sequential reuse, like `fast`) and re-initialised every
`synth.g_life` epochs. Each call starts a fresh Adam(lr_g, betas) on the generator
and the noisy layer, as NAYER's `synthesize` builds its optimizer for every loop, and
puts the lowest-loss step's images into the pool. The loss is the engine's:
bn * L_BN (with the momentum buffers) + oh * CE(teacher, targets) + adv * L_adv.
Targets are balanced: every class once per chunk, the remainder of the batch drawn.

Mapping of NAYER's settings: g_steps -> k, g_loops (synthesis loops per epoch) ->
synth.calls_per_epoch, g_life -> synth.g_life, le_emb_size -> nayer.le_emb_size,
lr_g / adv / bn / oh / bn_mmt -> synth.*. Deviations: a warmup epoch makes
synth.calls_per_epoch calls like any other (NAYER's gwp_loops makes more), and the
KD steps of an epoch are split after its calls (`distill.epochs.rounds`) where NAYER
runs them after all of them.

Label embeddings (`nayer.label_embedding`): a file with one row per class (`.npy`, a
one-array `.npz`, or NAYER's released `<dataset>_le.pickle`, a pickled torch tensor,
read without torch by `teacher.pth`), or by default fixed random orthonormal rows of
width `nayer.le_size` (seed 0): no text model is needed. Through a noisy layer drawn
from an isotropic Gaussian, any orthonormal rows (one-hot ones included) give the same
distribution of layer outputs; the default carries no semantic similarity between
classes, which a text encoder's embeddings do.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fastdfkd_jax import errors, models
from fastdfkd_jax.synthesis import base, fast_meta, inversion


def label_embeddings(path: str, num_classes: int, width: int) -> np.ndarray:
  """(num_classes, D) float32: the rows of `path`, or fixed random orthonormal rows."""
  if not path:
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(width, num_classes)))
    return np.ascontiguousarray(q.T, np.float32)
  if not os.path.isfile(path):
    raise errors.UserError(f"nayer.label_embedding={path!r}: no such file")
  if path.endswith(".pickle"):
    from fastdfkd_jax.teacher import pth  # pylint: disable=import-outside-toplevel
    rows = pth.read(path)
  else:
    try:
      loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise errors.UserError(f"nayer.label_embedding={path!r} does not read: {e}") from e
    rows = loaded if isinstance(loaded, np.ndarray) else loaded[loaded.files[0]]
  rows = np.asarray(rows, np.float32)
  if rows.ndim != 2 or rows.shape[0] != num_classes or not np.isfinite(rows).all():
    raise errors.UserError(
        f"nayer.label_embedding={path!r} holds {rows.shape} values; it needs one finite "
        f"row per class, ({num_classes}, D)")
  return rows


@base.register("nayer")
@dataclasses.dataclass(frozen=True, kw_only=True)
class NayerSynthesizer(fast_meta.FastSynthesizer):
  """Noisy-layer generation: the generator is reused from call to call as `fast` reuses
  it (a fresh Adam per call, nothing else carried), the noisy layer drawn per call."""
  embeddings: tuple = ()          # (num_classes, le_size) rows, as nested tuples

  @classmethod
  def from_config(cls, config, *, teacher, student, info, axis_name: str | None,
                  unroll: bool, dtype) -> "NayerSynthesizer":
    rows = label_embeddings(config.nayer.label_embedding, info.num_classes,
                            config.nayer.le_size)
    h, _, c = info.image_shape
    generator = models.get_model("noisy_generator", le_size=rows.shape[1],
                                 nz=config.nayer.le_emb_size, ngf=config.synth.ngf,
                                 img_size=h, channels=c, axis_name=axis_name, dtype=dtype)
    return cls(generator=generator, hp=inversion.hparams_from_config(config, unroll),
               embeddings=tuple(map(tuple, rows.tolist())),
               **base.members(info, teacher=teacher, student=student, axis_name=axis_name))

  # ------------------------------------------------------- the generator
  def _init_generator(self, key: jax.Array) -> dict:
    return self.generator.init_variables(key)

  def reinit_generator(self, state: inversion.SynthState, key: jax.Array):
    """A fresh generator (NAYER's `reinit`, every synth.g_life epochs)."""
    fresh = self._init_generator(key)
    return state.replace(gen_params=fresh["params"],
                         gen_batch_stats=fresh.get("batch_stats", {}))

  # ------------------------------------------- targets and the noisy layer
  def draw_targets(self, key: jax.Array) -> jax.Array:
    """Every class once per chunk of num_classes, then the remainder drawn (NAYER's
    `generate_ys`)."""
    b, c = self.hp.batch_size, self.num_classes
    rest = jax.random.randint(key, (b % c,), 0, c)
    return jnp.concatenate([jnp.tile(jnp.arange(c), b // c), rest])

  def _chunks(self) -> int:
    """Noisy layers of the global batch: one per chunk of num_classes images; a device's
    batch must hold whole chunks when there are several devices."""
    b, c = self.hp.batch_size, self.num_classes
    if self.axis_name is not None and jax.lax.axis_size(self.axis_name) > 1:
      n = jax.lax.axis_size(self.axis_name)
      if (b // n) % c:
        raise errors.UserError(
            f"method=nayer gives each chunk of {c} images (the class count) its own noisy "
            f"layer: batch_size={b} on {n} devices is {b // n} images a device, not whole "
            f"chunks; use a batch_size that is a multiple of {n * c}")
    return -(-b // c)

  def _start_latent(self, state: inversion.SynthState, key: jax.Array, targets: jax.Array):
    """{'emb': the targets' embeddings (fixed), 'w', 'b': a fresh noisy layer per chunk
    (weights N(0, 1), bias 0: NAYER's `re_init_le`)} of the global batch."""
    del state
    chunks, le, nz = self._chunks(), self.generator.le_size, self.generator.nz
    return dict(emb=jnp.asarray(self.embeddings, jnp.float32)[targets],
                w=jax.random.normal(key, (chunks, le, nz)), b=jnp.zeros((chunks, nz)))

  def _latent_example(self):
    le, nz = self.generator.le_size, self.generator.nz
    return dict(emb=jax.ShapeDtypeStruct((2, le), jnp.float32),
                w=jax.ShapeDtypeStruct((2, le, nz), jnp.float32),
                b=jax.ShapeDtypeStruct((2, nz), jnp.float32))

  def latent_tx(self) -> optax.GradientTransformation:
    """Adam(lr_g, betas) on the noisy layer (one Adam with the generator's, as NAYER's);
    the embeddings stay fixed."""
    b1, b2 = self.hp.betas
    return optax.multi_transform(
        {"train": optax.adam(self.hp.lr_g, b1=b1, b2=b2), "fixed": optax.set_to_zero()},
        dict(emb="fixed", w="train", b="train"))

  def render(self, fast, latent, gen_bs):
    x, upd = self.generator.apply({"params": fast, "batch_stats": gen_bs}, latent["emb"],
                                  latent["w"], latent["b"], train=True,
                                  mutable=["batch_stats"])
    return x, upd["batch_stats"]

