"""Every task lfjax trains, one module each; config.task picks it.

  python -m lfjax.train --config configs/<task>_*.py --workdir DIR

A task module has:
  KIND: "a char-LM", "an MLM", ... (messages naming a run's task).
  RESUMABLE: fnmatch patterns of the config fields a resumed run may change
    (lfjax.checkpoints refuses every other change).
  validate(config): checks every field; ValueError naming the field.
  train_and_evaluate(config, workdir): trains or resumes through lfjax.loop
    (which gives every task exact resume, progress, metrics.jsonl and
    checkpoints); returns the last logged record.
  next_steps(workdir): commands for a finished run (lfjax.train prints them).
  evaluate_main(argv): `python -m lfjax.evaluate` for runs of the task.
  export(workdir, path, step=None), where transformers has the model:
    `python -m lfjax.export` writes a folder transformers loads.

The fine-tuning tasks (classification, ...) describe themselves with a
finetune.Spec and share the rest (lfjax.tasks.finetune: training;
lfjax.tasks.finetune_commands: evaluation command and export).

A new task is one module here, one config file under configs/ and its
name in TASKS. Modules are imported on first use, so nothing here imports a
task (no cycles: tasks import lfjax.loop, lfjax.checkpoints, lfjax.convert,
models and data; none of those import a task at import time).
"""

import importlib

# config.task -> module lfjax.tasks.<name>.
TASKS = ("charlm", "mlm", "classification", "qa", "multiple_choice",
         "summarization")


def of(config):
  """The task of a config (char-LM configs predate the field)."""
  return config.get("task", "charlm")


def get(task):
  """The module of a task name. Raises ValueError naming config.task."""
  if task not in TASKS:
    raise ValueError(f"config.task: expected one of {list(TASKS)}, got "
                     f"{task!r}")
  return importlib.import_module(f"lfjax.tasks.{task}")
