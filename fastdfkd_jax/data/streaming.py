"""Splits decoded batch by batch in a background pipeline, never held whole in memory.

A `StreamingSplit` stands where an in-memory split's uint8 (N, H, W, C) array
stands (`Dataset.train_images` / `test_images`): it has `len`, `shape`, `dtype`
and indexing by a slice or an integer array, and decodes (and resizes) only the
images asked for. Reading in order (evaluation: `images[i:i + B]`, batch after
batch) starts the next `prefetch` batches in a thread pool as soon as one is
taken, so decoding overlaps the device work; at most `prefetch` decoded batches
wait (a bounded read-ahead queue). `batches(batch_size, order)` is the same
pipeline over any order. Random access (`images[idx]`) decodes those images on
the pool at once.

Sources: an image-folder tree (`from_tree`: files listed once, each decoded with
Pillow through the ImageNet eval transform scaled to the image size) and TFDS
`data_source` records (`tfds.stream`), both a function from an index to an image.
Both splits use the eval transform (the training split too: this project imports
ImageNet teachers rather than training them; the KD batches come from the pool).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from typing import Callable, Iterator

import numpy as np

from fastdfkd_jax.data import image_folder
from fastdfkd_jax.data.info import DatasetInfo, Split


class StreamingSplit:
  """uint8 (N, H, W, C) images decoded on demand (see the module docstring)."""

  dtype = np.dtype(np.uint8)

  def __init__(self, read: Callable[[int], np.ndarray], n: int,
               image_shape: tuple[int, int, int], workers: int, prefetch: int):
    """read(i) -> uint8 (H, W, C) image i; `workers` decoding threads; `prefetch`
    batches decoded ahead of an in-order reader."""
    self._read, self._n = read, n
    self.shape = (n,) + tuple(image_shape)
    self._workers = max(1, workers)
    self._pool = concurrent.futures.ThreadPoolExecutor(self._workers)
    self._prefetch = prefetch
    self._ahead: collections.OrderedDict = collections.OrderedDict()

  def __len__(self) -> int:
    return self._n

  def _decode(self, idx: np.ndarray) -> np.ndarray:
    out = np.empty((len(idx),) + self.shape[1:], np.uint8)
    for j, i in enumerate(idx):
      out[j] = self._read(int(i))
    return out

  def _submit(self, idx: np.ndarray) -> list[concurrent.futures.Future]:
    """Decodes idx on the pool in parts (one per worker) -> the parts' futures."""
    parts = np.array_split(idx, max(1, min(len(idx), self._workers)))
    return [self._pool.submit(self._decode, p) for p in parts]

  def _gather(self, parts: list[concurrent.futures.Future]) -> np.ndarray:
    batch = [p.result() for p in parts]
    return np.concatenate(batch) if batch else np.empty((0,) + self.shape[1:], np.uint8)

  def __getitem__(self, index) -> np.ndarray:
    if isinstance(index, slice):
      start, stop, step = index.indices(self._n)
      if step == 1:
        return self._in_order(start, stop)
      index = np.arange(start, stop, step)
    idx = np.asarray(index)
    if idx.dtype.kind not in "iu":
      raise TypeError(f"StreamingSplit indices must be integers, got {idx.dtype}")
    flat = np.where(idx.reshape(-1) < 0, idx.reshape(-1) + self._n, idx.reshape(-1))
    return self._gather(self._submit(flat)).reshape(idx.shape + self.shape[1:])

  def _in_order(self, start: int, stop: int) -> np.ndarray:
    """images[start:stop], taken from the read-ahead queue; refills it after stop."""
    parts = self._ahead.pop((start, stop), None)
    if parts is None:
      self._ahead.clear()   # a jump: what was read ahead is not needed
      parts = self._submit(np.arange(start, stop))
    size, nxt = stop - start, stop
    while len(self._ahead) < self._prefetch and nxt < self._n and size:
      key = (nxt, min(nxt + size, self._n))
      if key not in self._ahead:
        self._ahead[key] = self._submit(np.arange(*key))
      nxt = key[1]
    return self._gather(parts)

  def batches(self, batch_size: int, order: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Batches of images[order] (default: in order), `prefetch` decoded ahead."""
    order = np.arange(self._n) if order is None else np.asarray(order)
    queue: collections.deque = collections.deque()
    starts = iter(range(0, len(order), batch_size))
    for s in starts:
      queue.append(self._submit(order[s:s + batch_size]))
      if len(queue) > self._prefetch:
        break
    while queue:
      batch = self._gather(queue.popleft())
      s = next(starts, None)
      if s is not None:
        queue.append(self._submit(order[s:s + batch_size]))
      yield batch


def from_tree(info: DatasetInfo, split: Split, root: str, workers: int = 0,
              prefetch: int = 4) -> tuple[StreamingSplit, np.ndarray]:
  """(images, int32 labels) of `split` of the image-folder tree at `root`, streamed
  (`workers` 0: one per CPU, at most 16)."""
  files, labels = image_folder.list_split(info, split, root)
  h, w, c = info.image_shape
  mode = {1: "L", 3: "RGB"}[c]
  read = lambda i: image_folder.decode_image(files[i], mode, (h, w), info.resize).reshape(
      h, w, c)
  return StreamingSplit(read, len(files), info.image_shape, default_workers(workers),
                        prefetch), labels


def default_workers(workers: int) -> int:
  """`workers`, or for 0 one decoding thread per CPU (at most 16)."""
  return workers or min(16, os.cpu_count() or 1)
