"""Brute-force Longformer attention written from the spec, for tests only.

Shares no code with lfjax: for every (batch, head, query) it lists the
allowed keys with plain Python loops, then runs a softmax over exactly those
keys. The attention arithmetic is in jnp (float32) so tests can take
gradients through it; the key lists are fixed numpy indices.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def allowed_keys(n, window, dilation, causal, key_mask, global_mask):
  """keys[b][h][i]: sorted key positions query i may attend (empty for pads),
  and is_global[b][i]: whether row i is computed as a global row."""
  bsz, heads = key_mask.shape[0], len(dilation)
  keys, is_global = [], []
  for b in range(bsz):
    valid = [bool(key_mask[b, j]) for j in range(n)]
    glob = [bool(global_mask[b, j]) and valid[j] for j in range(n)]
    is_global.append(glob)
    per_head = []
    for h in range(heads):
      d = dilation[h]
      rows = []
      for i in range(n):
        if not valid[i]:
          rows.append([])
          continue
        if glob[i]:
          rows.append([j for j in range(n) if valid[j]])
          continue
        sel = set(j for j in range(n) if glob[j])
        for m in range(-window, (0 if causal else window) + 1):
          j = i + m * d
          if 0 <= j < n and valid[j]:
            sel.add(j)
        rows.append(sorted(sel))
      per_head.append(rows)
    keys.append(per_head)
  return keys, is_global


def _mix(x):
  """murmur3's 32-bit finaliser, in numpy uint32."""
  x = x ^ (x >> np.uint32(16))
  x = x * np.uint32(0x85EBCA6B)
  x = x ^ (x >> np.uint32(13))
  x = x * np.uint32(0xC2B2AE35)
  return x ^ (x >> np.uint32(16))


def dropout_multipliers(key, rate, idx, bsz, heads, n):
  """The spec of windowed_attention's dropout: probability (b, h, i, j) is
  kept iff mix(s_bh ^ mix(i ^ mix(j + 0x27D4EB2F))) >= rate * 2^32, with
  s_bh = mix(seed ^ mix(b * H + h + 0x9E3779B9)) and seed the key's 32
  random bits; kept ones are scaled by 1 / (1 - rate). [B, H, N, K] at idx."""
  with np.errstate(over="ignore"):
    seed = np.uint32(np.asarray(jax.random.bits(key, (), jnp.uint32)))
    bh = (np.arange(bsz, dtype=np.uint32)[:, None] * np.uint32(heads)
          + np.arange(heads, dtype=np.uint32)[None, :])
    s_bh = _mix(seed ^ _mix(bh + np.uint32(0x9E3779B9)))
    i = np.arange(n, dtype=np.uint32)[None, None, :, None]
    j = idx.astype(np.uint32)
    bits = _mix(s_bh[:, :, None, None]
                ^ _mix(i ^ _mix(j + np.uint32(0x27D4EB2F))))
  keep = bits >= np.uint32(min(int(rate * 2.0 ** 32), 2 ** 32 - 1))
  return np.where(keep, np.float32(1.0 / (1.0 - rate)), np.float32(0.0))


def rel_rows(i, j, causal, table_rows):
  """The spec of the relative term's table row for query i and key j:
  i - j when causal, i - j + (T - 1) // 2 otherwise."""
  return i - j if causal else i - j + (table_rows - 1) // 2


def reference_attention(q, k, v, *, window, dilation=1, causal=False,
                        key_mask=None, global_mask=None, global_qkv=None,
                        scale=None, dropout_rate=0.0, dropout_key=None,
                        rel_query=None, rel_table=None):
  """Same contract as lfjax.attention.windowed_attention, float32 out.

  rel_query [B, N, H, Dr] / rel_table [T, H, Dr]: an ordinary row i adds
  rel_query[i] . rel_table[rel_rows(i, j)] to its score of every window key
  j that is not global (scaled like q.k); global rows and global keys get
  no relative term."""
  bsz, n, heads, dim = q.shape
  if isinstance(dilation, int):
    dilation = [dilation] * heads
  key_mask = np.ones((bsz, n), bool) if key_mask is None else np.asarray(
      key_mask)
  global_mask = np.zeros((bsz, n), bool) if global_mask is None else (
      np.asarray(global_mask))
  scale = 1.0 / np.sqrt(dim) if scale is None else scale
  qg, kg, vg = global_qkv if global_qkv is not None else (q, k, v)
  keys, is_global = allowed_keys(n, window, dilation, causal, key_mask,
                                 global_mask)
  kmax = max(1, max(len(r) for kb in keys for kh in kb for r in kh))
  idx = np.zeros((bsz, heads, n, kmax), np.int32)
  ok = np.zeros((bsz, heads, n, kmax), bool)
  for b in range(bsz):
    for h in range(heads):
      for i in range(n):
        r = keys[b][h][i]
        idx[b, h, i, :len(r)] = r
        ok[b, h, i, :len(r)] = True
  glob_rows = np.asarray(is_global)[:, None, :, None]  # [B, 1, N, 1]
  drop = np.ones(idx.shape, np.float32)
  if dropout_rate:
    drop = dropout_multipliers(dropout_key, dropout_rate, idx, bsz, heads, n)
  if rel_query is None:
    rel_query = jnp.zeros((bsz, n, heads, 1), jnp.float32)
    rel_table = jnp.zeros((1, heads, 1), jnp.float32)
  t = rel_table.shape[0]
  rel_idx = np.zeros(idx.shape, np.int32)
  rel_ok = np.zeros(idx.shape, bool)
  for b in range(bsz):
    glob_keys = set(np.flatnonzero(np.asarray(is_global)[b]).tolist())
    for h in range(heads):
      for i in range(n):
        if is_global[b][i]:
          continue
        for slot, j in enumerate(keys[b][h][i]):
          if j in glob_keys:
            continue
          rel_idx[b, h, i, slot] = rel_rows(i, j, causal, t)
          rel_ok[b, h, i, slot] = True
  return _attend(q, k, v, qg, kg, vg, idx, ok, glob_rows, drop, rel_query,
                 rel_table, rel_idx, rel_ok, float(scale))


@functools.partial(jax.jit, static_argnames="scale")
def _attend(q, k, v, qg, kg, vg, idx, ok, glob_rows, drop, rel_query,
            rel_table, rel_idx, rel_ok, scale):
  """Softmax over the listed keys of each row (jitted: one compile per case
  instead of one per primitive)."""
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  def gather(x):  # [B, N, H, D] -> [B, H, N, K, D] at idx
    xt = jnp.transpose(f32(x), (0, 2, 1, 3))  # [B, H, N, D]
    return jnp.take_along_axis(xt[:, :, None], idx[..., None], axis=3)

  qt = jnp.where(glob_rows, jnp.transpose(f32(qg), (0, 2, 1, 3)),
                 jnp.transpose(f32(q), (0, 2, 1, 3)))
  kt = jnp.where(glob_rows[..., None], gather(kg), gather(k))
  vt = jnp.where(glob_rows[..., None], gather(vg), gather(v))
  s = jnp.einsum("bhnd,bhnkd->bhnk", qt, kt)
  # Relative term: rel_table rows per (b, h, i, slot), per head.
  table_HxTxR = jnp.transpose(f32(rel_table), (1, 0, 2))
  rows = jax.vmap(lambda tab, ix: tab[ix], in_axes=(0, 1), out_axes=1)(
      table_HxTxR, rel_idx)  # [B, H, N, K, Dr]
  rq = jnp.transpose(f32(rel_query), (0, 2, 1, 3))
  s = (s + jnp.where(rel_ok, jnp.einsum("bhnd,bhnkd->bhnk", rq, rows),
                     0.0)) * scale
  # Softmax is shift invariant, so the shift carries no gradient.
  s_max = jax.lax.stop_gradient(jnp.max(jnp.where(ok, s, -jnp.inf), axis=-1,
                                        keepdims=True))
  s_max = jnp.where(jnp.isfinite(s_max), s_max, 0.0)
  e = jnp.where(ok, jnp.exp(s - s_max), 0.0)
  denom = jnp.sum(e, axis=-1, keepdims=True)
  p = e / jnp.where(denom > 0, denom, 1.0) * drop
  out = jnp.einsum("bhnk,bhnkd->bhnd", p, vt)
  return jnp.transpose(out, (0, 2, 1, 3))
