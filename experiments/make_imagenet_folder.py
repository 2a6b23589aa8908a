"""Writes a procedural ImageNet-layout image folder (fastdfkd_jax/data/procedural_folder.py).

  PYTHONPATH=$PWD python experiments/make_imagenet_folder.py OUT_DIR [--classes 10]
      [--train 100] [--val 20] [--size 64] [--seed 0]

OUT_DIR gets `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` (images of varying size
around --size), which `--config.dataset.name=imagenet_mini
--config.dataset.data_dir=OUT_DIR` reads (10 classes at 64 px). The same arguments
give the same files.
"""

import argparse
import sys
import time

from fastdfkd_jax.data import procedural_folder


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("out_dir")
  p.add_argument("--classes", type=int, default=10, help="class folders")
  p.add_argument("--train", type=int, default=100, help="training images per class")
  p.add_argument("--val", type=int, default=20, help="validation images per class")
  p.add_argument("--size", type=int, default=64, help="nominal image side in pixels")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  start = time.time()
  counts = procedural_folder.write(args.out_dir, args.classes, args.train, args.val,
                                   args.size, args.seed)
  print(f"wrote {counts['train']} train and {counts['val']} val images around "
        f"{args.size} px to {args.out_dir} in {time.time() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
