"""The trainer end to end: loss falls, exact resume, NaN stop, CLI checks."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from lfjax import checkpoints
from lfjax import cli
from lfjax import evaluate
from lfjax import metrics
from lfjax import sample
from lfjax import train
from lfjax.data import chars
from lfjax.tasks import charlm as charlm_task
from lfjax.tasks import common

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fast_compiles")


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(
      name, ROOT / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("data")
  chars.load("pystdlib", d)
  return str(d)


def small_config(data_dir, steps=(12, 8)):
  """The default config's tiny variant, smaller still for the test suite."""
  c = load_config("charlm_default", "tiny")
  c.data.dir = data_dir
  c.model.num_layers = 2
  c.model.hidden_size = 32
  c.model.head_dim = 8
  c.model.ffn_size = 64
  c.model.windows = (4, 8)
  c.model.rel_features = 8
  c.schedule.steps = steps
  c.schedule.seq_lens = (32, 64)
  c.schedule.batch_sizes = (4, 2)
  c.schedule.lrs = (3e-3, 1.5e-3)
  c.log_every = 1
  c.checkpoint_every = 5
  c.eval_every = 10
  c.eval.seq_len = 64
  c.eval.step = 32
  c.eval.batch_size = 4
  c.eval.max_chars = 1000
  return c


def strip_timing(records):
  return [{k: v for k, v in r.items() if k != "tokens_per_s"}
          for r in records]


def test_tiny_run_learns_and_writes_metrics(data_dir, tmp_path):
  c = small_config(data_dir, steps=(60, 20))
  c.log_every = 5
  last = train.train_and_evaluate(c, tmp_path)
  recs = metrics.read(tmp_path / "metrics.jsonl")
  losses = [r["train_loss"] for r in recs if "train_loss" in r]
  assert np.mean(losses[-3:]) < losses[0] - 1.0
  first = recs[0]
  for key in ("step", "train_loss", "train_bpc", "learning_rate",
              "tokens_per_s", "phase", "window", "seq_len", "grad_norm"):
    assert key in first
  assert [r["phase"] for r in recs if "phase" in r][-1] == 2
  assert recs[-1]["step"] == 80 and "eval_bpc" in recs[-1]
  assert math.isfinite(last["eval_bpc"]) and last["eval_bpc"] < 8
  assert json.loads((tmp_path / "config.json").read_text())["seed"] == 0

  # The run loads back for evaluation and sampling.
  _, model, step, scale, corpus = checkpoints.load_trained(tmp_path)
  assert (step, scale) == (80, 2)
  value, count = charlm_task.evaluate_model(
      model, corpus, split="valid", seq_len=64, step=32, batch_size=4,
      max_chars=1000, window_scale=scale)
  assert abs(value - last["eval_bpc"]) < 1e-5 and count == 999
  # The same checkpoint through the other relative-position path (q/k
  # features instead of the table), from the command line.
  assert cli.run(evaluate.main, [
      "--workdir", str(tmp_path), "--split", "valid", "--max_chars", "1000",
      "--rel_impl", "features"]) == 0
  feats = json.loads((tmp_path / "eval_valid_80_chars1000_features.json"
                      ).read_text())
  assert feats["rel_impl"] == "features" and feats["chars_scored"] == 999
  assert abs(feats["bpc"] - last["eval_bpc"]) < 1e-5
  prompt = corpus.encode("def f(x):\n")
  outs = [np.concatenate(list(sample.sample(
      model, prompt, 40, window_scale=scale, seed=s, chunk=16)), axis=1)
          for s in (0, 0, 1)]
  assert outs[0].shape == (1, 40)
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not np.array_equal(outs[0], outs[2])


class Interrupt(Exception):
  pass


def test_killed_run_resumes_exactly(data_dir, tmp_path, monkeypatch):
  c = small_config(data_dir)
  train.train_and_evaluate(c, tmp_path / "straight")
  want = strip_timing(metrics.read(tmp_path / "straight" / "metrics.jsonl"))

  # Die at step 14: after the checkpoint at 12 (phase end) and an eval at 10,
  # with metrics for 13-14 already written that the restart must replace.
  write = metrics.JsonlWriter.write

  def dying_write(self, step, values):
    write(self, step, values)
    if step == 14:
      raise Interrupt()
  monkeypatch.setattr(metrics.JsonlWriter, "write", dying_write)
  with pytest.raises(Interrupt):
    train.train_and_evaluate(c, tmp_path / "killed")
  monkeypatch.setattr(metrics.JsonlWriter, "write", write)
  # A torn line from the kill is dropped too.
  with open(tmp_path / "killed" / "metrics.jsonl", "a") as f:
    f.write('{"step": 15, "train_lo')
  train.train_and_evaluate(c, tmp_path / "killed")
  got = strip_timing(metrics.read(tmp_path / "killed" / "metrics.jsonl"))
  assert got == want  # bit-identical losses, gradients norms and eval


def test_micro_batches_accumulate_to_the_whole_batch_step(data_dir,
                                                          tmp_path):
  # The char-LM runs on lfjax.train_step: batch 4 as two passes of 2 (and
  # phase 2's batch 2 as two of 1) gives the whole batch's losses and
  # updates, up to float rounding; dropout off, as its draws are per pass.
  def run(name, micro):
    c = small_config(data_dir, steps=(6, 4))
    c.model.dropout = 0.0
    c.eval_every = 0
    c.schedule.micro_batch_sizes = micro
    train.train_and_evaluate(c, tmp_path / name)
    return [r for r in metrics.read(tmp_path / name / "metrics.jsonl")
            if "train_loss" in r]
  whole, parts = run("whole", ()), run("parts", (2, 1))
  assert [r["step"] for r in whole] == [r["step"] for r in parts] == list(
      range(1, 11))
  for key in ("train_loss", "grad_norm"):
    np.testing.assert_allclose([r[key] for r in parts],
                               [r[key] for r in whole], rtol=2e-5)
  c = small_config(data_dir)
  c.schedule.micro_batch_sizes = (3, 2)
  with pytest.raises(ValueError, match=r"schedule.micro_batch_sizes\[0\]: "
                                       r"expected a divisor of "
                                       r"schedule.batch_sizes\[0\]=4"):
    train.train_and_evaluate(c, tmp_path / "bad")


def test_nan_stops_with_a_clear_message(data_dir, tmp_path):
  c = small_config(data_dir)
  c.schedule.lrs = (1e30, 1e30)
  with pytest.raises(FloatingPointError, match=r"train loss is nan at step "
                                               r"\d+; stopping without"):
    train.train_and_evaluate(c, tmp_path)


def test_schedule_and_learning_rate(data_dir):
  c = small_config(data_dir, steps=(100, 20))
  c.optim.max_warmup_steps = 5
  lr = charlm_task.learning_rate(c)
  got = [float(lr(jnp.asarray(s))) for s in (0, 4, 5, 99, 100, 101, 119)]
  want = [3e-3 / 5, 3e-3, 3e-3, 3e-3, 1.5e-3 / 2, 1.5e-3, 1.5e-3]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  c.schedule.lrs = (1e-3,)
  with pytest.raises(ValueError, match=r"schedule: expected one value per "
                                       r"phase"):
    charlm_task.phases(c)


@pytest.mark.parametrize("name", ["charlm_default", "charlm_text8_small",
                                  "charlm_enwik8_small",
                                  "charlm_enwik8_large"])
def test_configs_build_their_models(name):
  for arg in (None, "tiny"):
    c = load_config(name, arg)
    cfg = checkpoints.model_config(c, 256)
    assert len(cfg.windows) == cfg.num_layers
    charlm_task.phases(c)
  with pytest.raises(ValueError, match=r"config arg: expected"):
    load_config(name, "huge")


def test_cli_rejects_a_mistyped_field(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  r = subprocess.run(
      [sys.executable, "-m", "lfjax.train",
       "--config", "configs/charlm_default.py:tiny",
       "--config.model.windws=3", "--workdir", str(tmp_path)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0
  assert "windws" in r.stderr and "windows" in r.stderr


def test_resume_on_another_corpus_says_so_once(data_dir, tmp_path, capsys):
  c = small_config(data_dir, steps=(4, 2))
  c.checkpoint_every, c.eval_every, c.log_every = 2, 0, 2
  c.eval.max_chars = 200
  workdir = tmp_path / "run"
  train.train_and_evaluate(c, workdir)
  meta = json.loads(next(pathlib.Path(data_dir).glob("pystdlib-*/meta.json"))
                    .read_text())
  name, sha = f"pystdlib-{meta['python']}", meta["sha256"]
  record = workdir / common.CORPUS_HISTORY
  assert metrics.read(record) == [{"step": 0, "corpus": name, "sha256": sha}]
  # The evaluation names the corpus it scored.
  assert cli.run(evaluate.main, ["--workdir", str(workdir), "--split",
                                 "valid", "--max_chars", "200"]) == 0
  result = json.loads((workdir / "eval_valid_6_chars200.json").read_text())
  assert (result["dataset"], result["dataset_sha256"]) == (name, sha)
  assert "the run trained on" not in capsys.readouterr().err

  # As if the run had trained its first 6 steps on other data.
  fake = "ab" * 32
  record.write_text(json.dumps({"step": 0, "corpus": name, "sha256": fake})
                    + "\n")
  faked = record.read_bytes()
  capsys.readouterr()
  # Evaluating on other data than the run trained on says so, and a
  # result of another corpus is kept, not overwritten.
  old_result = workdir / "eval_valid_6_chars200.json"
  old_result.write_text(json.dumps(dict(result, dataset_sha256=fake)))
  kept = old_result.read_bytes()
  assert cli.run(evaluate.main, ["--workdir", str(workdir), "--split",
                                 "valid", "--max_chars", "200"]) == 0
  assert (f"note: the run trained on {name} sha256 {fake[:12]}; this is "
          f"{name} sha256 {sha[:12]}") in capsys.readouterr().err
  assert old_result.read_bytes() == kept
  new = [p for p in workdir.glob("eval_valid_6_*.json") if p != old_result]
  assert len(new) == 1 and "/" not in new[0].name[len("eval_valid_6"):]
  assert json.loads(new[0].read_text())["dataset_sha256"] == sha
  # The plain name is for the data the checkpoint trained on: a result on
  # other data gets its own name even when it is the first one written.
  for p in workdir.glob("eval_valid_6_*.json"):
    p.unlink()
  assert cli.run(evaluate.main, ["--workdir", str(workdir), "--split",
                                 "valid", "--max_chars", "200"]) == 0
  [first] = workdir.glob("eval_valid_6_*.json")
  assert first.name.startswith("eval_valid_6_chars200_data"), first.name
  # A resume that fails before its first log puts the record back too.
  c.schedule.steps = (4, 4)
  lrs = c.schedule.lrs
  c.schedule.lrs = (lrs[0], 1e30)
  with pytest.raises(FloatingPointError, match="at step 8"):
    train.train_and_evaluate(c, workdir)
  assert record.read_bytes() == faked
  capsys.readouterr()
  c.schedule.lrs = lrs
  train.train_and_evaluate(c, workdir)
  out = capsys.readouterr().out
  want = (f"warning: the training data changed since step 6: {name} sha256 "
          f"{fake[:12]} (from step 0) -> {name} sha256 {sha[:12]}; training "
          "continues on the new data")
  assert [l for l in out.splitlines() if "training data" in l] == [
      f"{want} (recorded in {record})"]
  assert checkpoints.saved_steps(workdir)[-1] == 8
  # Checkpoint 6 was trained on the old data (the record from step 6 holds
  # after it), checkpoint 8 partly on the new: only 6 gets the note.
  for ckpt, noted in ((6, True), (8, False)):
    assert cli.run(evaluate.main, ["--workdir", str(workdir), "--split",
                                   "valid", "--max_chars", "200",
                                   "--checkpoint", str(ckpt)]) == 0
    assert ("the run trained on" in capsys.readouterr().err) == noted, ckpt
  assert metrics.read(record) == [
      {"step": 0, "corpus": name, "sha256": fake},
      {"step": 6, "corpus": name, "sha256": sha}]
  # The same corpus again: nothing said, nothing written.
  corpus = chars.load("pystdlib", data_dir)
  common.record_corpus(workdir, corpus.name, corpus.sha256, 8)
  assert capsys.readouterr().out == ""
  assert len(metrics.read(record)) == 2
  # A run from before the record was kept gets one from its resume on.
  record.unlink()
  common.record_corpus(workdir, corpus.name, corpus.sha256, 8)
  assert "no record of the data it trained on before step 8" in (
      capsys.readouterr().out)
  assert metrics.read(record) == [{"step": 8, "corpus": name, "sha256": sha}]
