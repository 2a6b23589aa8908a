"""Run bookkeeping shared by every mode: workdir checks, config diff, preemption."""

import fcntl
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time

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


class WorkdirLock:
  """One writer per workdir: an exclusive `flock` on `workdir/.lock`, held for the run.

  The file names the holder (pid, host, start time). A second process on the
  same workdir fails with a `errors.UserError` naming that holder. The kernel
  drops the lock when its process dies, so the lock of a killed run (its file
  still naming the dead pid) is taken over with a warning. A clean exit empties
  the file. Only process 0 of a multi-process run takes it.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), ".lock")
    self._file = None

  def __enter__(self):
    if not reporting.is_main_process():
      return self
    try:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      self._file = open(self.path, "a+")  # pylint: disable=consider-using-with
    except OSError as e:
      raise errors.UserError(f"workdir {os.path.dirname(self.path)} is not writable "
                             f"({e.strerror}); pass a writable --workdir") from e
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      who = self._holder() or "a process still starting up"
      self._file.close()
      raise errors.UserError(
          f"workdir {os.path.dirname(self.path)} is in use by another run ({who}); wait "
          "for it, stop it, or pass another --workdir") from None
    holder = self._holder()
    if holder:
      logging.warning("taking over the lock of a run that is gone (%s); its checkpoints "
                      "are resumed", holder)
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f"pid {os.getpid()} on host {socket.gethostname()}, started "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
    self._file.flush()
    return self

  def _holder(self) -> str:
    self._file.seek(0)
    return self._file.read().strip()

  def __exit__(self, *exc):
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()
      self._file.close()  # closing releases the flock
      self._file = None


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
