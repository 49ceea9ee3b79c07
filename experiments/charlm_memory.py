"""Compiled peak memory of the paper-small char-LM train step vs length.

  python experiments/charlm_memory.py [--seqs 2048,4096,8192] \
      [--rel_impl features|table] [--window_scale phase|N] [--top 15] \
      [--remat_policies nothing,attention] [--batch 1] [--dtype float32] \
      [--impl auto|chunked|pallas|splash|mosaic] [--target h100|v5e]

Compiles (never runs) lfjax.train.make_train_step for the paper's small model
(configs/charlm_text8_small.py: 12 x 512, 8 heads, head_dim 64, FFN 2048,
windows 32..512 times the window scale, dilation on 2 heads), batch 1,
float32, remat on, AdamW, and prints XLA's memory analysis per length
(and per remat policy, model.remat_policy, with --remat_policies):
arguments (parameters, optimizer state, batch), outputs, temporaries, and
the peak = arguments + outputs + temporaries - aliased (donated) bytes,
which is what charlm_benchmark.py reports (minus the alias term).

--window_scale phase (default) uses the schedule's window scale of the
phase with that length (2048 -> 1, 4096 -> 2, 8192 -> 4, 16384 -> 8,
23040 -> 16) and 1 for other lengths; an int fixes it for every length.

--top N also prints the N largest temporaries of XLA's buffer assignment
(shape and the HLO op that defines them), from a dump in a temp folder.
Compiling needs host memory of the order of the compiled peak at long
lengths only for the dump; without --top it is small.

--target a100|a100_80|h100|h200 compiles for that GPU without one (JAX's
CUDA plugin, deviceless, as `--plan_for`: `pip install -e ".[plan]"` on
Python 3.12): the same step as XLA would build it for the GPU, with the
attention implementation the GPU runs (--impl pallas: the Triton kernels).
--target v5e|v5p|v6e compiles for that TPU (`pip install -e ".[tpu]"`;
--impl mosaic: the Pallas TPU kernel); a step over the chip's HBM is
refused by the compiler, and the line says what it needs.
The phase-5 figure of issue 25 (the relative term inside the kernel):

  JAX_PLATFORMS=cpu python experiments/charlm_memory.py --target h100 \
      --seqs 23040 --batch 16 --dtype bfloat16 --impl pallas
"""

import argparse
import dataclasses
import glob
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

GiB = 2.0 ** 30


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seqs", default="2048,4096,8192",
                  help="comma-separated sequence lengths")
  ap.add_argument("--rel_impl", default=None, choices=("features", "table"),
                  help="relative-position implementation (model.rel_impl); "
                  "default: the config's")
  ap.add_argument("--window_scale", default="phase",
                  help="'phase' (the schedule's scale for that length) or an "
                  "int")
  ap.add_argument("--remat", type=int, default=1)
  ap.add_argument("--remat_policies", default="nothing",
                  help="comma-separated model.remat_policy values to compile "
                  "each length with (nothing, attention; offload compiles "
                  "like attention on CPU, where jax drops host moves)")
  ap.add_argument("--donate", type=int, default=1,
                  help="donate params and optimizer state to the step, as "
                  "lfjax.train does (when make_train_step supports it)")
  ap.add_argument("--top", type=int, default=0,
                  help="print the N largest temporary buffers per length")
  ap.add_argument("--batch", type=int, default=1,
                  help="sequences per step (the schedule's phase-5 batch is "
                  "16)")
  ap.add_argument("--dtype", default="float32",
                  choices=("float32", "bfloat16"), help="model.dtype")
  ap.add_argument("--impl", default=None,
                  choices=("auto", "chunked", "pallas", "splash", "mosaic"),
                  help="model.attention_impl; default: the config's")
  ap.add_argument("--target", default=None,
                  help="compile for this GPU or TPU without one (a100, "
                  "a100_80, h100, h200: the plan extra; v5e, v5p, v6e: the "
                  "tpu extra); default: this machine")
  return ap.parse_args(argv)


def model_config(config, rel_impl):
  from lfjax import checkpoints
  from lfjax.models import charlm
  cfg = checkpoints.model_config(config, 27)  # text8: 27 symbols
  if rel_impl is not None:
    names = {f.name for f in dataclasses.fields(charlm.CharLMConfig)}
    if "rel_impl" not in names:
      sys.exit(f"--rel_impl {rel_impl}: this lfjax's CharLMConfig has no "
               "rel_impl field yet (the relative-position table of issue 13 "
               "has not landed); run without --rel_impl to measure the "
               "current (features) path")
    cfg = dataclasses.replace(cfg, rel_impl=rel_impl)
  return cfg


def window_scale_for(config, seq, arg):
  if arg != "phase":
    return int(arg)
  s = config.schedule
  return dict(zip(s.seq_lens, s.window_scales)).get(seq, 1)


def target_device(name):
  """The deviceless device of a GPU or TPU target (lfjax.plan's), or
  None."""
  if name is None:
    return None
  from lfjax import plan
  from lfjax import plan_tpu
  target = plan.parse_target(name)
  need = (plan_tpu.require_libtpu if target.platform == "tpu"
          else plan.require_plugin)
  return plan.topology_devices(target, need())[0]


def compile_step(config, cfg, seq, window_scale, donate, batch=1,
                 device=None):
  import jax
  import numpy as np
  from flax import nnx
  from lfjax.tasks import charlm as train
  from lfjax.models import charlm
  abstract = nnx.eval_shape(lambda: charlm.CharLM(cfg, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(abstract, nnx.Param)
  tx = train.optimizer(config)
  opt_state = jax.eval_shape(tx.init, params)
  step = train.make_train_step(graphdef, tx, window_scale=window_scale,
                               batch_size=batch, donate=donate)
  tok = jax.ShapeDtypeStruct((batch, seq), np.int32)
  args = (params, opt_state, {"inputs": tok, "targets": tok},
          jax.random.key(0))
  if device is None:
    return step.lower(*args).compile()
  one = jax.sharding.SingleDeviceSharding(device)
  place = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=one)
  args = jax.tree.map(place, args[:3]) + (key,)
  # Pallas' Triton lowering asks which GPU it compiles for, and
  # impl='auto' whether the trace is for a TPU: the abstract device says.
  from lfjax.kernels import lowering
  with lowering.trace_for(device.device_kind, device.platform):
    try:
      lowered = step.trace(*args).lower()
    except AttributeError:  # jax < 0.7: no .trace
      lowered = step.lower(*args)
  return lowered.compile()


_ALLOC = re.compile(r"^allocation (\d+): size (\d+)(.*)$")
_VALUE = re.compile(r"^\s+value: <\d+ ([^ ]+) @\d+> \(size=(\d+),offset=(\d+)\): "
                    r"(\S+)")


def top_buffers(dump_dir, n):
  """The n largest allocations of the train step's buffer assignment."""
  files = [f for f in glob.glob(os.path.join(dump_dir, "*buffer-assignment*"))
           if "step" in os.path.basename(f)]
  if not files:
    return ["(no buffer-assignment dump found)"]
  path = max(files, key=os.path.getsize)
  allocs, cur = [], None
  with open(path) as fh:
    for line in fh:
      m = _ALLOC.match(line)
      if m:
        cur = [int(m.group(2)), m.group(3).strip(), []]
        allocs.append(cur)
        continue
      if line.startswith("\nUsed values") or line.startswith("Used values"):
        break
      v = _VALUE.match(line)
      if v and cur is not None:
        cur[2].append((int(v.group(2)), v.group(1), v.group(4)))
  allocs.sort(key=lambda a: -a[0])
  out = []
  for size, attrs, values in allocs[:n]:
    kind = ("parameter" if "parameter" in attrs else "output"
            if "output" in attrs else "temp")
    values.sort(key=lambda v: -v[0])
    desc = "; ".join(f"{name} {shape} {s / 2**20:.0f}M"
                     for s, name, shape in values[:3])
    more = f" (+{len(values) - 3} more)" if len(values) > 3 else ""
    out.append(f"{size / 2**20:9.1f} MiB {kind:9s} {desc}{more}")
  return out


def main(argv=None):
  args = parse_args(argv)
  seqs = [int(s) for s in args.seqs.split(",")]
  dump_dir = None
  if args.top:
    dump_dir = tempfile.mkdtemp(prefix="charlm_memory_")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_dump_to={dump_dir}"
                               " --xla_dump_hlo_module_re=.*step.*")
  import jax
  from configs import charlm_text8_small
  config = charlm_text8_small.get_config()
  config.model.remat = bool(args.remat)
  config.model.dtype = args.dtype
  if args.impl:
    config.model.attention_impl = args.impl
  cfg = model_config(config, args.rel_impl)
  device = target_device(args.target)
  policies = args.remat_policies.split(",") if cfg.remat else ["-"]
  rel = getattr(cfg, "rel_impl", "features")
  where = (f"compiled for {device.device_kind} without one" if device
           else f"{jax.devices()[0].platform}, {os.cpu_count()} CPUs")
  print(f"jax {jax.__version__}, {where}; paper-small char-LM (12 x 512, 8 "
        f"heads, windows {cfg.windows[0]}..{cfg.windows[-1]} x scale), batch "
        f"{args.batch}, {cfg.dtype}, attention {cfg.attention_impl}, remat "
        f"{cfg.remat}, rel_impl {rel}, donate {bool(args.donate)}; compile "
        "only", flush=True)
  rows = []
  for seq in seqs:
    ws = window_scale_for(config, seq, args.window_scale)
    for policy in policies:
      if dump_dir:
        for f in glob.glob(os.path.join(dump_dir, "*")):
          (shutil.rmtree if os.path.isdir(f) else os.remove)(f)
      c = cfg if policy == "-" else dataclasses.replace(
          cfg, remat_policy=policy)
      t = time.perf_counter()
      try:
        compiled = compile_step(config, c, seq, ws, args.donate, args.batch,
                                device)
      except Exception as e:  # a TPU program over HBM: refused at compile
        from lfjax import plan_tpu
        oom = plan_tpu.parse_hbm_oom(str(e))
        if oom is None:
          raise
        print(f"seq {seq} (window scale {ws}), remat policy {policy}: does "
              f"not fit: XLA's TPU compiler needs {oom[1] / GiB:.2f} GiB for "
              f"{oom[0]}, {oom[2] / GiB:.2f} GiB available "
              f"(CompileTimeHbmOom); {time.perf_counter() - t:.0f} s",
              flush=True)
        continue
      secs = time.perf_counter() - t
      mem = compiled.memory_analysis()
      arg, out, tmp = (mem.argument_size_in_bytes, mem.output_size_in_bytes,
                       mem.temp_size_in_bytes)
      alias = mem.alias_size_in_bytes
      peak = arg + out + tmp - alias
      rows.append((seq, ws, policy, arg, out, tmp, alias, peak))
      print(f"seq {seq} (window scale {ws}), remat policy {policy}: peak "
            f"{peak / GiB:.2f} GiB (arguments {arg / GiB:.2f}, outputs "
            f"{out / GiB:.2f}, temporaries {tmp / GiB:.2f}, aliased "
            f"{alias / GiB:.2f}); compiled in {secs:.0f} s", flush=True)
      if args.top:
        for line in top_buffers(dump_dir, args.top):
          print("   " + line)
      del compiled
  print("\n| seq | window scale | top window | remat policy | peak GiB | "
        "arguments GiB | outputs GiB | temporaries GiB | aliased GiB | "
        "peak MiB per 1K tokens |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for seq, ws, policy, arg, out, tmp, alias, peak in rows:
    print(f"| {seq} | {ws} | {max(cfg.windows) * ws} | {policy} | "
          f"{peak / GiB:.2f} | {arg / GiB:.2f} | {out / GiB:.2f} | "
          f"{tmp / GiB:.2f} | {alias / GiB:.2f} | "
          f"{peak / 2**20 / (seq / 1024):.0f} |")


if __name__ == "__main__":
  main()
