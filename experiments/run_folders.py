"""Run folders of lfjax.train: reading them, reusing them, timing them, and
training or evaluating a run (commands.run starts lfjax's commands).

Runs are reused: a run folder that already holds the requested run is
read, not retrained; one that holds a shorter run of the same config is
resumed (lfjax.train trains on when given a longer schedule); one that
holds anything else is refused (commands.Error).

Timing: every launch that moved the run's newest checkpoint is a segment
in workdir/timing.json (checkpoint step before and after, wall, CPU, peak
RSS, load average). A run's totals are reported only when its segments
cover it from step 0 without a gap; otherwise its timing is unknown (a run
finished by a process this module did not time, or resumed after a kill
that left no record).
"""

import datetime
import json
import os
import pathlib
import shlex

from commands import REPO, Error, run, shown

TIMING = "timing.json"


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


def total_steps(config, steps=None):
  """Steps a run config trains: the sum of a staged schedule, or steps; a
  fine-tuning config (train.epochs: its steps depend on its data) has
  none of them and needs the caller's count, `steps`.

  Raises Error for a config without either and no `steps`."""
  if "schedule" in config:
    return sum(config["schedule"]["steps"])
  if "steps" in config:
    return config["steps"]
  if steps is None:
    raise Error("a fine-tuning run's steps follow from train.epochs and "
                "its data: pass steps= (the script's count)")
  return steps


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


def check_reuse(requested, workdir, hint, steps=None):
  """Whether the run folder needs training for the requested config:
  "train" (empty, or a shorter run of the same config that lfjax.train
  resumes with the longer schedule) or "done" (it holds exactly the
  requested run).

  hint: the script's flags that choose the run (named in the error).
  steps: the run's total steps when its config has no schedule or steps
  (a fine-tuning run, see total_steps).

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
  want = total_steps(requested, steps)
  for version in versions:
    changed = {k: v for k, v in _diff(version, requested).items()
               if k != "schedule.steps"}
    if changed:
      fields = "; ".join(f"{k}: {a!r} in the run, {b!r} requested"
                         for k, (a, b) in changed.items())
      raise Error(f"{workdir} holds a run trained with another config than "
                  f"requested ({fields}). Use another {hint}, or remove "
                  "that run folder to retrain it.")
  # A fine-tuning run's fields are those requested (checked above).
  have = total_steps(versions[-1], want)
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

def train(config, workdir, overrides=(), hint="--root",
          timing_file=TIMING, steps=None):
  """Trains, resumes or reads the run of `python -m lfjax.train --config
  <config> <overrides>` in workdir (see check_reuse); returns its metrics
  records and its timing (summarize()). steps: the run's total steps when
  its config has none (fine-tuning: train.epochs over its data).

  Raises Error: a run folder holding another run (check_reuse), or a
  failed training (run)."""
  workdir = pathlib.Path(workdir)
  requested = requested_config(config, overrides)
  want = total_steps(requested, steps)
  if check_reuse(requested, workdir, hint, want) == "train":
    args = ["lfjax.train", "--config", config, "--workdir", str(workdir),
            *overrides]
    before = newest_step(workdir)

    def record(usage):
      after = newest_step(workdir)
      if after > before:  # a launch that trained nothing is no segment
        add_segment(workdir, before, after, usage, shlex.join(args),
                    timing_file)
    run(args, workdir.parent / f"{workdir.name}.log", on_exit=record)
    if newest_step(workdir) < want:
      raise Error(f"{workdir}: `{shown(args)}` ended at step "
                  f"{newest_step(workdir)} of {want}")
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

