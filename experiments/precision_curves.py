"""bfloat16 vs float32 training of the encoder: the MLM `:tiny` run's loss
curves over --steps updates and a fine-tuning run's metric, each trained
with the lfjax commands a user types.

  python experiments/precision_curves.py --workdir /tmp/precision \
      --out experiments/results/precision.md

Variants (config.model.*): float32 (the default); dtype=bfloat16 (bf16
matmul operands and activations, float32 master weights); dtype=bfloat16
with param_dtype=bfloat16 (weights and AdamW's moments in bf16 too); and
dtype=bfloat16 with remat. Stages, each skipped when its run folder already
holds a finished run:
  1. `python -m lfjax.make_tiny` (a tiny random RoBERTa, 256 positions);
  2. MLM: configs/mlm_longformer_base.py:tiny for --steps updates (its LR
     decay stretched to them) per variant; the table gives the training
     loss at a few steps and the last 5 logged losses' mean (noise of one
     batch averaged out), and the final validation loss, each relative to
     float32;
  3. classification: configs/classify_longformer.py:tiny on a synthetic,
     learnable task (the label says which of two marker words a document
     of stdlib words holds more often), validation accuracy and loss.
The issue's target: bf16's final MLM loss within 2% of float32's.
"""

import argparse
import json
import pathlib
import random
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import commands  # noqa: E402  (experiments/, beside this file)
import results_text  # noqa: E402

VARIANTS = (
    ("float32", ()),
    ("bf16 compute", ("--config.model.dtype=bfloat16",)),
    ("bf16 compute + bf16 params", ("--config.model.dtype=bfloat16",
                                    "--config.model.param_dtype=bfloat16")),
    ("bf16 compute + remat", ("--config.model.dtype=bfloat16",
                              "--config.model.remat=true")),
)
MARKERS = ("sunny", "rainy")


def records(workdir):
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def finished(workdir, steps):
  return (pathlib.Path(workdir) / "checkpoints" / str(steps)).exists()


def train(args, name, config, extra, log):
  w = args.workdir / name
  if not finished(w, extra["steps"]):
    commands.run(["lfjax.train", f"--config={config}", f"--workdir={w}",
                  *extra["flags"]], log)
  return records(w)


def classification_data(path, n, seed):
  """n jsonl lines: documents of stdlib-looking words with the two markers
  sprinkled in; label = the marker that occurs more often."""
  rng = random.Random(seed)
  words = ("def class return import self value list name data file "
           "path key index item count error print true false none").split()
  lines = []
  for _ in range(n):
    k = rng.randrange(2)
    doc = [rng.choice(words) for _ in range(rng.randrange(20, 60))]
    for _ in range(rng.randrange(2, 5)):
      doc.insert(rng.randrange(len(doc) + 1), MARKERS[k])
    if rng.random() < 0.5:
      doc.insert(rng.randrange(len(doc) + 1), MARKERS[1 - k])
    lines.append(json.dumps({"text": " ".join(doc), "label": MARKERS[k]}))
  path.write_text("\n".join(lines) + "\n")
  return path


def rel(value, ref):
  return f"{100 * (value - ref) / ref:+.2f}%"


def mlm_table(args, log):
  rows, curves = [], {}
  flags = (f"--config.init_from={args.workdir / 'roberta'}",
           f"--config.steps={args.steps}",
           f"--config.optim.decay_steps={args.steps}",
           f"--config.eval_every={args.steps}",
           f"--config.checkpoint_every={args.steps}")
  for name, extra in VARIANTS:
    recs = train(args, "mlm_" + name.replace(" ", "_").replace("+", "p"),
                 "configs/mlm_longformer_base.py:tiny",
                 {"steps": args.steps, "flags": (*flags, *extra)}, log)
    train_recs = [r for r in recs if "train_loss" in r]
    evals = [r for r in recs if "eval_loss" in r]
    curves[name] = {r["step"]: r["train_loss"] for r in train_recs}
    last5 = [r["train_loss"] for r in train_recs[-5:]]
    rows.append((name, sum(last5) / len(last5), evals[-1]["eval_loss"]))
  steps = sorted(curves["float32"])
  marks = [s for s in steps if s in (steps[0], args.steps // 4,
                                     args.steps // 2, steps[-1])]
  ref_train, ref_eval = rows[0][1], rows[0][2]
  lines = ["## MLM `:tiny`, " + f"{args.steps} updates", "",
           "| variant | " + " | ".join(f"train loss @{s}" for s in marks)
           + " | last 5 logged (mean) | vs float32 | final valid loss "
           "| vs float32 |",
           "|---|" + "---|" * (len(marks) + 4)]
  for name, last, ev in rows:
    lines.append(f"| {name} | " + " | ".join(
        f"{curves[name][s]:.4f}" for s in marks)
        + f" | {last:.4f} | {rel(last, ref_train)} | {ev:.4f} | "
        f"{rel(ev, ref_eval)} |")
  worst = max(abs(ev - ref_eval) / ref_eval for _, _, ev in rows[1:])
  lines += ["", f"Largest final valid-loss difference from float32: "
            f"{100 * worst:.2f}% (target: within 2%).", ""]
  return lines


def classification_table(args, log):
  data = args.workdir / "cls_data"
  data.mkdir(exist_ok=True)
  train_file = classification_data(data / "train.jsonl", args.cls_train, 0)
  valid_file = classification_data(data / "valid.jsonl", 200, 1)
  steps = -(-8 * args.cls_train // 8)  # :tiny: 8 epochs of batch 8
  rows = []
  for name, extra in VARIANTS:
    per_seed = []
    for seed in args.seeds:
      tag = name.replace(" ", "_").replace("+", "p")
      recs = train(args, f"cls_{tag}_seed{seed}",
                   "configs/classify_longformer.py:tiny",
                   {"steps": steps, "flags": (
                       f"--config.init_from={args.workdir / 'roberta'}",
                       f"--config.data.train={train_file}",
                       f"--config.data.valid={valid_file}",
                       f"--config.seed={seed}", *extra)}, log)
      ev = [r for r in recs if "eval_accuracy" in r][-1]
      tr = [r["train_loss"] for r in recs if "train_loss" in r][-5:]
      per_seed.append((sum(tr) / len(tr), ev["eval_accuracy"],
                       ev["eval_macro_f1"]))
    rows.append((name, [results_text.mean_std(list(col))
                        for col in zip(*per_seed)],
                 [acc for _, acc, _ in per_seed]))
  lines = ["## Classification `:tiny` (synthetic task, "
           f"{args.cls_train} train / 200 valid documents, {steps} updates,"
           f" seeds {','.join(map(str, args.seeds))})", "",
           "Mean ± standard deviation over the seeds (config.seed: the "
           "head's initialisation and the data order).", "",
           "| variant | train loss (last 5 logged) | valid accuracy "
           "| valid macro F1 | accuracy per seed |", "|---|---|---|---|---|"]
  for name, stats, accs in rows:
    lines.append(f"| {name} | " + " | ".join(
        f"{m:.4f} ± {sd:.4f}" for m, sd in stats)
        + " | " + ", ".join(f"{a:.3f}" for a in accs) + " |")
  return lines + ["", "At the `:tiny` learning rate (3e-3) one run's "
                  "outcome is sensitive to rounding: runs that differ only "
                  "in bf16 rounding (e.g. with and without remat) can end "
                  "far apart, so compare the spread over seeds, not one "
                  "run.", ""]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", default=None)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--cls_train", type=int, default=200,
                 help="classification training documents (8 epochs)")
  p.add_argument("--seeds", default="0,1,2",
                 help="classification seeds (the MLM runs use seed 0)")
  p.add_argument("--skip_classification", action="store_true")
  argv = sys.argv[1:]
  args = p.parse_args()
  args.seeds = results_text.parse_seeds(p, args.seeds)
  args.workdir = commands.folder_arg(p, "--workdir", args.workdir)
  out = commands.out_arg(p, "--out", args.out,
                         "experiments/results/precision.md")
  log = args.workdir / "log.txt"
  if not (args.workdir / "roberta" / "config.json").exists():
    commands.run(["lfjax.make_tiny", "--to", str(args.workdir / "roberta"),
                  "--positions", "256"], log)
  lines = ["# bfloat16 vs float32 training of the encoder", ""]
  lines += results_text.header(commands.command_line(__file__, argv))
  lines += mlm_table(args, log)
  if not args.skip_classification:
    lines += classification_table(args, log)
  pathlib.Path(out).write_text("\n".join(lines))
  print("\n".join(lines))
  print(f"wrote {out}")


if __name__ == "__main__":
  commands.main_guard(main)
