"""impl="splash" (lfjax.attention.splash: JAX's splash attention, Pallas
interpret mode on CPU) against impl="dense", the O(N^2) masked oracle, and
its band_fn against band_attention.band_reference.

Interpret mode is slow: few cases, small shapes, each a different mix of
what the layout passes to the kernel (lengths that are not block
multiples, padding, global tokens in and out of the window, dilation,
causal). The sequence-parallel case is tests/sharded_cases.py's
"p4_splash_globals_padding" (it needs the 8 virtual devices of
tests/test_sharded_attention.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfjax.attention import splash
from lfjax.attention import windowed_attention
from lfjax.kernels import band_attention


def arrays(rng, *shape, count=3, dtype=jnp.float32):
  return [jnp.asarray(rng.standard_normal(shape), dtype)
          for _ in range(count)]


def check_close(got, want, atol=2e-5, rtol=2e-5):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)


def values_and_grads(impl, q, k, v, global_qkv=None, **kw):
  """windowed_attention's output and the gradients of sum(sin(out)) in q,
  k, v (and the global projections)."""
  diff = (q, k, v) + (tuple(global_qkv) if global_qkv else ())

  def loss(*a):
    g = tuple(a[3:]) if global_qkv else None
    out = windowed_attention(*a[:3], global_qkv=g, impl=impl, **kw)
    return jnp.sum(jnp.sin(out.astype(jnp.float32))), out
  (_, out), grads = jax.value_and_grad(loss, argnums=range(len(diff)),
                                       has_aux=True)(*diff)
  return out, grads


# Each case: (seq, heads, head_dim, window, dilation, causal, padding,
# global positions per batch row, global projections).
CASES = {
    # A prime length, padding at the end of row 1, globals at the start,
    # inside another global's window and at the end, their own projections,
    # v narrower than q.
    "prime_padding_globals_gqkv": (37, 2, 16, 4, 1, False, "right",
                                   [[0, 2, 36], [5]], True),
    # Per-head dilation (two band calls), scattered padding, a global
    # inside the window of its neighbours.
    "mixed_dilation_holes_globals": (29, 3, 8, 3, [1, 3, 1], False, "holes",
                                     [[7, 8], []], False),
    # Causal, dilation 2, a fully padded sequence (rows with no key at all:
    # they must be 0 and must not poison the gradients with NaN).
    "causal_dilated_fully_padded_row": (31, 2, 8, 5, 2, True, "all_row0",
                                        None, False),
    # A window longer than the sequence, 1-position odd length.
    "window_past_sequence": (13, 1, 8, 20, 1, False, "none", [[6], [0]],
                             False),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_dense(name):
  n, h, d, window, dilation, causal, padding, globals_, gqkv = CASES[name]
  rng = np.random.default_rng(len(name))
  b = 2
  q, k = arrays(rng, b, n, h, d, count=2)
  (v,) = arrays(rng, b, n, h, d - 3 if gqkv else d, count=1)
  key_mask = np.ones((b, n), bool)
  if padding == "right":
    key_mask[1, n - 9:] = False
  elif padding == "holes":
    key_mask &= rng.random((b, n)) > 0.3
  elif padding == "all_row0":
    key_mask[0] = False
  kw = dict(window=window, dilation=dilation, causal=causal,
            key_mask=jnp.asarray(key_mask))
  global_qkv = None
  if globals_ is not None:
    gm = np.zeros((b, n), bool)
    for row, pos in enumerate(globals_):
      gm[row, pos] = True
    kw["global_mask"] = jnp.asarray(gm)
    if gqkv:
      global_qkv = (*arrays(rng, b, n, h, d, count=2),
                    *arrays(rng, b, n, h, d - 3, count=1))
  want, want_g = values_and_grads("dense", q, k, v, global_qkv, **kw)
  got, got_g = values_and_grads("splash", q, k, v, global_qkv, **kw)
  check_close(got, want)
  if padding == "all_row0":
    assert not np.asarray(got[0]).any()  # exactly 0, not merely close
  assert len(got_g) == (6 if gqkv else 3)
  for g, w in zip(got_g, want_g):
    check_close(g, w, atol=5e-5, rtol=1e-4)


def test_jit_traced_masks_bfloat16():
  """Under jit with traced masks (max_global bounds the globals), bf16
  operands: the output stays bf16; values and gradients within bf16
  rounding of the dense oracle's on the same bf16 inputs."""
  rng = np.random.default_rng(3)
  b, n, h, d = 2, 41, 2, 16
  q, k, v = arrays(rng, b, n, h, d, dtype=jnp.bfloat16)
  km = np.ones((b, n), bool)
  km[0, 33:] = False
  gm = np.zeros((b, n), bool)
  gm[0, [1, 20]] = True
  gm[1, 40] = True

  def run(impl):
    def loss(q, k, v, km, gm):
      out = windowed_attention(q, k, v, window=3, dilation=[1, 2],
                               key_mask=km, global_mask=gm, max_global=4,
                               impl=impl)
      return jnp.sum(jnp.sin(out.astype(jnp.float32))), out
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    return fn(q, k, v, jnp.asarray(km), jnp.asarray(gm))
  (_, want), want_g = run("dense")
  (_, got), got_g = run("splash")
  assert got.dtype == jnp.bfloat16
  check_close(got, want, atol=3e-2, rtol=3e-2)
  for g, w in zip(got_g, want_g):
    check_close(g, w, atol=5e-2, rtol=5e-2)


def test_band_fn_against_band_reference():
  """The band_fn itself (no globals): out and lse equal band_reference's,
  and a row with no visible key gives exactly 0 and lse NEG_INF (row 1's
  keys are all padding; row 0 has a gap wider than the window)."""
  rng = np.random.default_rng(5)
  x, n, d = 3, 45, 8
  q, k, v = arrays(rng, x, n, d)
  kvalid = np.ones((x, n), bool)
  kvalid[0, 10:20] = False
  kvalid[1] = False
  kvalid[2] = rng.random(n) > 0.4
  kw = dict(window=2, causal=False, scale=0.3)
  got, got_lse = splash.band_with_global_keys(q, k, v, jnp.asarray(kvalid),
                                              **kw)
  want, want_lse = band_attention.band_reference(q, k, v,
                                                 jnp.asarray(kvalid), **kw)
  check_close(got, want)
  check_close(got_lse, want_lse)
  assert not np.asarray(got[1]).any()
  assert not np.asarray(got[0, 13:17]).any()
  assert (np.asarray(got_lse[1]) == band_attention.NEG_INF).all()


def test_band_fn_empty_global_slots():
  """Global slots that are all empty (gvalid False) change nothing, and a
  row that sees only global keys attends them (the same softmax)."""
  rng = np.random.default_rng(6)
  x, n, d, g = 2, 20, 8, 3
  q, k, v = arrays(rng, x, n, d)
  gk, gv = arrays(rng, x, g, d, count=2)
  kvalid = np.ones((x, n), bool)
  kvalid[1] = False
  gvalid = np.array([[False] * g, [True, False, True]])
  kw = dict(window=1, causal=True, scale=0.5)
  got, _ = splash.band_with_global_keys(
      q, k, v, jnp.asarray(kvalid), gk_XxGxD=gk, gv_XxGxDv=gv,
      gvalid_XxG=jnp.asarray(gvalid), **kw)
  want0, _ = band_attention.band_reference(q[:1], k[:1], v[:1],
                                           jnp.asarray(kvalid[:1]), **kw)
  check_close(got[:1], want0)
  # Row 1: softmax over global slots 0 and 2 only (hand-written).
  s = np.einsum("nd,gd->ng", np.asarray(q[1]), np.asarray(gk[1])[[0, 2]])
  p = np.exp(0.5 * s - (0.5 * s).max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  check_close(got[1], p @ np.asarray(gv[1])[[0, 2]])


@pytest.mark.parametrize("arg,extra", [
    ("dropout_rate", dict(dropout_rate=0.1, dropout_key=jax.random.key(0))),
    ("rel_query/rel_table", dict(rel_query=jnp.ones((1, 8, 1, 4)),
                                 rel_table=jnp.ones((5, 1, 4)))),
])
def test_refuses_what_splash_cannot_do(arg, extra):
  q = jnp.ones((1, 8, 1, 4))
  with pytest.raises(ValueError, match=rf"^{arg}: impl='splash'.*"
                     r"use impl='mosaic'"):
    windowed_attention(q, q, q, window=2, impl="splash", **extra)


def test_static_mask_blocks():
  """The static mask, read block by block as splash reads it (including
  the shortcuts for blocks clear of the band's edges), equals its
  element-wise definition: every global column, band key t of query a
  when -left <= t - a <= right."""
  gp, np_, left, right = 128, 384, 100, 37
  mask = splash._BandWithGlobals(np_, gp, left, right)
  r = np.arange(np_)[:, None]
  t = np.arange(gp + np_)[None, :] - gp
  want = (t < 0) | ((t >= r - left) & (t <= r + right))
  for a in range(0, np_, 64):
    for c in range(0, gp + np_, 32):
      np.testing.assert_array_equal(
          mask[slice(a, a + 64), slice(c, c + 32)],
          want[a:a + 64, c:c + 32])
  assert mask == splash._BandWithGlobals(np_, gp, left, right)
  assert hash(mask) == hash(splash._BandWithGlobals(np_, gp, left, right))
