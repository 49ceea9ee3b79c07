"""config.tensorboard: the event files in workdir/tensorboard/ hold
metrics.jsonl's records (same tags, steps and values, as float32), also
after a kill and resume; a missing tensorboardX is one `error:` line.

tensorboardX writes but cannot read, so the files are read here from the
formats themselves: TFRecord framing (length, masked CRC-32C of it, data,
masked CRC-32C of the data; the CRC computed here bit by bit), Event
protos, and TensorBoard's restart rule (event_accumulator: a
SessionLog.START at step s hides the events before it at steps >= s).
"""

import json
import struct
import sys

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from lfjax import checkpoints
from lfjax import cli
from lfjax import metrics
from lfjax import train
from lfjax.tasks import charlm_defaults
from lfjax.tasks import finetune
from lfjax.tasks import mlm_defaults
from tests.test_train import ROOT
from tests.test_train import data_dir  # pylint: disable=unused-import
from tests.test_train import small_config

pytestmark = pytest.mark.usefixtures("fast_compiles")


def crc32c(data):
  """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def masked(crc):
  """TFRecord's masked CRC: rotate right by 15, add 0xa282ead8."""
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path):
  data, events, i = path.read_bytes(), [], 0
  while i < len(data):
    head = data[i:i + 8]
    (n,) = struct.unpack("<Q", head)
    assert struct.unpack("<I", data[i + 8:i + 12])[0] == masked(crc32c(head))
    body = data[i + 12:i + 12 + n]
    assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == masked(
        crc32c(body))
    events.append(event_pb2.Event.FromString(body))
    i += 16 + n
  return events


def scalars(logdir):
  """{tag: [(step, value)]} as TensorBoard shows them, and every step
  the files hold (purged or not)."""
  shown, raw_steps = [], set()
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    for e in read_events(path):
      if e.session_log.status == event_pb2.SessionLog.START:
        shown = [s for s in shown if s[1] < e.step]
      for v in e.summary.value:
        shown.append((v.tag, e.step, v.simple_value))
        raw_steps.add(e.step)
  out = {}
  for tag, step, value in shown:
    out.setdefault(tag, []).append((step, value))
  return out, raw_steps


def jsonl_scalars(path):
  out = {}
  for rec in metrics.read(path):
    for k, v in rec.items():
      if k != "step" and isinstance(v, (int, float)):
        out.setdefault(k, []).append((rec["step"], float(np.float32(v))))
  return out


class Interrupt(Exception):
  pass


def test_event_files_mirror_metrics_through_a_kill(data_dir, tmp_path,
                                                   monkeypatch):
  c = small_config(data_dir)
  c.tensorboard = True
  write = metrics.TensorBoardWriter.write

  def dying_write(self, step, values):
    write(self, step, values)
    if step == 14:  # after the checkpoint at 12: steps 13-14 run again
      raise Interrupt()
  monkeypatch.setattr(metrics.TensorBoardWriter, "write", dying_write)
  with pytest.raises(Interrupt):
    train.train_and_evaluate(c, tmp_path)
  monkeypatch.setattr(metrics.TensorBoardWriter, "write", write)
  train.train_and_evaluate(c, tmp_path)

  logdir = tmp_path / "tensorboard"
  assert len(list(logdir.glob("events.out.tfevents.*"))) == 2
  got, raw_steps = scalars(logdir)
  want = jsonl_scalars(tmp_path / "metrics.jsonl")
  assert {"train_loss", "learning_rate", "eval_bpc"} <= set(want)
  assert got == want
  steps = sorted({s for v in want.values() for s, _ in v})
  assert steps == list(range(1, 21))
  assert {13, 14} <= raw_steps  # the killed run's tail: there, but hidden


def test_missing_tensorboardx_is_one_error_line(capsys, tmp_path,
                                                monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
  code = cli.run(train.main, [
      "--config", str(ROOT / "configs" / "charlm_default.py") + ":tiny",
      "--config.tensorboard=True", "--workdir", str(tmp_path)])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2, err
  assert err[0].startswith("error: config.tensorboard: True needs the "
                           "tensorboardX package"), err
  assert "pip install \"lfjax[tensorboard]\"" in err[0]
  assert "Traceback" not in "\n".join(err)
  assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("task", ["charlm", "mlm", "classification", "qa",
                                  "multiple_choice"])
def test_a_resumed_run_may_turn_it_on_or_off(task):
  c = {"charlm": charlm_defaults.base_config,
       "mlm": mlm_defaults.base_config}.get(
           task, lambda: finetune.base_config(task))()
  assert c.tensorboard is False
  off = json.loads(c.to_json())
  on = dict(off, tensorboard=True)
  for old, new in ((off, on), (on, off)):
    changes, problems = checkpoints.config_problems(old, new, step=10)
    assert changes == {"tensorboard": (old["tensorboard"],
                                       new["tensorboard"])}
    assert not problems
