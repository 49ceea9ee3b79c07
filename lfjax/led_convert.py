"""LED checkpoints: Hugging Face LED folders in and out, and the authors'
BART-to-LED recipe.

from_pretrained reads a local folder written by transformers'
LEDForConditionalGeneration or LEDModel (config.json + weights in any layout
lfjax.hf_weights reads); every tensor is used or the load refuses naming it.
to_pretrained writes a folder transformers loads. make_led turns a BART
checkpoint into an LED (longformer/scripts/convert_bart_to_
longformerencoderdecoder.py, paper Section 7). Nothing is downloaded.
"""

import dataclasses
import json
import os

import numpy as np
from flax import nnx

from lfjax import hf_weights
from lfjax.models import stack
from lfjax.models.led import LEDForConditionalGeneration
from lfjax.models.led import LEDModel
from lfjax.models.led_config import LEDConfig

HEADS = {"conditional_generation": LEDForConditionalGeneration,
         "base": LEDModel}
_ARCHITECTURES = {"LEDForConditionalGeneration": "conditional_generation",
                  "LEDModel": "base"}
# Source config fields not carried over to an export.
_NOT_CARRIED = ("model_type", "architectures", "torch_dtype", "dtype",
                "transformers_version", "_name_or_path", "auto_map")
# GenerationConfig fields transformers reads from a legacy config.json
# (GenerationConfig._get_default_generation_params, plus the token ids and
# lengths it also takes from there).
GENERATION_FIELDS = (
    "max_length", "min_length", "max_new_tokens", "min_new_tokens",
    "do_sample", "early_stopping", "num_beams", "temperature", "top_k",
    "top_p", "typical_p", "repetition_penalty", "length_penalty",
    "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "num_beam_groups",
    "diversity_penalty", "bos_token_id", "eos_token_id", "pad_token_id",
    "decoder_start_token_id")
# Tensors transformers ties to `shared.weight` (saved by older versions).
_TIED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
         "lm_head.weight")
_ENC_ATTN = ("query", "key", "value", "query_global", "key_global",
             "value_global")


def _read_json(path, name, arg):
  file = os.path.join(path, name)
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{arg}: expected a Hugging Face checkpoint "
                            f"directory with {name}, found none in {path!r}")
  with open(file) as f:
    return json.load(f)


def generation_config_from(path, config_dict):
  """transformers' generation defaults of a checkpoint folder, as a dict of
  the fields it sets: generation_config.json when present, else the
  generation fields of config.json (transformers' legacy path)."""
  file = os.path.join(path, "generation_config.json")
  if os.path.isfile(file):
    with open(file) as f:
      d = json.load(f)
    return {k: v for k, v in d.items()
            if k not in ("transformers_version", "_from_model_config")}
  return {k: config_dict[k] for k in GENERATION_FIELDS
          if config_dict.get(k) is not None}


def config_from_pretrained(path, arg="path", **overrides):
  """LEDConfig of a checkpoint folder. Raises ValueError when config.json's
  model_type is not "led" (BART: use make_led) or a field cannot be
  reproduced (LEDConfig names it)."""
  d = _read_json(path, "config.json", arg)
  model_type = d.get("model_type")
  if model_type != "led":
    hint = " (a BART checkpoint: make_led(path) converts it)" if (
        model_type == "bart") else ""
    raise ValueError(f"{arg}: config.json model_type: expected 'led', got "
                     f"{model_type!r}{hint}")
  return LEDConfig.from_dict(d, **overrides)


def hf_params(model):
  """{transformers tensor name: (nnx Variable, transpose)} of a per-layer
  (scan_layers=False) LEDModel or LEDForConditionalGeneration, in
  state-dict order. Linear weights are transposed (torch [out, in])."""
  led = getattr(model, "led", model)
  pre = "led." if led is not model else ""
  out = {}

  def linear(name, mod):
    out[f"{pre}{name}.weight"] = (mod.kernel, True)
    out[f"{pre}{name}.bias"] = (mod.bias, False)

  def norm(name, mod):
    out[f"{pre}{name}.weight"] = (mod.scale, False)
    out[f"{pre}{name}.bias"] = (mod.bias, False)

  out[f"{pre}shared.weight"] = (led.shared.embedding, False)
  enc, dec = led.encoder, led.decoder
  out[f"{pre}encoder.embed_positions.weight"] = (
      enc.embed_positions.embedding, False)
  for i, layer in enumerate(enc.layers):
    p = f"encoder.layers.{i}."
    for name in _ENC_ATTN:
      linear(p + "self_attn.longformer_self_attn." + name,
             getattr(layer.self_attn, name))
    linear(p + "self_attn.output", layer.self_attn_output)
    norm(p + "self_attn_layer_norm", layer.self_attn_layer_norm)
    linear(p + "fc1", layer.fc1)
    linear(p + "fc2", layer.fc2)
    norm(p + "final_layer_norm", layer.final_layer_norm)
  norm("encoder.layernorm_embedding", enc.layernorm_embedding)
  out[f"{pre}decoder.embed_positions.weight"] = (
      dec.embed_positions.embedding, False)
  for i, layer in enumerate(dec.layers):
    p = f"decoder.layers.{i}."
    for attn in ("self_attn", "encoder_attn"):
      for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
        linear(f"{p}{attn}.{name}", getattr(getattr(layer, attn), name))
      norm(f"{p}{attn}_layer_norm", getattr(layer, f"{attn}_layer_norm"))
    linear(p + "fc1", layer.fc1)
    linear(p + "fc2", layer.fc2)
    norm(p + "final_layer_norm", layer.final_layer_norm)
  norm("decoder.layernorm_embedding", dec.layernorm_embedding)
  if led is not model:
    out["final_logits_bias"] = (model.final_logits_bias, False)
  return out


def _per_layer(model):
  """model itself, or a per-layer copy of a scan_layers model."""
  if not model.cfg.scan_layers:
    return model
  twin = type(model)(dataclasses.replace(model.cfg, scan_layers=False),
                     rngs=nnx.Rngs(0))
  _copy(model, twin)
  return twin


def _copy(src, dst):
  """Every weight of src into dst, which differs only in scan_layers."""
  s, d = getattr(src, "led", src), getattr(dst, "led", dst)
  stack.copy_params(s.encoder, d.encoder)
  nnx.update(d.shared, nnx.state(s.shared, nnx.Param))
  nnx.update(d.decoder, nnx.state(s.decoder, nnx.Param))
  if d is not dst:
    dst.final_logits_bias.set_value(src.final_logits_bias.get_value())
  return dst


def load_weights(model, weights, arg="weights"):
  """Fill model from transformers-named tensors (the `led.` prefix
  optional); tied copies of shared.weight must equal it. A missing
  final_logits_bias stays zero (as transformers). Raises ValueError naming
  unused, missing, mis-shaped or untied tensors."""
  if model.cfg.scan_layers:
    flat = load_weights(type(model)(dataclasses.replace(
        model.cfg, scan_layers=False), rngs=nnx.Rngs(0)), weights, arg)
    return _copy(flat, model)
  is_lm = hasattr(model, "led")
  named = {}
  for raw, value in weights.items():
    name = raw[4:] if raw.startswith("led.") else raw
    if hf_weights.IGNORED.search(name):
      continue
    if name in named:
      raise ValueError(f"{arg}: {raw} appears with and without the 'led.' "
                       f"prefix")
    named[name] = (raw, value)
  tied = {n: named.pop(n) for n in _TIED if n in named}
  if "shared.weight" not in named and tied:
    first = sorted(tied)[0]
    named["shared.weight"] = tied[first]
  if "shared.weight" in named:
    shared = named["shared.weight"][1]
    for n, (raw, value) in tied.items():
      if value.shape != shared.shape or not np.array_equal(value, shared):
        raise ValueError(f"{arg}: {raw} differs from shared.weight; lfjax's "
                         f"LED ties the token tables and the LM head "
                         f"(tie_word_embeddings) and cannot reproduce it")
  params = {(k[4:] if k.startswith("led.") else k): v
            for k, v in hf_params(model).items()}
  unused = sorted(raw for n, (raw, _) in named.items() if n not in params)
  if unused:
    raise ValueError(f"{arg}: tensors with no place in "
                     f"{type(model).__name__}: {unused[:10]}")
  missing = sorted(n for n in params if n not in named
                   and not (n == "final_logits_bias" and is_lm))
  if missing:
    raise ValueError(f"{arg}: the checkpoint lacks {len(missing)} tensors "
                     f"of {type(model).__name__}, e.g. {missing[:10]}")
  for name, (var, transpose) in params.items():
    if name not in named:
      var.set_value(np.zeros_like(np.asarray(var.get_value())))
      continue
    raw, value = named[name]
    value = value.T if transpose else value
    old = var.get_value()
    if old.shape != value.shape:
      raise ValueError(f"{arg}: {raw}: expected shape {old.shape} (after "
                       f"transposing Linear weights), got {value.shape}")
    var.set_value(np.asarray(value, old.dtype))
  return model


def from_pretrained(path, head=None, arg="path", **overrides):
  """An LED model from a local Hugging Face LED folder, in inference mode.

  head: "conditional_generation" (LEDForConditionalGeneration) or "base"
  (LEDModel); default from config.json's architectures (a LEDModel folder
  loads as "base"; pass head="conditional_generation" for the LM head on
  its tied table, final_logits_bias zero). overrides: LEDConfig fields
  (max_global, compute_dtype, attention_impl, remat, scan_layers, ...).
  A LEDForConditionalGeneration gets `generation_config`
  (generation_config_from). Raises FileNotFoundError (no config/weights)
  and ValueError (not an LED, an architecture lfjax lacks, tensors that do
  not fit: each message names the field or tensor)."""
  cfg = config_from_pretrained(path, arg, **overrides)
  with open(os.path.join(path, "config.json")) as f:
    d = json.load(f)
  if head is None:
    archs = d.get("architectures") or ["LEDForConditionalGeneration"]
    if archs[0] not in _ARCHITECTURES:
      raise ValueError(f"{arg}: config.json architectures: lfjax has "
                       f"{sorted(_ARCHITECTURES)}, got {archs[0]!r} (pass "
                       f"head='base' to load its LEDModel weights only)")
    head = _ARCHITECTURES[archs[0]]
  if head not in HEADS:
    raise ValueError(f"head: expected one of {sorted(HEADS)}, got {head!r}")
  weights = hf_weights.read_weights(path, arg)
  if head == "base":  # a task model's own tensors are not the LEDModel's
    weights = {k: v for k, v in weights.items()
               if k.startswith("led.") or not k.startswith(
                   ("final_logits_bias", "lm_head.", "classification_head.",
                    "qa_outputs."))}
  model = HEADS[head](cfg, rngs=nnx.Rngs(0))
  load_weights(model, weights, arg)
  if head == "conditional_generation":
    model.generation_config = generation_config_from(path, d)
  model.eval()
  return model


def hf_config(model):
  """config.json for transformers' class of `model`."""
  d = {k: v for k, v in model.cfg.to_hf_dict().items()
       if k not in _NOT_CARRIED}
  for k in GENERATION_FIELDS:  # they go to generation_config.json
    if k not in ("bos_token_id", "eos_token_id", "pad_token_id",
                 "decoder_start_token_id"):
      d.pop(k, None)
  d["attention_window"] = model.cfg.windows()
  d.update(model_type="led", architectures=[type(model).__name__],
           is_encoder_decoder=True, dtype="float32")
  return d


def to_pretrained(model, path):
  """Writes config.json (model_type "led"), model.safetensors and, for
  LEDForConditionalGeneration, generation_config.json (model.
  generation_config plus the config's token ids), a folder transformers'
  class of the same name loads. Refuses a path holding another
  checkpoint's files (FileExistsError): nothing is overwritten but files
  of an earlier export of an LED."""
  from safetensors.numpy import save_file
  os.makedirs(path, exist_ok=True)
  cfg_file = os.path.join(path, "config.json")
  if os.path.exists(cfg_file):
    with open(cfg_file) as f:
      if json.load(f).get("model_type") != "led":
        raise FileExistsError(f"path: {path!r} holds another model's "
                              f"config.json; expected a new or LED folder")
  flat = _per_layer(model)
  tensors = {}
  for name, (var, transpose) in hf_params(flat).items():
    value = np.asarray(var.get_value(), np.float32)
    tensors[name] = np.ascontiguousarray(value.T if transpose else value)
  save_file(tensors, os.path.join(path, "model.safetensors"),
            metadata={"format": "pt"})
  with open(cfg_file, "w") as f:
    json.dump(hf_config(model), f, indent=2)
  if hasattr(model, "led"):
    cfg = model.cfg
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
           "pad_token_id": cfg.pad_token_id,
           "decoder_start_token_id": cfg.decoder_start_token_id}
    gen.update(getattr(model, "generation_config", {}) or {})
    with open(os.path.join(path, "generation_config.json"), "w") as f:
      json.dump(gen, f, indent=2)
  return path


def make_led(bart_dir, max_positions=16384, attention_window=1024,
             arg="bart_dir", **overrides):
  """The authors' BART-to-LED recipe (convert_bart_to_
  longformerencoderdecoder.py) on a local BartForConditionalGeneration or
  BartModel folder; returns an LEDForConditionalGeneration in inference
  mode.

  Encoder self-attention: query/key/value <- BART's q/k/v_proj, the global
  projections copies of them, output <- out_proj. Positions: BART's table
  has 2 offset rows (row p + 2 is position p), LED's none: decoder row p =
  BART row p + 2 (max_decoder_position_embeddings = BART's
  max_position_embeddings, not extended); the encoder's max_positions rows
  repeat BART's learned rows (row p = BART row 2 + p mod
  max_position_embeddings), the recipe's copy loop. attention_window: the
  FULL window (int or one per encoder layer; the paper's 1,024). Every
  other weight (shared table, final_logits_bias, decoder) is BART's; the
  generation defaults are the BART folder's. On inputs no longer than half
  the window the LED gives BART's outputs (global attention on the first
  token, LED's default, changes nothing there).

  Raises ValueError for a non-BART folder or what LED cannot express
  (scale_embedding, a pre-LN or final-LN variant, untied LM head), each
  naming the config field."""
  d = _read_json(bart_dir, "config.json", arg)
  if d.get("model_type") != "bart":
    raise ValueError(f"{arg}: config.json model_type: expected 'bart', got "
                     f"{d.get('model_type')!r}")
  for field in ("scale_embedding", "normalize_before", "add_final_layer_norm"):
    if d.get(field):
      raise ValueError(f"{arg}: config.json {field}={d[field]!r}: LED's "
                       f"embeddings and layers have no such option")
  if d.get("normalize_embedding") is False:
    raise ValueError(f"{arg}: config.json normalize_embedding=False: LED "
                     f"always has layernorm_embedding")
  if not isinstance(max_positions, int) or max_positions < 1:
    raise ValueError(f"max_positions: expected an int >= 1, got "
                     f"{max_positions!r}")
  bart_positions = d.get("max_position_embeddings", 1024)
  fields = {f.name for f in dataclasses.fields(LEDConfig)}
  led_dict = {k: v for k, v in d.items() if k in fields}
  led_dict.update(max_encoder_position_embeddings=max_positions,
                  max_decoder_position_embeddings=bart_positions,
                  attention_window=attention_window)
  cfg = LEDConfig.from_dict(led_dict, **overrides)
  weights = hf_weights.read_weights(bart_dir, arg)
  led = {}
  for raw, value in weights.items():
    name = raw[6:] if raw.startswith("model.") else raw
    if hf_weights.IGNORED.search(name):
      continue
    if name.endswith("embed_positions.weight"):
      learned = value[2:]  # BART's first 2 rows are its position offset
      if name.startswith("encoder."):
        reps = -(-max_positions // len(learned))
        value = np.tile(learned, (reps, 1))[:max_positions]
      else:
        value = learned
    parts = name.split(".")
    if parts[0] == "encoder" and len(parts) > 4 and parts[3] == "self_attn":
      proj = parts[4]
      pre = ".".join(parts[:4])
      if proj == "out_proj":
        led[f"{pre}.output.{parts[5]}"] = value
        continue
      local = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}[proj]
      for n in (local, local + "_global"):
        led[f"{pre}.longformer_self_attn.{n}.{parts[5]}"] = value
      continue
    led[name] = value
  model = LEDForConditionalGeneration(cfg, rngs=nnx.Rngs(0))
  load_weights(model, led, arg)
  model.generation_config = generation_config_from(bart_dir, d)
  model.eval()
  return model


def main(argv=None):
  """`python -m lfjax.led_convert --from BART_DIR --to DIR ...`: make_led
  and to_pretrained, with the tokenizer files; argv excludes the program
  name. Raises cli.UsageError for bad flags or --to == --from."""
  from lfjax import cli
  from lfjax import convert
  p = cli.ArgumentParser(
      prog="python -m lfjax.led_convert",
      description="Make an LED from a BART checkpoint (the authors' recipe: "
      "encoder positions copied to the new length, global projections "
      "copied from the local ones) and write it for transformers, with the "
      "tokenizer files.")
  p.add_argument("--from", dest="src", required=True,
                 help="local BART checkpoint directory")
  p.add_argument("--to", dest="dst", required=True, help="output directory")
  p.add_argument("--max_positions", type=int, default=16384,
                 help="encoder positions of the LED")
  p.add_argument("--attention_window", type=int, default=1024,
                 help="FULL encoder window (even), as transformers counts "
                 "it; the paper's LED used 1024")
  args = p.parse_args(argv)
  convert.check_cli_args(args)
  model = make_led(args.src, args.max_positions, args.attention_window,
                   arg="--from")
  to_pretrained(model, args.dst)
  copied = convert.copy_tokenizer(args.src, args.dst, args.max_positions)
  print(f"wrote LEDForConditionalGeneration with {args.max_positions} "
        f"encoder positions, window {args.attention_window} to {args.dst}; "
        f"tokenizer files: {', '.join(copied) or 'none found'}")


if __name__ == "__main__":
  import sys
  from lfjax import cli
  sys.exit(cli.run(main))
