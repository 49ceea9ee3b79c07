"""Shared fixtures."""

import jax
import pytest


@pytest.fixture
def fast_compiles():
  """For tests that compile many tiny programs, where XLA's optimisations
  cost more than they save (flax's lm1b test does the same)."""
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)
