"""The table of data sets: shapes, classes and normalisation constants.

Normalisation constants follow the release (reference doc, section 7); the
`digits` ones are computed from its training split here.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from fastdfkd_jax import errors

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")

LAYOUT_HELP = (
    "Accepted local layouts for --config.dataset.data_dir:\n"
    "  (a) a directory holding the IDX files train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz (gzipped or not), as MNIST / Fashion-MNIST ship;\n"
    "  (b) an image-folder tree <data_dir>/train/<class>/*.jpg|*.jpeg|*.png and "
    "<data_dir>/test/<class>/* or <data_dir>/val/<class>/* (the ImageNet layout; "
    "possibly under one top-level folder);\n"
    "  (c) a .tar.gz / .tgz / .tar archive of such a tree (extracted once into a "
    "cache directory).")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a data set.

  Attributes:
    name: the key in `DATASETS`.
    num_classes: number of labels.
    image_shape: (H, W, C) of one image.
    mean: per-channel mean of the [0, 1] pixels, length C.
    std: per-channel standard deviation of the [0, 1] pixels, length C.
    tfds_name: the TensorFlow Datasets name ('' where there is none).
    crop_padding: zero padding of the random-crop augmentation (of the synthetic
      and pool images; a segmentation teacher's training crop is `image_shape`).
    resize: images of any size are accepted and brought to image_shape by the
      ImageNet eval transform scaled to the image size (shorter side resized to
      round(H * 256 / 224), then the centre H x W crop); else a mismatch is refused.
    streaming: the splits are decoded batch by batch in a background pipeline
      (`streaming.py`), never held whole in memory.
    task: 'classification' (labels (N,)) or 'segmentation' (label maps (N, H, W),
      the layout of `segmentation.py`); `config.task` must agree.
    seg_resize: segmentation: the shorter side the files are resized to first (0: as
      they are); `image_shape` is then the training crop (the task's resolution).
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  tfds_name: str
  crop_padding: int
  resize: bool = False
  streaming: bool = False
  task: str = "classification"
  seg_resize: int = 0

  @property
  def channels(self) -> int:
    return self.image_shape[2]


# torchvision's ImageNet constants (the release's NORMALIZE_DICT['imagenet']).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The ImageNet eval transform: resize the shorter side to 256, centre-crop 224.
EVAL_RESIZE = 256 / 224

DATASETS: dict[str, DatasetInfo] = {
    info.name: info for info in (
        # Mean/std of round(x * 255 / 16) / 255 over the 1437 training images.
        DatasetInfo("digits", 10, (8, 8, 1), (0.3054,), (0.3757,), "", 1),
        DatasetInfo("mnist", 10, (28, 28, 1), (0.1307,), (0.3081,), "mnist", 4),
        DatasetInfo("fashion_mnist", 10, (28, 28, 1), (0.2860,), (0.3530,),
                    "fashion_mnist", 4),
        DatasetInfo("cifar10", 10, (32, 32, 3), (0.4914, 0.4822, 0.4465),
                    (0.2023, 0.1994, 0.2010), "cifar10", 4),
        DatasetInfo("cifar100", 100, (32, 32, 3), (0.5071, 0.4867, 0.4408),
                    (0.2675, 0.2565, 0.2761), "cifar100", 4),
        DatasetInfo("svhn_cropped", 10, (32, 32, 3), (0.4377, 0.4438, 0.4728),
                    (0.198, 0.201, 0.197), "svhn_cropped", 4),
        # ImageNet-1k at 224 px: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, or TFDS
        # imagenet2012 (manual download), streamed.
        DatasetInfo("imagenet", 1000, (224, 224, 3), IMAGENET_MEAN, IMAGENET_STD,
                    "imagenet2012", 0, resize=True, streaming=True),
        # A small ImageNet-layout set at 64 px (e.g. the procedural one of
        # `procedural_folder.py`), decoded into memory: the CPU-sized ImageNet runs.
        DatasetInfo("imagenet_mini", 10, (64, 64, 3), IMAGENET_MEAN, IMAGENET_STD, "",
                    0, resize=True),
        # Segmentation (local files only). The procedural set of experiments/make_shapes_seg.py
        # at its default 32 px; NYUv2-13 as the release's registry: shorter side 256,
        # training crops of 128, mean/std 0.5; crop padding 1/8 of the side as CIFAR's.
        DatasetInfo("shapes_seg", 5, (32, 32, 3), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "",
                    4, task="segmentation"),
        DatasetInfo("nyuv2", 13, (128, 128, 3), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "",
                    16, task="segmentation", seg_resize=256),
    )
}


def get_info(name: str) -> DatasetInfo:
  """Returns the `DatasetInfo` of `name`; a UserError listing the valid names."""
  try:
    return DATASETS[name]
  except KeyError:
    raise errors.UserError(
        f"Unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}"
    ) from None
