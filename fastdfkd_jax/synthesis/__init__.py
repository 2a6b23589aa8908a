"""Data-free synthesis methods, one module per family, chosen by `config.method`.

`build(config, teacher=..., student=..., info=...)` makes the method; `base`
documents the protocol every method meets and what the run loop calls.
"""

# Importing the method modules runs their @register decorators.
from fastdfkd_jax.synthesis import (  # noqa: F401
    cmi, deepinversion, fast_meta, generative, nayer, no_reuse)
from fastdfkd_jax.synthesis.base import (Synthesizer, available, build,
                                         get, host_steppable, register)

__all__ = ["Synthesizer", "available", "build", "get", "host_steppable",
           "register"]
