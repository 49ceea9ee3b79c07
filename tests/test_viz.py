"""lfjax.viz: drawn attention patterns and probability heatmaps checked
against a brute-force rule written here from the paper's definition, and
the compiled-memory helpers against byte counts done by hand."""

import numpy as np
import pytest

from tests import optional

optional.need("matplotlib")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from lfjax import viz  # noqa: E402
from lfjax.attention import probs  # noqa: E402
from lfjax.models import LongformerConfig  # noqa: E402
from lfjax.models import LongformerModel  # noqa: E402


def rule(n, window, dilations, causal, glob=(), padding_from=None):
  """[H, N, N] bool from the definition: non-padding query i attends
  non-padding key j when either is a global token, or j = i + m*d with
  |m| <= w (causal: -w <= m <= 0)."""
  real = [padding_from is None or i < padding_from for i in range(n)]
  is_g = [i in glob and real[i] for i in range(n)]
  out = np.zeros((len(dilations), n, n), bool)
  for h, d in enumerate(dilations):
    for i in range(n):
      for j in range(n):
        if not (real[i] and real[j]):
          continue
        if is_g[i] or is_g[j]:
          out[h, i, j] = True
        elif (j - i) % d == 0:
          m = (j - i) // d
          out[h, i, j] = -window <= m <= (0 if causal else window)
  return out


CASES = [
    # (n, window, dilations, causal, global positions, padding_from)
    (13, 2, [1], False, (), None),
    (13, 2, [1, 2, 3], False, (), None),
    (13, 2, [1, 2, 3], True, (), None),
    (13, 3, [1, 2], False, (0, 6), None),
    (13, 2, [1, 2], False, (0, 6, 12), 11),  # a global flag on padding
    (9, 20, [1], True, (), 7),  # window past the sequence: full causal
]


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("case", CASES)
def test_pattern_is_the_definition(case, impl, fast_compiles):
  n, w, dil, causal, glob, pad = case
  got = viz.attention_pattern(n, window=w, dilation=dil, causal=causal,
                              global_positions=glob, padding_from=pad,
                              impl=impl)
  np.testing.assert_array_equal(got, rule(n, w, dil, causal, glob, pad))


def test_drawn_image_marks_window_and_global_cells(fast_compiles):
  n, glob = 11, (0, 5)
  pattern = viz.attention_pattern(n, window=2, dilation=[1, 2],
                                  global_positions=glob)
  want = rule(n, 2, [1, 2], False, glob)
  fig = viz.pattern_figure([("d=1", pattern[0], glob),
                            ("d=2", pattern[1], glob),
                            ("refused", None, ())], ncols=2)
  for h in range(2):
    img = np.asarray(fig.axes[h].get_images()[0].get_array())
    kinds = np.full((n, n), viz.NONE)
    for i in range(n):
      for j in range(n):
        if want[h, i, j]:
          kinds[i, j] = viz.GLOBAL if (i in glob or j in glob) else (
              viz.WINDOW)
    np.testing.assert_array_equal(img, kinds)
  assert not fig.axes[2].get_images() and fig.axes[2].get_title() == (
      "refused")
  assert not fig.axes[3].axison  # the unused fourth cell


def test_pattern_errors():
  with pytest.raises(ValueError, match="n: expected an int >= 1"):
    viz.attention_pattern(0, window=1)
  with pytest.raises(ValueError, match=r"global_positions: .*\[0, 8\)"):
    viz.attention_pattern(8, window=1, global_positions=[8])
  with pytest.raises(ValueError, match="global_mask"):  # the library's own
    viz.attention_pattern(8, window=1, causal=True, global_positions=[0])


def softmax_rows(s, allowed):
  s = np.where(allowed, s, -np.inf)
  m = np.max(s, axis=-1, keepdims=True)
  e = np.where(allowed, np.exp(s - np.where(np.isfinite(m), m, 0)), 0.0)
  z = e.sum(-1, keepdims=True)
  return e / np.where(z == 0, 1, z)


def test_dense_probabilities_match_a_brute_force_softmax():
  rng = np.random.default_rng(0)
  b, n, h, d, w, dil = 2, 19, 3, 4, 3, [1, 2, 3]
  q, k, qg, kg = (rng.standard_normal((b, n, h, d)).astype(np.float32)
                  for _ in range(4))
  glob = [(0, 7), (5,)]
  gmask = np.zeros((b, n), bool)
  for i, g in enumerate(glob):
    gmask[i, list(g)] = True
  pad = [None, 16]
  kmask = np.array([[p is None or j < p for j in range(n)] for p in pad])
  # Jitted: eager, its many small ops dispatch one by one.
  local, global_ = jax.jit(lambda q, k, km, gm, qg, kg: (
      probs.attention_probabilities(q, k, window=w, dilation=dil,
                                    key_mask=km, global_mask=gm,
                                    global_qk=(qg, kg), max_global=2)))(
                                        q, k, kmask, gmask, qg, kg)
  for i in range(b):
    allowed = rule(n, w, dil, False, glob[i], pad[i])
    for hh in range(h):
      got = viz.dense_probabilities(local, global_, window=w, dilation=dil,
                                    global_mask=gmask, key_mask=kmask,
                                    batch=i, head=hh)
      want = softmax_rows(q[i, :, hh] @ k[i, :, hh].T / np.sqrt(d),
                          allowed[hh])
      wg = softmax_rows(qg[i, :, hh] @ kg[i, :, hh].T / np.sqrt(d),
                        np.broadcast_to(kmask[i][None], (n, n)))
      for g in glob[i]:
        want[g] = wg[g]
      np.testing.assert_allclose(got, want, atol=1e-6)
  with pytest.raises(ValueError, match="global_: expected the layer's"):
    viz.dense_probabilities(local, None, window=w, dilation=dil,
                            global_mask=gmask)
  with pytest.raises(ValueError, match="local: expected 7 window columns"):
    viz.dense_probabilities(local[..., :6], None, window=w)


def test_dense_probabilities_of_a_model_cover_its_pattern_only(
    fast_compiles):
  cfg = LongformerConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=40, attention_window=4,
                         attention_dilation=[[1, 2]])
  model = LongformerModel(cfg, rngs=nnx.Rngs(0))
  n, glob = 24, (0, 9)
  ids = jnp.asarray(np.random.default_rng(1).integers(3, 50, (1, n)))
  gmask = np.zeros((1, n), bool)
  gmask[0, list(glob)] = True
  # Jitted (eager model calls dispatch op by op); columns = max_global = 2.
  out = nnx.jit(lambda m, ids, g: m(ids, global_attention_mask=g,
                                    output_attentions=True, max_global=2))(
                                        model, ids, jnp.asarray(gmask))
  allowed = rule(n, 2, [1, 2], False, glob)
  for hh in range(2):
    p = viz.dense_probabilities(out.attentions[0], out.global_attentions[0],
                                window=2, dilation=[1, 2], global_mask=gmask,
                                head=hh)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert (p[~allowed[hh]] == 0).all() and (p[allowed[hh]] > 0).all()


def test_compiled_peak_counts_arguments_and_outputs():
  spec = jax.ShapeDtypeStruct((256, 1024), jnp.float32)  # 1 MiB
  peak = viz.compiled_peak_bytes(lambda x: x * 2.0, spec)
  assert 2 * 2**20 <= peak < 2.5 * 2**20


def test_attention_peak_grows_as_the_implementation_says():
  h, w = 2, 8
  mem = {(impl, n): viz.attention_peak_bytes(n, impl=impl, window=w,
                                             heads=h, head_dim=8)
         for impl in ("dense", "chunked") for n in (256, 1024)}
  # The dense oracle holds at least one float32 [H, N, N] score tensor.
  assert mem["dense", 1024] >= 4 * h * 1024**2
  assert mem["dense", 1024] / mem["dense", 256] > 10  # ~16x for 4x length
  assert mem["chunked", 1024] / mem["chunked", 256] < 6  # ~4x
  assert mem["chunked", 1024] < mem["dense", 1024] / 4
