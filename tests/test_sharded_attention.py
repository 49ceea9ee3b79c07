"""sequence_parallel_attention (lfjax.attention.sharded) against the
brute-force reference.

The 2-, 4- and 8-shard checks need 8 devices, which must be requested
before JAX initialises, and pytest's process already has one: they run in
one subprocess (tests/sharded_cases.py) with 8 virtual CPU devices, and a
single test here asserts on all of its results, so pytest-xdist never
starts that subprocess twice. The 1-device path and the argument errors run
in process.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfjax.attention.sharded import sequence_parallel_attention
from tests import sharded_cases
from tests.reference import reference_attention

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_sharded_cases(path):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             # Both spellings: jax_num_cpu_devices (the env var) wins over
             # XLA_FLAGS when both are set (research notes scale.md, §3), so
             # a caller's own count cannot shrink ours.
             JAX_NUM_CPU_DEVICES="8",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=8").strip(),
             PYTHONPATH=os.pathsep.join(
                 [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")]
                                if p]))
  proc = subprocess.run([sys.executable, "-m", "tests.sharded_cases",
                         str(path)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(pathlib.Path(path).read_text())


def test_sharded_over_2_4_8_devices_matches_reference(tmp_path):
  """Outputs and gradients (q, k, v, q_g, k_g, v_g, rel_query, rel_table)
  of every case in sharded_cases.CASES; the compiled HLO's collectives; the
  errors only a multi-device mesh can raise."""
  res = run_sharded_cases(tmp_path / "results.json")
  assert res["devices"] == 8
  problems = []
  for name, spec in sharded_cases.selected().items():
    r = res[name]
    if "exception" in r:
      problems.append(f"{name}: raised\n{r['exception']}")
      continue
    if not r["out_err"] <= spec.get("atol", sharded_cases.OUT_ATOL):
      problems.append(f"{name}: output off by {r['out_err']}")
    if r["out_dtype"] != spec.get("dtype", "float32"):
      problems.append(f"{name}: output {r['out_dtype']}")
    grads = [key[5:-4] for key in r if key.startswith("grad_")
             and key.endswith("_err")]
    expected = ["q", "k", "v"] + (["q_g", "k_g", "v_g"] if spec.get("gqkv")
                                  else []) + (["rel_query", "rel_table"]
                                              if spec.get("rel") else [])
    if sorted(grads) != sorted(expected):
      problems.append(f"{name}: gradients {grads}, expected {expected}")
    for g in grads:
      if not (r[f"grad_{g}_finite"]
              and r[f"grad_{g}_err"] <= spec.get("grad_atol",
                                                 sharded_cases.GRAD_ATOL)):
        problems.append(f"{name}: gradient of {g} off by "
                        f"{r[f'grad_{g}_err']} (beyond rtol)")
    want_spec = "P('data', 'seq')" if spec.get("data") else "P(None, 'seq')"
    if r["out_spec"].replace(", None", "") != want_spec:
      problems.append(f"{name}: output sharded {r['out_spec']}, expected "
                      f"{want_spec}")
  assert not problems, "\n".join(problems)
  assert {spec["p"] for spec in sharded_cases.CASES.values()} == {2, 4, 8}

  hlo = res["hlo"]
  assert "exception" not in hlo, hlo.get("exception")
  for label in ("symmetric", "causal"):
    h = hlo[label]
    # Halos travel by collective-permute, each operand window rows long
    # (the shard has 32), and nothing is all-gathered.
    assert h["collective_permutes"] > 0, h
    assert h["permute_rows"] == [h["window"]], h
    assert h["all_gathers"] == 0, h
  # Causal: the left halo only, half the permutes of the symmetric layer;
  # without global tokens no all-reduce at all.
  assert 2 * hlo["causal"]["collective_permutes"] == (
      hlo["symmetric"]["collective_permutes"])
  assert hlo["causal"]["all_reduces"] == 0
  assert hlo["symmetric"]["all_reduces"] > 0  # the global tokens' gathers
  # Remat repeats the halo exchange unless the "halo" name is saved.
  assert hlo["remat_halo_saved"] == hlo["no_remat"] > 0
  assert hlo["remat_nothing_saved"] > hlo["no_remat"]

  # Eager gradients on a second mesh after a first (jax 0.10 parsed the
  # second program's shardings against the first mesh).
  switch = res["mesh_switch"]
  assert "exception" not in switch, switch.get("exception")
  assert switch["seq8"] <= sharded_cases.GRAD_ATOL, switch
  assert switch["data2_seq4"] <= sharded_cases.GRAD_ATOL, switch

  # The kernels per device on a mesh without a seq axis (XLA cannot
  # partition a Mosaic kernel: JAX refused to lower one there).
  batch = res["batch_mesh"]
  assert "exception" not in batch, batch.get("exception")
  assert len(batch) == (6 if sharded_cases.TPU_KERNELS_HERE else 2), batch
  for name, e in batch.items():
    assert e["out"] <= sharded_cases.OUT_ATOL, (name, e)
    assert e["grad"] <= sharded_cases.GRAD_ATOL, (name, e)

  err = res["errors"]
  assert "multiple of the mesh's 'seq' axis (4 devices), got seq 30" in (
      err["seq_not_multiple"])
  assert "batch_axis size 2, got batch 3" in err["batch_not_multiple"]
  assert "batch_axis: expected mesh axes other than" in (
      err["batch_axis_is_seq"])
  assert "multiple of the mesh's 'seq' axis (8 devices) on a mesh with " \
      "Explicit axes" in err["explicit_pad"], err["explicit_pad"]


def one_device_mesh():
  return jax.make_mesh((1,), ("seq",),
                       axis_types=(jax.sharding.AxisType.Auto,))


@pytest.mark.parametrize("causal", [False, True])
def test_one_shard_matches_reference(causal):
  """P = 1: no halo to exchange (the same code path, no permutes)."""
  rng = np.random.default_rng(0)
  b, n, h, d = 2, 12, 2, 4
  q, k, v = (jnp.asarray(rng.standard_normal((b, n, h, d)), jnp.float32)
             for _ in range(3))
  key_mask = np.ones((b, n), bool)
  key_mask[1, 9:] = False
  kw = dict(key_mask=jnp.asarray(key_mask))
  if causal:  # window 0 and a dilation longer than a class
    kw.update(window=0, dilation=[1, 13], causal=True)
  else:
    global_mask = np.zeros((b, n), bool)
    global_mask[:, 4] = True
    kw.update(window=2, dilation=[1, 2], global_mask=jnp.asarray(global_mask),
              rel_query=jnp.asarray(rng.standard_normal((b, n, h, 3)),
                                    jnp.float32),
              rel_table=jnp.asarray(rng.standard_normal((9, h, 3)),
                                    jnp.float32))
  got = sequence_parallel_attention(q, k, v, mesh=one_device_mesh(), **kw)
  np.testing.assert_allclose(got, reference_attention(q, k, v, **kw),
                             atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(impl="dense"), "impl: expected one of ('auto', 'chunked', "
                         "'pallas', 'splash', 'mosaic') (dense is the O(N^2) oracle"),
    (dict(axis_name="sp"), "axis_name: expected an axis of the mesh "
                           "('seq',), got 'sp'"),
    (dict(batch_axis="data"), "batch_axis: expected an axis of the mesh"),
    (dict(mesh="seq"), "mesh: expected a jax.sharding.Mesh, got str"),
    (dict(window=-1), "window: expected a Python int >= 0"),
    (dict(causal=True, global_mask=jnp.zeros((1, 8), bool)),
     "global_mask: global tokens see the future"),
])
def test_errors_name_the_argument(kwargs, message):
  x = jnp.zeros((1, 8, 2, 4))
  kw = dict(mesh=one_device_mesh(), window=2)
  kw.update(kwargs)
  with pytest.raises(ValueError) as e:
    sequence_parallel_attention(x, x, x, **kw)
  assert message in str(e.value)
