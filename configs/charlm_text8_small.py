"""The paper's small char-LM on text8 (Table 2: 41M params, 1.10 test BPC).

  python -m lfjax.train --config configs/charlm_text8_small.py --workdir DIR
  python -m lfjax.train --config configs/charlm_text8_small.py:tiny --workdir DIR

Needs text8.zip (or text8) in --config.data.dir / $LFJAX_DATA /
~/.cache/lfjax. The full schedule (570K steps, 5 phases up to 23,040
tokens) is GPU-scale: the paper used 4 GPUs for 16 days. Evaluate with
`python -m lfjax.evaluate --workdir DIR --split test` (32,256 / 512).
"""

from lfjax.tasks import charlm_defaults


def get_config(arg=None):
  c = charlm_defaults.base_config()  # the paper's small model and schedule
  c.data.name = "text8"  # 27 symbols: space and a-z
  if arg == "tiny":
    charlm_defaults.tiny(c)
  elif arg:
    raise ValueError(f"config arg: expected '' or 'tiny', got {arg!r}")
  return c
