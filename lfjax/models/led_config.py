"""LEDConfig: transformers' LEDConfig fields plus lfjax's model options.

The encoder's self-attention is lfjax's Longformer self-attention
(lfjax.models.longformer.SelfAttention): `encoder_view()` is the
LongformerConfig it is built from.
"""

import dataclasses
import json
from typing import Optional, Sequence, Union

from lfjax.models import remat
from lfjax.models.config import ACTIVATIONS
from lfjax.models.config import DTYPES
from lfjax.models.config import LongformerConfig
from lfjax.models.config import config_from_dict
from lfjax.models.config import read_config_json

# transformers' LayerNorm default (nn.LayerNorm(d)); LED's config has no
# field for it.
LAYER_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class LEDConfig:
  """Field names and defaults follow transformers' LEDConfig (5.x).

  attention_window is the FULL encoder window, as in transformers: an even
  int, or one per encoder layer. Build configs from a checkpoint's
  config.json with `from_json` (allenai/led-base-16384 differs from these
  defaults: d_model 768, 6 + 6 layers, 12 heads, window 1024).
  """
  vocab_size: int = 50265
  max_encoder_position_embeddings: int = 16384
  max_decoder_position_embeddings: int = 1024
  encoder_layers: int = 12
  encoder_ffn_dim: int = 4096
  encoder_attention_heads: int = 16
  decoder_layers: int = 12
  decoder_ffn_dim: int = 4096
  decoder_attention_heads: int = 16
  # LayerDrop skips whole layers in training; lfjax does not (refused > 0).
  encoder_layerdrop: float = 0.0
  decoder_layerdrop: float = 0.0
  activation_function: str = "gelu"
  d_model: int = 1024
  dropout: float = 0.1
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  init_std: float = 0.02
  decoder_start_token_id: int = 2
  pad_token_id: int = 1
  bos_token_id: int = 0
  eos_token_id: int = 2
  attention_window: Union[int, Sequence[int]] = 512
  # The LM head is the shared embedding table (False is refused: LED
  # checkpoints tie it).
  tie_word_embeddings: bool = True
  # lfjax (see LongformerConfig): windowed_attention's impl, the static cap
  # on global tokens per sequence (needed under jit with a traced global
  # mask; the default first-token global needs 1), precision, remat.
  attention_impl: str = "auto"
  max_global: Optional[int] = None
  compute_dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  remat_policy: str = "nothing"
  # lfjax: the encoder's layers as lax.scan runs (lfjax.models.stack); the
  # decoder stays a Python loop.
  scan_layers: bool = False
  # The source config.json's other fields, as sorted JSON (written back by
  # to_pretrained).
  source_config: str = "{}"

  def __post_init__(self):
    for name in ("encoder_layerdrop", "decoder_layerdrop"):
      if getattr(self, name):
        raise ValueError(f"{name}: lfjax does not implement LayerDrop; "
                         f"expected 0, got {getattr(self, name)}")
    if not self.tie_word_embeddings:
      raise ValueError("tie_word_embeddings: LED's LM head is the shared "
                       "embedding table; expected True, got False")
    if self.activation_function not in ACTIVATIONS:
      raise ValueError(f"activation_function: expected one of {ACTIVATIONS}"
                       f", got {self.activation_function!r}")
    if self.d_model % self.decoder_attention_heads:
      raise ValueError(f"d_model: expected a multiple of "
                       f"decoder_attention_heads="
                       f"{self.decoder_attention_heads}, got {self.d_model}")
    if self.remat_policy not in remat.POLICIES:
      raise ValueError(f"remat_policy: expected one of {list(remat.POLICIES)}"
                       f", got {self.remat_policy!r}")
    for name in ("compute_dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"{name}: expected one of {list(DTYPES)}, got "
                         f"{getattr(self, name)!r}")
    if isinstance(self.attention_window, list):
      # A list would make the config unhashable (it is static under jit).
      object.__setattr__(self, "attention_window",
                         tuple(self.attention_window))
    self.encoder_view()  # validates windows, heads, encoder fields

  def encoder_view(self):
    """The LongformerConfig of the encoder's layers: lfjax's Longformer
    self-attention (local + global projections, windowed_attention) and
    the post-LN layer helpers are built from it."""
    return LongformerConfig(
        vocab_size=self.vocab_size, hidden_size=self.d_model,
        num_hidden_layers=self.encoder_layers,
        num_attention_heads=self.encoder_attention_heads,
        intermediate_size=self.encoder_ffn_dim,
        hidden_act=self.activation_function,
        hidden_dropout_prob=self.dropout,
        attention_probs_dropout_prob=self.attention_dropout,
        max_position_embeddings=self.max_encoder_position_embeddings,
        initializer_range=self.init_std, layer_norm_eps=LAYER_NORM_EPS,
        pad_token_id=self.pad_token_id, bos_token_id=self.bos_token_id,
        eos_token_id=self.eos_token_id,
        attention_window=self.attention_window,
        attention_impl=self.attention_impl, max_global=self.max_global,
        compute_dtype=self.compute_dtype, param_dtype=self.param_dtype,
        remat=self.remat, remat_policy=self.remat_policy,
        scan_layers=self.scan_layers)

  def windows(self):
    """Full encoder window per layer."""
    return self.encoder_view().windows()

  @property
  def decoder_head_dim(self):
    return self.d_model // self.decoder_attention_heads

  def to_hf_dict(self):
    """transformers' config.json fields of this config (lfjax's own
    options left out), the source's other fields included."""
    out = json.loads(self.source_config)
    lfjax_only = {"attention_impl", "max_global", "compute_dtype",
                  "param_dtype", "remat", "remat_policy", "scan_layers",
                  "source_config"}
    for f in dataclasses.fields(self):
      if f.name not in lfjax_only:
        value = getattr(self, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out

  @classmethod
  def from_dict(cls, d, **overrides):
    """Known fields from a transformers config dict; the others are kept in
    source_config. transformers' aliases (hidden_size, num_hidden_layers,
    ...) are read when the canonical field is absent."""
    aliases = {"hidden_size": "d_model", "num_hidden_layers": "encoder_layers",
               "num_attention_heads": "encoder_attention_heads",
               "attention_probs_dropout_prob": "attention_dropout",
               "initializer_range": "init_std"}
    return config_from_dict(cls, d, overrides, aliases=aliases)

  @classmethod
  def from_json(cls, path, **overrides):
    return cls.from_dict(read_config_json(path), **overrides)
