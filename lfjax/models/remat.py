"""Layer-by-layer rematerialisation whose recomputation waits its turn.

`jax.checkpoint` (and `nnx.remat`) saves only a block's inputs and recomputes
the block in the backward pass, but XLA is free to SCHEDULE that
recomputation anywhere after the inputs exist. On CPU its memory scheduler
hoists the recomputed forwards of many layers (their GELU, dropout bits, band
operands) long before their backward runs, so they are all alive at once:
measured on the paper-small char-LM, most of the compiled peak.

`remat_call` is the same recomputation, written as a custom VJP: the
forward saves (parameters, inputs) and the backward first passes them
together with the incoming cotangent through `lax.optimization_barrier`, so
nothing of layer l's recomputation can start before layer l + 1's backward
has produced that cotangent. The values computed are the same as without
remat (same function, same dropout key).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _remat(f, state, args):
  return f(state, args)


def _remat_fwd(f, state, args):
  # Dropout bits depend on the key alone: tie the key to the block input so
  # that no layer draws them long before it runs.
  args = _tie(args, _zero_after(args))
  return f(state, args), (state, args)


def _zero_after(tree):
  """A float32 0 that XLA cannot compute before every leaf of `tree`: a
  data dependency, which every scheduler honours (the CPU one ignores the
  control dependencies an optimization barrier becomes). min(|s|, 0) is 0
  for any finite or infinite s, so nothing but NaN gets through."""
  leaves = [x for x in jax.tree.leaves(tree)
            if jnp.issubdtype(getattr(x, "dtype", None), jnp.floating)]
  s = sum(jnp.sum(x.astype(jnp.float32)) for x in leaves)
  return jnp.minimum(jnp.abs(s), 0.0)


def _tie(tree, zero):
  """tree with `zero` added to its floating leaves and to the data of its
  PRNG keys (values unchanged)."""
  def add(x):
    dtype = getattr(x, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
      data = jax.random.key_data(x)
      return jax.random.wrap_key_data(data + zero.astype(data.dtype),
                                      impl=jax.random.key_impl(x))
    if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
      return x + zero.astype(dtype)
    return x
  return jax.tree.map(add, tree)


def _remat_bwd(f, res, g):
  state, args = res
  # Recompute only once the cotangent g exists: the block inputs go through
  # a data dependency on g (and an optimization barrier, for schedulers that
  # honour it).
  args = _tie(args, _zero_after(g))
  state, args, g = jax.lax.optimization_barrier((state, args, g))
  _, vjp = jax.vjp(f, state, args)
  dstate, dargs = vjp(g)
  # And the other way: the cotangent passed down to layer l - 1 waits for
  # this layer's parameter gradients, so their computation (and the [N, ffn]
  # and [N, H, Dq] cotangents they read) is not deferred to the end of the
  # backward pass for every layer at once.
  dargs = _tie(dargs, _zero_after(dstate))
  return jax.lax.optimization_barrier((dstate, dargs))


_remat.defvjp(_remat_fwd, _remat_bwd)


def remat_call(fn, module, *args):
  """fn(module, *args) with the module's computation recomputed in the
  backward pass (after the cotangent of its output arrives).

  args are arrays or pytrees of arrays (a PRNG key or None included); fn
  must be pure given them (nnx modules without mutable state)."""
  graphdef, state = nnx.split(module)
  f = _Merged(fn, graphdef)
  return _remat(f, state, args)


class _Merged:
  """Hashable callable (state, args) -> fn(merge(graphdef, state), *args)."""

  def __init__(self, fn, graphdef):
    self.fn, self.graphdef = fn, graphdef

  def __call__(self, state, args):
    return self.fn(nnx.merge(self.graphdef, state), *args)
