"""O(N^2) masked attention: the readable oracle the fast paths are tested against.

Builds the full [B, H, N, N] allowed-key mask from the definition and runs one
masked softmax per row kind (local rows with q, k, v; global rows with the
global projections). Only for short sequences and tests.
"""

import jax.numpy as jnp

from lfjax.attention import common


def band_mask(n, window, dilation_H, causal):
  """[H, N, N]: key j is in query i's (dilated) window."""
  diff_NxN = jnp.arange(n)[None, :] - jnp.arange(n)[:, None]  # j - i
  d_Hx1x1 = jnp.asarray(dilation_H, jnp.int32)[:, None, None]
  on_grid = diff_NxN[None] % d_Hx1x1 == 0
  steps = diff_NxN[None] // d_Hx1x1
  upper = 0 if causal else window
  return on_grid & (steps >= -window) & (steps <= upper)


def rel_bias(rel_query_BxNxHxDr, rel_table_TxHxDr, causal):
  """[B, H, N, N]: rel_query[i] . rel_table[row(i - j)], row(d) = d when
  causal, d + (T - 1) // 2 otherwise (entries whose row is outside the
  table hold other finite values: they lie outside the window)."""
  n = rel_query_BxNxHxDr.shape[1]
  t = rel_table_TxHxDr.shape[0]
  # Table rows reversed: row i - j + center sits at column j - i + L, a
  # right shift of row i by i (no [N, N] index array to gather with).
  per_row = jnp.einsum("bihd,thd->bhit", rel_query_BxNxHxDr,
                       rel_table_TxHxDr[::-1],
                       preferred_element_type=jnp.float32)
  lag = t - 1 - (0 if causal else (t - 1) // 2)
  width = max(t, n + lag)
  per_row = jnp.pad(per_row, ((0, 0), (0, 0), (0, 0), (0, width - t)))
  return common.shift_right(per_row)[..., lag:lag + n]


def dense_attention(q, k, v, *, window, dilation_H, causal, key_mask_BxN,
                    eff_global_BxN, global_qkv, scale, dropout=None,
                    rel=None):
  """Arguments are validated and normalised by lfjax.attention.api, which
  also zeroes padding rows and casts; returns float32.

  dropout: None or (rate, seeds_BxH): the same per-(b, h, i, j) mask as
  every implementation (common.dropout_multiplier).
  rel: None or (rel_query, rel_table): the relative term on window keys
  that are not global (rel_bias)."""
  b, n, h, _ = q.shape
  band_HxNxN = band_mask(n, window, dilation_H, causal)
  is_g_Bx1x1xN = eff_global_BxN[:, None, None, :]
  # A global key inside the window counts once: it leaves the band and is
  # attended through the "global key" term instead.
  local_BxHxNxN = ((band_HxNxN[None] & ~is_g_Bx1x1xN) | is_g_Bx1x1xN)
  local_BxHxNxN &= key_mask_BxN[:, None, None, :]
  s = jnp.einsum("bihd,bjhd->bhij", q, k,
                 preferred_element_type=jnp.float32)
  if rel is not None:
    s = s + jnp.where(band_HxNxN[None] & ~is_g_Bx1x1xN, rel_bias(*rel, causal),
                      0.0)
  s = s * scale
  drop = None
  if dropout is not None:
    rate, seeds_BxH = dropout
    pos_N = jnp.arange(n)
    drop = common.dropout_multiplier(seeds_BxH[:, :, None, None],
                                     pos_N[:, None], pos_N[None, :], rate)
  out_BxNxHxD = common.masked_softmax_attention(s, local_BxHxNxN, v, drop)

  if global_qkv is None:  # no global tokens possible (cap of 0)
    return out_BxNxHxD
  qg, kg, vg = global_qkv
  sg = jnp.einsum("bihd,bjhd->bhij", qg, kg,
                  preferred_element_type=jnp.float32) * scale
  all_keys = jnp.broadcast_to(key_mask_BxN[:, None, None, :], (b, h, n, n))
  out_g_BxNxHxD = common.masked_softmax_attention(sg, all_keys, vg, drop)

  return jnp.where(eff_global_BxN[:, :, None, None], out_g_BxNxHxD,
                   out_BxNxHxD)
