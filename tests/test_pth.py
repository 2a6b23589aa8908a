"""fastdfkd_jax.teacher.pth: torch.save files read into NumPy without torch.

The fixtures in tests/data/pth/ (see its README.md) were made with torch 2.13.0+cpu on
Python 3.11 by the script below (`python gen.py tests/data/pth`); expected.npz holds
torch's own `torch.load(..., weights_only=True)` tensors as `.numpy()` (float16 and
bfloat16 through `.float()`), keyed "<fixture>/<key>[/<key>]".

    import collections, sys
    import numpy as np
    import torch
    from torch import nn
    import torch.utils.serialization as ser

    out = sys.argv[1]
    torch.manual_seed(0)
    net = nn.Sequential(collections.OrderedDict(
        conv=nn.Conv2d(3, 4, 3), bn=nn.BatchNorm2d(4), fc=nn.Linear(4, 5)))
    with torch.no_grad():
      net.bn.running_mean.uniform_(-1, 1)
      net.bn.running_var.uniform_(0.5, 2)
      net.bn.num_batches_tracked.fill_(7)
    small = net.state_dict()  # an OrderedDict with _metadata
    small["fc.weight"] = torch.randn(4, 5).t()  # non-contiguous: stride (1, 4)
    base = torch.arange(10, dtype=torch.float32)
    small["shared.base"] = base
    small["shared.view"] = base[3:7]  # the same storage, storage_offset 3
    small["shared.strided"] = base.view(2, 5)[:, 1::2]  # offset 1, stride (5, 2)
    small["param"] = nn.Parameter(torch.randn(3))  # torch._utils._rebuild_parameter
    torch.save(small, f"{out}/small.pth")

    half = {"f16": torch.tensor([[1.0, -2.5, 65504.0], [6e-5, -0.0, 0.333]],
                                dtype=torch.float16),
            "bf16": torch.tensor([1.0, -2.5, 3.140625, 1e30, -1e-30], dtype=torch.bfloat16),
            "bf16_t": torch.randn(3, 2).to(torch.bfloat16).t(),
            "bf16_0d": torch.tensor(-3.5, dtype=torch.bfloat16),
            "bool": torch.tensor([True, False])}
    ser.config.save.compute_crc32 = False  # records with CRC-32 0
    torch.save(half, f"{out}/half.pth")
    ser.config.save.compute_crc32 = True

    dp = nn.DataParallel(nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)))  # 'module.'
    wrapped = {"state_dict": dp.state_dict(), "epoch": 3, "acc": 0.9,
               "history": [0.5, (1, "x")]}
    torch.save(wrapped, f"{out}/wrapped.pth")

    class Net(nn.Module):
      def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    torch.save(Net(), f"{out}/custom.pth")  # a whole pickled module: refused

    legacy = collections.OrderedDict(small)
    legacy.update(half)
    torch.save(legacy, f"{out}/legacy.pth", _use_new_zipfile_serialization=False)

    def flat(obj, prefix):
      if isinstance(obj, torch.Tensor):
        t = obj.detach()
        t = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
        return {prefix: t.numpy().copy()}
      if isinstance(obj, dict):
        return {k: v for key, val in obj.items()
                for k, v in flat(val, f"{prefix}/{key}").items()}
      return {}

    expected = {}
    for name in ("small", "half", "wrapped"):  # legacy.pth holds small's and half's
      expected.update(flat(torch.load(f"{out}/{name}.pth", weights_only=True), name))
    np.savez_compressed(f"{out}/expected.npz", **expected)

`write`'s files were checked once against the same torch: `torch.load(path,
weights_only=True)` (and with mmap=True) gave identical arrays for every dtype `write`
takes and shapes (), (0,), (3, 0, 2), (5,), (2, 3, 4), (1, 300).
"""

import collections
import io
import os
import pathlib
import pickle
import pickletools
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from fastdfkd_jax import errors
from fastdfkd_jax.teacher import pth

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "pth")
FIXTURES = ("small", "half", "wrapped", "custom", "legacy")
WRITABLE = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool",
            "complex64", "complex128")
SHAPES = ((), (0,), (3, 0, 2), (5,), (2, 3, 4), (1, 300))


def _fixture(name: str) -> str:
  return os.path.join(DATA, f"{name}.pth")


def _expected(prefix: str) -> dict:
  with np.load(os.path.join(DATA, "expected.npz")) as npz:
    return {k[len(prefix) + 1:]: npz[k] for k in npz.files if k.startswith(prefix + "/")}


def _arrays(obj, prefix: str = "") -> dict:
  """{"key/key": array} of the arrays in nested dicts (the layout of expected.npz)."""
  if isinstance(obj, np.ndarray):
    return {prefix: obj}
  if isinstance(obj, dict):
    return {k: v for key, val in obj.items()
            for k, v in _arrays(val, f"{prefix}/{key}" if prefix else key).items()}
  return {}


def _assert_same(got: dict, want: dict):
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
    np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert got[key].flags.c_contiguous and got[key].flags.writeable, key


def _rezip(src: str, dst: str, **changes) -> None:
  """Copies archive src to dst, records replaced (name after 'archive/': bytes) or dropped."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
    for name in zin.namelist():
      data = changes.get(name.split("/", 1)[1], zin.read(name))
      if data is not None:
        zout.writestr(name, data)


@pytest.mark.parametrize("name", ["small", "half", "wrapped"])
def test_read_matches_torch(name):
  _assert_same(_arrays(pth.read(_fixture(name))), _expected(name))


def test_read_small_state_dict_details():
  sd = pth.read(_fixture("small"))
  assert type(sd) is collections.OrderedDict
  assert list(sd)[:3] == ["conv.weight", "conv.bias", "bn.weight"]
  assert sd._metadata["bn"] == {"version": 2}  # nn.Module's state_dict metadata survives
  assert sd["bn.num_batches_tracked"].dtype == np.int64 and sd["bn.num_batches_tracked"] == 7
  np.testing.assert_array_equal(sd["shared.view"], [3, 4, 5, 6])
  np.testing.assert_array_equal(sd["shared.strided"], [[1, 3], [6, 8]])
  sd["shared.view"][:] = -1  # copies: views of one storage no longer share memory
  np.testing.assert_array_equal(sd["shared.base"], np.arange(10, dtype=np.float32))
  assert sd["fc.weight"].shape == (5, 4)


def test_read_half_and_bfloat16_as_float32():
  half = pth.read(_fixture("half"))
  assert {v.dtype for k, v in half.items() if k != "bool"} == {np.dtype(np.float32)}
  assert half["bf16_0d"].shape == () and half["bf16_0d"] == -3.5
  np.testing.assert_array_equal(half["bf16"][:3], [1.0, -2.5, 3.140625])
  assert half["f16"][0, 2] == 65504.0 and np.signbit(half["f16"][1, 1])
  assert all(info.CRC == 0 for info in zipfile.ZipFile(_fixture("half")).infolist())


def test_read_wrapped_checkpoint():
  ckpt = pth.read(_fixture("wrapped"))
  assert (ckpt["epoch"], ckpt["acc"], ckpt["history"]) == (3, 0.9, [0.5, (1, "x")])
  assert type(ckpt["epoch"]) is int
  assert all(k.startswith("module.") for k in ckpt["state_dict"])


def test_read_legacy_format():
  legacy = pth.read(_fixture("legacy"))
  want = _expected("small")
  want.update(_expected("half"))
  _assert_same(_arrays(legacy), want)
  assert list(legacy)[-5:] == ["f16", "bf16", "bf16_t", "bf16_0d", "bool"]


def test_tensor_in_attributes_becomes_array(tmp_path):
  """A tensor that an OrderedDict's pickled attributes (its BUILD state) hold is cut out too."""
  good, bad = str(tmp_path / "good.pth"), str(tmp_path / "bad.pth")
  pth.write(good, {"a": np.arange(3, dtype=np.float32)})
  with zipfile.ZipFile(good) as z:
    pkl = z.read("archive/data.pkl")
  head = b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00a"
  assert pkl.startswith(head) and pkl.endswith(b"u.")
  tensor = pkl[len(head):-2]  # _rebuild_tensor_v2(...) of storage 0
  _rezip(good, bad, **{"data.pkl": pkl[:-1] + b"}X\x03\x00\x00\x00att" + tensor + b"sb."})
  sd = pth.read(bad)
  np.testing.assert_array_equal(sd.att, sd["a"])
  assert isinstance(sd.att, np.ndarray) and sd.att is not sd["a"]


def test_write_aligns_storages(tmp_path):
  path = str(tmp_path / "w.pth")
  pth.write(path, {f"a{i}": np.arange(i, dtype=np.int8) for i in range(5)})
  with zipfile.ZipFile(path) as z, open(path, "rb") as f:
    for info in z.infolist():
      f.seek(info.header_offset + 26)
      start = info.header_offset + 30 + sum(np.frombuffer(f.read(4), "<u2").tolist())
      assert start % 64 == 0 or "/data/" not in info.filename, info.filename


@pytest.mark.parametrize("dtype", WRITABLE)
def test_write_read_round_trip(tmp_path, dtype):
  rng = np.random.default_rng(WRITABLE.index(dtype))
  sd = {f"a{shape}": (rng.standard_normal(shape) * 50).astype(dtype) for shape in SHAPES}
  sd["transposed"] = (rng.standard_normal((3, 4)) * 50).astype(dtype).T
  sd["swapped"] = sd["a(5,)"].astype(sd["a(5,)"].dtype.newbyteorder(">"))
  path = str(tmp_path / "w.pth")
  pth.write(path, sd)
  got = pth.read(path)
  assert type(got) is collections.OrderedDict and list(got) == list(sd)
  want = {k: v.astype(np.float32) if dtype == "float16" else v.astype(v.dtype.newbyteorder("="))
          for k, v in sd.items()}
  _assert_same(got, want)


def test_write_empty_state_dict(tmp_path):
  pth.write(str(tmp_path / "e.pth"), {})
  assert pth.read(str(tmp_path / "e.pth")) == collections.OrderedDict()


@pytest.mark.parametrize("key,value", [("a", np.array([1], np.uint16)),
                                       ("b", np.array(["x"])), (1, np.zeros(2))])
def test_write_refuses_what_torch_cannot_hold(tmp_path, key, value):
  with pytest.raises(errors.UserError, match="cannot write"):
    pth.write(str(tmp_path / "w.pth"), {key: value})


def test_refuses_pickled_module():
  path = _fixture("custom")
  with pytest.raises(errors.UserError) as e:
    pth.read(path)
  assert str(e.value) == (
      f"{path} holds Python objects besides tensors (__main__.Net), refused: re-save just its "
      "state_dict (torch.save(model.state_dict(), path))")


class _Shell:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("as_zip", [True, False])
def test_refuses_globals_without_running_them(tmp_path, as_zip):
  marker, path = tmp_path / "ran", str(tmp_path / "evil.pth")
  payload = pickle.dumps({"w": _Shell(marker)}, protocol=2)
  if as_zip:
    pth.write(str(tmp_path / "ok.pth"), {})
    _rezip(str(tmp_path / "ok.pth"), path, **{"data.pkl": payload})
  else:  # the legacy format: magic number, protocol version, sys_info, then the object
    header = (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True})
    with open(path, "wb") as f:
      f.write(b"".join(pickle.dumps(x, protocol=2) for x in header) + payload)
  with pytest.raises(errors.UserError, match=rf"\({os.system.__module__}\.system\), refused"):
    pth.read(path)
  assert not marker.exists()


@pytest.mark.parametrize("change,problem", [
    ({"data/0": b"\0" * 8}, "data/0 holds 8 bytes, expected 12"),
    ({"data/1": None}, "record archive/data/1 is missing"),
    ({"data.pkl": None}, "without one <archive>/data.pkl"),
    ({"byteorder": b"middle"}, "unknown byte order"),
])
def test_damaged_archives(tmp_path, change, problem):
  good, bad = str(tmp_path / "good.pth"), str(tmp_path / "bad.pth")
  pth.write(good, {"a": np.arange(3, dtype=np.float32), "b": np.ones(2)})
  _rezip(good, bad, **change)
  with pytest.raises(errors.UserError, match="bad.pth is not a readable PyTorch checkpoint") as e:
    pth.read(bad)
  assert problem in str(e.value) and "\n" not in str(e.value)


def test_tensor_past_its_storage(tmp_path):
  good, bad = str(tmp_path / "good.pth"), str(tmp_path / "bad.pth")
  pth.write(good, {"a": np.arange(3, dtype=np.float32)})
  with zipfile.ZipFile(good) as z:
    pkl = z.read("archive/data.pkl")
  assert pkl.count(b"cpuK\x03") == 1
  _rezip(good, bad, **{"data.pkl": pkl.replace(b"cpuK\x03", b"cpuK\x02"), "data/0": b"\0" * 8})
  with pytest.raises(errors.UserError, match="reaches past the end of its storage"):
    pth.read(bad)


def test_crc_and_compression_checked(tmp_path):
  good, bad = str(tmp_path / "good.pth"), str(tmp_path / "bad.pth")
  pth.write(good, {"a": np.arange(3, dtype=np.float32)})
  data = bytearray(pathlib.Path(good).read_bytes())
  at = data.index(np.arange(3, dtype=np.float32).tobytes())
  data[at + 5] ^= 0xFF
  pathlib.Path(bad).write_bytes(bytes(data))
  with pytest.raises(errors.UserError, match="data/0 fails its CRC-32 check"):
    pth.read(bad)
  with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as zout:
    for name in zin.namelist():
      zout.writestr(name, zin.read(name))
  with pytest.raises(errors.UserError, match="is compressed"):
    pth.read(bad)


def test_big_endian_archive(tmp_path):
  good, big = str(tmp_path / "good.pth"), str(tmp_path / "big.pth")
  sd = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([-2, 1 << 40])}
  pth.write(good, sd)
  _rezip(good, big, byteorder=b"big", **{f"data/{i}": v.astype(v.dtype.newbyteorder(">"))
                                         .tobytes() for i, v in enumerate(sd.values())})
  _assert_same(pth.read(big), sd)


def test_legacy_storage_size_header_checked(tmp_path):
  data = bytearray(pathlib.Path(_fixture("legacy")).read_bytes())
  f = io.BytesIO(data)
  for _ in range(4):  # magic number, protocol, sys_info, the object: skipped, not run
    for _ in pickletools.genops(f):
      pass
  keys = pickle.load(f)  # a list of str
  at = f.tell()
  numel = int.from_bytes(data[at:at + 8], "little")
  data[at:at + 8] = (numel + 1).to_bytes(8, "little")
  path = tmp_path / "bad.pth"
  path.write_bytes(bytes(data))
  with pytest.raises(errors.UserError, match=f"storage {keys[0]} has a damaged size header"):
    pth.read(str(path))


@pytest.mark.parametrize("name", FIXTURES)
def test_truncated_fixtures_refused(tmp_path, name):
  data = pathlib.Path(_fixture(name)).read_bytes()
  path = tmp_path / "cut.pth"
  for cut in np.random.default_rng(0).integers(0, len(data), 30):
    path.write_bytes(data[:cut])
    with pytest.raises(errors.UserError, match="cut.pth"):
      pth.read(str(path))


@pytest.mark.parametrize("name", FIXTURES)
def test_corrupted_fixtures_refused_or_read(tmp_path, name):
  data = pathlib.Path(_fixture(name)).read_bytes()
  path = tmp_path / "bad.pth"
  rng = np.random.default_rng(1)
  refused = 0
  for i, at in enumerate(rng.integers(0, len(data) - 4, 30)):
    bad = bytearray(data)
    if i % 2:
      bad[at] ^= int(rng.integers(1, 256))
    else:
      bad[at:at + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(bad))
    try:
      out = pth.read(str(path))
    except errors.UserError as e:
      refused += 1
      assert "\n" not in str(e)
    else:  # what no check covers was hit (payload, padding; any pickle byte in legacy files)
      assert isinstance(out, dict) and _arrays(out)
  assert refused >= 10


@pytest.mark.parametrize("name", ["small", "wrapped"])
def test_corrupted_pickles_refused_or_read(tmp_path, name):
  """Damaged data.pkl with a matching CRC-32: the unpickler itself meets the damage."""
  with zipfile.ZipFile(_fixture(name)) as z:
    records = {n: z.read(n) for n in z.namelist()}
  pkl_name = next(n for n in records if n.endswith("/data.pkl"))
  rng, path, refused = np.random.default_rng(2), str(tmp_path / "bad.pth"), 0
  for _ in range(30):
    pkl = bytearray(records[pkl_name])
    pkl[int(rng.integers(0, len(pkl)))] = int(rng.integers(0, 256))
    with zipfile.ZipFile(path, "w") as z:
      for n, data in records.items():
        z.writestr(n, bytes(pkl) if n == pkl_name else data)
    try:
      assert isinstance(pth.read(path), dict)
    except errors.UserError:
      refused += 1
  assert refused >= 10


@pytest.mark.parametrize("pkl", [b"\x80\x02}r\xff\xff\xff\x7f.",  # LONG_BINPUT 2**31 - 1
                                 b"\x80\x05\x97."])  # NEXT_BUFFER (protocol 5)
def test_damaged_pickle_refused_before_unpickling(tmp_path, pkl):
  pth.write(str(tmp_path / "ok.pth"), {})
  _rezip(str(tmp_path / "ok.pth"), str(tmp_path / "bad.pth"), **{"data.pkl": pkl})
  with pytest.raises(errors.UserError, match="a damaged pickle"):
    pth.read(str(tmp_path / "bad.pth"))


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"not a checkpoint\n",
                                     pickle.dumps({"a": 1}, protocol=2), b"PK\x03\x04junk"])
def test_not_a_checkpoint(tmp_path, content):
  path = tmp_path / "x.pth"
  path.write_bytes(content)
  with pytest.raises(errors.UserError, match="x.pth is not a readable PyTorch checkpoint"):
    pth.read(str(path))


def test_plain_zip_is_not_a_checkpoint(tmp_path):
  path = str(tmp_path / "x.pth")
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("readme.txt", "hello")
  with pytest.raises(errors.UserError, match="without one <archive>/data.pkl"):
    pth.read(path)


def test_missing_file(tmp_path):
  for path in (str(tmp_path / "nope.pth"), str(tmp_path)):
    with pytest.raises(errors.UserError) as e:
      pth.read(path)
    assert str(e.value) == f"no PyTorch checkpoint at {path}"


def test_reads_without_torch():
  code = ("import sys; sys.modules['torch'] = None\n"  # `import torch` now fails
          "from fastdfkd_jax.teacher import pth\n"
          f"sd = pth.read({_fixture('small')!r})\n"
          "assert 'torch' in sys.modules and sys.modules['torch'] is None\n"
          "print(len(sd))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "13"


def test_a_tensor_pickled_with_pickle_dump_reads_without_torch():
  """`pickle.dump(tensor)` (NAYER's label-embedding files) stores the storage as a legacy
  torch.save of its own; made with torch 2.13.0 (tests/data/pth/README.md)."""
  got = pth.read(os.path.join(DATA, "pickled_half.pickle"))
  want = (np.arange(12, dtype=np.float32).reshape(3, 4) / 7).astype(np.float16)
  np.testing.assert_array_equal(got, want.astype(np.float32))
