"""Table 4 at CPU scale: window-size schedule and dilation ablation.

  python -m lfjax.train --config configs/charlm_table4.py:increasing --workdir DIR
  python -m lfjax.train --config configs/charlm_table4.py:fixed,quick --workdir DIR

Args (comma separated): one variant, optionally `quick` (or `tiny`).
- increasing: windows grow bottom to top (the paper's 32 -> 512, scaled),
  no dilation (the paper's "No dilation" row is read as this run).
- fixed: every layer the mean of the increasing windows (the paper's 230).
- decreasing: the increasing windows reversed.
- dilated: increasing, plus dilation on 2 of the 8 heads in the upper layers.
`experiments/table4_windows.py` runs every variant over several seeds and
writes experiments/results/table4.md. The paper ran the small model on
text8 for 150K phase-1 steps; this is a 6-layer, 128-wide model on the
embedded corpus (pystdlib), one phase of a few hundred steps, so it tests
the ordering at a scale four orders of magnitude smaller.
"""

from lfjax.tasks import charlm_defaults

# Paper: 32 -> 512 at sequence 2,048 (1/64 to 1/4 of it); here sequence
# 512 and 6 layers, so 8 -> 128.
INCREASING = (8, 16, 32, 64, 96, 128)
# Paper: dilation gaps 0,0,0,0,0,0,1,1,2,2,3,3 on 12 layers; every other
# layer of that list (dilation = gap + 1).
DILATIONS = (1, 1, 1, 2, 3, 4)
VARIANTS = ("increasing", "fixed", "decreasing", "dilated")


def get_config(arg=None):
  parts = [p for p in (arg or "increasing").split(",") if p]
  variant, rest = parts[0], parts[1:]
  if variant not in VARIANTS or any(p not in ("quick", "tiny") for p in rest):
    raise ValueError(f"config arg: expected one of {VARIANTS}, optionally "
                     f"followed by ',quick', got {arg!r}")
  c = charlm_defaults.base_config()
  c.data.name = "pystdlib"  # embedded corpus, no download
  c.model.num_layers = 6
  c.model.num_heads = 8  # paper: 8 heads, 2 of them dilated
  c.model.hidden_size = 128
  c.model.head_dim = 16
  c.model.ffn_size = 512
  c.model.rel_features = 16  # only used by rel_impl="features"
  c.model.dropout = 0.1
  mean = round(sum(INCREASING) / len(INCREASING))
  c.model.windows = {"increasing": INCREASING, "dilated": INCREASING,
                     "fixed": (mean,) * len(INCREASING),
                     "decreasing": INCREASING[::-1]}[variant]
  c.model.dilations = DILATIONS if variant == "dilated" else (1,) * 6
  c.model.dilated_heads = 2
  # One phase, as the paper's ablation (phase-1 configuration).
  c.schedule.steps = (400,)  # ~1.6M tokens: ~5 min per run on 2 cores
  c.schedule.seq_lens = (512,)
  c.schedule.window_scales = (1,)
  c.schedule.lrs = (1e-3,)
  c.schedule.batch_sizes = (8,)
  c.log_every = 25
  c.checkpoint_every = 200
  c.eval_every = 100  # dev BPC curve: 4 points per run
  # Paper protocol scaled down: windows of 1,024 stepped by 256.
  c.eval.split = "valid"
  c.eval.seq_len = 1024
  c.eval.step = 256
  c.eval.batch_size = 8
  c.eval.max_chars = 50_000
  if "quick" in rest or "tiny" in rest:
    c.schedule.steps = (60,)
    c.schedule.seq_lens = (256,)
    c.model.windows = tuple(max(1, w // 2) for w in c.model.windows)
    c.schedule.batch_sizes = (4,)
    c.log_every = 10
    c.checkpoint_every = 60
    c.eval_every = 30
    c.eval.seq_len = 512
    c.eval.max_chars = 8_000
  return c
