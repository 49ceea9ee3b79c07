"""Flash-style band attention in Pallas: forward, and dq / dk-dv backward.

Query i sees key j iff kvalid[j] and -window <= j - i <= right, where right
is window (or 0 when causal). Each query block visits only the key blocks
that meet its band, so the loop trip count depends on window and block
sizes, never on the sequence length; the band mask is computed only on the
blocks the band edge cuts (interior blocks skip it). Scores, softmax and
accumulation are float32. Rows without any key give 0 and lse NEG_INF.

Relative positions (optional): score(a, t) = scale * (q[a].k[t] +
rq[a].table[a - t - rel_min]), inside the kernels (no wider q/k, nothing
per (row, distance) in memory). Each block visit multiplies its rq rows
[block_q, Dr] by the W = pow2 >= block_q + block_k - 1 table rows its tile
spans ([Dr, W], tensor cores, float32) and skews the product into the
[block_q, block_k] tile along the diagonals through the program's own
[block_q, W] scratch slot (a store, a CTA barrier, a load with computed
offsets: Triton tensors cannot be gathered in registers). The dq kernel
scatters d(score) back the same way and accumulates d rel_query in its own
output block and d rel_table atomically (float32; the summation order
across programs is not deterministic). See `_rel_tile`, `_rel_grads`.

Pure-jnp reference: `band_reference` below. On CPU the same kernels run in
Pallas interpret mode; lowered for CUDA they are Triton kernels (the choice
of backend is made in `_compiler_params` only).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
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


def band_reference(q, k, v, kvalid, *, window, causal, scale,
                   rel_query_XxNxDr=None, rel_table_XxRxDr=None, rel_min=0):
  """O(N^2) jnp reference: (out float32 [X, N, Dv], lse [X, N]).

  With a relative term, the score of query a and key t in the band is
  scale * (q[a].k[t] + rel_query[a].rel_table[a - t - rel_min])."""
  n = q.shape[1]
  d = jnp.arange(n)[None, :] - jnp.arange(n)[:, None]
  band = (d >= -window) & (d <= (0 if causal else window))
  mask = band[None] & kvalid[:, None, :]
  s = jnp.einsum("xid,xjd->xij", q, k, preferred_element_type=jnp.float32)
  if rel_query_XxNxDr is not None:
    # table row of every (a, t): delta a - t = -d; rows off the table are
    # clipped (only reachable outside the band, which is masked below).
    r = rel_table_XxRxDr.shape[1]
    rows = jnp.clip(-d - rel_min, 0, r - 1)
    s = s + jnp.einsum("xad,xatd->xat", rel_query_XxNxDr.astype(jnp.float32),
                       rel_table_XxRxDr.astype(jnp.float32)[:, rows])
  s = s * scale
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


# Relative term, per block visit (see the module docstring). The table
# arrives padded with W = _rel_width(bq, bk) zero rows in front and behind
# so that every visited tile's slice is in range; its entries off the real
# table are outside the band or padding, masked anyway. Slot rows are
# rotated with & (bq - 1): block_q is a power of two (BlockSizes.check).

def _rel_width(bq, bk):
  """Table rows one [bq, bk] tile spans (its distances), a power of two."""
  return _pow2(bq + bk - 1)


def _rel_start(r0, c0, bk, rel_min, width):
  """Padded-table row of distance r0 - c0 - (bk - 1), the smallest of the
  tile of query rows [r0, r0 + bq) and keys [c0, c0 + bk): slot column w of
  the tile's products is distance r0 - c0 - (bk - 1) + w, so tile entry
  (i, j) is column i - j + bk - 1."""
  return r0 - c0 - rel_min - (bk - 1) + width


def _rel_skew_index(bq, bk, turn):
  """(slot row, slot column) of tile entry (i, j). Rows are rotated by the
  visit index `turn` so that the addresses change every visit: loop-invariant
  [bq, bk] pointer tensors would be hoisted out of the loop and held in
  registers (64 per thread at 64 x 64), which made the kernels spill."""
  i = jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
  j = jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
  return (i + turn) & (bq - 1), i - j + (bk - 1)


def _rel_rows(bq, width, turn):
  """Slot rows of the tile rows, as _rel_skew_index, for [bq, width]."""
  i = jax.lax.broadcasted_iota(jnp.int32, (bq, width), 0)
  return (i + turn) & (bq - 1)


# Slot columns per product / gradient matmul: [block_q, 32] float32 pieces
# keep the live values small (A100 bf16 dq kernel, spill stores per thread:
# 1.3 KB with [64, 64] halves, 0.24 KB with 32; whole [64, 128] products and
# no row rotation: 34 KB). experiments/results/rel_kernel_memory.md.
_REL_PIECE = 32


def _rel_pieces(slot_ref):
  piece = min(_REL_PIECE, slot_ref.shape[1])
  return [(c, piece) for c in range(0, slot_ref.shape[1], piece)]


def _rel_tile(slot_ref, rq_BQxDr, table_ref, start, bk, turn, barrier):
  """[bq, bk] relative scores of one block visit: the products of the
  block's rel_query rows with the W table rows the tile spans, on the tensor
  cores, then tile entry (i, j) = product[i, i - j + bk - 1]. That skew along
  the diagonals cannot be done on Triton tensors in registers, so it goes
  through this program's own scratch slot (global memory that stays in
  L1/L2). The barriers make the slot's writes visible to the whole program
  (CTA) and keep the previous visit's reads ahead of the overwrite."""
  bq = rq_BQxDr.shape[0]
  barrier()
  for col, width in _rel_pieces(slot_ref):
    table = table_ref[pl.ds(start + col, width), :]
    w = col + jax.lax.broadcasted_iota(jnp.int32, (bq, width), 1)
    slot_ref[_rel_rows(bq, width, turn), w] = _dot(rq_BQxDr, table,
                                                   trans_b=True)
  barrier()
  return slot_ref[_rel_skew_index(bq, bk, turn)]


def _rel_scatter(slot_ref, ds_BQxBK, turn, barrier):
  """d(score) into the slot at the tile's skewed positions (_rel_tile). Each
  (row, column) is one key, so the scatter never collides."""
  barrier()
  slot_ref[_rel_skew_index(*ds_BQxBK.shape, turn)] = ds_BQxBK
  barrier()


def _rel_grads(slot_ref, bk, rq_BQxDr, table_ref, start, drq_ref,
               dtable_ref, turn):
  """After _rel_scatter: d(products) read back from the slot (its other
  entries, stale products, masked; masked and padding entries of ds are 0)
  and their two matmuls: drq_ref (this program's block) += dprod @ table
  rows, dtable_ref rows += dprod^T @ rq atomically (the rows are shared by
  every tile on the same block diagonal, in other programs; the summation
  order is not deterministic)."""
  bq = rq_BQxDr.shape[0]
  for col, width in _rel_pieces(slot_ref):
    row = jax.lax.broadcasted_iota(jnp.int32, (bq, width), 0)
    w = col + jax.lax.broadcasted_iota(jnp.int32, (bq, width), 1)
    dprod = jnp.where((w >= row) & (w < row + bk),
                      slot_ref[_rel_rows(bq, width, turn), w], 0.0).astype(
                          rq_BQxDr.dtype)
    rows = pl.ds(start + col, width)
    drq_ref[...] += _dot(dprod, table_ref[rows, :])
    pltriton.atomic_add(dtable_ref, (rows, slice(None)),
                        _dot(dprod, rq_BQxDr, trans_a=True))


def _dot(a, b, trans_a=False, trans_b=False):
  """float32-accumulated matmul of two tiles (tl.dot on GPU)."""
  return pltriton.dot(a, b, trans_a=trans_a, trans_b=trans_b).astype(
      jnp.float32)


# Forward --------------------------------------------------------------------

def _fwd_kernel(*refs, scale, window, right, bq, bk, nkb, rel_min, barrier):
  if rel_min is None:
    q_ref, k_ref, v_ref, kbias_ref, o_ref, lse_ref = refs
  else:
    (q_ref, k_ref, v_ref, kbias_ref, rq_ref, table_ref, o_ref, lse_ref,
     slot_ref) = refs
  r0 = pl.program_id(1) * bq
  q = q_ref[...]
  dv = v_ref.shape[-1]

  def body(kb, carry, masked):
    acc, m, l = carry
    c0 = kb * bk
    k = k_ref[pl.ds(c0, bk), :]
    s = _dot(q, k, trans_b=True)
    if rel_min is not None:
      start = _rel_start(r0, c0, bk, rel_min, slot_ref.shape[1])
      s = s + _rel_tile(slot_ref, rq_ref[...], table_ref, start, bk, kb,
                        barrier)
    s = s * scale + kbias_ref[pl.ds(c0, bk)][None, :]
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

def _p_ds(q, k, v, do, kbias, lse, delta, dlse, scale, mask, rel=None):
  s = _dot(q, k, trans_b=True)
  if rel is not None:
    s = s + rel
  s = s * scale + kbias[None, :]
  if mask is not None:
    s = jnp.where(mask, s, NEG_INF)
  p = jnp.exp(s - lse[:, None])
  dp = _dot(do, v, trans_b=True)
  return p, p * (dp - delta[:, None] + dlse[:, None])


def _dq_kernel(*refs, scale, window, right, bq, bk, nkb, rel_min, barrier):
  if rel_min is None:
    (q_ref, k_ref, v_ref, kbias_ref, do_ref, lse_ref, delta_ref, dlse_ref,
     dq_ref) = refs
  else:
    # `_` is the zeroed d table input, aliased to dtable_ref.
    (q_ref, k_ref, v_ref, kbias_ref, do_ref, lse_ref, delta_ref, dlse_ref,
     rq_ref, table_ref, _, dq_ref, drq_ref, dtable_ref, slot_ref) = refs
    # Accumulated in place by _rel_grads (fewer registers than a carry);
    # the first visit's barriers order this store before those updates.
    drq_ref[...] = jnp.zeros(drq_ref.shape, jnp.float32)
  r0 = pl.program_id(1) * bq
  q, do = q_ref[...], do_ref[...]
  lse, delta, dlse = lse_ref[...], delta_ref[...], dlse_ref[...]

  def body(kb, dq, masked):
    c0 = kb * bk
    rel = None
    if rel_min is not None:  # first: k is not live during it
      start = _rel_start(r0, c0, bk, rel_min, slot_ref.shape[1])
      rel = _rel_tile(slot_ref, rq_ref[...], table_ref, start, bk, kb,
                      barrier)
    k = k_ref[pl.ds(c0, bk), :]
    mask = _band_mask(r0, bq, c0, bk, window, right) if masked else None
    _, ds = _p_ds(q, k, v_ref[pl.ds(c0, bk), :], do,
                  kbias_ref[pl.ds(c0, bk)], lse, delta, dlse, scale, mask,
                  rel)
    if rel_min is None:
      return dq + _dot(ds.astype(k.dtype), k)
    # The scatter first, so that ds and k are dead during the matmuls.
    _rel_scatter(slot_ref, ds * scale, kb, barrier)
    dq = dq + _dot(ds.astype(k.dtype), k)
    _rel_grads(slot_ref, bk, rq_ref[...], table_ref, start, drq_ref,
               dtable_ref, kb)
    return dq

  first, a, b, end = _ranges(r0, bq, bk, window, right, nkb)
  dq = jnp.zeros(q.shape, jnp.float32)
  dq = jax.lax.fori_loop(first, a, functools.partial(body, masked=True), dq)
  dq = jax.lax.fori_loop(a, b, functools.partial(body, masked=False), dq)
  dq = jax.lax.fori_loop(b, end, functools.partial(body, masked=True), dq)
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, scale, window, right, bq, bk, nqb, rel_min, barrier):
  if rel_min is None:
    (q_ref, k_ref, v_ref, kbias_ref, do_ref, lse_ref, delta_ref, dlse_ref,
     dk_ref, dv_ref) = refs
  else:
    (q_ref, k_ref, v_ref, kbias_ref, do_ref, lse_ref, delta_ref, dlse_ref,
     rq_ref, table_ref, dk_ref, dv_ref, slot_ref) = refs
  c0 = pl.program_id(1) * bk
  k, v, kbias = k_ref[...], v_ref[...], kbias_ref[...]

  def body(qb, carry, masked):
    dk, dv = carry
    r0 = qb * bq
    rel = None
    if rel_min is not None:  # first: q and do are not live during it
      start = _rel_start(r0, c0, bk, rel_min, slot_ref.shape[1])
      rel = _rel_tile(slot_ref, rq_ref[pl.ds(r0, bq), :], table_ref, start,
                      bk, qb, barrier)
    q = q_ref[pl.ds(r0, bq), :]
    do = do_ref[pl.ds(r0, bq), :]
    mask = _band_mask(r0, bq, c0, bk, window, right) if masked else None
    p, ds = _p_ds(q, k, v, do, kbias, lse_ref[pl.ds(r0, bq)],
                  delta_ref[pl.ds(r0, bq)], dlse_ref[pl.ds(r0, bq)], scale,
                  mask, rel)
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


def _barrier(interpret):
  """CTA barrier around the relative term's scratch slot; interpret mode
  runs a program's ops in order (and has no lowering for the barrier)."""
  return (lambda: None) if interpret else pltriton.debug_barrier


def _rel_slots(x, programs, blocks):
  """Per-program scratch for the relative term's skew (_rel_tile): one
  [block_q, W] float32 slot per program, a kernel output never read
  outside; O(N * (block_q + block_k)), whatever the window."""
  width = _rel_width(blocks.block_q, blocks.block_k)
  shape = jax.ShapeDtypeStruct((x, programs, blocks.block_q, width),
                               jnp.float32)
  return shape, pl.BlockSpec((None, None, blocks.block_q, width),
                             lambda xi, i: (xi, i, 0, 0))


def _forward(q, k, v, kbias, rq, table, *, window, right, scale, rel_min,
             blocks, interpret):
  x, n, _ = q.shape
  bq, bk = blocks.block_q, blocks.block_k
  kernel = functools.partial(_fwd_kernel, scale=scale, window=window,
                             right=right, bq=bq, bk=bk, nkb=n // bk,
                             rel_min=rel_min, barrier=_barrier(interpret))
  args = (q, k, v, kbias)
  specs = [_blocked(q, bq), _whole(k), _whole(v), _whole(kbias)]
  out_specs = [_blocked(v, bq), _blocked(kbias, bq)]
  out_shape = [jax.ShapeDtypeStruct(v.shape, jnp.float32),
               jax.ShapeDtypeStruct((x, n), jnp.float32)]
  if rq is not None:
    args += (rq, table)
    specs += [_blocked(rq, bq), _whole(table)]
    slot_shape, slot_spec = _rel_slots(x, n // bq, blocks)
    out_specs.append(slot_spec)
    out_shape.append(slot_shape)
  out, lse = pl.pallas_call(
      kernel, grid=(x, n // bq), in_specs=specs,
      out_specs=out_specs, out_shape=out_shape,
      compiler_params=None if interpret else _compiler_params(blocks),
      interpret=interpret, name="lfjax_band_fwd")(*args)[:2]
  return out, lse


def _backward(q, k, v, kbias, do, lse, delta, dlse, rq, table, *, window,
              right, scale, rel_min, blocks, interpret):
  x, n, _ = q.shape
  bq, bk = blocks.block_q, blocks.block_k
  params = None if interpret else _compiler_params(blocks)
  args = (q, k, v, kbias, do, lse, delta, dlse)
  kw = dict(scale=scale, window=window, right=right, bq=bq, bk=bk,
            rel_min=rel_min, barrier=_barrier(interpret))
  dq_specs = [_blocked(q, bq), _whole(k), _whole(v), _whole(kbias),
              _blocked(do, bq), _blocked(lse, bq), _blocked(delta, bq),
              _blocked(dlse, bq)]
  dq_out_specs = _blocked(q, bq)
  dq_shape = jax.ShapeDtypeStruct(q.shape, jnp.float32)
  dkv_specs = [_whole(q), _blocked(k, bk), _blocked(v, bk),
               _blocked(kbias, bk), _whole(do), _whole(lse), _whole(delta),
               _whole(dlse)]
  dq_args, dkv_args, aliases = args, args, {}
  dkv_out_specs = [_blocked(k, bk), _blocked(v, bk)]
  dkv_shape = [jax.ShapeDtypeStruct(k.shape, jnp.float32),
               jax.ShapeDtypeStruct(v.shape, jnp.float32)]
  if rq is not None:
    # d table is accumulated atomically by every program: a zeroed input
    # aliased to the output.
    dtable = jnp.zeros(table.shape, jnp.float32)
    aliases = {len(args) + 2: 2}
    dq_args = args + (rq, table, dtable)
    dkv_args = args + (rq, table)
    dq_specs += [_blocked(rq, bq), _whole(table), _whole(dtable)]
    dkv_specs += [_whole(rq), _whole(table)]
    slot_shape, slot_spec = _rel_slots(x, n // bq, blocks)
    dq_out_specs = [dq_out_specs, _blocked(rq, bq), _whole(dtable), slot_spec]
    dq_shape = [dq_shape, jax.ShapeDtypeStruct(rq.shape, jnp.float32),
                jax.ShapeDtypeStruct(table.shape, jnp.float32), slot_shape]
    slot_shape, slot_spec = _rel_slots(x, n // bk, blocks)
    dkv_out_specs.append(slot_spec)
    dkv_shape.append(slot_shape)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, nkb=n // bk, **kw), grid=(x, n // bq),
      in_specs=dq_specs, out_specs=dq_out_specs, out_shape=dq_shape,
      input_output_aliases=aliases, compiler_params=params,
      interpret=interpret, name="lfjax_band_dq")(*dq_args)
  dq, drq, dtable = (dq, None, None) if rq is None else dq[:3]
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, nqb=n // bq, **kw), grid=(x, n // bk),
      in_specs=dkv_specs, out_specs=dkv_out_specs, out_shape=dkv_shape,
      compiler_params=params, interpret=interpret,
      name="lfjax_band_dkv")(*dkv_args)[:2]
  return dq, dk, dv, drq, dtable


def _on_platform(fn, *args, **kwargs):
  """Interpret mode when lowered for CPU, the compiled kernel for GPUs."""
  return jax.lax.platform_dependent(
      *args, cpu=functools.partial(fn, interpret=True, **kwargs),
      default=functools.partial(fn, interpret=False, **kwargs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10))
def _band(q, k, v, kbias, rq, table, window, right, scale, rel_min, blocks):
  return _on_platform(_forward, q, k, v, kbias, rq, table, window=window,
                      right=right, scale=scale, rel_min=rel_min,
                      blocks=blocks)


def _band_fwd(q, k, v, kbias, rq, table, window, right, scale, rel_min,
              blocks):
  out, lse = _band(q, k, v, kbias, rq, table, window, right, scale, rel_min,
                   blocks)
  # Named for remat policies (lfjax.models.remat "attention"): kept, they
  # spare a rematerialised backward this forward.
  out, lse = checkpoint_name((out, lse), "attention")
  return (out, lse), (q, k, v, kbias, rq, table, out, lse)


def _band_bwd(window, right, scale, rel_min, blocks, res, cotangents):
  q, k, v, kbias, rq, table, out, lse = res
  dout, dlse = cotangents
  dout = dout.astype(jnp.float32)
  delta = jnp.sum(out * dout, axis=-1)
  lse = jnp.where(lse < 0.5 * NEG_INF, _EMPTY_ROW_LSE, lse)
  dq, dk, dv, drq, dtable = _on_platform(
      _backward, q, k, v, kbias, dout.astype(v.dtype), lse, delta,
      dlse.astype(jnp.float32), rq, table, window=window,
      right=right, scale=scale, rel_min=rel_min, blocks=blocks)
  grads = (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
           jnp.zeros_like(kbias))
  if rq is None:
    return grads + (None, None)
  return grads + (drq.astype(rq.dtype), dtable.astype(table.dtype))


_band.defvjp(_band_fwd, _band_bwd)


def band_attention(q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, *, window, causal,
                   scale, block_sizes=None, rel_query_XxNxDr=None,
                   rel_table_XxRxDr=None, rel_min=0):
  """Band attention: (out float32 [X, N, Dv], lse float32 [X, N]).

  Differentiable in q, k, v (and rel_query, rel_table) with cotangents on
  both outputs (so partial attentions can be merged by their log-sum-exp and
  still differentiate). Inputs of any length and head width; they are padded
  to whole blocks and power-of-two widths here.

  Relative term (optional): the score of query a and band key t becomes
  scale * (q[a].k[t] + rel_query[a].rel_table[a - t - rel_min]); rel_min is
  a static int and the table must cover every distance a - t the band
  reaches, -min(right, N - 1) .. min(window, N - 1) (right = window, or 0
  when causal). rel_query's width Dr may differ from D; neither is widened.
  Computed inside the kernels per block visit (module docstring); on a GPU
  the rel_table gradient is summed with float32 atomic adds, so its last
  bits may differ between runs.
  """
  x, n, d = q_XxNxD.shape
  if k_XxNxD.shape != (x, n, d) or v_XxNxDv.shape[:2] != (x, n):
    raise ValueError(f"k, v: expected k of shape {(x, n, d)} and v of shape "
                     f"{(x, n, 'Dv')}, got {k_XxNxD.shape} and "
                     f"{v_XxNxDv.shape}")
  if kvalid_XxN.shape != (x, n):
    raise ValueError(f"kvalid: expected shape {(x, n)}, got "
                     f"{kvalid_XxN.shape}")
  window, right = int(window), 0 if causal else int(window)
  rq, table = rel_query_XxNxDr, rel_table_XxRxDr
  if (rq is None) != (table is None):
    raise ValueError("rel_query and rel_table: expected both or neither, got "
                     f"{'rel_query' if table is None else 'rel_table'} only")
  if rq is not None:
    if rq.ndim != 3 or rq.shape[:2] != (x, n):
      raise ValueError(f"rel_query: expected shape {(x, n, 'Dr')}, got "
                       f"{rq.shape}")
    if table.ndim != 3 or table.shape[0] != x or table.shape[2] != rq.shape[2]:
      raise ValueError(f"rel_table: expected shape {(x, 'R', rq.shape[2])}, "
                       f"got {table.shape}")
    if not isinstance(rel_min, (int, np.integer)):
      raise ValueError(f"rel_min: expected a static int, got {rel_min!r}")
    rel_min = int(rel_min)
    lo, hi = -min(right, n - 1), min(window, n - 1)
    if rel_min > lo or rel_min + table.shape[1] - 1 < hi:
      raise ValueError(
          f"rel_table with rel_min: expected rows for distances {lo}..{hi} "
          f"(the band), got {rel_min}..{rel_min + table.shape[1] - 1}")
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
  if rq is not None:
    # Dr to a power of two >= 16 (zeros: same products); the table gets
    # W zero rows on each side (see _rel_start) and rq's dtype for the dots.
    drp, width = _pow2(rq.shape[2]), _rel_width(blocks.block_q, blocks.block_k)
    rq = pad(rq, drp)
    table = jnp.pad(table.astype(rq.dtype), ((0, 0), (width, width),
                                             (0, drp - table.shape[2])))
  out, lse = _band(pad(q_XxNxD, dp), pad(k_XxNxD, dp), pad(v_XxNxDv, dvp),
                   kbias, rq, table, window, right, float(scale),
                   None if rq is None else rel_min, blocks)
  return out[:, :n, :dv], lse[:, :n]
