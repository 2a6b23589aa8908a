"""mode=distill: a student from a teacher alone (FastDFKD, or any registered synthesis
method, or a KD baseline), plugged into the run skeleton.

Setup (`setup_parts`, shared with mode=synthesize): the data set, the teacher (loaded,
or trained first in WORKDIR/teacher), its test score, the Distiller and the KD source
(`distill.sources`). An epoch is `distill.epochs.run_epoch`; after it the student is
evaluated (`eval_every`), the best one kept in checkpoints/best, and sample grids of
the newest synthesis batch written (`sample_every`).
"""

import dataclasses
import os
from typing import Any

import jax
from absl import logging

from fastdfkd_jax import data, synthesis
from fastdfkd_jax.data import segmentation
from fastdfkd_jax.distill import builder, epochs, pool as pool_lib, samples, sources, steps
from fastdfkd_jax.distill import state as state_lib
from fastdfkd_jax.evaluation import metrics
from fastdfkd_jax.modes import train_teacher
from fastdfkd_jax.run import checkpoint, parallel, reporting, skeleton
from fastdfkd_jax.teacher import loader
from fastdfkd_jax.training import optim
from fastdfkd_jax.transfer import formats

Counters = epochs.Counters


def obtain_teacher(ctx: skeleton.Context, info) -> tuple[Any, dict]:
  """Loads config.teacher.checkpoint, or trains the teacher first (in WORKDIR/teacher)
  where `teacher.train_if_missing` allows."""
  config, path = ctx.config, ctx.config.teacher.checkpoint
  if not path:
    path = ctx.path("teacher")
    if not ctx.config.teacher.train_if_missing and not _finished(path):
      raise checkpoint.CheckpointError(
          "no teacher: set --config.teacher.checkpoint=DIR (a train_teacher workdir "
          "or its checkpoints/, or a release .pth), or "
          "--config.teacher.train_if_missing=True to train one first")
    if not _finished(path):
      logging.info("training the teacher %s first (%d epochs)", config.teacher.arch,
                   config.teacher.epochs)
      skeleton.run_locked(train_teacher.setup_first, dataclasses.replace(
          ctx, config=train_teacher.teacher_config(config), workdir=path))
  return loader.load(path, arch=config.teacher.arch, num_classes=info.num_classes,
                     input_shape=info.image_shape)


def _finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, "summary.json"))


@dataclasses.dataclass
class Parts:
  """What a distillation or synthesis run builds once: data, teacher, Distiller, source."""
  info: Any
  ds: Any
  distiller: steps.Distiller
  teacher_vars: Any
  teacher_arch: str
  teacher_acc: float
  teacher_scores: dict
  source: sources.KDSource


def kd_images(config, ds, info):
  """The fixed KD set of kd.source 'real' (the training split) or 'dataset' (a transfer set)."""
  if config.kd.source == "real":
    return segmentation.center_crop(ds.train_images, info.image_shape[:2])
  if config.kd.source == "dataset":
    return formats.load_images(config.kd.dataset_dir, info.image_shape)
  return None


def setup_parts(ctx: skeleton.Context) -> Parts:
  """Data, teacher (and its test score), Distiller and KD source on the run's mesh."""
  config, mesh = ctx.config, ctx.mesh
  info = data.get_info(config.dataset.name)
  ds = data.load_dataset(config.dataset.name, config.dataset.data_dir,
                         config.dataset.cache_dir or None,
                         splits=("train", "test") if config.kd.source == "real" else ("test",))
  teacher_vars, teacher_meta = obtain_teacher(ctx, info)
  kind = sources.kind(config, synthesis.get(config.method).uses_pool)
  distiller = steps.build(config, info, teacher_meta["arch"], mesh, kind, ctx.dtype)
  teacher_vars = parallel.put_replicated(teacher_vars, mesh)
  teacher_eval = metrics.make_eval_step(distiller.synth.teacher.clone(axis_name=None),
                                        info, mesh, config.task)
  total = metrics.accumulate(teacher_eval, teacher_vars, ds.test_images, ds.test_labels,
                             config.eval_batch_size, mesh)
  teacher_acc = metrics.headline(total, len(ds.test_images))
  logging.info("teacher %s: test accuracy %.2f%%", teacher_meta["arch"], teacher_acc)
  source = sources.build(kind, config, info.image_shape, mesh, ctx.workdir,
                         kd_images(config, ds, info))
  return Parts(info=info, ds=ds, distiller=distiller, teacher_vars=teacher_vars,
               teacher_arch=teacher_meta["arch"], teacher_acc=teacher_acc,
               teacher_scores=metrics.summary_scores(total), source=source)


def restart_fns(distiller: steps.Distiller) -> dict:
  """The method's jitted generator restarts, where it has them: `reset_fn` (the first
  layer, `reset_l0`) and `reinit_fn` (the whole generator, `synth.g_life`)."""
  hooks = dict(reset_fn="reset_first_layer", reinit_fn="reinit_generator")
  return {field: jax.jit(getattr(distiller.synth, hook)) if hasattr(distiller.synth, hook)
          else None for field, hook in hooks.items()}


def restore_checkpoint(task, mngr, step: int, state):
  """(state, counters) of checkpoint `step`, its pool size checked against the config;
  the host pool of a synthetic run is loaded too."""
  config, source = task.config, task.parts.source
  meta = checkpoint.restore_meta(mngr, step)
  slots = task.pool_slots
  if source.kind == "pool" and meta.get("pool_slots", slots) != slots:
    raise checkpoint.CheckpointError(
        f"the checkpoint's pool holds {meta['pool_slots']} synthesis batches but this "
        f"config makes {slots} (pool.capacity=0 keeps one per epoch, so changing "
        f"epochs changes it); resume with --config.pool.capacity="
        f"{meta['pool_slots'] * config.batch_size}")
  restored = checkpoint.restore_state(
      mngr, dict(state=state, host_pool=source.saved_state()), step)
  source.load_saved(restored["host_pool"])
  return restored["state"], task.counters.from_meta(meta)


def kd_learning_rate(config, epoch: int) -> float:
  """The KD learning rate of `epoch`: the optimizer's own schedule at the epoch's first update."""
  count = max(epoch - config.warmup, 0) * config.kd.steps
  return float(optim.epoch_cosine_schedule(config.kd)(count))


class DistillTask:
  """The skeleton's `Task` for mode=distill."""
  mode = "distill"
  counters = Counters
  saves_checkpoints = True

  def __init__(self, ctx: skeleton.Context):
    self.ctx, self.config = ctx, ctx.config
    self.parts = setup_parts(ctx)
    self.epochs = self.config.epochs
    self.first_epoch = 0 if self.parts.source.synthetic else self.config.warmup
    self.pool_slots = pool_lib.config_slots(self.config)
    student = self.parts.distiller.student_model
    self.eval_step = metrics.make_eval_step(student, self.parts.info, ctx.mesh,
                                            self.config.task)
    self.best_mngr = checkpoint.manager(ctx.path("checkpoints", "best"), 1)
    self.run = None        # epochs.Epochs, once compiled
    self.latest_images = None
    self.label_maps = None  # segmentation sample grids: the jitted teacher prediction

  def init_state(self):
    p = self.parts
    return state_lib.init_state(p.distiller, self.config, p.info, p.teacher_vars,
                                jax.random.fold_in(jax.random.key(self.config.seed), 0))

  def restore(self, mngr, step: int, state):
    return restore_checkpoint(self, mngr, step, state)

  def prepare(self, state) -> float:
    p = self.parts
    programs = builder.build_programs(self.config, p.distiller, state, p.teacher_vars,
                                      p.source)
    self.run = epochs.Epochs(self.config, programs, p.source, p.teacher_vars,
                             p.distiller.synth.uses_pool, **restart_fns(p.distiller))
    return programs.precompile(self.run.kd_chunk(), p.source.synthetic)

  def describe(self) -> str:
    c, p = self.config, self.parts
    return (f"distill {p.teacher_arch} -> {c.student.arch}, kd on {p.source.kind}, "
            f"method={c.method} k={c.k}, {c.epochs} epochs (warmup {c.warmup}), "
            f"{self.run.programs.structure.description}")

  def epoch(self, state, counters: Counters, epoch: int):
    state, images, metrics_, counters = epochs.run_epoch(self.run, state, counters, epoch)
    if images is not None:
      self.latest_images = images
    return state, counters, metrics_

  def evaluate(self, state, counters: Counters, epoch: int, last: bool):
    config, acc = self.config, counters.student_acc
    evaluated = last or (epoch + 1) % config.eval_every == 0
    student = state_lib.student_variables(state)
    if evaluated:
      acc = metrics.evaluate(self.eval_step, student, self.parts.ds.test_images,
                             self.parts.ds.test_labels, config.eval_batch_size, self.ctx.mesh)
      counters = counters.replace(student_acc=acc)
      if acc > counters.best_student_acc:
        counters = counters.replace(best_student_acc=acc)
        checkpoint.save(self.best_mngr, epoch, self._meta(counters.replace(epoch=epoch)),
                        student)
    reporting.log_epoch("distill", epoch, student_acc=acc if evaluated else None,
                        best=counters.best_student_acc, synth_seconds=counters.synth_seconds,
                        kd_seconds=counters.kd_seconds)
    grids = {}
    if self.parts.source.synthetic and config.sample_every and (
        epoch % config.sample_every == 0 or last):
      grids["samples"] = samples.write_samples(self, state, epoch)
    return counters, grids, dict(
        step=int(state.student.step), student_acc=acc if evaluated else None,
        best_student_acc=counters.best_student_acc, teacher_acc=self.parts.teacher_acc,
        synth_seconds=counters.synth_seconds, kd_seconds=counters.kd_seconds,
        kd_lr=kd_learning_rate(config, epoch))

  def _meta(self, counters: Counters) -> dict:
    return checkpoint.model_meta(self.config.student.arch, self.parts.info, self.mode,
                                 **counters.to_meta(), pool_slots=self.pool_slots)

  def checkpoint_items(self, state, counters: Counters):
    return (self._meta(counters), state_lib.student_variables(state),
            dict(state=state, host_pool=self.parts.source.saved_state()))

  def summary(self, state, counters: Counters) -> dict:
    c, p = self.config, self.parts
    out = dict(kd_source=c.kd.source, method=c.method, k=c.k, epochs=c.epochs,
               teacher=p.teacher_arch, student=c.student.arch, dataset=p.info.name,
               teacher_acc=p.teacher_acc, student_acc=counters.student_acc,
               test_accuracy=counters.student_acc, loop=self.run.programs.structure.description,
               **{k: getattr(counters, k) for k in (
                   "best_student_acc", "synth_seconds", "kd_seconds", "warmup_synth_seconds",
                   "synth_images", "kd_images")})
    if p.teacher_scores:   # segmentation: pixel accuracy, mIoU and per-class IoU
      total = metrics.accumulate(self.eval_step, state_lib.student_variables(state),
                                 p.ds.test_images, p.ds.test_labels, c.eval_batch_size,
                                 self.ctx.mesh)
      out.update(teacher_scores=p.teacher_scores, student_scores=metrics.summary_scores(total))
    self.best_mngr.close()
    return out


def setup(ctx: skeleton.Context) -> DistillTask:
  return DistillTask(ctx)

