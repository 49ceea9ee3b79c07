"""Metrics as JSON lines in workdir/metrics.jsonl (big_vision style), and
optionally the same records as TensorBoard scalars in workdir/tensorboard/
(config.tensorboard). metrics.jsonl is the source of truth: the event
files only mirror it, so that TensorBoard can watch a run.
"""

import json
import math
import pathlib
import socket
import time
import weakref

import jax

TENSORBOARD_DIR = "tensorboard"  # the event files' folder in a run folder
TENSORBOARD_INSTALL = 'pip install "lfjax[tensorboard]"'


class JsonlWriter:
  """Appends {"step": s, name: value, ...} lines; process 0 only.

  Opened at resume step s, it first drops lines past s (the killed run's
  tail, which the resumed run writes again) and any torn last line, so the
  file reads as one uninterrupted run.

  mirror: None, or a writer (TensorBoardWriter) handed each record after it
  is in the file, as the file holds it (NaN/Inf already None).
  """

  def __init__(self, path, resume_step=0, mirror=None):
    self.path = pathlib.Path(path)
    self.mirror = mirror
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
    if self.mirror is not None:
      self.mirror.write(rec["step"], rec)


def require_tensorboard():
  """tensorboardX's event protos and record writer (imported here, on first
  use: only runs that ask need the package). Raises ValueError naming
  config.tensorboard, with the pip command, when it cannot be imported."""
  try:
    from tensorboardX import record_writer
    from tensorboardX.proto import event_pb2
    from tensorboardX.proto import summary_pb2
  except ImportError as e:
    raise ValueError(
        f"config.tensorboard: True needs the tensorboardX package ({e}): "
        f"{TENSORBOARD_INSTALL}, or leave config.tensorboard=False "
        "(metrics.jsonl holds every record either way)") from None
  return event_pb2, summary_pb2, record_writer.RecordWriter


class TensorBoardWriter:
  """Writes each record's numbers as TensorBoard scalars (tag = the
  record's key, same step) to a new event file in `logdir`; process 0 only.

  Values are stored as float32 (TensorBoard's scalar type); None (a NaN/Inf
  in metrics.jsonl), strings and other non-numbers are left out. Records
  are written and flushed one by one, so a killed run loses none that
  metrics.jsonl has.

  Resume: every run (resumed or not) writes a new file that opens with
  TensorBoard's restart marker (SessionLog.START) at resume_step + 1, the
  `purge_step` of tensorboardX's SummaryWriter: TensorBoard hides the
  older files' events from that step on, the killed run's tail that
  metrics.jsonl drops too; its data server also drops a tag's steps when
  an equal or earlier step of it comes. Steps trained while
  config.tensorboard was False are only in metrics.jsonl.

  Raises ValueError (require_tensorboard) when tensorboardX is missing.
  """

  def __init__(self, logdir, resume_step=0):
    self.logdir = pathlib.Path(logdir)
    self.active = jax.process_index() == 0
    if not self.active:
      return
    event_pb2, summary_pb2, record_writer = require_tensorboard()
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self.logdir.mkdir(parents=True, exist_ok=True)
    # TensorBoard reads a folder's files in name order, so a resumed run's
    # file must sort after the killed one's: the time in seconds (never
    # before the newest file's, whose host's clock may run ahead), then a
    # count that breaks ties (a kill and resume within a second).
    names = sorted(p.name for p in self.logdir.glob("events.out.tfevents.*"))
    stamp = int(time.time())
    if names and names[-1].split(".")[3].isdigit():
      stamp = max(stamp, int(names[-1].split(".")[3]))
    self.path = self.logdir / (f"events.out.tfevents.{stamp}."
                               f"{socket.gethostname()}.{len(names):04d}")
    self._records = record_writer(str(self.path))
    # Closes the file when the writer goes (also after an exception).
    weakref.finalize(self, self._records.close)
    purge = int(resume_step) + 1
    self._put(self._event(wall_time=time.time(), step=purge,
                          file_version="brain.Event:2"))
    self._put(self._event(wall_time=time.time(), step=purge,
                          session_log=event_pb2.SessionLog(
                              status=event_pb2.SessionLog.START)))

  def _put(self, event):
    self._records.write(event.SerializeToString())
    self._records.flush()

  def write(self, step, values):
    if not self.active:
      return
    scalars = [self._summary.Value(tag=k, simple_value=float(v))
               for k, v in values.items()
               if k != "step" and isinstance(v, (int, float))]
    if scalars:
      self._put(self._event(wall_time=time.time(), step=int(step),
                            summary=self._summary(value=scalars)))


def read(path):
  """All records of a metrics.jsonl."""
  return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines()
          if l.strip()]
