"""impl="splash": the chunked path's layout (dilation classes, global rows)
around JAX's splash attention (jax.experimental.pallas.ops.tpu.
splash_attention), the TPU's flash attention with block-sparse static
masks. Compiled Mosaic when lowered for a TPU, Pallas interpret mode on
CPU (exact, slow: for tests).

Design: the global keys go INTO splash's mask (the issue's option (b)), not
into a second pass merged by log-sum-exp. Each band row's keys are

    [G global slots, padded to GP (a block multiple) | N band keys, padded
     to NP (a block multiple)]

and the static mask (_BandWithGlobals) is "every global column" OR "band
key t of query a when -window <= t - a <= right" (right = window, or 0
when causal). Which keys exist (padding keys, the global keys excluded from
the band, empty global slots, the padding to the block multiple) is
dynamic, so it goes through splash's segment ids: queries carry id 1,
valid keys id 1, the rest id 0. One softmax over band and global keys, so
splash's own forward and backward kernels serve unchanged: no private
splash internals (its residual layout, its backward kernels), and no
gradient through its log-sum-exp, which it does not provide
(save_residuals=True refuses differentiation). The price: every query
block also visits the GP global columns (GP = 128 for up to 128 global
tokens), about one extra key block per query block.

Rows with no visible key: splash gives the mean of the masked values (its
masked scores are a finite -0.7 * float32 max, so such a row's softmax is
uniform over the blocks it visits), never NaN here, because every query
block visits at least its diagonal block (window >= 0) or the global
block. This module zeroes those rows (a row sees a key iff one of its
global slots is valid or a valid band key lies in its window, counted by a
cumulative sum), so they output exactly 0 with lse NEG_INF, as the other
band kernels do, and no gradient flows through them.

The returned lse is NOT differentiable (zero gradient): it comes from a
second splash call with save_residuals=True on stop_gradient'ed operands,
which XLA removes when the caller discards lse (windowed_attention and the
sequence-parallel path both do).

Block sizes: splash's defaults, 128 query and 128 key rows for the forward,
dq and dkv kernels. For a band, small key blocks waste least (a query block
of bq rows computes about bq x (bq + 2 * window + bk) scores for
bq x (2 * window + 1) wanted: 1.5x at window 256 with 128 x 128 blocks, 3x
with 512 x 512); 128 is the smallest block splash takes (its key blocks
are whole 128-lane vregs).

Not served (ValueError at trace time naming the argument, pointing to
impl="mosaic"): attention dropout and the relative-position term. Nor
GPUs: a trace for a GPU (lowering.traced_gpu_kind) raises ValueError
pointing to impl="pallas".
"""

import concurrent.futures
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib

from lfjax.kernels import band_attention as kernel
from lfjax.kernels import lowering

# Query and key rows per block, every splash kernel (see the module doc).
BLOCK = 128


class _BandWithGlobals(splash_lib.Mask):
  """Static mask [NP queries, GP + NP keys]: all GP global columns, and
  band key t (column GP + t) of query a when -left <= t - a <= right.

  A public splash Mask computed block by block on demand (splash's
  process_mask reads it one block at a time, so nothing of size NP x NP is
  materialised); hashable, so splash deduplicates it."""

  def __init__(self, np_, gp, left, right):
    self.np_, self.gp, self.left, self.right = np_, gp, left, right

  @property
  def shape(self):
    return (self.np_, self.gp + self.np_)

  def __getitem__(self, idx):
    if len(idx) != 2 or not all(isinstance(s, slice) for s in idx):
      raise NotImplementedError(f"unsupported slice: {idx}")
    r0, r1, _ = idx[0].indices(self.shape[0])
    c0, c1, _ = idx[1].indices(self.shape[1])
    # Blocks away from the band's edges without building them: splash
    # reads every block pair (~130,000 per table at 32,768 tokens).
    t0, t1 = c0 - self.gp, c1 - 1 - self.gp  # band key range, if c0 >= gp
    if c1 <= self.gp or (c0 >= self.gp and t0 >= r1 - 1 - self.left
                         and t1 <= r0 + self.right):
      return np.ones((r1 - r0, c1 - c0), bool)
    if c0 >= self.gp and (t1 < r0 - self.left or t0 > r1 - 1 + self.right):
      return np.zeros((r1 - r0, c1 - c0), bool)
    rows = np.arange(r0, r1)[:, None]
    cols = np.arange(c0, c1)[None, :]
    t = cols - self.gp
    return (cols < self.gp) | ((t >= rows - self.left)
                               & (t <= rows + self.right))

  def _key(self):
    return (self.np_, self.gp, self.left, self.right)

  def __eq__(self, other):
    return isinstance(other, _BandWithGlobals) and self._key() == other._key()

  def __hash__(self):
    return hash((type(self),) + self._key())


@functools.lru_cache(maxsize=64)
def _kernel(np_, gp, left, right, interpret):
  """Splash's kernel for one static (NP, GP, window) (one head: the
  caller vmaps it over rows); its mask tables are built here, once."""
  mask = splash_lib.MultiHeadMask([_BandWithGlobals(np_, gp, left, right)])
  blocks = splash_lib.BlockSizes(
      block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK,
      block_q_dkv=BLOCK, block_kv_dkv=BLOCK, block_kv_dkv_compute=BLOCK,
      block_q_dq=BLOCK, block_kv_dq=BLOCK)
  common = dict(block_sizes=blocks, head_shards=1, q_seq_shards=1,
                interpret=interpret)
  # Built eagerly (splash turns its numpy tables into jax arrays, which a
  # trace would stage) and kept as numpy: constants in whatever program
  # (and for whatever device) uses them. In a thread of its own, where
  # JAX's thread-local trace state and mesh contexts are empty: the caller
  # may be tracing under an abstract mesh (a deviceless compile, where jax
  # 0.12 refuses eager dispatch) or under jax.set_mesh of a deviceless
  # TPU slice (where an eager array would be placed on its devices).
  with concurrent.futures.ThreadPoolExecutor(1) as apart:
    plain = apart.submit(lambda: jax.tree_util.tree_map(
        np.asarray, splash_lib.make_splash_mha(mask, **common))).result()
  # The lse variant: the same tables (splash builds them in a Python loop
  # over every block pair: ~2 s for the three at 32,768 tokens), other
  # options.
  with_lse = type(plain)(plain.fwd_mask_info, plain.dq_mask_info,
                         plain.dkv_mask_info,
                         **dict(plain.kwargs, save_residuals=True))
  return plain, with_lse


def _refuse(dropout, rel):
  gpu = lowering.traced_gpu_kind()
  if gpu:
    raise ValueError(
        f"impl: 'splash' is a TPU kernel (Mosaic; interpret mode on CPU) and "
        f"this program is traced for a GPU ({gpu}); use impl='pallas' or "
        f"impl='chunked'")
  if dropout is not None:
    raise ValueError(
        "dropout_rate: impl='splash' does not support attention dropout "
        "(splash attention has no dropout); use impl='mosaic', or "
        "dropout_rate=0.0")
  if rel is not None:
    raise ValueError(
        "rel_query/rel_table: impl='splash' does not support relative "
        "positions (splash attention has no relative-position term); use "
        "impl='mosaic'")


def band_with_global_keys(q_XxNxD, k_XxNxD, v_XxNxDv, kvalid_XxN, *, window,
                          causal, scale, gk_XxGxD=None, gv_XxGxDv=None,
                          gvalid_XxG=None, dropout=None, rel=None):
  """Band attention with global keys in one softmax, by splash attention:
  (out float32 [X, N, Dv], lse float32 [X, N]). The contract of
  lfjax.attention.pallas.band_with_global_keys.

  Args:
    q_XxNxD, k_XxNxD, v_XxNxDv: X independent rows (batch, head, dilation
      class) of N positions, one float dtype (bf16 stays bf16 into the
      dots; splash accumulates and normalises in float32 and writes the
      output in that dtype, returned here as float32). N is anything:
      padded to a multiple of BLOCK inside, cut back.
    kvalid_XxN: bool, False for padding keys and for global keys (the band
      excludes them; they come again as gk).
    window: one-sided band width (int >= 0); causal: keys t <= a only.
    scale: score scale, applied to q before splash (in q's dtype).
    gk_XxGxD, gv_XxGxDv, gvalid_XxG: global keys every row attends in the
      same softmax; gvalid False for empty slots. All or none.
    dropout, rel: must be None (ValueError: splash has neither).

  A row that sees no key outputs 0 and lse kernel.NEG_INF. Gradients flow
  to q, k, v, gk, gv through splash's backward kernels; lse has none (see
  the module doc)."""
  _refuse(dropout, rel)
  x, n, _ = q_XxNxD.shape
  g = 0 if gk_XxGxD is None else gk_XxGxD.shape[1]
  np_ = -(-n // BLOCK) * BLOCK
  gp = -(-g // BLOCK) * BLOCK
  left = min(window, np_)
  right = 0 if causal else left
  dt = k_XxNxD.dtype
  pad = lambda a, to: jnp.pad(a, [(0, 0), (0, to - a.shape[1])]
                              + [(0, 0)] * (a.ndim - 2))
  q = pad((q_XxNxD * scale).astype(q_XxNxD.dtype), np_)
  k, v, kvalid = pad(k_XxNxD, np_), pad(v_XxNxDv, np_), pad(kvalid_XxN, np_)
  if g:
    k = jnp.concatenate([pad(gk_XxGxD.astype(dt), gp), k], axis=1)
    v = jnp.concatenate([pad(gv_XxGxDv.astype(v.dtype), gp), v], axis=1)
    kvalid = jnp.concatenate([pad(gvalid_XxG, gp), kvalid], axis=1)
  ids_q = jnp.ones((x, np_), jnp.int32)
  ids_k = kvalid.astype(jnp.int32)

  def run(interpret, lse):
    fn = _kernel(np_, gp, left, right, interpret)[1 if lse else 0]
    one = lambda qq, kk, vv, iq, ik: fn(
        qq[None], kk[None], vv[None],
        segment_ids=splash_lib.SegmentIds(q=iq, kv=ik))
    return jax.vmap(one)(q, k, v, ids_q, ids_k)

  def on_platform(lse):
    return jax.lax.platform_dependent(
        cpu=lambda: run(True, lse), default=lambda: run(False, lse))

  out_Xx1xNPxDv = on_platform(False)
  # lse: a second call on constants (no gradient), dead code unless used.
  q, k, v = map(jax.lax.stop_gradient, (q, k, v))
  _, (lse_Xx1xNP,) = on_platform(True)

  # Whether row a sees a key: a valid global slot, or a valid band key in
  # [a - window, a + right] (prefix sums of kvalid).
  c = jnp.pad(jnp.cumsum(kvalid_XxN.astype(jnp.int32), axis=1),
              [(0, 0), (1, 0)])
  a = np.arange(n)
  seen = (c[:, np.minimum(a + right + 1, n)]
          - c[:, np.maximum(a - window, 0)]) > 0
  if g:
    seen = seen | jnp.any(gvalid_XxG, axis=1, keepdims=True)
  out = jnp.where(seen[:, :, None],
                  out_Xx1xNPxDv[:, 0, :n].astype(jnp.float32), 0.0)
  lse = jnp.where(seen, lse_Xx1xNP[:, 0, :n].astype(jnp.float32),
                  kernel.NEG_INF)
  return out, lse
