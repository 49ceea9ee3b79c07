"""Metrics as JSON lines in workdir/metrics.jsonl (big_vision style)."""

import json
import math
import pathlib

import jax


class JsonlWriter:
  """Appends {"step": s, name: value, ...} lines; process 0 only.

  Opened at resume step s, it first drops lines past s (the killed run's
  tail, which the resumed run writes again) and any torn last line, so the
  file reads as one uninterrupted run.
  """

  def __init__(self, path, resume_step=0):
    self.path = pathlib.Path(path)
    self.active = jax.process_index() == 0
    if not self.active:
      return
    if self.path.exists():
      kept = []
      for line in self.path.read_text().splitlines():
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue
        if rec.get("step", 0) <= resume_step:
          kept.append(line)
      tmp = self.path.with_suffix(".tmp")
      tmp.write_text("".join(l + "\n" for l in kept))
      tmp.replace(self.path)

  def write(self, step, values):
    if not self.active:
      return
    rec = {"step": int(step)}
    for k, v in values.items():
      v = v.item() if hasattr(v, "item") else v
      rec[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    with self.path.open("a") as f:
      f.write(json.dumps(rec) + "\n")


def read(path):
  """All records of a metrics.jsonl."""
  return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines()
          if l.strip()]
