"""impl="mosaic": the chunked path's layout (dilation classes, global rows)
around lfjax's Mosaic (Pallas TPU) band kernel, which takes the global keys,
dropout and the relative-position term itself (one softmax over band and
global keys). What splash attention (impl="splash") cannot do."""

from lfjax.kernels import tpu_band_attention as kernel


def band_with_global_keys(q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, *, window,
                          causal, scale, gk_XxGxD=None, gv_XxGxDv=None,
                          gvalid_XxG=None, dropout=None, rel=None):
  """The TPU kernel's softmax over the band and the global keys: (out
  float32 [X, N, Dv], lse float32 [X, N]), differentiable in q, k, v, gk,
  gv and the relative term's rq, table (and through lse). The contract of
  lfjax.attention.pallas.band_with_global_keys: operands in their own dtype
  (bf16 stays bf16), float32 accumulation.

  dropout: None or (rate, dilation, seed_X, residue_X, gpos_XxG), the
  chunked path's counter hash at the rows' absolute positions.
  rel: None or (rq_XxNxDr, table_XxRxDr, rel_min) with rel_min a static
  int: band key t of query a scores scale * (q[a].k[t] +
  rq[a].table[a - t - rel_min]); global keys get no relative term.
  Compiled Mosaic kernels when lowered for TPU, interpret mode on CPU."""
  rel_kw = {}
  if rel is not None:
    rq, table, rel_min = rel
    rel_kw = dict(rel_query_XxNxDr=rq, rel_table_XxRxDr=table,
                  rel_min=rel_min)
  return kernel.band_attention(
      q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, window=window, causal=causal,
      scale=scale, gk_XxGxD=gk_XxGxD, gv_XxGxDv=gv_XxGxDv,
      gvalid_XxG=gvalid_XxG, dropout=dropout, **rel_kw)
