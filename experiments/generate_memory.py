"""Compiled GPU memory of lfjax.generate's beam search on 16K-token inputs,
for led-base-16384's shape, planned without a GPU.

  JAX_PLATFORMS=cpu python experiments/generate_memory.py \
      [--target h100] [--rows 1:4:float32,4:4:float32,4:4:bfloat16]

needs `pip install "lfjax[plan]"` (deviceless compilation for the GPU's
XLA target, as lfjax.plan). The model is led-base-16384's shape (6 + 6
layers, d_model 768, 12 heads, FFN 3,072, vocab 50,265, window 1,024,
16,384 encoder positions) built as abstract shapes: no weights. Each row
compiles the whole generation program (encoder, init_cache, the beam-search
while_loop) for batch x 16,384 tokens with the arXiv summarization settings
(num_beams, max_length 512, min_length 100, length_penalty 2.0,
no_repeat_ngram_size 3, early_stopping True), and prints XLA's
memory_analysis in GB (1e9): arguments (the weights and inputs) and temp
(XLA's peak of every intermediate: activations, caches, loop buffers).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from lfjax import generate as gen  # noqa: E402
from lfjax import plan  # noqa: E402
from lfjax.models.led import LEDForConditionalGeneration  # noqa: E402
from lfjax.models.led_config import LEDConfig  # noqa: E402

LENGTH = 16384


def row(target, batch, beams, dtype):
  """(arguments, temp) bytes of one compiled generation program."""
  cfg = LEDConfig(d_model=768, encoder_layers=6, decoder_layers=6,
                  encoder_attention_heads=12, decoder_attention_heads=12,
                  encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                  attention_window=1024, dropout=0.0, compute_dtype=dtype)
  model = nnx.eval_shape(
      lambda: LEDForConditionalGeneration(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  device = plan.topology_devices(target, plan.require_plugin())[0]
  sharding = jax.sharding.SingleDeviceSharding(device)

  def spec(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

  state = jax.tree.map(lambda x: spec(x.shape, x.dtype), state)
  ids = spec((batch, LENGTH), jnp.int32)
  settings = gen.resolve(model, dict(
      num_beams=beams, max_length=512, min_length=100, length_penalty=2.0,
      no_repeat_ngram_size=3, early_stopping=True,
      decoder_start_token_id=cfg.decoder_start_token_id,
      eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id))
  # glob None: the model's default, global attention on <s>
  lowered = gen.lower(graphdef, state, ids, ids, None,
                      gen.make_plan(settings))
  m = lowered.compile().memory_analysis()
  return m.argument_size_in_bytes, m.temp_size_in_bytes


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--target", default="h100", help="lfjax.plan's names")
  p.add_argument("--rows", default="1:4:float32,4:4:float32,4:4:bfloat16",
                 help="batch:num_beams:compute_dtype, comma-separated")
  args = p.parse_args()
  target = plan.parse_target(args.target)
  print(f"{args.target}, {LENGTH} tokens, jax {jax.__version__}"
        "\n"
        "| batch | beams | compute | arguments GB | temp GB |")
  for r in args.rows.split(","):
    batch, beams, dtype = r.split(":")
    t = time.time()
    arguments, temp = row(target, int(batch), int(beams), dtype)
    print(f"| {batch} | {beams} | {dtype} | {arguments / 1e9:.2f} | "
          f"{temp / 1e9:.2f} |  compiled in {time.time() - t:.0f} s",
          flush=True)


if __name__ == "__main__":
  main()
