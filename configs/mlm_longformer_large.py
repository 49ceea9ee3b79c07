"""Longformer-large by continued MLM pretraining of RoBERTa-large (paper §5).

  python -m lfjax.train --config configs/mlm_longformer_large.py \
      --config.init_from /path/to/roberta-large \
      --config.data.sources /path/to/documents --workdir /tmp/lf_large

Same recipe as the base config (the paper uses the same hyperparameters for
both sizes); only the micro-batch shrinks so 4096-token sequences of the
24-layer model fit. `tiny` as in mlm_longformer_base.py.
"""

from lfjax.tasks import mlm_defaults


def get_config(arg=None):
  c = mlm_defaults.base_config()
  c.train.micro_batch_size = 2  # 32 accumulation steps per update of 64
  if arg == "tiny":
    mlm_defaults.tiny(c)
  elif arg:
    raise ValueError(f"config arg: expected '' or 'tiny', got {arg!r}")
  return c
