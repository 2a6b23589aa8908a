"""Config file for the embedded default (used when `--config` is not given).

Kept inside the package so `python -m fastdfkd_jax.main --workdir=DIR
[--config.FIELD=VALUE ...]` works from any directory.
"""

from fastdfkd_jax.config import schema


def get_config():
  return schema.default_config()
