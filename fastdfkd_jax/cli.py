"""The command-line layer's one flags library (absl): the `--config` flag, positional
arguments and user-error exits, shared by the entry points `main`, `bench`, `export`,
`import_torch`, `plot` and `table`.

An `errors.UserError` (or a bad flag) ends an entry point with one `error: ...` line on
stderr and exit code 2; any other exception is a bug and keeps its traceback (exit 1).
No library module imports this one.
"""

import contextlib
import logging as py_logging
import os
import re
import sys
from typing import Iterator, Sequence

from absl import flags, logging
from ml_collections import config_flags

from fastdfkd_jax.config import checks as config_checks
from fastdfkd_jax import errors
from fastdfkd_jax.run import xla_env

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "config", "default.py")
CONFIG_HELP = "A configs/*.py file (optionally :ARG); default: the embedded digits run."


@contextlib.contextmanager
def user_errors(hard_exit: bool = False) -> Iterator[None]:
  """Turns an `errors.UserError` into one `error: ...` line on stderr and exit 2.

  With `hard_exit` (a run's entry point) the process ends at once after the line
  (`os._exit`): a failed orbax/tensorstore read leaves futures that print tracebacks
  while the interpreter shuts down, and a peer-lost run's jax.distributed shutdown would
  wait for the dead peer. Everything the run keeps is on disk by then.
  """
  try:
    yield
  except errors.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    if hard_exit or isinstance(e, errors.PeerLostError):
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(2)
    sys.exit(2)


@contextlib.contextmanager
def exit_2_on(*types: type[BaseException]) -> Iterator[None]:
  """`user_errors`, and these exception types too are the user's to fix (a missing file,
  a bad argument of the small tools `plot` and `table`)."""
  try:
    with user_errors():
      yield
  except types as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None


def positional(argv: Sequence[str], names: Sequence[str], usage: str,
               at_least: bool = False) -> list[str]:
  """The positional arguments after absl's flag parsing (argv[0] is the program): exactly
  `names`, or with `at_least` one or more; otherwise the usage line and exit 2."""
  args = list(argv[1:])
  if len(args) < len(names) or (len(args) > len(names) and not at_least):
    print(f"usage: {usage}", file=sys.stderr)
    raise SystemExit(2)
  return args


def check_config_file(argv: Sequence[str]) -> None:
  """A `--config=PATH[:ARG]` whose PATH is no file: one line naming it and the files
  beside it."""
  values = [a.split("=", 1)[1] for a in argv if re.match(r"-{1,2}config=", a)]
  values += [argv[i + 1] for i, a in enumerate(argv[:-1]) if re.fullmatch(r"-{1,2}config", a)]
  for value in values:
    path = value.split(":", 1)[0]
    if not os.path.isfile(path):
      folder = os.path.dirname(path) or "."
      beside = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(
          folder) else []
      hint = f"; {folder} holds {', '.join(beside)}" if beside else ""
      raise errors.UserError(f"--config={value}: no such config file{hint}")


def override_names(argv: Sequence[str]) -> list[str]:
  """The fields X of the `--config.X[=V]` (or `--noconfig.X`) overrides in argv."""
  pattern = re.compile(r"-{1,2}(?:no)?config\.([^=]+)")
  return [m.group(1) for m in map(pattern.match, argv) if m]


def parse_flags(argv: Sequence[str],
                flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """`app.run`'s flags parser for entry points with a `--config` flag.

  Checks the `--config.X` names against the config's fields first (an unknown
  one names the nearest valid fields), then defines `--config` (default: the
  embedded default config) and parses argv, then sets the XLA flags the config
  asks for (`xla_env.apply`, before any backend starts). A bad flag, a config file that does
  not load or an unknown field exits 2 with one line. `flag_values`: where the
  flags live (tests parse into a fresh `flags.FlagValues`).
  """
  with user_errors():
    check_config_file(argv)
    config_checks.check_field_names(override_names(argv))
    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, CONFIG_HELP, lock_config=True,
                                    sys_argv=list(argv), flag_values=flag_values)
    try:
      rest = flag_values(argv)
    except flags.Error as e:  # a config file's own traceback is kept to its last line
      raise errors.UserError(errors.one_line(str(e))) from None
    try:
      flag_values.config.get("mode")  # ml_collections defers a file's load error to here
    except OSError as e:
      text = errors.one_line(str(e.__cause__ or e)).replace(" config_config", "")
      raise errors.UserError(f"--config: cannot load the config file: {text}") from None
    xla_env.apply(flag_values.config)
    return rest


class _QuietOrbax(py_logging.Filter):
  """Orbax logs every checkpoint step at INFO (keep its warnings only; absl's
  `--verbosity=1` brings the rest back), and a write that fails for a full disk with a
  traceback per thread (the run stops with one line)."""

  def filter(self, record):
    if "orbax" not in record.pathname:
      return True
    if record.levelno < py_logging.WARNING:
      return logging.get_verbosity() >= 1
    return not errors.is_disk_full(Exception(record.getMessage()))


def quiet_library_logs() -> None:
  for handler in py_logging.getLogger("absl").handlers + py_logging.getLogger().handlers:
    handler.addFilter(_QuietOrbax())
