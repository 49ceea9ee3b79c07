"""RoBERTa-compatible Longformer encoder in Flax NNX (the task heads:
lfjax.models.heads).

Module and attribute names mirror transformers' LongformerModel so that
checkpoint conversion (lfjax.convert) is a name-by-name mapping. Any input
length works: windowed_attention pads internally, so nothing is padded to a
multiple of the window here (transformers does, and strips it again).

Letters: B batch, N sequence, E hidden, H heads, D head dim, V vocab.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lfjax.attention import common
from lfjax.attention import probs
from lfjax.attention import windowed_attention
from lfjax.models import inputs
from lfjax.models import stack
from lfjax.models.config import DTYPES
from lfjax.models.config import LongformerConfig


def activation(name):
  return {
      "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # erf, as torch
      "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
      "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "relu": jax.nn.relu,
      "tanh": jnp.tanh,
  }[name]


def _dtypes(cfg):
  """Flax's dtype / param_dtype arguments for cfg's precision."""
  return dict(dtype=DTYPES[cfg.compute_dtype],
              param_dtype=DTYPES[cfg.param_dtype])


def normal_init(cfg):
  """N(0, initializer_range) drawn in float32 and rounded to the parameter
  dtype: a bfloat16-parameter model starts from the float32 model's values
  at the same seed (a bfloat16 draw would be another sample)."""
  normal = nnx.initializers.normal(cfg.initializer_range)
  return lambda key, shape, dtype=jnp.float32: normal(
      key, shape, jnp.float32).astype(dtype)


def dense(cfg, n_in, n_out, rngs):
  # bfloat16 operands: XLA accumulates the products in float32 on GPU/TPU.
  init = normal_init(cfg)
  return nnx.Linear(n_in, n_out, kernel_init=init, rngs=rngs, **_dtypes(cfg))


def layer_norm(cfg, rngs):
  # Flax computes the statistics in at least float32 whatever `dtype` is.
  return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps,
                       use_fast_variance=False, rngs=rngs, **_dtypes(cfg))


def position_ids_from_input_ids(input_ids_BxN, pad_token_id):
  """RoBERTa position ids: count real tokens, start after the pad id, and
  give padding the pad id (transformers' create_position_ids_from_input_ids)."""
  real_BxN = (input_ids_BxN != pad_token_id).astype(jnp.int32)
  return jnp.cumsum(real_BxN, axis=1) * real_BxN + pad_token_id


class Embeddings(nnx.Module):

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    init = normal_init(cfg)
    self.cfg = cfg
    param_dtype = DTYPES[cfg.param_dtype]
    self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size,
                                     embedding_init=init,
                                     param_dtype=param_dtype, rngs=rngs)
    self.position_embeddings = nnx.Embed(cfg.max_position_embeddings,
                                         cfg.hidden_size,
                                         embedding_init=init,
                                         param_dtype=param_dtype, rngs=rngs)
    self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size,
                                           cfg.hidden_size,
                                           embedding_init=init,
                                           param_dtype=param_dtype, rngs=rngs)
    self.layer_norm = layer_norm(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, input_ids_BxN, token_type_ids_BxN, position_ids_BxN):
    # inputs.lookup, not nnx.Embed's call: an out-of-range id gives NaN rows
    # (nnx.Embed returns row 0 for any id of a one-row table). The sum is
    # float32; the layer norm returns the compute dtype.
    table = lambda e: e.embedding[...].astype(jnp.float32)
    x_BxNxE = (
        inputs.lookup(table(self.word_embeddings), input_ids_BxN)
        + inputs.lookup(table(self.position_embeddings), position_ids_BxN)
        + inputs.lookup(table(self.token_type_embeddings),
                        token_type_ids_BxN))
    return self.dropout(self.layer_norm(x_BxNxE))


class SelfAttention(nnx.Module):
  """Local q/k/v and global q/k/v projections around windowed_attention."""

  def __init__(self, cfg: LongformerConfig, layer_id: int, *,
               rngs: nnx.Rngs):
    e = cfg.hidden_size
    self.cfg = cfg
    self.window = cfg.windows()[layer_id] // 2  # one-sided
    self.dilation = cfg.dilations()[layer_id]
    for name in ("query", "key", "value", "query_global", "key_global",
                 "value_global"):
      setattr(self, name, dense(cfg, e, e, rngs))
    # Dropout on the attention probabilities (transformers'
    # attention_probs_dropout_prob); held as an nnx.Dropout so it follows
    # train()/eval() and reseeding like the other dropouts.
    self.dropout = nnx.Dropout(cfg.attention_probs_dropout_prob, rngs=rngs)

  def __call__(self, x_BxNxE, key_mask_BxN, global_mask_BxN,
               output_attentions=False, max_global=None, dropout_key=None):
    """max_global: static cap on global tokens per sequence (None: inferred
    from a concrete global mask); dropout_key: the attention dropout's key
    (None: the module's own stream)."""
    cfg = self.cfg
    b, n, _ = x_BxNxE.shape
    split = lambda y: y.reshape(b, -1, cfg.num_attention_heads, cfg.head_dim)
    names = ["query", "key", "value"]
    with_global = global_mask_BxN is not None
    # q_g is only read at global rows; with a static cap project just those.
    gather_qg = with_global and bool(max_global)
    if with_global:
      names += ["key_global", "value_global"]
      if not gather_qg:
        names.append("query_global")
    ys = [split(y) for y in self._project(x_BxNxE, names)]
    q, k, v = ys[:3]
    global_qkv = None
    if with_global:
      if gather_qg:
        idx_BxG, _ = common.global_indices(common.effective_global(
            global_mask_BxN, key_mask_BxN, max_global), max_global)
        rows_BxGxE = jnp.take_along_axis(x_BxNxE, idx_BxG[:, :, None],
                                         axis=1, mode="clip")
        qg_BxGxHxD = split(self.query_global(rows_BxGxE))
        qg = common.scatter_rows(jnp.zeros_like(q), qg_BxGxHxD, idx_BxG)
      else:
        qg = ys[5]
      global_qkv = (qg, ys[3], ys[4])
    out_BxNxHxD = windowed_attention(
        q, k, v, window=self.window, dilation=self.dilation,
        key_mask=key_mask_BxN, global_mask=global_mask_BxN,
        global_qkv=global_qkv, max_global=max_global,
        impl=cfg.attention_impl, **self._dropout_args(dropout_key))
    out = out_BxNxHxD.reshape(b, n, cfg.hidden_size)
    if not output_attentions:
      return out, None
    # transformers' layout has as many global columns as the batch's
    # largest count; that count is known only for concrete masks, so under
    # jit the columns are max_global (slots past a row's count are 0).
    columns = 0
    if global_mask_BxN is not None:
      if common.is_concrete(global_mask_BxN) and common.is_concrete(
          key_mask_BxN):
        columns = int(jnp.sum(global_mask_BxN & key_mask_BxN, axis=1).max())
      else:
        columns = max_global
    return out, probs.attention_probabilities(
        q, k, window=self.window, dilation=self.dilation,
        key_mask=key_mask_BxN, global_mask=global_mask_BxN,
        global_qk=None if global_qkv is None else global_qkv[:2],
        max_global=columns)


  def _dropout_args(self, key=None):
    if self.dropout.deterministic or not self.dropout.rate:
      return {}
    return dict(dropout_rate=float(self.dropout.rate),
                dropout_key=self.dropout.rngs() if key is None else key)

  def _project(self, x_BxNxE, names):
    """The named projections as one matmul: a few large GEMMs run closer to
    peak than many small ones (on CPU and GPU alike)."""
    mods = [getattr(self, name) for name in names]
    dtype = DTYPES[self.cfg.compute_dtype]
    kernel = jnp.concatenate([m.kernel[...] for m in mods], axis=1)
    bias = jnp.concatenate([m.bias[...] for m in mods])
    y = (jnp.einsum("bne,ef->bnf", x_BxNxE.astype(dtype), kernel.astype(dtype))
         + bias.astype(dtype))
    return jnp.split(y, len(mods), axis=-1)


class Layer(nnx.Module):

  def __init__(self, cfg: LongformerConfig, layer_id: int, *,
               rngs: nnx.Rngs):
    e, i = cfg.hidden_size, cfg.intermediate_size
    self.attention = SelfAttention(cfg, layer_id, rngs=rngs)
    self.attention_output = dense(cfg, e, e, rngs)
    self.attention_layer_norm = layer_norm(cfg, rngs)
    self.intermediate = dense(cfg, e, i, rngs)
    self.output = dense(cfg, i, e, rngs)
    self.output_layer_norm = layer_norm(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)
    self.act = activation(cfg.hidden_act)

  def __call__(self, x_BxNxE, key_mask_BxN, global_mask_BxN,
               output_attentions=False, max_global=None, dropout_key=None):
    """dropout_key: one key for the layer's three dropouts (None: the
    modules' own streams); a pure function of its arguments given one,
    as remat needs."""
    keys = ([None] * 3 if dropout_key is None
            else list(jax.random.split(dropout_key, 3)))
    a, probs_ = self.attention(x_BxNxE, key_mask_BxN, global_mask_BxN,
                               output_attentions, max_global, keys[0])
    x_BxNxE = self.attention_layer_norm(
        x_BxNxE + self.dropout(self.attention_output(a), rngs=keys[1]))
    h = self.output(self.act(self.intermediate(x_BxNxE)))
    return (self.output_layer_norm(x_BxNxE + self.dropout(h, rngs=keys[2])),
            probs_)


def output_class(cls):
  """A dataclass output whose every field is a pytree leaf (jit returns it)."""
  cls = dataclasses.dataclass(cls)
  jax.tree_util.register_dataclass(
      cls, data_fields=[f.name for f in dataclasses.fields(cls)],
      meta_fields=[])
  return cls


@output_class
class ModelOutput:
  """transformers' LongformerBaseModelOutputWithPooling.

  hidden_states (output_hidden_states=True): the embeddings' output, then
  each layer's, num_hidden_layers + 1 arrays [B, N, E].
  attentions / global_attentions (output_attentions=True): one array per
  layer in transformers' layout (see lfjax.attention.probs)."""
  last_hidden_state: jax.Array
  pooler_output: Optional[jax.Array] = None
  hidden_states: Optional[tuple] = None
  attentions: Optional[tuple] = None
  global_attentions: Optional[tuple] = None


# Fields every head passes through from the encoder, as transformers does.
ENCODER_EXTRAS = ("hidden_states", "attentions", "global_attentions")


def encoder_extras(out):
  return {name: getattr(out, name) for name in ENCODER_EXTRAS}


def traced(*xs):
  return any(x is not None and not common.is_concrete(x) for x in xs)


MAX_GLOBAL_HINT = (
    "pass max_global=K to lfjax.convert.from_pretrained (or set "
    "LongformerConfig.max_global=K), K the most global tokens any sequence "
    "has (question answering: the longest question in tokens, counting "
    "<s>; multiple choice: the longest choice)")


class LongformerModel(nnx.Module):
  """Embeddings, encoder and optional pooler (transformers' LongformerModel).

  `layers`: one Layer per layer, or with cfg.scan_layers one
  lfjax.models.stack.LayerRun per run of layers with the same window and
  dilation (parameters stacked [L, ...]; the same values at the same
  seed)."""

  def __init__(self, cfg: LongformerConfig, *, add_pooling_layer=True,
               rngs: nnx.Rngs):
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, rngs=rngs)
    layers = [Layer(cfg, i, rngs=rngs) for i in range(cfg.num_hidden_layers)]
    if cfg.scan_layers:  # the same values, stacked per run
      layers = [stack.LayerRun(layers[a:b]) for a, b in stack.layer_runs(cfg)]
    self.layers = nnx.List(layers)
    self.pooler = (dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
                   if add_pooling_layer else None)

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, output_attentions=False,
               output_hidden_states=False, *, max_global=None):
    """Encodes a batch; transformers' LongformerModel.forward.

    input_ids: [B, N] int in [0, vocab_size).
    attention_mask: [B, N], transformers' values: 0 padding, 1 local, 2
      global (the original Longformer convention; same as 1 plus a 1 in
      global_attention_mask). Default: no padding.
    global_attention_mask: [B, N], 1 (True) = global token.
    token_type_ids: [B, N] in [0, type_vocab_size); default 0.
    position_ids: [B, N] rows of the position table; default RoBERTa's
      (count of real tokens, see position_ids_from_input_ids) or BERT's
      index (config.position_ids_from).
    output_attentions: also return each layer's attention probabilities in
      transformers' layout (a dense O(N^2) computation, for analysis).
      Global columns: the batch's largest count when the masks are
      concrete (transformers' layout); under jit, max_global columns, the
      slots past a row's count 0.
    output_hidden_states: also return the embeddings' and each layer's
      output.
    max_global: static cap on global tokens per sequence for this call
      (default config.max_global); needed when the masks are traced.

    Errors (ValueError, naming the argument): wrong ranks or shapes; with
    concrete inputs, an id outside its table (input_ids, token_type_ids,
    position_ids), a sequence with more real tokens than the position table
    has rows, attention_mask values other than 0, 1, 2; under jit a
    global_attention_mask without max_global. Under jit values cannot be
    checked: such a sequence's outputs are NaN (see lfjax.models.inputs).
    """
    cfg = self.cfg
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids: expected [batch, seq], got shape "
                       f"{input_ids.shape}")
    b, n = input_ids.shape
    inputs.check_index("input_ids", input_ids, cfg.vocab_size,
                       "word_embeddings")
    cap = cfg.max_global if max_global is None else max_global
    key_mask, global_mask, bad_B = _masks(attention_mask, global_attention_mask,
                                          b, n, cap)
    if global_mask is not None and traced(global_mask, key_mask):
      if cap is None:
        raise ValueError("max_global: the global attention mask is traced "
                         "(inside jit, grad or vmap), so the number of global "
                         "tokens per sequence must be static; "
                         + MAX_GLOBAL_HINT)
      # windowed_attention would treat tokens past the cap as local: a
      # plausible wrong answer. Such rows get NaN instead.
      over = jnp.sum(global_mask & key_mask, axis=1) > cap
      bad_B = over if bad_B is None else bad_B | over
    elif global_mask is not None and cap is None and (cfg.scan_layers
                                                      or cfg.remat):
      # Concrete masks, but scan and remat trace the layers: the cap the
      # attention would read from the mask is read here, once (the most
      # global tokens of any row: none is demoted).
      cap = max(1, int(jnp.max(jnp.sum(global_mask & key_mask, axis=1))))
    if token_type_ids is None:
      token_type_ids = jnp.zeros((b, n), jnp.int32)
    token_type_ids = _check_shape("token_type_ids", token_type_ids, b, n)
    inputs.check_index("token_type_ids", token_type_ids, cfg.type_vocab_size,
                       "token_type_embeddings (type_vocab_size)")
    if position_ids is None:
      position_ids = self._default_position_ids(input_ids)
    else:
      position_ids = _check_shape("position_ids", position_ids, b, n)
      inputs.check_index("position_ids", position_ids,
                         cfg.max_position_embeddings,
                         "position_embeddings (max_position_embeddings)")
    x_BxNxE = self.embeddings(input_ids, token_type_ids, position_ids)
    if bad_B is not None:
      x_BxNxE = jnp.where(bad_B[:, None, None], jnp.nan, x_BxNxE)
    x_embedded = x_BxNxE
    x_BxNxE, hidden, probs_ = stack.run_layers(
        self.layers, x_BxNxE, key_mask, global_mask, self._layer_keys(),
        cfg=cfg, cap=cap, output_attentions=output_attentions,
        output_hidden_states=output_hidden_states)
    local = [p[0] for p in probs_]
    glob = [p[1] for p in probs_]
    hidden = [x_embedded] + hidden
    pooled = None
    if self.pooler is not None:
      pooled = jnp.tanh(self.pooler(x_BxNxE[:, 0]))
    return ModelOutput(
        last_hidden_state=x_BxNxE, pooler_output=pooled,
        hidden_states=tuple(hidden) if output_hidden_states else None,
        attentions=tuple(local) if output_attentions else None,
        global_attentions=(tuple(glob) if output_attentions and glob
                           and glob[0] is not None else None))

  def _layer_keys(self):
    """One dropout key per layer ([num_hidden_layers] key array), drawn
    from the encoder's stream when dropout is on (else None): explicit keys
    make each layer a pure function of its inputs, with or without remat or
    scan, and the same values either way."""
    cfg, d = self.cfg, self.embeddings.dropout
    if d.deterministic or not (cfg.hidden_dropout_prob
                               or cfg.attention_probs_dropout_prob):
      return None
    return jax.random.split(d.rngs(), cfg.num_hidden_layers)

  def _default_position_ids(self, input_ids_BxN):
    cfg = self.cfg
    b, n = input_ids_BxN.shape
    reserved = cfg.pad_token_id + 1
    if cfg.position_ids_from == "index":
      position_ids = jnp.broadcast_to(
          jnp.arange(n, dtype=jnp.int32) + reserved, (b, n))
    else:
      position_ids = position_ids_from_input_ids(input_ids_BxN,
                                                 cfg.pad_token_id)
    if common.is_concrete(position_ids):
      # Counts real tokens, not the padded length: a batch padded past the
      # table runs as long as its tokens fit (as in transformers).
      used = int(np.max(np.asarray(position_ids), initial=0)) - reserved + 1
      have = cfg.max_position_embeddings - reserved
      if used > have:
        what = "tokens" if cfg.position_ids_from == "index" else (
            "non-padding tokens")
        raise ValueError(
            f"input_ids: expected at most {have} {what} per sequence (the "
            f"position table has max_position_embeddings="
            f"{cfg.max_position_embeddings} rows, {reserved} reserved), got "
            f"a sequence with {used}")
    return position_ids


def _check_shape(name, x, b, n):
  x = jnp.asarray(x)
  if x.shape != (b, n):
    raise ValueError(f"{name}: expected shape {(b, n)} like input_ids, got "
                     f"{x.shape}")
  return x


def _masks(attention_mask, global_attention_mask, b, n, cap):
  """(key mask, global mask or None, rows to poison or None).

  attention_mask 2 means global (transformers' merged convention). Concrete
  values outside {0, 1, 2} raise; traced ones poison their row with NaN,
  as does a traced 2 when no static cap allows global tokens."""
  marked = None
  bad_B = None
  if attention_mask is None:
    key_mask = jnp.ones((b, n), bool)
  else:
    am = _check_shape("attention_mask", attention_mask, b, n)
    if am.dtype == jnp.bool_:
      key_mask = am
    else:
      if common.is_concrete(am):
        values = set(np.unique(np.asarray(am)).tolist())
        if not values <= {0, 1, 2}:
          raise ValueError(
              f"attention_mask: expected values 0 (padding), 1 (local) or 2 "
              f"(global, transformers' convention), got "
              f"{sorted(values - {0, 1, 2})}")
        if 2 in values:
          marked = am == 2
      else:
        invalid = (am != 0) & (am != 1) & (am != 2)
        if cap:
          marked = am == 2
        else:  # global tokens need a static cap under jit
          invalid = invalid | (am == 2)
        bad_B = jnp.any(invalid, axis=1)
      key_mask = am != 0
  global_mask = None
  if global_attention_mask is not None:
    gm = _check_shape("global_attention_mask", global_attention_mask, b, n)
    if gm.dtype != jnp.bool_:
      if common.is_concrete(gm):
        values = set(np.unique(np.asarray(gm)).tolist())
        if not values <= {0, 1}:
          raise ValueError(f"global_attention_mask: expected values 0 "
                           f"(local) or 1 (global), got "
                           f"{sorted(values - {0, 1})}")
      else:
        invalid = jnp.any((gm != 0) & (gm != 1), axis=1)
        bad_B = invalid if bad_B is None else bad_B | invalid
    global_mask = gm.astype(bool)
  if marked is not None:
    global_mask = marked if global_mask is None else global_mask | marked
  return key_mask, global_mask, bad_B
