"""mode=synthesize: a transfer set from a teacher alone, written as a product.

    python -m fastdfkd_jax.main --workdir=W --config.mode=synthesize \
        --config.transfer.num_images=5120 [--config.transfer.format=image_folder]

Makes ceil(transfer.num_images / batch_size) synthesis calls of `config.method`
(FastDFKD's `fast_meta` by default) with the run's teacher (loaded, or trained first
like mode=distill) and keeps every image in the pool (on device, or in host memory
with pool.on_device=False), then writes the first `num_images` of it into
W/transfer_set in `transfer.format` with its inspection (`fastdfkd_jax.export`).

No student is trained, so the adversarial term (synth.adv * L_adv, which steers
images towards where the student disagrees with the teacher) is 0 in every call,
as in a distillation run's warmup epochs: the set covers what the teacher's BN
statistics and classes ask for, without the hard samples the adversarial game adds.
The student network of the config is still built (the synthesis protocol takes its
variables) but its weights stay at their initialisation and, with weight 0, do not
change the images. Call c uses the key of distillation epoch c, so with the same
config its images are those of a distillation run's warmup epoch c.

Progress is logged per call (images, images/s, ETA) and written to
W/metrics.jsonl (one row per call, `epoch` = call). Checkpoints hold the whole
synthesis state and the pool every `checkpoint_every` calls, at SIGTERM/SIGINT
and at the end; re-running the same command resumes after the last checkpoint
(after a SIGKILL too) and makes the same images bit for bit.
"""

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from fastdfkd_jax import checkpoint, export, parallel, reporting, runs, xla_env
from fastdfkd_jax.distill import builder, loop, state as state_lib

TRANSFER_DIR = "transfer_set"


def num_calls(config: ml_collections.ConfigDict) -> int:
  """The synthesis calls that make transfer.num_images images."""
  return -(-config.transfer.num_images // config.batch_size)


def _pool_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with a pool of exactly num_calls slots (one per call, nothing evicted)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.pool.capacity = num_calls(config) * config.batch_size
  return c


def _end_call(run: loop.Run, out: loop.Outputs, state, call: int, metrics: dict,
              counters: dict, preemption) -> None:
  """Progress line, metrics row, checkpoint, preemption after synthesis call `call`."""
  config, calls = run.config, num_calls(run.config)
  last = call + 1 == calls
  counters["epoch"] = call
  counters["wall_seconds"] = out.reporter.wall_seconds()
  done = (call + 1) * config.batch_size
  rate = config.batch_size * counters["synth_calls_timed"] / max(
      counters["synth_seconds_timed"], 1e-9)
  logging.info("synthesized %d/%d images (call %d/%d): %.1f img/s, ETA %.0f s", min(
      done, config.transfer.num_images), config.transfer.num_images, call + 1, calls, rate,
      (calls - call - 1) * config.batch_size / rate)
  out.reporter.write_metrics(dict(
      epoch=call, images=done, synth_seconds=counters["synth_seconds"],
      wall_seconds=counters["wall_seconds"], teacher_acc=run.teacher_acc,
      **{k: float(v) for k, v in metrics.items()}))
  if last or preemption.requested or (call + 1) % config.checkpoint_every == 0:
    meta = checkpoint.model_meta(run.teacher_arch, run.info, "synthesize", **dict(
        counters, epoch=call, pool_slots=calls))
    checkpoint.save(out.mngr, call, meta, run.teacher_vars,
                    dict(state=state, host_pool=run.source.saved_state()))
  if preemption.requested and not last:
    raise runs.Preempted(f"preempted after synthesis call {call}; checkpoint saved")


def _synthesis_calls(run: loop.Run, out: loop.Outputs, state, counters: dict,
                     preemption) -> None:
  """The remaining synthesis calls, each with its epoch's key and adversarial weight 0."""
  config = run.config
  for call in range(counters["epoch"] + 1, num_calls(config)):
    key = jax.random.fold_in(jax.random.key(config.seed), call + 1)
    k_synth, _, k_reset = jax.random.split(key, 3)
    if (config.synth.reset_l0 and call == config.synth.reset_l0_epoch
        and run.reset_fn is not None):
      state = state.replace(synth=run.reset_fn(state.synth, k_reset))
    state, metrics = loop.synthesize(run, state, k_synth, jnp.float32(0.0), counters)
    metrics = jax.device_get(metrics)
    runs.check_finite(metrics, call)
    _end_call(run, out, state, call, metrics, counters, preemption)


def run_synthesize(config: ml_collections.ConfigDict, workdir: str,
                   preemption: runs.Preemption | None = None) -> dict:
  """mode=synthesize end to end; returns the summary (also WORKDIR/summary.json)."""
  preemption = preemption or runs.Preemption()
  config = _pool_config(config)
  run = loop.setup(config, workdir, preemption)
  state = state_lib.init_state(run.distiller, config, run.info, run.teacher_vars,
                               jax.random.fold_in(jax.random.key(config.seed), 0))
  out = loop.Outputs(eval_step=None, best_mngr=None, mngr=checkpoint.manager(
      os.path.join(workdir, "checkpoints"), config.keep_checkpoints))
  state, counters, _ = loop.resume(config, out.mngr, state, run.source)
  finished = runs.finished_summary(workdir, counters["epoch"] + 1, num_calls(config))
  if finished is not None:
    return finished
  out.reporter = reporting.Reporter(workdir, resume_wall_seconds=counters["wall_seconds"])
  out.reporter.truncate_metrics(counters["epoch"])
  run.programs = builder.build_programs(config, run.distiller, state, run.teacher_vars,
                                        host_pool=run.source.host_pool)
  compile_seconds = run.programs.synth_executable().compile_seconds
  logging.info("synthesize %d images with %s (method=%s k=%d, adversarial term off): "
               "%d calls of %d, %d devices, %s", config.transfer.num_images, run.teacher_arch,
               config.method, config.k, num_calls(config), config.batch_size,
               parallel.num_shards(run.mesh), xla_env.describe_dtype(config.dtype))
  _synthesis_calls(run, out, state, counters, preemption)
  t0 = time.time()
  transfer_dir = os.path.join(workdir, TRANSFER_DIR)
  inspection = export.export(workdir, transfer_dir, config.transfer.format)
  summary = dict(mode="synthesize", method=config.method, k=config.k,
                 num_images=inspection["num_images"], synthesis_calls=num_calls(config),
                 teacher=run.teacher_arch, dataset=run.info.name, teacher_acc=run.teacher_acc,
                 synth_seconds=counters["synth_seconds"], export_seconds=time.time() - t0,
                 wall_seconds=out.reporter.wall_seconds(), compile_seconds=compile_seconds,
                 num_devices=parallel.num_shards(run.mesh), transfer_set=transfer_dir,
                 format=config.transfer.format,
                 dtype=xla_env.resolve_dtype(config.dtype),
                 **{k: inspection[k] for k in ("per_class_count", "count_over_uniform",
                                               "mean_confidence", "diversity")})
  reporting.write_json(os.path.join(workdir, "summary.json"), summary)
  out.reporter.close()
  return summary
