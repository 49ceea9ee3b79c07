"""What data.length_buckets saves: tokens a fine-tuning epoch processes
(padding included) per real token, for 1, 2, 4 and 8 length buckets.

  python experiments/length_buckets.py --out experiments/results/length_buckets.md

Uses the trainer's own bucketing (lfjax.tasks.finetune_data.length_buckets
and BucketSampler: buckets of near-equal example counts, each padded to its
longest example rounded up to 8, a bucket's last batch filled up with its
own examples again) on example lengths drawn from a log-normal capped at
--max_len (a long-document set: most documents far shorter than the cap,
a few at it), and, with --jsonl FILE --tokenizer DIR, on a real file's
texts. No model runs: the counts are exact, not timed. A step's time grows
at least linearly with its tokens (windowed attention), so the ratio bounds
the padding's share of the compute.
"""

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import commands  # noqa: E402  (experiments/, beside this file)
import results_text  # noqa: E402

from lfjax.tasks import finetune_data  # noqa: E402


def padded_per_real(lengths, buckets, batch_size, max_len, seed=0):
  """(tokens processed per real token over one epoch, bucket lengths,
  examples seen per epoch / examples)."""
  lengths = np.minimum(np.asarray(lengths), max_len)
  assign, sizes = finetune_data.length_buckets(lengths, buckets, batch_size,
                                               8, max_len)
  arrays = {"input_ids": np.zeros((len(lengths), 1), np.int32)}
  s = finetune_data.BucketSampler(arrays, batch_size, seed, assign, sizes)
  processed = s.tokens_per_batch() * s.epoch_steps
  seen = s.epoch_steps * batch_size
  return processed / lengths.sum(), sizes, seen / len(lengths)


def synthetic(n, median, max_len, seed):
  rng = np.random.default_rng(seed)
  return np.minimum(np.round(rng.lognormal(np.log(median), 0.8, n)),
                    max_len).astype(int).clip(16)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=None)
  p.add_argument("--examples", type=int, default=1000)
  p.add_argument("--median", type=int, default=950)
  p.add_argument("--max_len", type=int, default=4096)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--jsonl", default=None,
                 help="a fine-tuning jsonl file with a 'text' field")
  p.add_argument("--tokenizer", default=None, help="with --jsonl")
  argv = sys.argv[1:]
  args = p.parse_args()
  out = commands.out_arg(p, "--out", args.out,
                         "experiments/results/length_buckets.md")
  sets = [(f"synthetic: {args.examples} log-normal lengths, median "
           f"{args.median}, cap {args.max_len}",
           synthetic(args.examples, args.median, args.max_len, args.seed))]
  if args.jsonl:
    import json
    from lfjax.data import text
    tok = text.load_tokenizer(args.tokenizer, needs=("pad",),
                              purpose="counting tokens")
    texts = [json.loads(l)["text"] for l in open(args.jsonl) if l.strip()]
    sets.append((args.jsonl, np.asarray(
        [len(ids) for ids in tok(texts)["input_ids"]])))
  lines = ["# Padding with and without length buckets", ""]
  lines += results_text.header(commands.command_line(__file__, argv))
  for name, lengths in sets:
    lines += [f"## {name}", "",
              f"{len(lengths)} examples: median {int(np.median(lengths))}, "
              f"max {int(lengths.max())} tokens; batch {args.batch_size}.",
              "", "| length_buckets | bucket lengths | tokens processed per "
              "real token | examples seen per epoch / examples |",
              "|---|---|---|---|"]
    for k in (1, 2, 4, 8):
      ratio, sizes, seen = padded_per_real(lengths, k, args.batch_size,
                                           args.max_len, args.seed)
      lines.append(f"| {k} | {', '.join(map(str, sizes))} | {ratio:.2f} | "
                   f"{seen:.3f} |")
    lines.append("")
  lines.append("With 1 bucket every batch is padded to the longest example "
               "of the set (the trainer's default, whose sampler runs on "
               "across epochs instead of filling its last batch); the last "
               "column is the cost of filling each bucket's last batch, "
               "included in the tokens processed.")
  pathlib.Path(out).write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  print(f"wrote {out}")


if __name__ == "__main__":
  commands.main_guard(main)
