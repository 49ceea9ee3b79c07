"""impl="auto" and "pallas" choose by the platform a program is traced for
(api.resolve_impl): on a TPU, splash when it serves the call and the
Mosaic kernel when it does not; elsewhere the chunked path and the Triton
kernel. Checked in the lowered program (the custom calls' kernel names),
for a TPU without one (an abstract mesh with a TPU abstract device, as the
deviceless compiles use) and for this CPU."""

import re

import jax
import jax.numpy as jnp
import pytest

from lfjax.attention import windowed_attention
from lfjax.kernels import lowering


def _tpu_mesh():
  return jax.sharding.AbstractMesh(
      (1,), ("x",), abstract_device=jax.sharding.AbstractDevice(
          device_kind="TPU v5 lite", num_cores=None, platform="tpu"))


def _kernels(impl, for_tpu, **kw):
  """The TPU kernels' names in the lowered forward (sorted, unique)."""
  b, n, h, d = 1, 256, 2, 64
  av = jax.ShapeDtypeStruct((b, n, h, d), jnp.bfloat16)
  fn = jax.jit(lambda q, k, v: windowed_attention(q, k, v, window=32,
                                                  impl=impl, **kw))
  if for_tpu:
    with jax.sharding.use_abstract_mesh(_tpu_mesh()):
      text = fn.trace(av, av, av).lower(
          lowering_platforms=("tpu",)).as_text()
  else:
    text = fn.lower(av, av, av).as_text()
  calls = [l for l in text.splitlines() if "tpu_custom_call" in l]
  return sorted({re.search(r'kernel_name = "(\w+)"', l).group(1)
                 for l in calls})


DROPOUT = dict(dropout_rate=0.1, dropout_key=jax.random.key(0))


@pytest.mark.parametrize("impl,kw,expected", [
    ("auto", {}, ["splash_mha_fwd_segmented_no_residuals"]),
    # Splash has no dropout and no relative term: the Mosaic kernel.
    ("auto", DROPOUT, ["lfjax_tpu_band_fwd"]),
    # The Triton kernel does not lower for a TPU; its Pallas peer does.
    ("pallas", {}, ["lfjax_tpu_band_fwd"]),
    ("chunked", {}, []),
    ("splash", {}, ["splash_mha_fwd_segmented_no_residuals"]),
])
def test_a_trace_for_a_tpu_picks_tpu_kernels(impl, kw, expected):
  assert _kernels(impl, True, **kw) == expected


def test_auto_with_the_relative_term_on_a_tpu_is_the_mosaic_kernel():
  b, n, h, d = 1, 256, 2, 64
  av = jax.ShapeDtypeStruct((b, n, h, d), jnp.bfloat16)
  rq = jax.ShapeDtypeStruct((b, n, h, 16), jnp.bfloat16)
  table = jax.ShapeDtypeStruct((33, h, 16), jnp.bfloat16)
  fn = jax.jit(lambda q, k, v, r, t: windowed_attention(
      q, k, v, window=32, causal=True, rel_query=r, rel_table=t))
  with jax.sharding.use_abstract_mesh(_tpu_mesh()):
    text = fn.trace(av, av, av, rq, table).lower(
        lowering_platforms=("tpu",)).as_text()
  assert "lfjax_tpu_band_fwd" in text and "splash" not in text


@pytest.mark.parametrize("kw", [{}, DROPOUT])
def test_auto_on_this_cpu_is_the_chunked_path(kw):
  assert lowering.traced_platform() == "cpu"
  assert _kernels("auto", False, **kw) == []
