"""impl="pallas": the chunked path's layout (dilation classes, global rows)
around the Pallas band kernel, which takes the global keys and dropout
itself (one softmax over band and global keys)."""

from lfjax.kernels import band_attention as kernel


def with_kernel(band_attention, q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, *,
                window, causal, scale, gk_XxGxD=None, gv_XxGxDv=None,
                gvalid_XxG=None, dropout=None, rel=None):
  """band_with_global_keys through a kernel module's band_attention (this
  module's Triton kernel, or lfjax.attention.mosaic's TPU kernel: one
  contract)."""
  rel_kw = {}
  if rel is not None:
    rq, table, rel_min = rel
    rel_kw = dict(rel_query_XxNxDr=rq, rel_table_XxRxDr=table,
                  rel_min=rel_min)
  return band_attention(
      q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, window=window, causal=causal,
      scale=scale, gk_XxGxD=gk_XxGxD, gv_XxGxDv=gv_XxGxDv,
      gvalid_XxG=gvalid_XxG, dropout=dropout, **rel_kw)


def band_with_global_keys(q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, *, window,
                          causal, scale, gk_XxGxD=None, gv_XxGxDv=None,
                          gvalid_XxG=None, dropout=None, rel=None):
  """The kernel's softmax over the band and the global keys: (out float32
  [X, N, Dv], lse float32 [X, N]), differentiable in q, k, v, gk, gv and
  the relative term's rq, table (and through lse). Same contract as
  band.band_attention (k_offset 0): operands in their own dtype (bf16 stays
  bf16), float32 accumulation.

  dropout: None or (rate, dilation, seed_X, residue_X, gpos_XxG), the
  chunked path's counter hash at the rows' absolute positions.
  rel: None or (rq_XxNxDr, table_XxRxDr, rel_min) with rel_min a static
  int: band key t of query a scores scale * (q[a].k[t] +
  rq[a].table[a - t - rel_min]) (computed in the kernel at width Dr, q and k
  are not widened); global keys get no relative term."""
  return with_kernel(
      kernel.band_attention, q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN,
      window=window, causal=causal, scale=scale, gk_XxGxD=gk_XxGxD,
      gv_XxGxDv=gv_XxGxDv, gvalid_XxG=gvalid_XxG, dropout=dropout, rel=rel)
