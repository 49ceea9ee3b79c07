"""Flash-style band attention in Pallas: forward, and dq / dk-dv backward.

Query i sees key j iff kvalid[j] and -window <= j - i <= right, where right
is window (or 0 when causal). Each query block visits only the key blocks
that meet its band, so the loop trip count depends on window and block
sizes, never on the sequence length; the band mask is computed only on the
blocks the band edge cuts (interior blocks skip it). Scores, softmax and
accumulation are float32. Rows without any key give 0 and lse NEG_INF.

Pure-jnp reference: `band_reference` below. On CPU the same kernels run in
Pallas interpret mode; lowered for CUDA they are Triton kernels (the choice
of backend is made in `_compiler_params` only).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

NEG_INF = -0.7 * float(np.finfo(np.float32).max)
# lse of a row with no key, as the backward sees it: every p = exp(s - lse)
# of such a row is then exactly 0.
_EMPTY_ROW_LSE = -NEG_INF


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Query/key block rows per program and Triton launch parameters."""
  block_q: int = 64
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 2

  @classmethod
  def default(cls, head_dim, dtype):
    """Smaller blocks for wide heads keep tiles in registers/shared memory."""
    del dtype  # same tiling for f32 / bf16 / f16 so far; tuned on GPU later
    if head_dim <= 64:
      return cls(64, 64, 4, 2)
    if head_dim <= 128:
      return cls(64, 64, 4, 2)
    return cls(32, 32, 8, 1)

  def check(self):
    for name in ("block_q", "block_k"):
      val = getattr(self, name)
      if val < 16 or val & (val - 1):
        raise ValueError(f"block_sizes.{name}: expected a power of two >= 16 "
                         f"(Triton tiles), got {val}")


def _compiler_params(blocks):
  """The GPU backend, in one place: Pallas' Triton lowering. (JAX 0.11
  deprecates it for Mosaic GPU; switching means changing this function.)"""
  return pltriton.CompilerParams(num_warps=blocks.num_warps,
                                 num_stages=blocks.num_stages)


def _pow2(n):
  return max(16, 1 << (int(n) - 1).bit_length())


def band_reference(q, k, v, kvalid, *, window, causal, scale):
  """O(N^2) jnp reference: (out float32 [X, N, Dv], lse [X, N])."""
  n = q.shape[1]
  d = jnp.arange(n)[None, :] - jnp.arange(n)[:, None]
  band = (d >= -window) & (d <= (0 if causal else window))
  mask = band[None] & kvalid[:, None, :]
  s = jnp.einsum("xid,xjd->xij", q, k,
                 preferred_element_type=jnp.float32) * scale
  s = jnp.where(mask, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.where(mask, jnp.exp(s - m), 0.0)
  l = p.sum(-1)
  out = jnp.einsum("xij,xjd->xid", p, v.astype(jnp.float32))
  out = out / jnp.where(l == 0, 1.0, l)[..., None]
  lse = jnp.where(l == 0, NEG_INF, m[..., 0] + jnp.log(jnp.maximum(l, 1e-30)))
  return out, lse


# Block ranges ---------------------------------------------------------------
# For a block of rows [r0, r0 + rows) against blocks of `cols` columns, with
# allowed offsets -lo_off <= col - row <= hi_off: the blocks that meet the
# band, and among them the ones entirely inside it (no mask needed).

def _ranges(r0, rows, cols, lo_off, hi_off, nblocks):
  first = jnp.maximum(r0 - lo_off, 0) // cols
  end = jnp.minimum(nblocks, (r0 + rows - 1 + hi_off) // cols + 1)
  full_lo = (jnp.maximum(r0 + rows - 1 - lo_off, 0) + cols - 1) // cols
  full_hi = jnp.maximum(r0 + hi_off + 1, 0) // cols
  a = jnp.clip(full_lo, first, end)
  b = jnp.clip(full_hi, a, end)
  return first, a, b, end


def _band_mask(r0, rows, c0, cols, lo_off, hi_off):
  d = (c0 + jnp.arange(cols))[None, :] - (r0 + jnp.arange(rows))[:, None]
  return (d >= -lo_off) & (d <= hi_off)


def _dot(a, b, trans_a=False, trans_b=False):
  """float32-accumulated matmul of two tiles (tl.dot on GPU)."""
  return pltriton.dot(a, b, trans_a=trans_a, trans_b=trans_b).astype(
      jnp.float32)


# Forward --------------------------------------------------------------------

def _fwd_kernel(q_ref, k_ref, v_ref, kbias_ref, o_ref, lse_ref, *, scale,
                window, right, bq, bk, nkb):
  r0 = pl.program_id(1) * bq
  q = q_ref[...]
  dv = v_ref.shape[-1]

  def body(kb, carry, masked):
    acc, m, l = carry
    c0 = kb * bk
    k = k_ref[pl.ds(c0, bk), :]
    s = _dot(q, k, trans_b=True) * scale + kbias_ref[pl.ds(c0, bk)][None, :]
    if masked:
      s = jnp.where(_band_mask(r0, bq, c0, bk, window, right), s, NEG_INF)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[:, None])
    v = v_ref[pl.ds(c0, bk), :]
    acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v)
    return acc, m_new, l * alpha + jnp.sum(p, axis=1)

  first, a, b, end = _ranges(r0, bq, bk, window, right, nkb)
  carry = (jnp.zeros((bq, dv), jnp.float32),
           jnp.full((bq,), NEG_INF, jnp.float32), jnp.zeros((bq,), jnp.float32))
  carry = jax.lax.fori_loop(first, a, functools.partial(body, masked=True),
                            carry)
  carry = jax.lax.fori_loop(a, b, functools.partial(body, masked=False), carry)
  acc, m, l = jax.lax.fori_loop(b, end, functools.partial(body, masked=True),
                                carry)
  # A row whose every key was masked kept m at (about) NEG_INF: it has no key.
  empty = m < 0.5 * NEG_INF
  o_ref[...] = jnp.where(empty[:, None], 0.0,
                         acc / jnp.where(empty, 1.0, l)[:, None]
                         ).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty, NEG_INF, m + jnp.log(jnp.where(empty, 1.0,
                                                                l)))


# Backward -------------------------------------------------------------------

def _p_ds(q, k, v, do, kbias, lse, delta, dlse, scale, mask):
  s = _dot(q, k, trans_b=True) * scale + kbias[None, :]
  if mask is not None:
    s = jnp.where(mask, s, NEG_INF)
  p = jnp.exp(s - lse[:, None])
  dp = _dot(do, v, trans_b=True)
  return p, p * (dp - delta[:, None] + dlse[:, None])


def _dq_kernel(q_ref, k_ref, v_ref, kbias_ref, do_ref, lse_ref, delta_ref,
               dlse_ref, dq_ref, *, scale, window, right, bq, bk, nkb):
  r0 = pl.program_id(1) * bq
  q, do = q_ref[...], do_ref[...]
  lse, delta, dlse = lse_ref[...], delta_ref[...], dlse_ref[...]

  def body(kb, dq, masked):
    c0 = kb * bk
    k = k_ref[pl.ds(c0, bk), :]
    mask = _band_mask(r0, bq, c0, bk, window, right) if masked else None
    _, ds = _p_ds(q, k, v_ref[pl.ds(c0, bk), :], do,
                  kbias_ref[pl.ds(c0, bk)], lse, delta, dlse, scale, mask)
    return dq + _dot(ds.astype(k.dtype), k)

  first, a, b, end = _ranges(r0, bq, bk, window, right, nkb)
  dq = jnp.zeros(q.shape, jnp.float32)
  dq = jax.lax.fori_loop(first, a, functools.partial(body, masked=True), dq)
  dq = jax.lax.fori_loop(a, b, functools.partial(body, masked=False), dq)
  dq = jax.lax.fori_loop(b, end, functools.partial(body, masked=True), dq)
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, kbias_ref, do_ref, lse_ref, delta_ref,
                dlse_ref, dk_ref, dv_ref, *, scale, window, right, bq, bk,
                nqb):
  c0 = pl.program_id(1) * bk
  k, v, kbias = k_ref[...], v_ref[...], kbias_ref[...]

  def body(qb, carry, masked):
    dk, dv = carry
    r0 = qb * bq
    q = q_ref[pl.ds(r0, bq), :]
    do = do_ref[pl.ds(r0, bq), :]
    mask = _band_mask(r0, bq, c0, bk, window, right) if masked else None
    p, ds = _p_ds(q, k, v, do, kbias, lse_ref[pl.ds(r0, bq)],
                  delta_ref[pl.ds(r0, bq)], dlse_ref[pl.ds(r0, bq)], scale,
                  mask)
    return (dk + _dot(ds.astype(q.dtype), q, trans_a=True),
            dv + _dot(p.astype(do.dtype), do, trans_a=True))

  # The transposed band: rows i with -window <= c - i <= right, i.e.
  # -right <= i - c <= window.
  first, a, b, end = _ranges(c0, bk, bq, right, window, nqb)
  carry = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  carry = jax.lax.fori_loop(first, a, functools.partial(body, masked=True),
                            carry)
  carry = jax.lax.fori_loop(a, b, functools.partial(body, masked=False), carry)
  dk, dv = jax.lax.fori_loop(b, end, functools.partial(body, masked=True),
                             carry)
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# pallas_call wrappers ---------------------------------------------------------

def _blocked(a, rows):
  """Program (x, i) gets rows [i * rows, (i + 1) * rows) of a[x]."""
  tail = a.shape[2:]
  return pl.BlockSpec((None, rows) + tail,
                      lambda xi, i: (xi, i) + (0,) * len(tail))


def _whole(a):
  """Program (x, i) gets all of a[x] and slices it itself."""
  tail = a.shape[2:]
  return pl.BlockSpec((None, a.shape[1]) + tail,
                      lambda xi, i: (xi, 0) + (0,) * len(tail))


def _forward(q, k, v, kbias, *, window, right, scale, blocks, interpret):
  x, n, _ = q.shape
  bq, bk = blocks.block_q, blocks.block_k
  kernel = functools.partial(_fwd_kernel, scale=scale, window=window,
                             right=right, bq=bq, bk=bk, nkb=n // bk)
  out, lse = pl.pallas_call(
      kernel, grid=(x, n // bq),
      in_specs=[_blocked(q, bq), _whole(k), _whole(v), _whole(kbias)],
      out_specs=[_blocked(v, bq), _blocked(kbias, bq)],
      out_shape=[jax.ShapeDtypeStruct(v.shape, jnp.float32),
                 jax.ShapeDtypeStruct((x, n), jnp.float32)],
      compiler_params=None if interpret else _compiler_params(blocks),
      interpret=interpret, name="lfjax_band_fwd")(q, k, v, kbias)
  return out, lse


def _backward(q, k, v, kbias, do, lse, delta, dlse, *, window, right, scale,
              blocks, interpret):
  x, n, _ = q.shape
  bq, bk = blocks.block_q, blocks.block_k
  params = None if interpret else _compiler_params(blocks)
  args = (q, k, v, kbias, do, lse, delta, dlse)
  kw = dict(scale=scale, window=window, right=right, bq=bq, bk=bk)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, nkb=n // bk, **kw), grid=(x, n // bq),
      in_specs=[_blocked(q, bq), _whole(k), _whole(v), _whole(kbias),
                _blocked(do, bq), _blocked(lse, bq), _blocked(delta, bq),
                _blocked(dlse, bq)],
      out_specs=_blocked(q, bq),
      out_shape=jax.ShapeDtypeStruct(q.shape, jnp.float32),
      compiler_params=params, interpret=interpret,
      name="lfjax_band_dq")(*args)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, nqb=n // bq, **kw), grid=(x, n // bk),
      in_specs=[_whole(q), _blocked(k, bk), _blocked(v, bk),
                _blocked(kbias, bk), _whole(do), _whole(lse), _whole(delta),
                _whole(dlse)],
      out_specs=[_blocked(k, bk), _blocked(v, bk)],
      out_shape=[jax.ShapeDtypeStruct(k.shape, jnp.float32),
                 jax.ShapeDtypeStruct(v.shape, jnp.float32)],
      compiler_params=params, interpret=interpret,
      name="lfjax_band_dkv")(*args)
  return dq, dk, dv


def _on_platform(fn, *args, **kwargs):
  """Interpret mode when lowered for CPU, the compiled kernel for GPUs."""
  return jax.lax.platform_dependent(
      *args, cpu=functools.partial(fn, interpret=True, **kwargs),
      default=functools.partial(fn, interpret=False, **kwargs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _band(q, k, v, kbias, window, right, scale, blocks):
  return _on_platform(_forward, q, k, v, kbias, window=window, right=right,
                      scale=scale, blocks=blocks)


def _band_fwd(q, k, v, kbias, window, right, scale, blocks):
  out, lse = _band(q, k, v, kbias, window, right, scale, blocks)
  return (out, lse), (q, k, v, kbias, out, lse)


def _band_bwd(window, right, scale, blocks, res, cotangents):
  q, k, v, kbias, out, lse = res
  dout, dlse = cotangents
  dout = dout.astype(jnp.float32)
  delta = jnp.sum(out * dout, axis=-1)
  lse = jnp.where(lse < 0.5 * NEG_INF, _EMPTY_ROW_LSE, lse)
  dq, dk, dv = _on_platform(
      _backward, q, k, v, kbias, dout.astype(v.dtype), lse, delta,
      dlse.astype(jnp.float32), window=window, right=right, scale=scale,
      blocks=blocks)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          jnp.zeros_like(kbias))


_band.defvjp(_band_fwd, _band_bwd)


def band_attention(q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, *, window, causal,
                   scale, block_sizes=None):
  """Band attention: (out float32 [X, N, Dv], lse float32 [X, N]).

  Differentiable in q, k, v with cotangents on both outputs (so partial
  attentions can be merged by their log-sum-exp and still differentiate).
  Inputs of any length and head width; they are padded to whole blocks and
  power-of-two widths here.
  """
  x, n, d = q_XxNxD.shape
  if k_XxNxD.shape != (x, n, d) or v_XxNxDv.shape[:2] != (x, n):
    raise ValueError(f"k, v: expected k of shape {(x, n, d)} and v of shape "
                     f"{(x, n, 'Dv')}, got {k_XxNxD.shape} and "
                     f"{v_XxNxDv.shape}")
  if kvalid_XxN.shape != (x, n):
    raise ValueError(f"kvalid: expected shape {(x, n)}, got "
                     f"{kvalid_XxN.shape}")
  dv = v_XxNxDv.shape[2]
  blocks = block_sizes or BlockSizes.default(max(d, dv), q_XxNxD.dtype)
  blocks.check()
  step = max(blocks.block_q, blocks.block_k)
  npad = -(-n // step) * step
  dp, dvp = _pow2(d), _pow2(dv)
  pad = lambda a, width: jnp.pad(a, ((0, 0), (0, npad - n),
                                     (0, width - a.shape[2])))
  kbias = jnp.where(jnp.pad(kvalid_XxN, ((0, 0), (0, npad - n))), 0.0,
                    NEG_INF).astype(jnp.float32)
  out, lse = _band(pad(q_XxNxD, dp), pad(k_XxNxD, dp), pad(v_XxNxDv, dvp),
                   kbias, int(window), 0 if causal else int(window),
                   float(scale), blocks)
  return out[:, :n, :dv], lse[:, :n]
