"""LED, the Longformer-Encoder-Decoder (paper Section 7), in Flax NNX:
transformers' LEDModel and LEDForConditionalGeneration
(transformers/models/led/modeling_led.py), with the same values.

Encoder: token + learned positions (rows 0, 1, ..., no RoBERTa offset),
layernorm_embedding, then BART's post-LN layers whose self-attention IS
lfjax's Longformer self-attention (lfjax.models.longformer.SelfAttention:
local + global projections around windowed_attention), built from
LEDConfig.encoder_view(). Any length up to max_encoder_position_embeddings;
nothing is padded to a window multiple. Decoder: BART's (causal
self-attention, cross-attention, learned positions from 0, post-LN). The
LM head is the shared embedding table plus final_logits_bias.

Generation interface (lfjax.generate): encode / init_cache / decode_step /
reorder_cache, static shapes throughout.

Letters: B batch, S encoder length, T decoder length, M cache length, E
d_model, H heads, D head dim, V vocab, L layers.
"""

import dataclasses
import json
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lfjax.attention import common
from lfjax.models import inputs
from lfjax.models import longformer
from lfjax.models import remat
from lfjax.models import stack
from lfjax.models.config import DTYPES
from lfjax.models.led_config import LEDConfig

# Masked attention scores (finite: a fully masked row is uniform, not NaN,
# as transformers' additive finfo.min mask gives).
NEG = float(np.finfo(np.float32).min)


class Buffer(nnx.Variable):
  """A non-trainable weight that checkpoints carry (transformers'
  nn.Buffer): final_logits_bias."""


@longformer.output_class
class Seq2SeqOutput:
  """transformers' LEDSeq2SeqLMOutput / LEDSeq2SeqModelOutput.

  logits: float32 [B, T, V] (LEDForConditionalGeneration only).
  last_hidden_state: the decoder's output [B, T, E].
  encoder_last_hidden_state: [B, S, E].
  encoder_hidden_states / decoder_hidden_states (output_hidden_states):
    the embeddings' output, then each layer's (layers + 1 arrays)."""
  logits: Optional[jax.Array] = None
  last_hidden_state: Optional[jax.Array] = None
  encoder_last_hidden_state: Optional[jax.Array] = None
  encoder_hidden_states: Optional[tuple] = None
  decoder_hidden_states: Optional[tuple] = None


def shift_tokens_right(input_ids_BxT, pad_token_id, decoder_start_token_id):
  """transformers' shift_tokens_right: start token, then ids[:, :-1], -100
  replaced by pad_token_id."""
  ids = jnp.asarray(input_ids_BxT)
  start = jnp.full((ids.shape[0], 1), decoder_start_token_id, ids.dtype)
  shifted = jnp.concatenate([start, ids[:, :-1]], axis=1)
  return jnp.where(shifted == -100, pad_token_id, shifted)


def _layer_norm(cfg, rngs):
  return longformer.layer_norm(cfg.encoder_view(), rngs)


def _dense(cfg, n_in, n_out, rngs):
  return longformer.dense(cfg.encoder_view(), n_in, n_out, rngs)


def _embed(cfg, rows, rngs):
  return nnx.Embed(rows, cfg.d_model,
                   embedding_init=longformer.normal_init(cfg.encoder_view()),
                   param_dtype=DTYPES[cfg.param_dtype], rngs=rngs)


def _table(embed):
  return embed.embedding[...].astype(jnp.float32)


class EncoderLayer(nnx.Module):
  """transformers' LEDEncoderLayer: Longformer self-attention, output
  projection, post-LN; fc1 -> activation -> fc2, post-LN. Called like
  lfjax.models.longformer.Layer (so lfjax.models.stack runs, remats and
  scans it)."""

  def __init__(self, view, layer_id, activation_dropout, *, rngs):
    e, f = view.hidden_size, view.intermediate_size
    self.self_attn = longformer.SelfAttention(view, layer_id, rngs=rngs)
    self.self_attn_output = longformer.dense(view, e, e, rngs)
    self.self_attn_layer_norm = longformer.layer_norm(view, rngs)
    self.fc1 = longformer.dense(view, e, f, rngs)
    self.fc2 = longformer.dense(view, f, e, rngs)
    self.final_layer_norm = longformer.layer_norm(view, rngs)
    self.dropout = nnx.Dropout(view.hidden_dropout_prob, rngs=rngs)
    self.activation_dropout = nnx.Dropout(activation_dropout, rngs=rngs)
    self.act = longformer.activation(view.hidden_act)

  def __call__(self, x_BxSxE, key_mask_BxS, global_mask_BxS,
               output_attentions=False, max_global=None, dropout_key=None):
    keys = ([None] * 4 if dropout_key is None
            else list(jax.random.split(dropout_key, 4)))
    a, probs = self.self_attn(x_BxSxE, key_mask_BxS, global_mask_BxS,
                              output_attentions, max_global, keys[0])
    x_BxSxE = self.self_attn_layer_norm(
        x_BxSxE + self.dropout(self.self_attn_output(a), rngs=keys[1]))
    h = self.activation_dropout(self.act(self.fc1(x_BxSxE)), rngs=keys[2])
    h = self.dropout(self.fc2(h), rngs=keys[3])
    return self.final_layer_norm(x_BxSxE + h), probs


def _attend(q_NxTxHxD, k_BxSxHxD, v_BxSxHxD, mask_BxTxS, dropout, key):
  """softmax(q k^T / sqrt(D) masked) v with float32 scores and softmax (a
  masked score is NEG, finite). Returns [N, T, H*D] in q's dtype.

  N = B * G query rows: rows g*G .. g*G+G-1 (beams, contiguous as
  transformers orders them) share key/value row g and mask row g, so beam
  search keeps cross-attention keys/values once per input (G = 1: one
  key/value row per query row)."""
  n, t, h, d = q_NxTxHxD.shape
  b = k_BxSxHxD.shape[0]
  q_BxGxTxHxD = q_NxTxHxD.reshape(b, n // b, t, h, d)
  s_BxGxHxTxS = jnp.einsum("bgthd,bshd->bghts", q_BxGxTxHxD * (d ** -0.5),
                           k_BxSxHxD, preferred_element_type=jnp.float32)
  s_BxGxHxTxS = jnp.where(mask_BxTxS[:, None, None], s_BxGxHxTxS, NEG)
  p_BxGxHxTxS = dropout(jax.nn.softmax(s_BxGxHxTxS, axis=-1), rngs=key)
  out = jnp.einsum("bghts,bshd->bgthd", p_BxGxHxTxS.astype(v_BxSxHxD.dtype),
                   v_BxSxHxD, preferred_element_type=jnp.float32)
  return out.astype(q_NxTxHxD.dtype).reshape(n, t, h * d)


class DecoderAttention(nnx.Module):
  """transformers' LEDDecoderAttention (q/k/v/out projections)."""

  def __init__(self, cfg, *, rngs):
    e = cfg.d_model
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
      setattr(self, name, _dense(cfg, e, e, rngs))
    self.heads = cfg.decoder_attention_heads
    self.dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)

  def split(self, y_BxTxE):
    b, t, e = y_BxTxE.shape
    return y_BxTxE.reshape(b, t, self.heads, e // self.heads)

  def kv(self, x_BxSxE):
    """(k, v) [B, S, H, D] of the key/value states x."""
    return self.split(self.k_proj(x_BxSxE)), self.split(self.v_proj(x_BxSxE))

  def __call__(self, x_BxTxE, k_BxSxHxD, v_BxSxHxD, mask_BxTxS, key=None):
    q = self.split(self.q_proj(x_BxTxE))
    return self.out_proj(_attend(q, k_BxSxHxD, v_BxSxHxD, mask_BxTxS,
                                 self.dropout, key))


class DecoderLayer(nnx.Module):
  """transformers' LEDDecoderLayer (BART's): causal self-attention,
  cross-attention, FFN, each followed by dropout, residual and LayerNorm."""

  def __init__(self, cfg, *, rngs):
    e = cfg.d_model
    self.self_attn = DecoderAttention(cfg, rngs=rngs)
    self.self_attn_layer_norm = _layer_norm(cfg, rngs)
    self.encoder_attn = DecoderAttention(cfg, rngs=rngs)
    self.encoder_attn_layer_norm = _layer_norm(cfg, rngs)
    self.fc1 = _dense(cfg, e, cfg.decoder_ffn_dim, rngs)
    self.fc2 = _dense(cfg, cfg.decoder_ffn_dim, e, rngs)
    self.final_layer_norm = _layer_norm(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
    self.activation_dropout = nnx.Dropout(cfg.activation_dropout, rngs=rngs)
    self.act = longformer.activation(cfg.activation_function)

  def __call__(self, x_BxTxE, self_kv, self_mask_BxTxM, cross_kv,
               cross_mask_BxTxS, dropout_key=None):
    """self_kv: the self-attention's (k, v) [B, M, H, D] (this call's own
    projections, or the cache's buffers holding them); cross_kv: (k, v)
    [B', S, H, D] of the encoder output and cross_mask_BxTxS [B', T, S],
    B' = B or B / beams (one row per input, shared by its beams: _attend)."""
    keys = ([None] * 6 if dropout_key is None
            else list(jax.random.split(dropout_key, 6)))
    a = self.self_attn(x_BxTxE, *self_kv, self_mask_BxTxM, keys[0])
    x_BxTxE = self.self_attn_layer_norm(
        x_BxTxE + self.dropout(a, rngs=keys[1]))
    a = self.encoder_attn(x_BxTxE, *cross_kv, cross_mask_BxTxS, keys[2])
    x_BxTxE = self.encoder_attn_layer_norm(
        x_BxTxE + self.dropout(a, rngs=keys[3]))
    h = self.activation_dropout(self.act(self.fc1(x_BxTxE)), rngs=keys[4])
    h = self.dropout(self.fc2(h), rngs=keys[5])
    return self.final_layer_norm(x_BxTxE + h)

  def full(self, x_BxTxE, enc_BxSxE, self_mask_BxTxT, cross_mask_BxTxS,
           dropout_key=None):
    """The layer on a whole decoder sequence (teacher forcing)."""
    return self(x_BxTxE, self.self_attn.kv(x_BxTxE), self_mask_BxTxT,
                self.encoder_attn.kv(enc_BxSxE), cross_mask_BxTxS,
                dropout_key)


def _dropout_keys(module_dropout, n, *rates):
  """n per-layer dropout keys from the module's stream when dropout is on
  (training and a nonzero rate), else None."""
  if module_dropout.deterministic or not any(rates):
    return None
  return jax.random.split(module_dropout.rngs(), n)


class LEDEncoder(nnx.Module):
  """transformers' LEDEncoder without its token table (LEDModel.shared)."""

  def __init__(self, cfg: LEDConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg.encoder_view()  # lfjax.models.stack reads its fields
    self.led_cfg = cfg
    self.embed_positions = _embed(cfg, cfg.max_encoder_position_embeddings,
                                  rngs)
    layers = [EncoderLayer(self.cfg, i, cfg.activation_dropout, rngs=rngs)
              for i in range(cfg.encoder_layers)]
    if cfg.scan_layers:
      layers = [stack.LayerRun(layers[a:b])
                for a, b in stack.layer_runs(self.cfg)]
    self.layers = nnx.List(layers)
    self.layernorm_embedding = _layer_norm(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

  def __call__(self, table_VxE, input_ids_BxS, key_mask_BxS, global_mask_BxS,
               bad_B, cap, output_hidden_states=False):
    """(last hidden state [B, S, E], hidden states list) on checked
    inputs; bad_B: rows to poison with NaN (or None)."""
    cfg = self.led_cfg
    b, s = input_ids_BxS.shape
    pos_S = jnp.arange(s)
    x_BxSxE = (inputs.lookup(table_VxE, input_ids_BxS)
               + inputs.lookup(_table(self.embed_positions), pos_S)[None])
    x_BxSxE = self.dropout(self.layernorm_embedding(x_BxSxE))
    if bad_B is not None:
      x_BxSxE = jnp.where(bad_B[:, None, None], jnp.nan, x_BxSxE)
    keys = _dropout_keys(self.dropout, cfg.encoder_layers, cfg.dropout,
                         cfg.attention_dropout, cfg.activation_dropout)
    first = x_BxSxE
    x_BxSxE, hidden, _ = stack.run_layers(
        self.layers, x_BxSxE, key_mask_BxS, global_mask_BxS, keys,
        cfg=self.cfg, cap=cap, output_hidden_states=output_hidden_states)
    return x_BxSxE, [first] + hidden


class LEDDecoder(nnx.Module):
  """transformers' LEDDecoder without its token table (LEDModel.shared)."""

  def __init__(self, cfg: LEDConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed_positions = _embed(cfg, cfg.max_decoder_position_embeddings,
                                  rngs)
    self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs)
                            for _ in range(cfg.decoder_layers)])
    self.layernorm_embedding = _layer_norm(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

  def embed(self, table_VxE, ids_BxT, positions_T):
    x = (inputs.lookup(table_VxE, ids_BxT)
         + inputs.lookup(_table(self.embed_positions), positions_T)[None])
    return self.dropout(self.layernorm_embedding(x))

  def __call__(self, table_VxE, ids_BxT, dec_mask_BxT, enc_BxSxE,
               enc_mask_BxS, output_hidden_states=False):
    """(last hidden state [B, T, E], hidden states list): the whole
    sequence, causal with dec_mask_BxT's padding keys masked."""
    cfg = self.cfg
    t = ids_BxT.shape[1]
    x_BxTxE = self.embed(table_VxE, ids_BxT, jnp.arange(t))
    causal_TxT = jnp.tril(jnp.ones((t, t), bool))
    self_mask = causal_TxT[None] & dec_mask_BxT[:, None, :]
    cross_mask = jnp.broadcast_to(enc_mask_BxS[:, None, :],
                                  (ids_BxT.shape[0], t, enc_mask_BxS.shape[1]))
    keys = _dropout_keys(self.dropout, cfg.decoder_layers, cfg.dropout,
                         cfg.attention_dropout, cfg.activation_dropout)
    hidden = [x_BxTxE]
    for i, layer in enumerate(self.layers):
      key = None if keys is None else keys[i]
      if cfg.remat:
        x_BxTxE = remat.remat_call(
            lambda lyr, *a: lyr.full(*a), layer, x_BxTxE, enc_BxSxE,
            self_mask, cross_mask, key, policy=cfg.remat_policy)
      else:
        x_BxTxE = layer.full(x_BxTxE, enc_BxSxE, self_mask, cross_mask, key)
      hidden.append(x_BxTxE)
    return x_BxTxE, hidden


_WARNED_ALL_LOCAL = []


def _warn_all_local():
  if not _WARNED_ALL_LOCAL:
    _WARNED_ALL_LOCAL.append(True)
    warnings.warn(
        "global_attention_mask: no token has global attention; LED was "
        "trained with global attention on the first token (<s>) and its "
        "outputs without it are poor (transformers#18190). Pass None for "
        "that default, or mark the tokens that need it.", stacklevel=3)


class LEDModel(nnx.Module):
  """transformers' LEDModel: shared token table, encoder, decoder."""

  def __init__(self, cfg: LEDConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.shared = _embed(cfg, cfg.vocab_size, rngs)
    self.encoder = LEDEncoder(cfg, rngs=rngs)
    self.decoder = LEDDecoder(cfg, rngs=rngs)

  def encoder_inputs(self, input_ids, attention_mask, global_attention_mask,
                     max_global):
    """Checks the encoder's inputs; returns (ids [B, S] int, key mask
    [B, S] bool, global mask [B, S] bool, rows to poison or None, cap)."""
    cfg = self.cfg
    ids = jnp.asarray(input_ids)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"input_ids: expected int token ids [batch, seq], got "
                       f"{ids.dtype} of shape {ids.shape}")
    b, s = ids.shape
    inputs.check_index("input_ids", ids, cfg.vocab_size, "shared")
    if s > cfg.max_encoder_position_embeddings:
      raise ValueError(
          f"input_ids: expected at most {cfg.max_encoder_position_embeddings}"
          f" tokens (max_encoder_position_embeddings), got {s}")
    cap = cfg.max_global if max_global is None else max_global
    marked = (attention_mask is not None and common.is_concrete(
        attention_mask) and bool(np.any(np.asarray(attention_mask) == 2)))
    if global_attention_mask is None and not marked:
      # The LED docs' advice: global attention on the first token (<s>),
      # unless attention_mask's 2s mark the global tokens (concrete masks:
      # under jit the default applies).
      global_attention_mask = jnp.zeros((b, s), bool).at[:, 0].set(True)
      cap = max(cap or 0, 1)
    key_mask, global_mask, bad_B = longformer._masks(  # noqa: SLF001
        attention_mask, global_attention_mask, b, s, cap)
    if longformer.traced(global_mask, key_mask):
      if cap is None:
        raise ValueError("max_global: the global attention mask is traced "
                         "(inside jit, grad or vmap), so the number of "
                         "global tokens per sequence must be static; pass "
                         "max_global=K (or LEDConfig.max_global), K the most "
                         "global tokens any sequence has")
      over = jnp.sum(global_mask & key_mask, axis=1) > cap
      bad_B = over if bad_B is None else bad_B | over
    elif not bool(jnp.any(global_mask & key_mask)):
      _warn_all_local()
    return ids, key_mask, global_mask, bad_B, cap

  def encode(self, input_ids, attention_mask=None, global_attention_mask=None,
             *, max_global=None, output_hidden_states=False):
    """The encoder's last hidden state [B, S, E] (compute dtype); with
    output_hidden_states, (last, hidden states tuple). Arguments as in
    __call__."""
    ids, key_mask, global_mask, bad_B, cap = self.encoder_inputs(
        input_ids, attention_mask, global_attention_mask, max_global)
    last, hidden = self.encoder(_table(self.shared), ids, key_mask,
                                global_mask, bad_B, cap, output_hidden_states)
    return (last, tuple(hidden)) if output_hidden_states else last

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               decoder_input_ids=None, decoder_attention_mask=None,
               output_hidden_states=False, *, max_global=None):
    """transformers' LEDModel.forward.

    input_ids: [B, S] int in [0, vocab_size), S <= max_encoder_position_
      embeddings (any S: nothing is padded to a window multiple).
    attention_mask: [B, S] 0 padding / 1 token (2: global, the Longformer
      convention); default no padding. Also the cross-attention's key mask.
    global_attention_mask: [B, S] 0/1. None: global attention on the first
      token (LED's advice; with a concrete attention_mask holding 2s, those
      tokens instead); an all-zero mask is all-local (warns once).
    decoder_input_ids: [B, T]; default shift_tokens_right(input_ids).
    decoder_attention_mask: [B, T] 0/1 key mask on top of the causal one.
    max_global: static cap on global tokens per sequence (needed under jit
      with an explicit traced global mask).
    Returns Seq2SeqOutput (last_hidden_state: the decoder's [B, T, E]).
    Errors (ValueError, naming the argument): wrong shapes; concrete ids
    out of range or too long; mask values; a traced global mask without
    max_global. Under jit bad values give NaN rows (lfjax.models.inputs).
    """
    cfg = self.cfg
    enc = self.encode(input_ids, attention_mask, global_attention_mask,
                      max_global=max_global,
                      output_hidden_states=output_hidden_states)
    enc_last, enc_hidden = enc if output_hidden_states else (enc, None)
    b, s = enc_last.shape[:2]
    enc_mask = _key_mask(attention_mask, b, s)
    if decoder_input_ids is None:
      decoder_input_ids = shift_tokens_right(
          input_ids, cfg.pad_token_id, cfg.decoder_start_token_id)
    dec_ids = _check_decoder_ids(cfg, decoder_input_ids, b)
    t = dec_ids.shape[1]
    if decoder_attention_mask is None:
      dec_mask = jnp.ones((b, t), bool)
    else:
      dec_mask = jnp.asarray(decoder_attention_mask)
      if dec_mask.shape != (b, t):
        raise ValueError(f"decoder_attention_mask: expected shape {(b, t)} "
                         f"like decoder_input_ids, got {dec_mask.shape}")
      dec_mask = dec_mask != 0
    last, hidden = self.decoder(_table(self.shared), dec_ids, dec_mask,
                                enc_last, enc_mask, output_hidden_states)
    return Seq2SeqOutput(
        last_hidden_state=last, encoder_last_hidden_state=enc_last,
        encoder_hidden_states=enc_hidden,
        decoder_hidden_states=tuple(hidden) if output_hidden_states else None)


def _key_mask(attention_mask, b, s):
  if attention_mask is None:
    return jnp.ones((b, s), bool)
  return jnp.asarray(attention_mask) != 0


def _check_decoder_ids(cfg, decoder_input_ids, b):
  ids = jnp.asarray(decoder_input_ids)
  if ids.ndim != 2 or ids.shape[0] != b:
    raise ValueError(f"decoder_input_ids: expected [batch={b}, tgt_len], got "
                     f"shape {ids.shape}")
  inputs.check_index("decoder_input_ids", ids, cfg.vocab_size, "shared")
  if ids.shape[1] > cfg.max_decoder_position_embeddings:
    raise ValueError(
        f"decoder_input_ids: expected at most "
        f"{cfg.max_decoder_position_embeddings} tokens "
        f"(max_decoder_position_embeddings), got {ids.shape[1]}")
  return ids


class LEDForConditionalGeneration(nnx.Module):
  """transformers' LEDForConditionalGeneration: `led` (LEDModel), logits =
  decoder output @ shared^T + final_logits_bias [1, V] (float32).

  generation_config: dict of transformers' generation defaults read from
  the checkpoint (lfjax.led_convert.from_pretrained fills it; {} here).
  Held as JSON text (nnx needs hashable static attributes): reading it
  gives a fresh dict, so assign a new dict to change it."""

  def __init__(self, cfg: LEDConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.led = LEDModel(cfg, rngs=rngs)
    # A buffer in transformers: loaded and saved, never trained (a Buffer,
    # not an nnx.Param, so lfjax's optimizer leaves it too).
    self.final_logits_bias = Buffer(
        jnp.zeros((1, cfg.vocab_size), DTYPES[cfg.param_dtype]))
    self.generation_config = {}

  @property
  def generation_config(self):
    return json.loads(self._generation_config)

  @generation_config.setter
  def generation_config(self, value):
    if not isinstance(value, dict):
      raise ValueError(f"generation_config: expected a dict, got "
                       f"{type(value).__name__}")
    self._generation_config = json.dumps(value, sort_keys=True)

  def logits(self, h_BxTxE):
    """float32 [B, T, V] logits of decoder outputs."""
    table = self.led.shared.embedding[...]
    return (jnp.einsum("bte,ve->btv", h_BxTxE, table.astype(h_BxTxE.dtype),
                       preferred_element_type=jnp.float32)
            + self.final_logits_bias[...].astype(jnp.float32))

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               decoder_input_ids=None, decoder_attention_mask=None,
               output_hidden_states=False, *, max_global=None):
    """LEDModel.__call__ (see there) plus logits float32 [B, T, V]."""
    out = self.led(input_ids, attention_mask, global_attention_mask,
                   decoder_input_ids, decoder_attention_mask,
                   output_hidden_states, max_global=max_global)
    return dataclasses.replace(out, logits=self.logits(out.last_hidden_state))

  def encode(self, input_ids, attention_mask=None, global_attention_mask=None,
             *, max_global=None):
    """The encoder's last hidden state enc_BxSxE (compute dtype); arguments
    as in LEDModel.__call__ (global default: the first token)."""
    return self.led.encode(input_ids, attention_mask, global_attention_mask,
                           max_global=max_global)

  def check_inputs(self, input_ids, attention_mask=None,
                   global_attention_mask=None):
    """lfjax.generate's optional hook, called with the concrete inputs
    before its compiled program: the value checks encode makes outside jit
    (ids within the vocabulary, mask values, at most
    max_encoder_position_embeddings tokens) and the all-local warning,
    which the traced program cannot give. Raises ValueError naming the
    argument."""
    self.led.encoder_inputs(input_ids, attention_mask, global_attention_mask,
                            None)

  def init_cache(self, enc_BxSxE, encoder_mask_BxS, max_length,
                 num_beams=1):
    """The decoding cache for decode_step, a dict pytree. Decoding runs
    N = B * num_beams rows, input b's beams at rows b*num_beams ..
    b*num_beams + num_beams - 1 (transformers' order); what is equal across
    an input's beams is kept once per input:
      "self_k", "self_v": per decoder layer [N, max_length, H, D] zeros
        (compute dtype), filled by decode_step (per row);
      "cross_k", "cross_v": per decoder layer [B, S, H, D], the
        cross-attention keys/values of enc_BxSxE, computed here once
        (per input);
      "encoder_mask": bool [B, S] (encoder_mask_BxS != 0; None: all True;
        per input);
      "length": int32 scalar, the number of positions decoded so far.
    max_length: static int, the most decoder positions (<=
    max_decoder_position_embeddings). num_beams: static int >= 1, rows per
    input (beam search); enc_BxSxE is NOT repeated per beam. Raises
    ValueError naming max_length / num_beams."""
    cfg = self.cfg
    if not 0 < max_length <= cfg.max_decoder_position_embeddings:
      raise ValueError(f"max_length: expected 1 to "
                       f"{cfg.max_decoder_position_embeddings} "
                       f"(max_decoder_position_embeddings), got {max_length}")
    if not isinstance(num_beams, (int, np.integer)) or num_beams < 1:
      raise ValueError(f"num_beams: a positive int, got {num_beams!r}")
    b, s = enc_BxSxE.shape[:2]
    h, d = cfg.decoder_attention_heads, cfg.decoder_head_dim
    zeros = jnp.zeros((b * num_beams, max_length, h, d),
                      DTYPES[cfg.compute_dtype])
    cross = [layer.encoder_attn.kv(enc_BxSxE)
             for layer in self.led.decoder.layers]
    return {
        "self_k": [zeros] * cfg.decoder_layers,
        "self_v": [zeros] * cfg.decoder_layers,
        "cross_k": [k for k, _ in cross],
        "cross_v": [v for _, v in cross],
        "encoder_mask": _key_mask(encoder_mask_BxS, b, s),
        "length": jnp.zeros((), jnp.int32),
    }

  def decode_step(self, decoder_input_ids_NxT, cache):
    """Logits float32 [N, T, V] of the next T tokens, at decoder positions
    cache["length"] .. length + T - 1, and the cache with their keys and
    values written and length + T. N = the cache's rows (B * num_beams of
    init_cache); each row's cross-attention reads its input's keys/values.
    Equal to the full decoder on the same prefix and the input repeated
    per beam (tests/test_led.py). Static shapes: each query attends the
    whole buffer, positions after its own masked. Positions past the
    buffer are not checked under jit (dynamic_update_slice would clip
    them)."""
    dec = self.led.decoder
    ids = jnp.asarray(decoder_input_ids_NxT)
    n, t = ids.shape
    length = cache["length"]
    rows, m = cache["self_k"][0].shape[:2]
    if n != rows:
      raise ValueError(f"decoder_input_ids_NxT: {n} rows, the cache has "
                       f"{rows} (batch * num_beams)")
    if common.is_concrete(length) and int(length) + t > m:
      raise ValueError(f"decoder_input_ids_NxT: {t} tokens after "
                       f"{int(length)} overflow the cache's {m} positions")
    pos_T = length + jnp.arange(t)
    x_NxTxE = dec.embed(_table(self.led.shared), ids, pos_T)
    self_mask = jnp.broadcast_to(
        (jnp.arange(m)[None, :] <= pos_T[:, None])[None], (n, t, m))
    enc_mask_BxS = cache["encoder_mask"]
    cross_mask = jnp.broadcast_to(enc_mask_BxS[:, None, :],
                                  (enc_mask_BxS.shape[0], t,
                                   enc_mask_BxS.shape[1]))
    new_k, new_v = [], []
    for i, layer in enumerate(dec.layers):
      k_NxTxHxD, v_NxTxHxD = layer.self_attn.kv(x_NxTxE)
      at = (0, length, 0, 0)
      k = jax.lax.dynamic_update_slice(
          cache["self_k"][i], k_NxTxHxD.astype(cache["self_k"][i].dtype), at)
      v = jax.lax.dynamic_update_slice(
          cache["self_v"][i], v_NxTxHxD.astype(cache["self_v"][i].dtype), at)
      x_NxTxE = layer(x_NxTxE, (k, v), self_mask,
                      (cache["cross_k"][i], cache["cross_v"][i]), cross_mask)
      new_k.append(k)
      new_v.append(v)
    cache = dict(cache, self_k=new_k, self_v=new_v,
                 length=(length + t).astype(jnp.int32))
    return self.logits(x_NxTxE), cache

  @staticmethod
  def reorder_cache(cache, index_N):
    """The cache with its rows taken by index_N ([N] int), for beam search:
    the self-attention buffers become self_k[index_N] (row i continues
    row index_N[i]); the per-input entries (cross_k, cross_v,
    encoder_mask) and length are returned as they are, not copied.

    Assumes what beam search guarantees: every row stays within its
    input's beams, index_N[i] // num_beams == i // num_beams (num_beams =
    N / the per-input rows). A concrete index_N that breaks it raises
    ValueError; under jit it is not checked and rows that leave their input
    would keep their own input's cross-attention. With num_beams = 1 only
    the identity is allowed: to take rows across inputs, build the cache
    from the encoder output taken by the same index."""
    n = cache["self_k"][0].shape[0]
    beams = n // cache["encoder_mask"].shape[0]
    if common.is_concrete(index_N):
      idx = np.asarray(index_N)
      if idx.shape != (n,) or np.any(idx // beams != np.arange(n) // beams):
        raise ValueError(
            f"index_N: {n} row indices each within its input's {beams} "
            f"beams (index_N[i] // {beams} == i // {beams}), got "
            f"{idx.tolist()}")
    index_N = jnp.asarray(index_N)
    take = lambda xs: [x[index_N] for x in xs]  # noqa: E731
    return dict(cache, self_k=take(cache["self_k"]),
                self_v=take(cache["self_v"]))

  def generate(self, input_ids, attention_mask=None,
               global_attention_mask=None, **kwargs):
    """lfjax.generate.generate(self, ...): greedy / beam search with
    transformers' arguments, defaults from self.generation_config."""
    from lfjax import generate as gen  # noqa: PLC0415 (optional module)
    return gen.generate(self, input_ids, attention_mask,
                        global_attention_mask, **kwargs)

