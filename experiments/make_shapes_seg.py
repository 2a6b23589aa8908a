"""Writes the procedural shapes segmentation set (fastdfkd_jax/data/shapes_seg.py).

  PYTHONPATH=$PWD python experiments/make_shapes_seg.py OUT_DIR [--size 32] [--train 512]
      [--test 128] [--seed 0] [--max_shapes 3]

OUT_DIR gets the NYUv2-style layout (`image/{train,test}/*.png`,
`seg5/{train,test}/*.png`; 5 classes: background, disk, square, triangle,
cross; 255 on shape outlines), which
`fastdfkd_jax.data.segmentation.load_split(OUT_DIR, split, 5)` reads. The same
arguments give the same files.
"""

import argparse
import sys
import time

from fastdfkd_jax import cli
from fastdfkd_jax.data import shapes_seg


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("out_dir")
  p.add_argument("--size", type=int, default=32, help="image side in pixels")
  p.add_argument("--train", type=int, default=512, help="training images")
  p.add_argument("--test", type=int, default=128, help="test images")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max_shapes", type=int, default=3, help="shapes per image, at most")
  args = p.parse_args(argv)
  start = time.time()
  with cli.user_errors():
    counts = shapes_seg.write_shapes(args.out_dir, args.seed, args.train, args.test,
                                     args.size, args.max_shapes)
  print(f"wrote {counts['train']} train and {counts['test']} test images of "
        f"{args.size}x{args.size} to {args.out_dir} in {time.time() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
