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


def masked_softmax_attention(s_BxHxQxK, mask_BxHxQxK, v_BxKxHxD,
                             drop_BxHxQxK=None):
  """Float32 softmax over masked scores, then probs @ v.

  drop: optional dropout multiplier (dropout_multiplier) on the probs.
  Rows with no allowed key give zeros. Returns [B, Q, H, D] in float32.
  """
  s = jnp.where(mask_BxHxQxK, s_BxHxQxK, NEG_INF)
  m = jnp.max(s, axis=-1, keepdims=True)
  p = jnp.where(mask_BxHxQxK, jnp.exp(s - m), 0.0)
  l = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(l == 0.0, 1.0, l)
  if drop_BxHxQxK is not None:
    p = p * drop_BxHxQxK
  return jnp.einsum("bhqk,bkhd->bqhd", p.astype(v_BxKxHxD.dtype), v_BxKxHxD,
                    preferred_element_type=jnp.float32)


def global_rows_attention(qg_BxNxHxD, kg_BxNxHxD, vg_BxNxHxD, key_mask_BxN,
                          idx_BxG, scale, dropout=None):
  """Rows of global tokens: each attends every non-padding key, densely.

  dropout: None or (rate, seeds_BxH from dropout_seeds).
  O(G * N) memory. Returns [B, G, H, D] float32; callers scatter it into the
  output at idx (empty slots are dropped there).
  """
  q_BxGxHxD = take_rows(qg_BxNxHxD, idx_BxG)
  s_BxHxGxN = jnp.einsum("bghd,bnhd->bhgn", q_BxGxHxD, kg_BxNxHxD,
                         preferred_element_type=jnp.float32) * scale
  mask = key_mask_BxN[:, None, None, :]
  drop = None
  if dropout is not None:
    rate, seeds_BxH = dropout
    n = kg_BxNxHxD.shape[1]
    drop = dropout_multiplier(seeds_BxH[:, :, None, None],
                              idx_BxG[:, None, :, None],
                              jnp.arange(n)[None, None, None, :], rate)
  return masked_softmax_attention(s_BxHxGxN, mask, vg_BxNxHxD, drop)


def scatter_rows(out_BxNxHxD, rows_BxGxHxD, idx_BxG):
  """out[b, idx[b, g]] = rows[b, g]; slots holding N are dropped."""
  b_Bx1 = jnp.arange(out_BxNxHxD.shape[0])[:, None]
  return out_BxNxHxD.at[b_Bx1, idx_BxG].set(rows_BxGxHxD.astype(
      out_BxNxHxD.dtype), mode="drop")


def is_concrete(x):
  """True when x has a value now (not a tracer inside jit/grad/vmap)."""
  return not isinstance(x, jax.core.Tracer)


# Attention dropout. The keep/drop decision for probability (b, h, i, j) is
# a hash of (seed, b, h, i, j) with i, j absolute positions, not a draw from
# a stream: every implementation (dense, the chunked tiles, their backward
# passes, global rows) regenerates exactly the same mask wherever it needs
# it, without storing an N x N (or N x w) mask.

def _mix(x):
  """murmur3's 32-bit finaliser: a bijection that spreads every input bit."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def dropout_seeds(key, b, h):
  """[B, H] uint32 per-(batch, head) seeds from a jax.random key."""
  seed = jax.random.bits(key, (), jnp.uint32)
  bh = (jnp.arange(b, dtype=jnp.uint32)[:, None] * jnp.uint32(h)
        + jnp.arange(h, dtype=jnp.uint32)[None, :])
  return _mix(seed ^ _mix(bh + jnp.uint32(0x9E3779B9)))


def dropout_multiplier(seed, i, j, rate):
  """1 / (1 - rate) where probability (i, j) is kept, else 0 (float32).

  seed, i, j broadcast together: seed from dropout_seeds, i the query's and
  j the key's absolute position (int)."""
  bits = _mix(seed ^ _mix(i.astype(jnp.uint32)
                          ^ _mix(j.astype(jnp.uint32)
                                 + jnp.uint32(0x27D4EB2F))))
  threshold = jnp.uint32(min(int(rate * 2.0 ** 32), 2 ** 32 - 1))
  return jnp.where(bits >= threshold, jnp.float32(1.0 / (1.0 - rate)),
                   jnp.float32(0.0))


def shift_right(x):
  """y[..., a, j] = x[..., a, j - a] for j >= a (other entries hold
  neighbouring rows' values): a per-row shift by a flat reshape, no index
  array (the skew of Transformer-XL's relative attention). x [..., C, W]."""
  *lead, c, w = x.shape
  pad = [(0, 0)] * len(lead) + [(0, 0), (0, 1)]
  flat = jnp.pad(x, pad).reshape(*lead, c * (w + 1))[..., :c * w]
  return flat.reshape(*lead, c, w)


def shift_left(x):
  """y[..., a, j] = x[..., a, j + a] where j + a < W (others hold
  neighbouring rows' values). x [..., C, W]."""
  *lead, c, w = x.shape
  pad = [(0, 0)] * len(lead) + [(0, c)]
  flat = jnp.pad(x.reshape(*lead, c * w), pad)
  return flat.reshape(*lead, c, w + 1)[..., :w]
