"""Band attention as Mosaic (Pallas TPU) kernels: forward, and dq / dk-dv
backward behind a custom VJP. The TPU counterpart of
lfjax.kernels.band_attention (Pallas-Triton), with the same contract and
the same jnp reference (band_attention.band_reference).

Query i sees key j iff kvalid[j] and -window <= j - i <= right (right =
window, or 0 when causal), plus optional global keys in the same softmax;
dropout is the chunked path's counter hash (common.dropout_multiplier) at
absolute positions; an optional relative term scores scale * (q[a].k[t] +
rq[a].table[a - t - rel_min]). Float32 scores, softmax and accumulation;
operands keep their dtype into the dots. Rows without any key give 0 and
lse NEG_INF.

Grid (x, block, visit): program (x, i, j) is query block i's j-th key
block of its band (tpu_band_kernels.visit_block: index_map arithmetic, so
a query block DMAs only the key blocks that meet its band; the visit count
is the band's, whatever N). The forward's running max, sum and output
accumulator sit in VMEM scratch across the visits; the gradients sum in
their output blocks (an output block whose index does not change between
steps stays in VMEM). TPU has no atomics, so everything summed over
several query blocks - d gk, d gv, the relative table's gradient - is an
output block of the dq kernel indexed by x alone: it stays in VMEM over
the whole (block, visit) loop of row x (those grid axes are "arbitrary",
x is "parallel"). No fourth kernel for the global keys, unlike Triton.

Blocks follow TPU tiling: q, k, v blocks [block, D] (D is the whole
head width), per-key arrays as [X, blocks, 1, block_k], per-query rows as
[X, blocks, block_q, 1] (their last two dims are whole dims).

Relative term: the table is reversed and zero-padded outside the kernels
(_rel_table) so the 2B rows a [B, B] tile spans are an aligned slice;
rq_block @ rows^T in VMEM (MXU), then the diagonal skew by one strided
lane rotation (pltpu.roll, stride 1 along rows); the dq kernel undoes it
with a barrel shifter (Mosaic refuses negative strides) and accumulates d
rq in its own block and d table in its row-x block. Needs block_q ==
block_k.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lfjax.kernels import band_attention as triton_band
from lfjax.kernels import tpu_band_kernels as kernels

NEG_INF = kernels.NEG_INF
_EMPTY_ROW_LSE = -NEG_INF


def band_reference(*args, **kwargs):
  """The O(N^2) jnp reference both kernels share:
  lfjax.kernels.band_attention.band_reference (called, not aliased: that
  module may still be importing when this one loads)."""
  return triton_band.band_reference(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Query / key rows per block. 128 x 128: the MXU's tile on v5e (v6e's
  is 256), a few hundred KiB of VMEM per kernel at head_dim 64-128. Each
  must be a multiple of 8 (sublanes); with the relative term they must
  be equal."""
  block_q: int = 128
  block_k: int = 128

  @classmethod
  def default(cls, n):
    """128 x 128, or for a sequence shorter than 128 the power of two >= n
    (at least 16: bf16 packs 16 rows per vreg), so short sequences are
    not padded to 128 rows (and interpret-mode tests compile faster)."""
    b = min(128, max(16, 1 << (int(n) - 1).bit_length()))
    return cls(b, b)

  def check(self, rel):
    """Raises ValueError naming the first field Mosaic cannot take."""
    for name in ("block_q", "block_k"):
      val = getattr(self, name)
      if (not isinstance(val, (int, np.integer)) or isinstance(val, bool)
          or val < 8 or val % 8):
        raise ValueError(f"block_sizes.{name}: expected a multiple of 8 "
                         f"(TPU sublanes), got {val!r}")
    if rel and self.block_q != self.block_k:
      raise ValueError(f"block_sizes: expected block_q == block_k with the "
                       f"relative term (its skew works on square tiles), "
                       f"got {self.block_q} and {self.block_k}")


def _visits(rows, cols, lo, hi, nrows, ncols):
  """The most blocks (of cols) any block of rows meets: the visit axis."""
  r0 = np.arange(nrows) * rows
  first = np.maximum(r0 - lo, 0) // cols
  end = np.minimum(ncols, (r0 + rows - 1 + hi) // cols + 1)
  return int((end - first).max())


def _params(interpret, blocks_parallel):
  """Grid axes (x, block, visit): x is parallel (megacore chips split it);
  the block axis too unless an output block indexed by x alone sums over
  it; the visit axis accumulates."""
  if interpret:
    return None
  return pltpu.CompilerParams(dimension_semantics=(
      "parallel", "parallel" if blocks_parallel else "arbitrary",
      "arbitrary"))


def _specs(arrays, own, other):
  """BlockSpecs by kind: 'own' (the program's block, axis 1), 'visit' (the
  visited block), 'whole' (all of a[x]). own / other: (rows per block,
  block index function (i, j) -> index) of each side."""
  out = []
  for a, kind in arrays:
    if kind == "whole":
      tail = a.shape[1:]
      out.append(pl.BlockSpec((None,) + tail,
                              lambda x, i, j, *_, n=len(tail): (x,) + (0,) * n))
      continue
    rows, index = own if kind == "own" else other
    if a.ndim == 3:  # [X, N, D]
      out.append(pl.BlockSpec((None, rows, a.shape[2]),
                              lambda x, i, j, *_, f=index: (x, f(i, j), 0)))
    else:  # per-row [X, blocks, r, c]: one block, whole last two dims
      out.append(pl.BlockSpec((None, None) + a.shape[2:],
                              lambda x, i, j, *_, f=index: (x, f(i, j), 0, 0)))
  return out


def _call(kernel, cfg, grid, sides, ins, outs, scratch, interpret, name):
  """pallas_call of kernel over `grid` (x, blocks, visits) on named
  (array, kind) inputs and (shape, kind) float32 outputs; the two
  scalar-prefetch operands (seed, residue) first. sides: _sides."""
  (seed, residue), ins = ins[0], ins[1:]
  names = [n for n, _ in ins] + [n for n, _ in outs] + [n for n, _ in scratch]
  spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=grid,
      in_specs=_specs([a for _, a in ins], *sides),
      out_specs=_specs([a for _, a in outs], *sides),
      scratch_shapes=[s for _, s in scratch])
  blocks_parallel = all(kind != "whole" for _, (_, kind) in outs)
  return pl.pallas_call(
      functools.partial(kernel, names=names, cfg=cfg), grid_spec=spec,
      out_shape=[jax.ShapeDtypeStruct(a.shape, jnp.float32)
                 for _, (a, _) in outs],
      compiler_params=_params(interpret, blocks_parallel),
      interpret=interpret, name=name)(seed, residue, *[a for _, (a, _) in ins])


def _sides(cfg, by_key):
  """((rows, index) of the program's own blocks, (rows, index) of the
  visited ones) for the query-major (fwd, dq) or key-major (dkv) grid."""
  own = lambda i, j: i
  if by_key:
    visit = lambda kb, j: kernels.visit_block(kb, j, cfg.bk, cfg.bq,
                                              cfg.right, cfg.window, cfg.nqb)
    return (cfg.bk, own), (cfg.bq, visit)
  visit = lambda i, j: kernels.visit_block(i, j, cfg.bq, cfg.bk, cfg.window,
                                           cfg.right, cfg.nkb)
  return (cfg.bq, own), (cfg.bk, visit)


def _shape(shape, kind):
  """An output: (float32 ShapeDtypeStruct, kind)."""
  return (jax.ShapeDtypeStruct(shape, jnp.float32), kind)


def _ext_inputs(cfg, rq_kind, kv):
  """Optional inputs: the relative rows (rq_kind: the program's own query
  block, or the visited one) and table, the global keys (whole per row
  x). kv: the arrays by name."""
  ins = []
  if cfg.rel:
    ins += [("rq", (kv["rq"], rq_kind)), ("table", (kv["table"], "whole"))]
  if cfg.g:
    ins += [(n, (kv[n], "whole")) for n in ("gk", "gv", "gvalid")]
    if cfg.rate:
      ins.append(("gpos", (kv["gpos"], "whole")))
  return ins


def _forward(q, k, v, kvalid, rq, table, gk, gv, gvalid, gpos, seed,
             residue, *, cfg, interpret):
  x, n, _ = q.shape
  dv = v.shape[2]
  kv = dict(rq=rq, table=table, gk=gk, gv=gv, gvalid=gvalid, gpos=gpos)
  ins = [(seed, residue), ("q", (q, "own")), ("k", (k, "visit")),
         ("v", (v, "visit")), ("kvalid", (kvalid, "visit"))]
  ins += _ext_inputs(cfg, "own", kv)
  outs = [("o", _shape((x, n, dv), "own")),
          ("lse", _shape((x, cfg.nqb, cfg.bq, 1), "own"))]
  scratch = [("m", pltpu.VMEM((cfg.bq, 1), jnp.float32)),
             ("l", pltpu.VMEM((cfg.bq, 1), jnp.float32)),
             ("acc", pltpu.VMEM((cfg.bq, dv), jnp.float32))]
  o, lse = _call(kernels.fwd_kernel, cfg, (x, cfg.nqb, cfg.nvq),
                 _sides(cfg, False), ins, outs, scratch, interpret,
                 "lfjax_tpu_band_fwd")
  return o, lse.reshape(x, n)


def _backward(q, k, v, kvalid, rq, table, gk, gv, gvalid, gpos, seed,
              residue, do, lse, delta, dlse, *, cfg, interpret):
  x, n, d = q.shape
  per_row = lambda a: a.reshape(x, cfg.nqb, cfg.bq, 1)
  lse, delta, dlse = per_row(lse), per_row(delta), per_row(dlse)
  kv = dict(rq=rq, table=table, gk=gk, gv=gv, gvalid=gvalid, gpos=gpos)
  ins = [(seed, residue), ("q", (q, "own")), ("do", (do, "own")),
         ("lse", (lse, "own")), ("delta", (delta, "own")),
         ("dlse", (dlse, "own")), ("k", (k, "visit")), ("v", (v, "visit")),
         ("kvalid", (kvalid, "visit"))] + _ext_inputs(cfg, "own", kv)
  outs = [("dq", _shape((x, n, d), "own"))]
  if cfg.rel:
    outs += [("drq", _shape(rq.shape, "own")),
             ("dtable", _shape(table.shape, "whole"))]
  if cfg.g:
    outs += [("dgk", _shape(gk.shape, "whole")),
             ("dgv", _shape(gv.shape, "whole"))]
  res = _call(kernels.dq_kernel, cfg, (x, cfg.nqb, cfg.nvq),
              _sides(cfg, False), ins, outs, [], interpret,
              "lfjax_tpu_band_dq")
  got = dict(zip([name for name, _ in outs], res))
  ins = [(seed, residue), ("k", (k, "own")), ("v", (v, "own")),
         ("kvalid", (kvalid, "own")), ("q", (q, "visit")),
         ("do", (do, "visit")), ("lse", (lse, "visit")),
         ("delta", (delta, "visit")), ("dlse", (dlse, "visit"))]
  if cfg.rel:
    ins += _ext_inputs(dataclasses.replace(cfg, g=0), "visit", kv)
  outs = [("dk", _shape(k.shape, "own")), ("dv", _shape(v.shape, "own"))]
  got["dk"], got["dv"] = _call(
      kernels.dkv_kernel, cfg, (x, cfg.nkb, cfg.nvk), _sides(cfg, True),
      ins, outs, [], interpret, "lfjax_tpu_band_dkv")
  return tuple(got.get(name) for name in
               ("dq", "dk", "dv", "drq", "dtable", "dgk", "dgv"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(12,))
def _band(q, k, v, rq, table, gk, gv, kvalid, gvalid, gpos, seed, residue,
          cfg):
  return triton_band._on_platform(_forward, q, k, v, kvalid, rq, table, gk,
                                  gv, gvalid, gpos, seed, residue, cfg=cfg)


def _band_fwd(q, k, v, rq, table, gk, gv, kvalid, gvalid, gpos, seed,
              residue, cfg):
  out, lse = _band(q, k, v, rq, table, gk, gv, kvalid, gvalid, gpos, seed,
                   residue, cfg)
  # Named for remat policies (lfjax.models.remat "attention").
  out, lse = checkpoint_name((out, lse), "attention")
  return (out, lse), (q, k, v, rq, table, gk, gv, kvalid, gvalid, gpos,
                      seed, residue, out, lse)


def _band_bwd(cfg, res, cotangents):
  q, k, v, rq, table, gk, gv, kvalid, gvalid, gpos, seed, residue, out, lse = (
      res)
  dout, dlse = cotangents
  dout = dout.astype(jnp.float32)
  delta = jnp.sum(out * dout, axis=-1)
  # Rows with no key: p = exp(s - lse) is then exactly 0.
  lse = jnp.where(lse < 0.5 * NEG_INF, _EMPTY_ROW_LSE, lse)
  dq, dk, dv, drq, dtable, dgk, dgv = triton_band._on_platform(
      _backward, q, k, v, kvalid, rq, table, gk, gv, gvalid, gpos, seed,
      residue, dout.astype(v.dtype), lse, delta, dlse.astype(jnp.float32),
      cfg=cfg)
  cast = lambda d, a: None if a is None else d.astype(a.dtype)
  return (cast(dq, q), cast(dk, k), cast(dv, v), cast(drq, rq),
          cast(dtable, table), cast(dgk, gk), cast(dgv, gv), None, None,
          None, None, None)


_band.defvjp(_band_fwd, _band_bwd)


def _rel_table(table, rel_min, b, dl, rows):
  """The relative table as the kernels read it: `rows` rows, row u holding
  distance dl * b + b - 1 - u (table row distance - rel_min), zeros where
  the table has no row (distances outside the band). A static gather: its
  gradient maps the kernel's back."""
  dist = dl * b + b - 1 - np.arange(rows)
  src = dist - rel_min
  ok = (src >= 0) & (src < table.shape[1])
  picked = table[:, np.clip(src, 0, table.shape[1] - 1)]
  return jnp.where(ok[None, :, None], picked, 0).astype(table.dtype)


def band_attention(q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, *, window, causal,
                   scale, block_sizes=None, rel_query_XxNxDr=None,
                   rel_table_XxRxDr=None, rel_min=0, gk_XxGxD=None,
                   gv_XxGxDv=None, gvalid_XxG=None, dropout=None):
  """Band attention on TPU: (out float32 [X, N, Dv], lse float32 [X, N]).

  The contract of lfjax.kernels.band_attention.band_attention (the Triton
  kernel; same arguments, same reference band_reference): differentiable
  in q, k, v, rel_query, rel_table, gk, gv with cotangents on both
  outputs (the lse cotangent enters as dp - delta + dlse). Inputs of any
  length N (padded to whole blocks inside and cut back); q, k, v, gk, gv
  go into the dots in their dtype (float32 accumulation).

  rel_query [X, N, Dr], rel_table [X, R, Dr], static rel_min: band key t of
  query a scores scale * (q[a].k[t] + rel_query[a].rel_table[a - t -
  rel_min]); the table must cover the distances the band reaches.
  gk [X, G, D], gv [X, G, Dv], gvalid bool [X, G]: global keys in the same
  softmax (no relative term). dropout: None or (rate, dilation, seed_X
  uint32, residue_X int32, gpos_XxG int32 or None): the normalised
  probabilities times common.dropout_multiplier at class row p's position
  p * dilation + residue (global key g at gpos); lse stays undropped.
  block_sizes: a BlockSizes (default BlockSizes.default(N): 128 x 128).

  Platform: the compiled Mosaic kernels when lowered for TPU, Pallas
  interpret mode on CPU (exact, slow). Raises ValueError naming a bad
  argument.
  """
  x, n, d = q_XxNxD.shape
  window, right, rel_min = triton_band.check_arguments(
      q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, window, causal,
      rel_query_XxNxDr, rel_table_XxRxDr, rel_min)
  rq, table = rel_query_XxNxDr, rel_table_XxRxDr
  blocks = BlockSizes.default(n) if block_sizes is None else block_sizes
  if not isinstance(blocks, BlockSizes):
    raise ValueError(f"block_sizes: expected a tpu_band_attention.BlockSizes"
                     f"(block_q, block_k) or None, got "
                     f"{type(block_sizes).__name__} {block_sizes!r}")
  blocks.check(rq is not None)
  bq, bk = blocks.block_q, blocks.block_k
  step = math.lcm(bq, bk)
  npad = -(-n // step) * step
  nqb, nkb = npad // bq, npad // bk
  rate, dil, seed, residue, gpos = dropout if dropout and dropout[0] else (
      0.0, 1, None, None, None)
  g = 0 if gk_XxGxD is None else gk_XxGxD.shape[1]
  if g and (gk_XxGxD.shape != (x, g, d)
            or getattr(gv_XxGxDv, "shape", (0,))[:2] != (x, g)
            or getattr(gvalid_XxG, "shape", None) != (x, g)):
    raise ValueError(f"gk, gv, gvalid: expected shapes {(x, 'G', d)}, "
                     f"{(x, 'G', 'Dv')} and {(x, 'G')}, got "
                     f"{gk_XxGxD.shape}, {getattr(gv_XxGxDv, 'shape', None)} "
                     f"and {getattr(gvalid_XxG, 'shape', None)}")
  gp = -(-g // 8) * 8
  dl = (bq - 1 + window) // bq
  cfg = kernels.Cfg(
      window=window, right=right, scale=float(scale), bq=bq, bk=bk, nqb=nqb,
      nkb=nkb, nvq=_visits(bq, bk, window, right, nqb, nkb),
      nvk=_visits(bk, bq, right, window, nkb, nqb), rate=float(rate),
      dil=int(dil), g=gp, rel=rq is not None, dl=dl)
  rows = lambda a: jnp.pad(a, ((0, 0), (0, npad - n)) + ((0, 0),) * (
      a.ndim - 2))
  kvalid = rows(kvalid_XxN).astype(jnp.int32).reshape(x, nkb, 1, bk)
  if rate:
    seed = jax.lax.bitcast_convert_type(
        jnp.asarray(seed, jnp.uint32).reshape(x), jnp.int32)
    residue = jnp.asarray(residue, jnp.int32).reshape(x)
  else:
    seed = residue = jnp.zeros((x,), jnp.int32)
  gk = gv = gvalid = gposp = None
  if g:
    slots = lambda a: jnp.pad(a, ((0, 0), (0, gp - g)) + ((0, 0),) * (
        a.ndim - 2))
    gk, gv = slots(gk_XxGxD), slots(gv_XxGxDv)
    gvalid = slots(gvalid_XxG).astype(jnp.int32).reshape(x, 1, gp)
    if rate:
      gposp = slots(jnp.asarray(gpos, jnp.int32)).reshape(x, 1, gp)
  if rq is not None:
    dr = (bk - 1 + right) // bk
    rq = rows(rq)
    table = _rel_table(table.astype(rq.dtype), rel_min, bq, dl,
                       (dl + dr + 2) * bq)
  out, lse = _band(rows(q_XxNxD), rows(k_XxNxD), rows(v_XxNxDv), rq, table,
                   gk, gv, kvalid, gvalid, gposp, seed, residue, cfg)
  return out[:, :n], lse[:, :n]
