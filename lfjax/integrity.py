"""The integrity of a run's saved steps: each step's record (RECORD inside
its folder: the size and sha256 of each of its files, written once orbax
has committed the step), verifying a step against it, and the one error,
CheckpointError, that names a step not to use and how to fall back to the
previous good one. lfjax.checkpoints saves and restores through it.
"""

import concurrent.futures
import hashlib
import json
import os
import pathlib
import shlex
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lfjax import files

RECORD = "lfjax_integrity.json"


class CheckpointError(ValueError):
  """A saved step that must not be used: its files differ from its
  integrity record, orbax cannot read it, or it holds NaN/Inf. The message
  names the step, what failed and how to fall back."""


def saved_steps(workdir):
  """The finalized steps under workdir/checkpoints, ascending."""
  return sorted(ocp.path.step.checkpoint_steps(
      pathlib.Path(workdir) / "checkpoints"))


def step_dir(directory, step):
  return pathlib.Path(ocp.path.step.build_step_path(
      directory, ocp.path.step.standard_name_format(), step))


def _sha256(path):
  with path.open("rb") as fh:
    return hashlib.file_digest(fh, "sha256").hexdigest()


def _hash_all(paths):
  """sha256 of each file, several at once (hashlib releases the GIL while
  it reads: a multi-GB checkpoint hashes at the disk's speed)."""
  with concurrent.futures.ThreadPoolExecutor(
      min(8, os.cpu_count() or 1)) as pool:
    return list(pool.map(_sha256, paths))


def _digests(step_dir):
  paths = [f for f in sorted(step_dir.rglob("*"))
           if f.is_file() and not f.name.startswith(RECORD)]
  return {f.relative_to(step_dir).as_posix(): {"bytes": f.stat().st_size,
                                               "sha256": h}
          for f, h in zip(paths, _hash_all(paths))}


def write_record(directory, step):
  """Writes step's integrity record; call only once orbax has committed
  the save (Manager.record_when_committed does)."""
  if jax.process_index() != 0:
    return
  d = step_dir(directory, step)
  files.write_atomic(d / RECORD, json.dumps(
      {"step": step, "files": _digests(d)}, indent=1))


def _problem(directory, step):
  """None when step's files match its record, "no record" when it has
  none, else what differs (the first file in name order)."""
  d = step_dir(directory, step)
  try:
    files = json.loads((d / RECORD).read_text())["files"]
  except FileNotFoundError:
    return "no record"
  except (ValueError, KeyError) as e:
    return f"has an unreadable integrity record {RECORD} ({e})"
  names = sorted(files)
  # Sizes first: a missing or truncated file is found without reading.
  for name in names:
    f, want = d / name, files[name]
    if not f.is_file():
      return f"is missing {name}"
    size = f.stat().st_size
    if size != want["bytes"]:
      return (f"has {name} of {size:,} bytes, recorded {want['bytes']:,} "
              "at save time (truncated or overwritten)")
  for name, got in zip(names, _hash_all([d / n for n in names])):
    if got != files[name]["sha256"]:
      return (f"has {name} with bytes changed since the save (its sha256 "
              f"differs from the one in {RECORD})")
  return None


_warned = set()


def _unverified(directory, step):
  if (directory, step) not in _warned:
    _warned.add((directory, step))
    print(f"warning: checkpoint step {step} of {directory.parent} has no "
          f"integrity record ({RECORD}; saved before lfjax wrote them, or "
          "killed between the save and its record): its files are not "
          "verified, only that its arrays are finite", file=sys.stderr)


def _fallback(directory, step):
  """How to get back to the newest earlier step that passes its check."""
  workdir = directory.parent
  earlier = [s for s in reversed(saved_steps(workdir)) if s < step]
  good = next((s for s in earlier
               if _problem(directory, s) in (None, "no record")), None)
  if good is None:
    return (f"No earlier step passes its check (saved steps: "
            f"{saved_steps(workdir)}); start a new run with a new "
            "--workdir.")
  dest = workdir / "damaged_checkpoints" / str(step)
  n = 1
  while dest.exists():
    dest, n = dest.with_name(f"{step}.{n}"), n + 1
  note = ("" if _problem(directory, good) is None
          else " (it has no integrity record to verify)")
  return (f"Step {good} is the newest earlier step that passes{note}. To "
          f"resume, evaluate or sample from it, move step {step} out of "
          f"the run's checkpoints: mkdir -p {shlex.quote(str(dest.parent))}"
          f" && mv {shlex.quote(str(step_dir(directory, step)))} "
          f"{shlex.quote(str(dest))} (evaluate, sample and mlm also take "
          f"--checkpoint {good}).")


def damaged(directory, step, what):
  return CheckpointError(
      f"checkpoint step {step} of {directory.parent} {what}; not using it "
      f"and nothing was deleted. {_fallback(directory, step)}")


# Steps this process verified, with their files' sizes and modification
# times then: a second restore of the same unchanged step reads nothing.
_verified = {}


def _signature(directory, step):
  d = step_dir(directory, step)
  return tuple((f.as_posix(), f.stat().st_size, f.stat().st_mtime_ns)
               for f in sorted(d.rglob("*")) if f.is_file())


def verify(directory, step):
  """Checks step's files against its integrity record (a warning when it
  has none), once per process and unchanged step. In a multi-host run only
  process 0 reads the files (they are shared storage) and tells the others
  whether to go on, so a step is hashed once, not once per host; call it
  on every process.

  Raises CheckpointError naming the first file that differs (on process
  0; the others name the step and point to process 0's output)."""
  directory = pathlib.Path(directory)
  problem = None
  if jax.process_index() == 0:
    key = (directory.absolute(), step)
    sig = _signature(directory, step)
    if _verified.get(key) != sig:
      problem = _problem(directory, step)
      if problem is None:
        _verified[key] = sig
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    bad = int(multihost_utils.broadcast_one_to_all(
        np.int32(problem not in (None, "no record"))))
    if jax.process_index() != 0:
      if bad:
        raise CheckpointError(
            f"checkpoint step {step} of {directory.parent} failed its "
            "integrity check on process 0 (its output names the file and "
            "how to fall back); not using it and nothing was deleted")
      return
  if problem == "no record":
    _unverified(directory, step)
  elif problem:
    raise damaged(directory, step, problem)


@jax.jit
def _nonfinite_counts(xs):
  """[int32 scalar] per array of xs: how many of its values are NaN/Inf."""
  return [jnp.sum(~jnp.isfinite(x)) for x in xs]


def check_finite(directory, step, tree):
  """Raises CheckpointError naming the first array holding NaN/Inf."""
  leaves = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  # One program for all of them, not one per array: on a mesh each count
  # is a collective, and hundreds of small collective programs in flight
  # at once hung XLA:CPU's virtual devices (a rendezvous timeout, 1 run in
  # 4 of tests/test_parallel.py's fine-tuning resume on a loaded CPU).
  bad = jax.device_get(_nonfinite_counts([x for _, x in leaves]))
  for (path, x), n in zip(leaves, bad):
    if n:
      raise damaged(directory, step, (
          f"holds non-finite values: {int(n)} of {x.size} in "
          f"{jax.tree_util.keystr(path)} (the first such array)"))
