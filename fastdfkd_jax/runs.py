"""Run bookkeeping shared by every mode: workdir checks, config diff, preemption."""

import json
import os
import shutil
import signal
import tempfile
import threading

import ml_collections
import numpy as np
from absl import logging

from fastdfkd_jax import errors, reporting

MIN_FREE_BYTES = 200 * 2**20


class ConfigMismatchError(errors.UserError):
  """The workdir holds a run with a different config."""


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Creates/validates the workdir before any training starts.

  Fails early on an unwritable directory, a nearly full disk, or (unless
  `config.allow_config_change`) a workdir whose saved config differs.
  """
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
      pass
  except OSError as e:
    raise errors.UserError(f"workdir {workdir} is not writable ({e.strerror}); "
                           "pass a writable --workdir") from e
  free = shutil.disk_usage(workdir).free
  if free < MIN_FREE_BYTES:
    raise errors.UserError(f"only {free / 2**20:.0f} MiB free under {workdir}; "
                           f"checkpoints need at least {MIN_FREE_BYTES / 2**20:.0f} MiB")
  path = os.path.join(workdir, "config.json")
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = config_diff(old, new, ignore=("allow_config_change",))
    if diff and not config.allow_config_change:
      raise ConfigMismatchError(
          f"workdir {workdir} holds a run with a different config:\n  "
          + "\n  ".join(diff)
          + "\nuse a new --workdir, or resume anyway with "
            "--config.allow_config_change=True")
    if diff:
      logging.warning("config changed on resume (allowed):\n  %s", "\n  ".join(diff))
  reporting.write_json(path, new)


def config_diff(old: dict, new: dict, ignore=(), prefix: str = "") -> list[str]:
  """Field-by-field differences, 'field: old -> new'."""
  out = []
  for key in sorted(set(old) | set(new)):
    name = prefix + key
    if name in ignore:
      continue
    a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_diff(a, b, ignore, name + ".")
    elif a != b:
      out.append(f"{name}: {a!r} -> {b!r}")
  return out


class Preemption:
  """SIGTERM/SIGINT set a flag; loops checkpoint at the next safe point and exit."""

  def __init__(self):
    self._event = threading.Event()
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    if self._event.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    logging.warning("signal %d: will checkpoint at the next safe point and exit",
                    signum)
    self._event.set()

  @property
  def requested(self) -> bool:
    return self._event.is_set()


class Preempted(Exception):
  """Raised after the preemption checkpoint is written; main exits 0."""


def check_finite(metrics: dict, epoch: int) -> None:
  """Stops the run (before any checkpoint of this epoch) on a NaN/Inf metric."""
  for name, value in metrics.items():
    if not np.all(np.isfinite(np.asarray(value))):
      raise errors.UserError(
          f"{name} became {float(np.asarray(value))} at epoch {epoch}: the run stops "
          "here and the last good checkpoint is kept. Lower the learning rates "
          "(optim.lr, synth.lr_g, kd.lr) or the loss weights, then resume.")


def finished_summary(workdir: str, next_epoch: int, epochs: int) -> dict | None:
  """The saved summary of a run that already finished (re-running it is a no-op)."""
  path = os.path.join(workdir, "summary.json")
  if next_epoch < epochs or not os.path.exists(path):
    return None
  logging.info("run already finished; see %s", path)
  with open(path) as f:
    return json.load(f)
