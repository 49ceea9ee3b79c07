"""Chunked windowed attention: dilation classes and global tokens around the
blocked band core (lfjax.attention.band), O(N * window) memory.

Dilation d is handled by permuting the sequence into its d residue classes:
positions r, r+d, r+2d, ... form one class, and a dilated window over the
sequence is a plain window over each class. Heads are grouped by dilation,
and each group is one band call over (batch, head, class) rows.

Global keys join every row's band softmax as extra keys (the band excludes
them, so a global key in the window counts once); rows of global tokens are
a dense G x N pass with the global projections, scattered into the output.
"""

import jax.numpy as jnp
import numpy as np

from lfjax.attention import band
from lfjax.attention import common


def to_classes(x_BxNxHx, dil):
  """[B, N, H, ...] -> [B * H * dil, ceil(N / dil), ...], residue-major."""
  b, n, h = x_BxNxHx.shape[:3]
  rest = x_BxNxHx.shape[3:]
  nd = -(-n // dil)
  pad = [(0, 0)] * x_BxNxHx.ndim
  pad[1] = (0, nd * dil - n)
  x = jnp.pad(x_BxNxHx, pad).reshape(b, nd, dil, h, *rest)
  x = jnp.moveaxis(x, (1, 2), (3, 2))  # [B, H, dil, nd, ...]
  return x.reshape(b * h * dil, nd, *rest)


def from_classes(x_Xxnd, b, n, h, dil):
  """Inverse of to_classes."""
  nd = x_Xxnd.shape[1]
  rest = x_Xxnd.shape[2:]
  x = x_Xxnd.reshape(b, h, dil, nd, *rest)
  x = jnp.moveaxis(x, (3, 2), (1, 2))  # [B, nd, dil, H, ...]
  return x.reshape(b, nd * dil, h, *rest)[:, :n]


def rel_window_tables(rel_table_TxHxR, heads, dil, window, causal, b):
  """The table rows a dilation group's window reads, per band row:
  ([B * hs * dil, R, Dr], rel_min). Class distance m (positions m * dil)
  is row m - rel_min; rows past the table (distances longer than the
  sequence, never unmasked) are clipped."""
  t = rel_table_TxHxR.shape[0]
  rel_min = 0 if causal else -window
  dist = np.arange(rel_min, window + 1) * dil
  rows = np.clip(dist + (0 if causal else (t - 1) // 2), 0, t - 1)
  tab_HxRxDr = jnp.transpose(rel_table_TxHxR[rows][:, np.array(heads)],
                             (1, 0, 2))
  hs, r, dr = tab_HxRxDr.shape
  tab = jnp.broadcast_to(tab_HxRxDr[None, :, None], (b, hs, dil, r, dr))
  return tab.reshape(b * hs * dil, r, dr), rel_min


def chunked_attention(q, k, v, *, window, dilation_H, causal, key_mask_BxN,
                      eff_global_BxN, max_global, global_qkv, scale,
                      band_fn=band.band_attention, dropout=None, rel=None):
  """Arguments are validated and normalised by lfjax.attention.api, which
  also zeroes padding rows and casts; returns float32.

  band_fn computes undilated band attention with optional extra (global)
  keys, as band.band_attention: the blocked jnp core, or the Pallas kernel
  (lfjax.attention.pallas). dropout: None or (rate, seeds_BxH), passed to
  band_fn with each row's absolute positions (band_fn must accept it).
  rel: None or (rel_query_BxNxHxDr, rel_table_TxHxDr), passed to band_fn
  per dilation group as class-space tables (rel_window_tables)."""
  b, n, h, d = q.shape
  g = max_global
  band_keys_BxN = key_mask_BxN & ~eff_global_BxN
  if g:
    idx_BxG, gvalid_BxG = common.global_indices(eff_global_BxN, g)
    gk_BxGxHxD = common.take_rows(k, idx_BxG)
    gv_BxGxHxD = common.take_rows(v, idx_BxG)

  outs, head_order = [], []
  for dil in sorted(set(dilation_H)):
    heads = [i for i, dh in enumerate(dilation_H) if dh == dil]
    hs = len(heads)
    if hs == h:
      pick = lambda a: a
    elif heads == list(range(heads[0], heads[-1] + 1)):
      # A slice, not a gather: its gradient is a pad, not a scatter into a
      # zero buffer that XLA may allocate long before it is used.
      pick = lambda a, lo=heads[0], hi=heads[-1] + 1: a[:, :, lo:hi]
    else:
      pick = lambda a: a[:, :, np.array(heads)]
    per_head = lambda m_BxN: jnp.broadcast_to(m_BxN[:, :, None], (b, n, hs))
    extra = {}
    if g:
      rep = lambda a: jnp.repeat(to_classes(pick(a), 1), dil, axis=0)
      extra = dict(gk_XxGxD=rep(gk_BxGxHxD), gv_XxGxDv=rep(gv_BxGxHxD),
                   gvalid_XxG=rep(jnp.broadcast_to(
                       gvalid_BxG[:, :, None], (b, g, h))))
    if dropout is not None:
      rate, seeds_BxH = dropout
      # Rows are (batch, head, residue) in to_classes order.
      seeds = jnp.repeat(seeds_BxH[:, np.array(heads)].reshape(-1), dil)
      residues = jnp.tile(jnp.arange(dil, dtype=jnp.int32), b * hs)
      gpos = None
      if g:
        gpos = rep(jnp.broadcast_to(idx_BxG[:, :, None], (b, g, h)))
      extra["dropout"] = (rate, dil, seeds, residues, gpos)
    if rel is not None:
      rq_BxNxHxDr, table_TxHxDr = rel
      # Rows for the distances this class can reach, not the whole window.
      reach = min(window, max(-(-n // dil) - 1, 0))
      tab, rel_min = rel_window_tables(table_TxHxDr, heads, dil, reach,
                                       causal, b)
      extra["rel"] = (to_classes(pick(rq_BxNxHxDr), dil), tab, rel_min)
    o, _ = band_fn(
        to_classes(pick(q), dil), to_classes(pick(k), dil),
        to_classes(pick(v), dil), to_classes(per_head(band_keys_BxN), dil),
        window=window, causal=causal, scale=scale, **extra)
    outs.append(from_classes(o, b, n, hs, dil))
    head_order += heads
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
  if head_order != list(range(h)):
    out = out[:, :, np.argsort(head_order)]

  if g:
    rows_BxGxHxD = common.global_rows_attention(*global_qkv, key_mask_BxN,
                                                idx_BxG, scale, dropout)
    out = common.scatter_rows(out, rows_BxGxHxD, idx_BxG)
  return out


def band_scores_per_row(n, window, num_global=0, causal=False):
  """Scores the chunked path computes per query row (waste accounting)."""
  geo = band.geometry(1, n, n, num_global, window=window, causal=causal)
  return geo.nb * geo.c * (geo.span + geo.g) / n
