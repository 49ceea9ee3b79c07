"""Attention probabilities in Hugging Face Longformer's layout, for analysis.

Dense O(N^2) computation from the same masks as the oracle, so it is exact
and simple, not fast: use it to look at attention, not to train.
"""

import jax.numpy as jnp
import numpy as np

from lfjax.attention import common
from lfjax.attention import dense


def attention_probabilities(q, k, *, window, dilation=1, causal=False,
                            key_mask=None, global_mask=None, global_qk=None,
                            max_global=0, scale=None):
  """(local [B, H, N, G + 2w + 1], global [B, H, N, G]) probabilities.

  As transformers' `attentions` / `global_attentions` with G = max_global:
  local[..., i, g] is row i's weight on the g-th global token (in sequence
  order), local[..., i, G + w + m] its weight on key i + m*d (0 where that
  key is global: it is counted in the first G columns). Rows of global
  tokens and padding rows are 0 in `local`; global[..., j, g] is the g-th
  global token's weight on key j (computed with global_qk, default q, k).
  Slots past a row's global count are 0. Arguments as windowed_attention.
  """
  b, n, h, d = q.shape
  dil_H = (dilation,) * h if isinstance(dilation, int) else tuple(dilation)
  scale = 1.0 / float(np.sqrt(d)) if scale is None else scale
  key_mask = (jnp.ones((b, n), bool) if key_mask is None
              else jnp.asarray(key_mask))
  g = int(max_global) if global_mask is not None else 0
  if g:
    eff = common.effective_global(jnp.asarray(global_mask), key_mask, g)
  else:
    eff = jnp.zeros((b, n), bool)
  band = dense.band_mask(n, window, dil_H, causal)[None]
  is_g = eff[:, None, None, :]
  allowed = ((band & ~is_g) | is_g) & key_mask[:, None, None, :]
  s = jnp.einsum("bihd,bjhd->bhij", q, k,
                 preferred_element_type=jnp.float32) * scale
  p = _softmax(s, allowed)
  row_ok = (key_mask & ~eff)[:, None, :, None]

  # Window columns: key i + m*d for m = -w..w.
  m = np.arange(-window, window + 1)
  j_HxNxM = (np.arange(n)[None, :, None]
             + m[None, None, :] * np.asarray(dil_H)[:, None, None])
  inside = (j_HxNxM >= 0) & (j_HxNxM < n)
  if causal:
    inside &= m[None, None, :] <= 0
  jc = np.clip(j_HxNxM, 0, n - 1)
  win = jnp.take_along_axis(p, jnp.broadcast_to(jc[None], (b, h, n, m.size)),
                            axis=-1)
  key_global = jnp.take_along_axis(
      jnp.broadcast_to(eff[:, None, None, :], (b, h, n, n)),
      jnp.broadcast_to(jc[None], (b, h, n, m.size)), axis=-1)
  win = jnp.where(inside[None] & ~key_global, win, 0.0)
  if not g:
    return jnp.where(row_ok, win, 0.0), None

  idx_BxG, valid_BxG = common.global_indices(eff, g)
  to_global = jnp.take_along_axis(
      p, jnp.broadcast_to(idx_BxG[:, None, None, :], (b, h, n, g)), axis=-1)
  to_global = jnp.where(valid_BxG[:, None, None, :], to_global, 0.0)
  local = jnp.where(row_ok, jnp.concatenate([to_global, win], axis=-1), 0.0)

  qg, kg = global_qk if global_qk is not None else (q, k)
  sg = jnp.einsum("bihd,bjhd->bhij", qg, kg,
                  preferred_element_type=jnp.float32) * scale
  pg = _softmax(sg, jnp.broadcast_to(key_mask[:, None, None, :],
                                     (b, h, n, n)))
  rows = jnp.take_along_axis(
      pg, jnp.broadcast_to(idx_BxG[:, None, :, None], (b, h, g, n)), axis=2)
  rows = jnp.where(valid_BxG[:, None, :, None], rows, 0.0)
  return local, jnp.swapaxes(rows, 2, 3)


def _softmax(s, mask):
  s = jnp.where(mask, s, -jnp.inf)
  mx = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.where(mask, jnp.exp(s - jnp.where(jnp.isfinite(mx), mx, 0.0)), 0.0)
  z = jnp.sum(e, axis=-1, keepdims=True)
  return e / jnp.where(z == 0.0, 1.0, z)
