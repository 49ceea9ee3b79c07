"""Remat policies of the char-LM on a sequence-parallel mesh, for
tests/test_remat.py: one subprocess with 8 virtual CPU devices (requested
before JAX starts; pytest's process has one).

  python -m tests.remat_cases OUT.json

Writes {policy: {loss_err, grad_err, ppermutes}}: a tiny char-LM's loss and
parameter gradients on mesh seq 4 (remat with that policy) against the same
model on one device without remat, and the ppermutes in the jaxpr of its
gradient (the halo exchange and its transpose; a policy that saves the
halos must not repeat the exchange in the backward).
"""

import json
import sys
import traceback

import jax

# Two layers; layer 1 has two heads at dilation 2 and window 5: a causal
# halo of 10 rows, more than a shard's 8 (two hops on seq 4).
TINY = dict(vocab_size=27, num_layers=2, num_heads=4, hidden_size=32,
            head_dim=8, ffn_size=64, windows=(3, 5), dilations=(1, 2),
            dilated_heads=2, rel_features=16, dropout=0.1)
SEQ = 32


def loss_and_grads(cfg, mesh, tokens):
  """(loss, grads, jaxpr text) of mean(logits^2) with dropout on."""
  import jax.numpy as jnp
  from flax import nnx
  from lfjax import parallel
  from lfjax.models import charlm
  model = charlm.CharLM(cfg, rngs=nnx.Rngs(1))
  graphdef, state = nnx.split(model)

  def loss(state, tokens):
    m = nnx.merge(graphdef, state)
    return jnp.mean(m(tokens, dropout_key=jax.random.key(5)) ** 2)

  with parallel.use(mesh):
    fn = jax.value_and_grad(loss)
    jaxpr = str(jax.make_jaxpr(fn)(state, tokens))
    value, grads = jax.jit(fn)(state, tokens)
  return value, grads, jaxpr


def main(out):
  import dataclasses
  import numpy as np
  from lfjax import parallel
  from lfjax.models import charlm
  # Tiny models compile faster without XLA's optimisations (here, not at
  # import: tests/test_remat.py imports TINY).
  jax.config.update("jax_disable_most_optimizations", True)
  res = {"devices": jax.device_count()}
  try:
    tokens = np.random.default_rng(0).integers(0, 27, (2, SEQ)).astype(
        np.int32)
    cfg = charlm.CharLMConfig(**TINY, attention_impl="chunked")
    want_loss, want_grads, _ = loss_and_grads(cfg, None, tokens)
    mesh = parallel.make_mesh(dict(data=1, fsdp=1, seq=4))
    for label, kw in (("no_remat", {}),
                      ("nothing", dict(remat=True, remat_policy="nothing")),
                      ("attention", dict(remat=True,
                                         remat_policy="attention"))):
      loss, grads, jaxpr = loss_and_grads(
          dataclasses.replace(cfg, **kw), mesh, tokens)
      grad_err = max(
          float(np.max(np.abs(np.asarray(a) - np.asarray(b))) /
                np.max(np.abs(np.asarray(b))))
          for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)))
      res[label] = dict(loss_err=abs(float(loss) - float(want_loss)),
                        grad_err=grad_err,
                        ppermutes=jaxpr.count("ppermute["))
  except Exception:  # reported to the test, which fails showing it
    res["exception"] = traceback.format_exc()
  with open(out, "w") as fh:
    json.dump(res, fh)


if __name__ == "__main__":
  main(sys.argv[1])
