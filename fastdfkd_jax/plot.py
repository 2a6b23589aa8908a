"""`python -m fastdfkd_jax.plot WORKDIR[,WORKDIR...] [...] [--out=PATH.png]
[--x=synth_seconds|epoch|wall_seconds]`: student accuracy against synthesis time, one
curve per run (comma-separated workdirs: the seeds of one curve); see `study.plot`."""

from typing import Sequence

from absl import app, flags

from fastdfkd_jax import cli
from fastdfkd_jax.study import plot

USAGE = ("python -m fastdfkd_jax.plot WORKDIR[,WORKDIR...] [...] [--out=PATH.png] "
         f"[--x={'|'.join(plot.X_CHOICES)}]")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_string("out", None, f"output PNG (default: FIRST_WORKDIR/{plot.DEFAULT_NAME})",
                      flag_values=fv)
  flags.DEFINE_enum("x", "synth_seconds", plot.X_CHOICES, "x axis", flag_values=fv)


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> str:
  workdirs = cli.positional(argv, ("WORKDIR",), USAGE, at_least=True)
  with cli.exit_2_on(FileNotFoundError, ValueError, ImportError):
    out = plot.plot_runs(workdirs, fv.out, fv.x)
  print(out)
  return out


if __name__ == "__main__":
  define_flags()
  app.run(main)
