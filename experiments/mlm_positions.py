"""The paper's Table 5 (copied vs random position embeddings) at CPU scale.

  python experiments/mlm_positions.py --workdir /tmp/mlm_positions \
      --out experiments/results/mlm_positions.md

Stages, all on the embedded corpus (Python's stdlib sources, split by
document), each resumable (re-running skips finished stages):
  1. a byte-level BPE tokenizer trained on the train split;
  2. a small "RoBERTa": a random model pretrained with MLM at --short_len
     tokens with full attention (its window covers every position);
  3. BPC on the held-out split of: that model at --short_len; the
     Longformer made from it at --long_len (window = --short_len, as the
     paper's 512 window at 4096) with random new position embeddings and
     with copied ones, before training; after --steps continued MLM updates
     (copied); and after the same updates to the position embeddings only.
Prints the table and writes it, with the command, to --out, and the bar
chart beside it (--out with .png; the paper's base numbers in a second
panel). `--plot_only --out FILE.md` redraws the chart from FILE.md's table.
"""

import argparse
import os
import pathlib
import sys
import time


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from flax import nnx  # noqa: E402

import commands  # noqa: E402  (experiments/, beside this file)

from lfjax import checkpoints  # noqa: E402
from lfjax import convert  # noqa: E402
from lfjax import train  # noqa: E402
from lfjax.data import sources  # noqa: E402
from lfjax.data import text  # noqa: E402
from lfjax.models import LongformerConfig  # noqa: E402
from lfjax.tasks import mlm  # noqa: E402
from lfjax.tasks import mlm_defaults  # noqa: E402
from lfjax.models import LongformerForMaskedLM  # noqa: E402


def base(args, init_from, tok_dir, seq_len):
  c = mlm_defaults.base_config()
  c.seed = args.seed
  c.init_from = str(init_from)
  c.data.sources = ("pystdlib",)
  c.data.glob = "*.py"
  c.data.valid_fraction = 0.05
  c.data.tokenizer = str(tok_dir)
  c.data.cache_dir = str(args.workdir / "cache")
  c.train.seq_len = seq_len
  c.train.batch_size = args.tokens_per_batch // seq_len
  c.train.micro_batch_size = c.train.batch_size
  c.model.max_positions = args.long_len
  c.model.attention_window = args.short_len
  c.optim.grad_clip = 1.0
  c.log_every = 50
  c.eval_every = 0
  c.checkpoint_every = 500
  c.keep_checkpoints = 1
  c.eval.batch_size = max(1, 16384 // seq_len)
  c.eval.max_batches = args.eval_batches
  return c


def make_short_model(args, tok_dir, out):
  """A random RoBERTa-shaped model with full attention at short_len."""
  tok = text.load_tokenizer(str(tok_dir))
  cfg = LongformerConfig(
      vocab_size=len(tok), hidden_size=args.hidden, num_hidden_layers=args.layers,
      num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
      max_position_embeddings=args.short_len + tok.pad_token_id + 1,
      type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=tok.pad_token_id,
      attention_window=2 * args.short_len)
  model = LongformerForMaskedLM(cfg, rngs=nnx.Rngs(args.seed))
  convert.to_pretrained(model, out)
  convert.copy_tokenizer(tok_dir, out, args.short_len)


def run(c, workdir):
  if not (pathlib.Path(workdir) / "checkpoints" / str(c.steps)).exists():
    t0 = time.time()
    train.train_and_evaluate(c, workdir)
    print(f"{workdir}: {time.time() - t0:.0f} s", flush=True)


def evaluate(c, model=None, workdir=None):
  corpus = mlm.load_corpus(c)
  if workdir is not None:
    _, model, _ = mlm.load_trained(workdir)
  return mlm.evaluate_model(model, c, corpus)


# The paper's Table 5, base model, in the order of our rows (its "+ 2K
# gradient updates" stands beside our shorter continued training).
PAPER_TABLE5_BASE = (1.846, 10.299, 1.957, 1.753, 1.850)


def plot_table(md_path, png_path):
  """Bar chart of the valid BPC column of md_path's table, beside the
  paper's Table 5 (base), in lfjax.plot's style."""
  from lfjax import plot
  rows = [l.split("|")[1:3] for l in pathlib.Path(md_path).read_text()
          .splitlines() if l.startswith("| ") and not l.startswith("| Model")]
  names = [n.strip() for n, _ in rows]
  ours = [float(v) for _, v in rows]
  fig = plot.new_figure(figsize=(12, 3.8))
  axes = fig.subplots(1, 2, sharey=True)
  for ax, values, title in ((axes[0], ours, "ours (CPU scale, valid BPC)"),
                            (axes[1], PAPER_TABLE5_BASE[:len(names)],
                             "paper, Table 5 base (dev BPC; 4th row: + 2K updates)")):
    y = range(len(values))
    ax.barh(y, values, color=["C0", "C3", "C2", "C2", "C1"][:len(values)])
    for i, v in zip(y, values):
      ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, max(values) * 1.18)
    plot.style(ax, title, "bits per character", "")
  axes[0].set_yticks(range(len(names)))
  axes[0].set_yticklabels(names, fontsize=8)
  axes[0].invert_yaxis()
  fig.suptitle("Table 5: copied vs random position embeddings", fontsize=10)
  fig.tight_layout()
  fig.savefig(png_path, dpi=110)
  return png_path


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", type=pathlib.Path,
                 required="--plot_only" not in sys.argv)
  p.add_argument("--out", type=pathlib.Path, default=None)
  p.add_argument("--plot_only", action="store_true",
                 help="redraw --out's PNG from its table; train nothing")
  p.add_argument("--short_len", type=int, default=64)
  p.add_argument("--long_len", type=int, default=512)
  p.add_argument("--hidden", type=int, default=128)
  p.add_argument("--layers", type=int, default=3)
  p.add_argument("--vocab", type=int, default=512)
  p.add_argument("--tokens_per_batch", type=int, default=4096)
  p.add_argument("--pretrain_steps", type=int, default=2500)
  p.add_argument("--pretrain_lr", type=float, default=2e-3)
  p.add_argument("--pretrain_power", type=float, default=1.0,
                 help="LR decay power of the pretraining (1 = linear)")
  p.add_argument("--steps", type=int, default=300,
                 help="continued MLM updates at --long_len")
  p.add_argument("--lr", type=float, default=5e-4)
  p.add_argument("--eval_batches", type=int, default=20)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  if args.plot_only:
    if args.out is None:
      p.error("--plot_only: needs --out (the results file to read)")
    print(f"wrote {plot_table(args.out, args.out.with_suffix('.png'))}")
    return
  w = args.workdir = commands.folder_arg(p, "--workdir", args.workdir)
  if args.out:
    args.out = commands.out_arg(p, "--out", args.out, None)
  checkpoints.quiet_orbax()
  started = time.time()

  tok_dir = w / "tokenizer"
  if not (tok_dir / "tokenizer_config.json").exists():
    docs = [t for n, t in sources.iter_documents("pystdlib")
            if text.split_of(n, 0.05) == "train"]
    text.train_tokenizer(docs, tok_dir, vocab_size=args.vocab)
  init = w / "short_init"
  if not (init / "config.json").exists():
    make_short_model(args, tok_dir, init)

  # Stage 2: the short model, pretrained from scratch.
  c = base(args, init, tok_dir, args.short_len)
  c.model.max_positions = args.short_len
  c.steps = c.optim.decay_steps = args.pretrain_steps
  c.optim.lr, c.optim.warmup_steps = args.pretrain_lr, args.pretrain_steps // 20
  c.optim.power = args.pretrain_power
  run(c, w / "pretrain")
  short = w / "short"
  if not (short / "config.json").exists():
    mlm.export(w / "pretrain", short)
  rows = [(f"RoBERTa-like (seqlen {args.short_len})",
           evaluate(c, workdir=w / "pretrain"))]

  def long_config(**changes):
    lc = base(args, short, tok_dir, args.long_len)
    lc.steps = lc.optim.decay_steps = args.steps
    lc.optim.lr, lc.optim.warmup_steps = args.lr, max(1, args.steps // 10)
    for k, v in changes.items():
      group, field = k.split(".")
      lc[group][field] = v
    return lc

  name = f"Longformer (seqlen {args.long_len})"
  rows.append((f"{name}, random new pos. emb.", evaluate(
      long_config(), mlm.load_model(long_config(
          **{"model.position_init": "random"})))))
  rows.append(("+ copy position embeddings",
               evaluate(long_config(), mlm.load_model(long_config()))))
  run(long_config(), w / "continued")
  rows.append((f"+ {args.steps} gradient updates",
               evaluate(long_config(), workdir=w / "continued")))
  frozen = long_config(**{"train.train_only": "position_embeddings"})
  run(frozen, w / "positions_only")
  rows.append((f"Longformer (train pos. embed. only, {args.steps} updates)",
               evaluate(frozen, workdir=w / "positions_only")))

  lines = [
      "| Model | valid BPC | bits/token | masked tokens |",
      "|---|---|---|---|"]
  lines += [f"| {n} | {r['eval_bpc']:.3f} | {r['eval_bits_per_token']:.3f} | "
            f"{r['eval_masked_tokens']:,} |" for n, r in rows]
  table = "\n".join(lines)
  print(table)
  if args.out:
    cmd = "python experiments/mlm_positions.py " + " ".join(sys.argv[1:])
    args.out.write_text(
        f"# Table 5 at CPU scale: copied vs random position embeddings\n\n"
        f"Command: `{cmd}`\n\n"
        f"Model: {args.layers} layers, hidden {args.hidden}, byte-level BPE "
        f"of {args.vocab} tokens, pretrained {args.pretrain_steps} steps of "
        f"{args.tokens_per_batch} tokens at {args.short_len}; then made long "
        f"to {args.long_len} with window {args.short_len} (one-sided "
        f"{args.short_len // 2}). Corpus: Python stdlib sources (train/valid "
        f"by document). Evaluated on {args.eval_batches} batches of the "
        f"held-out split with fixed masks. Total wall time "
        f"{(time.time() - started) / 60:.0f} min on "
        f"{os.cpu_count()} CPU cores.\n\n{table}\n")
    plot_table(args.out, args.out.with_suffix(".png"))


if __name__ == "__main__":
  main()
