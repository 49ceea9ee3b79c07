"""Pieces of the attention semantics shared by every implementation.

Letters: B batch, N sequence, H heads, D head dim, G global-token cap.
"""

import jax
import jax.numpy as jnp

# A finite stand-in for -inf: masked scores stay finite, so a fully masked row
# gives exp(0) terms that the caller zeroes instead of NaN from (-inf) - (-inf).
NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)


def effective_global(global_mask_BxN, key_mask_BxN, max_global):
  """Global tokens that actually act as global: not padding, first `max_global`.

  Padding wins over global (as in Hugging Face, where the merged mask is
  attention_mask * (global_attention_mask + 1)). Under jit the cap cannot be
  checked, so tokens past the first `max_global` of a row are demoted to
  ordinary local tokens; every implementation applies this same rule.
  """
  g_BxN = global_mask_BxN & key_mask_BxN
  rank_BxN = jnp.cumsum(g_BxN.astype(jnp.int32), axis=1)
  return g_BxN & (rank_BxN <= max_global)


def global_indices(eff_global_BxN, max_global):
  """Positions of global tokens as a static [B, G] array plus slot validity.

  Empty slots hold N, which is out of range: gathers clamp it (the slot is
  masked anyway) and scatters with mode="drop" ignore it.
  """
  n = eff_global_BxN.shape[1]
  pos_N = jnp.arange(n, dtype=jnp.int32)
  # Sorting keys put global positions first, in order; a stable argsort keeps
  # this a fixed-shape op (no nonzero, no host sync).
  key_BxN = jnp.where(eff_global_BxN, pos_N, n + pos_N)
  idx_BxG = jnp.sort(key_BxN, axis=1)[:, :max_global]
  valid_BxG = idx_BxG < n
  return jnp.where(valid_BxG, idx_BxG, n), valid_BxG


def take_rows(x_BxNxHxD, idx_BxG):
  """x[b, idx[b, g]] with out-of-range indices clamped."""
  return jnp.take_along_axis(x_BxNxHxD, idx_BxG[:, :, None, None], axis=1,
                             mode="clip")


def masked_softmax_attention(s_BxHxQxK, mask_BxHxQxK, v_BxKxHxD):
  """Float32 softmax over masked scores, then probs @ v.

  Rows with no allowed key give zeros. Returns [B, Q, H, D] in float32.
  """
  s = jnp.where(mask_BxHxQxK, s_BxHxQxK, NEG_INF)
  m = jnp.max(s, axis=-1, keepdims=True)
  p = jnp.where(mask_BxHxQxK, jnp.exp(s - m), 0.0)
  l = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(l == 0.0, 1.0, l)
  return jnp.einsum("bhqk,bkhd->bqhd", p.astype(v_BxKxHxD.dtype), v_BxKxHxD,
                    preferred_element_type=jnp.float32)


def global_rows_attention(qg_BxNxHxD, kg_BxNxHxD, vg_BxNxHxD, key_mask_BxN,
                          idx_BxG, scale):
  """Rows of global tokens: each attends every non-padding key, densely.

  O(G * N) memory. Returns [B, G, H, D] float32; callers scatter it into the
  output at idx (empty slots are dropped there).
  """
  q_BxGxHxD = take_rows(qg_BxNxHxD, idx_BxG)
  s_BxHxGxN = jnp.einsum("bghd,bnhd->bhgn", q_BxGxHxD, kg_BxNxHxD,
                         preferred_element_type=jnp.float32) * scale
  mask = key_mask_BxN[:, None, None, :]
  return masked_softmax_attention(s_BxHxGxN, mask, vg_BxNxHxD)


def scatter_rows(out_BxNxHxD, rows_BxGxHxD, idx_BxG):
  """out[b, idx[b, g]] = rows[b, g]; slots holding N are dropped."""
  b_Bx1 = jnp.arange(out_BxNxHxD.shape[0])[:, None]
  return out_BxNxHxD.at[b_Bx1, idx_BxG].set(rows_BxGxHxD.astype(
      out_BxNxHxD.dtype), mode="drop")


def is_concrete(x):
  """True when x has a value now (not a tracer inside jit/grad/vmap)."""
  return not isinstance(x, jax.core.Tracer)
