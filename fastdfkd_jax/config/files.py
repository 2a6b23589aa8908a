"""Config files: a config file's sibling (`config_module`, so one configs/*.py can build
on another's settings) and the config a run saved in its workdir (`saved_config`)."""

import importlib.util
import json
import os

import ml_collections

from fastdfkd_jax import errors
from fastdfkd_jax.config.schema import base_config


def config_module(config_file: str, name: str):
  """The module of configs/`name` beside `config_file` (a config file's `__file__`), so
  one config file can build on another's settings."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
  spec = importlib.util.spec_from_file_location("_config_" + name.removesuffix(".py"), path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _merged(base: dict, saved: dict) -> dict:
  """`base` with the values of `saved` for the keys both have (sub-dicts merged)."""
  out = dict(base)
  for key, value in saved.items():
    if isinstance(out.get(key), dict) and isinstance(value, dict):
      out[key] = _merged(out[key], value)
    else:
      out[key] = value
  return out


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved (WORKDIR/config.json), fields it predates at their defaults."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise errors.UserError(f"{workdir} holds no run (no config.json); pass the workdir of "
                           "a distill or synthesize run")
  with open(path) as f:
    saved = json.load(f)
  return ml_collections.ConfigDict(_merged(base_config().to_dict(), saved))
