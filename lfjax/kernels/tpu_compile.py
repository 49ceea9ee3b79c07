"""Compile windowed attention for a TPU that is not here; read each kernel's VMEM.

  python -m lfjax.kernels.tpu_compile --target v5e [--variant mosaic_causal_d64_bf16,...]

libtpu (`pip install "lfjax[tpu]"`, JAX_PLATFORMS=cpu) compiles a jitted
function "deviceless" for a TPU topology (lfjax.plan_tpu) through XLA's TPU
compiler and Mosaic, as the chip would, and refuses what would not fit
(a kernel over its scoped VMEM: CompileTimeScopedVmemOom; a program over
HBM: CompileTimeHbmOom). Per variant (windowed_attention(impl=...) forward
+ backward, jax.grad w.r.t. q, k, v and the relative tensors) this reads:
- per Pallas TPU kernel (each `tpu_custom_call` of the optimized HLO): its
  VMEM, from libtpu's VMEM report (LIBTPU_INIT_ARGS="--xla_jf_dump_to=DIR
  --xla_jf_dump_llo_pass_label_regex=vmem_report": one HTML page per
  module, a JSON object inside: capacity and per-op scoped bytes), and its
  limit: the kernel's own (compiler_params vmem_limit_bytes, in the HLO's
  scoped_memory_configs) else the chip's default, read from the compiler
  (lfjax.plan_tpu.scoped_vmem_limit: 16 MiB v5e/v5p, 32 MiB v6e);
- per step: compile time (the whole program: XLA and every Mosaic kernel;
  wall clock, so a loaded machine inflates it) and HBM sizes
  (compiled.memory_analysis(): temporaries, arguments, outputs).
libtpu reads its flags when it loads, so every compile runs in a child
Python process (`compile_variants`) and its dump is parsed here. A kernel
of the HLO missing from the report raises ParseError, never reads as 0.

Variants (`VARIANTS`): 4,096 tokens, 12 heads, window 256, batch 1: the
causal band at head_dim 64 and 128 in bf16 and float32; a non-causal MLM
layer (per-head dilation 1, 1, 2, 3, 16 global tokens, key padding) at
head_dim 64; that layer with attention dropout 0.1; the char-LM layer
(causal, dilation 2 on a quarter of the heads, relative positions,
dropout 0.1). impl="splash" for what splash serves (no dropout, no
relative term), impl="mosaic" for all; and JAX's own splash kernel called
directly (jax_splash_causal_d128_bf16), the reference. A variant whose impl
is not in lfjax.attention.api.BAND_KERNELS (not built yet) is reported as
unavailable, not compiled.
"""

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

from lfjax import plan_tpu
from lfjax.kernels import gpu_compile

TARGETS = ("v5e", "v6e", "v5p")
TOKENS, HEADS, WINDOW = gpu_compile.TOKENS, gpu_compile.HEADS, 256
SERVES = {"splash": ("causal", "globals"),
          "mosaic": ("causal", "globals", "globals_dropout", "rel_dropout"),
          "jax_splash": ("causal",)}


class ParseError(RuntimeError):
  """A figure the compile should have produced is missing from its dump."""


@dataclasses.dataclass(frozen=True)
class Variant:
  """windowed_attention(impl=impl) of one kind (see gpu_compile.Variant;
  "globals" is its "globals_dropout" without dropout), forward + backward.
  impl "jax_splash": JAX's splash attention kernel itself (causal only)."""
  impl: str
  kind: str
  head_dim: int
  dtype: str  # "bfloat16" | "float32"

  @property
  def name(self):
    return (f"{self.impl}_{self.kind}_d{self.head_dim}_"
            f"{gpu_compile._short(self.dtype)}")


# The causal band at both widths and dtypes; the training layers at
# head_dim 64 in both dtypes (as gpu_compile.VARIANTS, for the same reason).
VARIANTS = tuple(
    [Variant(impl, "causal", d, t) for impl in ("splash", "mosaic")
     for d in (64, 128) for t in ("bfloat16", "float32")]
    + [Variant(impl, k, 64, t) for impl in ("splash", "mosaic")
       for k in SERVES[impl] if k != "causal"
       for t in ("bfloat16", "float32")]
    + [Variant("jax_splash", "causal", 128, "bfloat16")])
BY_NAME = {v.name: v for v in VARIANTS}


def variant(name, impl=None):
  """The Variant of a name, with its impl replaced by `impl` when given
  (e.g. "chunked": the same call through another implementation)."""
  if name not in BY_NAME:
    raise ValueError(f"variant: expected one of {sorted(BY_NAME)}, got "
                     f"{name!r}")
  v = BY_NAME[name]
  return dataclasses.replace(v, impl=impl) if impl else v


def build(v, sharding, tokens=TOKENS, batch=1):
  """(jitted fwd+bwd function, argument avals) of a Variant; its module is
  named jit_kc_<variant name> (gpu_compile.build)."""
  if v.impl != "jax_splash":
    return gpu_compile.build(v, sharding, impl=v.impl, tokens=tokens,
                             batch=batch, grad_rel=True)
  import jax
  import jax.numpy as jnp
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as sk, splash_attention_mask as sm)
  mask = sm.MultiHeadMask([sm.LocalMask((tokens, tokens), (WINDOW, 0), 0)
                           for _ in range(HEADS)])
  kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1)
  aval = jax.ShapeDtypeStruct((batch, HEADS, tokens, v.head_dim),
                              jnp.dtype(v.dtype), sharding=sharding)

  def fwd_bwd(q, k, val):
    loss = lambda q, k, val: jnp.sum(jax.vmap(kernel)(
        q * q.shape[-1] ** -0.5, k, val).astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, val)

  fwd_bwd.__name__ = "kc_" + v.name
  return jax.jit(fwd_bwd), [aval] * 3


# Child process: compile and report on stdout --------------------------------

_MARK = "LFJAX_TC"


def _say(kind, **fields):
  print(f"{_MARK} {kind} {json.dumps(fields)}", flush=True)


def _child(target_name, names, impl=None, tokens=TOKENS):
  import jax
  from lfjax import plan
  jax.config.update("jax_enable_compilation_cache", False)
  target = plan.parse_target(target_name)
  dev = plan_tpu.topology_devices(target.topology)[0]
  _say("CHIP", device_kind=dev.device_kind,
       scoped_vmem_limit=plan_tpu.scoped_vmem_limit(dev),
       hbm_available=plan_tpu.hbm_available(dev))
  sharding = jax.sharding.SingleDeviceSharding(dev)
  from lfjax.attention import api
  from lfjax.kernels import lowering
  for name in names:
    v = variant(name, impl)
    if v.impl not in api.IMPLS and v.impl != "jax_splash":
      _say("UNAVAILABLE", variant=name, why=f"impl {v.impl!r} is not in "
           f"lfjax.attention.api.BAND_KERNELS (not built yet)")
      continue
    fn, avals = build(v, sharding, tokens)
    try:
      # So that the trace knows it is for a TPU (impl="auto").
      with lowering.trace_for(dev.device_kind, "tpu"):
        # With only an abstract mesh, JAX wants the platform named.
        lowered = fn.trace(*avals).lower(lowering_platforms=("tpu",))
    except (ValueError, NotImplementedError) as e:  # refused at trace
      _say("UNSUPPORTED", variant=name, why=str(e).splitlines()[0])
      continue
    start = time.perf_counter()
    try:
      compiled = lowered.compile()
    except Exception as e:  # RESOURCE_EXHAUSTED: VMEM or HBM
      _say("FAILED", variant=name, why=" ".join(str(e).split())[:600])
      continue
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    _say("COMPILED", variant=name, compile_s=round(seconds, 2),
         hbm_temp=m.temp_size_in_bytes,
         hbm_arguments=m.argument_size_in_bytes,
         hbm_outputs=m.output_size_in_bytes,
         hbm_code=m.generated_code_size_in_bytes)


# Parsing libtpu's dump ------------------------------------------------------

_DATA = "const DATA ="
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\(",
                    re.M)
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]\{[^}]*\}")
_BITS = {"pred": 8}
_SCOPED = re.compile(r'"scoped_memory_configs":\s*\[\s*\{[^}]*?"size":\s*'
                     r'"?(\d+)')


def parse_vmem_report(text):
  """(module name, VMEM capacity, {op: scoped bytes}) of one libtpu
  *-vmem_report.html. Raises ParseError without its JSON."""
  at = text.find(_DATA)
  if at < 0:
    raise ParseError(f"VMEM report: no '{_DATA}' in it")
  try:
    data, _ = json.JSONDecoder().raw_decode(text[at + len(_DATA):].lstrip())
    info = data["global_info"]
    ops = {k: int(v["total_size"]) for k, v in data["hlo_breakdowns"].items()}
    return info["module_name"], int(info["vmem_capacity"]), ops
  except (ValueError, KeyError, TypeError) as e:
    raise ParseError(f"VMEM report: unreadable JSON ({e})") from None


@dataclasses.dataclass
class Kernel:
  """A Pallas TPU kernel of the optimized HLO."""
  limit: int | None  # its own scoped VMEM limit (vmem_limit_bytes)
  # Whether XLA placed every operand and output in VMEM (memory space
  # S(1)): then the kernel needs no window buffers of its own.
  all_in_vmem: bool
  # Bytes (unpadded) of its operands and outputs XLA placed in VMEM: part
  # of XLA's VMEM temporaries, not of the kernel's scoped VMEM.
  xla_vmem: int


def _array_bytes(shape_text, vmem_only):
  total = 0
  for m in _ARRAY.finditer(shape_text):
    if vmem_only and "S(1)" not in m.group(0):
      continue
    dims = [int(x) for x in m.group(2).split(",") if x]
    bits = _BITS.get(m.group(1)) or int(re.sub(r"\D", "", m.group(1)))
    total += (bits // 8) * (1 if not dims else math.prod(dims))
  return total


def parse_kernels(hlo):
  """{instruction: Kernel} of the Pallas TPU kernels
  (custom_call_target="tpu_custom_call") in libtpu's HLO dump."""
  starts = list(_INSTR.finditer(hlo))
  shapes = {m.group(1): m.group(2) for m in starts}
  out = {}
  for i, m in enumerate(starts):
    chunk = hlo[m.start():starts[i + 1].start() if i + 1 < len(starts)
                else len(hlo)]
    if 'custom_call_target="tpu_custom_call"' not in chunk:
      continue
    limit = _SCOPED.search(chunk)
    args = chunk[m.end() - m.start():chunk.find("custom_call_target")]
    arrays = [m.group(2)] + [shapes.get(a, "") for a in
                             re.findall(r"%([\w.\-]+)", args)]
    placed = [_ARRAY.findall(t) and all(
        "S(1)" in a.group(0) for a in _ARRAY.finditer(t)) for t in arrays]
    out[m.group(1)] = Kernel(
        limit=int(limit.group(1)) if limit else None,
        all_in_vmem=all(placed),
        xla_vmem=sum(_array_bytes(t, True) for t in arrays))
  return out


def read_dump(folder, module):
  """(capacity, {kernel: (scoped VMEM bytes, Kernel)}) of a module
  (jit_kc_<variant>) in libtpu's dump folder.

  The report lists the ops that have scoped VMEM (window buffers of
  operands XLA left in HBM, scratch); a kernel with neither (every
  operand and output in VMEM, no scratch) is absent from it, and reads as
  0 only when the HLO shows all its operands and outputs in VMEM. Raises
  ParseError when the report or HLO is missing, or a kernel is absent from
  the report with an operand outside VMEM."""
  reports = []
  for f in sorted(os.listdir(folder)):
    if f.endswith("-vmem_report.html"):
      with open(os.path.join(folder, f)) as fh:
        name, capacity, ops = parse_vmem_report(fh.read())
      if name == module:
        reports.append((f, capacity, ops))
  if len(reports) != 1:
    raise ParseError(f"{module}: expected one VMEM report in {folder}, got "
                     f"{[r[0] for r in reports]}")
  f, capacity, ops = reports[0]
  hlo_file = os.path.join(folder, f.split("-")[0] + "-TLP-hlo.txt")
  if not os.path.exists(hlo_file):
    raise ParseError(f"{module}: no HLO dump {hlo_file} beside {f}")
  with open(hlo_file) as fh:
    kernels = parse_kernels(fh.read())
  missing = sorted(k for k in set(kernels) - set(ops)
                   if not kernels[k].all_in_vmem)
  if missing:
    raise ParseError(f"{module}: kernels {missing} are not in its VMEM "
                     f"report (it lists {sorted(ops)}), and have operands "
                     "outside VMEM")
  return capacity, {k: (ops.get(k, 0), kern) for k, kern in kernels.items()}


@dataclasses.dataclass
class Resources:
  """One variant compiled for one target (bytes, seconds)."""
  target: str
  variant: str
  compile_s: float
  hbm_temp: int
  hbm_arguments: int
  hbm_outputs: int
  vmem_capacity: int
  # [{kernel, vmem, limit, xla_vmem}]: vmem is the kernel's scoped VMEM,
  # limit the kernel's own, else the chip's; xla_vmem the bytes of its
  # operands and outputs XLA placed in VMEM (its temporaries, unpadded).
  kernels: list

  def over_limit(self):
    return [k for k in self.kernels if k["vmem"] > k["limit"]]


def compile_variants(target, names=None, *, impl=None, tokens=TOKENS,
                     python=None, timeout=900, keep=None):
  """Compiles variants (default all) for a target (v5e, v6e, v5p; a slice
  "v5e:2x2" compiles for its first chip) in a child process.

  impl: run every variant through this implementation instead (e.g.
  "chunked"); tokens: sequence length. keep: a folder to keep the child's
  output and libtpu's dump in (default: a temporary one).

  Returns (list of Resources, {variant: why} not compiled because the impl
  is not built yet or refuses the variant at trace time, {variant: XLA's
  error} that do not compile, e.g. CompileTimeScopedVmemOom). Raises
  RuntimeError (the child's output tail) when the child dies, ParseError
  when a figure is missing."""
  names = list(names or BY_NAME)
  for n in names:
    variant(n)  # ValueError naming the bad one
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  with tempfile.TemporaryDirectory(prefix="lfjax_tc_") as tmp:
    dump = keep or tmp
    plan_tpu.require_libtpu()  # one line if missing; sets libtpu's env
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               LIBTPU_INIT_ARGS=(
                   os.environ.get("LIBTPU_INIT_ARGS", "")
                   + f" --xla_jf_dump_to={dump}"
                   " --xla_jf_dump_llo_pass_label_regex=vmem_report").strip(),
               PYTHONPATH=os.pathsep.join(
                   [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run(
        [python or sys.executable, "-m", "lfjax.kernels.tpu_compile",
         "--child", "--target", target, "--variant", ",".join(names),
         "--tokens", str(tokens)] + (["--impl", impl] if impl else []),
        env=env, capture_output=True, text=True, timeout=timeout)
    if keep:
      with open(os.path.join(keep, "child.txt"), "w") as f:
        f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
      raise gpu_compile.child_failed(names, target, proc)
    return collect(target, names, proc.stdout, dump, impl)


def collect(target, names, out, dump, impl=None):
  """compile_variants' result from the child's stdout and the dump; rows
  are named after the variant as compiled (impl replaced)."""
  said = {}
  for line in out.splitlines():
    if line.startswith(_MARK + " "):
      kind, fields = line[len(_MARK) + 1:].split(" ", 1)
      fields = json.loads(fields)
      said[fields.get("variant", kind)] = (kind, fields)
  if "CHIP" not in said:
    raise ParseError(f"{target}: the child printed no chip line")
  chip_limit = said["CHIP"][1]["scoped_vmem_limit"]
  rows, skipped, failed = [], {}, {}
  for name in names:
    if name not in said:
      raise ParseError(f"{name} for {target}: the child said nothing")
    kind, f = said[name]
    if kind in ("UNAVAILABLE", "UNSUPPORTED"):
      skipped[name] = f["why"]
      continue
    if kind == "FAILED":
      failed[name] = f["why"]
      continue
    compiled = variant(name, impl).name
    capacity, kernels = read_dump(dump, "jit_kc_" + compiled)
    rows.append(Resources(
        target=target, variant=compiled, compile_s=f["compile_s"],
        hbm_temp=f["hbm_temp"], hbm_arguments=f["hbm_arguments"],
        hbm_outputs=f["hbm_outputs"], vmem_capacity=capacity,
        kernels=[dict(kernel=k, vmem=b, limit=kern.limit or chip_limit,
                      xla_vmem=kern.xla_vmem)
                 for k, (b, kern) in sorted(kernels.items())]))
  return rows, skipped, failed


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--target", default="v5e",
                 help="v5e, v6e or v5p (a slice v5e:2x2: its first chip)")
  p.add_argument("--variant", default="",
                 help="comma-separated names (default: all): "
                 + ", ".join(BY_NAME))
  p.add_argument("--impl", default="",
                 help="compile every variant through this impl instead "
                 "(e.g. chunked, dense)")
  p.add_argument("--tokens", type=int, default=TOKENS)
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  names = [n for n in a.variant.split(",") if n] or list(BY_NAME)
  unknown = [n for n in names if n not in BY_NAME]
  if unknown:
    p.error(f"--variant: expected names among {', '.join(BY_NAME)}; got "
            f"{', '.join(unknown)}")
  from lfjax import cli
  from lfjax import extras
  from lfjax import plan
  try:
    tpu = plan.parse_target(a.target).platform == "tpu"
  except cli.UsageError as e:
    # A TPU's bad slice shape keeps its own words; anything else is not a
    # TPU target (parse_target's message would list GPUs too).
    tpu = a.target.split(":")[0] in TARGETS and str(e)
    if tpu:
      p.error(f"--target: {str(e).split(': ', 1)[-1]}")
  if not tpu:
    p.error(f"--target: expected one of {', '.join(TARGETS)}, optionally "
            f"with a slice's topology (v5e:2x2: its first chip), got "
            f"{a.target!r}")
  from lfjax.attention import api
  if a.impl and a.impl not in api.IMPLS:
    p.error(f"--impl: expected one of {', '.join(api.IMPLS)}, got "
            f"{a.impl!r}")
  if a.tokens < 1:
    p.error(f"--tokens: expected a positive integer, got {a.tokens}")
  if a.child:
    _child(a.target, names, a.impl or None, a.tokens)
    return 0
  try:
    rows, skipped, failed = compile_variants(
        a.target, names, impl=a.impl or None, tokens=a.tokens)
  except (RuntimeError, ParseError, extras.MissingPackage) as e:
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 1
  gpu_compile.print_rows(a.target, rows, not_compiled=skipped, failed=failed)
  return 0


if __name__ == "__main__":
  sys.exit(main())
