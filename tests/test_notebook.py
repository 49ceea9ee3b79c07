"""experiments/explore.ipynb executes top to bottom (so it cannot rot), and
its saved copy keeps outputs (so a reader sees the pictures unexecuted).

Executed with nbclient in the current Python (the kernel is this venv's
ipykernel), from experiments/ as a reader would run it. Trains the tiny
char-LM for a few steps when no finished run is present (about a minute of
the notebook's time)."""

import base64
import pathlib
import sys

from tests import optional

nbformat = optional.need("nbformat")
nbclient = optional.need("nbclient")
optional.need("ipykernel")  # the kernel that runs the notebook

NOTEBOOK = (pathlib.Path(__file__).resolve().parents[1] / "experiments"
            / "explore.ipynb")


def images(nb):
  return [out["data"]["image/png"] for cell in nb.cells
          if cell.cell_type == "code" for out in cell.get("outputs", ())
          if "image/png" in out.get("data", {})]


def test_saved_notebook_keeps_its_pictures():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  pngs = images(nb)
  # Figure 2 patterns, per-head dilation, memory, heatmap, curves.
  assert len(pngs) >= 5, len(pngs)
  assert all(base64.b64decode(p)[:4] == b"\x89PNG" for p in pngs)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.execution_count is not None, cell.source[:60]
      assert not [o for o in cell.outputs if o.output_type == "error"]


def test_notebook_executes(monkeypatch, tmp_path):
  # A finished run elsewhere on the machine would change what part 4
  # does; the test always trains its own few steps.
  monkeypatch.setenv("LFJAX_RUN", str(tmp_path / "no-run"))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  # The kernel runs in this interpreter, whatever "python3" names elsewhere.
  client.kernel_manager_class = _this_python_kernel()
  client.execute()
  texts = "\n".join(
      out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
      for out in cell.outputs)
  assert "max |dense - chunked|" in texts
  assert len(images(nb)) >= 5


def _this_python_kernel():
  from jupyter_client.manager import KernelManager

  class ThisPython(KernelManager):

    def format_kernel_cmd(self, extra_arguments=None):
      cmd = super().format_kernel_cmd(extra_arguments)
      return [sys.executable] + cmd[1:]

  return ThisPython
