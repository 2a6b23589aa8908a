"""Shared setup of the synthesis tests: tiny models and synthesis calls compiled once.

resnet8 teacher/student on 8x8x1 images, generator nz=16 ngf=8, batch 8, k=2,
axis_name=None (plain per-device code outside shard_map).

`run` makes a call as XLA:CPU makes it in a distillation (`Distiller.compile_synth`
with `host_inner`): `begin`, k dispatches of one compiled `inner_step`, `end`. One
compiled inner step instead of a program with k of them halves a call's compile time;
equal synthesizers share their compiled pieces (cached here per synthesizer), and
pieces that trace alike across synthesizers (e.g. fast's and fast_meta's inner step)
share them through the persistent compilation cache. `run_whole` compiles
`synthesize` as one program (its inner loop a lax.scan or unrolled, per `hp.unroll`).
Every program is compiled unoptimised (`conftest.compile_unoptimized`)."""

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
  """A synthesizer of class `cls` on the tiny models (k=2, unrolled in `run_whole`, unless
  overridden)."""
  teacher, student, generator, _, _ = nets
  hp = dict(dict(k=K, batch_size=BATCH, nz=NZ, unroll=True), **hp)
  return cls(generator=generator, teacher=teacher, student=student,
             hp=inversion.SynthesisHParams(**hp), num_classes=10,
             image_shape=IMAGE_SHAPE, mean=MEAN, std=STD, padding=PADDING, axis_name=None)


_COMPILED = {}


def _cache_key(synth, form):
  try:
    return (form, type(synth), hash(synth), synth)
  except TypeError:   # an unhashable field: one entry per instance
    return (form, id(synth), synth)


def init(synth, nets, key):
  """synth.init(key, teacher_vars) as one compiled program (cached per synthesizer): op by
  op, a method's init compiles a program per operation."""
  tv = nets[3]
  cache_key = _cache_key(synth, "init")
  if cache_key not in _COMPILED:
    _COMPILED[cache_key] = compiled(synth.init, key, tv)
  return _COMPILED[cache_key](key, tv)


def host_steps(synth, state, nets, key, adv=ADV):
  """(begin, inner_step, end) of `synth` compiled for these arguments (cached per
  synthesizer)."""
  cache_key = _cache_key(synth, "host")
  if cache_key not in _COMPILED:
    _, _, _, tv, sv = nets
    begin = compiled(synth.begin, state, key)
    carry, keys = begin(state, key)
    inner = compiled(synth.inner_step, carry, keys[0], state, tv, sv, adv)
    end = compiled(synth.end, state, carry)
    _COMPILED[cache_key] = (begin, inner, end)
  return _COMPILED[cache_key]


def run(synth, state, nets, key, adv=ADV):
  """One synthesis call, host-stepped: end(state, k x inner_step(begin(state, key)))."""
  _, _, _, tv, sv = nets
  begin, inner, end = host_steps(synth, state, nets, key, adv)
  carry, keys = begin(state, key)
  for i in range(keys.shape[0]):
    carry = inner(carry, keys[i], state, tv, sv, adv)
  return end(state, carry)


def run_whole(synth, state, nets, key, adv=ADV):
  """One synthesis call as one compiled `synthesize` program (cached per synthesizer)."""
  _, _, _, tv, sv = nets
  cache_key = _cache_key(synth, "whole")
  if cache_key not in _COMPILED:
    _COMPILED[cache_key] = compiled(synth.synthesize, state, tv, sv, key, adv)
  return _COMPILED[cache_key](state, tv, sv, key, adv)


def assert_tree_close(a, b, rtol=1e-4, atol=1e-6):
  chex.assert_trees_all_equal_structs(a, b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               rtol=rtol, atol=atol)
