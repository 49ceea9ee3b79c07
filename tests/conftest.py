"""Shared fixtures, and a compilation cache shared within one test run."""

import os
import shutil
import sys
import tempfile

import jax
import pytest

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
  """One persistent compilation cache for the whole run, shared by the
  pytest-xdist workers (they inherit the environment of the process that
  starts them): programs compiled again with the same shapes (each trainer
  run's step functions, models built in both workers) load instead of
  recompiling. A fresh temporary directory per run, removed at the end,
  unless JAX_COMPILATION_CACHE_DIR is already set."""
  if not os.environ.get(_CACHE_ENV):
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="lfjax-jax-cache-")
    config._lfjax_cache_dir = os.environ[_CACHE_ENV]
  jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
  # Only programs worth keeping: most of the suite's ~3000 compiles are tiny.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_unconfigure(config):
  path = getattr(config, "_lfjax_cache_dir", None)
  if path:
    shutil.rmtree(path, ignore_errors=True)
    os.environ.pop(_CACHE_ENV, None)


# The TPU kernels' tests (splash, mosaic): Pallas interpret mode on CPU.
# lfjax[tpu] installs on Python >= 3.12 only (jax 0.11+), so they run
# there (CI's 3.12 leg runs every one of them) and are skipped under
# Python 3.11's jax 0.10, which no TPU user has, unless asked for.
TPU_KERNEL_WORDS = ("mosaic", "splash")
TPU_KERNELS_HERE = (sys.version_info >= (3, 12)
                    or os.environ.get("LFJAX_TEST_TPU_KERNELS", "")
                    not in ("", "0"))


def pytest_collection_modifyitems(config, items):
  if TPU_KERNELS_HERE:
    return
  skip = pytest.mark.skip(
      reason="the TPU kernels (splash, mosaic) are tested on Python >= 3.12, "
      "where lfjax[tpu] installs (CI's 3.12 leg); LFJAX_TEST_TPU_KERNELS=1 "
      "runs them here")
  for item in items:
    if any(w in item.nodeid.lower() for w in TPU_KERNEL_WORDS):
      item.add_marker(skip)


@pytest.fixture
def fast_compiles():
  """For tests that compile many tiny programs, where XLA's optimisations
  cost more than they save (flax's lm1b test does the same)."""
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)
