"""Multiple choice over long contexts (WikiHop style) by fine-tuning a
Longformer with global attention on the question and candidate tokens
(paper §6.1).

  python -m lfjax.train --config configs/multiple_choice_longformer.py \
      --config.init_from /path/to/longformer-base-4096 \
      --config.data.train train.json --config.data.valid dev.json \
      --workdir runs/mc
  python -m lfjax.evaluate --workdir runs/mc --data dev.json  # accuracy
  python -m lfjax.export --workdir runs/mc --to runs/mc_hf

Data: WikiHop's JSON (a list of {"id", "query", "candidates", "supports",
"answer"}). The paper's WikiHop settings: LR 3e-5, batch 32, 15 epochs,
linear warmup and decay, 4,096 tokens; here each candidate is its own
sequence (transformers' LongformerForMultipleChoice), so batches are
micro-batches of one example accumulated. Fields are commented in
lfjax/tasks/finetune.py and lfjax/tasks/multiple_choice.py.
On several devices, --config.mesh.data/fsdp/seq split the batch, the
parameters and each sequence as for MLM (docs/parallel.md);
--config.data.length_buckets=4 pads each batch only to its length bucket
(docs/finetuning.md; 1, the default, pads all to the longest example).

`tiny`: 64 tokens, batch 8, 8 epochs at LR 3e-3, from a tiny checkpoint
(`python -m lfjax.make_tiny --to DIR`).
"""

from lfjax.tasks import multiple_choice


def get_config(arg=None):
  c = multiple_choice.base_config()
  if arg == "tiny":
    multiple_choice.tiny(c)
  elif arg:
    raise ValueError(f"config arg: expected '' or 'tiny', got {arg!r}")
  return c
