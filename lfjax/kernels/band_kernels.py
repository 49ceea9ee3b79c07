"""The Pallas kernel bodies of lfjax.kernels.band_attention: forward, dq,
dk-dv and the global keys' gradient, with the per-tile pieces they share
(band block ranges and masks, the relative term's skew through a scratch
slot, the dropout hash and the global key blocks).

Each function here runs inside a pallas_call program on refs (Triton on a
GPU, interpret mode on CPU); band_attention.py builds the calls, the
custom VJP and the public function, and its module docstring says how the
pieces fit.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from lfjax.attention import common

# A finite stand-in for -inf (lfjax.attention.common's): masked scores stay
# finite, so fully masked rows never give NaN.
NEG_INF = common.NEG_INF


def pow2(n):
  """The power of two >= max(n, 16): Triton's tile sizes."""
  return max(16, 1 << (int(n) - 1).bit_length())

# Block ranges ---------------------------------------------------------------
# For a block of rows [r0, r0 + rows) against blocks of `cols` columns, with
# allowed offsets -lo_off <= col - row <= hi_off: the blocks that meet the
# band, and among them the ones entirely inside it (no mask needed). Shared
# with the TPU kernel (tpu_band_kernels). Every quotient here is of
# non-negative ints, so lax.div (truncating) is floor division: jnp's `//`
# lowers through lax.sign, which Mosaic lowers only when it knows the TPU
# generation (not in a deviceless compile).

def _div(a, b):
  return jax.lax.div(a, jnp.int32(b))


def block_ranges(r0, rows, cols, lo_off, hi_off, nblocks):
  first = _div(jnp.maximum(r0 - lo_off, 0), cols)
  end = jnp.minimum(nblocks, _div(r0 + rows - 1 + hi_off, cols) + 1)
  full_lo = _div(jnp.maximum(r0 + rows - 1 - lo_off, 0) + cols - 1, cols)
  full_hi = _div(jnp.maximum(r0 + hi_off + 1, 0), cols)
  a = jnp.clip(full_lo, first, end)
  b = jnp.clip(full_hi, a, end)
  return first, a, b, end


def _band_mask(r0, rows, c0, cols, lo_off, hi_off):
  d = (c0 + jnp.arange(cols))[None, :] - (r0 + jnp.arange(rows))[:, None]
  return (d >= -lo_off) & (d <= hi_off)


# Relative term, per block visit (see the module docstring). The table
# arrives padded with W = rel_width(bq, bk) zero rows in front and behind
# so that every visited tile's slice is in range; its entries off the real
# table are outside the band or padding, masked anyway. Slot rows are
# rotated with & (bq - 1): block_q is a power of two (BlockSizes.check).

def rel_width(bq, bk):
  """Table rows one [bq, bk] tile spans (its distances), a power of two."""
  return pow2(bq + bk - 1)


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


# Dropout and global keys ------------------------------------------------------
# Their operands come FIRST in a kernel's refs (the kernels split them off
# with _ext_refs): seed, residue [X, 1] with dropout; gk [X, G, D], gv
# [X, G, Dv], gbias [X, G] with global keys; gpos [X, G] with both.

@dataclasses.dataclass(frozen=True)
class Ext:
  """Static: dropout rate, the rows' dilation (positions), global keys G
  (padded to a power of two >= 16; 0: none) and their block rows."""
  rate: float = 0.0
  dil: int = 1
  g: int = 0
  gblock: int = 16

  @property
  def names(self):
    return ((("seed", "residue") if self.rate else ())
            + (("gk", "gv", "gbias") if self.g else ())
            + (("gpos",) if self.rate and self.g else ()))


def _ext_refs(refs, ext):
  n = len(ext.names)
  return dict(zip(ext.names, refs[:n])), refs[n:]


def _pos(e, ext, start, size):
  """Absolute positions of this row's class rows start .. start + size."""
  if not ext.rate:
    return None
  i = start + jax.lax.broadcasted_iota(jnp.int32, (size,), 0)
  return i * ext.dil + e["residue"][...]


def _mult(e, ext, i_pos, j_pos):
  """The chunked path's dropout multiplier (common.dropout_multiplier) of
  a [rows, cols] tile, or None without dropout."""
  if not ext.rate:
    return None
  return common.dropout_multiplier(e["seed"][...][:, None], i_pos[:, None],
                                   j_pos[None, :], ext.rate)


def _times(p, z):
  return p if z is None else p * z


def _gtile(e, ext, gb):
  """Global key block gb: (keys, values, bias, positions or None)."""
  sl = pl.ds(gb * ext.gblock, ext.gblock)
  return (e["gk"][sl, :], e["gv"][sl, :], e["gbias"][sl],
          e["gpos"][sl] if ext.rate else None)


def _fwd_globals(q, carry, e, ext, scale, i_pos):
  """The global key blocks, in the band's online softmax (no band mask)."""
  def body(gb, carry):
    acc, m, l = carry
    gk, gv, gbias, gpos = _gtile(e, ext, gb)
    s = _dot(q, gk, trans_b=True) * scale + gbias[None, :]
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[:, None])
    pz = _times(p, _mult(e, ext, i_pos, gpos))
    acc = acc * alpha[:, None] + _dot(pz.astype(gv.dtype), gv)
    return acc, m_new, l * alpha + jnp.sum(p, axis=1)
  return jax.lax.fori_loop(0, ext.g // ext.gblock, body, carry)


def _dq_globals(q, do, lse, delta, dlse, dq, e, ext, scale, i_pos):
  def body(gb, dq):
    gk, gv, gbias, gpos = _gtile(e, ext, gb)
    _, ds = _p_ds(q, gk, gv, do, gbias, lse, delta, dlse, scale, None,
                  z=_mult(e, ext, i_pos, gpos))
    return dq + _dot(ds.astype(gk.dtype), gk)
  return jax.lax.fori_loop(0, ext.g // ext.gblock, body, dq)


def dglobal_kernel(*refs, scale, bq, nqb, ext):
  """d gk, d gv of one global key block: a sum over every query row, so
  the program loops over all query blocks (a kernel of its own: the dkv
  kernel's programs own disjoint key blocks and would each need the sum)."""
  e, (q_ref, do_ref, lse_ref, delta_ref, dlse_ref, dgk_ref, dgv_ref) = (
      _ext_refs(refs, ext))
  gk, gv, gbias = e["gk"][...], e["gv"][...], e["gbias"][...]
  gpos = e["gpos"][...] if ext.rate else None

  def body(qb, carry):
    dgk, dgv = carry
    rows = pl.ds(qb * bq, bq)
    q, do = q_ref[rows, :], do_ref[rows, :]
    z = _mult(e, ext, _pos(e, ext, qb * bq, bq), gpos)
    p, ds = _p_ds(q, gk, gv, do, gbias, lse_ref[rows], delta_ref[rows],
                  dlse_ref[rows], scale, None, z=z)
    return (dgk + _dot(ds.astype(q.dtype), q, trans_a=True),
            dgv + _dot(_times(p, z).astype(do.dtype), do, trans_a=True))

  dgk, dgv = jax.lax.fori_loop(0, nqb, body, (
      jnp.zeros(gk.shape, jnp.float32), jnp.zeros(gv.shape, jnp.float32)))
  dgk_ref[...] = (dgk * scale).astype(dgk_ref.dtype)
  dgv_ref[...] = dgv.astype(dgv_ref.dtype)


# Forward --------------------------------------------------------------------

def fwd_kernel(*refs, scale, window, right, bq, bk, nkb, rel_min, barrier,
                ext=Ext()):
  e, refs = _ext_refs(refs, ext)
  if rel_min is None:
    q_ref, k_ref, v_ref, kbias_ref, o_ref, lse_ref = refs
  else:
    (q_ref, k_ref, v_ref, kbias_ref, rq_ref, table_ref, o_ref, lse_ref,
     slot_ref) = refs
  r0 = pl.program_id(1) * bq
  q = q_ref[...]
  dv = v_ref.shape[-1]
  i_pos = _pos(e, ext, r0, bq)

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
    # Dropout acts on the normalised probabilities: l stays undropped.
    pz = _times(p, _mult(e, ext, i_pos, _pos(e, ext, c0, bk)))
    acc = acc * alpha[:, None] + _dot(pz.astype(v.dtype), v)
    return acc, m_new, l * alpha + jnp.sum(p, axis=1)

  first, a, b, end = block_ranges(r0, bq, bk, window, right, nkb)
  carry = (jnp.zeros((bq, dv), jnp.float32),
           jnp.full((bq,), NEG_INF, jnp.float32), jnp.zeros((bq,), jnp.float32))
  carry = jax.lax.fori_loop(first, a, functools.partial(body, masked=True),
                            carry)
  carry = jax.lax.fori_loop(a, b, functools.partial(body, masked=False), carry)
  acc, m, l = jax.lax.fori_loop(b, end, functools.partial(body, masked=True),
                                carry)
  if ext.g:
    acc, m, l = _fwd_globals(q, (acc, m, l), e, ext, scale, i_pos)
  # A row whose every key was masked kept m at (about) NEG_INF: it has no key.
  empty = m < 0.5 * NEG_INF
  o_ref[...] = jnp.where(empty[:, None], 0.0,
                         acc / jnp.where(empty, 1.0, l)[:, None]
                         ).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty, NEG_INF, m + jnp.log(jnp.where(empty, 1.0,
                                                                l)))


# Backward -------------------------------------------------------------------

def _p_ds(q, k, v, do, kbias, lse, delta, dlse, scale, mask, rel=None,
          z=None):
  """p and d(score) of a tile; z: the dropout multiplier (out = (p z) v, so
  dp gets a factor z; delta = rowsum(out * dout) already has it)."""
  s = _dot(q, k, trans_b=True)
  if rel is not None:
    s = s + rel
  s = s * scale + kbias[None, :]
  if mask is not None:
    s = jnp.where(mask, s, NEG_INF)
  p = jnp.exp(s - lse[:, None])
  dp = _times(_dot(do, v, trans_b=True), z)
  return p, p * (dp - delta[:, None] + dlse[:, None])


def dq_kernel(*refs, scale, window, right, bq, bk, nkb, rel_min, barrier,
               ext=Ext()):
  e, refs = _ext_refs(refs, ext)
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
  i_pos = _pos(e, ext, r0, bq)

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
                  rel, z=_mult(e, ext, i_pos, _pos(e, ext, c0, bk)))
    if rel_min is None:
      return dq + _dot(ds.astype(k.dtype), k)
    # The scatter first, so that ds and k are dead during the matmuls.
    _rel_scatter(slot_ref, ds * scale, kb, barrier)
    dq = dq + _dot(ds.astype(k.dtype), k)
    _rel_grads(slot_ref, bk, rq_ref[...], table_ref, start, drq_ref,
               dtable_ref, kb)
    return dq

  first, a, b, end = block_ranges(r0, bq, bk, window, right, nkb)
  dq = jnp.zeros(q.shape, jnp.float32)
  dq = jax.lax.fori_loop(first, a, functools.partial(body, masked=True), dq)
  dq = jax.lax.fori_loop(a, b, functools.partial(body, masked=False), dq)
  dq = jax.lax.fori_loop(b, end, functools.partial(body, masked=True), dq)
  if ext.g:
    dq = _dq_globals(q, do, lse, delta, dlse, dq, e, ext, scale, i_pos)
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def dkv_kernel(*refs, scale, window, right, bq, bk, nqb, rel_min, barrier,
                ext=Ext()):
  e, refs = _ext_refs(refs, ext)
  if rel_min is None:
    (q_ref, k_ref, v_ref, kbias_ref, do_ref, lse_ref, delta_ref, dlse_ref,
     dk_ref, dv_ref) = refs
  else:
    (q_ref, k_ref, v_ref, kbias_ref, do_ref, lse_ref, delta_ref, dlse_ref,
     rq_ref, table_ref, dk_ref, dv_ref, slot_ref) = refs
  c0 = pl.program_id(1) * bk
  k, v, kbias = k_ref[...], v_ref[...], kbias_ref[...]
  j_pos = _pos(e, ext, c0, bk)

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
    z = _mult(e, ext, _pos(e, ext, r0, bq), j_pos)
    p, ds = _p_ds(q, k, v, do, kbias, lse_ref[pl.ds(r0, bq)],
                  delta_ref[pl.ds(r0, bq)], dlse_ref[pl.ds(r0, bq)], scale,
                  mask, rel, z=z)
    return (dk + _dot(ds.astype(q.dtype), q, trans_a=True),
            dv + _dot(_times(p, z).astype(do.dtype), do, trans_a=True))

  # The transposed band: rows i with -window <= c - i <= right, i.e.
  # -right <= i - c <= window.
  first, a, b, end = block_ranges(c0, bk, bq, right, window, nqb)
  carry = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  carry = jax.lax.fori_loop(first, a, functools.partial(body, masked=True),
                            carry)
  carry = jax.lax.fori_loop(a, b, functools.partial(body, masked=False), carry)
  dk, dv = jax.lax.fori_loop(b, end, functools.partial(body, masked=True),
                             carry)
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
