"""Char-LM training throughput: windowed vs full attention, side by side.

  python experiments/charlm_benchmark.py [--seqs 2048,4096] [--repeats 3] [--remat 1]

The paper's small model (41M parameters, configs/charlm_text8_small.py,
phase-1 windows 32..512 with dilation on 2 heads) trains one step (forward,
backward, AdamW) on a batch of random tokens. "full" is the same model with
every window covering the whole sequence, computed by the dense O(N^2)
implementation (masked causal softmax, as a plain transformer). Timings are
interleaved, one of each per round, and the table gives medians; memory is
XLA's compiled peak (arguments + temporaries) of the step.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lfjax import checkpoints  # noqa: E402
from lfjax import train  # noqa: E402
from lfjax.models import charlm  # noqa: E402
from configs import charlm_text8_small  # noqa: E402


def build(config, seq, full, remat):
  c = config.copy_and_resolve_references()
  c.model.remat = remat
  if full:
    c.model.windows = (seq,) * c.model.num_layers
    c.model.attention_impl = "dense"
  model = charlm.CharLM(checkpoints.model_config(c, 27), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  tx = train.optimizer(c)
  opt_state = tx.init(params)
  step = train.make_train_step(graphdef, tx, window_scale=1)
  x = np.random.default_rng(0).integers(0, 27, (1, seq + 1)).astype(np.int32)
  args = (params, opt_state, x[:, :-1], x[:, 1:], jax.random.key(0))
  compiled = step.lower(*args).compile()
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
          + mem.temp_size_in_bytes) if mem else float("nan")
  return compiled, args, peak


def time_once(compiled, args):
  """Seconds for one step, or inf when the step runs out of memory."""
  t = time.perf_counter()
  try:
    jax.block_until_ready(compiled(*args))
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    print(f"<!-- out of memory: {str(e).splitlines()[0][:120]} -->",
          flush=True)
    return float("inf")
  return time.perf_counter() - t


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seqs", default="2048,4096")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--remat", type=int, default=1,
                  help="recompute blocks in the backward (both variants); "
                  "without it full attention runs out of 24 GB at 2048")
  args = ap.parse_args()
  config = charlm_text8_small.get_config()
  print(f"jax {jax.__version__}, {os.cpu_count()} CPUs; small model "
        f"(12x512, windows {config.model.windows[0]}..."
        f"{config.model.windows[-1]}), batch 1, float32, remat "
        f"{bool(args.remat)}, medians of {args.repeats}")
  rows = []
  for seq in [int(s) for s in args.seqs.split(",")]:
    runs = {name: build(config, seq, full, bool(args.remat))
            for name, full in (("windowed", False), ("full", True))}
    peaks = {name: r[2] for name, r in runs.items()}
    times = {name: [] for name in runs}
    for name, (compiled, a, _) in list(runs.items()):
      if time_once(compiled, a) == float("inf"):  # warm-up
        times[name] = [float("inf")]
        del runs[name]
    for _ in range(args.repeats):
      for name, (compiled, a, _) in runs.items():
        times[name].append(time_once(compiled, a))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows.append((seq, seq / med["windowed"], seq / med["full"],
                 med["full"] / med["windowed"], peaks["windowed"] / 2**30,
                 peaks["full"] / 2**30))
    print(f"seq {seq}: " + ", ".join(f"{k} {v:.2f} s" for k, v in
                                     med.items()), flush=True)
    del runs
  print("\n| seq | windowed tok/s | full tok/s | windowed speedup | "
        "windowed compiled peak GiB | full compiled peak GiB |")
  print("|---|---|---|---|---|---|")
  for seq, tw, tf, ratio, mw, mf in rows:
    oom = tf == 0
    tf = "out of memory" if oom else f"{tf:,.0f}"
    ratio = "n/a" if oom else f"{ratio:.2f}x"
    print(f"| {seq} | {tw:,.0f} | {tf} | {ratio} | {mw:.2f} | {mf:.2f} |")


if __name__ == "__main__":
  main()
