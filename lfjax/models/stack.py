"""The encoder's layer stack: a Python loop over per-layer modules, or
(LongformerConfig.scan_layers) one `lax.scan` per run of consecutive layers
that trace alike, so that the program holds each run's layer once and
compile time grows far less with depth.

With scan_layers the model holds each run as a LayerRun: one Layer whose
parameters are stacked, [L, ...] per leaf, so that the train step (gradient
accumulation, clipping, AdamW) also sees one array per parameter kind, not
one per layer. A run of one layer is called as in the loop. The parameters
are those of the per-layer model at the same seed (LayerRun stacks freshly
built layers); lfjax.convert reads and writes transformers' per-layer layout
either way (`copy_params` converts). A layer's trace depends on its
parameters' shapes (the same for all), its one-sided window and its
dilation (static Python ints in SelfAttention): layers with equal (window,
dilation) form a run.

Every layer gets the dropout key the loop gives it, and remat wraps each
layer inside the scan body as in the loop: values and gradients are the
loop's up to float32 rounding (XLA fuses the scanned body alone, the
loop's layers with their neighbours: tests/test_scan.py).

Letters: B batch, N sequence, E hidden, L layers of a run.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lfjax.models import remat

# The LayerRun attribute holding the stacked layer: a parameter path through
# it has a leading layer axis.
STACKED = "stacked"


def layer_runs(cfg):
  """[(start, stop), ...]: the ranges of consecutive layers of `cfg` with
  the same full window and dilation, in order, covering every layer."""
  freeze = lambda d: tuple(d) if isinstance(d, (list, tuple)) else d
  sig = [(w, freeze(d)) for w, d in zip(cfg.windows(), cfg.dilations())]
  runs, start = [], 0
  for i in range(1, len(sig) + 1):
    if i == len(sig) or sig[i] != sig[start]:
      runs.append((start, i))
      start = i
  return runs


class LayerRun(nnx.Module):
  """Consecutive layers of equal static structure as one Layer module whose
  parameters have a leading axis of length `count` (layer j of the run at
  index j). Built from the per-layer modules (their values, stacked); the
  dropout modules' RNG streams are the first layer's, never drawn from
  here: each layer gets an explicit key or has dropout off."""

  def __init__(self, layers):
    graphdef, _, rest = nnx.split(layers[0], nnx.Param, ...)
    params = jax.tree.map(lambda *p: jnp.stack(p),
                          *[nnx.state(layer, nnx.Param) for layer in layers])
    setattr(self, STACKED, nnx.merge(graphdef, params, rest))
    self.count = len(layers)


def is_stacked(path):
  """Whether a parameter's pytree path (jax.tree_util key path of a model's
  nnx.Param state) runs through a LayerRun: its leaf has a leading layer
  axis."""
  return any(getattr(k, "key", None) == STACKED for k in path)


def decay_mask(params):
  """AdamW's weight-decay mask for a model's nnx.Param state: True for
  matrices (kernels, embedding tables), False for vectors (biases, LayerNorm
  scales), a stacked run's layer axis not counted (so scan_layers decays
  the same parameters as the loop)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x.ndim - is_stacked(path) >= 2, params)


def _param_paths(model):
  return {path: v for path, v in nnx.iter_graph(model)
          if isinstance(v, nnx.Param)}


def copy_params(src, dst):
  """Copies every parameter of model src into dst: the same model (class,
  config, head) but for scan_layers, so layer i of the one is slice j of
  run r of the other (r, j from layer_runs). Values are converted to dst's
  parameter dtype; src's may be numpy arrays. Returns dst. Raises
  ValueError when both have the same scan_layers (nothing to convert)."""
  if src.cfg.scan_layers == dst.cfg.scan_layers:
    raise ValueError(f"copy_params: expected models that differ in "
                     f"scan_layers, got {src.cfg.scan_layers} for both")
  runs = layer_runs(dst.cfg)
  where = {i: (r, i - a) for r, (a, b) in enumerate(runs) for i in range(a, b)}
  src_p, dst_p = _param_paths(src), _param_paths(dst)
  scanned = dst.cfg.scan_layers

  def split_path(path):
    # (prefix through "layers", index, rest) or None outside the layers.
    for k in range(len(path) - 1):
      if path[k] == "layers" and isinstance(path[k + 1], int):
        return path[:k + 1], path[k + 1], path[k + 2:]
    return None

  for path, param in dst_p.items():
    parts = split_path(path)
    dtype = param.get_value().dtype
    if parts is None:
      value = np.asarray(src_p[path].get_value())
    elif scanned:  # dst run r <- src layers a..b-1, stacked
      pre, r, rest = parts
      a, b = runs[r]
      value = np.stack([np.asarray(src_p[pre + (i,) + rest[1:]].get_value())
                        for i in range(a, b)])
    else:  # dst layer i <- slice j of src run r
      pre, i, rest = parts
      r, j = where[i]
      value = np.asarray(src_p[pre + (r, STACKED) + rest].get_value())[j]
    param.set_value(jnp.asarray(value, dtype))
  return dst


def _call(layer, x_BxNxE, key_mask_BxN, global_mask_BxN, key, *, cfg, cap,
          output_attentions):
  """One layer as the loop runs it: (output [B, N, E], probabilities or
  None). With cfg.remat (and no attention probabilities asked for) it is
  recomputed in the backward pass, in layer order (lfjax.models.remat)."""
  if cfg.remat and not output_attentions:
    return remat.remat_call(
        lambda lyr, x, km, gm, k: lyr(x, km, gm, False, cap, k)[0],
        layer, x_BxNxE, key_mask_BxN, global_mask_BxN, key,
        policy=cfg.remat_policy), None
  return layer(x_BxNxE, key_mask_BxN, global_mask_BxN, output_attentions,
               cap, key)


def _run(run, x_BxNxE, key_mask_BxN, global_mask_BxN, keys, *, cfg, cap,
         output_attentions, output_hidden_states):
  """A LayerRun: its one layer called as in the loop, or its layers under
  lax.scan.

  keys: the run's dropout keys, [L] (or None: dropout off).
  Returns (output [B, N, E], per-layer outputs, per-layer probabilities
  (local, global)), the last two as lists of L (entries None unless
  output_hidden_states / output_attentions)."""
  graphdef, params, rest = nnx.split(getattr(run, STACKED), nnx.Param, ...)
  call = dict(cfg=cfg, cap=cap, output_attentions=output_attentions)
  if run.count == 1 or output_attentions:
    # A run of one; or the analysis path, whose probabilities take as many
    # global columns as the concrete masks have global tokens: a count a
    # scan body (traced) cannot read. The layers one by one, as the loop.
    hidden, probs = [], []
    for j in range(run.count):
      layer = nnx.merge(graphdef, jax.tree.map(lambda p, j=j: p[j], params),
                        rest)
      x_BxNxE, p = _call(layer, x_BxNxE, key_mask_BxN, global_mask_BxN,
                         None if keys is None else keys[j], **call)
      hidden.append(x_BxNxE)
      probs.append(p)
    return x_BxNxE, hidden, probs

  def body(x, xs):
    p, key = xs
    layer = nnx.merge(graphdef, p, rest)
    y, probs = _call(layer, x, key_mask_BxN, global_mask_BxN, key, **call)
    return y, (y if output_hidden_states else None, probs)

  y, (hidden_L, probs_L) = jax.lax.scan(body, x_BxNxE, (params, keys))
  unstack = lambda t: [None if t is None else jax.tree.map(
      lambda a, j=j: a[j], t) for j in range(run.count)]
  return y, unstack(hidden_L), unstack(probs_L)


def run_layers(layers, x_BxNxE, key_mask_BxN, global_mask_BxN, keys, *, cfg,
               cap, output_attentions=False, output_hidden_states=False):
  """The encoder's layers on the embeddings' output x_BxNxE.

  layers: LongformerModel.layers (Layer modules, or LayerRuns with
  cfg.scan_layers); key_mask_BxN bool; global_mask_BxN bool or None; keys:
  one dropout key per layer ([num_hidden_layers] key array) or None
  (dropout off); cap: the static global-token cap (max_global) or None.
  cfg.remat / remat_policy remat each layer. output_attentions (the dense
  analysis path) calls the layers one by one, scan_layers or not.

  Returns (last output [B, N, E], each layer's output (a list, empty
  unless output_hidden_states), each layer's probabilities (local, global)
  (a list, empty unless output_attentions)).
  """
  call = dict(cfg=cfg, cap=cap, output_attentions=output_attentions)
  hidden, probs = [], []
  start = 0
  for module in layers:
    if cfg.scan_layers:
      n = module.count
      x_BxNxE, hs, ps = _run(
          module, x_BxNxE, key_mask_BxN, global_mask_BxN,
          None if keys is None else keys[start:start + n],
          output_hidden_states=output_hidden_states, **call)
    else:
      n = 1
      x_BxNxE, p = _call(module, x_BxNxE, key_mask_BxN, global_mask_BxN,
                         None if keys is None else keys[start], **call)
      hs, ps = [x_BxNxE], [p]
    start += n
    if output_hidden_states:
      hidden += hs
    if output_attentions:
      probs += ps
  return x_BxNxE, hidden, probs
