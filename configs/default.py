"""The embedded default: digits teacher (trained first) + FastDFKD end to end.

  python -m fastdfkd_jax.main --workdir=/tmp/fdkd_default --config=configs/default.py

Same as running `main` without `--config`. Offline (scikit-learn's digits),
a few minutes on a 2-core CPU; see docs/RESULTS.md for the measured time.
"""

from fastdfkd_jax.config import schema


def get_config():
  return schema.default_config()
