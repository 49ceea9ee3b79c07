"""Remat policies (lfjax.models.remat, model.remat_policy): the same loss
and gradients as the model without remat, what each policy recomputes, the
host moves of "offload", and the config errors."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lfjax.models import remat
from lfjax.models.charlm import CharLM, CharLMConfig
from lfjax.tasks import charlm_defaults
from tests import remat_cases
from tests.test_parallel import eight_device_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Dropout on, so the key path is exercised; two dilation groups in layer 1.
TINY = dict(remat_cases.TINY, attention_impl="chunked")


def tokens():
  return jax.random.randint(jax.random.key(0), (2, 24), 0, 27)


def loss_fn(graphdef):
  def loss(state, x):
    m = nnx.merge(graphdef, state)
    return jnp.mean(m(x, dropout_key=jax.random.key(5)) ** 2)
  return loss


def grads_and_jaxpr(**overrides):
  model = CharLM(CharLMConfig(**dict(TINY, **overrides)), rngs=nnx.Rngs(1))
  graphdef, state = nnx.split(model)
  fn = jax.value_and_grad(loss_fn(graphdef))
  x = tokens()
  return jax.jit(fn)(state, x), str(jax.make_jaxpr(fn)(state, x))


@pytest.fixture(scope="module")
def no_remat():
  return grads_and_jaxpr()


@pytest.mark.usefixtures("fast_compiles")
@pytest.mark.parametrize("policy", remat.POLICIES)
def test_policy_equals_no_remat(policy, no_remat):
  """Loss and every parameter gradient equal the model's without remat
  (float32; only XLA's fusion order differs). The band attention's
  forward (a scan each) runs again in the backward under "nothing" only:
  "attention" and "offload" keep its output."""
  (want_loss, want), want_jaxpr = no_remat
  (loss, got), jaxpr = grads_and_jaxpr(remat=True, remat_policy=policy)
  assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
  for (path, a), b in zip(jax.tree.leaves_with_path(got),
                          jax.tree.leaves(want)):
    scale = float(np.max(np.abs(b)))
    np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0,
                               err_msg=jax.tree_util.keystr(path))
  scans, want_scans = jaxpr.count("scan["), want_jaxpr.count("scan[")
  if policy == "nothing":
    assert scans > want_scans
  else:
    assert scans == want_scans


def test_offload_moves_saved_arrays_to_host_on_gpu():
  """Lowered for CUDA (no GPU needed), "offload" puts each layer's block
  input and attention output + log-sum-exp in pinned_host memory and
  brings them back; "attention" moves nothing. On CPU jax lowers these
  moves to nothing, which is why the trainer refuses "offload" there."""
  def placements(policy):
    model = CharLM(CharLMConfig(**dict(TINY, remat=True,
                                       remat_policy=policy)),
                   rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(model)
    lowered = jax.jit(jax.grad(loss_fn(graphdef))).trace(
        state, tokens()).lower(lowering_platforms=("cuda",))
    text = lowered.as_text()
    return (text.count('_xla_buffer_placement = "pinned_host"'),
            text.count('_xla_buffer_placement = "device"'))
  # Per layer: the block input, and out and lse of each band call (layer
  # 0: one; layer 1: its undilated and dilated heads, two).
  want = 1 + 2 * 1 + 1 + 2 * 2
  assert placements("offload") == (want, want)
  assert placements("attention") == (0, 0)


@pytest.fixture(scope="module")
def mesh_results(tmp_path_factory):
  out = tmp_path_factory.mktemp("remat") / "results.json"
  proc = subprocess.run([sys.executable, "-m", "tests.remat_cases",
                         str(out)], cwd=ROOT, env=eight_device_env(),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  res = json.loads(out.read_text())
  assert "exception" not in res, res["exception"]
  assert res["devices"] == 8
  return res


def test_policies_on_sequence_parallel_mesh(mesh_results):
  """Mesh seq 4 (halo exchange, two hops in layer 1): each policy's loss
  and gradients equal one device without remat; "attention" keeps the
  received halos, so its gradient has no more ppermutes than without
  remat, while "nothing" repeats the exchange."""
  res = mesh_results
  for label in ("no_remat", "nothing", "attention"):
    assert res[label]["loss_err"] < 1e-6, (label, res[label])
    assert res[label]["grad_err"] < 2e-5, (label, res[label])
  assert res["attention"]["ppermutes"] == res["no_remat"]["ppermutes"] > 0
  assert res["nothing"]["ppermutes"] > res["no_remat"]["ppermutes"]


def config(**model):
  c = charlm_defaults.base_config()
  for k, v in model.items():
    c.model[k] = v
  return c


@pytest.mark.parametrize("model,pattern", [
    (dict(remat=True, remat_policy="halo"),
     r"config\.model\.remat_policy: expected one of \['nothing', "
     r"'attention', 'offload'\], got 'halo'"),
    (dict(remat=False, remat_policy="attention"),
     r"config\.model\.remat_policy: 'attention' applies only with "
     r"model\.remat True"),
    (dict(remat=True, remat_policy="offload"),
     r"config\.model\.remat_policy: 'offload' needs a GPU or TPU: on CPU "
     r"jax .* lowers the move to pinned_host memory to nothing"),
])
def test_config_errors(model, pattern):
  assert jax.default_backend() == "cpu"
  with pytest.raises(ValueError, match=pattern):
    charlm_defaults.validate(config(**model))


def test_config_accepts_policies_and_old_configs():
  for model in (dict(remat=True, remat_policy="attention"),
                dict(remat=True, remat_policy="nothing"), dict()):
    charlm_defaults.validate(config(**model))
  # A run's config.json from before the field: CharLMConfig's default.
  assert CharLMConfig(**dict(TINY, remat=True)).remat_policy == "nothing"
  with pytest.raises(ValueError, match=r"remat_policy: expected one of"):
    CharLMConfig(**dict(TINY, remat_policy="all"))


def test_remat_call_rejects_unknown_policy():
  block = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"policy: expected one of"):
    remat.remat_call(lambda m, x: m(x), block, jnp.ones((1, 2)),
                     policy="everything")


# The Longformer encoder (LongformerConfig.remat) ---------------------------


def encoder_loss_and_grads(**overrides):
  """(loss, grads) of an MLM-shaped loss of a tiny LongformerForMaskedLM in
  training mode (hidden and attention dropout 0.1, a global token, padding)
  under jit, reseeded with one key as the MLM trainer does."""
  from lfjax.models import LongformerConfig
  from lfjax.models import LongformerForMaskedLM
  cfg = LongformerConfig(
      vocab_size=40, hidden_size=16, num_hidden_layers=2,
      num_attention_heads=2, intermediate_size=32, max_position_embeddings=40,
      type_vocab_size=1, attention_window=[4, 8], max_global=1,
      attention_impl="chunked", **overrides)
  model = LongformerForMaskedLM(cfg, rngs=nnx.Rngs(2))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  ids = jax.random.randint(jax.random.key(0), (2, 23), 3, 40)
  mask = jnp.ones((2, 23), bool).at[1, 17:].set(False)
  glob = jnp.zeros((2, 23), bool).at[:, 0].set(True)

  def loss(params):
    m = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))
    nnx.reseed(m, default=jax.random.key(7))
    logits = m(ids, attention_mask=mask, global_attention_mask=glob).logits
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 5] * mask)

  fn = jax.value_and_grad(loss)
  return jax.jit(fn)(params), str(jax.make_jaxpr(fn)(params))


@pytest.mark.usefixtures("fast_compiles")
@pytest.mark.parametrize("policy", remat.POLICIES)
def test_encoder_remat_equals_no_remat(policy):
  """The encoder with remat (each policy; "offload" keeps what "attention"
  keeps on CPU) computes the loss and every gradient of the encoder
  without it, dropout on: the layers' dropout keys are explicit."""
  (want_loss, want), want_jaxpr = encoder_loss_and_grads()
  (loss, got), jaxpr = encoder_loss_and_grads(remat=True,
                                              remat_policy=policy)
  # One remat per layer: its backward waits behind an optimization barrier.
  assert want_jaxpr.count("optimization_barrier") == 0
  assert jaxpr.count("optimization_barrier") >= 2
  assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
  leaves = jax.tree.leaves(want)
  assert any(float(np.max(np.abs(b))) > 0 for b in leaves)
  for (path, a), b in zip(jax.tree.leaves_with_path(got), leaves):
    scale = max(float(np.max(np.abs(b))), 1e-30)
    np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0,
                               err_msg=jax.tree_util.keystr(path))


def test_encoder_remat_policy_is_checked():
  from lfjax.models import LongformerConfig
  with pytest.raises(ValueError, match=r"remat_policy: expected one of "
                     r"\['nothing', 'attention', 'offload'\], got 'all'"):
    LongformerConfig(remat_policy="all")
