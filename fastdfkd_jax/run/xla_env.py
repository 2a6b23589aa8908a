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

`dtype='auto'` picks per machine: bfloat16 on accelerators and on CPUs with native
bfloat16 instructions (AVX-512 BF16 or AMX-BF16, read from /proc/cpuinfo), float32 on
other CPUs. There bfloat16 is emulated, and measured slower than float32 on an Intel
Ice Lake: one-hour CIFAR-10 synthesis call 13.98 s against 4.47 s, KD 243 against 298
images/s (docs/BENCHMARKS.md, "CPUs without native bfloat16").
"""

import functools
import os
from typing import MutableMapping

import jax
from absl import logging

ONEDNN_CUSTOM_CALL = "--xla_cpu_experimental_onednn_custom_call"
# /proc/cpuinfo flags of x86 CPUs whose oneDNN convolutions run bfloat16 natively.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether this CPU has bfloat16 instructions oneDNN uses (False where unknown)."""
  try:
    with open(cpuinfo) as f:
      text = f.read()
  except OSError:
    return False
  flags = set()
  for line in text.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "flags":
      flags.update(value.split())
  return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def resolve_dtype(name: str, backend: str | None = None) -> str:
  """The activation dtype `config.dtype` names on `backend` (default: JAX's default
  backend), 'float32' or 'bfloat16': 'auto' resolved."""
  if name != "auto":
    return name
  backend = backend or jax.default_backend()
  return "bfloat16" if backend != "cpu" or cpu_has_native_bf16() else "float32"


def describe_dtype(name: str) -> str:
  """The dtype part of a run's start line ('dtype=float32 (auto)'); where that choice is
  slow on this machine, `dtype_note` goes to the log as a warning first (once)."""
  backend = jax.default_backend()
  note = dtype_note(name, backend)
  if note:
    logging.log_first_n(logging.WARNING, note, 1)
  resolved = resolve_dtype(name, backend)
  return f"dtype={resolved}" + (" (auto)" if name == "auto" else "")


def dtype_note(name: str, backend: str) -> str | None:
  """A line for the log where the dtype choice is slow on this machine, else None."""
  if name == "bfloat16" and backend == "cpu" and not cpu_has_native_bf16():
    return ("dtype=bfloat16 on a CPU without native bfloat16 (no avx512_bf16 / amx_bf16 "
            "in /proc/cpuinfo): XLA emulates it, slower than float32 (measured 3.1x on "
            "synthesis); --config.dtype=auto picks float32 here")
  return None


def flags_for(config) -> list[str]:
  """The XLA flags this config asks for."""
  # The flag acts on the CPU backend only, so resolve for it (naming the backend also keeps
  # jax.default_backend(), which would start the backends before XLA_FLAGS is set, uncalled).
  if resolve_dtype(config.dtype, "cpu") == "bfloat16" and config.cpu_onednn:
    return [f"{ONEDNN_CUSTOM_CALL}=true"]
  return []


def apply(config, environ: MutableMapping[str, str] = os.environ) -> None:
  """Adds `flags_for(config)` to `XLA_FLAGS`, keeping any flag the user set."""
  current = environ.get("XLA_FLAGS", "")
  missing = [f for f in flags_for(config) if f.split("=")[0] not in current]
  if missing:
    environ["XLA_FLAGS"] = " ".join([current] + missing).strip()
    logging.info("XLA_FLAGS=%s", environ["XLA_FLAGS"])
