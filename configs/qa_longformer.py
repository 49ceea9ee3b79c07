"""Extractive QA (TriviaQA / SQuAD style) by fine-tuning a Longformer with
global attention on the question tokens (paper §6.1, Appendix D).

  python -m lfjax.train --config configs/qa_longformer.py \
      --config.init_from /path/to/longformer-base-4096 \
      --config.data.train train.json --config.data.valid dev.json \
      --workdir runs/qa
  python -m lfjax.evaluate --workdir runs/qa --data dev.json  # EM, F1
  python -m lfjax.export --workdir runs/qa --to runs/qa_hf

Data: SQuAD-format JSON (answers with character offsets; several answers
and unanswerable questions allowed). The paper's TriviaQA settings: 4,096
tokens with the document truncated (data.windows "truncate"; "stride"
splits it into overlapping windows instead), LR 3e-5, batch 32, 5 epochs,
linear warmup and decay. Fields are commented in lfjax/tasks/finetune.py
and lfjax/tasks/qa.py.
On several devices, --config.mesh.data/fsdp/seq split the batch, the
parameters and each sequence as for MLM (docs/parallel.md);
--config.data.length_buckets=4 pads each batch only to its length bucket
(docs/finetuning.md; 1, the default, pads all to the longest example).

`tiny`: 64-token windows with a stride of 16, batch 8, 8 epochs at LR 3e-3,
from a tiny checkpoint (`python -m lfjax.make_tiny --to DIR`).
"""

from lfjax.tasks import qa


def get_config(arg=None):
  c = qa.base_config()
  if arg == "tiny":
    qa.tiny(c)
  elif arg:
    raise ValueError(f"config arg: expected '' or 'tiny', got {arg!r}")
  return c
