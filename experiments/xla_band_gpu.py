"""The chunked attention's two band paths compiled for an H100, without a GPU.

  JAX_PLATFORMS=cpu python experiments/xla_band_gpu.py \
      [--target h100] [--out experiments/results/xla_band_gpu.md]

needs `pip install "lfjax[plan]"` (jax-cuda12-plugin: XLA's deviceless GPU
compiler, lfjax.plan). One MLM micro-batch layer: windowed_attention(
impl="chunked") at batch 8, 4,096 tokens, 12 heads, head_dim 64, window
256 on each side, bfloat16 q/k/v, without and with one global token (the
first, max_global=1), forward and forward+backward (gradients of q, k, v).
Each is compiled twice for the target: band_attention's batched blocks
(what a GPU gets) and its CPU tile loop forced onto the GPU
(band.FORCE_PATH="loop").

Reported per program, from the compiled (optimised) module:
memory_analysis() temp, argument and output bytes; HLO instructions in
all its computations; while loops and their trip counts (XLA's
known_trip_count); kernels per layer: an estimate of launches, the
instructions of the entry computation and of every while body and
condition (times its trip count) that XLA runs as a kernel (fusions,
custom calls such as cuBLAS matmuls, and unfused ops), not counting
parameters, constants, tuples, bitcasts and the while/call wrappers.
Compile-level figures only: no timing.
"""

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lfjax import plan  # noqa: E402
from lfjax.attention import band  # noqa: E402
from lfjax.attention import band_batched  # noqa: E402
from lfjax.attention import windowed_attention  # noqa: E402

B, N, H, D, WINDOW = 8, 4096, 12, 64, 256
# Instructions that launch nothing: bookkeeping, or wrappers whose
# contents are counted (while bodies) or are one kernel (fusions).
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast",
         "while", "call", "after-all", "partition-id", "replica-id",
         "opt-barrier", "add-dependency"}


def program(globals_, backward):
  def fwd(q, k, v, gmask):
    kw = dict(global_mask=gmask, max_global=1) if globals_ else {}
    return windowed_attention(q, k, v, window=WINDOW, impl="chunked", **kw)
  if not backward:
    return fwd
  def fwd_bwd(q, k, v, gmask):
    loss = lambda q, k, v: jnp.sum(fwd(q, k, v, gmask).astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  return fwd_bwd


def compile_for(fn, device):
  one = jax.sharding.SingleDeviceSharding(device)
  x = jax.ShapeDtypeStruct((B, N, H, D), jnp.bfloat16, sharding=one)
  gm = jax.ShapeDtypeStruct((B, N), jnp.bool_, sharding=one)
  jitted = jax.jit(fn)
  try:
    lowered = jitted.trace(x, x, x, gm).lower()
  except AttributeError:  # jax < 0.7: no .trace
    lowered = jitted.lower(x, x, x, gm)
  return lowered.compile()


def computations(text):
  """{name: [instruction lines]} of an HLO module's text, and the entry's
  name."""
  comps, entry, name = {}, None, None
  for line in text.splitlines():
    m = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
    if m:
      name = m.group(2)
      comps[name] = []
      if m.group(1):
        entry = name
    elif line.startswith("}"):
      name = None
    elif name is not None and " = " in line:
      comps[name].append(line)
  return comps, entry


def opcode(line):
  rhs = line.split(" = ", 1)[1]
  # "type opcode(operands)...": the type may be a tuple with spaces.
  m = re.search(r"\s([a-z][\w\-]*)\(", " " + rhs)
  return m.group(1) if m else "?"


def op_counts(text):
  """(instructions, [trip counts of whiles], kernels per layer)."""
  comps, entry = computations(text)
  instructions = sum(len(v) for v in comps.values())
  trips = []

  def launches(name, times):
    total = 0
    for line in comps[name]:
      op = opcode(line)
      if op == "while":
        m = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        n = int(m.group(1)) if m else 1
        trips.append(n if m else None)
        body = re.search(r"body=%?([\w.\-]+)", line).group(1)
        cond = re.search(r"condition=%?([\w.\-]+)", line).group(1)
        total += launches(body, times * n) + launches(cond, times * n)
      elif op not in _FREE:
        total += times
    return total

  kernels = launches(entry, 1)
  return instructions, trips, kernels


def measure(device, globals_, backward, path):
  old = band.FORCE_PATH
  band.FORCE_PATH = path
  jax.clear_caches()  # windowed_attention's jit caches by shape, not path
  try:
    t0 = time.time()
    compiled = compile_for(program(globals_, backward), device)
    seconds = time.time() - t0
  finally:
    band.FORCE_PATH = old
  m = compiled.memory_analysis()
  instructions, trips, kernels = op_counts(compiled.as_text())
  return dict(temp=m.temp_size_in_bytes, arg=m.argument_size_in_bytes,
              out=m.output_size_in_bytes, instructions=instructions,
              trips=trips, kernels=kernels, seconds=seconds)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--target", default="h100", choices=sorted(plan.TARGETS))
  p.add_argument("--out", default=None, help="markdown file to write")
  a = p.parse_args()
  plugin = plan.require_plugin()
  target = plan.parse_target(a.target)
  device = plan.topology_devices(target, plugin)[0]
  c = band_batched.choose_block(N, WINDOW, 0, False, D)
  head = (f"{target.label}, jax {jax.__version__}, jax-cuda12-plugin "
          f"{plugin}: windowed_attention(impl='chunked'), B{B} N{N} H{H} "
          f"D{D}, window {WINDOW}, bf16; batched block C = {c}.")
  rows = ["| globals | pass | path | temp MB | args MB | out MB | HLO "
          "instr. | while loops (trips) | kernels/layer | compile s |",
          "|---|---|---|---|---|---|---|---|---|---|"]
  print(head)
  print("\n".join(rows), flush=True)
  for globals_ in (0, 1):
    for backward in (False, True):
      for path in ("batched", "loop"):
        r = measure(device, globals_, backward, path)
        trips = ", ".join(str(t) for t in r["trips"]) or "-"
        row = (f"| {globals_} | {'fwd+bwd' if backward else 'fwd'} | "
               f"{path} | {r['temp'] / 1e6:,.1f} | {r['arg'] / 1e6:,.1f} | "
               f"{r['out'] / 1e6:,.1f} | {r['instructions']:,} | "
               f"{len(r['trips'])} ({trips}) | {r['kernels']:,} | "
               f"{r['seconds']:.0f} |")
        rows.append(row)
        print(row, flush=True)
  if a.out:
    command = ("JAX_PLATFORMS=cpu python experiments/xla_band_gpu.py "
               f"--target {a.target} --out {a.out}")
    with open(a.out, "w") as f:
      f.write("# The chunked band's batched blocks vs its CPU tile loop, "
              f"compiled for an {target.label}\n\nCommand: `{command}` "
              "(deviceless: no GPU used; compile-level figures, no "
              "timing).\n\n" + head + "\n\n" + "\n".join(rows) + "\n\n"
              + NOTES)


NOTES = """\
- MB = 1e6 bytes, XLA's memory_analysis() of the compiled program: temp
  (every intermediate, XLA's peak), arguments (q, k, v bf16 and the global
  mask), outputs (the attention output; with the backward, dq, dk, dv).
- kernels/layer is an estimate from the optimised HLO: the instructions
  that run as kernels (fusions, cuBLAS/Triton gemm fusions, unfused ops) in
  the entry computation and in each while body and condition times its trip
  count. The loop: ~11 per forward step and ~21 per backward step, 384
  steps each (96 rows of 32 query blocks, 8 rows per step, C = 128).
- The price of the batched form is transient memory: the float32 score
  tensor of the whole layer ([96, 32, 128, 640] = 1.0 GB) and a bf16 copy
  of the probabilities exist at once, nothing of that size is kept for the
  backward (it recomputes from the saved log-sum-exp). XLA fuses the key
  spans' concatenation into the score matmul (a Triton gemm fusion reading
  the five key blocks), the value spans are one 0.25 GB copy.
- The global key's scores are a separate [.., C, 1] part, not
  concatenated to the band's: concatenated, the same programs needed
  2,268.6 MB (fwd) and 3,627.2 MB (fwd+bwd) temp.
- Not measured here: speed on a GPU (no GPU was used).
"""


if __name__ == "__main__":
  main()
