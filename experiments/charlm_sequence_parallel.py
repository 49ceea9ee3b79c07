"""Paper-small char-LM train step on 8 virtual CPU devices, sequence split
over mesh seq 8, vs one device: compiled memory per length, step time.

  python experiments/charlm_sequence_parallel.py [--seqs 8192,16384,32768,65536]
      [--window_scale 16] [--time_seq 8192] [--time_window_scale phase]
      [--steps 3] [--remat_policies nothing,attention]

Compiles lfjax.tasks.charlm.make_train_step (the trainer's own step: AdamW,
donated state, remat on) for configs/charlm_text8_small.py's model (12 x
512, 8 heads, windows 32..512 x the window scale, dilation up to 4 on 2
heads), batch 1, float32, on mesh seq 8 (lfjax.parallel: every token-wise
op split 8 ways, attention by halo exchange) and on one device, and prints
XLA's memory analysis: per device for the mesh (each of the 8 devices
holds this much), and the 8 devices' sum, which is what the host must hold
since virtual devices share its memory. Nothing is run for the memory
table. Then it compiles (once; its memory is printed too) and runs
--steps + 1 train steps at --time_seq (window scale
--time_window_scale: "phase" is the schedule's for that length, 4 at
8,192) on both and prints the median step time after the first (random
tokens, the same on both, so the losses should agree; 8 virtual
devices share this machine's cores, so this measures overhead, not a
speed-up), with this process's CPU seconds per step (all threads: less
sensitive to other jobs than wall time) and the load average. Each table has a row
per remat policy (model.remat_policy) of --remat_policies.

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
  ap.add_argument("--time_window_scale", default="phase",
                  help="window scale of the timed steps: 'phase' (the "
                  "schedule's for --time_seq, 1 if none) or an int")
  ap.add_argument("--steps", type=int, default=3,
                  help="timed steps after the first (whose time is shown "
                  "apart)")
  ap.add_argument("--remat_policies", default="nothing",
                  help="comma-separated model.remat_policy values")
  ap.add_argument("--max_host_gib", type=float, default=10.0,
                  help="skip running a step whose compiled peak, summed over "
                  "the devices sharing this host, is above this")
  ap.add_argument("--one_device", type=int, default=1,
                  help="also compile / time on one device")
  ap.add_argument("--time_mesh", type=int, default=1,
                  help="time on mesh seq 8 (0: one device only, e.g. to "
                  "compare remat policies)")
  return ap.parse_args(argv)


def build(config, seq, mesh, window_scale, policy, abstract=True):
  """(step, args) of the trainer's step at batch 1 x seq."""
  import jax
  import numpy as np
  from flax import nnx
  from lfjax import checkpoints
  from lfjax import parallel
  from lfjax.models import charlm as charlm_model
  from lfjax.tasks import charlm
  config.model.remat_policy = policy
  cfg = checkpoints.model_config(config, 27)  # text8: 27 symbols
  make = lambda: charlm_model.CharLM(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(nnx.eval_shape(make) if abstract else make(),
                             nnx.Param)
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
  step = charlm.make_train_step(graphdef, tx, window_scale, batch_size=1,
                                donate=True, shardings=shardings)
  return step, [params, opt_state, {"inputs": tok, "targets": tok},
                jax.random.key(0)]


def load():
  return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None):
  args = parse_args(argv)
  import jax
  from configs import charlm_text8_small
  from lfjax import parallel
  config = charlm_text8_small.get_config()
  config.model.remat = True
  policies = args.remat_policies.split(",")
  mesh = parallel.make_mesh(dict(data=1, fsdp=1, seq=8))
  meshes = [mesh, None] if args.one_device else [mesh]
  name = lambda m: "seq 8" if m else "one device"
  print(f"jax {jax.__version__}, {jax.device_count()} virtual CPU devices on "
        f"{os.cpu_count()} cores; paper-small char-LM, batch 1, float32, "
        f"remat (policies {', '.join(policies)}), mesh seq 8 vs one device; "
        f"{load()}", flush=True)
  rows = []
  seqs = [int(s) for s in args.seqs.split(",")] if args.seqs else []
  if seqs:
    print(f"memory: window scale {args.window_scale} (top window "
          f"{512 * args.window_scale})", flush=True)
  for seq in seqs:
    for policy in policies:
      row = [seq, policy]
      for m in meshes:
        t = time.perf_counter()
        step, a = build(config, seq, m, args.window_scale, policy)
        with parallel.use(m):
          mem = step.lower(*a).compile().memory_analysis()
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
        row += [peak, mem.temp_size_in_bytes]
        print(f"seq {seq} {name(m)}, remat policy {policy}: peak "
              f"{peak / GiB:.2f} GiB per device (temporaries "
              f"{mem.temp_size_in_bytes / GiB:.2f}); compiled in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
      rows.append(row)
  if rows:
    print("\n| seq | remat policy | seq 8: peak GiB per device | seq 8: sum "
          "over 8 devices GiB | seq 8: temporaries GiB per device | one "
          "device: peak GiB | one device: temporaries GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
      one = (f"{r[4] / GiB:.2f} | {r[5] / GiB:.2f}" if len(r) > 4
             else "- | -")
      print(f"| {r[0]} | {r[1]} | {r[2] / GiB:.2f} | {8 * r[2] / GiB:.2f} | "
            f"{r[3] / GiB:.2f} | {one} |")

  if args.time_seq:
    ws = args.time_window_scale
    if ws == "phase":
      s = config.schedule
      ws = dict(zip(s.seq_lens, s.window_scales)).get(args.time_seq, 1)
    ws = int(ws)
    print(f"\nstep time at {args.time_seq} tokens, window scale {ws} (top "
          f"window {512 * ws}); compiled once, then a first step and "
          f"{args.steps} more, median of those; {load()}", flush=True)
    results = []
    for policy in policies:
      for m in meshes if args.time_mesh else [None]:
        step, a = build(config, args.time_seq, m, ws, policy,
                        abstract=False)
        with parallel.use(m):
          t = time.perf_counter()
          step = step.lower(*a).compile()  # one compile: memory and steps
          secs = time.perf_counter() - t
          mem = step.memory_analysis()
          peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                  + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
          host = peak * (8 if m else 1) / GiB
          if host > args.max_host_gib:
            print(f"{name(m)}, remat policy {policy}: not run, the compiled "
                  f"peak is {host:.1f} GiB on this host (--max_host_gib "
                  f"{args.max_host_gib})", flush=True)
            continue
          times, cpus = [], []
          for i in range(args.steps + 1):
            t, c = time.perf_counter(), time.process_time()
            a[0], a[1], met = step(*a)
            jax.block_until_ready(met)
            times.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        med, cpu = statistics.median(times[1:]), statistics.median(cpus[1:])
        results.append((name(m), policy, secs, peak, times, med, cpu,
                        float(met["loss"])))
        print(f"{name(m)}, remat policy {policy}: compiled in {secs:.0f} s "
              f"(peak {peak / GiB:.2f} GiB per device), steps "
              f"{', '.join(f'{x:.1f}' for x in times)} s (CPU "
              f"{', '.join(f'{x:.1f}' for x in cpus)} s), median after the "
              f"first {med:.2f} s (CPU {cpu:.1f} s), loss "
              f"{float(met['loss']):.4f}; {load()}", flush=True)
        del step, a
    base = {r[1]: r[5:7] for r in results if r[0] == "one device"}
    print("\n| mesh | remat policy | compile s | peak GiB per device | first "
          "step s | median step s | median CPU s per step | vs one device, "
          "same policy (wall / CPU) | loss after the steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, p, secs, peak, times, med, cpu, loss in results:
      ratio = (f"{med / base[p][0]:.2f}x / {cpu / base[p][1]:.2f}x"
               if p in base else "-")
      print(f"| {n} | {p} | {secs:.0f} | {peak / GiB:.2f} | {times[0]:.1f} | "
            f"{med:.2f} | {cpu:.1f} | {ratio} | {loss:.4f} |")


if __name__ == "__main__":
  main()
