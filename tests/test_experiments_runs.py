"""The reproduction scripts' run handling (experiments/commands.py,
run_folders.py, results_text.py and the scripts' argument checks), without
training: the lfjax.train subprocess is replaced by a stand-in that
writes checkpoint folders, and run folders are built by hand. Expected timings, steps and names are written out here."""

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import commands  # noqa: E402
import results_text  # noqa: E402
import run_folders  # noqa: E402


def _load(name):
  spec = importlib.util.spec_from_file_location(name, EXPERIMENTS /
                                                f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _table4_config(variant, seed, steps=None):
  """The JSON config of configs/charlm_table4.py:<variant>,quick with a
  seed (and steps), read from the config file itself."""
  spec = importlib.util.spec_from_file_location(
      "charlm_table4", REPO / "configs" / "charlm_table4.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(f"{variant},quick")
  c.seed = seed
  if steps is not None:
    c.schedule.steps = (steps,)
  return json.loads(c.to_json())


def _run_folder(path, config, steps=(), timing=None):
  """A run folder as lfjax.train leaves it: config.json, metrics.jsonl
  and finalized checkpoint folders."""
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config))
  for s in steps:
    (path / "checkpoints" / str(s)).mkdir(parents=True)
  (path / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "train_loss": 1.0}) + "\n" for s in steps))
  if timing is not None:
    (path / "timing.json").write_text(json.dumps(timing))
  return path


class FakeTrainer:
  """Stands in for commands.run where run_folders.train calls it:
  'trains' to `to_step` (writes its checkpoint folder), reports `usage`,
  and optionally raises after it as an interrupted script would."""

  def __init__(self, to_step, usage, raises=None):
    self.to_step, self.usage, self.raises, self.calls = (
        to_step, usage, raises, [])

  def __call__(self, args, log_path, on_exit=None):
    self.calls.append(args)
    workdir = pathlib.Path(args[args.index("--workdir") + 1])
    if self.to_step:
      (workdir / "checkpoints" / str(self.to_step)).mkdir(parents=True,
                                                           exist_ok=True)
    on_exit(self.usage)
    if self.raises:
      raise self.raises
    return self.usage


CONFIG = "configs/charlm_table4.py:increasing,quick"  # 60 steps


# Timing segments --------------------------------------------------------------


def test_segments_covering_the_run_add_up():
  segments = [
      dict(from_step=300, to_step=550, wall_s=50.0, cpu_s=60.0,
           peak_rss_gib=1.5, load_average=[0.5, 3.0]),
      dict(from_step=0, to_step=300, wall_s=100.0, cpu_s=150.0,
           peak_rss_gib=1.0, load_average=[1.0, 2.0])]
  t = run_folders.summarize(segments, 550)
  assert t["complete"] and t["launches"] == 2
  assert t["wall_s"] == 150.0 and t["cpu_s"] == 210.0
  assert t["peak_rss_gib"] == 1.5 and t["load_average"] == (1.0, 3.0)


@pytest.mark.parametrize("segments,newest,why", [
    ([dict(from_step=300, to_step=550, wall_s=9.0, cpu_s=9.0,
           peak_rss_gib=0.4, load_average=[1, 1])], 550, "steps 0-300"),
    ([dict(from_step=0, to_step=300, wall_s=9.0, cpu_s=9.0,
           peak_rss_gib=0.4, load_average=[1, 1])], 550, "steps 300-550"),
    ([], 550, "no timing record"),
])
def test_segments_with_a_gap_give_no_numbers(segments, newest, why):
  t = run_folders.summarize(segments, newest)
  assert not t["complete"] and why in t["why"]
  assert t["wall_s"] is None and t["peak_rss_gib"] is None
  assert t["cpu_s"] is None


def test_old_single_record_reads_as_one_complete_training(tmp_path):
  old = {"wall_s": 1234.5, "peak_rss_gib": 2.25, "cpu_s": 2400.0,
         "load_average": [1.5, 2.5], "command": "lfjax.train ..."}
  run = _run_folder(tmp_path / "longformer_s0", {}, steps=(400, 500, 550),
                    timing=old)
  t = run_folders.timing(run)
  assert t["complete"] and t["launches"] == 1
  assert t["wall_s"] == 1234.5 and t["peak_rss_gib"] == 2.25
  assert t["cpu_s"] == 2400.0 and t["load_average"] == (1.5, 2.5)


def test_resume_after_a_kill_without_record_is_incomplete(tmp_path,
                                                           monkeypatch):
  run = _run_folder(tmp_path / "increasing_s0",
                    _table4_config("increasing", 0), steps=(30,))
  fake = FakeTrainer(60, commands.Usage(0, 12.0, 0.5, 20.0, (1.0, 2.0)))
  monkeypatch.setattr(run_folders, "run", fake)
  _, t = run_folders.train(CONFIG, run, ["--config.seed=0"])
  assert len(fake.calls) == 1
  assert not t["complete"] and "steps 0-30" in t["why"]
  assert t["wall_s"] is None
  (seg,) = json.loads((run / "timing.json").read_text())["segments"]
  assert (seg["from_step"], seg["to_step"], seg["wall_s"]) == (30, 60, 12.0)
  notes = results_text.timing_notes([("increasing seed 0", t)])
  assert notes[0].startswith("`?`: timing unknown") and "steps 0-30" in (
      notes[0])


def test_killed_then_resumed_run_sums_its_launches(tmp_path, monkeypatch):
  run = tmp_path / "increasing_s0"
  # First launch: the script is interrupted after the trainer saved step 30.
  monkeypatch.setattr(run_folders, "run", FakeTrainer(
      30, commands.Usage(-15, 40.0, 0.75, 70.0, (1.0, 1.5)),
      raises=KeyboardInterrupt()))
  _run_folder(run, _table4_config("increasing", 0))  # config, no steps
  with pytest.raises(KeyboardInterrupt):
    run_folders.train(CONFIG, run, ["--config.seed=0"])
  monkeypatch.setattr(run_folders, "run", FakeTrainer(
      60, commands.Usage(0, 25.0, 0.5, 45.0, (1.5, 2.0))))
  _, t = run_folders.train(CONFIG, run, ["--config.seed=0"])
  assert t["complete"] and t["launches"] == 2
  assert t["wall_s"] == 65.0 and t["cpu_s"] == 115.0
  assert t["peak_rss_gib"] == 0.75 and t["load_average"] == (1.0, 2.0)


def test_a_launch_that_trains_nothing_is_no_segment(tmp_path, monkeypatch):
  run = _run_folder(tmp_path / "increasing_s0",
                    _table4_config("increasing", 0), steps=(30,))
  fake = FakeTrainer(None, commands.Usage(0, 10.0, 0.41, 9.0, (1, 1)))
  monkeypatch.setattr(run_folders, "run", fake)
  with pytest.raises(commands.Error, match="ended at step 30 of 60"):
    run_folders.train(CONFIG, run, ["--config.seed=0"])
  assert not (run / "timing.json").exists()


def test_a_finished_run_is_read_not_relaunched(tmp_path, monkeypatch):
  run = _run_folder(tmp_path / "increasing_s0",
                    _table4_config("increasing", 0), steps=(60,))
  fake = FakeTrainer(60, None)
  monkeypatch.setattr(run_folders, "run", fake)
  records, t = run_folders.train(CONFIG, run, ["--config.seed=0"])
  assert fake.calls == [] and records[-1]["step"] == 60
  assert not t["complete"]  # finished by a process nobody timed


# Reusing run folders ----------------------------------------------------------


def test_longer_run_than_requested_is_refused(tmp_path):
  run = _run_folder(tmp_path / "increasing_s0",
                    _table4_config("increasing", 0), steps=(60,))
  want = run_folders.requested_config(
      CONFIG, ["--config.seed=0", "--config.schedule.steps=(30,)"])
  with pytest.raises(commands.Error, match=r"60 steps.*30 requested"
                     r".*another --root \(or --steps\)"):
    run_folders.check_reuse(want, run, "--root (or --steps)")


def test_other_config_is_refused_and_longer_schedule_resumes(tmp_path):
  run = _run_folder(tmp_path / "increasing_s0",
                    _table4_config("increasing", 0), steps=(60,))
  other_seed = run_folders.requested_config(CONFIG, ["--config.seed=1"])
  with pytest.raises(commands.Error, match="seed: 0 in the run, 1 "
                     "requested"):
    run_folders.check_reuse(other_seed, run, "--root")
  longer = run_folders.requested_config(
      CONFIG, ["--config.seed=0", "--config.schedule.steps=(120,)"])
  assert run_folders.check_reuse(longer, run, "--root") == "train"
  same = run_folders.requested_config(CONFIG, ["--config.seed=0"])
  assert run_folders.check_reuse(same, run, "--root") == "done"


def test_killed_longer_schedule_is_refused_at_the_requested_step(tmp_path):
  # Started as 120 steps, killed after saving step 60; 60 are requested.
  run = _run_folder(tmp_path / "increasing_s0",
                    _table4_config("increasing", 0, steps=120), steps=(60,))
  want = run_folders.requested_config(CONFIG, ["--config.seed=0"])
  with pytest.raises(commands.Error, match="120 steps"):
    run_folders.check_reuse(want, run, "--root")


def test_fine_tuning_runs_take_their_steps_from_the_caller(tmp_path):
  # A fine-tuning config has train.epochs, no schedule or steps.
  config = {"task": "summarization", "seed": 0, "train": {"epochs": 1.0}}
  with pytest.raises(commands.Error, match="pass steps="):
    run_folders.total_steps(config)
  assert run_folders.total_steps(config, 150) == 150
  assert run_folders.check_reuse(config, tmp_path / "none", "--root",
                                 150) == "train"
  run = _run_folder(tmp_path / "L256_s0", config, steps=(150,))
  assert run_folders.check_reuse(config, run, "--root", 150) == "done"
  with pytest.raises(commands.Error, match="newest checkpoint 150.*the 100 "
                     "requested"):
    run_folders.check_reuse(config, run, "--root", 100)
  killed = _run_folder(tmp_path / "L256_s1", config, steps=(60,))
  assert run_folders.check_reuse(config, killed, "--root", 150) == "train"
  other = {"task": "summarization", "seed": 1, "train": {"epochs": 1.0}}
  with pytest.raises(commands.Error, match="seed: 0 in the run, 1"):
    run_folders.check_reuse(other, run, "--root", 150)


def test_table4_steps_mismatch_is_one_error_line(tmp_path, capsys):
  table4 = _load("table4_windows")
  _run_folder(tmp_path / "quick" / "decreasing_s0",
              _table4_config("decreasing", 0), steps=(60,))
  with pytest.raises(SystemExit) as e:
    commands.main_guard(lambda: table4.main(
        ["--quick", "--seeds", "0", "--steps", "30", "--root",
         str(tmp_path)]))
  assert e.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "--steps" in err
  assert "Traceback" not in err


# Seeds --------------------------------------------------------------------------


@pytest.mark.parametrize("text,problem", [("0,0,1,1", "distinct"),
                                          ("1,-2", "[0, 2147483647]"),
                                          ("9" * 20, "[0, 2147483647]"),
                                          ("a", "integers")])
def test_bad_seeds_are_a_usage_error(text, problem, capsys):
  table4 = _load("table4_windows")
  with pytest.raises(SystemExit) as e:
    table4.parse_args(["--seeds", text])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "--seeds" in err and problem in err


@pytest.mark.parametrize("argv,problem", [
    (["--root", ""], "--root: expected a folder, got ''"),
    (["--root", "{file}"], "--root: expected a folder, got the file"),
    (["--root", "/proc/lfjax_no"], "--root: cannot create the folder"),
    (["--out", "{tmp}"], "--out: expected a results file (.md), got the "
     "folder"),
    (["--out", "{file}/x.md"], "--out (its folder): expected a folder"),
    (["--out", "/proc/x.md"], "--out (its folder): cannot write in the "
     "folder /proc"),
])
def test_bad_root_or_out_is_a_usage_error_before_any_run(argv, problem,
                                                        tmp_path, capsys):
  """Found by a fresh-user check: these were tracebacks, the --out ones only
  after the whole training had run."""
  (tmp_path / "afile").write_text("x")
  argv = [a.format(tmp=tmp_path, file=tmp_path / "afile") for a in argv]
  if "--root" not in argv:  # not the default /tmp/lfjax_table*
    argv += ["--root", str(tmp_path / "runs")]
  for script in ("table2_charlm", "table4_windows"):
    with pytest.raises(SystemExit) as e:
      _load(script).parse_args(["--quick"] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert problem in err[-1] and "Traceback" not in "".join(err), err
  assert (tmp_path / "afile").read_text() == "x"


def test_good_seeds_parse():
  table4 = _load("table4_windows")
  assert table4.parse_args(["--seeds", "2,0,1"]).seeds == [2, 0, 1]


# The child dies with the script ----------------------------------------------

SLEEPER = ("import os, sys, time\n"
           "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\n"
           "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
           "time.sleep(60)\n")


def _wait_for(path, timeout=20.0):
  deadline = time.monotonic() + timeout
  while not path.exists():
    assert time.monotonic() < deadline, f"{path} never appeared"
    time.sleep(0.02)
  return int(path.read_text())


def _gone(pid, timeout=10.0):
  """True once pid no longer runs (reaped, or a zombie nobody reaps)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      state = pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
      return True
    if state == "Z":
      return True
    time.sleep(0.05)
  return False


@pytest.fixture
def sleeper(tmp_path, monkeypatch):
  (tmp_path / "lfjax_test_sleeper.py").write_text(SLEEPER)
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  return tmp_path / "child.pid"


needs_main_thread = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signals reach the main thread only")


@needs_main_thread
@pytest.mark.parametrize("signum,raised,code", [
    (signal.SIGTERM, SystemExit, 143), (signal.SIGINT, KeyboardInterrupt,
                                        None)])
def test_child_is_stopped_when_the_script_is_interrupted(
    sleeper, tmp_path, signum, raised, code):
  ended = []

  def interrupt():
    _wait_for(sleeper)
    os.kill(os.getpid(), signum)
  timer = threading.Thread(target=interrupt, daemon=True)
  timer.start()
  with pytest.raises(raised) as e:
    commands.run(["lfjax_test_sleeper", str(sleeper)],
                   tmp_path / "child.log", on_exit=ended.append)
  timer.join()
  if code is not None:
    assert e.value.code == code
  pid = int(sleeper.read_text())
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)  # terminated and reaped by run()
  assert ended and ended[0].code == -signal.SIGTERM


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="PR_SET_PDEATHSIG is Linux's")
def test_child_dies_with_a_killed_script(sleeper, tmp_path):
  script = (f"import sys; sys.path.insert(0, {str(EXPERIMENTS)!r}); "
            "import commands; commands.run(['lfjax_test_sleeper', "
            f"{str(sleeper)!r}], {str(tmp_path / 'child.log')!r})")
  parent = subprocess.Popen([sys.executable, "-c", script],
                            stdout=subprocess.DEVNULL)
  try:
    child = _wait_for(sleeper)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _gone(child), f"child {child} outlived its killed parent"
  finally:
    parent.kill()


# Reports what the kernel holds for the process the script started.
# PR_GET_PDEATHSIG is 2 in linux/prctl.h.
PDEATHSIG_REPORTER = (
    "import ctypes, json, os, pathlib\n"
    "sig = ctypes.c_int(-1)\n"
    "ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)\n"
    "argv = pathlib.Path('/proc/self/cmdline').read_bytes().split(b'\\0')\n"
    "print(json.dumps(dict(pdeathsig=sig.value, ppid=os.getppid(),\n"
    "                      argv=[a.decode() for a in argv if a])))\n")
_fork_hook_calls = []
_fork_hook_armed = []
os.register_at_fork(  # cannot be unregistered: inert unless armed
    before=lambda: _fork_hook_armed and _fork_hook_calls.append(1))


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="PR_SET_PDEATHSIG is Linux's")
def test_child_has_the_death_signal_without_a_python_fork(tmp_path,
                                                          monkeypatch,
                                                          capsys):
  # A preexec_fn makes CPython run the at-fork hooks (JAX's warns of
  # os.fork() in a multithreaded process); the command must still be this
  # process's own child, under its own argv, with SIGTERM as its signal.
  (tmp_path / "lfjax_test_pdeathsig.py").write_text(PDEATHSIG_REPORTER)
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  log = tmp_path / "child.log"
  _fork_hook_armed.append(True)
  try:
    commands.run(["lfjax_test_pdeathsig"], log)
  finally:
    _fork_hook_armed.clear()
  assert _fork_hook_calls == []
  report = json.loads(log.read_text().splitlines()[-1])
  assert report == dict(pdeathsig=signal.SIGTERM, ppid=os.getpid(),
                        argv=[sys.executable, "-m", "lfjax_test_pdeathsig"])
  printed = capsys.readouterr().out
  assert printed.startswith("$ ") and printed.rstrip().endswith(
      "python -m lfjax_test_pdeathsig")


def test_failed_command_is_one_error_with_the_log_tail(tmp_path,
                                                        monkeypatch):
  (tmp_path / "lfjax_test_fail.py").write_text(
      "print('loading'); raise SystemExit('disk full')\n")
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  log = tmp_path / "x.log"
  with pytest.raises(commands.Error) as e:
    commands.run(["lfjax_test_fail"], log)
  text = str(e.value)
  assert "exited with status 1" in text and str(log) in text
  assert "loading" in text and "disk full" in text


# Figure 1, results files, plot labels -----------------------------------------


def test_figure1_quick_writes_its_own_file_and_links_its_png(tmp_path,
                                                               monkeypatch):
  fig1 = _load("figure1_memory_time")
  results = REPO / "experiments" / "results"
  assert fig1.parse_args([]).out == results / "figure1.md"
  quick = fig1.parse_args(["--quick"])
  assert quick.out == results / "figure1_quick.md"
  assert any("capped at 2048" in n for n in quick.notes)
  monkeypatch.chdir(tmp_path)
  args = fig1.parse_args(["--quick", "--out", "sub/fig_x.md"])
  assert args.out == tmp_path / "sub" / "fig_x.md"
  monkeypatch.setattr(fig1, "versions", lambda: "versions")
  args.load = 0.5
  setup = dict(batch=1, hidden=256, heads=4, window=256)
  text = fig1.report(args, "cmd", [], [], 60.0, setup)
  assert "![Figure 1](fig_x.png)" in text and "figure1.png" not in text


@pytest.mark.parametrize("argv,flag", [
    (["--seqs", "0,-5"], "--seqs"), (["--seqs", "x"], "--seqs"),
    (["--min_seq", "0"], "--min_seq"), (["--max_seq", "-1"], "--max_seq"),
    (["--repeats", "0"], "--repeats"), (["--batch", "0"], "--batch"),
    (["--min_seq", "4096", "--max_seq", "1024"], "--min_seq")])
def test_figure1_bad_lengths_are_usage_errors(argv, flag, capsys):
  fig1 = _load("figure1_memory_time")
  with pytest.raises(SystemExit) as e:
    fig1.parse_args(argv)
  assert e.value.code == 2 and flag in capsys.readouterr().err


def test_figure1_plot_only_without_file_is_one_error(tmp_path):
  fig1 = _load("figure1_memory_time")
  with pytest.raises(SystemExit) as e:
    fig1.main(["--plot_only", "--out", str(tmp_path / "none.md")])
  assert str(e.value).startswith("error: --out:")
  assert "none.md" in str(e.value)


def test_command_line_is_typeable_from_the_users_folder(tmp_path,
                                                       monkeypatch):
  script = EXPERIMENTS / "table2_charlm.py"
  monkeypatch.chdir(REPO)
  assert commands.command_line(script, ["--quick"]) == (
      "python experiments/table2_charlm.py --quick")
  monkeypatch.chdir(tmp_path)
  assert commands.command_line(script, ["--quick"]) == (
      f"cd {tmp_path} && python "
      f"{os.path.relpath(script, tmp_path)} --quick")


def test_machine_line_names_the_cpu_model_and_ram():
  text = results_text.machine()
  assert "GiB RAM" in text and f"{os.cpu_count()} CPU cores" in text
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  models = [l.split(":", 1)[1].strip()
            for l in (cpuinfo.read_text().splitlines() if cpuinfo.exists()
                      else []) if l.startswith("model name")]
  if models:
    assert models[0] in text


def test_plot_names_the_same_run_twice_without_double_slash():
  from lfjax import plot
  assert plot.run_names(["/work/a/run", "/work/a/run"]) == [
      "/work/a/run", "/work/a/run (2)"]
  assert plot.run_names(["/x/a/run", "/y/a/run"]) == ["x/a/run", "y/a/run"]


# The one-shot GPU validation script --------------------------------------------

GPU_CHECK_CASES = {"globals+padding", "dilation+globals", "causal rel",
                   "rel+padding", "dropout", "kernel out+lse"}
GPU_TIMING_LABELS = {'impl="pallas"', 'impl="chunked"',
                     "dot_product_attention xla, full causal",
                     "dot_product_attention xla, full",
                     "dot_product_attention xla, window",
                     "dot_product_attention xla, window (no global)"}


def _md_rows(text, heading):
  """Cells of the table rows (header and rule left out) under `heading`."""
  section = text.split(heading, 1)[1].split("\n## ", 1)[0]
  rows = [[c.strip() for c in l.strip().strip("|").split("|")]
          for l in section.splitlines() if l.startswith("| ")]
  return rows[1:]


def test_gpu_validate_smoke_writes_its_tables_and_every_check_passes(
    tmp_path):
  """`gpu_validate.py --smoke --out FILE` on CPU (interpret mode): every
  check passes (dropout is skipped, with impl="pallas"'s own error, until
  the kernel takes dropout), every timing row has a time, and the real
  results file is left alone."""
  out = tmp_path / "kernel_gpu_smoke.md"
  real = EXPERIMENTS / "results" / "kernel_gpu.md"
  before = real.read_bytes()
  proc = subprocess.run(
      [sys.executable, str(EXPERIMENTS / "gpu_validate.py"), "--smoke",
       "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert real.read_bytes() == before
  text = out.read_text()
  assert "Command: `cd " in text and "--smoke --out" in text
  assert "Pallas interpret mode (CPU)" in text and "BlockSizes(" in text
  checks = _md_rows(text, "## Checks")
  assert {r[0] for r in checks} == GPU_CHECK_CASES
  for case, dtype, what, err, ref, tol, result in checks:
    if case == "dropout" and result.startswith("skipped"):
      assert "impl='pallas'" in result
      continue
    assert result == "pass", (case, dtype, what, err, tol)
    assert float(err) <= float(tol)
  outputs = {(r[0], r[2]) for r in checks}
  assert {("causal rel", "drel_table"), ("globals+padding", "dgq"),
          ("kernel out+lse", "lse"), ("rel+padding", "dq")} <= outputs
  timings = _md_rows(text, "## Timings")
  assert len(timings) == 2 * 2 * 4  # shapes x passes x implementations
  assert {(r[0], r[1]) for r in timings} == {
      (s, p) for s in ("axlearn-like", "MLM-like")
      for p in ("fwd", "fwd+bwd")}
  assert {r[2] for r in timings} == GPU_TIMING_LABELS
  for shape, pass_, label, ms, kpr, tflops, band, axlearn, note in timings:
    assert float(ms) > 0 and not note, (shape, pass_, label, note)
  # keys/row: the axlearn-like band (128 tokens, causal window 16: rows
  # 0-15 see 1..16 keys, the other 112 rows 17) and full causal attention.
  kpr = {(r[0], r[2]): r[4] for r in timings}
  assert kpr[("axlearn-like", 'impl="pallas"')] == "15.9"  # 2040 / 128
  assert kpr[("axlearn-like", "dot_product_attention xla, full causal")] == (
      "64.5")  # 129 / 2


def test_gpu_validate_counts_keys_per_row_from_the_definition():
  gv = _load("gpu_validate")
  # 5 tokens, window 1: rows see 2, 3, 3, 3, 2 keys; causal 1, 2, 2, 2, 2;
  # with global token 0: row 0 sees all 5, rows 2-4 one key more.
  assert gv.keys_per_row(5, 1, False, 0) == pytest.approx(13 / 5)
  assert gv.keys_per_row(5, 1, True, 0) == pytest.approx(9 / 5)
  assert gv.keys_per_row(5, 1, False, 1) == pytest.approx(19 / 5)
  assert gv.keys_per_row(6, 6, True, 0) == pytest.approx(7 / 2)


def test_gpu_validate_smoke_never_writes_the_real_results(capsys):
  gv = _load("gpu_validate")
  real = EXPERIMENTS / "results" / "kernel_gpu.md"
  for argv in (["--smoke"], ["--smoke", "--out", str(real)]):
    with pytest.raises(SystemExit) as e:
      gv.parse_args(argv)
    assert e.value.code == 2 and "--out" in capsys.readouterr().err


def test_gpu_validate_skips_timings_past_the_budget(tmp_path):
  gv = _load("gpu_validate")
  args = gv.parse_args(["--smoke", "--out", str(tmp_path / "k.md")])
  rows, notes = gv.time_shapes(args, gv.Budget(0.0), log=lambda line: None)
  assert len(rows) == len(notes) == 16
  assert all(r["ms"] is None and r["note"].startswith("skipped: budget")
             for r in rows)


def test_gpu_validate_sees_compiled_kernels_in_a_cuda_lowering():
  """What the script counts to prove the kernels are compiled: one Triton
  call for impl="pallas"'s forward with one dilation, none for chunked."""
  from lfjax.attention import windowed_attention
  from lfjax.kernels import lowering
  gv = _load("gpu_validate")
  import jax
  import jax.numpy as jnp
  q = jax.ShapeDtypeStruct((1, 128, 2, 64), jnp.bfloat16)
  for impl, calls in (("pallas", 1), ("chunked", 0)):
    exported = lowering.export_for_cuda(
        lambda q, k, v, impl=impl: windowed_attention(q, k, v, window=16,
                                                      impl=impl), q, q, q)
    assert gv.gpu_kernel_calls(exported.mlir_module()) == calls


def test_gpu_validate_report_says_whether_the_targets_are_met():
  gv = _load("gpu_validate")
  row = dict(shape="axlearn N32K w1K", label='impl="pallas"', ms=1.0,
             tflops=1.0, kpr=1024.0, axlearn=0.286, note="")
  rows = [dict(row, pass_="fwd", band_tflops=310.0),
          dict(row, pass_="fwd+bwd", band_tflops=240.0)]
  check = dict(case="padding", dtype="float32", what="out", err=1e-4,
               ref=2.0, tol=2e-2, result="pass")
  text = gv.report("cmd", [], [check], rows, [], False, 300.0)
  assert ("- Target fwd at N 32K, w 1K: >= 300 band TFLOP/s; measured "
          "310.0 (met).") in text
  assert ("- Target fwd+bwd at N 32K, w 1K: >= 250 band TFLOP/s; measured "
          "240.0 (not met).") in text
  assert "1 passed, 0 failed, 0 skipped." in text
