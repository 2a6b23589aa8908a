"""The step builder: which compiled programs a run dispatches, chosen in one place.

`choose(config, distiller)` decides the structure from the config and backend
(via `loops`): KD steps as one scanned dispatch (TPU/GPU) or driven from the
host one step per call (CPU), or from a host-memory pool; the k inner synthesis
steps as one program or dispatched from the host; and synthesis + all KD steps
of an epoch as one program (`fused`: `loop=auto` on TPU/GPU and `loop=fused`, for a
pool method with one synthesis call per epoch). `build_programs` returns the
callables for that structure; `modes.distill`, `modes.synthesize` and `bench` use
it and keep no copy of the choice.
"""

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fastdfkd_jax.run import loops, parallel
from fastdfkd_jax import synthesis
from fastdfkd_jax.distill import pool as pool_lib
from fastdfkd_jax.distill.sources import KDSource
from fastdfkd_jax.distill.steps import Distiller


@dataclasses.dataclass(frozen=True)
class Structure:
  """What runs. kd: 'scan' (n steps in one dispatch), 'host' (n dispatches of one
  compiled step) or 'host_pool' (n steps on batches sampled from a host pool);
  synth_inner: loops.inner_structure, 'host' only for host-steppable methods;
  fused: synthesis + KD scan of an epoch in one dispatch."""
  kd: str
  synth_inner: str
  fused: bool
  description: str


def choose(config: ml_collections.ConfigDict, distiller: Distiller) -> Structure:
  """The structure for a config on this backend."""
  scan = loops.use_scan(config)
  on_host = distiller.kd_kind in ("host_pool", "data_host")
  kd = "host_pool" if on_host else ("scan" if scan else "host")
  inner = loops.inner_structure(config)
  if inner == "host" and not synthesis.host_steppable(distiller.synth):
    inner = "unroll"
  fused = (loops.fuse_epochs(config) and kd == "scan" and distiller.kd_kind == "pool"
           and config.synth.calls_per_epoch == 1)
  description = f"{loops.describe(config)} kd={kd} fused_epoch={fused}"
  return Structure(kd=kd, synth_inner=inner, fused=fused, description=description)


@dataclasses.dataclass
class Executable:
  """One compiled program: the callable, its compile time, the XLA executable (None for
  the host-dispatched synthesis, which is several) and whether it holds a lax.scan."""
  fn: Callable
  compile_seconds: float
  compiled: Any
  scanned: bool


def _abstract(tree):
  """Shapes, dtypes and shardings of a pytree of arrays (lowering needs no values)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


class Programs:
  """The compiled callables of one structure, compiled on first use and cached."""

  def __init__(self, structure: Structure, distiller: Distiller, state, teacher_vars,
               data_pool: pool_lib.Pool | None = None,
               host_pool: pool_lib.HostPool | None = None):
    self.structure = structure
    self.distiller = distiller
    self.teacher_vars = teacher_vars
    self.data_pool = data_pool
    self.host_pool = host_pool
    self._state = _abstract(state)
    self._live_state = state   # only until the synthesis program is compiled
    self._executables: dict[str, Executable] = {}
    self._key0, self._adv0 = jax.random.key(0), jnp.float32(0.0)

  # -------------------------------------------------------------- compile
  def _compile(self, name: str, make: Callable[[], Any], scanned: bool,
               compiled: bool = True) -> Executable:
    if name not in self._executables:
      t0 = time.perf_counter()
      fn = make()
      dt = time.perf_counter() - t0
      self._executables[name] = Executable(fn, dt, fn if compiled else None, scanned)
      logging.info("compiled %s in %.2f s", name, dt)
    return self._executables[name]

  def synth_executable(self) -> Executable:
    """The synthesis call (needs the state given at build time still alive)."""
    host = self.structure.synth_inner == "host"
    state = self._live_state
    make = lambda: self.distiller.compile_synth(state, self.teacher_vars, self._key0,
                                                self._adv0, host_inner=host)
    ex = self._compile("synth", make, self.structure.synth_inner == "scan",
                       compiled=not host)
    self._live_state = None
    return ex

  def kd_dispatch(self, n_steps: int) -> tuple[str, int]:
    """(executable name, dispatches) of n_steps KD updates."""
    return {"scan": (f"kd{n_steps}", 1), "host": ("kd1", n_steps),
            "host_pool": ("kd_batch", n_steps)}[self.structure.kd]

  def kd_executable(self, n_steps: int) -> Executable:
    name, _ = self.kd_dispatch(n_steps)
    d, s, t = self.distiller, self._state, self.teacher_vars
    if name == "kd_batch":
      batch0 = parallel.put_batch(np.zeros((d.kd_batch,) + tuple(d.synth.image_shape),
                                           np.uint8), d.mesh)
      make = lambda: d.jit_kd_batch().lower(s.student, t, batch0, self._key0).compile()
      return self._compile(name, make, scanned=False)
    steps, unroll = (n_steps, False) if name != "kd1" else (1, True)
    extra = () if self.data_pool is None else (self.data_pool,)
    make = lambda: d.jit_kd_steps(s, steps, unroll, self.data_pool).lower(
        s, t, self._key0, *extra).compile()
    return self._compile(name, make, scanned=not unroll)

  def epoch_executable(self, n_steps: int) -> Executable:
    """The fused epoch (structure.fused only)."""
    if not self.structure.fused:
      raise ValueError("this structure has no fused epoch (see `choose`)")
    d, s = self.distiller, self._state
    make = lambda: d.jit_epoch(s, n_steps).lower(s, self.teacher_vars, self._key0,
                                                 self._key0, self._adv0).compile()
    return self._compile(f"epoch{n_steps}", make, scanned=True)

  def precompile(self, n_steps: int, synthetic: bool) -> float:
    """Compiles what the epochs of n_steps KD updates run (a fused structure: the fused
    epoch and the split one its timed epochs run); the seconds it took."""
    programs = [self.synth_executable()] if synthetic else []
    programs.append(self.kd_executable(n_steps))
    if self.structure.fused:
      programs.append(self.epoch_executable(n_steps))
    return sum(p.compile_seconds for p in programs)

  # ----------------------------------------------------------------- calls
  def synth(self, state, teacher_vars, key, adv):
    """One synthesis call -> (state, images, metrics)."""
    return self.synth_executable().fn(state, teacher_vars, key, adv)

  def kd(self, state, teacher_vars, key, n_steps: int,
         on_step: Callable[[int], None] | None = None):
    """n_steps KD updates -> (state, {'kd_loss': mean}); dispatch i gets fold_in(key, i).
    Nothing syncs with the host; `on_step(steps_done)` runs after each dispatch."""
    name, calls = self.kd_dispatch(n_steps)
    fn = self.kd_executable(n_steps).fn
    per_call = n_steps // calls
    student, loss_sum = state.student, 0.0
    for i in range(calls):
      step_key = jax.random.fold_in(key, i)
      if name == "kd_batch":
        batch = parallel.put_batch(self.host_pool.sample(jax.random.fold_in(step_key, 1),
                                                         self.distiller.kd_batch),
                                   self.distiller.mesh)
        student, metrics = fn(student, teacher_vars, batch, step_key)
      else:
        extra = () if self.data_pool is None else (self.data_pool,)
        state, metrics = fn(state.replace(student=student), teacher_vars, step_key, *extra)
        student = state.student
      loss_sum = loss_sum + metrics["kd_loss"]
      if on_step is not None:
        on_step((i + 1) * per_call)
    return state.replace(student=student), dict(kd_loss=loss_sum / calls)

  def epoch(self, state, teacher_vars, k_synth, k_kd, adv, n_steps: int):
    """The fused epoch: synthesis + n_steps KD updates in one dispatch, with the keys the
    split form's `synth` and `kd` (its one scanned dispatch) use."""
    return self.epoch_executable(n_steps).fn(state, teacher_vars, k_synth,
                                             jax.random.fold_in(k_kd, 0), adv)


def build_programs(config: ml_collections.ConfigDict, distiller: Distiller, state,
                   teacher_vars, source: KDSource | None = None) -> Programs:
  """The programs a run of `config` dispatches on this backend. `state` is the initial
  state (its shapes and shardings; the host-driven synthesis also runs `begin` on it);
  `source` the run's KD source (its data pool or host pool)."""
  source = source or KDSource(distiller.kd_kind)
  return Programs(choose(config, distiller), distiller, state, teacher_vars,
                  source.data_pool, source.host_pool)
