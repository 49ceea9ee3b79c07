"""The char-LM: relative positions, causality, cache == full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lfjax.models import charlm
from lfjax.models import relpos
from lfjax.models.charlm import CharLM, CharLMConfig
from tests.jaxprs import dot_operand_dtypes

pytestmark = pytest.mark.usefixtures("fast_compiles")

TINY = dict(vocab_size=27, num_layers=3, num_heads=4, hidden_size=32,
            head_dim=8, ffn_size=64, windows=(3, 5, 4), dilations=(1, 2, 3),
            dilated_heads=2, rel_features=16, dropout=0.0)


def tiny_model(seed=1, **overrides):
  return CharLM(CharLMConfig(**dict(TINY, **overrides)), rngs=nnx.Rngs(seed))


def forward(model, x, **kwargs):
  """model(x, **kwargs) compiled: eager NNX dispatch is slow on CPU."""
  return nnx.jit(lambda m, x: m(x, **kwargs))(model, x)


def tokens(b, n, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, n), 0, 27)


def count_params(cfg):
  m = nnx.eval_shape(lambda: CharLM(cfg, rngs=nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))


def test_paper_model_sizes():
  # Paper Table 2/3: 41M (12 layers) and 102M (30 layers).
  small = count_params(CharLMConfig(vocab_size=256))
  large = count_params(CharLMConfig(
      vocab_size=256, num_layers=30, windows=(64,) * 30, dilations=(1,) * 30))
  assert 40.5e6 < small < 41.5e6, small
  assert 101.5e6 < large < 102.9e6, large


def test_relative_features_equal_transformer_xl_term():
  """q_pos(i).k_pos(j) == c.r(i - j) at positions far from zero."""
  rng = np.random.default_rng(0)
  f, n, off = 32, 50, 20_000
  c = rng.standard_normal((1, n, 1, f)).astype(np.float32)
  sin, cos = relpos.position_sin_cos(n, f, offset=off)
  got = jnp.einsum("nf,mf->nm", relpos.query_features(c, sin, cos)[0, :, 0],
                   relpos.key_features(sin, cos))
  i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  want = np.einsum("nf,nmf->nm", c[0, :, 0], relpos.sinusoid(i - j, f))
  np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("impl", ["chunked", "dense"])
def test_table_equals_features(impl):
  """rel_impl="table" (a per-distance table inside the attention) and
  "features" (the sine/cosine rewrite as extra q/k columns) are the same
  model: same parameters, logits and gradients, dilation and a doubled
  window included."""
  table = tiny_model(attention_impl=impl)
  feats = tiny_model(attention_impl=impl, rel_impl="features")
  x, y = tokens(2, 41), tokens(2, 41, seed=5)

  def loss(model):
    logits = model(x, window_scale=2)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         y[..., None], axis=-1))
  grad = nnx.jit(nnx.value_and_grad(loss))
  (lt, gt), (lf, gf) = grad(table), grad(feats)
  np.testing.assert_allclose(lt, lf, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(gt), jax.tree.leaves(gf)):
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("impl", ["chunked", "dense"])
def test_translation_invariant(impl):
  model = tiny_model(attention_impl=impl, rel_impl="features")
  x = tokens(2, 41)
  base = forward(model, x)
  for off in (123_457,):
    np.testing.assert_allclose(forward(model, x, position_offset=off), base,
                               atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("impl", ["chunked", "dense"])
def test_causal_gradient_is_exactly_zero(impl):
  model = tiny_model(attention_impl=impl)
  x = model.embed(tokens(1, 23))
  t = 11

  def out_t(x):
    return jnp.sum(model.from_embeddings(x)[0, t] * jnp.arange(27.0))
  g = jax.jit(jax.grad(out_t))(x)[0]
  assert np.all(np.asarray(g[t + 1:]) == 0.0)
  assert np.abs(np.asarray(g[:t + 1])).sum(axis=-1).min() > 0  # reaches back


@pytest.mark.parametrize("window_scale", [1, 2])
def test_cached_decoding_equals_full_forward(window_scale):
  """Logits from the ring-buffer cache (direct relative scores) equal the
  full windowed forward (feature trick), past the point where the buffers
  wrap around."""
  model = tiny_model()
  x = tokens(2, 61, seed=3)
  assert max(model.cache_sizes(window_scale)) < 61
  full = forward(model, x, window_scale=window_scale)
  cache = model.init_cache(2, window_scale)
  step = jax.jit(lambda tok, t, c: model.decode(tok, t, c,
                                               window_scale=window_scale))
  outs = []
  for t in range(x.shape[1]):
    logits, cache = step(x[:, t], t, cache)
    outs.append(logits)
  np.testing.assert_allclose(jnp.stack(outs, 1), full, atol=1e-5, rtol=1e-5)


def test_dilation_and_window_reach():
  """Layer outputs depend on exactly the keys the dilated window names."""
  model = tiny_model(num_layers=1, windows=(3,), dilations=(2,),
                     dilated_heads=4)
  x = model.embed(tokens(1, 20))
  t = 15

  def out_t(x):
    return jnp.sum(model.from_embeddings(x)[0, t])
  reach = np.abs(np.asarray(jax.jit(jax.grad(out_t))(x)[0])).sum(-1) > 0
  assert np.flatnonzero(reach).tolist() == [9, 11, 13, 15]


@pytest.mark.parametrize("window", [37, 64])
def test_full_windows_chunked_equal_dense(window):
  """configs/charlm_table2.py's full-attention baseline runs the chunked
  band core with windows covering the sequence: logits and gradients equal
  the dense O(N^2) path's (the brute-force mask) with dropout on, at a
  prime length and a doubled window (phase 2)."""
  full = dict(windows=(window,) * 3, dilations=(1,) * 3, dropout=0.2)
  chunked = tiny_model(attention_impl="chunked", **full)
  dense = tiny_model(attention_impl="dense", **full)
  x, y = tokens(2, 37), tokens(2, 37, seed=5)

  def loss(model, k):
    logits = model(x, window_scale=2, dropout_key=k)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         y[..., None], axis=-1))
  grad = nnx.jit(nnx.value_and_grad(loss))
  (lc, gc), (ld, gd) = grad(chunked, jax.random.key(3)), grad(
      dense, jax.random.key(3))
  np.testing.assert_allclose(lc, ld, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(gc), jax.tree.leaves(gd)):
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4)


def test_dropout_needs_a_key_and_is_reproducible():
  model = tiny_model(dropout=0.3)
  x = tokens(2, 17)
  k = jax.random.key(5)
  run = nnx.jit(lambda m, x, k: m(x, dropout_key=k))
  a, b = run(model, x, k), run(model, x, k)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, forward(model, x))
  assert not np.allclose(a, run(model, x, jax.random.key(6)))


def test_dropout_mask_is_bernoulli_and_independent():
  """The hashed keep mask against the law it stands for, by hand: each
  entry kept with p = 1 - rate, scaled by 1 / p; rows, features and keys
  independent (agreement of two masks p^2 + (1 - p)^2), bounds 5 sigma."""
  rate, p = 0.3, 0.7
  x = jnp.full((3, 211, 97), 2.0)  # odd sizes: no power-of-two structure
  a = np.asarray(jax.jit(charlm._dropout, static_argnums=1)(
      x, rate, jax.random.key(0)))
  b = np.asarray(charlm._dropout(x, rate, jax.random.key(1)))
  assert set(np.unique(a).tolist()) == {0.0, np.float32(2.0 / p)}
  n = a.size
  keep_a, keep_b = a > 0, b > 0
  assert abs(keep_a.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
  agree = p * p + (1 - p) ** 2
  assert abs((keep_a == keep_b).mean() - agree) < 5 * np.sqrt(
      agree * (1 - agree) / n)
  # Neighbouring rows and features: as independent as different keys.
  for u, v in ((keep_a[:, 1:], keep_a[:, :-1]),
               (keep_a[..., 1:], keep_a[..., :-1]),
               (keep_a[1:], keep_a[:-1])):
    m = u.size
    assert abs((u == v).mean() - agree) < 5 * np.sqrt(
        agree * (1 - agree) / m)
  # Per-feature and per-row keep rates: no stuck feature or row.
  per_col = keep_a.reshape(-1, 97).mean(0)
  per_row = keep_a.reshape(-1, 97).mean(1)
  assert np.all(np.abs(per_col - p) < 5 * np.sqrt(p * (1 - p) / 633))
  assert np.all(np.abs(per_row - p) < 5 * np.sqrt(p * (1 - p) / 97))
  np.testing.assert_array_equal(
      np.asarray(charlm._dropout(x, rate, None)), np.asarray(x))


def test_bfloat16_compute_and_remat():
  x = tokens(2, 33)
  want = forward(tiny_model(), x)
  got = forward(tiny_model(dtype="bfloat16", remat=True), x)
  assert got.dtype == jnp.float32 and np.isfinite(got).all()
  np.testing.assert_allclose(got, want, atol=0.05)
  model = tiny_model(remat=True)
  g = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(model)
  assert all(np.isfinite(v).all() for v in jax.tree.leaves(g))


@pytest.mark.parametrize("rel_impl", ["table", "features"])
@pytest.mark.parametrize("impl", ["dense", "chunked"])
def test_bfloat16_operands_reach_the_attention_as_bfloat16(impl, rel_impl):
  # q, k, v and the relative term go to every matmul in bfloat16 (float32
  # accumulation); float32 only in the per-layer W_r r(t) table (table) or
  # query features (features) product, and the float32 logits head.
  x = tokens(2, 29)
  kw = dict(attention_impl=impl, rel_impl=rel_impl)
  model = tiny_model(dtype="bfloat16", **kw)
  dots = dot_operand_dtypes(lambda x: model(x), x)
  f32 = [d for d in dots if d == ("float32", "float32")]
  assert len(f32) == TINY["num_layers"] + 1, dots
  assert all(d in (("bfloat16", "bfloat16"), ("float32", "float32"))
             for d in dots), dots
  # The gradients' matmuls too.
  graphdef, state = nnx.split(model)
  loss = lambda st, x: jnp.mean(nnx.merge(graphdef, st)(x)[..., 3])
  grad_dots = dot_operand_dtypes(jax.grad(loss), state, x)
  bf16 = [d for d in grad_dots if d == ("bfloat16", "bfloat16")]
  assert len(bf16) > 2 * len(dots) - 2 * len(f32), grad_dots
  # The same model in float32 is the reference: bf16 rounding only.
  want = forward(tiny_model(**kw), x)
  got = forward(model, x)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=0.05)


@pytest.mark.parametrize("overrides,pattern", [
    (dict(windows=(3, 5)), r"windows: expected one value per layer \(3\)"),
    (dict(dilations=(1, 0, 1)), r"dilations: expected ints >= 1"),
    (dict(dilated_heads=5), r"dilated_heads: expected 0..4"),
    (dict(rel_features=15), r"rel_features: expected a positive even int"),
    (dict(dtype="float16"), r"dtype: expected one of"),
])
def test_config_errors(overrides, pattern):
  with pytest.raises(ValueError, match=pattern):
    CharLMConfig(**dict(TINY, **overrides))


def test_bad_tokens_shape():
  with pytest.raises(ValueError, match=r"tokens: expected \[batch, seq>=1\]"):
    tiny_model()(jnp.zeros((5,), jnp.int32))
