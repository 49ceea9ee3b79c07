"""What the fine-tuning tests share: the tiny random starting checkpoint
and the task config loaded from configs/ with changes.

The checkpoint is a transformers LongformerForMaskedLM (window 8, 2 layers,
hidden 32, 128 positions) with a byte-level BPE trained on stdlib files
plus the test's own words, so the tests' toy texts are a few tokens each.
Needs torch and transformers (the test modules skip without them).
"""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_longformer(path, words):
  """Writes the tiny LongformerForMaskedLM and its tokenizer to folder
  `path` (which must exist); `words` are added to the tokenizer's training
  text 20 times. Returns path."""
  import torch
  import transformers

  from lfjax.data import chars
  from lfjax.data import text
  docs = [t.decode("utf-8", "replace") for _, t in chars.pystdlib_files()[:60]]
  docs += [" ".join(words)] * 20
  tok = text.train_tokenizer(docs, path, vocab_size=400)
  cfg = transformers.LongformerConfig(
      vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
      num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
      type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=tok.pad_token_id,
      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
      sep_token_id=tok.sep_token_id, attention_window=8)
  torch.manual_seed(0)
  transformers.LongformerForMaskedLM(cfg).save_pretrained(path)
  return path


def tiny_config(name, **changes):
  """configs/<name>.py's "tiny" config with changes {"a.b": value}."""
  spec = importlib.util.spec_from_file_location(
      name, ROOT / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("tiny")
  c.update_from_flattened_dict(changes)
  return c
