"""Scanned encoder layers (LongformerConfig.scan_layers, lfjax.models.stack)
against the Python loop, which is the reference: the same parameters at the
same seed, the same outputs and gradients (dropout on, global tokens,
padding, remat with each policy, bfloat16), runs of layers split where the
window changes, and the weight-decay mask. Parity with transformers'
PyTorch model with scan on: tests/test_hf_model_parity.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lfjax.models import LongformerConfig
from lfjax.models import LongformerForMaskedLM
from lfjax.models import LongformerModel
from lfjax.models import remat
from lfjax.models import stack

# Windows [4, 4, 8, 8, 8, 6]: runs of 2, 3 and 1 layers (the last one is
# called without a scan). Dropout 0.1 (the defaults) in training mode.
CFG = LongformerConfig(
    vocab_size=40, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
    intermediate_size=32, max_position_embeddings=40, type_vocab_size=1,
    attention_window=[4, 4, 8, 8, 8, 6], max_global=2,
    attention_impl="chunked")


def inputs():
  ids = jax.random.randint(jax.random.key(0), (2, 23), 3, 40)
  mask = jnp.ones((2, 23), bool).at[1, 17:].set(False)
  glob = jnp.zeros((2, 23), bool).at[:, 0].set(True).at[0, 9].set(True)
  return ids, mask, glob


def per_layer(model):
  """model's parameters in the loop's layout (a scanned model unstacked)."""
  if not model.cfg.scan_layers:
    return model
  twin = LongformerForMaskedLM(
      dataclasses.replace(model.cfg, scan_layers=False), rngs=nnx.Rngs(9))
  return stack.copy_params(model, twin)


def loss_and_grads(**overrides):
  """(loss, gradients in the loop's layout, the model) of an MLM-shaped
  loss in training mode under jit, reseeded with one key as the trainer
  does."""
  cfg = dataclasses.replace(CFG, **overrides)
  model = LongformerForMaskedLM(cfg, rngs=nnx.Rngs(2))
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  ids, mask, glob = inputs()

  def loss(params):
    m = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))
    nnx.reseed(m, default=jax.random.key(7))
    out = m(ids, attention_mask=mask, global_attention_mask=glob,
            output_hidden_states=True)
    lp = jax.nn.log_softmax(out.logits)[..., 5] * mask
    # The hidden states too: their gradient flows into the scan's outputs.
    h = sum(jnp.mean(x.astype(jnp.float32) ** 2) for x in out.hidden_states)
    return -jnp.mean(lp) + 1e-3 * h

  fn = jax.value_and_grad(loss)
  value, grads = jax.jit(fn)(params)
  nnx.update(model, grads)  # the model now holds the gradients
  return (float(value), nnx.state(per_layer(model), nnx.Param),
          str(jax.make_jaxpr(fn)(params)))


def assert_trees_close(got, want, rel):
  leaves = jax.tree.leaves(want)
  assert any(float(np.max(np.abs(np.asarray(b, np.float32)))) > 0
             for b in leaves)
  got_leaves = jax.tree.leaves_with_path(got)
  assert len(got_leaves) == len(leaves)
  # Per leaf, relative to its largest entry; the key biases' gradients are
  # 0 up to rounding (softmax ignores a shift of the scores), so the floor
  # is a millionth of the largest gradient anywhere.
  floor = 1e-6 * max(float(np.max(np.abs(np.asarray(b, np.float32))))
                     for b in leaves)
  for (path, a), b in zip(got_leaves, leaves):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    scale = max(float(np.max(np.abs(b))), floor)
    np.testing.assert_allclose(a, b, atol=rel * scale, rtol=0,
                               err_msg=jax.tree_util.keystr(path))


def test_layer_runs_split_where_window_or_dilation_changes():
  assert stack.layer_runs(CFG) == [(0, 2), (2, 5), (5, 6)]
  cfg = dataclasses.replace(CFG, num_hidden_layers=4, attention_window=8,
                            attention_dilation=[1, [1, 2], [1, 2], 1])
  assert stack.layer_runs(cfg) == [(0, 1), (1, 3), (3, 4)]
  assert stack.layer_runs(dataclasses.replace(CFG, attention_window=8)) == [
      (0, 6)]


def test_scanned_model_holds_the_loops_parameters_stacked():
  """Same seed, same values: the scanned model's runs are the per-layer
  model's layers stacked ([L, ...] leaves), and the rest is equal too."""
  loop = LongformerForMaskedLM(CFG, rngs=nnx.Rngs(3))
  scanned = LongformerForMaskedLM(
      dataclasses.replace(CFG, scan_layers=True), rngs=nnx.Rngs(3))
  runs = scanned.longformer.layers
  assert [r.count for r in runs] == [2, 3, 1]
  kernel = runs[1].stacked.attention.query.kernel[...]
  assert kernel.shape == (3, 16, 16)
  np.testing.assert_array_equal(
      kernel[2], loop.longformer.layers[4].attention.query.kernel[...])
  want = jax.tree.leaves(nnx.state(loop, nnx.Param))
  got = jax.tree.leaves(nnx.state(per_layer(scanned), nnx.Param))
  assert len(got) == len(want) == 5 + 6 * 22 + 5
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


@pytest.mark.usefixtures("fast_compiles")
@pytest.mark.parametrize("overrides", [
    {},
    *[{"remat": True, "remat_policy": p} for p in remat.POLICIES],
], ids=["plain"] + [f"remat_{p}" for p in remat.POLICIES])
def test_scan_equals_loop_loss_and_gradients(overrides):
  """Loss and every gradient of the scanned model equal the loop's (float32:
  only XLA's fusion differs, ~1e-6 relative), with dropout on (each layer
  gets the loop's key), global tokens, padding and remat (per layer,
  inside the scan: its optimization barriers are in the program)."""
  want_loss, want, want_jaxpr = loss_and_grads(**overrides)
  loss, got, jaxpr = loss_and_grads(scan_layers=True, **overrides)
  assert loss == pytest.approx(want_loss, rel=1e-6)
  assert_trees_close(got, want, 1e-5)
  # The program holds three layer bodies (runs of 2, 3 and 1), not six
  # (the GELU's erf: once per body).
  assert jaxpr.count("erf") < want_jaxpr.count("erf")
  if overrides.get("remat"):  # remat per layer, inside the scan bodies
    assert 0 < jaxpr.count("optimization_barrier") < want_jaxpr.count(
        "optimization_barrier")


@pytest.mark.usefixtures("fast_compiles")
def test_scan_equals_loop_in_bfloat16():
  """bfloat16 compute and parameters: scanned and loop agree to bfloat16's
  rounding (each rounds its own fused intermediates)."""
  bf16 = dict(compute_dtype="bfloat16", param_dtype="bfloat16")
  want_loss, want, _ = loss_and_grads(**bf16)
  loss, got, _ = loss_and_grads(scan_layers=True, **bf16)
  assert loss == pytest.approx(want_loss, rel=1e-2)
  assert_trees_close(got, want, 3e-2)


def test_scan_equals_loop_outputs_hidden_states_and_attentions():
  """Inference with every output: hidden states and attention probabilities
  per layer (from the scan's stacked outputs) equal the loop's."""
  ids, mask, glob = inputs()
  outs = []
  for scan in (False, True):
    model = LongformerModel(dataclasses.replace(CFG, scan_layers=scan),
                            rngs=nnx.Rngs(4))
    model.eval()
    outs.append(model(ids, attention_mask=mask, global_attention_mask=glob,
                      output_hidden_states=True, output_attentions=True))
  want, got = outs
  assert len(got.hidden_states) == 7 and len(got.attentions) == 6
  assert len(got.global_attentions) == 6
  for name in ("last_hidden_state", "pooler_output", "hidden_states",
               "attentions", "global_attentions"):
    for a, b in zip(jax.tree.leaves(getattr(got, name)),
                    jax.tree.leaves(getattr(want, name))):
      assert a.shape == b.shape, name
      np.testing.assert_allclose(a, b, atol=2e-6, rtol=0, err_msg=name)


def test_weight_decay_mask_ignores_the_layer_axis():
  """AdamW decays the same parameters with scan on as off: the layers'
  kernels, not their biases or LayerNorms (a stacked bias is 2-D), and the
  embedding tables."""
  for scan in (False, True):
    model = LongformerForMaskedLM(dataclasses.replace(CFG, scan_layers=scan),
                                  rngs=nnx.Rngs(0))
    mask = stack.decay_mask(nnx.state(model, nnx.Param))
    named = {jax.tree_util.keystr(p): m
             for p, m in jax.tree.leaves_with_path(mask)}
    layer = {k: m for k, m in named.items() if "'layers'" in k}
    assert len(layer) == (22 * 3 if scan else 22 * 6)
    assert all(m == ("kernel" in k) for k, m in layer.items()), layer
    assert sum(named.values()) - sum(layer.values()) == 4  # 3 tables, lm


def test_scan_layers_must_be_a_bool():
  with pytest.raises(ValueError, match=r"scan_layers: expected True or "
                     r"False, got 'yes'"):
    LongformerConfig(scan_layers="yes")


@pytest.mark.parametrize("overrides", [dict(scan_layers=True),
                                       dict(remat=True),
                                       dict(scan_layers=True, remat=True)])
def test_eager_call_with_concrete_globals_needs_no_max_global(overrides):
  # Scan and remat trace the layers; with concrete masks the cap comes from
  # them, as the plain loop's attention reads it (found by a fresh user:
  # from_pretrained(..., remat=True, scan_layers=True) refused an eager
  # call). The plain loop without max_global is the reference.
  ids, mask, glob = inputs()
  base = dataclasses.replace(CFG, max_global=None)
  want = LongformerForMaskedLM(base, rngs=nnx.Rngs(3))
  want.eval()
  model = LongformerForMaskedLM(dataclasses.replace(base, **overrides),
                                rngs=nnx.Rngs(3))
  model.eval()
  got = model(ids, attention_mask=mask, global_attention_mask=glob)
  ref = want(ids, attention_mask=mask, global_attention_mask=glob)
  valid = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(got.logits)[valid],
                             np.asarray(ref.logits)[valid], atol=1e-5)
