"""Long-document classification by fine-tuning a Longformer (paper §6.3:
IMDB, Hyperpartisan), single- or multi-label.

  python -m lfjax.train --config configs/classify_longformer.py \
      --config.init_from /path/to/longformer-base-4096 \
      --config.data.train train.jsonl --config.data.valid dev.jsonl \
      --workdir runs/cls
  python -m lfjax.evaluate --workdir runs/cls --data test.jsonl
  python -m lfjax.export --workdir runs/cls --to runs/cls_hf

Data: one JSON object per line, {"text": ..., "label": "pos"} (a list of
labels makes it multi-label). init_from is a local folder with config.json,
weights and tokenizer files; nothing is downloaded. The paper's settings:
Adam, LR 3e-5, batch 32, 10% warmup, linear decay, 15 epochs, global
attention on the first token, documents up to 4,096 tokens. Fields are
commented in lfjax/tasks/finetune.py and lfjax/tasks/classification.py.
On several devices, --config.mesh.data/fsdp/seq split the batch, the
parameters and each sequence as for MLM (docs/parallel.md);
--config.data.length_buckets=4 pads each batch only to its length bucket
(docs/finetuning.md; 1, the default, pads all to the longest example).

`tiny` runs on CPU in about a minute from a tiny checkpoint of 128
positions (`python -m lfjax.make_tiny --to DIR --positions 128` builds
one) on a small data file: 128 tokens, batch 8, 8 epochs, LR 3e-3.
"""

from lfjax.tasks import classification


def get_config(arg=None):
  c = classification.base_config()
  if arg == "tiny":
    classification.tiny(c)
  elif arg:
    raise ValueError(f"config arg: expected '' or 'tiny', got {arg!r}")
  return c
