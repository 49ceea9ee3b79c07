"""Blocked band attention in pure JAX with a flash-style custom VJP.

The core of the chunked implementation: undilated window, optional causal
band, per-key validity, extra (global) keys, static query/key offsets, and the
log-sum-exp as a second output, so partial attentions can be merged.

Queries are cut into blocks of C rows. Block i sees the contiguous key span
[i*C - w, i*C + C + w) (right halo 0 if causal), plus the G extra keys. A
loop visits tiles: U rows of X at one block, as batched ops (several
independent tiles in one op keep both cores of a small CPU busy, where one
tile's small matmuls leave one idle). A batched matmul gives the
[U, C, span + G] scores, a static band pattern and the key validity mask
them, one float32 softmax covers band and extra keys, and a second matmul
applies it to the values.

Why a loop and not one big batched op: on CPU the score tensor of a whole
sequence is hundreds of MB, and every pass over it (scores, mask+max, exp,
PV) runs at memory speed, plus page faults on each fresh buffer. Tiles of a
few MB stay in cache and reuse the same buffers. The backward pass recomputes
the scores per tile from the saved log-sum-exp (as FlashAttention does), so
memory stays O(N * D) besides the inputs, and accumulates dK/dV of the
overlapping key spans in place.

That loop is the CPU's form. On GPU/TPU backends band_attention runs the
same computation as batched blocks (lfjax.attention.band_batched: every
query block at once, one softmax per block, a backward recomputed at once),
picked when the program is lowered (jax.lax.platform_dependent), so a CPU
compiling for a GPU gets the GPU's form; FORCE_PATH overrides the choice.

Letters: X independent rows (batch x heads x ...), U rows of a tile, N
queries, M keys, D head dim, C block, S band key span, G extra keys, R
table rows, W + 1 columns of the padded relative products.
"""

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from lfjax.attention import band_batched
from lfjax.attention import band_layout
from lfjax.attention import common

# Score elements per loop step (~4 MB of float32) and rows (of X, batched)
# times tiles per step: several let the runtime keep both cores busy with
# small ops, while the working set stays in cache.
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
  unroll: int   # tiles (U rows each) per forward loop step
  x: int        # rows of X
  causal: bool
  dropout: float = 0.0  # attention-probability dropout rate
  dil: int = 1  # dilation the rows' positions are spaced by (dropout hash)
  rel_min: Optional[int] = None  # distance of table row 0; None: no table
  rows: int = 1  # U: rows of X per tile (batched ops); divides x
  rel_rows: int = 0  # R: rows of the relative table (with rel_min)

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


def choose_block(n, window, num_global=0, causal=False, rel=False):
  """Query block size for n queries (per dilation class).

  Cost model: scores computed (padded rows x key span), plus half that per
  relative product when rel (a [C, W + 1] product per block, W + 1 about
  the span plus one; single-block tiles drop their halo from the scores
  but not from the products), with a per-block overhead that favours
  blocks big enough for efficient matmuls. The 60 was fitted on a 2-core
  CPU with unrolled tiles: at window 256, C=128 (1.25x waste) and C=256
  (1.5x) ran equally fast, C=64 slower; at window 64, C=32..128 were
  within noise.
  """
  halo = (1 if causal else 2) * window
  single = band_layout.round_up(max(n, 1), _MIN_BLOCK)
  products = lambda c: 0.5 * (c + halo + 1) if rel else 0.0
  best = (single * (single + num_global + products(single))
          * (1.0 + 60.0 / single), single)
  for c in (16, 32, 64, 128, 256):
    if c >= single:
      break
    span = c + halo + num_global
    cost = -(-n // c) * c * (span + products(c)) * (1.0 + 60.0 / c)
    best = min(best, (cost, c))
  return best[1]


def geometry(x, n, m, g, *, window, causal, k_offset=0, block=None,
             dropout=0.0, dil=1, rel_min=None, rel_rows=0):
  # Farthest any key is from any query: a larger window changes nothing.
  reach = max(abs(k_offset + m - 1), abs(n - 1 - k_offset), 0)
  w = min(window, reach)
  c = block or choose_block(n, w, g, causal, rel=rel_min is not None)
  nb = -(-n // c)
  hl, hr = w, (0 if causal else w)
  if nb == 1 and k_offset == 0 and m <= c:
    hl = hr = 0  # every key already sits in the single block
  per_tile = c * (hl + c + hr + g)
  fits = lambda u: u == 1 or u * per_tile <= SCORES_PER_STEP
  # Batched rows cost no compile time; unrolled tiles do.
  rows = max(u for u in range(1, MAX_UNROLL + 1) if x % u == 0 and fits(u))
  unroll = 1
  if x * nb >= _MIN_TILES_TO_UNROLL:
    groups = x // rows * nb
    unroll = max(u for u in range(1, MAX_UNROLL // rows + 1)
                 if groups % u == 0 and fits(u * rows))
  return Geometry(n=n, m=m, k_offset=k_offset, w=w, c=c, nb=nb, hl=hl, hr=hr,
                  g=g, unroll=unroll, x=x, causal=causal,
                  dropout=float(dropout), dil=int(dil), rel_min=rel_min,
                  rows=rows, rel_rows=rel_rows)


def _tiles(geo, step, unroll):
  """Loop step -> its `unroll` tiles as (first row of X, first query of the
  block), in block-major order, so the tiles of one step sit in different
  rows."""
  groups = geo.x // geo.rows
  for u in range(unroll):
    t = step * unroll + u
    yield (t % groups) * geo.rows, (t // groups) * geo.c


def _slice(a, x0, p0, size, rows=1):
  """a[x0:x0+rows, p0:p0+size]."""
  start = (x0, p0) + (0,) * (a.ndim - 2)
  return jax.lax.dynamic_slice(a, start, (rows, size) + a.shape[2:])


def _dropout(geo, drop, x0, p0):
  """The tile's dropout multiplier [U, C, S+G] (common.dropout_multiplier at
  the absolute positions of its queries and keys), or None."""
  if not geo.dropout:
    return None
  seed_X, residue_X, gpos_XxG = drop
  seed = jax.lax.dynamic_slice(seed_X, (x0,), (geo.rows,))
  r = jax.lax.dynamic_slice(residue_X, (x0,), (geo.rows,))
  gpos = _slice(gpos_XxG, x0, 0, geo.g, geo.rows) if geo.g else None
  return band_layout.dropout_at(geo, seed, r, gpos, jnp.asarray(p0)[None])


def _rel_scores(geo, rq_UxCxDr, tab_UxWxDr):
  """The tile's relative term [U, C, S]: the queries times the table rows
  the window's distances cover (head_dim wide), then shifted per row so
  entry (a, t) reads distance a - t + hl.

  tab is the table row-reversed and zero-padded to W + 1 rows (band_layout.prepare):
  product column u of row a is distance rel_min + R - 1 - u, and the
  distance of (a, t) sits at column t + L - a, a right shift by a. Reading
  the [C, W + 1] products flat with row stride W (Transformer-XL's skew)
  is that shift, with no index array; every column a band entry reads is
  inside the table, the others are masked. The matmul writes the padded
  layout itself: padding its output instead puts a pad in the fused score
  loop, which XLA's CPU backend then leaves unvectorised (its exp alone
  ran ~10x slower, measured)."""
  p_UxCxW1 = jnp.einsum("xqd,xrd->xqr", rq_UxCxDr, tab_UxWxDr,
                        preferred_element_type=jnp.float32)
  return band_layout.rel_skew(geo, p_UxCxW1)


def _rel_grads(geo, scale, ds_UxCxS, rqt_UxDrxC, tab_UxWxDr):
  """The transpose of _rel_scores: d rel_query [U, C, Dr] and the padded
  reversed table's gradient, transposed [U, Dr, W + 1], from the band
  scores' cotangent (rqt: the tile's relative queries, transposed)."""
  dp_UxCxW1 = band_layout.rel_unskew(geo, ds_UxCxS, tab_UxWxDr.shape[1])
  drq = jnp.einsum("xqr,xrd->xqd", dp_UxCxW1, tab_UxWxDr.astype(jnp.float32))
  dtabt = jnp.einsum("xdq,xqr->xdr", rqt_UxDrxC, dp_UxCxW1)
  return drq * scale, dtabt * scale


def _tile(geo, scale, band_CxS, prepared, x0, p0):
  """One tile's queries, masked float32 scores [U, C, S+G], mask, keys,
  values (and relative queries and table, or None)."""
  qp, kp, vp, kvp, gk, gv, gvalid, _, rqp, tabp = prepared
  u = geo.rows
  q = _slice(qp, x0, p0, geo.c, u)
  k = _slice(kp, x0, p0, geo.span, u)
  v = _slice(vp, x0, p0, geo.span, u)
  mask = band_CxS[None] & _slice(kvp, x0, p0, geo.span, u)[:, None, :]
  if geo.g:
    k = jnp.concatenate([k, _slice(gk, x0, 0, geo.g, u)], axis=1)
    v = jnp.concatenate([v, _slice(gv, x0, 0, geo.g, u)], axis=1)
    gmask = jnp.broadcast_to(_slice(gvalid, x0, 0, geo.g, u)[:, None, :],
                             (u, geo.c, geo.g))
    mask = jnp.concatenate([mask, gmask], axis=2)
  s = jnp.einsum("xqd,xkd->xqk", q, k, preferred_element_type=jnp.float32)
  rel = None
  if geo.rel_min is not None:  # band keys only; extra keys get no term
    rel = (_slice(rqp, x0, p0, geo.c, u), _slice(tabp, x0, 0, tabp.shape[1],
                                                  u))
    rel_UxCxS = _rel_scores(geo, *rel)
    s = s + jnp.pad(rel_UxCxS, ((0, 0), (0, 0), (0, geo.g)))
  s = s * scale
  return q, jnp.where(mask, s, common.NEG_INF), mask, k, v, rel


def _forward(geo, scale, q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab):
  prepared = band_layout.prepare(geo, q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab)
  band = jnp.asarray(geo.band_mask())
  dv = v.shape[2]
  npad = geo.nb * geo.c

  def body(step, carry):
    out, lse = carry
    # Unrolled tiles are independent, so the runtime can overlap them: on a
    # 2-core CPU one tile's small ops leave a core idle.
    for x0, p0 in _tiles(geo, step, geo.unroll):
      _, s, mask, _, v_win, _ = _tile(geo, scale, band, prepared, x0, p0)
      mx = jnp.max(s, axis=-1, keepdims=True)
      p = jnp.where(mask, jnp.exp(s - mx), 0.0)
      l = jnp.sum(p, axis=-1)
      z = _dropout(geo, drop, x0, p0)
      # Dropout acts on the normalised probabilities, so l stays undropped.
      pz = p if z is None else p * z
      o = jnp.einsum("xqk,xkd->xqd", pz.astype(v_win.dtype), v_win,
                     preferred_element_type=jnp.float32)
      # Normalising after PV touches D values per row instead of S + G.
      o = o / jnp.where(l == 0.0, 1.0, l)[:, :, None]
      lse_c = jnp.where(l == 0.0, common.NEG_INF,
                        mx[:, :, 0] + jnp.log(jnp.maximum(l, 1e-30)))
      out = jax.lax.dynamic_update_slice(out, o, (x0, p0, 0))
      lse = jax.lax.dynamic_update_slice(lse, lse_c, (x0, p0))
    return out, lse

  init = (jnp.zeros((geo.x, npad, dv), jnp.float32),
          jnp.zeros((geo.x, npad), jnp.float32))
  steps = geo.x // geo.rows * geo.nb // geo.unroll
  out, lse = jax.lax.fori_loop(0, steps, body, init)
  return out[:, :geo.n], lse[:, :geo.n]


def _backward(geo, scale, res, dout, dlse):
  q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab, out, lse = res
  prepared = band_layout.prepare(geo, q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab)
  with_rel = geo.rel_min is not None
  band = jnp.asarray(geo.band_mask())
  dqk, dv = q.shape[2], v.shape[2]
  npad = geo.nb * geo.c
  u, c, span = geo.rows, geo.c, geo.span
  f32 = lambda a: a.astype(jnp.float32)
  dop = band_layout.align(f32(dout), 0, npad, 0)
  # Padded query rows have zero dout, so whatever finite lse they get, their
  # gradient terms vanish.
  lsep = band_layout.align(lse, 0, npad, 0)
  deltap = band_layout.align(jnp.sum(out * f32(dout), axis=-1), 0, npad, 0)
  dlsep = band_layout.align(f32(dlse), 0, npad, 0)
  # Key-side gradients (dK, dV, d table) contract a tile's query rows. XLA's
  # CPU backend sends a dot whose left operand contracts its rows to a
  # generic kernel ~1.5x slower than its matmul library; transposed, they
  # are plain [D, C] x [C, S] products: the query-side operands are
  # transposed once here and the key-side gradients accumulate transposed.
  tr = lambda a: jnp.swapaxes(a, 1, 2)
  qt, dot_ = tr(f32(prepared[0])), tr(dop)
  rqt = tr(f32(prepared[8])) if with_rel else None
  # a[x0:x0+U, :, p:p+size] of a transposed array.
  cols = lambda a, x0, p, size: jax.lax.dynamic_slice(
      a, (x0, 0, p), (u, a.shape[1], size))

  def body(step, carry):
    dq, dkt, dvt, dgkt, dgvt, drq, dtabt = carry
    # One tile per step: with several, XLA stops updating the dK/dV
    # accumulators in place and copies them (3x slower, measured). Its U
    # rows are one batched op each, and one in-place update.
    for x0, p0 in _tiles(geo, step, 1):
      _, s, mask, k_win, v_win, rel = _tile(geo, scale, band, prepared, x0,
                                            p0)
      row = lambda a: _slice(a, x0, p0, c, u)[:, :, None]
      p = jnp.where(mask, jnp.exp(s - row(lsep)), 0.0)
      do_t = _slice(dop, x0, p0, c, u)
      z = _dropout(geo, drop, x0, p0)
      # With dropout, out = (p * z) v: dv sees p * z, dp gets a factor z,
      # and delta = rowsum(dout * out) stays rowsum(p * dp).
      dvt_win = jnp.einsum("xdq,xqk->xdk", cols(dot_, x0, p0, c),
                           p if z is None else p * z)
      dp = jnp.einsum("xqd,xkd->xqk", do_t, f32(v_win))
      if z is not None:
        dp = dp * z
      ds = p * (dp - row(deltap) + row(dlsep))
      dq_t = jnp.einsum("xqk,xkd->xqd", ds, f32(k_win)) * scale
      dkt_win = jnp.einsum("xdq,xqk->xdk", cols(qt, x0, p0, c), ds) * scale
      dq = jax.lax.dynamic_update_slice(dq, dq_t, (x0, p0, 0))
      # Key spans of neighbouring blocks overlap: accumulate in place.
      add = lambda acc, upd, p: jax.lax.dynamic_update_slice(
          acc, cols(acc, x0, p, upd.shape[2]) + upd, (x0, 0, p))
      if with_rel:
        # Outside the band ds is zero, so the transposed shift needs no mask.
        drq_t, dtabt_t = _rel_grads(geo, scale, ds, cols(rqt, x0, p0, c),
                                    rel[1])
        drq = jax.lax.dynamic_update_slice(drq, drq_t, (x0, p0, 0))
        dtabt = add(dtabt, dtabt_t, 0)
      dkt = add(dkt, dkt_win[:, :, :span], p0)
      dvt = add(dvt, dvt_win[:, :, :span], p0)
      if geo.g:
        dgkt = add(dgkt, dkt_win[:, :, span:], 0)
        dgvt = add(dgvt, dvt_win[:, :, span:], 0)
    return dq, dkt, dvt, dgkt, dgvt, drq, dtabt

  # Zeros that depend on dout: XLA cannot create them at program start and
  # keep every layer's accumulators alive until its backward (measured:
  # GBs on the char-LM at 23K tokens). min(|x|, 0) is 0 for any non-NaN x.
  zero = jnp.minimum(jnp.abs(jnp.sum(dop[:1, :1, :1])), 0.0)
  zeros = lambda a, b: jnp.broadcast_to(zero, (geo.x, a, b))
  dr = rq.shape[2] if with_rel else 0
  init = (zeros(npad, dqk), zeros(dqk, geo.total), zeros(dv, geo.total),
          zeros(dqk, geo.g), zeros(dv, geo.g), zeros(npad if with_rel else 0,
                                                     dr),
          zeros(dr, prepared[9].shape[1] if with_rel else 0))
  dq, dkt, dvt, dgkt, dgvt, drq, dtabt = jax.lax.fori_loop(
      0, geo.x // u * geo.nb, body, init)
  dq = dq[:, :geo.n].astype(q.dtype)
  dk = band_layout.unalign(tr(dkt), geo.key_shift, geo.m).astype(k.dtype)
  dv = band_layout.unalign(tr(dvt), geo.key_shift, geo.m).astype(v.dtype)
  drel = (None, None)
  if with_rel:
    # Back from the padded reversed layout of band_layout.prepare.
    dtab = tr(dtabt)[:, :tab.shape[1]][:, ::-1]
    drel = (drq[:, :geo.n].astype(rq.dtype), dtab.astype(tab.dtype))
  if not geo.g:
    return (dq, dk, dv, None, None, None, None, None) + drel
  return (dq, dk, dv, None, tr(dgkt).astype(gk.dtype),
          tr(dgvt).astype(gv.dtype), None, None) + drel


# Which implementation band_attention runs: None picks by the platform the
# program is lowered for (the tile loop on CPU, band_batched's blocks on
# GPU/TPU); "loop" or "batched" forces one everywhere (tests run the
# batched path on CPU, experiments/xla_band_gpu.py the loop on a GPU).
FORCE_PATH = None
PATHS = (None, "loop", "batched")


def _by_platform(path, loop, batched, *args):
  if path == "loop":
    return loop(*args)
  if path == "batched":
    return batched(*args)
  # Decided when lowering, so a CPU machine compiling for a GPU (deviceless,
  # jax.export) gets the GPU's path; the branch index is then a constant and
  # XLA compiles only the chosen branch (tests/test_band_batched.py).
  return jax.lax.platform_dependent(*args, cpu=loop, default=batched)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _band_attention(geos, scale, q, k, v, kvalid, gk, gv, gvalid, drop, rq,
                    tab):
  geo, bgeo, path = geos
  return _by_platform(
      path, functools.partial(_forward, geo, scale),
      functools.partial(band_batched.forward, bgeo, scale),
      q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab)


def _band_attention_fwd(geos, scale, q, k, v, kvalid, gk, gv, gvalid, drop,
                        rq, tab):
  out, lse = _band_attention(geos, scale, q, k, v, kvalid, gk, gv, gvalid,
                             drop, rq, tab)
  # Named for remat policies (lfjax.models.remat "attention"): kept, they
  # spare a rematerialised backward this forward.
  out, lse = checkpoint_name((out, lse), "attention")
  return (out, lse), (q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab, out,
                      lse)


def _band_attention_bwd(geos, scale, res, cotangents):
  dout, dlse = cotangents
  geo, bgeo, path = geos
  return _by_platform(
      path, functools.partial(_backward, geo, scale),
      functools.partial(band_batched.backward, bgeo, scale), res, dout, dlse)


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

  block: the query block C of both paths (default: choose_block for the
    CPU's loop, band_batched.choose_block for the batched blocks that
    GPU/TPU backends run; see the module docstring).

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
                 rel_min=None if rel is None else int(rel_min),
                 rel_rows=0 if rel is None else tab.shape[1])
  if rel is not None:
    # Distances i - j the band can reach (the window, or less when the
    # sequence is shorter).
    lo, hi = (0 if causal else -geo.w), geo.w
    if rel_min > lo or rel_min + tab.shape[1] - 1 < hi:
      raise ValueError(f"rel: the table covers distances {rel_min}.."
                       f"{rel_min + tab.shape[1] - 1}, the band {lo}..{hi}")
  if FORCE_PATH not in PATHS:
    raise ValueError(f"band.FORCE_PATH: expected one of {PATHS}, got "
                     f"{FORCE_PATH!r}")
  bblock = block or band_batched.choose_block(n, geo.w, g, causal,
                                              q_XxNxD.shape[2])
  bgeo = geometry(x, n, k_XxMxD.shape[1], g, window=window, causal=causal,
                  k_offset=k_offset, block=bblock,
                  dropout=rate, dil=dil, rel_min=geo.rel_min,
                  rel_rows=geo.rel_rows)
  return _band_attention((geo, bgeo, FORCE_PATH), float(scale), q_XxNxD,
                         k_XxMxD, v_XxMxD, kvalid_XxM, gk_XxGxD, gv_XxGxDv,
                         gvalid_XxG, drop, rq, tab)
