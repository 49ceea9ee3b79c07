"""The optimizer step of every task (char-LM, MLM, fine-tuning): gradients
accumulated over micro-batches by a scan, normalised by the batch's count,
one optax update, parameters and optimizer state donated.

Each task keeps only its loss: `loss_fn(model, micro_batch, key)` returns
sums over the micro-batch, {"loss_sum": ..., "count": ..., other stats},
where count is what the loss is a mean over (characters for the char-LM,
masked tokens for MLM, examples for fine-tuning). The step's loss and
gradients are the batch's loss_sum and gradient sum divided by its count,
so accumulating over micro-batches of any size gives the same update
(with dropout, each micro-batch draws its own masks from its own key).
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lfjax import parallel


def make_train_step(graphdef, rest, tx, loss_fn, *, batch_size,
                    micro_batch_size, shardings=None, batch_shardings=None,
                    donate=True):
  """Jitted (params, opt_state, batch, key) -> (params, opt_state, stats).

  graphdef, rest: the model in training mode split as
    nnx.split(model, nnx.Param, ...); params are the step's first argument.
  loss_fn(model, micro_batch, key) -> {"loss_sum", "count", ...} sums (see
    the module docstring); the model is merged with a fresh copy of `rest`
    (reseeding its dropout streams mutates them).
  batch_size, micro_batch_size: rows of `batch` (every leaf's first axis)
    and of each accumulated micro-batch; batch_size a multiple of it.
  shardings: None (one device), or (params', opt_state's shardings, the
    mesh): each micro-batch is split over data x fsdp (rows) and seq
    (lfjax.parallel), params and optimizer state keep their shardings,
    stats are replicated. Call the step under lfjax.parallel.use(mesh).
  batch_shardings: with shardings, a tree like the batch of NamedShardings
    whose spec's first entry is the batch axis (lfjax.parallel.batch_sharding
    of each leaf: fine-tuning's [batch, choices, seq] tokens and [batch]
    labels); None: every leaf is [batch, seq, ...] (MLM).
  donate: the step reuses the buffers of params and opt_state for their
    updated values (their size off the peak: parameters and Adam's two
    moments are otherwise held twice); the caller must not use the arrays
    it passed in again (lfjax.loop does not).

  The stats returned are the batch's sums, plus "loss" (loss_sum / count)
  and "grad_norm" (of the normalised gradients).
  Raises ValueError when batch_size is not a multiple of micro_batch_size.
  """
  if batch_size % micro_batch_size:
    raise ValueError(f"train.batch_size: expected a multiple of "
                     f"train.micro_batch_size={micro_batch_size}, got "
                     f"{batch_size}")
  accum = batch_size // micro_batch_size

  def micro(params, mb, key):
    model = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))
    stats = loss_fn(model, mb, key)
    return stats["loss_sum"], stats

  def split(batch):
    """The batch as [accum, micro, ...] micro-batches: micro-batch j is
    rows j * micro .. of the batch, as on one device. On a mesh each is
    split as the batch is (its spec after the scan axis), not along the
    scan axis; without batch_shardings a leaf is [batch, seq, ...]."""
    mbs = jax.tree.map(
        lambda x: x.reshape(accum, micro_batch_size, *x.shape[1:]), batch)
    if shardings is None:
      return mbs
    mesh = shardings[2]
    sh = batch_shardings or jax.tree.map(
        lambda x: parallel.batch_sharding(mesh, x.ndim), batch)
    return jax.tree.map(lambda x, s: jax.lax.with_sharding_constraint(
        x, jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec(None, *s.spec))), mbs, sh)

  layout = {}
  if shardings is not None:
    param_sh, opt_sh, mesh = shardings
    rep = parallel.replicated(mesh)
    batch_sh = (parallel.batch_sharding(mesh) if batch_shardings is None
                else batch_shardings)
    layout = dict(in_shardings=(param_sh, opt_sh, batch_sh, rep),
                  out_shardings=(param_sh, opt_sh, rep))

  @functools.partial(jax.jit, donate_argnums=(0, 1) if donate else (),
                     **layout)
  def step(params, opt_state, batch, key):
    mbs = split(batch)

    def body(g, xs):
      mb, k = xs
      (_, s), gi = jax.value_and_grad(micro, has_aux=True)(params, mb, k)
      return jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g, gi), s

    # Accumulated in float32 whatever the parameters' dtype; the update
    # sees gradients in the parameters' dtype (so do AdamW's moments).
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    grads, s = jax.lax.scan(body, zeros, (mbs, jax.random.split(key, accum)))
    s = jax.tree.map(jnp.sum, s)
    n = jnp.maximum(s["count"], 1.0)
    grads = jax.tree.map(lambda g, p: (g / n).astype(p.dtype), grads, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state,
            dict(s, loss=s["loss_sum"] / n,
                 grad_norm=optax.global_norm(grads)))
  return step
