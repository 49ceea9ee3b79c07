"""The char-LM task: staged training and bits-per-character evaluation.

  python -m lfjax.train --config configs/charlm_default.py:tiny --workdir DIR
  python -m lfjax.evaluate --workdir DIR [--split test] [--seq_len 32256]
      [--stride 512] [--batch_size 1] [--max_chars 0] [--checkpoint STEP]

Training: each phase of config.schedule doubles the sequence length and
windows and halves the learning rate (paper Section 4.2). Restarting the
same command resumes from DIR's newest checkpoint and reproduces exactly
the losses an uninterrupted run would have written (lfjax.loop). DIR gets
config.json, metrics.jsonl (one JSON object per logged step),
corpus_history.jsonl (the corpus's sha256; a resume on other data says so:
lfjax.tasks.common.record_corpus) and checkpoints/

Evaluation protocol (paper Section 4.2, after Transformer-XL): windows of
seq_len characters that move by a stride (`step` in the code and
config.eval.step); the first window scores all its predictions, every later
one only its last `stride`, so each character is scored once with at least
seq_len - stride characters of context (except at the very start). Writes
DIR/eval_<split>_<checkpoint>.json (the BPC, the settings, and the corpus
as `dataset` and `dataset_sha256`), with `_seq<N>`, `_stride<N>` and
`_chars<N>` added for each of --seq_len, --stride and --max_chars that
differs from the run's config.eval (resp. the whole split), so a partial
evaluation never replaces a full one.
"""

import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from flax import nnx
import tqdm

from lfjax import checkpoints
from lfjax import cli
from lfjax import loop
from lfjax import parallel
from lfjax import train_step
from lfjax.data import chars
from lfjax.data import sampler as sampler_lib
from lfjax.models import charlm as charlm_model
from lfjax.tasks import charlm_defaults
from lfjax.tasks import common

KIND = "a char-LM"
# Fields a resumed run may change: they steer only the steps still to come
# (the schedule from the current phase on: lfjax.checkpoints checks it),
# or where files are read and logged.
RESUMABLE = ("data.dir", "model.dropout", "model.dtype", "model.remat",
             "model.remat_policy",
             "model.attention_impl", "model.rel_impl", "schedule.*",
             "optim.*", "eval.*", "log_every", "checkpoint_every",
             "keep_checkpoints", "eval_every", "mesh.*", "tensorboard")
validate = charlm_defaults.validate


# Training ----------------------------------------------------------------


def phases(config):
  """[(start step, end step)] per phase, validating the schedule."""
  s = config.schedule
  fields = ("steps", "seq_lens", "window_scales", "lrs", "batch_sizes")
  lengths = {f: len(s[f]) for f in fields}
  if len(set(lengths.values())) != 1 or not lengths["steps"]:
    raise ValueError(f"schedule: expected one value per phase in each of "
                     f"{fields}, got lengths {lengths}")
  for f in fields:
    if any(v <= 0 for v in s[f]):
      raise ValueError(f"schedule.{f}: expected positive values, got {s[f]}")
  bounds = np.cumsum([0] + list(s.steps))
  return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def learning_rate(config):
  """optax schedule: per phase, linear warmup then constant (paper)."""
  bounds = phases(config)
  starts = jnp.asarray([a for a, _ in bounds])
  lrs = jnp.asarray(config.schedule.lrs, jnp.float32)
  warm = jnp.asarray([max(1, min(config.optim.max_warmup_steps,
                                 math.ceil(config.optim.warmup_fraction
                                           * (b - a))))
                      for a, b in bounds], jnp.float32)

  def schedule(count):
    p = jnp.clip(jnp.searchsorted(starts, count, side="right") - 1, 0,
                 len(bounds) - 1)
    done = (count - starts[p] + 1).astype(jnp.float32)
    return lrs[p] * jnp.minimum(1.0, done / warm[p])
  return schedule


def optimizer(config):
  o = config.optim
  # Decay matrices only: biases, norm scales and the u/v position biases
  # are vectors.
  decay = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(o.grad_clip),
      optax.adamw(learning_rate(config), b1=o.b1, b2=o.b2, eps=o.eps,
                  weight_decay=o.weight_decay, mask=decay))


def micro_batch_sizes(config):
  """Sequences per accumulated pass, one per phase (schedule.batch_sizes
  where schedule.micro_batch_sizes is () or absent: runs saved before the
  field existed)."""
  s = config.schedule
  return tuple(s.get("micro_batch_sizes", ()) or s.batch_sizes)


def make_train_step(graphdef, tx, window_scale, *, batch_size,
                    micro_batch_size=None, donate=False, shardings=None):
  """Jitted (params, opt_state, batch, key) -> (params, opt_state, metrics)
  by lfjax.train_step (the step MLM and fine-tuning take too): the mean
  next-character loss over every position of the batch, gradients
  accumulated over micro-batches.

  graphdef: the CharLM's (nnx.split(model, nnx.Param, ...)); params the
    step's first argument.
  batch: {"inputs": [batch_size, N] int32, "targets": [batch_size, N]
    int32}; micro_batch_size (a divisor, None = batch_size) sequences per
    forward/backward pass.
  donate: the step reuses the buffers of params and opt_state for their
    updated values (saves their size, 0.46 GiB for the paper-small model,
    from the peak); the caller must not use the arrays it passed in again.
  shardings: None (one device), or (params', opt_state's shardings, the
    mesh): each micro-batch is split over data x fsdp and seq, params and
    optimizer state keep their shardings, metrics are replicated. Call the
    step under lfjax.parallel.use(mesh), so the attention splits the
    sequence.
  metrics: loss (nats per character), loss_sum, count (characters) and
  grad_norm."""
  def loss_fn(model, mb, key):
    logits = model(mb["inputs"], dropout_key=key, window_scale=window_scale)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         mb["targets"])
    return {"loss_sum": jnp.sum(ce), "count": jnp.float32(ce.size)}

  return train_step.make_train_step(
      graphdef, nnx.State({}), tx, loss_fn, batch_size=batch_size,
      micro_batch_size=micro_batch_size or batch_size, shardings=shardings,
      donate=donate)


def _summarize(m):
  return dict(train_loss=m["loss"], train_bpc=m["loss"] / math.log(2),
              grad_norm=m["grad_norm"])


def train_and_evaluate(config, workdir):
  """Trains (or resumes) the char-LM run in workdir; returns the last
  metrics."""
  validate(config)  # every field, before anything is written
  mesh = parallel.make_mesh(config.mesh)
  loop.say(f"training on {parallel.describe(mesh)}", flush=True)
  micro = micro_batch_sizes(config)
  field = ("schedule.micro_batch_sizes"
           if config.schedule.get("micro_batch_sizes", ())
           else "schedule.batch_sizes")
  for p, (m, n) in enumerate(zip(micro, config.schedule.seq_lens)):
    # Each accumulated micro-batch is split over data x fsdp.
    parallel.check_batch(mesh, f"{field}[{p}]", m)
    parallel.check_seq(mesh, f"schedule.seq_lens[{p}]", n)
  workdir = pathlib.Path(workdir)
  bounds = phases(config)
  # A refused config fails before the data loads; loop.run writes it.
  start = checkpoints.check_config(config, workdir)
  corpus = chars.load(config.data.name, config.data.dir or None)
  model = charlm_model.CharLM(
      checkpoints.model_config(config, corpus.vocab_size),
      rngs=nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optimizer(config)
  params, opt_state, shardings = parallel.init_state(tx, params, mesh)
  dropout_root = jax.random.fold_in(jax.random.key(config.seed), 1)

  def phase(p, a, b):
    s = config.schedule
    scale = s.window_scales[p]
    # The loop drops the old params/opt state after each step, and saves
    # checkpoints from host copies (lfjax.checkpoints.save returns once
    # orbax has copied them): their buffers can be donated.
    size = s.batch_sizes[p]
    jitted = make_train_step(graphdef, tx, scale, batch_size=size,
                             micro_batch_size=micro[p],
                             donate=True, shardings=shardings)
    step_fn = lambda params, opt_state, xy, step: jitted(
        params, opt_state, parallel.put_batch(
            {"inputs": xy[0], "targets": xy[1]}, mesh, size),
        jax.random.fold_in(dropout_root, step))
    sampler = sampler_lib.WindowSampler(
        corpus, "train", seq_len=s.seq_lens[p], seed=config.seed, stream=p,
        batch_size=size, rows=parallel.local_rows(mesh, size))
    return loop.Phase(
        a, b, sampler,
        step_fn, _summarize,
        info=dict(window=max(config.model.windows) * scale,
                  seq_len=s.seq_lens[p]),
        tokens_per_batch=s.seq_lens[p] * s.batch_sizes[p])

  def evaluate_fn(params, p):
    value, count = evaluate_model(
        nnx.merge(graphdef, params), corpus, split=config.eval.split,
        seq_len=config.eval.seq_len, step=config.eval.step,
        batch_size=config.eval.batch_size, max_chars=config.eval.max_chars,
        window_scale=config.schedule.window_scales[p])
    return ({"eval_bpc": value, "eval_chars": count},
            f"{config.eval.split} bpc {value:.4f} ({count:,} chars)")

  with parallel.use(mesh), checkpoints.undo_failed_start(
      workdir, keep=(common.CORPUS_HISTORY,)):
    if start < bounds[-1][1]:  # a finished run trains on no data
      common.record_corpus(workdir, corpus.name, corpus.sha256, start)
    return loop.run(workdir, config, params, opt_state,
                    [phase(p, a, b) for p, (a, b) in enumerate(bounds)],
                    learning_rate(config), evaluate_fn)


def next_steps(workdir):
  # text8 has only lowercase letters and spaces: '(' would be refused.
  try:
    name = checkpoints.read_config(workdir).data.name
  except (OSError, ValueError, KeyError, AttributeError):
    name = "pystdlib"
  prompt = "'def main('" if name == "pystdlib" else "'the '"
  return [f"python -m lfjax.evaluate --workdir {workdir} --split test",
          f"python -m lfjax.sample --workdir {workdir} --prompt {prompt}"]


# Evaluation --------------------------------------------------------------


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
  common.check_finite_metric(f"{split} bpc", value)
  return value, count


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
  flags.DEFINE_integer("batch_size", None, "Windows per forward pass "
                       "(default: the run's config.eval.batch_size).",
                       flag_values=fv)
  flags.DEFINE_integer("max_chars", 0, "Score only the first characters of "
                       "the split (0 = all of it).", flag_values=fv)
  flags.DEFINE_integer("checkpoint", None,
                       "Checkpoint step (default: the newest).",
                       flag_values=fv)
  flags.DEFINE_enum("rel_impl", None, list(charlm_model.REL_IMPLS),
                    "Relative positions as a per-distance table or as q/k "
                    "features (default: the run's config.model.rel_impl); "
                    "both use the same parameters.", flag_values=fv)


def evaluate_main(argv, doc=__doc__):
  """`python -m lfjax.evaluate --workdir DIR ...` for a char-LM run; argv
  excludes the program name. Raises cli.UsageError for bad flags, and the
  loading and evaluation errors of the run (see cli.run for how they
  print)."""
  fv = cli.parse_absl(argv, _define_flags, prog="python -m lfjax.evaluate",
                      doc=doc, required=("workdir",))
  stride = fv.stride
  cli.at_least("--seq_len", fv.seq_len, 1)
  cli.at_least("--stride", stride, 1)
  cli.at_least("--batch_size", fv.batch_size, 1)
  cli.check_flag("--max_chars", fv.max_chars, lambda v: v == 0 or v >= 2,
                 "0 (the whole split) or an integer >= 2")
  cli.at_least("--checkpoint", fv.checkpoint, 0)
  config = checkpoints.read_config(fv.workdir, "charlm")
  seq_len = config.eval.seq_len if fv.seq_len is None else fv.seq_len
  stride = config.eval.step if stride is None else stride
  if stride > seq_len:
    if fv.stride is not None:
      raise cli.UsageError(
          f"--stride: expected at most the window length {seq_len} "
          f"({'--seq_len' if fv.seq_len is not None else 'config.eval.seq_len'}"
          f"), got {stride}")
    if fv.seq_len is not None:
      raise cli.UsageError(f"--seq_len: expected at least the stride "
                           f"{stride} (config.eval.step; or pass --stride), "
                           f"got {seq_len}")
  checkpoints.quiet_orbax()
  run_rel_impl = config.model.rel_impl
  config, model, ckpt, scale, corpus = checkpoints.load_trained(
      fv.workdir, fv.checkpoint, flag="--checkpoint", rel_impl=fv.rel_impl)
  common.note_other_data(fv.workdir, ckpt, corpus.name, corpus.sha256,
                         fv.split)
  args = dict(split=fv.split, seq_len=seq_len, step=stride,
              batch_size=(config.eval.batch_size if fv.batch_size is None
                          else fv.batch_size),
              max_chars=fv.max_chars)
  value, count = evaluate_model(model, corpus, window_scale=scale,
                                progress=True, **args)
  result = dict(args, rel_impl=config.model.rel_impl, bpc=value,
                chars_scored=count, checkpoint=ckpt, dataset=corpus.name,
                dataset_sha256=corpus.sha256, window_scale=scale)
  out = common.result_path(
      fv.workdir, f"eval_{fv.split}_{ckpt}",
      {k: result[k] for k in ("seq_len", "step", "max_chars", "rel_impl",
                              "dataset_sha256")},
      dict(seq_len=config.eval.seq_len, step=config.eval.step, max_chars=0,
           rel_impl=run_rel_impl,
           dataset_sha256=common.trained_sha256(fv.workdir, ckpt,
                                                corpus.sha256)),
      dict(seq_len="seq", step="stride", max_chars="chars", rel_impl="",
           dataset_sha256="data"))
  out.write_text(json.dumps(result, indent=1))
  print(f"{corpus.name} {fv.split}: {value:.4f} bpc over {count:,} "
        f"characters (checkpoint {ckpt}; written to {out})")
