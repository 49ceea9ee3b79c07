"""The commands for a finished fine-tuning run, shared by the fine-tuning
tasks: `python -m lfjax.evaluate` (evaluate_main: a run folder or an
exported folder on a data file) and `python -m lfjax.export` (export), the
trained model they load (load_trained), and entry_points, which gives a task
module the functions lfjax.tasks documents. Training, prediction and the
Spec a task describes itself with are in finetune.py.
"""

import functools
import json
import pathlib

import ml_collections
from flax import nnx

from lfjax import checkpoints
from lfjax import cli
from lfjax import convert
from lfjax.tasks import common
from lfjax.tasks import finetune
from lfjax.tasks import finetune_model


def next_steps(workdir):
  return [f"python -m lfjax.evaluate --workdir {workdir} --data FILE",
          f"python -m lfjax.export --workdir {workdir} --to DIR"]


def load_trained(spec, workdir, step=None, flag=None):
  """(config, trained model in inference mode, step) of a run."""
  config = checkpoints.read_config(workdir, spec.name)
  model = finetune.build_model(spec, config)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, _, step = checkpoints.restore_params(workdir, params, step, flag)
  model = nnx.merge(graphdef, params, rest)
  model.eval()
  return config, model, step


def export(spec, workdir, path, step=None):
  """Writes a run's model, tokenizer and config for transformers'
  Longformer class of its head; returns the step exported."""
  config, model, step = load_trained(spec, workdir, step, "--checkpoint")
  if pathlib.Path(path).resolve() == pathlib.Path(config.init_from).resolve():
    raise ValueError("to: expected a folder other than init_from (the "
                     "source checkpoint is never overwritten)")
  if spec.save is not None:
    spec.save(model, finetune.tokenizer_dir(config), path)
  else:
    convert.to_pretrained(model, path)
    convert.copy_tokenizer(finetune.tokenizer_dir(config), path,
                           finetune_model.positions(model))
  (pathlib.Path(path) / finetune.RUN_CONFIG).write_text(
      config.to_json(indent=1))
  return step


def exported_config(spec, path, base_config, from_hf):
  """The config to evaluate an exported folder with: the run's (saved
  there on export), else the task's defaults completed from its
  config.json by from_hf(config, config.json dict)."""
  saved = pathlib.Path(path) / finetune.RUN_CONFIG
  if saved.exists():
    config = ml_collections.ConfigDict(json.loads(saved.read_text()))
  else:
    config = base_config()
    config = from_hf(config, json.loads(
        (pathlib.Path(path) / "config.json").read_text()))
  config.init_from = str(path)
  config.data.tokenizer = ""  # the export's own copy
  return config


def eval_parser(spec):
  """The flags of `python -m lfjax.evaluate` for a fine-tuning task."""
  p = cli.ArgumentParser(
      prog="python -m lfjax.evaluate",
      description=f"Evaluate a fine-tuned {spec.name} run (--workdir) or an "
      "exported folder (--model) on a data file.")
  p.add_argument("--workdir", default=None, help="a fine-tuning run folder")
  p.add_argument("--model", default=None,
                 help="or a folder written by python -m lfjax.export (or a "
                 "transformers checkpoint with this head)")
  p.add_argument("--data", required=True, help="data file (the task's "
                 "format)")
  p.add_argument("--checkpoint", type=int, default=None,
                 help="a saved step of --workdir (default: the newest)")
  p.add_argument("--batch_size", type=int, default=None,
                 help="default: the run's eval.batch_size")
  p.add_argument("--predictions", default=None,
                 help="write the predictions here (JSON; "
                 "summarization: JSON lines)")
  for name, kind, text in spec.eval_overrides:
    p.add_argument("--" + name.rsplit(".", 1)[-1], type=kind, default=None,
                   help=f"{text} (default: the run's {name})")
  return p


def evaluate_main(spec, argv, base_config, from_hf):
  """`python -m lfjax.evaluate (--workdir RUN | --model DIR) --data FILE`
  for a fine-tuning task; prints the metrics, writes them (a run:
  DIR/eval_<file>_<step>.json, with the overridden decoding settings in
  the name) and the predictions (a run: DIR/predictions_<file>_<step>.json,
  .jsonl for a Spec.jsonl task; else with --predictions)."""
  args = eval_parser(spec).parse_args(argv)
  if (args.workdir is None) == (args.model is None):
    raise cli.UsageError("expected exactly one of --workdir and --model")
  cli.at_least("--checkpoint", args.checkpoint, 0)
  cli.at_least("--batch_size", args.batch_size, 1)
  if args.model is not None and not pathlib.Path(args.model).is_dir():
    raise cli.UsageError(f"--model: expected a local folder, got "
                         f"{args.model!r}: no such directory")
  checkpoints.quiet_orbax()
  if args.workdir is not None:
    config, model, step = load_trained(spec, args.workdir, args.checkpoint,
                                       "--checkpoint")
  else:
    config, step = exported_config(spec, args.model, base_config,
                                   from_hf), None
    model = (spec.load(args.model, config, 0) if spec.load is not None
             else finetune_model.load_model(
                 args.model, spec.head, num_labels=spec.num_labels(config)))
  overrides = {}
  for name, _, _ in spec.eval_overrides:
    value = getattr(args, name.rsplit(".", 1)[-1])
    if value is not None:
      cli.at_least("--" + name.rsplit(".", 1)[-1], value, 1)
      section, leaf = name.split(".")
      overrides[name] = (config[section][leaf], value)
      config[section][leaf] = value
  tok = finetune_model.load_tokenizer(finetune.tokenizer_dir(config),
                                     args.model or config.init_from)
  data = spec.read(args.data, config, "eval")
  features = spec.featurize(data, tok, config, False)
  finetune.print_report(spec, args.data, data, *features, tok, config,
                        False)
  metrics, predictions = finetune.evaluate_data(
      spec, model, config, data, tok, args.batch_size, progress=True,
      features=features)
  stem = pathlib.Path(args.data).stem
  where = args.workdir or args.model
  print(f"{where}" + ("" if step is None else f" (step {step})")
        + f", {args.data}: {spec.summary(metrics)}")
  out = args.predictions
  if args.workdir is not None:
    data_path = str(pathlib.Path(args.data).resolve())
    settings = {"data": data_path}
    defaults = {"data": data_path}
    tags = {"data": "data"}
    for name, (old, new) in overrides.items():
      leaf = name.rsplit(".", 1)[-1]
      settings[leaf], defaults[leaf] = new, old
      tags[leaf] = "".join(w[0] for w in leaf.split("_"))
    result = common.result_path(args.workdir, f"eval_{stem}_{step}",
                                settings, defaults, tags)
    result.write_text(json.dumps(dict(metrics, checkpoint=step, **settings),
                                 indent=1))
    print(f"metrics written to {result}")
    out = out or str(pathlib.Path(args.workdir) / (
        result.stem.replace("eval_", "predictions_", 1)
        + (".jsonl" if spec.jsonl else ".json")))
  if out:
    finetune.write_predictions(out, predictions, spec.jsonl)
    print(f"predictions written to {out}")


def entry_points(spec, base_config, from_hf):
  """(train_and_evaluate, next_steps, load_trained, export, evaluate_main)
  of a fine-tuning task module (the functions lfjax.tasks documents), for
  its Spec; base_config and from_hf as evaluate_main takes them."""
  return (functools.partial(finetune.train_and_evaluate, spec), next_steps,
          functools.partial(load_trained, spec),
          functools.partial(export, spec),
          functools.partial(evaluate_main, spec, base_config=base_config,
                            from_hf=from_hf))
