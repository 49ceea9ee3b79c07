"""Training and evaluation curves of one or more runs, from metrics.jsonl.

  python -m lfjax.plot WORKDIR [WORKDIR ...] --out curves.png \
      [--names a,b] [--title TEXT]

Panels, every run overlaid in its own colour and named in the legend:
loss (train solid, eval dashed with markers), bits per character (the same;
only when a run logged it), learning rate, training throughput (tokens/s),
and one panel per other evaluation metric a run logged (eval_<name>: a
fine-tuning task's accuracy, macro F1, exact match, F1, ...; the evaluated
set's sizes, eval_chars and eval_masked_tokens, are left out). Works for
every run the trainer writes (lfjax.loop logs train_loss, learning_rate,
tokens_per_s and the phase at each log step, train_bpc for the char-LM and
MLM, and the task's eval_* at each evaluation); the loss, learning-rate and
throughput panels say so when no run has data for them.
Phase changes of a staged schedule are marked by dotted vertical lines.
metrics.jsonl stays the source of truth: this only reads it.

Drawn with matplotlib's object API on an Agg canvas: no display is needed,
and nothing changes pyplot's global backend (a notebook importing this
keeps its inline figures).
"""

import os
import pathlib
import sys

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lfjax import cli
from lfjax import metrics

# (panel title, y label, [(metrics key, "train" | "eval")]); log y for the
# learning rate only (schedules span decades when they warm up or decay).
PANELS = (
    ("loss", "loss (nats)", (("train_loss", "train"), ("eval_loss", "eval"))),
    ("bits per character", "BPC", (("train_bpc", "train"),
                                   ("eval_bpc", "eval"))),
    ("learning rate", "learning rate", (("learning_rate", "train"),)),
    ("throughput", "tokens/s", (("tokens_per_s", "train"),)),
)
# Drawn only when some run logged them (the char-LM's and MLM's, not a
# fine-tuning task's).
OPTIONAL = ("bits per character",)
# eval_* numbers that are sizes of the evaluated set, not metrics.
EVAL_COUNTS = ("eval_chars", "eval_masked_tokens")


def load_run(workdir):
  """The records of workdir/metrics.jsonl, in file order.

  Raises:
    FileNotFoundError: workdir is not a folder, or has no metrics.jsonl.
    ValueError: metrics.jsonl is empty, or a line is not a JSON record with
      an integer "step" (the file names the line).
  """
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f"{workdir}: expected a run folder (one "
                            "lfjax.train wrote), got no such "
                            "folder")
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{workdir}: expected a run folder with a "
                            "metrics.jsonl (lfjax.train writes "
                            "one at its first log step), found none")
  try:
    records = metrics.read(path)
  except ValueError as e:  # json.JSONDecodeError
    raise ValueError(f"{path}: expected one JSON record per line, got a line "
                     f"that does not parse ({e})") from None
  if not records:
    raise ValueError(f"{path}: expected metrics records, got an empty file "
                     "(the run has not reached its first log step)")
  for i, rec in enumerate(records):
    if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
      raise ValueError(f"{path}: line {i + 1}: expected a record with an "
                       f"integer 'step', got {str(rec)[:80]}")
  return records


def series(records, key):
  """(steps, values) of the records that hold a finite number under key
  (the writer stores NaN/Inf as null, and the first interval's tokens/s is
  null when it holds only the compiling step)."""
  steps, values = [], []
  for rec in records:
    v = rec.get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
      steps.append(rec["step"])
      values.append(float(v))
  return steps, values


def phase_starts(records):
  """Steps where a new phase's records begin, as the last logged step of
  the previous phase (the phase boundary when log_every divides it)."""
  out, prev_phase, prev_step = [], None, None
  for rec in records:
    p = rec.get("phase")
    if p is None:
      continue
    if prev_phase is not None and p != prev_phase:
      out.append(prev_step)
    prev_phase, prev_step = p, rec["step"]
  return out


def run_names(workdirs):
  """Short distinct names: the folder names, with parent folders added
  while two runs share a name; the same folder given twice is its full
  path, the repeats numbered ("/a/run", "/a/run (2)")."""
  paths = [pathlib.Path(os.path.abspath(w)) for w in workdirs]
  depth = 1
  while True:
    # PurePath joins the root part without doubling it ("/" + "work").
    names = [str(pathlib.PurePath(*p.parts[-depth:])) for p in paths]
    if len(set(names)) == len(names) or depth >= max(len(p.parts)
                                                     for p in paths):
      break
    depth += 1
  seen = {}
  for i, name in enumerate(names):
    seen[name] = seen.get(name, 0) + 1
    if seen[name] > 1:
      names[i] = f"{name} ({seen[name]})"
  return names


def new_figure(**kwargs):
  """A Figure on an Agg canvas (savefig to any format Agg writes), not
  registered with pyplot."""
  fig = Figure(**kwargs)
  FigureCanvasAgg(fig)
  return fig


def style(ax, title, xlabel, ylabel):
  """The look every lfjax figure shares (experiments' PNGs too)."""
  ax.set_title(title, fontsize=10)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(True, which="major", alpha=0.3)
  ax.grid(True, which="minor", alpha=0.1)


def panels(runs):
  """PANELS without the OPTIONAL ones no run has data for, then one
  ("eval <metric>", metric, ((key, "eval"),)) per other numeric eval_*
  key of the runs, in the order they first appear."""
  has = lambda key: any(series(records, key)[0] for _, records in runs)
  out = [p for p in PANELS
         if p[0] not in OPTIONAL or any(has(k) for k, _ in p[2])]
  drawn = {k for p in PANELS for k, _ in p[2]} | set(EVAL_COUNTS)
  extra = []
  for _, records in runs:
    for rec in records:
      for key in rec:
        if (key.startswith("eval_") and key not in drawn
            and key not in extra and has(key)):
          extra.append(key)
  return out + [(f"eval {k[5:].replace('_', ' ')}", k[5:].replace('_', ' '),
                 ((k, "eval"),))
                for k in extra]


def plot_runs(runs, title=None):
  """A figure of the runs' curves, two panels a row (see panels()).

  runs: [(name, records)], records as load_run returns them.
  Returns the matplotlib Figure; every plotted line carries the label
  "<name> train" or "<name> eval" and the records' steps and values as its
  data, unchanged.
  """
  chosen = panels(runs)
  rows = -(-len(chosen) // 2)
  fig = new_figure(figsize=(11, 3.75 * rows))
  axes = fig.subplots(rows, 2, squeeze=False).flat
  for ax in axes[len(chosen):]:
    fig.delaxes(ax)  # an odd count leaves one
  colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (panel, ylabel, keys) in zip(axes, chosen):
    drawn = False
    for r, (name, records) in enumerate(runs):
      color = colors[r % len(colors)]
      for key, kind in keys:
        steps, values = series(records, key)
        if not steps:
          continue
        drawn = True
        if kind == "train":
          # The value logged at step s held over the steps since the last
          # log: a staged schedule's LR is drawn as steps, not ramps.
          ax.plot(steps, values, "-", color=color, lw=1.2,
                  drawstyle="steps-pre" if key == "learning_rate" else None,
                  label=f"{name} train" if len(keys) > 1 else name)
        else:
          ax.plot(steps, values, "--o", color=color, ms=4, lw=1.2,
                  label=f"{name} eval")
      for s in phase_starts(records):
        ax.axvline(s, color=color, ls=":", lw=0.8, alpha=0.6)
    style(ax, panel, "step", ylabel)
    if panel == "learning rate" and drawn:
      ax.set_yscale("log")
    if drawn:
      ax.legend(fontsize=8)
    else:
      ax.text(0.5, 0.5, "no data in these runs", ha="center", va="center",
              transform=ax.transAxes, color="gray")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def main(argv=None):
  """`python -m lfjax.plot WORKDIR ... --out FILE`; argv excludes the
  program name. Raises cli.UsageError for bad flags, FileNotFoundError or
  ValueError for a folder that is not a run."""
  p = cli.ArgumentParser(
      prog="python -m lfjax.plot",
      description="Plot the training and evaluation curves (loss, BPC, "
      "learning rate, tokens/s, a fine-tuning task's eval metrics) of one "
      "or more runs from their metrics.jsonl, overlaid.")
  p.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                 help="run folders (each with a metrics.jsonl)")
  p.add_argument("--out", required=True,
                 help="image to write; the suffix picks the format (.png, "
                 ".pdf, .svg)")
  p.add_argument("--names", default=None,
                 help="comma-separated legend names, one per WORKDIR; "
                 "None: the folder names")
  p.add_argument("--title", default=None, help="figure title")
  args = p.parse_args(argv)
  formats = set(FigureCanvasAgg.get_supported_filetypes())
  suffix = pathlib.Path(args.out).suffix.lstrip(".").lower()
  if suffix not in formats:
    raise cli.UsageError(f"--out: expected a file name ending in one of "
                         f"{', '.join('.' + f for f in sorted(formats))}, "
                         f"got {args.out!r}")
  out_dir = pathlib.Path(args.out).resolve().parent
  if not out_dir.is_dir():
    raise cli.UsageError(f"--out: expected a file in an existing folder, "
                         f"got {args.out!r} ({out_dir} does not exist)")
  if args.names is None:
    names = run_names(args.workdirs)
  else:
    names = [n.strip() for n in args.names.split(",")]
    if len(names) != len(args.workdirs):
      raise cli.UsageError(f"--names: expected {len(args.workdirs)} "
                           f"comma-separated names (one per WORKDIR), got "
                           f"{len(names)}: {args.names!r}")
  runs = [(n, load_run(w)) for n, w in zip(names, args.workdirs)]
  fig = plot_runs(runs, title=args.title)
  fig.savefig(args.out, dpi=110)
  print(f"wrote {args.out} ({len(runs)} run{'s' * (len(runs) > 1)}: "
        f"{', '.join(names)})")


if __name__ == "__main__":
  sys.exit(cli.run(main))
