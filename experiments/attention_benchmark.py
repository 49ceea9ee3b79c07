"""Time and memory of windowed attention: dense vs chunked, and vs Hugging Face.

  python experiments/attention_benchmark.py                 # full table (CPU: ~10 min)
  python experiments/attention_benchmark.py --seqs 1024,4096 --repeats 3

Prints, per sequence length, the median time and peak memory of the dense
oracle and the chunked implementation (forward, and forward+backward), the
achieved GFLOP/s on the useful band FLOPs, and that rate as a fraction of the
machine's measured float32 matmul rate. Then compares the chunked core with
the attention core of transformers' PyTorch LongformerSelfAttention (its
sliding-chunks QK, mask, softmax and PV) on the same shapes, interleaved in
one run so machine noise hits both alike.

Peak memory is XLA's buffer assignment for the compiled computation
(arguments + outputs + temporaries), which is what decides an OOM.
"""

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lfjax.attention import chunked
from lfjax.attention import windowed_attention


def median_time(fn, repeats, warmup=1):
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def matmul_rate(repeats):
  """Measured float32 GFLOP/s of one large matmul (the machine's ceiling)."""
  n = 2048
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / median_time(lambda: f(a), repeats) / 1e9


def band_flops(b, n, h, d, window):
  """Useful forward FLOPs: QK^T and PV over the 2w+1 band, clipped at edges."""
  w = min(window, n - 1)
  keys = n * (2 * w + 1) - w * (w + 1)  # band cells inside the sequence
  return 4 * b * h * keys * d


def peak_bytes(jitted, *args):
  m = jitted.lower(*args).compile().memory_analysis()
  if m is None:
    return float("nan")
  return (m.temp_size_in_bytes + m.argument_size_in_bytes
          + m.output_size_in_bytes - m.alias_size_in_bytes)


def make_fns(impl, window):
  def fwd(q, k, v):
    return windowed_attention(q, k, v, window=window, impl=impl)

  def loss(q, k, v):
    return jnp.sum(fwd(q, k, v) * q)  # q as a stand-in cotangent

  return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def hf_core(b, n, h, d, window):
  """The attention core of transformers' LongformerSelfAttention.forward."""
  import torch
  from transformers import LongformerConfig
  from transformers.models.longformer import modeling_longformer as ml

  cfg = LongformerConfig(hidden_size=h * d, num_attention_heads=h,
                         attention_window=[2 * window])
  attn = ml.LongformerSelfAttention(cfg, layer_id=0).eval()
  gen = torch.Generator().manual_seed(0)
  q, k, v = (torch.randn(b, n, h, d, generator=gen) for _ in range(3))
  mask = torch.zeros(b, n)  # 0 = local attention, no padding
  is_index_masked = mask < 0

  def run():
    scores = attn._sliding_chunks_query_key_matmul(q / d**0.5, k, window)
    remove = (mask != 0)[:, :, None, None]
    float_mask = remove.type_as(q).masked_fill(remove, torch.finfo(q.dtype).min)
    scores += attn._sliding_chunks_query_key_matmul(
        float_mask.new_ones(size=float_mask.size()), float_mask, window)
    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32)
    probs = torch.masked_fill(probs, is_index_masked[:, :, None, None], 0.0)
    return attn._sliding_chunks_matmul_attn_probs_value(probs, v, window)

  return run


def hf_scores_per_row(n, window):
  """HF scores N/w - 1 overlapping chunks of 2w x 2w, then keeps 2w+1 per row."""
  return (n // window - 1) * (2 * window) ** 2 / n


def torch_time(fn, repeats):
  import torch
  with torch.no_grad():
    fn()
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--seqs", default="1024,2048,4096,8192,16384,32768")
  p.add_argument("--window", type=int, default=256, help="one-sided window")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--dense_max_seq", type=int, default=4096,
                 help="skip the O(N^2) oracle above this length")
  p.add_argument("--hf_seqs", default="1024,4096",
                 help="lengths for the transformers comparison ('' to skip)")
  args = p.parse_args(argv)
  b, h, d, w = args.batch, args.heads, args.head_dim, args.window
  seqs = [int(s) for s in args.seqs.split(",") if s]

  rate = matmul_rate(args.repeats)
  print(f"# jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"batch {b}, heads {h}, head_dim {d}, window {w} (one-sided), "
        f"float32; matmul rate {rate:.0f} GFLOP/s")
  print()
  print("| seq | impl | fwd ms | fwd GFLOP/s | fwd % of matmul | fwd peak MB "
        "| fwd+bwd ms | fwd+bwd GFLOP/s | fwd+bwd peak MB |")
  print("|---|---|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for n in seqs:
    q, k, v = (jnp.asarray(rng.standard_normal((b, n, h, d)), jnp.float32)
               for _ in range(3))
    flops = band_flops(b, n, h, d, w)
    for impl in ("dense", "chunked"):
      if impl == "dense" and n > args.dense_max_seq:
        print(f"| {n} | dense | skipped (O(N^2): "
              f"{4 * b * h * n * n / 2**30:.0f} GiB per score tensor) "
              "| | | | | | |")
        continue
      fwd, grad = make_fns(impl, w)
      mem_f, mem_b = peak_bytes(fwd, q, k, v), peak_bytes(grad, q, k, v)
      t_f = median_time(lambda: fwd(q, k, v), args.repeats)
      t_b = median_time(lambda: grad(q, k, v), args.repeats)
      print(f"| {n} | {impl} | {t_f * 1e3:.1f} | {flops / t_f / 1e9:.1f} | "
            f"{100 * flops / t_f / 1e9 / rate:.0f}% | {mem_f / 2**20:.0f} | "
            f"{t_b * 1e3:.1f} | {3 * flops / t_b / 1e9:.1f} | "
            f"{mem_b / 2**20:.0f} |")
      sys.stdout.flush()

  hf_seqs = [int(s) for s in args.hf_seqs.split(",") if s]
  if not hf_seqs:
    return
  try:
    import torch
    import transformers  # noqa: F401
  except ImportError:
    print("\n(transformers/torch not installed: skipping the comparison)")
    return
  print(f"\n## chunked core vs transformers LongformerSelfAttention core "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads), "
        "forward, medians of interleaved runs")
  print()
  print("Scores computed per useful score: HF "
        f"{hf_scores_per_row(4096, w) / (2 * w + 1):.2f}, lfjax "
        f"{chunked.band_scores_per_row(4096, w) / (2 * w + 1):.2f} "
        "(at seq 4096).")
  print()
  print("| seq | HF core ms | lfjax chunked ms | speedup | band-FLOP floor ms "
        "| lfjax / floor |")
  print("|---|---|---|---|---|---|")
  for n in hf_seqs:
    q, k, v = (jnp.asarray(rng.standard_normal((b, n, h, d)), jnp.float32)
               for _ in range(3))
    fwd, _ = make_fns("chunked", w)
    hf = hf_core(b, n, h, d, w)
    t_hf, t_ours = [], []
    for _ in range(args.repeats):  # interleave so noise hits both alike
      t_hf.append(torch_time(hf, 1))
      time.sleep(0.3)  # let torch's OpenMP workers stop spinning
      t_ours.append(median_time(lambda: fwd(q, k, v), 1))
      time.sleep(0.3)
    t_hf, t_ours = statistics.median(t_hf), statistics.median(t_ours)
    floor = band_flops(b, n, h, d, w) / (rate * 1e9)
    print(f"| {n} | {t_hf * 1e3:.1f} | {t_ours * 1e3:.1f} | "
          f"{t_hf / t_ours:.2f}x | {floor * 1e3:.1f} | {t_ours / floor:.2f}x |")


if __name__ == "__main__":
  main()
