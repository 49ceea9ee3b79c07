"""Load Hugging Face Longformer / RoBERTa checkpoints into lfjax models.

Reads a local directory (config.json plus model.safetensors or
pytorch_model.bin); nothing is downloaded.
"""

import dataclasses
import json
import os
import re
import shutil
import warnings

import numpy as np
from flax import nnx

from lfjax.models.config import LongformerConfig
from lfjax.models.longformer import LongformerForMaskedLM
from lfjax.models.longformer import LongformerForQuestionAnswering
from lfjax.models.longformer import LongformerForSequenceClassification
from lfjax.models.longformer import LongformerModel

HEADS = {
    "base": LongformerModel,
    "masked_lm": LongformerForMaskedLM,
    "sequence_classification": LongformerForSequenceClassification,
    "question_answering": LongformerForQuestionAnswering,
}
# A checkpoint's head, told by its first tensor name.
_HEAD_PREFIXES = (("lm_head.", "masked_lm"),
                  ("classifier.", "sequence_classification"),
                  ("qa_outputs.", "question_answering"))

MODEL_TYPES = ("longformer", "roberta", "bert")
_PREFIXES = ("longformer.", "roberta.", "bert.")
# BERT's MLM head under the names of RoBERTa's.
_BERT_HEAD = (("cls.predictions.transform.dense.", "lm_head.dense."),
              ("cls.predictions.transform.LayerNorm.", "lm_head.layer_norm."),
              ("cls.predictions.decoder.", "lm_head.decoder."),
              ("cls.predictions.bias", "lm_head.bias"))
# Buffers and tied copies some checkpoints carry; they hold no new weights.
_IGNORED = re.compile(r"(^|\.)position_ids$|^lm_head\.decoder\.weight$")


def read_weights(path):
  """name -> float32 numpy array from a checkpoint directory."""
  st = os.path.join(path, "model.safetensors")
  if os.path.exists(st):
    from safetensors.numpy import load_file
    return {k: np.asarray(v, np.float32) for k, v in load_file(st).items()}
  pt = os.path.join(path, "pytorch_model.bin")
  if os.path.exists(pt):
    try:
      import torch
    except ImportError:
      raise ImportError(f"{pt}: reading .bin checkpoints needs torch; install "
                        "it or convert the checkpoint to safetensors") from None
    sd = torch.load(pt, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in sd.items()}
  raise FileNotFoundError(
      f"path: expected a Hugging Face checkpoint directory with config.json "
      f"and model.safetensors or pytorch_model.bin, found neither weights "
      f"file in {path!r}")


def _strip_prefix(name):
  """Drop the base-model prefix (longformer., roberta., bert.) if any."""
  for prefix in _PREFIXES:
    if name.startswith(prefix):
      return name[len(prefix):]
  return name


def _target(model, name):
  """Our (module, attribute, transpose) for a Hugging Face tensor name."""
  parts = name.split(".")
  base = getattr(model, "longformer", model)
  leaf = {"weight": "kernel", "bias": "bias"}
  head = {"classifier.dense": "classifier_dense",
          "classifier.out_proj": "classifier_out",
          "qa_outputs": "qa_outputs"}.get(".".join(parts[:-1]))
  if head and hasattr(model, head):
    return getattr(model, head), leaf[parts[-1]], parts[-1] == "weight"
  if parts[0] == "embeddings":
    mod = getattr(base.embeddings, {"LayerNorm": "layer_norm"}.get(
        parts[1], parts[1]))
    if parts[1] == "LayerNorm":
      return mod, {"weight": "scale", "bias": "bias"}[parts[2]], False
    return mod, "embedding", False
  if parts[0] == "encoder" and parts[1] == "layer":
    layer = base.layers[int(parts[2])]
    rest = ".".join(parts[3:-1])
    mod = {
        "attention.output.dense": layer.attention_output,
        "attention.output.LayerNorm": layer.attention_layer_norm,
        "intermediate.dense": layer.intermediate,
        "output.dense": layer.output,
        "output.LayerNorm": layer.output_layer_norm,
    }.get(rest)
    if rest.startswith("attention.self."):
      mod = getattr(layer.attention, parts[-2])
    if mod is None:
      raise KeyError(name)
    if rest.endswith("LayerNorm"):
      return mod, {"weight": "scale", "bias": "bias"}[parts[-1]], False
    return mod, leaf[parts[-1]], parts[-1] == "weight"
  if parts[0] == "pooler" and base.pooler is not None:
    return base.pooler, leaf[parts[-1]], parts[-1] == "weight"
  if parts[0] == "lm_head" and isinstance(model, LongformerForMaskedLM):
    if parts[1] == "dense":
      return model.lm_dense, leaf[parts[-1]], parts[-1] == "weight"
    if parts[1] == "layer_norm":
      return model.lm_layer_norm, {"weight": "scale", "bias": "bias"}[
          parts[-1]], False
    if name in ("lm_head.bias", "lm_head.decoder.bias"):  # tied copies
      return model, "lm_bias", False
  raise KeyError(name)


def load_weights(model, weights):
  """Copy Hugging Face tensors into the model; every parameter must be set
  exactly once and every tensor must have a home."""
  expected = {id(v) for _, v in nnx.iter_graph(model)
              if isinstance(v, nnx.Param)}
  filled = set()
  unused = []
  for raw, value in weights.items():
    name = _strip_prefix(raw)
    if _IGNORED.search(name):
      continue
    try:
      mod, attr, transpose = _target(model, name)
    except (KeyError, IndexError, AttributeError):
      unused.append(raw)
      continue
    param = getattr(mod, attr)
    value = value.T if transpose else value
    if param.value.shape != value.shape:
      raise ValueError(f"{raw}: expected shape {param.value.shape} "
                       f"(after transposing Linear weights), got "
                       f"{value.shape}")
    param.value = np.asarray(value, param.value.dtype)
    filled.add(id(param))
  if unused:
    raise ValueError(f"weights: tensors with no place in "
                     f"{type(model).__name__}: {sorted(unused)[:10]}")
  missing = expected - filled
  if missing:
    names = [".".join(map(str, p)) for p, v in nnx.iter_graph(model)
             if isinstance(v, nnx.Param) and id(v) in missing]
    raise ValueError(f"weights: the checkpoint lacks {len(missing)} "
                     f"parameters, e.g. {names[:10]}")
  return model


def with_global_projections(weights):
  """Global q/k/v initialised from the local ones (the paper's recipe), for
  checkpoints that have none (RoBERTa)."""
  out = dict(weights)
  pat = re.compile(r"attention\.self\.(query|key|value)\.(weight|bias)$")
  for name, value in weights.items():
    m = pat.search(name)
    if m:
      out[name[:m.start(1)] + m.group(1) + "_global." + m.group(2)] = value
  return out


def bert_as_roberta(weights, pad_token_id):
  """BERT tensors in RoBERTa's layout: head renamed, and the position table
  shifted down pad_token_id + 1 rows. The model's position_ids_from="index"
  (set by from_pretrained for BERT) then picks BERT's rows 0, 1, 2, ... for
  every token, padding included, as BERT does."""
  out = {}
  for name, value in weights.items():
    for old, new in _BERT_HEAD:
      if name.startswith(old):
        name = new + name[len(old):]
    if name.endswith("embeddings.position_embeddings.weight"):
      value = np.concatenate(
          [np.zeros((pad_token_id + 1, value.shape[1]), value.dtype), value])
    out[name] = value
  return out


def _read_config(path):
  with open(os.path.join(path, "config.json")) as f:
    return json.load(f)


def config_from_pretrained(path, **overrides):
  return _config_from_dict(_read_config(path), **overrides)


def _config_from_dict(d, **overrides):
  model_type = d.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"config.json: model_type expected one of {MODEL_TYPES}, "
                     f"got {model_type!r}")
  if model_type == "bert":
    d = dict(d, max_position_embeddings=d.get("max_position_embeddings", 512)
             + d.get("pad_token_id", 0) + 1, position_ids_from="index")
  if model_type != "longformer" and "attention_window" not in overrides:
    # A window that covers every position reproduces full attention.
    d = dict(d, attention_window=2 * d["max_position_embeddings"])
  return LongformerConfig.from_dict(d, **overrides)


def from_pretrained(path, *, head=None, seed=0, **overrides):
  """A local Hugging Face directory -> an lfjax model with its weights.

  head: "base", "masked_lm", "sequence_classification" or
    "question_answering"; None picks what the checkpoint holds. A task head
    the checkpoint lacks raises (listing the missing weights); a base model's
    pooler is dropped under a task head, as in transformers.
  overrides: LongformerConfig fields (e.g. attention_impl, max_global).
  """
  if head is not None and head not in HEADS:
    raise ValueError(f"head: expected one of {sorted(HEADS)} or None, got "
                     f"{head!r}")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"path: expected a local checkpoint directory, "
                            f"got {path!r}")
  d = _read_config(path)
  cfg = _config_from_dict(d, **overrides)
  weights = read_weights(path)
  model_type = d["model_type"]
  if model_type == "bert":
    weights = bert_as_roberta(weights, cfg.pad_token_id)
  if model_type in ("roberta", "bert"):
    weights = with_global_projections(weights)
  found = [h for p, h in _HEAD_PREFIXES if any(k.startswith(p) for k in weights)]
  if head is None:
    head = found[0] if found else "base"
  rngs = nnx.Rngs(seed)
  if head == "base":
    has_pooler = any(".pooler." in "." + k for k in weights)
    model = LongformerModel(cfg, add_pooling_layer=has_pooler, rngs=rngs)
  else:
    model = HEADS[head](cfg, rngs=rngs)
  # Other heads' tensors and, under a task head, the pooler are not used (as
  # in transformers, which ignores them with a warning).
  drop = tuple(p for p, h in _HEAD_PREFIXES if h != head)
  weights = {k: v for k, v in weights.items() if not k.startswith(drop)
             and not (head != "base" and _strip_prefix(k).startswith(
                 "pooler."))}
  return load_weights(model, weights)


def hf_names(model):
  """Hugging Face tensor names of a model, in state-dict order."""
  base = getattr(model, "longformer", model)
  pre = "longformer." if base is not model else ""
  names = [f"{pre}embeddings.{e}.weight" for e in (
      "word_embeddings", "position_embeddings", "token_type_embeddings")]
  names += [f"{pre}embeddings.LayerNorm.{p}" for p in ("weight", "bias")]
  for i in range(len(base.layers)):
    for mod in ("attention.self.query", "attention.self.key",
                "attention.self.value", "attention.self.query_global",
                "attention.self.key_global", "attention.self.value_global",
                "attention.output.dense", "attention.output.LayerNorm",
                "intermediate.dense", "output.dense", "output.LayerNorm"):
      names += [f"{pre}encoder.layer.{i}.{mod}.{p}" for p in ("weight", "bias")]
  if base.pooler is not None:
    names += [f"{pre}pooler.dense.{p}" for p in ("weight", "bias")]
  if isinstance(model, LongformerForMaskedLM):
    names += ["lm_head.dense.weight", "lm_head.dense.bias",
              "lm_head.layer_norm.weight", "lm_head.layer_norm.bias",
              "lm_head.bias", "lm_head.decoder.bias"]
  elif isinstance(model, LongformerForSequenceClassification):
    names += [f"classifier.{m}.{p}" for m in ("dense", "out_proj")
              for p in ("weight", "bias")]
  elif isinstance(model, LongformerForQuestionAnswering):
    names += ["qa_outputs.weight", "qa_outputs.bias"]
  return names


def export_weights(model):
  """Hugging Face name -> numpy tensor (HF layout) for every parameter."""
  out = {}
  for name in hf_names(model):
    mod, attr, transpose = _target(model, _strip_prefix(name))
    value = np.asarray(getattr(mod, attr).value, np.float32)
    out[name] = np.ascontiguousarray(value.T if transpose else value)
  return out


def to_pretrained(model, path):
  """Write a directory transformers' LongformerModel / LongformerForMaskedLM
  load with from_pretrained (the decoder weight is tied to the embeddings)."""
  from safetensors.numpy import save_file
  cfg = model.cfg
  if any(d != 1 and (isinstance(d, int) or any(x != 1 for x in d))
         for d in cfg.dilations()):
    raise ValueError("attention_dilation: transformers' Longformer has no "
                     f"dilation, got {cfg.attention_dilation}")
  if cfg.position_ids_from != "tokens":
    warnings.warn(
        "to_pretrained: this model counts positions by index (BERT); "
        "transformers' Longformer counts non-pad tokens, so the exported "
        "model agrees only on inputs without left padding")
  os.makedirs(path, exist_ok=True)
  save_file(export_weights(model), os.path.join(path, "model.safetensors"),
            metadata={"format": "pt"})
  d = dataclasses.asdict(cfg)
  d["attention_window"] = cfg.windows()
  d.update(model_type="longformer", architectures=[type(model).__name__])
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(d, f, indent=2)
  return path


def make_long(model, max_positions=4096, attention_window=512, seed=0,
              positions="copy"):
  """The paper's RoBERTa-to-Longformer recipe on a loaded model.

  Position embeddings: the first pad_token_id + 1 rows (RoBERTa's reserved
  ones) are kept; the learned rows after them are copied repeatedly until
  max_positions tokens are covered (positions="copy"), or all rows after
  the reserved ones are drawn afresh from N(0, initializer_range)
  (positions="random", the paper's Table 5 baseline). Global q/k/v start as
  copies of the local ones. attention_window is the full window (even).
  Returns a new model; the input model is unchanged.
  """
  if positions not in ("copy", "random"):
    raise ValueError(f"positions: expected 'copy' or 'random', got "
                     f"{positions!r}")
  cfg = model.cfg
  reserved = cfg.pad_token_id + 1
  new_cfg = dataclasses.replace(
      cfg, max_position_embeddings=max_positions + reserved,
      attention_window=attention_window)
  rngs = nnx.Rngs(seed)
  is_task = hasattr(model, "longformer")  # any task model
  if is_task:
    new = type(model)(new_cfg, rngs=rngs)
  else:
    new = LongformerModel(new_cfg, add_pooling_layer=model.pooler is not None,
                          rngs=rngs)
  weights = export_weights(model)
  pos_key = ("longformer." if is_task else "") + (
      "embeddings.position_embeddings.weight")
  old = weights[pos_key]
  learned = old[reserved:]
  if positions == "copy":
    reps = -(-max_positions // len(learned))
    new_rows = np.tile(learned, (reps, 1))[:max_positions]
  else:
    new_rows = cfg.initializer_range * np.random.default_rng(seed).standard_normal(
        (max_positions, old.shape[1])).astype(np.float32)
  weights[pos_key] = np.concatenate([old[:reserved], new_rows], axis=0)
  return load_weights(new, with_global_projections(weights))


def copy_tokenizer(src, dst, max_length=None):
  """Copies the tokenizer files of checkpoint folder src into dst, setting
  model_max_length; returns the names copied."""
  copied = []
  for name in sorted(os.listdir(src)):
    if name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
      shutil.copy(os.path.join(src, name), os.path.join(dst, name))
      copied.append(name)
  tok_cfg = os.path.join(dst, "tokenizer_config.json")
  if max_length and os.path.exists(tok_cfg):
    with open(tok_cfg) as f:
      d = json.load(f)
    d["model_max_length"] = max_length
    with open(tok_cfg, "w") as f:
      json.dump(d, f, indent=2)
  return copied


def main(argv=None):
  import argparse
  p = argparse.ArgumentParser(
      description="Make a long model from a RoBERTa/Longformer checkpoint "
      "(position embeddings copied, global projections from local ones) and "
      "write it for transformers, with the tokenizer files.")
  p.add_argument("--from", dest="src", required=True,
                 help="local Hugging Face checkpoint directory")
  p.add_argument("--to", dest="dst", required=True, help="output directory")
  p.add_argument("--max-positions", type=int, default=4096)
  p.add_argument("--attention-window", type=int, default=512,
                 help="FULL window (even), as transformers counts it")
  args = p.parse_args(argv)
  if os.path.abspath(args.src) == os.path.abspath(args.dst):
    raise SystemExit("--to: expected a directory other than --from (the "
                     "source checkpoint is never overwritten)")
  model = from_pretrained(args.src)
  long_model = make_long(model, args.max_positions, args.attention_window)
  to_pretrained(long_model, args.dst)
  copied = copy_tokenizer(args.src, args.dst, args.max_positions)
  print(f"wrote {type(long_model).__name__} with {args.max_positions} "
        f"positions, window {args.attention_window} to {args.dst}; "
        f"tokenizer files: {', '.join(copied) or 'none found'}")


if __name__ == "__main__":
  main()
