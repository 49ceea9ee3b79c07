"""TPU resources of windowed attention, compiled without a TPU (the TPU section
of experiments/results/kernel_resources.md).

  JAX_PLATFORMS=cpu python experiments/tpu_resources.py [--targets v5e,v6e] \
      [--hbm_target v5e] [--hbm_tokens 4096,32768] [--plans] \
      [--cache FILE.jsonl] [--stages kernels,hbm,plans,write] \
      [--out experiments/results/kernel_resources.md]

needs `pip install "lfjax[tpu]"` (Python >= 3.12). Three tables:
1. per Pallas TPU kernel of every lfjax.kernels.tpu_compile variant and
   target: scoped VMEM vs its limit, the bytes of its operands XLA placed in
   VMEM, the variant's compile time and HBM temporaries;
2. HBM temporaries of attention forward + backward (batch 1, 12 heads,
   head_dim 64, bf16, window 256) at --hbm_tokens for impl splash and
   mosaic vs the XLA batched path (chunked) and dense, on --hbm_target; a
   program over the chip's HBM is refused by the compiler, and its figure
   (what the compiler says it needs) is the result;
3. with --plans, `--plan_for v5e` of longformer-base's MLM at 4,096 tokens x
   micro-batch 8 (bf16 + remat) and experiments/charlm_memory.py for the
   paper-small char-LM at phase 5 on v5e: their output, verbatim.
--cache keeps every finished compile (a JSON line each) and reuses it, so
the stages can run as separate processes side by side (--stages kernels,
--stages hbm, --stages plans, each with the same --cache) and a last
--stages write assembles the section from the cache alone. The section
replaces the file's TPU section (from its marker line on);
the GPU tables before it are kept (experiments/kernel_resources.py keeps
this section in turn). Compile times are wall clock on whatever machine
runs this: not timings of a TPU.
"""

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lfjax import plan_tpu  # noqa: E402
from lfjax.kernels import tpu_compile  # noqa: E402

MARKER = "<!-- TPU section: written by experiments/tpu_resources.py -->"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MiB = 2 ** 20
# The layers compared for HBM (as tpu_compile's variants, impl replaced).
HBM_LAYERS = ("causal_d64_bf16", "globals_d64_bf16", "rel_dropout_d64_bf16")
HBM_IMPLS = ("splash", "mosaic", "chunked", "dense")


class Cache:
  """JSON lines of finished results, keyed by what produced them."""

  def __init__(self, path):
    self.path, self.got = path, {}
    if path and os.path.exists(path):
      with open(path) as f:
        for line in f:
          d = json.loads(line)
          self.got[d["key"]] = d["value"]

  def get(self, key, make):
    if key not in self.got:
      self.got[key] = make()
      if self.path:
        with open(self.path, "a") as f:
          f.write(json.dumps(dict(key=key, value=self.got[key])) + "\n")
    return self.got[key]


def kernel_rows(cache, target, compile_=True):
  """(rows, notes) of every variant for a target (cached)."""
  def make():
    if not compile_:
      raise SystemExit(f"--stages write: no kernels of {target} in the "
                       "cache; run --stages kernels first")
    got, skipped, failed = tpu_compile.compile_variants(target, timeout=3600)
    return dict(rows=[dataclasses.asdict(r) for r in got],
                notes=[f"- {target} {n}: not compiled: {w}"
                       for n, w in skipped.items()]
                + [f"- {target} {n}: did not compile: {w}"
                   for n, w in failed.items()])
  d = cache.get(f"kernels {target}", make)
  return [tpu_compile.Resources(**r) for r in d["rows"]], d["notes"]


def kernel_table(rows):
  lines = ["| target | variant | kernel | scoped VMEM KiB | limit MiB | "
           "operands XLA put in VMEM MiB | variant compile s | variant HBM "
           "temp MiB |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    for k in r.kernels:
      lines.append(
          f"| {r.target} | {r.variant} | {k['kernel']} | "
          f"{k['vmem'] / 1024:,.0f} | {k['limit'] / MiB:g} | "
          f"{k['xla_vmem'] / MiB:.1f} | {r.compile_s:.1f} | "
          f"{r.hbm_temp / MiB:,.1f} |")
  return lines


def hbm_table(cache, target, tokens_list, compile_=True, layers=HBM_LAYERS):
  lines = ["| tokens | layer | impl | HBM temp MiB | arguments MiB | "
           "compile s |", "|---|---|---|---|---|---|"]
  for tokens in tokens_list:
    for layer in layers:
      for impl in HBM_IMPLS:
        kind = layer.rsplit("_d", 1)[0]
        if kind not in tpu_compile.SERVES.get(impl, tpu_compile.SERVES[
            "mosaic"]):
          continue
        name = "mosaic_" + layer

        def make():
          if not compile_:  # not in the cache: say so, do not guess
            return dict(rows=[], why=["not measured: no compile in the "
                                      "cache (the run was stopped first)"])
          got, skipped, failed = tpu_compile.compile_variants(
              target, [name], impl=impl, tokens=tokens, timeout=7200)
          return dict(rows=[dataclasses.asdict(r) for r in got],
                      why=list(skipped.values()) + list(failed.values()))
        key = f"hbm {target} {tokens} {layer} {impl}"
        d = cache.get(key, make) if compile_ or key in cache.got else make()
        rows = [tpu_compile.Resources(**r) for r in d["rows"]]
        skipped, failed = {}, dict(enumerate(d["why"]))
        for r in rows:
          print(json.dumps(dict(tokens=tokens, impl=impl, layer=layer,
                                hbm_temp=r.hbm_temp,
                                compile_s=r.compile_s)), flush=True)
          lines.append(f"| {tokens:,} | {layer} | {impl} | "
                       f"{r.hbm_temp / MiB:,.1f} | "
                       f"{r.hbm_arguments / MiB:,.1f} | {r.compile_s:.1f} |")
        for why in list(skipped.values()) + list(failed.values()):
          oom = plan_tpu.parse_hbm_oom(why)
          what = (f"does not fit: the compiler needs {oom[1] / MiB:,.0f} "
                  f"MiB for {oom[0]}, {oom[2] / MiB:,.0f} available"
                  if oom else why[:200])
          print(json.dumps(dict(tokens=tokens, impl=impl, layer=layer,
                                result=what)), flush=True)
          lines.append(f"| {tokens:,} | {layer} | {impl} | {what} | | |")
  return lines


def base_config(folder):
  from experiments import plan_memory
  os.makedirs(os.path.join(folder, "base"), exist_ok=True)
  with open(os.path.join(folder, "base", "config.json"), "w") as f:
    json.dump(plan_memory.BASE, f)
  return os.path.join(folder, "base")


def plans(cache, compile_=True):
  """[(command, output)] of the two plans for v5e (each cached)."""
  folder = tempfile.mkdtemp()
  base = base_config(folder)
  out = []
  for i, cmd in enumerate(_commands(base)):
    key = f"plan v5e {i}"
    if not compile_ and key not in cache.got:
      out.append((" ".join(cmd).replace(base, "roberta-base-config/"),
                  "not measured: not in the cache (the run was stopped "
                  "first)"))
      continue
    out.append(cache.get(key, lambda: _run(cmd, base)))
  return out


def _commands(base):
  return [
      ["python", "-m", "lfjax.train", "--config",
       "configs/mlm_longformer_base.py", "--config.init_from", base,
       "--config.model.global_bos=True", "--config.model.dtype=bfloat16",
       "--config.model.remat=True", "--plan_for", "v5e"]
  ] + [["python", "experiments/charlm_memory.py", "--target", "v5e",
         "--seqs", "23040", "--batch", str(batch), "--dtype", "bfloat16",
         "--impl", "auto"] for batch in (16, 8, 4)]


def _run(cmd, base):
  """(command as shown, its stdout, an error's last stderr line, exit)."""
  proc = subprocess.run([sys.executable] + cmd[1:], cwd=ROOT, text=True,
                        capture_output=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  shown = " ".join(cmd).replace(base, "roberta-base-config/")
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  text = "\n".join([proc.stdout.strip()] + errors[-1:]
                   + [f"(exit status {proc.returncode})"]).strip()
  print(f"$ {shown}\n{text}", flush=True)
  return shown, text


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--targets", default="v5e,v6e")
  p.add_argument("--hbm_target", default="v5e")
  p.add_argument("--hbm_tokens", default="4096,32768")
  p.add_argument("--hbm_layers", default=",".join(HBM_LAYERS))
  p.add_argument("--plans", action="store_true")
  p.add_argument("--cache", default="",
                 help="a JSON-lines file of finished compiles, reused")
  p.add_argument("--stages", default="kernels,hbm,plans,write",
                 help="which of kernels, hbm, plans, write to run")
  p.add_argument("--out", default=os.path.join(
      os.path.dirname(__file__), "results", "kernel_resources.md"))
  a = p.parse_args()
  cmd = " ".join(["JAX_PLATFORMS=cpu python experiments/tpu_resources.py"]
                 + [f"--{k}" if v is True else f"--{k} {v}"
                    for k, v in vars(a).items()
                    if k not in ("out", "cache", "stages")
                    and v != p.get_default(k)])
  libtpu = plan_tpu.require_libtpu()
  cache = Cache(a.cache)
  stages = set(a.stages.split(","))
  tokens = [int(x) for x in a.hbm_tokens.split(",")]
  if stages - {"kernels", "hbm", "plans", "write"}:
    p.error(f"--stages: expected among kernels, hbm, plans, write, got "
            f"{a.stages!r}")
  # Compile what the stages ask for (each into the cache), then write.
  if "kernels" in stages:
    for t in a.targets.split(","):
      kernel_rows(cache, t)
  if "hbm" in stages:
    hbm_table(cache, a.hbm_target, tokens, layers=a.hbm_layers.split(","))
  if "plans" in stages and a.plans:
    plans(cache)
  if "write" not in stages:
    return
  lines = [MARKER, "", "## TPU: windowed attention compiled for v5e / v6e "
           "without a TPU", "",
           f"Command: `{cmd}` ({datetime.date.today().isoformat()}; jax "
           f"{importlib.metadata.version('jax')}, libtpu {libtpu}, Python "
           f"{platform.python_version()}, JAX_PLATFORMS=cpu, no TPU; the "
           "machine was shared with other jobs, so compile times are "
           "inflated and only indicative). Test: `LFJAX_TEST_TPU=1 python "
           "-m pytest tests/test_tpu_compile.py` (CI) asserts every variant "
           "compiles for v5e and v6e with each kernel within its scoped "
           "VMEM limit.", "",
           "Variants: lfjax/kernels/tpu_compile.py (windowed_attention "
           "forward + backward, batch 1, 4,096 tokens, 12 heads, window 256; "
           "jax_splash: JAX's splash kernel called directly, causal band, "
           "the reference). Scoped VMEM: libtpu's VMEM report per kernel "
           "(its window buffers and scratch; 0 where XLA placed every "
           "operand and output in VMEM itself, which the next column "
           "counts, unpadded); limit: the chip's default scoped VMEM, read "
           "from the compiler (v5e 16 MiB, v6e 32 MiB), unless the kernel "
           "sets its own. VMEM capacity 128 MiB on both. HBM temp: "
           "compiled.memory_analysis() of the variant.", ""]
  rows = []
  for t in a.targets.split(","):
    got, notes = kernel_rows(cache, t, compile_="kernels" in stages)
    rows += got
    lines += notes
  worst = max((k["vmem"] / k["limit"], r.target, r.variant, k["kernel"])
              for r in rows for k in r.kernels)
  lines += [f"Summary: {sum(len(r.kernels) for r in rows)} kernels, none "
            f"over its limit; the largest share of a limit: "
            f"{100 * worst[0]:.1f}% ({worst[1]} {worst[2]} {worst[3]}).", ""]
  lines += kernel_table(rows)
  lines += ["", f"### HBM temporaries of attention forward + backward on "
            f"{a.hbm_target} (batch 1, 12 heads, head_dim 64, bf16, window "
            "256)", "",
            "impl chunked is the XLA batched path (band_batched: what a "
            "TPU ran before splash and mosaic); dense the O(N^2) oracle. "
            "splash does not serve dropout or the relative term. XLA's TPU "
            "compiler keeps some buffers in VMEM (128 MiB on v5e), which "
            "memory_analysis does not count as HBM: at 4,096 tokens a "
            "kernel table's variant can read 0. Rows 'not measured' were "
            "still compiling when this run was stopped.", ""]
  lines += hbm_table(cache, a.hbm_target, tokens, "hbm" in stages,
                     a.hbm_layers.split(","))
  if a.plans:
    lines += ["", "### Planned for a v5e", "",
              "Both with attention_impl auto, which a program traced for "
              "a TPU resolves per call: splash where the call has neither "
              "attention dropout nor the relative term (the MLM's "
              "evaluation step), mosaic where it has (the MLM's train step: "
              "RoBERTa's attention dropout 0.1; the char-LM's relative "
              "term). The char-LM's phase 5 trains batch 16; a smaller "
              "batch is its micro-batch (schedule.micro_batch_sizes).", ""]
    for shown, text in plans(cache, "plans" in stages):
      lines += ["```text", f"$ JAX_PLATFORMS=cpu {shown}", text, "```", ""]
  old = ""
  if os.path.exists(a.out):
    with open(a.out) as f:
      old = f.read()
  keep = old.split(MARKER)[0].rstrip("\n")
  with open(a.out, "w") as f:
    f.write((keep + "\n\n" if keep else "") + "\n".join(lines) + "\n")
  print("wrote", a.out)


if __name__ == "__main__":
  main()
