"""CPU-sized FastDFKD runs: `configs/fastdfkd_cpu.py:<dataset>`.

  python -m fastdfkd_jax.main --workdir=runs/fdkd_fashion \
      --config=configs/fastdfkd_cpu.py:fashion_mnist \
      --config.dataset.data_dir=../shared/data/fashion_mnist \
      --config.teacher.checkpoint=runs/teacher_fashion_mnist

datasets: digits, mnist, fashion_mnist, cifar10 (with
`--config.dataset.data_dir=../shared/data/cifar10_jpeg.tar.gz`). Without
`teacher.checkpoint` the teacher is trained first (`teacher.train_if_missing`).
Switch method and steps with `--config.method=fast_meta|fast|deepinv --config.k=N`.
Measured runtimes and accuracies on a 2-core CPU: docs/RESULTS.md.
"""

from fastdfkd_jax import config_lib

# dataset -> teacher, student, epochs, warmup, kd steps, batch, nz, ngf, teacher epochs
_SETTINGS = {
    "digits": ("resnet20", "resnet8", 40, 5, 30, 128, 64, 32, 30),
    "mnist": ("resnet8", "resnet8", 40, 5, 50, 128, 128, 32, 4),
    "fashion_mnist": ("resnet8", "resnet8", 40, 5, 50, 128, 128, 32, 5),
    "cifar10": ("resnet20", "resnet8", 60, 5, 50, 128, 256, 64, 10),
}


def get_config(arg: str = "digits"):
  if arg not in _SETTINGS:
    raise ValueError(f"configs/fastdfkd_cpu.py:{arg}: unknown dataset; use one of "
                     f"{', '.join(_SETTINGS)}")
  teacher, student, epochs, warmup, kd_steps, batch, nz, ngf, t_epochs = _SETTINGS[arg]
  c = config_lib.default_config() if arg == "digits" else config_lib.base_config()
  c.mode = "distill"
  c.dataset.name = arg
  c.teacher.arch, c.student.arch = teacher, student
  c.teacher.train_if_missing = True
  c.teacher.epochs = t_epochs
  c.epochs, c.warmup, c.batch_size = epochs, warmup, batch
  c.kd.steps = kd_steps
  c.kd.lr = 0.05
  c.kd.cosine_epochs = epochs - warmup
  c.synth.nz, c.synth.ngf = nz, ngf
  c.synth.reset_l0 = False
  c.sample_every = 5
  return c
