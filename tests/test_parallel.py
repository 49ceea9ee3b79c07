"""Training on a mesh (lfjax.parallel, config.mesh): the same losses as one
device, resume onto another mesh, the compiled step's collectives, and the
mesh config's errors.

The multi-device runs need 8 devices, requested before JAX starts, so they
run in subprocesses (tests/parallel_cases.py) with 8 virtual CPU devices. The reference is the same run
on one device (the single-device trainer, no mesh). The MLM case needs
transformers' tokenizers (the Python 3.11 leg; elsewhere it skips, saying
why); it runs in a subprocess of its own, beside the others.
"""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from lfjax import cli
from lfjax import parallel
from lfjax import tasks
from tests import optional
from tests import parallel_cases
from tests.test_train import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# float32 sums in another order on another mesh: losses agree to ~4e-6,
# gradient norms (a sum over every parameter) to ~2e-5 relative.
LOSS_ATOL = 2e-5
RTOL = {"grad_norm": 1e-4}


def eight_device_env():
  return dict(os.environ, JAX_PLATFORMS="cpu",
              # Both spellings: the env var wins over XLA_FLAGS (research
              # notes scale.md, §3), so a caller's own count cannot shrink it.
              JAX_NUM_CPU_DEVICES="8",
              XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                         " --xla_force_host_platform_device_count=8").strip(),
              PYTHONPATH=os.pathsep.join(
                  [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")]
                                 if p]))


def run_cases(tmp_path, names):
  out = tmp_path / "results.json"
  proc = subprocess.run(
      [sys.executable, "-m", "tests.parallel_cases", str(out),
       str(tmp_path / "work"), *names], cwd=ROOT, env=eight_device_env(),
      capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(out.read_text())


def check_same_run(name, runs, problems):
  """Every run's per-step loss, gradient norm and final evaluation against
  the one-device run's."""
  want = runs["1x1x1"]
  steps = [r["step"] for r in want if "train_loss" in r]
  if steps != list(range(1, parallel_cases.STEPS + 1)):
    problems.append(f"{name}: reference logged steps {steps}")
  for mesh, recs in runs.items():
    got_steps = [r["step"] for r in recs if "train_loss" in r]
    if got_steps != steps:
      problems.append(f"{name} {mesh}: logged steps {got_steps}")
      continue
    for a, b in zip(want, recs):
      for key, va in a.items():
        vb = b.get(key)
        if isinstance(va, float):
          if vb is None or not math.isclose(va, vb,
                                            rel_tol=RTOL.get(key, 1e-5),
                                            abs_tol=LOSS_ATOL):
            problems.append(f"{name} {mesh} step {a['step']} {key}: {vb} "
                            f"vs one device {va}")
        elif key not in ("phase", "window", "seq_len", "step") and va != vb:
          problems.append(f"{name} {mesh} step {a['step']} {key}: {vb!r} "
                          f"vs one device {va!r}")


def test_mesh_runs_equal_one_device_and_resume_onto_other_meshes(tmp_path):
  """char-LM (dropout 0.1): 10 steps on data 2 x seq 4 equal one device; a
  run killed at step 7 on data 2 x seq 4 resumes from its step-5 checkpoint
  on data 4 and one device with the same losses. The char-LM on 2
  processes x 2 devices (jax.distributed over loopback) on fsdp 2 x seq 2
  and on seq 4 equals one device too, each process building only its rows.
  The compiled data 2 x seq 4 char-LM step exchanges halos
  (collective-permutes) and gathers no K/V over the sequence."""
  names = ["charlm", "hlo", "multihost"]
  res = run_cases(tmp_path, names)
  assert res["devices"] == 8
  problems = raised(res, names)
  if not problems:
    check_same_run("charlm", res["charlm"], problems)
    assert set(res["charlm"]) == {"1x1x1", "2x1x4", "resumed_on_4x1x1",
                                  "resumed_on_1x1x1"}
    multi = res["multihost"]
    check_same_run("multihost", {"1x1x1": res["charlm"]["1x1x1"],
                                 "1x2x2": multi["1x2x2"],
                                 "1x1x4": multi["1x1x4"]}, problems)
    # [process, devices, local devices, first row, end row] per process.
    assert sorted(multi["1x2x2_rows"]) == [[0, 4, 2, 0, 2], [1, 4, 2, 2, 4]]
    assert sorted(multi["1x1x4_rows"]) == [[0, 4, 2, 0, 4], [1, 4, 2, 0, 4]]
    for name in ("1x2x2", "1x1x4"):
      logged = multi[name + "_step_lines"]
      assert logged[0] > 0 and logged[1] == 0, (name, logged)
    hlo = res["hlo"]
    if hlo["collective_permutes"] == 0:
      problems.append("hlo: no collective-permute (halo exchange)")
    for shape in hlo["all_gathers"]:
      dims = [int(d) for d in re.findall(r"\d+", shape.split("{")[0])]
      if hlo["seq_len"] in dims:
        problems.append(f"hlo: an all-gather over the whole sequence: "
                        f"{shape}")
  assert not problems, "\n".join(problems)


def test_finetuning_mesh_runs_equal_one_device_and_resume(tmp_path):
  """QA (2 length buckets) and multiple choice ([batch, candidates, seq]
  batches): 10 steps (dropout 0.1) on data 2 x fsdp 2 x seq 2 give the
  one-device run's per-step losses and gradient norms, and its final
  evaluation; a run killed at step 7 on that mesh resumes from its step-5
  checkpoint (QA on the same mesh, multiple choice on one device) with
  the same losses."""
  optional.need("torch")
  optional.need("transformers")
  names = ["qa", "multiple_choice"]
  res = run_cases(tmp_path, names)
  assert res["devices"] == 8
  problems = raised(res, names)
  if not problems:
    for name in names:
      check_same_run(name, res[name], problems)
    assert set(res["qa"]) == {"1x1x1", "2x2x2", "resumed_on_2x2x2"}
    assert set(res["multiple_choice"]) == {"1x1x1", "2x2x2",
                                           "resumed_on_1x1x1"}
    # QA's batches come from 2 buckets of different lengths (records are
    # compared equal across meshes above).
    lengths = res["qa"]["1x1x1"][0]["bucket_lengths"]
    assert len(lengths) == 2 and lengths[0] < lengths[1], lengths
    for name in names:
      evals = [r for r in res[name]["1x1x1"] if any(
          k.startswith("eval_") for k in r)]
      if not evals:
        problems.append(f"{name}: the one-device run logged no evaluation")
  assert not problems, "\n".join(problems)


def test_mlm_mesh_runs_equal_one_device_and_resume_onto_other_meshes(
    tmp_path):
  """MLM (global <s> tokens, dropout, dynamic masks, two layers under
  scan_layers): 10 steps on data 2 x seq 4 equal one device; a run killed
  at step 7 on data 2 x seq 4 resumes from its step-5 checkpoint on fsdp 2
  x seq 2 and one device with the same losses; trained on 8 devices, it
  evaluates where JAX sees one to the final evaluation the one-device run
  logged. On 2 processes x 2 devices (fsdp 2 x seq 2: each process builds
  and masks only its 2 of the 4 rows; seq 4: both build all 4) it equals
  one device too: a row's masks do not depend on who builds it. Those two
  processes build their token store (about 20 shards) at once: one
  consistent store; the run killed at step 7 resumes on them with the
  uninterrupted run's losses."""
  optional.need("transformers")
  res = run_cases(tmp_path, ["mlm", "mlm_multihost"])
  assert res["devices"] == 8
  problems = raised(res, ["mlm", "mlm_multihost"])
  if not problems:
    check_same_run("mlm", res["mlm"], problems)
    assert set(res["mlm"]) == {"1x1x1", "2x1x4", "resumed_on_1x2x2",
                               "resumed_on_1x1x1"}
    multi = res["mlm_multihost"]
    check_same_run("mlm_multihost", {
        "1x1x1": res["mlm"]["1x1x1"], "1x2x2": multi["1x2x2"],
        "1x1x4": multi["1x1x4"],
        "resumed_on_1x2x2": multi["resumed_on_1x2x2"]}, problems)
    assert sorted(multi["1x2x2_rows"]) == [[0, 4, 2, 0, 2], [1, 4, 2, 2, 4]]
    # The two processes built one store (verified in full), of several
    # shards, with nothing of the build left over.
    built = multi["store"]
    assert built["splits"]["train"]["shards"] > 3, built
    assert built["left"] == ["manifest.json"], built
    env = dict(eight_device_env(), JAX_NUM_CPU_DEVICES="1", XLA_FLAGS="")
    proc = subprocess.run(
        [sys.executable, "-m", "lfjax.evaluate", "--workdir",
         str(tmp_path / "work" / "mlm" / "2x1x4")], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=300)
    want = [r for r in res["mlm"]["1x1x1"] if "eval_loss" in r][-1]
    got = re.search(r"loss (\d+\.\d+)", proc.stdout)
    if proc.returncode or not got or not math.isclose(
        float(got.group(1)), want["eval_loss"], abs_tol=1e-4):
      problems.append(f"mlm evaluate on 1 device: rc {proc.returncode}, "
                      f"{proc.stdout[-300:]}{proc.stderr[-300:]} vs "
                      f"eval_loss {want['eval_loss']}")
  assert not problems, "\n".join(problems)


def raised(res, names):
  return [f"{name}: raised\n{res[name]['exception']}" for name in names
          if "exception" in res[name]]


# In process: the mesh config and layouts -----------------------------------


def mesh_config(data=1, fsdp=1, seq=1):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, seq=seq))


def test_resolve_fills_the_rest_and_names_bad_fields():
  assert parallel.resolve(mesh_config(2, 1, -1), 8) == dict(data=2, fsdp=1,
                                                            seq=4)
  assert parallel.resolve(mesh_config(-1), 8) == dict(data=8, fsdp=1, seq=1)
  assert parallel.resolve(mesh_config(), 8) == dict(data=1, fsdp=1, seq=1)
  cases = [(mesh_config(0), r"config\.mesh\.data: expected a device count "
            r">= 1 or -1 \(the rest\), got 0"),
           (mesh_config(seq=2.0), r"config\.mesh\.seq: .* got 2\.0"),
           (mesh_config(fsdp=True), r"config\.mesh\.fsdp: .* got True"),
           (mesh_config(-1, 1, -1), r"config\.mesh\.seq: expected -1 \(the "
            r"rest\) on at most one axis, got -1 on \['data', 'seq'\]"),
           (mesh_config(3, 1, -1), r"config\.mesh\.seq: -1 takes the devices "
            r"the other axes leave, but 8 devices are not a multiple of 3"),
           # More devices than JAX sees: the one axis asking for them is
           # named, or config.mesh for several; the hint fits the platform.
           (mesh_config(2, 2, 4), r"^config\.mesh: expected at most the 8 "
            r"devices JAX sees, got data 2 x fsdp 2 x seq 4 = 16 devices; "
            r"lower the mesh, or run where JAX sees more devices; on a CPU, "
            r"JAX_NUM_CPU_DEVICES=16 in the environment gives 16 virtual "
            r"devices"),
           (mesh_config(1, 16, -1), r"^config\.mesh\.fsdp: expected at most "
            r"the 8 devices JAX sees on the axes besides seq \(-1: the "
            r"rest\), got data 1 x fsdp 16 = 16 devices; .*=16 ")]
  for cfg, msg in cases:
    with pytest.raises(cli.ConfigError, match=msg):
      parallel.resolve(cfg, 8)
  with pytest.raises(ValueError, match=r"^config\.mesh\.seq: expected at most "
                     r"the 1 device JAX sees, got data 1 x fsdp 1 x seq 2 = 2 "
                     r"devices; on this CPU, JAX_NUM_CPU_DEVICES=2 in the "
                     r"environment gives 2 virtual devices \(sharing"):
    parallel.resolve(mesh_config(seq=2), 1, "cpu")
  with pytest.raises(ValueError, match=r"= 2 devices; lower the mesh, or run "
                     r"where JAX sees more devices$"):
    parallel.resolve(mesh_config(data=2), 1, "gpu")
  with pytest.raises(ValueError, match=r"but 3 devices are not a multiple"):
    parallel.resolve(mesh_config(2, 1, -1), 3)


def test_task_configs_have_the_mesh_and_validate_it():
  for name, arg in (("charlm_default", "tiny"),
                    ("mlm_longformer_base", "tiny")):
    c = load_config(name, arg)
    c.init_from = "/any/folder"  # the MLM's required field
    assert dict(c.mesh) == dict(data=1, fsdp=1, seq=1)
    tasks.get(c.task).validate(c)
    c.mesh.seq = -2
    with pytest.raises(ValueError, match=r"config\.mesh\.seq: expected"):
      tasks.get(c.task).validate(c)


def test_one_device_has_no_mesh_and_checks_divisibility():
  # pytest's process has one device: the default config is today's path.
  assert parallel.make_mesh(mesh_config()) is None
  assert parallel.make_mesh(mesh_config(-1)) is None
  assert parallel.describe(None) == "one device"
  with pytest.raises(cli.ConfigError, match=r"config\.mesh\.seq: expected "
                     r"at most the 1 device JAX sees, .* on this CPU, "
                     r"JAX_NUM_CPU_DEVICES=2 "):
    parallel.make_mesh(mesh_config(seq=2))
  parallel.check_batch(None, "train.batch_size", 3)  # one device: anything

  class FakeMesh:
    shape = dict(data=2, fsdp=2, seq=4)
  with pytest.raises(ValueError, match=r"config\.schedule\.batch_sizes\[0\]:"
                     r" expected a multiple of mesh\.data x mesh\.fsdp = 4 "
                     r"\(the batch is split over them\), got 6"):
    parallel.check_batch(FakeMesh, "schedule.batch_sizes[0]", 6)
  with pytest.raises(ValueError, match=r"config\.train\.seq_len: expected a "
                     r"multiple of mesh\.seq = 4 .*, got 30"):
    parallel.check_seq(FakeMesh, "train.seq_len", 30)


def test_fsdp_spec_splits_the_largest_divisible_dimension():
  assert parallel.fsdp_spec((512, 2048), 4) == P(None, "fsdp")
  assert parallel.fsdp_spec((2048, 512), 4) == P("fsdp", None)
  assert parallel.fsdp_spec((6, 4), 4) == P(None, "fsdp")  # 6 % 4 != 0
  assert parallel.fsdp_spec((3, 5), 4) == P()  # nothing divides: replicated
  assert parallel.fsdp_spec((8, 8), 4) == P("fsdp", None)  # first on ties
  assert parallel.fsdp_spec((), 4) == P()
  assert parallel.fsdp_spec((2, 2), 4) == P()  # smaller than the axis
  assert parallel.fsdp_spec((512, 2048), 1) == P()


def test_batch_sharding_splits_the_batch_and_the_named_seq_axis():
  import jax
  mesh = jax.make_mesh((1, 1, 1), parallel.AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  spec = lambda *a: parallel.batch_sharding(mesh, *a).spec
  assert spec() == P(parallel.BATCH, "seq")  # [batch, seq] (MLM)
  assert spec(3, 2) == P(parallel.BATCH, None, "seq")  # [b, choices, seq]
  assert spec(1, None) == P(parallel.BATCH)  # labels [b]
  assert spec(2, None) == P(parallel.BATCH, None)  # multi-label [b, k]
  with pytest.raises(ValueError, match=r"^seq_axis: expected an axis 1 \.\. "
                     r"2 of a 3-d batch array \(or None\), got 0"):
    spec(3, 0)


def test_distributed_environment_errors():
  assert parallel.initialize_distributed({}) is False
  assert parallel.initialize_distributed({"JAX_NUM_PROCESSES": "1"}) is False
  with pytest.raises(ValueError, match=r"JAX_COORDINATOR_ADDRESS: expected "
                     r"it set \(JAX_NUM_PROCESSES=2 asks for a multi-process "
                     r"run"):
    parallel.initialize_distributed({"JAX_NUM_PROCESSES": "2",
                                     "JAX_PROCESS_ID": "0"})
  with pytest.raises(ValueError, match=r"JAX_PROCESS_ID: expected 0 \.\. 1, "
                     r"got 2"):
    parallel.initialize_distributed({
        "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2",
        "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"})
  with pytest.raises(ValueError, match=r"JAX_NUM_PROCESSES: expected an "
                     r"integer, got 'two'"):
    parallel.initialize_distributed({
        "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0",
        "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"})
  # Malformed values are named before missing companions are asked for.
  for n in ("0", "-1"):
    with pytest.raises(ValueError, match=rf"^JAX_NUM_PROCESSES: expected a "
                       rf"process count >= 1, got {n}$"):
      parallel.initialize_distributed({"JAX_NUM_PROCESSES": n})
  with pytest.raises(ValueError, match=r"^JAX_NUM_PROCESSES: expected an "
                     r"integer, got 'abc'$"):
    parallel.initialize_distributed({"JAX_NUM_PROCESSES": "abc"})
  with pytest.raises(ValueError, match=r"^LFJAX_LOCAL_DEVICE_IDS: expected "
                     r"comma-separated device ids \(e\.g\. 0,1\), got 'a,b'$"):
    parallel.initialize_distributed({
        "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0",
        "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234",
        "LFJAX_LOCAL_DEVICE_IDS": "a,b"})


_ADVICE_CASES = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from lfjax.attention import windowed_attention
from lfjax.attention.sharded import sequence_parallel_attention
from tests.reference import reference_attention
rng = np.random.default_rng(0)
q, k, v, cot = (jnp.asarray(rng.standard_normal((1, 32, 2, 8)), jnp.float32)
                for _ in range(4))
grad = lambda fn: jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * cot),
                           argnums=(0, 1, 2))
want = grad(lambda q, k, v: reference_attention(q, k, v, window=3))(q, k, v)
out = {"devices": jax.device_count()}
for kind in ("Auto", "Explicit"):
  mesh = jax.make_mesh((4,), ("seq",), axis_types=(getattr(AxisType, kind),))
  cases = {
      # Inputs committed replicated, eager (jit refused them before).
      "sequence_parallel_replicated": (lambda q, k, v: (
          sequence_parallel_attention(q, k, v, mesh=mesh, window=3)),
          P(), False),
      # The docstrings' advice: eager jax.grad under jax.set_mesh.
      "sequence_parallel_set_mesh": (lambda q, k, v: (
          sequence_parallel_attention(q, k, v, mesh=mesh, window=3)),
          P(None, "seq"), True),
      "windowed_set_mesh": (lambda q, k, v: (
          windowed_attention(q, k, v, window=3)), P(None, "seq"), True)}
  for name, (fn, spec, set_mesh) in cases.items():
    if kind == "Explicit" and not set_mesh:
      continue  # eager grad on Explicit axes needs set_mesh (docstring)
    x = [jax.device_put(a, NamedSharding(mesh, spec)) for a in (q, k, v)]
    if set_mesh:
      with jax.set_mesh(mesh):
        got = grad(fn)(*x)
    else:
      got = grad(fn)(*x)
    out[f"{kind}_{name}"] = max(float(jnp.max(jnp.abs(g - w)))
                                for g, w in zip(got, want))
from lfjax import parallel
out["describe"] = [
    parallel.describe(parallel.make_mesh({"data": 1, "fsdp": 1, "seq": 2})),
    parallel.describe(None)]
print(json.dumps(out))
"""


def test_what_the_docs_advise_works_on_4_cpu_devices():
  # The mesh error's hint names JAX_NUM_CPU_DEVICES alone (no XLA_FLAGS): it
  # must give that many devices by itself. On them, the eager calls the
  # attention docstrings advise (jax.set_mesh for jax.grad on Explicit
  # axes; inputs laid out in any way) give the brute-force gradients.
  env = {k: v for k, v in eight_device_env().items() if k != "XLA_FLAGS"}
  env["JAX_NUM_CPU_DEVICES"] = "4"
  proc = subprocess.run([sys.executable, "-c", _ADVICE_CASES], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  res = json.loads(proc.stdout.strip().splitlines()[-1])
  assert res.pop("devices") == 4
  # A mesh smaller than the machine says so when a run starts.
  assert res.pop("describe") == [
      "mesh: data 1 x fsdp 1 x seq 2 on 2 of 4 devices",
      "one device (of 4: config.mesh uses 1)"]
  assert sorted(res) == sorted(
      ["Auto_sequence_parallel_replicated", "Auto_sequence_parallel_set_mesh",
       "Auto_windowed_set_mesh", "Explicit_sequence_parallel_set_mesh",
       "Explicit_windowed_set_mesh"])
  for name, err in res.items():
    assert err < 1e-4, (name, err)
