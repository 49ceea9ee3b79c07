"""Run folders that a damaged checkpoint or a failed command cannot leave
silently wrong or broken (issue 12): integrity records, finiteness checks,
refused config changes and finished reruns.

One tiny char-LM run is trained once per module; each test damages or
reruns its own copy.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lfjax import checkpoints
from lfjax import integrity
from lfjax import evaluate
from lfjax import metrics
from lfjax import train
from lfjax.data import chars
from lfjax.models import charlm
from lfjax.tasks import charlm as charlm_task
from lfjax.tasks import common
from lfjax.tasks import mlm_defaults
from tests.test_train import small_config
from tests.test_train import strip_timing

pytestmark = pytest.mark.usefixtures("fast_compiles")


def tiny_config(data_dir):
  # Saves at 2, 4, 6 (end of phase 1), 8 and 10; three are kept.
  c = small_config(data_dir, steps=(6, 4))
  c.checkpoint_every = 2
  c.eval_every = 0
  c.log_every = 2
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """(config, folder, returned record) of a finished tiny run."""
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  data_dir = tmp_path_factory.mktemp("data")
  chars.load("pystdlib", data_dir)
  c = tiny_config(str(data_dir))
  workdir = tmp_path_factory.mktemp("finished") / "run"
  last = train.train_and_evaluate(c, workdir)
  jax.config.update("jax_disable_most_optimizations", old)
  return c, workdir, last


@pytest.fixture
def run(finished, tmp_path):
  """A copy of the finished run for one test to damage."""
  c, workdir, last = finished
  shutil.copytree(workdir, tmp_path / "run")
  return c.copy_and_resolve_references(), tmp_path / "run", last


def snapshot(folder):
  """{relative path: sha256} of every file: equal snapshots mean nothing
  was written, changed or deleted."""
  return {f.relative_to(folder).as_posix():
          hashlib.sha256(f.read_bytes()).hexdigest()
          for f in sorted(folder.rglob("*")) if f.is_file()}


def params_file(workdir, step):
  """The largest file of step's params (an OCDBT data file)."""
  files = [f for f in (workdir / "checkpoints" / str(step) / "params")
           .rglob("*") if f.is_file()]
  return max(files, key=lambda f: f.stat().st_size)


def test_every_kept_step_has_a_record_and_orbax_still_lists_steps(finished):
  _, workdir, _ = finished
  # Saves at 2, 4, 6, 8, 10 with keep_checkpoints=3: the record inside each
  # step folder must not stop orbax from listing or collecting steps.
  assert checkpoints.saved_steps(workdir) == [6, 8, 10]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [
      "10", "6", "8"]
  for step in (6, 8, 10):
    d = workdir / "checkpoints" / str(step)
    rec = json.loads((d / integrity.RECORD).read_text())
    assert rec["step"] == step
    on_disk = {f.relative_to(d).as_posix() for f in d.rglob("*")
               if f.is_file() and f.name != integrity.RECORD}
    assert set(rec["files"]) == on_disk
    assert any(name.startswith("params/") for name in on_disk)


def test_corrupted_newest_step_is_refused_and_the_fallback_works(
    finished, run):
  c, workdir, _ = run
  f = params_file(workdir, 10)
  size = f.stat().st_size
  assert size > 8192
  with f.open("r+b") as fh:  # 4 KB of zeros in the middle of the file
    fh.seek(size // 2 - 2048)
    fh.write(b"\0" * 4096)
  before = snapshot(workdir)
  name = f.relative_to(workdir / "checkpoints" / "10").as_posix()

  with pytest.raises(checkpoints.CheckpointError) as resumed:
    train.train_and_evaluate(c, workdir)
  msg = str(resumed.value)
  assert f"checkpoint step 10 of {workdir}" in msg and name in msg
  assert "nothing was deleted" in msg and "Step 8 is the newest" in msg
  with pytest.raises(checkpoints.CheckpointError, match="checkpoint step 10"):
    checkpoints.load_trained(workdir)
  assert snapshot(workdir) == before  # nothing deleted, nothing written

  # The message's own command moves step 10 aside; the run then resumes
  # from 8 and, resume being exact, ends where the undamaged run ended.
  cmd = re.search(r"mkdir -p \S+ && mv \S+ \S+", msg).group(0)
  subprocess.run(cmd, shell=True, check=True)
  assert checkpoints.saved_steps(workdir) == [6, 8]
  train.train_and_evaluate(c, workdir)
  assert checkpoints.saved_steps(workdir) == [6, 8, 10]
  strip = lambda recs: [{k: v for k, v in r.items() if k != "tokens_per_s"}
                        for r in recs]
  assert (strip(metrics.read(workdir / "metrics.jsonl"))
          == strip(metrics.read(finished[1] / "metrics.jsonl")))
  assert checkpoints.load_trained(workdir).step == 10
  assert (workdir / "damaged_checkpoints" / "10" / name).exists()


def test_truncated_file_is_one_clear_error(run):
  _, workdir, _ = run
  f = params_file(workdir, 10)
  os.truncate(f, f.stat().st_size // 2)
  with pytest.raises(checkpoints.CheckpointError) as e:
    checkpoints.load_trained(workdir)
  msg = str(e.value)
  assert "checkpoint step 10" in msg and "truncated" in msg
  assert "\n" not in msg and "Step 8 is the newest" in msg


def test_step_without_record_warns_and_orbax_errors_become_one(run, capsys):
  # A step saved before records existed: it loads with a warning, and
  # orbax's error for a truncated file becomes one CheckpointError.
  _, workdir, _ = run
  (workdir / "checkpoints" / "10" / integrity.RECORD).unlink()
  assert checkpoints.load_trained(workdir).step == 10
  assert "step 10" in capsys.readouterr().err
  f = params_file(workdir, 10)
  os.truncate(f, f.stat().st_size // 2)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"step 10 of .* could not be read \(ValueError: "
                           r"OUT_OF_RANGE"):
    checkpoints.load_trained(workdir)


def test_non_finite_parameters_are_refused(run):
  c, workdir, _ = run
  corpus = chars.load(c.data.name, c.data.dir)
  model = charlm.CharLM(checkpoints.model_config(c, corpus.vocab_size),
                        rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  tx = charlm_task.optimizer(c)
  with checkpoints.manager(workdir) as mngr:
    params, opt_state, data = checkpoints.restore(
        mngr, 10, params, tx.init(params))
    params["embed"]["embedding"].value = (
        params["embed"]["embedding"].value.at[3, 5].set(jnp.nan))
    checkpoints.save(mngr, 11, params, opt_state, data)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"step 11 .* non-finite values: 1 of \d+ in "
                           r"\['params'\]\['embed'\]\['embedding'\]"):
    checkpoints.load_trained(workdir)
  with pytest.raises(checkpoints.CheckpointError, match=r"step 11"):
    train.train_and_evaluate(c, workdir)

  # Evaluation of a model that is not finite raises instead of writing NaN.
  with pytest.raises(FloatingPointError, match=r"valid bpc is nan"):
    charlm_task.evaluate_model(nnx.merge(graphdef, params), corpus,
                            split="valid", seq_len=64, step=32,
                            batch_size=4, max_chars=200)


def test_changed_model_shape_is_refused_before_writing(run):
  c, workdir, _ = run
  before = snapshot(workdir)
  c.model.hidden_size = 64
  c.seed = 1
  with pytest.raises(checkpoints.ConfigChangeError) as e:
    train.train_and_evaluate(c, workdir)
  msg = str(e.value)
  assert "model.hidden_size: 32 -> 64" in msg and "seed: 0 -> 1" in msg
  assert "new --workdir" in msg and "at step 10" in msg
  assert snapshot(workdir) == before  # config.json byte for byte too
  t = checkpoints.load_trained(workdir)
  value, _ = charlm_task.evaluate_model(
      t.model, t.corpus, split="valid", seq_len=64, step=32, batch_size=4,
      max_chars=200, window_scale=t.window_scale)
  assert np.isfinite(value)


def test_allowed_change_resumes_and_keeps_the_history(run, capsys):
  c, workdir, _ = run
  original = json.loads((workdir / "config.json").read_text())
  c.schedule.steps = (6, 6)  # two more steps of the last phase
  c.eval.max_chars = 500
  last = train.train_and_evaluate(c, workdir)
  assert "eval_bpc" in last
  assert checkpoints.saved_steps(workdir) == [8, 10, 12]
  assert "config: resuming from step 10" in capsys.readouterr().out
  current = json.loads((workdir / "config.json").read_text())
  assert current["schedule"]["steps"] == [6, 6]
  history = metrics.read(workdir / checkpoints.HISTORY)
  assert [h["step"] for h in history] == [0, 10]
  assert history[0]["config"] == original and history[1]["config"] == current
  assert history[1]["changes"] == {"eval.max_chars": [1000, 500],
                                   "schedule.steps": [[6, 4], [6, 6]]}


def test_finished_rerun_says_so(run, capsys):
  c, workdir, last = run
  (workdir / "eval_test_10.json").write_text("{}")
  before = snapshot(workdir)
  again = train.train_and_evaluate(c, workdir)
  out = capsys.readouterr().out
  assert f"{workdir} is already finished" in out and "step 10 of 10" in out
  assert str(workdir / "metrics.jsonl") in out
  assert str(workdir / "eval_test_10.json") in out
  assert "resuming" not in out
  assert again == last
  assert snapshot(workdir) == before


def as_json(config):
  return json.loads(config.to_json())


def test_which_changes_a_char_lm_run_can_take(finished):
  c, _, _ = finished
  old = as_json(c)

  def problems(step, **edits):
    new = json.loads(json.dumps(old))
    for path, value in edits.items():
      *parents, leaf = path.split("__")
      d = new
      for p in parents:
        d = d[p]
      d[leaf] = value
    return checkpoints.config_problems(old, new, step)[1]

  assert problems(10) == []
  assert problems(10, data__dir="/elsewhere", optim__grad_clip=1.0,
                  model__dropout=0.0, eval__seq_len=32, log_every=5) == []
  # Phase 1 (steps 0-5) ran; at step 3 it is under way.
  assert problems(8, schedule__lrs=[1e-3, 1e-4]) == [
      "schedule.lrs[0]: 0.003 -> 0.001 (phase 1 ran before step 8)"]
  assert problems(3, schedule__lrs=[1e-3, 1e-4]) == []
  assert problems(3, schedule__steps=[4, 4]) == []
  assert problems(3, schedule__batch_sizes=[2, 2]) == [
      "schedule.batch_sizes[0]: 4 -> 2 (phase 1 holds the data position "
      "at step 3)"]
  assert problems(6, schedule__steps=[8, 4]) == []  # phase 1 ended at 6
  assert problems(10, schedule__steps=[6, 2]) == [
      "schedule.steps: [6, 4] -> [6, 2] ends at step 8, before the "
      "checkpoint at step 10"]
  assert problems(10, model__num_layers=3, data__name="enwik8") == [
      "data.name: 'pystdlib' -> 'enwik8'", "model.num_layers: 2 -> 3"]
  assert problems(10, task="mlm") == ["task: 'charlm' -> 'mlm'"]
  # A field the saved config lacks (added to lfjax since) is no change.
  new = dict(old, new_field=1)
  assert checkpoints.config_problems(old, new, 10) == ({}, [])


def test_which_changes_an_mlm_run_can_take():
  old = as_json(mlm_defaults.base_config())

  def problems(step, **edits):
    new = json.loads(json.dumps(old))
    for path, value in edits.items():
      section, leaf = path.split("__") if "__" in path else (None, path)
      (new[section] if section else new)[leaf] = value
    return checkpoints.config_problems(old, new, step)[1]

  assert problems(100, optim__lr=1e-4, steps=70_000, mask__prob=0.2,
                  train__micro_batch_size=4, data__cache_dir="/c") == []
  assert problems(100, steps=50) == [
      "steps: 65000 -> 50 is before the checkpoint at step 100"]
  assert problems(100, optim__grad_clip=1.0) == [
      "optim.grad_clip: 0.0 -> 1.0 (turning clipping on or off changes the "
      "optimizer state)"]
  assert problems(100, train__seq_len=2048, init_from="/other") == [
      "init_from: '' -> '/other'", "train.seq_len: 4096 -> 2048"]


# Fresh-user findings after issue 12 ---------------------------------------

from lfjax import cli  # noqa: E402
from lfjax import export  # noqa: E402
from lfjax.tasks import mlm  # noqa: E402
from lfjax import sample  # noqa: E402


def cli_run(capsys, main, *argv):
  code = cli.run(main, [str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err.strip().splitlines()


def test_edited_config_json_is_not_called_a_damaged_checkpoint(run, capsys):
  _, workdir, _ = run
  path = workdir / "config.json"
  saved = json.loads(path.read_text())
  saved["model"]["hidden_size"] = 48  # edited by hand
  path.write_text(json.dumps(saved))
  before = snapshot(workdir)
  code, _, err = cli_run(capsys, evaluate.main, "--workdir", workdir,
                         "--max_chars", 300)
  text = "\n".join(err)
  assert code == 1 and err[0].startswith("error: config: ")
  assert "disagrees with checkpoint step 10" in text
  # The first layer's output projection [heads x head_dim = 4 x 8, hidden]:
  # hidden 32 saved, 48 built from config.json.
  assert "params/blocks/0/attention/out/kernel: [32, 32] in the " \
      "checkpoint, [32, 48] from config.json" in text
  assert "model.hidden_size 32 -> 48" in text  # against the history
  for wrong in ("mv ", "damaged_checkpoints", "strict=False", "Step 8"):
    assert wrong not in text
  assert snapshot(workdir) == before
  assert "strict" not in checkpoints._clean_orbax_text(
      "Tree structures differ. Set `strict=False` to restore anyway. x")


def test_a_rerun_that_trains_nothing_writes_nothing(run, capsys):
  c, workdir, _ = run
  # A run whose config.json predates a field (as lfjax gains fields).
  path = workdir / "config.json"
  saved = json.loads(path.read_text())
  del saved["model"]["attention_impl"]
  path.write_text(json.dumps(saved, indent=1))
  before = snapshot(workdir)
  train.train_and_evaluate(c, workdir)  # plain rerun
  assert snapshot(workdir) == before
  c.model.dropout = 0.2
  train.train_and_evaluate(c, workdir)
  out = capsys.readouterr().out
  assert snapshot(workdir) == before  # neither config.json nor history
  assert "model.dropout 0.1 -> 0.2 had no effect" in out
  assert "resuming" not in out and "is already finished" in out


def test_refused_change_says_which_saved_values_resume(run):
  c, workdir, _ = run
  before = snapshot(workdir)
  c.schedule.steps = (6, 2)  # ends before the checkpoint at 10
  c.model.hidden_size = 64
  with pytest.raises(checkpoints.ConfigChangeError) as e:
    checkpoints.write_config(c, workdir, total=8)
  msg = str(e.value)
  assert "rerun without" not in msg
  assert ("pass the run's saved values (from "
          f"{workdir / 'config.json'}): --config.model.hidden_size=32 "
          "'--config.schedule.steps=(6,4)'; or start") in msg
  assert snapshot(workdir) == before


def test_numeric_flags_are_checked_and_named(run, capsys):
  _, workdir, _ = run
  before = snapshot(workdir)
  for argv, words in [
      (["--stride", 0], "--stride: expected an integer >= 1, got 0"),
      (["--max_chars", -5], "--max_chars: expected 0 (the whole split)"),
      (["--seq_len", 0], "--seq_len: expected an integer >= 1, got 0"),
      (["--batch_size", 0], "--batch_size: expected"),
      # config.eval.seq_len is 64 in this run.
      (["--stride", 9999], "--stride: expected at most the window length "
       "64 (config.eval.seq_len), got 9999"),
      (["--checkpoint", 77], "--checkpoint: expected one of the saved steps "
       "[6, 8, 10], got 77")]:
    code, _, err = cli_run(capsys, evaluate.main, "--workdir", workdir,
                           *argv)
    assert code == 2 and err[0] == f"error: {words}" or (
        code == 2 and err[0].startswith(f"error: {words}")), (argv, err)
  code, _, err = cli_run(capsys, sample.main, "--workdir", workdir,
                         "--checkpoint", 77)
  assert code == 2 and "--checkpoint: expected one of" in err[0]
  code, _, err = cli_run(capsys, mlm.evaluate_main, "--workdir", workdir)
  assert code == 1 and len(err) == 2, err
  assert "is a 'charlm' run, not an MLM" in err[0]
  code, _, err = cli_run(capsys, export.main, "--workdir", workdir, "--to",
                         workdir / "x")
  assert code == 1 and len(err) == 2, err
  assert "is a 'charlm' run, which has no transformers counterpart" in err[0]
  assert snapshot(workdir) == before


def test_partial_evaluation_gets_its_own_file(run, capsys, tmp_path):
  _, workdir, _ = run
  (workdir / "eval_test_10.json").write_text('{"bpc": 1.5}')  # a full one
  code, out, _ = cli_run(capsys, evaluate.main, "--workdir", workdir,
                         "--max_chars", 300)
  assert code == 0, out
  part = workdir / "eval_test_10_chars300.json"
  assert json.loads(part.read_text())["chars_scored"] == 299
  assert str(part) in out
  assert json.loads((workdir / "eval_test_10.json").read_text()) == {
      "bpc": 1.5}
  # A file of the name that holds other settings (the config's defaults
  # changed since) is not replaced: every setting goes into the name.
  settings = {"seq_len": 64, "step": 32, "max_chars": 0}
  tags = {"seq_len": "seq", "step": "stride", "max_chars": "chars"}
  assert common.result_path(workdir, "eval_test_10", settings, settings,
                              tags) == (workdir /
                                        "eval_test_10_seq64_stride32_chars0"
                                        ".json")
  (workdir / "eval_test_10.json").write_text(json.dumps(settings))
  assert common.result_path(workdir, "eval_test_10", settings, settings,
                              tags) == workdir / "eval_test_10.json"
  # A setting that is a path (fine-tuning's --data) or a sha256 names the
  # file by a short hash: the name was the path itself, slashes included,
  # so writing the result failed (no such folder).
  other = {"data": str(tmp_path / "b" / "dev.jsonl")}
  (workdir / "eval_dev_5.json").write_text(json.dumps(
      {"data": str(tmp_path / "a" / "dev.jsonl")}))
  path = common.result_path(workdir, "eval_dev_5", other, other,
                            {"data": "data"})
  assert path.parent == workdir and path.name.startswith("eval_dev_5_data")
  path.write_text("{}")


def test_a_failed_start_leaves_a_new_folder_as_it_was(finished, tmp_path,
                                                      capsys):
  c, done, _ = finished
  # Missing data: refused before anything is written, parents included.
  bad = c.copy_and_resolve_references()
  bad.data.name, bad.data.dir = "enwik8", str(tmp_path / "no_data")
  with pytest.raises(FileNotFoundError, match="enwik8"):
    train.train_and_evaluate(bad, tmp_path / "new" / "run")
  assert not (tmp_path / "new").exists()
  mlm_config = mlm_defaults.base_config()
  mlm_config.init_from = str(tmp_path / "no_checkpoint")
  mlm_config.data.sources = (str(tmp_path / "no_docs"),)
  with pytest.raises(FileNotFoundError, match="tokenizer"):
    train.train_and_evaluate(mlm_config, tmp_path / "new" / "mlm")
  assert not (tmp_path / "new").exists()
  # A start that diverges before its first log, in an empty folder: the
  # loop wrote config.json and its history, then took them back.
  workdir = tmp_path / "empty"
  workdir.mkdir()
  bad = c.copy_and_resolve_references()
  bad.schedule.lrs = (1e30, 1e30)
  with pytest.raises(FloatingPointError, match="no checkpoint was saved"):
    train.train_and_evaluate(bad, workdir)
  assert list(workdir.iterdir()) == []
  capsys.readouterr()
  # The corrected command is a fresh start: the same run as one that never
  # failed, no "resuming ... with" changes in its history.
  train.train_and_evaluate(c, workdir)
  assert "resuming" not in capsys.readouterr().out
  history = metrics.read(workdir / checkpoints.HISTORY)
  assert [(h["step"], h["changes"]) for h in history] == [(0, {})]
  assert checkpoints.saved_steps(workdir) == checkpoints.saved_steps(done)
  assert strip_timing(metrics.read(workdir / "metrics.jsonl")) == (
      strip_timing(metrics.read(done / "metrics.jsonl")))


def test_a_failed_resume_puts_the_config_back(run, capsys):
  c, workdir, _ = run
  before = snapshot(workdir)
  # Two more steps of phase 2 at a learning rate that diverges at once.
  c.schedule.steps = (6, 6)
  lrs = c.schedule.lrs
  c.schedule.lrs = (lrs[0], 1e30)
  with pytest.raises(FloatingPointError, match="at step 12"):
    train.train_and_evaluate(c, workdir)
  assert snapshot(workdir) == before
  capsys.readouterr()
  c.schedule.lrs = lrs
  train.train_and_evaluate(c, workdir)
  assert "resuming from step 10 with schedule.steps [6, 4] -> [6, 6];" in (
      capsys.readouterr().out)
  history = metrics.read(workdir / checkpoints.HISTORY)
  assert [(h["step"], h["changes"]) for h in history] == [
      (0, {}), (10, {"schedule.steps": [[6, 4], [6, 6]]})]
  assert checkpoints.saved_steps(workdir) == [8, 10, 12]


def test_undo_failed_start_keeps_what_was_there(tmp_path):
  # Folders the start made, parents too, go.
  work = tmp_path / "a" / "b"
  with pytest.raises(KeyboardInterrupt):
    with checkpoints.undo_failed_start(work):
      work.mkdir(parents=True)
      (work / "config.json").write_text("{}")
      (work / "checkpoints").mkdir()
      raise KeyboardInterrupt
  assert list(tmp_path.iterdir()) == []
  # A folder with the user's file and a config: both kept as they were.
  work.mkdir(parents=True)
  (work / "notes.txt").write_text("mine")
  (work / "config.json").write_text('{"seed": 0}')
  with pytest.raises(ValueError):
    with checkpoints.undo_failed_start(work):
      (work / "config.json").write_text('{"seed": 1}')
      (work / checkpoints.HISTORY).write_text("{}\n")
      raise ValueError("data")
  assert sorted(p.name for p in work.iterdir()) == ["config.json",
                                                    "notes.txt"]
  assert (work / "config.json").read_text() == '{"seed": 0}'
  # A logged record is the start's result: kept.
  with pytest.raises(ValueError):
    with checkpoints.undo_failed_start(work):
      (work / "config.json").write_text('{"seed": 1}')
      (work / "metrics.jsonl").write_text('{"step": 1, "train_loss": 2.0}\n')
      raise ValueError("step 2")
  assert (work / "config.json").read_text() == '{"seed": 1}'
  assert (work / "metrics.jsonl").exists()
