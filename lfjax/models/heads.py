"""transformers' Longformer task heads on lfjax's encoder: masked LM,
sequence and token classification, multiple choice, question answering.

Module and attribute names follow transformers' classes (lfjax.convert maps
them name by name); every head returns float32 logits and passes the
encoder's hidden_states / attentions / global_attentions through.

Letters: B batch, N sequence, E hidden, V vocab, C choices, K positions.
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from lfjax.models import inputs
from lfjax.models.config import DTYPES
from lfjax.models.config import LongformerConfig
from lfjax.models.longformer import LongformerModel
from lfjax.models.longformer import activation
from lfjax.models.longformer import dense
from lfjax.models.longformer import encoder_extras
from lfjax.models.longformer import layer_norm
from lfjax.models.longformer import normal_init
from lfjax.models.longformer import output_class
from lfjax.models.longformer import traced


def _f32(logits):
  """Heads return float32 logits whatever the compute dtype: losses, argmax
  and span scores read them."""
  return logits.astype(jnp.float32)


@output_class
class MaskedLMOutput:
  logits: jax.Array
  last_hidden_state: jax.Array
  hidden_states: Optional[tuple] = None
  attentions: Optional[tuple] = None
  global_attentions: Optional[tuple] = None


class LongformerForMaskedLM(nnx.Module):
  """Encoder plus RoBERTa's LM head (transformers' LongformerForMaskedLM);
  the decoder is the word embeddings unless config.tie_word_embeddings is
  False."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.longformer = LongformerModel(cfg, add_pooling_layer=False, rngs=rngs)
    self.lm_dense = dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
    self.lm_layer_norm = layer_norm(cfg, rngs)
    param_dtype = DTYPES[cfg.param_dtype]
    self.lm_bias = nnx.Param(jnp.zeros((cfg.vocab_size,), param_dtype))
    self.lm_decoder = None
    if not cfg.tie_word_embeddings:
      self.lm_decoder = nnx.data(nnx.Param(normal_init(cfg)(
          rngs.params(), (cfg.vocab_size, cfg.hidden_size), param_dtype)))
    self.act = activation(cfg.lm_head_act)

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, positions=None,
               output_attentions=False, output_hidden_states=False, *,
               max_global=None):
    """positions: optional [B, K] token indices in [0, N); logits are then
    [B, K, V], for those tokens only (MLM training predicts ~15% of them).
    Other arguments and errors as LongformerModel."""
    out = self.longformer(input_ids, attention_mask, global_attention_mask,
                          token_type_ids, position_ids, output_attentions,
                          output_hidden_states, max_global=max_global)
    h = out.last_hidden_state
    y = h
    if positions is not None:
      positions = jnp.asarray(positions)
      if positions.ndim != 2 or positions.shape[0] != h.shape[0]:
        raise ValueError(f"positions: expected [batch={h.shape[0]}, K] "
                         f"indices, got shape {positions.shape}")
      inputs.check_index("positions", positions, h.shape[1], "the sequence")
      n = h.shape[1]
      y = jnp.take_along_axis(h, jnp.clip(positions, 0, n - 1)[:, :, None],
                              axis=1)
      y = jnp.where(inputs.in_range(positions, n)[:, :, None], y, jnp.nan)
    y = self.lm_layer_norm(self.act(self.lm_dense(y)))
    decoder_VxE = (self.longformer.embeddings.word_embeddings.embedding[...]
                   if self.lm_decoder is None else self.lm_decoder[...])
    # Operands in the compute dtype, logits (what losses read) float32.
    logits = jnp.einsum("bne,ve->bnv", y, decoder_VxE.astype(y.dtype),
                        preferred_element_type=jnp.float32)
    logits = logits + self.lm_bias[...].astype(jnp.float32)
    return MaskedLMOutput(logits=logits, last_hidden_state=h,
                          **encoder_extras(out))


@output_class
class ClassifierOutput:
  """logits: [B, num_labels] (sequence), [B, N, num_labels] (token) or
  [B, num_choices] (multiple choice)."""
  logits: jax.Array
  hidden_states: Optional[tuple] = None
  attentions: Optional[tuple] = None
  global_attentions: Optional[tuple] = None


@output_class
class QAOutput:
  start_logits: jax.Array
  end_logits: jax.Array
  hidden_states: Optional[tuple] = None
  attentions: Optional[tuple] = None
  global_attentions: Optional[tuple] = None


class LongformerForSequenceClassification(nnx.Module):
  """Classifies from the first token, which is global unless told otherwise
  (transformers' LongformerForSequenceClassification). With that default it
  jits without max_global: the count is one by construction."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.longformer = LongformerModel(cfg, add_pooling_layer=False, rngs=rngs)
    self.classifier_dense = dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
    self.classifier_out = dense(cfg, cfg.hidden_size, cfg.num_labels, rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, output_attentions=False,
               output_hidden_states=False, *, max_global=None):
    input_ids = jnp.asarray(input_ids)
    cap = max_global
    if global_attention_mask is None:
      global_attention_mask = jnp.zeros(input_ids.shape, bool).at[:, 0].set(
          True)
      # One global token by construction, so the head jits without a cap;
      # under jit a row with more (attention_mask 2) gets NaN outputs.
      if (cap is None and self.cfg.max_global is None
          and traced(input_ids, attention_mask)):
        cap = 1
    out = self.longformer(input_ids, attention_mask, global_attention_mask,
                          token_type_ids, position_ids, output_attentions,
                          output_hidden_states, max_global=cap)
    h = out.last_hidden_state
    x = jnp.tanh(self.classifier_dense(self.dropout(h[:, 0])))
    return ClassifierOutput(
        logits=_f32(self.classifier_out(self.dropout(x))),
        **encoder_extras(out))


class LongformerForTokenClassification(nnx.Module):
  """Per-token logits (transformers' LongformerForTokenClassification); no
  global tokens unless given."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.longformer = LongformerModel(cfg, add_pooling_layer=False, rngs=rngs)
    self.classifier = dense(cfg, cfg.hidden_size, cfg.num_labels, rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, output_attentions=False,
               output_hidden_states=False, *, max_global=None):
    out = self.longformer(input_ids, attention_mask, global_attention_mask,
                          token_type_ids, position_ids, output_attentions,
                          output_hidden_states, max_global=max_global)
    logits = self.classifier(self.dropout(out.last_hidden_state))
    return ClassifierOutput(logits=_f32(logits), **encoder_extras(out))


def choice_global_mask(input_ids_BxN, sep_token_id):
  """transformers' multiple-choice default: global attention on every token
  after the first `</s></s>` (the choice and what follows it); rows without
  a separator get none."""
  is_sep = input_ids_BxN == sep_token_id
  has = is_sep.any(axis=1)
  first_B = jnp.argmax(is_sep, axis=1)
  after = jnp.arange(input_ids_BxN.shape[1])[None, :] > first_B[:, None] + 1
  return after & has[:, None]


class LongformerForMultipleChoice(nnx.Module):
  """One score per choice from the pooled first token (transformers'
  LongformerForMultipleChoice). Inputs are [B, C, N] (C choices); by default
  the tokens after the first `</s></s>` of each choice are global, a count
  known only from the data: under jit pass max_global."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.longformer = LongformerModel(cfg, add_pooling_layer=True, rngs=rngs)
    self.classifier = dense(cfg, cfg.hidden_size, 1, rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, output_attentions=False,
               output_hidden_states=False, *, max_global=None):
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 3:
      raise ValueError(f"input_ids: expected [batch, choices, seq], got shape "
                       f"{input_ids.shape}")
    b, c, n = input_ids.shape
    flat = lambda x: None if x is None else jnp.asarray(x).reshape(b * c, n)
    ids = flat(input_ids)
    if global_attention_mask is None:
      global_attention_mask = choice_global_mask(ids, self.cfg.sep_token_id)
    out = self.longformer(ids, flat(attention_mask),
                          flat(global_attention_mask), flat(token_type_ids),
                          flat(position_ids), output_attentions,
                          output_hidden_states, max_global=max_global)
    logits = self.classifier(self.dropout(out.pooler_output))
    return ClassifierOutput(logits=_f32(logits).reshape(b, c),
                            **encoder_extras(out))


def question_global_mask(input_ids_BxN, sep_token_id):
  """Global attention on every token before the first separator (the
  question), as transformers' QA model sets it. Rows without a separator get
  none."""
  is_sep = input_ids_BxN == sep_token_id
  first_BxN = jnp.where(is_sep.any(axis=1), jnp.argmax(is_sep, axis=1), 0)
  return jnp.arange(input_ids_BxN.shape[1])[None, :] < first_BxN[:, None]


class LongformerForQuestionAnswering(nnx.Module):
  """Span start/end logits; the question tokens are global by default
  (transformers' LongformerForQuestionAnswering). Their count is known only
  from the data: under jit pass max_global."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.longformer = LongformerModel(cfg, add_pooling_layer=False, rngs=rngs)
    self.qa_outputs = dense(cfg, cfg.hidden_size, 2, rngs)

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, output_attentions=False,
               output_hidden_states=False, *, max_global=None):
    input_ids = jnp.asarray(input_ids)
    if global_attention_mask is None:
      global_attention_mask = question_global_mask(input_ids,
                                                   self.cfg.sep_token_id)
    out = self.longformer(input_ids, attention_mask, global_attention_mask,
                          token_type_ids, position_ids, output_attentions,
                          output_hidden_states, max_global=max_global)
    logits = _f32(self.qa_outputs(out.last_hidden_state))
    return QAOutput(start_logits=logits[..., 0], end_logits=logits[..., 1],
                    **encoder_extras(out))
