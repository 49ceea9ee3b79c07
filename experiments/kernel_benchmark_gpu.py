"""Pallas band kernel vs full attention (cuDNN, XLA) and the chunked path, GPU.

  python experiments/kernel_benchmark_gpu.py            # one table, < 5 min
  python experiments/kernel_benchmark_gpu.py --smoke    # tiny shapes, any host

bfloat16, 32K tokens per batch (batch = 32768 / seq), hidden 1024 (16 heads
of 64 or 8 of 128), symmetric window w (2w + 1 keys). Times are medians of
--repeats runs after a warm-up, forward and forward+backward (gradients of
q, k, v). "band TFLOP/s" counts only the band's useful FLOPs: 4 N (2w+1) D
per head forward, 3.5x that forward+backward. "vs ideal" divides the
kernel's time by (2w+1)/seq times cuDNN full flash attention's time.
"""

import argparse
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lfjax.attention import windowed_attention  # noqa: E402


def bench(fn, args, repeats):
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def with_grad(attn):
  def f(q, k, v):
    return jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32)),
                    argnums=(0, 1, 2))(q, k, v)
  return f


def matmul_tflops(repeats):
  a = jnp.ones((8192, 8192), jnp.bfloat16)
  t = bench(lambda a: a @ a, (a,), repeats)
  return 2 * 8192 ** 3 / t / 1e12


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seqs", default="1024,4096,16384,32768")
  ap.add_argument("--windows", default="128,256,512")
  ap.add_argument("--head_dims", default="64,128")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--xla_max_seq", type=int, default=8192,
                  help="XLA full attention materialises N^2 scores")
  ap.add_argument("--smoke", action="store_true",
                  help="tiny shapes so the script runs on CPU (interpret)")
  args = ap.parse_args()
  if args.smoke:
    args.seqs, args.windows, args.head_dims, args.repeats = "256", "32", "64", 1
    tokens, hidden = 256, 128
  else:
    if jax.default_backend() != "gpu":
      sys.exit("kernel_benchmark_gpu.py: no GPU here (jax backend "
               f"{jax.default_backend()!r}); use --smoke to check the script")
    tokens, hidden = 32768, 1024
  dev = jax.devices()[0]
  peak = matmul_tflops(args.repeats)
  print(f"jax {jax.__version__} on {dev.device_kind}; bf16 matmul "
        f"{peak:.0f} TFLOP/s measured; medians of {args.repeats}")
  print("\n| seq | w | D | pass | pallas ms | chunked ms | cuDNN full ms | "
        "XLA full ms | pallas band TFLOP/s (% matmul) | pallas vs ideal |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for d in [int(x) for x in args.head_dims.split(",")]:
    h = hidden // d
    for seq in [int(x) for x in args.seqs.split(",")]:
      b = max(1, tokens // seq)
      q, k, v = (jnp.asarray(rng.standard_normal((b, seq, h, d)),
                             jnp.bfloat16) for _ in range(3))
      full = {}
      for name, impl in (("cudnn", "cudnn"), ("xla", "xla")):
        if args.smoke and name == "cudnn":
          continue
        if name == "xla" and seq > args.xla_max_seq:
          continue
        attn = functools.partial(jax.nn.dot_product_attention,
                                 implementation=impl)
        try:
          full[name] = (bench(attn, (q, k, v), args.repeats),
                        bench(with_grad(attn), (q, k, v), args.repeats))
        except Exception as e:  # cuDNN may refuse a shape; say so
          print(f"<!-- {name} seq {seq} D {d}: {type(e).__name__} -->")
      for w in [int(x) for x in args.windows.split(",")]:
        res = {}
        for impl in ("pallas", "chunked"):
          attn = functools.partial(windowed_attention, window=w, impl=impl)
          res[impl] = (bench(attn, (q, k, v), args.repeats),
                       bench(with_grad(attn), (q, k, v), args.repeats))
        flops = 4 * b * h * seq * (2 * w + 1) * d
        for i, pass_name in enumerate(("fwd", "fwd+bwd")):
          f = flops * (1.0 if i == 0 else 3.5)
          t = res["pallas"][i]
          cud = full.get("cudnn", (None, None))[i]
          ideal = (f"{t / (cud * (2 * w + 1) / seq):.2f}x" if cud else "n/a")
          fmt = lambda x: "n/a" if x is None else f"{x * 1e3:.2f}"
          print(f"| {seq} | {w} | {d} | {pass_name} | {fmt(t)} | "
                f"{fmt(res['chunked'][i])} | {fmt(cud)} | "
                f"{fmt(full.get('xla', (None, None))[i])} | "
                f"{f / t / 1e12:.1f} ({100 * f / t / 1e12 / peak:.0f}%) | "
                f"{ideal} |", flush=True)


if __name__ == "__main__":
  main()
