"""`python -m fastdfkd_jax.table NAME=WORKDIR[,WORKDIR...] [...] [--reference=NAME]
[--until_kd_step=S]`: a study's markdown table (accuracy over seeds, share of the
teacher, synthesis seconds, speed-up over the reference); see `study.table`."""

from typing import Sequence

from absl import app, flags

from fastdfkd_jax import cli
from fastdfkd_jax.study import table

USAGE = ("python -m fastdfkd_jax.table NAME=WORKDIR[,WORKDIR...] [...] [--reference=NAME] "
         "[--until_kd_step=S]")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_string("reference", None, "row (or rows, comma-separated) whose final "
                      "accuracy and synthesis time set a speed-up", flag_values=fv)
  flags.DEFINE_integer("until_kd_step", None, "every row at its last evaluation with at "
                       "most this many KD steps", flag_values=fv)


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> str:
  rows = cli.positional(argv, ("NAME=WORKDIR",), USAGE, at_least=True)
  with cli.exit_2_on(FileNotFoundError, ValueError, KeyError):
    text = table.markdown([table.read_row(r, fv.until_kd_step) for r in rows], fv.reference,
                          "final" if fv.until_kd_step is None
                          else f"at <= {fv.until_kd_step:,} KD steps")
  print(text)
  return text


if __name__ == "__main__":
  define_flags()
  app.run(main)
