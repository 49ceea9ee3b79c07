"""Runs lfjax's own commands as subprocesses for the reproduction scripts.

Each run is exactly the command a user would type (printed before it
starts), in its own process so its peak resident memory and CPU time can
be read from the kernel (os.wait4). Runs are reused: a run folder that
already holds the requested run is read, not retrained; one that holds a
shorter run of the same config is resumed (lfjax.train trains on when given
a longer schedule); one that holds anything else is refused (Error).

Timing: every launch that moved the run's newest checkpoint is a segment
in workdir/timing.json (checkpoint step before and after, wall, CPU, peak
RSS, load average). A run's totals are reported only when its segments
cover it from step 0 without a gap; otherwise its timing is unknown (a run
finished by a process this module did not time, or resumed after a kill
that left no record). The child trainer dies with the script (SIGTERM,
Ctrl-C, and on Linux also kill -9 of the script via PR_SET_PDEATHSIG).

Light at import (no jax): the child-process test imports it in a fresh
interpreter.
"""

import ctypes
import datetime
import json
import os
import pathlib
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import NamedTuple

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMING = "timing.json"
# Table cells of a run whose timing is unknown; the results file explains.
UNKNOWN = "?"


class Error(Exception):
  """A failed lfjax command or a run folder that cannot be reused as asked;
  main_guard prints it as one `error:` line (plus a log tail)."""


class Usage(NamedTuple):
  """What the kernel reports for one finished child process."""
  code: int  # exit status (negative: killed by that signal)
  wall_s: float
  peak_rss_gib: float  # ru_maxrss
  cpu_s: float  # ru_utime + ru_stime
  load_average: tuple  # 1-minute load average at start and at end


# Processes ------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
try:
  _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux/glibc: no parent-death signal
  _prctl = None


def die_with_parent(parent=None):
  """Returns a subprocess preexec_fn that makes the child receive SIGTERM
  when the process that started it dies (even by SIGKILL). Linux only:
  returns None elsewhere. `parent` is the starting process's pid (default
  this process): a child whose parent already died before the call is
  terminated at once."""
  if _prctl is None:
    return None
  parent = os.getpid() if parent is None else parent

  def preexec():
    # Resolved before the fork: nothing here loads or imports.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
      os.kill(os.getpid(), signal.SIGTERM)
  return preexec


def _raise_terminated(signum, frame):
  raise SystemExit(128 + signum)


def _stop(proc, grace_s=30.0):
  """Terminates proc (SIGTERM, SIGKILL after grace_s) and reaps it;
  returns (status, rusage) as os.wait4 does, or (None, None) if it was
  already reaped."""
  try:
    proc.terminate()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
      pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
      if pid:
        return status, usage
      time.sleep(0.05)
    proc.kill()
    _, status, usage = os.wait4(proc.pid, 0)
    return status, usage
  except ChildProcessError:
    return None, None


def shown(args):
  """The command line a user types for `python -m <args>` from their own
  folder (the subprocess runs in the repository root)."""
  text = "python -m " + shlex.join(args)
  if pathlib.Path.cwd().resolve() != REPO:
    text = f"cd {shlex.quote(str(REPO))} && {text}"
  return text


def run(args, log_path, on_exit=None):
  """Runs `python -m <args>` in the repository root, output appended to
  log_path; returns its Usage.

  on_exit(usage) is called once the child has ended, also when this
  process is interrupted (KeyboardInterrupt, or SIGTERM, turned into
  SystemExit(143) while the child runs): the child is then terminated
  first, so it never outlives the script, and the exception propagates.

  Raises:
    Error with the log path and the log's last lines when the command
    exits with a non-zero status.
  """
  cmd = [sys.executable, "-m", *args]
  print("$", shown(args), flush=True)
  log_path = pathlib.Path(log_path)
  log_path.parent.mkdir(parents=True, exist_ok=True)
  load0 = os.getloadavg()[0]
  start = time.perf_counter()
  main = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
  status = usage = result = code = None
  try:
    with open(log_path, "a") as log:
      proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                              cwd=REPO, preexec_fn=die_with_parent())
      try:
        _, status, usage = os.wait4(proc.pid, 0)
      finally:
        if status is None:  # interrupted: the child must not outlive us
          status, usage = _stop(proc)
        code = None if status is None else os.waitstatus_to_exitcode(status)
        proc.returncode = code  # reaped here, not by Popen
        if usage is not None:
          # ru_maxrss is in KiB on Linux.
          result = Usage(code, time.perf_counter() - start,
                         usage.ru_maxrss / 2**20,
                         usage.ru_utime + usage.ru_stime,
                         (load0, os.getloadavg()[0]))
          if on_exit is not None:
            on_exit(result)
  finally:
    if main:  # None: a handler not set from Python; restore the default
      signal.signal(signal.SIGTERM,
                    signal.SIG_DFL if previous is None else previous)
  if code:
    raise Error(f"`{shown(args)}` exited with status {code}; its log "
                f"{log_path} ends:\n" + log_tail(log_path))
  return result


def log_tail(path, lines=15):
  text = pathlib.Path(path).read_text(errors="replace").splitlines()
  return "\n".join("  " + l for l in text[-lines:])


def main_guard(main):
  """Calls main(); an Error prints `error: ...` and exits 1, Ctrl-C prints
  `interrupted` and exits 130 (the child trainer was stopped by run)."""
  try:
    main()
  except Error as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1) from None
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    raise SystemExit(130) from None


def command_line(script, argv):
  """The command that reruns `script` with argv, typed from the user's
  folder ('python experiments/x.py ...' from the repository root)."""
  cwd = pathlib.Path.cwd().resolve()
  script = pathlib.Path(script).resolve()
  if cwd == REPO:
    return f"python {script.relative_to(REPO)} {shlex.join(argv)}".strip()
  return (f"cd {shlex.quote(str(cwd))} && python "
          f"{shlex.quote(os.path.relpath(script, cwd))} "
          f"{shlex.join(argv)}").strip()


def absolute(path):
  """path made absolute against the user's folder (before any change of
  directory), or None."""
  return None if path is None else pathlib.Path(path).absolute()


# Run folders ------------------------------------------------------------------


def metrics(workdir):
  """metrics.jsonl records of a run, in order."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def newest_step(workdir):
  """The run's newest finalized checkpoint step (0 for none)."""
  workdir = pathlib.Path(workdir)
  if not (workdir / "checkpoints").is_dir():
    return 0
  from lfjax import checkpoints
  steps = checkpoints.saved_steps(workdir)
  return steps[-1] if steps else 0


def requested_config(config, overrides=()):
  """The config JSON (dict) `python -m lfjax.train --config <config>
  <overrides>` trains, built by the same flag parser; config is relative to
  the repository root ("configs/x.py:arg").

  Raises Error for a config file or override lfjax.train would refuse."""
  from ml_collections import config_flags
  from lfjax import cli

  def define(fv, argv):
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv,
                                    lock_config=True, sys_argv=argv)

  path, _, arg = config.partition(":")
  full = str(REPO / path) + (":" + arg if arg else "")
  try:
    fv = cli.parse_absl(["--config", full, *overrides], define,
                        prog="python -m lfjax.train", doc="",
                        required=("config",))
  except cli.UsageError as e:
    raise Error(str(e)) from None
  return json.loads(fv.config.to_json())


def _diff(old, new):
  """{field: (old, new)} over the fields both configs have (a field only
  one has was added to or removed from lfjax since the run started)."""
  from lfjax import checkpoints
  fo, fn = checkpoints.flat(old), checkpoints.flat(new)
  return {k: (fo[k], fn[k]) for k in sorted(set(fo) & set(fn))
          if fo[k] != fn[k]}


def total_steps(config):
  """Steps a run config trains: the sum of a staged schedule, or steps."""
  if "schedule" in config:
    return sum(config["schedule"]["steps"])
  return config["steps"]


def saved_versions(workdir):
  """Every config the run in workdir has had: config_history.jsonl's
  entries, then config.json (none: [])."""
  workdir = pathlib.Path(workdir)
  out = []
  history = workdir / "config_history.jsonl"
  if history.exists():
    out += [json.loads(l)["config"] for l in history.read_text().splitlines()
            if l.strip()]
  if (workdir / "config.json").exists():
    out.append(json.loads((workdir / "config.json").read_text()))
  return out


def check_reuse(requested, workdir, hint):
  """Whether the run folder needs training for the requested config:
  "train" (empty, or a shorter run of the same config that lfjax.train
  resumes with the longer schedule) or "done" (it holds exactly the
  requested run).

  hint: the script's flags that choose the run (named in the error).

  Raises Error when the folder holds a run that is longer than requested
  (its newest checkpoint, or its schedule) or was trained, at any point of
  its config history, with a field other than schedule.steps different
  from the request: reporting it would misstate what was trained.
  """
  workdir = pathlib.Path(workdir)
  step = newest_step(workdir)
  versions = saved_versions(workdir)
  if not step or not versions:
    return "train"  # nothing trained: lfjax.train starts it fresh
  want = total_steps(requested)
  for version in versions:
    changed = {k: v for k, v in _diff(version, requested).items()
               if k != "schedule.steps"}
    if changed:
      fields = "; ".join(f"{k}: {a!r} in the run, {b!r} requested"
                         for k, (a, b) in changed.items())
      raise Error(f"{workdir} holds a run trained with another config than "
                  f"requested ({fields}). Use another {hint}, or remove "
                  "that run folder to retrain it.")
  have = total_steps(versions[-1])
  if step > want or have > want:
    raise Error(f"{workdir} holds a run of {have} steps (newest checkpoint "
                f"{step}), longer than the {want} requested; reporting it "
                f"would misstate its length. Use another {hint}, or ask "
                f"for its {have} steps.")
  if step == want:
    if versions[-1].get("schedule", {}).get("steps") != requested.get(
        "schedule", {}).get("steps"):
      raise Error(f"{workdir} reached step {step} under the schedule "
                  f"{versions[-1]['schedule']['steps']}, not the requested "
                  f"{requested['schedule']['steps']}. Use another {hint}.")
    return "done"
  return "train"


def extensions(workdir):
  """Sentences for the schedule changes in the run's config history (a
  run resumed with a longer schedule: its first steps ran under the
  shorter one's per-phase warmup)."""
  path = pathlib.Path(workdir) / "config_history.jsonl"
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    entry = json.loads(line) if line.strip() else {}
    change = entry.get("changes", {}).get("schedule.steps")
    if change:
      out.append(f"{pathlib.Path(workdir).name}: schedule.steps "
                 f"{tuple(change[0])} -> {tuple(change[1])} at step "
                 f"{entry['step']} (resumed)")
  return out


# Timing -----------------------------------------------------------------------


def read_segments(workdir, newest, timing_file=TIMING):
  """timing.json's segments, each {"from_step", "to_step", "wall_s",
  "cpu_s", "peak_rss_gib", "load_average", "command"}. The older single
  record ({"wall_s", "peak_rss_gib", "cpu_s", "load_average", "command"},
  written once by a fresh start that trained the whole run) reads as one
  segment from step 0 to `newest`, the run's newest checkpoint step."""
  path = pathlib.Path(workdir) / timing_file
  if not path.exists():
    return []
  data = json.loads(path.read_text())
  if "segments" in data:
    return data["segments"]
  if not newest:
    return []
  return [dict(from_step=0, to_step=newest, wall_s=data["wall_s"],
               cpu_s=data.get("cpu_s"), peak_rss_gib=data["peak_rss_gib"],
               load_average=data.get("load_average"),
               command=data.get("command"))]


def add_segment(workdir, before, after, usage, command,
                timing_file=TIMING):
  """Appends one launch that moved the newest checkpoint from `before` to
  `after` (atomically: a kill mid-write leaves the old file)."""
  path = pathlib.Path(workdir) / timing_file
  segments = read_segments(workdir, before, timing_file)
  segments.append(dict(
      from_step=before, to_step=after, wall_s=usage.wall_s,
      cpu_s=usage.cpu_s, peak_rss_gib=usage.peak_rss_gib,
      load_average=list(usage.load_average), command=command,
      exit_code=usage.code,
      ended=datetime.datetime.now().isoformat(timespec="seconds")))
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps({"segments": segments}, indent=1))
  os.replace(tmp, path)


def summarize(segments, newest):
  """The run's timing from its segments: {"complete", "wall_s", "cpu_s",
  "peak_rss_gib", "load_average", "launches", "why"}. complete only when
  the segments, ordered by their first step, start at step 0, each starts
  where the previous ended, and the last ends at `newest`; then wall and
  CPU seconds are sums (a killed launch's lost steps included), peak RSS
  the maximum and load the first start's and the last end's. Otherwise the
  numbers are None and `why` says what is missing."""
  segs = sorted(segments, key=lambda s: (s["from_step"], s["to_step"]))
  at, why = 0, None
  for s in segs:
    if s["from_step"] != at:
      why = (f"steps {at}-{s['from_step']} have no timing record"
             if s["from_step"] > at else
             f"timing records overlap at step {s['from_step']}")
      break
    at = s["to_step"]
  if why is None and at != newest:
    why = (f"steps {at}-{newest} have no timing record (trained by a "
           "process these scripts did not time)")
  if why is not None or not segs:
    return dict(complete=False, wall_s=None, cpu_s=None, peak_rss_gib=None,
                load_average=None, launches=len(segs),
                why=why or "no timing record")
  cpu = [s.get("cpu_s") for s in segs]
  loads = [s.get("load_average") for s in segs]
  return dict(
      complete=True, wall_s=sum(s["wall_s"] for s in segs),
      cpu_s=None if None in cpu else sum(cpu),
      peak_rss_gib=max(s["peak_rss_gib"] for s in segs),
      load_average=(None if None in (loads[0], loads[-1])
                    else (loads[0][0], loads[-1][1])),
      launches=len(segs), why=None)


def timing(workdir, timing_file=TIMING):
  """summarize() of the run in workdir at its newest checkpoint."""
  newest = newest_step(workdir)
  return summarize(read_segments(workdir, newest, timing_file), newest)


def fmt(value, spec):
  """value formatted, or UNKNOWN for None (unknown timing)."""
  return UNKNOWN if value is None else format(value, spec)


def resumed_notes(notes):
  """Lines for the results file naming runs resumed with a longer
  schedule (notes: one string per run), or none."""
  if not notes:
    return []
  return ["Runs resumed with a longer schedule (their first steps ran "
          "under the shorter one's warmup): " + "; ".join(notes) + ".", ""]


def timing_notes(runs):
  """Sentences for the results file: runs whose timing is unknown, and
  runs trained in several launches. runs: [(name, summary)]."""
  lines = []
  unknown = [f"{n} ({t['why']})" for n, t in runs if not t["complete"]]
  if unknown:
    lines.append(f"`{UNKNOWN}`: timing unknown, not reported, for "
                 + "; ".join(unknown) + ". Training such a run again in a "
                 "new --root measures it.")
  several = [f"{n} ({t['launches']} launches)" for n, t in runs
             if t["complete"] and t["launches"] > 1]
  if several:
    lines.append("Runs trained in several launches (timing summed over "
                 "them, each launch's compiles and any steps a killed "
                 "launch lost included): " + ", ".join(several) + ".")
  return lines


def train(config, workdir, overrides=(), hint="--root",
          timing_file=TIMING):
  """Trains, resumes or reads the run of `python -m lfjax.train --config
  <config> <overrides>` in workdir (see check_reuse); returns its metrics
  records and its timing (summarize()).

  Raises Error: a run folder holding another run (check_reuse), or a
  failed training (run)."""
  workdir = pathlib.Path(workdir)
  requested = requested_config(config, overrides)
  if check_reuse(requested, workdir, hint) == "train":
    args = ["lfjax.train", "--config", config, "--workdir", str(workdir),
            *overrides]
    before = newest_step(workdir)

    def record(usage):
      after = newest_step(workdir)
      if after > before:  # a launch that trained nothing is no segment
        add_segment(workdir, before, after, usage, shlex.join(args),
                    timing_file)
    run(args, workdir.parent / f"{workdir.name}.log", on_exit=record)
    if newest_step(workdir) < total_steps(requested):
      raise Error(f"{workdir}: `{shown(args)}` ended at step "
                  f"{newest_step(workdir)} of {total_steps(requested)}")
  return metrics(workdir), timing(workdir, timing_file)


def evaluate(workdir, split="test", extra=()):
  """`python -m lfjax.evaluate` on a run; returns its result JSON."""
  workdir = pathlib.Path(workdir)
  before = set(workdir.glob(f"eval_{split}_*.json"))
  run(["lfjax.evaluate", "--workdir", str(workdir), "--split", split,
       *extra], workdir.parent / f"{workdir.name}.eval.log")
  new = set(workdir.glob(f"eval_{split}_*.json")) - before
  paths = new or set(workdir.glob(f"eval_{split}_*.json"))
  newest = max(paths, key=lambda p: p.stat().st_mtime)
  return json.loads(newest.read_text())


# Results files ----------------------------------------------------------------


def describe_model(config):
  """'6 layers, hidden 256, 8 heads x 32, FFN 1024' of a char-LM run
  config (JSON dict), and its windows per phase (window_scales applied)."""
  m, s = config["model"], config["schedule"]
  text = (f"{m['num_layers']} layers, hidden {m['hidden_size']}, "
          f"{m['num_heads']} heads x {m['head_dim']}, FFN {m['ffn_size']}")
  windows = "; ".join(
      f"phase {p + 1} (seq {n}): {tuple(w * k for w in m['windows'])}"
      for p, (n, k) in enumerate(zip(s["seq_lens"], s["window_scales"])))
  return text, windows


def param_count(workdir):
  """Parameters of a char-LM run's model, counted from the model its
  config.json builds (jax.eval_shape: no arrays are allocated)."""
  import jax
  from flax import nnx
  from lfjax import checkpoints
  from lfjax.data import chars
  from lfjax.models import charlm
  config = checkpoints.read_config(workdir, "charlm")
  corpus = chars.load(config.data.name, config.data.dir or None)
  model = nnx.eval_shape(lambda: charlm.CharLM(
      checkpoints.model_config(config, corpus.vocab_size),
      rngs=nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def machine():
  """CPU model, cores, RAM and OS of this machine, in words."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f
                 if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return (f"{cpu} ({platform.machine()}), {os.cpu_count()} CPU cores, "
          f"{mem:.0f} GiB RAM, {platform.system()}")


def header(command):
  """Markdown lines: the command, versions and the machine."""
  import jax
  import numpy as np
  return [f"Command: `{command}`", "",
          f"Machine: {machine()}; jax {jax.__version__} "
          f"({jax.default_backend()}), numpy {np.__version__}, Python "
          f"{platform.python_version()}. Timings are wall clock on a shared "
          "machine.", ""]


def mean_std(values):
  import statistics
  if len(values) < 2:
    return values[0], float("nan")
  return statistics.mean(values), statistics.stdev(values)


def parse_seeds(parser, text):
  """'0,1,2' -> [0, 1, 2]; parser.error naming --seeds for anything but
  distinct non-negative integers (a repeated seed would count one run
  twice and shrink the spread; a negative one is no valid seed)."""
  try:
    seeds = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    seeds = []
  if not seeds:
    parser.error(f"--seeds: expected comma-separated integers, got {text!r}")
  negative = [s for s in seeds if s < 0]
  if negative:
    parser.error(f"--seeds: expected non-negative integers, got {negative} "
                 f"in {text!r}")
  repeated = sorted({s for s in seeds if seeds.count(s) > 1})
  if repeated:
    parser.error(f"--seeds: expected distinct seeds, got {repeated} more "
                 f"than once in {text!r}")
  return seeds


def plot_seed_bands(series, path, *, ylabel, title, chance=None):
  """One line per variant: the mean over seeds of [(step, value)] curves,
  with a band from the seeds' min to max. series: [(label, [curve, ...])]."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for label, runs in series:
    steps = [s for s, _ in runs[0]]
    values = np.array([[v for _, v in c] for c in runs])
    line, = ax.plot(steps, values.mean(0), marker="o", label=label)
    if len(runs) > 1:
      ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2,
                      color=line.get_color())
  if chance is not None:
    ax.axhline(chance, color="gray", ls=":", label="chance")
  ax.set_xlabel("training step")
  ax.set_ylabel(f"{ylabel} (mean; band = min..max over seeds)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
