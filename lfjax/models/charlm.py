"""Character-level causal Longformer LM (the paper's text8/enwik8 model).

Pre-LayerNorm transformer, causal windowed attention with per-layer windows
and dilation on some heads, Transformer-XL relative sinusoidal positions
(without memory), GELU, dropout. Windows are ONE-SIDED: a layer with window
w lets token i see tokens i - m*d for m = 0..w (d the head's dilation).

Dropout takes an explicit key (`dropout_key`), so a training step is a pure
function of (params, batch, key): resumed runs replay it exactly.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lfjax.attention import common
from lfjax.attention import windowed_attention
from lfjax.models import inputs
from lfjax.models import relpos
from lfjax.models import remat
from lfjax.models.config import DTYPES


# CharLMConfig.rel_impl values.
REL_IMPLS = ("table", "features")


@dataclasses.dataclass(frozen=True)
class CharLMConfig:
  """Shapes and options; windows and dilations are per layer."""
  vocab_size: int = 256
  num_layers: int = 12
  num_heads: int = 8
  hidden_size: int = 512
  head_dim: int = 64
  ffn_size: int = 2048
  windows: tuple = (32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
  # Dilation of the dilated heads, per layer (1 = none).
  dilations: tuple = (1, 1, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4)
  dilated_heads: int = 2  # the LAST this many heads of a layer are dilated
  rel_features: int = 512  # sinusoid width; Transformer-XL uses hidden_size
  dropout: float = 0.2
  layer_norm_eps: float = 1e-5
  # Matmul and attention operand dtype; softmax, accumulation, layer-norm
  # statistics and the logits stay float32.
  dtype: str = "float32"
  # Recompute each block in the backward pass (lfjax.models.remat), in
  # layer order: memory of one block's activations instead of all of them.
  remat: bool = False
  # What remat keeps per block besides its inputs (used only with remat):
  # "nothing"; "attention" (the band attention's output and log-sum-exp
  # and, under sequence parallelism, the received halos: the backward
  # repeats neither the attention forward nor the exchange; about one more
  # [B, N, hidden] float32 per layer); "offload" (what "attention" keeps,
  # in pinned host memory between forward and backward: GPU/TPU only, on
  # CPU jax makes the move a no-op). Same values and gradients for all.
  remat_policy: str = "nothing"
  attention_impl: str = "auto"
  # How the relative position term reaches the attention: "table" passes
  # windowed_attention a per-distance table (head_dim-wide work per score);
  # "features" widens q and k by rel_features (exact, 9x the QK work of the
  # paper's model; kept as an oracle). Same parameters either way.
  rel_impl: str = "table"

  def __post_init__(self):
    for name in ("windows", "dilations"):
      val = getattr(self, name)
      if len(val) != self.num_layers:
        raise ValueError(f"{name}: expected one value per layer "
                         f"({self.num_layers}), got {len(val)}: {val}")
    if any(int(w) < 0 for w in self.windows):
      raise ValueError(f"windows: expected ints >= 0, got {self.windows}")
    if any(int(d) < 1 for d in self.dilations):
      raise ValueError(f"dilations: expected ints >= 1, got {self.dilations}")
    if not 0 <= self.dilated_heads <= self.num_heads:
      raise ValueError(f"dilated_heads: expected 0..{self.num_heads}, got "
                       f"{self.dilated_heads}")
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype: expected one of {list(DTYPES)}, got "
                       f"{self.dtype!r}")
    relpos.inverse_frequencies(self.rel_features)
    if self.remat_policy not in remat.POLICIES:
      raise ValueError(f"remat_policy: expected one of {list(remat.POLICIES)}"
                       f", got {self.remat_policy!r}")
    if self.rel_impl not in REL_IMPLS:
      raise ValueError(f"rel_impl: expected one of {REL_IMPLS}, got "
                       f"{self.rel_impl!r}")
    object.__setattr__(self, "windows", tuple(int(w) for w in self.windows))
    object.__setattr__(self, "dilations",
                       tuple(int(d) for d in self.dilations))

  def head_dilations(self, layer):
    """Per-head dilation of a layer."""
    h, k = self.num_heads, self.dilated_heads
    return (1,) * (h - k) + (self.dilations[layer],) * k

  def receptive_field(self, window_scale=1):
    """How many past tokens the top layer's output can depend on."""
    return sum(w * window_scale * d
               for w, d in zip(self.windows, self.dilations))


def _dropout(x, rate, key):
  """x with each entry kept with probability 1 - rate and scaled by
  1 / (1 - rate), else 0 (inverted dropout); x unchanged when key is None.

  The keep decision is a hash of (a seed drawn from key, row, feature), the
  one the attention dropout uses (common.dropout_multiplier), not
  jax.random.bernoulli: the same Bernoulli law, but threefry's bits cost
  about a quarter of the paper-small train step on CPU (drawn twice per
  layer under remat) and the hash about 1/25th of that."""
  if key is None or rate == 0.0:
    return x
  seed = jax.random.bits(key, (), jnp.uint32)
  # Row index over every leading axis: an iota per axis, so sharded
  # activations compute their own part without a gathered index array.
  row = jnp.zeros(x.shape, jnp.uint32)
  for axis in range(x.ndim - 1):
    row = row * jnp.uint32(x.shape[axis]) + jax.lax.broadcasted_iota(
        jnp.uint32, x.shape, axis)
  col = jax.lax.broadcasted_iota(jnp.uint32, x.shape, x.ndim - 1)
  scale = common.dropout_multiplier(seed, row, col, rate)
  return jnp.where(scale > 0, x * scale.astype(x.dtype), 0).astype(x.dtype)


def _linear(cfg, n_in, n_out, rngs, bias=True):
  return nnx.Linear(n_in, n_out, use_bias=bias,
                    kernel_init=nnx.initializers.normal(0.02),
                    dtype=DTYPES[cfg.dtype], rngs=rngs)


class Attention(nnx.Module):
  """Causal windowed self-attention with relative sinusoidal positions."""

  def __init__(self, cfg: CharLMConfig, layer: int, *, rngs: nnx.Rngs):
    self.cfg, self.layer = cfg, layer
    h, dh, e = cfg.num_heads, cfg.head_dim, cfg.hidden_size
    self.qkv = _linear(cfg, e, 3 * h * dh, rngs, bias=False)
    self.out = _linear(cfg, h * dh, e, rngs, bias=False)
    self.rel = _linear(cfg, cfg.rel_features, h * dh, rngs, bias=False)
    init = nnx.initializers.normal(0.02)
    self.content_bias = nnx.Param(init(rngs.params(), (h, dh)))  # u
    self.position_bias = nnx.Param(init(rngs.params(), (h, dh)))  # v

  def project(self, x_BxNxE):
    """q, k, v [B, N, H, D] in the compute dtype (cfg.dtype): the attention
    takes bf16 operands as they are and accumulates in float32."""
    cfg = self.cfg
    b, n, _ = x_BxNxE.shape
    qkv = self.qkv(x_BxNxE)
    q, k, v = jnp.split(qkv.reshape(b, n, 3, cfg.num_heads, cfg.head_dim),
                        3, axis=2)
    return q[:, :, 0], k[:, :, 0], v[:, :, 0]

  def biased(self, q):
    """(q + u, q + v): the content and position queries, in q's dtype."""
    return (q + self.content_bias[...].astype(q.dtype),
            q + self.position_bias[...].astype(q.dtype))

  def rel_kernel_FxHxD(self):
    cfg = self.cfg
    return self.rel.kernel[...].astype(jnp.float32).reshape(
        cfg.rel_features, cfg.num_heads, cfg.head_dim)

  def rel_table_TxHxD(self, rows):
    """W_r r(t) for distances t = 0 .. rows - 1, [rows, H, D], computed in
    float32 (one small matmul per call) and given in the compute dtype."""
    r_TxF = jnp.asarray(relpos.sinusoid(np.arange(rows), self.cfg.rel_features),
                        jnp.float32)
    return jnp.einsum("tf,fhd->thd", r_TxF, self.rel_kernel_FxHxD()).astype(
        DTYPES[self.cfg.dtype])

  def __call__(self, x_BxNxE, *, window_scale, position_offset):
    cfg = self.cfg
    b, n, _ = x_BxNxE.shape
    q, k, v = self.project(x_BxNxE)
    window = cfg.windows[self.layer] * window_scale
    dilation = cfg.head_dilations(self.layer)
    scale = 1.0 / float(np.sqrt(cfg.head_dim))
    q_content, q_position = self.biased(q)
    if cfg.rel_impl == "table":
      # Only distances the window reaches (and the sequence has) need rows;
      # positions enter only relatively, so position_offset plays no part.
      rows = min(window * max(dilation), n - 1) + 1
      o = windowed_attention(
          q_content, k, v, window=window, dilation=dilation,
          causal=True, scale=scale, impl=cfg.attention_impl,
          rel_query=q_position, rel_table=self.rel_table_TxHxD(rows))
      return self.out(o.reshape(b, n, -1).astype(DTYPES[cfg.dtype]))
    sin, cos = relpos.position_sin_cos(n, cfg.rel_features, position_offset)
    # The features trick's sums of products are formed in float32; the
    # augmented operands then go to the attention in the compute dtype.
    c_BxNxHxF = jnp.einsum("bnhd,fhd->bnhf", q_position.astype(jnp.float32),
                           self.rel_kernel_FxHxD())
    q_aug = jnp.concatenate(
        [q_content, relpos.query_features(c_BxNxHxF, sin, cos).astype(
            q.dtype)], axis=-1)
    k_pos = jnp.broadcast_to(relpos.key_features(sin, cos)[None, :, None],
                             (b, n, cfg.num_heads, cfg.rel_features))
    k_aug = jnp.concatenate([k, k_pos.astype(k.dtype)], axis=-1)
    o = windowed_attention(
        q_aug, k_aug, v, window=window, dilation=dilation, causal=True,
        scale=scale, impl=cfg.attention_impl)
    return self.out(o.reshape(b, n, -1).astype(DTYPES[cfg.dtype]))

  def decode(self, x_BxE, t, cache, *, window_scale):
    """One token at position t against a ring buffer of past keys/values.

    Scores use r(t - j) directly (not the feature trick), so comparing with
    __call__ checks the decomposition too."""
    cfg = self.cfg
    # Sampling keeps its cache and scores in float32 (one token per call:
    # memory is not the constraint there).
    q, k, v = (x[:, 0].astype(jnp.float32)
               for x in self.project(x_BxE[:, None]))
    k_SxBxHxD, v_SxBxHxD, pos_S = cache
    size = pos_S.shape[0]
    slot = t % size
    k_SxBxHxD = k_SxBxHxD.at[slot].set(k)
    v_SxBxHxD = v_SxBxHxD.at[slot].set(v)
    pos_S = pos_S.at[slot].set(t)
    dist_S = t - pos_S
    r_SxF = jnp.asarray(relpos.sinusoid(np.arange(size), cfg.rel_features),
                        jnp.float32)[jnp.clip(dist_S, 0, size - 1)]
    r_SxHxD = jnp.einsum("sf,fhd->shd", r_SxF, self.rel_kernel_FxHxD())
    s = (jnp.einsum("bhd,sbhd->bhs", q + self.content_bias[...], k_SxBxHxD)
         + jnp.einsum("bhd,shd->bhs", q + self.position_bias[...], r_SxHxD))
    s = s / np.sqrt(cfg.head_dim)
    dil_H = jnp.asarray(cfg.head_dilations(self.layer))
    w = cfg.windows[self.layer] * window_scale
    ok_HxS = ((pos_S >= 0)[None] & (dist_S[None] <= w * dil_H[:, None])
              & (dist_S[None] % dil_H[:, None] == 0))
    s = jnp.where(ok_HxS[None], s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bhs,sbhd->bhd", p, v_SxBxHxD)
    out = self.out(o.reshape(o.shape[0], -1).astype(DTYPES[cfg.dtype]))
    return out, (k_SxBxHxD, v_SxBxHxD, pos_S)


class Block(nnx.Module):
  """Pre-LN block: x + Attn(LN x), then x + FFN(LN x)."""

  def __init__(self, cfg: CharLMConfig, layer: int, *, rngs: nnx.Rngs):
    self.cfg = cfg
    e = cfg.hidden_size
    ln = lambda: nnx.LayerNorm(e, epsilon=cfg.layer_norm_eps, rngs=rngs)
    self.attention_norm, self.ffn_norm = ln(), ln()
    self.attention = Attention(cfg, layer, rngs=rngs)
    self.ffn_in = _linear(cfg, e, cfg.ffn_size, rngs)
    self.ffn_out = _linear(cfg, cfg.ffn_size, e, rngs)

  def ffn(self, x, key):
    keys = (None, None) if key is None else jax.random.split(key)
    h = _dropout(jax.nn.gelu(self.ffn_in(self.ffn_norm(x)), approximate=False),
                 self.cfg.dropout, keys[0])
    return _dropout(self.ffn_out(h), self.cfg.dropout, keys[1])

  def __call__(self, x, key, *, window_scale, position_offset):
    k_attn, k_ffn = (None, None) if key is None else jax.random.split(key)
    a = self.attention(self.attention_norm(x), window_scale=window_scale,
                       position_offset=position_offset)
    x = x + _dropout(a, self.cfg.dropout, k_attn)
    return x + self.ffn(x, k_ffn)

  def decode(self, x, t, cache, *, window_scale):
    a, cache = self.attention.decode(self.attention_norm(x), t, cache,
                                     window_scale=window_scale)
    x = x + a
    return x + self.ffn(x, None), cache


class CharLM(nnx.Module):
  """Token ids [B, N] -> next-token logits [B, N, vocab] (float32)."""

  def __init__(self, cfg: CharLMConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden_size,
                           embedding_init=nnx.initializers.normal(0.02),
                           rngs=rngs)
    self.blocks = nnx.List([Block(cfg, i, rngs=rngs)
                            for i in range(cfg.num_layers)])
    self.final_norm = nnx.LayerNorm(cfg.hidden_size,
                                    epsilon=cfg.layer_norm_eps, rngs=rngs)
    self.output_bias = nnx.Param(jnp.zeros((cfg.vocab_size,)))

  def __call__(self, tokens_BxN, *, dropout_key=None, window_scale=1,
               position_offset=0):
    """position_offset shifts every position (a shard's start); outputs do
    not depend on it, as positions enter only relatively."""
    if tokens_BxN.ndim != 2 or tokens_BxN.shape[1] < 1:
      raise ValueError(f"tokens: expected [batch, seq>=1] ids, got shape "
                       f"{tokens_BxN.shape}")
    inputs.check_index("tokens", tokens_BxN, self.cfg.vocab_size,
                       "the embedding (vocab_size)")
    x = inputs.lookup(self.embed.embedding[...], tokens_BxN).astype(
        DTYPES[self.cfg.dtype])
    return self.from_embeddings(x, dropout_key=dropout_key,
                                window_scale=window_scale,
                                position_offset=position_offset)

  def from_embeddings(self, x_BxNxE, *, dropout_key=None, window_scale=1,
                      position_offset=0):
    cfg = self.cfg
    keys = ([None] * (cfg.num_layers + 1) if dropout_key is None
            else list(jax.random.split(dropout_key, cfg.num_layers + 1)))
    x = _dropout(x_BxNxE, cfg.dropout, keys[0])
    for block, key in zip(self.blocks, keys[1:]):
      call = lambda blk, x, key: blk(x, key, window_scale=window_scale,
                                     position_offset=position_offset)
      if cfg.remat:  # recomputed in the backward, in layer order
        call = functools.partial(remat.remat_call, call,
                                 policy=cfg.remat_policy)
      x = call(block, x, key)
    return self.logits(x)

  def logits(self, x):
    x = self.final_norm(x).astype(jnp.float32)
    table = self.embed.embedding[...].astype(jnp.float32)
    return x @ table.T + self.output_bias[...]

  # Generation ------------------------------------------------------------

  def cache_sizes(self, window_scale=1):
    """Ring-buffer length per layer: the farthest key any head reaches + 1."""
    cfg = self.cfg
    return [cfg.windows[i] * window_scale * max(cfg.head_dilations(i)) + 1
            for i in range(cfg.num_layers)]

  def init_cache(self, batch, window_scale=1):
    cfg = self.cfg
    shape = lambda s: (s, batch, cfg.num_heads, cfg.head_dim)
    return [(jnp.zeros(shape(s), jnp.float32), jnp.zeros(shape(s),
                                                         jnp.float32),
             jnp.full((s,), -1, jnp.int32))
            for s in self.cache_sizes(window_scale)]

  def decode(self, token_B, t, cache, *, window_scale=1):
    """Logits [B, vocab] for the token at position t, and the new cache.

    Memory is O(window) per layer whatever t is."""
    inputs.check_index("token", token_B, self.cfg.vocab_size,
                       "the embedding (vocab_size)")
    x = inputs.lookup(self.embed.embedding[...], token_B).astype(
        DTYPES[self.cfg.dtype])
    new_cache = []
    for block, c in zip(self.blocks, cache):
      x, c = block.decode(x, t, c, window_scale=window_scale)
      new_cache.append(c)
    return self.logits(x), new_cache
