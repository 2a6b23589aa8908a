"""Preemption: SIGTERM/SIGINT ask a run to checkpoint at its next safe point and stop."""

import signal
import threading

from absl import logging


class Preemption:
  """SIGTERM/SIGINT set a flag; the skeleton checkpoints after the current epoch and stops.

  A second Ctrl-C stops at once. Outside the main thread (a notebook's worker) no
  handler is installed and `requested` stays False.
  """

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
    logging.warning("signal %d: will checkpoint at the next safe point and exit", signum)
    self._event.set()

  def request(self) -> None:
    """Asks for a stop as a signal would (tests, and callers embedding a run)."""
    self._event.set()

  @property
  def requested(self) -> bool:
    return self._event.is_set()


class Preempted(Exception):
  """Raised after the preemption checkpoint is written; the run returns 'preempted'."""
