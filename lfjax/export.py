"""Writes a trained run for transformers, by its task.

  python -m lfjax.export --workdir RUN --to OUT [--checkpoint STEP]

OUT gets config.json and model.safetensors for transformers' Longformer
class of the run's head (label names as id2label / label2id; a
summarization run: LEDForConditionalGeneration, with
generation_config.json), the
tokenizer files, and the run's config (so `python -m lfjax.evaluate
--model OUT` reads data as the run did).
Char-LM runs have no transformers counterpart.
"""

import sys

from lfjax import checkpoints
from lfjax import cli
from lfjax import tasks


def main(argv=None):
  """`python -m lfjax.export --workdir RUN --to OUT`; argv excludes the
  program name. Raises cli.UsageError for bad flags."""
  p = cli.ArgumentParser(prog="python -m lfjax.export",
                         description=__doc__.strip().splitlines()[0])
  p.add_argument("--workdir", required=True, help="a run folder")
  p.add_argument("--to", required=True, help="output folder")
  p.add_argument("--checkpoint", type=int, default=None,
                 help="a saved step (default: the newest)")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  cli.at_least("--checkpoint", args.checkpoint, 0)
  task = tasks.of(checkpoints.read_config(args.workdir))
  module = tasks.get(task)
  if not hasattr(module, "export"):
    raise ValueError(f"workdir: {args.workdir} is a {task!r} run, which has "
                     "no transformers counterpart to export to")
  checkpoints.quiet_orbax()
  step = module.export(args.workdir, args.to, args.checkpoint)
  print(f"wrote step {step} of {args.workdir} to {args.to}")


if __name__ == "__main__":
  sys.exit(cli.run(main))
