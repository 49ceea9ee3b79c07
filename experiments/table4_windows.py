"""Table 4 at CPU scale: window schedules and dilation, several seeds.

  python experiments/table4_windows.py                 # 4 variants x 3 seeds
  python experiments/table4_windows.py --quick         # a few minutes
  python experiments/table4_windows.py --seeds 0,1,2,3,4 --steps 1200

Trains configs/charlm_table4.py's variants (increasing, fixed, decreasing
windows; increasing with dilation on 2 heads) with `python -m lfjax.train`,
one process per run, under --root (finished runs are read, not retrained;
shorter ones are resumed with --steps; a run of other steps or config is
refused), then writes experiments/results/table4{_quick}.md with the
mean and standard deviation of the final dev BPC per variant, whether the
paper's orderings hold beyond the seed spread, and a PNG of the dev BPC
curves. The paper's numbers (text8 dev BPC after 150K steps of phase 1):
decreasing 1.24, fixed 1.23, increasing 1.21, no dilation 1.21, dilation
on 2 heads 1.20.
"""

import argparse
import json
import math
import sys

import commands
import results_text
import run_folders

PAPER = {"decreasing": 1.24, "fixed": 1.23, "increasing": 1.21,
         "dilated": 1.20}
ROWS = (("decreasing", "Decreasing w"),
        ("fixed", "Fixed w (the mean of increasing)"),
        ("increasing", "Increasing w, no dilation"),
        ("dilated", "Increasing w + dilation on 2 heads"))
# (better, worse) pairs the paper reports.
ORDERINGS = (("increasing", "fixed"), ("fixed", "decreasing"),
             ("increasing", "decreasing"), ("dilated", "increasing"))


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default="/tmp/lfjax_table4",
                 help="folder for the runs (one subfolder per run; a run "
                 "already there is read, or resumed when --steps asks for "
                 "more; one of other steps or config is refused)")
  p.add_argument("--seeds", default="0,1,2", help="comma-separated distinct "
                 "non-negative seeds")
  p.add_argument("--steps", type=int, default=None,
                 help="training steps per run (default: the config's)")
  p.add_argument("--quick", action="store_true",
                 help="tiny runs (a few minutes); results go to table4_quick")
  p.add_argument("--out", default=None, help="results .md (default: "
                 "experiments/results/table4[_quick].md; PNG beside it)")
  a = p.parse_args(argv)
  a.seeds = results_text.parse_seeds(p, a.seeds)
  if a.steps is not None and a.steps < 1:
    p.error(f"--steps: expected an integer >= 1, got {a.steps}")
  name = "table4_quick" if a.quick else "table4"
  a.root = commands.folder_arg(p, "--root", a.root)
  a.out = commands.out_arg(p, "--out", a.out, commands.REPO / "experiments"
                           / "results" / f"{name}.md")
  return a


def dev_curve(records):
  """[(step, eval_bpc)] of a run's validation evaluations."""
  return [(r["step"], r["eval_bpc"]) for r in records if "eval_bpc" in r]


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  a = parse_args(argv)
  root = a.root / ("quick" if a.quick else "full")
  final, curves, walls, shapes, timings, notes = {}, {}, {}, {}, [], []
  for variant, _ in ROWS:
    final[variant], curves[variant], walls[variant] = [], [], []
    for seed in a.seeds:
      config = "configs/charlm_table4.py:" + variant + (
          ",quick" if a.quick else "")
      overrides = [f"--config.seed={seed}"]
      if a.steps:
        overrides.append(f"--config.schedule.steps=({a.steps},)")
      workdir = root / f"{variant}_s{seed}"
      records, timing = run_folders.train(config, workdir, overrides,
                                          hint="--root (or --steps)")
      timings.append((f"{variant} seed {seed}", timing))
      notes += run_folders.extensions(workdir)
      curve = dev_curve(records)
      if not curve:
        raise commands.Error(f"run {workdir} wrote no eval_bpc "
                               "(config.eval_every = 0?)")
      final[variant].append(curve[-1][1])
      run_config = json.loads((workdir / "config.json").read_text())
      model = run_config["model"]
      shapes[variant] = (tuple(model["windows"]), tuple(model["dilations"]))
      curves[variant].append(curve)
      walls[variant].append(timing["wall_s"])
      print(f"{variant} seed {seed}: dev bpc {curve[-1][1]:.4f} "
            f"({results_text.fmt(timing['wall_s'], '.0f')} s)", flush=True)

  out = a.out
  out.parent.mkdir(parents=True, exist_ok=True)
  png = out.with_suffix(".png")
  n = len(a.seeds)
  lines = [f"# Table 4 at CPU scale ({'quick' if a.quick else 'default'})",
           ""] + results_text.header(commands.command_line(__file__, argv))
  layers, _ = results_text.describe_model(run_config)
  steps = run_folders.total_steps(run_config)
  lines += [
      f"Model: configs/charlm_table4.py ({layers}, causal windows; "
      f"embedded corpus `pystdlib`), one phase of {steps} steps of "
      f"{run_config['schedule']['batch_sizes'][0]} x "
      f"{run_config['schedule']['seq_lens'][0]} tokens, seeds {a.seeds}. "
      "Dev BPC: the run's last validation (paper protocol scaled: windows "
      "stepped by the config's eval.step, scoring the last eval.step "
      "characters; first eval.max_chars characters of the valid split).", "",
      "Deviations from the paper: text8 -> Python sources; 12 layers x 512 "
      "-> 6 x 128; sequence 2,048 -> 512 (quick: 256) and windows scaled "
      "alike; 150K steps -> the steps above; the paper's 'No dilation' row "
      "is our 'increasing' run (read as the same configuration).", "",
      "| Variant | windows (bottom -> top) | dilations (2 heads) | dev BPC "
      "mean ± std | per seed | paper (text8) | min train wall s |",
      "|---|---|---|---|---|---|---|"]
  for variant, label in ROWS:
    m, s = results_text.mean_std(final[variant])
    per = ", ".join(f"{v:.4f}" for v in final[variant])
    spread = f" ± {s:.4f}" if n > 1 else ""
    windows, dilations = shapes[variant]
    known = [w for w in walls[variant] if w is not None]
    wall = results_text.fmt(min(known) if known else None, ".0f") + (
        f" ({results_text.UNKNOWN} for {len(walls[variant]) - len(known)})"
        if known and len(known) < len(walls[variant]) else "")
    lines.append(f"| {label} | {windows} | {dilations} | {m:.4f}{spread} | "
                 f"{per} | {PAPER[variant]:.2f} | {wall} |")
  lines += [""] + [l + "\n" for l in results_text.timing_notes(timings)]
  lines += results_text.resumed_notes(notes)
  lines += ["Orderings the paper reports, tested here: a difference "
            "counts as beyond the seed spread when it exceeds twice its "
            "standard error, sqrt(s1^2/n + s2^2/n).", "",
            "| Paper says | mean difference | 2 x s.e. | here |",
            "|---|---|---|---|"]
  for better, worse in ORDERINGS:
    mb, sb = results_text.mean_std(final[better])
    mw, sw = results_text.mean_std(final[worse])
    se = math.sqrt((sb ** 2 + sw ** 2) / n) if n > 1 else float("nan")
    diff = mw - mb
    if not n > 1:
      verdict = "one seed: no spread"
    elif diff > 2 * se:
      verdict = "holds"
    elif diff < -2 * se:
      verdict = "reversed"
    else:
      verdict = "within spread"
    lines.append(f"| {better} < {worse} | {diff:+.4f} | {2 * se:.4f} | "
                 f"{verdict} |")
  lines += ["", f"![dev BPC curves]({png.name})", ""]
  out.write_text("\n".join(lines))
  results_text.plot_seed_bands(
      [(label, curves[v]) for v, label in ROWS], png, ylabel="dev BPC",
      title=f"Table 4 ablation, {n} seed{'s' * (n > 1)}")
  print("\n".join(lines))
  print(f"wrote {out} and {png}")


if __name__ == "__main__":
  commands.main_guard(main)
