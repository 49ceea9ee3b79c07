"""RoBERTa-compatible Longformer encoder in Flax NNX.

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
from flax import nnx

from lfjax.attention import common
from lfjax.attention import probs
from lfjax.attention import windowed_attention
from lfjax.models.config import LongformerConfig


def activation(name):
  return {
      "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # erf, as torch
      "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
      "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "relu": jax.nn.relu,
      "tanh": jnp.tanh,
  }[name]


def _dense(cfg, n_in, n_out, rngs):
  init = nnx.initializers.normal(cfg.initializer_range)
  return nnx.Linear(n_in, n_out, kernel_init=init, rngs=rngs)


def _layer_norm(cfg, rngs):
  return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps,
                       use_fast_variance=False, rngs=rngs)


def position_ids_from_input_ids(input_ids_BxN, pad_token_id):
  """RoBERTa position ids: count real tokens, start after the pad id, and
  give padding the pad id (transformers' create_position_ids_from_input_ids)."""
  real_BxN = (input_ids_BxN != pad_token_id).astype(jnp.int32)
  return jnp.cumsum(real_BxN, axis=1) * real_BxN + pad_token_id


class Embeddings(nnx.Module):

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(cfg.initializer_range)
    self.cfg = cfg
    self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size,
                                     embedding_init=init, rngs=rngs)
    self.position_embeddings = nnx.Embed(cfg.max_position_embeddings,
                                         cfg.hidden_size,
                                         embedding_init=init, rngs=rngs)
    self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size,
                                           cfg.hidden_size,
                                           embedding_init=init, rngs=rngs)
    self.layer_norm = _layer_norm(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, input_ids_BxN, token_type_ids_BxN, position_ids_BxN):
    x_BxNxE = (self.word_embeddings(input_ids_BxN)
               + self.position_embeddings(position_ids_BxN)
               + self.token_type_embeddings(token_type_ids_BxN))
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
      setattr(self, name, _dense(cfg, e, e, rngs))
    # Dropout on the attention probabilities (transformers'
    # attention_probs_dropout_prob); held as an nnx.Dropout so it follows
    # train()/eval() and reseeding like the other dropouts.
    self.dropout = nnx.Dropout(cfg.attention_probs_dropout_prob, rngs=rngs)

  def __call__(self, x_BxNxE, key_mask_BxN, global_mask_BxN,
               output_attentions=False):
    cfg = self.cfg
    b, n, _ = x_BxNxE.shape
    split = lambda y: y.reshape(b, -1, cfg.num_attention_heads, cfg.head_dim)
    names = ["query", "key", "value"]
    with_global = global_mask_BxN is not None
    # q_g is only read at global rows; with a static cap project just those.
    gather_qg = with_global and bool(cfg.max_global)
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
            global_mask_BxN, key_mask_BxN, cfg.max_global), cfg.max_global)
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
        global_qkv=global_qkv, max_global=cfg.max_global,
        impl=cfg.attention_impl, **self._dropout_args())
    out = out_BxNxHxD.reshape(b, n, cfg.hidden_size)
    if not output_attentions:
      return out, None
    max_global = 0
    if global_mask_BxN is not None:
      max_global = cfg.max_global or int(
          jnp.sum(global_mask_BxN & key_mask_BxN, axis=1).max())
    return out, probs.attention_probabilities(
        q, k, window=self.window, dilation=self.dilation,
        key_mask=key_mask_BxN, global_mask=global_mask_BxN,
        global_qk=None if global_qkv is None else global_qkv[:2],
        max_global=max_global)


  def _dropout_args(self):
    if self.dropout.deterministic or not self.dropout.rate:
      return {}
    return dict(dropout_rate=float(self.dropout.rate),
                dropout_key=self.dropout.rngs())

  def _project(self, x_BxNxE, names):
    """The named projections as one matmul: a few large GEMMs run closer to
    peak than many small ones (on CPU and GPU alike)."""
    mods = [getattr(self, name) for name in names]
    kernel = jnp.concatenate([m.kernel.value for m in mods], axis=1)
    bias = jnp.concatenate([m.bias.value for m in mods])
    y = jnp.einsum("bne,ef->bnf", x_BxNxE, kernel) + bias
    return jnp.split(y, len(mods), axis=-1)


class Layer(nnx.Module):

  def __init__(self, cfg: LongformerConfig, layer_id: int, *,
               rngs: nnx.Rngs):
    e, i = cfg.hidden_size, cfg.intermediate_size
    self.attention = SelfAttention(cfg, layer_id, rngs=rngs)
    self.attention_output = _dense(cfg, e, e, rngs)
    self.attention_layer_norm = _layer_norm(cfg, rngs)
    self.intermediate = _dense(cfg, e, i, rngs)
    self.output = _dense(cfg, i, e, rngs)
    self.output_layer_norm = _layer_norm(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)
    self.act = activation(cfg.hidden_act)

  def __call__(self, x_BxNxE, key_mask_BxN, global_mask_BxN,
               output_attentions=False):
    a, probs_ = self.attention(x_BxNxE, key_mask_BxN, global_mask_BxN,
                               output_attentions)
    x_BxNxE = self.attention_layer_norm(
        x_BxNxE + self.dropout(self.attention_output(a)))
    h = self.output(self.act(self.intermediate(x_BxNxE)))
    return self.output_layer_norm(x_BxNxE + self.dropout(h)), probs_


@dataclasses.dataclass
class ModelOutput:
  """attentions / global_attentions: one array per layer, in transformers'
  layout, when called with output_attentions=True (see
  lfjax.attention.probs)."""
  last_hidden_state: jax.Array
  pooler_output: Optional[jax.Array] = None
  attentions: Optional[tuple] = None
  global_attentions: Optional[tuple] = None


jax.tree_util.register_dataclass(
    ModelOutput, data_fields=["last_hidden_state", "pooler_output",
                              "attentions", "global_attentions"],
    meta_fields=[])


class LongformerModel(nnx.Module):
  """Embeddings, encoder and optional pooler (transformers' LongformerModel)."""

  def __init__(self, cfg: LongformerConfig, *, add_pooling_layer=True,
               rngs: nnx.Rngs):
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, rngs=rngs)
    self.layers = nnx.List([Layer(cfg, i, rngs=rngs)
                            for i in range(cfg.num_hidden_layers)])
    self.pooler = (_dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
                   if add_pooling_layer else None)

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, output_attentions=False):
    """input_ids [B, N] int; attention_mask 1 keep / 0 pad; global 1 global.

    output_attentions: also return each layer's attention probabilities in
    transformers' layout (dense O(N^2) computation, for analysis; without
    config.max_global it needs a concrete global mask)."""
    cfg = self.cfg
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids: expected [batch, seq], got shape "
                       f"{input_ids.shape}")
    b, n = input_ids.shape
    if n > cfg.max_position_embeddings - cfg.pad_token_id - 1:
      raise ValueError(
          f"input_ids: expected at most "
          f"{cfg.max_position_embeddings - cfg.pad_token_id - 1} tokens "
          f"(max_position_embeddings={cfg.max_position_embeddings}), got {n}")
    key_mask = (jnp.ones((b, n), bool) if attention_mask is None
                else jnp.asarray(attention_mask).astype(bool))
    global_mask = (None if global_attention_mask is None
                   else jnp.asarray(global_attention_mask).astype(bool))
    if token_type_ids is None:
      token_type_ids = jnp.zeros((b, n), jnp.int32)
    if position_ids is None and cfg.position_ids_from == "index":
      position_ids = jnp.broadcast_to(
          jnp.arange(n, dtype=jnp.int32) + cfg.pad_token_id + 1, (b, n))
    elif position_ids is None:
      position_ids = position_ids_from_input_ids(input_ids, cfg.pad_token_id)
    x_BxNxE = self.embeddings(input_ids, token_type_ids, position_ids)
    local, glob = [], []
    for layer in self.layers:
      x_BxNxE, p = layer(x_BxNxE, key_mask, global_mask, output_attentions)
      if p is not None:
        local.append(p[0])
        glob.append(p[1])
    pooled = None
    if self.pooler is not None:
      pooled = jnp.tanh(self.pooler(x_BxNxE[:, 0]))
    return ModelOutput(
        last_hidden_state=x_BxNxE, pooler_output=pooled,
        attentions=tuple(local) if output_attentions else None,
        global_attentions=(tuple(glob) if output_attentions and glob
                           and glob[0] is not None else None))


@dataclasses.dataclass
class MaskedLMOutput:
  logits: jax.Array
  last_hidden_state: jax.Array


jax.tree_util.register_dataclass(
    MaskedLMOutput, data_fields=["logits", "last_hidden_state"],
    meta_fields=[])


class LongformerForMaskedLM(nnx.Module):
  """Encoder plus RoBERTa's LM head, decoder tied to the word embeddings."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.longformer = LongformerModel(cfg, add_pooling_layer=False, rngs=rngs)
    self.lm_dense = _dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
    self.lm_layer_norm = _layer_norm(cfg, rngs)
    self.lm_bias = nnx.Param(jnp.zeros((cfg.vocab_size,)))
    self.act = activation("gelu")

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, positions=None):
    """positions: optional [B, K] token indices; logits are then [B, K, V],
    for those tokens only (MLM training predicts ~15% of them)."""
    h = self.longformer(input_ids, attention_mask, global_attention_mask,
                        token_type_ids, position_ids).last_hidden_state
    y = h
    if positions is not None:
      positions = jnp.asarray(positions)
      if positions.ndim != 2 or positions.shape[0] != h.shape[0]:
        raise ValueError(f"positions: expected [batch={h.shape[0]}, K] "
                         f"indices, got shape {positions.shape}")
      y = jnp.take_along_axis(h, positions[:, :, None], axis=1)
    y = self.lm_layer_norm(self.act(self.lm_dense(y)))
    emb_VxE = self.longformer.embeddings.word_embeddings.embedding.value
    logits = jnp.einsum("bne,ve->bnv", y, emb_VxE) + self.lm_bias.value
    return MaskedLMOutput(logits=logits, last_hidden_state=h)


@dataclasses.dataclass
class ClassifierOutput:
  logits: jax.Array


@dataclasses.dataclass
class QAOutput:
  start_logits: jax.Array
  end_logits: jax.Array


jax.tree_util.register_dataclass(ClassifierOutput, data_fields=["logits"],
                                 meta_fields=[])
jax.tree_util.register_dataclass(
    QAOutput, data_fields=["start_logits", "end_logits"], meta_fields=[])


class LongformerForSequenceClassification(nnx.Module):
  """Classifies from the first token, which is global unless told otherwise
  (as transformers does)."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.longformer = LongformerModel(cfg, add_pooling_layer=False, rngs=rngs)
    self.classifier_dense = _dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
    self.classifier_out = _dense(cfg, cfg.hidden_size, cfg.num_labels, rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None):
    input_ids = jnp.asarray(input_ids)
    if global_attention_mask is None:
      global_attention_mask = jnp.zeros(input_ids.shape, bool).at[:, 0].set(
          True)
    h = self.longformer(input_ids, attention_mask, global_attention_mask,
                        token_type_ids, position_ids).last_hidden_state
    x = jnp.tanh(self.classifier_dense(self.dropout(h[:, 0])))
    return ClassifierOutput(logits=self.classifier_out(self.dropout(x)))


def question_global_mask(input_ids_BxN, sep_token_id):
  """Global attention on every token before the first separator (the
  question), as transformers' QA model sets it. Rows without a separator get
  none."""
  is_sep = input_ids_BxN == sep_token_id
  first_BxN = jnp.where(is_sep.any(axis=1), jnp.argmax(is_sep, axis=1), 0)
  return jnp.arange(input_ids_BxN.shape[1])[None, :] < first_BxN[:, None]


class LongformerForQuestionAnswering(nnx.Module):
  """Span start/end logits; the question tokens are global by default."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.longformer = LongformerModel(cfg, add_pooling_layer=False, rngs=rngs)
    self.qa_outputs = _dense(cfg, cfg.hidden_size, 2, rngs)

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None):
    input_ids = jnp.asarray(input_ids)
    if global_attention_mask is None:
      global_attention_mask = question_global_mask(input_ids,
                                                   self.cfg.sep_token_id)
    h = self.longformer(input_ids, attention_mask, global_attention_mask,
                        token_type_ids, position_ids).last_hidden_state
    logits = self.qa_outputs(h)
    return QAOutput(start_logits=logits[..., 0], end_logits=logits[..., 1])
