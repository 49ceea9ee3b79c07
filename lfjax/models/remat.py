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

Policies (what a block keeps from its forward for its backward, POLICIES):
  "nothing": its inputs only; the backward recomputes the whole block.
  "attention": also the arrays named "attention" (the band attention's
    output and log-sum-exp, named by lfjax.attention.band and the Pallas
    kernel) and "halo" (the keys/values sequence parallelism received from
    neighbours: lfjax.attention.sharded), so the backward repeats neither
    the attention's forward nor its ppermute exchange; the projections,
    LayerNorms, FFN and dropout are recomputed. Keeps about one more
    [B, N, heads x head_dim] float32 per layer (the paper-small compiled
    peak grows only 1%: experiments/results/charlm_memory.md). The dense
    oracle (attention_impl "dense") names nothing: there it keeps what
    "nothing" keeps.
  "offload": what "attention" keeps, block inputs included, moved to the
    host's pinned memory after the forward and back before the backward
    (jax.checkpoint_policies.save_and_offload_only_these_names). JAX lowers
    these moves on GPU and TPU only: on CPU they are no-ops (device memory
    is host memory), so there "offload" keeps what "attention" keeps, in the
    same memory; the trainer's config refuses it on CPU.
Every policy computes the same values and gradients (tests/test_remat.py).
The named ones run the block's forward under `jax.checkpoint` with the
policy inside the same custom VJP: its pullback (holding just the saved
arrays) is the residual, and it too starts only after the barrier.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

POLICIES = ("nothing", "attention", "offload")
# checkpoint_name tags a policy keeps: see the module docstring.
SAVED_NAMES = ("attention", "halo")
# The offload policy names the block's floating inputs with this, so that
# they too are residuals it moves (jax keeps a checkpointed function's
# inputs on the device otherwise).
INPUT_NAME = "block_input"


def checkpoint_policy(policy):
  """The jax.checkpoint policy of a named remat policy ("attention" or
  "offload"; "nothing" has its own path in remat_call). Raises ValueError
  for another name."""
  cp = jax.checkpoint_policies
  if policy == "attention":
    return cp.save_only_these_names(*SAVED_NAMES)
  if policy == "offload":
    return cp.save_and_offload_only_these_names(
        names_which_can_be_saved=(),
        names_which_can_be_offloaded=SAVED_NAMES + (INPUT_NAME,),
        offload_src="device", offload_dst="pinned_host")
  raise ValueError(f"policy: expected one of {list(POLICIES)}, got "
                   f"{policy!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _remat(f, policy, state, args):
  return f(state, args)


def _remat_fwd(f, policy, state, args):
  # Dropout bits depend on the key alone: tie the key to the block input so
  # that no layer draws them long before it runs.
  args = _tie(args, _zero_after(args))
  if policy == "nothing":
    return f(state, args), (state, args)
  g = f if policy != "offload" else _NamedInputs(f)
  out, pullback = jax.vjp(jax.checkpoint(g, policy=checkpoint_policy(policy)),
                          state, args)
  # The pullback is a pytree whose leaves are the saved arrays.
  return out, pullback


def _zero_after(tree):
  """A float32 0 that XLA cannot compute before every leaf of `tree`: a
  data dependency, which every scheduler honours (the CPU one ignores the
  control dependencies an optimization barrier becomes). min(|s|, 0) is 0
  for any finite or infinite s, so nothing but NaN gets through. Leaves in
  host memory (offloaded) are left out: they are not computed on."""
  leaves = [x for x in jax.tree.leaves(tree)
            if jnp.issubdtype(getattr(x, "dtype", None), jnp.floating)
            and not _on_host(x)]
  s = sum(jnp.sum(x.astype(jnp.float32)) for x in leaves)
  return jnp.minimum(jnp.abs(s), 0.0)


def _on_host(x):
  return getattr(jax.typeof(x), "memory_space", None) == jax.memory.Space.Host


def _tie(tree, zero):
  """tree with `zero` added to its floating leaves and to the data of its
  PRNG keys (values unchanged); leaves in host memory pass as they are
  (their move back to the device, inside the pullback, follows the
  barrier)."""
  def add(x):
    dtype = getattr(x, "dtype", None)
    if dtype is None or _on_host(x):
      return x
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
      data = jax.random.key_data(x)
      return jax.random.wrap_key_data(data + zero.astype(data.dtype),
                                      impl=jax.random.key_impl(x))
    if jnp.issubdtype(dtype, jnp.floating):
      return x + zero.astype(dtype)
    return x
  return jax.tree.map(add, tree)


def _remat_bwd(f, policy, res, g):
  # Recompute only once the cotangent g exists: everything saved goes
  # through a data dependency on g (and an optimization barrier, for
  # schedulers that honour it). Parameters too: parts of the backward
  # depend on them alone (the LayerNorm scales broadcast to [B, N, hidden])
  # and XLA:CPU computed those of every layer at the program's start when
  # only the inputs were tied (paper-small, 8,192 tokens: 16 MiB per norm
  # and layer, live at the peak; 2.06 GiB vs 1.69 compiled).
  res, g = jax.lax.optimization_barrier((_tie(res, _zero_after(g)), g))
  if policy == "nothing":
    state, args = res
    _, vjp = jax.vjp(f, state, args)
  else:
    vjp = res  # the pullback: recomputes what the policy did not save
  dstate, dargs = vjp(g)
  # And the other way: the cotangent passed down to layer l - 1 waits for
  # this layer's parameter gradients, so their computation (and the [N, ffn]
  # and [N, H, Dq] cotangents they read) is not deferred to the end of the
  # backward pass for every layer at once.
  dargs = _tie(dargs, _zero_after(dstate))
  return jax.lax.optimization_barrier((dstate, dargs))


_remat.defvjp(_remat_fwd, _remat_bwd)


def remat_call(fn, module, *args, policy="nothing"):
  """fn(module, *args) with the module's computation recomputed in the
  backward pass (after the cotangent of its output arrives), keeping what
  `policy` (one of POLICIES, see the module docstring) saves.

  args are arrays or pytrees of arrays (a PRNG key or None included); fn
  must be pure given them (nnx modules without mutable state). Values and
  gradients are those of fn(module, *args). Raises ValueError for an
  unknown policy."""
  if policy not in POLICIES:
    raise ValueError(f"policy: expected one of {list(POLICIES)}, got "
                     f"{policy!r}")
  graphdef, state = nnx.split(module)
  f = _Merged(fn, graphdef)
  return _remat(f, policy, state, args)


class _Merged:
  """Hashable callable (state, args) -> fn(merge(graphdef, state), *args)."""

  def __init__(self, fn, graphdef):
    self.fn, self.graphdef = fn, graphdef

  def __call__(self, state, args):
    return self.fn(nnx.merge(self.graphdef, state), *args)


class _NamedInputs:
  """f with its floating args named INPUT_NAME (for the offload policy)."""

  def __init__(self, f):
    self.f = f

  def __call__(self, state, args):
    named = jax.tree.map(
        lambda x: checkpoint_name(x, INPUT_NAME)
        if jnp.issubdtype(x.dtype, jnp.floating) else x, args)
    return self.f(state, named)
