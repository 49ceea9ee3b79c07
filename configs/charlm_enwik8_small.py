"""The paper's small char-LM on enwik8 (Table 2: 41M params, 1.00 test BPC).

  python -m lfjax.train --config configs/charlm_enwik8_small.py --workdir DIR
  python -m lfjax.train --config configs/charlm_enwik8_small.py:tiny --workdir DIR

Needs enwik8.zip (or enwik8) in --config.data.dir / $LFJAX_DATA /
~/.cache/lfjax. Bytes are the vocabulary (256 ids). GPU-scale: 570K steps.
"""

from lfjax.tasks import charlm_defaults


def get_config(arg=None):
  c = charlm_defaults.base_config()  # the paper's small model and schedule
  c.data.name = "enwik8"
  if arg == "tiny":
    charlm_defaults.tiny(c)
  elif arg:
    raise ValueError(f"config arg: expected '' or 'tiny', got {arg!r}")
  return c
