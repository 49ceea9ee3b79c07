"""NNX Longformer models without torch: config checks, jit, train/eval."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lfjax.models import LongformerConfig
from lfjax.models import LongformerForMaskedLM
from lfjax.models import LongformerModel
from tests.jaxprs import dot_operand_dtypes

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


def test_indices_outside_their_tables_raise_eagerly_and_poison_under_jit():
  cfg = LongformerConfig(**TINY, attention_window=4)
  model = LongformerForMaskedLM(cfg, rngs=nnx.Rngs(0))
  model.eval()
  ids = jnp.full((2, 9), 5, jnp.int32)
  with pytest.raises(ValueError, match=r"input_ids: expected values in "
                     r"\[0, 50\) \(word_embeddings has 50 rows\), got 50"):
    model(ids.at[1, 3].set(50))
  with pytest.raises(ValueError, match=r"input_ids: .* got -1"):
    model(ids.at[0, 0].set(-1))
  with pytest.raises(ValueError, match=r"token_type_ids: expected values in "
                     r"\[0, 1\) .* got 1"):
    model(ids, token_type_ids=jnp.zeros((2, 9), jnp.int32).at[0, 2].set(1))
  with pytest.raises(ValueError, match=r"position_ids: expected values in "
                     r"\[0, 40\) .* got 40"):
    model(ids, position_ids=jnp.full((2, 9), 40))
  with pytest.raises(ValueError, match=r"positions: expected values in "
                     r"\[0, 9\) \(the sequence has 9 rows\), got 9"):
    model(ids, positions=jnp.full((2, 1), 9))
  with pytest.raises(ValueError, match=r"attention_mask: expected values 0 "
                     r"\(padding\), 1 \(local\) or 2 .* got \[3\]"):
    model(ids, jnp.ones((2, 9), jnp.int32).at[0, 0].set(3))
  # Under jit nothing can raise: the bad sequence's outputs are NaN, the
  # other sequence's are untouched.
  f = nnx.jit(lambda m, i, t: m(i, token_type_ids=t).logits)
  good = np.asarray(model(ids).logits)
  for bad_ids, types in ((ids.at[1, 3].set(50), jnp.zeros((2, 9), jnp.int32)),
                         (ids, jnp.zeros((2, 9), jnp.int32).at[1, 2].set(1))):
    out = np.asarray(f(model, bad_ids, types))
    assert np.isnan(out[1]).all()
    np.testing.assert_allclose(out[0], good[0], atol=1e-5)
  # A global token (attention_mask 2) under jit needs a static cap.
  mask2 = jnp.ones((2, 9), jnp.int32).at[1, 0].set(2)
  out = np.asarray(nnx.jit(lambda m, i, a: m(i, a).logits)(model, ids, mask2))
  assert np.isnan(out[1]).all() and not np.isnan(out[0]).any()
  np.testing.assert_allclose(out[0], good[0], atol=1e-5)


def test_charlm_tokens_outside_the_vocabulary_raise():
  from lfjax.models import charlm
  cfg = charlm.CharLMConfig(vocab_size=11, num_layers=1, hidden_size=16,
                            num_heads=2, head_dim=8, ffn_size=32, windows=(4,),
                            dilations=(1,), rel_features=8)
  model = charlm.CharLM(cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"tokens: expected values in "
                     r"\[0, 11\) .* got 11"):
    model(jnp.full((1, 5), 11))


def test_new_global_counts_reuse_compiled_programs():
  from lfjax.attention import api
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 40, 2, 8)), jnp.float32)
             for _ in range(3))
  def run(count):
    glob = np.zeros((1, 40), bool)
    glob[0, :count] = True
    return api.windowed_attention(q, k, v, window=3, global_mask=glob)
  run(5)
  before = api._dispatch._cache_size()
  for count in (6, 7, 8):  # all in the cap-8 bucket
    run(count)
  assert api._dispatch._cache_size() == before


def test_negative_ids_and_over_cap_globals_poison_under_jit():
  cfg = LongformerConfig(**TINY, attention_window=4)
  model = LongformerForMaskedLM(cfg, rngs=nnx.Rngs(0))
  model.eval()
  ids = jnp.full((2, 9), 5, jnp.int32)
  good = np.asarray(model(ids).logits)
  f = nnx.jit(lambda m, i, t, p: m(i, token_type_ids=t, positions=p).logits)
  zeros = jnp.zeros((2, 9), jnp.int32)
  pos = jnp.zeros((2, 1), jnp.int32)
  for bad in ((ids.at[1, 3].set(-1), zeros, pos),
              (ids, zeros.at[1, 2].set(-1), pos),
              (ids, zeros, pos.at[1, 0].set(-1))):
    out = np.asarray(f(model, *bad))
    assert np.isnan(out[1]).all()
    # Row 0 intact: the logits at its one asked position (0).
    np.testing.assert_allclose(out[0], good[0, :1], atol=1e-5)
  # Sequence classification jits with its one default global token; a row
  # marking more (attention_mask 2) gets NaN rather than local tokens.
  from lfjax.models import LongformerForSequenceClassification
  cls = LongformerForSequenceClassification(cfg, rngs=nnx.Rngs(1))
  cls.eval()
  mask = jnp.ones((2, 9), jnp.int32).at[1, 5].set(2)
  out = np.asarray(nnx.jit(lambda m, i, a: m(i, a).logits)(cls, ids, mask))
  assert np.isnan(out[1]).all() and not np.isnan(out[0]).any()
  np.testing.assert_allclose(out[0], np.asarray(cls(ids).logits)[0], atol=1e-5)
  # Eagerly the same input runs (the count is known), and a bad
  # global_attention_mask value is named.
  assert np.isfinite(np.asarray(cls(ids, mask).logits)).all()
  with pytest.raises(ValueError, match=r"global_attention_mask: expected "
                     r"values 0 \(local\) or 1 \(global\), got \[-1\]"):
    model(ids, global_attention_mask=zeros.at[0, 0].set(-1))


def test_convert_cli_refuses_bad_sizes(tmp_path):
  from lfjax import cli
  from lfjax import convert
  (tmp_path / "a").mkdir()
  base = ["--from", str(tmp_path / "a"), "--to", str(tmp_path / "b")]
  with pytest.raises(cli.UsageError, match="--max_positions: expected an int"):
    convert.main(base + ["--max_positions", "0"])
  with pytest.raises(cli.UsageError, match="--attention_window: expected a "
                     "positive even int"):
    convert.main(base + ["--attention_window", "7"])


# Precision (model.dtype / param_dtype) ------------------------------------


@pytest.mark.parametrize("impl", ["dense", "chunked"])
def test_bfloat16_compute_keeps_bf16_operands_and_float32_logits(
    monkeypatch, impl):
  from lfjax.models import longformer
  seen = []
  real = longformer.windowed_attention

  def spy(q, k, v, **kw):
    seen.append([q.dtype, k.dtype, v.dtype] + [
        a.dtype for a in kw.get("global_qkv") or ()])
    return real(q, k, v, **kw)

  monkeypatch.setattr(longformer, "windowed_attention", spy)
  cfg = LongformerConfig(**TINY, attention_window=8, attention_impl=impl,
                         compute_dtype="bfloat16")
  model = LongformerForMaskedLM(cfg, rngs=nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(3, 50, (2, 29)))
  glob = jnp.zeros((2, 29), bool).at[:, 0].set(True)
  out = model(ids, global_attention_mask=glob, output_hidden_states=True)
  # q, k, v and the global projections reach the attention as bfloat16.
  assert seen and all(d == jnp.bfloat16 for rec in seen for d in rec), seen
  assert all(h.dtype == jnp.bfloat16 for h in out.hidden_states)
  assert out.logits.dtype == jnp.float32
  assert all(p.dtype == jnp.float32
             for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  # No matmul of the forward pass upcasts its operands first.
  model.eval()  # make_jaxpr may not advance the dropout keys' counters
  dots = dot_operand_dtypes(
      lambda i: model(i, global_attention_mask=glob, max_global=1).logits,
      ids)
  assert dots and all(d == ("bfloat16", "bfloat16") for d in dots), dots


def test_bfloat16_parameters_and_gradients():
  cfg = LongformerConfig(**TINY, attention_window=8, compute_dtype="bfloat16",
                         param_dtype="bfloat16", tie_word_embeddings=False)
  model = LongformerForMaskedLM(cfg, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
  ids = jnp.asarray(np.random.default_rng(1).integers(3, 50, (2, 17)))

  def loss(m):
    logits = m(ids).logits
    assert logits.dtype == jnp.float32
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 5])

  grads = nnx.grad(loss)(model)
  leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
  assert all(g.dtype == jnp.bfloat16 for g in leaves)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)


def test_precision_fields_are_checked():
  with pytest.raises(ValueError, match=r"compute_dtype: expected one of "
                     r"\['float32', 'bfloat16'\], got 'float16'"):
    LongformerConfig(**TINY, compute_dtype="float16")
  with pytest.raises(ValueError, match="param_dtype: expected one of"):
    LongformerConfig(**TINY, param_dtype="bf16")


def test_bfloat16_parameters_start_from_the_float32_values():
  """The same seed gives the float32 model's initial values, rounded: a
  bfloat16 run compares with a float32 one on precision, not on another
  draw of its initial weights."""
  f32 = LongformerForMaskedLM(LongformerConfig(**TINY, tie_word_embeddings=
                                               False), rngs=nnx.Rngs(4))
  bf16 = LongformerForMaskedLM(LongformerConfig(
      **TINY, tie_word_embeddings=False, param_dtype="bfloat16"),
      rngs=nnx.Rngs(4))
  for a, b in zip(jax.tree.leaves(nnx.state(f32, nnx.Param)),
                  jax.tree.leaves(nnx.state(bf16, nnx.Param))):
    assert b.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a.astype(jnp.bfloat16)),
                                  np.asarray(b))
