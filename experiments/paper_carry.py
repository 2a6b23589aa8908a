"""What the paper-scale study (experiments/paper_study.py) keeps between windows of a lent
accelerator: the store, the finished teachers in it, and the bundle that comes back.

A **store** is a folder:

    records/<item>/   summary.json, metrics.jsonl, config.json, run.log of every item run
                      (finished or stopped at a deadline): what git keeps and the table reads
    teachers/<t>.npz  a finished teacher: parameters in bfloat16 (stored as uint16), BN
                      statistics in float32, its meta as JSON. Every row of every window
                      reads this one rounding, so a row's teacher never depends on where it ran
    states/<item>.tgz the newest checkpoint of an item stopped at a deadline
    cache.tgz         the persistent compilation cache
    data/             the CIFAR-10 archive(s) a call needs (test split only for most rows)

A **bundle** is a store written as one tar split into parts of at most PART_BYTES, with
`manifest.json` beside them: the device tool returns at most 8 files of 16 MiB (64 MiB in
all). What does not fit `budget` is left out and listed in the manifest with its size,
lowest priority first (the cache, then states, then teachers; records always go).
"""

import glob
import io
import json
import os
import shutil
import tarfile
import tempfile

import ml_dtypes
import numpy as np

PART_BYTES = 15 * 2**20
PRIORITY = ("records", "teachers", "states", "cache.tgz")   # what goes first when space is short


def size_of(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


# --- teachers -------------------------------------------------------------------------------

def save_teacher(variables: dict, meta: dict, path: str) -> dict:
  """Writes `variables` to `path` (.npz): parameters rounded to bfloat16; returns the
  rounded variables (float32), the ones every row will teach with."""
  flat, rounded = {}, {}
  for collection, tree in variables.items():
    for key, leaf in _flatten(tree):
      leaf = np.asarray(leaf, np.float32)
      if collection == "params":
        bf = leaf.astype(ml_dtypes.bfloat16)
        flat[f"{collection}/{key}"] = bf.view(np.uint16)
        leaf = bf.astype(np.float32)
      else:
        flat[f"{collection}/{key}"] = leaf
      rounded[(collection, key)] = leaf
  flat["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  with open(path, "wb") as f:
    np.savez_compressed(f, **flat)
  return _unflatten(rounded)


def load_teacher(path: str) -> tuple[dict, dict]:
  """(variables in float32, meta) of a teacher written by `save_teacher`."""
  with np.load(path) as z:
    meta = json.loads(bytes(z["__meta__"]).decode())
    leaves = {}
    for name in z.files:
      if name == "__meta__":
        continue
      collection, key = name.split("/", 1)
      a = z[name]
      if collection == "params":
        a = a.view(ml_dtypes.bfloat16).astype(np.float32)
      leaves[(collection, key)] = a
  return _unflatten(leaves), meta


def _flatten(tree, prefix=""):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, f"{prefix}{k}/")
    else:
      yield f"{prefix}{k}", v


def _unflatten(leaves: dict) -> dict:
  out = {}
  for (collection, key), leaf in leaves.items():
    node = out.setdefault(collection, {})
    *parents, last = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = leaf
  return out


# --- states and the cache --------------------------------------------------------------------

def pack_dir(src: str, dst: str, skip=lambda rel: False) -> None:
  """`src` as a gzipped tar at `dst` (paths relative to `src`), leaving out `skip(rel)`."""
  with tarfile.open(dst, "w:gz") as tar:
    for d, dirs, files in os.walk(src):
      dirs.sort()
      for f in sorted(files):
        rel = os.path.relpath(os.path.join(d, f), src)
        if not skip(rel):
          tar.add(os.path.join(d, f), arcname=rel)


def unpack_dir(src: str, dst: str) -> None:
  os.makedirs(dst, exist_ok=True)
  with tarfile.open(src) as tar:
    tar.extractall(dst, filter="data")


def newest_checkpoint_only(workdir: str):
  """A `skip` for pack_dir keeping only the newest step of workdir/checkpoints and the lock
  out (an item resumes from that step)."""
  ckpt = os.path.join(workdir, "checkpoints")
  steps = sorted(int(s) for s in os.listdir(ckpt) if s.isdigit()) if os.path.isdir(ckpt) else []
  keep = str(steps[-1]) if steps else None

  def skip(rel: str) -> bool:
    parts = rel.split(os.sep)
    if parts[-1] == ".lock":
      return True
    return parts[0] == "checkpoints" and len(parts) > 1 and parts[1] != keep
  return skip


# --- bundles -----------------------------------------------------------------------------------

def write_bundle(store: str, out: str, budget: int, manifest: dict) -> dict:
  """The store as OUT/bundle.tar.NN parts + OUT/manifest.json within `budget` bytes."""
  chosen, left_out, used = [], [], 0
  for name in _entries_by_priority(store):
    n = size_of(os.path.join(store, name))
    if name.startswith("records") or used + n <= budget:
      chosen.append(name)
      used += n
    else:
      left_out.append(dict(path=name, bytes=n))
  os.makedirs(out, exist_ok=True)
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as tar:
    for name in chosen:
      tar.add(os.path.join(store, name), arcname=name)
  data = buf.getvalue()
  parts = []
  for i in range(0, max(len(data), 1), PART_BYTES):
    parts.append(f"bundle.tar.{i // PART_BYTES:02d}")
    with open(os.path.join(out, parts[-1]), "wb") as f:
      f.write(data[i:i + PART_BYTES])
  manifest = dict(manifest, parts=parts, bundle_bytes=len(data), packed=chosen,
                  left_out=left_out, budget_bytes=budget)
  with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def _entries_by_priority(store: str) -> list[str]:
  names = []
  for top in PRIORITY:
    path = os.path.join(store, top)
    if os.path.isdir(path):
      names += sorted(os.path.join(top, n) for n in os.listdir(path))
    elif os.path.isfile(path):
      names.append(top)
  return names


def read_bundle(src: str, store: str) -> dict:
  """Merges the bundle in `src` (parts + manifest) into `store`: records, teachers and the
  cache replace their older copies; states are replaced, and removed for items whose
  record is now finished. Returns the manifest."""
  with open(os.path.join(src, "manifest.json")) as f:
    manifest = json.load(f)
  with tempfile.TemporaryDirectory() as tmp:
    blob = b"".join(open(os.path.join(src, p), "rb").read() for p in manifest["parts"])
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
      tar.extractall(tmp, filter="data")
    for name in manifest["packed"]:
      dst = os.path.join(store, name)
      if os.path.isdir(dst):
        shutil.rmtree(dst)
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.move(os.path.join(tmp, name), dst)
  for state in glob.glob(os.path.join(store, "states", "*.tgz")):
    item = os.path.basename(state)[:-4]
    if finished(os.path.join(store, "records", item)):
      os.remove(state)
  return manifest


def finished(record_dir: str) -> bool:
  path = os.path.join(record_dir, "summary.json")
  if not os.path.isfile(path):
    return False
  with open(path) as f:
    return not json.load(f).get("preempted")


# --- here, between windows ---------------------------------------------------------------------

def prepare(store: str, carry: str, data: str, items: list, budget: int) -> str:
  """Fills `carry` with what the next call needs within `budget` bytes: the records, then
  for each unfinished item in queue order whose teacher is done, the data it reads (the
  test split alone unless it trains on the training split), its teacher and its stopped
  state, while they fit; then the compilation cache if it fits. Returns a one-line report."""
  shutil.rmtree(carry, ignore_errors=True)
  os.makedirs(os.path.join(carry, "data"))
  if os.path.isdir(os.path.join(store, "records")):
    shutil.copytree(os.path.join(store, "records"), os.path.join(carry, "records"))
  test_only = os.path.join(store, "cifar10_test.tar.gz")
  if not os.path.isfile(test_only):
    make_test_only(data, test_only)
  chosen, skipped = {}, []
  for item in items:
    teacher = os.path.join(store, "teachers", item.teacher + ".npz")
    if finished(os.path.join(store, "records", item.name)) or (
        item.teacher and not os.path.isfile(teacher)):
      continue   # done, or its teacher comes first
    need = {"data": data if item.needs_train or chosen.get("data") == data else test_only}
    if item.teacher:
      need[f"teachers/{item.teacher}.npz"] = teacher
    state = os.path.join(store, "states", item.name + ".tgz")
    if os.path.isfile(state):
      need[f"states/{item.name}.tgz"] = state
    trial = dict(chosen, **need)
    if sum(map(size_of, trial.values())) <= budget:
      chosen = trial
    else:
      skipped.append(item.name)
  cache = os.path.join(store, "cache.tgz")
  if os.path.isfile(cache) and sum(map(size_of, chosen.values())) + size_of(cache) <= budget:
    chosen["cache.tgz"] = cache
  for name, src in chosen.items():
    dst = os.path.join(carry, "data", os.path.basename(src)) if name == "data" else \
        os.path.join(carry, name)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy(src, dst)
  return (f"{carry}: {size_of(carry) / 2**20:.1f} MiB of {budget / 2**20:.1f} MiB free to "
          f"travel; carries {', '.join(sorted(chosen)) or 'records only'}"
          + (f"; left for a later call (no room beside them): {', '.join(skipped)}"
             if skipped else ""))


def make_test_only(archive: str, dst: str) -> None:
  """The archive's test split alone (3.3 MB of the 19.8 MB CIFAR-10 copy)."""
  with tarfile.open(archive) as src, tarfile.open(dst + ".tmp", "w:gz") as out:
    for m in src:
      if "test" in m.name.lstrip("./").split("/")[:2]:
        out.addfile(m, src.extractfile(m) if m.isfile() else None)
  os.replace(dst + ".tmp", dst)


def collect(files_at: str, store: str, records: str) -> dict:
  """Merges a call's bundle into `store` and copies its records (no logs, no checkpoints)
  into `records`, the folder git keeps. Returns the call's manifest."""
  manifest = read_bundle(files_at, store)
  for name in sorted(os.listdir(os.path.join(store, "records"))):
    os.makedirs(os.path.join(records, name), exist_ok=True)
    for f in ("summary.json", "metrics.jsonl", "config.json", "environment.json"):
      src = os.path.join(store, "records", name, f)
      if os.path.isfile(src):
        shutil.copy(src, os.path.join(records, name))
  return manifest
