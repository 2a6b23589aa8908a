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
  """Reads the transfer set exported into the directory `path`, in export order, and
  checks it (`check`); a damaged or foreign file is a UserError naming it."""
  path = os.path.abspath(os.path.expanduser(path))
  fmt = detect_format(path)
  try:
    if fmt == "npz":
      ts = _load_npz(path)
    elif fmt == "image_folder":
      ts = _load_image_folder(path)
    else:
      ts = _load_array_record(path)
  except errors.UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # damaged files raise anything
    raise errors.UserError(f"the transfer set in {path!r} does not read "
                           f"({type(e).__name__}: {errors.one_line(str(e))[:200]}); "
                           "export it again") from e
  return check(ts, path)


def _load_npz(path: str) -> TransferSet:
  with np.load(os.path.join(path, NPZ_FILE), allow_pickle=False) as f:
    missing = [field.name for field in dataclasses.fields(TransferSet) if field.name not in f]
    if missing:
      raise errors.UserError(f"{os.path.join(path, NPZ_FILE)} lacks the arrays "
                             f"{', '.join(missing)} of a transfer set; export it again")
    return TransferSet(**{field.name: f[field.name]
                          for field in dataclasses.fields(TransferSet)})


def check(ts: TransferSet, path: str) -> TransferSet:
  """`ts` if it is a transfer set a student can learn from: uint8 pixels (N, H, W, 1|3),
  N >= 1, and per image an integer label, a confidence in [0, 1] and an integer call."""
  images = ts.images
  if images.dtype != np.uint8:
    hint = (" (they look like floats in [0, 1]: np.round(x * 255).astype(np.uint8))"
            if images.dtype.kind == "f" and np.isfinite(images).all()
            and images.size and 0 <= images.min() and images.max() <= 1 else "")
    raise errors.UserError(f"the transfer set in {path!r} holds {images.dtype} images; a "
                           f"transfer set holds uint8 pixels 0..255{hint}")
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or not all(images.shape[1:3]):
    raise errors.UserError(f"the transfer set in {path!r} holds images of shape "
                           f"{images.shape}; expected (N, H, W, 1 or 3)")
  if not len(images):
    raise errors.UserError(f"the transfer set in {path!r} holds no images")
  n = len(images)
  for name in ("labels", "confidence", "synthesis_call"):
    value = np.asarray(getattr(ts, name))
    if value.shape != (n,):
      raise errors.UserError(f"the transfer set in {path!r} has {value.shape} {name} for "
                             f"{n} images")
  labels, confidence, calls = ts.labels, ts.confidence, ts.synthesis_call
  if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= 2**31:
    span = f", {labels.min()}..{labels.max()}" if labels.dtype.kind in "iu" else ""
    raise errors.UserError(f"the transfer set in {path!r} holds labels that are no class "
                           f"indices ({labels.dtype}{span})")
  if calls.dtype.kind not in "iu":
    raise errors.UserError(f"the transfer set in {path!r} holds {calls.dtype} synthesis_call "
                           "indices; they are integers")
  if (confidence.dtype.kind != "f" or not np.isfinite(confidence).all()
      or confidence.min() < 0 or confidence.max() > 1):
    raise errors.UserError(f"the transfer set in {path!r} holds confidences that are no "
                           f"probabilities ({confidence.dtype}: NaN, Inf or outside [0, 1])")
  return ts


def _from_rows(images: list[np.ndarray], rows: list[dict]) -> TransferSet:
  return TransferSet(images=np.stack(images).astype(np.uint8),
                     labels=np.asarray([r["label"] for r in rows], np.int32),
                     confidence=np.asarray([r["confidence"] for r in rows], np.float32),
                     synthesis_call=np.asarray([r["synthesis_call"] for r in rows], np.int32))


_ROW_FIELDS = dict(label=int, confidence=(int, float), synthesis_call=int)


def _check_row(row, where: str, **fields) -> dict:
  """`row` if it is a dict with the fields of a transfer-set row (and `fields`: name ->
  type), of their types; else a UserError naming `where` (a JSON number is no bool)."""
  fields = dict(_ROW_FIELDS, **fields)
  if not isinstance(row, dict) or any(
      not isinstance(row.get(k), t) or isinstance(row.get(k), bool) for k, t in fields.items()):
    types = ", ".join(f"{k}: {getattr(t, '__name__', 'number')}" for k, t in fields.items())
    raise errors.UserError(f"{where} holds {ascii(row)[:100]}, not a transfer-set row "
                           f"({types}); export it again")
  return row


def _load_image_folder(path: str) -> TransferSet:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  jsonl = os.path.join(path, JSONL_FILE)
  with open(jsonl) as f:
    rows = [_check_row(json.loads(line), f"{jsonl} line {n}", file=str)
            for n, line in enumerate(f, 1) if line.strip()]
  images = []
  for row in rows:
    file = os.path.join(path, row["file"])
    with Image.open(file) as img:
      if img.mode not in ("L", "RGB"):  # else np.asarray would cast 16-bit, palette, ... pixels
        raise errors.UserError(f"{file} is a {img.mode} image; a transfer set holds 8-bit "
                               "grey (L) or RGB PNGs")
      pixels = np.asarray(img, np.uint8)
    images.append(pixels[..., None] if pixels.ndim == 2 else pixels)
  return _from_rows(images, rows)


def _load_array_record(path: str) -> TransferSet:
  module = _array_record_module()
  reader_path = os.path.join(path, ARRAY_RECORD_FILE)
  reader = module.ArrayRecordReader(reader_path)
  records = reader.read_all()
  reader.close()
  rows, images = [], []
  for i, record in enumerate(records):
    header, pixels = record.split(b"\n", 1)
    row = _check_row(json.loads(header), f"{reader_path} record {i}", shape=list)
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
