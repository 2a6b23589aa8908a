"""Damaged input files (hypothesis): every file loader refuses the damage with an
`errors.UserError` naming the file (the CLI prints it as `error: ...`, exit 2), or
returns a valid result where the damage does not matter; never a raw traceback, never a
silently wrong set (floats taken for uint8 pixels, NaN, no images, members missing).

Loaders: IDX files (`data.read_idx`, `data.load_split` on an IDX directory); image-folder
trees, `.tar.gz` / `.tar` archives and the decoded-split `.npz` cache (`data.image_folder`);
exported transfer sets in every format (`transfer.formats.load`, `load_images`); orbax
teacher checkpoints and a `.pth` through `teacher.loader.load` (`.pth` files themselves are
fuzzed in test_pth.py). Every file is written into tmp_path; the data set `tiny8` (8x8 grey,
2 classes) is registered for this module only. The examples are derandomized: a run is
reproducible.
"""

import dataclasses
import gzip
import importlib.util
import io
import json
import os
import shutil
import struct
import tarfile
import tempfile

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from conftest import imported_resnet8
from fastdfkd_jax import data, errors
from fastdfkd_jax.data import image_folder, info as data_info
from fastdfkd_jax.run import checkpoint
from fastdfkd_jax.teacher import loader
from fastdfkd_jax.transfer import formats

from data_fixtures import make_idx_dir, make_tar, make_tree, write_idx

FUZZ = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
MANY = settings(FUZZ, max_examples=40)   # for examples of a few milliseconds
DAMAGES = ("cut", "flip", "overwrite", "garbage", "empty")
TINY = data_info.DatasetInfo("tiny8", 2, (8, 8, 1), (0.5,), (0.5,), "", 1)
DIGITS = (8, 8, 1)


@pytest.fixture(scope="module", autouse=True)
def tiny8():
  """The data set `tiny8` (8x8x1, 2 classes) in `data.DATASETS` while this module runs."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(data_info.DATASETS, "tiny8", TINY)
    yield


def _damage(fuzz, raw: bytes, kinds=DAMAGES, positions=None) -> bytes:
  """`raw` cut short, with a byte flipped, a run of 1-16 bytes overwritten, replaced by
  1-64 random bytes, or emptied (`positions`: where a cut, flip or run may start)."""
  kind = fuzz.draw(st.sampled_from(kinds), label="damage")
  at = fuzz.draw(st.sampled_from(positions) if positions is not None
                 else st.integers(0, max(len(raw) - 1, 0)), label="at")
  if kind == "cut":
    return raw[:at]
  if kind == "flip":
    return raw[:at] + bytes([raw[at] ^ fuzz.draw(st.integers(1, 255))]) + raw[at + 1:]
  if kind == "overwrite":
    run = fuzz.draw(st.binary(min_size=1, max_size=16))
    return raw[:at] + run + raw[at + len(run):]
  if kind == "garbage":
    return fuzz.draw(st.binary(min_size=1, max_size=64))
  return b""


def _damage_file(fuzz, path: str, **kwargs) -> None:
  """Rewrites the file at `path` damaged (`_damage`)."""
  with open(path, "rb") as f:
    raw = f.read()
  with open(path, "wb") as f:
    f.write(_damage(fuzz, raw, **kwargs))


def _outcome(fn, *paths):
  """fn()'s result, or None when it raised a UserError that names one of `paths`; any
  other exception fails the test with its traceback."""
  try:
    return fn()
  except errors.UserError as e:
    assert any(str(p) in str(e) for p in paths), f"{e!r} names none of {paths}"
    return None


def _fresh(base) -> str:
  """A new empty folder under `base` (hypothesis reuses a test's tmp_path)."""
  return tempfile.mkdtemp(dir=base)


def _assert_split(split, shape, num_classes):
  images, labels = split
  assert images.dtype == np.uint8 and images.shape[1:] == shape and len(images)
  assert labels.dtype == np.int32 and labels.shape == images.shape[:1]
  assert 0 <= labels.min() and labels.max() < num_classes


def _assert_same(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)


# ---------------------------------------------------------------- IDX files


@pytest.fixture(scope="module")
def idx_dirs(tmp_path_factory):
  """{gz: a 3 + 2 image mnist IDX directory, gzipped or not}; the arrays it holds."""
  root = tmp_path_factory.mktemp("idx")
  dirs = {gz: root / ("gz" if gz else "raw") for gz in (True, False)}
  for gz, d in dirs.items():
    make_idx_dir(d, n_train=3, n_test=2, gz=gz)
  return dirs, data.load_split("mnist", "train", str(dirs[True]))


def _idx_name(kind: str, gz: bool) -> str:
  return f"train-{kind}-idx{3 if kind == 'images' else 1}-ubyte" + (".gz" if gz else "")


@FUZZ
@given(fuzz=st.data(), gz=st.booleans(), kind=st.sampled_from(["images", "labels"]))
def test_damaged_idx_file_is_refused_or_read(idx_dirs, tmp_path, fuzz, gz, kind):
  dirs, (images, labels) = idx_dirs
  d = os.path.join(_fresh(tmp_path), "mnist")
  shutil.copytree(dirs[gz], d)
  path = os.path.join(d, _idx_name(kind, gz))
  _damage_file(fuzz, path)
  _outcome(lambda: data.read_idx(path), path)
  split = _outcome(lambda: data.load_split("mnist", "train", d), path, d)
  if split is not None:
    _assert_split(split, (28, 28, 1), 10)
    assert len(split[0]) == len(images)   # N * 784 bytes hold N images, no other count
    if gz:  # gzip's CRC-32: damage that still reads changed no pixel and no label
      np.testing.assert_array_equal(split[0], images)
      np.testing.assert_array_equal(split[1], labels)


def _idx_header(code: int, dims) -> bytes:
  return struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


@FUZZ
@given(magic=st.sampled_from([b"\0\0", b"\0\1", b"\x1f\x8b"]),
       code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]),
       dims=st.lists(st.sampled_from([0, 1, 3, 28, 2**21, 2**32 - 1]), max_size=4),
       extra=st.integers(-2, 2), kind=st.sampled_from(["images", "labels"]))
def test_idx_headers_are_checked(idx_dirs, tmp_path, magic, code, dims, extra, kind):
  """Wrong magic, type code (floats too), dims and data lengths: refused naming the file,
  or (a header that fits the split) read."""
  d = os.path.join(_fresh(tmp_path), "mnist")
  shutil.copytree(idx_dirs[0][False], d)
  path = os.path.join(d, _idx_name(kind, False))
  itemsize = {0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(code, 1)
  size = int(np.prod(dims, dtype=object)) * itemsize if dims else 0
  body = bytes(max(size + extra, 0)) if size <= 10**5 else bytes(16)
  with open(path, "wb") as f:
    f.write(magic + _idx_header(code, dims)[2:] + body)
  split = _outcome(lambda: data.load_split("mnist", "train", d), path)
  if split is not None:
    _assert_split(split, (28, 28, 1), 10)


@pytest.mark.parametrize("case", ["deflate", "dims_wrap", "dims_too_big", "no_images",
                                  "float_labels"])
def test_idx_defects_found_by_fuzzing_are_user_errors(tmp_path, case):
  """Each used to escape: zlib.error from damaged deflate data, a ValueError where the
  header dims' product wrapped past 2**64 in np.prod or where 0 x (2**32 - 1)**3 is "too
  big" for NumPy; 0 images and float labels (3.7 -> 3) were read without a word."""
  make_idx_dir(tmp_path / "d", n_train=2, n_test=1, gz=case == "deflate")
  images = tmp_path / "d" / _idx_name("images", case == "deflate")
  labels = tmp_path / "d" / _idx_name("labels", case == "deflate")
  if case == "deflate":   # a gzip header, then no valid deflate block
    images.write_bytes(gzip.compress(b"x")[:10] + b"\xff" * 20)
  elif case == "dims_wrap":
    images.write_bytes(_idx_header(0x08, (2**22, 2**21, 2**21)))
  elif case == "dims_too_big":
    images.write_bytes(_idx_header(0x08, (0,) + (2**32 - 1,) * 3))
  elif case == "no_images":
    write_idx(images, np.zeros((0, 28, 28), np.uint8), gz=False)
    write_idx(labels, np.zeros((0,), np.uint8), gz=False)
  else:
    labels.write_bytes(_idx_header(0x0D, (2,)) + np.array([3.7, 1.0], ">f4").tobytes())
  bad = labels if case == "float_labels" else images
  with pytest.raises(errors.UserError, match=str(bad)):
    data.load_split("mnist", "train", str(tmp_path / "d"))


# ------------------------------------------------- image folders, archives, decode cache


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  """(root of a tiny8 tree: train 2 + 2, test 1 + 1 PNGs, its train split)."""
  root = make_tree(tmp_path_factory.mktemp("tree") / "t", ["a", "b"], size=(8, 8), mode="L",
                   per_class=(2, 1))
  return root, image_folder.load_image_tree(TINY, "train", str(root))


@FUZZ
@given(fuzz=st.data(), which=st.sampled_from(["a/0000.png", "a/0001.png", "b/0001.png"]))
def test_damaged_image_in_a_tree_is_refused_naming_it(tree, tmp_path, fuzz, which):
  """Refused naming the file, or read with the other images as they were."""
  root, (images, labels) = tree
  index = ["a/0000.png", "a/0001.png", "b/0000.png", "b/0001.png"].index(which)
  copy = os.path.join(_fresh(tmp_path), "t")
  shutil.copytree(root, copy)
  path = os.path.join(copy, "train", which)
  _damage_file(fuzz, path)
  split = _outcome(lambda: image_folder.load_image_tree(TINY, "train", copy), path)
  if split is not None:  # a PNG's damage may leave it decodable: other pixels, same set
    _assert_split(split, DIGITS, 2)
    np.testing.assert_array_equal(split[1], labels)
    others = np.arange(len(labels)) != index
    np.testing.assert_array_equal(split[0][others], images[others])


@FUZZ
@given(fuzz=st.data(), compressed=st.booleans())
def test_damaged_archive_is_refused_or_read_whole(tree, tmp_path, fuzz, compressed):
  """A cut, flipped or overwritten archive: refused naming it, never read with members
  missing (tarfile stops quietly at a damaged header); a .tar.gz is read exactly or not at
  all (its CRC-32 is checked)."""
  root, (images, labels) = tree
  base = _fresh(tmp_path)
  archive = os.path.join(base, "tiny8.tar.gz" if compressed else "tiny8.tar")
  with tarfile.open(archive, "w:gz" if compressed else "w") as tar:
    tar.add(root / "train", arcname="tiny/train")
    tar.add(root / "test", arcname="tiny/test")
  with open(archive, "rb") as f:
    raw = f.read()
  # A plain tar is mostly zero padding: the damage falls where its headers and data are.
  used = len(raw) if compressed else int(np.flatnonzero(np.frombuffer(raw, np.uint8))[-1]) + 2
  with open(archive, "wb") as f:
    f.write(_damage(fuzz, raw, positions=range(used)))
  split = _outcome(lambda: data.load_split("tiny8", "train", archive, os.path.join(base, "c")),
                   archive)
  if split is not None:
    _assert_split(split, DIGITS, 2)
    np.testing.assert_array_equal(split[1], labels)
    if compressed:
      np.testing.assert_array_equal(split[0], images)


_EVIL = ["../escape.png", "tiny/../../escape.png", "tiny/train/a/../../../../escape.png",
         "..", "tiny/..", "..\\escape.png", "{base}/escape.png"]


@MANY
@given(name=st.sampled_from(_EVIL + ["tiny/train/a/evil.png"]),
       kind=st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]),
       target=st.sampled_from(["../../../../escape.png", "{base}/escape.png", "0000.png"]),
       first=st.booleans())
def test_archive_members_cannot_escape_the_cache(tree, tmp_path, name, kind, target, first):
  """An archive member with an absolute or '..' path is refused ('unsafe'); links are not
  extracted; nothing is written outside the cache folder."""
  root = tree[0]
  base = _fresh(tmp_path)
  archive = os.path.join(base, "evil.tar.gz")
  evil = tarfile.TarInfo(name.format(base=base))
  evil.type = kind
  if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
    evil.linkname = target.format(base=base)
  payload = (root / "train" / "a" / "0000.png").read_bytes()
  evil.size = len(payload) if kind == tarfile.REGTYPE else 0
  with tarfile.open(archive, "w:gz") as tar:
    if first:
      tar.addfile(evil, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)
    tar.add(root / "train", arcname="tiny/train")
    tar.add(root / "test", arcname="tiny/test")
    if not first:
      tar.addfile(evil, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)
  cache = os.path.join(base, "cache", "deep")
  unsafe = (name.startswith(("/", "{base}")) or ".." in name.replace("\\", "/").split("/"))
  try:
    split = data.load_split("tiny8", "train", archive, cache)
  except errors.UserError as e:
    assert archive in str(e)
    assert not unsafe or "unsafe member path" in str(e)
  else:
    assert not unsafe
    _assert_split(split, DIGITS, 2)
  assert sorted(os.listdir(base)) == ["cache", "evil.tar.gz"]
  assert os.listdir(os.path.join(base, "cache")) == ["deep"]
  assert not os.path.exists(os.path.join(os.path.dirname(base), "escape.png"))
  for dirpath, dirnames, filenames in os.walk(cache):
    for entry in dirnames + filenames:
      assert not os.path.islink(os.path.join(dirpath, entry))


@pytest.fixture(scope="module")
def cached_archive(tree, tmp_path_factory):
  """(folder with tiny8.tar.gz and its cache after one load, the npz, the train split)."""
  base = tmp_path_factory.mktemp("cached")
  archive = make_tar(tree[0], base / "tiny8.tar.gz", top="tiny")
  split = data.load_split("tiny8", "train", str(archive), str(base / "cache"))
  npz = os.path.join(data.archive_cache_dir(str(archive), str(base / "cache")),
                     "tiny8-train-8x8x1-v1.npz")
  assert os.path.isfile(npz)
  return base, os.path.relpath(npz, base), split


def _rebuilt_from_the_archive(base: str, npz: str, images, labels):
  """load_split reads the archive's split, and the cache holds it again."""
  got = data.load_split("tiny8", "train", os.path.join(base, "tiny8.tar.gz"),
                        os.path.join(base, "cache"))
  np.testing.assert_array_equal(got[0], images)
  np.testing.assert_array_equal(got[1], labels)
  assert got[1].dtype == np.int32
  with np.load(npz) as rebuilt:
    np.testing.assert_array_equal(rebuilt["images"], images)
    np.testing.assert_array_equal(rebuilt["labels"], labels)


@FUZZ
@given(fuzz=st.data())
def test_damaged_decode_cache_is_rebuilt(cached_archive, tmp_path, fuzz):
  """A damaged decoded-split `.npz` is logged and rebuilt from the archive (or, where the
  damage missed the arrays, read as it was): never the cache's damage."""
  src, rel, (images, labels) = cached_archive
  base = os.path.join(_fresh(tmp_path), "b")
  shutil.copytree(src, base)
  _damage_file(fuzz, os.path.join(base, rel))
  _rebuilt_from_the_archive(base, os.path.join(base, rel), images, labels)


_CRAFTED = dict(
    float_images=lambda x, y: dict(images=x / 255.0, labels=y),
    nan_images=lambda x, y: dict(images=np.full(x.shape, np.nan, np.float32), labels=y),
    wrong_shape=lambda x, y: dict(images=x[:, :4], labels=y),
    float_labels=lambda x, y: dict(images=x, labels=y + 0.5),
    labels_out_of_range=lambda x, y: dict(images=x, labels=y + 2),
    no_images=lambda x, y: dict(images=x[:0], labels=y[:0]),
    no_labels=lambda x, y: dict(images=x),
    fewer_labels=lambda x, y: dict(images=x, labels=y[:1]),
    objects=lambda x, y: dict(images=x, labels=np.array([{}] * len(y), object)),
)


@pytest.mark.parametrize("kind", sorted(_CRAFTED))
def test_foreign_decode_cache_is_rebuilt(cached_archive, tmp_path, kind):
  """A cache `.npz` that loads but does not hold the split (float labels were returned as
  they were, then refused by load_split instead of rebuilt)."""
  src, rel, (images, labels) = cached_archive
  base = str(tmp_path / "b")
  shutil.copytree(src, base)
  np.savez(os.path.join(base, rel), **_CRAFTED[kind](images, labels))
  _rebuilt_from_the_archive(base, os.path.join(base, rel), images, labels)


@pytest.mark.parametrize("damage", ["header", "cut_at_a_member"])
def test_an_archive_stopping_early_is_refused(tree, tmp_path, damage):
  """tarfile takes a damaged member header, or a file cut where a member starts, for the
  end of the archive: the members after it were missing from the split, without a word."""
  archive = str(tmp_path / "tiny8.tar")
  with tarfile.open(archive, "w") as tar:
    tar.add(tree[0] / "train", arcname="tiny/train")
    tar.add(tree[0] / "test", arcname="tiny/test")
  with tarfile.open(archive) as tar:
    at = tar.getmember("tiny/train/b/0001.png").offset
  with open(archive, "rb") as f:
    raw = bytearray(f.read())
  if damage == "header":
    raw[at + 5] ^= 0x20   # in the member's name: its header checksum no longer matches
  else:
    del raw[at:]
  with open(archive, "wb") as f:
    f.write(raw)
  with pytest.raises(errors.UserError, match=f"{archive}.*damaged or truncated member"):
    data.load_split("tiny8", "train", archive, str(tmp_path / "cache"))


def test_a_bad_image_inside_an_archive_names_the_archive(tree, tmp_path):
  """The archive itself holds the undecodable file: after extracting afresh once, the error
  names the archive (it named only the cache's copy)."""
  copy = tmp_path / "t"
  shutil.copytree(tree[0], copy)
  (copy / "train" / "b" / "0000.png").write_bytes(b"not a png")
  archive = make_tar(copy, tmp_path / "tiny8.tar.gz", top="tiny")
  with pytest.raises(errors.UserError, match=f"Archive '{archive}'.*Cannot decode image"):
    data.load_split("tiny8", "train", str(archive), str(tmp_path / "cache"))


# ------------------------------------------------------------------------ transfer sets


def _transfer_set(n=5) -> formats.TransferSet:
  rng = np.random.default_rng(0)
  return formats.TransferSet(images=rng.integers(0, 256, (n,) + DIGITS, dtype=np.uint8),
                             labels=rng.integers(0, 10, n).astype(np.int32),
                             confidence=rng.uniform(0.1, 1.0, n).astype(np.float32),
                             synthesis_call=np.arange(n, dtype=np.int32) // 2)


FIELDS = [f.name for f in dataclasses.fields(formats.TransferSet)]


def _assert_transfer_set(ts: formats.TransferSet):
  """What `formats.check` promises: uint8 (N >= 1, H, W, 1|3), per image an integer label
  >= 0, a probability and an integer synthesis call."""
  n = len(ts.images)
  assert ts.images.dtype == np.uint8 and ts.images.ndim == 4 and n
  assert ts.images.shape[-1] in (1, 3) and all(ts.images.shape[1:3])
  assert ts.labels.shape == ts.confidence.shape == ts.synthesis_call.shape == (n,)
  assert ts.labels.dtype.kind in "iu" and ts.labels.min() >= 0
  assert ts.synthesis_call.dtype.kind in "iu" and ts.confidence.dtype.kind == "f"
  assert np.isfinite(ts.confidence).all() and 0 <= ts.confidence.min()
  assert ts.confidence.max() <= 1


def _assert_loads_as(path: str, want: formats.TransferSet):
  got = formats.load(path)
  for name in FIELDS:
    np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


_DTYPES = ["uint8", "int32", "int64", "uint64", "float16", "float32", "float64", "bool",
           "complex64", "<U2"]
_SHAPES = [(), (0,), (5,), (5, 1), (5, 8, 8), (5, 8, 8, 1), (5, 8, 8, 3), (5, 8, 8, 2),
           (0, 8, 8, 1), (5, 0, 8, 1)]


@FUZZ
@given(fuzz=st.data())
def test_npz_transfer_set_arrays_are_checked(tmp_path, fuzz):
  """Every array of the npz replaced (any dtype, shape, NaN/Inf) or missing: refused naming
  the folder (float images in [0, 1] with the conversion hint), or a valid set."""
  arrays = dataclasses.asdict(_transfer_set())
  for name in FIELDS:
    change = fuzz.draw(st.sampled_from(["keep", "keep", "drop", "replace"]), label=name)
    if change == "drop":
      del arrays[name]
    elif change == "replace":
      arrays[name] = fuzz.draw(hnp.arrays(st.sampled_from(_DTYPES), st.sampled_from(_SHAPES)),
                               label=name)
  out = _fresh(tmp_path)
  np.savez(os.path.join(out, formats.NPZ_FILE), **arrays)
  try:
    ts = formats.load(out)
  except errors.UserError as e:
    assert out in str(e)
    images = arrays.get("images")
    if (len(arrays) == len(FIELDS) and images.dtype.kind == "f" and images.size
        and np.isfinite(images).all() and 0 <= images.min() and images.max() <= 1):
      assert "np.round(x * 255).astype(np.uint8)" in str(e)
  else:
    _assert_transfer_set(ts)
    images = _outcome(lambda: formats.load_images(out, DIGITS), out)
    assert images is None or images.shape[1:] == DIGITS


@pytest.mark.parametrize("field,value,problem", [
    ("images", lambda ts: ts.images / np.float32(255), "np.round"),
    ("images", lambda ts: np.full(ts.images.shape, np.nan, np.float32), "float32 images"),
    ("images", lambda ts: ts.images[:0], "no images"),
    ("images", lambda ts: ts.images[..., 0], "expected .N, H, W, 1 or 3."),
    ("images", lambda ts: ts.images[:, :0], "expected .N, H, W, 1 or 3."),
    ("labels", lambda ts: ts.labels[:3], r"\(3,\) labels for 5 images"),
    ("labels", lambda ts: np.array(["1"] * 5), "no class indices"),
    ("labels", lambda ts: ts.labels - 10, "no class indices"),
    ("confidence", lambda ts: np.full(5, np.nan, np.float32), "no probabilities"),
    ("confidence", lambda ts: np.full(5, np.inf, np.float32), "no probabilities"),
    ("confidence", lambda ts: np.array(["a"] * 5), "no probabilities"),
    ("confidence", lambda ts: ts.confidence + 1j, "no probabilities"),
    ("confidence", lambda ts: ts.confidence * 10, "no probabilities"),
    ("synthesis_call", lambda ts: np.full(5, np.nan), "synthesis_call"),
    ("synthesis_call", None, "lacks the arrays synthesis_call"),
])
def test_npz_transfer_set_contents_refused(tmp_path, field, value, problem):
  """The cases of the brief and those the fuzzing found (a str array raised a TypeError, a
  NaN synthesis call, 0-high images and complex or > 1 confidences were accepted)."""
  arrays = dataclasses.asdict(_transfer_set())
  if value is None:
    del arrays[field]
  else:
    arrays[field] = value(_transfer_set())
  np.savez(tmp_path / formats.NPZ_FILE, **arrays)
  with pytest.raises(errors.UserError, match=problem) as e:
    formats.load(str(tmp_path))
  assert str(tmp_path) in str(e.value)


HAS_ARRAY_RECORD = importlib.util.find_spec("array_record") is not None
FORMATS = ["npz", "image_folder", pytest.param("array_record", marks=pytest.mark.skipif(
    not HAS_ARRAY_RECORD, reason="the array_record package is not installed"))]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  """{format: the folder of `_transfer_set()` exported in it} (array_record if installed)."""
  out = {}
  for fmt in formats.FORMATS:
    folder = str(tmp_path_factory.mktemp(fmt))
    try:
      formats.write(_transfer_set(), folder, fmt, num_classes=10)
    except errors.UserError:   # array_record not installed
      continue
    out[fmt] = folder
  return out


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(fuzz=st.data())
def test_damaged_transfer_set_file_is_refused_or_read(exports, tmp_path, fuzz, fmt):
  """The npz, the jsonl index or the array_record file cut, flipped, overwritten, garbage or
  emptied: refused naming the folder, or (npz, array_record: checksummed) read exactly."""
  out = os.path.join(_fresh(tmp_path), fmt)
  shutil.copytree(exports[fmt], out)
  name = {"npz": formats.NPZ_FILE, "image_folder": formats.JSONL_FILE,
          "array_record": formats.ARRAY_RECORD_FILE}[fmt]
  path = os.path.join(out, name)
  with open(path, "rb") as f:
    raw = f.read()
  # An array_record file is padded to 64 KiB: the damage falls where its bytes are.
  used = np.flatnonzero(np.frombuffer(raw, np.uint8)) if fmt == "array_record" else None
  with open(path, "wb") as f:
    f.write(_damage(fuzz, raw, positions=None if used is None else list(used)))
  ts = _outcome(lambda: formats.load(out), out)
  if ts is not None:
    _assert_transfer_set(ts)
    if fmt != "image_folder":
      _assert_loads_as(out, _transfer_set())


_JSON = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                  st.floats(allow_nan=True), st.text(max_size=4),
                  st.lists(st.integers(0, 9), max_size=2),
                  st.dictionaries(st.sampled_from(["file", "label"]), st.integers(0, 9)))


@FUZZ
@given(fuzz=st.data(), what=st.sampled_from(["png", "missing_png", "line", "field", "mode"]),
       row=st.integers(0, 4))
def test_damaged_image_folder_export_is_refused_or_read(exports, tmp_path, fuzz, what, row):
  """A PNG damaged, missing or of another mode (16-bit, palette, RGBA), a jsonl line
  replaced by garbage or one field of a row by any JSON value: refused naming the folder,
  or a valid set."""
  out = os.path.join(_fresh(tmp_path), "image_folder")
  shutil.copytree(exports["image_folder"], out)
  jsonl = os.path.join(out, formats.JSONL_FILE)
  with open(jsonl) as f:
    lines = f.read().splitlines()
  png = os.path.join(out, json.loads(lines[row])["file"])
  if what == "png":
    _damage_file(fuzz, png)
  elif what == "missing_png":
    os.remove(png)
  elif what == "mode":
    mode = fuzz.draw(st.sampled_from(["I;16", "I", "P", "1", "RGBA", "LA", "F"]))
    Image.new(mode, (8, 8), 1).save(png, format="TIFF" if mode in ("I", "F") else "PNG")
  else:
    if what == "line":
      lines[row] = fuzz.draw(st.text(max_size=20).filter(lambda t: "\n" not in t))
    else:
      entry = json.loads(lines[row])
      entry[fuzz.draw(st.sampled_from(sorted(entry)))] = fuzz.draw(_JSON)
      lines[row] = json.dumps(entry)
    with open(jsonl, "w") as f:
      f.write("\n".join(lines) + "\n")
  ts = _outcome(lambda: formats.load(out), out)
  if ts is not None:
    _assert_transfer_set(ts)
    assert len(ts.images) == 5 or (what == "line" and len(ts.images) == 4)


@pytest.mark.parametrize("change,problem", [
    (dict(label=3.7), "line 2 holds .*not a transfer-set row"),
    (dict(label="3"), "line 2 holds .*not a transfer-set row"),
    (dict(synthesis_call=2.5), "line 2 holds .*not a transfer-set row"),
    (dict(confidence="high"), "line 2 holds .*not a transfer-set row"),
    (dict(label=2**40), "does not read .OverflowError"),
])
def test_image_folder_rows_are_checked(exports, tmp_path, change, problem):
  """A float label was truncated (3.7 -> 3), a huge one raised an OverflowError."""
  out = str(tmp_path / "x")
  shutil.copytree(exports["image_folder"], out)
  jsonl = os.path.join(out, formats.JSONL_FILE)
  with open(jsonl) as f:
    rows = [json.loads(line) for line in f]
  rows[1].update(change)
  with open(jsonl, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  with pytest.raises(errors.UserError, match=problem) as e:
    formats.load(out)
  assert out in str(e.value)


@pytest.mark.skipif(not HAS_ARRAY_RECORD, reason="the array_record package is not installed")
@pytest.mark.parametrize("header", [
    json.dumps(dict(label=2.5, confidence=0.5, synthesis_call=0, shape=[8, 8, 1])).encode(),
    b"[1, 2]", b"not json"])
def test_array_record_headers_are_checked(tmp_path, header):
  """A record whose JSON header is no row (a float label was truncated) or no JSON."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / formats.ARRAY_RECORD_FILE)
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  writer.write(header + b"\n" + bytes(64))
  writer.close()
  with pytest.raises(errors.UserError, match=str(tmp_path)):
    formats.load(str(tmp_path))


# --------------------------------------------------------- teacher checkpoints, .pth


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
  """(a .pth of a random resnet8 digits state_dict, the workdir of its orbax import, the
  variables, a checkpoints dir with steps 3 (those variables) and 7 (them + 1))."""
  base = tmp_path_factory.mktemp("teacher")
  workdir, source, _ = imported_resnet8(base)
  variables, meta = loader.load(workdir)
  two = str(base / "two" / "checkpoints")
  mngr = checkpoint.manager(two)
  checkpoint.save(mngr, 3, meta, variables)
  checkpoint.save(mngr, 7, meta, jax.tree.map(lambda x: x + 1, variables))
  mngr.close()
  return source, workdir, variables, two


def _load_teacher(path):
  return loader.load(path, arch="resnet8", num_classes=10, input_shape=DIGITS)[0]


def _step_files(step_dir: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, f), step_dir)
                for d, _, files in os.walk(step_dir) for f in files)


@FUZZ
@given(fuzz=st.data())
def test_damaged_single_step_checkpoint_is_a_checkpoint_error(teacher_files, tmp_path,
                                                               fuzz):
  """Any file of the only step (arrays, their index, the meta, orbax's metadata) cut,
  emptied or replaced by garbage: CheckpointError naming the directory, or (a file the
  restore does not read) the same weights."""
  _, workdir, variables, _ = teacher_files
  copy = os.path.join(_fresh(tmp_path), "teacher")
  shutil.copytree(workdir, copy)
  step = os.path.join(copy, "checkpoints", "0")
  path = os.path.join(step, fuzz.draw(st.sampled_from(_step_files(step)), label="file"))
  _damage_file(fuzz, path, kinds=("cut", "empty", "garbage"))
  try:
    got = _load_teacher(copy)
  except checkpoint.CheckpointError as e:
    assert os.path.join(copy, "checkpoints") in str(e)
  else:
    _assert_same(got, variables)


@FUZZ
@given(fuzz=st.data())
def test_damage_in_the_newest_step_falls_back_to_the_one_before(teacher_files, tmp_path,
                                                                fuzz):
  """Step 7 damaged anywhere: the teacher loads from step 3 (or, where the damage is in a
  file the restore does not read, from step 7); its files stay where they are."""
  _, _, variables, two = teacher_files
  copy = os.path.join(_fresh(tmp_path), "checkpoints")
  shutil.copytree(two, copy)
  step = os.path.join(copy, "7")
  path = os.path.join(step, fuzz.draw(st.sampled_from(_step_files(step)), label="file"))
  _damage_file(fuzz, path, kinds=("cut", "empty", "garbage"))
  got = _load_teacher(copy)
  newer = jax.tree.map(lambda x: x + 1, variables)
  assert any(jax.tree.all(jax.tree.map(np.array_equal, got, want))
             for want in (variables, newer))
  assert sorted(os.listdir(copy)) == ["3", "7"]


@pytest.mark.parametrize("meta", [{}, [], "x", dict(arch=5),
                                  dict(arch="resnet8", num_classes="10")])
def test_a_damaged_meta_in_the_newest_step_falls_back(teacher_files, tmp_path, meta):
  """A meta that parses but lacks the arch, class count or shape is a torn file, not a
  mismatch to report: the step before loads (it raised 'has arch=None but the config
  needs ...')."""
  _, _, variables, two = teacher_files
  copy = str(tmp_path / "checkpoints")
  shutil.copytree(two, copy)
  with open(os.path.join(copy, "7", "meta", "metadata"), "w") as f:
    json.dump(meta, f)
  _assert_same(_load_teacher(copy), variables)


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True))
def test_truncated_pth_through_the_loader_is_a_user_error(teacher_files, tmp_path, cut):
  source = teacher_files[0]
  with open(source, "rb") as f:
    raw = f.read()
  path = os.path.join(_fresh(tmp_path), "teacher.pth")
  with open(path, "wb") as f:
    f.write(raw[:int(cut * len(raw))])
  with pytest.raises(errors.UserError, match=path):
    _load_teacher(path)


def test_the_whole_pth_loads_through_the_loader(teacher_files):
  source, _, variables, _ = teacher_files
  _assert_same(_load_teacher(source), variables)
