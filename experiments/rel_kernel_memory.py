"""Compile-level figures of the relative-position term in the Pallas kernel
(issue 25, point 4), on a machine without a GPU.

  JAX_PLATFORMS=cpu python experiments/rel_kernel_memory.py \
      --before /work/main --after .

1. memory_analysis() of jit(value_and_grad) of ONE char-LM attention layer,
   windowed_attention(impl="pallas", causal, rel_query/rel_table, bf16), at
   the paper-small top layer in phase 5 (batch 16, 23,040 tokens, 8 heads of
   64, window 512 x 16 = 8,192, dilation 4 on the last two heads; table rows
   for every distance the window reaches), compiled for an H100 SXM target:
   the code in --before and in --after (each run in a subprocess with that
   checkout first on PYTHONPATH).
2. ptxas registers and spills of the three band kernels (fwd, dq, dkv) with
   and without the relative term, for A100 SXM 40 GB and H100 SXM targets,
   bf16 and float32, head_dim 64 (Dr 64), default BlockSizes, at 12 rows x
   4,096 tokens, causal window 256 (the --after code).

Needs JAX's CUDA plugin (jax-cuda12-plugin, jax-cuda12-pjrt,
nvidia-cuda-nvcc-cu12: the deviceless recipe of issue 25) and runs with
JAX_PLATFORMS=cpu. Figures are compiler outputs, not timings.
"""

import argparse
import os
import re
import subprocess
import sys

PHASE5 = dict(batch=16, seq=23040, heads=8, head_dim=64, window=512 * 16,
              dilation=(1,) * 6 + (4, 4))
KERNELS = ("lfjax_band_fwd", "lfjax_band_dq", "lfjax_band_dkv")


def _devices(target):
  import jax
  from lfjax import plan
  t = plan.parse_target(target)
  dev = plan.topology_devices(t, jax.__version__)[0]
  from lfjax.kernels import lowering
  return dev, lowering.trace_for(dev.device_kind, "cuda")


def _compile(fn, avals, target):
  """jit(fn) compiled deviceless for target (Pallas reads the compute
  capability from the abstract mesh's device kind)."""
  import jax
  dev, tracing = _devices(target)
  sh = jax.sharding.SingleDeviceSharding(dev)
  avals = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh) for a in avals]
  with tracing:
    lowered = jax.jit(fn).trace(*avals).lower()
  return lowered.compile()


def worker_memory():
  import jax
  import jax.numpy as jnp
  import lfjax
  from lfjax.attention import windowed_attention
  c = PHASE5
  b, n, h, d = c["batch"], c["seq"], c["heads"], c["head_dim"]
  rows = min(c["window"] * max(c["dilation"]), n - 1) + 1
  bf16 = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16)

  def loss(q, k, v, rq, table):
    o = windowed_attention(q, k, v, window=c["window"],
                           dilation=list(c["dilation"]), causal=True,
                           scale=d ** -0.5, impl="pallas", rel_query=rq,
                           rel_table=table)
    return jnp.sum(o.astype(jnp.float32))

  compiled = _compile(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)),
                      [bf16(b, n, h, d)] * 4 + [bf16(rows, h, d)], "h100")
  m = compiled.memory_analysis()
  print("RESULT", os.path.dirname(os.path.dirname(lfjax.__file__)),
        m.argument_size_in_bytes, m.output_size_in_bytes,
        m.alias_size_in_bytes, m.temp_size_in_bytes)


def worker_ptx(target, dtype, rel, blocks):
  import jax
  import jax.numpy as jnp
  from lfjax.kernels import band_attention as kernel
  x, n, d, window = 12, 4096, 64, 256
  dt = jnp.dtype(dtype)
  avals = [jax.ShapeDtypeStruct((x, n, d), dt)] * 3 + [
      jax.ShapeDtypeStruct((x, n), jnp.bool_)]
  if rel:
    avals += [jax.ShapeDtypeStruct((x, n, d), dt),
              jax.ShapeDtypeStruct((x, window + 1, d), dt)]

  def loss(q, k, v, kvalid, *r):
    rel_kw = dict(rel_query_XxNxDr=r[0], rel_table_XxRxDr=r[1],
                  rel_min=0) if r else {}
    o, _ = kernel.band_attention(
        q, k, v, kvalid, window=window, causal=True, scale=0.125,
        block_sizes=kernel.BlockSizes(*blocks) if blocks else None, **rel_kw)
    return jnp.sum(o)

  argnums = (0, 1, 2) + ((4, 5) if rel else ())
  _compile(jax.value_and_grad(loss, argnums=argnums), avals, target)


def _run(args, repo, env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.path.abspath(repo), **(env or {}))
  r = subprocess.run([sys.executable, os.path.abspath(__file__)] + args,
                     env=env, capture_output=True, text=True, check=False)
  if r.returncode:
    raise RuntimeError(f"{args} in {repo} failed:\n{r.stderr[-3000:]}")
  return r.stdout + r.stderr


def ptxas_table(log):
  """{kernel: (registers, spill stores, spill loads)} from ptxas -v."""
  out = {}
  for name in KERNELS:
    m = re.search(r"entry function '%s'.*?(\d+) bytes spill stores, (\d+) "
                  r"bytes spill loads\s*\n.*?Used (\d+) registers" % name,
                  log, re.S)
    if m:
      out[name] = (int(m.group(3)), int(m.group(1)), int(m.group(2)))
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--before", default="/work/main")
  p.add_argument("--after", default=".")
  p.add_argument("--worker", default="")
  p.add_argument("--target", default="h100")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--rel", type=int, default=1)
  p.add_argument("--skip_memory", action="store_true")
  p.add_argument("--blocks", default="",
                 help="block_q,block_k,num_warps,num_stages (worker)")
  p.add_argument("--extra", default="a100:float32:32,32,4,2",
                 help="more ptxas rows with explicit BlockSizes, "
                 "target:dtype:bq,bk,warps,stages;... (relative term on)")
  a = p.parse_args()
  if a.worker == "memory":
    return worker_memory()
  if a.worker == "ptx":
    blocks = tuple(map(int, a.blocks.split(","))) if a.blocks else None
    return worker_ptx(a.target, a.dtype, a.rel, blocks)

  gb = lambda x: f"{int(x) / 1e9:.2f}"
  if not a.skip_memory:
    c = PHASE5
    print(f"## memory_analysis, H100 SXM: value_and_grad of one layer, "
          f"batch {c['batch']}, {c['seq']:,} tokens, {c['heads']} heads x "
          f"{c['head_dim']}, causal window {c['window']:,}, dilation "
          f"{c['dilation']}, bf16, relative table\n")
    print("| code | arguments GB | outputs GB | aliased GB | temp GB |")
    print("|---|---|---|---|---|")
    for label, repo in (("before", a.before), ("after", a.after)):
      line = [l for l in _run(["--worker", "memory"], repo).splitlines()
              if l.startswith("RESULT")][0].split()
      print(f"| {label} ({line[1]}) | " + " | ".join(map(gb, line[2:])) +
            " |")
    print()
  print("## ptxas per thread, 12 rows x 4,096 tokens, head_dim 64, causal "
        "window 256 (registers / spill stores B / spill loads B)\n")
  print("| target | dtype | rel | BlockSizes | " + " | ".join(KERNELS) + " |")
  print("|---|---|---|---|---|---|---|")
  env = dict(TF_CPP_VMODULE="subprocess_compilation=2,ptx_compiler_impl=2",
             TF_CPP_MIN_LOG_LEVEL="0")
  rows = [(t, d, rel, "") for t in ("a100", "h100")
          for d in ("bfloat16", "float32") for rel in (0, 1)]
  rows += [tuple(e.split(":")[:2]) + (1, e.split(":")[2])
           for e in a.extra.split(";") if e]
  for target, dtype, rel, blocks in rows:
    try:
      t = ptxas_table(_run(["--worker", "ptx", "--target", target,
                            "--dtype", dtype, "--rel", str(rel),
                            "--blocks", blocks], a.after, env))
      cells = [" / ".join(map(str, t[k])) if k in t else "(not reached)"
               for k in KERNELS]
    except RuntimeError as e:  # e.g. over the shared-memory limit
      err = re.findall(r"[A-Z_]+: [^\n]*", str(e))
      cells = ["does not compile: " + (err[-1] if err else "?")[:120]]
      cells += [""] * (len(KERNELS) - 1)
    print(f"| {target} | {dtype} | {'yes' if rel else 'no'} | "
          f"{blocks or 'default'} | " +
          " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  main()
