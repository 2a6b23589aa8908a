"""Errors a user can act on (exit 2 with one line); everything else is a bug (traceback, exit 1)."""

import errno

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")


class UserError(ValueError):
  """A problem the user can fix: a bad config value, a missing or corrupt file, a mismatched checkpoint.

  The entry points print its message as one line and exit 2. It subclasses ValueError so that callers
  catching ValueError keep working; raise it only for conditions a user can fix.
  """


class PeerLostError(UserError):
  """Another process of a multi-process run died: this one stops at once (exit 2, without
  waiting in the distributed shutdown for the dead one); restarting all of them resumes."""


class DiskFullError(UserError):
  """No space left (or quota exceeded) while writing a checkpoint or a run file."""


def is_disk_full(e: BaseException) -> bool:
  """Whether `e`, or an exception it was raised from, reports a full disk or quota.

  Libraries that write through their own I/O (orbax, tensorstore) wrap the
  OSError or only keep its text, so the whole chain and the messages are checked.
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
      return True
    if any(text in str(e) for text in _NO_SPACE_TEXT):
      return True
    e = e.__cause__ or e.__context__
  return False


def one_line(text: str) -> str:
  """The first and the last non-empty line of a multi-line message."""
  lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
  if len(lines) <= 1:
    return lines[0] if lines else ""
  return f"{lines[0]} {lines[-1]}"
