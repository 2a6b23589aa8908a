"""Data-free segmentation on NYUv2-13, paper size: `configs/fastdfkd_nyuv2.py:<run>`.

The paper's Table 3: a DeepLabV3 ResNet-50 teacher distilled into a DeepLabV3
MobileNetV2 student without data (FastDFKD 0.82 h of synthesis against DAFL's
3.99 h and DFAD's 6.0 h).

  # the teacher on NYUv2 (<root>/image/{train,test}, <root>/seg13/{train,test}: the
  # release's NYUv2 toolkit layout), or import the release's .pth instead
  python -m fastdfkd_jax.main --workdir=runs/nyuv2_teacher \
      --config=configs/fastdfkd_nyuv2.py:teacher --config.dataset.data_dir=PATH/TO/NYUv2
  # FastDFKD, then the comparison rows (same KD budget)
  python -m fastdfkd_jax.main --workdir=runs/nyuv2_fast_meta \
      --config=configs/fastdfkd_nyuv2.py:fast_meta --config.dataset.data_dir=PATH/TO/NYUv2 \
      --config.teacher.checkpoint=runs/nyuv2_teacher   # or the release's deeplab .pth

<run>: teacher | fast_meta | deepinversion | dafl | dfad | noise | real.

What comes from where (the reference doc has no segmentation settings and the
release no segmentation script, so most of this is chosen; each choice says why):
  * data: NYUv2-13 as the release's registry: shorter side 256, random 128 x 128
    crops + flips for training (`DatasetInfo` 'nyuv2'), mean/std 0.5, test images
    scored whole (256 x 341). The task's resolution, hence the generator's, is the
    128 px training crop; synthetic and pool images get the crop-with-padding +
    flip augmentation with padding 16 (1/8 of the side, as CIFAR's 4 of 32).
  * models: `deeplabv3_resnet50` -> `deeplabv3_mobilenet` (the release's builders,
    output stride 8). The generator is the release's (reference doc section 6:
    init = size // 4 = 32, nz 256, ngf 64; 33,909,059 parameters at 128 px, nearly all
    in its first linear layer).
  * synthesis: k = 5 with the paper's lr_g / lr_z for k = 5, bn 10, adv 1.1,
    bn_mmt 0.9, reset_l0 at epoch 140 (the release's CIFAR scripts, section 5) and
    oh = 0 (no class target exists for a whole image: issue 19). Batch 64 instead
    of the scripts' 256: the teacher's input gradient at 128 px and output stride
    8 for 256 images does not fit one accelerator's memory comfortably.
  * KD: the CIFAR schedule (220 epochs, warmup 20, 400 KD steps per epoch, T 20,
    cosine to 2e-4 over 200 epochs) with the KD lr scaled linearly with the batch
    (0.2 x 64 / 256 = 0.05); pixel-wise KL.
  * teacher (`:teacher`): the release trains none; the settings are those of the
    NYUv2 toolkit the release's NYUv2 class comes from (VainF): SGD lr 0.01,
    momentum 0.9, weight decay 1e-4, poly decay (power 0.9), batch 16, 30k
    iterations (600 epochs of the 795 training images). Without an ImageNet
    backbone (the release downloads one; import it with `import_torch`) a teacher
    trained from scratch here scores well below the paper's.
  * deepinversion: the release's DeepInversion (pixel Adam lr 0.1, adv 1 on the
    JS term, bn 10; configs/batchwise_cifar.py) with fast_meta's k = 5 steps per
    batch, the equal-steps comparison of the paper (its 1-2k steps cost 200-400x).
  * dafl / dfad: the release's generative presets (schema.GENERATIVE_PRESETS),
    every term per pixel; their epochs are fast_meta's KD epochs (no warmup), so
    every row trains the student on (epochs - warmup) x 400 batches of 64.
No number has been measured with this file (it needs NYUv2 and an accelerator).
configs/fastdfkd_seg_cpu.py is the same recipe at CPU size on the procedural set.
"""

import dataclasses

from fastdfkd_jax.config import schema

RUNS = ("teacher", "fast_meta", "deepinversion", "dafl", "dfad", "noise", "real")


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What differs between the paper-size and the CPU-size recipe."""
  dataset: str
  teacher: str
  student: str
  epochs: int
  warmup: int
  kd_steps: int
  batch: int
  kd_optim: tuple             # (optimizer, lr, lr_min)
  nz: int
  ngf: int
  reset_l0: bool
  teacher_optim: tuple        # (optimizer, lr, weight decay, epochs, batch)
  eval_batch: int


PAPER = Sizes(dataset="nyuv2", teacher="deeplabv3_resnet50", student="deeplabv3_mobilenet",
              epochs=220, warmup=20, kd_steps=400, batch=64, kd_optim=("sgd", 0.05, 2e-4),
              nz=256, ngf=64,
              reset_l0=True, teacher_optim=("sgd", 0.01, 1e-4, 600, 16), eval_batch=16)


def make(run: str, s: Sizes, source: str):
  """The config of `run` at sizes `s` (`source`: the file named in errors)."""
  if run not in RUNS:
    raise ValueError(f"{source}:{run}: use one of {', '.join(RUNS)}")
  c = schema.base_config()
  c.task, c.dataset.name = "segmentation", s.dataset
  c.eval_batch_size = s.eval_batch
  if run == "teacher":
    c.mode, c.model = "train_teacher", s.teacher
    c.optim.optimizer, c.optim.lr, c.optim.weight_decay, c.epochs, c.batch_size = (
        s.teacher_optim)
    c.optim.schedule = "poly"
    return c
  c.mode = "distill"
  c.teacher.arch, c.student.arch = s.teacher, s.student
  c.epochs, c.warmup, c.batch_size = s.epochs, s.warmup, s.batch
  c.k = 5
  c.synth.lr_g, c.synth.lr_z = schema.PAPER_STEP_LRS[5]
  c.synth.nz, c.synth.ngf, c.synth.reset_l0 = s.nz, s.ngf, s.reset_l0
  c.synth.bn, c.synth.adv, c.synth.oh = 10.0, 1.1, 0.0
  c.kd.steps, (c.kd.optimizer, c.kd.lr, c.kd.lr_min) = s.kd_steps, s.kd_optim
  c.kd.cosine_epochs = s.epochs - s.warmup
  if run in ("noise", "real"):
    c.kd.source = run
  elif run == "deepinversion":   # the release's pixel step size and JS weight, fast_meta's k
    c.method, c.synth.lr_g, c.synth.adv = "deepinversion", 0.1, 1.0
  elif run in ("dafl", "dfad"):
    schema.generative_preset(c, run)
    c.synth.nz = 2 * s.nz if run == "dafl" else s.nz   # the release: DAFL's 512 = 2 x 256
    c.epochs, c.warmup = s.epochs - s.warmup, 0
  return c


def get_config(arg: str = "fast_meta"):
  return make(arg, PAPER, "configs/fastdfkd_nyuv2.py")
