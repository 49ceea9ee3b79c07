"""Fields shared by the MLM configs (configs/mlm_*.py).

Values are the paper's continued pretraining of RoBERTa into Longformer
(Section 5; see ../shared/research/paper.md): window 512, 4096 tokens,
batch 64, LR 3e-5 with 500 warmup steps and polynomial (power 3) decay over
65K updates; the rest as RoBERTa (AdamW betas 0.9/0.98, eps 1e-6, weight
decay 0.01, dropout 0.1, no gradient clipping). Every field is used by
lfjax.tasks.mlm; the fields every task has (task, seed, logging,
checkpoints) come from lfjax.tasks.common.shared_fields.
"""

import ml_collections

from lfjax.tasks import common


def base_config():
  c = ml_collections.ConfigDict()
  # The seed also draws new position rows (model.position_init random).
  common.shared_fields(c, "mlm", log_every=50, checkpoint_every=1_000,
                       eval_every=2_000)
  # Local Hugging Face folder: RoBERTa, BERT or Longformer, base or
  # *ForMaskedLM, with its tokenizer files. Required.
  c.init_from = ""

  c.data = ml_collections.ConfigDict()
  # A token store built by `python -m lfjax.data build` (its manifest names
  # the documents, tokenizer and options); "" = build or reuse one from
  # data.sources under data.cache_dir. Give one of the two.
  c.data.store = ""
  # Text files, folders of documents (one per file), .jsonl / .jsonl.gz /
  # .parquet files, datasets folders (save_to_disk) or "pystdlib"
  # (lfjax.data.sources). On the command line:
  # --config.data.sources="('a.jsonl','b.parquet')".
  c.data.sources = ()
  c.data.glob = "*.txt"  # which files of a folder are documents
  c.data.text_field = "text"  # the text of record files (jsonl, parquet)
  c.data.max_documents = 0  # 0 = all; else the first N (in name order)
  # Documents whose name hashes below this fraction form the held-out split.
  c.data.valid_fraction = 0.01
  c.data.tokenizer = ""  # tokenizer folder; "" = init_from
  # Token stores built from data.sources; "" = $LFJAX_DATA/mlm.
  c.data.cache_dir = ""
  c.data.workers = 0  # processes tokenizing a new store; 0 = all cores
  # Tokens per shard of a store built from data.sources (2^24: 32 MB of
  # uint16 tokens + 64 MB of character counts per shard).
  c.data.shard_tokens = 1 << 24

  c.model = ml_collections.ConfigDict()
  # Positions after the conversion; a shorter checkpoint goes through
  # lfjax.convert.make_long, a long enough one is used as is.
  c.model.max_positions = 4096
  # FULL window (even) of a RoBERTa or BERT made long; one-sided is half.
  # Paper: 512. A Longformer checkpoint made longer keeps its own windows.
  c.model.attention_window = 512
  # New position rows: "copy" (paper) or "random" (Table 5's baseline).
  c.model.position_init = "copy"
  # Global attention on <s>; the paper's MLM uses none.
  c.model.global_bos = False
  c.model.attention_impl = "auto"  # windowed_attention impl
  common.encoder_fields(c.model)

  c.train = ml_collections.ConfigDict()
  c.train.seq_len = 4096  # tokens per packed sequence, <s> and </s> included
  c.train.batch_size = 64  # sequences per optimizer step (paper: 64)
  # Sequences per forward/backward; batch_size / this = accumulation steps.
  c.train.micro_batch_size = 8
  # "all", or "position_embeddings" (the rest frozen: the paper's
  # "train extra pos. embed. only" row).
  c.train.train_only = "all"

  c.mask = ml_collections.ConfigDict()
  c.mask.prob = 0.15  # share of real, non-special tokens predicted
  c.mask.mask_frac = 0.8  # of those: replaced by <mask>
  c.mask.random_frac = 0.1  # by a random non-special token; rest unchanged

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 3e-5  # peak
  c.optim.warmup_steps = 500  # linear from 0
  c.optim.decay_steps = 65_000  # LR reaches 0 here (polynomial decay)
  c.optim.power = 3.0  # of the decay
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98  # RoBERTa's
  c.optim.eps = 1e-6
  c.optim.weight_decay = 0.01  # on matrices only
  c.optim.grad_clip = 0.0  # global norm; 0 = none (RoBERTa)

  c.steps = 65_000  # optimizer steps

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 8
  c.eval.max_batches = 50  # 0 = the whole held-out split
  c.eval.mask_seed = 0  # fixed masks: every step and run sees the same ones
  return c


def tiny(c):
  """CPU-sized: about a minute from a tiny random RoBERTa."""
  c.data.sources = ("pystdlib",)
  c.data.glob = "*.py"
  c.data.max_documents = 300
  c.data.valid_fraction = 0.1
  c.model.max_positions = 256
  c.model.attention_window = 32
  c.train.seq_len = 256
  c.train.batch_size = 4
  c.train.micro_batch_size = 2
  c.optim.lr = 5e-3
  c.optim.warmup_steps = 5
  c.optim.decay_steps = 60
  c.steps = 60
  c.log_every = 5
  c.eval_every = 20
  c.checkpoint_every = 20
  c.eval.batch_size = 4
  c.eval.max_batches = 4


def validate(config):
  """Checks every field's type and range at start (lfjax.tasks.mlm calls
  it).

  Raises:
    ValueError naming the field (`config.mask.prob: expected ...`).
  """
  from lfjax import checks as ck
  c = config
  common.validate_shared(c, "mlm")
  if not isinstance(c.init_from, str) or not c.init_from:
    raise ValueError(
        "config.init_from: expected a local RoBERTa, BERT or Longformer "
        "checkpoint folder (config.json, weights and tokenizer files), got "
        f"{c.init_from!r}; pass --config.init_from=DIR (`python -m "
        "lfjax.make_tiny --to DIR` builds a tiny one for the :tiny config)")
  ck.string(c, "data.store")
  ck.strings(c, "data.sources")
  if c.data.store and c.data.sources:
    # The :tiny config sets data.sources: a user adding data.store to it
    # must clear them, and needs the command-line spelling to do so.
    raise ValueError(
        f"config.data.store: expected '' when data.sources are given "
        f"(data.sources={tuple(c.data.sources)!r}, e.g. from the :tiny "
        f"config), got {c.data.store!r}; to train on the store pass "
        "--config.data.sources='()'")
  ck.string(c, "data.glob", nonempty=True)
  ck.string(c, "data.text_field", nonempty=True)
  ck.integer(c, "data.max_documents", 0)
  ck.real(c, "data.valid_fraction", 0, 1, lo_open=True, hi_open=True)
  ck.string(c, "data.tokenizer")
  ck.string(c, "data.cache_dir")
  ck.integer(c, "data.workers", 0)
  ck.integer(c, "data.shard_tokens", 1)
  positions = ck.integer(c, "model.max_positions", 2)
  if ck.integer(c, "model.attention_window", 2) % 2:
    ck._fail("model.attention_window", "an even integer (the FULL window)",
             c.model.attention_window)
  ck.one_of(c, "model.position_init", ("copy", "random"))
  ck.boolean(c, "model.global_bos")
  from lfjax.attention import IMPLS  # every registered implementation
  ck.one_of(c, "model.attention_impl", IMPLS)
  common.validate_encoder_fields(c)
  ck.integer(c, "train.seq_len", 3, positions)
  ck.integer(c, "train.batch_size", 1)
  micro = ck.integer(c, "train.micro_batch_size", 1)
  if c.train.batch_size % micro:
    raise ValueError(f"config.train.batch_size: expected a multiple of "
                     f"train.micro_batch_size={micro}, got "
                     f"{c.train.batch_size}")
  ck.one_of(c, "train.train_only", ("all", "position_embeddings"))
  ck.real(c, "mask.prob", 0, 1, lo_open=True)
  ck.real(c, "mask.mask_frac", 0, 1)
  if ck.real(c, "mask.random_frac", 0, 1) + c.mask.mask_frac > 1 + 1e-9:
    ck._fail("mask.random_frac", f"at most 1 - mask.mask_frac "
             f"({1 - c.mask.mask_frac:.4g})", c.mask.random_frac)
  ck.real(c, "optim.lr", 0)
  ck.integer(c, "optim.warmup_steps", 0)
  ck.integer(c, "optim.decay_steps", 1)
  ck.real(c, "optim.power", 0)
  ck.adamw(c)
  ck.real(c, "optim.grad_clip", 0)
  ck.integer(c, "steps", 1)
  ck.integer(c, "eval.batch_size", 1)
  ck.integer(c, "eval.max_batches", 0)
  ck.integer(c, "eval.mask_seed", 0)
