"""The training loop every task shares: resume, steps, progress, metrics,
evaluation and checkpoints.

A task (char-LM in lfjax.train, MLM in lfjax.mlm) hands over its phases;
this loop restores the newest checkpoint of the workdir, replays nothing,
writes metrics.jsonl so that a resumed run reads as an uninterrupted one, and
saves params, optimizer state and the data position together.
"""

import dataclasses
import math
import time
from typing import Any, Callable


from lfjax import checkpoints
from lfjax import metrics


@dataclasses.dataclass
class Phase:
  """Steps [start, end) run with one sampler and one compiled step.

  sampler: an iterator of batches with .index, .state() and .restore().
  step_fn(params, opt_state, batch, step) -> (params, opt_state, metrics),
    metrics a dict of device scalars holding at least "loss".
  summarize(metrics as floats) -> the record to log (must hold
    "train_loss" and "train_bpc").
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


def check_finite(loss, step, last_ckpt):
  if not math.isfinite(loss):
    where = (f"the newest checkpoint is step {last_ckpt}" if last_ckpt
             else "no checkpoint was saved")
    raise FloatingPointError(
        f"train loss is {loss} at step {step}; stopping without saving it "
        f"({where}). Lower the learning rate or clip the gradient norm "
        "harder (see the config's optim fields)")


def run(workdir, config, params, opt_state, phases, learning_rate,
        evaluate_fn):
  """Trains (or resumes) through `phases`; returns the last logged record.

  config: needs log_every, eval_every (0 = only at the end),
    checkpoint_every, keep_checkpoints.
  evaluate_fn(params, phase index) -> (record, printable summary).
  """
  total = phases[-1].end
  last = {}
  with checkpoints.manager(workdir, config.keep_checkpoints) as mngr:
    start, data_state = mngr.latest_step() or 0, None
    if start:
      params, opt_state, data_state = checkpoints.restore(
          mngr, start, params, opt_state)
      print(f"resuming {workdir} from step {start}")
    writer = metrics.JsonlWriter(workdir / "metrics.jsonl", resume_step=start)
    last_ckpt = start
    for p, ph in enumerate(phases):
      if ph.end <= start:
        continue
      if data_state and data_state["phase"] == p:
        ph.sampler.restore(data_state["sampler"])
      if ph.sampler.index != max(start - ph.start, 0):
        raise ValueError(f"checkpoint {start}: data state {data_state} does "
                         f"not match phase {p} starting at step {ph.start}")
      tick, tick_step = time.perf_counter(), max(start, ph.start)
      for step in range(max(start, ph.start), ph.end):
        batch = next(ph.sampler)
        params, opt_state, m = ph.step_fn(params, opt_state, batch, step)
        done = step + 1
        if done % config.log_every == 0 or done == ph.end:
          host = {k: float(v) for k, v in m.items()}  # waits for the step
          check_finite(host["loss"], done, last_ckpt)
          now = time.perf_counter()
          last = dict(ph.summarize(host),
                      learning_rate=float(learning_rate(step)),
                      tokens_per_s=((done - tick_step) * ph.tokens_per_batch
                                    / (now - tick)),
                      phase=p + 1, **ph.info)
          writer.write(done, last)
          print(f"step {done:>7}/{total} phase {p + 1}/{len(phases)} "
                f"seq {ph.info.get('seq_len')} "
                f"loss {last['train_loss']:.4f} bpc {last['train_bpc']:.3f} "
                f"lr {last['learning_rate']:.2e} "
                f"{last['tokens_per_s']:,.0f} tok/s", flush=True)
          tick, tick_step = now, done
        if (config.eval_every and done % config.eval_every == 0) or (
            done == total):
          record, text = evaluate_fn(params, p)
          last = dict(last, **record)
          writer.write(done, record)
          print(f"step {done:>7} eval {text}", flush=True)
          tick, tick_step = time.perf_counter(), done  # tok/s excludes eval
        if done % config.checkpoint_every == 0 or done == ph.end:
          check_finite(float(m["loss"]), done, last_ckpt)
          checkpoints.save(mngr, done, params, opt_state,
                           {"phase": p, "sampler": ph.sampler.state()})
          last_ckpt = done
  return last
