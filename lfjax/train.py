"""Training of any lfjax task; config.task picks it (lfjax.tasks).

  python -m lfjax.train --config configs/charlm_default.py:tiny --workdir DIR
  python -m lfjax.train --config configs/mlm_longformer_base.py:tiny \
      --config.init_from DIR --workdir DIR

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


def main(argv=None):
  """`python -m lfjax.train --config FILE[:arg] --workdir DIR`; argv
  excludes the program name. Raises cli.UsageError for bad flags or config
  fields, and the training's own errors (see cli.run for how they print)."""
  fv = cli.parse_absl(sys.argv[1:] if argv is None else argv, _define_flags,
                      prog="python -m lfjax.train", doc=__doc__,
                      required=("config", "workdir"))
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


if __name__ == "__main__":
  sys.exit(cli.run(main))
