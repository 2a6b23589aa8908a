"""Errors a user can act on (exit 2 with one line); everything else is a bug (traceback, exit 1)."""


class UserError(ValueError):
  """A problem the user can fix: a bad config value, a missing or corrupt file, a mismatched checkpoint.

  The entry points print its message as one line and exit 2. It subclasses ValueError so that callers
  catching ValueError keep working; raise it only for conditions a user can fix.
  """
