"""Paper-small char-LM train step on 8 virtual CPU devices, sequence split
over mesh seq 8, vs one device: compiled memory per length, step time.

  python experiments/charlm_sequence_parallel.py [--seqs 8192,16384,32768,65536]
      [--window_scale 16] [--time_seq 8192] [--steps 2]

Compiles lfjax.tasks.charlm.make_train_step (the trainer's own step: AdamW,
donated state, remat on) for configs/charlm_text8_small.py's model (12 x
512, 8 heads, windows 32..512 x the window scale, dilation up to 4 on 2
heads), batch 1, float32, on mesh seq 8 (lfjax.parallel: every token-wise
op split 8 ways, attention by halo exchange) and on one device, and prints
XLA's memory analysis: per device for the mesh (each of the 8 devices
holds this much), and the 8 devices' sum, which is what the host must hold
since virtual devices share its memory. Nothing is run for the memory
table. Then it runs --steps train steps at --time_seq on both and prints
the median step time (random tokens; 8 virtual devices share this
machine's cores, so this measures overhead, not a speed-up).

Needs 8 devices before JAX starts: sets JAX_NUM_CPU_DEVICES=8 itself.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

GiB = 2.0 ** 30


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seqs", default="8192,16384,32768,65536")
  ap.add_argument("--window_scale", type=int, default=16,
                  help="window scale (16: the paper's last phase, top "
                  "window 8192)")
  ap.add_argument("--time_seq", type=int, default=8192,
                  help="length for the step-time runs (0: none)")
  ap.add_argument("--steps", type=int, default=2,
                  help="timed steps after the compiling one")
  ap.add_argument("--one_device", type=int, default=1,
                  help="also compile / time on one device")
  return ap.parse_args(argv)


def build(config, seq, mesh, window_scale, abstract=True):
  """(step, args) of the trainer's step at batch 1 x seq."""
  import jax
  import numpy as np
  from flax import nnx
  from lfjax import checkpoints
  from lfjax import parallel
  from lfjax.models import charlm as charlm_model
  from lfjax.tasks import charlm
  cfg = checkpoints.model_config(config, 27)  # text8: 27 symbols
  make = lambda: charlm_model.CharLM(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(nnx.eval_shape(make) if abstract else make())
  tx = charlm.optimizer(config)
  shardings = None
  if mesh is not None:
    param_sh = parallel.state_shardings(params, mesh)
    opt_sh = parallel.state_shardings(jax.eval_shape(tx.init, params), mesh)
    shardings = (param_sh, opt_sh, mesh)
  if abstract:
    opt_state = jax.eval_shape(tx.init, params)
    tok = jax.ShapeDtypeStruct((1, seq), np.int32)
  else:
    params = parallel.shard(params, mesh)
    opt_state = (tx.init(params) if mesh is None else jax.jit(
        tx.init, out_shardings=shardings[1])(params))
    tok = np.random.default_rng(0).integers(0, 27, (1, seq)).astype(np.int32)
    tok = parallel.put_batch(tok, mesh, 1)
  step = charlm.make_train_step(graphdef, tx, window_scale, donate=True,
                                shardings=shardings)
  return step, [params, opt_state, tok, tok, jax.random.key(0)]


def main(argv=None):
  args = parse_args(argv)
  import jax
  from configs import charlm_text8_small
  from lfjax import parallel
  config = charlm_text8_small.get_config()
  config.model.remat = True
  mesh = parallel.make_mesh(dict(data=1, fsdp=1, seq=8))
  print(f"jax {jax.__version__}, {jax.device_count()} virtual CPU devices on "
        f"{os.cpu_count()} cores; paper-small char-LM, batch 1, float32, "
        f"remat, window scale {args.window_scale} (top window "
        f"{512 * args.window_scale}), mesh seq 8 vs one device", flush=True)
  rows = []
  for seq in [int(s) for s in args.seqs.split(",")]:
    row = [seq]
    for m in ([mesh, None] if args.one_device else [mesh]):
      t = time.perf_counter()
      step, a = build(config, seq, m, args.window_scale)
      with parallel.use(m):
        mem = step.lower(*a).compile().memory_analysis()
      peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
              + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
      row += [peak, mem.temp_size_in_bytes]
      print(f"seq {seq} {'seq 8' if m else 'one device'}: peak "
            f"{peak / GiB:.2f} GiB per device (temporaries "
            f"{mem.temp_size_in_bytes / GiB:.2f}); compiled in "
            f"{time.perf_counter() - t:.0f} s", flush=True)
    rows.append(row)
  print("\n| seq | seq 8: peak GiB per device | seq 8: sum over 8 devices GiB "
        "| seq 8: temporaries GiB per device | one device: peak GiB | one "
        "device: temporaries GiB |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    one = (f"{r[3] / GiB:.2f} | {r[4] / GiB:.2f}" if len(r) > 3
           else "- | -")
    print(f"| {r[0]} | {r[1] / GiB:.2f} | {8 * r[1] / GiB:.2f} | "
          f"{r[2] / GiB:.2f} | {one} |")

  if args.time_seq:
    print(f"\nstep time at {args.time_seq} tokens ({args.steps} timed steps "
          "after the compiling one; median):", flush=True)
    for m in ([mesh, None] if args.one_device else [mesh]):
      step, a = build(config, args.time_seq, m, args.window_scale,
                      abstract=False)
      times = []
      with parallel.use(m):
        for i in range(args.steps + 1):
          t = time.perf_counter()
          a[0], a[1], met = step(*a)
          jax.block_until_ready(met)
          times.append(time.perf_counter() - t)
      print(f"| {'seq 8' if m else 'one device'} | compile + first step "
            f"{times[0]:.1f} s | median step {statistics.median(times[1:]):.2f}"
            f" s | loss {float(met['loss']):.4f} |", flush=True)


if __name__ == "__main__":
  main()
