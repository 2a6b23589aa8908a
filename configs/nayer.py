"""NAYER (Tran et al., CVPR 2024) in this framework: `configs/nayer.py:<setting>`.

  python -m fastdfkd_jax.main --workdir=runs/nayer_digits --config=configs/nayer.py:digits

  python -m fastdfkd_jax.main --workdir=runs/nayer_c10_cpu --config=configs/nayer.py:cifar10-cpu \
      --config.dataset.data_dir=../shared/data/cifar10_jpeg.tar.gz \
      --config.teacher.checkpoint=docs/study_teacher

  python -m fastdfkd_jax.main --workdir=runs/nayer_c10_r34_r18 \
      --config=configs/nayer.py:cifar10-resnet34-resnet18 \
      --config.teacher.checkpoint=PATH [--config.nayer.label_embedding=cifar10_le.pickle]

Settings:
  digits          the embedded default (configs/fastdfkd_cpu.py:digits: teacher trained
                  first, 40 epochs of 30 KD steps at batch 128) with NAYER's synthesis:
                  k = 5 generator steps per call, one call per epoch, g_life 10.
  <dataset>-cpu   the one-CPU-hour budget of configs/fastdfkd_cpu.py:<dataset> (mnist,
                  fashion_mnist, cifar10), the same KD schedule, KD images and batch, and
                  NAYER with FastDFKD-5's synthesis steps: k = 5 per call, one call per
                  epoch ("NAYER-5"), so that the two compare at equal synthesis steps.
  <cifar10|cifar100>-<teacher>-<student>
                  NAYER's scripts (scripts/nayer_*.sh, 120 epochs): 20 warmup epochs, g_steps
                  30 (CIFAR-100: 40), g_loops 2, g_life 10, lr_g 4e-3, adv 1.33, bn 10,
                  oh 0.5, bn_mmt 0.9, KD lr 0.2, T 20, 400 KD steps an epoch. One batch here
                  is both the synthesis and the KD batch: 400 (NAYER's synthesis batch; its
                  KD batch is 512), and a warmup epoch makes g_loops calls (NAYER: 10).

Every setting synthesizes with NAYER's settings otherwise: lr_g 4e-3, adv 1.33, bn 10,
oh 0.5, the noisy layer 512 -> 1000 (le_emb_size). `nayer.label_embedding` takes a file of
one row per class (NAYER's `label_embedding/<dataset>_le.pickle` reads as it is); the
default is fixed random orthonormal rows (no text model).
"""

from fastdfkd_jax.config import files

_CPU = ("digits", "mnist", "fashion_mnist", "cifar10")
_PAPER_STEPS = {"cifar10": 30, "cifar100": 40}


def nayer(c, k: int, calls: int):
  """NAYER's synthesis on config `c`: its loss weights, step size and generator."""
  c.method, c.k = "nayer", k
  c.synth.calls_per_epoch, c.synth.g_life = calls, 10
  c.synth.lr_g, c.synth.adv, c.synth.bn, c.synth.oh, c.synth.bn_mmt = 4e-3, 1.33, 10.0, 0.5, 0.9
  c.synth.reset_l0, c.synth.meta_grad = False, "param_diff"
  c.nayer.le_size, c.nayer.le_emb_size = 512, 1000
  return c


def get_config(arg: str = "digits"):
  if arg in _CPU or arg.endswith("-cpu") and arg[:-4] in _CPU[1:]:
    cpu = files.config_module(__file__, "fastdfkd_cpu.py")
    return nayer(cpu.get_config(arg.removesuffix("-cpu")), k=5, calls=1)
  dataset, _, pair = arg.partition("-")
  teacher, _, student = pair.partition("-")
  if dataset not in _PAPER_STEPS or not teacher or not student:
    raise ValueError(f"configs/nayer.py:{arg}: use digits, <mnist|fashion_mnist|cifar10>-cpu "
                     "or <cifar10|cifar100>-<teacher>-<student>")
  cifar = files.config_module(__file__, "fastdfkd_cifar.py")
  c = cifar.get_config(f"{dataset}-{teacher}-{student}-k5")
  c.epochs, c.warmup, c.batch_size = 120, 20, 400
  c.kd.lr, c.kd.steps, c.kd.temperature = 0.2, 400, 20.0
  c.kd.cosine_epochs = c.epochs - c.warmup
  c.pool.capacity = 0
  c = nayer(c, k=_PAPER_STEPS[dataset], calls=2)
  c.synth.ngf = 64
  return c
