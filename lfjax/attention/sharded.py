"""Sequence-parallel windowed attention: the sequence split over a mesh axis.

Each of the P devices on the axis holds n = N / P consecutive query rows and
the keys and values at the same positions. A window needs w * d rows of its
neighbours' keys on each side (causal: left only), so they arrive by halo
exchange (`lax.ppermute` to the next / previous device, several hops when the
halo is longer than a shard), never by an all-gather of the sequence: a
device receives O(w * d) rows per layer whatever N and P are, where the
all-gather of JAX's context-parallel stacks (MaxText, AXLearn, TE-JAX)
receives (P - 1) / P * N (design and survey: research notes scale.md, §1).

On its extended keys (halo + own + halo) each device runs the single-device
band core (lfjax.attention.band, with a static key offset; or the Pallas
kernel) per dilation group, exactly as the chunked implementation does.
Global tokens: their keys/values (at most max_global rows) are gathered by a
psum of per-shard scatters (an all-reduce of G rows, not of N); their own
rows attend every key, computed per shard over the local keys and merged
across shards by log-sum-exp (pmax of the local maxima, psum of the
rescaled numerators and denominators: a split-KV softmax).

Backward needs nothing custom: JAX transposes ppermute to the inverse
permutation, so the halo rows' dK/dV flow back to their owners, and psum's
transpose sums the global rows' gradients onto the owning shard.

Letters: B batch, N sequence, n shard rows, H heads, D head dim, G global cap,
P devices on the sequence axis.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from lfjax.attention import api
from lfjax.attention import band
from lfjax.attention import chunked
from lfjax.attention import common

IMPLS = ("auto", "chunked") + tuple(api.BAND_KERNELS)


def sequence_parallel_attention(q, k, v, *, mesh, axis_name="seq",
                                batch_axis=None, window, dilation=1,
                                causal=False, key_mask=None, global_mask=None,
                                global_qkv=None, max_global=None, scale=None,
                                impl="auto", dropout_rate=0.0,
                                dropout_key=None, rel_query=None,
                                rel_table=None):
  """windowed_attention with the sequence split over a mesh axis.

  Same semantics, arguments and result as
  lfjax.attention.windowed_attention (window, dilation, causal, padding,
  global tokens with their own projections, the relative-position term,
  attention dropout): only where the work runs differs. Call it on whole
  (global) arrays, under jit or not; inside it runs as a `jax.shard_map`
  over `axis_name` (and `batch_axis`), with each device holding N / P rows.

  Args:
    q, k, v: [batch, seq, heads, head_dim] (v's head_dim may differ), any
      float dtype. seq must be a multiple of P, the mesh's size along
      axis_name; the result is sharded like q.
    mesh: a jax.sharding.Mesh with an axis named axis_name. Inputs may be
      laid out in any way (they are resharded to the layout below). Auto
      axes not named here stay under the compiler's control (it may split
      the batch over them). On a mesh with Explicit axes (jax.make_mesh's
      default since jax 0.9) every other axis holds replicas, so pass
      batch_axis when the batch is split; and an eager (not jitted)
      jax.grad needs jax.set_mesh(mesh) around it (JAX refuses it
      otherwise: "enter your `jit` into a mesh context via
      `jax.set_mesh`"), while under jit it works with or without (jax
      0.10 and 0.12 alike). On Auto axes it works with or without.
    axis_name: the mesh axis the sequence is split over (P devices).
    batch_axis: None, or a mesh axis name (or tuple of names) the batch is
      split over (data parallelism); batch must be a multiple of its size.
    window, dilation, causal, key_mask, global_mask, global_qkv, max_global,
    scale, dropout_rate, dropout_key, rel_query, rel_table: as
      windowed_attention. Dropout keeps or drops the same entries as the
      unsharded call (the hash of absolute positions).
    impl: "chunked" (the blocked jnp band core), "pallas" (the Pallas-Triton
      band kernel, GPUs), "splash" (JAX's splash attention, TPUs; no
      dropout, no relative term), "mosaic" (the Mosaic band kernel, TPUs;
      all three in interpret mode on CPU) or "auto" (chunked; on a TPU
      splash or mosaic, as windowed_attention's api.resolve_impl). A kernel
      runs per shard on the shard's extended keys, its queries padded by
      the halo (as many queries as keys).
      "dense" is the O(N^2) oracle and is not sharded.

  Returns:
    [batch, seq, heads, v's head_dim] in q's dtype, sharded over axis_name
    along seq (and batch_axis along batch).

  Communication per layer and device (forward; the backward moves the same
  again): halo exchange of the left (and, unless causal, right)
  min(window * max dilation, ~N) rows of k, v and a bool key mask, one tuple
  `ppermute` per hop and side, ceil(halo / n) hops (P = 1: none); with
  global tokens, all-reduces of G x H x D rows (their q_g, k, v), of the
  global rows' partial numerators and denominators, and of B x P counts.

  Raises:
    ValueError: every malformed argument windowed_attention rejects, with
      the same messages; mesh without axis_name or batch_axis; seq (batch)
      not a multiple of the axis size; impl not in IMPLS.
  """
  b, n, _, _ = api._check_qkv(q, k, v)
  if impl not in IMPLS:
    raise ValueError(f"impl: expected one of {IMPLS} (dense is the O(N^2) "
                     f"oracle and is not sharded), got {impl!r}")
  p_seq = _axis_size(mesh, "axis_name", axis_name)
  if n % p_seq:
    raise ValueError(f"q, k, v: expected seq to be a multiple of the mesh's "
                     f"'{axis_name}' axis ({p_seq} devices), got seq {n}; "
                     f"pad the sequence (key_mask False) to a multiple")
  batch_names = () if batch_axis is None else (
      (batch_axis,) if isinstance(batch_axis, str) else tuple(batch_axis))
  p_batch = 1
  for name in batch_names:
    if name == axis_name:
      raise ValueError(f"batch_axis: expected mesh axes other than "
                       f"axis_name '{axis_name}', got {batch_axis!r}")
    p_batch *= _axis_size(mesh, "batch_axis", name)
  if b % p_batch:
    raise ValueError(f"q, k, v: expected batch to be a multiple of the "
                     f"batch_axis size {p_batch}, got batch {b}")
  a = api._check_args(q, k, v, window=window, dilation=dilation,
                      causal=causal, key_mask=key_mask,
                      global_mask=global_mask, global_qkv=global_qkv,
                      max_global=max_global, scale=scale, impl=impl,
                      dropout_rate=dropout_rate, dropout_key=dropout_key,
                      rel_query=rel_query, rel_table=rel_table)
  arrays = dict(q=q, k=k, v=v)
  if a.dropout_seeds_BxH is not None:
    arrays["seeds"] = a.dropout_seeds_BxH
  arrays["key_mask"] = (jnp.ones((b, n), bool) if a.key_mask_BxN is None
                        else a.key_mask_BxN)
  if a.max_global:
    arrays["global_mask"] = (jnp.zeros((b, n), bool)
                             if a.global_mask_BxN is None
                             else a.global_mask_BxN)
    arrays["global_qkv"] = a.global_qkv or (q, k, v)
  if a.rel is not None:
    arrays["rel_query"], arrays["rel_table"] = a.rel
  return _sharded(arrays, mesh=mesh, axis_name=axis_name,
                  batch_names=batch_names, window=a.window,
                  dilation_H=a.dilation_H, causal=causal,
                  max_global=a.max_global, scale=a.scale, impl=impl,
                  dropout_rate=a.dropout_rate)


def _axis_size(mesh, arg, name):
  names = getattr(mesh, "axis_names", None)
  if names is None:
    raise ValueError(f"mesh: expected a jax.sharding.Mesh, got "
                     f"{type(mesh).__name__}")
  if name not in names:
    raise ValueError(f"{arg}: expected an axis of the mesh {tuple(names)}, "
                     f"got {name!r}")
  return int(mesh.shape[name])


def _sharded(arrays, *, mesh, axis_name, batch_names, **static):
  # band.FORCE_PATH is read when the body is traced: a key of the cache.
  fn = _sharded_jit(mesh, axis_name, batch_names, tuple(sorted(arrays)),
                    band_path=band.FORCE_PATH, **static)
  if not isinstance(mesh, jax.sharding.Mesh) or (
      jax.sharding.AxisType.Explicit in tuple(mesh.axis_types)):
    return fn(arrays)
  # The jit states its shardings, and eagerly refuses a committed array
  # laid out otherwise (replicated, or made under jax.set_mesh, as the
  # default key mask and jnp.sum's cotangent are): lay the inputs out as
  # stated, as jit does for uncommitted ones, and the output too (a no-op
  # forward, whose transpose lays the cotangent out as the output is).
  # Under a caller's jit these are the constraints the jit states anyway.
  rows, specs = _specs(tuple(arrays), axis_name, batch_names)
  named = lambda spec: jax.NamedSharding(mesh, spec)
  arrays = jax.tree.map(lambda x, spec: jax.device_put(x, named(spec)),
                        arrays, specs, is_leaf=lambda x: isinstance(x, P))
  return jax.device_put(fn(arrays), named(rows))


def _specs(names, axis_name, batch_names):
  """The PartitionSpec of each of _sharded's arrays, by name."""
  rows = P(batch_names or None, axis_name, None, None)
  specs = {}
  for name in names:
    if name in ("key_mask", "global_mask"):
      specs[name] = P(batch_names or None, axis_name)
    elif name == "seeds":
      specs[name] = P(batch_names or None, None)  # [B, H]: whole rows
    elif name == "rel_table":
      specs[name] = P()
    elif name == "global_qkv":
      specs[name] = (rows,) * 3
    else:
      specs[name] = rows
  return rows, specs


@functools.lru_cache(maxsize=64)
def _sharded_jit(mesh, axis_name, batch_names, names, **static):
  """_sharded_body for these static arguments, jitted (eager calls compile
  once per shape; inlined in a caller's jit), its shardings stated.
  Stating them is what makes jax.grad work after another mesh was used in
  the process: on jax 0.10 eagerly computed arrays (cotangents) can carry
  the earlier mesh in their type, and an unstated sharding is then parsed
  against that mesh (IndivisibleError naming the old mesh; jax 0.12 does
  not). On Explicit meshes the inputs keep their own types (jit refuses
  others) and the body reshards them."""
  static.pop("band_path")  # a cache key only
  body = functools.partial(_sharded_body, mesh=mesh, axis_name=axis_name,
                           batch_names=batch_names, **static)
  if not isinstance(mesh, jax.sharding.Mesh):
    # The abstract mesh of jax.set_mesh (windowed_attention): array types
    # carry it, nothing stale to parse.
    return jax.jit(body)
  rows, specs = _specs(names, axis_name, batch_names)
  named = lambda spec: jax.NamedSharding(mesh, spec)
  in_shardings = None
  if jax.sharding.AxisType.Explicit not in tuple(mesh.axis_types):
    in_shardings = (jax.tree.map(named, specs,
                                 is_leaf=lambda x: isinstance(x, P)),)
  return jax.jit(body, in_shardings=in_shardings, out_shardings=named(rows))


def _sharded_body(arrays, *, mesh, axis_name, batch_names, window, dilation_H,
                  causal, max_global, scale, impl, dropout_rate):
  rows, specs = _specs(tuple(arrays), axis_name, batch_names)
  local = functools.partial(
      shard_attention, axis_name=axis_name, axis_size=mesh.shape[axis_name],
      window=window, dilation_H=dilation_H, causal=causal,
      max_global=max_global, scale=scale, impl=impl,
      dropout_rate=dropout_rate)
  manual = frozenset((axis_name,) + batch_names)
  if jax.sharding.AxisType.Explicit in tuple(mesh.axis_types):
    # Explicit axes: shard_map only checks that inputs are laid out as its
    # in_specs say, and inside it the band core's slices cannot run on a
    # dimension sharded over an explicit axis. So lay them out first, and
    # go manual over every axis (axes in no spec hold replicas).
    arrays = jax.tree.map(
        lambda x, spec: jax.reshard(x, jax.NamedSharding(mesh, spec)),
        arrays, specs, is_leaf=lambda x: isinstance(x, P))
    manual = frozenset(mesh.axis_names)
  # check_vma=False: Pallas interpret mode inside shard_map fails the
  # varying-axes check on jax 0.10 (scale.md §1.2 item 11); gradients are
  # exact either way (tested).
  fn = jax.shard_map(lambda a: local(**a), mesh=mesh, in_specs=(specs,),
                     out_specs=rows, axis_names=manual, check_vma=False)
  return fn(arrays)


def shard_attention(q, k, v, key_mask, global_mask=None, global_qkv=None,
                    seeds=None, rel_query=None, rel_table=None, *, axis_name,
                    axis_size, window, dilation_H, causal, max_global, scale,
                    impl="chunked", dropout_rate=0.0):
  """One device's part of sequence_parallel_attention, inside a shard_map
  that is manual over axis_name (for model code that is already in one).

  Arguments are validated and normalised as sequence_parallel_attention
  does: q, k, v [B, n, H, D] this device's rows (device i of axis_size
  holds positions i * n .. i * n + n - 1), key_mask bool [B, n],
  global_mask bool [B, n] or None (then max_global must be 0), global_qkv a
  tuple of three [B, n, H, D] (required with global tokens), seeds [B, H]
  uint32 (common.dropout_seeds, whole batch rows of this device) or None,
  rel_query [B, n, H, Dr] and rel_table [T, H, Dr] (replicated) or None;
  dilation_H a tuple of ints, the rest static Python values. Returns
  [B, n, H, Dv] in q's dtype, padding rows 0.
  """
  b, n, h, _ = q.shape
  impl = api.resolve_impl(impl, dropout=bool(dropout_rate),
                          rel=rel_query is not None)
  seq = n * axis_size
  pos0 = jax.lax.axis_index(axis_name) * n  # this shard's first position
  g = max_global
  glob = None
  if g:
    glob = _gather_globals(global_mask & key_mask, k, v, global_qkv[0],
                           pos0, g, axis_name, axis_size)
    eff_BxN = glob["slot_BxN"] < g
    band_keys_BxN = key_mask & ~eff_BxN
  else:
    band_keys_BxN = key_mask

  # Halo rows per dilation group: the window's reach in class rows, at most
  # what the sequence holds (a longer window changes nothing).
  reach = {dil: min(window, -(-(seq - 1) // dil)) for dil in set(dilation_H)}
  left = max(r * dil for dil, r in reach.items())
  right = 0 if causal else left
  ext = _with_halos([k, v, band_keys_BxN], left, right, n, axis_name,
                    axis_size)
  k_ext, v_ext, keys_ext = ext
  pos_ext = pos0 - left + jnp.arange(n + left + right)
  keys_ext = keys_ext & (pos_ext >= 0) & (pos_ext < seq)

  outs, head_order = [], []
  for dil in sorted(set(dilation_H)):
    heads = [i for i, dh in enumerate(dilation_H) if dh == dil]
    hs, we = len(heads), reach[dil]
    lo = left - we * dil
    hi = left + n + (0 if causal else we * dil)
    if hs == h:
      pick = lambda a: a
    elif heads == list(range(heads[0], heads[-1] + 1)):
      # A slice, not a gather (its gradient is a pad), as chunked does.
      pick = lambda a, h0=heads[0], h1=heads[-1] + 1: a[:, :, h0:h1]
    else:
      pick = lambda a, idx=np.array(heads): a[:, :, idx]
    pick_ext = lambda a: pick(a[:, lo:hi])
    per_head = lambda m: jnp.broadcast_to(m[:, :, None], m.shape + (hs,))
    # Class c of the extended slice holds local positions c + (u - we) * dil
    # for u = 0, 1, ...: the same residue as query class c, key offset -we.
    q_X = chunked.to_classes(pick(q), dil)
    k_X = chunked.to_classes(pick_ext(k_ext), dil)
    v_X = chunked.to_classes(pick_ext(v_ext), dil)
    kvalid_X = chunked.to_classes(per_head(keys_ext[:, lo:hi]), dil)
    extra = {}
    if g:
      rep = lambda a: jnp.repeat(chunked.to_classes(pick(a), 1), dil, axis=0)
      extra = dict(gk_XxGxD=rep(glob["k"]), gv_XxGxDv=rep(glob["v"]),
                   gvalid_XxG=rep(jnp.broadcast_to(
                       glob["valid_BxG"][:, :, None], (b, g, h))))
    rq_X = None
    if rel_query is not None:
      tab, rel_min = chunked.rel_window_tables(rel_table, heads, dil, we,
                                               causal, b)
      rq_X = chunked.to_classes(pick(rel_query), dil)
    if dropout_rate:
      # Band rows are (batch, head, residue); absolute positions are
      # class position * dil + residue + this shard's first position.
      residues = jnp.tile(jnp.arange(dil, dtype=jnp.int32), b * hs) + pos0
      gpos = None
      if g:
        gpos = rep(jnp.broadcast_to(glob["idx_BxG"][:, :, None], (b, g, h)))
      extra["dropout"] = (dropout_rate, dil, jnp.repeat(
          seeds[:, np.array(heads)].reshape(-1), dil), residues, gpos)
    if impl in api.BAND_KERNELS:
      # A kernel takes as many queries as keys: queries padded by the
      # halo's class rows, their outputs dropped. Kernel row p is class
      # position p - we: its residue moves back by we * dil.
      pad = ((0, 0), (we, 0 if causal else we), (0, 0))
      if rq_X is not None:
        extra["rel"] = (jnp.pad(rq_X, pad), tab, rel_min)
      if dropout_rate:
        rate, dl, seeds_X, res_X, gpos = extra["dropout"]
        extra["dropout"] = (rate, dl, seeds_X, res_X - we * dil, gpos)
      o, _ = api.BAND_KERNELS[impl](
          jnp.pad(q_X, pad), k_X, v_X, kvalid_X, window=we, causal=causal,
          scale=scale, **extra)
      o = o[:, we:we + q_X.shape[1]]
    else:
      if rq_X is not None:
        extra["rel"] = (rq_X, tab, rel_min)
      o, _ = band.band_attention(q_X, k_X, v_X, kvalid_X, window=we,
                                 causal=causal, scale=scale, k_offset=-we,
                                 **extra)
    outs.append(chunked.from_classes(o, b, n, hs, dil))
    head_order += heads
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
  if head_order != list(range(h)):
    out = out[:, :, np.argsort(head_order)]

  if g:
    rows_BxGxHxD = _global_rows(glob, global_qkv[1], global_qkv[2], key_mask,
                                pos0, scale, axis_name, seeds, dropout_rate)
    mine = jnp.take_along_axis(rows_BxGxHxD,
                               jnp.minimum(glob["slot_BxN"], g - 1)[
                                   :, :, None, None], axis=1)
    out = jnp.where(eff_BxN[:, :, None, None], mine, out)
  return jnp.where(key_mask[:, :, None, None], out, 0.0).astype(q.dtype)


def _with_halos(xs, left, right, n, axis_name, axis_size):
  """[left rows of the previous shards | x | right rows of the next] for
  each x [B, n, ...]. Rows beyond the sequence's ends are zero (False)."""
  def halo(rows, direction):
    parts = []
    for hop in range(1, -(-rows // n) + 1):
      # Hop j brings shard i -/+ j's rows: all of them, except the farthest
      # hop's, which sends only the rows the window still needs.
      r = min(n, rows - (hop - 1) * n)
      take = [x[:, n - r:] if direction > 0 else x[:, :r] for x in xs]
      if hop < axis_size:
        perm = [(i, i + hop) if direction > 0 else (i + hop, i)
                for i in range(axis_size - hop)]
        got = jax.lax.ppermute(tuple(take), axis_name, perm)
      else:  # past the sequence's end on every shard
        got = [jnp.zeros_like(t) for t in take]
      parts.append(got)
    if direction > 0:
      parts = parts[::-1]  # farthest shard first
    # Named so a remat policy can keep the (small) halos instead of
    # repeating the exchange in the backward pass (scale.md §1.2 item 9).
    return [checkpoint_name(
        jnp.concatenate([p[i] for p in parts], axis=1), "halo")
            for i in range(len(xs))]

  lefts = halo(left, +1) if left else [x[:, :0] for x in xs]
  rights = halo(right, -1) if right else [x[:, :0] for x in xs]
  return [jnp.concatenate([lo, x, hi], axis=1)
          for lo, x, hi in zip(lefts, xs, rights)]


def _gather_globals(glob_BxN, k, v, qg, pos0, g, axis_name, axis_size):
  """The first g global tokens of each sequence, on every shard.

  glob_BxN: this shard's global flags (padding already removed). A token's
  slot is its rank among the sequence's global tokens (counts of earlier
  shards plus the local cumsum), as common.effective_global. Returns
  slot_BxN (g where not an effective global token), idx_BxG (positions, N
  for empty slots), valid_BxG, and k, v, q_g at the slots [B, G, H, D].
  """
  b, n = glob_BxN.shape
  shard = jax.lax.axis_index(axis_name)
  count_B = jnp.sum(glob_BxN, axis=1, dtype=jnp.int32)
  mine_P = jnp.arange(axis_size) == shard
  # An all-reduce of B x P ints: every shard learns every shard's count.
  counts_BxP = jax.lax.psum(jnp.where(mine_P[None], count_B[:, None], 0),
                            axis_name)
  before_B = jnp.sum(jnp.where(jnp.arange(axis_size)[None] < shard,
                               counts_BxP, 0), axis=1)
  rank_BxN = before_B[:, None] + jnp.cumsum(glob_BxN.astype(jnp.int32), axis=1)
  slot_BxN = jnp.where(glob_BxN & (rank_BxN <= g), rank_BxN - 1, g)
  b_Bx1 = jnp.arange(b)[:, None]

  def gather(x_BxNx):
    # Each slot is written by exactly one shard: the sum is that row.
    # Floats travel as float32 (exact: one value plus zeros): XLA:CPU's
    # all-reduce promotion aborts the process on a bfloat16 all-reduce
    # here (hlo_instruction.cc "Invalid binary instruction opcode copy").
    wide = (x_BxNx.dtype if not jnp.issubdtype(x_BxNx.dtype, jnp.floating)
            else jnp.promote_types(x_BxNx.dtype, jnp.float32))
    zeros = jnp.zeros((b, g) + x_BxNx.shape[2:], wide)
    return jax.lax.psum(zeros.at[b_Bx1, slot_BxN].add(
        x_BxNx.astype(wide), mode="drop"), axis_name).astype(x_BxNx.dtype)

  valid_BxG = jnp.arange(g)[None] < jnp.sum(counts_BxP, axis=1)[:, None]
  idx_BxG = gather(jnp.broadcast_to(pos0 + jnp.arange(n, dtype=jnp.int32),
                                    (b, n)))
  return dict(slot_BxN=slot_BxN, valid_BxG=valid_BxG,
              idx_BxG=jnp.where(valid_BxG, idx_BxG, n * axis_size),
              k=gather(k), v=gather(v), q=gather(qg))


def _global_rows(glob, kg, vg, key_mask_BxN, pos0, scale, axis_name, seeds,
                 dropout_rate):
  """Rows of the global tokens [B, G, H, Dv] float32 (every shard): each
  attends every non-padding key with the global projections, as
  common.global_rows_attention, by a softmax split over the shards' keys
  and merged by log-sum-exp (an exact flash-decoding merge)."""
  n = kg.shape[1]
  s_BxHxGxn = jnp.einsum("bghd,bnhd->bhgn", glob["q"], kg,
                         preferred_element_type=jnp.float32) * scale
  mask = key_mask_BxN[:, None, None, :]
  s = jnp.where(mask, s_BxHxGxn, common.NEG_INF)
  # The shift cancels between numerator and denominator: no gradient.
  m = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(s, axis=-1)), axis_name)
  p = jnp.where(mask, jnp.exp(s - m[..., None]), 0.0)
  l_BxHxG = jax.lax.psum(jnp.sum(p, axis=-1), axis_name)
  if dropout_rate:
    # Normalised probabilities are dropped, so the denominator is not.
    p = p * common.dropout_multiplier(
        seeds[:, :, None, None], glob["idx_BxG"][:, None, :, None],
        (pos0 + jnp.arange(n))[None, None, None, :], dropout_rate)
  num = jax.lax.psum(jnp.einsum("bhgn,bnhd->bghd", p.astype(vg.dtype), vg,
                                preferred_element_type=jnp.float32),
                     axis_name)
  l_BxGxH = jnp.transpose(l_BxHxG, (0, 2, 1))
  return num / jnp.where(l_BxGxH == 0.0, 1.0, l_BxGxH)[..., None]
