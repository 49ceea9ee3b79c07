"""impl="pallas": the chunked path's layout (dilation classes, global rows)
around the Pallas band kernel, with global keys merged by log-sum-exp."""

import jax.numpy as jnp

from lfjax.kernels import band_attention as kernel
from lfjax.attention import common


def band_with_global_keys(q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, *, window,
                          causal, scale, gk_XxGxD=None, gv_XxGxDv=None,
                          gvalid_XxG=None, rel=None):
  """The kernel's band softmax joined with a dense N x G softmax over the
  global keys: (out float32, lse). Same contract as band.band_attention.

  rel: None or (rq_XxNxDr, table_XxRxDr, rel_min) with rel_min a static
  int: band key t of query a scores scale * (q[a].k[t] +
  rq[a].table[a - t - rel_min]) (computed in the kernel at width Dr, q and k
  are not widened); global keys get no relative term."""
  rel_kw = {}
  if rel is not None:
    rq, table, rel_min = rel
    rel_kw = dict(rel_query_XxNxDr=rq, rel_table_XxRxDr=table,
                  rel_min=rel_min)
  out, lse = kernel.band_attention(q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN,
                                   window=window, causal=causal, scale=scale,
                                   **rel_kw)
  if gk_XxGxD is None or gk_XxGxD.shape[1] == 0:
    return out, lse
  s = jnp.einsum("xnd,xgd->xng", q_XxNxD, gk_XxGxD,
                 preferred_element_type=jnp.float32) * scale
  ok = gvalid_XxG[:, None, :]
  s = jnp.where(ok, s, common.NEG_INF)
  m = jnp.maximum(jnp.max(s, axis=-1), lse)
  p = jnp.where(ok, jnp.exp(s - m[..., None]), 0.0)
  band_w = jnp.where(lse > 0.5 * common.NEG_INF, jnp.exp(lse - m), 0.0)
  l = band_w + jnp.sum(p, axis=-1)
  empty = l == 0.0
  merged = (out * band_w[..., None] + jnp.einsum(
      "xng,xgd->xnd", p, gv_XxGxDv.astype(jnp.float32))) / jnp.where(
          empty, 1.0, l)[..., None]
  lse = jnp.where(empty, common.NEG_INF,
                  m + jnp.log(jnp.where(empty, 1.0, l)))
  return merged, lse
