"""python -m lfjax.plot: curves drawn from metrics.jsonl exactly as logged,
several runs overlaid and named, one `error:` line for a folder that is not
a run. Runs are written by lfjax.metrics.JsonlWriter (the trainer's writer)
with the keys lfjax.loop logs, so no training is needed."""

import json
import math

from tests import optional

optional.need("matplotlib")

from lfjax import cli  # noqa: E402
from lfjax import metrics  # noqa: E402
from lfjax import plot  # noqa: E402


def write_run(path, lr_drop_at=4, eval_loss=False, nan_at=None):
  """A two-phase run logged every step, evaluated at steps 4 and 6; the
  first record's tokens/s is None (its interval held only the compile)."""
  path.mkdir(parents=True)
  w = metrics.JsonlWriter(path / "metrics.jsonl")
  want = {"train_bpc": [], "eval_bpc": [], "tokens_per_s": [],
          "learning_rate": []}
  for step in range(1, 7):
    phase = 1 if step <= lr_drop_at else 2
    bpc = 5.0 - 0.25 * step
    lr = 1e-3 if phase == 1 else 5e-4
    tps = None if step == 1 else 1000.0 + step
    if step == nan_at:
      bpc = math.nan
    w.write(step, dict(train_loss=bpc * math.log(2), train_bpc=bpc,
                       learning_rate=lr, tokens_per_s=tps, phase=phase,
                       seq_len=64 * phase, window=8 * phase))
    if step != nan_at:
      want["train_bpc"].append((step, bpc))
    want["learning_rate"].append((step, lr))
    if tps is not None:
      want["tokens_per_s"].append((step, tps))
    if step in (4, 6):
      rec = {"eval_bpc": bpc + 0.5, "eval_chars": 1000}
      if eval_loss:
        rec["eval_loss"] = (bpc + 0.5) * math.log(2)
      w.write(step, rec)
      want["eval_bpc"].append((step, bpc + 0.5))
  return want


def lines_by_label(fig):
  out = {}
  for ax in fig.axes:
    for line in ax.get_lines():
      label = line.get_label()
      if not label.startswith("_"):
        out[(ax.get_title(), label)] = list(zip(
            map(int, line.get_xdata()), map(float, line.get_ydata())))
  return out


def test_lines_hold_the_logged_values(tmp_path):
  want_a = write_run(tmp_path / "a")
  want_b = write_run(tmp_path / "b", lr_drop_at=3, eval_loss=True, nan_at=2)
  runs = [("a", plot.load_run(tmp_path / "a")),
          ("b", plot.load_run(tmp_path / "b"))]
  fig = plot.plot_runs(runs)
  got = lines_by_label(fig)
  for name, want in (("a", want_a), ("b", want_b)):
    assert got[("bits per character", f"{name} train")] == want["train_bpc"]
    assert got[("bits per character", f"{name} eval")] == want["eval_bpc"]
    assert got[("learning rate", name)] == want["learning_rate"]
    # The compile-only interval (None) is left out, not drawn as 0.
    assert got[("throughput", name)] == want["tokens_per_s"]
  # The NaN step (stored as null) is missing from b's BPC curve.
  assert 2 not in [s for s, _ in got[("bits per character", "b train")]]
  # Only b logged an eval loss.
  assert ("loss", "b eval") in got and ("loss", "a eval") not in got
  # Phase boundaries: a's last phase-1 record is step 4, b's step 3.
  vlines = sorted({line.get_xdata()[0] for line in fig.axes[0].get_lines()
                   if line.get_label().startswith("_")})
  assert vlines == [3, 4]
  assert fig.axes[2].get_yscale() == "log"


def test_a_panel_without_data_says_so(tmp_path):
  (tmp_path / "r").mkdir()
  (tmp_path / "r" / "metrics.jsonl").write_text(
      json.dumps({"step": 5, "train_loss": 1.0}) + "\n")
  fig = plot.plot_runs([("r", plot.load_run(tmp_path / "r"))])
  texts = {ax.get_title(): [t.get_text() for t in ax.texts]
           for ax in fig.axes}
  assert texts["throughput"] == ["no data in these runs"]
  assert texts["loss"] == []


def run(capsys, *argv):
  code = cli.run(plot.main, list(argv))
  out, err = capsys.readouterr()
  return code, out, err.strip().splitlines()


def test_cli_writes_a_png_with_distinct_names(tmp_path, capsys):
  write_run(tmp_path / "x" / "run")
  write_run(tmp_path / "y" / "run")
  out = tmp_path / "curves.png"
  code, text, err = run(capsys, str(tmp_path / "x" / "run"),
                        str(tmp_path / "y" / "run"), "--out", str(out))
  assert code == 0, err
  assert "x/run, y/run" in text
  data = out.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def short_error(result, want_code, *words):
  code, _, err = result
  assert code == want_code, err
  assert err and err[0].startswith("error: "), err
  assert len(err) <= 2 and "Traceback" not in "\n".join(err), err
  for w in words:
    assert w in err[0], (w, err)


def test_cli_errors(tmp_path, capsys):
  write_run(tmp_path / "ok")
  out = str(tmp_path / "o.png")
  (tmp_path / "norun").mkdir()
  short_error(run(capsys, str(tmp_path / "norun"), "--out", out), 1,
              str(tmp_path / "norun"), "metrics.jsonl")
  short_error(run(capsys, str(tmp_path / "missing"), "--out", out), 1,
              str(tmp_path / "missing"), "no such folder")
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "metrics.jsonl").write_text("")
  short_error(run(capsys, str(tmp_path / "empty"), "--out", out), 1,
              "empty file")
  (tmp_path / "torn").mkdir()
  (tmp_path / "torn" / "metrics.jsonl").write_text('{"step": 1, "tra\n')
  short_error(run(capsys, str(tmp_path / "torn"), "--out", out), 1,
              "does not parse")
  short_error(run(capsys, str(tmp_path / "ok"), "--out",
                   str(tmp_path / "o.xyz")), 2, "--out", ".png", "o.xyz")
  short_error(run(capsys, str(tmp_path / "ok"), "--out",
                   str(tmp_path / "nodir" / "o.png")), 2, "--out",
              "does not exist")
  short_error(run(capsys, str(tmp_path / "ok"), "--out", out, "--names",
                   "a,b"), 2, "--names", "expected 1")
  short_error(run(capsys, "--out", out), 2, "WORKDIR")
  assert not (tmp_path / "o.png").exists()


def test_fine_tuning_eval_metrics_get_panels_and_no_empty_bpc(tmp_path):
  # Keys as lfjax.tasks.finetune logs them: no BPC; eval_<metric> at the
  # evaluations (QA's EM/F1 here; a second run with classification's).
  (tmp_path / "qa").mkdir()
  w = metrics.JsonlWriter(tmp_path / "qa" / "metrics.jsonl")
  for step in (5, 10):
    w.write(step, dict(train_loss=3.0 / step, grad_norm=1.0,
                       learning_rate=1e-3, tokens_per_s=100.0, phase=1))
  w.write(5, {"eval_exact_match": 25.0, "eval_f1": 40.0})
  w.write(10, {"eval_exact_match": 50.0, "eval_f1": 62.5})
  (tmp_path / "cls").mkdir()
  w = metrics.JsonlWriter(tmp_path / "cls" / "metrics.jsonl")
  w.write(4, dict(train_loss=0.7, learning_rate=1e-3, tokens_per_s=90.0))
  w.write(4, {"eval_accuracy": 0.75, "eval_macro_f1": 0.5})
  fig = plot.plot_runs([("qa", plot.load_run(tmp_path / "qa")),
                        ("cls", plot.load_run(tmp_path / "cls"))])
  assert [ax.get_title() for ax in fig.axes] == [
      "loss", "learning rate", "throughput", "eval exact match", "eval f1",
      "eval accuracy", "eval macro f1"]
  got = lines_by_label(fig)
  assert got[("eval exact match", "qa eval")] == [(5, 25.0), (10, 50.0)]
  assert got[("eval f1", "qa eval")] == [(5, 40.0), (10, 62.5)]
  assert got[("eval accuracy", "cls eval")] == [(4, 0.75)]
  assert ("eval accuracy", "qa eval") not in got
  assert all(not ax.texts for ax in fig.axes)  # no "no data" panel
