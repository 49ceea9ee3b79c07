"""Lower a function for CUDA on a machine without a GPU (jax.export).

Catches kernels that would not lower (bad block shapes, unsupported ops)
in CI, which has no GPU. The Triton backend wants to know which GPU it
compiles for; newer JAX takes it from an abstract device, older JAX does
not ask. traced_gpu_kind / gpu_family: which GPU a trace is for (the
band kernel's block sizes depend on it); traced_platform: whether a trace
is for a TPU, a GPU or the CPU.
"""

import contextlib
import re

import jax
from jax import export

# Custom-call target of Pallas' Triton kernels in the lowered module.
TRITON_TARGET = "__gpu$xla.gpu.triton"
DEVICE_KIND = "NVIDIA H200"


def trace_for(device_kind, platform):
  """A context in which traces are for that device: an abstract mesh of one
  device whose AbstractDevice names it (platform "tpu" or "cuda"), read by
  traced_platform and traced_gpu_kind, and by Pallas' Triton lowering
  (which GPU it compiles for). A JAX without abstract devices: nothing."""
  device_cls = getattr(jax.sharding, "AbstractDevice", None)
  use = getattr(jax.sharding, "use_abstract_mesh", None)
  if device_cls is None or use is None:
    return contextlib.nullcontext()
  try:
    mesh = jax.sharding.AbstractMesh(
        (1,), ("x",), abstract_device=device_cls(
            device_kind=device_kind, num_cores=None,
            platform="tpu" if platform == "tpu" else "cuda"))
  except TypeError:  # a JAX whose AbstractMesh has no abstract_device
    return contextlib.nullcontext()
  return use(mesh)


def export_for_cuda(fn, *avals, device_kind=DEVICE_KIND):
  """The jax.export.Exported of jit(fn) for CUDA; its text holds the kernels.

  device_kind: the GPU it is lowered for (the kernels' compute capability,
  and band_attention.BlockSizes.default's table)."""
  with trace_for(device_kind, "cuda"):
    return export.export(
        jax.jit(fn), platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(
            TRITON_TARGET)])(*avals)


def count_kernels(exported, name=None):
  """Triton custom calls in an Exported (optionally of kernels named name)."""
  lines = [l for l in exported.mlir_module().splitlines()
           if TRITON_TARGET in l and "custom_call" in l]
  if name is not None:
    lines = [l for l in lines if name in l]
  return len(lines)


def traced_gpu_kind():
  """The kind of GPU the kernels are being traced for ('' if none), read
  the way Pallas' Triton lowering picks its compute capability (jax 0.12,
  gpu_info.get_device_kind): the abstract device of the current abstract
  mesh (a deviceless compile under jax.sharding.use_abstract_mesh, as
  lfjax.kernels.gpu_compile and export_for_cuda do), else the default device
  (a real GPU: e.g. "NVIDIA H100 80GB HBM3"). The abstract mesh is part of
  jit's trace cache key, so a function traced for one target is not
  reused for another."""
  get = getattr(jax.sharding, "get_abstract_mesh", None)
  abstract = getattr(get(), "abstract_device", None) if get else None
  if abstract is not None and abstract.platform in ("cuda", "gpu"):
    return abstract.device_kind
  device = jax.config.jax_default_device
  if not hasattr(device, "platform"):  # unset, or a platform name
    device = jax.devices()[0]
  return device.device_kind if device.platform == "gpu" else ""


def traced_platform():
  """"tpu", "gpu" or "cpu": the platform the kernels are being traced for,
  read as traced_gpu_kind reads the GPU: the abstract device of the current
  abstract mesh (deviceless compiles: lfjax.kernels.tpu_compile enters one
  with AbstractDevice(platform="tpu"), gpu_compile and export_for_cuda
  with platform="cuda"), else the default device. For choices made at
  trace time (impl="auto"); a jit without an abstract mesh that is lowered
  for another platform than the default device's reads the default's."""
  get = getattr(jax.sharding, "get_abstract_mesh", None)
  abstract = getattr(get(), "abstract_device", None) if get else None
  platform = getattr(abstract, "platform", None)
  if platform is None:
    device = jax.config.jax_default_device
    if not hasattr(device, "platform"):  # unset, or a platform name
      device = jax.devices()[0]
    platform = device.platform
  return {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)


def gpu_family(device_kind):
  """"sm90" (H100, H200, GH200, H800), "sm80" (A100, A800, A30) or None."""
  if re.search(r"\b(G?H100|G?H200|H800)\b", device_kind):
    return "sm90"
  if re.search(r"\b(A100|A800|A30)\b", device_kind):
    return "sm80"
  return None
