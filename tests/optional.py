"""The test suite's optional packages: required where lfjax installs them.

`pytest.importorskip` lets an environment without torch "pass" with the
parity, MLM and fine-tuning tests never run. Here a package is required
whenever pyproject.toml installs it for this interpreter (a core dependency,
or `lfjax[dev]` under its environment markers: torch and transformers on
Python 3.11): a missing import then fails the run. Only where the markers
leave a package out (Python 3.12: no CPU torch build to install quickly) do
its tests skip, and the reason says why.
"""

import importlib
import pathlib
import sys
import tomllib

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
# Modules whose distribution arrives as another one's dependency.
PROVIDED_BY = {"tokenizers": "transformers", "pyarrow": "datasets"}


def _declared():
  """{distribution: requirement} that `pip install -e ".[dev]"` installs on
  this interpreter."""
  project = tomllib.loads(PYPROJECT.read_text())["project"]
  env = dict(default_environment(), extra="dev")
  out = {}
  for line in (project["dependencies"]
               + project["optional-dependencies"]["dev"]):
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate(env):
      out[req.name.lower().replace("_", "-")] = req
  return out


def installed_for_this_python(module):
  """Whether pyproject.toml installs `module` here (see the module doc)."""
  dist = PROVIDED_BY.get(module, module).lower().replace("_", "-")
  return dist in _declared()


def need(module):
  """Imports and returns `module`. If it is missing: a failure (at
  collection, for a module-level call) where pyproject.toml installs it for
  this Python; else a skip of the calling test or module naming the reason.
  """
  try:
    return importlib.import_module(module)
  except ImportError as e:
    version = ".".join(map(str, sys.version_info[:2]))
    if installed_for_this_python(module):
      pytest.fail(f"{module} is not importable ({e}), but lfjax[dev] "
                  f"installs it on Python {version}: run pip install -e "
                  "\".[dev]\" (its tests would otherwise pass unrun)",
                  pytrace=False)
    # pytest reports a skip at this line: the reason names the caller.
    frame = sys._getframe(1)
    caller = frame.f_globals.get("__name__", "?") + (
        "" if frame.f_code.co_name == "<module>"
        else "::" + frame.f_code.co_name)
    pytest.skip(f"{caller}: {module} is not installed: lfjax[dev] leaves it "
                f"out on Python {version} (torch and transformers, the "
                "parity oracles, are installed on Python 3.11 only)",
                allow_module_level=True)


def need_plan_plugin():
  """The jax-cuda12-plugin version (lfjax.plan.require_plugin), for the
  deviceless GPU compilations: skipped without the `plan` extra, except
  under LFJAX_TEST_PLAN (CI's plan step), where a missing plugin fails."""
  import os
  from lfjax import extras
  from lfjax import plan
  try:
    return plan.require_plugin()
  except extras.MissingPackage as e:
    if os.environ.get("LFJAX_TEST_PLAN", "") not in ("", "0"):
      pytest.fail(f"LFJAX_TEST_PLAN is set but {e}", pytrace=False)
    pytest.skip(f"needs the plan extra: {e}")


def need_libtpu():
  """The libtpu version (lfjax.plan_tpu.require_libtpu), for deviceless TPU
  compilations: skipped without the `tpu` extra, except under
  LFJAX_TEST_TPU (CI's TPU step), where a missing libtpu fails."""
  import os
  from lfjax import extras
  from lfjax import plan_tpu
  try:
    return plan_tpu.require_libtpu()
  except extras.MissingPackage as e:
    if os.environ.get("LFJAX_TEST_TPU", "") not in ("", "0"):
      pytest.fail(f"LFJAX_TEST_TPU is set but {e}", pytrace=False)
    pytest.skip(f"needs the tpu extra: {e}")
