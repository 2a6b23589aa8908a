"""The paper's CIFAR settings: `configs/fastdfkd_cifar.py:<dataset>-<teacher>-<student>-k<k>`.

  python -m fastdfkd_jax.main --workdir=runs/c100_wrn40_2_wrn16_2_k5 \
      --config=configs/fastdfkd_cifar.py:cifar100-wrn40_2-wrn16_2-k5 \
      --config.teacher.checkpoint=PATH/TO/teacher   # orbax dir or the release's .pth

dataset: cifar10 | cifar100; pairs: resnet34-resnet18, vgg11-resnet18,
wrn40_2-wrn16_1, wrn40_2-wrn40_1, wrn40_2-wrn16_2; k: 2 | 5 | 10.
Hyper-parameters as the release's scripts (reference doc, section 5):
220 epochs (20 warmup), batch 256, 400 KD steps/epoch, T = 20, KD lr 0.2 cosine
(T_max 200, eta_min 2e-4), bn_mmt 0.9, reset_l0 at epoch 140, seed 0, and the
meta-gradient the scripts use: every CIFAR script of the release passes
`--is_maml 1`, the summed inner gradients (`synth.meta_grad=sum_inner_grads`),
not the paper's parameter difference (Eq. 10; `--config.synth.meta_grad=param_diff`).
Remaining differences from the release: docs/GUIDE.md, "Deviations from the release".
These are GPU/TPU-sized runs (the paper reports 0.06-0.28 h of synthesis on one
GPU for resnet34 -> resnet18); `--config.method=fast|deepinv` for the ablations.
"""

from fastdfkd_jax.config import schema

_STEP_LRS = schema.PAPER_STEP_LRS   # k -> (lr_g, lr_z)
# (teacher, student) -> (adv, bn, oh)
_PAIRS = {
    ("resnet34", "resnet18"): (1.33, 10.0, 0.5),
    ("vgg11", "resnet18"): (1.0, 10.0, 0.5),
    ("wrn40_2", "wrn16_1"): (1.1, 10.0, 0.4),
    ("wrn40_2", "wrn40_1"): (1.1, 10.0, 0.4),
    ("wrn40_2", "wrn16_2"): (1.1, 10.0, 0.4),
}
SETTINGS = [f"{d}-{t}-{s}-k{k}" for d in ("cifar10", "cifar100") for t, s in _PAIRS
            for k in _STEP_LRS]


def get_config(arg: str = "cifar10-resnet34-resnet18-k5"):
  try:
    dataset, teacher, student, k = arg.split("-")
    k = int(k.lstrip("k"))
    adv, bn, oh = _PAIRS[(teacher, student)]
    lr_g, lr_z = _STEP_LRS[k]
    assert dataset in ("cifar10", "cifar100")
  except (ValueError, KeyError, AssertionError):
    raise ValueError(f"configs/fastdfkd_cifar.py:{arg}: not a paper setting; use "
                     "<cifar10|cifar100>-<teacher>-<student>-k<2|5|10> with pairs "
                     f"{', '.join(t + '-' + s for t, s in _PAIRS)}") from None
  c = schema.base_config()
  c.mode = "distill"
  c.dataset.name = dataset
  c.teacher.arch, c.student.arch = teacher, student
  c.method, c.k = "fast_meta", k
  c.epochs, c.warmup, c.batch_size = 220, 20, 256
  c.synth.lr_g, c.synth.lr_z = lr_g, lr_z
  c.synth.adv, c.synth.bn, c.synth.oh = adv, bn, oh
  c.synth.bn_mmt = 0.9
  c.synth.meta_grad = "sum_inner_grads"   # the scripts' --is_maml 1
  c.synth.reset_l0, c.synth.reset_l0_epoch = True, 140
  c.kd.steps, c.kd.lr, c.kd.temperature = 400, 0.2, 20.0
  c.kd.lr_min, c.kd.cosine_epochs = 2e-4, 200
  c.seed = 0
  return c
