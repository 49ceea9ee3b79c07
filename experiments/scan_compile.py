"""Compile time of the encoder's MLM train step, scanned layers vs unrolled.

  python experiments/scan_compile.py            # 12 and 24 layers, ~25 min
  python experiments/scan_compile.py --quick    # tiny model, 2 and 4 layers

Builds a random LongformerForMaskedLM (hidden 512, 8 heads, FFN 2048,
vocabulary 8192, window 256 in every layer, dropout on) for each depth and
setting, makes the MLM train step (lfjax.train_step.make_train_step: AdamW,
one micro-batch, a masked-token cross entropy over 64 positions per
sequence) and times `step.lower(...).compile()`, split into trace+lower and
XLA compile, the median of --repeats fresh jits. Then runs the compiled
step of the smallest depth (--step_layers) several times for the step-time
ratio. Prints a markdown table and writes it to --out with the command, the
JAX version and the machine.

float32 on CPU by default (whatever jax.devices() gives). The figures are
wall times: on a shared machine quote the ratios, not the seconds.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lfjax import train_step
from lfjax.models import LongformerConfig
from lfjax.models import LongformerForMaskedLM

FULL = dict(hidden=512, heads=8, ffn=2048, vocab=8192, window=256, seq=1024,
            batch=1, layers=(12, 24))
QUICK = dict(hidden=64, heads=2, ffn=128, vocab=512, window=32, seq=128,
             batch=2, layers=(2, 4))


def model_config(a, layers, scan):
  return LongformerConfig(
      vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=layers,
      num_attention_heads=a.heads, intermediate_size=a.ffn,
      max_position_embeddings=a.seq + 2, type_vocab_size=1,
      layer_norm_eps=1e-5, attention_window=a.window, scan_layers=scan,
      remat=a.remat)


def build(a, layers, scan):
  """(jitted step, its arguments) for a fresh random model."""
  cfg = model_config(a, layers, scan)
  model = LongformerForMaskedLM(cfg, rngs=nnx.Rngs(0))
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(1e-4)
  opt_state = tx.init(params)
  k = 64  # predicted positions per sequence

  def loss_fn(m, mb, key):
    logits = m(mb["ids"], positions=mb["positions"]).logits
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, mb["labels"])
    return {"loss_sum": jnp.sum(ce), "count": jnp.float32(ce.size)}

  step = train_step.make_train_step(
      graphdef, rest, tx, loss_fn, batch_size=a.batch,
      micro_batch_size=a.batch, donate=False)
  rng = np.random.default_rng(0)
  batch = {
      "ids": jnp.asarray(rng.integers(3, a.vocab, (a.batch, a.seq)),
                         jnp.int32),
      "positions": jnp.asarray(np.sort(rng.choice(a.seq, (a.batch, k))),
                               jnp.int32),
      "labels": jnp.asarray(rng.integers(3, a.vocab, (a.batch, k)),
                            jnp.int32)}
  return step, (params, opt_state, batch, jax.random.key(1))


def time_compile(a, layers, scan):
  """Median (trace+lower s, compile s) over a.repeats fresh jits."""
  lowers, compiles = [], []
  for _ in range(a.repeats):
    step, args = build(a, layers, scan)
    t0 = time.perf_counter()
    lowered = step.lower(*args)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    lowers.append(t1 - t0)
    compiles.append(t2 - t1)
  return statistics.median(lowers), statistics.median(compiles)


def time_steps(a, layers, scan):
  """Median seconds per step of the compiled step (after one warm-up), and
  the step's loss (the two settings must agree)."""
  step, args = build(a, layers, scan)
  compiled = step.lower(*args).compile()
  out = jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(a.steps):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), float(out[2]["loss"])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="tiny model, 2 and 4 layers (a smoke test)")
  p.add_argument("--layers", type=int, nargs="+", default=None)
  p.add_argument("--repeats", type=int, default=3,
                 help="fresh jits per setting (median)")
  p.add_argument("--steps", type=int, default=5,
                 help="timed steps for the step-time ratio (median)")
  p.add_argument("--step_layers", type=int, default=None,
                 help="depth of the step-time ratio (default: the smallest)")
  p.add_argument("--remat", action="store_true", help="model.remat on")
  p.add_argument("--out", default=None,
                 help="markdown file (default experiments/results/"
                 "scan_compile.md; --quick: scan_compile_quick.md)")
  a = p.parse_args(argv)
  sizes = QUICK if a.quick else FULL
  for name, value in sizes.items():
    if name == "layers":
      a.layers = a.layers or list(value)
    else:
      setattr(a, name, value)
  a.step_layers = a.step_layers or min(a.layers)
  out = a.out or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      "scan_compile_quick.md" if a.quick else "scan_compile.md")

  load = [os.getloadavg()[0]]
  rows = []
  for layers in a.layers:
    t = {scan: time_compile(a, layers, scan) for scan in (False, True)}
    total = {s: sum(v) for s, v in t.items()}
    rows.append(
        f"| {layers} | {t[False][0]:.1f} + {t[False][1]:.1f} = "
        f"{total[False]:.1f} | {t[True][0]:.1f} + {t[True][1]:.1f} = "
        f"{total[True]:.1f} | {total[True] / total[False]:.2f} | "
        f"{t[True][1] / t[False][1]:.2f} |")
    print(rows[-1], flush=True)
  step = {scan: time_steps(a, a.step_layers, scan) for scan in (False, True)}
  load.append(os.getloadavg()[0])
  losses = {s: v[1] for s, v in step.items()}
  cfg = model_config(a, a.step_layers, False)
  lines = [
      "# Scanned vs unrolled encoder layers: compile time of the MLM train "
      "step",
      "",
      "```",
      " ".join(["python experiments/scan_compile.py"] + (
          sys.argv[1:] if argv is None else argv)),
      "```",
      "",
      f"JAX {jax.__version__}, {jax.devices()[0].platform} "
      f"({platform.processor() or platform.machine()}, {os.cpu_count()} "
      f"cores), float32. LongformerForMaskedLM, hidden {cfg.hidden_size}, "
      f"{cfg.num_attention_heads} heads, FFN {cfg.intermediate_size}, "
      f"vocabulary {cfg.vocab_size}, window {a.window} in every layer, "
      f"batch {a.batch} x {a.seq} tokens, 64 predicted positions per "
      f"sequence, dropout on, remat {'on' if a.remat else 'off'}; "
      f"lfjax.train_step.make_train_step with AdamW. Seconds are wall "
      f"times, the median of {a.repeats} fresh jits: `step.lower(...)` "
      f"(trace + lower) + `.compile()` (XLA). One-minute load average "
      f"{load[0]:.1f} at the start, {load[1]:.1f} at the end: where it "
      f"exceeds the cores, other jobs shared the CPU and the seconds are "
      f"inflated and noisy; the ratios are the result.",
      "",
      "| layers | unrolled: lower + compile = total (s) | scanned (s) | "
      "scanned / unrolled, total | compile only |",
      "|---|---|---|---|---|",
      *rows,
      "",
      f"Step time at {a.step_layers} layers (median of {a.steps} steps "
      f"after a warm-up): unrolled {step[False][0] * 1e3:.0f} ms, scanned "
      f"{step[True][0] * 1e3:.0f} ms, ratio "
      f"{step[True][0] / step[False][0]:.2f}. Step loss unrolled "
      f"{losses[False]:.6f}, scanned {losses[True]:.6f}.",
  ]
  text = "\n".join(lines) + "\n"
  print(text)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    f.write(text)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
