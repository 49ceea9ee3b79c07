"""Runs lfjax's own commands as subprocesses for the reproduction scripts.

Each run is exactly the command a user would type (printed before it
starts), in its own process so its peak resident memory can be read from
the kernel (os.wait4), and resumable: a finished run is not retrained.
"""

import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time


def run(args, log_path):
  """Runs `python -m <args>`; returns (wall seconds, peak RSS GiB).

  Raises:
    RuntimeError with the log's tail when the command fails.
  """
  cmd = [sys.executable, "-m", *args]
  print("$ python -m", shlex.join(args), flush=True)
  log_path = pathlib.Path(log_path)
  log_path.parent.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  with open(log_path, "a") as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - start
  code = os.waitstatus_to_exitcode(status)
  if code:
    tail = log_path.read_text().splitlines()[-15:]
    raise RuntimeError(f"{shlex.join(args)} exited {code}; log "
                       f"{log_path}:\n" + "\n".join(tail))
  # ru_maxrss is in KiB on Linux.
  return wall, usage.ru_maxrss / 2**20


def metrics(workdir):
  """metrics.jsonl records of a run, in order."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def train(config, workdir, overrides=(), timing_file="timing.json"):
  """Trains (or finishes) a run; returns its metrics and its timing.

  The timing of the process that trained the run is kept in
  workdir/timing.json, so a rerun of the script after the run finished
  reports the original wall time and memory instead of a no-op's.
  """
  workdir = pathlib.Path(workdir)
  args = ["lfjax.train", "--config", config, "--workdir", str(workdir),
          *overrides]
  timing_path = workdir / timing_file
  if not timing_path.exists():
    wall, rss = run(args, workdir.parent / f"{workdir.name}.log")
    timing_path.write_text(json.dumps({"wall_s": wall, "peak_rss_gib": rss,
                                       "command": shlex.join(args)}))
  return metrics(workdir), json.loads(timing_path.read_text())


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


def header(command):
  """Markdown lines: the command, versions and the machine."""
  import jax
  import numpy as np
  cpus = os.cpu_count()
  return [f"Command: `{command}`", "",
          f"Machine: {platform.machine()}, {cpus} CPU cores "
          f"({platform.processor() or 'cpu'}), jax {jax.__version__} "
          f"({jax.default_backend()}), numpy {np.__version__}, Python "
          f"{platform.python_version()}. Timings are wall clock on a shared "
          "machine.", ""]


def mean_std(values):
  import statistics
  if len(values) < 2:
    return values[0], float("nan")
  return statistics.mean(values), statistics.stdev(values)


def parse_seeds(parser, text):
  """'0,1,2' -> [0, 1, 2]; parser.error naming --seeds otherwise."""
  try:
    seeds = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    seeds = []
  if not seeds:
    parser.error(f"--seeds: expected comma-separated integers, got {text!r}")
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
