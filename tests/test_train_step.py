"""lfjax.train_step: the MLM and fine-tuning optimizer step. Gradient
accumulation gives the full batch's gradient (computed here directly),
parameters and optimizer state are donated and keep their dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lfjax import train_step


def setup(param_dtype=jnp.float32):
  model = nnx.Linear(3, 2, param_dtype=param_dtype, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.standard_normal((8, 3)), jnp.float32),
           "w": jnp.asarray(rng.integers(0, 3, 8), jnp.float32)}

  def loss_fn(model, mb, key):
    del key
    per_row = jnp.sum(model(mb["x"]).astype(jnp.float32) ** 2, axis=1)
    # A weighted mean: count is the weights' sum (as MLM's masked tokens).
    return {"loss_sum": jnp.sum(per_row * mb["w"]), "count": jnp.sum(mb["w"])}

  return graphdef, params, rest, batch, loss_fn


@pytest.mark.parametrize("micro", [1, 2, 8])
def test_accumulation_gives_the_full_batch_gradient(micro):
  graphdef, params, rest, batch, loss_fn = setup()
  tx = optax.sgd(0.1)
  step = train_step.make_train_step(graphdef, rest, tx, loss_fn,
                                    batch_size=8, micro_batch_size=micro,
                                    donate=False)

  def mean_loss(p):  # the whole batch at once, by the formula
    m = nnx.merge(graphdef, p, rest)
    per_row = jnp.sum(m(batch["x"]) ** 2, axis=1)
    return jnp.sum(per_row * batch["w"]) / jnp.sum(batch["w"])

  want_loss, want_grads = jax.value_and_grad(mean_loss)(params)
  new, _, stats = step(params, tx.init(params), batch, jax.random.key(0))
  assert float(stats["loss"]) == pytest.approx(float(want_loss), rel=1e-6)
  assert float(stats["count"]) == float(jnp.sum(batch["w"]))
  for a, p, g in zip(jax.tree.leaves(new), jax.tree.leaves(params),
                     jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(a, p - 0.1 * g, rtol=1e-5, atol=1e-7)


def test_params_and_optimizer_state_are_donated_and_keep_dtypes():
  graphdef, params, rest, batch, loss_fn = setup(jnp.bfloat16)
  tx = optax.adamw(1e-2)
  opt_state = tx.init(params)
  step = train_step.make_train_step(graphdef, rest, tx, loss_fn,
                                    batch_size=8, micro_batch_size=4)
  old = jax.tree.leaves(params)
  new, new_opt, _ = step(params, opt_state, batch, jax.random.key(0))
  assert all(x.is_deleted() for x in old)
  assert [x.dtype for x in jax.tree.leaves(new)] == [jnp.bfloat16] * 2
  assert ([x.dtype for x in jax.tree.leaves(new_opt)]
          == [x.dtype for x in jax.tree.leaves(opt_state)])
  # A second step takes the first's outputs (same dtypes: no retrace).
  step(new, new_opt, batch, jax.random.key(1))
  assert step._cache_size() == 1


def test_batch_must_split_into_micro_batches():
  graphdef, params, rest, batch, loss_fn = setup()
  with pytest.raises(ValueError, match=r"train.batch_size: expected a "
                     r"multiple of train.micro_batch_size=3, got 8"):
    train_step.make_train_step(graphdef, rest, optax.sgd(1.0), loss_fn,
                               batch_size=8, micro_batch_size=3)
