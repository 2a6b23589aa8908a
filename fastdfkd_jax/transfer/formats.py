"""Exported transfer sets: synthetic images with the teacher's labels, on disk.

An export directory OUT holds one of three layouts (`FORMATS`), chosen at export:

  image_folder  OUT/train/<class>/<index:07d>.png, one folder per teacher class
                (every class has its folder, empty or not), so the image-folder
                loader (`data.load_split(name, 'train', data_dir=OUT)`) reads it;
                OUT/transfer_set.jsonl lists the images in export order;
  npz           OUT/transfer_set.npz with the arrays of `TransferSet`;
  array_record  OUT/transfer_set.array_record, one record per image (a JSON header
                line, then the raw uint8 pixels); needs the `array_record` package.

Every layout keeps, per image, the teacher's predicted class (`labels`), its softmax
confidence and the index of the synthesis call that made it (the distillation epoch,
or the call of mode=synthesize). `load` reads any of them back in export order,
pixel for pixel.
"""

import dataclasses
import json
import os
import shutil

import numpy as np

from fastdfkd_jax import errors

FORMATS = ("image_folder", "npz", "array_record")
NPZ_FILE = "transfer_set.npz"
JSONL_FILE = "transfer_set.jsonl"
ARRAY_RECORD_FILE = "transfer_set.array_record"


@dataclasses.dataclass(frozen=True, eq=False)
class TransferSet:
  """A transfer set on the host, in export order.

  Attributes:
    images: uint8 (N, H, W, C).
    labels: int32 (N,): the teacher's predicted class.
    confidence: float32 (N,): the teacher's softmax probability of that class.
    synthesis_call: int32 (N,): the synthesis call (epoch) the image came from.
  """
  images: np.ndarray
  labels: np.ndarray
  confidence: np.ndarray
  synthesis_call: np.ndarray

  def row(self, i: int) -> dict:
    return dict(index=i, label=int(self.labels[i]), confidence=float(self.confidence[i]),
                synthesis_call=int(self.synthesis_call[i]))


def write(ts: TransferSet, out: str, fmt: str, num_classes: int) -> None:
  """Writes `ts` into the directory `out` in the layout `fmt` (one of FORMATS), replacing
  an earlier export there."""
  if fmt not in FORMATS:
    raise errors.UserError(f"unknown transfer-set format {fmt!r}; choose one of "
                           f"{', '.join(FORMATS)}")
  _remove_previous(out)
  if fmt == "npz":
    tmp = os.path.join(out, NPZ_FILE + ".tmp.npz")
    np.savez(tmp, **dataclasses.asdict(ts))
    os.replace(tmp, os.path.join(out, NPZ_FILE))
  elif fmt == "image_folder":
    _write_image_folder(ts, out, num_classes)
  else:
    _write_array_record(ts, out)


def _remove_previous(out: str) -> None:
  """Creates `out`, removing an earlier export's files (any layout) from it."""
  os.makedirs(out, exist_ok=True)
  for name in (NPZ_FILE, JSONL_FILE, ARRAY_RECORD_FILE):
    if os.path.exists(os.path.join(out, name)):
      os.remove(os.path.join(out, name))
  shutil.rmtree(os.path.join(out, "train"), ignore_errors=True)


def _image_file(label: int, index: int) -> str:
  return os.path.join("train", str(label), f"{index:07d}.png")


def _write_image_folder(ts: TransferSet, out: str, num_classes: int) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for c in range(num_classes):
    os.makedirs(os.path.join(out, "train", str(c)), exist_ok=True)
  rows = []
  for i, image in enumerate(ts.images):
    row = dict(ts.row(i), file=_image_file(int(ts.labels[i]), i))
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(pixels).save(os.path.join(out, row["file"]))
    rows.append(row)
  tmp = os.path.join(out, JSONL_FILE + ".tmp")
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
  os.replace(tmp, os.path.join(out, JSONL_FILE))


def _array_record_module():
  """The array_record python module, or a UserError saying how to get it."""
  try:
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError("the array_record format needs the array_record package: "
                           "`pip install array_record` (or choose --format=npz or "
                           "image_folder)") from None
  return array_record_module


def _write_array_record(ts: TransferSet, out: str) -> None:
  module = _array_record_module()
  path = os.path.join(out, ARRAY_RECORD_FILE)
  writer = module.ArrayRecordWriter(path + ".tmp", "group_size:1")
  for i, image in enumerate(ts.images):
    header = dict(ts.row(i), shape=list(image.shape))
    writer.write(json.dumps(header, sort_keys=True).encode() + b"\n" + image.tobytes())
  writer.close()
  os.replace(path + ".tmp", path)


def detect_format(path: str) -> str:
  """The layout of the export directory `path`; a UserError when it holds none."""
  for fmt, name in (("npz", NPZ_FILE), ("image_folder", JSONL_FILE),
                    ("array_record", ARRAY_RECORD_FILE)):
    if os.path.exists(os.path.join(path, name)):
      return fmt
  raise errors.UserError(
      f"{path!r} holds no exported transfer set (none of {NPZ_FILE}, {JSONL_FILE}, "
      f"{ARRAY_RECORD_FILE}); write one with `python -m fastdfkd_jax.export WORKDIR OUT` "
      "or mode=synthesize")


def load(path: str) -> TransferSet:
  """Reads the transfer set exported into the directory `path`, in export order."""
  path = os.path.abspath(os.path.expanduser(path))
  fmt = detect_format(path)
  if fmt == "npz":
    with np.load(os.path.join(path, NPZ_FILE)) as f:
      return TransferSet(**{field.name: f[field.name]
                            for field in dataclasses.fields(TransferSet)})
  if fmt == "image_folder":
    return _load_image_folder(path)
  return _load_array_record(path)


def _from_rows(images: list[np.ndarray], rows: list[dict]) -> TransferSet:
  return TransferSet(images=np.stack(images).astype(np.uint8),
                     labels=np.asarray([r["label"] for r in rows], np.int32),
                     confidence=np.asarray([r["confidence"] for r in rows], np.float32),
                     synthesis_call=np.asarray([r["synthesis_call"] for r in rows], np.int32))


def _load_image_folder(path: str) -> TransferSet:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with open(os.path.join(path, JSONL_FILE)) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  images = []
  for row in rows:
    with Image.open(os.path.join(path, row["file"])) as img:
      pixels = np.asarray(img, np.uint8)
    images.append(pixels[..., None] if pixels.ndim == 2 else pixels)
  return _from_rows(images, rows)


def _load_array_record(path: str) -> TransferSet:
  module = _array_record_module()
  reader = module.ArrayRecordReader(os.path.join(path, ARRAY_RECORD_FILE))
  records = reader.read_all()
  reader.close()
  rows, images = [], []
  for record in records:
    header, pixels = record.split(b"\n", 1)
    row = json.loads(header)
    rows.append(row)
    images.append(np.frombuffer(pixels, np.uint8).reshape(row["shape"]))
  return _from_rows(images, rows)


def load_images(path: str, image_shape: tuple[int, ...]) -> np.ndarray:
  """The images (N, H, W, C) uint8 of the transfer set in `path` (kd.source='dataset');
  a UserError when they do not have the data set's `image_shape`."""
  images = load(path).images
  if images.shape[1:] != tuple(image_shape):
    raise errors.UserError(
        f"the transfer set in {path!r} holds {images.shape[1:]} images but the config's "
        f"data set needs {tuple(image_shape)}; export it from a run on the same "
        "dataset.name")
  return images
