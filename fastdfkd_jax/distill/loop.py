"""mode=distill end to end: teacher, KD source, resume, the epoch loop, logging.

The host loop only dispatches the programs of `builder.build_programs`, logs,
evaluates and checkpoints. Every synthesis call is its own dispatch, timed
blocked on its outputs (`synth_seconds`), KD is timed separately; with
`loop=fused` an epoch is one dispatch and synth_seconds is estimated from the
timed synthesis-only (warmup) epochs. An epoch in rounds (`generator_rounds`):
a generator-vs-student method's kd.steps // kd_steps synthesis calls, each followed
by kd_steps KD updates on fresh generator samples, or synth.calls_per_epoch > 1 pool calls.
"""

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from fastdfkd_jax import checkpoint, data, optim, parallel, reporting, runs, synthesis, xla_env
from fastdfkd_jax.data import segmentation, transfer_set
from fastdfkd_jax.distill import builder, pool as pool_lib, samples, state as state_lib, steps
from fastdfkd_jax.teacher import evaluate as evaluate_lib, loader, train as teacher_train


def obtain_teacher(config, workdir: str, info, preemption) -> tuple[Any, dict]:
  """Loads config.teacher.checkpoint, or trains the teacher first if allowed."""
  path = config.teacher.checkpoint
  if not path:
    teacher_dir = os.path.join(workdir, "teacher")
    done = os.path.exists(os.path.join(teacher_dir, "summary.json"))
    if not done:
      if not config.teacher.train_if_missing:
        raise checkpoint.CheckpointError(
            "no teacher: set --config.teacher.checkpoint=DIR (a train_teacher workdir "
            "or its checkpoints/, or a release .pth), or "
            "--config.teacher.train_if_missing=True to train one first")
      tc = ml_collections.ConfigDict(config.to_dict())
      tc.mode, tc.model = "train_teacher", config.teacher.arch
      tc.epochs, tc.batch_size = config.teacher.epochs, config.teacher.batch_size
      tc.optim.lr, tc.optim.weight_decay = config.teacher.lr, config.teacher.weight_decay
      tc.allow_config_change = True
      runs.prepare_workdir(tc, teacher_dir)
      logging.info("training the teacher %s first (%d epochs)", tc.model, tc.epochs)
      teacher_train.train_teacher(tc, teacher_dir, preemption)
    path = teacher_dir
  return loader.load(path, arch=config.teacher.arch, num_classes=info.num_classes,
                     input_shape=info.image_shape)


@dataclasses.dataclass
class KDSource:
  """Where KD batches come from besides the synthetic on-device pool: `data_pool` (real
  data on device) or `host_pool` (a host-memory pool of real or synthetic images)."""
  data_pool: pool_lib.Pool | None = None
  host_pool: pool_lib.HostPool | None = None
  real: bool = False

  @property
  def saved_pool(self) -> pool_lib.HostPool | None:
    """The host pool that checkpoints with the run (synthetic only)."""
    return None if self.real else self.host_pool

  def saved_state(self) -> dict:
    return self.saved_pool.state() if self.saved_pool else {}


def kd_source(config, ds, info, mesh, workdir: str) -> KDSource:
  """The fixed-set pool (kd.source='real', or 'dataset': an exported transfer set) or
  the host-memory synthetic pool (pool.memmap: in WORKDIR/pool.npy)."""
  if config.kd.source in ("real", "dataset"):
    images = (segmentation.center_crop(ds.train_images, info.image_shape[:2])
              if config.kd.source == "real"
              else transfer_set.load_images(config.kd.dataset_dir, info.image_shape))
    real = pool_lib.fixed_set(images, config.batch_size, config.seed)
    if config.pool.on_device:
      return KDSource(data_pool=state_lib.put_pool(real, len(real), 0, mesh), real=True)
    return KDSource(host_pool=pool_lib.HostPool.of(real), real=True)
  if (config.kd.source == "synthetic" and not config.pool.on_device
      and synthesis.get(config.method).uses_pool):
    slots = pool_lib.config_slots(config)
    path = os.path.join(workdir, "pool.npy") if config.pool.memmap else None
    return KDSource(host_pool=pool_lib.HostPool(slots, config.batch_size, info.image_shape,
                                                path))
  return KDSource()


def fresh_counters() -> dict:
  return dict(epoch=-1, synth_seconds=0.0, kd_seconds=0.0, best_student_acc=0.0,
              wall_seconds=0.0, synth_calls_timed=0, synth_seconds_timed=0.0,
              synth_images=0, kd_images=0, warmup_synth_seconds=0.0)


def resume(config, mngr, state, source: KDSource):
  """(state, counters, student_acc) of the latest checkpoint, or the fresh ones."""
  counters = fresh_counters()
  _, found = checkpoint.restore_newest_good(
      mngr, lambda step: _restore(config, mngr, step, state, source))
  if found is None:
    return state, counters, None
  meta, restored = found
  if source.saved_pool:
    source.saved_pool.load(restored["host_pool"])
  counters.update({k: meta[k] for k in counters if k in meta})
  logging.info("resumed after epoch %d", counters["epoch"])
  return restored["state"], counters, meta.get("student_acc")


def _restore(config, mngr, step: int, state, source: KDSource) -> tuple[dict, dict]:
  """(meta, {'state', 'host_pool'}) of checkpoint `step`, its pool size checked."""
  meta = checkpoint.restore_meta(mngr, step)
  slots = pool_lib.config_slots(config)
  if synthesis.get(config.method).uses_pool and meta.get("pool_slots", slots) != slots:
    raise checkpoint.CheckpointError(
        f"the checkpoint's pool holds {meta['pool_slots']} synthesis batches but this "
        f"config makes {slots} (pool.capacity=0 keeps one per epoch, so changing "
        f"epochs changes it); resume with --config.pool.capacity="
        f"{meta['pool_slots'] * config.batch_size}")
  return meta, checkpoint.restore_state(
      mngr, dict(state=state, host_pool=source.saved_state()), step)


@dataclasses.dataclass
class Run:
  """What stays fixed through the epochs of one run."""
  config: ml_collections.ConfigDict
  workdir: str
  info: Any
  ds: Any
  mesh: Any
  distiller: steps.Distiller
  teacher_vars: Any
  teacher_arch: str
  teacher_acc: float
  source: KDSource
  programs: builder.Programs | None = None
  reset_fn: Any = None
  last_images: Any = None   # the latest synthesis batch (for a method without a pool)
  teacher_scores: dict = dataclasses.field(default_factory=dict)   # segmentation
  label_maps: Any = None    # the jitted teacher prediction of `samples` (segmentation)

  @property
  def synthetic(self) -> bool:
    return self.config.kd.source == "synthetic"


def setup(config, workdir: str, preemption) -> Run:
  """Mesh, data, teacher (and its accuracy), Distiller and KD source."""
  mesh = parallel.make_mesh()
  info = data.get_info(config.dataset.name)
  teacher_vars, teacher_meta = obtain_teacher(config, workdir, info, preemption)
  ds = data.load_dataset(config.dataset.name, config.dataset.data_dir,
                         config.dataset.cache_dir or None)
  distiller = steps.build(config, info, teacher_meta["arch"], mesh)
  teacher_vars = parallel.put_replicated(teacher_vars, mesh)
  teacher_eval = evaluate_lib.make_eval_step(distiller.synth.teacher.clone(axis_name=None),
                                             info, mesh, config.task)
  total = evaluate_lib.accumulate(teacher_eval, teacher_vars, ds.test_images,
                                  ds.test_labels, config.eval_batch_size, mesh)
  teacher_acc = evaluate_lib.headline(total, len(ds.test_images))
  logging.info("teacher %s: test accuracy %.2f%%", teacher_meta["arch"], teacher_acc)
  reset_l0 = getattr(distiller.synth, "reset_first_layer", None)   # an optional hook
  return Run(config=config, workdir=workdir, info=info, ds=ds, mesh=mesh,
             distiller=distiller, teacher_vars=teacher_vars, teacher_arch=teacher_meta["arch"],
             teacher_acc=teacher_acc, source=kd_source(config, ds, info, mesh, workdir),
             teacher_scores=evaluate_lib.summary_scores(total),
             reset_fn=None if reset_l0 is None else jax.jit(reset_l0))


def kd_learning_rate(config, epoch: int) -> float:
  """The KD learning rate of `epoch`: the optimizer's own schedule at the epoch's first update."""
  count = max(epoch - config.warmup, 0) * config.kd.steps
  return float(optim.epoch_cosine_schedule(config.kd)(count))


def synthesize(run: Run, state, key, adv, counters: dict):
  """One synthesis call, its own dispatch timed blocked on its outputs -> (state, metrics)."""
  t0 = time.time()
  state, images, metrics = run.programs.synth(state, run.teacher_vars, key, adv)
  jax.block_until_ready((state, images, metrics))
  dt = time.time() - t0
  counters["synth_seconds"] += dt
  counters["synth_seconds_timed"] += dt
  counters["synth_calls_timed"] += 1
  run.last_images = images
  if run.source.host_pool is not None:
    run.source.host_pool.add(jax.device_get(images))
  return state, metrics


def distill_steps(run: Run, state, key, epoch: int, counters: dict):
  """The epoch's kd.steps KD updates, timed -> (state, metrics)."""
  config = run.config
  t0 = time.time()
  rate = reporting.RateLogger(config.kd.steps, config.log_every, config.batch_size, "kd")
  state, metrics = run.programs.kd(state, run.teacher_vars, key, config.kd.steps,
                                   on_step=lambda done: rate.maybe_log(done, epoch))
  metrics = jax.device_get(metrics)
  counters["kd_seconds"] += time.time() - t0
  return state, metrics


def fused_epoch(run: Run, state, key, adv, counters: dict):
  """loop=fused: synthesis + KD in one dispatch; the synthesis share of its time is the
  mean of the timed synthesis-only (warmup) calls."""
  t0 = time.time()
  state, metrics = run.programs.epoch(state, run.teacher_vars, key, adv, run.config.kd.steps)
  metrics = jax.device_get(metrics)
  elapsed = time.time() - t0
  per_call = counters["synth_seconds_timed"] / max(counters["synth_calls_timed"], 1)
  counters["synth_seconds"] += per_call
  counters["kd_seconds"] += max(elapsed - per_call, 0.0)
  return state, metrics


def kd_chunk(run: Run) -> int:
  """KD updates per `Programs.kd` call: kd.steps per synthesis call, or a round's."""
  synth, config = run.distiller.synth, run.config
  if not run.synthetic or synth.uses_pool:
    return config.kd.steps // (config.synth.calls_per_epoch if run.synthetic else 1)
  return synth.kd_steps


def generator_rounds(run: Run, state, key, adv, kd_phase: bool, counters: dict):
  """kd.steps // kd_chunk rounds of one synthesis call (timed) then, after warmup,
  kd_chunk KD updates (timed, synced) -> (state, metrics averaged over the rounds): a
  generator-vs-student epoch (g_steps updates, KD on fresh generator samples) or a
  pool method's with synth.calls_per_epoch > 1."""
  n_kd = kd_chunk(run)
  k_synth, k_kd = jax.random.split(key)
  rows = []
  for r in range(run.config.kd.steps // n_kd):
    state, metrics = synthesize(run, state, jax.random.fold_in(k_synth, r), adv, counters)
    if kd_phase:
      t0 = time.time()
      state, kd_metrics = run.programs.kd(state, run.teacher_vars,
                                          jax.random.fold_in(k_kd, r), n_kd)
      metrics = dict(metrics, **jax.device_get(kd_metrics))
      counters["kd_seconds"] += time.time() - t0
    rows.append(jax.device_get(metrics))
  return state, jax.tree.map(lambda *v: sum(v) / len(v), *rows)


def run_epoch(run: Run, state, epoch: int, counters: dict):
  """One epoch: (first-layer reset,) synthesis and KD, or the fused program ->
  (state, metrics on the host)."""
  config = run.config
  key = jax.random.fold_in(jax.random.key(config.seed), epoch + 1)
  k_synth, k_kd, k_reset = jax.random.split(key, 3)
  if (run.synthetic and config.synth.reset_l0 and epoch == config.synth.reset_l0_epoch
      and run.reset_fn is not None):
    state = state.replace(synth=run.reset_fn(state.synth, k_reset))
  adv = jnp.float32(config.synth.adv if epoch >= config.warmup else 0.0)
  kd_phase = epoch >= config.warmup
  rounds = not run.distiller.synth.uses_pool or config.synth.calls_per_epoch > 1
  if run.synthetic and rounds:
    return generator_rounds(run, state, k_synth, adv, kd_phase, counters)
  if run.programs.structure.fused and kd_phase:
    return fused_epoch(run, state, key, adv, counters)
  metrics = {}
  if run.synthetic:
    state, metrics = synthesize(run, state, k_synth, adv, counters)
  if kd_phase:
    state, kd_metrics = distill_steps(run, state, k_kd, epoch, counters)
    metrics = dict(metrics, **kd_metrics)
  return state, jax.device_get(metrics)


def count_epoch(run: Run, epoch: int, counters: dict) -> None:
  """Tallies the images synthesized (pool methods: one batch per call; generator-vs-
  student methods: the fresh KD samples) and seen by the student (KD batches) so far,
  and the synthesis seconds of the synthesis-only (warmup) epochs."""
  config = run.config
  kd_phase = epoch >= config.warmup
  if run.synthetic and run.distiller.synth.uses_pool:   # each call's batch, into the pool
    counters["synth_images"] += config.batch_size * config.synth.calls_per_epoch
  elif run.synthetic and kd_phase:                    # every KD batch is a fresh sample
    counters["synth_images"] += config.kd.steps * config.batch_size
  if kd_phase:
    counters["kd_images"] += config.kd.steps * config.batch_size
  else:
    counters["warmup_synth_seconds"] = counters["synth_seconds"]


@dataclasses.dataclass
class Outputs:
  """The run's evaluation step, checkpoint managers and reporter."""
  eval_step: Any
  mngr: Any
  best_mngr: Any
  reporter: reporting.Reporter | None = None


def _meta(config, info, epoch, counters, student_acc) -> dict:
  slots = pool_lib.config_slots(config)
  return checkpoint.model_meta(config.student.arch, info, "distill", **dict(
      counters, epoch=epoch, student_acc=student_acc, pool_slots=slots))


def end_epoch(run: Run, out: Outputs, state, epoch: int, metrics: dict, counters: dict,
              student_acc, preemption):
  """Evaluation, best checkpoint, metrics row, log line, samples, checkpoint,
  preemption; returns the latest student accuracy."""
  config = run.config
  last = epoch + 1 == config.epochs
  evaluated = last or (epoch + 1) % config.eval_every == 0
  student = state_lib.student_variables(state)
  if evaluated:
    student_acc = evaluate_lib.evaluate(out.eval_step, student, run.ds.test_images,
                                        run.ds.test_labels, config.eval_batch_size, run.mesh)
    if student_acc > counters["best_student_acc"]:
      counters["best_student_acc"] = student_acc
      checkpoint.save(out.best_mngr, epoch,
                      _meta(config, run.info, epoch, counters, student_acc), student)
  counters["epoch"] = epoch
  counters["wall_seconds"] = out.reporter.wall_seconds()
  out.reporter.write_metrics(dict(
      epoch=epoch, step=int(state.student.step),
      student_acc=student_acc if evaluated else None,
      best_student_acc=counters["best_student_acc"], teacher_acc=run.teacher_acc,
      synth_seconds=counters["synth_seconds"], kd_seconds=counters["kd_seconds"],
      wall_seconds=counters["wall_seconds"], kd_lr=kd_learning_rate(config, epoch),
      **{k: float(v) for k, v in metrics.items()}))
  losses_text = " ".join(f"{name} {float(metrics[name]):.3f}"
                         for name in ("best_loss", "kd_loss") if name in metrics)
  logging.info("epoch %d: student %s (best %.2f%%) synth %.1fs kd %.1fs %s", epoch,
               f"{student_acc:.2f}%" if evaluated else "-", counters["best_student_acc"],
               counters["synth_seconds"], counters["kd_seconds"], losses_text)
  if run.synthetic and config.sample_every and (epoch % config.sample_every == 0 or last):
    samples.write_samples(run, out.reporter, state, epoch)
  if last or preemption.requested or (epoch + 1) % config.checkpoint_every == 0:
    checkpoint.save(out.mngr, epoch, _meta(config, run.info, epoch, counters, student_acc),
                    student, dict(state=state, host_pool=run.source.saved_state()))
  if preemption.requested and not last:
    raise runs.Preempted(f"preempted after epoch {epoch}; checkpoint saved")
  return student_acc


def student_scores(run: Run, out: Outputs, state) -> dict:
  """The final student's segmentation scores on the test split (`summary_scores`)."""
  total = evaluate_lib.accumulate(out.eval_step, state_lib.student_variables(state),
                                  run.ds.test_images, run.ds.test_labels,
                                  run.config.eval_batch_size, run.mesh)
  return evaluate_lib.summary_scores(total)


def run_distill(config: ml_collections.ConfigDict, workdir: str,
                preemption: runs.Preemption | None = None) -> dict:
  """mode=distill: FastDFKD (or an ablation method) end to end; returns the summary."""
  preemption = preemption or runs.Preemption()
  run = setup(config, workdir, preemption)
  state = state_lib.init_state(run.distiller, config, run.info, run.teacher_vars,
                               jax.random.fold_in(jax.random.key(config.seed), 0))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  out = Outputs(eval_step=evaluate_lib.make_eval_step(run.distiller.student_model, run.info,
                                                      run.mesh, config.task),
                mngr=checkpoint.manager(ckpt_dir, config.keep_checkpoints),
                best_mngr=checkpoint.manager(os.path.join(ckpt_dir, "best"), 1))
  state, counters, student_acc = resume(config, out.mngr, state, run.source)
  finished = runs.finished_summary(workdir, counters["epoch"] + 1, config.epochs)
  if finished is not None:
    return finished
  out.reporter = reporting.Reporter(workdir, resume_wall_seconds=counters["wall_seconds"])
  out.reporter.truncate_metrics(counters["epoch"])
  # Compiled ahead of time so synthesis/KD timings exclude compilation.
  run.programs = builder.build_programs(config, run.distiller, state, run.teacher_vars,
                                        run.source.data_pool, run.source.host_pool)
  compile_seconds = run.programs.precompile(kd_chunk(run), run.synthetic)
  logging.info("compiled the jitted steps in %.1f s", compile_seconds)
  loop = run.programs.structure.description
  logging.info("distill %s -> %s, kd on %s, method=%s k=%d, %d epochs (warmup %d), "
               "%d devices, %s, %s", run.teacher_arch, config.student.arch, config.kd.source,
               config.method, config.k, config.epochs, config.warmup,
               parallel.num_shards(run.mesh), loop, xla_env.describe_dtype(config.dtype))
  first_epoch = 0 if run.synthetic else config.warmup   # baselines: no synthesis-only epochs
  for epoch in range(max(counters["epoch"] + 1, first_epoch), config.epochs):
    state, metrics = run_epoch(run, state, epoch, counters)
    count_epoch(run, epoch, counters)
    runs.check_finite(metrics, epoch)
    student_acc = end_epoch(run, out, state, epoch, metrics, counters, student_acc,
                            preemption)
  summary = dict(mode="distill", kd_source=config.kd.source, method=config.method, k=config.k,
                 epochs=config.epochs, teacher=run.teacher_arch, student=config.student.arch,
                 dataset=run.info.name, teacher_acc=run.teacher_acc, student_acc=student_acc,
                 test_accuracy=student_acc, best_student_acc=counters["best_student_acc"],
                 synth_seconds=counters["synth_seconds"], kd_seconds=counters["kd_seconds"],
                 warmup_synth_seconds=counters["warmup_synth_seconds"],
                 synth_images=counters["synth_images"], kd_images=counters["kd_images"],
                 wall_seconds=out.reporter.wall_seconds(),
                 num_devices=parallel.num_shards(run.mesh),
                 compile_seconds=compile_seconds, loop=loop,
                 dtype=xla_env.resolve_dtype(config.dtype))
  if run.teacher_scores:   # segmentation: pixel accuracy, mIoU and per-class IoU
    summary.update(teacher_scores=run.teacher_scores,
                   student_scores=student_scores(run, out, state))
  reporting.write_json(os.path.join(workdir, "summary.json"), summary)
  out.reporter.close()
  return summary
