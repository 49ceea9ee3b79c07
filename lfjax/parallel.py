"""Meshes from the config, and how the trainers lay their arrays out on them.

A run's `config.mesh` gives device counts per mesh axis:

  data  the batch is split over it (data parallelism; parameters replicated)
  fsdp  the batch is split over it too, and so are parameters and optimizer
        state (each array along its largest dimension divisible by fsdp)
  seq   the sequence is split over it: windowed_attention runs as
        sequence-parallel attention (lfjax.attention.sharded: halo exchange)
        whenever it is called under such a mesh; everything else in the
        models is per token, so the compiler keeps it split

-1 means "the rest of the devices". The default (all 1) is one device and
today's single-device code path: no mesh, nothing resharded.

The mesh is built with jax.make_mesh with Auto axis types: the models are
plain GSPMD code, which jax >= 0.9's default Explicit axes reject for FSDP
matmuls (research notes scale.md, §2.1).

Multi-host: `initialize_distributed()` reads JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID (and LFJAX_LOCAL_DEVICE_IDS) and calls
jax.distributed.initialize; each process then builds only the batch rows
its devices hold (`local_rows`, `put_batch`).
"""

import contextlib
import math
import os

import jax
import numpy as np
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lfjax import cli

AXES = ("data", "fsdp", "seq")
BATCH = ("data", "fsdp")  # the mesh axes the batch is split over
SEQ = "seq"  # the axis lfjax.attention.windowed_attention splits over


def check_config(mesh_config):
  """{axis: value} of config.mesh: ints >= 1, or -1 (the rest) on one axis
  at most. Raises cli.ConfigError (a ValueError) naming config.mesh.<axis>."""
  sizes = {}
  for axis in AXES:
    v = mesh_config[axis]
    if isinstance(v, bool) or not isinstance(v, int) or (v < 1 and v != -1):
      raise cli.ConfigError(f"config.mesh.{axis}: expected a device count "
                            f">= 1 or -1 (the rest), got {v!r}")
    sizes[axis] = int(v)
  rest = [a for a in AXES if sizes[a] == -1]
  if len(rest) > 1:
    raise cli.ConfigError(f"config.mesh.{rest[1]}: expected -1 (the rest) "
                          f"on at most one axis, got -1 on {rest}")
  return sizes


def resolve(mesh_config, device_count, platform=None):
  """{axis: count} with -1 replaced by the devices the others leave.

  mesh_config: see check_config. platform: jax.default_backend() of the
  devices counted ("cpu" makes the error's hint name JAX_NUM_CPU_DEVICES).
  Raises cli.ConfigError (a ValueError, exit status 2 on the command line)
  naming config.mesh.<axis> (config.mesh when several axes ask for more
  than one device) when a value is malformed or the counts do not fit
  device_count devices.
  """
  sizes = check_config(mesh_config)
  rest = [a for a in AXES if sizes[a] == -1]
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if fixed > device_count:
    fixed_sizes = {a: v for a, v in sizes.items() if v != -1}
    others = f" on the axes besides {rest[0]} (-1: the rest)" if rest else ""
    raise cli.ConfigError(
        f"{_field(fixed_sizes)}: expected at most the "
        f"{_devices(device_count)} JAX sees{others}, got "
        f"{_fmt(fixed_sizes)} = {_devices(fixed)}; "
        f"{_more_devices(fixed, platform)}")
  if rest:
    if device_count % fixed:
      raise cli.ConfigError(
          f"config.mesh.{rest[0]}: -1 takes the devices the other axes "
          f"leave, but {_devices(device_count)} are not a multiple of "
          f"{fixed} ({_fmt(sizes)})")
    sizes[rest[0]] = device_count // fixed
  return sizes


def _fmt(sizes):
  return " x ".join(f"{a} {v}" for a, v in sizes.items())


def _devices(n):
  return f"{n} device" + ("" if n == 1 else "s")


def _field(sizes):
  """config.mesh.<axis> when one axis asks for more than one device, else
  config.mesh."""
  many = [a for a, v in sizes.items() if v > 1]
  return f"config.mesh.{many[0]}" if len(many) == 1 else "config.mesh"


def _more_devices(count, platform):
  """How to get `count` devices, for the error of a mesh too large."""
  # The env var, not XLA_FLAGS=--xla_force_host_platform_device_count: it
  # works on every jax lfjax supports and wins when both are set (research
  # notes scale.md, section 3), so a stale XLA_FLAGS cannot undo it.
  cpu = (f"JAX_NUM_CPU_DEVICES={count} in the environment gives {count} "
         "virtual devices (sharing its cores: for trying a mesh out)")
  if platform == "cpu":
    return "on this CPU, " + cpu
  fewer = "lower the mesh, or run where JAX sees more devices"
  return fewer if platform else f"{fewer}; on a CPU, {cpu}"


def make_mesh(mesh_config):
  """The run's jax.sharding.Mesh (axes AXES, Auto types), or None when it
  is one device (the single-device code path).

  Uses the first data x fsdp x seq devices on one process; a multi-process
  run must use every device of every process. Raises cli.ConfigError
  (resolve's, or naming config.mesh when a multi-process mesh leaves
  devices out)."""
  sizes = resolve(mesh_config, jax.device_count(), jax.default_backend())
  count = math.prod(sizes.values())
  if count == 1 and jax.process_count() == 1:
    return None
  if jax.process_count() > 1 and count != jax.device_count():
    raise cli.ConfigError(
        f"config.mesh: a {jax.process_count()}-process run must use all "
        f"{jax.device_count()} devices, got {_fmt(sizes)} = {count}")
  return jax.make_mesh(tuple(sizes[a] for a in AXES), AXES,
                       axis_types=(AxisType.Auto,) * len(AXES),
                       devices=jax.devices()[:count])


def describe(mesh):
  """One line saying where a run trains, e.g. "mesh: data 2 x fsdp 1 x seq
  4 on 8 of 8 devices" (a mesh may use fewer devices than JAX sees), or
  "one device (of 8)" without a mesh."""
  if mesh is None:
    n = jax.device_count()
    return "one device" + (f" (of {n}: config.mesh uses 1)" if n > 1 else "")
  return (f"mesh: {_fmt(dict(mesh.shape))} on {mesh.size} of "
          f"{jax.device_count()} devices")


def use(mesh):
  """Context in which the mesh is set (jax.set_mesh), so that
  windowed_attention splits the sequence; nothing for mesh None."""
  return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def batch_groups(mesh):
  """How many ways the batch is split (data x fsdp)."""
  return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]


def seq_shards(mesh):
  return 1 if mesh is None else mesh.shape[SEQ]


def check_batch(mesh, field, batch_size):
  """Raises cli.ConfigError (a ValueError) naming config.<field> when
  batch_size does not split over the mesh's data x fsdp devices."""
  g = batch_groups(mesh)
  if batch_size % g:
    raise cli.ConfigError(f"config.{field}: expected a multiple of mesh.data "
                          f"x mesh.fsdp = {g} (the batch is split over "
                          f"them), got {batch_size}")


def check_seq(mesh, field, seq_len):
  """Raises cli.ConfigError (a ValueError) naming config.<field> when
  seq_len does not split over the mesh's seq devices."""
  p = seq_shards(mesh)
  if seq_len % p:
    raise cli.ConfigError(f"config.{field}: expected a multiple of mesh.seq "
                          f"= {p} (the sequence is split over it), got "
                          f"{seq_len}")


def batch_sharding(mesh, ndim=2, seq_axis=1):
  """A batch array's sharding: its first axis (the batch) over data x
  fsdp and axis seq_axis (the sequence; None: it has none) over seq.
  Default: [batch, seq, ...]; fine-tuning's [batch, choices, seq] token
  arrays have seq_axis 2 and its labels [batch] or [batch, k] None."""
  spec = [BATCH] + [None] * (ndim - 1)
  if seq_axis is not None:
    if not 0 < seq_axis < ndim:
      raise ValueError(f"seq_axis: expected an axis 1 .. {ndim - 1} of a "
                       f"{ndim}-d batch array (or None), got {seq_axis}")
    spec[seq_axis] = SEQ
  return NamedSharding(mesh, P(*spec))


def replicated(mesh):
  return NamedSharding(mesh, P())


def fsdp_spec(shape, fsdp):
  """PartitionSpec splitting `shape` over the fsdp axis along its largest
  dimension divisible by fsdp (the first such on ties); replicated when
  none is, or fsdp is 1."""
  if fsdp > 1:
    dims = [i for i, s in enumerate(shape) if s % fsdp == 0 and s >= fsdp]
    if dims:
      best = max(dims, key=lambda i: (shape[i], -i))
      return P(*[("fsdp" if i == best else None) for i in range(len(shape))])
  return P()


def state_shardings(tree, mesh):
  """NamedShardings for a tree of arrays (or ShapeDtypeStructs: parameters,
  optimizer state): fsdp_spec of each leaf's shape; scalars replicated."""
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x),
                                              mesh.shape["fsdp"])), tree)


def shard(tree, mesh):
  """tree's arrays placed by state_shardings (a copy); tree for None."""
  if mesh is None:
    return tree
  return jax.device_put(tree, state_shardings(tree, mesh))


def local_rows(mesh, batch_size):
  """slice of the global batch rows this process's devices hold.

  The batch is split over data x fsdp only, so a process whose devices
  share data x fsdp coordinates with another process's (seq spanning
  processes) gets the same rows: shards of the loader follow the
  data-parallel group, not the process. Raises ValueError when the rows
  are not one contiguous block (a mesh whose device order interleaves
  processes along the batch axes)."""
  if mesh is None or jax.process_count() == 1:
    return slice(0, batch_size)
  idx = batch_sharding(mesh).addressable_devices_indices_map(
      (batch_size, seq_shards(mesh)))
  rows = sorted({(s[0].start or 0, batch_size if s[0].stop is None
                  else s[0].stop) for s in idx.values()})
  lo, hi = rows[0][0], rows[-1][1]
  if sum(b - a for a, b in rows) != hi - lo:
    raise ValueError(f"config.mesh: process {jax.process_index()} holds batch "
                     f"rows {rows}, not one block; order the mesh so each "
                     "process's devices are contiguous along data x fsdp")
  return slice(lo, hi)


def put_batch(tree, mesh, batch_size, shardings=None):
  """Host arrays [rows, seq, ...] -> global jax.Arrays [batch_size, seq,
  ...] laid out by batch_sharding. rows are this process's
  local_rows(mesh, batch_size) (all of them on one process), with whole
  sequences: each device keeps its seq slice. shardings: a tree like
  `tree` of NamedShardings for arrays laid out otherwise (default:
  batch_sharding(mesh, ndim) of each). tree unchanged for None."""
  if mesh is None:
    return tree

  def put(x, sh):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(
        sh or batch_sharding(mesh, x.ndim), x, (batch_size,) + x.shape[1:])
  if shardings is None:
    return jax.tree.map(lambda x: put(x, None), tree)
  return jax.tree.map(put, tree, shardings)


# Multi-host ---------------------------------------------------------------

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_distributed(environ=None):
  """jax.distributed.initialize from environment variables; True when it
  ran, False when JAX_NUM_PROCESSES is unset or 1 (one process).

  JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES,
  JAX_PROCESS_ID (0 .. n-1) and optionally LFJAX_LOCAL_DEVICE_IDS (comma
  separated, the devices this process drives). Read by lfjax itself and
  passed explicitly, so it behaves the same on every jax version (jax's
  own cluster auto-detection covers Slurm, Open MPI, TPU and k8s; use it
  instead by calling jax.distributed.initialize() before lfjax.train).
  Must run before any JAX computation. Raises ValueError naming a missing
  or malformed variable."""
  env = os.environ if environ is None else environ
  n = env.get("JAX_NUM_PROCESSES", "")
  if n in ("", "1"):
    return False
  try:
    count = int(n)
  except ValueError:
    raise ValueError(f"JAX_NUM_PROCESSES: expected an integer, got "
                     f"{n!r}") from None
  if count < 1:
    raise ValueError(f"JAX_NUM_PROCESSES: expected a process count >= 1, "
                     f"got {count}")
  missing = [k for k in ENV if not env.get(k)]
  if missing:
    raise ValueError(f"{missing[0]}: expected it set (JAX_NUM_PROCESSES={n} "
                     f"asks for a multi-process run, which needs "
                     f"{', '.join(ENV)}), got nothing")
  ints = {"JAX_NUM_PROCESSES": count}
  try:
    ints["JAX_PROCESS_ID"] = int(env["JAX_PROCESS_ID"])
  except ValueError:
    raise ValueError(f"JAX_PROCESS_ID: expected an integer, got "
                     f"{env['JAX_PROCESS_ID']!r}") from None
  if not 0 <= ints["JAX_PROCESS_ID"] < ints["JAX_NUM_PROCESSES"]:
    raise ValueError(f"JAX_PROCESS_ID: expected 0 .. "
                     f"{ints['JAX_NUM_PROCESSES'] - 1}, got "
                     f"{ints['JAX_PROCESS_ID']}")
  local = env.get("LFJAX_LOCAL_DEVICE_IDS")
  if local:
    try:
      local = [int(i) for i in local.split(",")]
    except ValueError:
      raise ValueError(f"LFJAX_LOCAL_DEVICE_IDS: expected comma-separated "
                       f"device ids (e.g. 0,1), got {local!r}") from None
  jax.distributed.initialize(
      coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
      num_processes=ints["JAX_NUM_PROCESSES"],
      process_id=ints["JAX_PROCESS_ID"],
      local_device_ids=local or None)
  return True


def init_state(tx, params, mesh):
  """(params, opt_state, shardings) of a trainer: on a mesh, parameters
  and optimizer state split over fsdp and shardings = (param shardings,
  optimizer-state shardings, mesh) for the train step; without one the
  state as tx.init makes it and shardings None."""
  if mesh is None:
    return params, tx.init(params), None
  params = shard(params, mesh)
  opt_sh = state_shardings(jax.eval_shape(tx.init, params), mesh)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  return params, opt_state, (state_shardings(params, mesh), opt_sh, mesh)
