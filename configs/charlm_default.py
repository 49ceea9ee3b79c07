"""Char-LM on the embedded corpus (Python's stdlib sources): the main job.

  python -m lfjax.train --config configs/charlm_default.py --workdir /tmp/charlm
  python -m lfjax.train --config configs/charlm_default.py:tiny --workdir /tmp/t

Needs no download. The default is a CPU-sized Longformer char-LM (6 layers,
256 wide, two phases; see the README for its estimated cost on 2 cores);
`tiny` finishes in 1-2 minutes, saves five checkpoints and keeps the newest
three (its samples are gibberish). Evaluate with
`python -m lfjax.evaluate --workdir DIR --split test`.
"""

from lfjax.tasks import charlm_defaults


def get_config(arg=None):
  c = charlm_defaults.base_config()
  c.data.name = "pystdlib"  # built once from this Python's stdlib sources
  c.model.num_layers = 6
  c.model.num_heads = 4
  c.model.hidden_size = 256
  c.model.head_dim = 64
  c.model.ffn_size = 1024
  c.model.windows = (32, 48, 64, 96, 128, 192)  # grow bottom to top
  c.model.dilations = (1, 1, 1, 1, 2, 3)  # on the last 2 heads
  c.model.rel_features = 64
  c.model.dropout = 0.1
  # Two phases in the paper's style: double seq and window, halve the LR.
  c.schedule.steps = (4000, 1000)
  c.schedule.seq_lens = (512, 1024)
  c.schedule.window_scales = (1, 2)
  c.schedule.lrs = (1e-3, 5e-4)
  c.schedule.batch_sizes = (16, 8)
  c.log_every = 50
  c.checkpoint_every = 500
  c.eval_every = 1000
  c.eval.seq_len = 2048
  c.eval.step = 512
  c.eval.batch_size = 4
  c.eval.max_chars = 200_000
  if arg == "tiny":
    charlm_defaults.tiny(c)
  elif arg:
    raise ValueError(f"config arg: expected '' or 'tiny', got {arg!r}")
  return c
