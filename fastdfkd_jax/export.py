"""`python -m fastdfkd_jax.export WORKDIR OUT [--format=image_folder|npz|array_record]`:
a distill or synthesize run's pool as a transfer set (`transfer.export`)."""

import os
from typing import Sequence

from absl import app, flags

from fastdfkd_jax import cli
from fastdfkd_jax.config import files, schema
from fastdfkd_jax.transfer import export, formats

USAGE = ("python -m fastdfkd_jax.export WORKDIR OUT "
         f"[--format={'|'.join(formats.FORMATS)}]")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_enum("format", schema.base_config().transfer.format, formats.FORMATS,
                    "layout of the exported set", flag_values=fv)


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> dict:
  workdir, out = cli.positional(argv, ("WORKDIR", "OUT"), USAGE)
  cli.quiet_library_logs()
  with cli.user_errors():
    summary = export.export(workdir, out, fv.format, files.saved_config(workdir))
  print(f"wrote {summary['num_images']} images ({summary['format']}) to "
        f"{os.path.abspath(out)}; see summary.json there")
  return summary


if __name__ == "__main__":
  define_flags()
  app.run(main)
