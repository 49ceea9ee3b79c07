"""Text generation from a trained char-LM with a sliding-window cache.

  python -m lfjax.sample --workdir DIR --prompt "def main(" --length 500

Each layer keeps a ring buffer of the keys and values its window can reach,
so memory is O(window) per layer and the length is unbounded.
"""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx
import tqdm

from lfjax import checkpoints
from lfjax import checks
from lfjax import cli


@functools.partial(jax.jit, static_argnames=("graphdef", "window_scale"))
def prefill(graphdef, state, tokens_BxP, cache, *, window_scale):
  """Runs the prompt through the cache; returns the last logits and cache."""
  model = nnx.merge(graphdef, state)

  def body(cache, tp):
    token_B, t = tp
    logits, cache = model.decode(token_B, t, cache, window_scale=window_scale)
    return cache, logits

  p = tokens_BxP.shape[1]
  cache, logits = jax.lax.scan(body, cache, (tokens_BxP.T, jnp.arange(p)))
  return logits[-1], cache


@functools.partial(jax.jit, static_argnames=("graphdef", "window_scale",
                                             "length", "top_k"))
def generate(graphdef, state, logits_BxV, cache, t0, key, *, length,
             window_scale, temperature, top_k):
  """`length` tokens sampled after position t0 - 1 (whose logits are given)."""
  model = nnx.merge(graphdef, state)

  def pick(logits, key):
    if top_k:
      kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    greedy = jnp.argmax(logits, axis=-1)
    drawn = jax.random.categorical(key, logits / jnp.maximum(temperature,
                                                             1e-6))
    return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)

  def body(carry, i):
    logits, cache = carry
    token = pick(logits, jax.random.fold_in(key, i))
    logits, cache = model.decode(token, t0 + i, cache,
                                 window_scale=window_scale)
    return (logits, cache), token

  (logits, cache), tokens = jax.lax.scan(body, (logits_BxV, cache),
                                         jnp.arange(length))
  return tokens.T, logits, cache


def sample(model, prompt_ids, length, *, window_scale=1, temperature=1.0,
           top_k=0, seed=0, chunk=256):
  """Yields generated ids [B, <=chunk] chunk by chunk (streaming)."""
  prompt = jnp.asarray(np.atleast_2d(prompt_ids), jnp.int32)
  if prompt.shape[1] < 1:
    raise ValueError("prompt: expected at least one character")
  graphdef, state = nnx.split(model)
  cache = model.init_cache(prompt.shape[0], window_scale)
  logits, cache = prefill(graphdef, state, prompt, cache,
                          window_scale=window_scale)
  t, key = prompt.shape[1], jax.random.key(seed)
  done = 0
  while done < length:
    n = min(chunk, length - done)
    out, logits, cache = generate(
        graphdef, state, logits, cache, t, jax.random.fold_in(key, done),
        length=n, window_scale=window_scale, temperature=temperature,
        top_k=top_k)
    t, done = t + n, done + n
    yield np.asarray(out)


def _define_flags(fv, argv):
  del argv
  flags.DEFINE_string("workdir", None, "Folder of a `python -m lfjax.train` "
                      "run.", flag_values=fv)
  flags.DEFINE_string("prompt", "\n", "Text to continue.", flag_values=fv)
  flags.DEFINE_integer("length", 500, "Characters to generate.",
                       flag_values=fv)
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.",
                     flag_values=fv)
  flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest (0 = all).",
                       flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=fv)
  flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: the "
                       "newest).", flag_values=fv)


def main(argv=None):
  """`python -m lfjax.sample --workdir DIR ...`; argv excludes the program
  name. The text goes to stdout as it is generated; when stdout is not a
  terminal, a progress bar goes to stderr (if that is one). Raises
  cli.UsageError for bad flags, and the run's loading errors."""
  fv = cli.parse_absl(sys.argv[1:] if argv is None else argv, _define_flags,
                      prog="python -m lfjax.sample", doc=__doc__,
                      required=("workdir",))
  cli.at_least("--length", fv.length, 1)
  cli.check_flag("--temperature", fv.temperature,
                 lambda v: 0 <= v < float("inf"),
                 "a finite number >= 0 (0 = greedy)")
  cli.at_least("--top_k", fv.top_k, 0, " (0 = all)")
  cli.at_least("--checkpoint", fv.checkpoint, 0)
  cli.check_flag("--seed", fv.seed, lambda v: 0 <= v <= checks.SEED_MAX,
                 f"an integer in [0, {checks.SEED_MAX}]")
  if not fv.prompt:
    raise cli.UsageError("--prompt: expected at least one character, got ''")
  checkpoints.quiet_orbax()
  _, model, _, scale, corpus = checkpoints.load_trained(
      fv.workdir, fv.checkpoint, flag="--checkpoint")
  cli.check_flag("--top_k", fv.top_k, lambda v: v <= corpus.vocab_size,
                 f"at most the vocabulary size {corpus.vocab_size}")
  # Streamed text is its own progress on a terminal; a bar there would
  # interleave with it.
  bar = tqdm.tqdm(total=fv.length, unit="char", leave=False,
                  desc="sampling (first chunk compiles)",
                  disable=True if sys.stdout.isatty() else None)
  prompt = corpus.encode(fv.prompt)  # refused before anything is printed
  sys.stdout.write(fv.prompt)
  for ids in sample(model, prompt, fv.length,
                    window_scale=scale, temperature=fv.temperature,
                    top_k=fv.top_k, seed=fv.seed):
    sys.stdout.write(corpus.decode(ids[0]))
    sys.stdout.flush()
    bar.set_description("sampling", refresh=False)
    bar.update(ids.shape[1])
  bar.close()
  sys.stdout.write("\n")


if __name__ == "__main__":
  sys.exit(cli.run(main))
