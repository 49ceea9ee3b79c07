"""The Pallas band kernel against its jnp reference, and impl="pallas"
against the brute-force reference.

The same tests run the compiled kernel on a GPU and Pallas interpret mode on
CPU (the kernel picks by the platform it is lowered for); shapes are small
because interpret mode is slow. Lowering for CUDA is checked without a GPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import band_attention as kernel
from kernels import lowering
from lfjax.attention import windowed_attention
from tests.reference import reference_attention
from tests.test_attention import check_close, random_case, to_jnp

# (x, n, d, dv, window, causal, blocks): windows smaller and larger than a
# block, lengths that are not block multiples, values of another width.
CASES = [
    (2, 37, 8, 8, 5, False, (16, 16)),
    (3, 70, 16, 12, 20, True, (16, 32)),
    (1, 50, 8, 8, 100, False, (32, 16)),
    (2, 33, 8, 20, 0, False, (16, 16)),
    (2, 64, 8, 8, 3, True, (16, 16)),
]


def _case(x, n, d, dv, seed, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q, k = (jnp.asarray(rng.standard_normal((x, n, d)), dtype) for _ in "qk")
  v = jnp.asarray(rng.standard_normal((x, n, dv)), dtype)
  kvalid = rng.random((x, n)) > 0.25
  kvalid[0, : n // 3] = False  # rows whose whole window is padding
  if x > 1:
    kvalid[-1] = False  # a fully padded row
  return q, k, v, jnp.asarray(kvalid)


class TestBandKernel:
  """Kernel vs band_reference: outputs, lse, and gradients with cotangents
  on both outputs."""

  @pytest.mark.parametrize("case", range(len(CASES)))
  def test_matches_reference(self, case):
    x, n, d, dv, window, causal, (bq, bk) = CASES[case]
    q, k, v, kvalid = _case(x, n, d, dv, case)
    blocks = kernel.BlockSizes(block_q=bq, block_k=bk)
    kw = dict(window=window, causal=causal, scale=0.35)
    ours = lambda q, k, v: kernel.band_attention(q, k, v, kvalid,
                                                 block_sizes=blocks, **kw)
    ref = lambda q, k, v: kernel.band_reference(q, k, v, kvalid, **kw)
    out, lse = jax.jit(ours)(q, k, v)
    want_out, want_lse = ref(q, k, v)
    check_close(out, want_out)
    check_close(lse, want_lse, atol=1e-5, rtol=1e-6)
    rng = np.random.default_rng(case + 100)
    co = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    cl = jnp.asarray(rng.standard_normal(lse.shape), jnp.float32)

    def grads(fn):
      def loss(q, k, v):
        o, l = fn(q, k, v)
        # Rows with no key have a constant lse: no gradient either way.
        return jnp.sum(o * co) + jnp.sum(jnp.where(l < -1e30, 0.0, l) * cl)
      return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    for got, want in zip(grads(ours), grads(ref)):
      check_close(got, want, atol=5e-5, rtol=1e-4)

  @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
  def test_half_precision(self, dtype):
    q, k, v, kvalid = _case(2, 45, 16, 16, 7, dtype)
    kw = dict(window=9, causal=False, scale=0.25)
    out, _ = kernel.band_attention(q, k, v, kvalid, **kw)
    want, _ = kernel.band_reference(*(a.astype(jnp.float32)
                                      for a in (q, k, v)), kvalid, **kw)
    assert out.dtype == jnp.float32 and np.isfinite(out).all()
    check_close(out, want, atol=3e-2, rtol=3e-2)

  def test_block_sizes_are_checked(self):
    q, k, v, kvalid = _case(1, 8, 8, 8, 0)
    with pytest.raises(ValueError, match=r"block_sizes.block_q: expected a "
                                         r"power of two >= 16"):
      kernel.band_attention(q, k, v, kvalid, window=2, causal=False,
                            scale=1.0, block_sizes=kernel.BlockSizes(24, 16))


# Seeds picked for mixed dilations with global projections, causal with
# padding, narrower values and many global tokens.
@pytest.mark.parametrize("seed", [14, 37, 41, 43, 124, 147])
def test_windowed_attention_pallas_matches_reference(seed):
  """Dilation classes, global keys (merged by lse) and global rows."""
  args, kwargs = random_case(seed)
  args = tuple(map(jnp.asarray, args))
  kw = to_jnp(kwargs)
  gqkv = kw.pop("global_qkv")
  cot = jnp.asarray(np.random.default_rng(seed).standard_normal(
      args[2].shape), jnp.float32)

  def grads(fn):
    loss = lambda q, k, v, g: jnp.sum(fn(q, k, v, g) * cot)
    return jax.grad(loss, argnums=(0, 1, 2, 3))(*args, gqkv)
  ours = lambda q, k, v, g: windowed_attention(q, k, v, global_qkv=g,
                                               impl="pallas", **kw)
  ref = lambda q, k, v, g: reference_attention(q, k, v, global_qkv=g, **kw)
  check_close(ours(*args, gqkv), ref(*args, gqkv))
  for got, want in zip(jax.tree.leaves(grads(ours)),
                       jax.tree.leaves(grads(ref))):
    check_close(got, want, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_lowers_for_cuda(dtype):
  """Forward and backward of impl="pallas" lower to Triton kernels for CUDA
  on this CPU-only machine (dilated heads, global tokens, causal)."""
  b, n, h, d = 2, 300, 4, 64
  qkv = [jax.ShapeDtypeStruct((b, n, h, d), dtype)] * 3
  mask = jax.ShapeDtypeStruct((b, n), jnp.bool_)

  def fwd(q, k, v, key_mask, global_mask):
    return windowed_attention(q, k, v, window=32, dilation=[1, 1, 2, 3],
                              key_mask=key_mask, global_mask=global_mask,
                              max_global=4, impl="pallas")

  def bwd(q, k, v, key_mask, global_mask):
    return jax.grad(lambda q, k, v: jnp.sum(fwd(q, k, v, key_mask,
                                                global_mask)
                                            .astype(jnp.float32)),
                    argnums=(0, 1, 2))(q, k, v)

  def causal(q, k, v):
    return windowed_attention(q, k, v, window=64, causal=True, impl="pallas")

  exp = lowering.export_for_cuda(fwd, *qkv, mask, mask)
  # Three dilation classes, one band kernel each.
  assert lowering.count_kernels(exp, "lfjax_band_fwd") == 3
  exp = lowering.export_for_cuda(bwd, *qkv, mask, mask)
  for name in ("lfjax_band_fwd", "lfjax_band_dq", "lfjax_band_dkv"):
    assert lowering.count_kernels(exp, name) == 3, name
  exp = lowering.export_for_cuda(causal, *qkv)
  assert lowering.count_kernels(exp, "lfjax_band_fwd") == 1
