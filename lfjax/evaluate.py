"""Bits per character of a trained char-LM.

  python -m lfjax.evaluate --workdir DIR [--split test] [--seq_len 32256]
      [--stride 512] [--batch_size 1] [--max_chars 0] [--checkpoint STEP]

Protocol (paper Section 4.2, after Transformer-XL): windows of seq_len
characters that move by a stride (`step` in the code and config.eval.step);
the first window scores all its predictions, every later one only its last
`stride`, so each character is scored once with at least seq_len - stride
characters of context (except at the very start). Writes
DIR/eval_<split>_<checkpoint>.json, with `_seq<N>`, `_stride<N>` and
`_chars<N>` added for each of --seq_len, --stride and --max_chars that
differs from the run's config.eval (resp. the whole split), so a partial
evaluation never replaces a full one.
"""

import functools
import hashlib
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx
import tqdm

from lfjax import checkpoints
from lfjax import cli


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


def bpc(model, ids, *, seq_len, step, batch_size, window_scale=1,
        progress=False):
  """(bits per character, characters scored) of ids under a CharLM.

  progress: show a progress bar (tqdm, on stderr, only on a terminal)."""
  graphdef, state = nnx.split(model)
  ids = np.asarray(ids, np.int32)
  if ids.size < 2:
    raise ValueError(f"ids: expected at least 2 tokens, got {ids.size}")
  wins = eval_windows(ids.size - 1, seq_len, step)
  length = min(seq_len, ids.size - 1)
  total, count = 0.0, 0
  bar = tqdm.tqdm(total=ids.size - 1, unit="char", unit_scale=True,
                  desc="scoring (first batch compiles)", leave=False,
                  disable=None if progress else True)
  for i in range(0, len(wins), batch_size):
    chunk = wins[i:i + batch_size]
    # Static shapes: the last batch is filled with windows that score nothing.
    chunk = chunk + [(0, length)] * (batch_size - len(chunk))
    toks = np.stack([ids[s:s + length + 1] for s, _ in chunk])
    first = np.array([f for _, f in chunk], np.int32)
    nll, n = _window_nll(graphdef, state, toks, first, window_scale)
    total += float(nll)
    count += int(n)
    bar.set_description("scoring", refresh=False)
    bar.update(int(n))
  bar.close()
  if count != ids.size - 1:
    raise AssertionError(f"scored {count} of {ids.size - 1} characters")
  return total / count / math.log(2.0), count


def evaluate_model(model, corpus, *, split, seq_len, step, batch_size,
                   max_chars=0, window_scale=1, progress=False):
  """(bpc, characters scored) on a split; raises FloatingPointError
  rather than return a non-finite BPC (JSON cannot hold it, and a NaN
  would read as a result)."""
  ids = corpus.ids(split, 0, max_chars or None)
  value, count = bpc(model, ids, seq_len=seq_len, step=step,
                     batch_size=batch_size, window_scale=window_scale,
                     progress=progress)
  check_finite_metric(f"{split} bpc", value)
  return value, count


def check_finite_metric(name, value):
  """Raises FloatingPointError when an evaluation result is NaN/Inf."""
  if not math.isfinite(value):
    raise FloatingPointError(
        f"evaluation: {name} is {value}; not reporting or writing it. The "
        "model's log-probabilities overflowed: check that its parameters "
        "are finite and try model.dtype='float32'")


def _define_flags(fv, argv):
  del argv
  flags.DEFINE_string("workdir", None,
                      "Folder of a `python -m lfjax.train` run.",
                      flag_values=fv)
  flags.DEFINE_enum("split", "test", ["train", "valid", "test"], "Split.",
                    flag_values=fv)
  flags.DEFINE_integer("seq_len", None, "Window length (default: the run's "
                       "config.eval.seq_len).", flag_values=fv)
  flags.DEFINE_integer("stride", None, "Window stride = characters scored "
                       "per window (default: the run's config.eval.step).",
                       flag_values=fv)
  flags.DEFINE_integer("step", None, "Deprecated spelling of --stride.",
                       flag_values=fv)
  flags.DEFINE_integer("batch_size", None, "Windows per forward pass "
                       "(default: the run's config.eval.batch_size).",
                       flag_values=fv)
  flags.DEFINE_integer("max_chars", 0, "Score only the first characters of "
                       "the split (0 = all of it).", flag_values=fv)
  flags.DEFINE_integer("checkpoint", None,
                       "Checkpoint step (default: the newest).",
                       flag_values=fv)


def _tag(value):
  if isinstance(value, (int, str)) and not isinstance(value, bool):
    return str(value)
  return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest(
  )[:8]


def result_path(workdir, stem, settings, defaults, tags):
  """Where to write an evaluation's result: workdir/<stem>.json plus a
  `_<tag><value>` per setting that differs from its default (e.g.
  eval_test_130_chars3000.json), so different settings get different
  files. When that file holds a result of other settings (the defaults
  changed since, e.g. a resumed run's eval.*), every setting goes into the
  name. A result file is never overwritten by a different evaluation's.

  settings: {result field: value}, the fields that decide the result;
  defaults: {field: the value the name leaves out}; tags: {field: tag}."""
  workdir = pathlib.Path(workdir)
  name = lambda keys: workdir / (stem + "".join(
      f"_{tags[k]}{_tag(settings[k])}" for k in keys) + ".json")
  path = name([k for k in settings if settings[k] != defaults.get(k)])
  if path.exists():
    try:
      old = json.loads(path.read_text())
    except ValueError:
      old = {}
    if not isinstance(old, dict) or any(
        old.get(k) != v for k, v in settings.items()):
      path = name(list(settings))
  return path


def main(argv=None):
  """`python -m lfjax.evaluate --workdir DIR ...`; argv excludes the
  program name. Raises cli.UsageError for bad flags, and the loading and
  evaluation errors of the run (see cli.run for how they print)."""
  fv = cli.parse_absl(sys.argv[1:] if argv is None else argv, _define_flags,
                      prog="python -m lfjax.evaluate", doc=__doc__,
                      required=("workdir",))
  stride, stride_flag = fv.stride, "--stride"
  if fv["step"].present:
    print("note: --step is deprecated; use --stride", file=sys.stderr)
    if stride is None:
      stride, stride_flag = fv.step, "--step"
  cli.at_least("--seq_len", fv.seq_len, 1)
  cli.at_least(stride_flag, stride, 1)
  cli.at_least("--batch_size", fv.batch_size, 1)
  cli.check_flag("--max_chars", fv.max_chars, lambda v: v == 0 or v >= 2,
                 "0 (the whole split) or an integer >= 2")
  cli.at_least("--checkpoint", fv.checkpoint, 0)
  config = checkpoints.read_config(fv.workdir, "charlm")
  seq_len = config.eval.seq_len if fv.seq_len is None else fv.seq_len
  stride = config.eval.step if stride is None else stride
  if stride > seq_len:
    if fv.stride is not None or fv["step"].present:
      raise cli.UsageError(
          f"{stride_flag}: expected at most the window length {seq_len} "
          f"({'--seq_len' if fv.seq_len is not None else 'config.eval.seq_len'}"
          f"), got {stride}")
    if fv.seq_len is not None:
      raise cli.UsageError(f"--seq_len: expected at least the stride "
                           f"{stride} (config.eval.step; or pass --stride), "
                           f"got {seq_len}")
  checkpoints.quiet_orbax()
  config, model, ckpt, scale, corpus = checkpoints.load_trained(
      fv.workdir, fv.checkpoint, flag="--checkpoint")
  args = dict(split=fv.split, seq_len=seq_len, step=stride,
              batch_size=(config.eval.batch_size if fv.batch_size is None
                          else fv.batch_size),
              max_chars=fv.max_chars)
  value, count = evaluate_model(model, corpus, window_scale=scale,
                                progress=True, **args)
  result = dict(args, bpc=value, chars_scored=count, checkpoint=ckpt,
                dataset=corpus.name, window_scale=scale)
  out = result_path(
      fv.workdir, f"eval_{fv.split}_{ckpt}",
      {k: args[k] for k in ("seq_len", "step", "max_chars")},
      dict(seq_len=config.eval.seq_len, step=config.eval.step, max_chars=0),
      dict(seq_len="seq", step="stride", max_chars="chars"))
  out.write_text(json.dumps(result, indent=1))
  print(f"{corpus.name} {fv.split}: {value:.4f} bpc over {count:,} "
        f"characters (checkpoint {ckpt}; written to {out})")


if __name__ == "__main__":
  sys.exit(cli.run(main))
