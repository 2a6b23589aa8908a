"""`python -m fastdfkd_jax.main` with one injected full-disk fault (tests only).

    python tests/fault_main.py FAULT --workdir=DIR [--config...]

FAULT is
  checkpoint:N  saving run checkpoint step N (not best/) leaves a half-written
                orbax temporary directory, then fails with OSError(ENOSPC), as a
                file system that fills up during the save does;
  metrics:N     appending the epoch-N row of metrics.jsonl writes half the row,
                then fails with OSError(ENOSPC).
The package code runs unchanged; only orbax's save and the `open` seen by
`fastdfkd_jax.run.reporting` are wrapped.
"""

import builtins
import errno
import os
import runpy
import sys


def _no_space(path):
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def inject_checkpoint(step: int) -> None:
  import orbax.checkpoint as ocp
  original = ocp.CheckpointManager.save

  def save(self, at, *args, **kwargs):
    directory = str(self.directory)
    if at == step and os.path.basename(directory) != "best":
      tmp = os.path.join(directory, f"{at}.orbax-checkpoint-tmp-1234", "state")
      os.makedirs(tmp, exist_ok=True)
      with open(os.path.join(tmp, "partial"), "wb") as f:
        f.write(b"\0" * 4096)
      raise _no_space(tmp)
    return original(self, at, *args, **kwargs)

  ocp.CheckpointManager.save = save


class _HalfWriter:
  """A file whose write of the faulty row writes half of it, then fails."""

  def __init__(self, f, epoch: int):
    self._f, self._epoch = f, epoch

  def write(self, text):
    if f'"epoch": {self._epoch},' in text:
      self._f.write(text[:len(text) // 2])
      self._f.flush()
      raise _no_space(self._f.name)
    return self._f.write(text)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()


def inject_metrics(epoch: int) -> None:
  from fastdfkd_jax.run import reporting

  def faulty_open(path, mode="r", *args, **kwargs):
    f = builtins.open(path, mode, *args, **kwargs)
    if str(path).endswith("metrics.jsonl") and mode == "a":
      return _HalfWriter(f, epoch)
    return f

  reporting.open = faulty_open


def main() -> None:
  kind, at = sys.argv[1].split(":")
  {"checkpoint": inject_checkpoint, "metrics": inject_metrics}[kind](int(at))
  sys.argv = ["fastdfkd_jax.main"] + sys.argv[2:]
  runpy.run_module("fastdfkd_jax.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
