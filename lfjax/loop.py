"""The training loop every task shares: resume, steps, progress, metrics,
evaluation and checkpoints.

A task (a module of lfjax.tasks) hands over its phases;
this loop restores the newest checkpoint of the workdir, replays nothing,
writes metrics.jsonl so that a resumed run reads as an uninterrupted one, and
saves params, optimizer state and the data position together.
"""

import dataclasses
import math
import pathlib
import time
from typing import Any, Callable

import jax

from lfjax import checkpoints
from lfjax import metrics


@dataclasses.dataclass
class Phase:
  """Steps [start, end) run with one sampler and one compiled step.

  sampler: an iterator of batches with .index, .state() and .restore().
  step_fn(params, opt_state, batch, step) -> (params, opt_state, metrics),
    metrics a dict of device scalars holding at least "loss".
  summarize(metrics as floats) -> the record to log (must hold
    "train_loss"; "train_bpc", when there, is printed too).
  info: constant fields added to every logged record (seq_len, window...).
  tokens_per_batch: for the tokens/s column.
  """
  start: int
  end: int
  sampler: Any
  step_fn: Callable
  summarize: Callable
  info: dict
  tokens_per_batch: int


def say(*args, **kwargs):
  """print() on process 0 only: in a multi-process run every process runs
  the same steps, and the log should appear once."""
  if jax.process_index() == 0:
    print(*args, **kwargs)


def check_finite(loss, step, last_ckpt):
  if not math.isfinite(loss):
    where = (f"the newest checkpoint is step {last_ckpt}" if last_ckpt
             else "no checkpoint was saved")
    raise FloatingPointError(
        f"train loss is {loss} at step {step}; stopping without saving it "
        f"({where}). Lower the learning rate or clip the gradient norm "
        "harder (see the config's optim fields)")


def finished(workdir, step, total, steps):
  """Says where a finished run's results are; returns its last record (the
  records logged at its last step, merged), as the run itself returned."""
  say("\n".join([f"{workdir} is already finished: its newest checkpoint "
                 f"is step {step} of {total}."] + _where(workdir, steps)
                + ["To train on, give it a longer schedule; to start "
                   "over, use a new --workdir."]), flush=True)
  path = workdir / "metrics.jsonl"
  last = {}
  for rec in metrics.read(path) if path.exists() else []:
    if rec["step"] == step:
      last.update({k: v for k, v in rec.items() if k != "step"})
  return last


def run(workdir, config, params, opt_state, phases, learning_rate,
        evaluate_fn):
  """Trains (or resumes) through `phases`; returns the last logged record.

  config: the run's config, written to workdir (checkpoints.write_config:
    check it with checkpoints.check_config before loading data and model);
    needs log_every, eval_every (0 = only at the end), checkpoint_every,
    keep_checkpoints, tensorboard (also write the records as TensorBoard
    scalars in workdir/tensorboard/).
  evaluate_fn(params, phase index) -> (record, printable summary).

  workdir is created here. A start that fails before it saves a
  checkpoint or logs a record leaves workdir as it was
  (checkpoints.undo_failed_start), so the corrected command is a fresh
  start, not a resume with a changed config.
  """
  workdir = pathlib.Path(workdir)
  with checkpoints.undo_failed_start(workdir):
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints.write_config(config, workdir, total=phases[-1].end)
    return _train(workdir, config, params, opt_state, phases, learning_rate,
                  evaluate_fn)


def _train(workdir, config, params, opt_state, phases, learning_rate,
           evaluate_fn):
  total = phases[-1].end
  last = {}
  t0 = time.perf_counter()
  evaluated = False
  with checkpoints.manager(workdir, config.keep_checkpoints) as mngr:
    start, data_state = mngr.latest_step() or 0, None
    if start:
      params, opt_state, data_state = checkpoints.restore(
          mngr, start, params, opt_state)
      if start >= total:
        return finished(workdir, start, total, mngr.all_steps())
      say(f"resuming {workdir} from step {start}")
    mirror = None
    if config.tensorboard:
      mirror = metrics.TensorBoardWriter(workdir / metrics.TENSORBOARD_DIR,
                                         resume_step=start)
    writer = metrics.JsonlWriter(workdir / "metrics.jsonl", resume_step=start,
                                 mirror=mirror)
    last_ckpt = start
    for p, ph in enumerate(phases):
      if ph.end <= start:
        continue
      if data_state and data_state["phase"] == p:
        ph.sampler.restore(data_state["sampler"])
      if ph.sampler.index != max(start - ph.start, 0):
        raise ValueError(f"checkpoint {start}: data state {data_state} does "
                         f"not match phase {p} starting at step {ph.start}")
      first = max(start, ph.start)
      # The first step of a phase compiles (minutes for a big model): say so
      # before the wait, and keep it out of tokens/s.
      say(f"phase {p + 1}/{len(phases)}: compiling the train step (seq "
          f"{ph.info.get('seq_len')}, {ph.tokens_per_batch:,} tokens per "
          "batch)...", flush=True)
      tick, tick_step = time.perf_counter(), first
      for step in range(first, ph.end):
        batch = next(ph.sampler)
        params, opt_state, m = ph.step_fn(params, opt_state, batch, step)
        done = step + 1
        if step == first:
          jax.block_until_ready(m)
          now = time.perf_counter()
          say(f"phase {p + 1}/{len(phases)}: compiled; first step took "
              f"{now - tick:.1f} s", flush=True)
          tick, tick_step = now, done
        if done % config.log_every == 0 or done == ph.end:
          host = {k: float(v) for k, v in m.items()}  # waits for the step
          check_finite(host["loss"], done, last_ckpt)
          now = time.perf_counter()
          # None when the interval holds only the compiling step.
          rate = ((done - tick_step) * ph.tokens_per_batch / (now - tick)
                  if done > tick_step else None)
          last = dict(ph.summarize(host),
                      learning_rate=float(learning_rate(step)),
                      tokens_per_s=rate, phase=p + 1, **ph.info)
          writer.write(done, last)
          say(f"step {done:>7}/{total} phase {p + 1}/{len(phases)} "
              f"seq {ph.info.get('seq_len')} "
              f"loss {last['train_loss']:.4f} "
              + (f"bpc {last['train_bpc']:.3f} " if "train_bpc" in last
                 else "")
              + f"lr {last['learning_rate']:.2e} "
              + (f"{rate:,.0f} tok/s " if rate else "")
              + f"elapsed {_duration(now - t0)} "
              f"eta {_eta(rate, phases, p, done)}", flush=True)
          if rate:
            tick, tick_step = now, done
        if (config.eval_every and done % config.eval_every == 0) or (
            done == total):
          if not evaluated:
            say(f"step {done:>7} evaluating (the first evaluation "
                "compiles)...", flush=True)
            evaluated = True
          record, text = evaluate_fn(params, p)
          last = dict(last, **record)
          writer.write(done, record)
          say(f"step {done:>7} eval {text}", flush=True)
          tick, tick_step = time.perf_counter(), done  # tok/s excludes eval
        if done % config.checkpoint_every == 0 or done == ph.end:
          check_finite(float(m["loss"]), done, last_ckpt)
          checkpoints.save(mngr, done, params, opt_state,
                           {"phase": p, "sampler": ph.sampler.state()})
          last_ckpt = done
    # The last save was only started (lfjax.checkpoints.save): it is
    # committed, with its record, before the run says it is done.
    mngr.wait_until_finished()
    if start < total:
      _summary(workdir, total, time.perf_counter() - t0, mngr.all_steps(),
               last)
  return last


def _duration(seconds):
  s = int(round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _eta(rate, phases, p, done):
  """Time left at the current tokens/s (later phases' compiles and
  evaluations not counted): a rough guide."""
  if not rate:
    return "?"
  left = sum((ph.end - max(done, ph.start)) * ph.tokens_per_batch
             for ph in phases[p:] if ph.end > done)
  return "~" + _duration(left / rate)


def _summary(workdir, total, seconds, steps, last):
  """Where a finished run's results are."""
  evals = ", ".join(f"{k} {v:.4f}" for k, v in last.items()
                    if k.startswith("eval_") and isinstance(v, float))
  lines = [f"finished step {total} in {_duration(seconds)}"
           + (f": {evals}" if evals else "")] + _where(workdir, steps)
  say("\n".join(lines), flush=True)


def _where(workdir, steps):
  """Lines naming a run's checkpoints, metrics, config and eval files."""
  lines = [f"  checkpoints: {workdir}/checkpoints (steps "
           f"{', '.join(map(str, sorted(steps)))})",
           f"  metrics:     {workdir}/metrics.jsonl (one JSON line per "
           "logged step and evaluation)",
           f"  config:      {workdir}/config.json"]
  for path in sorted(pathlib.Path(workdir).glob("eval_*.json")):
    lines.append(f"  eval file:   {path}")
  return lines
