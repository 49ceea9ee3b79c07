"""The paper's Figure 1 on CPU: time and memory of one self-attention layer
(forward + backward) against sequence length, for full attention and
Longformer's.

  python experiments/figure1_memory_time.py                   # full (~1 h)
  python experiments/figure1_memory_time.py --quick           # ~5 min
  python experiments/figure1_memory_time.py --seqs 512,4096 --repeats 5

Five implementations of one layer (transformers' *SelfAttention modules:
query/key/value projections and the attention, no output projection), each
timed for loss = sum(layer(x) * g) and its gradients with respect to x and
the projection weights:
  jax_full        jax.nn.dot_product_attention (XLA), full attention
  lfjax_dense     lfjax windowed_attention, impl="dense" (O(N^2) oracle)
  lfjax_chunked   lfjax windowed_attention, impl="chunked" (O(N w))
  hf_longformer   transformers' PyTorch LongformerSelfAttention (sliding
                  chunks)
  hf_roberta      transformers' PyTorch RobertaSelfAttention (full, eager)

Lengths double from --min_seq up to --max_seq, or until an implementation
runs out of memory (marked OOM) or one forward + backward takes longer than
--time_cap_s (marked "over cap"); longer lengths of that implementation are
then skipped. "Out of memory" is a budget, --mem_limit_gb (default 16), so a
run never takes the machine down: a JAX configuration whose compiled peak
(XLA's buffer assignment, `jax.jit(f).lower(...).compile().memory_analysis()`)
exceeds it is not run; a PyTorch one whose estimated peak exceeds it is not
run, and otherwise runs with its process's data limit (RLIMIT_DATA) at the
budget, so an underestimate fails one allocation instead of swapping.

Children run with OMP_WAIT_POLICY=PASSIVE unless it is set (PyTorch's
default spinning workers lose ~10x on a shared machine).
Each configuration runs in a fresh subprocess so that memory is its own:
"peak RSS" is the rise of the process's resident-set high-water mark
(VmHWM, reset after set-up) over its resident size before the first
forward; JAX rows also give the compiled peak. Times are medians of
--repeats runs after one warm-up.

Writes the table (markdown, with the command, versions, machine and the
deviations from the paper) to --out and the two-panel figure to the same
name with .png.
"""

import argparse
import ctypes
import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))
import commands  # noqa: E402  (experiments/, beside this file)
import results_text  # noqa: E402

IMPLS = ("jax_full", "lfjax_dense", "lfjax_chunked", "hf_longformer",
         "hf_roberta")
LABELS = {
    "jax_full": "full: jax.nn.dot_product_attention",
    "lfjax_dense": "lfjax dense (oracle)",
    "lfjax_chunked": "lfjax chunked",
    "hf_longformer": "HF Longformer (torch, sliding chunks)",
    "hf_roberta": "HF RoBERTa (torch, full, eager)",
}
MiB = 2.0 ** 20


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="smoke run: lengths 512-2048, 1 repeat, 4 heads of 64")
  p.add_argument("--impls", default=",".join(IMPLS),
                 help="comma-separated subset of " + ", ".join(IMPLS))
  p.add_argument("--min_seq", type=int, default=512,
                 help="shortest sequence length; lengths double from it")
  p.add_argument("--max_seq", type=int, default=65536,
                 help="longest sequence length (--quick caps it at 2048)")
  p.add_argument("--seqs", default=None,
                 help="comma-separated lengths (overrides min/max_seq)")
  p.add_argument("--batch", type=int, default=1,
                 help="sequences per forward + backward")
  p.add_argument("--hidden", type=int, default=768,
                 help="model width (RoBERTa-base's 768)")
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--window", type=int, default=256,
                 help="ONE-SIDED window (transformers' attention_window is "
                 "twice this: 512, longformer-base's)")
  p.add_argument("--repeats", type=int, default=3,
                 help="timed runs per configuration after one warm-up "
                 "(the median is reported)")
  p.add_argument("--time_cap_s", type=float, default=60.0,
                 help="an implementation whose warm-up forward+backward "
                 "takes longer is marked 'over cap' and not run longer")
  p.add_argument("--mem_limit_gb", type=float, default=16.0,
                 help="memory budget: configurations needing more are "
                 "marked OOM and not run")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", type=pathlib.Path, default=None,
                 help="results .md, the PNG beside it (None: "
                 "experiments/results/figure1.md, figure1_quick.md with "
                 "--quick)")
  p.add_argument("--plot_only", action="store_true",
                 help="redraw the PNG from --out's JSON block, run nothing")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.seqs_text = args.seqs
  for name in ("min_seq", "max_seq", "batch", "repeats", "hidden", "heads",
               "window"):
    if getattr(args, name) < 1:
      p.error(f"--{name}: expected a positive integer, got "
              f"{getattr(args, name)}")
  if args.min_seq > args.max_seq:
    p.error(f"--min_seq: expected at most --max_seq={args.max_seq}, got "
            f"{args.min_seq}")
  args.notes = []
  if args.quick:
    if args.max_seq > 2048 and not args.seqs:
      args.notes.append(f"--quick: lengths capped at 2048 (--max_seq "
                        f"{args.max_seq} not used)")
    args.max_seq = min(args.max_seq, 2048)
    args.repeats = 1
    args.hidden, args.heads = 256, 4
  name = "figure1_quick.md" if args.quick else "figure1.md"
  args.out = commands.out_arg(p, "--out", args.out,
                             ROOT / "experiments" / "results" / name)
  impls = [i for i in args.impls.split(",") if i]
  bad = [i for i in impls if i not in IMPLS]
  if bad:
    p.error(f"--impls: expected names from {', '.join(IMPLS)}, got {bad}")
  args.impls = impls
  if args.seqs:
    try:
      args.seqs = [int(s) for s in args.seqs.split(",") if s.strip()]
    except ValueError:
      args.seqs = []
    if not args.seqs or min(args.seqs) < 1:
      p.error(f"--seqs: expected comma-separated positive integers, got "
              f"{args.seqs_text!r}")
  else:
    args.seqs, n = [], args.min_seq
    while n <= args.max_seq:
      args.seqs.append(n)
      n *= 2
  if args.hidden % args.heads:
    p.error(f"--hidden: expected a multiple of --heads={args.heads}, got "
            f"{args.hidden}")
  return args


# The child: one implementation at one length --------------------------------


def _status_kb(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  return 0


def _reset_peak_rss():
  """Returns freed heap pages to the OS (glibc's malloc_trim: memory the
  set-up and compiling freed would otherwise be reused without raising
  RSS), then resets VmHWM to the current RSS (Linux >= 4.0). False when
  the reset is refused."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _timed(run, repeats, cap):
  """(median seconds, warm-up seconds) or (None, warm-up) over the cap."""
  t0 = time.perf_counter()
  run()
  warm = time.perf_counter() - t0
  if warm > cap:
    return None, warm
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), warm


def child_jax(c):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from lfjax import viz
  from lfjax.attention import windowed_attention

  b, n, e, h = c["batch"], c["seq"], c["hidden"], c["heads"]
  rng = np.random.default_rng(c["seed"])
  arr = lambda *s: jnp.asarray(rng.standard_normal(s) * 0.02, jnp.float32)
  params = {"w": arr(3, e, e), "b": arr(3, e)}
  x, g = arr(b, n, e) * 50, arr(b, n, e) * 50

  def layer(params, x):
    qkv = jnp.einsum("bne,kef->kbnf", x, params["w"]) + params["b"][:, None,
                                                                     None]
    q, k, v = (t.reshape(b, n, h, e // h) for t in qkv)
    if c["impl"] == "jax_full":
      out = jax.nn.dot_product_attention(q, k, v)
    else:
      out = windowed_attention(q, k, v, window=c["window"],
                               impl=c["impl"].split("_")[1])
    return out.reshape(b, n, e)

  grad = jax.grad(lambda p, x: jnp.sum(layer(p, x) * g), argnums=(0, 1))
  compiled_bytes = viz.compiled_peak_bytes(grad, params, x)
  res = {"compiled_mb": None if compiled_bytes is None
         else compiled_bytes / MiB}
  if compiled_bytes is not None and compiled_bytes > c["mem_limit"]:
    return dict(res, status="OOM",
                note=f"compiled peak {compiled_bytes / 2**30:.1f} GiB > "
                f"budget")
  fn = jax.jit(grad)
  jax.block_until_ready(fn(params, x))  # compile outside the measurement
  ok = _reset_peak_rss()
  rss0 = _status_kb("VmRSS")
  sec, warm = _timed(lambda: jax.block_until_ready(fn(params, x)),
                     c["repeats"], c["time_cap"])
  res["rss_mb"] = ((_status_kb("VmHWM") - rss0) / 1024) if ok else None
  if sec is None:
    return dict(res, status="over cap", note=f"warm-up {warm:.0f} s")
  return dict(res, status="ok", ms=sec * 1e3)


def torch_estimate(c):
  """Bytes a PyTorch configuration needs, roughly (for the OOM skip):
  RoBERTa's eager attention keeps about four [B, H, N, N] float32 tensors
  alive at its peak (scores, probabilities, their gradients); both keep
  about 12 [B, N, E] activations and gradients."""
  b, n, e, h = c["batch"], c["seq"], c["hidden"], c["heads"]
  linear = 12 * b * n * e * 4
  if c["impl"] == "hf_roberta":
    return linear + 4 * b * h * n * n * 4
  # Sliding chunks: N/w - 1 chunks of 2w x 2w scores, a few copies.
  w = c["window"]
  return linear + 4 * b * h * max(n // w - 1, 1) * (2 * w) ** 2 * 4


def child_torch(c):
  import torch
  import transformers
  from transformers.models.longformer import modeling_longformer as ml
  from transformers.models.roberta import modeling_roberta as mr

  b, n, e, h = c["batch"], c["seq"], c["hidden"], c["heads"]
  est = torch_estimate(c)
  if est > c["mem_limit"]:
    return {"status": "OOM", "note": f"estimated {est / 2**30:.1f} GiB > "
            "budget, not run"}
  torch.manual_seed(c["seed"])
  if c["impl"] == "hf_longformer":
    cfg = transformers.LongformerConfig(
        hidden_size=e, num_attention_heads=h,
        attention_window=[2 * c["window"]], num_hidden_layers=1,
        attention_probs_dropout_prob=0.0)
    module = ml.LongformerSelfAttention(cfg, layer_id=0).eval()
    zeros = torch.zeros(b, n, dtype=torch.bool)

    def forward(x):
      return module(x, attention_mask=torch.zeros(b, n),
                    is_index_masked=zeros, is_index_global_attn=zeros,
                    is_global_attn=False)[0]
  else:
    cfg = transformers.RobertaConfig(hidden_size=e, num_attention_heads=h,
                                     attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"  # the classic materialised softmax
    module = mr.RobertaSelfAttention(cfg).eval()

    def forward(x):
      return module(x)[0]

  x = torch.randn(b, n, e, requires_grad=True)
  g = torch.randn(b, n, e)

  def run():
    module.zero_grad(set_to_none=True)
    x.grad = None
    forward(x).backward(g)

  limit = int(_status_kb("VmData") * 1024 + c["mem_limit"])
  resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
  ok = _reset_peak_rss()
  rss0 = _status_kb("VmRSS")
  try:
    sec, warm = _timed(run, c["repeats"], c["time_cap"])
  except RuntimeError as e:  # an allocation refused under the budget
    if "alloc" not in str(e).lower() and "memory" not in str(e).lower():
      raise
    return {"status": "OOM", "note": "allocation failed under the budget "
            f"(estimate was {est / 2**30:.1f} GiB)"}
  res = {"rss_mb": ((_status_kb("VmHWM") - rss0) / 1024) if ok else None}
  if sec is None:
    return dict(res, status="over cap", note=f"warm-up {warm:.0f} s")
  return dict(res, status="ok", ms=sec * 1e3)


def run_child(spec):
  c = json.loads(spec)
  try:
    out = (child_torch(c) if c["impl"].startswith("hf_") else child_jax(c))
  except ImportError as e:
    out = {"status": "skipped", "note": f"not installed: {e.name}"}
  print("RESULT " + json.dumps(out), flush=True)


# The parent: every length of every implementation, a table and a PNG --------


def measure(args, impl, seq):
  c = dict(impl=impl, seq=seq, batch=args.batch, hidden=args.hidden,
           heads=args.heads, window=args.window, repeats=args.repeats,
           time_cap=args.time_cap_s, mem_limit=args.mem_limit_gb * 2**30,
           seed=args.seed)
  # Generous: compiling, importing and the warm-up plus repeats at the cap.
  timeout = 300 + args.time_cap_s * (args.repeats + 1)
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS",
                                                      "cpu"))
  # PyTorch's OpenMP workers spin while they wait by default; on a machine
  # with other jobs that made its layers ~10x slower here (0.7 s vs 0.07 s
  # for RoBERTa's at 512 tokens).
  env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  try:
    child = [sys.executable, __file__, "--child", json.dumps(c)]
    p = subprocess.run(commands.die_with_parent(child), capture_output=True,
                       text=True, timeout=timeout, env=env, cwd=ROOT)
  except subprocess.TimeoutExpired:
    return {"status": "over cap", "note": f"killed after {timeout:.0f} s"}
  for line in p.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1][:160]
  if p.returncode < 0:  # killed by a signal: the kernel's OOM killer
    return {"status": "OOM", "note": f"killed by signal {-p.returncode}"}
  return {"status": "error", "note": tail}


def versions():
  out = [f"Python {platform.python_version()}"]
  for mod in ("jax", "jaxlib", "torch", "transformers", "numpy"):
    try:
      out.append(f"{mod} {__import__(mod).__version__}")
    except ImportError:
      out.append(f"{mod} not installed")
  return ", ".join(out)


def machine():
  return results_text.machine()


def fmt(v, digits=0):
  return "" if v is None else f"{v:,.{digits}f}"


def table(rows):
  lines = ["| seq | implementation | fwd+bwd ms | compiled peak MiB | peak RSS "
           "MiB | status |", "|---|---|---|---|---|---|"]
  for r in rows:
    status = r["status"] + (f" ({r['note']})" if r.get("note") else "")
    lines.append(f"| {r['seq']} | {LABELS[r['impl']]} | {fmt(r.get('ms'))} "
                 f"| {fmt(r.get('compiled_mb'))} | {fmt(r.get('rss_mb'))} | "
                 f"{status} |")
  return "\n".join(lines)


def ratios(rows):
  """Sentences comparing lfjax chunked with the others where both ran."""
  by = {(r["impl"], r["seq"]): r for r in rows}
  out = []
  for other in ("jax_full", "hf_longformer", "hf_roberta", "lfjax_dense"):
    common = sorted(s for (i, s), r in by.items() if i == other
                    and r["status"] == "ok" and by.get(
                        ("lfjax_chunked", s), {}).get("status") == "ok")
    if common:
      s = common[-1]
      a, o = by[("lfjax_chunked", s)], by[(other, s)]
      text = (f"At {s:,} tokens lfjax chunked takes {a['ms'] / o['ms']:.2f}x "
              f"the time of {LABELS[other]}")
      if a.get("rss_mb") and o.get("rss_mb"):
        text += f" and {a['rss_mb'] / o['rss_mb']:.2f}x its peak RSS"
      out.append(text + ".")
  for impl in IMPLS:
    stop = [r for r in rows if r["impl"] == impl and r["status"] != "ok"]
    done = [r["seq"] for r in rows if r["impl"] == impl
            and r["status"] == "ok"]
    if stop and stop[0]["status"] != "skipped":
      out.append(f"{LABELS[impl]}: longest length run {max(done, default=0):,}; "
                 f"{stop[0]['seq']:,} is {stop[0]['status']}.")
  return out


def draw(rows, path, title):
  """Two panels like the paper's Figure 1 (log axes): time, and memory
  (peak RSS as markers and lines; XLA's compiled peak dotted). Where an
  implementation stopped, its last point says why (OOM / over cap)."""
  from lfjax import plot
  fig = plot.new_figure(figsize=(12, 5.2))
  ax_t, ax_m = fig.subplots(1, 2)
  for k, impl in enumerate(IMPLS):
    color = f"C{k}"
    ok = [r for r in rows if r["impl"] == impl and r["status"] == "ok"]
    if not ok:
      continue
    seqs = [r["seq"] for r in ok]
    style = "--" if impl.startswith("hf_") else "-"
    ax_t.plot(seqs, [r["ms"] for r in ok], style + "o", color=color,
              label=LABELS[impl], ms=4)
    rss = [(r["seq"], r["rss_mb"]) for r in ok if r.get("rss_mb")]
    if rss:
      ax_m.plot(*zip(*rss), style + "o", color=color, ms=4)
    comp = [(r["seq"], r["compiled_mb"]) for r in rows if r["impl"] == impl
            and r.get("compiled_mb")]
    if comp:
      ax_m.plot(*zip(*comp), ":", color=color, lw=1.2)
    stop = next((r for r in rows if r["impl"] == impl
                 and r["status"] in ("OOM", "over cap")), None)
    if stop:
      for ax, y in ((ax_t, ok[-1]["ms"]), (ax_m, ok[-1].get("rss_mb"))):
        if y:
          ax.annotate(f"{stop['status']} at {stop['seq']:,}", (seqs[-1], y),
                      textcoords="offset points", xytext=(4, 4),
                      color=color, fontsize=7)
  for ax, name, unit in (
      (ax_t, "forward + backward time", "ms (median)"),
      (ax_m, "memory: peak RSS rise (markers); XLA compiled peak (dotted)",
       "MiB")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plot.style(ax, name, "sequence length", unit)
  fig.legend(*ax_t.get_legend_handles_labels(), loc="lower center", ncol=3,
             fontsize=8, frameon=False)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.1, 1, 1))
  fig.savefig(path, dpi=110)


def main(argv=None):
  args = parse_args(argv)
  if args.child:
    run_child(args.child)
    return
  png = args.out.with_suffix(".png")
  if args.plot_only:
    try:
      text = args.out.read_text()
      block = text.split("```json\n", 1)[1].split("\n```", 1)[0]
      rows = json.loads(block)
      setup = json.loads(text.split("<!-- setup ", 1)[1].split(" -->", 1)[0])
    except OSError as e:
      raise SystemExit(f"error: --out: --plot_only redraws from an existing "
                       f"results file, got {args.out} ({e.strerror})")
    except (IndexError, ValueError):
      raise SystemExit(f"error: --out: expected a results file this script "
                       f"wrote (its setup comment and JSON rows), got "
                       f"{args.out}")
    draw(rows, png, _title(setup))
    print(f"wrote {png}")
    return
  cmd = commands.command_line(__file__,
                              sys.argv[1:] if argv is None else argv)
  setup = dict(batch=args.batch, hidden=args.hidden, heads=args.heads,
               window=args.window)
  for note in args.notes:
    print(f"# {note}", flush=True)
  print(f"# {versions()}\n# {machine()}\n# batch {args.batch}, hidden "
        f"{args.hidden}, {args.heads} heads, window {args.window} "
        f"(one-sided), float32; budget {args.mem_limit_gb} GiB, cap "
        f"{args.time_cap_s} s", flush=True)
  t0 = time.time()
  args.load = os.getloadavg()[0]
  rows, stopped = [], {}
  for seq in args.seqs:
    for impl in args.impls:  # interleaved: machine noise hits all alike
      if impl in stopped:
        r = {"status": stopped[impl], "note": "a shorter length was"}
      else:
        r = measure(args, impl, seq)
        if r["status"] in ("OOM", "over cap", "skipped"):
          stopped[impl] = r["status"]
      r = dict(r, impl=impl, seq=seq)
      rows.append(r)
      print(table([r]).splitlines()[-1], flush=True)
  elapsed = time.time() - t0
  notes = ratios(rows)
  print("\n".join(notes))
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(report(args, cmd, rows, notes, elapsed, setup))
  draw(rows, png, _title(setup))
  print(f"wrote {args.out} and {png} ({elapsed / 60:.1f} min)")


def _title(s):
  return (f"one self-attention layer, batch {s['batch']}, hidden "
          f"{s['hidden']}, {s['heads']} heads, window {s['window']} each "
          "side, float32, CPU")


QUICK_NOTE = """
**This is the `--quick` smoke run** (hidden 256, 4 heads, lengths up to
2,048, one timed run each): it shows the script works and the trends; the
full run (`python experiments/figure1_memory_time.py`: hidden 768, 12
heads, up to 65,536 tokens or OOM) replaces it.
"""


def report(args, cmd, rows, notes, elapsed, setup):
  return f"""# Figure 1 at CPU scale: time and memory of one self-attention layer

Command: `{cmd}` ({elapsed / 60:.1f} min, {datetime.date.today()})

Versions: {versions()}.
Machine: {machine()}; load average {args.load:.1f} at the start (other
jobs share it, so times are noisy; each length runs the implementations one
after another so the noise hits them alike).
{QUICK_NOTE if args.quick else ""}
Setup: {_title(setup)}. One layer is transformers' *SelfAttention
module: query, key and value projections of [batch, seq, {args.hidden}]
hidden states and the attention (no output projection, no dropout), timed
for loss = sum(layer(x) * g) and the gradients of x and the projections;
median of {args.repeats} after a warm-up. Budget {args.mem_limit_gb} GiB
(OOM = over it, not the machine's own limit), time cap {args.time_cap_s} s
per forward + backward.

Memory columns: "compiled peak" is XLA's buffer assignment of the compiled
gradient function (arguments + outputs + temporaries - donated); "peak RSS"
is the measured rise of the process's resident-set high-water mark during
the warm-up and timed runs (after set-up and compiling), for every
implementation; the PNG plots peak RSS (solid or dashed) and, dotted, the
compiled peak.

{table(rows)}

{chr(10).join('- ' + n for n in notes)}

![Figure 1]({args.out.with_suffix(".png").name})

Deviations from the paper (its Figure 1 gives no setup: GPU, batch,
hidden size and window are not stated; see ../shared/research/paper.md §4):
- CPU, float32, not a GPU; the paper's OOM is a GPU's memory, ours the
  --mem_limit_gb budget above.
- The paper's three Longformer implementations were loop (PyTorch,
  non-vectorised), chunks (vectorised PyTorch) and a TVM CUDA kernel. Here:
  transformers' sliding-chunks LongformerSelfAttention (the paper's
  "chunks"), lfjax's chunked JAX implementation and its dense oracle; no
  loop version. The Pallas kernel's curve needs a GPU
  (experiments/kernel_benchmark_gpu.py).
- Full attention is both XLA's (jax.nn.dot_product_attention, default
  implementation on CPU) and PyTorch's eager RoBERTa attention (the
  materialised softmax the paper compared against; PyTorch's SDPA
  kernels were not used).
- Memory is measured two ways (above), neither is a GPU allocator's peak.
- Batch 1, no padding, no global tokens, no dilation.

<!-- setup {json.dumps(setup)} -->
Raw rows (the PNG is redrawn from them with --plot_only):

```json
{json.dumps(rows, indent=0)}
```
"""


if __name__ == "__main__":
  main()
