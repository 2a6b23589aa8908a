"""Config file for the embedded default (used when `--config` is not given).

Kept inside the package so `python -m fastdfkd_jax.main --workdir=DIR
[--config.FIELD=VALUE ...]` works from any directory.
"""

from fastdfkd_jax import config_lib


def get_config():
  return config_lib.default_config()
