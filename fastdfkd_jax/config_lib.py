"""The one base config every run starts from, and its validation.

Config files in `configs/` call `base_config()` and override fields; `main.py`
without `--config` runs `default_config()` (digits, teacher training + FastDFKD,
a few minutes on a laptop CPU). Every constant of a run lives here.
"""

import difflib
from typing import Iterable

import ml_collections

from fastdfkd_jax import errors

MODES = ("train_teacher", "evaluate", "distill")
KD_SOURCES = ("synthetic", "real", "noise")
META_GRADS = ("param_diff", "sum_inner_grads")
LOOPS = ("auto", "scan", "host", "fused")
DTYPES = ("float32", "bfloat16")
# The release's per-k synthesis step sizes: k -> (lr_g, lr_z) (reference doc, section 5).
PAPER_STEP_LRS = {2: (5e-3, 0.015), 5: (3e-3, 0.01), 10: (2e-3, 0.01)}


def base_config() -> ml_collections.ConfigDict:
  """All fields with the release's defaults (reference doc, section 5)."""
  c = ml_collections.ConfigDict()
  c.mode = "distill"
  c.seed = 0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "digits"
  c.dataset.data_dir = ""        # empty: TFDS (needs internet); else local files
  c.dataset.cache_dir = ""       # where archives are unpacked/decoded; empty: ~/.cache

  # train_teacher / evaluate.
  c.model = "resnet8"            # architecture trained by mode=train_teacher
  c.checkpoint = ""              # mode=evaluate: checkpoint directory (or a .pth)
  c.epochs = 200                 # train_teacher: epochs; distill: total epochs incl. warmup
  c.batch_size = 256             # train_teacher batch; distill: synthesis and KD batch
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.1               # SGD, cosine decay per step to 0
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 0
  c.eval_batch_size = 500

  # distill: teacher (loaded, or trained first when missing and allowed).
  c.teacher = ml_collections.ConfigDict()
  c.teacher.arch = "resnet20"
  c.teacher.checkpoint = ""      # orbax checkpoint dir or a release .pth
  c.teacher.train_if_missing = False
  c.teacher.epochs = 30          # used only when the teacher is trained first
  c.teacher.batch_size = 128
  c.teacher.lr = 0.1
  c.teacher.weight_decay = 5e-4

  c.student = ml_collections.ConfigDict()
  c.student.arch = "resnet8"
  c.student.sync_bn = True       # cross-device BN for the student's train-mode BN

  # FastDFKD synthesis.
  c.method = "fast_meta"         # a synthesis method: fastdfkd_jax.synthesis.available()
  c.k = 5                        # inner steps per synthesis call
  c.warmup = 20                  # synthesis-only epochs (adversarial term off)
  c.synth = ml_collections.ConfigDict()
  c.synth.nz = 256
  c.synth.ngf = 64
  c.synth.lr_g = 3e-3
  c.synth.lr_z = 1e-2
  c.synth.adv = 1.1
  c.synth.bn = 10.0
  c.synth.oh = 0.4
  c.synth.bn_mmt = 0.9
  c.synth.betas = (0.5, 0.999)
  c.synth.meta_grad = "param_diff"   # the paper's Eq. 10; 'sum_inner_grads' is the release's
  c.synth.reset_l0 = True
  c.synth.reset_l0_epoch = 140       # 120 + warmup in the release
  c.synth.deepinv_lr = 0.1           # method=deepinv: Adam on pixel logits
  c.synth.deepinv_betas = (0.5, 0.99)

  # KD on the synthetic pool.
  c.kd = ml_collections.ConfigDict()
  c.kd.steps = 400               # KD updates per epoch after warmup
  c.kd.lr = 0.2
  c.kd.momentum = 0.9
  c.kd.weight_decay = 1e-4
  c.kd.temperature = 20.0
  c.kd.lr_min = 2e-4             # cosine eta_min
  c.kd.cosine_epochs = 200       # cosine T_max, stepped per epoch after warmup
  # What KD trains on: 'synthetic' (the method), or the baselines 'real' (the real
  # training set: the upper bound) and 'noise' (fresh uniform-noise images each step:
  # the lower bound). The baselines skip synthesis and the warmup epochs and keep the
  # KD schedule (epochs, steps, lr) of the synthetic run.
  c.kd.source = "synthetic"

  c.pool = ml_collections.ConfigDict()
  c.pool.capacity = 0            # images; 0 = every synthesized image (epochs * batch)
  c.pool.on_device = True        # False: host-memory ring buffer

  # Loop structure, chosen in one place (loops, distill.builder): 'auto' = lax.scan on
  # TPU/GPU, host-driven jitted steps on CPU (XLA:CPU conv grads in loops are ~50x slower).
  c.loop = "auto"                # | 'scan' | 'host' | 'fused': synthesis + KD in one dispatch
  c.inner_unroll = "auto"        # 'auto' | 'true' | 'false' | 'host' (see loops.inner_structure)
  c.dtype = "float32"            # activations; params, BN stats and losses stay float32

  c.eval_every = 1
  c.log_every = 50               # steps between log lines inside an epoch
  c.checkpoint_every = 5         # epochs
  c.keep_checkpoints = 2
  c.sample_every = 10            # epochs between samples/epoch_NNNN.png grids
  c.allow_config_change = False
  return c


def default_config() -> ml_collections.ConfigDict:
  """The embedded default: digits teacher (trained first) + FastDFKD, CPU minutes."""
  c = base_config()
  c.mode = "distill"
  c.dataset.name = "digits"
  c.teacher.arch = "resnet20"
  c.teacher.train_if_missing = True
  c.teacher.epochs = 30
  c.teacher.batch_size = 64
  c.teacher.lr = 0.05
  c.student.arch = "resnet8"
  c.epochs = 40
  c.warmup = 5
  c.k = 5
  c.batch_size = 128
  c.synth.nz = 64
  c.synth.ngf = 32
  c.synth.reset_l0 = False
  c.kd.steps = 30
  c.kd.lr = 0.05
  c.kd.cosine_epochs = 35
  c.kd.temperature = 20.0
  c.sample_every = 5
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises errors.UserError naming the field and the fix for a bad config."""
  def choice(field, value, valid):
    if value not in valid:
      close = difflib.get_close_matches(str(value), valid, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise errors.UserError(f"config.{field}={value!r} is not valid{hint}; "
                       f"choose one of {', '.join(valid)}")

  from fastdfkd_jax import synthesis  # late: keeps config import light
  choice("mode", c.mode, MODES)
  choice("method", c.method, synthesis.available())
  choice("kd.source", c.kd.source, KD_SOURCES)
  choice("synth.meta_grad", c.synth.meta_grad, META_GRADS)
  choice("loop", c.loop, LOOPS)
  choice("dtype", c.dtype, DTYPES)
  choice("inner_unroll", str(c.inner_unroll).lower(), ("auto", "true", "false", "host"))
  positive = {"batch_size": c.batch_size, "epochs": c.epochs, "k": c.k,
              "kd.steps": c.kd.steps, "eval_batch_size": c.eval_batch_size,
              "kd.temperature": c.kd.temperature}
  for name, value in positive.items():
    if value <= 0:
      raise errors.UserError(f"config.{name}={value} must be > 0")
  if c.mode == "distill" and not 0 <= c.warmup < c.epochs:
    raise errors.UserError(f"config.warmup={c.warmup} must be in [0, epochs={c.epochs})")
  if c.mode == "evaluate" and not c.checkpoint:
    raise errors.UserError("mode=evaluate needs --config.checkpoint=DIR (a checkpoint "
                     "written by train_teacher or distill, or a release .pth)")
  from fastdfkd_jax import data, models  # late: keeps config import light
  try:
    data.get_info(c.dataset.name)
  except ValueError as e:
    raise errors.UserError(f"config.dataset.name={c.dataset.name!r}: {e}") from None
  archs = ([("model", c.model)] if c.mode != "distill"
           else [("teacher.arch", c.teacher.arch), ("student.arch", c.student.arch)])
  for field, arch in archs:
    if arch not in models.list_models():
      raise errors.UserError(f"unknown model {arch!r} in config.{field}; valid names: "
                       f"{', '.join(models.list_models())}")


def field_names(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every field of `c` as a dotted name, sub-configs included ('kd', 'kd.lr', ...)."""
  names = []
  for key, value in c.items():
    names.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      names += field_names(value, f"{prefix}{key}.")
  return names


def check_field_names(names: Iterable[str]) -> None:
  """Raises errors.UserError for a name that is no field of `base_config`, naming the nearest."""
  valid = field_names(base_config())
  for name in names:
    if name not in valid:
      close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
      hint = f"; did you mean {' or '.join(close)}?" if close else (
          f"; top-level fields: {', '.join(n for n in valid if '.' not in n)}")
      raise errors.UserError(f"config has no field {name!r}{hint}")
