"""Orbax checkpoints of a run: params, optimizer state and data state saved
together, so a resumed run continues exactly; and loading a finished run.

Saves are asynchronous: orbax copies the arrays to host memory and the
training continues while a background thread writes and commits them (a
kill before the commit leaves no trace of the step: the previous one stays
the newest). Each saved step then gets its integrity record
(lfjax.integrity), written by a thread of ours as soon as orbax has
committed the step; a restore verifies it, checks the restored arrays for
NaN/Inf, and raises CheckpointError naming the step, what failed and how
to fall back to the previous good step; nothing is ever deleted.

config.json is the run's current config; resuming compares the new config
with it before anything is written (write_config) and keeps every version
in config_history.jsonl.
"""

import contextlib
import datetime
import fnmatch
import json
import os
import pathlib
import re
import shlex
import shutil
import threading
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from absl import logging
from flax import nnx

from lfjax import files
from lfjax import integrity
from lfjax.integrity import saved_steps
from lfjax.data import chars
from lfjax.models import charlm

HISTORY = "config_history.jsonl"
# Raised by restore (from the integrity checks): callers catch it here.
CheckpointError = integrity.CheckpointError


# Config fields added to lfjax after runs were started, and the value a run
# without the field ran with: an encoder run before model.scan_layers
# had per-layer parameters in its checkpoints.
ABSENT_MEANT = {"model.scan_layers": False}


class ConfigChangeError(ValueError):
  """A resumed run's config changes fields the saved run cannot change."""


def quiet_orbax():
  """Orbax logs every save at INFO; keep the terminal for progress lines
  unless the user asked for --verbosity."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


class Manager(ocp.CheckpointManager):
  """orbax's CheckpointManager (asynchronous saves) that also writes each
  saved step's integrity record once orbax has committed it, in a thread
  of its own (save() below starts it). wait_until_finished (and close,
  which calls it) also waits for that record and raises what writing it
  raised."""

  _recorder = None
  _record_error = None

  def record_when_committed(self, step):
    def write():
      try:
        super(Manager, self).wait_until_finished()
        integrity.write_record(self.directory, step)
      except BaseException as e:  # pylint: disable=broad-except
        self._record_error = e  # raised in the training thread
    self._recorder = threading.Thread(target=write, daemon=True,
                                      name=f"lfjax-record-{step}")
    self._recorder.start()

  def wait_until_finished(self):
    super().wait_until_finished()
    if self._recorder is not None:
      self._recorder.join()
      self._recorder = None
    if self._record_error is not None:
      e, self._record_error = self._record_error, None
      raise e


def manager(workdir, keep=3):
  return Manager(
      pathlib.Path(workdir).absolute() / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def _reader(workdir):
  """A manager for restoring only: it creates no folder and would keep
  every step (orbax collects old steps only when saving). Not read_only=
  True, which logs a warning on every evaluate."""
  return ocp.CheckpointManager(
      pathlib.Path(workdir).absolute() / "checkpoints",
      options=ocp.CheckpointManagerOptions(create=False, max_to_keep=None))


class ConfigMismatchError(ValueError):
  """The run's config.json builds arrays of other shapes than a checkpoint
  holds (config.json edited by hand): the checkpoint is not damaged."""


def _key_name(k):
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _shapes(tree):
  """{'a/b/0/c': (shape, dtype)} of a tree's arrays (nnx's `value` leaves
  named by their variable)."""
  out = {}
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    names = [_key_name(k) for k in path]
    if names and names[-1] == "value":
      names = names[:-1]
    out["/".join(names)] = (tuple(getattr(x, "shape", ())),
                            str(getattr(x, "dtype", "")))
  return out


def structure_problems(directory, step, name, abstract):
  """Lines naming the arrays whose presence or shape differs between item
  `name` of a saved step (its orbax metadata) and `abstract` (what the
  config builds); [] when they agree or the metadata cannot be read."""
  try:
    saved = _shapes(ocp.StandardCheckpointHandler().metadata(
        integrity.step_dir(directory, step) / name))
  except Exception:  # pylint: disable=broad-except
    return []  # unreadable metadata: the restore says what is wrong
  want = _shapes(abstract)
  fmt = lambda s: "[" + ", ".join(map(str, s)) + "]"
  lines = [f"{name}/{k}: {fmt(saved[k][0])} in the checkpoint, "
           f"{fmt(want[k][0])} from config.json"
           for k in sorted(set(saved) & set(want)) if saved[k][0] != want[k][0]]
  lines += [f"{name}/{k}: in the checkpoint, not built from config.json"
            for k in sorted(set(saved) - set(want))]
  lines += [f"{name}/{k}: built from config.json, not in the checkpoint"
            for k in sorted(set(want) - set(saved))]
  return lines


def _mismatch(directory, step, args):
  """ConfigMismatchError when the requested trees disagree with the saved
  step's arrays, else None."""
  # The params name every array the model config shapes; the optimizer
  # state follows them.
  lines = (structure_problems(directory, step, "params", args["params"].item)
           if "params" in args.keys() else [])
  if not lines:
    return None
  workdir = directory.parent
  more = f"\n  ... and {len(lines) - 6} more" if len(lines) > 6 else ""
  edited = ""
  try:
    saved = json.loads((workdir / HISTORY).read_text().splitlines()[-1])
    now = json.loads((workdir / "config.json").read_text())
    diff = config_problems(saved["config"], now, step)[0]
    if diff:
      edited = (" It differs from the last version in "
                f"{HISTORY}: " + ", ".join(
                    f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
                + ".")
  except (OSError, ValueError, KeyError, IndexError):
    pass
  return ConfigMismatchError(
      f"config: {workdir}/config.json disagrees with checkpoint step {step}; "
      "the checkpoints are not damaged (move none of them), config.json "
      "builds other arrays:\n  " + "\n  ".join(lines[:6]) + more +
      f"\nWas config.json edited?{edited} Put back the version the "
      f"checkpoints were saved with (every version is in {workdir / HISTORY})"
      ", or start a new run with a new --workdir.")


def _clean_orbax_text(text):
  """Drops orbax's advice to restore with strict=False (it would load
  arrays into a model of other shapes)."""
  text = re.sub(r"[^.;\n]*strict=False[^.;\n]*[.;]?", "", text)
  return re.sub(r"\s+", " ", text).strip()


def _restore(mngr, step, args):
  """mngr.restore, verified before and checked finite after; orbax's and
  tensorstore's many error types for unreadable bytes become one
  CheckpointError. Arrays of other shapes than config.json builds are a
  ConfigMismatchError (the config, not the checkpoint, is wrong)."""
  directory = pathlib.Path(mngr.directory)
  integrity.verify(directory, step)
  mismatch = _mismatch(directory, step, args)
  if mismatch is not None:
    raise mismatch
  try:
    r = mngr.restore(step, args=args)
  except Exception as e:  # pylint: disable=broad-except
    # The innermost cause names the file and byte range; the outer layers
    # only say that reading failed.
    root = e
    while root.__cause__ is not None or root.__context__ is not None:
      root = root.__cause__ or root.__context__
    lines = _clean_orbax_text(str(root)).splitlines() or [""]
    raise integrity.damaged(directory, step, (
        f"could not be read ({type(root).__name__}: {lines[0][:300]})")
                   ) from e
  integrity.check_finite(directory, step, {k: r[k] for k in r.keys() if k != "data"})
  return r


def save(mngr, step, params, opt_state, data_state):
  """Starts saving step with mngr (a Manager) and returns once orbax has
  copied the arrays to host memory: the caller may then donate or change
  them. orbax writes and commits in the background, then the step's
  integrity record is written; the previous save is waited for first (one
  in flight), and mngr.wait_until_finished() waits for this one.

  data_state: a JSON dict (phase, sampler position)."""
  mngr.wait_until_finished()
  mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      opt_state=ocp.args.StandardSave(opt_state),
      data=ocp.args.JsonSave(data_state)), force=True)
  mngr.record_when_committed(step)


def _abstract(tree):
  """The restore target of tree: each leaf's shape, dtype and sharding.

  Leaves that are not jax arrays (the numpy weights lfjax.convert loads)
  get the default device: with no sharding, orbax would lay them out as
  they were saved, which fails where those devices do not exist (a run
  trained on a mesh, restored on fewer devices) or mixes device sets in
  one jit (restored on the same devices with another mesh)."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def leaf(x):
    if isinstance(x, jax.Array):
      return ocp.utils.to_shape_dtype_struct(x)
    return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                sharding=device)
  return jax.tree.map(leaf, tree)


def restore(mngr, step, params, opt_state):
  """Restores into the structure (and shardings) of params and opt_state.
  Raises CheckpointError when the step fails verification, cannot be read
  or holds NaN/Inf."""
  r = _restore(mngr, step, ocp.args.Composite(
      params=ocp.args.StandardRestore(_abstract(params)),
      opt_state=ocp.args.StandardRestore(_abstract(opt_state)),
      data=ocp.args.JsonRestore()))
  return r["params"], r["opt_state"], r["data"]


def resumable(task):
  """The fields (fnmatch patterns) a resumed run of `task` may change: its
  module's RESUMABLE (lfjax.tasks). They steer only the steps still to come,
  or where files are read and logged, never what the saved arrays and data
  position mean; everything else (model shapes, data, tokenizer, init
  checkpoint, task, seed: it fixes the data order the saved position is
  in) stays for the life of a run."""
  from lfjax import tasks  # the task modules import this one
  return tasks.get(task).RESUMABLE


def flat(tree, prefix=""):
  """{"a.b": value} of a nested dict (a config's to_dict or JSON)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _schedule_problems(old, new, step):
  """A char-LM schedule may change only from the phase the run is in: the
  phases before it ran as they are, and the current one (also one that
  ended at the checkpoint: its sampler resumes where it stopped) keeps the
  sequence length, window scale and batch size its data position is in."""
  o, n = old["schedule"], new["schedule"]
  at = lambda xs, p: xs[p] if p < len(xs) else None
  problems, start = [], 0
  for p, length in enumerate(o["steps"]):
    end = start + length
    if start >= step:
      break
    ran = end < step
    for f in (("steps", "seq_lens", "window_scales", "lrs", "batch_sizes")
              if ran else ("seq_lens", "window_scales", "batch_sizes")):
      if at(o[f], p) != at(n[f], p):
        problems.append(
            f"schedule.{f}[{p}]: {at(o[f], p)} -> {at(n[f], p)} (phase "
            f"{p + 1} {'ran before' if ran else 'holds the data position at'}"
            f" step {step})")
    start = end
  if sum(n["steps"]) < step:
    problems.append(f"schedule.steps: {o['steps']} -> {n['steps']} ends at "
                    f"step {sum(n['steps'])}, before the checkpoint at step "
                    f"{step}")
  return problems


def config_problems(old, new, step):
  """(changes, problems) between saved config `old` and `new` (JSON
  dicts) for a run whose newest checkpoint is `step`: changes as
  {field: (old, new)}; problems, one line per change it cannot take."""
  fo, fn = flat(old), flat(new)
  # Char-LM configs predate the field; it is not an addition.
  fo.setdefault("task", "charlm")
  fn.setdefault("task", "charlm")
  # Fields added since whose absence meant another value than today's
  # default: a resume that would change it is a change (and refused where
  # not RESUMABLE), not an addition.
  for k, v in ABSENT_MEANT.items():
    if k in fn:
      fo.setdefault(k, v)
  task = fo["task"]
  # A field only one side has was added to (or removed from) lfjax since
  # the run started: it is no change the user asked for.
  changes = {k: (fo[k], fn[k]) for k in sorted(set(fo) & set(fn))
             if fo[k] != fn[k]}
  allowed = resumable(task)
  problems = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()
              if not any(fnmatch.fnmatchcase(k, pat) for pat in allowed)]
  if task == "charlm" and any(k.startswith("schedule.") for k in changes):
    problems += _schedule_problems(old, new, step)
  if task == "mlm" and "steps" in changes and fn["steps"] < step:
    problems.append(f"steps: {fo['steps']} -> {fn['steps']} is before the "
                    f"checkpoint at step {step}")
  clip = changes.get("optim.grad_clip")
  if task == "mlm" and clip and (clip[0] == 0) != (clip[1] == 0):
    problems.append(f"optim.grad_clip: {clip[0]} -> {clip[1]} (turning "
                    "clipping on or off changes the optimizer state)")
  return changes, problems


def _override(field, value):
  """The --config.field=value flag that sets a field back to value."""
  if isinstance(value, list):
    text = "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1
                                                      else "") + ")"
  else:
    text = value if isinstance(value, str) else repr(value)
  return shlex.quote(f"--config.{field}={text}")


def _resume_flags(changes, problems):
  """--config flags with the saved values of the changed fields that the
  problems come from (every changed schedule field when a schedule problem
  is among them)."""
  fields = [k for k in changes
            if any(p.startswith(f"{k}:") for p in problems)
            or (k.startswith("schedule.") and any(
                p.startswith("schedule.") for p in problems))]
  return " ".join(_override(k, changes[k][0]) for k in fields)


def _compare(config, workdir):
  """(newest saved step, saved steps, saved config or None, config as
  JSON, changes) of config against workdir's config.json. Raises
  ConfigChangeError for changes a run with checkpoints cannot take."""
  path = workdir / "config.json"
  new = json.loads(config.to_json())
  old = json.loads(path.read_text()) if path.exists() else None
  steps = saved_steps(workdir) if (workdir / "checkpoints").exists() else []
  step = steps[-1] if steps else 0
  changes = {}
  if old is not None and old != new:
    changes, problems = config_problems(old, new, step)
    if problems and steps:
      raise ConfigChangeError(
          f"config: {workdir} holds a run at step {step} that cannot "
          "resume with these changes:\n  " + "\n  ".join(problems) +
          "\nNothing was written. To resume, pass the run's saved values "
          f"(from {path}): {_resume_flags(changes, problems)}; or start a "
          "new run with a new --workdir.")
  return step, steps, old, new, changes


def check_config(config, workdir):
  """write_config's check alone, writing nothing: returns the run's newest
  saved step (0 for none; also for a workdir that does not exist) or
  raises ConfigChangeError. A trainer calls it before loading data and
  model, so a refused config fails fast; lfjax.loop.run writes the config
  once the run starts."""
  return _compare(config, pathlib.Path(workdir))[0]


def write_config(config, workdir, total=None):
  """Checks config against the run's saved config.json, then writes it as
  config.json and appends it to config_history.jsonl when it changes a
  field. Returns the run's newest saved step (0 for none).

  A run with checkpoints may change only RESUMABLE fields (and the
  schedule from its current phase on). Raises ConfigChangeError listing the
  other changes, and the saved values to pass to resume, before anything is
  written, so the run folder stays as it was.

  total: the steps the run trains under config. A run whose newest
  checkpoint is at or past it has nothing to train: nothing is written,
  and the changes are reported as having had no effect.
  """
  workdir = pathlib.Path(workdir)
  path, history = workdir / "config.json", workdir / HISTORY
  step, steps, old, new, changes = _compare(config, workdir)
  if old == new:
    return step
  if steps and total is not None and step >= total:
    if changes:
      print(f"config: {workdir} is finished (step {step} of {total} under "
            "the new config), so there is nothing to train: "
            + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
            + f" had no effect, and {path} is unchanged. A longer schedule "
            "trains on.", flush=True)
    return step
  if jax.process_index() != 0:
    return step  # multi-host: process 0 writes the run's files
  if old is not None and not changes:
    # Fields added to (or removed from) lfjax since the run started: the
    # config gains them, but no change was asked for: no history entry.
    files.write_atomic(path, json.dumps(new, indent=1))
    return step
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")
  lines = []
  if old is not None and not history.exists():
    # A run from before the history was kept: its first entry is the
    # config it was started with.
    lines.append({"step": None, "time": None, "changes": {}, "config": old})
  lines.append({"step": step, "time": now,
                "changes": {k: list(v) for k, v in changes.items()},
                "config": new})
  with history.open("a") as f:
    f.write("".join(json.dumps(l) + "\n" for l in lines))
  files.write_atomic(path, json.dumps(new, indent=1))
  if changes:
    print(f"config: resuming from step {step} with "
          + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
          + f"; every version is kept in {history}")
  return step


def _trained_since(workdir, step):
  """Whether the run in workdir saved a checkpoint or logged a record past
  `step`."""
  if (workdir / "checkpoints").exists() and any(
      s > step for s in saved_steps(workdir)):
    return True
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return False
  for line in path.read_text().splitlines():
    try:
      if json.loads(line).get("step", 0) > step:
        return True
    except (ValueError, AttributeError):
      continue  # a torn last line
  return False


def _remove(path):
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path)
  else:
    path.unlink()


@contextlib.contextmanager
def undo_failed_start(workdir, keep=()):
  """Context of a training start (lfjax.loop.run): when it raises before
  the run saves a checkpoint or logs a record (missing data, a compile
  error, an interrupt, a NaN in the first log interval), workdir is put
  back as it was: config.json and config_history.jsonl as they were, what
  the start added (metrics, an empty checkpoints/, TensorBoard files)
  removed, and a folder that did not exist removed. A later, corrected
  command then starts afresh instead of reading as a resume of the failed
  start (`config: resuming from step 0 with ...`).

  What the start changed in files that were there is kept (the lines of
  metrics.jsonl past the checkpoint, which any resume drops). Process 0
  only (it writes the run's files); an entry another program adds to the
  folder during the start is removed with the start's own.

  keep: names of more files in workdir to put back as they were (a task's
  own records of the run, written at its start).
  """
  workdir = pathlib.Path(workdir).absolute()
  top = workdir  # the outermost folder the start may create
  while not top.parent.exists():
    top = top.parent
  before = set(os.listdir(workdir)) if workdir.is_dir() else None
  kept = {name: (workdir / name).read_bytes()
          for name in ("config.json", HISTORY, *keep)
          if before is not None and (workdir / name).is_file()}
  step = max(saved_steps(workdir), default=0) if before is not None else 0
  try:
    yield
  except BaseException:
    if (jax.process_index() == 0 and workdir.is_dir()
        and not _trained_since(workdir, step)):
      for name in set(os.listdir(workdir)) - (before or set()):
        _remove(workdir / name)
      for name, data in kept.items():
        files.write_atomic(workdir / name, data)
      if before is None:
        d = workdir
        while d != top.parent and d.is_dir() and not any(d.iterdir()):
          d.rmdir()
          d = d.parent
    raise


def read_config(workdir, task=None):
  """A run's config.json. task: the task the caller handles (a name in
  lfjax.tasks.TASKS); a run of another task raises ValueError saying which
  commands handle it."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"workdir: {path} does not exist; expected the "
                            "folder of a `python -m lfjax.train` run")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  have = config.get("task", "charlm")
  if task is not None and have != task:
    from lfjax import tasks  # the task modules import this one
    try:
      tools = "; see " + " and ".join(
          c.split(" --")[0] for c in tasks.get(have).next_steps(workdir)) + (
              f" for {have!r} runs")
    except ValueError:
      tools = ""
    raise ValueError(f"workdir: {workdir} is a {have!r} run, not "
                     f"{tasks.get(task).KIND}{tools}")
  return config


def model_config(config, vocab_size):
  """The CharLMConfig of an ml_collections run config."""
  fields = dict(config.model)
  for name in ("windows", "dilations"):
    fields[name] = tuple(fields[name])
  return charlm.CharLMConfig(vocab_size=vocab_size, **fields)


def restore_params(workdir, params, step=None, flag=None):
  """(params, data state, step) of checkpoint `step` (default: newest).

  flag: the command-line flag step came from ("--checkpoint"): a step not
  saved is then a cli.UsageError naming it.

  Raises FileNotFoundError without checkpoints, ValueError for a step not
  saved, CheckpointError (see restore) for a damaged one."""
  steps = saved_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"workdir: no checkpoint under {workdir}/"
                            "checkpoints; train first")
  step = steps[-1] if step is None else step
  if step not in steps:
    text = f"expected one of the saved steps {steps}, got {step}"
    if flag:
      from lfjax import cli
      raise cli.UsageError(f"{flag}: {text}")
    raise ValueError(f"step: {text}")
  with _reader(workdir) as mngr:
    r = _restore(mngr, step, ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params)),
        data=ocp.args.JsonRestore()))
  return r["params"], r["data"], step


class Trained(NamedTuple):
  config: ml_collections.ConfigDict
  model: charlm.CharLM
  step: int
  window_scale: int  # of the phase the checkpoint was saved in
  corpus: chars.CharCorpus


def load_trained(workdir, step=None, flag=None, rel_impl=None):
  """A char-LM run's config, model with trained params, step, window scale
  and corpus (for `python -m lfjax.evaluate` / `lfjax.sample`); flag: see
  restore_params. rel_impl: "table" or "features" to build the model with
  that relative-position path instead of the run's (same parameters)."""
  config = read_config(workdir, "charlm")
  if rel_impl is not None:
    config.model.rel_impl = rel_impl
  corpus = chars.load(config.data.name, config.data.dir or None)
  model = charlm.CharLM(model_config(config, corpus.vocab_size),
                        rngs=nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model)
  params, data, step = restore_params(workdir, params, step, flag)
  scale = config.schedule.window_scales[data["phase"]]
  return Trained(config, nnx.merge(graphdef, params), step, int(scale), corpus)
