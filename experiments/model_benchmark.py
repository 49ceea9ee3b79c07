"""Whole-model forward: lfjax LongformerModel vs transformers' PyTorch one.

  python experiments/model_benchmark.py                 # base size, 4096 tokens
  python experiments/model_benchmark.py --seq 1024 --layers 2   # quick look

Builds a random model with allenai/longformer-base-4096's shape in
transformers (offline), saves it, loads it into lfjax with
lfjax.convert.from_pretrained, checks that both give the same hidden states,
then times the forward pass of both, interleaved in one run (medians).
float32 on CPU; global attention on the first token (the classification
setting).
"""

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from lfjax import convert


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--seq", type=int, default=4096)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--layers", type=int, default=12)
  p.add_argument("--attention_window", type=int, default=512,
                 help="FULL window, as transformers counts it")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)

  cfg = transformers.LongformerConfig(
      vocab_size=50265, hidden_size=768, num_hidden_layers=args.layers,
      num_attention_heads=12, intermediate_size=3072,
      max_position_embeddings=4098, type_vocab_size=1, layer_norm_eps=1e-5,
      attention_window=args.attention_window)
  torch.manual_seed(0)
  hf_model = transformers.LongformerModel(cfg).eval()
  with tempfile.TemporaryDirectory() as d:
    hf_model.save_pretrained(d)
    ours = convert.from_pretrained(d, max_global=1)
  ours.eval()

  rng = np.random.default_rng(0)
  ids = rng.integers(3, cfg.vocab_size, size=(args.batch, args.seq))
  mask = np.ones_like(ids)
  glob = np.zeros_like(ids)
  glob[:, 0] = 1
  t_ids, t_mask, t_glob = map(torch.tensor, (ids, mask, glob))
  j_ids, j_mask, j_glob = map(jnp.asarray, (ids, mask, glob))

  def run_hf():
    with torch.no_grad():
      return hf_model(input_ids=t_ids, attention_mask=t_mask,
                      global_attention_mask=t_glob).last_hidden_state

  fwd = jax.jit(lambda m, i, a, g: m(i, a, g).last_hidden_state)
  run_ours = lambda: jax.block_until_ready(fwd(ours, j_ids, j_mask, j_glob))

  diff = np.abs(np.asarray(run_ours()) - run_hf().numpy()).max()
  t_hf, t_ours = [], []
  for _ in range(args.repeats):
    for fn, ts in ((run_hf, t_hf), (run_ours, t_ours)):
      time.sleep(0.3)  # let the other framework's worker threads go idle
      t0 = time.perf_counter()
      fn()
      ts.append(time.perf_counter() - t0)
  hf_s, ours_s = statistics.median(t_hf), statistics.median(t_ours)
  print(f"# LongformerModel forward, {args.layers} layers, hidden 768, window "
        f"{args.attention_window} (full), batch {args.batch}, seq {args.seq}, "
        f"float32, CPU ({torch.get_num_threads()} torch threads); jax "
        f"{jax.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}; max |lfjax - HF| = {diff:.1e}")
  print()
  print("| model | forward s (median) | speedup |")
  print("|---|---|---|")
  print(f"| transformers (PyTorch) | {hf_s:.2f} | 1.00x |")
  print(f"| lfjax (chunked) | {ours_s:.2f} | {hf_s / ours_s:.2f}x |")


if __name__ == "__main__":
  main()
