"""Load Hugging Face Longformer / RoBERTa checkpoints into lfjax models.

Reads a local directory (config.json plus model.safetensors or
pytorch_model.bin); nothing is downloaded.
"""

import json
import os
import re

import numpy as np
from flax import nnx

from lfjax.models.config import LongformerConfig
from lfjax.models.longformer import LongformerForMaskedLM
from lfjax.models.longformer import LongformerModel

MODEL_TYPES = ("longformer", "roberta")
_PREFIXES = ("longformer.", "roberta.")
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


def _target(model, name):
  """Our (module, attribute, transpose) for a Hugging Face tensor name."""
  parts = name.split(".")
  base = model.longformer if isinstance(model, LongformerForMaskedLM) else model
  leaf = {"weight": "kernel", "bias": "bias"}
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
    name = raw
    for prefix in _PREFIXES:
      if name.startswith(prefix):
        name = name[len(prefix):]
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


def _model_type(path):
  with open(os.path.join(path, "config.json")) as f:
    return json.load(f).get("model_type")


def config_from_pretrained(path, **overrides):
  with open(os.path.join(path, "config.json")) as f:
    d = json.load(f)
  model_type = d.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"config.json: model_type expected one of {MODEL_TYPES}, "
                     f"got {model_type!r}")
  if model_type == "roberta" and "attention_window" not in overrides:
    # A window that covers every position reproduces full attention.
    d["attention_window"] = 2 * d.get("max_position_embeddings", 512)
  return LongformerConfig.from_dict(d, **overrides)


def from_pretrained(path, *, masked_lm=None, seed=0, **overrides):
  """A local Hugging Face directory -> LongformerModel or ...ForMaskedLM.

  masked_lm: None picks the MLM model when the checkpoint has an lm_head.
  overrides: LongformerConfig fields (e.g. attention_impl, max_global).
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"path: expected a local checkpoint directory, "
                            f"got {path!r}")
  cfg = config_from_pretrained(path, **overrides)
  weights = read_weights(path)
  if _model_type(path) == "roberta":
    weights = with_global_projections(weights)
  has_head = any(k.startswith("lm_head.") for k in weights)
  if masked_lm is None:
    masked_lm = has_head
  rngs = nnx.Rngs(seed)
  if masked_lm:
    model = LongformerForMaskedLM(cfg, rngs=rngs)
    # As transformers' task models: a base checkpoint's pooler is not used.
    weights = {k: v for k, v in weights.items()
               if not re.match(r"^(longformer\.|roberta\.)?pooler\.", k)}
  else:
    has_pooler = any(".pooler." in "." + k for k in weights)
    model = LongformerModel(cfg, add_pooling_layer=has_pooler, rngs=rngs)
    weights = {k: v for k, v in weights.items()
               if not k.startswith("lm_head.")}
  return load_weights(model, weights)
