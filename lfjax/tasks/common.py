"""What every task shares: the config fields of every run, how an
evaluation's result is checked and named, and the record of the data a run
trains on (CORPUS_HISTORY).

shared_fields / validate_shared are the one place for a field every task's
config has (the task's name, the seed, the fields lfjax.loop reads): a new
such field is one edit here, not one per task.
"""

import hashlib
import json
import math
import pathlib
import re
import sys

import jax
import ml_collections

from lfjax import checks
from lfjax import files
from lfjax import loop
from lfjax import metrics
from lfjax import parallel

# In the run folder: the data (name, sha256) the run trains on, one JSON
# line from the step it started on, and one more from each step a resume
# found other data (data.dir / data.sources may change; the files in them
# may too).
CORPUS_HISTORY = "corpus_history.jsonl"


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
  # workdir/tensorboard/ (needs `pip install "lfjax[tensorboard]"`; metrics.jsonl
  # stays the record lfjax.plot and the tests read).
  c.tensorboard = False
  # Devices per mesh axis (lfjax.parallel; -1 = the rest, on one axis at
  # most). All 1: one device, no mesh.
  c.mesh = ml_collections.ConfigDict(dict(
      data=1,  # the batch is split over these devices
      fsdp=1,  # the batch, parameters and optimizer state: split over these
      seq=1))  # each sequence is split over these (sequence parallelism)
  return c


# model.scan_layers' default: on. It cuts compile time (scan_compile.md:
# 0.42-0.78x the loop's at 12 layers, 0.26-0.32x at 24, the step as fast
# at 12, the same loss). With remat its GPU memory is about the loop's
# (plan_memory.md: longformer-base MLM bf16 + remat on an A100, 9.5 vs
# 9.3 GB with the attention's batched blocks). Without remat it holds more
# on an A100 (float32: 47.2 vs 32.3 GB): XLA cannot rematerialize inside
# the scan's stacked residuals; such runs on a tight GPU set it off
# (docs/gpus.md). A one-layer model runs the loop.
SCAN_LAYERS_DEFAULT = True


def encoder_fields(model):
  """Adds the Longformer encoder's precision and remat fields to a config's
  model section (MLM and fine-tuning; in place)."""
  # Matmul operands and activations: float32 | bfloat16 (softmax, layer
  # norm statistics, attention accumulation, logits and losses stay
  # float32). bfloat16 halves activation memory on GPUs and TPUs.
  model.dtype = "float32"
  # Parameters (and so AdamW's moments): float32 master weights, or
  # bfloat16 to halve their memory at some cost in update precision.
  model.param_dtype = "float32"
  # Recompute each layer in the backward pass (lfjax.models.remat): the
  # activations of one layer at a time instead of all of them.
  model.remat = False
  # What remat keeps per layer besides its inputs (with remat only):
  # "nothing" | "attention" (also the attention's output: the backward
  # skips the attention's forward) | "offload" (the same, in pinned host
  # memory; GPU/TPU only). Same values and gradients in float32 (in
  # bfloat16, up to rounding).
  model.remat_policy = "nothing"
  # Run each run of consecutive layers with the same window as one
  # lax.scan over stacked parameters (lfjax.models.stack) instead of a
  # Python loop: the same values and gradients (to float32 rounding), a
  # compile time that grows far less with depth. SCAN_LAYERS_DEFAULT says
  # why it is the default. Parameters are stacked in the run's checkpoints:
  # a run resumes with the setting it started with; exports are per layer
  # (transformers' layout) either way.
  model.scan_layers = SCAN_LAYERS_DEFAULT


def validate_encoder_fields(c):
  """Checks the fields encoder_fields adds. Raises ValueError naming one."""
  checks.one_of(c, "model.dtype", ("float32", "bfloat16"))
  checks.one_of(c, "model.param_dtype", ("float32", "bfloat16"))
  checks.remat(c)
  checks.boolean(c, "model.scan_layers")


def encoder_overrides(model):
  """LongformerConfig overrides (lfjax.convert.from_pretrained) from a
  run's model section; a run started before the fields existed ran in
  float32 without remat, with a loop over per-layer parameters (what its
  checkpoints hold)."""
  return dict(compute_dtype=model.get("dtype", "float32"),
              param_dtype=model.get("param_dtype", "float32"),
              remat=model.get("remat", False),
              remat_policy=model.get("remat_policy", "nothing"),
              scan_layers=model.get("scan_layers", False))


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


def corpus_records(workdir):
  """The run's CORPUS_HISTORY records ({step, corpus, sha256}, oldest
  first); [] when it has none."""
  path = pathlib.Path(workdir) / CORPUS_HISTORY
  lines = []
  for text in path.read_text().splitlines() if path.exists() else ():
    try:  # a line edited by hand into something else is no record
      lines.append(dict(json.loads(text)))
    except (ValueError, TypeError):
      continue
  return lines


def record_corpus(workdir, name, sha256, step):
  """Records in workdir/CORPUS_HISTORY that a run trains on the data
  `name` (str, for people) with content hash `sha256` (hex str; None:
  unknown, nothing recorded) from `step` (its newest checkpoint; 0: a fresh
  start, which begins a new record), and says (lfjax.loop.say) when it
  differs from the one the run trained on up to that step. Process 0 only;
  the caller undoes it when the start fails
  (checkpoints.undo_failed_start(keep=(CORPUS_HISTORY,)))."""
  if jax.process_index() != 0 or sha256 is None:
    return
  path = pathlib.Path(workdir) / CORPUS_HISTORY
  lines = corpus_records(workdir) if step else []
  now = {"step": step, "corpus": name, "sha256": sha256}
  if lines and lines[-1].get("sha256") == sha256:
    return
  if lines:
    old = lines[-1]
    loop.say(f"warning: the training data changed since step {step}: "
             f"{old.get('corpus')} sha256 {str(old.get('sha256'))[:12]} "
             f"(from step {old.get('step')}) -> {name} sha256 "
             f"{sha256[:12]}; training continues on the new data "
             f"(recorded in {path})", flush=True)
  elif step:
    loop.say(f"note: {workdir} has no record of the data it trained on "
             f"before step {step} (started before lfjax kept {CORPUS_HISTORY}"
             f"); recording {name} sha256 {sha256[:12]} from here on",
             flush=True)
  path.parent.mkdir(parents=True, exist_ok=True)
  # The run folder's writer: a reader sees the old record or the new one.
  files.write_atomic(path, "".join(json.dumps(l) + "\n"
                                   for l in lines + [now]))


def trained_on(workdir, checkpoint):
  """The CORPUS_HISTORY record ({step, corpus, sha256}) of the data that
  checkpoint `checkpoint` (a step) of the run in workdir was trained on, or
  None without a record."""
  # A record {step: s} holds from step s on: checkpoint c was trained on
  # the last one below c.
  records = [r for r in corpus_records(workdir)
             if isinstance(r.get("step"), int) and r["step"] < checkpoint]
  return records[-1] if records else None


def trained_sha256(workdir, checkpoint, default):
  """The sha256 of the data checkpoint `checkpoint` was trained on, else
  `default`: what an evaluation's file name leaves out (result_path), so
  that the plain name holds a result on the run's own data and a result on
  other data gets a `_data<hash>` / `_sha<hash>` name, whichever came
  first."""
  record = trained_on(workdir, checkpoint)
  return record.get("sha256", default) if record else default


def note_other_data(workdir, checkpoint, name, sha256, split):
  """Prints a note to stderr when checkpoint `checkpoint` (a step) of the
  run in workdir was trained on other data than `name`/`sha256`, the data
  it is evaluated on (split: the split evaluated). Silent without a
  record. Returns whether it noted."""
  record = trained_on(workdir, checkpoint)
  if record is None or record.get("sha256") == sha256:
    return False
  print(f"note: the run trained on {record.get('corpus')} sha256 "
        f"{str(record.get('sha256'))[:12]}; this is {name} "
        f"sha256 {str(sha256)[:12]} (the data changed since: the "
        f"{split} split may differ too)", file=sys.stderr)
  return True
