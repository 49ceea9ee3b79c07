"""Char-LM training throughput: windowed vs full attention, side by side.

  python experiments/charlm_benchmark.py [--seqs 2048,4096] [--repeats 3]

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


def build(config, seq, full):
  c = config.copy_and_resolve_references()
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
  t = time.perf_counter()
  out = compiled(*args)
  jax.block_until_ready(out)
  return time.perf_counter() - t


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seqs", default="2048,4096")
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  config = charlm_text8_small.get_config()
  print(f"jax {jax.__version__}, {os.cpu_count()} CPUs; small model "
        f"(12x512, windows {config.model.windows[0]}..."
        f"{config.model.windows[-1]}), batch 1, float32, medians of "
        f"{args.repeats}")
  rows = []
  for seq in [int(s) for s in args.seqs.split(",")]:
    runs = {name: build(config, seq, full)
            for name, full in (("windowed", False), ("full", True))}
    times = {name: [] for name in runs}
    for name, (compiled, a, _) in runs.items():
      time_once(compiled, a)  # warm-up
    for _ in range(args.repeats):
      for name, (compiled, a, _) in runs.items():
        times[name].append(time_once(compiled, a))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows.append((seq, seq / med["windowed"], seq / med["full"],
                 med["full"] / med["windowed"], runs["windowed"][2] / 2**30,
                 runs["full"][2] / 2**30))
    del runs
  print("\n| seq | windowed tok/s | full tok/s | windowed speedup | "
        "windowed peak GiB | full peak GiB |")
  print("|---|---|---|---|---|---|")
  for seq, tw, tf, ratio, mw, mf in rows:
    print(f"| {seq} | {tw:,.0f} | {tf:,.0f} | {ratio:.2f}x | {mw:.2f} | "
          f"{mf:.2f} |")


if __name__ == "__main__":
  main()
