"""Table 2 at CPU scale: Longformer char-LM vs full attention, same size.

  python experiments/table2_charlm.py            # ~1.5 hours on 2 cores (*)
  python experiments/table2_charlm.py --quick    # a few minutes
  python experiments/table2_charlm.py --seeds 0,1

Trains configs/charlm_table2.py's `longformer` and `full` variants with
`python -m lfjax.train` (two phases of the paper's staged schedule), one
process per run so that wall time and peak resident memory are the run's
own, evaluates each on the test split with `python -m lfjax.evaluate`
(the run's eval window and stride), and writes
experiments/results/table2{_quick}.md and .png (training curves). The
paper's Table 2 (small models, 41M): Longformer 1.10 test BPC on text8,
1.00 on enwik8; full-attention T12 1.18 / 1.11.

(*) Measured with other jobs on the cores: the Longformer run 42 min, the
full-attention run 44 min (1.38x the Longformer's CPU time), each test
evaluation 2-3 min.
"""

import argparse
import json
import statistics
import sys

import commands
import results_text
import run_folders

ROWS = (("longformer", "Longformer (increasing windows, dilation on 2 heads)"),
        ("full", "Full attention (every window = the sequence)"))


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default="/tmp/lfjax_table2",
                 help="folder for the runs (one subfolder per run; a run "
                 "already there is read, not retrained)")
  p.add_argument("--seeds", default="0", help="comma-separated distinct "
                 "non-negative seeds")
  p.add_argument("--quick", action="store_true",
                 help="tiny runs (a few minutes); results go to table2_quick")
  p.add_argument("--out", default=None, help="results .md (default: "
                 "experiments/results/table2[_quick].md; PNG beside it)")
  a = p.parse_args(argv)
  a.seeds = results_text.parse_seeds(p, a.seeds)
  name = "table2_quick" if a.quick else "table2"
  a.root = commands.folder_arg(p, "--root", a.root)
  a.out = commands.out_arg(p, "--out", a.out, commands.REPO / "experiments"
                           / "results" / f"{name}.md")
  return a


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  a = parse_args(argv)
  from lfjax.tasks import common  # jax: after the usage checks
  root = a.root / ("quick" if a.quick else "full")
  rows, timings, notes = {}, [], []
  for variant, _ in ROWS:
    rows[variant] = []
    for seed in a.seeds:
      config = f"configs/charlm_table2.py:{variant}" + (
          ",quick" if a.quick else "")
      workdir = root / f"{variant}_s{seed}"
      records, timing = run_folders.train(config, workdir,
                                          [f"--config.seed={seed}"])
      timings.append((f"{variant} seed {seed}", timing))
      notes += run_folders.extensions(workdir)
      test = run_folders.evaluate(
          workdir, "test", ["--max_chars", "8000" if a.quick else "100000"])
      dev = [r["eval_bpc"] for r in records if "eval_bpc" in r]
      # Throughput per phase: the median of the logged tokens/s.
      tps = {}
      for r in records:
        if r.get("tokens_per_s"):
          tps.setdefault(r["phase"], []).append(r["tokens_per_s"])
      rows[variant].append(dict(
          test=test["bpc"], dev=dev[-1] if dev else float("nan"),
          timing=timing, workdir=workdir,
          config=json.loads((workdir / "config.json").read_text()),
          tps={p: statistics.median(v) for p, v in sorted(tps.items())},
          curve=[(r["step"], r["train_bpc"]) for r in records
                 if "train_bpc" in r],
          chars=test["chars_scored"],
          sha256=test.get("dataset_sha256", results_text.UNKNOWN)[:12],
          trained_on=[r.get("sha256", "")[:12] for r in
                      common.corpus_records(workdir)]))
      print(f"{variant} seed {seed}: test bpc {test['bpc']:.4f}, "
            f"{results_text.fmt(timing['wall_s'], '.0f')} s, "
            f"{results_text.fmt(timing['peak_rss_gib'], '.2f')} GiB",
            flush=True)

  corpora = {r["sha256"] for rs in rows.values() for r in rs}
  if len(corpora) > 1:  # e.g. one run evaluated before a corpus change
    raise commands.Error(f"the runs were evaluated on different test "
                         f"corpora (sha256 {sorted(corpora)}); not writing "
                         "a table that compares them")
  out = a.out
  first = rows["longformer"][0]
  layers, _ = results_text.describe_model(first["config"])
  sched = first["config"]["schedule"]
  params = {v: results_text.param_count(rows[v][0]["workdir"]) for v, _ in ROWS}
  lines = [f"# Table 2 at CPU scale ({'quick' if a.quick else 'default'})",
           ""] + results_text.header(commands.command_line(__file__, argv))
  lines += [
      f"Model (from the runs' config.json): {layers}, relative positions; "
      f"{params['longformer']:,} parameters (longformer), "
      f"{params['full']:,} (full), counted from the model the config "
      "builds. Embedded corpus `pystdlib`; "
      f"{len(sched['steps'])} phases of {tuple(sched['steps'])} steps "
      f"(sequences {tuple(sched['seq_lens'])}, windows x "
      f"{tuple(sched['window_scales'])}, learning rates "
      f"{tuple(sched['lrs'])}), the same tokens for both variants, seeds "
      f"{a.seeds}. Windows per layer (bottom -> top):"]
  for variant, label in ROWS:
    _, windows = results_text.describe_model(rows[variant][0]["config"])
    lines.append(f"- {variant}: {windows}; dilations "
                 f"{tuple(rows[variant][0]['config']['model']['dilations'])}")
  ev = first["config"]["eval"]
  lines += [
      "", "Test BPC: `python -m lfjax.evaluate --split test` with the run's "
      f"protocol: windows of {ev['seq_len']:,} characters (the last "
      f"training length) stepped by {ev['step']:,}, each scoring its last "
      f"{ev['step']:,} (the first window scores all of its characters), so "
      f"every scored character after the first window sees at least "
      f"{ev['seq_len'] - ev['step']:,} characters of context; the paper "
      "uses windows of 32,256 (longer than its 23,040 training length) "
      "stepped by 512, scoring the last 512. Scored: the first "
      f"{rows['full'][0]['chars']:,} test characters (corpus sha256 "
      f"{rows['full'][0]['sha256']}...). Wall time is the "
      "whole training (compiles and the final validation included); CPU s "
      "is its user + system time (moves less than wall time when other "
      "jobs share the cores); load is the 1-minute load average when the "
      "training started / ended. Peak memory is the training process's "
      "peak resident set (ru_maxrss).", "",
      "Deviations from the paper (its Table 12 recipe for the small "
      "model): text8/enwik8 -> Python sources, bytes as tokens (vocabulary "
      "256; text8 has 27); 12 layers x 512, 41M parameters -> "
      f"{layers}, the counts above; dropout 0.2 -> "
      f"{first['config']['model']['dropout']}; 5 phases of 430K, 50K, "
      "50K, 35K, 5K steps from 2,048 to 23,040 tokens, batch 32, 32, 16, "
      "16, 16, phase-1 learning rate 2.5e-4 -> "
      f"{len(sched['steps'])} phases of {tuple(sched['steps'])} steps from "
      f"{min(sched['seq_lens']):,} to {max(sched['seq_lens']):,} tokens, "
      f"batch {tuple(sched['batch_sizes'])}, learning rates "
      f"{tuple(sched['lrs'])} (our choice for short runs of a "
      "small model, not tuned); phase-1 windows 32 -> 512 at 2,048 tokens -> the "
      "windows above (the same shape, 16 -> 128 at 512 tokens: a length "
      "scaling of the bottom window would give 8); warmup 10% of each "
      "phase, constant rate and gradient clipping 0.25 as in the paper; "
      "evaluation as described above. The full-attention row is our own "
      "model with windows covering the sequence, not T12 or "
      "Transformer-XL; it runs on lfjax's chunked band core, which then "
      "computes exactly full causal attention (tests/test_charlm.py "
      "checks it against the dense path) in about half the time of the "
      "dense implementation; its memory still grows as length x window = "
      "length^2.", "",
      "| Model | test BPC | dev BPC | train wall s | train CPU s | load | "
      "peak RSS GiB | tok/s per phase (median) |",
      "|---|---|---|---|---|---|---|---|"]
  fmt = results_text.fmt
  for variant, label in ROWS:
    rs = rows[variant]
    ts = [r["timing"] for r in rs]
    test = results_text.mean_std([r["test"] for r in rs])
    dev = results_text.mean_std([r["dev"] for r in rs])
    ms = lambda m: (f"{m[0]:.4f}" if len(rs) == 1
                    else f"{m[0]:.4f} ± {m[1]:.4f}")
    known = lambda k: (None if any(t[k] is None for t in ts)
                       else [t[k] for t in ts])
    wall, cpu, rss = known("wall_s"), known("cpu_s"), known("peak_rss_gib")
    load = ", ".join(results_text.UNKNOWN if t["load_average"] is None else
                     f"{t['load_average'][0]:.1f}/{t['load_average'][1]:.1f}"
                     for t in ts)
    tps = " / ".join(f"{statistics.median(r['tps'][p] for r in rs):,.0f}"
                     for p in sorted(rs[0]["tps"]))
    lines.append(f"| {label} | {ms(test)} | {ms(dev)} | "
                 f"{fmt(wall and statistics.median(wall), '.0f')} | "
                 f"{fmt(cpu and statistics.median(cpu), '.0f')} | {load} | "
                 f"{fmt(rss and max(rss), '.2f')} | {tps} |")
  unrecorded = [f"{v} seed {a.seeds[i]}" for v, _ in ROWS
                for i, r in enumerate(rows[v]) if not r["trained_on"]]
  other = [f"{v} seed {a.seeds[i]} ({', '.join(r['trained_on'])})"
           for v, _ in ROWS for i, r in enumerate(rows[v])
           if r["trained_on"] and set(r["trained_on"]) != {r["sha256"]}]
  if unrecorded:
    lines += ["", f"Not recorded which corpus build trained "
              f"{', '.join(unrecorded)} (the run started before lfjax kept "
              "corpus_history.jsonl); the test corpus is the one above."]
  if other:
    lines += ["", "Trained (partly) on another corpus build than the test "
              f"split's above (sha256 prefixes): {'; '.join(other)}."]
  if a.quick:
    lines += ["", "At --quick sizes compiling takes much of the wall time "
              "(one compile per phase and variant): compare tokens/s, not "
              "wall time."]
  lines += [""] + [l + "\n" for l in results_text.timing_notes(timings)]
  lines += results_text.resumed_notes(notes)
  lines += ["Paper (Table 2, small models, test BPC): Longformer 1.10 "
            "(text8), 1.00 (enwik8); T12, full attention, 1.18 / 1.11.", ""]
  png = out.with_suffix(".png")
  lines += [f"Training curves (train BPC, every logged step): "
            f"[{png.name}]({png.name}).", ""]
  out.write_text("\n".join(lines))
  results_text.plot_seed_bands(
      [(label, [r["curve"] for r in rows[v]]) for v, label in ROWS], png,
      ylabel="train BPC", title="Table 2 at CPU scale: char-LM, same size, "
      "same tokens")
  print("\n".join(lines))
  print(f"wrote {out} and {png}")


if __name__ == "__main__":
  commands.main_guard(main)
