"""What every task shares: the config fields of every run, and how an
evaluation's result is checked and named.

shared_fields / validate_shared are the one place for a field every task's
config has (the task's name, the seed, the fields lfjax.loop reads): a new
such field is one edit here, not one per task.
"""

import hashlib
import json
import math
import pathlib
import re

import ml_collections

from lfjax import checks
from lfjax import metrics
from lfjax import parallel


def shared_fields(c, task, *, log_every, checkpoint_every, eval_every,
                  keep_checkpoints=3):
  """Adds every task's fields to ConfigDict c (in place); returns c."""
  c.task = task  # the lfjax.tasks module that trains it (lfjax.train reads)
  c.seed = 0  # init, data order, dropout and masks all derive from it
  c.log_every = log_every  # steps between metrics lines (and NaN checks)
  c.checkpoint_every = checkpoint_every  # steps between checkpoints
  c.keep_checkpoints = keep_checkpoints  # newest checkpoints kept on disk
  # Steps between evaluations; 0 = only at the end (always at the end).
  c.eval_every = eval_every
  # Also write every metrics.jsonl record as TensorBoard scalars to
  # workdir/tensorboard/ (needs `pip install tensorboardX`; metrics.jsonl
  # stays the record lfjax.plot and the tests read).
  c.tensorboard = False
  # Devices per mesh axis (lfjax.parallel; -1 = the rest, on one axis at
  # most). All 1: one device, no mesh.
  c.mesh = ml_collections.ConfigDict(dict(
      data=1,  # the batch is split over these devices
      fsdp=1,  # the batch, parameters and optimizer state: split over these
      seq=1))  # each sequence is split over these (sequence parallelism)
  return c


def validate_shared(c, task):
  """Checks the fields shared_fields adds. Raises ValueError naming the
  field (`config.seed: expected ...`)."""
  checks.one_of(c, "task", (task,))
  checks.integer(c, "seed", 0, checks.SEED_MAX)
  checks.loop_fields(c)
  if checks.boolean(c, "tensorboard"):
    metrics.require_tensorboard()  # before anything is written or compiled
  parallel.check_config(c.mesh)  # the device count: when the mesh is built


def check_finite_metric(name, value):
  """Raises FloatingPointError when an evaluation result is NaN/Inf (JSON
  cannot hold it, and a NaN would read as a result)."""
  if not math.isfinite(value):
    raise FloatingPointError(
        f"evaluation: {name} is {value}; not reporting or writing it. The "
        "model's log-probabilities overflowed: check that its parameters "
        "are finite and try model.dtype='float32'")


def _tag(value):
  # Short plain words and ints name themselves; anything else (a data path
  # with slashes, a 64-digit sha256, a dict) by a hash that fits a name.
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,16}", value):
    return value
  return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest(
  )[:8]


def result_path(workdir, stem, settings, defaults, tags):
  """Where to write an evaluation's result: workdir/<stem>.json plus a
  `_<tag><value>` per setting that differs from its default (e.g.
  eval_test_130_chars3000.json), so different settings get different
  files. When that file holds a result of other settings (the defaults
  changed since, e.g. a resumed run's eval.*), every setting goes into the
  name. A result file is never overwritten by a different evaluation's.

  settings: {result field: value}, the fields that decide the result;
  defaults: {field: the value the name leaves out}; tags: {field: tag}."""
  workdir = pathlib.Path(workdir)
  name = lambda keys: workdir / (stem + "".join(
      f"_{tags[k]}{_tag(settings[k])}" for k in keys) + ".json")
  path = name([k for k in settings if settings[k] != defaults.get(k)])
  if path.exists():
    try:
      old = json.loads(path.read_text())
    except ValueError:
      old = {}
    if not isinstance(old, dict) or any(
        old.get(k) != v for k, v in settings.items()):
      path = name(list(settings))
  return path
