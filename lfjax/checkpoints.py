"""Orbax checkpoints of a run: params, optimizer state and data state saved
together, so a resumed run continues exactly; and loading a finished run."""

import json
import pathlib
from typing import NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import flags
from absl import logging
from flax import nnx

from lfjax.data import chars
from lfjax.models import charlm


def quiet_orbax():
  """Orbax logs every save at INFO; keep the terminal for progress lines
  unless the user asked for --verbosity."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def manager(workdir, keep=3):
  return ocp.CheckpointManager(
      pathlib.Path(workdir).absolute() / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(mngr, step, params, opt_state, data_state):
  """data_state: a JSON dict (phase, sampler position)."""
  mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      opt_state=ocp.args.StandardSave(opt_state),
      data=ocp.args.JsonSave(data_state)), force=True)


def restore(mngr, step, params, opt_state):
  """Restores into the structure (and shardings) of params and opt_state."""
  abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  r = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract(params)),
      opt_state=ocp.args.StandardRestore(abstract(opt_state)),
      data=ocp.args.JsonRestore()))
  return r["params"], r["opt_state"], r["data"]


def write_config(config, workdir):
  """Writes workdir/config.json, keeping a changed old one as
  config.previous.json (a resumed run may override fields)."""
  path = pathlib.Path(workdir) / "config.json"
  new = json.loads(config.to_json())
  if path.exists():
    old = json.loads(path.read_text())
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
      print(f"config differs from {path} in {changed}; keeping the old one "
            f"as {path.with_suffix('.previous.json')}")
      path.with_suffix(".previous.json").write_text(path.read_text())
  path.write_text(json.dumps(new, indent=1))


def read_config(workdir):
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"workdir: {path} does not exist; expected the "
                            "folder of a `python -m lfjax.train` run")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def model_config(config, vocab_size):
  """The CharLMConfig of an ml_collections run config."""
  fields = dict(config.model)
  for name in ("windows", "dilations"):
    fields[name] = tuple(fields[name])
  return charlm.CharLMConfig(vocab_size=vocab_size, **fields)


def restore_params(workdir, params, step=None):
  """(params, data state, step) of checkpoint `step` (default: newest)."""
  with manager(workdir) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"workdir: no checkpoint under {workdir}/"
                              "checkpoints; train first")
    if step not in mngr.all_steps():
      raise ValueError(f"step: expected one of the saved steps "
                       f"{mngr.all_steps()}, got {step}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, params)
    r = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract),
        data=ocp.args.JsonRestore()))
  return r["params"], r["data"], step


class Trained(NamedTuple):
  config: ml_collections.ConfigDict
  model: charlm.CharLM
  step: int
  window_scale: int  # of the phase the checkpoint was saved in
  corpus: chars.CharCorpus


def load_trained(workdir, step=None):
  """A char-LM run's config, model with trained params, step, window scale
  and corpus (for `python -m lfjax.evaluate` / `lfjax.sample`)."""
  config = read_config(workdir)
  if config.get("task", "charlm") != "charlm":
    raise ValueError(f"workdir: {workdir} is a {config.task!r} run, not a "
                     "char-LM; see lfjax.mlm for MLM runs")
  corpus = chars.load(config.data.name, config.data.dir or None)
  model = charlm.CharLM(model_config(config, corpus.vocab_size),
                        rngs=nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model)
  params, data, step = restore_params(workdir, params, step)
  scale = config.schedule.window_scales[data["phase"]]
  return Trained(config, nnx.merge(graphdef, params), step, int(scale), corpus)
