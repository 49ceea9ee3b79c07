"""The paper's large char-LM on enwik8 (Table 3: 102M params, 0.99 BPC).

  python -m lfjax.train --config configs/charlm_enwik8_large.py --workdir DIR
  python -m lfjax.train --config configs/charlm_enwik8_large.py:tiny --workdir DIR

Needs enwik8.zip (or enwik8) locally. The paper trained it on 8 GPUs for 13
days with gradient checkpointing (remat) and fp16 matmuls; 395K steps.
"""

from lfjax.tasks import charlm_defaults


def get_config(arg=None):
  c = charlm_defaults.base_config()
  c.data.name = "enwik8"
  c.model.num_layers = 30  # paper: 30 layers, 8 heads, 512 hidden
  # 32 (bottom) to 512 (top) as the paper; it gives no list, so windows grow
  # as 32 + 480 (l / 29)^1.5 rounded to 16 (mean 225, near the small
  # model's 235).
  c.model.windows = tuple(int(16 * round((32 + 480 * (l / 29) ** 1.5) / 16))
                          for l in range(30))
  # Paper gaps: 0 (layers 0-14), 1 (15-19), 2 (20-24), 3 (25-29).
  c.model.dilations = (1,) * 15 + (2,) * 5 + (3,) * 5 + (4,) * 5
  c.model.dropout = 0.4  # paper: 0.4 for large
  c.model.remat = True  # paper: gradient checkpointing
  c.model.dtype = "bfloat16"  # paper: fp16 matmuls; attention stays f32
  c.schedule.steps = (350_000, 25_000, 10_000, 5_000, 5_000)  # paper, large
  if arg == "tiny":
    charlm_defaults.tiny(c)
    c.model.remat = False
    c.model.dtype = "float32"
  elif arg:
    raise ValueError(f"config arg: expected '' or 'tiny', got {arg!r}")
  return c
