"""Staged char-LM training.

  python -m lfjax.train --config configs/charlm_default.py:tiny --workdir DIR

Restarting the same command resumes from DIR's newest checkpoint and
reproduces exactly the losses an uninterrupted run would have written.
DIR gets config.json, metrics.jsonl (one JSON object per logged step) and
checkpoints/.
"""

import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import flags
from flax import nnx
from ml_collections import config_flags

from lfjax import checkpoints
from lfjax import evaluate
from lfjax import metrics
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


def make_train_step(graphdef, tx, window_scale):
  def loss_fn(params, x, y, key):
    model = nnx.merge(graphdef, params)
    logits = model(x, dropout_key=key, window_scale=window_scale)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(params, opt_state, x, y, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state,
            {"loss": loss, "grad_norm": optax.global_norm(grads)})
  return step


def _check_finite(loss, step, last_ckpt):
  if not math.isfinite(loss):
    where = (f"the newest checkpoint is step {last_ckpt}" if last_ckpt
             else "no checkpoint was saved")
    raise FloatingPointError(
        f"train loss is {loss} at step {step}; stopping without saving it "
        f"({where}). Lower the learning rate (--config.schedule.lrs) or "
        "clip harder (--config.optim.grad_clip)")


def _write_config(config, workdir):
  path = workdir / "config.json"
  new = json.loads(config.to_json())
  if path.exists():
    old = json.loads(path.read_text())
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
      print(f"config differs from {path} in {changed}; keeping the old one "
            f"as {path.with_suffix('.previous.json')}")
      path.with_suffix(".previous.json").write_text(path.read_text())
  path.write_text(json.dumps(new, indent=1))


def train_and_evaluate(config, workdir):
  """Trains (or resumes) the run in workdir; returns the last metrics."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  bounds = phases(config)
  total = bounds[-1][1]
  corpus = chars.load(config.data.name, config.data.dir or None)
  model = charlm.CharLM(checkpoints.model_config(config, corpus.vocab_size),
                        rngs=nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model)
  tx = optimizer(config)
  opt_state = tx.init(params)
  _write_config(config, workdir)
  schedule = learning_rate(config)
  dropout_root = jax.random.fold_in(jax.random.key(config.seed), 1)
  last = {}

  with checkpoints.manager(workdir, config.keep_checkpoints) as mngr:
    start, data_state = mngr.latest_step() or 0, None
    if start:
      params, opt_state, data_state = checkpoints.restore(
          mngr, start, params, opt_state)
      print(f"resuming {workdir} from step {start}")
    writer = metrics.JsonlWriter(workdir / "metrics.jsonl", resume_step=start)
    last_ckpt = start
    for p, (a, b) in enumerate(bounds):
      if b <= start:
        continue
      seq_len = config.schedule.seq_lens[p]
      scale = config.schedule.window_scales[p]
      sampler = sampler_lib.WindowSampler(
          corpus, "train", seq_len=seq_len, seed=config.seed, stream=p,
          batch_size=config.schedule.batch_sizes[p])
      if data_state and data_state["phase"] == p:
        sampler.restore(data_state["sampler"])
      if sampler.index != max(start - a, 0):
        raise ValueError(f"checkpoint {start}: data state {data_state} does "
                         f"not match phase {p} starting at step {a}")
      step_fn = make_train_step(graphdef, tx, scale)
      tick, tick_step = time.perf_counter(), max(start, a)
      for step in range(max(start, a), b):
        x, y = next(sampler)
        params, opt_state, m = step_fn(params, opt_state, x, y,
                                       jax.random.fold_in(dropout_root, step))
        done = step + 1
        if done % config.log_every == 0 or done == b:
          loss = float(m["loss"])  # waits for the step
          _check_finite(loss, done, last_ckpt)
          now = time.perf_counter()
          tokens = (done - tick_step) * x.size
          last = dict(train_loss=loss, train_bpc=loss / math.log(2),
                      grad_norm=float(m["grad_norm"]),
                      learning_rate=float(schedule(step)),
                      tokens_per_s=tokens / (now - tick), phase=p + 1,
                      window=max(config.model.windows) * scale,
                      seq_len=seq_len)
          writer.write(done, last)
          print(f"step {done:>7}/{total} phase {p + 1}/{len(bounds)} "
                f"seq {seq_len} loss {loss:.4f} bpc {last['train_bpc']:.3f} "
                f"lr {last['learning_rate']:.2e} "
                f"{last['tokens_per_s']:,.0f} tok/s", flush=True)
          tick, tick_step = now, done
        if (config.eval_every and done % config.eval_every == 0) or (
            done == total):
          value, count = evaluate.evaluate_model(
              nnx.merge(graphdef, params), corpus, split=config.eval.split,
              seq_len=config.eval.seq_len, step=config.eval.step,
              batch_size=config.eval.batch_size,
              max_chars=config.eval.max_chars, window_scale=scale)
          last = dict(last, eval_bpc=value)
          writer.write(done, {"eval_bpc": value, "eval_chars": count})
          print(f"step {done:>7} eval {config.eval.split} bpc {value:.4f} "
                f"({count:,} chars)", flush=True)
        if done % config.checkpoint_every == 0 or done == b:
          _check_finite(float(m["loss"]), done, last_ckpt)
          checkpoints.save(mngr, done, params, opt_state,
                           {"phase": p, "sampler": sampler.state()})
          last_ckpt = done
  return last


FLAGS = flags.FLAGS


def _define_flags():
  # Only when run as a program: tests and notebooks import this module.
  config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/charlm_default.py:tiny.",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Run folder (resumed if it has "
                      "checkpoints).")


def main(argv):
  del argv
  checkpoints.quiet_orbax()
  print(f"jax {jax.__version__} on {jax.devices()}")
  train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
