"""Summarization's model: LED (lfjax.models.led) loaded from a local
Hugging Face folder, its lengths checked against config.json, written back
for transformers, and generation over batches of featurized documents.
"""

import json
import pathlib

import numpy as np
import tqdm

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
        "allenai/led-base-16384 saved locally, or lfjax.led_convert.make_led "
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
  """{"sequences": [n] int rows}: the generated ids of each example of
  featurize's arrays (decoder start first, padded with pad_token_id as
  transformers' generate pads), in batches of
  batch_size (the last padded with copies of example 0, cut off).
  Global attention on the first token, as in training."""
  from lfjax import generate
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
      ids = b["input_ids"]
      glob = np.zeros(ids.shape, bool)
      glob[:, 0] = True
      # One global token per sequence: a static cap of 1.
      out = np.asarray(generate.generate(
          model, ids, attention_mask=b["attention_mask"],
          global_attention_mask=glob, encode_kwargs={"max_global": 1},
          **kwargs))
      rows.extend(out[:min(batch_size, n - i)])
  return {"sequences": rows}

