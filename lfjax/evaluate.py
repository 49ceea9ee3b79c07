"""Bits per character of a trained char-LM.

  python -m lfjax.evaluate --workdir DIR [--split test] [--seq_len 32256]
      [--step 512] [--batch_size 1] [--max_chars 0]

Protocol (paper Section 4.2, after Transformer-XL): windows of seq_len
characters that move by `step`; the first window scores all its predictions,
every later one only its last `step`, so each character is scored once with
at least seq_len - step characters of context (except at the very start).
"""

import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from flax import nnx

from lfjax import checkpoints


def eval_windows(num_targets, seq_len, step):
  """[(start, first scored offset)]: windows over num_targets predictions."""
  if not 0 < step <= seq_len:
    raise ValueError(f"step: expected 0 < step <= seq_len ({seq_len}), got "
                     f"{step}")
  seq_len = min(seq_len, num_targets)
  out, scored = [(0, 0)], seq_len
  while scored < num_targets:
    end = min(scored + step, num_targets)
    start = end - seq_len
    out.append((start, scored - start))
    scored = end
  return out


@functools.partial(jax.jit, static_argnames=("graphdef", "window_scale"))
def _window_nll(graphdef, state, tokens_BxL1, first_B, window_scale):
  model = nnx.merge(graphdef, state)
  logits = model(tokens_BxL1[:, :-1], window_scale=window_scale)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                             tokens_BxL1[:, 1:, None], axis=-1)[..., 0]
  scored = jnp.arange(nll.shape[1])[None] >= first_B[:, None]
  return jnp.sum(jnp.where(scored, nll, 0.0)), jnp.sum(scored)


def bpc(model, ids, *, seq_len, step, batch_size, window_scale=1):
  """(bits per character, characters scored) of ids under a CharLM."""
  graphdef, state = nnx.split(model)
  ids = np.asarray(ids, np.int32)
  if ids.size < 2:
    raise ValueError(f"ids: expected at least 2 tokens, got {ids.size}")
  wins = eval_windows(ids.size - 1, seq_len, step)
  length = min(seq_len, ids.size - 1)
  total, count = 0.0, 0
  for i in range(0, len(wins), batch_size):
    chunk = wins[i:i + batch_size]
    # Static shapes: the last batch is filled with windows that score nothing.
    chunk = chunk + [(0, length)] * (batch_size - len(chunk))
    toks = np.stack([ids[s:s + length + 1] for s, _ in chunk])
    first = np.array([f for _, f in chunk], np.int32)
    nll, n = _window_nll(graphdef, state, toks, first, window_scale)
    total += float(nll)
    count += int(n)
  if count != ids.size - 1:
    raise AssertionError(f"scored {count} of {ids.size - 1} characters")
  return total / count / math.log(2.0), count


def evaluate_model(model, corpus, *, split, seq_len, step, batch_size,
                   max_chars=0, window_scale=1):
  ids = corpus.ids(split, 0, max_chars or None)
  return bpc(model, ids, seq_len=seq_len, step=step, batch_size=batch_size,
             window_scale=window_scale)


FLAGS = flags.FLAGS


def _define_flags():
  # Defined only when run as a program, so importing this module (the
  # trainer does) never clashes with the importer's flags.
  flags.DEFINE_string("workdir", None,
                      "Folder of a `python -m lfjax.train` run.")
  flags.DEFINE_enum("split", "test", ["train", "valid", "test"], "Split.")
  flags.DEFINE_integer("seq_len", None, "Window length (default: the run's "
                       "config.eval.seq_len).")
  flags.DEFINE_integer("step", None, "Window stride = characters scored per "
                       "window (default: config.eval.step).")
  flags.DEFINE_integer("batch_size", None, "Windows per forward pass.")
  flags.DEFINE_integer("max_chars", 0, "Score only the first characters of "
                       "the split (0 = all of it).")
  flags.DEFINE_integer("checkpoint", None,
                       "Checkpoint step (default: latest).")


def main(argv):
  del argv
  checkpoints.quiet_orbax()
  config, model, ckpt, scale, corpus = checkpoints.load_trained(
      FLAGS.workdir, FLAGS.checkpoint)
  args = dict(split=FLAGS.split,
              seq_len=FLAGS.seq_len or config.eval.seq_len,
              step=FLAGS.step or config.eval.step,
              batch_size=FLAGS.batch_size or config.eval.batch_size,
              max_chars=FLAGS.max_chars)
  value, count = evaluate_model(model, corpus, window_scale=scale, **args)
  result = dict(args, bpc=value, chars_scored=count, checkpoint=ckpt,
                dataset=corpus.name, window_scale=scale)
  out = pathlib.Path(FLAGS.workdir) / f"eval_{FLAGS.split}_{ckpt}.json"
  out.write_text(json.dumps(result, indent=1))
  print(f"{corpus.name} {FLAGS.split}: {value:.4f} bpc over {count:,} "
        f"characters (checkpoint {ckpt}; written to {out})")


if __name__ == "__main__":
  _define_flags()
  flags.mark_flag_as_required("workdir")
  app.run(main)
