"""TPU targets for `--plan_for v5e|v5p|v6e[:AxB]` and lfjax.kernels.tpu_compile.

`pip install "lfjax[tpu]"` (jax[tpu]: libtpu, Python >= 3.12) compiles a
jitted function for a TPU that is not here ("deviceless"):
`jax.experimental.topologies.get_topology_desc("v5e:2x2", platform="tpu")`
gives the slice's devices, and XLA's TPU compiler builds the program as
it would on the chip, refusing one that does not fit its HBM
(CompileTimeHbmOom) or a Pallas kernel whose blocks do not fit the scoped
VMEM (CompileTimeScopedVmemOom).

Two figures are read from the compiler itself, by compiling a small
program built to overflow and parsing its error (cached per chip):
- `hbm_available(device)`: the HBM a program may use (v5e: 15.75 GiB of
  its 16 GiB; v5p 95.73, v6e 31.24 with libtpu 0.0.50.1);
- `scoped_vmem_limit(device)`: the scoped VMEM a kernel gets unless it asks
  for more (compiler_params vmem_limit_bytes): 16 MiB on v5e and v5p,
  32 MiB on v6e with libtpu 0.0.50.1.
A message that no longer matches raises RuntimeError (never a guess).
"""

import dataclasses
import functools
import importlib.metadata
import math
import os
import re

from lfjax import extras

PIP = 'pip install "lfjax[tpu]"'
GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  label: str  # "TPU v5e"
  hbm: int  # bytes per chip (Google's published figure)
  dims: int  # axes of its topology names (v5e 2: "2x2"; v5p 3: "2x2x1")


# Cloud TPU's system-architecture pages: v5e 16 GiB HBM2 per chip, v5p 95
# GiB HBM2e, v6e (Trillium) 32 GiB HBM.
CHIPS = {
    "v5e": Chip("TPU v5e", 16 * GiB, 2),
    "v5p": Chip("TPU v5p", 95 * GiB, 3),
    "v6e": Chip("TPU v6e", 32 * GiB, 2),
}


def parse_topology(chip, shape):
  """(topology name for get_topology_desc, chip count) of "v5e" and "2x2"
  (shape "" = one chip). Raises ValueError naming the shape."""
  dims = CHIPS[chip].dims
  parts = shape.split("x") if shape else ["1"] * dims
  sizes = [int(x) if x.isdigit() else 0 for x in parts]
  if len(sizes) != dims or min(sizes) < 1:
    raise ValueError(f"{chip}: expected a topology of {dims} sizes "
                     f"({'x'.join(['A', 'B', 'C'][:dims])}), got {shape!r}")
  return f"{chip}:{'x'.join(map(str, sizes))}", math.prod(sizes)


def require_libtpu():
  """The installed libtpu version. Raises extras.MissingPackage (one line
  naming the pip command) when it is missing. Sets, unless set,
  TPU_WORKER_HOSTNAMES=localhost (libtpu reads it when it loads; without
  it a deviceless compile logs a hostname error) and
  ALLOW_MULTIPLE_LIBTPU_LOAD=1 (libtpu otherwise takes /tmp/libtpu_lockfile
  for the process' lifetime, and a second process compiling for a TPU,
  e.g. a pytest-xdist worker or tpu_compile's child, aborts; a deviceless
  compile touches no chip)."""
  try:
    version = importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    raise extras.MissingPackage(
        f"compiling for a TPU needs libtpu (jax[tpu]), which is not "
        f"installed; install it with: {PIP} (Python >= 3.12)") from None
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  return version


def topology_devices(topology):
  """The deviceless TPU devices of a topology name ("v5e:2x2"). Raises
  ValueError naming it when libtpu builds no such slice (v5e:3x3: its
  hosts hold 2x2 chips), in libtpu's words."""
  from jax.experimental import topologies
  require_libtpu()
  try:
    return list(topologies.get_topology_desc(topology,
                                             platform="tpu").devices)
  except Exception as e:  # JaxRuntimeError: INVALID_ARGUMENT
    why = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise ValueError(f"{topology}: not a slice libtpu can lay out: "
                     f"{why}") from None


_UNITS = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def parse_size(text):
  """Bytes of XLA's "15.75G" / "16.00M" (binary units, as XLA prints)."""
  m = re.fullmatch(r"([\d.]+)([KMGT])i?B?", text)
  if m is None:
    raise ValueError(f"size: expected a number and K/M/G/T, got {text!r}")
  return int(round(float(m.group(1)) * _UNITS[m.group(2)]))


_HBM_OOM = re.compile(r"CompileTimeHbmOom: .*?required for (.*?) "
                      r"\(([\d.]+[KMGT])\) exceeds available HBM "
                      r"\(([\d.]+[KMGT])\)")
_VMEM_OOM = re.compile(r"CompileTimeScopedVmemOom: .*?Scoped allocation "
                       r"with size ([\d.]+[KMGT]) and limit ([\d.]+[KMGT])",
                       re.S)


def parse_hbm_oom(message):
  """(what, required bytes, available bytes) of XLA's CompileTimeHbmOom
  message, or None when the message is another error."""
  m = _HBM_OOM.search(" ".join(message.split()))
  if m is None:
    return None
  return m.group(1), parse_size(m.group(2)), parse_size(m.group(3))


def parse_vmem_oom(message):
  """(requested bytes, limit bytes) of XLA's CompileTimeScopedVmemOom
  message, or None."""
  m = _VMEM_OOM.search(" ".join(message.split()))
  if m is None:
    return None
  return parse_size(m.group(1)), parse_size(m.group(2))


def _refusal(fn, *avals):
  import jax
  try:
    jax.jit(fn).trace(*avals).lower().compile()
  except Exception as e:  # XlaRuntimeError: RESOURCE_EXHAUSTED
    return str(e)
  return ""


@functools.lru_cache(maxsize=None)
def _hbm_available(topology):
  import jax
  import jax.numpy as jnp
  dev = topology_devices(topology)[0]
  x = jax.ShapeDtypeStruct((2 ** 20,), jnp.float32,
                           sharding=jax.sharding.SingleDeviceSharding(dev))
  # A running sum over 2^15 copies of x keeps a 128 GiB temporary alive:
  # more than any chip's HBM.
  msg = _refusal(lambda a: jnp.cumsum(jnp.tile(a, 2 ** 15).reshape(
      2 ** 15, 2 ** 20), axis=0)[::7], x)
  got = parse_hbm_oom(msg)
  if got is None:
    raise RuntimeError(f"{topology}: the HBM probe did not end in "
                       f"CompileTimeHbmOom as expected: {msg[:300]!r}")
  return got[2]


def hbm_available(device):
  """Bytes of HBM XLA's TPU compiler lets one program use on the device's
  chip (its CompileTimeHbmOom limit), read from the compiler."""
  return _hbm_available(_chip_topology(device))


@functools.lru_cache(maxsize=None)
def _scoped_vmem_limit(topology):
  import jax
  import jax.numpy as jnp
  from jax.experimental import pallas as pl
  dev = topology_devices(topology)[0]

  def double(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2

  # 12 MiB blocks in and out, double-buffered: 48 MiB of scoped VMEM, over
  # every chip's default limit and under its capacity (64 MiB on v5p).
  shape, block = (4096, 1536), (2048, 1536)
  call = pl.pallas_call(
      double, out_shape=jax.ShapeDtypeStruct(shape, jnp.float32), grid=(2,),
      in_specs=[pl.BlockSpec(block, lambda i: (i, 0))],
      out_specs=pl.BlockSpec(block, lambda i: (i, 0)))
  msg = _refusal(call, jax.ShapeDtypeStruct(
      shape, jnp.float32, sharding=jax.sharding.SingleDeviceSharding(dev)))
  got = parse_vmem_oom(msg)
  if got is None:
    raise RuntimeError(f"{topology}: the VMEM probe did not end in "
                       f"CompileTimeScopedVmemOom as expected: {msg[:300]!r}")
  return got[1]


def scoped_vmem_limit(device):
  """Bytes of scoped VMEM a Pallas TPU kernel gets on the device's chip
  unless its compiler_params ask for more, read from the compiler."""
  return _scoped_vmem_limit(_chip_topology(device))


def chip_of(device):
  """"v5e" / "v5p" / "v6e" of a TPU device (its device_kind)."""
  kind = device.device_kind
  for chip, pattern in (("v5e", r"v5 ?lite|v5e"), ("v6e", r"v6 ?lite|v6e"),
                        ("v5p", r"v5p?$")):
    if re.search(pattern, kind, re.I):
      return chip
  raise ValueError(f"device: not a TPU lfjax knows (v5e, v5p, v6e): "
                   f"{kind!r}")


def _chip_topology(device):
  return parse_topology(chip_of(device), "")[0]
