"""mode=synthesize: a transfer set from a teacher alone, written as a product.

    python -m fastdfkd_jax.main --workdir=W --config.mode=synthesize \
        --config.transfer.num_images=5120 [--config.transfer.format=image_folder]

Makes ceil(transfer.num_images / batch_size) synthesis calls of `config.method`
(FastDFKD's `fast_meta` by default) with the run's teacher (loaded, or trained first
like mode=distill) and keeps every image in the pool (on device, or in host memory
with pool.on_device=False), then writes the first `num_images` of it into
W/transfer_set in `transfer.format` with its inspection (`transfer.export`).

No student is trained, so the adversarial term (synth.adv * L_adv, which steers
images towards where the student disagrees with the teacher) is 0 in every call,
as in a distillation run's warmup epochs: the set covers what the teacher's BN
statistics and classes ask for, without the hard samples the adversarial game adds.
The student network of the config is still built (the synthesis protocol takes its
variables) but its weights stay at their initialisation and, with weight 0, do not
change the images. Call c uses the key of distillation epoch c, so with the same
config its images are those of a distillation run's warmup epoch c.

Each call is one epoch of the run skeleton: progress is logged per call (images,
images/s, ETA) and written to W/metrics.jsonl (one row per call, `epoch` = call);
checkpoints hold the whole synthesis state and the pool every `checkpoint_every`
calls, at SIGTERM/SIGINT and at the end; re-running the same command resumes after
the last checkpoint (after a SIGKILL too) and makes the same images bit for bit.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from fastdfkd_jax.distill import builder, epochs, state as state_lib
from fastdfkd_jax.modes import distill as distill_mode
from fastdfkd_jax.run import checkpoint, skeleton
from fastdfkd_jax.transfer import export

TRANSFER_DIR = "transfer_set"


def num_calls(config: ml_collections.ConfigDict) -> int:
  """The synthesis calls that make transfer.num_images images."""
  return -(-config.transfer.num_images // config.batch_size)


def pool_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with a pool of exactly num_calls slots (one per call, nothing evicted)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.pool.capacity = num_calls(config) * config.batch_size
  return c


class SynthesizeTask:
  """The skeleton's `Task` for mode=synthesize: one synthesis call per epoch."""
  mode = "synthesize"
  counters = epochs.Counters
  saves_checkpoints = True
  first_epoch = 0

  def __init__(self, ctx: skeleton.Context):
    self.ctx, self.config = ctx, pool_config(ctx.config)
    self.parts = distill_mode.setup_parts(dataclasses.replace(ctx, config=self.config))
    self.epochs = num_calls(self.config)
    self.pool_slots = self.epochs
    self.run = None

  def init_state(self):
    p = self.parts
    return state_lib.init_state(p.distiller, self.config, p.info, p.teacher_vars,
                                jax.random.fold_in(jax.random.key(self.config.seed), 0))

  def restore(self, mngr, step: int, state):
    return distill_mode.restore_checkpoint(self, mngr, step, state)

  def prepare(self, state) -> float:
    p = self.parts
    programs = builder.build_programs(self.config, p.distiller, state, p.teacher_vars,
                                      p.source)
    self.run = epochs.Epochs(self.config, programs, p.source, p.teacher_vars,
                             p.distiller.synth.uses_pool, **distill_mode.restart_fns(p.distiller))
    return programs.synth_executable().compile_seconds

  def describe(self) -> str:
    c = self.config
    return (f"synthesize {c.transfer.num_images} images with {self.parts.teacher_arch} "
            f"(method={c.method} k={c.k}, adversarial term off): {self.epochs} calls of "
            f"{c.batch_size}")

  def epoch(self, state, counters, epoch: int):
    """Synthesis call `epoch` with its distillation epoch's keys and adversarial weight 0."""
    config, run = self.config, self.run
    k_synth, _, k_reset = epochs.epoch_keys(config, epoch)
    state = epochs.restart(run, state, epoch, k_reset)
    state, _, metrics, counters = epochs.synthesize(run, state, k_synth, jnp.float32(0.0),
                                                    counters)
    return state, counters, metrics

  def evaluate(self, state, counters, epoch: int, last: bool):
    c = self.config
    done = (epoch + 1) * c.batch_size
    rate = c.batch_size * counters.synth_calls_timed / max(counters.synth_seconds_timed, 1e-9)
    logging.info("synthesized %d/%d images (call %d/%d): %.1f img/s, ETA %.0f s",
                 min(done, c.transfer.num_images), c.transfer.num_images, epoch + 1,
                 self.epochs, rate, (self.epochs - epoch - 1) * c.batch_size / rate)
    return counters, {}, dict(images=done, synth_seconds=counters.synth_seconds,
                              teacher_acc=self.parts.teacher_acc)

  def checkpoint_items(self, state, counters):
    p = self.parts
    meta = checkpoint.model_meta(p.teacher_arch, p.info, self.mode, **counters.to_meta(),
                                 pool_slots=self.pool_slots)
    return meta, p.teacher_vars, dict(state=state, host_pool=p.source.saved_state())

  def summary(self, state, counters) -> dict:
    c, p = self.config, self.parts
    t0 = time.time()
    inspection = export.export(self.ctx.workdir, self.ctx.path(TRANSFER_DIR),
                               c.transfer.format, self.ctx.config)
    return dict(method=c.method, k=c.k, num_images=inspection["num_images"],
                synthesis_calls=self.epochs, teacher=p.teacher_arch, dataset=p.info.name,
                teacher_acc=p.teacher_acc, synth_seconds=counters.synth_seconds,
                export_seconds=time.time() - t0, transfer_set=self.ctx.path(TRANSFER_DIR),
                format=c.transfer.format,
                **{k: inspection[k] for k in ("per_class_count", "count_over_uniform",
                                              "mean_confidence", "diversity")})


def setup(ctx: skeleton.Context) -> SynthesizeTask:
  return SynthesizeTask(ctx)
