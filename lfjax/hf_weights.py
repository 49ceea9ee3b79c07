"""Hugging Face weight files and lfjax models, tensor by tensor: reading
a checkpoint's tensors (every layout transformers writes for PyTorch),
where each tensor name lives in an lfjax model, filling a model from them
(every parameter exactly once, every tensor used) and the model's
parameters back under transformers' names. lfjax.convert builds on it
(configs, heads, from_pretrained / to_pretrained, make_long).
"""

import dataclasses
import json
import os
import re

import numpy as np
from flax import nnx

from lfjax.models import stack
from lfjax.models.heads import LongformerForMaskedLM
from lfjax.models.heads import LongformerForMultipleChoice
from lfjax.models.heads import LongformerForQuestionAnswering
from lfjax.models.heads import LongformerForSequenceClassification
from lfjax.models.heads import LongformerForTokenClassification
from lfjax.models.longformer import LongformerModel

_PREFIXES = ("longformer.", "roberta.", "bert.")
# BERT's MLM head under the names of RoBERTa's.
_BERT_HEAD = (("cls.predictions.transform.dense.", "lm_head.dense."),
              ("cls.predictions.transform.LayerNorm.", "lm_head.layer_norm."),
              ("cls.predictions.decoder.", "lm_head.decoder."),
              ("cls.predictions.bias", "lm_head.bias"))
# Buffers some checkpoints carry; they hold no weights.
IGNORED = re.compile(r"(^|\.)position_ids$")
# Weight layouts transformers writes that lfjax does not read.
_OTHER_FORMATS = ("tf_model.h5", "flax_model.msgpack", "model.ckpt.index")


def _read_safetensors(path):
  # The flax reader handles bfloat16 (numpy has no such dtype).
  from safetensors.flax import load_file
  return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}


def _read_bin(path):
  try:
    import torch
  except ImportError:
    raise ImportError(f"{path}: reading .bin checkpoints needs torch; install "
                      "it or convert the checkpoint to safetensors") from None
  sd = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.float().numpy() for k, v in sd.items()}


def read_weights(path, arg="path"):
  """name -> float32 numpy array from a checkpoint directory.

  arg: how the caller's user named the directory (a flag or config field),
  for the error messages.

  Reads every layout transformers' save_pretrained writes for PyTorch:
  model.safetensors, pytorch_model.bin, and their sharded forms (an
  *.index.json naming the shard files), in any float dtype.
  Raises FileNotFoundError (no weights, or a shard missing) and ValueError
  (only TensorFlow/Flax weights, which transformers 5 no longer writes)."""
  for name, reader in (("model.safetensors", _read_safetensors),
                       ("pytorch_model.bin", _read_bin)):
    single = os.path.join(path, name)
    if os.path.exists(single):
      return reader(single)
    index = single + ".index.json"
    if os.path.exists(index):
      with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      missing = [s for s in shards if not os.path.exists(os.path.join(path, s))]
      if missing:
        raise FileNotFoundError(f"{arg}: {index} names shard files missing from "
                                f"{path!r}: {missing}")
      out = {}
      for shard in shards:
        out.update(reader(os.path.join(path, shard)))
      return out
  others = [f for f in _OTHER_FORMATS if os.path.exists(os.path.join(path, f))]
  if others:
    raise ValueError(f"{arg}: {path!r} holds only {others}; lfjax reads PyTorch "
                     "weights (model.safetensors or pytorch_model.bin); "
                     "convert with transformers' from_pretrained(..., "
                     "from_tf=True) and save_pretrained")
  raise FileNotFoundError(
      f"{arg}: expected a Hugging Face checkpoint directory with config.json "
      f"and model.safetensors or pytorch_model.bin (or their sharded "
      f"*.index.json), found no weights file in {path!r}")


def strip_prefix(name):
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
          "classifier": "classifier",
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
    if name == "lm_head.decoder.weight" and model.lm_decoder is not None:
      return model, "lm_decoder", False
  raise KeyError(name)


def twin(model, scan_layers):
  """An abstract (nnx.eval_shape: shapes only, nothing allocated) copy of
  model's class and config with scan_layers set: the per-layer layout
  lfjax.convert maps name by name, for a model whose layers are stacked."""
  cfg = dataclasses.replace(model.cfg, scan_layers=scan_layers)
  if hasattr(model, "longformer"):
    return nnx.eval_shape(lambda: type(model)(cfg, rngs=nnx.Rngs(0)))
  pooled = model.pooler is not None
  return nnx.eval_shape(lambda: LongformerModel(
      cfg, add_pooling_layer=pooled, rngs=nnx.Rngs(0)))


def load_weights(model, weights):
  """Copy Hugging Face tensors into the model; every parameter must be set
  exactly once and every tensor must have a home. A model with scan_layers
  (stacked layers) is filled through its per-layer twin."""
  if model.cfg.scan_layers:
    return stack.copy_params(load_weights(twin(model, False), weights),
                             model)
  expected = {id(v) for _, v in nnx.iter_graph(model)
              if isinstance(v, nnx.Param)}
  filled = set()
  unused = []
  for raw, value in weights.items():
    name = strip_prefix(raw)
    if IGNORED.search(name):
      continue
    try:
      mod, attr, transpose = _target(model, name)
    except (KeyError, IndexError, AttributeError):
      unused.append(raw)
      continue
    param = getattr(mod, attr)
    value = value.T if transpose else value
    old = param.get_value()
    if old.shape != value.shape:
      raise ValueError(f"{raw}: expected shape {old.shape} "
                       f"(after transposing Linear weights), got "
                       f"{value.shape}")
    param.set_value(np.asarray(value, old.dtype))
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


def hf_names(model):
  """Hugging Face tensor names of a model, in state-dict order."""
  base = getattr(model, "longformer", model)
  pre = "longformer." if base is not model else ""
  names = [f"{pre}embeddings.{e}.weight" for e in (
      "word_embeddings", "position_embeddings", "token_type_embeddings")]
  names += [f"{pre}embeddings.LayerNorm.{p}" for p in ("weight", "bias")]
  for i in range(base.cfg.num_hidden_layers):
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
    if model.lm_decoder is not None:
      names.append("lm_head.decoder.weight")
  elif isinstance(model, LongformerForSequenceClassification):
    names += [f"classifier.{m}.{p}" for m in ("dense", "out_proj")
              for p in ("weight", "bias")]
  elif isinstance(model, (LongformerForTokenClassification,
                          LongformerForMultipleChoice)):
    names += ["classifier.weight", "classifier.bias"]
  elif isinstance(model, LongformerForQuestionAnswering):
    names += ["qa_outputs.weight", "qa_outputs.bias"]
  return names


def export_weights(model):
  """Hugging Face name -> numpy tensor (HF layout) for every parameter (a
  model with scan_layers: its stacked layers unstacked)."""
  if model.cfg.scan_layers:
    model = stack.copy_params(model, twin(model, False))
  out = {}
  for name in hf_names(model):
    mod, attr, transpose = _target(model, strip_prefix(name))
    value = np.asarray(getattr(mod, attr).get_value(), np.float32)
    out[name] = np.ascontiguousarray(value.T if transpose else value)
  return out
