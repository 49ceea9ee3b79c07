"""Flash-style band attention in Pallas: forward, and dq / dk-dv backward.

Query i sees key j iff kvalid[j] and -window <= j - i <= right, where right
is window (or 0 when causal). Each query block visits only the key blocks
that meet its band, so the loop trip count depends on window and block
sizes, never on the sequence length; the band mask is computed only on the
blocks the band edge cuts (interior blocks skip it). Scores, softmax and
accumulation are float32. Rows without any key give 0 and lse NEG_INF.
Operands keep their dtype (bf16 stays bf16; dots accumulate in float32).

Global keys and dropout (optional, see band_kernels.Ext): the global keys
are extra key blocks every query block visits in the band's online
softmax; their gradients come from a fourth kernel,
`band_kernels.dglobal_kernel`. Dropout is the chunked path's counter hash
(common.dropout_multiplier) at absolute positions, so every implementation
drops the same entries.

Relative positions (optional): score(a, t) = scale * (q[a].k[t] +
rq[a].table[a - t - rel_min]), inside the kernels (no wider q/k, nothing
per (row, distance) in memory). Each block visit multiplies its rq rows
[block_q, Dr] by the W = pow2 >= block_q + block_k - 1 table rows its tile
spans ([Dr, W], tensor cores, float32) and skews the product into the
[block_q, block_k] tile along the diagonals through the program's own
[block_q, W] scratch slot (a store, a CTA barrier, a load with computed
offsets: Triton tensors cannot be gathered in registers). The dq kernel
scatters d(score) back the same way and accumulates d rel_query in its own
output block and d rel_table atomically (float32; the summation order
across programs is not deterministic). The kernel bodies and these
pieces: lfjax/kernels/band_kernels.py (`rel_tile`, `rel_grads`).

Pure-jnp reference: `band_reference` below. On CPU the same kernels run in
Pallas interpret mode; lowered for CUDA they are Triton kernels (the choice
of backend is made in `_compiler_params` only).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from lfjax.kernels import band_kernels
from lfjax.kernels import lowering

# Public: callers compare lse with it (rows with no key).
NEG_INF = band_kernels.NEG_INF
# lse of a row with no key, as the backward sees it: every p = exp(s - lse)
# of such a row is then exactly 0.
_EMPTY_ROW_LSE = -NEG_INF


# (block_q, block_k, num_warps, num_stages) per (head_dim <= 64 / <= 128,
# operand bytes 2 / 4), from deviceless compiles of every kernel (forward,
# dq, dkv) of every variant of lfjax/kernels/gpu_compile.py for A100 and
# H100: the largest tiles at which no kernel of any variant spills a
# register on either GPU (larger tiles feed the tensor cores better; 8
# warps spread a tile's accumulators over more registers).
# experiments/results/kernel_resources.md has the figures,
# kernel_resources_search.md the alternatives tried (e.g. float32 64 x 64
# spills ~22 KB per thread in dkv on A100, and on H100 even with 8 warps
# with the relative term; bf16 128 x 64 spills in the relative-position
# dq / dkv kernels at head_dim 64).
_BLOCKS = {(64, 2): (128, 32, 8, 2), (128, 2): (128, 64, 8, 2),
           (64, 4): (32, 32, 8, 1), (128, 4): (32, 32, 8, 1)}
# Rows that differ for one GPU family (lowering.gpu_family, read at trace
# time). None today: no family had a larger spill-free tile for every
# variant.
_FAMILY_BLOCKS = {"sm80": {}, "sm90": {}}
# Wider heads (not compiled by gpu_compile's variants): small tiles.
_WIDE = (32, 32, 8, 1)
# With the relative term (its product, slot and skew per visit): the
# char-LM's training layer (relative term + dropout + dilation, bf16) spills
# in dq on an A100 at 128 x 32 (~1 KB), 64 x 32 (4 B) and 64 x 32 x 4 warps
# (~0.3 KB); 64 x 16 sits at 255 registers without spilling, 32 x 32 at
# 220-226. One stage: see band_attention.
_REL_BLOCKS = (32, 32, 8, 1)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Query/key block rows per program and Triton launch parameters."""
  block_q: int = 64
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 2

  @classmethod
  def default(cls, head_dim, dtype, device_kind=None):
    """The blocks for head_dim and the operands' width (float32 needs
    smaller tiles than bf16 / f16 to stay in registers): _BLOCKS, or the
    GPU family's row of _FAMILY_BLOCKS (device_kind, default
    lowering.traced_gpu_kind(): the GPU being compiled for)."""
    if head_dim > 128:
      return cls(*_WIDE)
    if device_kind is None:
      device_kind = lowering.traced_gpu_kind()
    key = (64 if head_dim <= 64 else 128,
           2 if jnp.dtype(dtype).itemsize <= 2 else 4)
    family = _FAMILY_BLOCKS.get(lowering.gpu_family(device_kind), {})
    return cls(*family.get(key, _BLOCKS[key]))

  @classmethod
  def relative(cls):
    """The blocks band_attention takes with the relative-position term
    (when no block_sizes is given): _REL_BLOCKS, one stage."""
    return cls(*_REL_BLOCKS)

  def check(self):
    """Raises ValueError naming the first field Triton cannot take."""
    for name, least, what in (("block_q", 16, "Triton tiles"),
                              ("block_k", 16, "Triton tiles"),
                              ("num_warps", 1, "threads per program / 32")):
      val = getattr(self, name)
      if (not isinstance(val, (int, np.integer)) or isinstance(val, bool)
          or val < least or val & (val - 1)):
        raise ValueError(f"block_sizes.{name}: expected a power of two >= "
                         f"{least} ({what}), got {val!r}")
    val = self.num_stages
    if (not isinstance(val, (int, np.integer)) or isinstance(val, bool)
        or val < 1):
      raise ValueError(f"block_sizes.num_stages: expected an int >= 1 "
                       f"(software pipelining stages), got {val!r}")


def _compiler_params(blocks):
  """The GPU backend, in one place: Pallas' Triton lowering. (JAX 0.11
  deprecates it for Mosaic GPU; switching means changing this function.)"""
  return pltriton.CompilerParams(num_warps=blocks.num_warps,
                                 num_stages=blocks.num_stages)


def band_reference(q, k, v, kvalid, *, window, causal, scale,
                   rel_query_XxNxDr=None, rel_table_XxRxDr=None, rel_min=0):
  """O(N^2) jnp reference: (out float32 [X, N, Dv], lse [X, N]).

  With a relative term, the score of query a and key t in the band is
  scale * (q[a].k[t] + rel_query[a].rel_table[a - t - rel_min])."""
  n = q.shape[1]
  d = jnp.arange(n)[None, :] - jnp.arange(n)[:, None]
  band = (d >= -window) & (d <= (0 if causal else window))
  mask = band[None] & kvalid[:, None, :]
  s = jnp.einsum("xid,xjd->xij", q, k, preferred_element_type=jnp.float32)
  if rel_query_XxNxDr is not None:
    # table row of every (a, t): delta a - t = -d; rows off the table are
    # clipped (only reachable outside the band, which is masked below).
    r = rel_table_XxRxDr.shape[1]
    rows = jnp.clip(-d - rel_min, 0, r - 1)
    s = s + jnp.einsum("xad,xatd->xat", rel_query_XxNxDr.astype(jnp.float32),
                       rel_table_XxRxDr.astype(jnp.float32)[:, rows])
  s = s * scale
  s = jnp.where(mask, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.where(mask, jnp.exp(s - m), 0.0)
  l = p.sum(-1)
  out = jnp.einsum("xij,xjd->xid", p, v.astype(jnp.float32))
  out = out / jnp.where(l == 0, 1.0, l)[..., None]
  lse = jnp.where(l == 0, NEG_INF, m[..., 0] + jnp.log(jnp.maximum(l, 1e-30)))
  return out, lse


# pallas_call wrappers ---------------------------------------------------------

def _blocked(a, rows):
  """Program (x, i) gets rows [i * rows, (i + 1) * rows) of a[x]."""
  tail = a.shape[2:]
  return pl.BlockSpec((None, rows) + tail,
                      lambda xi, i: (xi, i) + (0,) * len(tail))


def _whole(a):
  """Program (x, i) gets all of a[x] and slices it itself."""
  tail = a.shape[2:]
  return pl.BlockSpec((None, a.shape[1]) + tail,
                      lambda xi, i: (xi, 0) + (0,) * len(tail))


def _barrier(interpret):
  """CTA barrier around the relative term's scratch slot; interpret mode
  runs a program's ops in order (and has no lowering for the barrier)."""
  return (lambda: None) if interpret else pltriton.debug_barrier


def _rel_slots(x, programs, blocks):
  """Per-program scratch for the relative term's skew (band_kernels'
  _rel_tile): one
  [block_q, W] float32 slot per program, a kernel output never read
  outside; O(N * (block_q + block_k)), whatever the window."""
  width = band_kernels.rel_width(blocks.block_q, blocks.block_k)
  shape = jax.ShapeDtypeStruct((x, programs, blocks.block_q, width),
                               jnp.float32)
  return shape, pl.BlockSpec((None, None, blocks.block_q, width),
                             lambda xi, i: (xi, i, 0, 0))


def _forward(q, k, v, kbias, rq, table, *extras, window, right, scale,
             rel_min, blocks, interpret, ext=band_kernels.Ext()):
  x, n, _ = q.shape
  bq, bk = blocks.block_q, blocks.block_k
  kernel = functools.partial(band_kernels.fwd_kernel, scale=scale,
                             window=window,
                             right=right, bq=bq, bk=bk, nkb=n // bk,
                             rel_min=rel_min, barrier=_barrier(interpret),
                             ext=ext)
  args = extras + (q, k, v, kbias)
  specs = [_whole(a) for a in extras] + [_blocked(q, bq), _whole(k),
                                         _whole(v), _whole(kbias)]
  out_specs = [_blocked(v, bq), _blocked(kbias, bq)]
  out_shape = [jax.ShapeDtypeStruct(v.shape, jnp.float32),
               jax.ShapeDtypeStruct((x, n), jnp.float32)]
  if rq is not None:
    args += (rq, table)
    specs += [_blocked(rq, bq), _whole(table)]
    slot_shape, slot_spec = _rel_slots(x, n // bq, blocks)
    out_specs.append(slot_spec)
    out_shape.append(slot_shape)
  out, lse = pl.pallas_call(
      kernel, grid=(x, n // bq), in_specs=specs,
      out_specs=out_specs, out_shape=out_shape,
      compiler_params=None if interpret else _compiler_params(blocks),
      interpret=interpret, name="lfjax_band_fwd")(*args)[:2]
  return out, lse


def _backward(q, k, v, kbias, do, lse, delta, dlse, rq, table, *extras,
              window, right, scale, rel_min, blocks, interpret,
              ext=band_kernels.Ext()):
  x, n, _ = q.shape
  bq, bk = blocks.block_q, blocks.block_k
  params = None if interpret else _compiler_params(blocks)
  args = extras + (q, k, v, kbias, do, lse, delta, dlse)
  kw = dict(scale=scale, window=window, right=right, bq=bq, bk=bk,
            rel_min=rel_min, barrier=_barrier(interpret), ext=ext)
  ext_specs = [_whole(a) for a in extras]
  dq_specs = ext_specs + [_blocked(q, bq), _whole(k), _whole(v), _whole(kbias),
              _blocked(do, bq), _blocked(lse, bq), _blocked(delta, bq),
              _blocked(dlse, bq)]
  dq_out_specs = _blocked(q, bq)
  dq_shape = jax.ShapeDtypeStruct(q.shape, jnp.float32)
  dkv_specs = ext_specs + [_whole(q), _blocked(k, bk), _blocked(v, bk),
               _blocked(kbias, bk), _whole(do), _whole(lse), _whole(delta),
               _whole(dlse)]
  dq_args, dkv_args, aliases = args, args, {}
  dkv_out_specs = [_blocked(k, bk), _blocked(v, bk)]
  dkv_shape = [jax.ShapeDtypeStruct(k.shape, jnp.float32),
               jax.ShapeDtypeStruct(v.shape, jnp.float32)]
  if rq is not None:
    # d table is accumulated atomically by every program: a zeroed input
    # aliased to the output.
    dtable = jnp.zeros(table.shape, jnp.float32)
    aliases = {len(args) + 2: 2}
    dq_args = args + (rq, table, dtable)
    dkv_args = args + (rq, table)
    dq_specs += [_blocked(rq, bq), _whole(table), _whole(dtable)]
    dkv_specs += [_whole(rq), _whole(table)]
    slot_shape, slot_spec = _rel_slots(x, n // bq, blocks)
    dq_out_specs = [dq_out_specs, _blocked(rq, bq), _whole(dtable), slot_spec]
    dq_shape = [dq_shape, jax.ShapeDtypeStruct(rq.shape, jnp.float32),
                jax.ShapeDtypeStruct(table.shape, jnp.float32), slot_shape]
    slot_shape, slot_spec = _rel_slots(x, n // bk, blocks)
    dkv_out_specs.append(slot_spec)
    dkv_shape.append(slot_shape)
  dq = pl.pallas_call(
      functools.partial(band_kernels.dq_kernel, nkb=n // bk, **kw),
      grid=(x, n // bq),
      in_specs=dq_specs, out_specs=dq_out_specs, out_shape=dq_shape,
      input_output_aliases=aliases, compiler_params=params,
      interpret=interpret, name="lfjax_band_dq")(*dq_args)
  dq, drq, dtable = (dq, None, None) if rq is None else dq[:3]
  dk, dv = pl.pallas_call(
      functools.partial(band_kernels.dkv_kernel, nqb=n // bq, **kw),
      grid=(x, n // bk),
      in_specs=dkv_specs, out_specs=dkv_out_specs, out_shape=dkv_shape,
      compiler_params=params, interpret=interpret,
      name="lfjax_band_dkv")(*dkv_args)[:2]
  if not ext.g:
    return dq, dk, dv, drq, dtable, None, None
  gk, gv = extras[ext.names.index("gk")], extras[ext.names.index("gv")]
  # Query rows per step of the global keys' gradient: 128-row bf16 steps
  # spill there on an A100 (its [rows, G] tiles and the dropout hash);
  # n is a multiple of max(block_q, block_k), so of gq too.
  gq = min(bq, 64)
  dgk, dgv = pl.pallas_call(
      functools.partial(band_kernels.dglobal_kernel, scale=scale, bq=gq,
                        nqb=n // gq,
                        ext=ext),
      grid=(x, ext.g // ext.gblock),
      in_specs=[_whole(a) if name in ("seed", "residue")
                else _blocked(a, ext.gblock)
                for name, a in zip(ext.names, extras)]
      + [_whole(q), _whole(do), _whole(lse), _whole(delta), _whole(dlse)],
      out_specs=[_blocked(gk, ext.gblock), _blocked(gv, ext.gblock)],
      out_shape=[jax.ShapeDtypeStruct(gk.shape, jnp.float32),
                 jax.ShapeDtypeStruct(gv.shape, jnp.float32)],
      compiler_params=params, interpret=interpret,
      name="lfjax_band_dglobal")(*(extras + (q, do, lse, delta, dlse)))
  return dq, dk, dv, drq, dtable, dgk, dgv


def _on_platform(fn, *args, **kwargs):
  """Interpret mode when lowered for CPU, the compiled kernel for GPUs."""
  return jax.lax.platform_dependent(
      *args, cpu=functools.partial(fn, interpret=True, **kwargs),
      default=functools.partial(fn, interpret=False, **kwargs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10, 12))
def _band(q, k, v, kbias, rq, table, window, right, scale, rel_min, blocks,
          extras, ext):
  """extras: the arrays named by ext.names (see band_kernels.Ext)."""
  return _on_platform(_forward, q, k, v, kbias, rq, table, *extras,
                      window=window, right=right, scale=scale,
                      rel_min=rel_min, blocks=blocks, ext=ext)


def _band_fwd(q, k, v, kbias, rq, table, window, right, scale, rel_min,
              blocks, extras, ext):
  out, lse = _band(q, k, v, kbias, rq, table, window, right, scale, rel_min,
                   blocks, extras, ext)
  # Named for remat policies (lfjax.models.remat "attention"): kept, they
  # spare a rematerialised backward this forward.
  out, lse = checkpoint_name((out, lse), "attention")
  return (out, lse), (q, k, v, kbias, rq, table, out, lse, extras)


def _band_bwd(window, right, scale, rel_min, blocks, ext, res, cotangents):
  q, k, v, kbias, rq, table, out, lse, extras = res
  dout, dlse = cotangents
  dout = dout.astype(jnp.float32)
  delta = jnp.sum(out * dout, axis=-1)
  lse = jnp.where(lse < 0.5 * NEG_INF, _EMPTY_ROW_LSE, lse)
  dq, dk, dv, drq, dtable, dgk, dgv = _on_platform(
      _backward, q, k, v, kbias, dout.astype(v.dtype), lse, delta,
      dlse.astype(jnp.float32), rq, table, *extras, window=window,
      right=right, scale=scale, rel_min=rel_min, blocks=blocks, ext=ext)
  grads = (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
           jnp.zeros_like(kbias))
  # Cotangents of extras: d gk, d gv; None (zero) for the rest.
  dext = tuple({"gk": dgk, "gv": dgv}.get(name) for name in ext.names)
  dext = tuple(d if d is None else d.astype(a.dtype)
               for d, a in zip(dext, extras))
  if rq is None:
    return grads + (None, None, dext)
  return grads + (drq.astype(rq.dtype), dtable.astype(table.dtype), dext)


_band.defvjp(_band_fwd, _band_bwd)


def _extras(x, d, dp, dvp, bk, gk, gv, gvalid, dropout):
  """(extras, band_kernels.Ext) for _band: global keys padded to a
  power-of-two count
  (empty slots masked by their bias) and dropout's per-row arrays."""
  rate, dil, seed, residue, gpos = dropout if dropout and dropout[0] else (
      0.0, 1, None, None, None)
  g = 0 if gk is None else gk.shape[1]
  if g and (gk.shape != (x, g, d) or getattr(gv, "shape", (0,))[:2] != (x, g)
            or getattr(gvalid, "shape", None) != (x, g)):
    raise ValueError(f"gk, gv, gvalid: expected shapes {(x, 'G', d)}, "
                     f"{(x, 'G', 'Dv')} and {(x, 'G')}, got {gk.shape}, "
                     f"{getattr(gv, 'shape', None)} and "
                     f"{getattr(gvalid, 'shape', None)}")
  gp = band_kernels.pow2(g) if g else 0
  named = {}
  if rate:
    named.update(seed=jnp.asarray(seed, jnp.uint32).reshape(x, 1),
                 residue=jnp.asarray(residue, jnp.int32).reshape(x, 1))
  if g:
    rows = lambda a, width=None: jnp.pad(a, ((0, 0), (0, gp - g)) + (
        () if width is None else ((0, width - a.shape[2]),)))
    named.update(gk=rows(gk, dp), gv=rows(gv, dvp),
                 gbias=jnp.where(rows(gvalid), 0.0, NEG_INF).astype(
                     jnp.float32))
    if rate:
      named["gpos"] = rows(jnp.asarray(gpos, jnp.int32))
  ext = band_kernels.Ext(rate=float(rate), dil=int(dil), g=gp,
                         gblock=min(gp, bk) or 16)
  return tuple(named[name] for name in ext.names), ext


def check_arguments(q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, window, causal,
                    rel_query_XxNxDr, rel_table_XxRxDr, rel_min):
  """The band kernels' shared argument checks (this kernel's and the
  Mosaic kernel's, lfjax.kernels.tpu_band_attention): shapes of k, v,
  kvalid and the relative tensors, rel_min static and covering the band.
  Returns (window, right, rel_min) as ints (right: 0 when causal). Raises
  ValueError naming the argument."""
  x, n, d = q_XxNxD.shape
  if k_XxNxD.shape != (x, n, d) or v_XxNxDv.shape[:2] != (x, n):
    raise ValueError(f"k, v: expected k of shape {(x, n, d)} and v of shape "
                     f"{(x, n, 'Dv')}, got {k_XxNxD.shape} and "
                     f"{v_XxNxDv.shape}")
  if kvalid_XxN.shape != (x, n):
    raise ValueError(f"kvalid: expected shape {(x, n)}, got "
                     f"{kvalid_XxN.shape}")
  window, right = int(window), 0 if causal else int(window)
  rq, table = rel_query_XxNxDr, rel_table_XxRxDr
  if (rq is None) != (table is None):
    raise ValueError("rel_query and rel_table: expected both or neither, got "
                     f"{'rel_query' if table is None else 'rel_table'} only")
  if rq is not None:
    if rq.ndim != 3 or rq.shape[:2] != (x, n):
      raise ValueError(f"rel_query: expected shape {(x, n, 'Dr')}, got "
                       f"{rq.shape}")
    if table.ndim != 3 or table.shape[0] != x or table.shape[2] != rq.shape[2]:
      raise ValueError(f"rel_table: expected shape {(x, 'R', rq.shape[2])}, "
                       f"got {table.shape}")
    if not isinstance(rel_min, (int, np.integer)):
      raise ValueError(f"rel_min: expected a static int, got {rel_min!r}")
    rel_min = int(rel_min)
    lo, hi = -min(right, n - 1), min(window, n - 1)
    if rel_min > lo or rel_min + table.shape[1] - 1 < hi:
      raise ValueError(
          f"rel_table with rel_min: expected rows for distances {lo}..{hi} "
          f"(the band), got {rel_min}..{rel_min + table.shape[1] - 1}")
  return window, right, rel_min


def band_attention(q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, *, window, causal,
                   scale, block_sizes=None, rel_query_XxNxDr=None,
                   rel_table_XxRxDr=None, rel_min=0, gk_XxGxD=None,
                   gv_XxGxDv=None, gvalid_XxG=None, dropout=None):
  """Band attention: (out float32 [X, N, Dv], lse float32 [X, N]).

  Differentiable in q, k, v (and rel_query, rel_table) with cotangents on
  both outputs (so partial attentions can be merged by their log-sum-exp and
  still differentiate). Inputs of any length and head width; they are padded
  to whole blocks and power-of-two widths here.

  Relative term (optional): the score of query a and band key t becomes
  scale * (q[a].k[t] + rel_query[a].rel_table[a - t - rel_min]); rel_min is
  a static int and the table must cover every distance a - t the band
  reaches, -min(right, N - 1) .. min(window, N - 1) (right = window, or 0
  when causal). rel_query's width Dr may differ from D; neither is widened.
  Computed inside the kernels per block visit (module docstring); on a GPU
  the rel_table gradient is summed with float32 atomic adds, so its last
  bits may differ between runs.

  Global keys (optional): gk [X, G, D], gv [X, G, Dv] (q's dtype), gvalid
  bool [X, G]: every query also sees each valid global key, in the same
  softmax as its band (extra key blocks every query block visits; no
  relative term). dropout: None or (rate, dilation, seed_X uint32,
  residue_X int32, gpos_XxG int32 or None) as lfjax.attention.band: the
  normalised probabilities times common.dropout_multiplier(seed, i, j,
  rate), query/key row p at position p * dilation + residue, global key g
  at gpos[x, g]; lse stays that of the undropped scores.
  """
  x, n, d = q_XxNxD.shape
  window, right, rel_min = check_arguments(
      q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, window, causal,
      rel_query_XxNxDr, rel_table_XxRxDr, rel_min)
  rq, table = rel_query_XxNxDr, rel_table_XxRxDr
  dv = v_XxNxDv.shape[2]
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes: expected a BlockSizes(block_q, block_k, "
                     f"num_warps, num_stages) or None, got "
                     f"{type(block_sizes).__name__} {block_sizes!r}")
  if block_sizes is not None:
    blocks = block_sizes
  elif rq is not None:
    # _REL_BLOCKS, with one stage: the relative term's skew stores to its
    # scratch slot and loads back after a CTA barrier in every visit;
    # Triton's software pipelining (num_stages > 1) prefetches next-visit
    # loads ahead of the loop body and has no view of that dependency
    # through global memory, so one stage keeps the store -> barrier -> load
    # order as written (an explicit block_sizes is taken as given).
    blocks = BlockSizes.relative()
  else:
    blocks = BlockSizes.default(max(d, dv), q_XxNxD.dtype)
  blocks.check()
  step = max(blocks.block_q, blocks.block_k)
  npad = -(-n // step) * step
  dp, dvp = band_kernels.pow2(d), band_kernels.pow2(dv)
  pad = lambda a, width: jnp.pad(a, ((0, 0), (0, npad - n),
                                     (0, width - a.shape[2])))
  kbias = jnp.where(jnp.pad(kvalid_XxN, ((0, 0), (0, npad - n))), 0.0,
                    NEG_INF).astype(jnp.float32)
  if rq is not None:
    # Dr to a power of two >= 16 (zeros: same products); the table gets
    # W zero rows on each side (see _rel_start) and rq's dtype for the dots.
    drp = band_kernels.pow2(rq.shape[2])
    width = band_kernels.rel_width(blocks.block_q, blocks.block_k)
    rq = pad(rq, drp)
    table = jnp.pad(table.astype(rq.dtype), ((0, 0), (width, width),
                                             (0, drp - table.shape[2])))
  extras, ext = _extras(x, d, dp, dvp, blocks.block_k, gk_XxGxD,
                        gv_XxGxDv, gvalid_XxG, dropout)
  out, lse = _band(pad(q_XxNxD, dp), pad(k_XxNxD, dp), pad(v_XxNxDv, dvp),
                   kbias, rq, table, window, right, float(scale),
                   None if rq is None else rel_min, blocks, extras, ext)
  return out[:, :n, :dv], lse[:, :n]
