"""The band kernel compiled for A100 and H100 without a GPU: it compiles,
fits the target's shared memory and spills no register.

Where JAX's CUDA plugin is installed (`pip install "lfjax[plan]"`; CI's
Python 3.12 plan step, with LFJAX_TEST_PLAN=1 so that a missing plugin
fails there instead of skipping), every variant of
lfjax.kernels.gpu_compile (windowed_attention(impl="pallas") forward +
backward at 4,096 tokens: head_dim 64 and 128, bf16 and float32, causal;
the training layers: dilation, global tokens and dropout; the relative
term with dropout) is
compiled by XLA's deviceless compiler (Triton, LLVM, ptxas). Everywhere:
the parsers of ptxas' report and XLA's dump, on text written by hand.
"""

import pytest

from lfjax.kernels import gpu_compile
from tests import optional

TARGETS = ("a100", "h100")
ALL = list(gpu_compile.BY_NAME)


def _check(rows, target, names):
  limit = gpu_compile.shared_memory_limit(target)
  assert sorted({r.variant for r in rows}) == sorted(names)
  for name in names:
    kinds = {r.kernel.split("__")[0] for r in rows if r.variant == name}
    want = set(gpu_compile.KERNELS)
    if "globals" not in name:
      want.discard("lfjax_band_dglobal")
    assert kinds == want, (name, kinds)
  bad = [f"{r.variant} {r.kernel}: shared memory {r.shared_memory} > "
         f"{limit}" for r in rows if r.shared_memory > limit]
  bad += [f"{r.variant} {r.kernel}: {r.spill_stores} B spill stores, "
          f"{r.spill_loads} B spill loads ({r.registers} registers, "
          f"blocks {r.num_warps} warps {r.num_stages} stages)"
          for r in rows if r.spill_stores or r.spill_loads]
  assert not bad, f"{target}:\n" + "\n".join(bad)
  arch = {"a100": "sm_80", "h100": "sm_90"}[target]
  assert {r.arch.rstrip("a") for r in rows} == {arch}


@pytest.mark.parametrize("target", TARGETS)
def test_kernels_compile_without_spills(target):
  """Every variant (the plain band, and the training layers with dilation,
  global keys, the relative term and dropout) compiles for the target with
  shared memory within its limit and no register spilled."""
  optional.need_plan_plugin()
  rows, refused, failed = gpu_compile.compile_variants(target, ALL)
  assert not refused, refused
  assert not failed, failed
  _check(rows, target, ALL)


@pytest.mark.parametrize("argv,message", [
    (["--target", "h1000"], "--target: expected one of a100, a100_80, h100, "
                            "h200, got 'h1000'"),
    (["--variant", "nope"], "--variant: expected names among causal_d64_bf16"),
    (["--blocks", "32,32"], "--blocks: expected 4 integers, got '32,32'"),
    (["--blocks", "32,32,3,1"], "--blocks: block_sizes.num_warps: expected a "
                                "power of two")])
def test_command_line_errors_are_one_line(argv, message, capsys):
  """Bad flags end in one usage line naming the flag (before any compile or
  child process; a bad warp count would kill XLA's compiler)."""
  with pytest.raises(SystemExit) as e:
    gpu_compile.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert "error: " + message in err, err


# Parsers (no plugin needed) -------------------------------------------------

PTXAS = """\
I1207 14:20:41.194941    7869 subprocess_compilation.cc:356] ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'loop_add_fusion' for 'sm_80'
ptxas info    : Function properties for loop_add_fusion
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 0 barriers, 368 bytes cmem[0]
I1207 14:20:41.505875    7868 subprocess_compilation.cc:349] ptxas warning : Registers are spilled to local memory in function 'lfjax_band_dq__1', 968 bytes spill stores, 956 bytes spill loads
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'lfjax_band_dq__1' for 'sm_80'
ptxas info    : Function properties for lfjax_band_dq__1
    496 bytes stack frame, 968 bytes spill stores, 956 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 496 bytes cumulative stack size, 424 bytes cmem[0]
ptxas info    : Compile time = 609.593 ms
"""


def test_parse_ptxas_reads_the_band_kernels():
  got = gpu_compile.parse_ptxas(PTXAS)
  assert got == {"lfjax_band_dq__1": dict(
      registers=255, stack=496, spill_stores=968, spill_loads=956,
      arch="sm_80")}


def test_parse_ptxas_fails_loudly_on_a_truncated_report():
  cut = PTXAS[:PTXAS.index("    496 bytes stack frame")]
  with pytest.raises(gpu_compile.ParseError, match="lfjax_band_dq__1"):
    gpu_compile.parse_ptxas(cut)


def test_parse_dump_reads_launches_and_configs(tmp_path):
  (tmp_path / "module_0003.jit_kc_x.thunk_sequence.txt").write_text(
      "009: kCustomKernel [prev=008 (1) | next=011 (2)] lfjax_band_dq grid: "
      "[12, 64, 1] threads: [256, 1, 1]  shared_memory: 65792 bytes\n"
      "010: kCustomKernel [source | next=011 (1)] lfjax_band_dq__1 grid: "
      "[6, 32, 1] threads: [256, 1, 1]  shared_memory: 65792 bytes\n")
  (tmp_path / "module_0003.jit_kc_x.sm_8.0_gpu_after_optimizations.txt"
   ).write_text('backend_config={ir = "...", name = "lfjax_band_dq", '
                'num_stages = 3 : i32, num_warps = 8 : i32}\n')
  got = gpu_compile.parse_dump(str(tmp_path), "x")
  assert got["lfjax_band_dq__1"] == dict(
      grid=(6, 32, 1), threads=(256, 1, 1), shared_memory=65792,
      num_stages=3, num_warps=8)
  assert got["lfjax_band_dq"]["grid"] == (12, 64, 1)


def test_parse_dump_refuses_a_missing_module(tmp_path):
  with pytest.raises(gpu_compile.ParseError, match="thunk sequence"):
    gpu_compile.parse_dump(str(tmp_path), "x")


def test_shared_memory_limits_are_the_targets_opt_in():
  # CUDA's programming guide (compute capabilities table): a block may opt
  # in to 163 KB of shared memory on 8.0 and 227 KB on 9.0.
  assert gpu_compile.shared_memory_limit("a100") == 163 * 1024
  assert gpu_compile.shared_memory_limit("h100") == 227 * 1024


# The block sizes follow the GPU being compiled for (no plugin needed) ------


def test_traced_gpu_kind_reads_the_abstract_device():
  import jax
  from lfjax.kernels import lowering
  assert lowering.traced_gpu_kind() == ""  # the CPU running the tests
  kind = "NVIDIA A100-SXM4-40GB"
  mesh = jax.sharding.AbstractMesh(
      (1,), ("x",), abstract_device=jax.sharding.AbstractDevice(
          device_kind=kind, num_cores=None, platform="cuda"))
  with jax.sharding.use_abstract_mesh(mesh):
    assert lowering.traced_gpu_kind() == kind
  assert [lowering.gpu_family(k) for k in (
      kind, "NVIDIA H100 80GB HBM3", "NVIDIA GH200 480GB", "NVIDIA H200",
      "NVIDIA A10", "Tesla T4", "")] == [
          "sm80", "sm90", "sm90", "sm90", None, None, None]


def test_lowered_kernels_take_the_targets_block_sizes(monkeypatch):
  """Lowered for an A100, an H100 or an unknown GPU, the kernels of one
  function get that family's row of the table (distinct rows here, so a
  wrong lookup shows), and an explicit block_sizes still wins."""
  import re
  import jax
  import jax.numpy as jnp
  from lfjax.attention import windowed_attention
  from lfjax.kernels import band_attention
  from lfjax.kernels import lowering
  rows = {"sm80": (16, 16, 2, 1), "sm90": (32, 16, 8, 3),
          None: (16, 32, 4, 2)}
  keys = [(64, 4), (64, 2), (128, 4), (128, 2)]
  monkeypatch.setattr(band_attention, "_BLOCKS",
                      {k: rows[None] for k in keys})
  monkeypatch.setattr(band_attention, "_FAMILY_BLOCKS", {
      f: {k: rows[f] for k in keys} for f in ("sm80", "sm90")})
  n = 256
  aval = jax.ShapeDtypeStruct((1, n, 2, 64), jnp.float32)

  def attend(q, k, v):
    return windowed_attention(q, k, v, window=32, causal=True,
                              impl="pallas")

  def launch(exported):
    line, = [l for l in exported.mlir_module().splitlines()
             if lowering.TRITON_TARGET in l and "custom_call" in l]
    return tuple(int(re.search(rf"{f} = (\d+) : i32", line).group(1))
                 for f in ("grid_y", "num_warps", "num_stages"))

  for kind, family in (("NVIDIA A100-SXM4-80GB", "sm80"),
                       ("NVIDIA H100 80GB HBM3", "sm90"),
                       ("NVIDIA L4", None)):
    bq, _, warps, stages = rows[family]
    got = launch(lowering.export_for_cuda(attend, aval, aval, aval,
                                          device_kind=kind))
    assert got == (n // bq, warps, stages), kind
  q, k, v = (jax.ShapeDtypeStruct((2, n, 64), jnp.float32),) * 3
  kvalid = jax.ShapeDtypeStruct((2, n), jnp.bool_)
  explicit = band_attention.BlockSizes(64, 32, 4, 1)
  got = launch(lowering.export_for_cuda(
      lambda q, k, v, m: band_attention.band_attention(
          q, k, v, m, window=32, causal=True, scale=0.125,
          block_sizes=explicit), q, k, v, kvalid,
      device_kind="NVIDIA H100 80GB HBM3"))
  assert got == (n // 64, 4, 1)
