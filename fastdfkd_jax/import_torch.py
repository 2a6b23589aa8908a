"""`python -m fastdfkd_jax.import_torch --arch=NAME [--dataset=cifar10] [--overwrite] IN.pth
OUT_DIR`: a release PyTorch teacher as an orbax checkpoint (`teacher.torch_import`), read
without PyTorch."""

import os
from typing import Sequence

from absl import app, flags

from fastdfkd_jax import cli
from fastdfkd_jax.teacher import torch_import

USAGE = ("python -m fastdfkd_jax.import_torch --arch=NAME [--num_classes=N] "
         "[--dataset=cifar10] [--overwrite] IN.pth OUT_DIR")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_string("arch", None, "zoo name of the checkpoint's model, e.g. wrn40_2",
                      flag_values=fv)
  flags.DEFINE_integer("num_classes", None, "class count of the checkpoint (defaults to "
                       "--dataset's; must agree)", flag_values=fv)
  flags.DEFINE_string("dataset", "cifar10", "data set the teacher was trained on (gives "
                      "the input shape and class count)", flag_values=fv)
  flags.DEFINE_bool("overwrite", False, "replace an existing OUT_DIR/checkpoints",
                    flag_values=fv)
  flags.mark_flag_as_required("arch", flag_values=fv)


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> dict:
  pth, out_dir = cli.positional(argv, ("IN.pth", "OUT_DIR"), USAGE)
  cli.quiet_library_logs()
  with cli.user_errors():
    meta = torch_import.import_to_checkpoint(pth, out_dir, fv.arch, fv.dataset,
                                             fv.num_classes, fv.overwrite)
  print(f"wrote {meta['arch']} ({meta['dataset']}, {meta['num_classes']} classes, input "
        f"{tuple(meta['input_shape'])}) to {os.path.join(os.path.abspath(out_dir), 'checkpoints')}")
  return meta


if __name__ == "__main__":
  define_flags()
  app.run(main)
