"""Transformer-XL relative sinusoidal positions as extra query/key features.

Transformer-XL scores a query at position i against a key at position j as
(q_i + u).k_j + (q_i + v).W_r r(i - j), with r(t) = [sin(t w_f), cos(t w_f)].
Because sin and cos of a difference expand into products of sin and cos of
each position, the second term equals q_pos(i).k_pos(j) where k_pos(j) =
[cos(j w), sin(j w)] and q_pos(i) rotates c = W_r^T (q_i + v) by i w. So the
whole score is ONE dot product of widened vectors, and any attention
implementation (dilated, chunked, kernels) gets relative positions for free.
"""

import jax.numpy as jnp
import numpy as np

# Positions are split as p = _STRIDE * hi + lo so that sin/cos tables stay
# small float64-exact constants and angles are combined by the addition
# formulas in float32: no float32 p * w product loses precision at p ~ 1e4.
_STRIDE = 64


def inverse_frequencies(num_features):
  """w_f = 10000^(-2f / F) for f < F/2, as Transformer-XL."""
  if num_features <= 0 or num_features % 2:
    raise ValueError(f"rel_features: expected a positive even int, got "
                     f"{num_features}")
  return 1.0 / (10000.0 ** (np.arange(0, num_features, 2) / num_features))


def sinusoid(t, num_features):
  """r(t) = [sin(t w), cos(t w)], float64 numpy, t any int array."""
  ang = np.asarray(t, np.float64)[..., None] * inverse_frequencies(num_features)
  return np.concatenate([np.sin(ang), np.cos(ang)], axis=-1)


def position_sin_cos(n, num_features, offset=0):
  """(sin(p w), cos(p w)) for p = offset .. offset + n - 1, each [n, F/2].

  offset is a static int (a shard's first position, for instance)."""
  freqs = inverse_frequencies(num_features)
  p = np.arange(n) + int(offset)
  hi0 = p[0] // _STRIDE
  hi_ang = np.arange(hi0, p[-1] // _STRIDE + 1)[:, None] * _STRIDE * freqs
  lo_ang = np.arange(_STRIDE)[:, None] * freqs
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  hi, lo = jnp.asarray(p // _STRIDE - hi0), jnp.asarray(p % _STRIDE)
  hi_sin, hi_cos = f32(np.sin(hi_ang))[hi], f32(np.cos(hi_ang))[hi]
  lo_sin, lo_cos = f32(np.sin(lo_ang))[lo], f32(np.cos(lo_ang))[lo]
  return (hi_sin * lo_cos + hi_cos * lo_sin, hi_cos * lo_cos - hi_sin * lo_sin)


def query_features(c_BxNxHxF, sin_NxF2, cos_NxF2):
  """q_pos(i) from c = W_r^T (q_i + v), so q_pos(i).k_pos(j) = c.r(i - j)."""
  f2 = c_BxNxHxF.shape[-1] // 2
  cs, cc = c_BxNxHxF[..., :f2], c_BxNxHxF[..., f2:]
  s, c = sin_NxF2[None, :, None, :], cos_NxF2[None, :, None, :]
  return jnp.concatenate([cs * s + cc * c, cc * s - cs * c], axis=-1)


def key_features(sin_NxF2, cos_NxF2):
  """k_pos(j) = [cos(j w), sin(j w)], [N, F]."""
  return jnp.concatenate([cos_NxF2, sin_NxF2], axis=-1)
