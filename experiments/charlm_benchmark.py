"""Char-LM training throughput and memory, variants side by side.

  python experiments/charlm_benchmark.py [--seqs 2048,4096] [--repeats 3] \
      [--remat 1] [--variants table,features,full] [--time_up_to 8192]

The paper's small model (41M parameters, configs/charlm_text8_small.py,
phase-1 windows 32..512 with dilation on 2 heads) trains one step (forward,
backward, AdamW) on a batch of random tokens. Variants:
- "table": relative positions as a per-distance table inside the windowed
  attention (model.rel_impl="table", the default);
- "features": the same model with the position term as 512 extra q/k
  columns (rel_impl="features", the earlier path);
- "full": every window covering the whole sequence, computed by the dense
  O(N^2) implementation (masked causal softmax, as a plain transformer).
Timings are interleaved, one of each per round, and the table gives
medians; memory is XLA's compiled peak (arguments + outputs + temporaries)
of the step; lengths past --time_up_to are compiled, not run. The loss
column checks that table and features compute the same step. CPU seconds
(the process's user + system time per step, all threads) are reported
next to wall time: on a shared machine other processes stretch the wall
time of both variants unevenly, while the work a step does stays put.
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
from lfjax.tasks import charlm as train  # noqa: E402
from lfjax.models import charlm  # noqa: E402
from configs import charlm_text8_small  # noqa: E402


def build(config, seq, variant, remat):
  c = config.copy_and_resolve_references()
  c.model.remat = remat
  full = variant == "full"
  c.model.rel_impl = "features" if variant == "features" else "table"
  if full:
    c.model.windows = (seq,) * c.model.num_layers
    c.model.attention_impl = "dense"
  model = charlm.CharLM(checkpoints.model_config(c, 27), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = train.optimizer(c)
  opt_state = tx.init(params)
  step = train.make_train_step(graphdef, tx, window_scale=1, batch_size=1)
  x = np.random.default_rng(0).integers(0, 27, (1, seq + 1)).astype(np.int32)
  args = (params, opt_state, {"inputs": x[:, :-1], "targets": x[:, 1:]},
          jax.random.key(0))
  compiled = step.lower(*args).compile()
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
          + mem.temp_size_in_bytes) if mem else float("nan")
  return compiled, args, peak


def time_once(compiled, args):
  """The step's outputs, or None when it runs out of memory."""
  try:
    return jax.block_until_ready(compiled(*args))
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    print(f"<!-- out of memory: {str(e).splitlines()[0][:120]} -->",
          flush=True)
    return None


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seqs", default="2048,4096")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--remat", type=int, default=1,
                  help="recompute blocks in the backward (both variants); "
                  "without it full attention runs out of 24 GB at 2048")
  ap.add_argument("--variants", default="table,features,full")
  ap.add_argument("--time_up_to", type=int, default=8192,
                  help="longer sequences are compiled (memory) but not run")
  ap.add_argument("--max_full_seq", type=int, default=4096,
                  help="full attention is not even compiled past this")
  args = ap.parse_args()
  variants = args.variants.split(",")
  return run(args, variants)


def run(args, variants):
  config = charlm_text8_small.get_config()
  print(f"jax {jax.__version__}, {os.cpu_count()} CPUs; small model "
        f"(12x512, windows {config.model.windows[0]}..."
        f"{config.model.windows[-1]}), batch 1, float32, remat "
        f"{bool(args.remat)}, medians of {args.repeats}")
  rows = []
  for seq in [int(s) for s in args.seqs.split(",")]:
    names = [v for v in variants if v != "full" or seq <= args.max_full_seq]
    runs = {name: build(config, seq, name, bool(args.remat)) for name in names}
    peaks = {name: r[2] for name, r in runs.items()}
    times = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    losses = {}
    if seq <= args.time_up_to:
      for name, (compiled, a, _) in list(runs.items()):
        out = time_once(compiled, a)  # warm-up
        if out is None:
          times[name] = [float("inf")]
          del runs[name]
        else:
          losses[name] = float(out[2]["loss"])
      for _ in range(args.repeats):
        for name, (compiled, a, _) in runs.items():
          t, c = time.perf_counter(), time.process_time()
          jax.block_until_ready(compiled(*a))
          times[name].append(time.perf_counter() - t)
          cpu[name].append(time.process_time() - c)
    med = {k: statistics.median(v) if v else float("nan")
           for k, v in times.items()}
    med_cpu = {k: statistics.median(v) if v else float("nan")
               for k, v in cpu.items()}
    rows.append((seq, med, med_cpu, peaks, losses))
    print(f"seq {seq}: " + ", ".join(
        f"{k} {v:.2f} s ({med_cpu[k]:.2f} CPU s)" for k, v in med.items())
        + "; peaks " + ", ".join(
        f"{k} {v / 2**30:.2f} GiB" for k, v in peaks.items()), flush=True)
    del runs
  print("\n| seq | " + " | ".join(f"{v} s/step" for v in variants)
        + " | table speedup vs features | CPU s/step table / features "
        "| CPU speedup | " + " | ".join(
            f"{v} compiled peak GiB" for v in variants)
        + " | loss table / features |")
  print("|---" * (2 * len(variants) + 5) + "|")
  for seq, med, med_cpu, peaks, losses in rows:
    cell = lambda v: ("not run" if v not in med or med[v] != med[v] else
                      "out of memory" if med[v] == float("inf")
                      else f"{med[v]:.2f}")
    speed = (f"{med['features'] / med['table']:.2f}x"
             if "table" in med and "features" in med
             and med["table"] == med["table"] and med["features"] == med[
                 "features"] else "n/a")
    both = ("table" in med_cpu and "features" in med_cpu
            and med_cpu["table"] == med_cpu["table"]
            and med_cpu["features"] == med_cpu["features"])
    cpus = (f"{med_cpu['table']:.2f} / {med_cpu['features']:.2f}" if both
            else "n/a")
    cpu_speed = (f"{med_cpu['features'] / med_cpu['table']:.2f}x" if both
                 else "n/a")
    mem = lambda v: f"{peaks[v] / 2**30:.2f}" if v in peaks else "not compiled"
    loss = (f"{losses['table']:.6f} / {losses['features']:.6f}"
            if "table" in losses and "features" in losses else "n/a")
    print(f"| {seq} | " + " | ".join(cell(v) for v in variants)
          + f" | {speed} | {cpus} | {cpu_speed} | "
          + " | ".join(mem(v) for v in variants)
          + f" | {loss} |")


if __name__ == "__main__":
  main()
