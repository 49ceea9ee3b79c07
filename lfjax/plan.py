"""Will a run fit a GPU or TPU not here? `--plan_for` compiles it for one.

  python -m lfjax.train --config configs/mlm_longformer_base.py \
      --config.init_from DIR --plan_for a100
  python -m lfjax.train --config configs/qa_longformer.py \
      --config.init_from DIR --config.model.dtype bfloat16 \
      --config.model.remat=True --plan_for h100x8

needs `pip install "lfjax[plan]"` (JAX's CUDA plugin, its PJRT library and
ptxas; no GPU, no driver). The run's own train step (the task's
make_train_step, optimizer and loss: the code training runs) and its
evaluation step are compiled by XLA for the named GPU ("deviceless"
compilation, lfjax/gpu_targets/*.txtpb: XLA's device descriptions), and
XLA's buffer assignment says how much device memory each needs. Nothing is
read but init_from's config.json: the model is built as abstract shapes
(nnx.eval_shape), the batch is ShapeDtypeStructs, no weights, no data; no
run folder is written.

Targets: a100 (A100 SXM 40 GB), a100_80 (A100 SXM 80 GB), h100 (H100 SXM
80 GB HBM3), h200 (H200 141 GB); with xN (h100x8) N such GPUs on one host,
and the config's mesh (config.mesh, as the MLM and fine-tuning trainers
lay it out) is planned per device. TPUs (`pip install "lfjax[tpu]"`,
lfjax.plan_tpu): v5e, v5p, v6e, or a slice with its topology (v5e:2x2,
v5p:2x2x1), per chip; the budget is the HBM XLA's TPU compiler lets a
program use (read from the compiler), and a step over it is refused by
the compiler (StepMemory.refused), reported as not fitting.

How the total is computed (bytes, per device): XLA's
`compiled.memory_analysis()` of the step: arguments (parameters, optimizer
state, batch, key) + temp (the one buffer XLA reuses for activations,
gradients and every intermediate: its peak) + outputs not aliased to a
donated argument (params and optimizer state are donated, as in training,
so their updates reuse the arguments' buffers) + generated code. The
evaluation step runs between training steps, with the optimizer state
still on the device: its total adds the optimizer state.

What XLA does not count: the CUDA context, cuBLAS/cuDNN handles and JAX's
allocator overhead. JAX's allocator takes XLA_PYTHON_CLIENT_MEM_FRACTION of
the device's memory (0.75 when unset: JAX's default), and the rest stays
for those; so the budget here is that fraction of device memory, read from
the same variable the run will see (set it, e.g. to 0.95, both when
planning and when training to plan for more). Fragmentation between the
arguments' buffers is not modelled (the temp is one allocation).

Exit status: 0 when the train step and the evaluation step fit the budget,
1 when one does not, 2 for a bad flag or config. The largest micro-batch
that fits is found by compiling the train step at the divisors of
train.batch_size (multiples of the mesh's data x fsdp), by bisection:
memory grows with the micro-batch.
"""

import dataclasses
import importlib.metadata
import importlib.resources
import os
import re
import sys

from lfjax import cli
from lfjax import extras

# --plan_for name -> (file in lfjax/gpu_targets, what it is)
TARGETS = {
    "a100": ("a100_sxm_40", "A100 SXM 40 GB"),
    "a100_80": ("a100_sxm_80", "A100 SXM 80 GB"),
    "h100": ("h100_sxm", "H100 SXM 80 GB"),
    "h200": ("h200", "H200 141 GB"),
}
# Tasks whose train step the planner builds (their model comes from
# init_from's config.json), and why the others are not planned.
TASKS = ("mlm", "classification", "qa", "multiple_choice")
NOT_PLANNED = {
    "charlm": "the char-LM has no init_from and trains in phases of several "
              "lengths",
    "summarization": "the planner does not build LED's train step or its "
                     "beam-search evaluation yet; "
                     "experiments/generate_memory.py gives generation's "
                     "compiled memory at 16K tokens",
}
DEFAULT_FRACTION = 0.75  # JAX's XLA_PYTHON_CLIENT_MEM_FRACTION default
# GpuTargetConfigProto fields newer than jax-cuda12-plugin 0.10.2 (which
# refuses the text with them); dropped for older plugins. None changes
# buffer sizes.
_NEWER_FIELDS = ("mem_clock_ghz", "reserved_shared_memory_per_block",
                 "max_blocks_per_multiprocessor",
                 "collective_memory_granularity")
GB = 1e9


@dataclasses.dataclass(frozen=True)
class Target:
  name: str  # the --plan_for key (a100, ..., v5e)
  file: str  # lfjax/gpu_targets/<file>.txtpb ("" for a TPU)
  label: str  # "A100 SXM 40 GB"
  count: int  # GPUs on the host, TPU chips in the slice
  platform: str = "cuda"  # "cuda" | "tpu"
  topology: str = ""  # a TPU's get_topology_desc name ("v5e:2x2")


def parse_target(value):
  """--plan_for's value (a100, h100x8, v5e, v5e:2x2, v5p:2x2x1, ...) ->
  Target.

  Raises cli.UsageError naming the flag, the choices and the value."""
  from lfjax import plan_tpu
  value = str(value)
  m = re.fullmatch(r"(%s)(?:x([1-9][0-9]*))?" % "|".join(TARGETS), value)
  if m:
    file, label = TARGETS[m.group(1)]
    return Target(m.group(1), file, label, int(m.group(2) or 1))
  m = re.fullmatch(r"(%s)(?::([0-9x]+))?" % "|".join(plan_tpu.CHIPS), value)
  if m:
    try:
      topology, count = plan_tpu.parse_topology(m.group(1), m.group(2) or "")
    except ValueError as e:
      raise cli.UsageError(f"--plan_for: {e}") from None
    return Target(m.group(1), "", plan_tpu.CHIPS[m.group(1)].label, count,
                  "tpu", topology)
  raise cli.UsageError(
      f"--plan_for: expected one of {', '.join(TARGETS)}, optionally "
      f"with xN for N GPUs (e.g. h100x8), or a TPU "
      f"{', '.join(plan_tpu.CHIPS)}, optionally with a slice's topology "
      f"(e.g. v5e:2x2, v5p:2x2x1), got {value!r}")


def memory_fraction(environ=None):
  """The share of device memory JAX's allocator gets: the run's
  XLA_PYTHON_CLIENT_MEM_FRACTION, else JAX's default 0.75. Raises
  cli.UsageError for a value that is not a number in (0, 1]."""
  env = os.environ if environ is None else environ
  raw = env.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "")
  if not raw:
    return DEFAULT_FRACTION
  try:
    f = float(raw)
  except ValueError:
    f = float("nan")
  if not 0 < f <= 1:
    raise cli.UsageError(f"XLA_PYTHON_CLIENT_MEM_FRACTION: expected a "
                         f"number in (0, 1], got {raw!r}")
  return f


def target_text(target, plugin_version=None):
  """The GpuTargetConfigProto text of a target (package data), without
  the fields an older plugin does not know."""
  text = importlib.resources.files("lfjax.gpu_targets").joinpath(
      target.file + ".txtpb").read_text()
  if plugin_version is not None and _version(plugin_version) < (0, 12):
    text = "\n".join(line for line in text.splitlines()
                     if line.strip().split(":")[0] not in _NEWER_FIELDS)
  return text


def device_memory(text):
  """device_memory_size (bytes) of a target's text."""
  return int(re.search(r"device_memory_size:\s*(\d+)", text).group(1))


def _version(v):
  return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


PIP = 'pip install "lfjax[plan]"'


def require_plugin():
  """The installed jax-cuda12-plugin version, checked against jaxlib's.

  Raises extras.MissingPackage (one line naming the pip command) when the
  plugin is missing or built for another jaxlib (JAX then ignores it)."""
  try:
    plugin = importlib.metadata.version("jax-cuda12-plugin")
  except importlib.metadata.PackageNotFoundError:
    raise extras.MissingPackage(
        f"--plan_for needs JAX's CUDA plugin (jax-cuda12-plugin, "
        f"jax-cuda12-pjrt, nvidia-cuda-nvcc-cu12), which is not installed; "
        f"install it with: {PIP}") from None
  jaxlib = importlib.metadata.version("jaxlib")
  if plugin != jaxlib:
    raise extras.MissingPackage(
        f"--plan_for: jax-cuda12-plugin {plugin} does not match jaxlib "
        f"{jaxlib} (JAX ignores a plugin of another version); install "
        f"matching ones with: {PIP} (it pins jax and jaxlib to the plugin's "
        "version: 0.12.0.1 on Python >= 3.12, 0.10.2 on 3.11)")
  return plugin


# Micro-batch search --------------------------------------------------------


def micro_batch_sizes(batch_size, groups=1):
  """Micro-batch sizes a run of batch_size rows can use, ascending: the
  divisors of batch_size that are multiples of groups (the mesh's data x
  fsdp devices, which split each micro-batch)."""
  return [m for m in range(groups, batch_size + 1, groups)
          if batch_size % m == 0]


def largest_fitting(sizes, fits, start=None):
  """(largest size that fits or None, {size: fits(size) result}) over
  ascending `sizes`, by bisection from `start` (default the middle).

  fits(size) -> a result with a boolean `.fits`; memory grows with the
  size, so a size fits when a larger one does. Each size is tried at most
  once (each try is a compilation)."""
  tried = {}

  def ok(i):
    if sizes[i] not in tried:
      tried[sizes[i]] = fits(sizes[i])
    return tried[sizes[i]].fits

  lo, hi = -1, len(sizes)  # sizes[lo] fits, sizes[hi] does not
  i = sizes.index(start) if start in sizes else (len(sizes) - 1) // 2
  if sizes:
    lo, hi = (i, hi) if ok(i) else (lo, i)
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if ok(mid) else (lo, mid)
  return (sizes[lo] if lo >= 0 else None), tried


# Memory of a compiled step -------------------------------------------------


@dataclasses.dataclass
class StepMemory:
  """Bytes per device of one compiled step (XLA's memory_analysis)."""
  parameters: int
  optimizer: int  # 0 for the evaluation step
  batch: int  # the other inputs: token ids, masks, labels, the key
  temp: int  # activations, gradients, intermediates (XLA's temp peak)
  outputs: int  # outputs not aliased to a donated argument
  code: int  # generated code
  host: int  # host memory (remat_policy offload), not in the total
  resident: int  # held by the run meanwhile (the optimizer state, at eval)
  budget: int
  # XLA's own argument bytes: less than parameters + optimizer + batch
  # when the step leaves parameters unused (an evaluation without global
  # tokens never reads the global projections), which stay on the device.
  arguments: int = 0
  # Why XLA refused to compile the step (a TPU program over the chip's
  # HBM: CompileTimeHbmOom); temp is then the compiler's figure.
  refused: str = ""
  # The Pallas attention kernels in the lowered program (attention_kernels).
  kernels: tuple = ()

  @property
  def total(self):
    return (self.parameters + self.optimizer + self.batch + self.temp
            + self.outputs + self.code + self.resident)

  @property
  def fits(self):
    return not self.refused and self.total <= self.budget


def tree_bytes(tree):
  """Bytes per device of a tree of ShapeDtypeStructs (their shard shape
  where they have a sharding)."""
  import jax
  import numpy as np
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.shape
    sh = getattr(x, "sharding", None)
    if sh is not None:
      shape = sh.shard_shape(shape)
    total += int(np.prod(shape, dtype=np.int64)) * _itemsize(x.dtype)
  return total


def _itemsize(dtype):
  import jax
  import numpy as np
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return 8  # threefry: two uint32
  return np.dtype(dtype).itemsize


# A kernel's name in a lowered program -> the impl that runs it.
KERNEL_NAMES = {"splash_mha_fwd": "splash", "lfjax_tpu_band_fwd": "mosaic",
                "lfjax_band_fwd": "pallas"}


def attention_kernels(lowered_text):
  """The impls whose Pallas kernels a lowered program holds (sorted); ()
  when its attention is XLA's alone (chunked or dense)."""
  return tuple(sorted({impl for name, impl in KERNEL_NAMES.items()
                       if name in lowered_text}))


def compile_memory(fn, args, *, parameters, optimizer, resident, budget):
  """Compiles jitted fn for args (ShapeDtypeStructs on target devices:
  parameters first, optimizer state second for a train step, then the
  batch); returns its StepMemory. A TPU program that needs more HBM than
  the chip has is refused by XLA's TPU compiler (CompileTimeHbmOom): its
  StepMemory then has `refused` (the compiler's words) and temp = the
  bytes the compiler says the temporaries need."""
  try:
    lowered = fn.trace(*args).lower()
  except AttributeError:  # jax < 0.7: no .trace
    lowered = fn.lower(*args)
  skip = 2 if optimizer else 1
  kernels = attention_kernels(lowered.as_text())
  try:
    m = lowered.compile().memory_analysis()
  except Exception as e:  # XlaRuntimeError, RESOURCE_EXHAUSTED
    from lfjax import plan_tpu
    oom = plan_tpu.parse_hbm_oom(str(e))
    if oom is None:
      raise
    what, need, available = oom
    return StepMemory(
        parameters=parameters, optimizer=optimizer,
        batch=tree_bytes(args[skip:]), temp=need, outputs=0, code=0, host=0,
        resident=resident, budget=budget,
        refused=f"XLA's TPU compiler refused it: {what} need "
                f"{need / GB:.2f} GB, more than the {available / GB:.2f} GB "
                "of HBM available (CompileTimeHbmOom)", kernels=kernels)
  return StepMemory(
      parameters=parameters, optimizer=optimizer,
      batch=tree_bytes(args[skip:]), temp=m.temp_size_in_bytes,
      outputs=max(m.output_size_in_bytes - m.alias_size_in_bytes, 0),
      code=m.generated_code_size_in_bytes,
      host=(m.host_temp_size_in_bytes + m.host_argument_size_in_bytes
            + m.host_output_size_in_bytes),
      resident=resident, budget=budget,
      arguments=m.argument_size_in_bytes, kernels=kernels)


def size(b):
  """Bytes as GB (1e9), or MB below 0.1 GB."""
  return f"{b / GB:8.2f} GB" if b >= 0.1 * GB else f"{b / 1e6:8.2f} MB"


def format_step(title, s, device_bytes, temp="temp (activations, gradients)"):
  """Lines of a step's table."""
  rows = [("parameters", s.parameters), ("optimizer state", s.optimizer),
          ("batch and key", s.batch), (temp, s.temp),
          ("outputs not aliased", s.outputs), ("generated code", s.code)]
  if s.resident:
    rows.append(("optimizer state (resident)", s.resident))
  lines = [title]
  lines += [f"  {name:<32}{size(b)}" for name, b in rows if b or
            name != "generated code"]
  lines.append(f"  {'total':<32}{size(s.total)}  "
               f"({100 * s.total / device_bytes:.0f}% of the device's "
               f"{device_bytes / GB:.1f} GB; budget {s.budget / GB:.1f} GB): "
               + ("fits" if s.fits else "does not fit"))
  if s.host:
    lines.append(f"  {'host memory (offloaded)':<32}{size(s.host)}")
  if s.refused:
    lines.append(f"  {s.refused}")
  return lines


# The command ---------------------------------------------------------------


def topology_devices(target, plugin):
  """The deviceless devices of a target (count of them)."""
  from jax.experimental import topologies
  if target.platform == "tpu":
    from lfjax import plan_tpu
    return plan_tpu.topology_devices(target.topology)
  topo = topologies.get_topology_desc(
      platform="cuda", topology=f"1x1x{target.count}",
      target_config=target_text(target, plugin))
  return list(topo.devices)


def validate(config):
  """The task's checks, without what a plan needs not: data files (none are
  read) and the CPU-only refusal of remat_policy 'offload' (the plan is for
  a GPU). Raises cli.UsageError naming the field."""
  import ml_collections
  from lfjax import tasks
  task = tasks.of(config)
  if task not in TASKS:
    raise cli.UsageError(
        f"--plan_for: plans the tasks {', '.join(TASKS)} (their model is "
        f"init_from's config.json); config.task {task!r} is not planned: "
        f"{NOT_PLANNED.get(task, 'no planner for it')}")
  c = ml_collections.ConfigDict(config.to_dict())
  if task != "mlm" and not c.data.train:
    c.data.train = "(not read)"
  if c.model.get("remat_policy") == "offload":
    c.model.remat_policy = "attention"
  try:
    tasks.get(task).validate(c)
  except ValueError as e:
    raise cli.UsageError(str(e)) from None


def plan(config, target_value, *, choices=4, search=True, out=print,
         environ=None):
  """Compiles config's train and evaluation steps for --plan_for's target
  and prints the tables (see the module docstring). Returns the exit
  status: 0 fits, 1 does not fit.

  choices: candidates per example for multiple_choice. search: also find
  the largest micro-batch that fits. out: where lines go. environ: the
  environment XLA_PYTHON_CLIENT_MEM_FRACTION is read from (os.environ).
  JAX's persistent compilation cache is off meanwhile (a deviceless
  executable cannot be loaded back from it).
  Raises cli.UsageError (bad target, config or environment),
  extras.MissingPackage (no plugin), FileNotFoundError (no config.json)."""
  import jax
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    return _plan(config, target_value, choices=choices, search=search,
                 out=out, environ=environ)
  finally:
    jax.config.update("jax_enable_compilation_cache", cache)


def _plan(config, target_value, *, choices, search, out, environ):
  from lfjax import parallel
  from lfjax import plan_steps
  target = parse_target(target_value)
  validate(config)
  if target.platform == "tpu":
    # XLA_PYTHON_CLIENT_MEM_FRACTION is the GPU allocator's: a TPU program
    # gets what the TPU compiler allows, which it enforces itself.
    from lfjax import plan_tpu
    plugin = plan_tpu.require_libtpu()
    try:
      devices = topology_devices(target, plugin)
    except ValueError as e:
      raise cli.UsageError(f"--plan_for: {e}") from None
    device = plan_tpu.CHIPS[target.name].hbm
    budget = plan_tpu.hbm_available(devices[0])
    fraction = budget / device
  else:
    fraction = memory_fraction(environ)
    plugin = require_plugin()
    text = target_text(target, plugin)
    device = device_memory(text)
    budget = int(fraction * device)
    devices = topology_devices(target, plugin)
  build = (plan_steps.mlm_steps if config.task == "mlm" else
           lambda c, d: plan_steps.finetune_steps(c, d, choices))
  try:
    steps = build(config, devices)
  except ValueError as e:  # a config field that does not fit the model
    raise cli.UsageError(str(e)) from None
  mesh = steps.mesh
  params = tree_bytes(steps.params)
  opt = tree_bytes(steps.opt_state)
  where = (f"{target.label} {target.topology.split(':')[1]} slice "
           f"({target.count} chips)" if target.platform == "tpu"
           and target.count > 1 else f"{target.count} x {target.label}"
           if target.count > 1 else target.label)
  out(f"plan: {steps.describe}")
  out(f"target: {where} ({devices[0].device_kind}), "
      + (f"mesh {' x '.join(f'{a} {n}' for a, n in mesh.shape.items())} "
         f"on {mesh.size} of {target.count} devices" if mesh is not None else
         "one device" + (f" of {target.count} (config.mesh uses 1)"
                         if target.count > 1 else ""))
      + (f"; budget {budget / GB:.1f} GB per chip: the HBM XLA's TPU "
         f"compiler lets a program use, of its {device / GB:.1f} GB "
         f"({budget / 2**30:.2f} of {device / 2**30:g} GiB)"
         if target.platform == "tpu" else
         f"; budget {budget / GB:.1f} GB per device = {fraction:g} of "
         f"{device / GB:.1f} GB (XLA_PYTHON_CLIENT_MEM_FRACTION"
         + ("" if (os.environ if environ is None else environ).get(
             "XLA_PYTHON_CLIENT_MEM_FRACTION") else ", JAX's default") + ")"))

  def attention_line(result):
    what = (", ".join(result.kernels) + " (Pallas kernels)" if result.kernels
            else "the XLA path (no Pallas kernel)")
    return (f"  attention: {what}; model.attention_impl "
            f"{config.model.attention_impl!r} on {target.label}")

  def tracing():
    # Traced for the target: impl="auto" picks a TPU's kernels at trace
    # time (lfjax.kernels.lowering.traced_platform), from the run's mesh
    # (the target's devices) or, on one device, an abstract device naming
    # it; without it a one-device plan traced the CPU's choice.
    if mesh is not None:
      return parallel.use(mesh)
    from lfjax.kernels import lowering
    return lowering.trace_for(devices[0].device_kind, target.platform)

  def train_at(micro):
    # A large model's step compiles in minutes: say what is going on.
    print(f"compiling the train step at micro-batch {micro} ...",
          file=sys.stderr, flush=True)
    fn, args = steps.train(micro)
    with tracing():
      return compile_memory(fn, args, parameters=params, optimizer=opt,
                            resident=0, budget=budget)

  micro = steps.micro_batch_size
  results = {micro: train_at(micro)}
  out("")
  for line in format_step(
      f"train step: batch {steps.batch_size} = "
      f"{steps.batch_size // micro} x micro-batch {micro}",
      results[micro], device):
    out(line)
  out(attention_line(results[micro]))
  print("compiling the evaluation step ...", file=sys.stderr, flush=True)
  fn, args = steps.evaluate()
  with tracing():
    ev = compile_memory(fn, args, parameters=params, optimizer=0,
                        resident=opt, budget=budget)
  out("")
  for line in format_step(
      f"evaluation step: batch {steps.eval_batch_size} (during training: "
      "the optimizer state stays on the device)", ev, device,
      temp="temp (activations)"):
    out(line)
  out(attention_line(ev))
  if search:
    groups = 1 if mesh is None else parallel.batch_groups(mesh)
    sizes = micro_batch_sizes(steps.batch_size, groups)
    best, tried = largest_fitting(
        sizes, lambda m: results[m] if m in results else train_at(m),
        start=micro)
    skipped = ", ".join(str(m) for m in sizes if m not in tried)
    out("")
    out(f"micro-batch sizes (divisors of train.batch_size "
        f"{steps.batch_size}" + (f", multiples of data x fsdp {groups}"
                                 if groups > 1 else "") + "): "
        + ", ".join(f"{m} {'fits' if r.fits else 'does not fit'} "
                    f"({size(r.total).strip()})"
                    for m, r in sorted(tried.items()))
        + (f"; not compiled: {skipped}" if skipped else ""))
    out("largest micro-batch that fits: " + (
        f"{best} (--config.train.micro_batch_size={best})" if best else
        "none (try model.dtype bfloat16, model.remat True, a shorter "
        "sequence, a larger GPU or TPU or more of them)"))
  ok = results[micro].fits and ev.fits
  out("")
  out("fits" if ok else "does not fit")
  return 0 if ok else 1
