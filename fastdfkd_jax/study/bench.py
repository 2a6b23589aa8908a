"""Throughput benchmark of the jitted synthesis / KD / fused-epoch steps.

  python -m fastdfkd_jax.bench \
      --config=configs/fastdfkd_cifar.py:cifar10-wrn40_2-wrn16_1-k5 \
      [--config.FIELD=VALUE ...] [--what=synth,kd,epoch] [--repeats=5] \
      [--kd_steps=20] [--epoch_kd_steps=400] [--profile_dir=DIR] \
      [--torch_reference=../shared/bench/torch_reference.py]
      (the PyTorch comparison lives in `bench_torch`)

Random-weight teacher and student (no checkpoint, no data files: only
`data.get_info` for shapes), the Distiller built on the full mesh,
every step compiled ahead of time (`.lower().compile()`, reported as
compile_s), one warm-up call, then `--repeats` timed calls each ended by
`jax.block_until_ready` on all outputs; medians are reported. The state is
donated by every call, so the returned state feeds the next call.

What runs is what `distill.builder.build_programs` picks for the config, exactly
as in `modes.distill`:
  - synth: one synthesis call (k inner steps: lax.scan in one call on TPU/GPU;
    on CPU k host dispatches of one compiled inner step);
  - kd:    `kd_steps` KD updates: one scanned dispatch (scan backends) or a host
           loop of the 1-step compiled function (CPU);
  - epoch: one synth call + `epoch_kd_steps` KD updates as above, or with
           a fused structure (`loop=auto` on TPU/GPU, `--config.loop=fused`) the fused
           program (synthesis + KD scan in one dispatch).
`epoch` also measures synth and kd (if not requested) to report the predicted
synth + n * kd-step time and the fusion overhead.

One JSON line per measurement on stdout (docs/BENCHMARKS.md lists the fields).
`flops` is the XLA cost analysis of the per-device program; XLA counts a
while-loop body once whatever its trip count, so for programs with `lax.scan`
loops the straight-line (unrolled) equivalent is lowered and analysed instead
(`flops_source`).
"""

import dataclasses
import json
import os
import statistics
from typing import Callable

from absl import logging

from fastdfkd_jax.study import bench_torch
from fastdfkd_jax.study.timing import (cost_flops, peak_matmul_flops_per_s, safe_cost,
                                       time_calls)
from fastdfkd_jax import errors

WHATS = ("synth", "kd", "epoch")


# ------------------------------------------------------------------ helpers
class Bench:
  """Distiller, random teacher, the (donated, threaded) state and the programs that
  `distill.builder` picks for one config."""

  def __init__(self, config, profile_dir: str = "", warmup_calls: int = 1):
    import jax
    import jax.numpy as jnp
    from fastdfkd_jax import data, models
    from fastdfkd_jax.run import parallel, xla_env
    from fastdfkd_jax import synthesis
    from fastdfkd_jax.distill import builder, sources, state as state_lib, steps
    from fastdfkd_jax.models import util as model_util
    self.config = config
    if not config.pool.on_device:
      raise errors.UserError("the benchmark measures the on-device pool path; drop "
                             "--config.pool.on_device=False")
    self.info = data.get_info(config.dataset.name)
    self.mesh = parallel.make_mesh()
    self.dtype_name = xla_env.resolve_dtype(config.dtype)
    self.distiller = steps.build(
        config, self.info, config.teacher.arch, self.mesh,
        sources.kind(config, synthesis.get(config.method).uses_pool), self.dtype_name)
    root = jax.random.key(config.seed)
    teacher_vars = model_util.init_variables(
        models.get_model(config.teacher.arch, self.info.num_classes),
        jax.random.fold_in(root, 1), self.info.image_shape)
    self.teacher_vars = parallel.put_replicated(teacher_vars, self.mesh)
    self.state = state_lib.init_state(self.distiller, config, self.info, self.teacher_vars,
                                      jax.random.fold_in(root, 0))
    self.programs = builder.build_programs(config, self.distiller, self.state,
                                           self.teacher_vars)
    self.structure = self.programs.structure
    self.adv = jnp.float32(config.synth.adv)
    self.dtype = model_util.activation_dtype(self.dtype_name)
    self.profile_dir = profile_dir
    self.warmup_calls = warmup_calls
    self._flops_unrolled: dict[str, float | None] = {}
    self._calls = 0
    self.results: dict[str, dict] = {}
    self.base = dict(
        teacher=config.teacher.arch, student=config.student.arch, dataset=self.info.name,
        method=config.method, k=config.k, batch=config.batch_size,
        num_devices=parallel.num_shards(self.mesh),
        device_kind=jax.devices()[0].device_kind, backend=jax.default_backend(),
        dtype=self.dtype_name, loop=self.structure.description, jax=jax.__version__)

  # ------------------------------------------------------------ plumbing
  def _key(self):
    import jax
    self._calls += 1
    return jax.random.fold_in(jax.random.key(1234), self._calls)

  def flops_unrolled(self, name) -> float | None:
    """Cost analysis of the straight-line equivalent of `name` (lowered, not compiled).

    'synth': the synthesis call with the k inner steps unrolled; 'kdstep': one
    KD update. XLA's cost analysis counts a while body once, so these are what
    scanned programs are scaled from.
    """
    if name not in self._flops_unrolled:
      import jax
      d, key = self.distiller, jax.random.key(0)
      if name == "synth":
        synth = dataclasses.replace(d.synth, hp=dataclasses.replace(d.synth.hp, unroll=True))
        lowered = dataclasses.replace(d, synth=synth).jit_synth(self.state).lower(
            self.state, self.teacher_vars, key, self.adv)
      else:
        lowered = d.jit_kd_steps(self.state, 1, unroll=True).lower(
            self.state, self.teacher_vars, key)
      self._flops_unrolled[name] = cost_flops(safe_cost(lowered))
    return self._flops_unrolled[name]

  def _flops(self, parts: list, straight: list[tuple[str, int]]):
    """(flops, raw, source): executables' flops x calls, or the straight-line estimate.

    parts: (builder.Executable, calls) that one timed call runs; straight: the same
    work as (straight-line program, count), used when an executable holds a scan
    (only the scans matter: the tiny threefry while loops of jax.random on CPU carry
    no convolution FLOPs).
    """
    flops = [(None if e.compiled is None else cost_flops(safe_cost(e.compiled)), c)
             for e, c in parts]
    raw = None
    if all(f is not None for f, _ in flops):
      raw = sum(f * c for f, c in flops)
    if raw is not None and not any(e.scanned for e, _ in parts):
      return raw, raw, "compiled"
    est = [(self.flops_unrolled(n), c) for n, c in straight]
    if all(f is not None for f, _ in est):
      return sum(f * c for f, c in est), raw, "lowered_unrolled"
    return raw, raw, "compiled_while_body_once"

  def _profile(self, what, call):
    if not self.profile_dir:
      return
    import jax
    path = os.path.join(self.profile_dir, what)
    with jax.profiler.trace(path):
      jax.block_until_ready(call())
    logging.info("profile of one %s call written to %s", what, path)

  def _ensure_pool(self):
    if int(self.state.pool.filled) == 0:
      self._synth_call()

  # ------------------------------------------------------------ steps
  def _synth_call(self):
    self.state, images, metrics = self.programs.synth(self.state, self.teacher_vars,
                                                      self._key(), self.adv)
    return self.state, images, metrics

  def _kd_call(self, n):
    self.state, metrics = self.programs.kd(self.state, self.teacher_vars, self._key(), n)
    return self.state, metrics

  def _epoch_call(self, n):
    if not self.structure.fused:
      state, images, m_synth = self._synth_call()
      del images
      state, m_kd = self._kd_call(n)
      return state, dict(m_synth, **m_kd)
    self.state, metrics = self.programs.epoch(self.state, self.teacher_vars, self._key(),
                                              self._key(), self.adv, n)
    return self.state, metrics

  # ------------------------------------------------------------ measurements
  def _record(self, what, times, compile_s, flops, flops_raw, flops_source, images,
              **extra) -> dict:
    import jax
    med = statistics.median(times)
    stats = jax.local_devices()[0].memory_stats() or {}   # None on CPU
    extra.setdefault("device_peak_bytes", stats.get("peak_bytes_in_use"))
    row = dict(what=what, **self.base, compile_s=round(compile_s, 4),
               median_s=med, min_s=min(times), max_s=max(times), repeats=len(times),
               warmup_calls=self.warmup_calls,
               images_per_s=images / med, **extra,
               flops=flops, flops_source=flops_source, flops_compiled_raw=flops_raw,
               flops_scope="per_device",
               achieved_flops_per_s=(flops / med) if flops else None)
    self.results[what] = row
    return row

  def measure_synth(self, repeats: int) -> dict:
    ex = self.programs.synth_executable()
    times = time_calls(self._synth_call, repeats, self.warmup_calls)
    self._profile("synth", self._synth_call)
    flops, raw, src = self._flops([(ex, 1)], [("synth", 1)])
    return self._record("synth", times, ex.compile_seconds, flops, raw, src,
                        self.config.batch_size)

  def _kd_parts(self, kd_steps: int) -> list:
    _, calls = self.programs.kd_dispatch(kd_steps)
    return [(self.programs.kd_executable(kd_steps), calls)]

  def measure_kd(self, repeats: int, kd_steps: int) -> dict:
    self._ensure_pool()
    parts = self._kd_parts(kd_steps)
    call = lambda: self._kd_call(kd_steps)
    times = time_calls(call, repeats, self.warmup_calls)
    self._profile("kd", call)
    flops, raw, src = self._flops(parts, [("kdstep", kd_steps)])
    scan = self.structure.kd == "scan"
    row = self._record("kd", times, parts[0][0].compile_seconds, flops, raw, src,
                       self.config.batch_size * kd_steps, kd_steps=kd_steps,
                       kd_structure=("scan: one jit_kd_steps dispatch" if scan
                                     else "host loop of the 1-step compiled function"))
    row["kd_step_s"] = row["median_s"] / kd_steps
    return row

  def measure_epoch(self, repeats: int, n: int) -> dict:
    self._ensure_pool()
    if self.structure.fused:
      parts = [(self.programs.epoch_executable(n), 1)]
      structure = "fused: jit_epoch (synth + KD scan) in one dispatch"
    else:
      parts = [(self.programs.synth_executable(), 1)] + self._kd_parts(n)
      structure = f"one synth call + {self.structure.kd} KD"
    compile_s = sum(e.compile_seconds for e, _ in parts)
    call = lambda: self._epoch_call(n)
    times = time_calls(call, repeats, self.warmup_calls)
    self._profile("epoch", call)
    flops, raw, src = self._flops(parts, [("synth", 1), ("kdstep", n)])
    med = statistics.median(times)
    predicted = overhead = None
    if "synth" in self.results and "kd" in self.results:
      predicted = self.results["synth"]["median_s"] + n * self.results["kd"]["kd_step_s"]
      overhead = med / predicted - 1.0
    b = self.config.batch_size
    return self._record(
        "epoch", times, compile_s, flops, raw, src, b + b * n, epoch_kd_steps=n,
        epoch_structure=structure, synth_plus_kd_s=predicted, overhead_frac=overhead)


# ------------------------------------------------------------------ driver
def run(config, what=WHATS, repeats: int = 5, kd_steps: int = 20, epoch_kd_steps: int = 400,
        profile_dir: str = "", torch_reference: str = "", peak_matmul_size: int = 0,
        emit: Callable[[dict], None] | None = None, warmup_calls: int = 1,
        torch_python: str = "", torch_amp=("none",)) -> list[dict]:
  """Runs the measurements; returns (and emits) one dict per JSON line."""
  import jax
  from fastdfkd_jax.config import checks as config_checks
  from fastdfkd_jax.run import parallel
  what = [w.strip() for w in what if w.strip()]
  for w in what:
    if w not in WHATS:
      raise errors.UserError(f"--what={w!r}: choose from {', '.join(WHATS)}")
  bad_amp = [a for a in torch_amp if a not in ("none", "bf16")]
  if bad_amp:
    raise errors.UserError(f"--torch_amp={','.join(bad_amp)}: choose from none, bf16")
  if repeats < 1 or kd_steps < 1 or epoch_kd_steps < 1 or warmup_calls < 0:
    raise errors.UserError("--repeats, --kd_steps and --epoch_kd_steps must be >= 1, "
                           "--warmup_calls >= 0")
  parallel.maybe_initialize_distributed()
  config_checks.validate(config)
  emit = emit or (lambda row: print(json.dumps(row), flush=True))
  bench = Bench(config, profile_dir, warmup_calls)
  peak = {}
  if peak_matmul_size >= 0:
    size = peak_matmul_size or (2048 if jax.default_backend() == "cpu" else 8192)
    peak = peak_matmul_flops_per_s(bench.dtype, size)
    logging.info("peak matmul %.3g FLOP/s (%d^2 %s)", peak["peak_matmul_flops_per_s"],
                 size, peak["peak_matmul_dtype"])
  plan = list(what)
  if "epoch" in plan:  # the prediction needs synth and kd medians of this process
    plan = [w for w in WHATS if w in plan or w in ("synth", "kd")]
  rows = []
  for w in plan:
    if w == "synth":
      row = bench.measure_synth(repeats)
    elif w == "kd":
      row = bench.measure_kd(repeats, kd_steps)
    else:
      row = bench.measure_epoch(repeats, epoch_kd_steps)
    if peak:
      row.update(peak)
      achieved = row["achieved_flops_per_s"]
      row["fraction_of_peak"] = achieved / peak["peak_matmul_flops_per_s"] if achieved else None
    else:
      row.update(peak_matmul_flops_per_s=None, fraction_of_peak=None)
    if w not in what:
      row["implied_by"] = "epoch"
    emit(row)
    rows.append(row)
    for amp in (torch_amp if torch_reference and w in what else ()):
      cmp_row = bench_torch.torch_compare(row, torch_reference, config, kd_steps, repeats,
                                          python=torch_python, amp=amp)
      if cmp_row is not None:
        emit(cmp_row)
        rows.append(cmp_row)
  return rows
