"""Data-free distillation: jitted synthesis/KD/epoch steps and the run loop.

State is one pytree (`DistillState`); steps are per-device code mapped over the
data mesh with `shard_map` and jitted once with donated state buffers:
  - `synth_step`: one synthesis call + pool append (warmup epochs);
  - `kd_steps`:   S KD updates as a `lax.scan` (S = kd.steps on TPU/GPU, 1 on CPU
                  where the host drives the steps, see `loops`);
  - `epoch_step`: synthesis + all KD updates in one jitted call (TPU/GPU).
The host loop only logs, evaluates and checkpoints.
"""

import dataclasses
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import struct
from jax.sharding import PartitionSpec as P

from fastdfkd_jax import checkpoint, data, loops, losses, models
from fastdfkd_jax import optim, parallel, pool as pool_lib, reporting, runs, synthesis
from fastdfkd_jax.data import augment
from fastdfkd_jax.models import util as model_util
from fastdfkd_jax.teacher import evaluate as evaluate_lib, loader, train as teacher_train

AXIS = parallel.AXIS


@struct.dataclass
class StudentState:
  params: Any
  batch_stats: Any
  opt_state: Any
  step: jax.Array


@struct.dataclass
class DistillState:
  """The whole resumable state of a distillation run (pool sharded, rest replicated)."""
  synth: Any                 # the synthesis method's state pytree
  student: StudentState
  pool: pool_lib.Pool | None


def kd_lr(config: ml_collections.ConfigDict, epoch: int) -> float:
  """Cosine annealing per epoch after warmup (T_max = kd.cosine_epochs, eta_min = kd.lr_min)."""
  e = max(epoch - config.warmup, 0)
  kd = config.kd
  return kd.lr_min + (kd.lr - kd.lr_min) * (1 + math.cos(math.pi * e / kd.cosine_epochs)) / 2


def kd_tx(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """PyTorch SGD with unit lr; the per-epoch lr multiplies the update (a traced arg)."""
  return optim.sgd(1.0, config.kd.momentum, config.kd.weight_decay)


@dataclasses.dataclass(frozen=True)
class Distiller:
  """Builds the jitted steps for one (teacher, student, data set, mesh)."""
  synth: synthesis.Synthesizer
  student_model: Any
  tx: optax.GradientTransformation
  kd_batch: int
  temperature: float
  mesh: Any
  on_device_pool: bool = True
  host_inner: bool = False   # dispatch the k inner synthesis steps from the host (CPU)
  kd_source: str = "synthetic"   # 'synthetic' | 'real' (a fixed data pool) | 'noise'

  @property
  def axis(self):
    return self.synth.axis_name

  # ------------------------------------------------------ per-device code
  def _synth(self, state: DistillState, teacher_vars, key, adv_weight):
    synth_state, images, metrics = self.synth.synthesize(
        state.synth, teacher_vars, self._student_vars(state.student), key, adv_weight)
    new_pool = pool_lib.add(state.pool, images) if self.on_device_pool else None
    return state.replace(synth=synth_state, pool=new_pool), images, metrics

  def _student_vars(self, student: StudentState):
    return {"params": student.params, "batch_stats": student.batch_stats}

  def _kd_update(self, student: StudentState, teacher_vars, images_u8, key, lr):
    x = augment.augment_stripe(key, augment.to_float(images_u8), self.synth.mean,
                               self.synth.std, self.synth.padding, self.axis)
    teacher_vars = jax.lax.stop_gradient(teacher_vars)
    t_logits = self.synth.teacher.apply(teacher_vars, x, train=False)

    def loss_fn(params):
      s_logits, upd = self.student_model.apply(
          {"params": params, "batch_stats": student.batch_stats}, x, train=True,
          mutable=["batch_stats"])
      return losses.kd_loss(s_logits, t_logits, self.temperature, self.axis), \
          upd.get("batch_stats", student.batch_stats)

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(student.params)
    updates, opt_state = self.tx.update(grads, student.opt_state, student.params)
    params = jax.tree.map(lambda p, u: p + lr * u, student.params, updates)
    return StudentState(params=params, batch_stats=batch_stats, opt_state=opt_state,
                        step=student.step + 1), loss

  def _kd_inputs(self, pool: pool_lib.Pool | None, key) -> jax.Array:
    """This device's stripe (B_local, H, W, C) uint8 of a global KD batch."""
    if self.kd_source == "noise":
      shape = (self.kd_batch,) + tuple(self.synth.image_shape)
      noise = jax.random.randint(key, shape, 0, 256, jnp.int32).astype(jnp.uint8)
      return noise if self.axis is None else parallel.local_stripe(noise, self.axis)
    return pool_lib.sample(pool, key, self.kd_batch, self.axis)

  def _kd_steps(self, state: DistillState, teacher_vars, key, lr, n_steps: int, unroll: bool,
                data_pool: pool_lib.Pool | None = None):
    """n_steps KD updates; batches from `data_pool` when given (kd.source='real'),
    else from the synthetic pool in the state (or noise)."""
    pool = state.pool if data_pool is None else data_pool

    def body(student, step_key):
      k_sample, k_aug = jax.random.split(step_key)
      images = self._kd_inputs(pool, k_sample)
      return self._kd_update(student, teacher_vars, images, k_aug, lr)

    keys = jax.random.split(key, n_steps)
    student, kd_loss = loops.scan(body, state.student, keys, unroll)
    return state.replace(student=student), dict(kd_loss=kd_loss.mean())

  def _epoch(self, state, teacher_vars, key, adv_weight, lr, n_steps):
    k_synth, k_kd = jax.random.split(key)
    state, _, metrics = self._synth(state, teacher_vars, k_synth, adv_weight)
    state, kd_metrics = self._kd_steps(state, teacher_vars, k_kd, lr, n_steps, unroll=False)
    return state, dict(metrics, **kd_metrics)

  # ---------------------------------------------------------- jitted maps
  @staticmethod
  def pool_specs(pool: pool_lib.Pool | None):
    return None if pool is None else pool_lib.Pool(images=P(None, AXIS), filled=P(), cursor=P())

  def state_specs(self, state: DistillState):
    return DistillState(synth=P(), student=P(), pool=self.pool_specs(state.pool))

  def jit_synth(self, state):
    specs = self.state_specs(state)
    fn = parallel.shard(self._synth, self.mesh, in_specs=(specs, P(), P(), P()),
                        out_specs=(specs, P(AXIS), P()))
    return jax.jit(fn, donate_argnums=(0,))

  def compile_synth(self, state, teacher_vars, key, adv) -> Callable:
    """Compiled synthesis call f(state, teacher_vars, key, adv) -> (state, images, metrics).

    One executable (scan/unrolled inner loop), or with `host_inner` three
    executables (begin, inner step, end + pool append) dispatched from the host
    without any sync: the k inner steps reuse one compiled step.
    """
    if not self.host_inner:
      return self.jit_synth(state).lower(state, teacher_vars, key, adv).compile()
    specs = self.state_specs(state)
    synth = self.synth
    carry_specs = synth.carry_specs(state.synth)
    begin = parallel.shard(lambda s, k: synth.begin(s.synth, k), self.mesh,
                           in_specs=(specs, P()), out_specs=(carry_specs, P()))
    begin = jax.jit(begin).lower(state, key).compile()
    carry, keys = begin(state, key)  # cheap; concrete shardings for lowering the rest
    n_steps = keys.shape[0]

    def inner(carry, step_key, s, t, adv):
      return synth.inner_step(carry, step_key, s.synth, t, self._student_vars(s.student), adv)

    inner = parallel.shard(inner, self.mesh, in_specs=(carry_specs, P(), specs, P(), P()),
                           out_specs=carry_specs)
    inner = jax.jit(inner, donate_argnums=(0,)).lower(
        carry, keys[0], state, teacher_vars, adv).compile()

    def end(s, carry):
      synth_state, images, metrics = synth.end(s.synth, carry)
      new_pool = pool_lib.add(s.pool, images) if self.on_device_pool else None
      return s.replace(synth=synth_state, pool=new_pool), images, metrics

    end = parallel.shard(end, self.mesh, in_specs=(specs, carry_specs),
                         out_specs=(specs, P(AXIS), P()))
    end = jax.jit(end, donate_argnums=(0,)).lower(state, carry).compile()

    def call(state, teacher_vars, key, adv):
      carry, keys = begin(state, key)
      for i in range(n_steps):
        carry = inner(carry, keys[i], state, teacher_vars, adv)
      return end(state, carry)

    return call

  def jit_kd_steps(self, state, n_steps: int, unroll: bool, data_pool=None):
    """f(state, teacher_vars, key, lr[, data_pool]) -> (state, metrics): n_steps KD
    updates; the extra `data_pool` argument exists when one is given here."""
    specs = self.state_specs(state)
    if data_pool is None:
      fn = lambda s, t, k, lr: self._kd_steps(s, t, k, lr, n_steps, unroll)
      in_specs = (specs, P(), P(), P())
    else:
      fn = lambda s, t, k, lr, d: self._kd_steps(s, t, k, lr, n_steps, unroll, d)
      in_specs = (specs, P(), P(), P(), self.pool_specs(data_pool))
    fn = parallel.shard(fn, self.mesh, in_specs=in_specs, out_specs=(specs, P()))
    return jax.jit(fn, donate_argnums=(0,))

  def jit_kd_batch(self):
    """KD update on a given global batch (host pool path)."""
    def fn(student, teacher_vars, images, key, lr):
      student, loss = self._kd_update(student, teacher_vars, images, key, lr)
      return student, dict(kd_loss=loss)
    fn = parallel.shard(fn, self.mesh, in_specs=(P(), P(), P(AXIS), P(), P()),
                        out_specs=(P(), P()))
    return jax.jit(fn, donate_argnums=(0,))

  def jit_epoch(self, state, n_steps: int):
    specs = self.state_specs(state)
    fn = lambda s, t, k, a, lr: self._epoch(s, t, k, a, lr, n_steps)
    fn = parallel.shard(fn, self.mesh, in_specs=(specs, P(), P(), P(), P()),
                        out_specs=(specs, P()))
    return jax.jit(fn, donate_argnums=(0,))


# ---------------------------------------------------------------- building
def build(config: ml_collections.ConfigDict, info: data.DatasetInfo,
          teacher_arch: str, mesh) -> Distiller:
  """The Distiller for a config: models, synthesizer, optimizer, batch checks."""
  dtype = model_util.activation_dtype(config.dtype)
  parallel.local_batch_size(config.batch_size, mesh)
  teacher = models.get_model(teacher_arch, info.num_classes, dtype=dtype, axis_name=AXIS)
  student = models.get_model(config.student.arch, info.num_classes, dtype=dtype,
                             axis_name=AXIS if config.student.sync_bn else None)
  synth = synthesis.build(config, teacher=teacher, student=student, info=info,
                          axis_name=AXIS, unroll=loops.inner_unroll(config))
  return Distiller(synth=synth, student_model=student, tx=kd_tx(config),
                   kd_batch=config.batch_size, temperature=config.kd.temperature, mesh=mesh,
                   on_device_pool=config.pool.on_device,
                   host_inner=(loops.inner_structure(config) == "host"
                               and synthesis.host_steppable(synth)),
                   kd_source=config.kd.source)


def put_pool(images: np.ndarray, filled: int, cursor: int, mesh) -> pool_lib.Pool:
  """A host (slots, B, H, W, C) uint8 array as a Pool on the mesh: rows sharded, counters
  replicated."""
  return pool_lib.Pool(images=parallel.put_batch(np.asarray(images), mesh, axis=1),
                       filled=parallel.put_replicated(jnp.int32(filled), mesh),
                       cursor=parallel.put_replicated(jnp.int32(cursor), mesh))


def init_state(distiller: Distiller, config, info, teacher_vars, key) -> DistillState:
  """Fresh replicated state (and an empty sharded pool) on the mesh."""
  k_gen, k_student = jax.random.split(key)
  synth_state = distiller.synth.init(k_gen, teacher_vars)
  student_vars = model_util.init_variables(
      models.get_model(config.student.arch, info.num_classes), k_student, info.image_shape)
  student = StudentState(params=student_vars["params"],
                         batch_stats=student_vars.get("batch_stats", {}),
                         opt_state=distiller.tx.init(student_vars["params"]),
                         step=jnp.int32(0))
  mesh = distiller.mesh
  state = DistillState(synth=synth_state, student=student, pool=None)
  state = parallel.put_replicated(state, mesh)
  if config.pool.on_device and config.kd.source == "synthetic":
    slots = pool_lib.num_slots(config.pool.capacity, config.batch_size, config.epochs)
    empty = np.zeros((slots, config.batch_size) + tuple(info.image_shape), np.uint8)
    state = state.replace(pool=put_pool(empty, 0, 0, mesh))
  return state


# --------------------------------------------------------------- teacher
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


# --------------------------------------------------------------- run loop
def run_distill(config: ml_collections.ConfigDict, workdir: str,
                preemption: runs.Preemption | None = None) -> dict:
  """mode=distill: FastDFKD (or an ablation method) end to end; returns the summary."""
  preemption = preemption or runs.Preemption()
  mesh = parallel.make_mesh()
  info = data.get_info(config.dataset.name)
  teacher_vars, teacher_meta = obtain_teacher(config, workdir, info, preemption)
  ds = data.load_dataset(config.dataset.name, config.dataset.data_dir,
                         config.dataset.cache_dir or None)
  distiller = build(config, info, teacher_meta["arch"], mesh)
  teacher_vars = parallel.put_replicated(teacher_vars, mesh)
  eval_step = evaluate_lib.make_eval_step(distiller.student_model, info, mesh)
  teacher_eval = evaluate_lib.make_eval_step(distiller.synth.teacher.clone(axis_name=None),
                                             info, mesh)
  teacher_acc = evaluate_lib.evaluate(teacher_eval, teacher_vars, ds.test_images,
                                      ds.test_labels, config.eval_batch_size, mesh)
  logging.info("teacher %s: test accuracy %.2f%%", teacher_meta["arch"], teacher_acc)

  root = jax.random.key(config.seed)
  state = init_state(distiller, config, info, teacher_vars, jax.random.fold_in(root, 0))
  synthetic = config.kd.source == "synthetic"
  host_pool = data_pool = None   # host_pool: synthetic pool in host memory, or real data
  if config.kd.source == "real":
    real = pool_lib.fixed_set(ds.train_images, config.batch_size, config.seed)
    if config.pool.on_device:
      data_pool = put_pool(real, len(real), 0, mesh)
    else:
      host_pool = pool_lib.HostPool.of(real)
  elif synthetic and not config.pool.on_device:
    host_pool = pool_lib.HostPool(pool_lib.num_slots(config.pool.capacity, config.batch_size,
                                                     config.epochs),
                                  config.batch_size, info.image_shape)
  saved_pool = host_pool if synthetic else None   # real data is not checkpointed

  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  best_mngr = checkpoint.manager(os.path.join(workdir, "checkpoints", "best"), 1)
  student_acc = None
  counters = dict(epoch=-1, synth_seconds=0.0, kd_seconds=0.0, best_student_acc=0.0,
                  wall_seconds=0.0, synth_calls_timed=0, synth_seconds_timed=0.0)
  if mngr.latest_step() is not None:
    meta = checkpoint.restore_meta(mngr)
    slots = pool_lib.num_slots(config.pool.capacity, config.batch_size, config.epochs)
    if meta.get("pool_slots", slots) != slots:
      raise checkpoint.CheckpointError(
          f"the checkpoint's pool holds {meta['pool_slots']} synthesis batches but this "
          f"config makes {slots} (pool.capacity=0 keeps one per epoch, so changing "
          f"epochs changes it); resume with --config.pool.capacity="
          f"{meta['pool_slots'] * config.batch_size}")
    full = dict(state=state, host_pool=saved_pool.state() if saved_pool else {})
    restored = checkpoint.restore_state(mngr, full)
    state = restored["state"]
    if saved_pool:
      saved_pool.load(restored["host_pool"])
    counters.update({k: meta[k] for k in counters if k in meta})
    student_acc = meta.get("student_acc")
    logging.info("resumed after epoch %d", counters["epoch"])
  finished = runs.finished_summary(workdir, counters["epoch"] + 1, config.epochs)
  if finished is not None:
    return finished
  reporter = reporting.Reporter(workdir, resume_wall_seconds=counters["wall_seconds"])
  reporter.truncate_metrics(counters["epoch"])

  scan = loops.use_scan(config)
  # Compile ahead of time so synthesis/KD timings exclude compilation.
  t_compile = time.time()
  key0, lr0, adv0 = jax.random.key(0), jnp.float32(0.0), jnp.float32(0.0)
  synth_fn = distiller.compile_synth(state, teacher_vars, key0, adv0) if synthetic else None
  epoch_fn = kd_fn = None
  kd_args = () if data_pool is None else (data_pool,)
  steps_per_call = config.kd.steps if scan and host_pool is None else 1
  if host_pool is not None:
    batch0 = parallel.put_batch(np.zeros((config.batch_size,) + tuple(info.image_shape),
                                         np.uint8), mesh)
    kd_fn = distiller.jit_kd_batch().lower(state.student, teacher_vars, batch0, key0,
                                           lr0).compile()
  elif scan and synthetic:
    epoch_fn = distiller.jit_epoch(state, config.kd.steps).lower(
        state, teacher_vars, key0, adv0, lr0).compile()
  else:  # TPU/GPU: all KD steps in one scanned call; CPU: one host-driven step per call
    kd_fn = distiller.jit_kd_steps(state, steps_per_call, not scan, data_pool).lower(
        state, teacher_vars, key0, lr0, *kd_args).compile()
  compile_seconds = time.time() - t_compile
  logging.info("compiled the jitted steps in %.1f s", compile_seconds)
  reset_l0 = getattr(distiller.synth, "reset_first_layer", None)   # an optional hook
  reset_fn = None if reset_l0 is None else jax.jit(reset_l0)
  logging.info("distill %s -> %s, kd on %s, method=%s k=%d, %d epochs (warmup %d), "
               "%d devices, %s", teacher_meta["arch"], config.student.arch, config.kd.source,
               config.method, config.k, config.epochs, config.warmup,
               parallel.num_shards(mesh), loops.describe(config))

  first_epoch = 0 if synthetic else config.warmup   # baselines: no synthesis-only epochs
  for epoch in range(max(counters["epoch"] + 1, first_epoch), config.epochs):
    key = jax.random.fold_in(root, epoch + 1)
    k_synth, k_kd, k_reset = jax.random.split(key, 3)
    if synthetic and config.synth.reset_l0 and epoch == config.synth.reset_l0_epoch and \
        reset_fn is not None:
      state = state.replace(synth=reset_fn(state.synth, k_reset))
    adv = jnp.float32(config.synth.adv if epoch >= config.warmup else 0.0)
    lr = jnp.float32(kd_lr(config, epoch))
    kd_phase = epoch >= config.warmup
    metrics = {}
    if epoch_fn is not None and kd_phase:
      t0 = time.time()
      state, metrics = epoch_fn(state, teacher_vars, key, adv, lr)
      metrics = jax.device_get(metrics)
      elapsed = time.time() - t0
      per_call = counters["synth_seconds_timed"] / max(counters["synth_calls_timed"], 1)
      counters["synth_seconds"] += per_call  # fused epoch: synthesis share from warmup timing
      counters["kd_seconds"] += max(elapsed - per_call, 0.0)
    else:
      if synthetic:
        t0 = time.time()
        state, images, metrics = synth_fn(state, teacher_vars, k_synth, adv)
        jax.block_until_ready(state)
        dt = time.time() - t0
        counters["synth_seconds"] += dt
        counters["synth_seconds_timed"] += dt
        counters["synth_calls_timed"] += 1
        if host_pool is not None:
          host_pool.add(jax.device_get(images))
        del images
      if kd_phase:
        t0 = time.time()
        rate = reporting.RateLogger(config.kd.steps, config.log_every, config.batch_size, "kd")
        student = state.student
        kd_loss_sum = 0.0  # summed on device: no host sync inside the epoch
        calls = config.kd.steps // steps_per_call
        for step in range(calls):
          step_key = jax.random.fold_in(k_kd, step)
          if host_pool is not None:
            batch = parallel.put_batch(host_pool.sample(jax.random.fold_in(step_key, 1),
                                                        config.batch_size), mesh)
            student, kd_metrics = kd_fn(student, teacher_vars, batch, step_key, lr)
          else:
            state, kd_metrics = kd_fn(state.replace(student=student), teacher_vars,
                                      step_key, lr, *kd_args)
            student = state.student
          kd_loss_sum = kd_loss_sum + kd_metrics["kd_loss"]
          rate.maybe_log((step + 1) * steps_per_call, epoch)
        state = state.replace(student=student)
        metrics["kd_loss"] = jax.device_get(kd_loss_sum) / calls
        counters["kd_seconds"] += time.time() - t0
      metrics = jax.device_get(metrics)
    runs.check_finite(metrics, epoch)

    last = epoch + 1 == config.epochs
    evaluated = last or (epoch + 1) % config.eval_every == 0
    if evaluated:
      student_acc = evaluate_lib.evaluate(eval_step, distiller_vars(state), ds.test_images,
                                          ds.test_labels, config.eval_batch_size, mesh)
      if student_acc > counters["best_student_acc"]:
        counters["best_student_acc"] = student_acc
        checkpoint.save(best_mngr, epoch, _meta(config, info, epoch, counters, student_acc),
                        distiller_vars(state))
    counters["epoch"] = epoch
    counters["wall_seconds"] = reporter.wall_seconds()
    row = dict(epoch=epoch, step=int(state.student.step),
               student_acc=student_acc if evaluated else None,
               best_student_acc=counters["best_student_acc"], teacher_acc=teacher_acc,
               synth_seconds=counters["synth_seconds"], kd_seconds=counters["kd_seconds"],
               wall_seconds=counters["wall_seconds"], kd_lr=float(lr),
               **{k: float(v) for k, v in metrics.items()})
    reporter.write_metrics(row)
    losses_text = " ".join(f"{name} {float(metrics[name]):.3f}"
                           for name in ("best_loss", "kd_loss") if name in metrics)
    logging.info("epoch %d: student %s (best %.2f%%) synth %.1fs kd %.1fs %s", epoch,
                 f"{student_acc:.2f}%" if evaluated else "-", counters["best_student_acc"],
                 counters["synth_seconds"], counters["kd_seconds"], losses_text)
    if synthetic and config.sample_every and (epoch % config.sample_every == 0 or last):
      _write_samples(reporter, workdir, state, host_pool, epoch)
    if last or preemption.requested or (epoch + 1) % config.checkpoint_every == 0:
      checkpoint.save(mngr, epoch, _meta(config, info, epoch, counters, student_acc),
                      distiller_vars(state),
                      dict(state=state, host_pool=saved_pool.state() if saved_pool else {}))
    if preemption.requested and not last:
      raise runs.Preempted(f"preempted after epoch {epoch}; checkpoint saved")

  summary = dict(mode="distill", kd_source=config.kd.source, method=config.method, k=config.k,
                 epochs=config.epochs,
                 teacher=teacher_meta["arch"], student=config.student.arch,
                 dataset=info.name, teacher_acc=teacher_acc, student_acc=student_acc,
                 test_accuracy=student_acc, best_student_acc=counters["best_student_acc"],
                 synth_seconds=counters["synth_seconds"], kd_seconds=counters["kd_seconds"],
                 wall_seconds=reporter.wall_seconds(), num_devices=parallel.num_shards(mesh),
                 compile_seconds=compile_seconds, loop=loops.describe(config))
  reporting.write_json(os.path.join(workdir, "summary.json"), summary)
  reporter.close()
  return summary


def distiller_vars(state: DistillState) -> dict:
  return {"params": state.student.params, "batch_stats": state.student.batch_stats}


def _meta(config, info, epoch, counters, student_acc) -> dict:
  slots = pool_lib.num_slots(config.pool.capacity, config.batch_size, config.epochs)
  return checkpoint.model_meta(config.student.arch, info, "distill", **dict(
      counters, epoch=epoch, student_acc=student_acc, pool_slots=slots))


def _write_samples(reporter, workdir, state, host_pool, epoch) -> None:
  if host_pool is not None:
    images = host_pool.images[(host_pool.cursor - 1) % len(host_pool.images)]
  else:
    slot = (int(state.pool.cursor) - 1) % state.pool.images.shape[0]
    images = parallel.gather_to_host(state.pool.images[slot])
  grid = reporting.image_grid(images[:64], ncol=8)
  scale = max(1, 128 // max(images.shape[1], 1))
  reporting.save_png(os.path.join(workdir, "samples", f"epoch_{epoch:04d}.png"), grid,
                     scale=min(scale, 4))
  reporter.image("samples", grid, epoch)
