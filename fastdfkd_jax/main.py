"""Command line: `python -m fastdfkd_jax.main --workdir=DIR [--config=configs/F.py[:ARG]]`.

Without `--config` the embedded default runs (digits teacher + FastDFKD, offline,
a few minutes on a laptop CPU). Override any field with `--config.FIELD=VALUE`.
"""

import logging as py_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags


FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "default_config.py"),
    "A configs/*.py file (optionally :ARG); default: the embedded digits run.",
    lock_config=True)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  quiet_library_logs()
  from fastdfkd_jax import runner  # heavy imports after flag parsing
  try:
    runner.run(config, FLAGS.workdir)
  except runner.USER_ERRORS as e:
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


class _DropLibraryInfo(py_logging.Filter):
  """Orbax logs every checkpoint step at INFO; keep its warnings only."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname


def quiet_library_logs() -> None:
  for handler in py_logging.getLogger("absl").handlers + py_logging.getLogger().handlers:
    handler.addFilter(_DropLibraryInfo())


if __name__ == "__main__":
  app.run(main)
