"""Validation of a config against `schema.base_config()`: field names, types,
ranges and consistency. Every refusal is an `errors.UserError` naming the field and
the fix (the CLI prints it on one line and exits 2).
"""

import difflib
import functools
import math
from typing import Iterable

import ml_collections

from fastdfkd_jax.config import schema
from fastdfkd_jax import data, errors, models, synthesis
from fastdfkd_jax.transfer import formats

# The valid range of each numeric field (its type comes from `base_config`).
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")
FIELD_RANGES = {
    "seed": _NON_NEGATIVE, "epochs": _POSITIVE, "batch_size": _POSITIVE,
    "eval_batch_size": _POSITIVE, "k": _POSITIVE, "warmup": _NON_NEGATIVE,
    "eval_every": _POSITIVE, "log_every": _POSITIVE, "checkpoint_every": _POSITIVE,
    "keep_checkpoints": _POSITIVE, "sample_every": _NON_NEGATIVE, "stop_at": _NON_NEGATIVE,
    "optim.lr": _POSITIVE, "optim.momentum": _FRACTION, "optim.weight_decay": _NON_NEGATIVE,
    "optim.warmup_epochs": _NON_NEGATIVE, "optim.poly_power": _POSITIVE,
    "teacher.epochs": _POSITIVE, "teacher.batch_size": _POSITIVE, "teacher.lr": _POSITIVE,
    "teacher.weight_decay": _NON_NEGATIVE,
    "synth.nz": _POSITIVE, "synth.ngf": _POSITIVE, "synth.lr_g": _POSITIVE,
    "synth.lr_z": _NON_NEGATIVE, "synth.adv": _NON_NEGATIVE, "synth.bn": _NON_NEGATIVE,
    "synth.oh": _NON_NEGATIVE, "synth.bn_mmt": _FRACTION, "synth.betas": _FRACTION,
    "synth.reset_l0_epoch": _NON_NEGATIVE, "synth.deepinv_lr": _POSITIVE,
    "synth.deepinv_betas": _FRACTION,
    "kd.steps": _POSITIVE, "kd.lr": _POSITIVE, "kd.momentum": _FRACTION,
    "kd.weight_decay": _NON_NEGATIVE, "kd.temperature": _POSITIVE, "kd.lr_min": _NON_NEGATIVE,
    "kd.cosine_epochs": _POSITIVE, "pool.capacity": _NON_NEGATIVE,
    "transfer.num_images": _POSITIVE, "transfer.diversity_images": _NON_NEGATIVE,
    "transfer.grid_images": _NON_NEGATIVE,
    "synth.act": _NON_NEGATIVE, "synth.balance": _NON_NEGATIVE, "synth.kd_steps": _POSITIVE,
    "synth.meta_lr_g": _NON_NEGATIVE, "synth.meta_lr_z": _POSITIVE,
    "synth.reinit_every": _NON_NEGATIVE, "synth.calls_per_epoch": _POSITIVE,
    "synth.g_life": _NON_NEGATIVE, "nayer.le_size": _POSITIVE, "nayer.le_emb_size": _POSITIVE,
    "synth.crop_scale": _POSITIVE, "synth.crop_ratio": _POSITIVE,
    "kd.crop_scale": _POSITIVE, "kd.crop_ratio": _POSITIVE,
    "cmi.cr": _NON_NEGATIVE, "cmi.cr_T": _POSITIVE, "cmi.bank_size": _POSITIVE,
    "cmi.n_neg": _POSITIVE, "cmi.head_dim": _POSITIVE, "cmi.head_betas": _FRACTION,
    "cmi.local_scale": _POSITIVE, "cmi.local_ratio": _POSITIVE, "cmi.init_std": _POSITIVE,
    "deepinversion.tv": _NON_NEGATIVE, "deepinversion.tv_l2": _NON_NEGATIVE,
    "deepinversion.l2": _NON_NEGATIVE, "deepinversion.jitter": _FRACTION,
    "deepinversion.js_T": _POSITIVE, "deepinversion.student_bn": _NON_NEGATIVE,
}


def _choices() -> dict:
  """Field -> its valid values (the registries of methods and formats included)."""
  return {
      "mode": schema.MODES, "task": schema.TASKS, "optim.schedule": schema.SCHEDULES,
      "optim.optimizer": schema.OPTIMIZERS, "kd.optimizer": schema.OPTIMIZERS,
      "method": synthesis.available(), "kd.source": schema.KD_SOURCES,
      "transfer.format": formats.FORMATS, "kd.loss": schema.KD_LOSSES,
      "synth.meta_grad": schema.META_GRADS, "loop": schema.LOOPS,
      "synth.generator": schema.GENERATORS, "synth.augment": schema.AUGMENTS,
      "kd.augment": schema.AUGMENTS, "synth.keep": schema.KEEP_IMAGES,
      "dtype": schema.DTYPES, "inner_unroll": schema.INNER_LOOPS}


def _field(c: ml_collections.ConfigDict, name: str):
  return functools.reduce(lambda group, key: group[key], name.split("."), c)


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises errors.UserError naming the field and the fix for a bad config."""
  check_types(c, schema.base_config())
  for name, (ok, text) in FIELD_RANGES.items():
    value = _field(c, name)
    if not all(ok(v) for v in (value if isinstance(value, tuple) else (value,))):
      raise errors.UserError(f"config.{name}={value!r} must be {text}")
  for name, valid in _choices().items():
    value = _field(c, name)
    if value not in valid:
      close = difflib.get_close_matches(str(value), valid, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise errors.UserError(f"config.{name}={value!r} is not valid{hint}; "
                             f"choose one of {', '.join(valid)}")
  _validate_sources(c)
  _validate_imagenet_options(c)
  _validate_schedule(c)
  if c.mode == "distill" and not synthesis.get(c.method).uses_pool:
    _validate_generative(c)
  if c.mode == "evaluate" and not c.checkpoint:
    raise errors.UserError("mode=evaluate needs --config.checkpoint=DIR (a checkpoint "
                           "written by train_teacher or distill, or a release .pth)")
  _validate_data(c)
  if c.task == "segmentation":
    _validate_segmentation(c)
  archs = ([("model", c.model)] if c.mode not in ("distill", "synthesize")
           else [("teacher.arch", c.teacher.arch), ("student.arch", c.student.arch)])
  for field, arch in archs:
    if arch not in models.list_models():
      raise errors.UserError(f"unknown model {arch!r} in config.{field}; valid names: "
                             f"{', '.join(models.list_models())}")


def _validate_sources(c: ml_collections.ConfigDict) -> None:
  """What KD trains on and where the pool lives."""
  if c.mode == "synthesize" and c.kd.source != "synthetic":
    raise errors.UserError(f"mode=synthesize makes a synthetic set; kd.source="
                           f"{c.kd.source!r} must stay 'synthetic'")
  if c.kd.source == "dataset" and not c.kd.dataset_dir:
    raise errors.UserError("kd.source=dataset needs --config.kd.dataset_dir=DIR, an "
                           "exported transfer set (python -m fastdfkd_jax.export WORKDIR "
                           "DIR, or WORKDIR/transfer_set of mode=synthesize)")
  if c.pool.memmap and c.pool.on_device:
    raise errors.UserError("config.pool.memmap=True memory-maps the host pool: set "
                           "--config.pool.on_device=False with it")
  if 0 < c.pool.capacity < c.batch_size:
    raise errors.UserError(f"config.pool.capacity={c.pool.capacity} must be 0 (every "
                           f"image) or >= batch_size={c.batch_size}")


def _validate_schedule(c: ml_collections.ConfigDict) -> None:
  """Epochs, warmups, steps and learning rates that fit together."""
  if c.kd.steps % c.synth.calls_per_epoch:
    raise errors.UserError(f"config.kd.steps={c.kd.steps} must be a multiple of "
                           f"synth.calls_per_epoch={c.synth.calls_per_epoch}")
  if c.mode == "distill" and not 0 <= c.warmup < c.epochs:
    raise errors.UserError(f"config.warmup={c.warmup} must be in [0, epochs={c.epochs})")
  if c.mode == "train_teacher" and c.optim.warmup_epochs >= c.epochs:
    raise errors.UserError(f"config.optim.warmup_epochs={c.optim.warmup_epochs} must be "
                           f"< epochs={c.epochs}")
  if c.kd.lr_min > c.kd.lr:
    raise errors.UserError(f"config.kd.lr_min={c.kd.lr_min} must be <= kd.lr={c.kd.lr}")


def _validate_data(c: ml_collections.ConfigDict) -> None:
  """The data set exists, fits the task and the KD source."""
  try:
    info = data.get_info(c.dataset.name)
  except ValueError as e:
    raise errors.UserError(f"config.dataset.name={c.dataset.name!r}: {e}") from None
  if info.streaming and c.kd.source == "real":
    raise errors.UserError(f"kd.source='real' holds the whole training split in a pool; "
                           f"dataset {info.name!r} is streamed, never held whole")
  if info.task != c.task:
    raise errors.UserError(f"config.dataset.name={c.dataset.name!r} is a {info.task} set "
                           f"but config.task={c.task!r}; set --config.task={info.task}")
  if info.name == "digits" and c.dataset.data_dir:
    raise errors.UserError(
        f"config.dataset.name='digits' is scikit-learn's bundled set and reads no files, so "
        f"dataset.data_dir={c.dataset.data_dir!r} would be ignored; name the data set the "
        "folder holds (e.g. --config.dataset.name=mnist or cifar10), or drop the data_dir")


def _validate_imagenet_options(c: ml_collections.ConfigDict) -> None:
  """The ImageNet and NAYER synthesis options exist for the methods that read them."""
  defaults = (("meta_latent", False), ("reinit_every", 0), ("meta_lr_g", 0.0))
  meta = [f"synth.{f}={c.synth[f]!r}" for f, off in defaults if c.synth[f] != off]
  if meta and c.method != "fast_meta":
    raise errors.UserError(f"{', '.join(meta)} apply to method=fast_meta only, not "
                           f"{c.method!r}")
  nayer = [f"{f}={v!r}" for f, v, off in (("synth.g_life", c.synth.g_life, 0),
                                           ("nayer.label_embedding",
                                            c.nayer.label_embedding, "")) if v != off]
  if nayer and c.method != "nayer":
    raise errors.UserError(f"{', '.join(nayer)} apply to method=nayer only, not "
                           f"{c.method!r}")
  if c.synth.generator != "generator" and c.method not in ("fast_meta", "fast", "deepinv"):
    raise errors.UserError(f"synth.generator={c.synth.generator!r} applies to fast_meta, "
                           f"fast and deepinv; method {c.method!r} builds its own generator")
def _validate_segmentation(c: ml_collections.ConfigDict) -> None:
  """What segmentation runs do not have: class targets, CMI, transfer-set files."""
  if c.mode == "synthesize" or c.kd.source == "dataset":
    raise errors.UserError("transfer sets (mode=synthesize, kd.source=dataset) are "
                           "classification only; distill with kd.source=synthetic")
  if c.mode == "distill" and c.method == "cmi":
    raise errors.UserError("method=cmi is classification only (its contrastive "
                           "features are per image); use fast_meta, deepinversion, "
                           "dafl or dfad")
  if (c.mode == "distill" and synthesis.get(c.method).uses_pool and c.synth.oh
      and c.kd.source == "synthetic"):
    raise errors.UserError(f"config.synth.oh={c.synth.oh}: segmentation synthesis has no "
                           "class target for a whole image; set --config.synth.oh=0")


def check_types(c: ml_collections.ConfigDict, base: ml_collections.ConfigDict,
                prefix: str = "") -> None:
  """Raises errors.UserError for a field of `c` whose value is not of its type in `base`.

  ConfigDict lets a config file or an override store None, a float in an int
  field or a tuple of another length; this catches them. Numbers must be finite.
  """
  for key, default in base.items():
    name, value = prefix + key, c.get(key)
    if isinstance(default, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise errors.UserError(f"config.{name}={value!r} must be a group of fields "
                               f"({', '.join(default)})")
      check_types(value, default, name + ".")
    elif not _fits(value, default):
      raise errors.UserError(f"config.{name}={value!r} must be {_type_text(default)}")


def _fits(value, default) -> bool:
  """Whether `value` has the type of `default` (an int is a float; numbers are finite)."""
  if isinstance(default, tuple):
    return (isinstance(value, tuple) and len(value) == len(default)
            and all(_fits(v, d) for v, d in zip(value, default)))
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(default, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and math.isfinite(value)
  return isinstance(value, type(default))


def _type_text(default) -> str:
  if isinstance(default, tuple):
    return f"a tuple of {len(default)} finite numbers"
  names = {bool: "True or False", int: "an integer", float: "a finite number",
           str: "a string"}
  return names.get(type(default), type(default).__name__)


def _validate_generative(c: ml_collections.ConfigDict) -> None:
  """A generator-vs-student method: whole rounds per epoch, and a preset's own weights."""
  if c.synth.kd_steps <= 0 or c.kd.steps % c.synth.kd_steps:
    raise errors.UserError(f"config.kd.steps={c.kd.steps} must be a positive multiple of "
                           f"config.synth.kd_steps={c.synth.kd_steps} (an epoch is "
                           f"kd.steps // kd_steps rounds)")
  preset = schema.GENERATIVE_PRESETS.get(c.method)
  if preset is None:
    return
  wrong = [f"synth.{w}={c.synth[w]} (the release: {preset[w]})"
           for w in schema.GENERATIVE_WEIGHTS if c.synth[w] != preset[w]]
  if c.kd.loss != preset["loss"]:
    wrong.append(f"kd.loss={c.kd.loss!r} (the release: {preset['loss']!r})")
  if wrong:
    raise errors.UserError(
        f"method={c.method} is the release's setting, but {', '.join(wrong)}; start from "
        f"--config=configs/baselines_cpu.py:{c.method}-<dataset>, or use "
        f"--config.method=generative for other weights")


def field_names(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every field of `c` as a dotted name, sub-configs included ('kd', 'kd.lr', ...)."""
  names = []
  for key, value in c.items():
    names.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      names += field_names(value, f"{prefix}{key}.")
  return names


def nearest_fields(name: str, valid: Iterable[str], n: int = 3) -> list[str]:
  """The fields a mistyped dotted `name` most likely meant: those it begins (kd.temp ->
  kd.temperature), then the most similar whole dotted names (ratio >= 0.6, within 0.1 of
  the best), at most n; [] where nothing is close (nosuch)."""
  valid = list(valid)
  prefixed = [v for v in valid if v.startswith(name)]
  ranked = sorted(((difflib.SequenceMatcher(None, name, v).ratio(), v) for v in valid),
                  key=lambda rv: (-rv[0], rv[1]))
  best = ranked[0][0] if ranked else 0.0
  similar = [v for r, v in ranked if r >= 0.6 and r >= best - 0.1]
  return list(dict.fromkeys(prefixed + similar))[:n]


def check_field_names(names: Iterable[str]) -> None:
  """Raises errors.UserError for a name that is no field of `base_config`, naming the nearest."""
  valid = field_names(schema.base_config())
  for name in names:
    if name not in valid:
      close = nearest_fields(name, valid)
      hint = f"; did you mean {' or '.join(close)}?" if close else (
          f"; top-level fields: {', '.join(n for n in valid if '.' not in n)}")
      raise errors.UserError(f"config has no field {name!r}{hint}")
