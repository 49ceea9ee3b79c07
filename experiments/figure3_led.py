"""Figure 3 in miniature: LED's ROUGE as its input grows, several seeds.

  python experiments/figure3_led.py                     # 256 / 1K / 4K, 3 seeds
  python experiments/figure3_led.py --seeds 0,1 --lengths 256,1024,4096

The paper's Figure 3 (arXiv summarization): LED fine-tuned on inputs cut
to 1K, 4K and 16K tokens; ROUGE grows with the input length. Here, at
this machine's scale, with the shipped task (`python -m lfjax.train
--config configs/summarization_led.py` + overrides, `python -m
lfjax.evaluate`), on experiments/figure3_data.py's tables of contents of
Python standard-library modules (the summary: a document's top-level
def/class names in order, spread over the whole document, so a cut input
loses names):

  0. a tiny random LED (lfjax.make_tiny.make_tiny_led's shapes, 128
     encoder positions, weights drawn with a larger std: see MODEL) is
     trained on short DENSE documents of top-level def/class lines
     (figure3_data.py --dense 0) to copy their names: our stand-in for the
     pretrained BART the paper's LED starts from (run `stage0`);
  1. it is exported (`python -m lfjax.export`) and its encoder positions
     extended to the longest input by the authors' recipe (the learned
     rows copied over the new table, as lfjax.led_convert.make_led does
     for a BART);
  2. per input length L and seed, that LED is fine-tuned on long documents
     (whole files, ~L_max tokens) cut to L tokens, the summaries always of
     the whole document, and evaluated by greedy generation and ROUGE on
     the test documents cut to L.

Runs live under --root (data, checkpoints, run folders): finished runs are
read, not retrained (experiments/run_folders.py; a run folder of other
settings is refused); evaluations already written are read. Writes
experiments/results/figure3_led.md (mean and standard deviation of
ROUGE-1/2/L per length, per seed, whether each step up in length gains
beyond the seed spread, and the "oracle" ROUGE of the names that are
inside the first L tokens: what a model that copied every visible name
would score) and a PNG beside it.
"""

import argparse
import json
import math
import pathlib
import sys

import commands
import figure3_data
import results_text
import run_folders

CONFIG = "configs/summarization_led.py"
# The tiny LED: make_tiny_led's shapes and tokenizer (1,000 byte-level BPE
# tokens), but weights drawn with std 1/sqrt(d_model), not LED's 0.02: at
# 0.02 the decoder's cross-attention starts uniform, the encoder's layers
# got ~1/70 of the decoder's gradient norm, and in every stage-0 try (names
# from snippets, LR 3e-3 or 1e-3; plain reconstruction) the encoder's output
# collapsed to the same vector for every document (its spread across
# documents 0.65 -> 0.02; the loss with another document's encoding
# equal to 5 digits): no copying, empty or looping summaries. Gradients
# were checked against transformers' (equal to 1e-8): an optimization
# failure of a tiny 0.02-std model, not a bug.
MODEL = {"positions": 128, "decoder_positions": 128, "d_model": 64,
         "layers": 2, "window": 128, "init_std": 0.125, "vocab_size": 1000,
         "documents": 200}
# Stage 0's documents: top-level def/class lines only (--dense 0, 200
# characters: 64-116 tokens, ~5 names).
DENSE = {"chars": 200, "lines": 0, "train": 9600, "valid": 32, "test": 64}
STAGE0 = {"model.max_length": 128, "model.max_target_length": 128,
          "eval.max_length": 128, "train.batch_size": 32,
          "train.micro_batch_size": 32, "train.epochs": 10.0,
          "optim.lr": 1e-3, "log_every": 25, "checkpoint_every": 100}
# Encoder rows copied over the long table: the first 64, which every
# stage-0 document reaches (64 tokens or more), so every copied row was
# trained (the paper copies BART's 1,024 learned rows).
PERIOD = 64
# Long documents: ~2.25 characters per token of the tiny LED's byte-level
# BPE on Python source, so CHARS_PER_TOKEN x the longest length fills it.
CHARS_PER_TOKEN = 2.2
LONG_COUNTS = {"train": 600, "valid": 32, "test": 64}
FINETUNE = {"model.max_target_length": 128, "eval.max_length": 128,
            "eval.num_beams": 1, "train.batch_size": 4,
            "train.micro_batch_size": 4, "optim.lr": 1e-3, "log_every": 25,
            "checkpoint_every": 1000}
ROUGE = (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"))
# Stage 0 counts as copying names from ROUGE-1 10 on its dense test
# documents up (a name language model that ignores the document scores ~1).
COPYING = 10.0
# research notes (paper.md): Figure 3, arXiv validation, LED-base.
PAPER_TEXT = ("the paper's Figure 3 (LED on arXiv validation) rises with "
              "the input cut: R-1 35.21 / 44.48 / 46.23 and R-2 11.54 / "
              "17.99 / 19.62 at 1K / 4K / 16K tokens")


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default="/tmp/lfjax_fig3",
                 help="folder for the data, models and runs (reused)")
  p.add_argument("--seeds", default="0,1,2",
                 help="comma-separated distinct non-negative seeds")
  p.add_argument("--lengths", default="256,1024,4096",
                 help="comma-separated input lengths in tokens, increasing "
                 "(the paper's 1K/4K/16K scaled by 1/4)")
  p.add_argument("--epochs", type=float, default=4.0,
                 help="fine-tuning passes over the long training documents")
  p.add_argument("--out", default=None, help="results .md (default: "
                 "experiments/results/figure3_led.md; PNG beside it)")
  a = p.parse_args(argv)
  a.seeds = results_text.parse_seeds(p, a.seeds)
  try:
    a.lengths = [int(x) for x in a.lengths.split(",") if x.strip()]
  except ValueError:
    a.lengths = []
  if (len(a.lengths) < 2 or a.lengths != sorted(set(a.lengths))
      or a.lengths[0] < 16 or any(n % 8 for n in a.lengths)):
    p.error(f"--lengths: expected at least 2 increasing multiples of 8, "
            f">= 16, got {a.lengths!r}")
  if not a.epochs > 0:
    p.error(f"--epochs: expected a number > 0, got {a.epochs}")
  a.root = commands.folder_arg(p, "--root", a.root)
  a.out = commands.out_arg(p, "--out", a.out, commands.REPO / "experiments"
                           / "results" / "figure3_led.md")
  return a


def steps(epochs, count, batch):
  """A fine-tuning run's optimizer steps (lfjax.tasks.finetune.
  total_steps' rule): run_folders needs them, its config has epochs."""
  return max(1, math.ceil(epochs * count / batch))


def overrides(settings):
  return [f"--config.{k}={v}" for k, v in settings.items()]


def tiny_led(path):
  """The stage-0 starting point, made once: lfjax.make_tiny.make_tiny_led
  with MODEL's sizes and init_std, seed 0."""
  if (path / "config.json").exists():
    return path
  from lfjax import make_tiny
  return make_tiny.make_tiny_led(
      path, documents=MODEL["documents"], vocab_size=MODEL["vocab_size"],
      positions=MODEL["positions"],
      decoder_positions=MODEL["decoder_positions"], d_model=MODEL["d_model"],
      layers=MODEL["layers"], window=MODEL["window"],
      init_std=MODEL["init_std"], seed=0)


def export(workdir, to):
  """`python -m lfjax.export` of a run, once."""
  if not (to / "config.json").exists():
    commands.run(["lfjax.export", "--workdir", str(workdir), "--to",
                  str(to)], to.parent / f"{to.name}.log")
  return to


def extend_positions(src, dst, positions, period):
  """The LED folder src with `positions` encoder positions written to dst
  (once), by the authors' BART-to-LED recipe: row p of the new table is
  src's row p mod `period` (its first `period` rows are the learned ones;
  lfjax.led_convert.make_led's copy loop); every other weight, the
  generation defaults and the tokenizer are src's.

  Raises commands.Error when src has fewer than `period` rows."""
  if (dst / "config.json").exists():
    return dst
  import numpy as np
  from flax import nnx
  from lfjax import convert, hf_weights, led_convert
  from lfjax.models import led
  cfg = led_convert.config_from_pretrained(
      str(src), "src", max_encoder_position_embeddings=positions)
  weights = hf_weights.read_weights(str(src), "src")
  name = "led.encoder.embed_positions.weight"
  if len(weights[name]) < period:
    raise commands.Error(f"{src}: {len(weights[name])} encoder positions, "
                         f"fewer than the {period} to copy")
  learned = weights[name][:period]
  weights[name] = np.tile(learned, (-(-positions // period), 1))[:positions]
  model = led.LEDForConditionalGeneration(cfg, rngs=nnx.Rngs(0))
  led_convert.load_weights(model, weights, "src")
  model.generation_config = json.loads(
      (src / "generation_config.json").read_text())
  led_convert.to_pretrained(model, str(dst))
  convert.copy_tokenizer(str(src), str(dst), positions)
  return dst


def evaluate(workdir, data, **flags):
  """The ROUGE result JSON of `python -m lfjax.evaluate --workdir RUN
  --data FILE [--flag value ...]` at the run's newest step; one already
  written with these settings is read."""
  step = run_folders.newest_step(workdir)
  want = {"data": str(pathlib.Path(data).resolve()), **flags}
  for path in sorted(workdir.glob(f"eval_{pathlib.Path(data).stem}_{step}"
                                  "*.json")):
    result = json.loads(path.read_text())
    if all(result.get(k) == v for k, v in want.items()):
      return result
  extra = [x for k, v in flags.items() for x in (f"--{k}", str(v))]
  commands.run(["lfjax.evaluate", "--workdir", str(workdir), "--data",
                   str(data), *extra],
                  workdir.parent / f"{workdir.name}.eval.log")
  return evaluate(workdir, data, **flags)


def oracle(tokenizer_dir, test, lengths):
  """{L: (ROUGE dict, share of the reference names inside the first L
  tokens)}: the summary a model that copied every top-level name it sees
  in the document cut to L tokens (the task's cut: tokenizer truncation
  with <s> and </s>) would write, scored as the task scores."""
  from lfjax.tasks import finetune_model, summarization
  tok = finetune_model.load_tokenizer(str(tokenizer_dir))
  rows = [json.loads(l) for l in test.read_text().splitlines() if l.strip()]
  refs = [r["summary"] for r in rows]
  out = {}
  for n in lengths:
    ids = tok([r["document"] for r in rows], truncation=True, max_length=n,
              return_attention_mask=False)["input_ids"]
    seen = [figure3_data.toc(tok.decode(i, skip_special_tokens=True))
            for i in ids]
    scores = summarization.rouge(["\n".join(s) for s in seen], refs, True)
    share = sum(len(s) / len(r.split("\n")) for s, r in zip(seen, refs))
    out[n] = (scores, 100 * share / len(rows))
  return out


def verdict(short, long):
  """Whether mean(long) > mean(short) beyond twice the standard error of
  the difference (as table4_windows.py), with the numbers."""
  n = len(short)
  ms, ss = results_text.mean_std(short)
  ml, sl = results_text.mean_std(long)
  diff = ml - ms
  if n < 2:
    return diff, float("nan"), "one seed: no spread"
  se = math.sqrt((ss ** 2 + sl ** 2) / n)
  word = ("gains" if diff > 2 * se else "loses" if diff < -2 * se
          else "within spread")
  return diff, 2 * se, word


def plot(lengths, scores, oracle_scores, path, n_seeds):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for key, label in ROUGE:
    values = np.array([scores[n][key] for n in lengths])  # [L, seeds]
    line, = ax.plot(lengths, values.mean(1), marker="o", label=label)
    if n_seeds > 1:
      ax.fill_between(lengths, values.min(1), values.max(1), alpha=0.2,
                      color=line.get_color())
    ax.plot(lengths, [oracle_scores[n][0][key] for n in lengths], ls=":",
            color=line.get_color())
  ax.plot([], [], ls=":", color="gray",
          label="oracle: every visible name copied")
  ax.set_xscale("log", base=2)
  ax.set_xticks(lengths, [str(n) for n in lengths])
  ax.set_xlabel("input tokens (documents cut to this length)")
  ax.set_ylabel("test ROUGE (mean; band = min..max over seeds)")
  ax.set_title(f"Figure 3 in miniature: tiny LED, {n_seeds} seed"
               f"{'s' * (n_seeds > 1)}")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  a = parse_args(argv)
  root = a.root
  long_chars = int(CHARS_PER_TOKEN * a.lengths[-1])
  dense = root / f"data_dense{DENSE['lines']}_{DENSE['chars']}"
  figure3_data.build(dense, doc_chars=DENSE["chars"], dense=DENSE["lines"],
                     counts={k: DENSE[k] for k in ("train", "valid", "test")})
  long_data = root / f"data_long{long_chars}"
  meta = figure3_data.build(long_data, doc_chars=long_chars,
                            counts=LONG_COUNTS)
  timings = []

  stage0 = root / "stage0"
  s0_steps = steps(STAGE0["train.epochs"], DENSE["train"],
                   STAGE0["train.batch_size"])
  _, timing = run_folders.train(CONFIG, stage0, overrides({
      "init_from": tiny_led(
          root / f"led_init_std{round(1000 * MODEL['init_std'])}"),
      "data.train": dense / "train.jsonl", **STAGE0}), hint="--root",
      steps=s0_steps)
  timings.append(("stage 0", timing))
  dense_eval = evaluate(stage0, dense / "test.jsonl", num_beams=1)
  print(f"stage 0 (dense test): {results_text.fmt(dense_eval['rouge1'], '.2f')}"
        " ROUGE-1", flush=True)
  base = export(stage0, root / "led_stage0")
  long_led = extend_positions(base, root / f"led_{a.lengths[-1]}",
                              a.lengths[-1], PERIOD)

  scores = {n: {k: [] for k, _ in ROUGE + (("gen_len", ""),)}
            for n in a.lengths}
  samples = {}
  for n in a.lengths:
    for seed in a.seeds:
      workdir = root / f"L{n}_e{a.epochs:g}_s{seed}"
      _, timing = run_folders.train(CONFIG, workdir, overrides({
          "init_from": long_led, "data.train": long_data / "train.jsonl",
          "model.max_length": n, "train.epochs": a.epochs, "seed": seed,
          **FINETUNE}), hint="--root (or --epochs)",
          steps=steps(a.epochs, LONG_COUNTS["train"],
                      FINETUNE["train.batch_size"]))
      timings.append((f"L {n} seed {seed}", timing))
      result = evaluate(workdir, long_data / "test.jsonl")
      for key in scores[n]:
        scores[n][key].append(result[key])
      print(f"L {n} seed {seed}: ROUGE-1 {result['rouge1']:.2f} "
            f"-2 {result['rouge2']:.2f} -L {result['rougeL']:.2f}",
            flush=True)
      if seed == a.seeds[0]:
        pred = sorted(workdir.glob("predictions_test_*.jsonl"))[-1]
        samples[n] = json.loads(pred.read_text().splitlines()[0])
  best = oracle(long_led, long_data / "test.jsonl", a.lengths)

  out = a.out
  out.parent.mkdir(parents=True, exist_ok=True)
  png = out.with_suffix(".png")
  ns = len(a.seeds)
  n_steps = run_folders.newest_step(workdir)
  test_meta = meta["splits"]["test"]
  lines = ["# Figure 3 in miniature: ROUGE by input length (tiny LED, CPU)",
           ""] + results_text.header(commands.command_line(__file__, argv))
  lines += [
      f"Task: experiments/figure3_data.py, tables of contents of Python "
      f"standard-library modules: a document is whole files of one split "
      f"cut to {long_chars:,} characters (~{a.lengths[-1]:,} tokens), its "
      f"summary the document's top-level def/class names in order "
      f"({test_meta['names_mean']:.1f} per test document, "
      f"{test_meta['names_min']}..{test_meta['names_max']}); "
      f"{LONG_COUNTS['train']} training and {test_meta['documents']} test "
      "documents.", "",
      f"Model: a tiny random LED (make_tiny_led's shapes, weights drawn "
      f"with std {MODEL['init_std']}: d_model {MODEL['d_model']}, "
      f"{MODEL['layers']} encoder + {MODEL['layers']} decoder layers, "
      f"encoder window {MODEL['window']}, byte-level BPE of "
      f"{MODEL['vocab_size']:,} tokens). Stage 0 (our "
      f"stand-in for the paper's pretrained BART): {DENSE['train']:,} dense "
      f"documents of top-level def/class lines (figure3_data.py --dense "
      f"{DENSE['lines']} --chars {DENSE['chars']}, ~5 names in 64-116 "
      f"tokens), {STAGE0['model.max_length']} encoder positions, "
      f"{s0_steps} steps of batch "
      f"{STAGE0['train.batch_size']}, LR {STAGE0['optim.lr']}, "
      f"{STAGE0['train.epochs']:g} epochs; greedy ROUGE-1/2/L on its dense "
      f"test documents: {dense_eval['rouge1']:.2f} / "
      f"{dense_eval['rouge2']:.2f} / {dense_eval['rougeL']:.2f}. Then "
      f"exported and its first {PERIOD} encoder positions copied over "
      f"{a.lengths[-1]:,} (the authors' recipe). Fine-tuning per length "
      f"L and seed: the long documents cut to L tokens, batch "
      f"{FINETUNE['train.batch_size']}, "
      f"LR {FINETUNE['optim.lr']} (2% warmup, linear decay), {n_steps} steps "
      f"({a.epochs:g} epoch{'s' * (a.epochs != 1)}), summaries up to "
      f"{FINETUNE['model.max_target_length']} tokens; test: greedy "
      f"generation (up to {FINETUNE['eval.max_length']} tokens) on the "
      "test documents cut to L, rouge-score F1 x 100 with stemming. The "
      "seeds vary the fine-tuning (order, dropout); stage 0 is one run.", "",
      f"Paper: {PAPER_TEXT}. Deviations: arXiv -> module tables of "
      "contents; LED-base from BART -> a 2+2-layer d_model-64 LED "
      "pretrained for a few minutes on short def/class-line documents; "
      "1K/4K/16K -> " + "/".join(f"{n:,}" for n in a.lengths)
      + " (same 16x span when "
      "three lengths 4x apart); beam 4 -> greedy.", "",
      "| input tokens | ROUGE-1 | ROUGE-2 | ROUGE-L | per seed R-1 | "
      "generated tokens | oracle R-1 / R-2 / R-L | reference names "
      "visible |", "|---|---|---|---|---|---|---|---|"]
  for n in a.lengths:
    cells = []
    for key, _ in ROUGE:
      m, s = results_text.mean_std(scores[n][key])
      cells.append(f"{m:.2f}" + (f" ± {s:.2f}" if ns > 1 else ""))
    per = ", ".join(f"{v:.2f}" for v in scores[n]["rouge1"])
    gl, _ = results_text.mean_std(scores[n]["gen_len"])
    o, share = best[n]
    lines.append(f"| {n:,} | " + " | ".join(cells) + f" | {per} | "
                 f"{gl:.1f} | {o['rouge1']:.1f} / {o['rouge2']:.1f} / "
                 f"{o['rougeL']:.1f} | {share:.0f}% |")
  lines += ["", "Oracle: the names a model would write if it copied every "
            "top-level name inside the first L tokens (and nothing else); "
            "the share of each reference's names inside them, averaged.",
            "", "Does ROUGE grow with the input? A step counts when the "
            "mean difference exceeds twice its standard error, "
            "sqrt(s1^2/n + s2^2/n) over the n seeds.", "",
            "| step | metric | mean difference | 2 x s.e. | here |",
            "|---|---|---|---|---|"]
  for short, long in zip(a.lengths, a.lengths[1:]):
    for key, label in ROUGE:
      diff, two_se, word = verdict(scores[short][key], scores[long][key])
      lines.append(f"| {short:,} -> {long:,} | {label} | {diff:+.2f} | "
                   f"{two_se:.2f} | {word} |")
  if dense_eval["rouge1"] < COPYING:
    lines += ["", f"**Stage 0 did not learn to copy** (ROUGE-1 "
              f"{dense_eval['rouge1']:.2f} on its own short documents, "
              f"below {COPYING}): its summaries are plausible names "
              "(TestCase, ...) rather than the document's, i.e. a name "
              "language model that does not read. The fine-tuned runs "
              "start from it, so their ROUGE measures little reading of "
              "the input either; a gain with length cannot show the "
              "paper's mechanism here. Before this setup, stage 0 from "
              "LED's own init (std 0.02; names from definition snippets "
              "at LR 3e-3 and 1e-3, and plain reconstruction) ended with "
              "an encoder whose output was the same for every document "
              "(transformers' gradients on the same weights equal "
              "lfjax's to 1e-8: an optimization failure, not a bug); std "
              f"{MODEL['init_std']} keeps the encoder alive (spread across "
              "documents 0.80 after 200 steps); 600 steps did not copy, "
              "3,000 did (ROUGE-1 27 on this machine)."]
  lines += [""] + [l + "\n" for l in results_text.timing_notes(timings)]
  lines += [f"First test document, seed {a.seeds[0]} (reference, then each "
            "length's generated summary, names joined by spaces):", "",
            "- reference: `" + " ".join(samples[a.lengths[0]]["reference"]
                                       .split()) + "`"]
  for n in a.lengths:
    lines.append(f"- {n:,} tokens: `"
                 + " ".join(samples[n]["summary"].split()) + "`")
  lines += ["", f"![ROUGE by input length]({png.name})", ""]
  out.write_text("\n".join(lines))
  plot(a.lengths, scores, best, png, ns)
  print("\n".join(lines))
  print(f"wrote {out} and {png}")


if __name__ == "__main__":
  commands.main_guard(main)
