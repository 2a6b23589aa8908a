"""mode=train_teacher: supervised training of `config.model`, plugged into the run skeleton.

Writes checkpoints (meta + model + resumable state) into WORKDIR/checkpoints,
metrics.jsonl per epoch and summary.json at the end. On TPU/GPU an epoch is one
dispatch (`loops.use_scan`); on CPU the host drives the steps. The last epoch
recomputes the BN statistics over the training split (`config.precise_bn`) before
its evaluation.
"""

import dataclasses
import time

import jax
import ml_collections

from fastdfkd_jax import data, models
from fastdfkd_jax.evaluation import metrics
from fastdfkd_jax.models import util as model_util
from fastdfkd_jax.run import checkpoint, loops, parallel, reporting, skeleton
from fastdfkd_jax.teacher import train
from fastdfkd_jax.training import optim


@dataclasses.dataclass(frozen=True)
class Counters(skeleton.Counters):
  test_accuracy: float | None = None


class TeacherTask:
  """The skeleton's `Task` for mode=train_teacher."""
  mode = "train_teacher"
  counters = Counters
  saves_checkpoints = True
  first_epoch = 0

  def __init__(self, ctx: skeleton.Context, batch_field: str = "batch_size"):
    config, mesh = ctx.config, ctx.mesh
    self.ctx, self.config, self.mesh = ctx, config, mesh
    self.ds = data.load_dataset(config.dataset.name, config.dataset.data_dir,
                                config.dataset.cache_dir or None)
    self.info = self.ds.info
    parallel.local_batch_size(config.batch_size, mesh, batch_field)
    self.epochs = config.epochs
    self.steps_per_epoch = len(self.ds.train_images) // config.batch_size
    self.tx = optim.teacher_optimizer(config.optim, self.steps_per_epoch, config.epochs)
    self.root = jax.random.key(config.seed)
    self.model = models.get_model(config.model, self.info.num_classes,
                                  dtype=model_util.activation_dtype(ctx.dtype),
                                  axis_name=parallel.AXIS)
    self.scan = loops.use_scan(config)
    self.train_chunk = train.make_train_chunk(self.model, self.tx, self.info, mesh,
                                              unroll=not self.scan, task=config.task)
    self.eval_step = metrics.make_eval_step(self.model, self.info, mesh, config.task)
    self.rate = reporting.RateLogger(self.steps_per_epoch * config.epochs, config.log_every,
                                     config.batch_size, "teacher")
    self.scores = {}

  def init_state(self):
    state = train.init_state(self.config, self.info, self.tx, jax.random.fold_in(self.root, 0))
    return parallel.put_replicated(state, self.mesh)

  def restore(self, mngr, step: int, state):
    return skeleton.default_restore(self, mngr, step, state)

  def prepare(self, state) -> float:
    del state
    return 0.0   # compiled on first use

  def describe(self) -> str:
    c = self.config
    return (f"train_teacher {c.model} on {self.info.name}: {c.epochs} epochs x "
            f"{self.steps_per_epoch} steps, batch {c.batch_size}, {loops.describe(c)}")

  def epoch(self, state, counters: Counters, epoch: int):
    t0 = time.time()
    state, m = train.train_epoch(self.config, self.train_chunk, state, self.ds, self.root,
                                 epoch, self.steps_per_epoch if self.scan else 1, self.rate,
                                 self.mesh)
    if epoch + 1 == self.epochs and self.config.precise_bn:
      state = train.recompute_bn(self.config, self.model, state, self.ds, self.mesh)
    seconds = time.time() - t0
    return state, counters, dict(
        train_loss=m["loss"], train_accuracy=100 * m["train_acc"], epoch_seconds=seconds,
        images_per_second=self.steps_per_epoch * self.config.batch_size / seconds)

  def evaluate(self, state, counters: Counters, epoch: int, last: bool):
    acc = counters.test_accuracy
    if last or (epoch + 1) % self.config.eval_every == 0:
      total = metrics.accumulate(self.eval_step, state.variables, self.ds.test_images,
                                 self.ds.test_labels, self.config.eval_batch_size, self.mesh)
      acc = metrics.headline(total, len(self.ds.test_images))
      self.scores = metrics.summary_scores(total)
    reporting.log_epoch("teacher", epoch, test_accuracy=acc)
    return counters.replace(test_accuracy=acc), {}, dict(step=int(state.step),
                                                         test_accuracy=acc)

  def checkpoint_items(self, state, counters: Counters):
    meta = checkpoint.model_meta(self.config.model, self.info, self.mode, **counters.to_meta())
    return meta, state.variables, state

  def summary(self, state, counters: Counters) -> dict:
    del state
    return dict(arch=self.config.model, dataset=self.info.name,
                test_accuracy=counters.test_accuracy, epochs=self.config.epochs,
                checkpoint=self.ctx.path("checkpoints"), **self.scores)


def setup(ctx: skeleton.Context) -> TeacherTask:
  return TeacherTask(ctx)


def setup_first(ctx: skeleton.Context) -> TeacherTask:
  """The setup of a teacher trained first by a distillation run (`teacher_config`): its
  batch comes from the run's `teacher.batch_size`."""
  return TeacherTask(ctx, batch_field="teacher.batch_size")


def teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The train_teacher config of a distillation run's `teacher.*` fields (a teacher
  trained first, `teacher.train_if_missing`)."""
  tc = ml_collections.ConfigDict(config.to_dict())
  tc.mode, tc.model = "train_teacher", config.teacher.arch
  tc.epochs, tc.batch_size = config.teacher.epochs, config.teacher.batch_size
  tc.optim.lr, tc.optim.weight_decay = config.teacher.lr, config.teacher.weight_decay
  tc.allow_config_change = True
  return tc
