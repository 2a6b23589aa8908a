"""The Colab notebook runs top to bottom on CPU (tiny configuration) and is committed clean.

`notebooks/fastdfkd_colab_tpu.ipynb` is executed with nbclient in a python3
kernel that runs this interpreter: a kernelspec written into a temporary
JUPYTER_PATH directory (searched first) points at `sys.executable`, so the
test never depends on, or changes, the kernelspecs installed on the machine.
FASTDFKD_NOTEBOOK_SMALL=1 selects the notebook's tiny configuration and
FASTDFKD_NOTEBOOK_WORKDIR a temporary workdir. Compile-dominated: about a
minute on two CPU cores.
"""

import glob
import json
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from conftest import REPO, one_device_env
NOTEBOOK = os.path.join(REPO, "notebooks", "fastdfkd_colab_tpu.ipynb")


def read_notebook():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  return nb


def test_notebook_is_committed_clean():
  nb = read_notebook()
  assert nb.metadata.kernelspec.name == "python3"
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code, "the notebook has no code cells"
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, (
        f"cell {cell.get('id')} has outputs: clear them before committing "
        "(see notebooks/README.md)")
  tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "exactly one code cell must be tagged 'parameters'"
  params = tagged[0].source
  assert "FASTDFKD_NOTEBOOK_SMALL" in params and "FASTDFKD_NOTEBOOK_WORKDIR" in params


def _kernelspec_for_this_interpreter(root) -> None:
  """A 'python3' kernelspec running sys.executable, in a JUPYTER_PATH dir."""
  spec_dir = root / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps(dict(
      argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      display_name="Python 3 (test)", language="python")))


@pytest.mark.e2e  # the whole notebook in a kernel
def test_notebook_runs_small_on_cpu(tmp_path, monkeypatch):
  nb = read_notebook()
  workdir = tmp_path / "work"
  jupyter_dir = tmp_path / "jupyter"
  _kernelspec_for_this_interpreter(jupyter_dir)
  monkeypatch.setenv("JUPYTER_PATH", str(jupyter_dir))
  monkeypatch.setenv("FASTDFKD_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("FASTDFKD_NOTEBOOK_WORKDIR", str(workdir))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # The kernel sees one CPU device, as a Colab CPU runtime does (not the suite's 8).
  monkeypatch.setenv("XLA_FLAGS", one_device_env()["XLA_FLAGS"])
  # The kernel imports this checkout even where the package is not installed.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p))

  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(tmp_path)}})
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f"notebook cell failed:\n{e}")

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  errors = [o for o in outputs if o.output_type == "error"]
  assert not errors, errors
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "backend: cpu" in text
  assert "images per synthesis second" in text
  assert "benchmark skipped (SMALL)" in text
  images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
  assert len(images) == 3, "expected the sample grid and two accuracy plots"

  assert os.path.isfile(workdir / "teacher" / "summary.json")
  summaries = glob.glob(str(workdir / "distill_*" / "summary.json"))
  assert len(summaries) == 1, summaries
  with open(summaries[0]) as f:
    summary = json.load(f)
  assert summary["mode"] == "distill" and summary["epochs"] == 3
  assert summary["student_acc"] > 0 and summary["best_student_acc"] >= summary["student_acc"]
  # The global batch is the same on any device count (the kernel's count follows the
  # environment it inherits: one device alone, but 8 were seen inside the whole suite).
  assert summary["kd_images"] == 2 * 3 * 32 and 32 % summary["num_devices"] == 0
  distill_dir = os.path.dirname(summaries[0])
  assert glob.glob(os.path.join(distill_dir, "samples", "epoch_*.png"))
  assert os.path.isfile(os.path.join(distill_dir, "accuracy_vs_synth_seconds.png"))
