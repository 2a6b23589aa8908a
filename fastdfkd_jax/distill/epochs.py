"""One distillation epoch from the compiled programs, and the counters it advances.

An epoch of a pool method is one synthesis call (its own dispatch, timed blocked on
its outputs) and, after warmup, `kd.steps` KD updates (timed); or, where the
programs are fused (`loop=auto` on TPU/GPU, `loop=fused`), synthesis and KD in one
dispatch. A fused epoch cannot time its synthesis share, so every `TIMED_EVERY`-th
KD epoch (the first one included) runs split and measures it; the fused epochs
between add the mean of the measured calls. Both forms draw the same keys and
compute the same steps.

An epoch in rounds (`in_rounds`): a generator-vs-student method's kd.steps //
kd_steps rounds of one synthesis call, each followed by kd_steps KD updates on
fresh generator samples, or a pool method's synth.calls_per_epoch > 1 calls.
"""

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from fastdfkd_jax.distill import builder, sources
from fastdfkd_jax.run import reporting, skeleton

TIMED_EVERY = 10


@dataclasses.dataclass(frozen=True)
class Counters(skeleton.Counters):
  """A distillation (or synthesis) run's counters, kept in its checkpoints' meta."""
  synth_seconds: float = 0.0        # synthesis time, measured (fused: mean of the timed)
  kd_seconds: float = 0.0
  synth_calls_timed: int = 0
  synth_seconds_timed: float = 0.0
  synth_images: int = 0
  kd_images: int = 0
  warmup_synth_seconds: float = 0.0
  student_acc: float | None = None  # the latest evaluation
  best_student_acc: float = 0.0

  def per_synth_call(self) -> float:
    return self.synth_seconds_timed / max(self.synth_calls_timed, 1)


@dataclasses.dataclass(frozen=True)
class Epochs:
  """What an epoch runs: the programs, the KD source and the synthesis hooks."""
  config: ml_collections.ConfigDict
  programs: builder.Programs
  source: sources.KDSource
  teacher_vars: Any
  uses_pool: bool
  reset_fn: Callable | None = None   # the method's first-layer reset, jitted
  reinit_fn: Callable | None = None  # the method's whole-generator re-init, jitted

  def in_rounds(self) -> bool:
    return self.source.synthetic and (
        not self.uses_pool or self.config.synth.calls_per_epoch > 1)

  def kd_chunk(self) -> int:
    """KD updates per `Programs.kd` call: an epoch's, a round's, or a generator round's."""
    if not self.source.synthetic:
      return self.config.kd.steps
    if self.uses_pool:
      return self.config.kd.steps // self.config.synth.calls_per_epoch
    return self.config.synth.kd_steps


def epoch_keys(config: ml_collections.ConfigDict, epoch: int):
  """(synthesis, KD, reset) keys of `epoch`."""
  return jax.random.split(jax.random.fold_in(jax.random.key(config.seed), epoch + 1), 3)


def adversarial_weight(config: ml_collections.ConfigDict, epoch: int) -> jax.Array:
  return jnp.float32(config.synth.adv if epoch >= config.warmup else 0.0)


def synthesize(ep: Epochs, state, key, adv, counters: Counters):
  """One synthesis call, timed blocked on its outputs -> (state, images, metrics, counters)."""
  t0 = time.time()
  state, images, metrics = ep.programs.synth(state, ep.teacher_vars, key, adv)
  jax.block_until_ready((state, images, metrics))
  dt = time.time() - t0
  if ep.source.kind == "host_pool":
    ep.source.host_pool.add(jax.device_get(images))
  counters = counters.replace(synth_seconds=counters.synth_seconds + dt,
                              synth_seconds_timed=counters.synth_seconds_timed + dt,
                              synth_calls_timed=counters.synth_calls_timed + 1)
  return state, images, jax.device_get(metrics), counters


def distill(ep: Epochs, state, key, n_steps: int, counters: Counters, epoch: int):
  """n_steps KD updates, timed -> (state, metrics, counters)."""
  t0 = time.time()
  rate = reporting.RateLogger(n_steps, ep.config.log_every, ep.config.batch_size, "kd")
  state, metrics = ep.programs.kd(state, ep.teacher_vars, key, n_steps,
                                  on_step=lambda done: rate.maybe_log(done, epoch))
  metrics = jax.device_get(metrics)
  return state, metrics, counters.replace(kd_seconds=counters.kd_seconds + time.time() - t0)


def fused(ep: Epochs, state, keys, adv, counters: Counters):
  """Synthesis + kd.steps KD updates in one dispatch -> (state, metrics, counters); its
  synthesis share is the mean of the timed calls."""
  t0 = time.time()
  state, metrics = ep.programs.epoch(state, ep.teacher_vars, keys[0], keys[1], adv,
                                     ep.config.kd.steps)
  metrics = jax.device_get(metrics)
  elapsed, per_call = time.time() - t0, counters.per_synth_call()
  return state, metrics, counters.replace(
      synth_seconds=counters.synth_seconds + per_call,
      kd_seconds=counters.kd_seconds + max(elapsed - per_call, 0.0))


def rounds(ep: Epochs, state, key, adv, kd_phase: bool, counters: Counters, epoch: int):
  """kd.steps // kd_chunk rounds of one timed synthesis call and, after warmup, kd_chunk
  KD updates -> (state, images, metrics averaged over the rounds, counters)."""
  n_kd = ep.kd_chunk()
  k_synth, k_kd = jax.random.split(key)
  rows = []
  for r in range(ep.config.kd.steps // n_kd):
    state, images, metrics, counters = synthesize(ep, state, jax.random.fold_in(k_synth, r),
                                                  adv, counters)
    if kd_phase:
      state, kd_metrics, counters = distill(ep, state, jax.random.fold_in(k_kd, r), n_kd,
                                            counters, epoch)
      metrics = dict(metrics, **kd_metrics)
    rows.append(metrics)
  return state, images, jax.tree.map(lambda *v: sum(v) / len(v), *rows), counters


def timed_epoch(config: ml_collections.ConfigDict, epoch: int) -> bool:
  """Whether a fused run's KD epoch runs split, to measure its synthesis call."""
  return (epoch - config.warmup) % TIMED_EVERY == 0


def restart(ep: Epochs, state, epoch: int, key):
  """The generator restarts due at the start of `epoch`: the release's first-layer reset
  at synth.reset_l0_epoch (synth.reset_l0), a whole new generator every synth.g_life
  epochs (NAYER's g_life), for the methods that have them."""
  synth = ep.config.synth
  if synth.reset_l0 and epoch == synth.reset_l0_epoch and ep.reset_fn is not None:
    state = state.replace(synth=ep.reset_fn(state.synth, key))
  if synth.g_life and epoch and epoch % synth.g_life == 0 and ep.reinit_fn is not None:
    state = state.replace(synth=ep.reinit_fn(state.synth, jax.random.fold_in(key, 1)))
  return state


def run_epoch(ep: Epochs, state, counters: Counters, epoch: int):
  """One epoch -> (state, the newest synthesis images or None, host metrics, counters)."""
  config = ep.config
  k_synth, k_kd, k_reset = epoch_keys(config, epoch)
  if ep.source.synthetic:
    state = restart(ep, state, epoch, k_reset)
  adv, kd_phase = adversarial_weight(config, epoch), epoch >= config.warmup
  images, metrics = None, {}
  if ep.in_rounds():
    state, images, metrics, counters = rounds(ep, state, k_synth, adv, kd_phase, counters,
                                              epoch)
  elif ep.programs.structure.fused and kd_phase and not timed_epoch(config, epoch):
    state, metrics, counters = fused(ep, state, (k_synth, k_kd), adv, counters)
  else:
    if ep.source.synthetic:
      state, images, metrics, counters = synthesize(ep, state, k_synth, adv, counters)
    if kd_phase:
      state, kd_metrics, counters = distill(ep, state, k_kd, config.kd.steps, counters, epoch)
      metrics = dict(metrics, **kd_metrics)
  return state, images, metrics, count(ep, epoch, counters)


def count(ep: Epochs, epoch: int, counters: Counters) -> Counters:
  """The images synthesized (pool methods: one batch per call; generator-vs-student
  methods: the fresh KD samples) and seen by the student (KD batches) so far, and the
  synthesis seconds of the synthesis-only (warmup) epochs."""
  config, kd_phase = ep.config, epoch >= ep.config.warmup
  synth_images, kd_images = counters.synth_images, counters.kd_images
  if ep.source.synthetic and ep.uses_pool:   # each call's batch, into the pool
    synth_images += config.batch_size * config.synth.calls_per_epoch
  elif ep.source.synthetic and kd_phase:     # every KD batch is a fresh sample
    synth_images += config.kd.steps * config.batch_size
  if kd_phase:
    return counters.replace(synth_images=synth_images,
                            kd_images=kd_images + config.kd.steps * config.batch_size)
  return counters.replace(synth_images=synth_images,
                          warmup_synth_seconds=counters.synth_seconds)
