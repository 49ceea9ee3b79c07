"""Blocked band attention in pure JAX with a flash-style custom VJP.

The core of the chunked implementation: undilated window, optional causal
band, per-key validity, extra (global) keys, static query/key offsets, and the
log-sum-exp as a second output, so partial attentions can be merged.

Queries are cut into blocks of C rows. Block i sees the contiguous key span
[i*C - w, i*C + C + w) (right halo 0 if causal), plus the G extra keys. A
loop visits a few independent (row, block) tiles per step: a matmul gives the
[C, span + G] scores, a static band pattern and the key validity mask them,
one float32 softmax covers band and extra keys, and a second matmul applies
it to the values.

Why a loop and not one big batched op: on CPU the score tensor of a whole
sequence is hundreds of MB, and every pass over it (scores, mask+max, exp,
PV) runs at memory speed, plus page faults on each fresh buffer. Tiles of a
few MB stay in cache and reuse the same buffers. The backward pass recomputes
the scores per tile from the saved log-sum-exp (as FlashAttention does), so
memory stays O(N * D) besides the inputs, and accumulates dK/dV of the
overlapping key spans in place.

Letters: X independent rows (batch x heads x ...), N queries, M keys,
D head dim, C block, S band key span, G extra keys.
"""

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lfjax.attention import common

# Score elements per loop step (~4 MB of float32) and independent tiles per
# step: several tiles let the runtime keep both cores busy with small ops,
# while the working set stays in cache.
SCORES_PER_STEP = 1 << 20
MAX_UNROLL = 8
# Short problems (tests, tiny models) are not worth the longer compile.
_MIN_TILES_TO_UNROLL = 32
_MIN_BLOCK = 8


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Static tiling of one band attention call."""
  n: int        # queries
  m: int        # keys
  k_offset: int  # position of key 0 relative to query 0
  w: int        # effective one-sided window
  c: int        # query block
  nb: int       # query blocks
  hl: int       # keys left of the query block (halo)
  hr: int       # keys right of the query block (halo)
  g: int        # extra keys
  unroll: int   # independent tiles per forward loop step
  x: int        # rows of X
  causal: bool
  dropout: float = 0.0  # attention-probability dropout rate
  dil: int = 1  # dilation the rows' positions are spaced by (dropout hash)
  rel_min: Optional[int] = None  # distance of table row 0; None: no table

  @property
  def span(self):
    return self.hl + self.c + self.hr

  @property
  def total(self):
    """Length of the aligned key array: query blocks plus halos."""
    return self.hl + self.nb * self.c + self.hr

  @property
  def key_shift(self):
    """Index in the aligned key array of key 0."""
    return self.k_offset + self.hl

  def band_mask(self):
    """[C, S] static: aligned key t is in the window of block row a."""
    rel = (np.arange(self.span)[None, :] - self.hl
           - np.arange(self.c)[:, None])
    return (rel >= -self.w) & (rel <= (0 if self.causal else self.w))

  def rel_lag(self, rows):
    """L such that (block row a, aligned key t), at distance a - t + hl,
    reads column t + L - a of the tile's row-reversed products (column u
    of row a holds table row rows - 1 - u)."""
    return rows - 1 - self.hl + self.rel_min

  def rel_width(self, rows):
    """Columns the shifted products need: the table's, or the span past
    the lag, whichever is wider."""
    return max(rows, self.span + self.rel_lag(rows))

  def rel_valid(self, rows):
    """[C, R] static, in the reversed layout: column u of row a is the
    distance of a key inside the tile's span."""
    t = np.arange(rows)[None, :] + np.arange(self.c)[:, None] - self.rel_lag(
        rows)
    return (t >= 0) & (t < self.span)


def choose_block(n, window, num_global=0, causal=False):
  """Query block size for n queries (per dilation class).

  Cost model: scores computed (padded rows x key span), with a per-block
  overhead that favours blocks big enough for efficient matmuls. The 60 was
  fitted on a 2-core CPU with unrolled tiles: at window 256, C=128 (1.25x
  waste) and C=256 (1.5x) ran equally fast, C=64 slower; at window 64,
  C=32..128 were within noise.
  """
  single = _round_up(max(n, 1), _MIN_BLOCK)
  best = (single * (single + num_global) * (1.0 + 60.0 / single), single)
  for c in (16, 32, 64, 128, 256):
    if c >= single:
      break
    span = c + (1 if causal else 2) * window + num_global
    cost = -(-n // c) * c * span * (1.0 + 60.0 / c)
    best = min(best, (cost, c))
  return best[1]


def _round_up(x, m):
  return -(-x // m) * m


def geometry(x, n, m, g, *, window, causal, k_offset=0, block=None,
             dropout=0.0, dil=1, rel_min=None):
  # Farthest any key is from any query: a larger window changes nothing.
  reach = max(abs(k_offset + m - 1), abs(n - 1 - k_offset), 0)
  w = min(window, reach)
  c = block or choose_block(n, w, g, causal)
  nb = -(-n // c)
  hl, hr = w, (0 if causal else w)
  if nb == 1 and k_offset == 0 and m <= c:
    hl = hr = 0  # every key already sits in the single block
  tiles = x * nb
  per_tile = c * (hl + c + hr + g)
  unroll = 1
  if tiles >= _MIN_TILES_TO_UNROLL:
    unroll = max(u for u in range(1, MAX_UNROLL + 1) if tiles % u == 0
                 and (u == 1 or u * per_tile <= SCORES_PER_STEP))
  return Geometry(n=n, m=m, k_offset=k_offset, w=w, c=c, nb=nb, hl=hl, hr=hr,
                  g=g, unroll=unroll, x=x, causal=causal,
                  dropout=float(dropout), dil=int(dil), rel_min=rel_min)


def _align(x_XxMx, left, total, fill):
  """Place x[:, 0] at index `left` of a length-`total` axis 1; slots outside x
  hold `fill`, parts of x falling outside are cut."""
  m = x_XxMx.shape[1]
  lo, hi = max(0, -left), min(m, total - left)
  if hi <= lo:
    shape = (x_XxMx.shape[0], total) + x_XxMx.shape[2:]
    return jnp.full(shape, fill, x_XxMx.dtype)
  x = x_XxMx[:, lo:hi]
  pad = [(0, 0)] * x.ndim
  pad[1] = (left + lo, total - (left + hi))
  return jnp.pad(x, pad, constant_values=fill)


def _unalign(xp_XxTx, left, m):
  """Inverse of _align for gradients: entries cut by _align get zero."""
  return _align(xp_XxTx, -left, m, 0)


def _tiles(geo, step, unroll):
  """Loop step -> its `unroll` tiles as (row of X, first query of the block),
  in block-major order, so the tiles of one step sit in different rows."""
  for u in range(unroll):
    t = step * unroll + u
    yield t % geo.x, (t // geo.x) * geo.c


def _slice(a, x0, p0, size):
  """a[x0, p0:p0+size] for a row of X."""
  start = (x0, p0) + (0,) * (a.ndim - 2)
  return jax.lax.dynamic_slice(a, start, (1, size) + a.shape[2:])[0]


def _prepare(geo, q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab):
  """Pad queries to whole blocks and align keys with their halos."""
  if not geo.g:
    gk = jnp.zeros((geo.x, 0, q.shape[2]), q.dtype)
    gv = jnp.zeros((geo.x, 0, v.shape[2]), v.dtype)
    gvalid = jnp.zeros((geo.x, 0), bool)
  if rq is not None:
    rq = _align(rq, 0, geo.nb * geo.c, 0)
  return (_align(q, 0, geo.nb * geo.c, 0),
          _align(k, geo.key_shift, geo.total, 0),
          _align(v, geo.key_shift, geo.total, 0),
          _align(kvalid, geo.key_shift, geo.total, False), gk, gv, gvalid,
          drop, rq, tab)


def _dropout(geo, drop, x0, p0):
  """The tile's dropout multiplier [C, S+G] (common.dropout_multiplier at
  the absolute positions of its queries and keys), or None."""
  if not geo.dropout:
    return None
  seed_X, residue_X, gpos_XxG = drop
  seed, r = seed_X[x0], residue_X[x0]
  i_pos = (p0 + jnp.arange(geo.c)) * geo.dil + r
  j_pos = (p0 - geo.hl + jnp.arange(geo.span)) * geo.dil + r
  if geo.g:
    j_pos = jnp.concatenate([j_pos, _slice(gpos_XxG, x0, 0, geo.g)])
  return common.dropout_multiplier(seed, i_pos[:, None], j_pos[None, :],
                                   geo.dropout)


def _rel_operands(geo, prepared, x0, p0):
  """The tile's relative queries [C, Dr] and its row's table [R, Dr]."""
  rqp, tab = prepared[8], prepared[9]
  return _slice(rqp, x0, p0, geo.c), _slice(tab, x0, 0, tab.shape[1])


def _rel_scores(geo, prepared, x0, p0):
  """The tile's relative term [C, S]: the queries times the table rows the
  window's distances cover ([C, R], head_dim wide), then shifted per row so
  entry (a, t) reads distance a - t + hl."""
  rq_CxDr, tab_RxDr = _rel_operands(geo, prepared, x0, p0)
  rows = tab_RxDr.shape[0]
  # Reversed table rows: column u is distance rel_min + rows - 1 - u, so
  # the distance a - t + hl sits at column t + L - a: a right shift by a.
  p_CxR = jnp.einsum("qd,rd->qr", rq_CxDr, tab_RxDr[::-1],
                     preferred_element_type=jnp.float32)
  lag = geo.rel_lag(rows)
  shifted = common.shift_right(
      jnp.pad(p_CxR, ((0, 0), (0, geo.rel_width(rows) - rows))))
  return shifted[:, lag:lag + geo.span]


def _tile(geo, scale, band_CxS, prepared, x0, p0):
  """One tile's queries, masked float32 scores [C, S+G], mask, keys, values."""
  qp, kp, vp, kvp, gk, gv, gvalid = prepared[:7]
  q_CxD = _slice(qp, x0, p0, geo.c)
  k_SxD = _slice(kp, x0, p0, geo.span)
  v_SxD = _slice(vp, x0, p0, geo.span)
  mask = band_CxS & _slice(kvp, x0, p0, geo.span)[None, :]
  if geo.g:
    k_SxD = jnp.concatenate([k_SxD, _slice(gk, x0, 0, geo.g)], axis=0)
    v_SxD = jnp.concatenate([v_SxD, _slice(gv, x0, 0, geo.g)], axis=0)
    gmask = jnp.broadcast_to(_slice(gvalid, x0, 0, geo.g)[None, :],
                             (geo.c, geo.g))
    mask = jnp.concatenate([mask, gmask], axis=1)
  s = jnp.einsum("qd,kd->qk", q_CxD, k_SxD,
                 preferred_element_type=jnp.float32)
  if geo.rel_min is not None:  # band keys only; extra keys get no term
    rel_CxS = _rel_scores(geo, prepared, x0, p0)
    s = s + jnp.pad(rel_CxS, ((0, 0), (0, geo.g)))
  s = s * scale
  return q_CxD, jnp.where(mask, s, common.NEG_INF), mask, k_SxD, v_SxD


def _forward(geo, scale, q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab):
  prepared = _prepare(geo, q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab)
  band = jnp.asarray(geo.band_mask())
  dv = v.shape[2]
  npad = geo.nb * geo.c

  def body(step, carry):
    out, lse = carry
    # Unrolled tiles are independent, so the runtime can overlap them: on a
    # 2-core CPU one tile's small ops leave a core idle.
    for x0, p0 in _tiles(geo, step, geo.unroll):
      _, s, mask, _, v_win = _tile(geo, scale, band, prepared, x0, p0)
      mx = jnp.max(s, axis=-1, keepdims=True)
      p = jnp.where(mask, jnp.exp(s - mx), 0.0)
      l = jnp.sum(p, axis=-1)
      z = _dropout(geo, drop, x0, p0)
      # Dropout acts on the normalised probabilities, so l stays undropped.
      pz = p if z is None else p * z
      o = jnp.einsum("qk,kd->qd", pz.astype(v_win.dtype), v_win,
                     preferred_element_type=jnp.float32)
      # Normalising after PV touches D values per row instead of S + G.
      o = o / jnp.where(l == 0.0, 1.0, l)[:, None]
      lse_c = jnp.where(l == 0.0, common.NEG_INF,
                        mx[:, 0] + jnp.log(jnp.maximum(l, 1e-30)))
      out = jax.lax.dynamic_update_slice(out, o[None], (x0, p0, 0))
      lse = jax.lax.dynamic_update_slice(lse, lse_c[None], (x0, p0))
    return out, lse

  init = (jnp.zeros((geo.x, npad, dv), jnp.float32),
          jnp.zeros((geo.x, npad), jnp.float32))
  out, lse = jax.lax.fori_loop(0, geo.x * geo.nb // geo.unroll, body, init)
  return out[:, :geo.n], lse[:, :geo.n]


def _backward(geo, scale, res, dout, dlse):
  q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab, out, lse = res
  prepared = _prepare(geo, q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab)
  with_rel = geo.rel_min is not None
  if with_rel:
    rows = tab.shape[1]
    lag, width = geo.rel_lag(rows), geo.rel_width(rows)
    rel_ok = jnp.asarray(geo.rel_valid(rows))
  band = jnp.asarray(geo.band_mask())
  dqk, dv = q.shape[2], v.shape[2]
  npad = geo.nb * geo.c
  f32 = lambda a: a.astype(jnp.float32)
  dop = _align(f32(dout), 0, npad, 0)
  # Padded query rows have zero dout, so whatever finite lse they get, their
  # gradient terms vanish.
  lsep = _align(lse, 0, npad, 0)
  deltap = _align(jnp.sum(out * f32(dout), axis=-1), 0, npad, 0)
  dlsep = _align(f32(dlse), 0, npad, 0)

  def body(step, carry):
    dq, dkp, dvp, dgk, dgv, drq, dtab = carry
    c, span = geo.c, geo.span
    # One tile per step: with several, XLA stops updating the dK/dV
    # accumulators in place and copies them (3x slower, measured).
    for x0, p0 in _tiles(geo, step, 1):
      q_CxD, s, mask, k_win, v_win = _tile(geo, scale, band, prepared, x0,
                                           p0)
      p = jnp.where(mask, jnp.exp(s - _slice(lsep, x0, p0, c)[:, None]), 0.0)
      do_CxD = _slice(dop, x0, p0, c)
      z = _dropout(geo, drop, x0, p0)
      # With dropout, out = (p * z) v: dv sees p * z, dp gets a factor z,
      # and delta = rowsum(dout * out) stays rowsum(p * dp).
      dv_win = jnp.einsum("qk,qd->kd", p if z is None else p * z, do_CxD)
      dp = jnp.einsum("qd,kd->qk", do_CxD, f32(v_win))
      if z is not None:
        dp = dp * z
      ds = p * (dp - _slice(deltap, x0, p0, c)[:, None]
                + _slice(dlsep, x0, p0, c)[:, None])
      dq_CxD = jnp.einsum("qk,kd->qd", ds, f32(k_win)) * scale
      dk_win = jnp.einsum("qk,qd->kd", ds, f32(q_CxD)) * scale
      dq = jax.lax.dynamic_update_slice(dq, dq_CxD[None], (x0, p0, 0))
      # Key spans of neighbouring blocks overlap: accumulate in place.
      add = lambda acc, upd, p: jax.lax.dynamic_update_slice(
          acc, (_slice(acc, x0, p, upd.shape[0]) + upd)[None], (x0, p, 0))
      if with_rel:
        # The forward's shift undone: reversed column u of row a is key
        # u + a - L (zero where that key is outside the span; outside the
        # band ds is already zero).
        rq_CxDr, tab_RxDr = _rel_operands(geo, prepared, x0, p0)
        ds_lagged = jnp.pad(ds[:, :span], ((0, 0), (lag, width - span - lag)))
        dp_CxR = jnp.where(rel_ok, common.shift_left(ds_lagged)[:, :rows],
                           0.0)[:, ::-1]
        drq_C = jnp.einsum("qr,rd->qd", dp_CxR, f32(tab_RxDr)) * scale
        drq = jax.lax.dynamic_update_slice(drq, drq_C[None], (x0, p0, 0))
        dtab = add(dtab, jnp.einsum("qr,qd->rd", dp_CxR, f32(rq_CxDr)) * scale,
                   0)
      dkp = add(dkp, dk_win[:span], p0)
      dvp = add(dvp, dv_win[:span], p0)
      if geo.g:
        dgk = add(dgk, dk_win[span:], 0)
        dgv = add(dgv, dv_win[span:], 0)
    return dq, dkp, dvp, dgk, dgv, drq, dtab

  # Zeros that depend on dout: XLA cannot create them at program start and
  # keep every layer's accumulators alive until its backward (measured:
  # GBs on the char-LM at 23K tokens). min(|x|, 0) is 0 for any non-NaN x.
  zero = jnp.minimum(jnp.abs(jnp.sum(dop[:1, :1, :1])), 0.0)
  zeros = lambda length, d: jnp.broadcast_to(zero, (geo.x, length, d))
  rel_shapes = ((npad, rq.shape[2]), tab.shape[1:]) if with_rel else (
      (0, 0), (0, 0))
  init = (zeros(npad, dqk), zeros(geo.total, dqk), zeros(geo.total, dv),
          zeros(geo.g, dqk), zeros(geo.g, dv), zeros(*rel_shapes[0]),
          zeros(*rel_shapes[1]))
  dq, dkp, dvp, dgk, dgv, drq, dtab = jax.lax.fori_loop(
      0, geo.x * geo.nb, body, init)
  dq = dq[:, :geo.n].astype(q.dtype)
  dk = _unalign(dkp, geo.key_shift, geo.m).astype(k.dtype)
  dv = _unalign(dvp, geo.key_shift, geo.m).astype(v.dtype)
  drel = (None, None)
  if with_rel:
    drel = (drq[:, :geo.n].astype(rq.dtype), dtab.astype(tab.dtype))
  if not geo.g:
    return (dq, dk, dv, None, None, None, None, None) + drel
  return (dq, dk, dv, None, dgk.astype(gk.dtype),
          dgv.astype(gv.dtype), None, None) + drel


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _band_attention(geo, scale, q, k, v, kvalid, gk, gv, gvalid, drop, rq,
                    tab):
  return _forward(geo, scale, q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab)


def _band_attention_fwd(geo, scale, q, k, v, kvalid, gk, gv, gvalid, drop,
                        rq, tab):
  out, lse = _forward(geo, scale, q, k, v, kvalid, gk, gv, gvalid, drop, rq,
                      tab)
  return (out, lse), (q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab, out,
                      lse)


def _band_attention_bwd(geo, scale, res, cotangents):
  dout, dlse = cotangents
  return _backward(geo, scale, res, dout, dlse)


_band_attention.defvjp(_band_attention_fwd, _band_attention_bwd)


def band_attention(q_XxNxD, k_XxMxD, v_XxMxD, kvalid_XxM, *, window, causal,
                   scale, k_offset=0, gk_XxGxD=None, gv_XxGxDv=None,
                   gvalid_XxG=None, block=None, dropout=None, rel=None):
  """Undilated band attention with optional extra (global) keys.

  Query i (at position i) sees key j (at position k_offset + j) iff
  kvalid[j] and -window <= k_offset + j - i <= window (<= 0 if causal), and
  every extra key whose gvalid is set. Static k_offset lets a caller pass a
  shard's keys with halos (sequence parallelism).

  dropout: None, or (rate, dilation, seed_X uint32, residue_X int32,
    gpos_XxG int32): attention-probability dropout with
    common.dropout_multiplier, row x's query/key at class position p being
    at absolute position p * dilation + residue_X[x], and extra key g at
    gpos_XxG[x, g]. The log-sum-exp is that of the undropped scores.

  rel: None, or (rq_XxNxDr, table_XxRxDr, rel_min) with rel_min a static
    int: query i's score of band key j gains rq[i] . table[d - rel_min],
    d = i - (k_offset + j) its distance (in this row's positions), before
    scaling; the table must cover every distance of the window. Extra keys
    get no relative term. Costs a [C, R] x Dr product per tile (head_dim
    wide) and a shift, not wider q and k.

  Returns the float32 output [X, N, D] (rows with no key give 0) and the
  log-sum-exp [X, N] of the scaled scores (NEG_INF for rows with no key).
  Differentiable in q, k, v, gk, gv (and rq, table), with cotangents on
  both outputs.
  """
  x, n, _ = q_XxNxD.shape
  g = 0 if gk_XxGxD is None else gk_XxGxD.shape[1]
  rate, dil, drop = 0.0, 1, None
  if dropout is not None and dropout[0]:
    rate, dil, seed_X, residue_X, gpos_XxG = dropout
    if gpos_XxG is None:
      gpos_XxG = jnp.zeros((x, 0), jnp.int32)
    drop = (seed_X, residue_X, gpos_XxG)
  rq, tab, rel_min = (None, None, None) if rel is None else rel
  geo = geometry(x, n, k_XxMxD.shape[1], g, window=window, causal=causal,
                 k_offset=k_offset, block=block, dropout=rate, dil=dil,
                 rel_min=None if rel is None else int(rel_min))
  if rel is not None:
    # Distances i - j the band can reach (the window, or less when the
    # sequence is shorter).
    lo, hi = (0 if causal else -geo.w), geo.w
    if rel_min > lo or rel_min + tab.shape[1] - 1 < hi:
      raise ValueError(f"rel: the table covers distances {rel_min}.."
                       f"{rel_min + tab.shape[1] - 1}, the band {lo}..{hi}")
  return _band_attention(geo, float(scale), q_XxNxD, k_XxMxD, v_XxMxD,
                         kvalid_XxM, gk_XxGxD, gv_XxGxDv, gvalid_XxG, drop,
                         rq, tab)
