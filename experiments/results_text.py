"""The results files' text, numbers and plots: formatting (unknown timing as
UNKNOWN), notes on timing and resumed runs, the header with the command
and the machine, the model described and counted, mean and spread over
seeds, the --seeds flag, and curves with seed bands.
"""

import os
import platform

# Table cells of a run whose timing is unknown; the results file explains.
UNKNOWN = "?"


def fmt(value, spec):
  """value formatted, or UNKNOWN for None (unknown timing)."""
  return UNKNOWN if value is None else format(value, spec)


def resumed_notes(notes):
  """Lines for the results file naming runs resumed with a longer
  schedule (notes: one string per run), or none."""
  if not notes:
    return []
  return ["Runs resumed with a longer schedule (their first steps ran "
          "under the shorter one's warmup): " + "; ".join(notes) + ".", ""]


def timing_notes(runs):
  """Sentences for the results file: runs whose timing is unknown, and
  runs trained in several launches. runs: [(name, summary)]."""
  lines = []
  unknown = [f"{n} ({t['why']})" for n, t in runs if not t["complete"]]
  if unknown:
    lines.append(f"`{UNKNOWN}`: timing unknown, not reported, for "
                 + "; ".join(unknown) + ". Training such a run again in a "
                 "new --root measures it.")
  several = [f"{n} ({t['launches']} launches)" for n, t in runs
             if t["complete"] and t["launches"] > 1]
  if several:
    lines.append("Runs trained in several launches (timing summed over "
                 "them, each launch's compiles and any steps a killed "
                 "launch lost included): " + ", ".join(several) + ".")
  return lines


def describe_model(config):
  """'6 layers, hidden 256, 8 heads x 32, FFN 1024' of a char-LM run
  config (JSON dict), and its windows per phase (window_scales applied)."""
  m, s = config["model"], config["schedule"]
  text = (f"{m['num_layers']} layers, hidden {m['hidden_size']}, "
          f"{m['num_heads']} heads x {m['head_dim']}, FFN {m['ffn_size']}")
  windows = "; ".join(
      f"phase {p + 1} (seq {n}): {tuple(w * k for w in m['windows'])}"
      for p, (n, k) in enumerate(zip(s["seq_lens"], s["window_scales"])))
  return text, windows


def param_count(workdir):
  """Parameters of a char-LM run's model, counted from the model its
  config.json builds (jax.eval_shape: no arrays are allocated)."""
  import jax
  from flax import nnx
  from lfjax import checkpoints
  from lfjax.data import chars
  from lfjax.models import charlm
  config = checkpoints.read_config(workdir, "charlm")
  corpus = chars.load(config.data.name, config.data.dir or None)
  model = nnx.eval_shape(lambda: charlm.CharLM(
      checkpoints.model_config(config, corpus.vocab_size),
      rngs=nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def machine():
  """CPU model, cores, RAM and OS of this machine, in words."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f
                 if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return (f"{cpu} ({platform.machine()}), {os.cpu_count()} CPU cores, "
          f"{mem:.0f} GiB RAM, {platform.system()}")


def header(command):
  """Markdown lines: the command, versions and the machine."""
  import jax
  import numpy as np
  return [f"Command: `{command}`", "",
          f"Machine: {machine()}; jax {jax.__version__} "
          f"({jax.default_backend()}), numpy {np.__version__}, Python "
          f"{platform.python_version()}. Timings are wall clock on a shared "
          "machine.", ""]


def mean_std(values):
  import statistics
  if len(values) < 2:
    return values[0], float("nan")
  return statistics.mean(values), statistics.stdev(values)


def parse_seeds(parser, text):
  """'0,1,2' -> [0, 1, 2]; parser.error naming --seeds for anything but
  distinct integers in [0, 2**31 - 1] (a repeated seed would count one run
  twice and shrink the spread; lfjax.train refuses others)."""
  from lfjax import checks
  try:
    seeds = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    seeds = []
  if not seeds:
    parser.error(f"--seeds: expected comma-separated integers, got {text!r}")
  out = [s for s in seeds if not 0 <= s <= checks.SEED_MAX]
  if out:
    parser.error(f"--seeds: expected integers in [0, {checks.SEED_MAX}], "
                 f"got {out} in {text!r}")
  repeated = sorted({s for s in seeds if seeds.count(s) > 1})
  if repeated:
    parser.error(f"--seeds: expected distinct seeds, got {repeated} more "
                 f"than once in {text!r}")
  return seeds


def plot_seed_bands(series, path, *, ylabel, title, chance=None):
  """One line per variant: the mean over seeds of [(step, value)] curves,
  with a band from the seeds' min to max. series: [(label, [curve, ...])]."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for label, runs in series:
    steps = [s for s, _ in runs[0]]
    values = np.array([[v for _, v in c] for c in runs])
    line, = ax.plot(steps, values.mean(0), marker="o", label=label)
    if len(runs) > 1:
      ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2,
                      color=line.get_color())
  if chance is not None:
    ax.axhline(chance, color="gray", ls=":", label="chance")
  ax.set_xlabel("training step")
  ax.set_ylabel(f"{ylabel} (mean; band = min..max over seeds)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
