"""Lower a function for CUDA on a machine without a GPU (jax.export).

Catches kernels that would not lower (bad block shapes, unsupported ops)
in CI, which has no GPU. The Triton backend wants to know which GPU it
compiles for; newer JAX takes it from an abstract device, older JAX does
not ask.
"""

import contextlib

import jax
from jax import export

# Custom-call target of Pallas' Triton kernels in the lowered module.
TRITON_TARGET = "__gpu$xla.gpu.triton"
DEVICE_KIND = "NVIDIA H200"


def _abstract_gpu(device_kind=DEVICE_KIND):
  device_cls = getattr(jax.sharding, "AbstractDevice", None)
  use = getattr(jax.sharding, "use_abstract_mesh", None)
  if device_cls is None or use is None:
    return contextlib.nullcontext()
  try:
    mesh = jax.sharding.AbstractMesh(
        (1,), ("x",), abstract_device=device_cls(
            device_kind=device_kind, num_cores=None, platform="cuda"))
  except TypeError:  # a JAX whose AbstractMesh has no abstract_device
    return contextlib.nullcontext()
  return use(mesh)


def export_for_cuda(fn, *avals, device_kind=DEVICE_KIND):
  """The jax.export.Exported of jit(fn) for CUDA; its text holds the kernels.

  device_kind: the GPU it is lowered for (the kernels' compute capability,
  and band_attention.BlockSizes.default's table)."""
  with _abstract_gpu(device_kind):
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
