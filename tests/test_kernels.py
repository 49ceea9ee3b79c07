"""The Pallas band kernels against their jnp reference, and impl="pallas"
and impl="mosaic" against the brute-force reference.

Two kernels, one contract, one reference (band_attention.band_reference):
the Triton kernel (lfjax.kernels.band_attention, GPUs) and the Mosaic one
(lfjax.kernels.tpu_band_attention, TPUs); the kernel tests are parametrized
by `impl`, "triton" or "mosaic". The same tests run a compiled kernel on
its accelerator and Pallas interpret mode on CPU (a kernel picks by the
platform it is lowered for); shapes are small because interpret mode is
slow. Lowering for CUDA is checked without a GPU (for TPUs:
tests/test_kernel_compile.py's TPU leg).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfjax.kernels import band_attention as kernel
from lfjax.kernels import lowering
from lfjax.kernels import tpu_band_attention as tpu_kernel
from lfjax.attention import windowed_attention
from lfjax.attention.pallas import band_with_global_keys
from tests.reference import reference_attention
from tests.test_attention import check_close, grads, random_case, to_jnp

# (x, n, d, dv, window, causal, blocks, rel): windows smaller and larger than
# a block, lengths that are not block multiples, values of another width;
# rel None or (Dr, spare table rows beyond the band on each side).
CASES = [
    (2, 37, 8, 8, 5, False, (16, 16), (8, 0)),
    (3, 70, 16, 12, 20, True, (16, 32), (8, 3)),  # Dr != D, a longer table
    (1, 50, 8, 8, 100, False, (32, 16), (8, 0)),  # window >= seq
    (2, 33, 8, 20, 0, False, (16, 16), None),
    (2, 64, 8, 8, 3, True, (16, 16), None),
    (2, 31, 8, 8, 0, True, (16, 16), (8, 0)),  # window 0 with rel, prime n
]


KERNELS = {"triton": kernel, "mosaic": tpu_kernel}


def _blocks(impl, bq, bk, rel=False):
  """The kernel's BlockSizes for a case's (block_q, block_k); the Mosaic
  kernel's relative term takes square blocks (block_q both ways)."""
  if impl == "mosaic" and rel:
    bk = bq
  return KERNELS[impl].BlockSizes(block_q=bq, block_k=bk)


def _case(x, n, d, dv, seed, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q, k = (jnp.asarray(rng.standard_normal((x, n, d)), dtype) for _ in "qk")
  v = jnp.asarray(rng.standard_normal((x, n, dv)), dtype)
  kvalid = rng.random((x, n)) > 0.25
  kvalid[0, : n // 3] = False  # rows whose whole window is padding
  if x > 1:
    kvalid[-1] = False  # a fully padded row
  return q, k, v, jnp.asarray(kvalid)


def _rel_case(x, n, dr, window, causal, spare, seed, dtype=jnp.float32):
  """(rel_query, rel_table, rel_min) covering the distances the band can
  reach (-min(right, n-1) .. min(window, n-1)) and `spare` rows more on
  each side."""
  rng = np.random.default_rng(seed + 1000)
  rel_min = -(0 if causal else min(window, n - 1)) - spare
  rows = min(window, n - 1) + spare - rel_min + 1
  rq = jnp.asarray(rng.standard_normal((x, n, dr)), dtype)
  table = jnp.asarray(rng.standard_normal((x, rows, dr)), dtype)
  return rq, table, rel_min


def _rel_kw(rel):
  if rel is None:
    return {}
  rq, table, rel_min = rel
  return dict(rel_query_XxNxDr=rq, rel_table_XxRxDr=table, rel_min=rel_min)


def _grads(fn, args, co, cl):
  """Gradients of <out, co> + <lse, cl> (lse of rows with no key dropped:
  it is a constant) with respect to every argument."""
  def loss(*a):
    o, l = fn(*a)
    return jnp.sum(o * co) + jnp.sum(jnp.where(l < -1e30, 0.0, l) * cl)
  return jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args)


@pytest.mark.parametrize("impl", list(KERNELS))
class TestBandKernel:
  """Kernel vs band_reference: outputs, lse, and gradients with cotangents
  on both outputs, for each kernel."""

  @pytest.mark.parametrize("case", range(len(CASES)))
  def test_matches_reference(self, case, impl):
    x, n, d, dv, window, causal, (bq, bk), rel = CASES[case]
    q, k, v, kvalid = _case(x, n, d, dv, case)
    args = (q, k, v)
    if rel is not None:
      rq, table, rel_min = _rel_case(x, n, rel[0], window, causal, rel[1],
                                     case)
      args += (rq, table)
    blocks = _blocks(impl, bq, bk, rel is not None)
    kw = dict(window=window, causal=causal, scale=0.35)
    rel_of = lambda a: None if rel is None else (a[3], a[4], rel_min)
    ours = lambda *a: KERNELS[impl].band_attention(
        *a[:3], kvalid, block_sizes=blocks, **kw, **_rel_kw(rel_of(a)))
    ref = lambda *a: kernel.band_reference(*a[:3], kvalid, **kw,
                                           **_rel_kw(rel_of(a)))
    out, lse = jax.jit(ours)(*args)
    want_out, want_lse = ref(*args)
    check_close(out, want_out)
    check_close(lse, want_lse, atol=1e-5, rtol=1e-6)
    # Rows whose every key is padding: exactly 0, lse NEG_INF (finite).
    empty = ~np.asarray(kvalid).any(-1)
    assert (np.asarray(out)[empty] == 0).all()
    assert (np.asarray(lse)[empty] == kernel.NEG_INF).all()
    rng = np.random.default_rng(case + 100)
    co = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    cl = jnp.asarray(rng.standard_normal(lse.shape), jnp.float32)
    for got, want in zip(_grads(ours, args, co, cl),
                         _grads(ref, args, co, cl)):
      check_close(got, want, atol=5e-5, rtol=1e-4)

  @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
  def test_half_precision(self, dtype, impl):
    """bfloat16 with a relative term, float16 without."""
    q, k, v, kvalid = _case(2, 45, 16, 16, 7, dtype)
    kw = dict(window=9, causal=False, scale=0.25)
    rel = None
    if dtype == jnp.bfloat16:
      rel = _rel_case(2, 45, 16, 9, False, 0, 7, dtype)
    out, _ = KERNELS[impl].band_attention(q, k, v, kvalid, **kw,
                                          **_rel_kw(rel))
    f32 = lambda a: a.astype(jnp.float32)
    if rel is not None:
      rel = (f32(rel[0]), f32(rel[1]), rel[2])
    want, _ = kernel.band_reference(*map(f32, (q, k, v)), kvalid, **kw,
                                    **_rel_kw(rel))
    assert out.dtype == jnp.float32 and np.isfinite(out).all()
    check_close(out, want, atol=3e-2, rtol=3e-2)

  def test_rel_arguments_are_checked(self, impl):
    q, k, v, kvalid = _case(1, 20, 8, 8, 0)
    rq, table, _ = _rel_case(1, 20, 8, 4, False, 0, 0)
    kw = dict(window=4, causal=False, scale=1.0)
    band_attention = KERNELS[impl].band_attention
    with pytest.raises(ValueError, match=r"rel_table with rel_min: expected "
                                         r"rows for distances -4\.\.4"):
      band_attention(q, k, v, kvalid, rel_query_XxNxDr=rq,
                     rel_table_XxRxDr=table, rel_min=-3, **kw)
    with pytest.raises(ValueError, match="expected both or neither"):
      band_attention(q, k, v, kvalid, rel_query_XxNxDr=rq, **kw)


@pytest.mark.parametrize("blocks,message", [
      (kernel.BlockSizes(24, 16), r"block_sizes.block_q: expected a power "
                                  r"of two >= 16 .*got 24"),
      (kernel.BlockSizes(16.0, 16), r"block_sizes.block_q: .*got 16.0"),
      (kernel.BlockSizes(16, 8), r"block_sizes.block_k: .*got 8"),
      (kernel.BlockSizes(16, 16, 3, 1), r"block_sizes.num_warps: expected a "
                                        r"power of two >= 1 .*got 3"),
      (kernel.BlockSizes(16, 16, 4, 0), r"block_sizes.num_stages: expected "
                                        r"an int >= 1 .*got 0"),
      ((16, 16, 4, 1), r"block_sizes: expected a BlockSizes.* got tuple")])
def test_block_sizes_are_checked(blocks, message):
  q, k, v, kvalid = _case(1, 8, 8, 8, 0)
  with pytest.raises(ValueError, match=message):
    kernel.band_attention(q, k, v, kvalid, window=2, causal=False,
                          scale=1.0, block_sizes=blocks)


@pytest.mark.parametrize("blocks,rel,message", [
    (tpu_kernel.BlockSizes(12, 16), False, r"block_sizes.block_q: expected "
                                           r"a multiple of 8 .*got 12"),
    (tpu_kernel.BlockSizes(16, 4), False, r"block_sizes.block_k: .*got 4"),
    (tpu_kernel.BlockSizes(16, 32), True, r"block_sizes: expected block_q == "
                                          r"block_k with the relative term"),
    (kernel.BlockSizes(16, 16), False, r"block_sizes: expected a tpu_band_"
                                       r"attention.BlockSizes.* got "
                                       r"BlockSizes")])
def test_mosaic_block_sizes_are_checked(blocks, rel, message):
  q, k, v, kvalid = _case(1, 8, 8, 8, 0)
  rel_kw = _rel_kw(_rel_case(1, 8, 8, 2, False, 0, 0)) if rel else {}
  with pytest.raises(ValueError, match=message):
    tpu_kernel.band_attention(q, k, v, kvalid, window=2, causal=False,
                              scale=1.0, block_sizes=blocks, **rel_kw)


# (x, n, d, dv, g, window, causal, dil, rate, blocks): global keys with a
# padded slot and more slots than a key block (two global blocks), dropout
# at dilation 2 and 3 (positions p * dil + residue), causal, window 0.
DROP_CASES = [
    (3, 29, 8, 8, 3, 4, False, 2, 0.3, (16, 16)),
    (2, 37, 8, 12, 20, 6, False, 1, 0.0, (16, 16)),
    (2, 45, 16, 16, 0, 7, True, 3, 0.5, (32, 16)),
    (2, 20, 8, 8, 2, 0, False, 1, 0.2, (16, 16)),
]


@pytest.mark.parametrize("impl", list(KERNELS))
@pytest.mark.parametrize("case", range(len(DROP_CASES)))
def test_kernel_dropout_and_global_keys_match_chunked_core(case, impl):
  """The kernel with global keys and dropout against the chunked path's
  blocked jnp core (lfjax.attention.band, an independent implementation of
  the same contract): outputs, lse and the gradients of q, k, v, gk, gv with
  cotangents on out and lse. Rows with no band key but a global key, fully
  padded rows, padded global slots."""
  from lfjax.attention import band
  x, n, d, dv, g, window, causal, dil, rate, (bq, bk) = DROP_CASES[case]
  q, k, v, kvalid = _case(x, n, d, dv, 200 + case)
  rng = np.random.default_rng(300 + case)
  args = (q, k, v)
  kw = dict(window=window, causal=causal, scale=0.3)
  if g:
    gk = jnp.asarray(rng.standard_normal((x, g, d)), jnp.float32)
    gv = jnp.asarray(rng.standard_normal((x, g, dv)), jnp.float32)
    gvalid = rng.random((x, g)) > 0.3
    gvalid[0, :] = True  # row 0's padded window: only global keys
    if x > 2:
      gvalid[1, :] = False  # no global key at all
    args += (gk, gv)
  if rate:
    seeds = jnp.asarray(rng.integers(0, 2 ** 32, x, dtype=np.uint32))
    residues = jnp.asarray(rng.integers(0, dil, x), jnp.int32)
    gpos = jnp.asarray(rng.integers(0, n * dil, (x, g)), jnp.int32)
    kw["dropout"] = (rate, dil, seeds, residues, gpos if g else None)
  blocks = _blocks(impl, bq, bk)
  glob = lambda a: dict(gk_XxGxD=a[3], gv_XxGxDv=a[4],
                        gvalid_XxG=jnp.asarray(gvalid)) if g else {}
  ours = lambda *a: KERNELS[impl].band_attention(
      *a[:3], kvalid, block_sizes=blocks, **kw, **glob(a))
  ref = lambda *a: band.band_attention(*a[:3], kvalid, **kw, **glob(a))
  out, lse = jax.jit(ours)(*args)
  want_out, want_lse = ref(*args)
  check_close(out, want_out)
  check_close(lse, want_lse, atol=1e-5, rtol=1e-6)
  if rate:  # the multiplier does act: without it the output differs
    plain = dict(kw, dropout=None)
    assert np.abs(np.asarray(band.band_attention(
        *args[:3], kvalid, **plain, **glob(args))[0]) - out).max() > 1e-2
  co = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
  cl = jnp.asarray(rng.standard_normal(lse.shape), jnp.float32)
  for got, want in zip(_grads(ours, args, co, cl),
                       _grads(ref, args, co, cl)):
    check_close(got, want, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", list(KERNELS))
def test_kernel_bfloat16_global_keys_and_dropout(impl):
  """bf16 q, k, v, gk, gv go into the kernel as they are (float32
  accumulation): output and gradients near the chunked core's on the same
  values in float32, gradients in bf16."""
  from lfjax.attention import band
  x, n, d, g = 2, 33, 16, 3
  q, k, v, kvalid = _case(x, n, d, d, 11, jnp.bfloat16)
  rng = np.random.default_rng(12)
  gk, gv = (jnp.asarray(rng.standard_normal((x, g, d)), jnp.bfloat16)
            for _ in "kv")
  gvalid = jnp.asarray([[True, False, True], [True, True, True]])
  drop = (0.2, 2, jnp.asarray([7, 9], jnp.uint32),
          jnp.asarray([0, 1], jnp.int32), jnp.asarray([[0, 5, 60]] * 2))
  kw = dict(window=5, causal=False, scale=0.25, dropout=drop,
            gvalid_XxG=gvalid)
  ours = lambda q, k, v, gk, gv: KERNELS[impl].band_attention(
      q, k, v, kvalid, gk_XxGxD=gk, gv_XxGxDv=gv, **kw)
  ref = lambda q, k, v, gk, gv: band.band_attention(
      q, k, v, kvalid, gk_XxGxD=gk, gv_XxGxDv=gv, **kw)
  args = (q, k, v, gk, gv)
  f32 = [a.astype(jnp.float32) for a in args]
  check_close(jax.jit(ours)(*args)[0], ref(*f32)[0], atol=3e-2, rtol=3e-2)
  co = jnp.asarray(rng.standard_normal((x, n, d)), jnp.float32)
  cl = jnp.zeros((x, n), jnp.float32)
  for got, want in zip(_grads(ours, args, co, cl), _grads(ref, f32, co, cl)):
    assert got.dtype == jnp.bfloat16
    check_close(got, want, atol=6e-2, rtol=6e-2)


def _global_keys_reference(q, k, v, kvalid, rq, table, gk, gv, gvalid, *,
                           rel_min, window, causal, scale):
  """One softmax over the band keys (with the relative term) and the global
  keys (without), written from the contract: (out, lse)."""
  n, nrel = q.shape[1], table.shape[1]
  a, t = np.arange(n)[:, None], np.arange(n)[None, :]
  band = (a - t <= window) & (a - t >= (0 if causal else -window))
  rel = jnp.einsum("xad,xatd->xat", rq,
                   table[:, np.clip(a - t - rel_min, 0, nrel - 1)])
  s = jnp.concatenate([jnp.einsum("xad,xtd->xat", q, k) + rel,
                       jnp.einsum("xad,xgd->xag", q, gk)], axis=-1) * scale
  ok = jnp.concatenate([band[None] & kvalid[:, None, :],
                        jnp.broadcast_to(gvalid[:, None, :],
                                         s.shape[:2] + gvalid.shape[1:])],
                       axis=-1)
  m = jnp.max(jnp.where(ok, s, -jnp.inf), axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.where(ok, jnp.exp(s - m), 0.0)
  l = p.sum(-1)
  out = jnp.einsum("xat,xtd->xad", p, jnp.concatenate([v, gv], axis=1))
  out = out / jnp.where(l == 0, 1.0, l)[..., None]
  lse = jnp.where(l == 0, kernel.NEG_INF,
                  m[..., 0] + jnp.log(jnp.maximum(l, 1e-30)))
  return out, lse


def test_band_with_global_keys_rel():
  """lfjax.attention.pallas.band_with_global_keys with a relative term:
  global keys (no relative term) merged by lse, against one softmax over
  all keys; gradients of q, k, v, rel_query, rel_table and the global keys.
  Without global keys it is the kernel alone."""
  x, n, d, g, window = 2, 29, 8, 3, 4
  q, k, v, kvalid = _case(x, n, d, d, 5)
  rq, table, rel_min = _rel_case(x, n, d, window, False, 1, 5)
  rng = np.random.default_rng(6)
  gk, gv = (jnp.asarray(rng.standard_normal((x, g, d)), jnp.float32)
            for _ in "kv")
  gvalid = jnp.asarray([[True, False, True], [False, False, False]])
  kw = dict(window=window, causal=False, scale=0.3)
  ours = lambda q, k, v, rq, table, gk, gv: band_with_global_keys(
      q, k, v, kvalid, gk_XxGxD=gk, gv_XxGxDv=gv, gvalid_XxG=gvalid,
      rel=(rq, table, rel_min), **kw)
  ref = lambda q, k, v, rq, table, gk, gv: _global_keys_reference(
      q, k, v, kvalid, rq, table, gk, gv, gvalid, rel_min=rel_min, **kw)
  args = (q, k, v, rq, table, gk, gv)
  out, lse = jax.jit(ours)(*args)
  want_out, want_lse = ref(*args)
  check_close(out, want_out)
  check_close(lse, want_lse, atol=1e-5, rtol=1e-6)
  co = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
  cl = jnp.asarray(rng.standard_normal(lse.shape), jnp.float32)
  for got, want in zip(_grads(ours, args, co, cl), _grads(ref, args, co, cl)):
    check_close(got, want, atol=5e-5, rtol=1e-4)
  # No global keys: the band alone.
  out, lse = band_with_global_keys(q, k, v, kvalid, rel=(rq, table, rel_min),
                                   **kw)
  want_out, want_lse = kernel.band_reference(
      q, k, v, kvalid, **kw, **_rel_kw((rq, table, rel_min)))
  check_close(out, want_out)
  check_close(lse, want_lse, atol=1e-5, rtol=1e-6)


# Seeds picked for mixed dilations with global projections, causal with
# padding, narrower values and many global tokens; the Mosaic kernel (slower
# in interpret mode) on one.
@pytest.mark.parametrize("seed,impl", [
    (s, "pallas") for s in (14, 37, 41, 43, 124, 147)] + [
        (s, "mosaic") for s in (14,)])
def test_windowed_attention_kernel_matches_reference(seed, impl):
  """Dilation classes, global keys (in the kernel's softmax) and global
  rows."""
  args, kwargs = random_case(seed)
  args = tuple(map(jnp.asarray, args))
  kw = to_jnp(kwargs)
  gqkv = kw.pop("global_qkv")
  cot = jnp.asarray(np.random.default_rng(seed).standard_normal(
      args[2].shape), jnp.float32)
  ours = lambda q, k, v, g: windowed_attention(q, k, v, global_qkv=g,
                                               impl=impl, **kw)
  ref = lambda q, k, v, g: reference_attention(q, k, v, global_qkv=g, **kw)
  check_close(ours(*args, gqkv), ref(*args, gqkv))
  for got, want in zip(jax.tree.leaves(grads(ours, args, gqkv, cot)),
                       jax.tree.leaves(grads(ref, args, gqkv, cot))):
    check_close(got, want, atol=5e-5, rtol=1e-4)


# Globals with their own projections and padding (5), causal with dilation
# per head (26), globals with padding and narrower values (41).
@pytest.mark.parametrize("seed,impl", [
    (s, "pallas") for s in (5, 26, 41)] + [(41, "mosaic")])
def test_windowed_attention_kernel_dropout_matches_chunked_and_reference(
    seed, impl):
  """impl="pallas" / "mosaic" with attention dropout drops exactly the entries
  impl="chunked" and the brute-force reference (its own numpy hash) drop:
  outputs and gradients (q, k, v, global projections) agree entry for
  entry."""
  args, kwargs = random_case(seed)
  args = tuple(map(jnp.asarray, args))
  kw = to_jnp(kwargs)
  gqkv = kw.pop("global_qkv")
  kw.update(dropout_rate=[0.1, 0.5][seed % 2], dropout_key=jax.random.key(seed))
  cot = jnp.asarray(np.random.default_rng(seed).standard_normal(
      args[2].shape), jnp.float32)

  run = lambda fn: (fn(*args, gqkv), grads(fn, args, gqkv, cot))
  kernel_impl = impl
  impl = lambda name: jax.jit(lambda q, k, v, g: windowed_attention(
      q, k, v, global_qkv=g, impl=name, **kw))
  out, got_grads = run(impl(kernel_impl))
  for want_out, want_grads in (run(impl("chunked")), run(
      lambda q, k, v, g: reference_attention(q, k, v, global_qkv=g, **kw))):
    check_close(out, want_out)
    for got, want in zip(jax.tree.leaves(got_grads),
                         jax.tree.leaves(want_grads)):
      check_close(got, want, atol=5e-5, rtol=1e-4)


# Globals with their own projections and padding, non-causal (5); causal
# with dilation per head (26).
@pytest.mark.parametrize("seed", [5, 26])
def test_windowed_attention_mosaic_rel_dropout_matches_dense(seed):
  """impl="mosaic" with the relative-position term and attention dropout
  against impl="dense" (the O(N^2) oracle, same dropout hash): outputs and
  the gradients of q, k, v, the global projections, rel_query and
  rel_table."""
  from tests.test_attention import with_rel
  args, kwargs = random_case(seed)
  args = tuple(map(jnp.asarray, args))
  rq, table = with_rel(args, kwargs, seed)
  kw = to_jnp(kwargs)
  gqkv = kw.pop("global_qkv")
  kw.update(dropout_rate=0.2, dropout_key=jax.random.key(seed))
  cot = jnp.asarray(np.random.default_rng(seed).standard_normal(
      args[2].shape), jnp.float32)
  attend = lambda impl: jax.jit(lambda q, k, v, g, r, t: windowed_attention(
      q, k, v, global_qkv=g, rel_query=r, rel_table=t, impl=impl, **kw))
  ours, ref = attend("mosaic"), attend("dense")
  operands = (*args, gqkv, rq, table)
  check_close(ours(*operands), ref(*operands))
  loss = lambda fn: lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * cot)
  argnums = tuple(range(6))
  got = jax.tree.leaves(jax.grad(loss(ours), argnums)(*operands))
  want = jax.tree.leaves(jax.grad(loss(ref), argnums)(*operands))
  assert len(got) == len(want)
  for g, w in zip(got, want):
    check_close(g, w, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_lowers_for_cuda(dtype):
  """Forward and backward of impl="pallas" lower to Triton kernels for CUDA
  on this CPU-only machine (dilated heads, global tokens inside the kernel,
  attention dropout's integer hash, causal)."""
  b, n, h, d = 2, 300, 4, 64
  qkv = [jax.ShapeDtypeStruct((b, n, h, d), dtype)] * 3
  mask = jax.ShapeDtypeStruct((b, n), jnp.bool_)

  def fwd(q, k, v, key_mask, global_mask):
    return windowed_attention(q, k, v, window=32, dilation=[1, 1, 2, 3],
                              key_mask=key_mask, global_mask=global_mask,
                              max_global=4, impl="pallas",
                              dropout_rate=0.1,
                              dropout_key=jax.random.key(0))

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
  for name in ("lfjax_band_fwd", "lfjax_band_dq", "lfjax_band_dkv",
               "lfjax_band_dglobal"):
    assert lowering.count_kernels(exp, name) == 3, name
  exp = lowering.export_for_cuda(causal, *qkv)
  assert lowering.count_kernels(exp, "lfjax_band_fwd") == 1


@pytest.mark.parametrize("variant", ["rel_dropout", "globals_dropout"])
def test_mosaic_lowers_for_tpu(variant):
  """Forward and backward of impl="mosaic" lower to Mosaic kernels for TPU
  on this CPU-only machine (jax.export; Mosaic's own compile, VMEM and
  tiling checks run in libtpu: the TPU compile leg): the char-LM's layer
  (causal, dilation per head, relative term, dropout) and the MLM's
  (globals, padding, dropout); fwd, dq, dkv per dilation group."""
  b, n, h, d = 1, 300, 4, 64
  bf16 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
  kw = dict(window=32, dilation=[1, 1, 2, 2], dropout_rate=0.1,
            dropout_key=jax.random.key(0), impl="mosaic")
  extra = [bf16(b, n, h, 16), bf16(65, h, 16)]
  if variant == "rel_dropout":
    attend = lambda q, k, v, rq, table: windowed_attention(
        q, k, v, causal=True, rel_query=rq, rel_table=table, **kw)
  else:
    extra = [jax.ShapeDtypeStruct((b, n), jnp.bool_)] * 2
    attend = lambda q, k, v, key_mask, global_mask: windowed_attention(
        q, k, v, key_mask=key_mask, global_mask=global_mask, max_global=4,
        **kw)

  def fwd_bwd(*args):
    loss = lambda *a: jnp.sum(attend(*a).astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1, 2))(*args)

  exp = jax.export.export(jax.jit(fwd_bwd), platforms=["tpu"])(
      *[bf16(b, n, h, d)] * 3, *extra)
  text = exp.mlir_module()
  assert text.count("tpu_custom_call") == 6
  for name in ("fwd", "dq", "dkv"):
    assert f"lfjax_tpu_band_{name}" in text, name


def _kernel_signatures(exported):
  """{kernel name: (operand types, result types)} of the Triton calls."""
  sigs = {}
  for line in exported.mlir_module().splitlines():
    if lowering.TRITON_TARGET not in line or "custom_call" not in line:
      continue
    name = re.search(r"lfjax_band_\w+", line).group(0)
    args, results = re.search(r":\s*\(([^()]*)\)\s*->\s*\(?([^()]*)\)?",
                              line[line.rindex("}"):]).groups()
    sigs[name] = (re.findall(r"tensor<[^>]*>", args),
                  re.findall(r"tensor<[^>]*>", results))
  return sigs


def test_rel_lowers_for_cuda():
  """Forward and backward of band_with_global_keys with a relative term
  lower to the four Triton kernels for CUDA, with q and k at head_dim
  width (64), and no operand or result holds a value per (row, distance):
  besides head_dim-wide and per-row arrays there are only the zero-padded
  table (and its float32 gradient) and each kernel's per-program skew slots
  [X, programs, block_q, W], O(N * block) whatever the window; the global
  keys (padded to 16 slots) come first, in bf16 as q, k, v."""
  x, n, d, g, window = 8, 300, 64, 4, 40
  bf16 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
  avals = [bf16(x, n, d)] * 3 + [bf16(x, n, d), bf16(x, 2 * window + 1, d),
                                 bf16(x, g, d), bf16(x, g, d)]
  kvalid = jax.ShapeDtypeStruct((x, n), jnp.bool_)
  gvalid = jax.ShapeDtypeStruct((x, g), jnp.bool_)

  def fwd_bwd(q, k, v, rq, table, gk, gv, kvalid, gvalid):
    def loss(*a):
      o, l = band_with_global_keys(
          *a[:3], kvalid, window=window, causal=False, scale=0.125,
          gk_XxGxD=a[5], gv_XxGxDv=a[6], gvalid_XxG=gvalid,
          rel=(a[3], a[4], -window))
      return jnp.sum(o) + jnp.sum(l)
    return jax.grad(loss, argnums=tuple(range(7)))(q, k, v, rq, table, gk, gv)

  exp = lowering.export_for_cuda(fwd_bwd, *avals, kvalid, gvalid)
  assert lowering.count_kernels(exp) == 4
  sigs = _kernel_signatures(exp)
  assert sorted(sigs) == ["lfjax_band_dglobal", "lfjax_band_dkv",
                          "lfjax_band_dq", "lfjax_band_fwd"]
  # Lengths pad to whole blocks of the relative term's block sizes.
  blocks = kernel.BlockSizes.relative()
  bq, bk = blocks.block_q, blocks.block_k
  step = max(bq, bk)
  npad, r = -(-n // step) * step, 2 * window + 1
  w = 1 << (bq + bk - 2).bit_length()  # pow2 >= bq + bk - 1
  qkv = f"tensor<{x}x{npad}x{d}xbf16>"
  glob = [f"tensor<{x}x16x{d}xbf16>"] * 2 + [f"tensor<{x}x16xf32>"]
  table = {f"tensor<{x}x{r + 2 * w}x{d}x{t}>" for t in ("bf16", "f32")}
  slots = {f"tensor<{x}x{npad // b}x{bq}x{w}xf32>" for b in (bq, bk)}
  for name, (args, results) in sigs.items():
    assert args[:3] == glob, (name, args)
    if name == "lfjax_band_dglobal":  # q, dout, lse, delta, dlse
      assert args[3:] == [qkv] * 2 + [f"tensor<{x}x{npad}xf32>"] * 3, args
      assert results == [f"tensor<{x}x16x{d}xf32>"] * 2, results
      continue
    assert args[3:6] == [qkv] * 3, (name, args)
    assert table & set(args), (name, args)
    for t in args[6:] + results:
      dims = [int(s) for s in re.findall(r"(\d+)x", t)]
      # Nothing with rows per token and a column per distance.
      assert not (len(dims) == 3 and dims[1] == npad and dims[2] in (r, r + 1)
                  ), (name, t)
      assert t.endswith(f"x{d}xbf16>") or t.endswith(f"x{d}xf32>") or (
          t == f"tensor<{x}x{npad}xf32>") or t in table | slots, (name, t)
    assert sum(t in slots for t in results) == 1, (name, results)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_charlm_train_step_lowers_with_head_dim_operands(dtype):
  """Issue 13: the char-LM's train step (relative positions as a table,
  causal, dilated heads, remat) with attention_impl="pallas" lowers for
  CUDA, and every kernel's q, k and v operands are head_dim (16) wide: no
  position features widen them. Issue 25: they are in the model's dtype
  (bf16 stays bf16: no upcast before the kernel)."""
  from flax import nnx
  from lfjax.models.charlm import CharLM, CharLMConfig
  cfg = CharLMConfig(vocab_size=27, num_layers=2, num_heads=4, hidden_size=64,
                     head_dim=16, ffn_size=64, windows=(8, 16),
                     dilations=(1, 2), dilated_heads=2, rel_features=32,
                     dropout=0.0, remat=True, attention_impl="pallas",
                     dtype=dtype)
  graphdef, params = nnx.split(CharLM(cfg, rngs=nnx.Rngs(0)))

  def step(params, x):
    def loss(params):
      logits = nnx.merge(graphdef, params)(x)
      return jnp.mean(jax.nn.logsumexp(logits, axis=-1))
    return jax.grad(loss)(params)

  avals = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                       params)
  exp = lowering.export_for_cuda(step, avals,
                                 jax.ShapeDtypeStruct((1, 100), jnp.int32))
  lines = [l for l in exp.mlir_module().splitlines()
           if lowering.TRITON_TARGET in l and "custom_call" in l]
  # 2 layers x (1 + 1 dilated head groups) x (fwd, dq, dkv), plus the
  # forward recomputed by remat.
  assert len(lines) >= 12
  for line in lines:
    args = re.findall(r"tensor<[^>]*>", re.search(
        r":\s*\(([^()]*)\)", line[line.rindex("}"):]).group(1))
    short = {"float32": "f32", "bfloat16": "bf16"}[dtype]
    assert all(re.fullmatch(rf"tensor<\d+x\d+x16x{short}>", a)
               for a in args[:3]), args[:3]
