"""Archives of image-folder trees extracted once into a cache, and the decode cache.

An archive is extracted once into `<cache_root>/<stem>-<hash of its content>/tree` (into
a temporary folder, then renamed: a failed extraction leaves nothing behind; a changed
archive gets a new folder); a plain tree gets its own `<cache_root>/<name>-<short hash>/`
folder. Decoded splits are cached there as `<dataset>-<split>-<H>x<W>x<C>-v<version>.npz`;
one that does not load or does not fit the data set is logged and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib

import numpy as np
from absl import logging

from fastdfkd_jax import errors
from fastdfkd_jax.data.info import LAYOUT_HELP, DatasetInfo, Split

# Bump when the decoded `.npz` contents change meaning, so stale caches are ignored.
_CACHE_VERSION = 1
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# Split folders of a tree; the test split is test/, or val/ where there is no test/.
FOLDERS = ("train", "test", "val")


def cache_root(cache_dir: str | None) -> str:
  if cache_dir:
    return os.path.abspath(os.path.expanduser(cache_dir))
  return os.path.join(os.path.expanduser("~"), ".cache", "fastdfkd_jax")


def short_hash(*parts: object) -> str:
  return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:12]


def _archive_stem(path: str) -> str:
  base = os.path.basename(path)
  for suffix in ARCHIVE_SUFFIXES:
    if base.lower().endswith(suffix):
      return base[:-len(suffix)]
  return base


def archive_cache_dir(path: str, cache_dir: str | None = None) -> str:
  """Cache folder of an archive: `<root>/<stem>-<sha256 of its bytes, 12 digits>`."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return os.path.join(cache_root(cache_dir),
                      f"{_archive_stem(path)}-{digest.hexdigest()[:12]}")


def tree_cache_dir(root: str, cache_dir: str | None) -> str:
  """Cache folder of a plain image tree, keyed on its path and class folders."""
  parts: list[object] = [root]
  for split in FOLDERS:
    split_dir = os.path.join(root, split)
    if os.path.isdir(split_dir):
      for cls in sorted(os.listdir(split_dir)):
        cdir = os.path.join(split_dir, cls)
        if os.path.isdir(cdir):
          parts += [split, cls, os.stat(cdir).st_mtime_ns,
                    len(os.listdir(cdir))]
  name = os.path.basename(root.rstrip(os.sep)) or "tree"
  return os.path.join(cache_root(cache_dir), f"{name}-{short_hash(*parts)}")


def find_tree_root(path: str) -> str | None:
  """`path` or its single sub-folder when it holds train/ or test/."""
  def is_root(p: str) -> bool:
    return any(os.path.isdir(os.path.join(p, s)) for s in FOLDERS)
  if is_root(path):
    return path
  subdirs = [e for e in os.listdir(path)
             if not e.startswith((".", "__MACOSX"))
             and os.path.isdir(os.path.join(path, e))]
  if len(subdirs) == 1 and is_root(os.path.join(path, subdirs[0])):
    return os.path.join(path, subdirs[0])
  return None


def _safe_members(tar: tarfile.TarFile, archive: str) -> list[tarfile.TarInfo]:
  """Regular files and folders of `tar`; rejects absolute or '..' paths."""
  members = []
  for m in tar.getmembers():
    name = m.name
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts:
      raise errors.UserError(
          f"Archive {archive!r} holds an unsafe member path {name!r} (absolute "
          f"or containing '..'); refusing to extract it.")
    if m.isfile() or m.isdir():
      members.append(m)
  return members


def extract_archive(path: str, cache: str) -> str:
  """Extracts `path` once into `<cache>/tree`, atomically; returns that folder."""
  tree = os.path.join(cache, "tree")
  if os.path.isdir(tree):
    return tree
  os.makedirs(cache, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".extract-", dir=cache)
  try:
    try:
      with tarfile.open(path, "r:*") as tar:
        members = _safe_members(tar, path)
        if hasattr(tarfile, "data_filter"):
          tar.extractall(tmp, members=members, filter="data")
        else:  # Python without extraction filters; members are checked above.
          tar.extractall(tmp, members=members)  # noqa: S202
        _check_end(tar)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
      shutil.rmtree(tmp, ignore_errors=True)
      with contextlib.suppress(OSError):
        os.rmdir(cache)  # only if empty: no half-made cache folder stays behind
      raise errors.UserError(
          f"Cannot extract archive {path!r}: {e}.\n{LAYOUT_HELP}") from e
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it owner-only.
    try:
      os.replace(tmp, tree)
    except OSError:
      if not os.path.isdir(tree):  # Not a lost race with another process.
        raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return tree


def _check_end(tar: tarfile.TarFile) -> None:
  """A ReadError unless the members end at a zero block (tarfile stops quietly at a damaged
  header or a cut); then reads to the end, so that a gzip/bz2/xz checksum is checked."""
  tar.fileobj.seek(tar.offset)
  block = tar.fileobj.read(tarfile.BLOCKSIZE)
  if len(block) < tarfile.BLOCKSIZE or block.count(0) != len(block):
    raise tarfile.ReadError(f"a damaged or truncated member header at byte {tar.offset}")
  while tar.fileobj.read(1 << 20):
    pass


def umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def npz_path(cache: str, info: DatasetInfo, split: Split) -> str:
  h, w, c = info.image_shape
  return os.path.join(
      cache, f"{info.name}-{split}-{h}x{w}x{c}-v{_CACHE_VERSION}.npz")


def read_npz(path: str, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray] | None:
  """The cached split at `path`; None (and the file removed) if absent or corrupt."""
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path) as data:
      images, labels = data["images"], data["labels"]
  except Exception as e:  # pylint: disable=broad-except  # any read failure: rebuild
    reason = f"{type(e).__name__}: {e}"
  else:
    fits = (images.dtype == np.uint8 and images.shape[1:] == tuple(info.image_shape)
            and labels.dtype == np.int32 and labels.shape == images.shape[:1] and len(labels)
            and 0 <= labels.min() and labels.max() < info.num_classes)
    if fits:
      return images, labels
    reason = f"images {images.shape} {images.dtype}, labels {labels.shape}"
  logging.warning("decode cache %s is corrupt (%s); rebuilding it", path, reason)
  with contextlib.suppress(OSError):
    os.remove(path)
  return None


def write_npz(path: str, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes the decoded split atomically (temp file + os.replace)."""
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, images=images, labels=labels)
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it owner-only.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
