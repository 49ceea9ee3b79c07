"""One-shot GPU validation of the Pallas band kernel: checks, then timings.

Compiled correctness checks, then a timing table; under 8 minutes on one
H100 or H200.

On a machine with one NVIDIA GPU (CUDA 12, Python 3.12), from the
repository root:

  pip install -e ".[gpu]"      # jax[cuda12] and jax-triton (pyproject)
  python experiments/gpu_validate.py

then commit experiments/results/kernel_gpu.md, the file it writes (and
paste its printed table into the pull request). `--smoke --out FILE` runs
the same steps at tiny shapes on any host (CPU: Pallas interpret mode, a
minute at most); a smoke run never writes the real results file.

1. Checks, with the kernels compiled (the script fails a check if the
   lowered forward holds no Triton/Mosaic kernel): windowed_attention(
   impl="pallas") against windowed_attention(impl="dense") (the O(N^2)
   masked oracle, run in float32 at matmul precision "highest") on the same
   inputs, outputs and gradients of every differentiable input under a
   random cotangent: padding, global tokens with separate projections,
   per-head dilation, causal, relative-position terms, bfloat16 and
   float32, dropout, and the kernel's own (out, lse) against band_reference. Each
   row: max abs error, max |reference|, tolerance (a fraction of max
   |reference|: float32 1e-2 (the kernel's float32 dots run as TF32 on
   GPUs; 2e-5 outputs and 1e-4 gradients on CPU, where they are exact),
   bfloat16 3e-2 outputs and 6e-2 gradients), pass or FAIL.
2. Timings at axlearn's published shapes (B1 H4 D128 bfloat16, causal
   window 1K and 4K at 8K and 32K tokens) and the MLM micro-batch
   (configs/mlm_longformer_base.py: 8 x 4,096 tokens, 12 heads of 64,
   one-sided window 256, one global token (model.global_bos), bfloat16),
   forward and forward+backward (gradients of q, k, v), for impl="pallas",
   impl="chunked" (the XLA path), and jax.nn.dot_product_attention (cuDNN on
   a GPU, XLA elsewhere) over full attention (causal where the shape is) and
   over its own sliding window (local_window_size; no global tokens).
   Milliseconds are medians of --repeats runs after a warm-up call, each
   ended by jax.block_until_ready.

Useful FLOPs: 4 * B * H * N * keys_per_row * D forward (two matmuls of
2 FLOPs per multiply-add), keys_per_row the average number of keys a query
row really attends (its valid band keys; plus the global keys outside its
band; a global row attends all N). Forward+backward counts 3.5x that (the
backward's five matmuls are 2.5x the forward's two): the count of
FlashAttention's papers and of axlearn's published figures, so the targets
compare. Full attention counts its own useful keys the same way ((N + 1) / 2
per row causal, N otherwise); "band TFLOP/s" divides the band's useful
FLOPs by each implementation's time (what it delivers for the windowed
task). --budget_s bounds the whole run: a timing whose estimate (from the
same implementation's previous compile and run times) would pass it is
skipped with a note, as is one whose memory estimate exceeds 70% of the
device's.
"""

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import pathlib
import platform
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # validate this checkout's lfjax

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import commands  # noqa: E402
from lfjax.attention import windowed_attention  # noqa: E402
from lfjax.kernels import band_attention  # noqa: E402
from lfjax.kernels import lowering  # noqa: E402

RESULTS = REPO / "experiments" / "results" / "kernel_gpu.md"
FWD_BWD_FACTOR = 3.5
# axlearn's gpu_attention_benchmark.py docstring: H100 SXM5, float16, B1 H4
# D128, causal sliding window (shared/research/anchors.md). (N, w, pass): ms.
AXLEARN_MS = {(8192, 1024, "fwd"): 0.080, (32768, 1024, "fwd"): 0.286,
              (32768, 4096, "fwd"): 0.917, (32768, 1024, "fwd+bwd"): 1.15,
              (32768, 4096, "fwd+bwd"): 3.66}
# Issue 25's targets at N 32K, w 1K, band TFLOP/s of impl="pallas".
TARGETS = {"fwd": 300.0, "fwd+bwd": 250.0}


# Part 1: checks -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Check:
  """One correctness case of windowed_attention(impl="pallas")."""
  name: str
  dtype: str
  b: int
  n: int
  h: int
  d: int
  window: int
  causal: bool = False
  dilation: tuple = (1,)
  pad_to: int = 0  # >0: batch row 1's keys past this are padding
  n_global: int = 0  # global tokens per row (random positions)
  separate_global: bool = False  # global_qkv of their own
  rel_dr: int = 0  # >0: a relative term of this width
  dropout: float = 0.0


def checks(smoke):
  """The cases, GPU-sized or (smoke) tiny."""
  if smoke:
    # Fewer cases than on a GPU (interpret mode is slow), every feature.
    n, w, d = 41, 6, 16
    return [
        Check("globals+padding", "float32", 2, n, 2, d, w, pad_to=23,
              n_global=3, separate_global=True),
        Check("dilation+globals", "bfloat16", 1, n, 2, d, 3,
              dilation=(1, 3), n_global=2),
        Check("causal rel", "float32", 1, n, 2, d, w, causal=True,
              dilation=(1, 2), rel_dr=8),
        Check("rel+padding", "bfloat16", 2, n, 2, 32, w, rel_dr=8,
              pad_to=30),
        Check("dropout", "float32", 2, n, 2, d, w, pad_to=29, dropout=0.1),
    ]
  return [
      Check("padding", "float32", 2, 1000, 4, 64, 100, pad_to=613),
      Check("globals+padding", "bfloat16", 2, 777, 4, 64, 64, pad_to=500,
            n_global=5, separate_global=True),
      Check("dilation+globals", "float32", 1, 900, 4, 64, 32,
            dilation=(1, 2, 3, 5), n_global=4),
      Check("causal d128", "bfloat16", 1, 2047, 2, 128, 256, causal=True),
      Check("causal d128", "float32", 1, 1500, 2, 128, 200, causal=True),
      Check("causal rel", "float32", 1, 600, 2, 64, 64, causal=True,
            dilation=(1, 2), rel_dr=32),
      Check("rel+padding", "bfloat16", 2, 700, 2, 64, 48, rel_dr=32,
            pad_to=400),
      Check("dropout", "float32", 2, 640, 4, 64, 64, pad_to=333, dropout=0.1),
  ]


TOL = {"float32": (1e-2, 1e-2), "bfloat16": (3e-2, 6e-2)}  # out, grads
# On CPU (--smoke: Pallas interpret mode) float32 dots are exact float32,
# not TF32, so a float32 error there is held to float32 rounding.
TOL_CPU_FLOAT32 = (2e-5, 1e-4)


def _inputs(c, seed=0):
  """(differentiable arrays by name, static keyword arguments): the case's
  random inputs, rounded to its dtype."""
  rng = np.random.default_rng(seed)
  dt = jnp.dtype(c.dtype)
  arr = lambda *shape: jnp.asarray(rng.standard_normal(shape), dt)
  x = {name: arr(c.b, c.n, c.h, c.d) for name in ("q", "k", "v")}
  kw = dict(window=c.window, causal=c.causal, dilation=c.dilation
            if len(c.dilation) > 1 else c.dilation[0])
  if c.pad_to:
    mask = np.ones((c.b, c.n), bool)
    mask[1, c.pad_to:] = False
    kw["key_mask"] = jnp.asarray(mask)
  if c.n_global:
    gm = np.zeros((c.b, c.n), bool)
    for row in range(c.b):
      gm[row, rng.choice(c.n if not c.pad_to else c.pad_to, c.n_global,
                         replace=False)] = True
    kw["global_mask"] = jnp.asarray(gm)
    if c.separate_global:
      x.update({f"g{name}": arr(c.b, c.n, c.h, c.d) for name in "qkv"})
  if c.rel_dr:
    reach = min(c.window * max(c.dilation), c.n - 1)
    x["rel_query"] = arr(c.b, c.n, c.h, c.rel_dr)
    x["rel_table"] = arr(reach + 1 if c.causal else 2 * reach + 1, c.h,
                         c.rel_dr)
  if c.dropout:
    kw.update(dropout_rate=c.dropout, dropout_key=jax.random.key(seed))
  x["cotangent"] = arr(c.b, c.n, c.h, c.d)
  return x, kw


def _attend(impl, x, kw):
  extra = {}
  if "gq" in x:
    extra["global_qkv"] = (x["gq"], x["gk"], x["gv"])
  if "rel_query" in x:
    extra.update(rel_query=x["rel_query"], rel_table=x["rel_table"])
  return windowed_attention(x["q"], x["k"], x["v"], impl=impl, **kw,
                            **extra)


def _out_and_grads(impl, x, kw):
  """(out float32, {name: gradient}) of sum(out * cotangent)."""
  diff = {k: v for k, v in x.items() if k != "cotangent"}

  def loss(d):
    out = _attend(impl, dict(d, cotangent=None), kw).astype(jnp.float32)
    return jnp.sum(out * x["cotangent"].astype(jnp.float32)), out

  grads, out = jax.jit(jax.grad(loss, has_aux=True))(diff)
  return out, grads


def _row(case, dtype, what, got, ref, tol_frac):
  err = float(jnp.max(jnp.abs(jnp.asarray(got, jnp.float32) - ref)))
  scale = float(jnp.max(jnp.abs(ref)))
  tol = tol_frac * max(scale, 1e-6)
  ok = np.isfinite(err) and err <= tol
  return dict(case=case, dtype=dtype, what=what, err=err, ref=scale, tol=tol,
              result="pass" if ok else "FAIL")


def run_check(c):
  """Rows comparing impl="pallas" with the float32 dense oracle."""
  x, kw = _inputs(c)
  if c.dropout:
    try:
      jax.eval_shape(functools.partial(_attend, "pallas", kw=kw), x)
    except ValueError as e:
      return [dict(case=c.name, dtype=c.dtype, what="-", err=None, ref=None,
                   tol=None, result=f"skipped: {e}")]
  out, grads = _out_and_grads("pallas", x, kw)
  x32 = {k: v.astype(jnp.float32) for k, v in x.items()}
  with jax.default_matmul_precision("highest"):
    ref_out, ref_grads = _out_and_grads("dense", x32, kw)
  tol_out, tol_grad = TOL[c.dtype]
  if c.dtype == "float32" and jax.default_backend() == "cpu":
    tol_out, tol_grad = TOL_CPU_FLOAT32
  rows = [_row(c.name, c.dtype, "out", out, ref_out, tol_out)]
  rows += [_row(c.name, c.dtype, f"d{k}", grads[k], ref_grads[k], tol_grad)
           for k in sorted(grads)]
  return rows


def kernel_lse_rows(smoke):
  """band_attention's (out, lse) and gradients with cotangents on both,
  against band_reference (the kernel's own contract; lse is what the global
  merge and the sequence-parallel path differentiate through)."""
  x_, n, d, w = (3, 45, 16, 7) if smoke else (3, 333, 64, 40)
  rng = np.random.default_rng(1)
  q, k, v, dout = (jnp.asarray(rng.standard_normal((x_, n, d)), jnp.float32)
                   for _ in range(4))
  dlse = jnp.asarray(rng.standard_normal((x_, n)), jnp.float32)
  kvalid = jnp.asarray(np.arange(n)[None, :] < np.array([[n], [n - 20],
                                                         [0]]))
  kw = dict(window=w, causal=False, scale=d ** -0.5)

  def run(fn):
    def loss(q, k, v):
      out, lse = fn(q, k, v, kvalid, **kw)
      # Rows without keys have lse NEG_INF in both: leave them out of the
      # lse cotangent so the loss stays finite.
      return jnp.sum(out * dout) + jnp.sum(jnp.where(
          lse > 0.5 * band_attention.NEG_INF, lse, 0.0) * dlse), (out, lse)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)

  grads, (out, lse) = run(band_attention.band_attention)
  with jax.default_matmul_precision("highest"):
    ref_grads, (ref_out, ref_lse) = run(band_attention.band_reference)
  name = "kernel out+lse"
  # Rows without keys: lse NEG_INF in both (any other value is an error of
  # inf); compared as 0 so the tolerance scales with the real rows.
  empty = ref_lse < 0.5 * band_attention.NEG_INF
  lse = jnp.where(empty, jnp.where(lse < 0.5 * band_attention.NEG_INF, 0.0,
                                   jnp.inf), lse)
  rows = [_row(name, "float32", "out", out, ref_out, 1e-2),
          _row(name, "float32", "lse", lse, jnp.where(empty, 0.0, ref_lse),
               1e-2)]
  return rows + [_row(name, "float32", g, a, b, 1e-2) for g, a, b in
                 zip(("dq", "dk", "dv"), grads, ref_grads)]


def gpu_kernel_calls(module_text):
  """Custom calls of compiled Pallas GPU kernels (Triton, or Mosaic GPU) in
  a lowered module's text."""
  return sum(1 for line in module_text.splitlines() if "custom_call" in line
             and (lowering.TRITON_TARGET in line or "mosaic_gpu" in line))


def kernel_mode():
  """(description, ok): whether impl="pallas" lowers to compiled GPU
  kernels here, not to interpret mode."""
  if jax.default_backend() == "cpu":
    return "Pallas interpret mode (CPU)", True
  q = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)
  calls = gpu_kernel_calls(jax.jit(functools.partial(
      windowed_attention, window=32, impl="pallas")).lower(q, q, q).as_text())
  return (f"compiled, {calls} GPU kernel call(s) in the lowered forward",
          calls > 0)


# Part 2: timings -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Shape:
  name: str
  b: int
  h: int
  n: int
  d: int
  window: int
  causal: bool
  n_global: int = 0


def shapes(smoke):
  if smoke:
    return [Shape("axlearn-like", 1, 2, 128, 32, 16, True),
            Shape("MLM-like", 2, 2, 128, 16, 16, False, 1)]
  return [Shape(f"axlearn N{n // 1024}K w{w // 1024}K", 1, 4, n, 128, w,
                True) for n in (8192, 32768) for w in (1024, 4096)] + [
                    Shape("MLM micro-batch", 8, 12, 4096, 64, 256, False, 1)]


def keys_per_row(n, window, causal, n_global):
  """Average keys a row attends: its band's (clipped at the ends), the
  global keys (positions 0..G-1) outside it; a global row attends all."""
  i = np.arange(n)
  lo = np.maximum(i - window, 0)
  hi = i if causal else np.minimum(i + window, n - 1)
  keys = hi - lo + 1 + np.minimum(n_global, lo)
  keys = np.where(i < n_global, n, keys)
  return float(keys.mean())


def _mem_limit():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


IMPLS = ("pallas", "chunked", "full", "window")


def _attention_fn(s, impl):
  """(fn(q, k, v), label, keys_per_row, rough bytes of its fwd+bwd)."""
  gpu = jax.default_backend() == "gpu"
  flash = "cudnn" if gpu else "xla"
  gm = None
  if s.n_global:
    gm = jnp.zeros((s.b, s.n), bool).at[:, :s.n_global].set(True)
  io = 12 * s.b * s.n * s.h * s.d * 4
  if impl in ("pallas", "chunked"):
    fn = functools.partial(windowed_attention, window=s.window,
                           causal=s.causal, global_mask=gm,
                           max_global=s.n_global or None, impl=impl)
    kpr = keys_per_row(s.n, s.window, s.causal, s.n_global)
    extra = 3 * s.b * s.h * s.n * (2 * s.window + 1) * 4 if impl == (
        "chunked") else 0
    return fn, f'impl="{impl}"', kpr, io + extra
  if impl == "full":
    fn = functools.partial(jax.nn.dot_product_attention, is_causal=s.causal,
                           implementation=flash)
    scores = 0 if gpu else 3 * s.b * s.h * s.n * s.n * 4
    return (fn, f"dot_product_attention {flash}, full"
            f"{' causal' if s.causal else ''}",
            keys_per_row(s.n, s.n, s.causal, 0), io + scores)
  fn = functools.partial(jax.nn.dot_product_attention, is_causal=s.causal,
                         local_window_size=(s.window,
                                            0 if s.causal else s.window),
                         implementation=flash)
  scores = 0 if gpu else 3 * s.b * s.h * s.n * s.n * 4
  label = f"dot_product_attention {flash}, window"
  if s.n_global:
    label += " (no global)"
  return fn, label, keys_per_row(s.n, s.window, s.causal, 0), io + scores


def _fwd_bwd(fn):
  def f(q, k, v):
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32)),
                    argnums=(0, 1, 2))(q, k, v)
  return f


def _bench(fn, args, repeats):
  """(median seconds of `repeats` calls, seconds of the first call, which
  compiles)."""
  fn = jax.jit(fn)
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times), first


class Budget:
  """Wall-clock budget for the run: estimates a timing from the same
  implementation's last compile and run (run time scaled by FLOPs)."""

  def __init__(self, seconds):
    self.seconds, self.start, self.last = seconds, time.monotonic(), {}

  def elapsed(self):
    return time.monotonic() - self.start

  def estimate(self, key, flops, repeats):
    if key not in self.last:
      return 0.0
    first, run, prev_flops = self.last[key]
    per_run = run * flops / prev_flops
    return first + per_run * (repeats + 1)

  def record(self, key, first, run, flops):
    self.last[key] = (first, run, flops)


def time_shapes(args, budget, log):
  """Rows of the timing table, and notes for what was skipped."""
  rows, notes = [], []
  limit = _mem_limit()
  rng = np.random.default_rng(0)
  for s in shapes(args.smoke):
    q, k, v = (jnp.asarray(rng.standard_normal((s.b, s.n, s.h, s.d)),
                           jnp.bfloat16) for _ in range(3))
    for impl in IMPLS:
      fn, label, kpr, mem = _attention_fn(s, impl)
      band_kpr = keys_per_row(s.n, s.window, s.causal, s.n_global)
      for pass_name, f, factor in (("fwd", fn, 1.0),
                                   ("fwd+bwd", _fwd_bwd(fn), FWD_BWD_FACTOR)):
        flops = 4 * s.b * s.h * s.n * kpr * s.d * factor
        band_flops = 4 * s.b * s.h * s.n * band_kpr * s.d * factor
        row = dict(shape=s.name, pass_=pass_name, label=label, ms=None,
                   tflops=None, band_tflops=None, kpr=kpr,
                   axlearn=AXLEARN_MS.get((s.n, s.window, pass_name))
                   if impl == "pallas" and not args.smoke else None,
                   note="")
        est = budget.estimate((impl, pass_name), flops, args.repeats)
        if limit and mem > 0.7 * limit:
          row["note"] = (f"skipped: needs ~{mem / 2**30:.0f} GiB of "
                         f"{limit / 2**30:.0f}")
        elif budget.elapsed() + est > budget.seconds:
          row["note"] = (f"skipped: budget ({budget.elapsed():.0f} s spent, "
                         f"~{est:.0f} s more)")
        else:
          try:
            run, first = _bench(f, (q, k, v), args.repeats)
            budget.record((impl, pass_name), first, run, flops)
            row.update(ms=run * 1e3, tflops=flops / run / 1e12,
                       band_tflops=band_flops / run / 1e12)
          except Exception as e:  # cuDNN refuses some shapes: say which
            row["note"] = f"failed: {type(e).__name__}: " + " ".join(
                str(e).split())[:160]
        if row["note"]:
          notes.append(f"{s.name} {pass_name} {label}: {row['note']}")
        log(_timing_line(row))
        rows.append(row)
  return rows, notes


# Report -----------------------------------------------------------------------

def _fmt(x, spec):
  return "-" if x is None else format(x, spec)


def _check_line(r):
  return (f"| {r['case']} | {r['dtype']} | {r['what']} | "
          f"{_fmt(r['err'], '.2e')} | {_fmt(r['ref'], '.2e')} | "
          f"{_fmt(r['tol'], '.1e')} | {r['result']} |")


def _timing_line(r):
  return (f"| {r['shape']} | {r['pass_']} | {r['label']} | "
          f"{_fmt(r['ms'], '.3f')} | {r['kpr']:.1f} | "
          f"{_fmt(r['tflops'], '.1f')} | {_fmt(r['band_tflops'], '.1f')} | "
          f"{_fmt(r['axlearn'], '.3f')} | {r['note']} |")


CHECK_HEAD = ["| case | dtype | output | max abs err | max abs ref | tol | "
              "result |", "|---|---|---|---|---|---|---|"]
TIMING_HEAD = ["| shape | pass | implementation | ms | keys/row | TFLOP/s | "
               "band TFLOP/s | axlearn ms | note |",
               "|---|---|---|---|---|---|---|---|---|"]


def setup_lines(smoke):
  """Device, versions, Pallas backend and block sizes, as markdown lines."""
  dev = jax.devices()[0]
  params = band_attention._compiler_params(band_attention.BlockSizes())
  backend = f"{type(params).__module__}.{type(params).__qualname__}"
  try:
    jt = importlib.metadata.version("jax-triton")
  except importlib.metadata.PackageNotFoundError:
    jt = "not installed"
  mode, _ = kernel_mode()
  lines = [f"Device: {dev.device_kind} ({jax.default_backend()}, "
           f"{len(jax.devices())} device(s)); jax {jax.__version__}, jaxlib "
           f"{importlib.metadata.version('jaxlib')}, jax-triton {jt}, "
           f"Python {platform.python_version()}.", "",
           f"Pallas GPU backend (band_attention._compiler_params): "
           f"`{backend}`; kernels: {mode}.", "",
           "Block sizes (BlockSizes.default(head_dim, dtype)):", ""]
  seen = set()
  for s in shapes(smoke):
    for dt in (jnp.bfloat16, jnp.float32):
      if (s.d, dt) not in seen:
        seen.add((s.d, dt))
        lines.append(f"- head_dim {s.d}, {jnp.dtype(dt).name}: "
                     f"{band_attention.BlockSizes.default(s.d, dt)}")
  lines.append(f"- with the relative term: "
               f"{band_attention.BlockSizes.relative()}")
  return lines + [""]


def report(command, setup, check_rows, timing_rows, notes, smoke, seconds):
  failed = [r for r in check_rows if r["result"] == "FAIL"]
  skipped = [r for r in check_rows if r["result"].startswith("skipped")]
  lines = ["# Pallas band kernel on a GPU: checks and timings", "",
           f"Written by `experiments/gpu_validate.py` on "
           f"{datetime.date.today().isoformat()} in {seconds:.0f} s"
           + (" (--smoke: tiny shapes; times mean nothing)" if smoke
              else "") + ".", "", f"Command: `{command}`", ""] + setup
  lines += ["## Checks: impl=\"pallas\" against the float32 dense oracle", "",
            f"{len(check_rows) - len(failed) - len(skipped)} passed, "
            f"{len(failed)} failed, {len(skipped)} skipped. Errors are of "
            "outputs and of gradients of sum(out * random cotangent); tol "
            "is a fraction of max |reference| (script docstring). The same "
            "kernels in interpret mode and lowered for CUDA without a GPU: "
            "tests/test_kernels.py.", ""]
  lines += CHECK_HEAD + [_check_line(r) for r in check_rows] + [""]
  lines += ["## Timings", "",
            "bfloat16; ms: median after a warm-up; TFLOP/s: each "
            "implementation's useful FLOPs (4 B H N keys/row D forward, "
            f"{FWD_BWD_FACTOR}x forward+backward); band TFLOP/s: the band's "
            "useful FLOPs over the same time. axlearn ms: its published "
            "sliding-window kernel, H100 SXM5, float16.", ""]
  lines += TIMING_HEAD + [_timing_line(r) for r in timing_rows] + [""]
  for pass_name, bar in TARGETS.items():
    got = [r for r in timing_rows if r["shape"] == "axlearn N32K w1K"
           and r["pass_"] == pass_name and r["label"] == 'impl="pallas"']
    if got and got[0]["band_tflops"] is not None:
      lines.append(f"- Target {pass_name} at N 32K, w 1K: >= {bar:.0f} band "
                   f"TFLOP/s; measured {got[0]['band_tflops']:.1f} "
                   f"({'met' if got[0]['band_tflops'] >= bar else 'not met'}"
                   ").")
  if notes:
    lines += ["", "Skipped or failed timings:", ""] + [f"- {n}" for n in
                                                      notes]
  return "\n".join(lines).rstrip() + "\n"


# Main -------------------------------------------------------------------------

def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--smoke", action="store_true",
                 help="tiny shapes, any host (CPU: interpret mode); needs "
                 "--out")
  p.add_argument("--out", default=None, help="results .md (default "
                 "experiments/results/kernel_gpu.md; required with --smoke)")
  p.add_argument("--repeats", type=int, default=None,
                 help="timed runs per case after the warm-up (default 10; "
                 "--smoke 1)")
  p.add_argument("--budget_s", type=float, default=None,
                 help="wall-clock budget; timings that would pass it are "
                 "skipped (default 420; --smoke 120)")
  a = p.parse_args(argv)
  if a.repeats is None:
    a.repeats = 1 if a.smoke else 10
  if a.budget_s is None:
    a.budget_s = 120.0 if a.smoke else 420.0
  if a.repeats < 1:
    p.error(f"--repeats: expected an integer >= 1, got {a.repeats}")
  if a.budget_s <= 0:
    p.error(f"--budget_s: expected seconds > 0, got {a.budget_s}")
  if a.smoke and not a.out:
    p.error("--out: --smoke needs its own results file (a smoke run never "
            f"writes {RESULTS.relative_to(REPO)})")
  a.out = commands.out_arg(p, "--out", a.out, RESULTS)
  if a.smoke and a.out.resolve() == RESULTS.resolve():
    p.error(f"--out: a smoke run never writes {RESULTS.relative_to(REPO)}; "
            "name another file")
  if not a.smoke and jax.default_backend() != "gpu":
    p.error(f"no GPU here (jax backend {jax.default_backend()!r}); "
            "--smoke --out FILE runs the script at tiny shapes on any host")
  return a


def validate(args, command, log=print):
  """Runs the checks and the timings, writes args.out; returns the number
  of failed checks."""
  budget = Budget(args.budget_s)
  setup = setup_lines(args.smoke)
  for line in setup:
    log(line)
  mode, compiled_ok = kernel_mode()
  check_rows = [] if compiled_ok else [dict(
      case="compiled kernels", dtype="-", what="-", err=None, ref=None,
      tol=None, result="FAIL")]
  log("\n".join(CHECK_HEAD))
  for c in checks(args.smoke):
    rows = run_check(c)
    for r in rows:
      log(_check_line(r))
    check_rows += rows
  rows = kernel_lse_rows(args.smoke)
  for r in rows:
    log(_check_line(r))
  check_rows += rows
  log(f"\nchecks done in {budget.elapsed():.0f} s\n")
  log("\n".join(TIMING_HEAD))
  timing_rows, notes = time_shapes(args, budget, log)
  text = report(command, setup, check_rows, timing_rows, notes, args.smoke,
                budget.elapsed())
  args.out.write_text(text)
  for line in text.splitlines():
    if line.startswith("- Target") or " passed, " in line:
      log(line.split(". Errors")[0])
  log(f"\nwrote {args.out}")
  return sum(r["result"] == "FAIL" for r in check_rows)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  failed = validate(args, commands.command_line(__file__, argv))
  if failed:
    raise SystemExit(f"error: {failed} check(s) failed; see {args.out}")


if __name__ == "__main__":
  main()
