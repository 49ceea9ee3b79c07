"""Compile the band kernel for a GPU that is not here, and read its resources.

  python -m lfjax.kernels.gpu_compile --target a100 --variant causal_d64_bf16

JAX's CUDA plugin (`pip install "lfjax[plan]"`, JAX_PLATFORMS=cpu) compiles a
jitted function "deviceless" for a target of lfjax.plan (lfjax/gpu_targets:
XLA's device descriptions) through XLA's own Triton, LLVM and ptxas, as a
real GPU would. Per Triton kernel of `windowed_attention(impl="pallas")`
(lfjax_band_fwd / dq / dkv) this reads:
- launch grid, threads and shared memory: XLA's dump, the thunk sequence
  (`XLA_FLAGS=--xla_dump_to`);
- num_warps and num_stages: the kernel's backend config in the optimized HLO;
- registers, spill stores / loads and stack frame: ptxas' -v report, which
  XLA logs (TF_CPP_VMODULE=subprocess_compilation=2,ptx_compiler_impl=2).
Both logging and the dump are read by XLA when the plugin loads, so every
compile runs in a child Python process (`compile_variants`), and its stderr
and dump folder are parsed here. A figure that cannot be found raises
ParseError instead of reading as 0: a new XLA that logs differently must
not pass as "no spills".

Variants (`VARIANTS`): realistic shapes (4,096 tokens, window 256, 12 heads),
forward + backward (jax.grad), per head_dim and dtype; see VARIANTS for why
these and not the full product.
"""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile

KERNELS = ("lfjax_band_fwd", "lfjax_band_dq", "lfjax_band_dkv",
           "lfjax_band_dglobal")
TOKENS, HEADS, WINDOW = 4096, 12, 256


class ParseError(RuntimeError):
  """A figure the compile should have produced is missing from its log or
  dump (never reported as 0)."""


@dataclasses.dataclass(frozen=True)
class Variant:
  """One windowed_attention(impl="pallas") call, forward + backward.

  kind: "causal" (the plain causal band), "globals_dropout" (an MLM /
  fine-tuning layer in training: per-head dilation 1, 1, 2, 3 repeated,
  16 global tokens, padding, attention dropout 0.1; not causal: globals
  are not causal), "rel_dropout" (a char-LM layer in training: causal,
  dilation 2 on a quarter of the heads, the relative-position term with
  Dr = head_dim, attention dropout 0.1). The training variants combine
  the paths because their registers add up in one kernel body."""
  kind: str
  head_dim: int
  dtype: str  # "bfloat16" | "float32"

  @property
  def name(self):
    return f"{self.kind}_d{self.head_dim}_{_short(self.dtype)}"


def _short(dtype):
  return {"bfloat16": "bf16", "float32": "f32"}[dtype]


# The plain causal band at both widths and both dtypes (the block-size
# table's axes), and the two training layers (every extra path: dilation,
# globals, the relative term, dropout) at head_dim 64 in both dtypes: they
# change the kernel body, not how it scales with head_dim, and the full
# product would double CI's compile time for no new code path.
VARIANTS = tuple(
    [Variant("causal", d, t) for d in (64, 128)
     for t in ("bfloat16", "float32")]
    + [Variant(k, 64, t) for k in ("globals_dropout", "rel_dropout")
       for t in ("bfloat16", "float32")])
BY_NAME = {v.name: v for v in VARIANTS}


def build(variant, sharding, *, impl="pallas", tokens=TOKENS, batch=1,
          grad_rel=False):
  """(jitted fwd+bwd function named after the variant, argument avals).

  variant: a Variant here or in lfjax.kernels.tpu_compile (kind, head_dim,
  dtype, name); kind "globals" is "globals_dropout" without dropout.
  impl: windowed_attention's. tokens, batch: the q/k/v shape [batch,
  tokens, 12 heads, head_dim]. grad_rel: also differentiate the relative
  tensors (rel_query, rel_table), as training does."""
  import jax
  import jax.numpy as jnp
  from lfjax.attention.api import windowed_attention
  dtype = jnp.dtype(variant.dtype)
  b, n, h, d = batch, tokens, HEADS, variant.head_dim
  aval = lambda shape, dt=dtype: jax.ShapeDtypeStruct(shape, dt,
                                                      sharding=sharding)
  qkv = [aval((b, n, h, d))] * 3
  kw = dict(window=WINDOW, impl=impl)
  extra = []
  argnums = (0, 1, 2)
  if variant.kind == "causal":
    kw["causal"] = True
  elif variant.kind in ("globals_dropout", "globals"):
    kw.update(dilation=[1, 1, 2, 3] * (h // 4), max_global=16)
    extra = [aval((b, n), jnp.bool_), aval((b, n), jnp.bool_)]
    if variant.kind == "globals_dropout":
      kw["dropout_rate"] = 0.1
      extra.append(aval((), jnp.uint32))
  elif variant.kind == "rel_dropout":
    kw.update(causal=True, dilation=[1, 1, 1, 2] * (h // 4),
              dropout_rate=0.1)
    extra = [aval((b, n, h, d)), aval((2 * WINDOW + 1, h, d)),
             aval((), jnp.uint32)]
    argnums = (0, 1, 2, 3, 4) if grad_rel else argnums
  else:
    raise ValueError(f"variant.kind: unknown {variant.kind!r}")

  def attend(q, k, v, *more):
    if variant.kind in ("globals_dropout", "globals"):
      key = jax.random.key(more[2]) if len(more) > 2 else None
      return windowed_attention(q, k, v, key_mask=more[0],
                                global_mask=more[1], dropout_key=key, **kw)
    if variant.kind == "rel_dropout":
      return windowed_attention(q, k, v, rel_query=more[0],
                                rel_table=more[1],
                                dropout_key=jax.random.key(more[2]), **kw)
    return windowed_attention(q, k, v, **kw)

  def loss(*args):
    return jnp.sum(attend(*args).astype(jnp.float32))

  def fwd_bwd(*args):
    return jax.grad(loss, argnums=argnums)(*args)

  fwd_bwd.__name__ = "kc_" + variant.name  # names the dump's files
  return jax.jit(fwd_bwd), qkv + extra


# Child process: compile and mark the log ------------------------------------

_MARK = "LFJAX_KC"


def _child(target_name, names, blocks=None):
  """Compiles the named variants for the target, each between markers on
  stderr (XLA's ptxas log lines land between them). blocks: BlockSizes
  fields forced on every kernel (the block-size search), else the
  kernel's own choice."""
  import jax
  from lfjax import plan
  if blocks:
    from lfjax.kernels import band_attention
    forced = band_attention.BlockSizes(*blocks)
    band_attention.BlockSizes.default = classmethod(
        lambda cls, *a, **k: forced)
  jax.config.update("jax_enable_compilation_cache", False)
  target = plan.parse_target(target_name)
  plugin = plan.require_plugin()
  dev = plan.topology_devices(target, plugin)[0]
  sharding = jax.sharding.SingleDeviceSharding(dev)
  # Pallas reads the compute capability from the abstract device's kind.
  mesh = jax.sharding.AbstractMesh(
      (1,), ("x",), abstract_device=jax.sharding.AbstractDevice(
          device_kind=dev.device_kind, num_cores=None, platform="cuda"))
  for name in names:
    variant = BY_NAME[name]
    fn, avals = build(variant, sharding)
    try:
      with jax.sharding.use_abstract_mesh(mesh):
        lowered = fn.trace(*avals).lower()
    except (ValueError, NotImplementedError) as e:
      # A path impl="pallas" refuses (none does today): listed, not compiled.
      msg = str(e).splitlines()[0]
      print(f"{_MARK} UNSUPPORTED {name} {msg}", file=sys.stderr, flush=True)
      continue
    print(f"{_MARK} BEGIN {name} {dev.device_kind}", file=sys.stderr,
          flush=True)
    try:
      lowered.compile()
    except Exception as e:  # e.g. RESOURCE_EXHAUSTED: shared memory
      msg = " ".join(str(e).split())[:500]
      print(f"\n{_MARK} FAILED {name} {msg}", file=sys.stderr, flush=True)
      continue
    print(f"{_MARK} END {name}", file=sys.stderr, flush=True)


# Parsing --------------------------------------------------------------------

_PTXAS_ENTRY = re.compile(
    r"Compiling entry function '(\w+)' for '(sm_\w+)'")
_PTXAS_PROPS = re.compile(
    r"Function properties for (\w+)\s*\n\s*(\d+) bytes stack frame, "
    r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_THUNK = re.compile(
    r"kCustomKernel .*?\b(lfjax_band_\w+) grid: \[(\d+), (\d+), (\d+)\] "
    r"threads: \[(\d+), (\d+), (\d+)\]\s+shared_memory: (\d+) bytes")
_HLO_CONFIG = re.compile(
    r'name = "(lfjax_band_\w+)", num_stages = (\d+) : i32, '
    r"num_warps = (\d+) : i32")


def parse_ptxas(log):
  """{kernel: {registers, spill_stores, spill_loads, stack, arch}} from the
  ptxas -v text of XLA's log, for the lfjax_band kernels. Raises ParseError
  when an entry lacks its properties or register count."""
  out = {}
  # One ptxas report per entry function: from its "Compiling entry" line to
  # the next one (XLA compiles kernels on several threads, but each report
  # is one log message).
  starts = [m for m in _PTXAS_ENTRY.finditer(log)]
  for i, m in enumerate(starts):
    name, arch = m.groups()
    if not name.startswith("lfjax_band"):
      continue
    end = starts[i + 1].start() if i + 1 < len(starts) else len(log)
    chunk = log[m.start():end]
    props = _PTXAS_PROPS.search(chunk)
    regs = _PTXAS_REGS.search(chunk)
    if props is None or props.group(1) != name or regs is None:
      raise ParseError(f"ptxas report of {name}: no 'Function properties' "
                       f"or 'Used N registers' line in:\n{chunk[:800]}")
    out[name] = dict(registers=int(regs.group(1)),
                     stack=int(props.group(2)),
                     spill_stores=int(props.group(3)),
                     spill_loads=int(props.group(4)), arch=arch)
  return out


def parse_dump(folder, variant_name):
  """{kernel: {grid, threads, shared_memory, num_warps, num_stages}} from
  XLA's dump of the variant's module (files jit_kc_<variant>)."""
  tag = f".jit_kc_{variant_name}."
  files = os.listdir(folder)
  thunks = [f for f in files if tag in f and f.endswith("thunk_sequence.txt")]
  hlos = [f for f in files if tag in f
          and f.endswith("gpu_after_optimizations.txt")]
  if len(thunks) != 1 or len(hlos) != 1:
    raise ParseError(f"XLA dump of {variant_name} in {folder}: expected one "
                     f"thunk sequence and one optimized HLO, got {thunks} "
                     f"and {hlos}")
  out = {}
  with open(os.path.join(folder, thunks[0])) as f:
    for m in _THUNK.finditer(f.read()):
      g = [int(x) for x in m.groups()[1:]]
      out[m.group(1)] = dict(grid=tuple(g[:3]), threads=tuple(g[3:6]),
                             shared_memory=g[6])
  # The HLO config names the Pallas kernel (lfjax_band_dq); XLA's thunks
  # and ptxas name its copies at other shapes lfjax_band_dq__1, ... (the
  # dilation classes): one launch config per base name, or it is ambiguous.
  configs = {}
  with open(os.path.join(folder, hlos[0])) as f:
    for m in _HLO_CONFIG.finditer(f.read()):
      configs.setdefault(m.group(1), set()).add(
          (int(m.group(2)), int(m.group(3))))
  for name, fig in out.items():
    got = configs.get(re.sub(r"__\d+$", "", name), set())
    if len(got) != 1:
      raise ParseError(f"{variant_name}, {name}: expected one (num_stages, "
                       f"num_warps) in the optimized HLO, got {sorted(got)}")
    (fig["num_stages"], fig["num_warps"]), = got
  return out


def shared_memory_limit(target_name):
  """The target's opt-in shared memory per block (bytes), what a Triton
  kernel may use (lfjax/gpu_targets)."""
  from lfjax import plan
  text = plan.target_text(plan.parse_target(target_name))
  m = re.search(r"shared_memory_per_block_optin:\s*(\d+)", text)
  if m is None:
    raise ParseError(f"{target_name}: no shared_memory_per_block_optin in "
                     "its target description")
  return int(m.group(1))


@dataclasses.dataclass
class KernelResources:
  target: str
  variant: str
  kernel: str  # as XLA names it (lfjax_band_fwd, lfjax_band_dq__1, ...)
  grid: tuple
  threads: tuple
  shared_memory: int
  registers: int
  spill_stores: int
  spill_loads: int
  stack: int
  num_warps: int
  num_stages: int
  arch: str


_FIELDS = ("grid", "threads", "shared_memory", "num_warps", "num_stages",
           "registers", "spill_stores", "spill_loads", "stack", "arch")


def compile_variants(target_name, names=None, *, python=None, timeout=900,
                     keep=None, blocks=None):
  """Compiles variants (default all) for a target in a child process.

  keep: a folder to keep the child's log (stderr.txt) and XLA's dump in
  (default: a temporary one). blocks: (block_q, block_k, num_warps,
  num_stages) forced on every kernel instead of BlockSizes.default (to
  search).

  Returns (list of KernelResources, {variant: reason} of variants that
  impl="pallas" refuses, {variant: XLA's error} of variants that do not
  compile, e.g. RESOURCE_EXHAUSTED for too much shared memory). Raises
  RuntimeError (the child's log tail) when the child dies, ParseError when
  a figure is missing."""
  names = list(names or BY_NAME)
  for n in names:
    if n not in BY_NAME:
      raise ValueError(f"variant: expected one of {sorted(BY_NAME)}, "
                       f"got {n!r}")
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  with tempfile.TemporaryDirectory(prefix="lfjax_kc_") as tmp:
    dump = keep or tmp
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="0",
               TF_CPP_VMODULE="subprocess_compilation=2,ptx_compiler_impl=2",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                          + f" --xla_dump_to={dump}").strip(),
               # The child imports this very lfjax, not an installed one.
               PYTHONPATH=os.pathsep.join(
                   [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run(
        [python or sys.executable, "-m", "lfjax.kernels.gpu_compile",
         "--child", "--target", target_name, "--variant", ",".join(names)]
        + (["--blocks", ",".join(map(str, blocks))] if blocks else []),
        env=env, capture_output=True, text=True, timeout=timeout)
    log = proc.stderr
    if keep:
      with open(os.path.join(keep, "stderr.txt"), "w") as f:
        f.write(log)
    if proc.returncode != 0:
      raise child_failed(names, target_name, proc)
    return _collect(target_name, names, log, dump)


def child_failed(names, target, proc):
  """The RuntimeError for a compile child that died: the child's own error
  (its last exception line) on the first line, which a command-line main
  prints alone, then the tail of its log."""
  lines = [l.strip() for l in proc.stderr.splitlines() if l.strip()]
  why = next((l for l in reversed(lines)
              if re.match(r"^[\w.]*(Error|Exception)\b", l)),
             lines[-1] if lines else "")
  return RuntimeError(f"compiling {names} for {target} failed (exit "
                      f"{proc.returncode}): {why}\n{proc.stderr[-4000:]}")


def _collect(target_name, names, log, dump):
  rows, unsupported, failed = [], {}, {}
  for name in names:
    m = re.search(rf"{_MARK} UNSUPPORTED {name} (.*)", log)
    if m:
      unsupported[name] = m.group(1)
      continue
    m = re.search(rf"{_MARK} FAILED {name} (.*)", log)
    if m:
      failed[name] = m.group(1)
      continue
    m = re.search(rf"{_MARK} BEGIN {name} .*?\n(.*?){_MARK} END {name}\n",
                  log, re.S)
    if m is None:
      raise ParseError(f"{name} for {target_name}: no compile markers in "
                       "the child's log")
    ptx = parse_ptxas(m.group(1))
    dumped = parse_dump(dump, name)
    kernels = sorted(k for k in dumped if k.startswith("lfjax_band"))
    # Every kernel of each kind must be there (fwd, dq, dkv: grad; the
    # global keys' gradient kernel with global tokens).
    for base in KERNELS:
      if base == "lfjax_band_dglobal" and "globals" not in name:
        continue
      if not any(re.fullmatch(rf"{base}(__\d+)?", k) for k in kernels):
        raise ParseError(f"{name} for {target_name}: no {base} kernel in "
                         f"XLA's dump (found {kernels})")
    for k in kernels:
      fig = dict(dumped[k])
      if k not in ptx:
        raise ParseError(f"{name} for {target_name}: no ptxas report for "
                         f"{k} (ptxas reported {sorted(ptx)})")
      fig.update(ptx[k])
      missing = [f for f in _FIELDS if f not in fig]
      if missing:
        raise ParseError(f"{name} for {target_name}, {k}: no {missing}")
      rows.append(KernelResources(target=target_name, variant=name,
                                  kernel=k, **fig))
  return rows, unsupported, failed


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--target", default="a100")
  p.add_argument("--variant", default="",
                 help="comma-separated names (default: all): "
                 + ", ".join(BY_NAME))
  p.add_argument("--blocks", default="",
                 help="block_q,block_k,num_warps,num_stages forced on "
                 "every kernel (default: BlockSizes.default's choice)")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  names = [n for n in a.variant.split(",") if n] or list(BY_NAME)
  unknown = [n for n in names if n not in BY_NAME]
  if unknown:
    p.error(f"--variant: expected names among {', '.join(BY_NAME)}; got "
            f"{', '.join(unknown)}")
  from lfjax import plan
  if a.target not in plan.TARGETS:
    p.error(f"--target: expected one of {', '.join(plan.TARGETS)}, got "
            f"{a.target!r}")
  try:
    blocks = tuple(int(x) for x in a.blocks.split(",") if x) or None
  except ValueError:
    blocks = ()
  if blocks is not None and len(blocks) != 4:
    p.error(f"--blocks: expected 4 integers, got {a.blocks!r}")
  if blocks is not None:
    from lfjax.kernels import band_attention
    try:
      band_attention.BlockSizes(*blocks).check()
    except ValueError as e:
      p.error(f"--blocks: {e}")
  if a.child:
    _child(a.target, names, blocks)
    return 0
  try:
    rows, unsupported, failed = compile_variants(a.target, names,
                                                 blocks=blocks)
  except (RuntimeError, ParseError) as e:
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 1
  print_rows(a.target, rows, unsupported=unsupported, failed=failed)
  return 0


def print_rows(target, rows, **why_by_kind):
  """The command line's output (this module's and tpu_compile's): a JSON
  row per compiled variant, then one per variant of each kind of failure
  ({variant: reason}), the kind as its key."""
  for r in rows:
    print(json.dumps(dataclasses.asdict(r)))
  for kind, whys in why_by_kind.items():
    for n, why in whys.items():
      print(json.dumps({"target": target, "variant": n, kind: why}))


if __name__ == "__main__":
  sys.exit(main())
