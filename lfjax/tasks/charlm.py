"""Staged char-LM training.

  python -m lfjax.train --config configs/charlm_default.py:tiny --workdir DIR

Restarting the same command resumes from DIR's newest checkpoint and
reproduces exactly the losses an uninterrupted run would have written.
DIR gets config.json, metrics.jsonl (one JSON object per logged step) and
checkpoints/.
"""

import functools
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from flax import nnx
from ml_collections import config_flags

from lfjax import charlm_defaults
from lfjax import checkpoints
from lfjax import cli
from lfjax import evaluate
from lfjax import loop
from lfjax import mlm_defaults
from lfjax.data import chars
from lfjax.data import sampler as sampler_lib
from lfjax.models import charlm


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


def make_train_step(graphdef, tx, window_scale, donate=False):
  """Jitted (params, opt_state, x, y, key) -> (params, opt_state, metrics).

  donate: the step reuses the buffers of params and opt_state for their
  updated values (saves their size, 0.46 GiB for the paper-small model, from
  the peak); the caller must not use the arrays it passed in again."""
  def loss_fn(params, x, y, key):
    model = nnx.merge(graphdef, params)
    logits = model(x, dropout_key=key, window_scale=window_scale)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @functools.partial(jax.jit, donate_argnums=(0, 1) if donate else ())
  def step(params, opt_state, x, y, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state,
            {"loss": loss, "grad_norm": optax.global_norm(grads)})
  return step


def _summarize(m):
  return dict(train_loss=m["loss"], train_bpc=m["loss"] / math.log(2),
              grad_norm=m["grad_norm"])


def train_and_evaluate(config, workdir):
  """Trains (or resumes) the run in workdir; returns the last metrics.

  config.task picks the task: "charlm" (here) or "mlm" (lfjax.mlm)."""
  if config.get("task", "charlm") == "mlm":
    from lfjax import mlm
    return mlm.train_and_evaluate(config, workdir)
  charlm_defaults.validate(config)  # every field, before anything is written
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  bounds = phases(config)
  # Before anything else is written: a refused config leaves the run as is.
  # A finished run (nothing to train under config) writes nothing.
  checkpoints.write_config(config, workdir, total=bounds[-1][1])
  corpus = chars.load(config.data.name, config.data.dir or None)
  model = charlm.CharLM(checkpoints.model_config(config, corpus.vocab_size),
                        rngs=nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model)
  tx = optimizer(config)
  opt_state = tx.init(params)
  dropout_root = jax.random.fold_in(jax.random.key(config.seed), 1)

  def phase(p, a, b):
    s = config.schedule
    scale = s.window_scales[p]
    # The loop drops the old params/opt state after each step, and saves
    # checkpoints synchronously: their buffers can be donated.
    jitted = make_train_step(graphdef, tx, scale, donate=True)
    step_fn = lambda params, opt_state, xy, step: jitted(
        params, opt_state, *xy, jax.random.fold_in(dropout_root, step))
    return loop.Phase(
        a, b, sampler_lib.WindowSampler(
            corpus, "train", seq_len=s.seq_lens[p], seed=config.seed,
            stream=p, batch_size=s.batch_sizes[p]),
        step_fn, _summarize,
        info=dict(window=max(config.model.windows) * scale,
                  seq_len=s.seq_lens[p]),
        tokens_per_batch=s.seq_lens[p] * s.batch_sizes[p])

  def evaluate_fn(params, p):
    value, count = evaluate.evaluate_model(
        nnx.merge(graphdef, params), corpus, split=config.eval.split,
        seq_len=config.eval.seq_len, step=config.eval.step,
        batch_size=config.eval.batch_size, max_chars=config.eval.max_chars,
        window_scale=config.schedule.window_scales[p])
    return ({"eval_bpc": value, "eval_chars": count},
            f"{config.eval.split} bpc {value:.4f} ({count:,} chars)")

  return loop.run(workdir, config, params, opt_state,
                  [phase(p, a, b) for p, (a, b) in enumerate(bounds)],
                  learning_rate(config), evaluate_fn)


def _define_flags(fv, argv):
  config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/charlm_default.py:tiny; "
      "fields are overridden with --config.section.field=value.",
      flag_values=fv, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "Run folder (resumed if it has "
                      "checkpoints).", flag_values=fv)


def _next_steps(config, workdir):
  if config.get("task", "charlm") == "mlm":
    return [f"python -m lfjax.mlm evaluate --workdir {workdir}",
            f"python -m lfjax.mlm export --workdir {workdir} --to DIR"]
  return [f"python -m lfjax.evaluate --workdir {workdir} --split test",
          f"python -m lfjax.sample --workdir {workdir} --prompt 'def main('"]


def main(argv=None):
  """`python -m lfjax.train --config FILE[:arg] --workdir DIR`; argv
  excludes the program name. Raises cli.UsageError for bad flags or config
  fields, and the training's own errors (see cli.run for how they print)."""
  fv = cli.parse_absl(sys.argv[1:] if argv is None else argv, _define_flags,
                      prog="python -m lfjax.train", doc=__doc__,
                      required=("config", "workdir"))
  defaults = (mlm_defaults if fv.config.get("task", "charlm") == "mlm"
              else charlm_defaults)
  try:
    defaults.validate(fv.config)  # a bad value is a usage error: exit 2
  except ValueError as e:
    raise cli.UsageError(str(e)) from None
  checkpoints.quiet_orbax()
  print(f"jax {jax.__version__} on {jax.devices()}", flush=True)
  train_and_evaluate(fv.config, fv.workdir)
  print("next: " + "\n      ".join(_next_steps(fv.config, fv.workdir)))


if __name__ == "__main__":
  sys.exit(cli.run(main))
