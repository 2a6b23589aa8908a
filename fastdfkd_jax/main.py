"""Command line: `python -m fastdfkd_jax.main --workdir=DIR [--config=configs/F.py[:ARG]]`.

Without `--config` the embedded default runs (digits teacher + FastDFKD, offline,
a few minutes on a laptop CPU). Override any field with `--config.FIELD=VALUE`.
A problem the user can fix (a bad flag or config value, a missing file, a
mismatched checkpoint) ends with one `error: ...` line and exit code 2; any
other exception is a bug and shows its traceback (exit 1).
"""

from absl import app, flags

from fastdfkd_jax import cli


FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  cli.quiet_library_logs()
  from fastdfkd_jax import modes  # heavy imports after flag parsing
  with cli.user_errors(hard_exit=True):
    modes.run(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
