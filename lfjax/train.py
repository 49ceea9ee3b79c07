"""Training of any lfjax task; config.task picks it (lfjax.tasks).

  python -m lfjax.train --config configs/charlm_default.py:tiny --workdir DIR
  python -m lfjax.train --config configs/mlm_longformer_base.py:tiny \
      --config.init_from DIR --workdir DIR

  python -m lfjax.train --config configs/mlm_longformer_base.py \
      --config.init_from DIR --plan_for a100   # will it fit? (lfjax.plan)

Restarting the same command resumes from DIR's newest checkpoint and
reproduces exactly the losses an uninterrupted run would have written.
DIR gets config.json, metrics.jsonl (one JSON object per logged step) and
checkpoints/. The config file's docstring says what its task needs.
"""

import sys

import jax
from absl import flags
from ml_collections import config_flags

from lfjax import checkpoints
from lfjax import cli
from lfjax import parallel
from lfjax import tasks


def train_and_evaluate(config, workdir):
  """Trains (or resumes) the run in workdir with the task config.task
  names (lfjax.tasks); returns the last logged record."""
  return tasks.get(tasks.of(config)).train_and_evaluate(config, workdir)


def _define_flags(fv, argv):
  config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/charlm_default.py:tiny; "
      "fields are overridden with --config.section.field=value.",
      flag_values=fv, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "Run folder (resumed if it has "
                      "checkpoints).", flag_values=fv)
  flags.DEFINE_string(
      "plan_for", None, "Train nothing: compile the run's steps for this "
      "GPU (a100, a100_80, h100, h200; xN for N of them, e.g. h100x8) or "
      "TPU (v5e, v5p, v6e; a slice as v5e:2x2) and say whether they fit its "
      "memory (exit 0) or not (exit 1); reads only init_from's config.json, "
      'needs no --workdir and no GPU or TPU (pip install "lfjax[plan]" for '
      'GPUs, "lfjax[tpu]" for TPUs; see lfjax/plan.py).', flag_values=fv)
  flags.DEFINE_integer(
      "plan_choices", 4, "With --plan_for, multiple_choice only: candidates "
      "per example to plan for (the data decides in training; WikiHop has "
      "up to 79).", flag_values=fv)


def main(argv=None):
  """`python -m lfjax.train --config FILE[:arg] --workdir DIR`; argv
  excludes the program name. Raises cli.UsageError for bad flags or config
  fields, and the training's own errors (see cli.run for how they print)."""
  argv = sys.argv[1:] if argv is None else argv
  fv = cli.parse_absl(argv, _define_flags, prog="python -m lfjax.train",
                      doc=__doc__, required=("config",))
  if fv.plan_for is not None:
    raise SystemExit(_plan(fv))
  if fv.workdir is None:
    raise cli.UsageError("--workdir: required (see --help)")
  try:
    task = tasks.get(tasks.of(fv.config))
    task.validate(fv.config)  # a bad value is a usage error: exit 2
  except ValueError as e:
    raise cli.UsageError(str(e)) from None
  checkpoints.quiet_orbax()
  # Multi-host (JAX_NUM_PROCESSES > 1): before any JAX computation.
  parallel.initialize_distributed()
  print(f"jax {jax.__version__} on {jax.devices()}", flush=True)
  task.train_and_evaluate(fv.config, fv.workdir)
  print("next: " + "\n      ".join(task.next_steps(fv.workdir)))


def _plan(fv):
  """--plan_for: lfjax.plan's exit status (0 fits, 1 does not fit). A
  missing plugin is a usage error (exit 2), in one line."""
  from lfjax import extras
  from lfjax import plan
  cli.at_least("--plan_choices", fv.plan_choices, 1)
  plan.parse_target(fv.plan_for)  # a bad value fails before any import
  # The plan compiles for devices that are not here (lfjax.plan): the
  # host needs no GPU backend, and trying one on a machine without a GPU
  # would only warn.
  jax.config.update("jax_platforms", "cpu")
  try:
    return plan.plan(fv.config, fv.plan_for, choices=fv.plan_choices)
  except extras.MissingPackage as e:
    raise cli.UsageError(str(e)) from None


if __name__ == "__main__":
  sys.exit(cli.run(main))
