"""NNX Longformer models without torch: config checks, jit, train/eval."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lfjax.models import LongformerConfig
from lfjax.models import LongformerForMaskedLM
from lfjax.models import LongformerModel

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=40, type_vocab_size=1)


@pytest.mark.parametrize("overrides,pattern", [
    (dict(attention_window=5), r"attention_window: expected positive even"),
    (dict(attention_window=[4, 6, 8]),
     r"attention_window: expected an int or one value per layer \(2\), got 3"),
    (dict(attention_window=[4, 0]), r"attention_window: expected positive"),
    (dict(attention_dilation=[1]),
     r"attention_dilation: expected one entry per layer \(2\), got 1"),
    (dict(hidden_size=15), r"hidden_size: expected a multiple"),
    (dict(hidden_act="swish"), r"hidden_act: expected one of"),
])
def test_config_rejects_bad_fields(overrides, pattern):
  with pytest.raises(ValueError, match=pattern):
    LongformerConfig(**{**TINY, **overrides})


def test_config_from_dict_reads_checkpoint_values_and_rejects_typos():
  cfg = LongformerConfig.from_dict(
      {**TINY, "layer_norm_eps": 1e-5, "id2label": {0: "a", 1: "b", 2: "c"},
       "architectures": ["LongformerModel"]})
  assert cfg.layer_norm_eps == 1e-5 and cfg.num_labels == 3
  with pytest.raises(ValueError, match="unknown LongformerConfig fields"):
    LongformerConfig.from_dict(TINY, attention_windw=4)


def test_too_long_input_raises():
  model = LongformerModel(LongformerConfig(**TINY, attention_window=4),
                          rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"input_ids: expected at most 38 "
                     r"non-padding tokens per sequence .*"
                     r"max_position_embeddings=40 .* with 39"):
    model(jnp.full((1, 39), 5, jnp.int32))
  # The check counts real tokens (RoBERTa's positions), not the padded
  # length: 38 tokens padded to 45 fit the 38 learned rows.
  ids = jnp.full((2, 45), 1, jnp.int32).at[:, :38].set(5)
  mask = (ids != 1).astype(jnp.int32)
  assert model(ids, mask).last_hidden_state.shape == (2, 45, 16)


def test_jit_matches_eager_and_dropout_follows_mode():
  cfg = LongformerConfig(**TINY, attention_window=[4, 6],
                         attention_dilation=[1, [1, 2]], max_global=2)
  model = LongformerForMaskedLM(cfg, rngs=nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(3, 50, (2, 23)))
  mask = jnp.ones((2, 23), jnp.int32).at[1, 15:].set(0)
  glob = jnp.zeros((2, 23), jnp.int32).at[:, 0].set(1)
  model.eval()
  eager = model(ids, mask, glob).logits
  jitted = nnx.jit(lambda m, *a: m(*a).logits)(model, ids, mask, glob)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager),
                             atol=1e-5)
  assert np.isfinite(np.asarray(eager)).all()
  model.train()
  a = model(ids, mask, glob).logits
  b = model(ids, mask, glob).logits
  assert not np.allclose(np.asarray(a), np.asarray(b))  # fresh dropout masks
  model.eval()
  np.testing.assert_allclose(np.asarray(model(ids, mask, glob).logits),
                             np.asarray(eager), atol=1e-6)


def test_attention_dropout_follows_mode():
  """Only attention-probability dropout on: train mode changes outputs with
  fresh masks each call; the rate is what transformers calls
  attention_probs_dropout_prob."""
  tiny = dict(TINY, hidden_dropout_prob=0.0)
  ids = jnp.asarray(np.random.default_rng(2).integers(3, 50, (2, 19)))
  glob = jnp.zeros((2, 19), jnp.int32).at[:, 0].set(1)
  off = LongformerModel(LongformerConfig(
      **dict(tiny, attention_probs_dropout_prob=0.0), attention_window=4,
      max_global=1), rngs=nnx.Rngs(0))
  off.train()
  on = LongformerModel(LongformerConfig(
      **dict(tiny, attention_probs_dropout_prob=0.5), attention_window=4,
      max_global=1), rngs=nnx.Rngs(0))
  on.eval()
  want = off(ids, None, glob).last_hidden_state
  np.testing.assert_allclose(np.asarray(on(ids, None, glob).last_hidden_state),
                             np.asarray(want), atol=1e-6)
  on.train()
  f = nnx.jit(lambda m: m(ids, None, glob).last_hidden_state)
  a, b = f(on), f(on)
  assert not np.allclose(np.asarray(a), np.asarray(want), atol=1e-3)
  assert not np.allclose(np.asarray(a), np.asarray(b), atol=1e-3)
  assert np.isfinite(np.asarray(a)).all()


def test_gradients_reach_every_parameter():
  cfg = LongformerConfig(**TINY, attention_window=4, max_global=1)
  model = LongformerForMaskedLM(cfg, rngs=nnx.Rngs(1))
  model.eval()
  ids = jnp.asarray(np.random.default_rng(1).integers(3, 50, (2, 17)))
  glob = jnp.zeros((2, 17), jnp.int32).at[:, 3].set(1)

  def loss(m):
    return jnp.mean(jax.nn.log_softmax(m(ids, None, glob).logits)[..., 7])

  grads = nnx.grad(loss)(model)
  for path, g in jax.tree_util.tree_leaves_with_path(nnx.state(grads)):
    assert np.isfinite(np.asarray(g)).all(), path
    assert np.abs(np.asarray(g)).max() > 0, path  # global projections too
