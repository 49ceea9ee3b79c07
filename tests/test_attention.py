"""windowed_attention (dense and chunked) against the brute-force reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfjax.attention import band
from lfjax.attention import band_batched
from lfjax.attention import windowed_attention
from tests.reference import reference_attention

LENGTHS = [1, 2, 3, 5, 7, 13, 17, 31, 37, 61, 97]


def random_case(seed):
  """A random problem: shapes, window, dilation, masks, globals."""
  rng = np.random.default_rng(seed)
  b = int(rng.integers(1, 3))
  n = int(rng.choice(LENGTHS))
  h = int(rng.integers(1, 5))
  d = int(rng.choice([4, 8, 16]))
  window = int(rng.choice([0, 1, 2, 3, 5, 8, n, n + 3]))
  if rng.random() < 0.5:
    dilation = int(rng.integers(1, 5))
  else:
    dilation = [int(x) for x in rng.integers(1, 5, size=h)]
  key_mask = np.ones((b, n), bool)
  pad = rng.choice(["none", "right", "holes", "all"], p=[.3, .3, .25, .15])
  if pad == "right":
    key_mask[-1, int(rng.integers(0, n)) + 1:] = False
    key_mask[0, n - n // 3:] = False if n > 2 else key_mask[0, n - n // 3:]
  elif pad == "holes":
    key_mask &= rng.random((b, n)) > 0.3
  elif pad == "all":
    key_mask[int(rng.integers(0, b))] = False  # a fully padded sequence
  causal = rng.random() < 0.25
  global_mask = None
  if not causal and rng.random() < 0.7:
    global_mask = np.zeros((b, n), bool)
    where = rng.choice(["start", "middle", "end", "scattered"])
    if where == "start":
      global_mask[:, 0] = True
    elif where == "middle":
      global_mask[:, n // 2] = True
    elif where == "end":
      global_mask[:, n - 1] = True
    else:
      global_mask |= rng.random((b, n)) < 0.2
  # Values sometimes narrower or wider than queries and keys.
  dv = d if rng.random() < 0.7 else int(rng.choice([3, 8, 20]))
  widths = (d, d, dv)
  args = [rng.standard_normal((b, n, h, w)).astype(np.float32)
          for w in widths]
  global_qkv = None
  if global_mask is not None and rng.random() < 0.6:
    global_qkv = tuple(rng.standard_normal((b, n, h, w)).astype(np.float32)
                       for w in widths)
  kwargs = dict(window=window, dilation=dilation, causal=causal,
                key_mask=key_mask, global_mask=global_mask,
                global_qkv=global_qkv)
  return args, kwargs


def to_jnp(kwargs):
  out = dict(kwargs)
  for name in ("key_mask", "global_mask"):
    if out[name] is not None:
      out[name] = jnp.asarray(out[name])
  if out["global_qkv"] is not None:
    out["global_qkv"] = tuple(map(jnp.asarray, out["global_qkv"]))
  return out


@pytest.fixture
def small_blocks(monkeypatch, request):
  """Force tiny query blocks and unrolled loop steps so short sequences
  exercise the multi-block, multi-tile paths of the chunked core."""
  force_small_blocks(monkeypatch, request)


def force_small_blocks(monkeypatch, request):
  """Query blocks of 8 rows (the tile loop's and the batched blocks') and
  unrolled loop steps. windowed_attention's jit caches traces by shape, not
  by these patches (a case traced before at the same shapes would keep
  its blocks): caches are cleared now and after the test."""
  monkeypatch.setattr(band, "choose_block", lambda *a, **k: 8)
  monkeypatch.setattr(band, "_MIN_TILES_TO_UNROLL", 0)
  monkeypatch.setattr(band_batched, "choose_block", lambda *a, **k: 8)
  jax.clear_caches()
  request.addfinalizer(jax.clear_caches)


def implementation(impl, blocks, monkeypatch, request):
  """windowed_attention's impl for a parametrised case: blocks forces
  small blocks; "batched" is the chunked core's GPU/TPU form
  (band_batched) forced on CPU through band.FORCE_PATH (a key of
  windowed_attention's caches)."""
  if blocks:
    force_small_blocks(monkeypatch, request)
  if impl != "batched":
    return impl
  monkeypatch.setattr(band, "FORCE_PATH", "batched")
  return "chunked"


def check_close(got, want, atol=2e-5, rtol=2e-5):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)


# The random sweeps compile ~500 small programs: without XLA's optimisations
# (conftest's fast_compiles). The targeted tests below, the dropout and
# bfloat16 ones and the models' tests keep the optimised pipeline.
@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("seed", range(40))
def test_forward_matches_reference(seed, impl, fast_compiles):
  args, kwargs = random_case(seed)
  want = reference_attention(*args, **kwargs)
  got = windowed_attention(*map(jnp.asarray, args), impl=impl,
                           **to_jnp(kwargs))
  check_close(got, want)


@pytest.mark.parametrize("seed", range(40, 60))
def test_chunked_small_blocks_matches_reference(seed, small_blocks,
                                                fast_compiles):
  args, kwargs = random_case(seed)
  want = reference_attention(*args, **kwargs)
  got = windowed_attention(*map(jnp.asarray, args), impl="chunked",
                           **to_jnp(kwargs))
  check_close(got, want)


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("seed", range(60, 72))
def test_jit_with_traced_masks(seed, impl, fast_compiles):
  args, kwargs = random_case(seed)
  n = args[0].shape[1]
  want = reference_attention(*args, **kwargs)
  static = dict(window=kwargs["window"], dilation=kwargs["dilation"],
                causal=kwargs["causal"])

  @jax.jit
  def f(q, k, v, key_mask, global_mask, global_qkv):
    return windowed_attention(q, k, v, key_mask=key_mask,
                              global_mask=global_mask, global_qkv=global_qkv,
                              max_global=n, impl=impl, **static)

  j = to_jnp(kwargs)
  got = f(*map(jnp.asarray, args), j["key_mask"], j["global_mask"],
          j["global_qkv"])
  check_close(got, want)


def grads(fn, args, global_qkv, cot):
  """Gradients of <fn(...), cot> w.r.t. q, k, v and the global projections."""
  def loss(q, k, v, gqkv):
    return jnp.sum(fn(q, k, v, gqkv) * cot)
  return jax.grad(loss, argnums=(0, 1, 2, 3))(*args, global_qkv)


@pytest.mark.parametrize("impl,blocks", [
    ("dense", False), ("chunked", False), ("chunked", True),
    ("batched", False), ("batched", True)])
@pytest.mark.parametrize("seed", [3, 5, 8, 11, 14, 21, 26, 33])
def test_gradients_match_reference(seed, impl, blocks, monkeypatch, request,
                                   fast_compiles):
  """("batched": the chunked core's GPU/TPU form, forced on CPU.)"""
  impl = implementation(impl, blocks, monkeypatch, request)
  args, kwargs = random_case(seed)
  args = tuple(map(jnp.asarray, args))
  kw = to_jnp(kwargs)
  gqkv = kw.pop("global_qkv")
  cot = jnp.asarray(np.random.default_rng(seed).standard_normal(
      args[2].shape), jnp.float32)
  ref = lambda q, k, v, g: reference_attention(q, k, v, global_qkv=g, **kw)
  ours = lambda q, k, v, g: windowed_attention(q, k, v, global_qkv=g,
                                               impl=impl, **kw)
  want = jax.tree.leaves(grads(ref, args, gqkv, cot))
  got = jax.tree.leaves(grads(ours, args, gqkv, cot))
  assert len(got) == len(want)
  for g, w in zip(got, want):
    check_close(g, w, atol=5e-5, rtol=1e-4)


# Cases chosen to cover globals with their own projections and padding (5,
# 41), dilation without padding holes (14), causal with dilation (26).
@pytest.mark.parametrize("seed,impl,blocks", [
    (5, "dense", False), (5, "chunked", False), (14, "chunked", False),
    (26, "dense", False), (26, "chunked", True), (41, "chunked", True),
    (5, "batched", False), (14, "batched", False), (26, "batched", True),
    (41, "batched", True)])
def test_dropout_matches_reference(seed, impl, blocks, monkeypatch, request):
  """Attention dropout: the same entries dropped as the spec's hash, in the
  output and in the gradients (the chunked backward regenerates them)."""
  impl = implementation(impl, blocks, monkeypatch, request)
  args, kwargs = random_case(seed)
  args = tuple(map(jnp.asarray, args))
  kw = to_jnp(kwargs)
  gqkv = kw.pop("global_qkv")
  rate = [0.1, 0.5][seed % 2]
  key = jax.random.key(seed)
  cot = jnp.asarray(np.random.default_rng(seed).standard_normal(
      args[2].shape), jnp.float32)
  ref = lambda q, k, v, g: reference_attention(
      q, k, v, global_qkv=g, dropout_rate=rate, dropout_key=key, **kw)
  ours = jax.jit(lambda q, k, v, g: windowed_attention(
      q, k, v, global_qkv=g, impl=impl, dropout_rate=rate, dropout_key=key,
      **kw))
  check_close(ours(*args, gqkv), ref(*args, gqkv))
  want = jax.tree.leaves(grads(ref, args, gqkv, cot))
  got = jax.tree.leaves(grads(ours, args, gqkv, cot))
  for g, w in zip(got, want):
    check_close(g, w, atol=5e-5, rtol=1e-4)


def test_dropout_statistics_and_errors():
  from lfjax.attention import common
  seeds = common.dropout_seeds(jax.random.key(0), 3, 4)
  assert len(set(np.asarray(seeds).ravel().tolist())) == 12
  i, j = jnp.arange(512)[:, None], jnp.arange(512)[None, :]
  for rate in (0.1, 0.5):
    z = np.asarray(common.dropout_multiplier(seeds[:, :, None, None], i, j,
                                             rate))
    kept = z > 0
    assert abs(kept.mean() - (1 - rate)) < 0.002
    np.testing.assert_allclose(z[kept], 1 / (1 - rate))
    # No structure along rows, columns or diagonals.
    for m in (kept.mean(axis=(0, 1, 2)), kept.mean(axis=(0, 1, 3)),
              np.stack([np.diagonal(kept, o, 2, 3).mean() for o in range(8)])):
      assert np.abs(m - (1 - rate)).max() < 0.06
  q = jnp.ones((1, 8, 2, 4))
  with pytest.raises(ValueError, match="dropout_key: expected a jax.random"):
    windowed_attention(q, q, q, window=2, dropout_rate=0.1)
  with pytest.raises(ValueError, match=r"dropout_rate: expected a Python "
                                       r"float in \[0, 1\)"):
    windowed_attention(q, q, q, window=2, dropout_rate=1.0,
                       dropout_key=jax.random.key(0))
  same = windowed_attention(q, q, q, window=2, dropout_rate=0.0,
                            dropout_key=jax.random.key(0))
  check_close(same, windowed_attention(q, q, q, window=2))


def test_gradients_under_jit_with_globals():
  rng = np.random.default_rng(7)
  q, k, v, qg, kg, vg = (jnp.asarray(rng.standard_normal((2, 29, 3, 8)),
                                     jnp.float32) for _ in range(6))
  km = np.ones((2, 29), bool)
  km[1, 20:] = False
  gm = np.zeros((2, 29), bool)
  gm[0, [0, 9, 28]] = True
  gm[1, [4, 19]] = True
  kw = dict(window=3, dilation=[1, 2, 3], key_mask=jnp.asarray(km))

  def loss(impl, q, k, v, qg, kg, vg, gm):
    out = windowed_attention(q, k, v, global_mask=gm, global_qkv=(qg, kg, vg),
                             max_global=4, impl=impl, **kw)
    return jnp.sum(jnp.sin(out))

  def ref_loss(q, k, v, qg, kg, vg):
    out = reference_attention(q, k, v, global_mask=gm,
                              global_qkv=(qg, kg, vg), **kw)
    return jnp.sum(jnp.sin(out))

  want = jax.grad(ref_loss, argnums=range(6))(q, k, v, qg, kg, vg)
  for impl in ("dense", "chunked"):
    f = jax.jit(jax.grad(lambda *a: loss(impl, *a), argnums=range(6)))
    for g, w in zip(f(q, k, v, qg, kg, vg, jnp.asarray(gm)), want):
      check_close(g, w, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("seed", [2, 9, 17, 30])
def test_bfloat16(seed, impl):
  args, kwargs = random_case(seed)
  bf = [jnp.asarray(a, jnp.bfloat16) for a in args]
  kw = to_jnp(kwargs)
  if kw["global_qkv"] is not None:
    kw["global_qkv"] = tuple(a.astype(jnp.bfloat16) for a in kw["global_qkv"])
  got = windowed_attention(*bf, impl=impl, **kw)
  assert got.dtype == jnp.bfloat16
  # Reference on the same bf16-rounded inputs, in float32.
  rkw = dict(kwargs)
  if rkw["global_qkv"] is not None:
    rkw["global_qkv"] = tuple(np.asarray(a.astype(jnp.float32))
                              for a in kw["global_qkv"])
  want = reference_attention(*[np.asarray(a.astype(jnp.float32)) for a in bf],
                             **rkw)
  check_close(got, want, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("impl", ["dense", "chunked"])
def test_fully_padded_rows_are_zero_and_finite(impl):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 19, 2, 8)), jnp.float32)
             for _ in range(3))
  km = np.ones((2, 19), bool)
  km[0] = False  # whole sequence is padding
  km[1, 11:] = False
  gm = np.zeros((2, 19), bool)
  gm[:, [0, 15]] = True  # one global token sits in padding
  kw = dict(window=2, key_mask=jnp.asarray(km), global_mask=jnp.asarray(gm))
  out = windowed_attention(q, k, v, impl=impl, **kw)
  assert np.all(np.asarray(out)[~km] == 0.0)
  g = jax.grad(lambda q, k, v: jnp.sum(
      windowed_attention(q, k, v, impl=impl, **kw) ** 2), (0, 1, 2))(q, k, v)
  for x in g:
    assert np.isfinite(np.asarray(x)).all()
  assert np.all(np.asarray(g[0])[~km] == 0.0)  # padding queries get no grad


@pytest.mark.parametrize("impl", ["dense", "chunked"])
def test_window_covering_sequence_is_full_attention(impl):
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 23, 2, 8)), jnp.float32)
             for _ in range(3))
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
  want = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v)
  for window in (22, 23, 1000):
    check_close(windowed_attention(q, k, v, window=window, impl=impl), want)


@pytest.mark.parametrize("impl", ["dense", "chunked"])
def test_window_zero_is_identity_on_values(impl):
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 13, 3, 4)), jnp.float32)
             for _ in range(3))
  check_close(windowed_attention(q, k, v, window=0, dilation=[1, 2, 3],
                                 impl=impl), v)


def test_max_global_overflow():
  rng = np.random.default_rng(3)
  q = jnp.asarray(rng.standard_normal((1, 16, 2, 4)), jnp.float32)
  gm = np.zeros((1, 16), bool)
  gm[0, [1, 5, 9]] = True
  with pytest.raises(ValueError, match="max_global: batch row 0 has up to 3 "
                     "global tokens"):
    windowed_attention(q, q, q, window=2, global_mask=jnp.asarray(gm),
                       max_global=2)
  # The message names the offending rows of a batch.
  q3 = jnp.broadcast_to(q, (3, 16, 2, 4))
  gm3 = np.repeat(gm, 3, axis=0)
  gm3[1, 9] = False
  with pytest.raises(ValueError, match="batch rows 0, 2 have up to 3"):
    windowed_attention(q3, q3, q3, window=2, global_mask=jnp.asarray(gm3),
                       max_global=2)

  # Under jit the cap cannot be checked: tokens past the first max_global are
  # ordinary local tokens, in every implementation.
  demoted = gm.copy()
  demoted[0, 9] = False
  want = reference_attention(q, q, q, window=2, global_mask=demoted)
  for impl in ("dense", "chunked"):
    f = jax.jit(lambda q, g: windowed_attention(
        q, q, q, window=2, global_mask=g, max_global=2, impl=impl))
    check_close(f(q, jnp.asarray(gm)), want)


def test_traced_global_mask_needs_max_global():
  q = jnp.zeros((1, 8, 1, 4))
  f = jax.jit(lambda g: windowed_attention(q, q, q, window=1, global_mask=g))
  with pytest.raises(ValueError, match="max_global: expected a static int"):
    f(jnp.zeros((1, 8), bool))


def test_band_core_offsets_and_lse():
  """Halo form (sequence parallelism): a shard's queries with its keys plus
  halos give the rows of the full computation, and lse is the log-sum-exp."""
  rng = np.random.default_rng(4)
  x, n, d, w = 3, 64, 8, 5
  q, k, v = (jnp.asarray(rng.standard_normal((x, n, d)), jnp.float32)
             for _ in range(3))
  kv = jnp.asarray(rng.random((x, n)) > 0.2)
  full, full_lse = band.band_attention(q, k, v, kv, window=w, causal=False,
                                       scale=0.3, block=8)
  # Independent check of lse from dense scores.
  s = jnp.einsum("xqd,xkd->xqk", q, k) * 0.3
  pos = np.arange(n)
  allowed = (np.abs(pos[None] - pos[:, None]) <= w)[None] & kv[:, None, :]
  want_lse = jax.nn.logsumexp(jnp.where(allowed, s, -jnp.inf), axis=-1)
  check_close(full_lse, want_lse)
  for start, size in [(0, 16), (16, 16), (40, 24), (13, 7)]:
    lo, hi = max(0, start - w), min(n, start + size + w)
    out, lse = band.band_attention(
        q[:, start:start + size], k[:, lo:hi], v[:, lo:hi], kv[:, lo:hi],
        window=w, causal=False, scale=0.3, k_offset=lo - start, block=8)
    check_close(out, full[:, start:start + size])
    check_close(lse, full_lse[:, start:start + size])


def test_band_core_lse_cotangent():
  """Gradients flow through the log-sum-exp output (for merging partials)."""
  rng = np.random.default_rng(5)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 30, 4)), jnp.float32)
             for _ in range(3))
  kv = jnp.ones((2, 30), bool)
  pos = np.arange(30)
  allowed = (pos[None] - pos[:, None] <= 0) & (pos[None] - pos[:, None] >= -3)

  def ours(q, k, v):
    o, lse = band.band_attention(q, k, v, kv, window=3, causal=True,
                                 scale=0.5, block=8)
    return jnp.sum(o * o) + jnp.sum(jnp.cos(lse))

  def dense(q, k, v):
    s = jnp.where(allowed, jnp.einsum("xqd,xkd->xqk", q, k) * 0.5, -jnp.inf)
    o = jnp.einsum("xqk,xkd->xqd", jax.nn.softmax(s, -1), v)
    return jnp.sum(o * o) + jnp.sum(jnp.cos(jax.nn.logsumexp(s, -1)))

  for g, w in zip(jax.grad(ours, (0, 1, 2))(q, k, v),
                  jax.grad(dense, (0, 1, 2))(q, k, v)):
    check_close(g, w, atol=1e-5, rtol=1e-4)


def test_chunked_memory_is_linear():
  """Compiled peak memory of forward+backward grows ~linearly with length."""
  def peak(n):
    x = jax.ShapeDtypeStruct((1, n, 4, 32), jnp.float32)
    f = jax.jit(jax.grad(lambda q, k, v: jnp.sum(windowed_attention(
        q, k, v, window=64, impl="chunked")), argnums=(0, 1, 2)))
    m = f.lower(x, x, x).compile().memory_analysis()
    return m.temp_size_in_bytes + m.argument_size_in_bytes + (
        m.output_size_in_bytes)
  small, large = peak(2048), peak(16384)
  assert large / small < 8 * 1.5, (small, large)  # 8x length; N^2 gives 64x


@pytest.mark.parametrize("seed", [0, 5, 14, 41, 43, 124])
def test_probabilities_rebuild_the_output(seed):
  """Weighting the values by attention_probabilities (transformers' layout)
  gives windowed_attention's output, for local and global rows."""
  from lfjax.attention.probs import attention_probabilities
  from lfjax.attention import common
  args, kwargs = random_case(seed)
  q, k, v = map(jnp.asarray, args)
  kw = to_jnp(kwargs)
  b, n, h, _ = q.shape
  w = kw["window"]
  dil = kw["dilation"]
  dil = [dil] * h if isinstance(dil, int) else dil
  gm = kw["global_mask"]
  g = 0 if gm is None else int(np.asarray(gm & kw["key_mask"]).sum(1).max())
  gqkv = kw["global_qkv"] or (q, k, v)
  local, glob = attention_probabilities(
      q, k, window=w, dilation=kw["dilation"], causal=kw["causal"],
      key_mask=kw["key_mask"], global_mask=gm, global_qk=gqkv[:2],
      max_global=g)
  local, glob = np.asarray(local), np.asarray(glob)  # index on the host
  want = np.asarray(windowed_attention(q, k, v, impl="dense", **kw))
  got = np.zeros_like(want)
  vn = np.asarray(v)
  for hh in range(h):
    for i in range(n):
      for m in range(-w, w + 1):
        j = i + m * dil[hh]
        if 0 <= j < n:
          weight = local[:, hh, i, g + w + m][:, None]
          got[:, i, hh] += weight * vn[:, j, hh]
  if g:
    eff = common.effective_global(gm, kw["key_mask"], g)
    idx, valid = common.global_indices(eff, g)
    idx, valid = np.asarray(idx), np.asarray(valid)
    vg = np.asarray(gqkv[2])
    for bb in range(b):
      for s in range(g):
        if not valid[bb, s]:
          continue
        weight = local[bb, :, :, s].T[:, :, None]
        got[bb] += weight * vn[bb, idx[bb, s]][None]
        got[bb, idx[bb, s]] = np.einsum("hj,jhd->hd", glob[bb, :, :, s],
                                        vg[bb])
  check_close(got, want, atol=3e-5, rtol=3e-5)


def with_rel(args, kwargs, seed, dr=None):
  """A relative-position term for a random case: rel_query and a table of
  the smallest allowed size plus a few spare rows (odd when not causal)."""
  rng = np.random.default_rng(seed + 1000)
  b, n, h, d = args[0].shape
  dil = kwargs["dilation"]
  dmax = max(dil) if isinstance(dil, list) else dil
  reach = min(kwargs["window"] * dmax, max(n - 1, 0))
  spare = int(rng.integers(0, 3))
  t = reach + 1 + spare if kwargs["causal"] else 2 * (reach + spare) + 1
  dr = dr or int(rng.choice([d, 5]))
  rq = rng.standard_normal((b, n, h, dr)).astype(np.float32)
  table = rng.standard_normal((t, h, dr)).astype(np.float32)
  return jnp.asarray(rq), jnp.asarray(table)


# Causal with dilation (26, 9), globals with their own projections and
# padding (5, 41), fully padded rows (6), window 0 or past the sequence.
REL_SEEDS = [5, 6, 9, 14, 21, 26, 33, 41]


@pytest.mark.parametrize("impl,blocks", [
    ("dense", False), ("chunked", False), ("chunked", True), ("pallas", False),
    ("batched", False), ("batched", True)])
@pytest.mark.parametrize("seed", REL_SEEDS)
def test_relative_term_matches_reference(seed, impl, blocks, monkeypatch,
                                        request):
  """Outputs and gradients of q, k, v, the global projections, rel_query
  and rel_table against the brute-force reference's own relative term
  ("batched": the chunked core's GPU/TPU form, band_batched, forced on
  CPU)."""
  impl = implementation(impl, blocks, monkeypatch, request)
  args, kwargs = random_case(seed)
  args = tuple(map(jnp.asarray, args))
  rq, table = with_rel(args, kwargs, seed)
  kw = to_jnp(kwargs)
  gqkv = kw.pop("global_qkv")
  cot = jnp.asarray(np.random.default_rng(seed).standard_normal(
      args[2].shape), jnp.float32)
  ref = lambda q, k, v, g, r, t: reference_attention(
      q, k, v, global_qkv=g, rel_query=r, rel_table=t, **kw)
  ours = jax.jit(lambda q, k, v, g, r, t: windowed_attention(
      q, k, v, global_qkv=g, rel_query=r, rel_table=t, impl=impl, **kw))
  check_close(ours(*args, gqkv, rq, table), ref(*args, gqkv, rq, table))
  loss = lambda fn: lambda *a: jnp.sum(fn(*a) * cot)
  argnums = (0, 1, 2, 3, 4, 5)
  want = jax.tree.leaves(jax.grad(loss(ref), argnums)(*args, gqkv, rq, table))
  got = jax.tree.leaves(jax.grad(loss(ours), argnums)(*args, gqkv, rq, table))
  assert len(got) == len(want)
  for g, w in zip(got, want):
    check_close(g, w, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["dense", "chunked", "pallas", "mosaic"])
def test_relative_term_bfloat16_and_dropout(impl):
  args, kwargs = random_case(26)  # causal, dilated
  rq, table = with_rel(args, kwargs, 26)
  kw = to_jnp(kwargs)
  want = reference_attention(*args, rel_query=rq, rel_table=table, **kw)
  bf = lambda a: jnp.asarray(a, jnp.bfloat16)
  got = windowed_attention(*map(bf, args), rel_query=bf(rq),
                           rel_table=bf(table), impl=impl, **kw)
  assert got.dtype == jnp.bfloat16
  check_close(got, want, atol=6e-2, rtol=6e-2)
  key = jax.random.key(3)
  want = reference_attention(*args, rel_query=rq, rel_table=table,
                             dropout_rate=0.3, dropout_key=key, **kw)
  got = windowed_attention(*map(jnp.asarray, args), rel_query=rq,
                           rel_table=table, impl=impl, dropout_rate=0.3,
                           dropout_key=key, **kw)
  check_close(got, want)


def test_relative_term_errors():
  q = jnp.zeros((1, 10, 2, 4))
  rq = jnp.zeros((1, 10, 2, 4))
  call = lambda **kw: windowed_attention(q, q, q, window=3, **kw)
  with pytest.raises(ValueError, match="rel_query, rel_table: expected both"):
    call(rel_query=rq)
  with pytest.raises(ValueError, match=r"rel_query: expected a floating array "
                     r"\[batch, seq, heads, Dr\], got list"):
    call(rel_query=[[1.0]], rel_table=jnp.zeros((7, 2, 4)))
  with pytest.raises(ValueError, match=r"rel_query: expected Dr >= 1"):
    call(rel_query=jnp.zeros((1, 10, 2, 0)), rel_table=jnp.zeros((7, 2, 0)))
  with pytest.raises(ValueError, match=r"rel_table: expected shape \[T, "
                     r"heads=2, Dr=4\]"):
    call(rel_query=rq, rel_table=jnp.zeros((7, 3, 4)))
  with pytest.raises(ValueError, match=r"rel_table: expected an odd number "
                     r"of rows >= 13 .* got 11"):
    call(rel_query=rq, rel_table=jnp.zeros((11, 2, 4)), dilation=2)
  with pytest.raises(ValueError, match=r"rel_table: expected at least 4 rows"):
    call(rel_query=rq, rel_table=jnp.zeros((3, 2, 4)), causal=True)
