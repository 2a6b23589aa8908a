"""mode=evaluate: the test score of `config.checkpoint` on the data set's test split.

An orbax checkpoint gives its own arch; a `.pth` is read as `config.model`. The run is
one epoch with nothing to train and no checkpoint: its evaluation is the score.
"""

from absl import logging

from fastdfkd_jax import data, models
from fastdfkd_jax.evaluation import metrics
from fastdfkd_jax.models import util as model_util
from fastdfkd_jax.run import parallel, skeleton
from fastdfkd_jax.teacher import loader


class EvaluateTask:
  """The skeleton's `Task` for mode=evaluate."""
  mode = "evaluate"
  counters = skeleton.Counters
  saves_checkpoints = False
  epochs, first_epoch = 1, 0

  def __init__(self, ctx: skeleton.Context):
    config = self.config = ctx.config
    self.mesh = ctx.mesh
    self.info = data.get_info(config.dataset.name)
    is_torch = config.checkpoint.endswith(loader.TORCH_SUFFIXES)
    variables, self.meta = loader.load(
        config.checkpoint, arch=config.model if is_torch else None,
        num_classes=self.info.num_classes, input_shape=self.info.image_shape)
    self.ds = data.load_dataset(config.dataset.name, config.dataset.data_dir,
                                config.dataset.cache_dir or None)
    module = models.get_model(self.meta["arch"], self.meta["num_classes"],
                              dtype=model_util.activation_dtype(ctx.dtype),
                              axis_name=parallel.AXIS)
    self.eval_step = metrics.make_eval_step(module, self.info, self.mesh, config.task)
    self.variables = parallel.put_replicated(variables, self.mesh)
    self.acc, self.scores = None, {}

  def init_state(self):
    return None

  def restore(self, mngr, step: int, state):
    raise AssertionError("mode=evaluate saves no checkpoint")

  def prepare(self, state) -> float:
    return 0.0

  def describe(self) -> str:
    return f"evaluate {self.meta['arch']} of {self.config.checkpoint} on {self.info.name}"

  def epoch(self, state, counters, epoch: int):
    return state, counters, {}

  def evaluate(self, state, counters, epoch: int, last: bool):
    total = metrics.accumulate(self.eval_step, self.variables, self.ds.test_images,
                               self.ds.test_labels, self.config.eval_batch_size, self.mesh)
    self.acc = metrics.headline(total, len(self.ds.test_images))
    self.scores = metrics.summary_scores(total)
    logging.info("evaluate %s: test accuracy %.2f%%", self.meta["arch"], self.acc)
    return counters, {}, dict(step=0, test_accuracy=self.acc)

  def checkpoint_items(self, state, counters):
    raise AssertionError("mode=evaluate saves no checkpoint")

  def summary(self, state, counters) -> dict:
    return dict(arch=self.meta["arch"], dataset=self.info.name, test_accuracy=self.acc,
                checkpoint=self.config.checkpoint, **self.scores)


def setup(ctx: skeleton.Context) -> EvaluateTask:
  return EvaluateTask(ctx)
