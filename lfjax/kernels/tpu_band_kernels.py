"""The Mosaic (Pallas TPU) kernel bodies of lfjax.kernels.tpu_band_attention:
forward, dq (with the global keys' and the relative table's gradients) and
dk-dv, with the per-tile pieces they share.

Every kernel runs on a grid (row x, block, visit j): program (x, i, j)
handles visit j of block i's band, the j-th block of the other side that
meets it (`visit_block`; visits past the band's end are skipped with
pl.when, and their index maps repeat the last block, so no DMA). Partial
results live in VMEM across the visits: the forward's online-softmax
accumulators in scratch, the gradients in their output blocks (an output
block whose index does not change between grid steps stays in VMEM and is
written back once). tpu_band_attention.py builds the pallas_calls, its
module docstring says how the pieces fit.

Refs come by name (`names`, the order tpu_band_attention passes them):
after the two scalar-prefetch refs (seed, residue: int32 [X] in SMEM), the
inputs, outputs and scratch listed by `in_names` / `out_names`.
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lfjax.attention import common
from lfjax.kernels import band_kernels

NEG_INF = common.NEG_INF


@dataclasses.dataclass(frozen=True)
class Cfg:
  """Static kernel parameters: band (window, right), scale, blocks,
  block counts (nqb, nkb), visits per query / key block (nvq, nvk),
  dropout (rate, dilation), global key slots g (0: none) and the relative
  term (rel, its table's block offset dl: see tpu_band_attention)."""
  window: int
  right: int
  scale: float
  bq: int
  bk: int
  nqb: int
  nkb: int
  nvq: int
  nvk: int
  rate: float = 0.0
  dil: int = 1
  g: int = 0
  rel: bool = False
  dl: int = 0


# Band visits ----------------------------------------------------------------
# band_kernels' block ranges, shared with the Triton kernel: block i of
# `rows` rows against blocks of `cols`, offsets -lo <= col - row <= hi.

def span(i, rows, cols, lo, hi, nblocks):
  """(first, end): the blocks of the other side that meet block i's band."""
  first, _, _, end = band_kernels.block_ranges(i * rows, rows, cols, lo, hi,
                                               nblocks)
  return first, end


def visit_block(i, j, rows, cols, lo, hi, nblocks):
  """Block index of visit j of block i, clamped to the last block (a
  visit past the band's end repeats it: no new DMA, and pl.when skips
  it in the kernel)."""
  first, _ = span(i, rows, cols, lo, hi, nblocks)
  return jnp.minimum(first + j, nblocks - 1)


def _dot(a, b):
  """a @ b, float32 accumulation (operands in their own dtype)."""
  return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _dot_nt(a, b):
  """a @ b^T."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _dot_tn(a, b):
  """a^T @ b."""
  return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _positions(start, size, axis, cfg, residue):
  """Absolute positions of class rows start .. start + size as a
  [size, 1] (axis 0) or [1, size] (axis 1) int32 vector."""
  shape = (size, 1) if axis == 0 else (1, size)
  p = start + jax.lax.broadcasted_iota(jnp.int32, shape, axis)
  return p * cfg.dil + residue


def _mult(cfg, seed, i_pos, j_pos):
  """The chunked path's dropout multiplier of a tile, or None."""
  if not cfg.rate:
    return None
  return common.dropout_multiplier(seed.astype(jnp.uint32), i_pos, j_pos,
                                   cfg.rate)


def _times(p, z):
  return p if z is None else p * z


# Relative term ---------------------------------------------------------------
# The table arrives reversed and zero-padded (tpu_band_attention._rel_table):
# row u holds distance dl * B + B - 1 - u, so the 2B rows a [B, B] tile
# (query rows r0.., keys c0.., B = bq = bk) spans start at the aligned row
# (dl - (r0 - c0) / B) * B, and the product Q = rq @ rows^T [B, 2B] has
# Q[i, w] = rq[i] . table(r0 - c0 + B - 1 - w). Tile entry (i, j), distance
# r0 - c0 + i - j, is then Q[i, j + B - 1 - i]: row i rolled left by
# B - 1 - i, one strided lane rotation (pltpu.roll with stride 1 along the
# rows). Its inverse (the gradient) needs stride -1, which Mosaic refuses,
# so it is a barrel shifter: log2(B) uniform rotations, each applied to the
# rows whose shift has that bit.

def rel_start(r0, c0, cfg):
  return pl.multiple_of((cfg.dl * cfg.bq) - (r0 - c0), cfg.bq)


def rel_tile(rq, table, b):
  """[B, B] relative scores from rq [B, Dr] and the tile's 2B table rows."""
  prod = _dot_nt(rq, table)
  return pltpu.roll(prod, b + 1, 1, stride=1, stride_axis=0)[:, :b]


def rel_grads(dsr, rq, table, b):
  """(d rq [B, Dr], d table rows [2B, Dr]) from d(relative score) [B, B]
  (already times scale): the product's gradient dQ (rel_tile's skew undone)
  and its two matmuls."""
  dq = jnp.concatenate([dsr, jnp.zeros_like(dsr)], axis=1)
  shift = (b - 1) - jax.lax.broadcasted_iota(jnp.int32, dq.shape, 0)
  for bit in range((b - 1).bit_length()):
    dq = jnp.where((shift >> bit) & 1 == 1, pltpu.roll(dq, 1 << bit, 1), dq)
  dq = dq.astype(rq.dtype)
  return _dot(dq, table), _dot_tn(dq, rq)


# Scores of one tile ------------------------------------------------------------

def _scores(r, q, i, kb, cfg, rq=None):
  """Masked, scaled scores [bq, bk] of query block i and key block kb."""
  r0, c0 = i * cfg.bq, kb * cfg.bk
  s = _dot_nt(q, r["k"][...])
  if cfg.rel:
    rows = r["table"][pl.ds(rel_start(r0, c0, cfg), 2 * cfg.bq), :]
    s = s + rel_tile(rq, rows, cfg.bq)
  d = ((c0 + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1))
       - (r0 + jax.lax.broadcasted_iota(jnp.int32, s.shape, 0)))
  ok = (d >= -cfg.window) & (d <= cfg.right) & (r["kvalid"][...] != 0)
  return jnp.where(ok, s * cfg.scale, NEG_INF)


def _gscores(r, q, cfg):
  s = _dot_nt(q, r["gk"][...]) * cfg.scale
  return jnp.where(r["gvalid"][...] != 0, s, NEG_INF)


# Forward ------------------------------------------------------------------------

def _online(s, v, z, r):
  """One online-softmax step over a [bq, cols] score tile."""
  m = r["m"][...]
  m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
  alpha = jnp.exp(m - m_new)
  p = jnp.exp(s - m_new)
  # Dropout acts on the normalised probabilities: l stays undropped.
  r["l"][...] = r["l"][...] * alpha + jnp.sum(p, axis=1, keepdims=True)
  r["acc"][...] = r["acc"][...] * alpha + _dot(
      _times(p, z).astype(v.dtype), v)
  r["m"][...] = m_new


def fwd_kernel(seed_ref, residue_ref, *refs, names, cfg):
  r = dict(zip(names, refs))
  x, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  seed, residue = seed_ref[x], residue_ref[x]
  first, end = span(i, cfg.bq, cfg.bk, cfg.window, cfg.right, cfg.nkb)
  kb = visit_block(i, j, cfg.bq, cfg.bk, cfg.window, cfg.right, cfg.nkb)
  i_pos = _positions(i * cfg.bq, cfg.bq, 0, cfg, residue)

  @pl.when(j == 0)
  def _init():
    r["m"][...] = jnp.full(r["m"].shape, NEG_INF, jnp.float32)
    r["l"][...] = jnp.zeros(r["l"].shape, jnp.float32)
    r["acc"][...] = jnp.zeros(r["acc"].shape, jnp.float32)
    if cfg.g:
      _online(_gscores(r, r["q"][...], cfg), r["gv"][...],
              _mult(cfg, seed, i_pos, r["gpos"][...] if cfg.rate else None),
              r)

  @pl.when(first + j < end)  # not kb: it is clamped
  def _visit():
    rq = r["rq"][...] if cfg.rel else None
    z = _mult(cfg, seed, i_pos,
              _positions(kb * cfg.bk, cfg.bk, 1, cfg, residue))
    _online(_scores(r, r["q"][...], i, kb, cfg, rq), r["v"][...], z, r)

  @pl.when(j == cfg.nvq - 1)
  def _finish():
    m, l = r["m"][...], r["l"][...]
    # A row whose every key was masked kept m at (about) NEG_INF.
    empty = m < 0.5 * NEG_INF
    r["o"][...] = jnp.where(empty, 0.0,
                            r["acc"][...] / jnp.where(empty, 1.0, l))
    r["lse"][...] = jnp.where(empty, NEG_INF,
                              m + jnp.log(jnp.where(empty, 1.0, l)))


# Backward -----------------------------------------------------------------------

def _p_ds(s, v, do, lse, delta, dlse, z, scale):
  """p and scale * d(score) of a tile (out = (p z) v: dp gets z)."""
  p = jnp.exp(s - lse)
  dp = _times(_dot_nt(do, v), z)
  return p, p * (dp - delta + dlse) * scale


def dq_kernel(seed_ref, residue_ref, *refs, names, cfg):
  """dq of query block i, summed over its visits in its output block; with
  global keys also d gk, d gv, and with the relative term d rq and the
  (reversed, padded) table's gradient: those sum over every query block,
  so their output blocks stay in VMEM over the whole (i, j) loop of row x."""
  r = dict(zip(names, refs))
  x, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  seed, residue = seed_ref[x], residue_ref[x]
  first, end = span(i, cfg.bq, cfg.bk, cfg.window, cfg.right, cfg.nkb)
  kb = visit_block(i, j, cfg.bq, cfg.bk, cfg.window, cfg.right, cfg.nkb)
  i_pos = _positions(i * cfg.bq, cfg.bq, 0, cfg, residue)
  rows = lambda: (r["lse"][...], r["delta"][...], r["dlse"][...])

  @pl.when((i == 0) & (j == 0))
  def _init_row():
    for name in ("dgk", "dgv", "dtable"):
      if name in r:
        r[name][...] = jnp.zeros(r[name].shape, jnp.float32)

  @pl.when(j == 0)
  def _init_block():
    r["dq"][...] = jnp.zeros(r["dq"].shape, jnp.float32)
    if cfg.rel:
      r["drq"][...] = jnp.zeros(r["drq"].shape, jnp.float32)
    if cfg.g:
      q, do, gk = r["q"][...], r["do"][...], r["gk"][...]
      z = _mult(cfg, seed, i_pos, r["gpos"][...] if cfg.rate else None)
      p, ds = _p_ds(_gscores(r, q, cfg), r["gv"][...], do, *rows(), z,
                    cfg.scale)
      r["dq"][...] += _dot(ds.astype(gk.dtype), gk)
      r["dgk"][...] += _dot_tn(ds.astype(q.dtype), q)
      r["dgv"][...] += _dot_tn(_times(p, z).astype(do.dtype), do)

  @pl.when(first + j < end)  # not kb: it is clamped
  def _visit():
    q, k = r["q"][...], r["k"][...]
    rq = r["rq"][...] if cfg.rel else None
    z = _mult(cfg, seed, i_pos,
              _positions(kb * cfg.bk, cfg.bk, 1, cfg, residue))
    _, ds = _p_ds(_scores(r, q, i, kb, cfg, rq), r["v"][...], r["do"][...],
                  *rows(), z, cfg.scale)
    r["dq"][...] += _dot(ds.astype(k.dtype), k)
    if cfg.rel:
      start = rel_start(i * cfg.bq, kb * cfg.bk, cfg)
      table = r["table"][pl.ds(start, 2 * cfg.bq), :]
      drq, dtab = rel_grads(ds, rq, table, cfg.bq)
      r["drq"][...] += drq
      r["dtable"][pl.ds(start, 2 * cfg.bq), :] += dtab


def dkv_kernel(seed_ref, residue_ref, *refs, names, cfg):
  """dk, dv of key block kb = program_id(1), summed over the query blocks
  of its (transposed) band: rows i with -right <= i - c <= window."""
  r = dict(zip(names, refs))
  x, kb, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  seed, residue = seed_ref[x], residue_ref[x]
  first, end = span(kb, cfg.bk, cfg.bq, cfg.right, cfg.window, cfg.nqb)
  i = visit_block(kb, j, cfg.bk, cfg.bq, cfg.right, cfg.window, cfg.nqb)

  @pl.when(j == 0)
  def _init():
    r["dk"][...] = jnp.zeros(r["dk"].shape, jnp.float32)
    r["dv"][...] = jnp.zeros(r["dv"].shape, jnp.float32)

  @pl.when(first + j < end)  # not i: it is clamped
  def _visit():
    q, do = r["q"][...], r["do"][...]
    rq = r["rq"][...] if cfg.rel else None
    z = _mult(cfg, seed, _positions(i * cfg.bq, cfg.bq, 0, cfg, residue),
              _positions(kb * cfg.bk, cfg.bk, 1, cfg, residue))
    p, ds = _p_ds(_scores(r, q, i, kb, cfg, rq), r["v"][...], do,
                  r["lse"][...], r["delta"][...], r["dlse"][...], z,
                  cfg.scale)
    r["dk"][...] += _dot_tn(ds.astype(q.dtype), q)
    r["dv"][...] += _dot_tn(_times(p, z).astype(do.dtype), do)
