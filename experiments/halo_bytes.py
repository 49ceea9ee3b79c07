"""Bytes one device receives per attention layer: halo exchange vs all-gather.

  python experiments/halo_bytes.py                        # the recorded table
  python experiments/halo_bytes.py --seqs 32768 --shards 8,64 --windows 256

For each sequence length N and sequence-parallel size P, lowers one
Longformer-base attention layer (batch 1, 12 heads of 64, bfloat16,
symmetric window) with lfjax.attention.sequence_parallel_attention twice:
as it is (halo exchange by collective-permute) and with its halo step
replaced by an all-gather of k, v and the key mask over the sequence axis
followed by a slice (what MaxText, AXLearn and TE-JAX do for sliding-window
context parallelism; research notes scale.md §1.1). Everything else is the
same program. The bytes are read from the collectives of the lowered
StableHLO (shapes and dtypes of their results, per device):
collective-permute: the result (one buffer received); all-gather: the result
times (P - 1) / P; all-reduce: 2 (P - 1) / P times the buffer (ring). The
same numbers from the closed-form model (halo: rows per side x sides x H x
(Dk + Dv) x 2 bytes + 1 byte per mask row; all-gather: (P - 1) / P x N x the
same row size) are printed beside them; rows whose P exceeds --max_devices
(virtual CPU devices) are analytic only, marked "model".

Lowering only (no compile, nothing runs), forward pass; the backward moves the
same bytes again (transposed permutes; a reduce-scatter of dK/dV for the
all-gather). Writes experiments/results/halo_bytes.md (and .png with
matplotlib).
"""

import argparse
import os
import pathlib
import sys
import time

MAX_DEVICES = 512
ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seqs", default="32768,65536,131072,262144,524288,1048576",
                 help="sequence lengths N, comma separated")
  p.add_argument("--shards", default="8,16,32,64,128,256,512",
                 help="sequence-parallel sizes P, comma separated")
  p.add_argument("--windows", default="256,512",
                 help="one-sided windows w (lfjax's convention: 2w + 1 keys; "
                      "Hugging Face's attention_window 512 is w = 256)")
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--max_devices", type=int, default=MAX_DEVICES,
                 help="virtual CPU devices to create; larger P is analytic")
  p.add_argument("--out", default=str(ROOT / "experiments" / "results" /
                                      "halo_bytes"),
                 help="writes OUT.md and OUT.png")
  return p.parse_args(argv)


ARGS = parse_args(sys.argv[1:])
# Before JAX initialises: the virtual devices the meshes are built from.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count="
                           f"{ARGS.max_devices}")
os.environ["JAX_NUM_CPU_DEVICES"] = str(ARGS.max_devices)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax._src.lib.mlir import ir  # noqa: E402

sys.path.insert(0, str(ROOT))
from lfjax.attention import sequence_parallel_attention  # noqa: E402
from lfjax.attention import sharded  # noqa: E402

_HALO = sharded._with_halos
_BITS = {"bf16": 16, "f16": 16, "f32": 32, "f64": 64, "i1": 8, "i8": 8,
         "i32": 32, "i64": 64, "ui32": 32}


def _with_all_gather(xs, left, right, n, axis_name, axis_size):
  """The all-gather baseline of sharded._with_halos: the whole sequence of
  each x, then this shard's [pos0 - left, pos0 + n + right) slice."""
  pos0 = jax.lax.axis_index(axis_name) * n
  out = []
  for x in xs:
    full = jax.lax.all_gather(x, axis_name, axis=1, tiled=True)
    pad = [(0, 0)] * x.ndim
    pad[1] = (left, right)
    out.append(jax.lax.dynamic_slice_in_dim(jnp.pad(full, pad), pos0,
                                            n + left + right, axis=1))
  return out


def _walk(op):
  yield op
  for region in op.regions:
    for block in region.blocks:
      for inner in block.operations:
        yield from _walk(inner.operation)


def collective_bytes(lowered, p):
  """{kind: bytes received per device} from a lowered module's collectives."""
  got = {"permute": 0.0, "all_gather": 0.0, "all_reduce": 0.0}
  module = lowered.compiler_ir("stablehlo")
  for op in _walk(module.operation):
    kind = {"stablehlo.collective_permute": "permute",
            "stablehlo.all_gather": "all_gather",
            "stablehlo.all_reduce": "all_reduce"}.get(op.name)
    if kind is None:
      continue
    for res in op.results:
      t = ir.RankedTensorType(res.type)
      size = int(np.prod(t.shape)) * _BITS[str(t.element_type)] // 8
      factor = {"permute": 1.0, "all_gather": (p - 1) / p,
                "all_reduce": 2 * (p - 1) / p}[kind]
      got[kind] += size * factor
  return got


def model_bytes(n_seq, p, window, heads, head_dim, all_gather):
  """The closed form: k + v (bf16) and a bool mask per key row."""
  row = heads * 2 * head_dim * 2 + 1
  if all_gather:
    return (p - 1) / p * n_seq * row
  halo = min(window, n_seq - 1)  # rows per side, dilation 1
  return 2 * halo * row


def _use(halo_fn):
  """Swap the halo step; the jitted layer's traces must go with it."""
  sharded._with_halos = halo_fn
  sharded._sharded.clear_cache()


def lower(n_seq, p, window, args, baseline):
  _use(_with_all_gather if baseline else _HALO)
  try:
    mesh = jax.make_mesh((p,), ("seq",), devices=jax.devices()[:p],
                         axis_types=(jax.sharding.AxisType.Auto,))
    s = jax.ShapeDtypeStruct((1, n_seq, args.heads, args.head_dim),
                             jnp.bfloat16)
    fn = jax.jit(lambda q, k, v: sequence_parallel_attention(
        q, k, v, mesh=mesh, window=window))
    return collective_bytes(fn.lower(s, s, s), p)
  finally:
    _use(_HALO)


def check_baseline():
  """The all-gather baseline computes the same attention (8 devices)."""
  mesh = jax.make_mesh((8,), ("seq",), devices=jax.devices()[:8],
                       axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 64, 2, 8)), jnp.float32)
             for _ in range(3))
  outs = []
  for patch, has, lacks in ((_HALO, "collective_permute", "all_gather"),
                            (_with_all_gather, "all_gather",
                             "collective_permute")):
    _use(patch)
    try:
      fn = lambda q, k, v: sequence_parallel_attention(
          q, k, v, mesh=mesh, window=11, dilation=[1, 2])
      # Each program really is the one named (not a cached trace).
      text = jax.jit(fn).lower(q, k, v).as_text()
      assert has in text and lacks not in text, (has, lacks)
      outs.append(fn(q, k, v))
    finally:
      _use(_HALO)
  return float(jnp.max(jnp.abs(outs[0] - outs[1])))


def main(args):
  seqs = [int(x) for x in args.seqs.split(",")]
  shards = [int(x) for x in args.shards.split(",")]
  windows = [int(x) for x in args.windows.split(",")]
  devices = jax.device_count()
  err = check_baseline()
  print(f"all-gather baseline vs halo exchange, same attention: max |diff| "
        f"{err:.1e}")
  lines = []
  say = lambda s="": (print(s), lines.append(s))
  mb = lambda x: f"{x / 2**20:,.2f}"
  rows = []
  t0 = time.time()
  for window in windows:
    say(f"\n### window {window} (one-sided; {2 * window + 1} keys per "
        f"query)\n")
    say("| N | P | rows per shard | halo hops | halo MiB | (model) | "
        "all-gather MiB | (model) | all-gather / halo | source |")
    say("|---|---|---|---|---|---|---|---|---|---|")
    for n_seq in seqs:
      for p in shards:
        if n_seq % p:
          continue
        n = n_seq // p
        model = [model_bytes(n_seq, p, window, args.heads, args.head_dim, ag)
                 for ag in (False, True)]
        if p <= devices:
          got = [sum(lower(n_seq, p, window, args, ag).values())
                 for ag in (False, True)]
          source = "HLO"
        else:
          got, source = model, "model"
        hops = -(-min(window, n_seq - 1) // n)
        rows.append((window, n_seq, p, got[0], got[1], source))
        say(f"| {n_seq:,} | {p} | {n:,} | {hops} | {mb(got[0])} | "
            f"{mb(model[0])} | {mb(got[1])} | {mb(model[1])} | "
            f"{got[1] / got[0]:,.0f}x | {source} |")
  say(f"\n({time.time() - t0:.0f} s of lowering on {devices} virtual CPU "
      f"devices; jax {jax.__version__})")
  write(args, lines, rows, err)


def write(args, lines, rows, err):
  out = pathlib.Path(args.out)
  cmd = "python experiments/halo_bytes.py " + " ".join(sys.argv[1:])
  head = [
      "# Bytes per device per attention layer: halo exchange vs all-gather",
      "",
      "```bash", cmd.strip(), "```", "",
      f"One Longformer-base attention layer (batch 1, {args.heads} heads of "
      f"{args.head_dim}, bfloat16 k and v plus a bool key mask, symmetric "
      "window, dilation 1, no global tokens), forward pass, bytes received "
      "by one device, read from the collectives of the lowered StableHLO "
      "(collective-permute: its result; all-gather: (P - 1) / P of its "
      "result; all-reduce: 2 (P - 1) / P). The backward moves the same "
      "again. \"all-gather\" is the same program with the halo step "
      "replaced by an all-gather of k, v and the mask (the context-parallel "
      "strategy of MaxText, AXLearn and TE-JAX for sliding windows); it "
      f"computes the same attention (max |diff| {err:.1e} on 8 devices). "
      "\"(model)\" is the closed form of experiments/halo_bytes.py; "
      "\"source\" says whether the row was lowered (HLO) or only computed "
      "(model). A causal layer exchanges the left halo only: half the halo "
      "bytes. Global tokens add all-reduces of G rows (their q_g, k, v) and "
      "of the global rows' partial results, independent of N.", ""]
  ratios = []
  for window in sorted({r[0] for r in rows}):
    for n_seq in (min(r[1] for r in rows), max(r[1] for r in rows)):
      rs = [r[4] / r[3] for r in rows if r[0] == window and r[1] == n_seq]
      ratios.append(f"{min(rs):,.0f}-{max(rs):,.0f}x at N = {n_seq:,} "
                    f"(w = {window})")
  tail = [
      "", "Reading: the halo is 2w rows whatever N and P are (one hop "
      "while a shard holds at least w rows; past that, more hops carrying "
      "the same rows in total, so more messages but not more bytes), while "
      "the all-gather grows as (P - 1) / P x N: the all-gather receives "
      + ", ".join(ratios) + " the halo's bytes. Only bytes: latency, "
      "overlap with compute and link bandwidth are not measured here (CPU "
      "virtual devices)."]
  text = "\n".join(head + lines + tail) + "\n"
  out.with_suffix(".md").write_text(text)
  print(f"\nwrote {out.with_suffix('.md')}")
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib is not installed: no PNG (pip install matplotlib)")
    return
  fig, axes = plt.subplots(1, len({r[0] for r in rows}), figsize=(11, 4.2),
                           squeeze=False)
  for ax, window in zip(axes[0], sorted({r[0] for r in rows})):
    for p in sorted({r[2] for r in rows}):
      pts = sorted((r[1], r[3], r[4]) for r in rows
                   if r[0] == window and r[2] == p)
      if not pts:
        continue
      xs = [x for x, _, _ in pts]
      line, = ax.plot(xs, [a / 2**20 for _, _, a in pts], "o-", ms=3,
                      label=f"all-gather P={p}")
      ax.plot(xs, [h / 2**20 for _, h, _ in pts], "s--", ms=3,
              color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("MiB received per device per layer (forward)")
    ax.set_title(f"window {window}: all-gather (solid) vs halo (dashed)")
    ax.grid(True, which="both", alpha=0.3)
  axes[0][-1].legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(out.with_suffix(".png"), dpi=110)
  print(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
  main(ARGS)
