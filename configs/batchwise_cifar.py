"""The release's batch-wise baselines: `configs/batchwise_cifar.py:<preset>[-<data>-<t>-<s>]`.

  python -m fastdfkd_jax.main --workdir=runs/c10_cmi \
      --config=configs/batchwise_cifar.py:cmi-cifar10-wrn40_2-wrn16_1 \
      --config.teacher.checkpoint=PATH/TO/teacher   # orbax dir or the release's .pth

presets (the release's scripts/cmi_cifar.sh and scripts/deepinv_cifar.sh):
  cmi                 CMI: g_steps (k) 200, lr_g 1e-3, adv 0.5, bn 1, oh 1, cr 0.8,
                      cr_T 0.2; bank 40960 rows, 4096 negatives, head 256 (datafree_kd.py)
  cmi_fast            the scripts' "tuned fast version": k 5, cr 0 (no contrastive term)
  deepinversion       DeepInversion: g_steps (k) 1000, lr_g 0.1, adv 1, bn 10, oh 1
                      (datafree_kd.py passes tv = l2 = 0)
  deepinversion_fast  the "fast version": k 10, lr_g 1, 200 KD steps per epoch
dataset: cifar10 (default) | cifar100; teacher-student: wrn40_2-wrn16_1 (default) or
any pair of the zoo. Common settings of those scripts: batch 256, 200 epochs, no
warmup (KD from the first call, the adversarial term always on), KD lr 0.1 cosine
(T_max 200, eta_min 2e-4), T = 20, seed 0, generator nz 256 / ngf 64 (CMI).
`--config.k=N` gives the few-step variants (the paper's Table 4).

`<preset>-cpu` is the CPU study's form: the preset's synthesis settings with the
sizing of configs/fastdfkd_cpu.py:cifar10 (resnet20 -> resnet8, batch 128, KD lr,
kd.steps per epoch, the cosine, generator ngf 32, dtype), with that config's KD
epochs (its epochs - warmup) and warmup 0 as the release's batch-wise scripts, so the
student sees the same KD images as the FastDFKD rows.
"""

from fastdfkd_jax.config import files, schema

# preset -> (method, k, lr_g, adv, bn, oh, kd steps per epoch)
_PRESETS = {
    "cmi": ("cmi", 200, 1e-3, 0.5, 1.0, 1.0, 400),
    "cmi_fast": ("cmi", 5, 1e-3, 0.5, 1.0, 1.0, 400),
    "deepinversion": ("deepinversion", 1000, 0.1, 1.0, 10.0, 1.0, 400),
    "deepinversion_fast": ("deepinversion", 10, 1.0, 1.0, 10.0, 1.0, 200),
}
SETTINGS = sorted(_PRESETS)


def get_config(arg: str = "cmi"):
  preset, *rest = arg.split("-")
  if rest == ["cpu"] and preset in _PRESETS:
    return _cpu(get_config(preset))
  if preset not in _PRESETS or len(rest) not in (0, 3) or (
      rest and rest[0] not in ("cifar10", "cifar100")):
    raise ValueError(f"configs/batchwise_cifar.py:{arg}: use <preset>[-<cifar10|cifar100>-"
                     f"<teacher>-<student>] or <preset>-cpu with preset one of "
                     f"{', '.join(SETTINGS)}")
  dataset, teacher, student = rest or ("cifar10", "wrn40_2", "wrn16_1")
  method, k, lr_g, adv, bn, oh, kd_steps = _PRESETS[preset]
  c = schema.base_config()
  c.mode = "distill"
  c.dataset.name = dataset
  c.teacher.arch, c.student.arch = teacher, student
  c.method, c.k = method, k
  c.epochs, c.warmup, c.batch_size = 200, 0, 256
  c.synth.lr_g, c.synth.adv, c.synth.bn, c.synth.oh = lr_g, adv, bn, oh
  c.synth.nz, c.synth.ngf = 256, 64
  c.synth.reset_l0 = False
  c.cmi.cr = 0.0 if preset == "cmi_fast" else 0.8
  c.cmi.cr_T = 0.2
  c.deepinversion.tv, c.deepinversion.l2 = 0.0, 0.0
  c.kd.steps, c.kd.lr, c.kd.temperature = kd_steps, 0.1, 20.0
  c.kd.lr_min, c.kd.cosine_epochs = 2e-4, 200
  c.seed = 0
  return c


def _cpu(c):
  """The preset `c` on the sizing of configs/fastdfkd_cpu.py:cifar10."""
  fast = files.config_module(__file__, "fastdfkd_cpu.py").get_config("cifar10")
  c.teacher.arch, c.student.arch = fast.teacher.arch, fast.student.arch
  c.epochs, c.warmup, c.batch_size = fast.epochs - fast.warmup, 0, fast.batch_size
  c.kd.steps, c.kd.lr, c.kd.cosine_epochs = fast.kd.steps, fast.kd.lr, fast.kd.cosine_epochs
  c.synth.ngf, c.dtype = fast.synth.ngf, fast.dtype
  c.eval_every, c.checkpoint_every = fast.eval_every, fast.checkpoint_every
  return c
