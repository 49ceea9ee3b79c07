"""Array layout shared by the band core's two forms (lfjax.attention.band's
tile loop and lfjax.attention.band_batched's blocks): queries padded to
whole blocks, keys aligned with their halos, the relative table laid out
for the skew, and the per-position pieces both regenerate (dropout
multipliers at absolute positions, the relative term's shift and its
transpose). Geometry (band.Geometry) says the sizes.
"""

import jax.numpy as jnp

from lfjax.attention import common


def round_up(x, m):
  """x rounded up to a multiple of m (ints)."""
  return -(-x // m) * m


def align(x_XxMx, left, total, fill):
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


def unalign(xp_XxTx, left, m):
  """Inverse of align for gradients: entries cut by align get zero."""
  return align(xp_XxTx, -left, m, 0)


def prepare(geo, q, k, v, kvalid, gk, gv, gvalid, drop, rq, tab):
  """Pad queries to whole blocks, align keys with their halos, and lay the
  table out for the relative products (band's _rel_scores, band_batched's
  _scores): the arrays both forms index, in _band_attention's order."""
  if not geo.g:
    gk = jnp.zeros((geo.x, 0, q.shape[2]), q.dtype)
    gv = jnp.zeros((geo.x, 0, v.shape[2]), v.dtype)
    gvalid = jnp.zeros((geo.x, 0), bool)
  if rq is not None:
    rq = align(rq, 0, geo.nb * geo.c, 0)
    tab = align(tab[:, ::-1], 0, geo.rel_width(geo.rel_rows) + 1, 0)
  return (align(q, 0, geo.nb * geo.c, 0),
          align(k, geo.key_shift, geo.total, 0),
          align(v, geo.key_shift, geo.total, 0),
          align(kvalid, geo.key_shift, geo.total, False), gk, gv, gvalid,
          drop, rq, tab)


def dropout_at(geo, seed, r, gpos, p0):
  """Dropout multiplier [..., C, S+G] of query blocks starting at class
  position p0, in rows with seed and residue r (seed, r, p0 broadcast
  together to the leading shape [...]; gpos [..., G] the extra keys'
  absolute positions, None without extra keys). Shared by the tile loop
  and the batched blocks (band_batched), so both drop the same entries."""
  i_pos = (p0[..., None] + jnp.arange(geo.c)) * geo.dil + r[..., None]
  j_pos = (p0[..., None] - geo.hl + jnp.arange(geo.span)) * geo.dil + (
      r[..., None])
  if geo.g:
    lead = jnp.broadcast_shapes(j_pos.shape[:-1], gpos.shape[:-1])
    j_pos = jnp.concatenate(
        [jnp.broadcast_to(j_pos, lead + (geo.span,)),
         jnp.broadcast_to(gpos, lead + (geo.g,))], axis=-1)
  return common.dropout_multiplier(seed[..., None, None], i_pos[..., :, None],
                                   j_pos[..., None, :], geo.dropout)


def rel_skew(geo, p_UxCxW1):
  """The shift of _rel_scores: products [U, C, W + 1] -> band term
  [U, C, S] (shared with band_batched)."""
  u, c, w1 = p_UxCxW1.shape
  lag = geo.rel_lag(geo.rel_rows)
  shifted = p_UxCxW1.reshape(u, c * w1)[:, :c * (w1 - 1)].reshape(u, c, w1 - 1)
  return shifted[:, :, lag:lag + geo.span]


def rel_unskew(geo, ds_UxCxS, w1):
  """The transpose of rel_skew: the band scores' cotangent [U, C, S(+G)]
  -> the products' [U, C, W + 1] (shared with band_batched)."""
  u, c, _ = ds_UxCxS.shape
  lag, span = geo.rel_lag(geo.rel_rows), geo.span
  dy = jnp.pad(ds_UxCxS[:, :, :span], ((0, 0), (0, 0),
                                       (lag, w1 - 1 - span - lag)))
  return jnp.pad(dy.reshape(u, c * (w1 - 1)), ((0, 0), (0, c))).reshape(
      u, c, w1)
