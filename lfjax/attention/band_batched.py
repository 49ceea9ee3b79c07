"""Band attention as batched blocks: the accelerator-shaped form of
lfjax.attention.band.

band.band_attention runs this on GPU/TPU backends (chosen when lowering,
jax.lax.platform_dependent) and its tile loop on CPU. The semantics are
band's, to the entry: key offsets (sequence parallelism's halos), extra
(global) keys, dropout at absolute positions (the same counter hash, via
band_layout.dropout_at), the relative-position term (band_layout.rel_skew), causal, key
validity, empty rows (0 output, NEG_INF lse), cotangents on both outputs.

Why not the loop on a GPU: its tiles are sized for a 2-core CPU's cache,
and each of its hundreds of sequential steps is a few small kernels (one
MLM micro-batch at 4,096 tokens: 384 forward + 384 backward steps per
layer), so a GPU waits on launches. Here every query block is computed at
once: queries [X, B, C, D] (B blocks of C rows), the key span of each
block gathered by reshaping the aligned keys into blocks of C and
concatenating each block with its next ceil((hl + hr) / C) neighbours
(static slices, no index gather), scores [X, B, C, S + G] in float32, one
softmax per block row, then one batched matmul with the values. The
backward recomputes the scores from the saved log-sum-exp (a flash
backward done at once): transient memory O(X * N * (S + G)), nothing of
that size saved between forward and backward; the overlapping key spans'
gradients go back by the transposed reshape (pads and adds, no scatter).

Letters as in band: X rows, B query blocks (geo.nb), C block, S band key
span, G extra keys, T aligned key length (geo.total), W + 1 columns of the
padded relative products.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from lfjax.attention import band_layout
from lfjax.attention import common

# Block sizes tried: multiples of the 64-row tiles of A100/H100 tensor-core
# matmuls (and of TPU's 128 lanes for 128, 256).
BLOCKS = (64, 128, 256)
# Float32 score elements computed at once (1 GiB): rows of X past that go
# in sequential groups (_in_groups). An MLM layer (8 x 12 rows, 4,096
# tokens, window 256) is one group; the char-LM's phase 5 (window 8,192 at
# 23,040 tokens, ~72 GB of scores per dilation group) would not fit at once.
SCORES_PER_GROUP = 1 << 28


def choose_block(n, window, num_global=0, causal=False, head_dim=64):
  """Query block C of the batched path for n queries (per dilation class).

  Rule: one block of n rounded up to 8 when n <= 64 (no halo to waste);
  otherwise the C in BLOCKS minimising the elements one call moves,
  ceil(n / C) * (C * (S + G) + S * head_dim / 4) with S = C + halo: the
  padded float32 scores, which ~4 passes write and read, plus each block's
  copy of its key span (keys and values, bf16, written once, read once or
  twice), a quarter as costly per element. Ties go to the larger C (fewer,
  larger matmuls). Window 256, head_dim 64: C = 128 (64 ties; wasted
  scores 1.25x the band's 2w + 1); window 64: C = 64 (1.5x). The relative
  term's products are per query row whatever C is, so they do not count.
  """
  single = band_layout.round_up(max(n, 1), 8)
  if single <= BLOCKS[0]:
    return single
  halo = (1 if causal else 2) * window
  best = None
  for c in BLOCKS:
    if c >= single:  # one block: its span has no halo past the sequence
      c = single
      span = c
    else:
      span = c + halo
    cost = -(-n // c) * (c * (span + num_global) + span * head_dim / 4)
    if best is None or cost <= best[0]:
      best = (cost, c)
    if c == single:
      break
  return best[1]


def _extra_blocks(geo):
  """Neighbour blocks a block's key span reaches into (its halos)."""
  return -(-(geo.hl + geo.hr) // geo.c)


def spans(geo, a_XxTx):
  """Aligned keys [X, T, ...] -> each query block's key span [X, B, S, ...]
  (block i: aligned keys i*C .. i*C + S - 1), from static slices of the
  keys reshaped into blocks of C."""
  e = _extra_blocks(geo)
  x, t = a_XxTx.shape[:2]
  rest = a_XxTx.shape[2:]
  pad = [(0, 0)] * a_XxTx.ndim
  pad[1] = (0, (geo.nb + e) * geo.c - t)
  blocks = jnp.pad(a_XxTx, pad).reshape(x, geo.nb + e, geo.c, *rest)
  wide = jnp.concatenate([blocks[:, i:i + geo.nb] for i in range(e + 1)],
                         axis=2)
  return wide[:, :, :geo.span]


def unspans(geo, d_XxBxSx):
  """The transpose of spans: per-block span gradients [X, B, S, ...] summed
  into the aligned key axis [X, T, ...]."""
  e = _extra_blocks(geo)
  x, nb, s = d_XxBxSx.shape[:3]
  rest = d_XxBxSx.shape[3:]
  pad = [(0, 0)] * d_XxBxSx.ndim
  pad[2] = (0, (e + 1) * geo.c - s)
  d = jnp.pad(d_XxBxSx, pad).reshape(x, nb, e + 1, geo.c, *rest)
  acc = 0.0
  for i in range(e + 1):
    # Block b's i-th piece is aligned block b + i.
    shift = [(0, 0), (i, e - i)] + [(0, 0)] * (1 + len(rest))
    acc = acc + jnp.pad(d[:, :, i], shift)
  return acc.reshape(x, (nb + e) * geo.c, *rest)[:, :geo.total]


def _scores(geo, scale, prepared):
  """Queries [X, B, C, D], band keys and values [X, B, S, D], and the masked
  float32 scores with their masks as parts: the band's [X, B, C, S] and,
  with extra keys, theirs [X, B, C, G]. Kept apart, not concatenated: a
  concatenation copies the whole score tensor (measured on the H100
  target, the MLM layer with one global key: temp 2.27 GB concatenated,
  1.51 GB apart, forward; 3.63 and 2.83 GB forward+backward)."""
  qp, kp, vp, kvp, gk, _, gvalid, _, rqp, tabp = prepared
  x, nb, c = geo.x, geo.nb, geo.c
  q = qp.reshape(x, nb, c, qp.shape[2])
  k, v = spans(geo, kp), spans(geo, vp)
  mask = jnp.asarray(geo.band_mask())[None, None] & (
      spans(geo, kvp)[:, :, None, :])
  s = jnp.einsum("xbqd,xbkd->xbqk", q, k, preferred_element_type=jnp.float32)
  if geo.rel_min is not None:  # band keys only; extra keys get no term
    # The table is the same for every block: one [B * C, Dr] x [Dr, W + 1]
    # product per row, then band's shift per block.
    p_XxNxW1 = jnp.einsum("xqd,xrd->xqr", rqp, tabp,
                          preferred_element_type=jnp.float32)
    rel = band_layout.rel_skew(geo, p_XxNxW1.reshape(x * nb, c, tabp.shape[1]))
    s = s + rel.reshape(x, nb, c, geo.span)
  ss, masks = [s], [mask]
  if geo.g:
    ss.append(jnp.einsum("xbqd,xgd->xbqg", q, gk,
                         preferred_element_type=jnp.float32))
    masks.append(jnp.broadcast_to(gvalid[:, None, None, :],
                                  (x, nb, c, geo.g)))
  ss = [jnp.where(m, a * scale, common.NEG_INF) for a, m in zip(ss, masks)]
  return q, ss, masks, k, v


def _dropout(geo, drop):
  """Dropout multipliers (band_layout.dropout_at) as parts like _scores', or
  Nones."""
  if not geo.dropout:
    return [None] * (1 + bool(geo.g))
  seed_X, residue_X, gpos_XxG = drop
  p0 = jnp.arange(geo.nb, dtype=jnp.int32) * geo.c
  gpos = gpos_XxG[:, None, :] if geo.g else None
  z = band_layout.dropout_at(geo, seed_X[:, None], residue_X[:, None], gpos,
                      p0[None, :])
  return [z[..., :geo.span], z[..., geo.span:]] if geo.g else [z]


def _rows(geo, a_XxN):
  """Per query row [X, N] -> [X, B, C, 1] (padded rows get 0)."""
  a = band_layout.align(a_XxN, 0, geo.nb * geo.c, 0)
  return a.reshape(geo.x, geo.nb, geo.c, 1)


def _times(p, z):
  return p if z is None else p * z


def num_groups(geo):
  """Sequential groups the X rows are split into: the fewest (a divisor of
  X) whose scores (band, extra keys and relative products per row) stay
  within SCORES_PER_GROUP."""
  per_row = geo.nb * geo.c * (geo.span + geo.g + (
      geo.rel_width(geo.rel_rows) + 1 if geo.rel_min is not None else 0))
  for g in range(1, geo.x + 1):
    if geo.x % g == 0 and geo.x // g * per_row <= SCORES_PER_GROUP:
      return g
  return geo.x


def _in_groups(geo, fn, *args):
  """fn(geo, *args) with every argument's leading axis X split into
  num_groups(geo) groups run one after another (lax.map), results joined;
  fn's results are X-leading arrays (or None)."""
  g = num_groups(geo)
  if g == 1:
    return fn(geo, *args)
  sub = dataclasses.replace(geo, x=geo.x // g)
  split = lambda a: a.reshape((g, geo.x // g) + a.shape[1:])
  out = jax.lax.map(lambda a: fn(sub, *a), jax.tree.map(split, args))
  return jax.tree.map(lambda a: a.reshape((geo.x,) + a.shape[2:]), out)


def forward(geo, scale, *args):
  """band._forward's result (out [X, N, Dv] float32, lse [X, N]) from
  batched blocks, in groups of rows (num_groups); arguments as
  band._band_attention's (q, k, v, kvalid, gk, gv, gvalid, drop, rq,
  tab)."""
  return _in_groups(geo, functools.partial(_forward, scale=scale), *args)


def backward(geo, scale, res, dout, dlse):
  """band._backward's gradients from batched blocks (the scores recomputed
  from the saved lse), in groups of rows as the forward."""
  return _in_groups(geo, functools.partial(_backward, scale=scale), res,
                    dout, dlse)


def _forward(geo, q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab, *, scale):
  prepared = band_layout.prepare(geo, q, k, v, kvalid, gk, gv, gvalid, drop, rq,
                           tab)
  _, ss, masks, _, v_b = _scores(geo, scale, prepared)
  mx = ss[0].max(axis=-1, keepdims=True)
  for s in ss[1:]:
    mx = jnp.maximum(mx, s.max(axis=-1, keepdims=True))
  ps = [jnp.where(m, jnp.exp(s - mx), 0.0) for s, m in zip(ss, masks)]
  l = sum(p.sum(axis=-1) for p in ps)
  # Dropout acts on the normalised probabilities, so l stays undropped.
  pz = [_times(p, z).astype(v_b.dtype) for p, z in zip(ps, _dropout(geo,
                                                                     drop))]
  o = jnp.einsum("xbqk,xbkd->xbqd", pz[0], v_b,
                 preferred_element_type=jnp.float32)
  if geo.g:
    o = o + jnp.einsum("xbqg,xgd->xbqd", pz[1], prepared[5],
                       preferred_element_type=jnp.float32)
  o = o / jnp.where(l == 0.0, 1.0, l)[..., None]
  lse = jnp.where(l == 0.0, common.NEG_INF,
                  mx[..., 0] + jnp.log(jnp.maximum(l, 1e-30)))
  npad = geo.nb * geo.c
  out = o.reshape(geo.x, npad, o.shape[3])[:, :geo.n]
  return out, lse.reshape(geo.x, npad)[:, :geo.n]


def _backward(geo, res, dout, dlse, *, scale):
  q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab, out, lse = res
  prepared = band_layout.prepare(geo, q, k, v, kvalid, gk, gv, gvalid, drop, rq,
                           tab)
  f32 = lambda a: a.astype(jnp.float32)
  # Matmul operands in the inputs' dtype (bf16 on the tensor cores),
  # float32 accumulation, as the forward and the Pallas kernel.
  mm = lambda eq, a, b, dtype=None: jnp.einsum(
      eq, a.astype(dtype or b.dtype), b.astype(dtype or b.dtype),
      preferred_element_type=jnp.float32)
  q_b, ss, masks, k_b, v_b = _scores(geo, scale, prepared)
  # Padded query rows have zero dout, so whatever finite lse they get, their
  # gradient terms vanish.
  lse_b = _rows(geo, lse)
  ps = [jnp.where(m, jnp.exp(s - lse_b), 0.0) for s, m in zip(ss, masks)]
  do = band_layout.align(f32(dout), 0, geo.nb * geo.c, 0).reshape(
      geo.x, geo.nb, geo.c, dout.shape[2])
  # rowsum(dout * out) - d lse, per row.
  shift = _rows(geo, jnp.sum(out * f32(dout), axis=-1) - f32(dlse))
  zs = _dropout(geo, drop)
  # With dropout, out = (p * z) v: dv sees p * z, dp gets a factor z, and
  # delta = rowsum(dout * out) stays rowsum(p * dp).
  dv_b = mm("xbqk,xbqd->xbkd", _times(ps[0], zs[0]), do, v.dtype)
  dp = mm("xbqd,xbkd->xbqk", do, v_b)
  dsb = ps[0] * (_times(dp, zs[0]) - shift)
  dq = mm("xbqk,xbkd->xbqd", dsb, k_b)
  if geo.g:
    gk_p, gv_p = prepared[4], prepared[5]
    dpg = mm("xbqd,xgd->xbqg", do, gv_p)
    dsg = ps[1] * (_times(dpg, zs[1]) - shift)
    dq = dq + mm("xbqg,xgd->xbqd", dsg, gk_p)
  npad = geo.nb * geo.c
  dq = (dq * scale).reshape(geo.x, npad, q.shape[2])[:, :geo.n]
  dk_b = mm("xbqk,xbqd->xbkd", dsb, q_b) * scale
  dk = band_layout.unalign(unspans(geo, dk_b), geo.key_shift, geo.m)
  dv = band_layout.unalign(unspans(geo, dv_b), geo.key_shift, geo.m)
  grads = [dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None]
  if geo.g:
    dgk = mm("xbqg,xbqd->xgd", dsg, q_b) * scale
    dgv = mm("xbqg,xbqd->xgd", _times(ps[1], zs[1]), do, gv.dtype)
    grads += [dgk.astype(gk.dtype), dgv.astype(gv.dtype)]
  else:
    grads += [None, None]
  grads += [None, None]
  if geo.rel_min is None:
    return tuple(grads) + (None, None)
  # Outside the band ds is zero, so the transposed shift needs no mask.
  rqp, tabp = prepared[8], prepared[9]
  w1 = tabp.shape[1]
  dp_XxNxW1 = band_layout.rel_unskew(geo, dsb.reshape(geo.x * geo.nb, geo.c,
                                               geo.span), w1).reshape(
                                                   geo.x, npad, w1)
  drq = mm("xqr,xrd->xqd", dp_XxNxW1, tabp) * scale
  dtabp = mm("xqr,xqd->xrd", dp_XxNxW1, rqp) * scale
  # Back from the padded reversed layout of band_layout.prepare.
  dtab = dtabp[:, :tab.shape[1]][:, ::-1]
  return tuple(grads) + (drq[:, :geo.n].astype(rq.dtype),
                         dtab.astype(tab.dtype))
