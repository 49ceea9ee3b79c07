"""LongformerConfig: transformers' fields plus lfjax's attention options."""

import dataclasses
import json
import os
from typing import Optional, Sequence, Union

import jax.numpy as jnp

from lfjax.models import remat

# Transformers' hidden_act names -> our activations (see longformer.py).
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh")
# Compute and parameter dtypes the models take, by name (configs hold names).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class LongformerConfig:
  """Field names and defaults follow transformers' LongformerConfig.

  The class defaults are transformers' (layer_norm_eps 1e-12,
  type_vocab_size 2, max_position_embeddings 512); the released
  allenai/longformer-base-4096 differs (1e-5, 1, 4098), so build configs from
  a checkpoint's config.json with `from_json` rather than by hand.

  attention_window is the FULL window, as in transformers: even, per layer
  or one int for all; the one-sided window lfjax.attention uses is half.
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 1
  bos_token_id: int = 0
  eos_token_id: int = 2
  sep_token_id: int = 2
  # Classes of the classification heads (len(id2label) in HF).
  num_labels: int = 2
  # False: the MLM decoder has its own weight (lm_head.decoder.weight)
  # instead of reusing the word embeddings.
  tie_word_embeddings: bool = True
  attention_window: Union[int, Sequence[int]] = 512
  # lfjax: dilation per layer, each an int or one int per head.
  attention_dilation: Union[int, Sequence[Union[int, Sequence[int]]]] = 1
  # lfjax: windowed_attention's impl (lfjax.attention.IMPLS, e.g. "chunked",
  # "pallas" on GPUs, "mosaic" on TPUs).
  attention_impl: str = "auto"
  # lfjax: static cap on global tokens per sequence, needed under jit.
  max_global: Optional[int] = None
  # lfjax: default position ids. "tokens": RoBERTa's, counting non-pad
  # tokens from pad_token_id + 1 (padding gets pad_token_id); "index": BERT's
  # absolute index, shifted by pad_token_id + 1 into the RoBERTa-layout table
  # lfjax.convert builds for BERT checkpoints (exact with left padding too).
  position_ids_from: str = "tokens"
  # lfjax: the MLM head's activation. RoBERTa's and Longformer's head is
  # always gelu; BERT's uses hidden_act (set by lfjax.convert for BERT).
  lm_head_act: str = "gelu"
  # lfjax: the dtype of matmul operands and activations ("float32" or
  # "bfloat16"; flax's `dtype`). Softmax, layer norm statistics, the
  # attention's accumulation and the heads' logits stay float32. Not
  # written to config.json (transformers' `dtype` there is the file's).
  compute_dtype: str = "float32"
  # lfjax: the parameters' dtype (flax's `param_dtype`): float32 master
  # weights by default.
  param_dtype: str = "float32"
  # lfjax: recompute each layer in the backward pass (lfjax.models.remat),
  # keeping what remat_policy says: "nothing" (its inputs), "attention"
  # (also the attention's output), "offload" (those, in host memory; GPU
  # and TPU only). Not written to config.json.
  remat: bool = False
  remat_policy: str = "nothing"
  # lfjax: run each run of consecutive layers with the same window and
  # dilation as one lax.scan instead of a Python loop (lfjax.models.stack):
  # the same values and gradients, a compile time that does not grow with
  # depth. Parameters stay per layer either way. Not written to config.json.
  scan_layers: bool = False
  # lfjax: the source config.json's other fields (id2label, label2id,
  # problem_type, ...) as sorted JSON, written back by convert.to_pretrained
  # so a round trip loses nothing. A string keeps the config hashable (it is
  # static in every jitted model).
  source_config: str = "{}"

  def __post_init__(self):
    windows = self.windows()
    for i, w in enumerate(windows):
      if w <= 0 or w % 2:
        raise ValueError(f"attention_window: expected positive even full "
                         f"windows, got {w} for layer {i}")
    dil = self.dilations()
    if len(dil) != self.num_hidden_layers:
      raise ValueError(f"attention_dilation: expected one entry per layer "
                       f"({self.num_hidden_layers}), got {len(dil)}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size: expected a multiple of "
                       f"num_attention_heads={self.num_attention_heads}, got "
                       f"{self.hidden_size}")
    if self.position_ids_from not in ("tokens", "index"):
      raise ValueError(f"position_ids_from: expected 'tokens' or 'index', "
                       f"got {self.position_ids_from!r}")
    if self.remat_policy not in remat.POLICIES:
      raise ValueError(f"remat_policy: expected one of {list(remat.POLICIES)}"
                       f", got {self.remat_policy!r}")
    if not isinstance(self.scan_layers, bool):
      raise ValueError(f"scan_layers: expected True or False, got "
                       f"{self.scan_layers!r}")
    for name in ("compute_dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"{name}: expected one of {list(DTYPES)}, got "
                         f"{getattr(self, name)!r}")
    for name in ("hidden_act", "lm_head_act"):
      if getattr(self, name) not in ACTIVATIONS:
        raise ValueError(f"{name}: expected one of {ACTIVATIONS}, got "
                         f"{getattr(self, name)!r}")

  def windows(self):
    """Full window per layer."""
    w = self.attention_window
    if isinstance(w, int) and not isinstance(w, bool):
      return [w] * self.num_hidden_layers
    if not isinstance(w, (list, tuple)) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in w):
      raise ValueError(f"attention_window: expected an int or one int per "
                       f"layer (the FULL window, even), got {w!r}")
    w = list(w)
    if len(w) != self.num_hidden_layers:
      raise ValueError(f"attention_window: expected an int or one value per "
                       f"layer ({self.num_hidden_layers}), got {len(w)}")
    return w

  def dilations(self):
    d = self.attention_dilation
    return [d] * self.num_hidden_layers if isinstance(d, int) else list(d)

  def window_summary(self):
    """The full window as one int when every layer has it, else the list
    (for messages and metrics)."""
    w = self.windows()
    return w[0] if len(set(w)) == 1 else w

  @property
  def head_dim(self):
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_dict(cls, d, **overrides):
    """Known fields from a transformers config dict (the others kept in
    source_config)."""
    extra = {}
    if "id2label" in d and "num_labels" not in d:
      extra["num_labels"] = len(d["id2label"])
    return config_from_dict(cls, d, overrides, extra=extra)

  @classmethod
  def from_json(cls, path, **overrides):
    return cls.from_dict(read_config_json(path), **overrides)


def config_from_dict(cls, d, overrides, *, aliases=None, extra=None):
  """cls (a config dataclass with a source_config field) from a
  transformers config dict: the fields cls has, then `extra` (derived
  fields), transformers' `aliases` ({alias: field}) where the field itself
  is absent, and `overrides` last; every other key of d kept as sorted JSON
  in source_config (written back on export). Raises ValueError for an
  override cls lacks."""
  aliases = aliases or {}
  names = {f.name for f in dataclasses.fields(cls)}
  kwargs = {k: v for k, v in d.items() if k in names}
  kwargs.update(extra or {})
  for alias, name in aliases.items():
    if alias in d and name not in d:
      kwargs[name] = d[alias]
  if "source_config" not in kwargs:
    kwargs["source_config"] = json.dumps(
        {k: v for k, v in d.items() if k not in names and k not in aliases},
        sort_keys=True)
  unknown = set(overrides) - names
  if unknown:
    raise ValueError(f"overrides: unknown {cls.__name__} fields "
                     f"{sorted(unknown)}")
  kwargs.update(overrides)
  return cls(**kwargs)


def read_config_json(path):
  """The dict of a config.json, given the file or its folder."""
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  with open(path) as f:
    return json.load(f)
