"""XLA settings the project derives from the config, set before JAX's backends start.

XLA reads `XLA_FLAGS` once, when the first backend starts, so the entry points
call `apply(config)` right after parsing their flags (`cli.parse_flags`), before
any computation. In a notebook, set the printed flags in `XLA_FLAGS` before
`import jax`.

bfloat16 on CPU: XLA:CPU upcasts bfloat16 convolutions to float32 unless its
oneDNN rewriter claims them (`--xla_cpu_experimental_onednn_custom_call`); with
it, and with the input gradients in forward form (`models/conv.py`), the CPU's
bfloat16 units run the convolutions (docs/BENCHMARKS.md, "CPU speed work").
The flag only affects the CPU backend; a user's own setting of it wins.
"""

import os
from typing import MutableMapping

from absl import logging

ONEDNN_CUSTOM_CALL = "--xla_cpu_experimental_onednn_custom_call"


def flags_for(config) -> list[str]:
  """The XLA flags this config asks for."""
  if config.dtype == "bfloat16" and config.cpu_onednn:
    return [f"{ONEDNN_CUSTOM_CALL}=true"]
  return []


def apply(config, environ: MutableMapping[str, str] = os.environ) -> None:
  """Adds `flags_for(config)` to `XLA_FLAGS`, keeping any flag the user set."""
  current = environ.get("XLA_FLAGS", "")
  missing = [f for f in flags_for(config) if f.split("=")[0] not in current]
  if missing:
    environ["XLA_FLAGS"] = " ".join([current] + missing).strip()
    logging.info("XLA_FLAGS=%s", environ["XLA_FLAGS"])
