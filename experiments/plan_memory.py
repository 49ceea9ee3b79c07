"""Compiled GPU memory of Longformer train steps, planned without a GPU.

  JAX_PLATFORMS=cpu python experiments/plan_memory.py \
      [--targets a100,h100] [--rows all] \
      [--out NEW_FILE.md]

needs `pip install "lfjax[plan]"`. Each row is what `python -m lfjax.train
--config ... --plan_for GPU` compiles (lfjax.plan): the task's own train
step, for the GPU's XLA target (deviceless), from a config.json written
to a temporary folder (nothing else is read):

- MLM, longformer-base's shape: RoBERTa-base's config.json (12 x 768, 12
  heads, FFN 3,072, vocab 50,265, 514 positions) made long to 4,096 tokens
  with a full window of 512 (configs/mlm_longformer_base.py), one global
  token (model.global_bos), batch 64, micro-batch 1 and 8; float32 without
  remat, then model.dtype bfloat16 (float32 parameters) with
  model.remat and each model.remat_policy (nothing, attention, offload).
- QA, longformer-large's shape (24 x 1,024, 16 heads, FFN 4,096, a
  Longformer config.json with 4,098 positions and windows 512), 4,096
  tokens, 64 global tokens (<s> + model.max_question_tokens 63), batch 32,
  micro-batch 4, bfloat16 + remat.

Bytes per device in GB (1e9), from XLA's memory_analysis: parameters,
optimizer state (AdamW), temp (activations, gradients, every
intermediate: XLA's peak), total = arguments + temp + outputs not aliased
to the donated parameters and optimizer state. "fits" compares the total
with 75% of the device's memory (JAX's default allocator share,
XLA_PYTHON_CLIENT_MEM_FRACTION) and with 95% (that variable at 0.95);
the CUDA context and libraries use the rest. Rows are printed (and
appended to --out, a new file) as they finish, target by target (a
compile takes minutes on a busy CPU).
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))

import jax  # noqa: E402

from lfjax import plan  # noqa: E402
from lfjax import plan_steps  # noqa: E402

BASE = dict(model_type="roberta", architectures=["RobertaForMaskedLM"],
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, vocab_size=50265,
            max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, type_vocab_size=1, layer_norm_eps=1e-5)
LARGE = dict(BASE, model_type="longformer",
             architectures=["LongformerForMaskedLM"], hidden_size=1024,
             num_hidden_layers=24, num_attention_heads=16,
             intermediate_size=4096, max_position_embeddings=4098,
             attention_window=[512] * 24, sep_token_id=2)
PRECISIONS = {  # name -> (model.dtype, model.remat, model.remat_policy)
    "float32": ("float32", False, "nothing"),
    "bf16 + remat nothing": ("bfloat16", True, "nothing"),
    "bf16 + remat attention": ("bfloat16", True, "attention"),
    "bf16 + remat offload": ("bfloat16", True, "offload"),
}


def rows():
  """(task, precision, micro-batch) of every row, most wanted first (a
  run cut short keeps those)."""
  mlm = lambda precision, micro: ("mlm-base", precision, micro)
  return [mlm("float32", 8), mlm("bf16 + remat nothing", 8),
          ("qa-large", "bf16 + remat nothing", 4),
          mlm("bf16 + remat attention", 8), mlm("float32", 1),
          mlm("bf16 + remat nothing", 1), mlm("bf16 + remat offload", 8),
          ("qa-large", "bf16 + remat attention", 4),
          mlm("bf16 + remat attention", 1), mlm("bf16 + remat offload", 1)]


def config_for(task, precision, folder, scan_layers=True):
  dtype, remat, policy = PRECISIONS[precision]
  if task == "mlm-base":
    import mlm_longformer_base
    c = mlm_longformer_base.get_config()
    c.model.global_bos = True  # one global token
    c.init_from = os.path.join(folder, "base")
  else:
    import qa_longformer
    c = qa_longformer.get_config()
    c.model.max_question_tokens = 63  # <s> + 63: 64 global tokens
    c.train.micro_batch_size = 4
    c.init_from = os.path.join(folder, "large")
  c.model.dtype, c.model.remat, c.model.remat_policy = dtype, remat, policy
  c.model.scan_layers = scan_layers
  return c


def measure(task, precision, micro, target, devices, folder,
            scan_layers=True):
  c = config_for(task, precision, folder, scan_layers)
  steps = (plan_steps.mlm_steps(c, devices) if task == "mlm-base"
           else plan_steps.finetune_steps(c, devices))
  fn, args = steps.train(micro)
  start = time.time()
  m = plan.compile_memory(fn, args, parameters=plan.tree_bytes(steps.params),
                          optimizer=plan.tree_bytes(steps.opt_state),
                          resident=0, budget=0)
  return m, time.time() - start


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--targets", default="a100,h100")
  p.add_argument("--rows", default="all",
                 help="all, or comma-separated row numbers (1-based)")
  p.add_argument("--scan_layers", default="on", choices=("on", "off"),
                 help="model.scan_layers (on: the trainers' default)")
  p.add_argument("--out", default=None,
                 help="also write the table to this new file (an existing "
                 "one is refused: results/plan_memory.md collects several "
                 "runs' tables by hand)")
  args = p.parse_args()
  if args.out and os.path.exists(args.out):
    p.error(f"--out: {args.out} exists; give a new file (the table is "
            "printed either way)")
  jax.config.update("jax_platforms", "cpu")
  plugin = plan.require_plugin()
  todo = rows()
  if args.rows != "all":
    todo = [todo[int(i) - 1] for i in args.rows.split(",")]
  folder = tempfile.mkdtemp()
  for name, d in (("base", BASE), ("large", LARGE)):
    os.makedirs(os.path.join(folder, name))
    with open(os.path.join(folder, name, "config.json"), "w") as f:
      json.dump(d, f)
  head = [
      "# Compiled GPU memory of Longformer train steps (lfjax.plan)", "",
      "Command: `" + " ".join(
          ["JAX_PLATFORMS=cpu python experiments/plan_memory.py"]
          + [f"--{k} {v}" for k, v in vars(args).items()
             if k != "out" and v != p.get_default(k)]) + "`", "",
      f"jax {jax.__version__}, jax-cuda12-plugin {plugin}, Python "
      f"{platform.python_version()}; deviceless XLA compilation for the "
      "GPU (no GPU used). GB = 1e9 bytes per device; total = arguments + "
      "temp + outputs not aliased (donated params and optimizer state). "
      "Fits: total <= 75% (JAX's default XLA_PYTHON_CLIENT_MEM_FRACTION) / "
      "95% of the device's memory.", "",
      "| task (shape) | precision | micro-batch | GPU | params | optimizer "
      "| temp | total | % of device | fits 75% / 95% | compile s |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  print("\n".join(head), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(head) + "\n")
  targets = []
  for name in args.targets.split(","):
    target = plan.parse_target(name)
    device = plan.device_memory(plan.target_text(target, plugin))
    targets.append((target, device, plan.topology_devices(target, plugin)))
  for target, device, devices in targets:
    for task, precision, micro in todo:
      m, secs = measure(task, precision, micro, target, devices, folder,
                        args.scan_layers == "on")
      fits = "/".join("yes" if m.total <= f * device else "no"
                      for f in (0.75, 0.95))
      host = f" (+{m.host / 1e9:.1f} host)" if m.host else ""
      line = (f"| {task} | {precision} | {micro} | {target.label} | "
              f"{m.parameters / 1e9:.2f} | {m.optimizer / 1e9:.2f} | "
              f"{m.temp / 1e9:.2f}{host} | {m.total / 1e9:.2f} | "
              f"{100 * m.total / device:.0f}% | {fits} | {secs:.0f} |")
      print(line, flush=True)
      if args.out:
        with open(args.out, "a") as f:
          f.write(line + "\n")


if __name__ == "__main__":
  main()
