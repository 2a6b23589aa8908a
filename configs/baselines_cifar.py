"""The release's generative baselines on the paper's CIFAR pairs:
`configs/baselines_cifar.py:<method>-<dataset>-<teacher>-<student>`.

  python -m fastdfkd_jax.main --workdir=runs/c10_dafl_wrn40_2_wrn16_1 \
      --config=configs/baselines_cifar.py:dafl-cifar10-wrn40_2-wrn16_1 \
      --config.teacher.checkpoint=PATH/TO/teacher   # orbax dir or the release's .pth

method: dafl | zskt | dfq | dfad; dataset: cifar10 | cifar100; pairs as
configs/fastdfkd_cifar.py: resnet34-resnet18, vgg11-resnet18, wrn40_2-wrn16_1,
wrn40_2-wrn40_1, wrn40_2-wrn16_2. Settings of the release's scripts/<method>_cifar.sh
(schema.GENERATIVE_PRESETS for the method's weights, nz, kd_steps and T): 200
epochs, no warmup, batch 256, 400 KD steps per epoch (--ep_steps) in rounds of
1 generator update and kd_steps student updates, KD lr 0.1 cosine (T_max 200,
eta_min 2e-4), generator Adam lr 1e-3 betas (0.5, 0.999), ngf 64, seed 0.
The release gives these scripts for CIFAR-10 (wrn40_2 -> wrn16_1) only; every other
pair and CIFAR-100 use the same setting unchanged (users of the release report its
CIFAR-100 baselines far below the paper's table, for this reason).
"""

from fastdfkd_jax.config import schema

_PAIRS = (("resnet34", "resnet18"), ("vgg11", "resnet18"), ("wrn40_2", "wrn16_1"),
          ("wrn40_2", "wrn40_1"), ("wrn40_2", "wrn16_2"))
SETTINGS = [f"{m}-{d}-{t}-{s}" for m in schema.GENERATIVE_PRESETS
            for d in ("cifar10", "cifar100") for t, s in _PAIRS]


def get_config(arg: str = "dafl-cifar10-wrn40_2-wrn16_1"):
  if arg not in SETTINGS:
    raise ValueError(f"configs/baselines_cifar.py:{arg}: not a setting; use "
                     "<dafl|zskt|dfq|dfad>-<cifar10|cifar100>-<teacher>-<student> with "
                     f"pairs {', '.join(t + '-' + s for t, s in _PAIRS)}")
  method, dataset, teacher, student = arg.split("-")
  c = schema.generative_preset(schema.base_config(), method)
  c.mode = "distill"
  c.dataset.name = dataset
  c.teacher.arch, c.student.arch = teacher, student
  c.epochs, c.warmup, c.batch_size = 200, 0, 256
  c.synth.ngf = 64
  c.synth.reset_l0 = False
  c.kd.steps, c.kd.lr = 400, 0.1
  c.kd.lr_min, c.kd.cosine_epochs = 2e-4, 200
  c.seed = 0
  return c
