"""windowed_attention compiled for TPU v5e and v6e without a TPU: every
variant compiles and each Pallas TPU kernel's VMEM is within its limit.

Where libtpu is installed (`pip install "lfjax[tpu]"`; CI's Python 3.12
TPU step, with LFJAX_TEST_TPU=1 so that a missing libtpu fails there
instead of skipping), every variant of lfjax.kernels.tpu_compile
(impl="splash" and "mosaic" forward + backward at 4,096 tokens: head_dim 64
and 128, bf16 and float32, causal; the MLM layer with dilation, global
tokens and padding; with dropout; the char-LM layer with the relative term
and dropout; JAX's splash kernel as shipped) is compiled by XLA's TPU
compiler and Mosaic. Everywhere: the parsers of libtpu's VMEM report, its
HLO dump and the compiler's out-of-memory messages, on text written by
hand after the real ones.
"""

import jax
import pytest

from lfjax import plan_tpu
from lfjax.kernels import lowering
from lfjax.kernels import tpu_compile
from tests import optional

ALL = list(tpu_compile.BY_NAME)
# Each implementation's three kernels (forward, dq, dk-dv), by name.
KINDS = {"splash": ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv"),
         "jax_splash": ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv"),
         "mosaic": ("lfjax_tpu_band_fwd", "lfjax_tpu_band_dq",
                    "lfjax_tpu_band_dkv")}


@pytest.mark.parametrize("target", ["v5e", "v6e"])
def test_every_variant_compiles_within_scoped_vmem(target):
  """Every variant compiles for the chip; every kernel of it is there and
  within its scoped VMEM limit (the chip's default: 16 MiB on v5e, 32 MiB
  on v6e, unless the kernel asks for more)."""
  optional.need_libtpu()
  rows, skipped, failed = tpu_compile.compile_variants(target, ALL)
  assert not skipped, skipped
  assert not failed, failed
  assert sorted(r.variant for r in rows) == sorted(ALL)
  for r in rows:
    impl = tpu_compile.BY_NAME[r.variant].impl
    names = [k["kernel"] for k in r.kernels]
    for kind in KINDS[impl]:
      assert any(n.startswith(kind) for n in names), (r.variant, names)
    assert r.vmem_capacity == 128 * 2 ** 20  # v5e and v6e: 128 MiB
    default = {"v5e": 16, "v6e": 32}[target] * 2 ** 20
    assert all(k["limit"] >= default for k in r.kernels)
  over = [(r.variant, k) for r in rows for k in r.over_limit()]
  assert not over, over


def test_command_line_errors_are_one_line(capsys):
  for argv, message in (
      (["--target", "h100"], "--target: expected one of v5e, v6e, v5p, "
                             "optionally with a slice's topology (v5e:2x2: "
                             "its first chip), got 'h100'"),
      (["--target", "v7x"], "--target: expected one of v5e, v6e, v5p, "
                            "optionally"),
      (["--target", "v5e:2x"], "--target: v5e: expected a topology of 2 "
                               "sizes (AxB), got '2x'"),
      (["--impl", "splash2"], "--impl: expected one of auto, dense, "
                              "chunked, pallas, splash, mosaic, got "
                              "'splash2'"),
      (["--variant", "nope"], "--variant: expected names among "
                              "splash_causal_d64_bf16"),
      (["--tokens", "0"], "--tokens: expected a positive integer, got 0")):
    with pytest.raises(SystemExit) as e:
      tpu_compile.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: " + message in err, err


def test_a_slice_libtpu_refuses_says_why(capsys):
  """The child's error reaches the one line main prints (it ended at
  'failed (exit 1):' with the reason lost)."""
  optional.need_libtpu()
  assert tpu_compile.main(["--target", "v5e:3x3", "--variant",
                           "splash_causal_d64_bf16", "--tokens", "128"]) == 1
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith("error: compiling ['splash_causal_d64_bf16'] for "
                        "v5e:3x3 failed (exit 1): "), err
  assert "v5e:3x3: not a slice libtpu can lay out" in err, err


def test_variants_cover_the_issue_and_splash_only_what_it_serves():
  kinds = {(v.impl, v.kind) for v in tpu_compile.VARIANTS}
  assert {k for i, k in kinds if i == "splash"} == {"causal", "globals"}
  assert {k for i, k in kinds if i == "mosaic"} == {
      "causal", "globals", "globals_dropout", "rel_dropout"}
  assert {(v.head_dim, v.dtype) for v in tpu_compile.VARIANTS
          if v.impl == "mosaic" and v.kind == "causal"} == {
              (64, "bfloat16"), (64, "float32"), (128, "bfloat16"),
              (128, "float32")}
  with pytest.raises(ValueError, match="variant: expected one of"):
    tpu_compile.variant("splash_rel_dropout_d64_bf16")
  assert tpu_compile.variant("mosaic_causal_d64_bf16", "chunked").name == \
      "chunked_causal_d64_bf16"


# The platform a trace is for (no libtpu needed) -----------------------------


@pytest.mark.parametrize("impl,kw", [
    ("auto", dict(max_global=2)),  # splash, globals
    ("mosaic", dict(causal=True, dropout_rate=0.1, max_global=0))])
def test_kernels_compile_on_a_data_parallel_slice(impl, kw):
  """Under a 4-chip v5e:2x2 mesh (the batch over data x fsdp) the kernels
  run per chip (api._kernel_per_device's shard_map): XLA cannot partition
  a Mosaic kernel, and JAX refused to lower one under a multi-device mesh
  before, so every data-parallel TPU run failed. Forward + backward
  compile, with the kernels in the program."""
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from lfjax.attention import windowed_attention
  optional.need_libtpu()
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    devices = plan_tpu.topology_devices("v5e:2x2")
    mesh = jax.sharding.Mesh(
        __import__("numpy").array(devices).reshape(2, 2), ("data", "fsdp"),
        axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    qkv = jax.ShapeDtypeStruct((8, 512, 2, 128), jnp.bfloat16, sharding=rows)
    globals_ = jax.ShapeDtypeStruct((8, 512), bool, sharding=rows)

    def loss(q, k, v, g):
      key = jax.random.key(0) if kw.get("dropout_rate") else None
      out = windowed_attention(
          q, k, v, window=64, impl=impl, global_mask=g if kw["max_global"]
          else None, dropout_key=key, **kw)
      return jnp.sum(out.astype(jnp.float32) ** 2)

    with jax.set_mesh(mesh):
      lowered = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).trace(
          qkv, qkv, qkv, globals_).lower()
    text = lowered.compile().as_text()
  finally:
    jax.config.update("jax_enable_compilation_cache", cache)
  kernel = "splash_mha_fwd" if impl == "auto" else "lfjax_tpu_band_fwd"
  assert kernel in text


def test_traced_platform_reads_the_abstract_device():
  assert lowering.traced_platform() == "cpu"  # the CPU running the tests
  for platform, kind, want in (("tpu", "TPU v5 lite", "tpu"),
                               ("cuda", "NVIDIA H100 80GB HBM3", "gpu")):
    mesh = jax.sharding.AbstractMesh(
        (1,), ("x",), abstract_device=jax.sharding.AbstractDevice(
            device_kind=kind, num_cores=None, platform=platform))
    seen = []

    def f(x):
      seen.append(lowering.traced_platform())
      return x
    with jax.sharding.use_abstract_mesh(mesh):
      assert lowering.traced_platform() == want
      jax.jit(f).trace(1.0)
    assert seen == [want]
  assert lowering.traced_platform() == "cpu"


# Parsers (no libtpu needed) -------------------------------------------------

# libtpu's *-vmem_report.html, cut down: the page's script holds the data.
REPORT = """<!DOCTYPE html>
<html><head><title>VMEM Usage Breakdown</title></head><body>
    <script>
        // --- 1. THE DATA SOURCE ---
        const DATA ={
  "global_info": {
    "module_name": "jit_kc_x",
    "vmem_capacity": 134217728
  },
  "hlo_breakdowns": {
    "<top-inlining-caller>": {
      "blocks": [
        {"allocations": [], "block_size": 77987840,
         "block_type": "HLO_TEMPORARY"}
      ],
      "metadata": "",
      "total_size": 83865600
    },
    "lfjax_tpu_band_dq.3": {
      "blocks": [
        {"allocations": [{"padding": 0, "shape": "u8[16384]",
                          "size": 16384,
                          "tag": "output window allocation for operator output 2."}],
         "block_size": 16384, "block_type": "SCOPED"}
      ],
      "metadata": "op_name=\\"jit(kc_x)/lfjax_tpu_band_dq/pallas_call\\"",
      "total_size": 16384
    }
  }
};

        const heading = document.getElementById("title");
    </script>
</body></html>
"""

# libtpu's *-TLP-hlo.txt, cut down: dq.3 has an output in HBM (its window
# is in the report), dq.4 has every operand and output in VMEM (S(1)) and
# asks for its own limit; it is absent from the report.
HLO = """HloModule jit_kc_x, is_scheduled=true

ENTRY %main.3 (q.1: bf16[6,16,64]) -> f32[6,16,64] {
  %q.1 = bf16[6,16,64]{2,1,0:T(8,128)(2,1)} parameter(0)
  %copy.1 = bf16[6,16,64]{2,1,0:T(8,128)(2,1)S(1)} copy(%q.1)
  %lfjax_tpu_band_dq.3 = (f32[6,16,64]{2,1,0:T(8,128)S(1)}, f32[6,16,64]{2,1,0:T(8,128)}) custom-call(%copy.1, %q.1), custom_call_target="tpu_custom_call", operand_layout_constraints={bf16[6,16,64]{2,1,0}, bf16[6,16,64]{2,1,0}}, metadata={op_name="jit(kc_x)/lfjax_tpu_band_dq/pallas_call"
}, backend_config={"flag_configs":[],"scoped_memory_configs":[],"custom_call_config":{"body":"TUzvUgFN"}}
  %lfjax_tpu_band_dq.4 = f32[6,16,64]{2,1,0:T(8,128)S(1)} custom-call(%copy.1), custom_call_target="tpu_custom_call", backend_config={"flag_configs":[],"scoped_memory_configs":[{"memory_space":"1","offset":"0","size":"33554432"}],"custom_call_config":{"body":"TUzv"}}
  ROOT %add.1 = f32[6,16,64]{2,1,0:T(8,128)} add(%q.1, %q.1)
}
"""


def _dump(tmp_path, hlo=HLO):
  (tmp_path / "123-TLP-00-vmem_report.html").write_text(REPORT)
  (tmp_path / "123-TLP-hlo.txt").write_text(hlo)
  return str(tmp_path)


def test_parse_vmem_report():
  name, capacity, ops = tpu_compile.parse_vmem_report(REPORT)
  assert (name, capacity) == ("jit_kc_x", 128 * 2 ** 20)
  assert ops == {"<top-inlining-caller>": 83865600,
                 "lfjax_tpu_band_dq.3": 16384}


def test_parse_kernels_reads_limits_and_memory_spaces():
  got = tpu_compile.parse_kernels(HLO)
  assert sorted(got) == ["lfjax_tpu_band_dq.3", "lfjax_tpu_band_dq.4"]
  dq3, dq4 = got["lfjax_tpu_band_dq.3"], got["lfjax_tpu_band_dq.4"]
  # dq.3: its first output (f32 6x16x64: 24,576 B) and first operand
  # (bf16 6x16x64: 12,288 B) in VMEM; the second of each in HBM.
  assert (dq3.limit, dq3.all_in_vmem, dq3.xla_vmem) == (None, False,
                                                       24576 + 12288)
  assert (dq4.limit, dq4.all_in_vmem, dq4.xla_vmem) == (32 * 2 ** 20, True,
                                                       24576 + 12288)


def test_read_dump_counts_a_kernel_fed_from_vmem_as_zero(tmp_path):
  capacity, kernels = tpu_compile.read_dump(_dump(tmp_path), "jit_kc_x")
  assert capacity == 128 * 2 ** 20
  assert {k: v[0] for k, v in kernels.items()} == {
      "lfjax_tpu_band_dq.3": 16384, "lfjax_tpu_band_dq.4": 0}


def test_read_dump_refuses_a_kernel_missing_with_operands_in_hbm(tmp_path):
  # dq.4 reads an operand from HBM: it must have a window in the report.
  hlo = HLO.replace("custom-call(%copy.1), custom_call_target",
                    "custom-call(%q.1), custom_call_target")
  with pytest.raises(tpu_compile.ParseError,
                     match=r"\['lfjax_tpu_band_dq.4'\] are not in its VMEM"):
    tpu_compile.read_dump(_dump(tmp_path, hlo), "jit_kc_x")


def test_read_dump_refuses_a_missing_module(tmp_path):
  with pytest.raises(tpu_compile.ParseError, match="expected one VMEM "
                     "report"):
    tpu_compile.read_dump(_dump(tmp_path), "jit_kc_y")


def test_collect_reads_the_childs_lines(tmp_path):
  v = tpu_compile.variant("mosaic_causal_d64_bf16")
  out = "\n".join([
      'LFJAX_TC CHIP {"device_kind": "TPU v5 lite", "scoped_vmem_limit": '
      '16777216, "hbm_available": 16911433728}',
      'some log line',
      'LFJAX_TC COMPILED {"variant": "mosaic_causal_d64_bf16", "compile_s": '
      '5.3, "hbm_temp": 100, "hbm_arguments": 20, "hbm_outputs": 30, '
      '"hbm_code": 7}',
      'LFJAX_TC UNAVAILABLE {"variant": "splash_causal_d64_bf16", "why": '
      '"not built"}',
      'LFJAX_TC FAILED {"variant": "splash_globals_d64_f32", "why": "oom"}'])
  dump = _dump(tmp_path)
  (tmp_path / "123-TLP-00-vmem_report.html").write_text(
      REPORT.replace("jit_kc_x", "jit_kc_" + v.name))
  rows, skipped, failed = tpu_compile.collect(
      "v5e", [v.name, "splash_causal_d64_bf16", "splash_globals_d64_f32"],
      out, dump)
  assert skipped == {"splash_causal_d64_bf16": "not built"}
  assert failed == {"splash_globals_d64_f32": "oom"}
  (r,) = rows
  assert (r.compile_s, r.hbm_temp, r.hbm_arguments) == (5.3, 100, 20)
  # The chip's default limit where the kernel sets none.
  assert r.kernels == [
      dict(kernel="lfjax_tpu_band_dq.3", vmem=16384, limit=16 * 2 ** 20,
           xla_vmem=36864),
      dict(kernel="lfjax_tpu_band_dq.4", vmem=0, limit=32 * 2 ** 20,
           xla_vmem=36864)]


# The compiler's words, as libtpu 0.0.50.1 prints them.
HBM_OOM = ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory "
           "on HBM, the total memory required for HLO temporaries (274.32G) "
           "exceeds available HBM (15.75G). HLO module: jit__lambda. See "
           "https://openxla.org/xla/errors/error_1000 for more details.")
VMEM_OOM = ("RESOURCE_EXHAUSTED: E1001: CompileTimeScopedVmemOom: Ran out of "
            "memory in memory space vmem while allocating on stack for "
            "%tpu_custom_call.1 = f32[4096,1536]{1,0:T(8,128)} custom-call("
            "%x_ref.1), custom_call_target=\"tpu_custom_call\". Scoped "
            "allocation with size 48.00M and limit 16.00M exceeded scoped "
            "vmem limit by 32.00M.")


def test_parse_the_compilers_out_of_memory_messages():
  assert plan_tpu.parse_hbm_oom(HBM_OOM) == (
      "HLO temporaries", round(274.32 * 2 ** 30), round(15.75 * 2 ** 30))
  assert plan_tpu.parse_vmem_oom(VMEM_OOM) == (48 * 2 ** 20, 16 * 2 ** 20)
  assert plan_tpu.parse_hbm_oom(VMEM_OOM) is None
  assert plan_tpu.parse_vmem_oom("INTERNAL: something else") is None


def test_chip_of_device_kinds():
  class Dev:
    def __init__(self, kind):
      self.device_kind = kind
  assert [plan_tpu.chip_of(Dev(k)) for k in (
      "TPU v5 lite", "TPU v5", "TPU v6 lite", "TPU v5e")] == [
          "v5e", "v5p", "v6e", "v5e"]
  with pytest.raises(ValueError, match="device: not a TPU lfjax knows"):
    plan_tpu.chip_of(Dev("TPU v4"))


def test_the_compiler_reads_its_own_limits():
  """The probes' figures for the three chips (libtpu 0.0.50.1): scoped
  VMEM 16 / 16 / 32 MiB (JAX's Pallas TPU docs: 16 MiB before v6e, 32 MiB
  on v6e); HBM a program may use a little under the chip's 16 / 95 / 32
  GiB (Cloud TPU's system architecture pages)."""
  optional.need_libtpu()
  got = {}
  for chip in ("v5e", "v5p", "v6e"):
    dev = plan_tpu.topology_devices(plan_tpu.parse_topology(chip, "")[0])[0]
    got[chip] = (plan_tpu.scoped_vmem_limit(dev) // 2 ** 20,
                 plan_tpu.hbm_available(dev))
  assert {c: g[0] for c, g in got.items()} == {"v5e": 16, "v5p": 16,
                                              "v6e": 32}
  for chip, (_, hbm) in got.items():
    full = plan_tpu.CHIPS[chip].hbm
    assert 0.95 * full < hbm <= 1.01 * full, (chip, hbm)
