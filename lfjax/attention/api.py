"""`windowed_attention`: Longformer attention, one function, several backends."""

import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lfjax.attention import band
from lfjax.attention import chunked
from lfjax.attention import common
from lfjax.attention import dense
from lfjax.attention import mosaic
from lfjax.attention import pallas
from lfjax.attention import splash
from lfjax.kernels import lowering

# Band kernels: implementations that run the chunked path's layout
# (dilation classes, global rows) around a kernel with the contract of
# pallas.band_with_global_keys. A new kernel is one entry here; the
# sequence-parallel path (sharded.py) takes the same entries.
BAND_KERNELS = {"pallas": pallas.band_with_global_keys,
                "splash": splash.band_with_global_keys,
                "mosaic": mosaic.band_with_global_keys}
IMPLS = ("auto", "dense", "chunked") + tuple(BAND_KERNELS)


def windowed_attention(q, k, v, *, window, dilation=1, causal=False,
                       key_mask=None, global_mask=None, global_qkv=None,
                       max_global=None, scale=None, impl="auto",
                       dropout_rate=0.0, dropout_key=None, rel_query=None,
                       rel_table=None):
  """Longformer sliding-window attention with dilation and global tokens.

  Args:
    q, k, v: [batch, seq, heads, head_dim], any float dtype; v's head_dim
      may differ from q's and k's. Scores, softmax and accumulation run in
      float32; the output has q's dtype and v's shape.
    window: ONE-SIDED window w >= 0 (Hugging Face's `attention_window` is the
      full window, 2w). Query i attends key j = i + m*d for every integer m
      with |m| <= w (causal: -w <= m <= 0), d the head's dilation.
    dilation: int, or one int per head, each >= 1.
    causal: attend only to the past half of the window.
    key_mask: bool [batch, seq], False marks padding. Padding keys are never
      attended and padding query rows output exactly 0.
    global_mask: bool [batch, seq], True marks global tokens. A global token
      attends every non-padding key; every non-padding query attends every
      global token on top of its window (a global key inside the window
      counts once). Padding positions are never global. Not with causal.
    global_qkv: (q_g, k_g, v_g) shaped like q: the rows of global tokens are
      computed as softmax(q_g k_g^T) v_g over all keys (Longformer's separate
      global projections). Default: q, k, v. Other rows always use q, k, v,
      for their global keys too.
    max_global: static cap on global tokens per sequence, so the function
      jits with a traced global_mask. Default: the largest count in a
      concrete global_mask rounded up to a power of two, so eager calls
      with new counts rarely recompile (required when global_mask is
      traced). When
      global_mask is concrete a row with more than max_global global tokens
      raises; under jit, tokens past the first max_global of a row (in
      sequence order) are silently treated as ordinary local tokens.
    scale: score scale, default 1/sqrt(head_dim).
    impl: "dense" (O(N^2) masked oracle), "chunked" (pure JAX, O(N*w)
      memory), "pallas" (flash-style kernel: compiled Triton when lowered
      for a GPU, Pallas interpret mode on CPU, which is exact but slow),
      "splash" (JAX's splash attention, lfjax/attention/splash.py: a
      compiled Mosaic kernel when lowered for a TPU, interpret mode on CPU;
      band and global keys in one softmax; no attention dropout and no
      relative term: dropout_rate > 0 or rel_query/rel_table raise
      ValueError), "mosaic" (lfjax's Mosaic band kernel for TPUs,
      everything "pallas" serves incl. the relative term and dropout:
      compiled Mosaic when lowered for a TPU, interpret mode on CPU;
      lfjax/kernels/README.md) or "auto": chunked (on a GPU as batched
      blocks; pallas once it is measured on GPUs), and in a program traced
      for a TPU splash, or mosaic when the call has dropout or the
      relative term; "pallas" traced for a TPU runs mosaic (resolve_impl).
    dropout_rate: attention-probability dropout (training), a Python float
      in [0, 1). Probability (b, h, i, j) is kept or dropped by a hash of
      (dropout_key, b, h, i, j), so dense, chunked, pallas and mosaic
      drop the same entries and the backward pass regenerates them.
    dropout_key: a jax.random key, required when dropout_rate > 0.

    rel_query, rel_table: a relative-position term (Transformer-XL's
      position term, the char-LM's default), both or neither. rel_query
      [batch, seq, heads, Dr] (e.g. q + v), rel_table [T, heads, Dr] (e.g.
      W_r r(d)): query i's score of window key j gains
      rel_query[i] . rel_table[row], row = i - j when causal (T > the
      longest distance in the window, window * max dilation, or seq - 1
      if shorter) and i - j + (T - 1) // 2 otherwise (T odd, the same
      reach on both sides); before scaling, like q.k. The distance is in
      positions, so a dilated head reads rows 0, d, 2d, .... Global keys
      and the rows of global tokens get no relative term. Every
      implementation computes it at Dr width per (query, window key), with
      gradients for both.

  Under `jax.set_mesh(mesh)` with an axis named "seq" of more than one
  device (and not inside a shard_map that is manual over it), the call runs
  as lfjax.attention.sharded.sequence_parallel_attention over that axis:
  the same result, each device computing its slice of the sequence (halo
  exchange, no all-gather), the batch split over the mesh's other axes
  when it divides over them, a seq that is not a multiple padded inside
  (on Auto axes; Explicit axes refuse the cut: pad seq to a multiple).
  impl="dense" (the oracle) is never split. Model code needs no change.
  On a mesh with Explicit axes (jax.make_mesh's default since jax 0.9),
  call it, and take its jax.grad, under jax.set_mesh(mesh), jitted or
  not: without it the mesh is not seen, and arrays sharded along seq are
  refused (ShardingTypeError from the unsplit attention's einsum; jax 0.10
  and 0.12 alike).

  Returns:
    [batch, seq, heads, v's head_dim] in q's dtype.
  """
  if impl not in IMPLS:
    raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
  a = _check_args(q, k, v, window=window, dilation=dilation, causal=causal,
                  key_mask=key_mask, global_mask=global_mask,
                  global_qkv=global_qkv, max_global=max_global, scale=scale,
                  impl=impl, dropout_rate=dropout_rate,
                  dropout_key=dropout_key, rel_query=rel_query,
                  rel_table=rel_table)
  static = dict(window=a.window, dilation_H=a.dilation_H, causal=causal,
                max_global=a.max_global, scale=a.scale, impl=impl,
                dropout_rate=a.dropout_rate)
  mesh = _sequence_mesh() if impl != "dense" else None
  if mesh is not None:
    return _sequence_parallel(
        q, k, v, mesh, a.key_mask_BxN,
        a.global_mask_BxN if a.max_global else None,
        a.global_qkv if a.max_global else None, a.rel,
        dropout_key=dropout_key, **static)
  b, n = q.shape[:2]
  key_mask_BxN = (jnp.ones((b, n), bool) if a.key_mask_BxN is None
                  else a.key_mask_BxN)
  global_mask_BxN, global_qkv = a.global_mask_BxN, a.global_qkv
  if not a.max_global:
    global_mask_BxN, global_qkv = None, None
  elif global_mask_BxN is None:
    global_mask_BxN = jnp.zeros((b, n), bool)
  return _dispatch(q, k, v, key_mask_BxN, global_mask_BxN, global_qkv,
                   a.dropout_seeds_BxH, a.rel, band_path=band.FORCE_PATH,
                   **static)


class _Checked(NamedTuple):
  """windowed_attention's arguments after _check_args."""
  window: int
  dilation_H: tuple  # one dilation per head
  key_mask_BxN: Any  # bool [B, N], or None: no padding
  global_mask_BxN: Any  # bool [B, N], or None
  global_qkv: Any  # (q_g, k_g, v_g), or None: q, k, v
  rel: Any  # (rel_query, rel_table), or None
  scale: float
  max_global: int  # the static cap on global tokens; 0: none
  dropout_rate: float
  dropout_seeds_BxH: Any  # uint32 [B, H], or None without dropout


def _check_args(q, k, v, *, window, dilation, causal, key_mask, global_mask,
                global_qkv, max_global, scale, impl, dropout_rate,
                dropout_key, rel_query, rel_table):
  """Checks and normalises windowed_attention's arguments (its own and
  sequence_parallel_attention's, so both reject the same input with the
  same message) except impl, whose choices differ; returns a Checked.
  Raises ValueError naming the first bad argument."""
  b, n, h, d = _check_qkv(q, k, v)
  window = _check_window(window)
  dilation_H = _check_dilation(dilation, h)
  key_mask_BxN = _check_mask("key_mask", key_mask, b, n)
  global_mask_BxN = _check_mask("global_mask", global_mask, b, n)
  if global_mask is not None and causal:
    raise ValueError("global_mask: global tokens see the future, so they "
                     "cannot be combined with causal=True; got both")
  if global_qkv is not None:
    global_qkv = _check_global_qkv(global_qkv, q, k, v)
  rel = _check_rel(rel_query, rel_table, q, window, dilation_H, causal)
  if scale is None:
    scale = 1.0 / float(np.sqrt(d))
  elif not isinstance(scale, numbers.Real):
    raise ValueError(f"scale: expected a Python float, got {type(scale)}")
  max_global = _check_max_global(max_global, global_mask, global_mask_BxN,
                                 key_mask_BxN, n)
  if (not isinstance(dropout_rate, numbers.Real)
      or not 0.0 <= dropout_rate < 1.0):
    raise ValueError(f"dropout_rate: expected a Python float in [0, 1), got "
                     f"{dropout_rate!r}")
  dropout_seeds_BxH = None
  if dropout_rate:
    if dropout_key is None:
      raise ValueError("dropout_key: expected a jax.random key when "
                       f"dropout_rate={dropout_rate} > 0, got None")
    dropout_seeds_BxH = common.dropout_seeds(dropout_key, b, h)
  return _Checked(window, dilation_H, key_mask_BxN, global_mask_BxN,
                  global_qkv, rel, float(scale), max_global,
                  float(dropout_rate), dropout_seeds_BxH)


# Sequence parallelism ------------------------------------------------------

SEQ_AXIS = "seq"  # the mesh axis windowed_attention splits the sequence over


def _sequence_mesh():
  """The abstract mesh jax.set_mesh set, when it has an axis SEQ_AXIS of
  more than one device that is not already manual (inside a shard_map the
  caller splits the sequence itself); else None. The abstract mesh is what
  jax exposes under jit on every version we support (jax.sharding.get_mesh
  raises there)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or SEQ_AXIS not in mesh.axis_names:
    return None
  if mesh.shape[SEQ_AXIS] == 1 or mesh.axis_types[
      mesh.axis_names.index(SEQ_AXIS)] == jax.sharding.AxisType.Manual:
    return None
  return mesh


def _sequence_parallel(q, k, v, mesh, key_mask_BxN, global_mask_BxN,
                       global_qkv, rel, *, window, dilation_H, causal,
                       max_global, scale, impl, dropout_rate, dropout_key):
  """windowed_attention's arguments (validated) run by
  sharded.sequence_parallel_attention over SEQ_AXIS. The batch is split
  over the mesh's other (non-manual) axes when it divides over them. A
  sequence that is not a multiple of the axis is padded at its end with
  padding keys (never attended, so real rows are unchanged) and cut back;
  on a mesh with Explicit axes, which refuse that cut, a ValueError asks
  for a padded sequence or an Auto mesh."""
  from lfjax.attention import sharded  # it imports this module
  b, n = q.shape[:2]
  others = [a for a, t in zip(mesh.axis_names, mesh.axis_types)
            if a != SEQ_AXIS and t != jax.sharding.AxisType.Manual
            and mesh.shape[a] > 1]
  split = int(np.prod([mesh.shape[a] for a in others]))
  batch_axis = tuple(others) if others and b % split == 0 else None
  p = mesh.shape[SEQ_AXIS]
  pad = -n % p
  if pad and jax.sharding.AxisType.Explicit in mesh.axis_types:
    # Explicit axes refuse the cut back to n rows (not divisible by p).
    raise ValueError(
        f"q, k, v: expected a sequence length that is a multiple of the "
        f"mesh's '{SEQ_AXIS}' axis ({p} devices) on a mesh with Explicit "
        f"axes (jax.make_mesh's default), got {n}; pad the sequence, or "
        f"build the mesh with axis_types=(jax.sharding.AxisType.Auto,) * "
        f"{len(mesh.axis_names)} and windowed_attention pads it")
  if key_mask_BxN is None:
    key_mask_BxN = jnp.ones((b, n), bool)
  if pad:
    rows = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    q, k, v, key_mask_BxN = map(rows, (q, k, v, key_mask_BxN))
    if global_mask_BxN is not None:
      global_mask_BxN = rows(global_mask_BxN)
      global_qkv = global_qkv and tuple(map(rows, global_qkv))
    if rel is not None:
      rel = rows(rel[0]), _pad_rel_table(rel[1], n + pad, window,
                                         max(dilation_H), causal)
  rel_query, rel_table = (None, None) if rel is None else rel
  out = sharded.sequence_parallel_attention(
      q, k, v, mesh=mesh, axis_name=SEQ_AXIS, batch_axis=batch_axis,
      window=window, dilation=dilation_H, causal=causal,
      key_mask=key_mask_BxN, global_mask=global_mask_BxN,
      global_qkv=global_qkv, max_global=max_global if max_global else None,
      scale=scale, impl=impl, dropout_rate=dropout_rate,
      dropout_key=dropout_key, rel_query=rel_query, rel_table=rel_table)
  return out[:, :n] if pad else out


def _pad_rel_table(table, n, window, max_dilation, causal):
  """rel_table with zero rows for the distances a padded length n adds
  (they pair only padding keys or padding rows, so they are never used)."""
  reach = min(window * max_dilation, max(n - 1, 0))
  t = table.shape[0]
  if causal:
    extra = max(reach + 1 - t, 0)
    return jnp.pad(table, [(0, extra), (0, 0), (0, 0)])
  extra = max(reach - (t - 1) // 2, 0)
  return jnp.pad(table, [(extra, extra), (0, 0), (0, 0)])


def _kernel_per_device(attention, q, k, v, args):
  """attention(q, k, v, **args) (chunked_attention with a Pallas band
  kernel) run per device: as a shard_map over the non-manual axes of the
  mesh jax.set_mesh set, the batch split over them when it divides (each
  device computes the whole batch otherwise), or plainly without such a
  mesh. XLA cannot partition a kernel: JAX refuses to lower a Mosaic
  (TPU) kernel under a mesh of more than one device ("Mosaic kernels
  cannot be automatically partitioned"), which made every data-parallel
  or FSDP run on a TPU fail, and a Triton kernel is run whole on each
  device. The values are the same: every argument but the relative table
  is per batch row (dropout seeds included)."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = () if mesh.empty else tuple(
      a for a, t in zip(mesh.axis_names, mesh.axis_types)
      if t != jax.sharding.AxisType.Manual)
  split = int(np.prod([mesh.shape[a] for a in axes]))
  if split == 1:
    return attention(q, k, v, **args)
  batch = axes if q.shape[0] % split == 0 else None
  rows = jax.sharding.PartitionSpec(batch)
  arrays = dict(args, q=q, k=k, v=v)
  static = {a: arrays.pop(a) for a in ("window", "dilation_H", "causal",
                                        "scale")}
  if "dropout" in arrays:
    static["rate"], arrays["dropout"] = arrays["dropout"]
  specs = jax.tree.map(lambda x: rows, arrays)
  if "rel" in arrays:  # (rel_query, rel_table): a table per distance, whole
    specs["rel"] = (rows, jax.sharding.PartitionSpec())
  if jax.sharding.AxisType.Explicit in tuple(mesh.axis_types):
    # shard_map checks that explicit inputs are laid out as its specs say.
    arrays = jax.tree.map(
        lambda x, spec: jax.reshard(x, jax.sharding.NamedSharding(mesh, spec)),
        arrays, specs)

  def local(a):
    a = dict(a)
    if "dropout" in a:
      a["dropout"] = (static["rate"], a["dropout"])
    return attention(a.pop("q"), a.pop("k"), a.pop("v"), window=static[
        "window"], dilation_H=static["dilation_H"], causal=static["causal"],
                     scale=static["scale"], **a)

  # check_vma=False: Pallas interpret mode inside shard_map fails the
  # varying-axes check on jax 0.10 (as in sharded._sharded_body).
  return jax.shard_map(local, mesh=mesh, in_specs=(specs,), out_specs=rows,
                       axis_names=frozenset(axes), check_vma=False)(arrays)


# Jitted so eager calls (notebooks, tests) compile once per shape instead of
# dispatching op by op; inside a caller's jit it is simply inlined.
# band_path: band.FORCE_PATH when called, unused here but part of the
# cache key, so that setting the switch retraces (band reads it at trace).
@functools.partial(jax.jit, static_argnames=("window", "dilation_H", "causal",
                                              "max_global", "scale", "impl",
                                              "dropout_rate", "band_path"))
def _dispatch(q, k, v, key_mask_BxN, global_mask_BxN, global_qkv,
              dropout_seeds_BxH, rel, *, window, dilation_H, causal,
              max_global, scale, impl, dropout_rate, band_path):
  del band_path
  impl = resolve_impl(impl, dropout=bool(dropout_rate), rel=rel is not None)
  if max_global:
    eff_global_BxN = common.effective_global(global_mask_BxN, key_mask_BxN,
                                             max_global)
    global_qkv = global_qkv or (q, k, v)
  else:
    eff_global_BxN = jnp.zeros(key_mask_BxN.shape, bool)
    global_qkv = None
  args = dict(window=window, dilation_H=dilation_H, causal=causal,
              key_mask_BxN=key_mask_BxN, eff_global_BxN=eff_global_BxN,
              global_qkv=global_qkv, scale=scale)
  if dropout_rate:
    args["dropout"] = (dropout_rate, dropout_seeds_BxH)
  if rel is not None:
    args["rel"] = rel
  if impl == "dense":
    out = dense.dense_attention(q, k, v, **args)
  elif impl in BAND_KERNELS:
    out = _kernel_per_device(functools.partial(
        chunked.chunked_attention, max_global=max_global,
        band_fn=BAND_KERNELS[impl]), q, k, v, args)
  else:
    out = chunked.chunked_attention(q, k, v, max_global=max_global, **args)
  # Padding rows are exactly zero whatever the implementation computed there.
  return jnp.where(key_mask_BxN[:, :, None, None], out, 0.0).astype(q.dtype)


def resolve_impl(impl, *, dropout, rel):
  """The implementation a call traced now runs (a trace-time choice, so a
  program lowered for a TPU picks TPU kernels):

  - "auto": "chunked" (on a GPU its batched blocks) except in a trace for
    a TPU, where it is "splash" (JAX's splash attention) when splash
    serves the call and "mosaic" (lfjax's Mosaic band kernel) when it does
    not, i.e. with attention dropout or the relative-position term.
  - "pallas" in a trace for a TPU: "mosaic", the Pallas kernel that
    lowers there (the Triton kernel is for GPUs).
  - anything else: itself.

  The platform is lfjax.kernels.lowering.traced_platform's: the abstract
  device of the current abstract mesh (deviceless compiles), else the
  default device. dropout, rel: bools, whether the call has them."""
  if impl not in ("auto", "pallas"):
    return impl
  if lowering.traced_platform() != "tpu":
    return "chunked" if impl == "auto" else impl
  return "splash" if impl == "auto" and not (dropout or rel) else "mosaic"


def _check_qkv(q, k, v):
  for name, x in (("q", q), ("k", k), ("v", v)):
    if getattr(x, "ndim", None) != 4:
      raise ValueError(f"{name}: expected a [batch, seq, heads, head_dim] "
                       f"array, got shape {getattr(x, 'shape', type(x))}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{name}: expected a floating dtype, got {x.dtype}")
  # v may be narrower or wider than q/k: position features appended to q and
  # k (the char-LM's relative encoding) do not widen the values.
  if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
    raise ValueError(f"k, v: expected k of q's shape {q.shape} and v of "
                     f"shape {q.shape[:3] + ('any head_dim',)}, got "
                     f"k {k.shape} and v {v.shape}")
  return q.shape


def _check_window(window):
  if (isinstance(window, (bool, np.bool_))
      or not isinstance(window, numbers.Integral) or window < 0):
    raise ValueError(f"window: expected a Python int >= 0 (one-sided), got "
                     f"{window!r}")
  return int(window)


def _check_dilation(dilation, h):
  if isinstance(dilation, numbers.Integral) and not isinstance(dilation, bool):
    dilation = [dilation] * h
  try:
    dil = list(dilation)
  except TypeError:
    raise ValueError(f"dilation: expected an int or a sequence of {h} ints, "
                     f"got {dilation!r}") from None
  if len(dil) != h:
    raise ValueError(f"dilation: expected one value per head ({h}), got "
                     f"{len(dil)}: {dil}")
  for x in dil:
    if (isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral)
        or x < 1):
      raise ValueError(f"dilation: expected ints >= 1, got {dil}")
  return tuple(int(x) for x in dil)


def _check_mask(name, mask, b, n):
  if mask is None:
    return None
  if not hasattr(mask, "dtype") or mask.dtype != jnp.bool_:
    raise ValueError(f"{name}: expected a bool array of shape [{b}, {n}], got "
                     f"dtype {getattr(mask, 'dtype', type(mask))}")
  if tuple(mask.shape) != (b, n):
    raise ValueError(f"{name}: expected shape [batch, seq] = [{b}, {n}], got "
                     f"{list(mask.shape)}")
  return jnp.asarray(mask)


def _check_global_qkv(global_qkv, q, k, v):
  if not isinstance(global_qkv, (tuple, list)) or len(global_qkv) != 3:
    got = (f"a {type(global_qkv).__name__} of {len(global_qkv)}"
           if isinstance(global_qkv, (tuple, list)) else
           type(global_qkv).__name__)
    raise ValueError("global_qkv: expected a tuple of 3 arrays (q_g, k_g, "
                     f"v_g), got {got}")
  for name, x, ref in zip(("q_g", "k_g", "v_g"), global_qkv, (q, k, v)):
    # Same widths as q, k, v themselves.
    if getattr(x, "shape", None) != ref.shape:
      raise ValueError(f"global_qkv: expected {name} of shape {ref.shape}, "
                       f"got {getattr(x, 'shape', type(x))}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"global_qkv: expected {name} with a floating dtype, "
                       f"got {x.dtype}")
  return tuple(global_qkv)


def _check_rel(rel_query, rel_table, q, window, dilation_H, causal):
  """(rel_query, rel_table) validated, or None."""
  if rel_query is None and rel_table is None:
    return None
  if rel_query is None or rel_table is None:
    raise ValueError("rel_query, rel_table: expected both or neither, got "
                     f"rel_query {'None' if rel_query is None else 'set'} "
                     f"and rel_table {'None' if rel_table is None else 'set'}")
  b, n, h, _ = q.shape
  for name, x, what in (("rel_query", rel_query, "[batch, seq, heads, Dr]"),
                        ("rel_table", rel_table, "[T, heads, Dr]")):
    if getattr(x, "ndim", None) != len(what.split(",")) or not (
        jnp.issubdtype(x.dtype, jnp.floating)):
      got = (f"shape {x.shape} {x.dtype}" if hasattr(x, "shape")
             else type(x).__name__)
      raise ValueError(f"{name}: expected a floating array {what}, got "
                       f"{got}")
  dr = rel_query.shape[-1]
  if dr == 0:
    raise ValueError("rel_query: expected Dr >= 1 (the term's width), got "
                     f"shape {rel_query.shape}")
  if rel_query.shape != (b, n, h, dr):
    raise ValueError(f"rel_query: expected shape [batch, seq, heads, Dr] = "
                     f"{(b, n, h, 'Dr')}, got {rel_query.shape}")
  if rel_table.shape[1:] != (h, dr):
    raise ValueError(f"rel_table: expected shape [T, heads={h}, Dr={dr}], "
                     f"got {rel_table.shape}")
  reach = min(window * max(dilation_H), max(n - 1, 0))
  t = rel_table.shape[0]
  if causal and t < reach + 1:
    raise ValueError(f"rel_table: expected at least {reach + 1} rows (causal:"
                     f" row i - j for distances 0..{reach}), got {t}")
  if not causal and (t % 2 == 0 or (t - 1) // 2 < reach):
    raise ValueError(f"rel_table: expected an odd number of rows >= "
                     f"{2 * reach + 1} (row i - j + (T - 1) // 2 for "
                     f"distances -{reach}..{reach}), got {t}")
  return jnp.asarray(rel_query), jnp.asarray(rel_table)


def _check_max_global(max_global, global_mask, global_mask_BxN, key_mask_BxN,
                      n):
  if max_global is not None and (
      isinstance(max_global, (bool, np.bool_))
      or not isinstance(max_global, numbers.Integral) or max_global < 0):
    raise ValueError(f"max_global: expected a Python int >= 0 or None, got "
                     f"{max_global!r}")
  if global_mask is None:
    return 0
  concrete = common.is_concrete(global_mask_BxN) and (
      key_mask_BxN is None or common.is_concrete(key_mask_BxN))
  if not concrete:
    if max_global is None:
      raise ValueError(
          "max_global: expected a static int when global_mask is traced "
          "(under jit, grad or vmap), got None; pass the most global tokens "
          "a sequence can have")
    return min(int(max_global), n)
  g = np.asarray(global_mask_BxN)
  if key_mask_BxN is not None:
    g = g & np.asarray(key_mask_BxN)
  counts = g.sum(axis=1)
  count = int(counts.max()) if g.size else 0
  if max_global is None:
    # The cap is static (a compile per value); a power of two makes eager
    # calls with varying counts reuse a few programs. Slots past a row's
    # count are masked, so the result does not depend on the cap.
    return min(1 << (count - 1).bit_length(), n) if count else 0
  if count > max_global:
    rows = np.flatnonzero(counts > max_global)
    raise ValueError(
        f"max_global: batch row{'s' * (len(rows) > 1)} "
        f"{', '.join(map(str, rows[:5]))}{' ...' * (len(rows) > 5)} "
        f"{'have' if len(rows) > 1 else 'has'} up to {count} global tokens "
        f"(non-padding), more than max_global={max_global}")
  return min(int(max_global), n)

