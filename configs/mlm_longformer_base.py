"""Longformer-base by continued MLM pretraining of RoBERTa-base (paper §5).

  python -m lfjax.train --config configs/mlm_longformer_base.py \
      --config.init_from /path/to/roberta-base \
      --config.data.sources /path/to/documents --workdir /tmp/lf_base
  python -m lfjax.export --workdir /tmp/lf_base --to /tmp/lf_base_hf

init_from is a local folder (config.json, model.safetensors or
pytorch_model.bin, tokenizer files): nothing is downloaded. Variants of the
paper's Table 5: --config.model.position_init random, and
--config.train.train_only position_embeddings.

`tiny` runs on CPU in about a minute on 300 stdlib files from a tiny random
RoBERTa, which `python -m lfjax.make_tiny --to DIR` builds:
  python -m lfjax.train --config configs/mlm_longformer_base.py:tiny \
      --config.init_from DIR --workdir /tmp/mlm_tiny
"""

from lfjax.tasks import mlm_defaults


def get_config(arg=None):
  c = mlm_defaults.base_config()
  # Batch 64 x 4096 as 8 micro-batches of 8. Compiled for an A100 (XLA's
  # figures, `--plan_for a100`, with the attention's batched blocks that
  # GPU backends compile; experiments/results/plan_memory.md, with
  # model.global_bos): in float32 without remat 47.2 GB per GPU with
  # scanned layers (the default; 48.1 GB on an H100 80 GB: it fits) and
  # 32.3 GB with --config.model.scan_layers=False, so an 80 GB GPU (a 40 GB
  # one: micro-batch 4, 25.0 GB); 9.5 GB with
  # --config.model.dtype=bfloat16 --config.model.remat=True (scanned).
  c.train.micro_batch_size = 8
  if arg == "tiny":
    mlm_defaults.tiny(c)
  elif arg:
    raise ValueError(f"config arg: expected '' or 'tiny', got {arg!r}")
  return c
