"""Greedy and beam-search generation for encoder-decoder models, as
transformers 5.25's `generate` defines them, in one jitted program.

  ids_BxL = generate(model, input_ids, attention_mask, num_beams=4,
                     max_length=256, length_penalty=2.0,
                     no_repeat_ngram_size=3, early_stopping=True)

The model is any `flax.nnx.Module` with these four methods (lfjax's
LEDForConditionalGeneration has them):

  encode(input_ids_BxS, attention_mask_BxS, global_attention_mask_BxS)
      -> enc_BxSxE                          (global_attention_mask may be None)
  init_cache(enc_BxSxE, encoder_mask_BxS, max_length, num_beams) -> cache
      (a pytree for N = B * num_beams decoder rows, input b's beams at rows
      b*num_beams .. b*num_beams + num_beams - 1; cross-attention
      keys/values computed here, once, and best kept once per input:
      enc_BxSxE is not repeated per beam)
  decode_step(decoder_input_ids_NxT, cache) -> (logits_NxTxV float32, cache)
  reorder_cache(cache, index_N) -> cache    (row i continues row
      index_N[i]; index_N never leaves an input's beams, so per-input
      entries stay as they are)

and optionally check_inputs(input_ids_BxS, attention_mask_BxS,
global_attention_mask_BxS), called once with the concrete inputs before the
compiled program (value checks and warnings a traced program cannot make:
LED's all-local warning),

and an optional `generation_config` dict (transformers' GenerationConfig
field names: the model's defaults, as a checkpoint's
generation_config.json gives them).

What transformers does, step by step (transformers/generation/utils.py
`generate`, `_sample` with do_sample=False, `_beam_search` and its helpers
`_get_top_k_continuations`, `_get_running_beams_for_next_iteration`,
`_update_finished_beams`, `_check_early_stop_heuristic`,
`_beam_search_has_unfinished_sequences`), is done here on static shapes: the
decoded sequences live in [rows, max_length] buffers, the loop is a
`lax.while_loop` that stops when transformers' loop would, the encoder runs
once per input row and `init_cache` computes the cross-attention keys/values
once per input (transformers' `_expand_inputs_for_generation` repeats the
inputs per beam; the tokens are the same). The logits processors are those of
`_get_logits_processor`, in its order: NoRepeatNGram, MinLength,
MinNewTokens, ForcedBOS, ForcedEOS (generation/logits_process.py). Beam
scores divide by the length penalty as torch does (float32 division by the
Python float `length ** length_penalty` rounded to float32).

Encoder inputs are padded at the end, with attention_mask 0, to a length
bucket (`bucket_length`), so one compiled program serves every input length
in a bucket; compiled programs are cached per static signature (the model's
graph, batch, bucket, and the settings in `Plan`). This module resolves the
settings and runs the program; the search loops are in
lfjax/generate_search.py. docs/generation.md says more.
"""

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lfjax import generate_search

# transformers' GenerationConfig._get_default_generation_params, for the
# fields this module uses.
DEFAULTS = {
    "max_length": 20, "max_new_tokens": None, "min_length": 0,
    "min_new_tokens": None, "num_beams": 1, "num_return_sequences": 1,
    "length_penalty": 1.0, "early_stopping": False,
    "no_repeat_ngram_size": 0, "decoder_start_token_id": None,
    "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None,
    "do_sample": False,
}
# Fields that do not change greedy or beam-search tokens (sampling warpers
# apply only with do_sample, the rest are caching, outputs, assistants).
IGNORED = frozenset({
    "temperature", "top_k", "top_p", "typical_p", "min_p", "top_h",
    "epsilon_cutoff", "eta_cutoff", "use_cache", "cache_implementation",
    "cache_config", "compile_config", "disable_compile", "output_attentions",
    "output_hidden_states", "output_scores", "output_logits",
    "num_assistant_tokens", "num_assistant_tokens_schedule",
    "assistant_confidence_threshold", "assistant_lookbehind",
    "target_lookbehind", "prompt_lookup_num_tokens", "max_matching_ngram_size",
    "is_assistant", "transformers_version", "generation_kwargs", "low_memory",
    "token_healing", "penalty_alpha", "trust_remote_code"})
# Fields that change the tokens and are not implemented: refused unless unset
# or at transformers' default.
UNSUPPORTED_DEFAULTS = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
    "force_words_ids": None, "constraints": None, "sequence_bias": None,
    "remove_invalid_values": False, "exponential_decay_length_penalty": None,
    "suppress_tokens": None, "begin_suppress_tokens": None,
    "num_beam_groups": 1, "diversity_penalty": 0.0, "guidance_scale": None,
    "watermarking_config": None, "renormalize_logits": False,
    "return_dict_in_generate": False, "max_time": None, "stop_strings": None,
    "use_mtp": None,
}
MIN_BUCKET = 16


def bucket_length(length, max_positions=None):
  """The padded encoder length for an input of `length` tokens.

  Lengths up to 16 use 16; above, four buckets per octave: the length
  rounded up to a multiple of 2**(floor(log2(length)) - 2), e.g. 17 -> 20,
  100 -> 112, 1000 -> 1024, 5000 -> 5120, 16000 -> 16384. Padding costs at
  most 25% more encoder work, and inputs of 1 .. 16,384 tokens compile at
  most 4 programs per doubling of the length. The bucket never exceeds
  `max_positions` (when given) unless the input itself does.
  """
  if length < 1:
    raise ValueError(f"input_ids: need at least one token, got length "
                     f"{length}")
  n = max(length, MIN_BUCKET)
  step = 1 << max(n.bit_length() - 1 - 2, 0)
  bucket = -(-n // step) * step
  if max_positions is not None:
    bucket = min(bucket, max(max_positions, length))
  return bucket


@dataclasses.dataclass(frozen=True)
class Plan:
  """The static settings of one compiled program (hashable): the resolved
  generation fields and model.encode's extra keyword arguments."""
  num_beams: int
  max_length: int
  min_length: int
  length_penalty: float
  early_stopping: object  # True, False or "never"
  no_repeat_ngram_size: int
  decoder_start_token_id: int
  eos_token_ids: tuple  # () when eos_token_id is None
  pad_token_id: object  # int or None
  forced_bos_token_id: object
  forced_eos_token_ids: tuple  # () when unset
  num_return_sequences: int
  fill: int  # what beam search's unused positions hold
  encode_kwargs: tuple  # (name, value) pairs passed to model.encode


def _as_ids(value, name):
  if value is None:
    return ()
  if isinstance(value, (int, np.integer)):
    return (int(value),)
  ids = tuple(int(v) for v in value)
  if not ids:
    raise ValueError(f"{name}: an empty list of token ids")
  return ids


def _model_config(model):
  """The model's configuration object (`config` as transformers names it,
  or lfjax's `cfg`), or None."""
  return getattr(model, "config", None) or getattr(model, "cfg", None)


def resolve(model, kwargs):
  """transformers' precedence (`_prepare_generation_config`): an argument,
  else the model's `generation_config`, else transformers' default; then
  `_prepare_special_tokens` and `_prepare_generated_length`. Returns a dict
  of the DEFAULTS fields. Raises ValueError for values transformers refuses
  or this module does not implement (naming the field and where it came
  from)."""
  model_gc = dict(getattr(model, "generation_config", None) or {})
  for source, fields in (("argument", kwargs),
                         ("model.generation_config", model_gc)):
    for key, value in fields.items():
      if key in DEFAULTS or key in IGNORED or key.startswith("_"):
        continue
      if key in UNSUPPORTED_DEFAULTS:
        if value is not None and value != UNSUPPORTED_DEFAULTS[key]:
          raise ValueError(f"{key}={value!r} ({source}): lfjax.generate "
                           "does not implement it (greedy and beam search "
                           "only; unset it or use transformers' default "
                           f"{UNSUPPORTED_DEFAULTS[key]!r})")
      elif source == "argument":
        raise TypeError(f"generate() got an unexpected argument {key!r}")
  has_default_max_length = (kwargs.get("max_length") is None
                            and model_gc.get("max_length") is None)
  s = {}
  for key, default in DEFAULTS.items():
    value = kwargs.get(key)
    if value is None:
      value = model_gc.get(key)
    s[key] = default if value is None else value

  if s["do_sample"]:
    raise ValueError("do_sample=True: lfjax.generate implements greedy and "
                     "beam search only")
  for key in ("num_beams", "num_return_sequences"):
    if not isinstance(s[key], (int, np.integer)) or s[key] < 1:
      raise ValueError(f"{key} must be a positive integer, got {s[key]!r}")
  if s["early_stopping"] not in (True, False, "never"):
    raise ValueError("early_stopping must be True, False or 'never', got "
                     f"{s['early_stopping']!r}")
  if s["num_return_sequences"] > 1 and s["num_beams"] == 1:
    raise ValueError("num_return_sequences > 1 needs num_beams > 1 (greedy "
                     "search returns one sequence per input)")
  if s["num_return_sequences"] > s["num_beams"]:
    raise ValueError(f"num_return_sequences ({s['num_return_sequences']}) "
                     f"has to be smaller or equal to num_beams "
                     f"({s['num_beams']})")
  for key in ("no_repeat_ngram_size", "min_length"):
    if not isinstance(s[key], (int, np.integer)) or s[key] < 0:
      raise ValueError(f"{key} must be a non-negative integer, got "
                       f"{s[key]!r}")

  # _prepare_special_tokens
  if s["decoder_start_token_id"] is None:
    s["decoder_start_token_id"] = s["bos_token_id"]
  if s["decoder_start_token_id"] is None:
    raise ValueError("decoder_start_token_id or bos_token_id has to be "
                     "defined for encoder-decoder generation")
  if not isinstance(s["decoder_start_token_id"], (int, np.integer)):
    raise ValueError("decoder_start_token_id: one token id for all rows, "
                     f"got {s['decoder_start_token_id']!r}")
  s["eos_token_id"] = _as_ids(s["eos_token_id"], "eos_token_id")
  s["forced_eos_token_id"] = _as_ids(s["forced_eos_token_id"],
                                     "forced_eos_token_id")
  if s["pad_token_id"] is None and s["eos_token_id"]:
    s["pad_token_id"] = s["eos_token_id"][0]

  # _prepare_generated_length; the decoder prompt is decoder_start alone.
  prompt_len = 1
  if s["max_new_tokens"] is not None:
    if s["max_new_tokens"] <= 0:
      raise ValueError(f"max_new_tokens must be greater than 0, but is "
                       f"{s['max_new_tokens']}")
    s["max_length"] = s["max_new_tokens"] + prompt_len
  elif has_default_max_length:
    s["max_length"] = s["max_length"] + prompt_len
    cap = getattr(_model_config(model), "max_position_embeddings", None)
    if isinstance(cap, int):
      s["max_length"] = min(s["max_length"], cap)
  if s["min_new_tokens"] is not None:
    s["min_length"] = s["min_new_tokens"] + prompt_len
  if s["max_length"] <= prompt_len:
    raise ValueError(f"Input length of decoder_input_ids is {prompt_len}, "
                     f"but `max_length` is set to {s['max_length']}: raise "
                     "max_length or set max_new_tokens")
  return s


def _program(graphdef, state, ids_BxS, mask_BxS, glob_BxS, plan):
  """The whole generation: encode once, init the cache once, decode."""
  model = nnx.merge(graphdef, state)
  if hasattr(model, "eval"):
    model.eval()  # a merged copy: the caller's model keeps its mode
  batch = ids_BxS.shape[0]
  enc_BxSxE = model.encode(ids_BxS, mask_BxS, glob_BxS,
                           **dict(plan.encode_kwargs))
  # transformers repeats each input row num_beams times; here the cache
  # holds batch * num_beams decoder rows and the encoder side once per
  # input. Positions 0 .. max_length-2 are fed to the decoder (the last
  # token never is), so the self-attention buffer holds max_length - 1.
  cache = model.init_cache(enc_BxSxE, mask_BxS, plan.max_length - 1,
                           plan.num_beams)
  if plan.num_beams == 1:
    return generate_search.greedy(plan, model, cache, batch)
  return generate_search.beam(plan, model, cache, batch)


class _Graph:
  """A static jit argument for an nnx GraphDef: equal when the graphs are
  equal. A model's static attributes may be unhashable (a dict
  generation_config); those graphs share one hash and jit's cache tells them
  apart by equality."""

  def __init__(self, graphdef):
    self.graphdef = graphdef
    try:
      self._hash = hash(graphdef)
    except TypeError:
      self._hash = hash(type(graphdef))

  def __hash__(self):
    return self._hash

  def __eq__(self, other):
    return isinstance(other, _Graph) and self.graphdef == other.graphdef


_compiled = jax.jit(
    lambda graph, *args: _program(graph.graphdef, *args),
    static_argnums=(0, 5))


def make_plan(settings, encode_kwargs=None):
  """The static Plan of resolved settings (`resolve(model, kwargs)`)."""
  eos, pad = settings["eos_token_id"], settings["pad_token_id"]
  # transformers' `pad_token_id or eos_token_id[0] if eos_token_id is not
  # None else -1` (a pad id of 0 is falsy there).
  fill = (pad if pad else eos[0]) if eos else -1
  forced_bos = settings["forced_bos_token_id"]
  return Plan(
      num_beams=int(settings["num_beams"]),
      max_length=int(settings["max_length"]),
      min_length=int(settings["min_length"]),
      length_penalty=settings["length_penalty"],
      early_stopping=settings["early_stopping"],
      no_repeat_ngram_size=int(settings["no_repeat_ngram_size"]),
      decoder_start_token_id=int(settings["decoder_start_token_id"]),
      eos_token_ids=eos, pad_token_id=None if pad is None else int(pad),
      forced_bos_token_id=None if forced_bos is None else int(forced_bos),
      forced_eos_token_ids=settings["forced_eos_token_id"],
      num_return_sequences=int(settings["num_return_sequences"]),
      fill=int(fill),
      encode_kwargs=tuple(sorted((encode_kwargs or {}).items())))


def lower(graphdef, state, input_ids_BxS, attention_mask_BxS,
          global_attention_mask_BxS, plan):
  """The lowered generation program (jax.stages.Lowered) for these inputs,
  which may be jax.ShapeDtypeStructs (with shardings on a deviceless
  target): for compile-level checks such as `.compile().memory_analysis()`
  (experiments/generate_memory.py). The inputs are as generate passes them:
  padded to the bucket, int32 masks."""
  return _compiled.trace(_Graph(graphdef), state, input_ids_BxS,
                         attention_mask_BxS, global_attention_mask_BxS,
                         plan).lower()


def compiled_programs():
  """How many programs `generate` has compiled in this process."""
  return _compiled._cache_size()


def generate(model, input_ids, attention_mask=None,
             global_attention_mask=None, *, bucket=True, encode_kwargs=None,
             **kwargs):
  """Token ids generated from `input_ids`, as transformers' `generate`
  returns them for an encoder-decoder model (return_dict_in_generate=False).

  Args:
    model: a flax.nnx.Module with encode / init_cache / decode_step /
      reorder_cache (module docstring) and optionally `generation_config`
      (a dict of transformers' GenerationConfig fields). Generation always
      runs the model in eval mode (on a copy; the model's mode is kept).
    input_ids: int [B, S] encoder token ids.
    attention_mask: int/bool [B, S], 1 = token, 0 = padding; None = all 1.
    global_attention_mask: int/bool [B, S] or None (the model's default).
    bucket: True pads the encoder inputs at the end to `bucket_length(S)`
      (capped at the model config's max_encoder_position_embeddings when
      it has one; `config` or `cfg`); False compiles for the exact length
      S.
    encode_kwargs: extra keyword arguments for model.encode; part of the
      compiled signature. When model.encode takes `max_global` (LED) and
      neither this nor the model's config sets it, a global_attention_mask
      gets max_global = the most global tokens of any row (non-padding),
      rounded up to a power of two.
    **kwargs: transformers' GenerationConfig names, with transformers'
      meanings and defaults (unset: model.generation_config, then
      transformers' defaults): max_length (default 20 new tokens),
      max_new_tokens, min_length, min_new_tokens, num_beams,
      num_return_sequences, length_penalty, early_stopping (True, False or
      "never"), no_repeat_ngram_size, decoder_start_token_id (else
      bos_token_id), eos_token_id (int or list), pad_token_id (else
      eos_token_id[0]), forced_bos_token_id, forced_eos_token_id. Fields
      that change the tokens and are not implemented (repetition_penalty,
      sampling, ...) are refused unless at transformers' default.

  Returns:
    np.int64 [B * num_return_sequences, L]: decoder_start_token_id first;
    greedy rows that finish early continue with pad_token_id; beam rows end
    with transformers' fill (pad_token_id, or eos_token_id[0] where
    pad_token_id is 0, or -1 without eos_token_id); L is the longest row
    (at most max_length).

  Raises:
    ValueError / TypeError naming the argument: bad shapes, settings that
    transformers refuses, unknown or unimplemented generation fields.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model: a flax.nnx.Module, got {type(model).__name__}")
  s = resolve(model, kwargs)
  ids_BxS = np.asarray(input_ids)
  if ids_BxS.ndim != 2 or not np.issubdtype(ids_BxS.dtype, np.integer):
    raise ValueError(f"input_ids: int [batch, length], got {ids_BxS.dtype} "
                     f"{ids_BxS.shape}")
  batch, length = ids_BxS.shape
  masks = {}
  for name, m in (("attention_mask", attention_mask),
                  ("global_attention_mask", global_attention_mask)):
    if m is not None:
      m = np.asarray(m)
      if m.shape != ids_BxS.shape:
        raise ValueError(f"{name}: shape {m.shape}, input_ids has "
                         f"{ids_BxS.shape}")
      masks[name] = m.astype(np.int32)
  mask_BxS = masks.get("attention_mask", np.ones_like(ids_BxS, np.int32))
  glob_BxS = masks.get("global_attention_mask")

  check = getattr(model, "check_inputs", None)
  if check is not None:
    check(ids_BxS, masks.get("attention_mask"), glob_BxS)
  encode_kwargs = dict(encode_kwargs or {})
  if (glob_BxS is not None and "max_global" not in encode_kwargs
      and "max_global" in inspect.signature(model.encode).parameters
      and getattr(_model_config(model), "max_global", None) is None):
    # The global mask is traced inside the program, so the model needs a
    # static cap on global tokens per row: the most any row has, rounded
    # up to a power of two so nearby counts share a program.
    most = int(np.max(np.sum((glob_BxS != 0) & (mask_BxS != 0), axis=1)))
    encode_kwargs["max_global"] = 1 << max(most - 1, 0).bit_length()

  padded = length
  if bucket:
    cap = getattr(_model_config(model), "max_encoder_position_embeddings",
                  None)
    padded = bucket_length(length, cap if isinstance(cap, int) else None)
  extra = padded - length
  if extra:
    pad_id = s["pad_token_id"] if s["pad_token_id"] is not None else 0
    ids_BxS = np.pad(ids_BxS, ((0, 0), (0, extra)), constant_values=pad_id)
    mask_BxS = np.pad(mask_BxS, ((0, 0), (0, extra)))
    if glob_BxS is not None:
      glob_BxS = np.pad(glob_BxS, ((0, 0), (0, extra)))

  plan = make_plan(s, encode_kwargs)
  graphdef, state = nnx.split(model)
  seqs_NxL, lengths = _compiled(
      _Graph(graphdef), state, jnp.asarray(ids_BxS, jnp.int32),
      jnp.asarray(mask_BxS), None if glob_BxS is None else
      jnp.asarray(glob_BxS), plan)
  seqs_NxL = np.asarray(seqs_NxL).astype(np.int64)
  lengths = np.asarray(lengths)
  if plan.num_beams == 1:
    out_len = int(lengths)  # the decoded length when the loop stopped
  else:
    out_len = 1 + int(lengths.max())
  return seqs_NxL[:, :out_len]
