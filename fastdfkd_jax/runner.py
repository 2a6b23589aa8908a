"""Mode dispatch shared by `main.py`, the notebook and tests."""

import jax
import ml_collections
from absl import logging

from fastdfkd_jax import config_checks, errors, parallel, runs


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Validates the config, prepares the workdir and runs `config.mode`.

  Holds the workdir's lock (`runs.WorkdirLock`) for the whole run. Returns the
  summary dict (also written to workdir/summary.json). A
  SIGTERM/SIGINT checkpoints at the next safe point and returns
  `{'preempted': True, ...}` instead of raising. In a multi-process run, a
  collective failing because another process died raises `errors.PeerLostError`.
  """
  parallel.maybe_initialize_distributed()
  config_checks.validate(config)
  with runs.WorkdirLock(workdir), runs.Preemption() as preemption:
    runs.prepare_workdir(config, workdir)
    try:
      if config.mode == "train_teacher":
        from fastdfkd_jax.teacher import train
        return train.train_teacher(config, workdir, preemption)
      if config.mode == "evaluate":
        from fastdfkd_jax.teacher import evaluate
        return evaluate.run_evaluate(config, workdir)
      if config.mode == "synthesize":
        from fastdfkd_jax import synthesize
        return synthesize.run_synthesize(config, workdir, preemption)
      from fastdfkd_jax.distill import loop
      return loop.run_distill(config, workdir, preemption)
    except jax.errors.JaxRuntimeError as e:
      if not parallel.peer_lost(e):
        raise
      raise errors.PeerLostError(
          f"process {jax.process_index()} of {jax.process_count()}: another process of this "
          f"run is gone ({errors.one_line(str(e))[:200]}); restart all processes with the "
          "same command to resume from the last checkpoint") from e
    except runs.Preempted as e:
      logging.warning("%s; re-run the same command to resume", e)
      print(f"{e}; re-run the same command to resume")
      return dict(preempted=True, message=str(e))
