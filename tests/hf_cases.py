"""What the Hugging Face parity tests share: the tiny config, saving a
transformers model with non-trivial norms and biases, a padded batch with
global tokens, and running the PyTorch model. torch is imported where
used: the test modules decide (tests/optional.py) whether it is needed.
"""

import numpy as np

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=3,
            num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=130, type_vocab_size=1,
            layer_norm_eps=1e-5, pad_token_id=1)


def save(model, tmp_path):
  import torch
  model.eval()
  with torch.no_grad():  # non-trivial LayerNorm and biases
    for name, p in model.named_parameters():
      if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(tmp_path)
  return model


def batch(lengths, n, globals_at, vocab=97, seed=0):
  """Token ids with right padding, attention mask and global mask."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(len(lengths), n))
  mask = np.zeros((len(lengths), n), np.int64)
  for i, length in enumerate(lengths):
    mask[i, :length] = 1
    ids[i, length:] = 1  # pad_token_id
  glob = np.zeros_like(mask)
  if globals_at == "first":
    glob[:, 0] = 1
  elif globals_at == "scattered":
    glob[0, [2, 7, 11]] = 1
    glob[-1, [5]] = 1
  elif globals_at == "last":
    for i, length in enumerate(lengths):
      glob[i, length - 1] = 1
  return ids, mask, glob


def run_hf(model, ids, mask, glob=None):
  import torch
  kwargs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  if glob is not None:
    kwargs["global_attention_mask"] = torch.tensor(glob)
  with torch.no_grad():
    return model(**kwargs)


def assert_valid_close(got, want, mask, atol=1e-4):
  valid = np.asarray(mask).astype(bool)
  np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid],
                             atol=atol, rtol=0)
