"""The band kernel's GPU resources per kernel, compiled for A100 and H100.

  python experiments/kernel_resources.py [--targets a100,h100] \
      [--variants all] [--compare 64,64,4,2 ...] \
      [--out experiments/results/kernel_resources.md]

needs `pip install "lfjax[plan]"` (Python 3.12: JAX's CUDA plugin, ptxas);
no GPU. Every variant of lfjax.kernels.gpu_compile (windowed_attention
(impl="pallas") forward + backward at 4,096 tokens) is compiled by XLA for
the target (deviceless: XLA's Triton, LLVM and ptxas, as on the GPU) in a
child process, and per Triton kernel the table gives the launch grid,
shared memory (bytes per block; the target's opt-in limit in the header),
registers per thread, spill stores / loads (bytes per thread), stack frame,
num_warps and num_stages. The first table uses the kernel's own block sizes
(band_attention.BlockSizes.default: per GPU family, head_dim and dtype).
--compare adds, per forced (block_q, block_k, num_warps, num_stages), a
compact table of the same variants (the search behind that choice, and the
old default 64,64,4,2). Variants impl="pallas" refuses are listed with the
reason. Figures are compile outputs, not timings.
"""

import argparse
import datetime
import importlib.metadata
import os
import platform
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lfjax.kernels import gpu_compile  # noqa: E402


def table(rows):
  lines = ["| target | variant | kernel | grid | threads | shared memory B "
           "| registers | spill stores / loads B | stack B | warps "
           "| stages |", "|" + "---|" * 11]
  for r in rows:
    lines.append(
        f"| {r.target} | {r.variant} | {r.kernel} | "
        f"{'x'.join(map(str, r.grid))} | {r.threads[0]} | "
        f"{r.shared_memory:,} | {r.registers} | "
        f"{r.spill_stores:,} / {r.spill_loads:,} | {r.stack:,} | "
        f"{r.num_warps} | {r.num_stages} |")
  return lines


def compact(rows, blocks):
  """One line per (target, variant): per kernel kind the worst copy's
  shared memory / registers / spill stores."""
  out = {}
  for r in rows:
    kind = r.kernel.split("__")[0].replace("lfjax_band_", "")
    key = (r.target, r.variant)
    fig = (r.shared_memory, r.registers, r.spill_stores + r.spill_loads)
    prev = out.setdefault(key, {}).get(kind)
    out[key][kind] = fig if prev is None else tuple(map(max, prev, fig))
  lines = []
  for (target, variant), kinds in out.items():
    cells = [(f"{kinds[k][0]:,} / {kinds[k][1]} / "
              + (f"**{kinds[k][2]:,}**" if kinds[k][2] else "0"))
             if k in kinds else "-" for k in ("fwd", "dq", "dkv", "dglobal")]
    lines.append(f"| {blocks} | {target} | {variant} | " + " | ".join(cells)
                 + " |")
  return lines


def print_rows(rows):
  for r in rows:
    print(f"{r.target:5} {r.variant:24} {r.kernel:20} "
          f"grid {'x'.join(map(str, r.grid)):9} smem {r.shared_memory:7} "
          f"regs {r.registers:3} spills {r.spill_stores}/{r.spill_loads} "
          f"stack {r.stack} warps {r.num_warps} stages {r.num_stages}",
          flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--targets", default="a100,h100")
  p.add_argument("--variants", default="all",
                 help="all, or comma-separated names: "
                 + ", ".join(gpu_compile.BY_NAME))
  p.add_argument("--compare", nargs="*", default=[],
                 help="forced block_q,block_k,num_warps,num_stages "
                 "configurations to compare")
  p.add_argument("--out", default=os.path.join(
      os.path.dirname(__file__), "results", "kernel_resources.md"))
  args = p.parse_args()
  names = (list(gpu_compile.BY_NAME) if args.variants == "all"
           else args.variants.split(","))
  targets = args.targets.split(",")
  cmd = " ".join(["python experiments/kernel_resources.py"] + [
      f"--{k} {' '.join(v) if isinstance(v, list) else v}"
      for k, v in vars(args).items()
      if k != "out" and v != p.get_default(k)])
  plugin = importlib.metadata.version("jax-cuda12-plugin")
  limits = {t: gpu_compile.shared_memory_limit(t) for t in targets}
  rows, refused, failures = [], {}, []
  for t in targets:
    got, unsupported, failed = gpu_compile.compile_variants(t, names)
    print_rows(got)
    rows += got
    refused.update(unsupported)
    failures += [f"- {t} {n}: {why}" for n, why in failed.items()]
  lines = [
      "# The band kernel's GPU resources (deviceless compiles)", "",
      f"Command: `{cmd}` ({datetime.date.today().isoformat()}; jax "
      f"{importlib.metadata.version('jax')}, jax-cuda12-plugin {plugin}, "
      f"Python {platform.python_version()}, JAX_PLATFORMS=cpu, no GPU). "
      "Test: `LFJAX_TEST_PLAN=1 python -m pytest "
      "tests/test_kernel_compile.py` (CI's plan step) asserts every "
      "variant compiles, fits shared memory and spills nothing.", "",
      "Variants: windowed_attention(impl=\"pallas\") forward + backward "
      f"(jax.grad), batch 1, {gpu_compile.TOKENS:,} tokens, "
      f"{gpu_compile.HEADS} heads, window {gpu_compile.WINDOW} "
      "(one-sided); see lfjax/kernels/gpu_compile.py. Kernels named `__N` "
      "are XLA's copies of one Pallas kernel at another shape (the "
      "dilation classes). Shared memory per block allowed (opt-in): "
      + ", ".join(f"{t} {b:,} B" for t, b in limits.items()) + ". "
      "Registers per thread (at most 255); spills and stack in bytes per "
      "thread (ptxas -v).", "",
      "## With the kernel's block sizes (BlockSizes.default)", ""]
  lines += table(rows)
  if refused:
    lines += ["", "Not compiled (impl=\"pallas\" refuses them today; they "
              "turn on when it does):"]
    lines += [f"- {n}: {why}" for n, why in refused.items()]
  if failures:
    lines += ["", "Did not compile:"] + failures
  if args.compare:
    lines += ["", "## Forced block sizes (block_q, block_k, num_warps, "
              "num_stages)", "",
              "Per kernel: shared memory B / registers / spill stores + "
              "loads B (the worst copy). 64,64,4,2 was BlockSizes.default "
              "for every head_dim <= 128 and dtype before the table (up to "
              "commit 76745ba); the search behind the table: "
              "[kernel_resources_search.md](kernel_resources_search.md).",
              "",
              "| blocks | target | variant | fwd | dq | dkv | dglobal |",
              "|---|---|---|---|---|---|---|"]
    for spec in args.compare:
      blocks = tuple(int(x) for x in spec.split(","))
      for t in targets:
        got, _, failed = gpu_compile.compile_variants(t, names,
                                                      blocks=blocks)
        print(f"# forced {spec} on {t}")
        print_rows(got)
        lines += compact(got, spec)
        lines += [f"| {spec} | {t} | {n} | does not compile: "
                  f"{why.split(', context')[0]} | | | |"
                  for n, why in failed.items()]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  # The TPU section (experiments/tpu_resources.py) after the GPU tables.
  marker = "<!-- TPU section: written by experiments/tpu_resources.py -->"
  tpu = ""
  if os.path.exists(args.out):
    with open(args.out) as f:
      old = f.read()
    if marker in old:
      tpu = "\n" + marker + old.split(marker, 1)[1]
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n" + tpu)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
