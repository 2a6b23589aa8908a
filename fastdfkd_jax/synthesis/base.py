"""The protocol every synthesis method meets, and the registry of methods by name.

A synthesis method is a frozen dataclass (modules and static hyper-parameters)
whose methods are pure functions over an explicit state pytree. Each method
family is one module registering its classes with `@register(name)`;
`build(config, ...)` makes the one named by `config.method`.

Two kinds of method
  Pool methods (`uses_pool = True`: fast_meta, fast, deepinv; the original
  DeepInversion and CMI) make one batch per synthesis call; the run loop appends
  it to the pool and the KD steps draw their batches from the pool.
  Generator-vs-student methods (`uses_pool = False`: DAFL, ZSKT, DFQ, DFAD)
  train a generator against the student and keep no pool: KD batches come
  straight from the generator. They own their epoch structure through `g_steps`
  and `kd_steps`: a round is `g_steps` generator updates, then `kd_steps`
  student updates each on a fresh generator batch (the release's
  `datafree_kd.py`: `synthesize()`, then `kd_steps` x `sample()`).

Members of every method (`Synthesizer`)
  uses_pool: bool, a class attribute.
  teacher, student: the frozen Flax modules; image_shape (H, W, C), mean, std,
    padding: the data geometry (the KD step augments with it); axis_name: the
    data axis inside `shard_map`, or None.
  (`Members` declares these data fields, num_classes with them, for the methods'
  frozen dataclasses to inherit; `members(info, ...)` fills them in `from_config`.)
  from_config(config, *, teacher, student, info, axis_name, unroll, dtype): classmethod
    building the method; `info` carries num_classes, image_shape, mean, std and
    crop_padding; `unroll` traces inner loops straight-line (XLA:CPU); `dtype` is the
    run's activation dtype (resolved once by the run skeleton).
  init(key, teacher_vars) -> state: host-side, outside `shard_map`. The state
    is a pytree of arrays, replicated over devices and checkpointed with the run
    (`DistillState.synth`); whatever a method keeps across calls lives in it
    (generator and optimizer states, BN momentum buffers, CMI's memory bank and
    MLP head with its optimizer).
  synthesize(state, teacher_vars, student_vars, key, adv_weight)
      -> (state, images, metrics):
    one synthesis call, per-device code inside `shard_map`. `key` is replicated
    and all randomness is drawn for the global batch (device-count invariant);
    `adv_weight` is the traced adversarial weight (0 during warmup); `images` is
    this device's stripe (B_local, H, W, C) uint8 of the global batch; `metrics`
    a dict of replicated scalars. Teacher and student variables are constants:
    no gradient is computed for them. For a generator-vs-student method a call
    is one round's `g_steps` generator updates and its images (the last update's
    batch, as the release returns) only feed the sample grids.

Optional hooks
  Host-dispatched inner steps (`HostSteps`, all four or none), so that XLA:CPU
  compiles one inner step instead of k copies (`Distiller.compile_synth`):
    begin(state, key) -> (carry, step keys (k,));
    inner_step(carry, step_key, state, teacher_vars, student_vars, adv_weight)
        -> carry;
    end(state, carry) -> (state, images, metrics);
    carry_specs(state) -> PartitionSpecs of the carry (batch fields sharded);
    synthesize == end(state, k x inner_step(begin(state, key))).
  reset_first_layer(state, key) -> state: the release's `reset_l0`, for methods
    with a generator (config.synth.reset_l0 at config.synth.reset_l0_epoch).

Required of generator-vs-student methods (`GeneratorVsStudent`)
  g_steps, kd_steps: ints, one round's generator and student updates.
  generator_step(state, teacher_vars, student_vars, key, adv_weight)
      -> (state, metrics): one generator update against the frozen student;
    `synthesize` is `g_steps` of them, and the host may dispatch them one by one
    (as `inner_step` on XLA:CPU).
  sample(state, key, n) -> this device's stripe of a global batch of n fresh
    generator images, uint8 like pool batches (no update).

What the run loop calls, per epoch
  Pool methods: `reset_first_layer` (at its epoch, where the method has it), one
  `synthesize` (or `begin`, k x `inner_step`, `end` where `host_steppable`), the
  images into the pool, then after warmup kd.steps KD updates on pool batches; with
  config.synth.calls_per_epoch = n > 1, n rounds of one call and kd.steps / n updates.
  Generator-vs-student methods: kd.steps // kd_steps rounds of `synthesize` (or
  g_steps x `generator_step`) followed by kd_steps KD updates, each on
  `sample(state, key, kd_batch)`; no pool is allocated or checkpointed
  (`distill.epochs.rounds`).
"""

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from fastdfkd_jax.run import loops, parallel


@runtime_checkable
class Synthesizer(Protocol):
  """What every synthesis method provides (see the module docstring)."""
  uses_pool: bool
  teacher: Any
  student: Any
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  padding: int
  axis_name: str | None

  @classmethod
  def from_config(cls, config, *, teacher, student, info, axis_name: str | None,
                  unroll: bool, dtype) -> "Synthesizer":
    ...

  def init(self, key: jax.Array, teacher_vars) -> Any:
    ...

  def synthesize(self, state, teacher_vars, student_vars, key: jax.Array,
                 adv_weight: jax.Array) -> tuple[Any, jax.Array, dict]:
    ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class Members:
  """The data members every method has (a base for the methods' frozen dataclasses):
  the frozen networks, the class count and the data geometry."""
  teacher: Any
  student: Any
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  padding: int
  axis_name: str | None = parallel.AXIS

  def _stripe(self, x: jax.Array) -> jax.Array:
    """This device's stripe of a global-batch array (all of it without a data axis)."""
    return x if self.axis_name is None else parallel.local_stripe(x, self.axis_name)


def members(info, *, teacher, student, axis_name: str | None) -> dict:
  """The `Members` fields of a method built by `from_config` (`info`: the data set's)."""
  return dict(teacher=teacher, student=student, num_classes=info.num_classes,
              image_shape=tuple(info.image_shape), mean=tuple(info.mean),
              std=tuple(info.std), padding=info.crop_padding, axis_name=axis_name)


def scan_host_steps(synth, state, teacher_vars, student_vars, key: jax.Array,
                    adv_weight: jax.Array):
  """`synthesize` of a method with the `HostSteps` pieces, as one trace:
  end(state, k x inner_step(begin(state, key))), the k steps a `lax.scan`
  (straight-line with `synth.hp.unroll`)."""
  carry, step_keys = synth.begin(state, key)

  def body(carry, step_key):
    return synth.inner_step(carry, step_key, state, teacher_vars, student_vars,
                            adv_weight), None

  carry, _ = loops.scan(body, carry, step_keys, synth.hp.unroll)
  return synth.end(state, carry)


@runtime_checkable
class HostSteps(Protocol):
  """The pieces of one `synthesize` call, dispatched one by one from the host."""

  def begin(self, state, key: jax.Array) -> tuple[Any, jax.Array]:
    ...

  def inner_step(self, carry, step_key: jax.Array, state, teacher_vars, student_vars,
                 adv_weight: jax.Array) -> Any:
    ...

  def end(self, state, carry) -> tuple[Any, jax.Array, dict]:
    ...

  def carry_specs(self, state) -> Any:
    ...


@runtime_checkable
class GeneratorVsStudent(Synthesizer, Protocol):
  """A method that trains a generator against the student and keeps no pool."""
  g_steps: int
  kd_steps: int

  def generator_step(self, state, teacher_vars, student_vars, key: jax.Array,
                     adv_weight: jax.Array) -> tuple[Any, dict]:
    ...

  def sample(self, state, key: jax.Array, n: int) -> jax.Array:
    ...


_REGISTRY: dict[str, type] = {}
_REQUIRED = ("from_config", "init", "synthesize")
_HOST_STEPS = ("begin", "inner_step", "end", "carry_specs")
_GENERATOR_VS_STUDENT = ("generator_step", "sample")


def register(name: str):
  """Class decorator registering a synthesis method as `config.method=name`.

  Raises:
    ValueError: the name is taken.
    TypeError: the class lacks a required hook (the message names them).
  """

  def deco(cls):
    if name in _REGISTRY:
      raise ValueError(f"synthesis method {name!r} registered twice")
    missing = _missing_hooks(cls)
    if missing:
      raise TypeError(f"synthesis method {name!r} ({cls.__name__}) lacks "
                      f"{', '.join(missing)}")
    _REGISTRY[name] = cls
    return cls

  return deco


def _missing_hooks(cls) -> list[str]:
  uses_pool = getattr(cls, "uses_pool", None)
  missing = [] if isinstance(uses_pool, bool) else ["uses_pool"]
  hooks = _REQUIRED + (_GENERATOR_VS_STUDENT if uses_pool is False else ())
  missing += [h for h in hooks if not callable(getattr(cls, h, None))]
  host = [h for h in _HOST_STEPS if callable(getattr(cls, h, None))]
  if host and len(host) < len(_HOST_STEPS):
    missing += [h for h in _HOST_STEPS if h not in host]
  return missing


def available() -> list[str]:
  """Names accepted by `get` (config.method), sorted."""
  return sorted(_REGISTRY)


def get(name: str) -> type:
  """The registered class of a method.

  Raises:
    ValueError: unknown name; the message lists the valid ones.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown synthesis method {name!r}; valid names: "
                     f"{', '.join(available())}")
  return _REGISTRY[name]


def build(config, *, teacher, student, info, axis_name: str | None = parallel.AXIS,
          unroll: bool = False, dtype=jnp.float32) -> Synthesizer:
  """The method named by `config.method`, built from the config (see `Synthesizer`);
  `dtype`: the run's activation dtype (its generator's)."""
  return get(config.method).from_config(config, teacher=teacher, student=student,
                                        info=info, axis_name=axis_name, unroll=unroll,
                                        dtype=dtype)


def host_steppable(synth: Synthesizer) -> bool:
  """Whether `synth` has the host-dispatched pieces begin/inner_step/end/carry_specs."""
  return isinstance(synth, HostSteps)
