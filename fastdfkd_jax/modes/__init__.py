"""The modes a run can be, each a `Task` plugged into the run skeleton (`run.skeleton`).

    summary = modes.run(config, workdir)          # every device
    summary = modes.run(config, workdir, mesh)    # a mesh of the caller's

  train_teacher  supervised training of `config.model`     (modes.train_teacher)
  distill        a student from a teacher alone            (modes.distill)
  synthesize     a transfer set from a teacher alone       (modes.synthesize)
  evaluate       the test score of a checkpoint            (modes.evaluate)

`run` is what `python -m fastdfkd_jax.main`, the notebook and the tests call.
"""

import importlib

import jax
import ml_collections

from fastdfkd_jax.config import checks
from fastdfkd_jax.run import parallel, skeleton

MODULES = {"train_teacher": "train_teacher", "distill": "distill",
           "synthesize": "synthesize", "evaluate": "evaluate"}


def setup_of(mode: str) -> skeleton.Setup:
  """The `setup(ctx) -> Task` of a mode (its module imported on first use)."""
  return importlib.import_module(f"fastdfkd_jax.modes.{MODULES[mode]}").setup


def run(config: ml_collections.ConfigDict, workdir: str,
        mesh: jax.sharding.Mesh | None = None) -> dict:
  """Validates `config` and runs `config.mode` in `workdir` (see `skeleton.run`).

  Returns the summary dict (also workdir/summary.json), or `{'preempted': True, ...}`
  after a SIGTERM/SIGINT checkpointed the run. A problem the user can fix raises
  `errors.UserError`.
  """
  parallel.maybe_initialize_distributed()
  checks.validate(config)
  return skeleton.run(setup_of(config.mode), config, workdir, mesh)
