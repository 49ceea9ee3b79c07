"""lfjax installs like a library: one top-level name of its own, nothing in
the repository root that shadows another package, declared dependencies.

A top-level `kernels` package here once shadowed Hugging Face's `kernels`
(a dependency of transformers >= 5.25) and broke every transformers import,
from the repo root and, through the wheel, in site-packages. .ci/run also
installs the built wheel beside the newest transformers and checks it
(.ci/check_install.py); these tests guard the editable install and the
checkout itself.
"""

import importlib.metadata
import pathlib
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]


def root_modules():
  """Names `import NAME` finds in the repository root when it is on
  sys.path (`python -m ...` and pytest put it there): regular packages and
  modules. A folder without __init__.py is a namespace portion, which any
  installed package of the same name outranks, so it shadows nothing."""
  names = set()
  for p in ROOT.iterdir():
    if p.name.startswith("."):
      continue
    if p.is_dir() and (p / "__init__.py").exists():
      names.add(p.name)
    elif p.suffix == ".py" or p.suffix == ".so":
      names.add(p.name.split(".")[0])
  return names


def test_the_root_shadows_no_installed_package():
  owners = importlib.metadata.packages_distributions()
  # `tests`: every project's test suite has the name; a distribution that
  # installs a top-level `tests` does so by mistake, and nothing imports it.
  clashes = {name: owners[name]
             for name in root_modules() - {"lfjax", "tests"}
             if name in owners}
  assert not clashes, (f"modules in {ROOT} shadow installed packages' "
                       f"top-level names: {clashes}")


def test_the_project_installs_one_top_level_name():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())
  include = project["tool"]["setuptools"]["packages"]["find"]["include"]
  assert include == ["lfjax*"]
  assert root_modules() <= {"lfjax", "tests"}, root_modules()


def test_dependencies_are_declared_where_pip_reads_them():
  required = {Requirement(r).name.lower().replace("_", "-")
              for r in importlib.metadata.requires("lfjax")
              if "extra ==" not in r}
  assert {"jax", "flax", "optax", "orbax-checkpoint",
          "ml-collections"} <= required, required


def test_hf_kernels_is_hugging_faces_from_the_repo_root():
  """Where transformers brought Hugging Face's `kernels` (Python 3.11's
  lfjax[dev]), `import kernels` from the root finds it, and lfjax's kernel
  imports under its own name. A subprocess: `python -c` puts the current
  folder first on sys.path, as a user's shell in the checkout would."""
  code = ("import importlib.metadata, importlib.util\n"
          "spec = importlib.util.find_spec('kernels')\n"
          "if spec is not None:\n"
          "  from kernels import CUDAProperties\n"
          "  dist = importlib.metadata.distribution('kernels')\n"
          "  print('kernels', spec.origin)\n"
          "  print('hf', dist.locate_file('kernels/__init__.py'))\n"
          "from lfjax.kernels import band_attention\n"
          "print('lfjax', band_attention.__file__)\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  found = dict(line.split(" ", 1) for line in out.stdout.splitlines())
  assert pathlib.Path(found["lfjax"]).is_relative_to(ROOT / "lfjax")
  if "kernels" in found:
    assert (pathlib.Path(found["kernels"]).resolve()
            == pathlib.Path(found["hf"]).resolve()), found
