"""Evaluation of a trained run, by its task's protocol.

  python -m lfjax.evaluate --workdir DIR [flags of the run's task]

The run's config.json names its task (lfjax.tasks); the task's flags
follow (`--workdir DIR --help` lists them). Char-LM runs: bits per
character, the paper's protocol:

  python -m lfjax.evaluate --workdir DIR [--split test] [--seq_len 32256]
      [--stride 512] [--batch_size 1] [--max_chars 0] [--checkpoint STEP]
      [--rel_impl table|features]

MLM runs: held-out MLM loss and BPC.
Fine-tuned runs (classification, ...), or a folder `python -m
lfjax.export` wrote:

  python -m lfjax.evaluate (--workdir DIR | --model DIR) --data FILE
      [--checkpoint STEP] [--batch_size N] [--predictions FILE]
      [--max_answer_tokens N (QA)] [--num_beams N --max_length N
      (summarization: ROUGE of generated summaries)]

Each task's flags: `python -m lfjax.evaluate --workdir RUN --help` (or
--model DIR --help); `--help` alone lists the fine-tuning flags.
"""

import json
import pathlib
import sys

from absl import flags

from lfjax import cli
from lfjax import tasks


def _flag_value(argv, name):
  """The value of --name VALUE / --name=VALUE in argv, or None."""
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
    if a == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


# transformers class-name suffixes of exported heads -> task.
_HEAD_TASKS = (("ForSequenceClassification", "classification"),
               ("ForQuestionAnswering", "qa"),
               ("ForMultipleChoice", "multiple_choice"),
               ("ForConditionalGeneration", "summarization"),
               ("ForMaskedLM", "mlm"))


def _read_json(path):
  try:
    return json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError):
    return None


def task_of(argv):
  """The task whose evaluation argv asks for: the one named in --workdir's
  config.json, or of the --model folder (the run config an export carries,
  else its config.json's architectures); "charlm" when there is none to
  read (the char-LM's parser then reports what is missing)."""
  workdir = _flag_value(argv, "workdir")
  if workdir is not None:
    d = _read_json(pathlib.Path(workdir) / "config.json")
    if isinstance(d, dict):
      return d.get("task", "charlm")
  model = _flag_value(argv, "model")
  if model is not None:
    if not pathlib.Path(model).is_dir():
      raise cli.UsageError(f"--model: expected a local folder, got "
                           f"{model!r}: no such directory")
    for name in ("lfjax_run.json", "lfjax_mlm_run.json"):
      d = _read_json(pathlib.Path(model) / name)
      if isinstance(d, dict) and "task" in d:
        return d["task"]
    d = _read_json(pathlib.Path(model) / "config.json") or {}
    for arch in d.get("architectures") or ():
      for suffix, task in _HEAD_TASKS:
        if str(arch).endswith(suffix):
          return task
    raise ValueError(f"--model: {model} holds no model lfjax.evaluate "
                     "knows (expected a folder from python -m lfjax.export, "
                     "or a transformers checkpoint with a classification, "
                     "QA or multiple-choice head, or an LED for "
                     "summarization)")
  return "charlm"


def overview():
  """--help without a run or model: what each task's evaluation takes."""
  from lfjax.tasks import finetune_commands
  from lfjax.tasks import qa
  # QA's flags are every fine-tuning task's plus --max_answer_tokens.
  text = finetune_commands.eval_parser(qa.SPEC).format_help()
  # From the "options:" heading (its name varies by Python version) on.
  flags = text[text.rindex("\n", 0, text.index("\n  -h, --help")):]
  return (__doc__.strip() + "\n\nFine-tuned runs and exports "
          "(classification, qa, multiple_choice, summarization; "
          "--max_answer_tokens: qa only; --num_beams, --max_length: "
          "summarization only):" + flags + "\nChar-LM runs: python -m lfjax.evaluate "
          "--workdir CHARLM_RUN --help. MLM runs: python -m lfjax.evaluate "
          "--workdir MLM_RUN --help.")


# The evaluation flags of the data-file tasks that the char-LM's parser
# does not know.
_DATA_FLAGS = ("data", "predictions", "num_beams", "max_length",
               "max_answer_tokens")


def main(argv=None):
  """`python -m lfjax.evaluate --workdir DIR ...`; argv excludes the
  program name. Raises cli.UsageError for bad flags, and the loading and
  evaluation errors of the run (see cli.run for how they print)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if (({"-h", "--help"} & set(argv)) and _flag_value(argv, "workdir") is None
      and _flag_value(argv, "model") is None):
    print(overview())
    return
  task = task_of(argv)
  if task == "mlm" and _flag_value(argv, "data") is not None:
    where = _flag_value(argv, "model") or _flag_value(argv, "workdir")
    raise cli.UsageError(
        f"--data: {where} holds a masked LM, with no classification, QA or "
        "multiple-choice head to evaluate on a data file; fine-tune it first "
        "(python -m lfjax.train --config configs/classify_longformer.py "
        f"--config.init_from {where} ...), or give --sources FILES for its "
        "held-out MLM loss")
  try:
    module = tasks.get(task)
  except ValueError as e:
    raise ValueError(f"workdir: {_flag_value(argv, 'workdir')}/config.json "
                     f"names task {task!r}; expected one of "
                     f"{list(tasks.TASKS)}") from e
  workdir = _flag_value(argv, "workdir")
  try:
    module.evaluate_main(argv)
  except (cli.UsageError, flags.Error) as e:
    # A --workdir without config.json reads as a char-LM run, whose parser
    # then refuses the other tasks' flags (--data): name the real problem.
    if (workdir is not None and not (pathlib.Path(workdir)
                                     / "config.json").is_file()
        and any(f"flag '{name}'" in str(e) for name in _DATA_FLAGS)):
      raise FileNotFoundError(
          f"workdir: {workdir}/config.json does not exist (expected a run "
          "folder of python -m lfjax.train)") from None
    raise


if __name__ == "__main__":
  sys.exit(cli.run(main))
