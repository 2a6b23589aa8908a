"""Supervised teacher training: `configs/teacher.py:<dataset>`.

  python -m fastdfkd_jax.main --workdir=runs/teacher_cifar10 \
      --config=configs/teacher.py:cifar10 \
      --config.dataset.data_dir=../shared/data/cifar10_jpeg.tar.gz

Datasets: digits, mnist, fashion_mnist, cifar10, cifar100, svhn_cropped. The
paper's teachers by `--config.model=resnet34|vgg11|wrn40_2`. Runtimes and
accuracies measured on a 2-core CPU are in docs/RESULTS.md.
"""

from fastdfkd_jax.config import schema

# dataset -> (CPU-sized default arch, epochs, batch, lr, weight decay)
_SETTINGS = {
    "digits": ("resnet20", 30, 64, 0.05, 5e-4),
    "mnist": ("resnet8", 4, 128, 0.1, 5e-4),
    "fashion_mnist": ("resnet8", 10, 128, 0.1, 5e-4),
    "cifar10": ("resnet20", 10, 128, 0.1, 5e-4),
    "cifar100": ("resnet20", 60, 128, 0.1, 5e-4),
    "svhn_cropped": ("resnet20", 20, 128, 0.05, 5e-4),
}


def get_config(arg: str = "digits"):
  if arg not in _SETTINGS:
    raise ValueError(f"configs/teacher.py:{arg}: unknown dataset; use one of "
                     f"{', '.join(_SETTINGS)}")
  arch, epochs, batch, lr, wd = _SETTINGS[arg]
  c = schema.base_config()
  c.mode = "train_teacher"
  c.dataset.name = arg
  c.model = arch
  c.epochs = epochs
  c.batch_size = batch
  c.optim.lr = lr
  c.optim.weight_decay = wd
  return c
