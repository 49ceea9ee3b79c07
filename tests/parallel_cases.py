"""Multi-device trainer runs for tests/test_parallel.py, in one subprocess
with 8 virtual CPU devices (they must be requested before JAX starts).

  python -m tests.parallel_cases OUT.json WORKDIR [case ...]
  python -m tests.parallel_cases --process WORKDIR RUNDIR MESH [TASK]
      (multihost; TASK charlm or mlm)

Each case writes what the test asserts on into OUT.json: per-step losses
and gradient norms of the same tiny run on several meshes, a killed run
resumed on other meshes, the compiled train step's collectives. The
reference is always the one-device run of the same config (the trainer as
it was before meshes existed), never a multi-device run.
"""

import json
import pathlib
import re
import shutil
import sys
import traceback

import jax

from lfjax import metrics
from lfjax import parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 10
KILL_AT = 7  # after the checkpoint at step 5


class Interrupt(Exception):
  pass


def charlm_config(data_dir, mesh):
  from tests.test_train import small_config
  c = small_config(data_dir, steps=(STEPS,))
  s = c.schedule
  s.seq_lens, s.batch_sizes, s.lrs, s.window_scales = (32,), (4,), (3e-3,), (
      1,)
  # One layer (compiles dominate), two heads of window 8 plus two of window
  # 8 x dilation 2: a halo of 16 rows, two shards of 8 on seq 4.
  c.model.num_layers, c.model.windows, c.model.dilations = 1, (8,), (2,)
  c.eval_every = 0  # the run's end only
  c.eval.max_chars = 200
  c.mesh.data, c.mesh.fsdp, c.mesh.seq = mesh
  return c


def records(workdir):
  return [{k: v for k, v in r.items() if k != "tokens_per_s"}
          for r in metrics.read(pathlib.Path(workdir) / "metrics.jsonl")]


def train_killed(train, config, workdir):
  """Runs until step KILL_AT is logged, then dies (a kill after the
  metrics line, before the next checkpoint)."""
  write = metrics.JsonlWriter.write

  def dying(self, step, values):
    write(self, step, values)
    if step == KILL_AT:
      raise Interrupt()
  metrics.JsonlWriter.write = dying
  try:
    train(config, workdir)
  except Interrupt:
    pass
  else:
    raise AssertionError("the run was not interrupted")
  finally:
    metrics.JsonlWriter.write = write


def runs(train, make_config, work, meshes, resume_meshes):
  """{name: records} of full runs on `meshes` and of a run killed on
  meshes[1] and resumed on each of resume_meshes (the killed run's first
  steps are meshes[1]'s program again: a compilation-cache hit)."""
  out = {}
  for mesh in meshes:
    name = "x".join(map(str, mesh))
    train(make_config(mesh), work / name)
    out[name] = records(work / name)
  killed = work / "killed"
  train_killed(train, make_config(meshes[1]), killed)
  for mesh in resume_meshes:
    name = "resumed_on_" + "x".join(map(str, mesh))
    shutil.copytree(killed, work / name)
    train(make_config(mesh), work / name)
    out[name] = records(work / name)
  return out


def case_charlm(work):
  from lfjax.data import chars
  from lfjax.tasks import charlm
  data_dir = work / "data"
  chars.load("pystdlib", data_dir)
  return runs(charlm.train_and_evaluate,
              lambda mesh: charlm_config(str(data_dir), mesh), work / "charlm",
              meshes=[(1, 1, 1), (2, 1, 4)],
              resume_meshes=[(4, 1, 1), (1, 1, 1)])


def mlm_config(work, mesh, cache="mlm_cache"):
  """The tiny MLM run of case_mlm on `mesh` (data, fsdp, seq); the tiny
  RoBERTa at work/roberta (tiny_roberta); its token store (shards of 4,096
  tokens: about 20) under work/cache."""
  from tests.test_train import load_config
  c = load_config("mlm_longformer_base", "tiny")
  c.init_from = str(work / "roberta")
  c.data.max_documents = 30
  c.data.valid_fraction = 0.2
  c.data.cache_dir = str(work / cache)
  c.data.shard_tokens = 4096
  c.model.max_positions = c.train.seq_len = 64
  c.model.attention_window = 16
  c.model.global_bos = True  # global tokens across the sequence shards
  c.model.scan_layers = True
  c.train.batch_size, c.train.micro_batch_size = 4, 2
  c.steps = c.optim.decay_steps = STEPS
  c.log_every, c.checkpoint_every, c.eval_every = 1, 5, 0
  c.eval.max_batches, c.eval.batch_size = 1, 2
  c.mesh.data, c.mesh.fsdp, c.mesh.seq = mesh
  return c


def tiny_roberta(work):
  """work/roberta, made once: two layers of one window (scan_layers runs
  them as one lax.scan over stacked parameters, fsdp-sharded on the 1x2x2
  resume)."""
  from lfjax import make_tiny
  if not (work / "roberta" / "config.json").exists():
    make_tiny.make_tiny(work / "roberta", documents=80, vocab_size=400,
                        positions=64, hidden_size=32, layers=2)


def case_mlm(work):
  from lfjax.tasks import mlm
  tiny_roberta(work)
  return runs(mlm.train_and_evaluate, lambda mesh: mlm_config(work, mesh),
              work / "mlm", meshes=[(1, 1, 1), (2, 1, 4)],
              # (1, 1, 1): the converted checkpoint's numpy weights must be
              # restored onto one device, not the saved mesh's layout.
              resume_meshes=[(1, 2, 2), (1, 1, 1)])


def finetune_runs(work, task, name, make_data, resume_meshes, **changes):
  """A fine-tuning task on the tiny Longformer of tests/finetune_fixtures:
  10 steps (16 examples, batch 8 in micro-batches of 4, 5 epochs) on one
  device and on data 2 x fsdp 2 x seq 2, a run killed at step 7 on the
  latter resumed on resume_meshes; evaluated at the end. make_data(path,
  n, seed) writes a data file."""
  from lfjax import tasks
  from tests import finetune_fixtures as fixtures
  from tests.test_qa import WORDS
  tiny = work / (name + "_longformer")
  tiny.mkdir(parents=True, exist_ok=True)
  fixtures.tiny_longformer(tiny, WORDS + ["what", "is", "the", "code", "?",
                                          "which", "colour", "red", "pink",
                                          "green", "blue", "black", "white"])
  train = make_data(work / f"{name}_train.json", 16, 0)
  valid = make_data(work / f"{name}_dev.json", 8, 1)

  def make_config(mesh):
    c = fixtures.tiny_config(name, **{
        "init_from": str(tiny), "data.train": str(train),
        "data.valid": str(valid), "train.epochs": 5.0, "log_every": 1,
        "checkpoint_every": 5, **changes})
    c.mesh.data, c.mesh.fsdp, c.mesh.seq = mesh
    return c
  return runs(tasks.get(task).train_and_evaluate, make_config, work / name,
              meshes=[(1, 1, 1), (2, 2, 2)], resume_meshes=resume_meshes)


def case_qa(work):
  """QA, one window per question (data.windows truncate, 128 tokens: the
  toy contexts fit), 2 length buckets, resumed on the same mesh."""
  from tests import test_qa
  return finetune_runs(
      work, "qa", "qa_longformer",
      lambda path, n, seed: test_qa.squad(path, test_qa.toy(n, seed)),
      [(2, 2, 2)], **{"data.windows": "truncate", "data.length_buckets": 2,
                      "model.max_length": 128})


def case_multiple_choice(work):
  """Multiple choice ([batch, 3 candidates, seq] batches), resumed on one
  device."""
  from tests import test_multiple_choice as tmc
  return finetune_runs(
      work, "multiple_choice", "multiple_choice_longformer",
      lambda path, n, seed: tmc.write(path, tmc.toy(n, seed)), [(1, 1, 1)])


def case_hlo(work):
  """Collectives of the char-LM's compiled train step on data 2 x seq 4."""
  import numpy as np
  from flax import nnx
  from lfjax import checkpoints
  from lfjax.data import chars
  from lfjax.models import charlm as charlm_model
  from lfjax.tasks import charlm
  c = charlm_config(str(work / "data"), (2, 1, 4))
  c.schedule.seq_lens = (64,)
  mesh = parallel.make_mesh(c.mesh)
  corpus = chars.load("pystdlib", str(work / "data"))
  model = charlm_model.CharLM(checkpoints.model_config(c, corpus.vocab_size),
                              rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = charlm.optimizer(c)
  params = parallel.shard(params, mesh)
  opt_state = parallel.shard(tx.init(params), mesh)
  shardings = (parallel.state_shardings(params, mesh),
               parallel.state_shardings(opt_state, mesh), mesh)
  step = charlm.make_train_step(graphdef, tx, 1, batch_size=4,
                                shardings=shardings)
  x = np.zeros((4, 64), np.int32)
  with parallel.use(mesh):
    text = step.lower(params, opt_state, {"inputs": x, "targets": x},
                      jax.random.key(0)).compile().as_text()
  # Shapes of every all-gather's result: none may hold the whole sequence
  # of keys/values ([.., 64, heads, head_dim]).
  gathers = re.findall(r"= (\S+) all-gather(?:-start)?\(", text)
  return {"collective_permutes": len(re.findall(
      r"collective-permute(?:-start)?\(", text)),
          "all_gathers": gathers, "seq_len": 64,
          "heads": c.model.num_heads, "head_dim": c.model.head_dim}


def case_multihost(work, meshes=((1, 2, 2), (1, 1, 4)), task="charlm"):
  """The char-LM on 2 processes x 2 CPU devices over loopback (gloo),
  launched as a user would: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID per process (lfjax.parallel.initialize_distributed), one
  shared workdir. Mesh fsdp 2 x seq 2 puts the fsdp axis across the
  processes (each builds only its 2 of the 4 batch rows and holds half of
  each parameter); seq 4 puts the sequence across them (both build all 4
  rows, halos cross processes). task "mlm": the MLM run of case_mlm
  (host-side masks per global row) on a token store of several shards
  that the two processes of the first mesh build at once (one builds, the
  other waits: lfjax.data.store's lock) in a cache of their own; then
  case_mlm's run killed at step 7 (when case_mlm ran first) resumes on
  these two processes (fsdp 2 x seq 2) as "resumed_on_1x2x2"."""
  import os
  import socket
  import subprocess
  if task == "mlm":
    tiny_roberta(work)
  else:
    from lfjax.data import chars
    chars.load("pystdlib", work / "data")
  out = {}
  runs = [("x".join(map(str, mesh)), mesh) for mesh in meshes]
  killed = work / "mlm" / "killed"
  if task == "mlm" and killed.exists():
    runs.append(("resumed_on_1x2x2", (1, 2, 2)))
  for name, mesh in runs:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    workdir = work / ("multihost" if task == "charlm" else
                      f"{task}_multihost") / name
    if name.startswith("resumed_on_"):
      shutil.copytree(killed, workdir)
    mesh = "x".join(map(str, mesh))
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                     if "device_count" not in f)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.parallel_cases", "--process",
         str(work), str(workdir), mesh, task],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, JAX_NUM_CPU_DEVICES="2", XLA_FLAGS=flags,
                 JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                 JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for i, (p, log) in enumerate(zip(procs, logs)):
      if p.returncode:
        raise RuntimeError(f"process {i} of mesh {name} exited "
                           f"{p.returncode}:\n{log[-3000:]}")
    out[name] = records(workdir)
    out[name + "_rows"] = [json.loads(l.split(" ", 1)[1]) for log in logs
                           for l in log.splitlines()
                           if l.startswith("ROWS ")]
    # Progress lines per process (only process 0 should print them).
    out[name + "_step_lines"] = [sum(l.startswith("step ")
                                     for l in log.splitlines())
                                 for log in logs]
  if task == "mlm":  # the store both processes built, checked in full
    from lfjax.data import store
    [path] = [p for p in (work / "mlm_multihost_cache").iterdir()]
    out["store"] = dict(store.verify(path),
                        left=sorted(f.name for f in path.iterdir()
                                    if not f.name.endswith(".npy")))
  return out


def process_main(work, workdir, mesh, task="charlm"):
  """One process of case_multihost."""
  assert parallel.initialize_distributed()
  mesh = tuple(int(x) for x in mesh.split("x"))
  m = parallel.make_mesh(dict(zip(parallel.AXES, mesh)))
  rows = parallel.local_rows(m, 4)
  print("ROWS " + json.dumps([jax.process_index(), jax.device_count(),
                              jax.local_device_count(), rows.start,
                              rows.stop]), flush=True)
  if task == "mlm":
    from lfjax.tasks import mlm
    mlm.train_and_evaluate(mlm_config(pathlib.Path(work), mesh,
                                      cache="mlm_multihost_cache"), workdir)
  else:
    from lfjax.tasks import charlm
    charlm.train_and_evaluate(
        charlm_config(str(pathlib.Path(work) / "data"), mesh), workdir)


CASES = {"charlm": case_charlm, "mlm": case_mlm, "hlo": case_hlo,
         "multihost": case_multihost,
         "mlm_multihost": lambda work: case_multihost(work, task="mlm"),
         "qa": case_qa, "multiple_choice": case_multiple_choice}


def main(out, work, names):
  work = pathlib.Path(work)
  res = {"devices": jax.device_count()}
  for name in names or list(CASES):
    try:
      res[name] = CASES[name](work)
    except Exception:  # reported to the test, which fails naming it
      res[name] = {"exception": traceback.format_exc()}
  pathlib.Path(out).write_text(json.dumps(res))


if __name__ == "__main__":
  # Tiny models compile faster without XLA's optimisations (tests/conftest.py
  # does the same for the in-process trainer tests). Set here, not at
  # import: tests/test_parallel.py imports this module into pytest's process.
  jax.config.update("jax_disable_most_optimizations", True)
  if sys.argv[1] == "--process":
    process_main(*sys.argv[2:])
  else:
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
