"""windowed_attention equals transformers' LongformerSelfAttention.

Pins the semantics we claim to share with Hugging Face: one-sided window =
attention_window // 2, padding, global keys counted once, global rows with
the separate global projections. Runs where torch is installed (the Python
3.11 leg of CI).
"""

import numpy as np
import pytest

from tests import optional

torch = optional.need("torch")
transformers = optional.need("transformers")

import jax.numpy as jnp  # noqa: E402

from lfjax.attention import windowed_attention  # noqa: E402
from transformers.models.longformer import modeling_longformer as hf  # noqa: E402


def hf_self_attention(heads, head_dim, attention_window, seed):
  cfg = transformers.LongformerConfig(
      hidden_size=heads * head_dim, num_attention_heads=heads,
      attention_window=[attention_window], attention_probs_dropout_prob=0.0)
  torch.manual_seed(seed)
  attn = hf.LongformerSelfAttention(cfg, layer_id=0).eval()
  for p in attn.parameters():  # biases are zero at init: make them count
    torch.nn.init.normal_(p, std=0.3)
  return attn


def projections(attn, x_BxNxE, heads, head_dim):
  """q, k, v and the global projections, as lfjax wants them (unscaled)."""
  def proj(layer):
    w = layer.weight.detach().numpy()
    b = layer.bias.detach().numpy()
    y = x_BxNxE @ w.T + b
    return jnp.asarray(y.reshape(*x_BxNxE.shape[:2], heads, head_dim))
  return ([proj(attn.query), proj(attn.key), proj(attn.value)],
          (proj(attn.query_global), proj(attn.key_global),
           proj(attn.value_global)))


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("globals_at", ["none", "first", "scattered", "last"])
def test_matches_transformers(impl, globals_at):
  b, n, heads, head_dim, attention_window = 2, 48, 3, 8, 8
  attn = hf_self_attention(heads, head_dim, attention_window, seed=0)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((b, n, heads * head_dim)).astype(np.float32)
  key_mask = np.ones((b, n), bool)
  key_mask[1, 37:] = False  # padding at the end of the second sequence
  global_mask = np.zeros((b, n), bool)
  if globals_at == "first":
    global_mask[:, 0] = True
  elif globals_at == "scattered":
    global_mask[0, [3, 4, 20, 33]] = True
    global_mask[1, [10, 36]] = True
  elif globals_at == "last":
    global_mask[0, n - 1] = True
    global_mask[1, 36] = True

  # LongformerModel's mask: 0 padding, 1 local, 2 global -> additive form.
  merged = key_mask.astype(np.float32) * (global_mask + 1)
  ext = torch.tensor((1.0 - merged) * torch.finfo(torch.float32).min)
  with torch.no_grad():
    want = attn(torch.tensor(x), attention_mask=ext,
                is_index_masked=ext < 0, is_index_global_attn=ext > 0,
                is_global_attn=bool((ext > 0).any()))[0].numpy()
  want = want.reshape(b, n, heads, head_dim)
  assert np.all(want[~key_mask] == 0.0)  # HF zeroes padding rows too

  (q, k, v), global_qkv = projections(attn, x, heads, head_dim)
  got = windowed_attention(
      q, k, v, window=attention_window // 2, key_mask=jnp.asarray(key_mask),
      global_mask=jnp.asarray(global_mask), global_qkv=global_qkv, impl=impl)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
