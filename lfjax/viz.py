"""Pictures of Longformer attention, for the notebook and the experiments.

- attention_pattern: which keys each query attends, read off
  windowed_attention's own output (not redrawn from the paper), for any
  window, per-head dilation, causal band, global tokens and padding;
  draw_pattern / pattern_figure show them as the paper's Figure 2 does.
- dense_probabilities / draw_probabilities: a model's `output_attentions`
  (transformers' Longformer layout) put back on the [N, N] grid of
  query x key, and drawn as a heatmap.
- compiled_peak_bytes / attention_peak_bytes: XLA's compiled peak memory
  of a function (no run), e.g. of attention as the sequence grows.

Figures are drawn with matplotlib's object API on an Agg canvas
(lfjax.plot.new_figure): no display needed, pyplot's backend untouched, and
a notebook shows the returned figures inline.
"""

import numbers

import jax
import jax.numpy as jnp
import matplotlib.colors as mcolors
import numpy as np

from lfjax import plot
from lfjax.attention import windowed_attention

# Cell kinds of a drawn pattern.
NONE, WINDOW, GLOBAL = 0, 1, 2
# White: not attended; blue: a window key; orange: a global token's row or
# column (the paper's Figure 2 colours them apart the same way).
PATTERN_CMAP = mcolors.ListedColormap(["#ffffff", "#4c72b0", "#dd8452"])


def attention_pattern(n, *, window, dilation=1, causal=False,
                      global_positions=(), padding_from=None, impl="dense"):
  """Which keys each query attends, as windowed_attention computes it.

  Runs windowed_attention with zero queries and keys (every allowed key
  gets the same score, so the same weight) and one-hot values (so output
  row i, head h IS its attention weights over the N keys): the allowed set
  is exactly where the weight is positive, whatever the implementation.

  Args:
    n: sequence length (a few hundred at most: values are N wide).
    window, dilation, causal: as windowed_attention (window one-sided;
      dilation an int or one per head).
    global_positions: positions of global tokens (not with causal).
    padding_from: positions >= this are padding (None: no padding).
    impl: windowed_attention's impl ("dense", "chunked", ...).

  Returns:
    bool numpy array [H, N, N], H = number of dilations given (1 for an
    int): [h, i, j] is True when query i attends key j in head h.

  Raises:
    ValueError: n < 1, a global position outside [0, n), or any argument
      windowed_attention refuses (with its message).
  """
  if not isinstance(n, numbers.Integral) or n < 1:
    raise ValueError(f"n: expected an int >= 1, got {n!r}")
  h = 1 if isinstance(dilation, numbers.Integral) else len(dilation)
  pos = np.asarray(global_positions, dtype=np.int64).reshape(-1)
  if pos.size and (pos.min() < 0 or pos.max() >= n):
    raise ValueError(f"global_positions: expected positions in [0, {n}), "
                     f"got {pos.tolist()}")
  zeros = jnp.zeros((1, n, h, 1), jnp.float32)
  onehot = jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32)[None, :, None, :],
                            (1, n, h, n))
  kwargs = {}
  if pos.size:
    kwargs["global_mask"] = jnp.zeros((1, n), bool).at[0, pos].set(True)
  if padding_from is not None:
    kwargs["key_mask"] = (jnp.arange(n) < padding_from)[None]
  out = windowed_attention(zeros, zeros, onehot, window=window,
                           dilation=dilation, causal=causal, impl=impl,
                           **kwargs)
  return np.asarray(out[0] > 0).transpose(1, 0, 2)


def pattern_kinds(pattern_NxN, global_positions=()):
  """int [N, N]: NONE where not attended; GLOBAL where attended and the
  query or the key is a global token; WINDOW for the other attended cells."""
  p = np.asarray(pattern_NxN, bool)
  is_g = np.zeros(p.shape[0], bool)
  is_g[np.asarray(global_positions, dtype=np.int64)] = True
  kinds = np.where(p, WINDOW, NONE)
  return np.where(p & (is_g[:, None] | is_g[None, :]), GLOBAL, kinds)


def draw_pattern(ax, pattern_NxN, *, global_positions=(), title=None):
  """Draws one head's pattern (attention_pattern(...)[h]) on ax; queries
  are rows, keys columns. Returns the AxesImage, whose array is
  pattern_kinds(pattern_NxN, global_positions)."""
  kinds = pattern_kinds(pattern_NxN, global_positions)
  n = kinds.shape[0]
  im = ax.imshow(kinds, cmap=PATTERN_CMAP, vmin=NONE, vmax=GLOBAL,
                 interpolation="nearest")
  # Cell borders make individual keys countable at small N.
  ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
  ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
  ax.grid(which="minor", color="#dddddd", lw=0.3)
  ax.tick_params(which="both", length=0, labelsize=7)
  ax.set_xlabel("key", fontsize=8)
  ax.set_ylabel("query", fontsize=8)
  if title:
    ax.set_title(title, fontsize=9)
  return im


def pattern_figure(panels, *, ncols=4, size=2.6):
  """A grid of drawn patterns.

  panels: [(title, pattern_NxN or None, global_positions)]; None draws an
  empty panel with the title (e.g. a combination the library refuses).
  Returns the Figure.
  """
  rows = -(-len(panels) // ncols)
  fig = plot.new_figure(figsize=(size * ncols, size * rows))
  axes = fig.subplots(rows, ncols, squeeze=False)
  for ax, (title, pattern, glob) in zip(axes.flat, panels):
    if pattern is None:
      ax.set_title(title, fontsize=9)
      ax.axis("off")
      continue
    draw_pattern(ax, pattern, global_positions=glob, title=title)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.tight_layout()
  return fig


def dense_probabilities(local, global_=None, *, window, dilation=1,
                        global_mask=None, key_mask=None, batch=0, head=0):
  """A model's attention probabilities for one sequence and head on the
  [N, N] grid (query rows, key columns), from transformers' layout.

  Args:
    local: [B, H, N, G + 2w + 1], a layer's `attentions` (lfjax models with
      output_attentions=True, or transformers' Longformer): columns 0..G-1
      are the weights on the global tokens in sequence order, column
      G + w + m the weight on key i + m*d.
    global_: [B, H, N, G], the layer's `global_attentions` ([.., j, g]: the
      g-th global token's weight on key j), or None without global tokens.
    window: the layer's ONE-SIDED window (w).
    dilation: the layer's dilation, an int or one per head.
    global_mask, key_mask: the [B, N] masks the model ran with (bool or
      0/1; key_mask False/0 = padding). Global tokens on padding do not
      count, as in the model.
    batch, head: which sequence and head.

  Returns:
    float32 numpy [N, N]; each non-padding row sums to 1, padding rows 0.

  Raises:
    ValueError: local not 4-D or narrower than 2w + 1 columns; global
      tokens without global_.
  """
  local = np.asarray(local, np.float32)
  if local.ndim != 4:
    raise ValueError(f"local: expected [batch, heads, seq, G + 2w + 1], got "
                     f"shape {local.shape}")
  b, h, n, cols = local.shape
  dil = (dilation if isinstance(dilation, numbers.Integral)
         else list(dilation)[head])
  keep = (np.ones(n, bool) if key_mask is None
          else np.asarray(key_mask, bool)[batch])
  g_pos = np.zeros(0, np.int64)
  if global_mask is not None:
    g_pos = np.flatnonzero(np.asarray(global_mask, bool)[batch] & keep)
  g = cols - (2 * window + 1)
  if g < 0:
    raise ValueError(f"local: expected {2 * window + 1} window columns plus "
                     f"one per global token for window={window}, got "
                     f"{cols} columns")
  # Under jit a model has max_global columns: tokens past them were local.
  g_pos = g_pos[:g]
  if g_pos.size and global_ is None:
    raise ValueError("global_: expected the layer's global_attentions "
                     f"[B, H, N, G] (global_mask has {g_pos.size} global "
                     "tokens), got None")
  out = np.zeros((n, n), np.float32)
  rows = np.arange(n)
  lp = local[batch, head]
  for c in range(2 * window + 1):
    j = rows + (c - window) * dil
    ok = (j >= 0) & (j < n)
    np.add.at(out, (rows[ok], j[ok]), lp[ok, g + c])
  for slot, p in enumerate(g_pos):
    out[:, p] += lp[:, slot]
  if g_pos.size:
    gp = np.asarray(global_, np.float32)[batch, head]  # [N, G]
    for slot, p in enumerate(g_pos):
      out[p, :] = gp[:, slot]
  out[~keep] = 0.0
  return out


def draw_probabilities(ax, probs_NxN, *, global_positions=(), tokens=None,
                       title=None, gamma=0.5):
  """Heatmap of [N, N] probabilities (dense_probabilities) on ax.

  gamma < 1 brightens small weights (a power-law colour scale) so a wide
  window's spread-out rows stay visible next to peaked ones. Rows of global
  tokens are marked on the left edge; tokens (N strings) label the axes
  when N is small. Returns the AxesImage (its array is probs_NxN).
  """
  p = np.asarray(probs_NxN, np.float32)
  n = p.shape[0]
  im = ax.imshow(p, cmap="viridis", interpolation="nearest",
                 norm=mcolors.PowerNorm(gamma, vmin=0.0,
                                        vmax=max(float(p.max()), 1e-9)))
  for g in global_positions:
    ax.plot([-1.5], [g], marker=">", color="#dd8452", ms=5, clip_on=False)
  if tokens is not None and n <= 64:
    ax.set_xticks(range(n))
    ax.set_xticklabels([repr(t)[1:-1] for t in tokens], rotation=90,
                       fontsize=6)
    ax.set_yticks(range(n))
    ax.set_yticklabels([repr(t)[1:-1] for t in tokens], fontsize=6)
  ax.set_xlabel("key")
  ax.set_ylabel("query")
  if title:
    ax.set_title(title, fontsize=9)
  return im


def compiled_peak_bytes(fn, *args):
  """XLA's peak memory of jax.jit(fn) at these arguments, compiled, not
  run: arguments + outputs + temporaries - aliased (donated) bytes, the
  buffer assignment that decides an out-of-memory error.

  args: arrays or jax.ShapeDtypeStruct (nothing is allocated).
  Returns an int in bytes, or None when the backend reports no analysis.
  """
  m = jax.jit(fn).lower(*args).compile().memory_analysis()
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes
             + m.temp_size_in_bytes - m.alias_size_in_bytes)


def attention_peak_bytes(n, *, impl, window, heads=2, head_dim=32, batch=1,
                         dilation=1, backward=True, dtype=jnp.float32):
  """Compiled peak bytes of windowed_attention (forward, or forward and
  the gradients of q, k and v) at sequence length n; nothing runs.

  impl: "dense" or "chunked" (what windowed_attention takes).
  Returns an int (bytes) or None (see compiled_peak_bytes).
  """
  spec = jax.ShapeDtypeStruct((batch, n, heads, head_dim), dtype)

  def fwd(q, k, v):
    return windowed_attention(q, k, v, window=window, dilation=dilation,
                              impl=impl)

  if not backward:
    return compiled_peak_bytes(fwd, spec, spec, spec)

  def loss(q, k, v):
    return jnp.sum(fwd(q, k, v).astype(jnp.float32) * q)

  return compiled_peak_bytes(jax.grad(loss, argnums=(0, 1, 2)), spec, spec,
                             spec)
