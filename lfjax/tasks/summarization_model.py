"""Summarization's model: LED (lfjax.models.led) loaded from a local
Hugging Face folder, its lengths checked against config.json, written back
for transformers, and generation over batches of featurized documents.
"""

import functools
import json
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from lfjax import convert
from lfjax import parallel
from lfjax.tasks import common
from lfjax.tasks import finetune_data


def _config_json(path):
  p = pathlib.Path(path, "config.json")
  if not p.is_file():
    raise FileNotFoundError(f"init_from: expected a local LED checkpoint "
                            f"folder with config.json, got {str(path)!r}")
  d = json.loads(p.read_text())
  if d.get("model_type") != "led":
    raise ValueError(
        f"config.init_from: {path} holds a {d.get('model_type')!r} model; "
        "summarization fine-tunes an LED (model_type 'led': e.g. "
        "allenai/led-base-16384 saved locally, or lfjax.models.led.make_led "
        "of a BART; `python -m lfjax.make_tiny --led --to DIR` builds a "
        "tiny one for the :tiny config)")
  return d


def decoder_start_token_id(config):
  """The decoder's first input token (config.json of config.init_from;
  LED's: 2, </s>)."""
  d = _config_json(config.init_from)
  start = d.get("decoder_start_token_id")
  if start is None:
    raise ValueError(f"config.init_from: {config.init_from}/config.json "
                     "has no decoder_start_token_id")
  return int(start)


def check_length(config, model=None):
  """Raises ValueError naming model.max_length, model.max_target_length or
  eval.max_length when it exceeds the LED's encoder or decoder positions
  (config.json of config.init_from)."""
  del model  # config.json says what the model was built from
  d = _config_json(config.init_from)
  enc = d["max_encoder_position_embeddings"]
  dec = d["max_decoder_position_embeddings"]
  for field, value, have, what in (
      ("model.max_length", config.model.max_length, enc, "encoder"),
      ("model.max_target_length", config.model.max_target_length, dec,
       "decoder"),
      ("eval.max_length", config.eval.max_length, dec, "decoder")):
    if value > have:
      raise ValueError(f"config.{field}: expected at most the {have} "
                       f"{what} positions of {config.init_from}, got {value}")


def load(path, config, seed):
  """The LED of a local folder (transformers' LEDForConditionalGeneration
  or LEDModel layout; an export), with the run's precision, remat and
  scan settings, in inference mode (lfjax.led_convert.from_pretrained:
  its errors)."""
  from lfjax import led_convert
  del seed  # every weight comes from the folder (an LEDModel's LM head is
  # its tied table, final_logits_bias zero)
  _config_json(path)
  m = config.model
  return led_convert.from_pretrained(
      str(path), head="conditional_generation", arg="config.init_from",
      attention_impl=m.attention_impl, **common.encoder_overrides(m))


def save(model, tokenizer_dir, path):
  """Writes the LED (config.json, weights, generation_config.json) for
  transformers' LEDForConditionalGeneration, and the tokenizer files."""
  from lfjax import led_convert
  led_convert.to_pretrained(model, path)
  convert.copy_tokenizer(tokenizer_dir, path,
                         model.cfg.max_encoder_position_embeddings)


def generate_kwargs(config):
  """transformers' generate() arguments of config.eval."""
  e = config.eval
  return dict(num_beams=e.num_beams, max_length=e.max_length,
              min_length=e.min_length, length_penalty=e.length_penalty,
              no_repeat_ngram_size=e.no_repeat_ngram_size,
              early_stopping={"true": True, "false": False}.get(
                  e.early_stopping, e.early_stopping))


def predict(model, arrays, batch_size, config, progress=False, mesh=None):
  """{"sequences": [n] int32 rows}: the generated ids of each example of
  featurize's arrays (decoder start first, padded with pad_token_id as
  transformers' generate pads), in batches of
  batch_size (the last padded with copies of example 0, cut off).
  Global attention on the first token, as in training."""
  model.eval()
  n = finetune_data.count(arrays)
  kwargs = generate_kwargs(config)
  rows = []
  with parallel.use(mesh):
    for i in tqdm.trange(0, n, batch_size, unit="batch", leave=False,
                         desc="generating (first batch compiles)",
                         disable=None if progress else True):
      idx = np.arange(i, i + batch_size)
      idx = np.where(idx < n, idx, 0)
      b = finetune_data.gather(arrays, idx)
      ids = jnp.asarray(b["input_ids"])
      glob = np.zeros(ids.shape, bool)
      glob[:, 0] = True
      out = np.asarray(_generate(
          model, ids, attention_mask=jnp.asarray(b["attention_mask"]),
          global_attention_mask=jnp.asarray(glob), **kwargs))
      rows.extend(out[:min(batch_size, n - i)])
  return {"sequences": rows}


def _generate(model, input_ids, **kwargs):
  """lfjax.generate.generate where it exists; until then greedy_generate
  (a fallback: beam settings are ignored, with a warning)."""
  try:
    from lfjax import generate
  except ImportError:
    if kwargs["num_beams"] != 1 or kwargs["no_repeat_ngram_size"]:
      warnings.warn("lfjax.generate is not installed: decoding greedily "
                    "(eval.num_beams and eval.no_repeat_ngram_size ignored)")
    return greedy_generate(model, input_ids, kwargs["attention_mask"],
                           kwargs["global_attention_mask"],
                           max_length=kwargs["max_length"],
                           min_length=kwargs["min_length"])
  # One global token per sequence: the compiled cap.
  return generate.generate(model, input_ids, encode_kwargs={"max_global": 1},
                           **kwargs)


def _ids(model):
  cfg = model.cfg
  return (int(cfg.decoder_start_token_id), int(cfg.eos_token_id),
          int(cfg.pad_token_id))


def greedy_generate(model, input_ids, attention_mask, global_attention_mask,
                    *, max_length, min_length=0):
  """Greedy decoding as transformers' generate(num_beams=1) for an
  encoder-decoder: [B, L] int32 numpy, decoder_start_token_id first, each
  row padded with pad_token_id after its EOS, L the steps until every row
  ended (at most max_length). EOS is blocked while the sequence is shorter
  than min_length. The model's encode / init_cache / decode_step (one
  token per step, a static-shape cache); one compiled program per (batch,
  input length, max_length, min_length)."""
  graphdef, state = nnx.split(model)
  tokens, steps = _greedy(_Graph(graphdef), state, jnp.asarray(input_ids),
                          jnp.asarray(attention_mask),
                          jnp.asarray(global_attention_mask), max_length,
                          min_length, _ids(model))
  return np.asarray(tokens)[:, :int(steps) + 1]


class _Graph:
  """A GraphDef as a static jit argument: LED's holds an unhashable
  generation_config dict, so graphs hash by type and compare equal."""

  def __init__(self, graphdef):
    self.graphdef = graphdef

  def __hash__(self):
    try:
      return hash(self.graphdef)
    except TypeError:
      return hash(type(self.graphdef))

  def __eq__(self, other):
    return isinstance(other, _Graph) and self.graphdef == other.graphdef


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _greedy(graph, state, ids_BxS, mask_BxS, glob_BxS, max_length,
            min_length, special):
  start, eos, pad = special
  model = nnx.merge(graph.graphdef, state)
  enc = model.encode(ids_BxS, mask_BxS, glob_BxS, max_global=1)
  cache = model.init_cache(enc, mask_BxS, max_length)
  b = ids_BxS.shape[0]
  tokens_BxL = jnp.full((b, max_length), pad, jnp.int32).at[:, 0].set(start)

  def cond(c):
    t, _, done_B, _ = c
    return (t < max_length - 1) & ~jnp.all(done_B)

  def body(c):
    t, tokens_BxL, done_B, cache = c
    cur_Bx1 = jax.lax.dynamic_slice_in_dim(tokens_BxL, t, 1, axis=1)
    logits_Bx1xV, cache = model.decode_step(cur_Bx1, cache)
    scores_BxV = logits_Bx1xV[:, -1].astype(jnp.float32)
    # transformers' MinLengthLogitsProcessor: the sequence is t + 1 long.
    block = (t + 1 < min_length) & (jnp.arange(scores_BxV.shape[-1]) == eos)
    scores_BxV = jnp.where(block, -jnp.inf, scores_BxV)
    nxt_B = jnp.where(done_B, pad, jnp.argmax(scores_BxV, -1))
    tokens_BxL = jax.lax.dynamic_update_slice_in_dim(
        tokens_BxL, nxt_B[:, None].astype(jnp.int32), t + 1, axis=1)
    return t + 1, tokens_BxL, done_B | (nxt_B == eos), cache

  t, tokens_BxL, _, _ = jax.lax.while_loop(
      cond, body, (jnp.int32(0), tokens_BxL, jnp.zeros((b,), bool), cache))
  return tokens_BxL, t
