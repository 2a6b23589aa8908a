"""Shared setup of the synthesis tests: tiny models, one compiled call per synthesizer.

resnet8 teacher/student on 8x8x1 images, generator nz=16 ngf=8, batch 8, k=2,
axis_name=None (plain per-device code outside shard_map). XLA:CPU runs conv
gradients inside lax.scan slowly, so tests unroll the inner loop unless they
compare against the scanned form.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from fastdfkd_jax.synthesis import inversion

from conftest import compile_unoptimized

IMAGE_SHAPE = (8, 8, 1)
MEAN, STD, PADDING = (0.3054,), (0.3757,), 1
BATCH, NZ, K = 8, 16, 2
ADV = jnp.float32(1.1)

compiled = compile_unoptimized


def make_synth(nets, cls, **hp):
  """A synthesizer of class `cls` on the tiny models (unrolled k=2 unless overridden)."""
  teacher, student, generator, _, _ = nets
  hp = dict(dict(k=K, batch_size=BATCH, nz=NZ, unroll=True), **hp)
  return cls(generator=generator, teacher=teacher, student=student,
             hp=inversion.SynthesisHParams(**hp), num_classes=10,
             image_shape=IMAGE_SHAPE, mean=MEAN, std=STD, padding=PADDING, axis_name=None)


def run(synth, state, nets, key, adv=ADV):
  """One synthesis call, compiled once per synthesizer (cached on the instance)."""
  _, _, _, tv, sv = nets
  entry = _COMPILED.get(id(synth))
  if entry is None or entry[0] is not synth:
    entry = _COMPILED[id(synth)] = (
        synth, compiled(synth.synthesize, state, tv, sv, key, adv))
  return entry[1](state, tv, sv, key, adv)


_COMPILED = {}


def assert_tree_close(a, b, rtol=1e-4, atol=1e-6):
  chex.assert_trees_all_equal_structs(a, b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               rtol=rtol, atol=atol)
