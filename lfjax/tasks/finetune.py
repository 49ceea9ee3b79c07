"""What the fine-tuning tasks share (classification, extractive QA,
multiple choice, summarization): config fields, the paper's optimizer, the
train step, batched prediction and the trainer. The tokenizer and the model
with a new head are in finetune_model.py; reading files and sampling
batches in finetune_data.py; the commands for a finished run (evaluate,
export) in finetune_commands.py.

A task module describes itself with a Spec (its head, how it reads and
featurizes data, its loss and its metrics); everything else is here, so
every task gets lfjax.loop's exact resume, progress, metrics.jsonl and
checkpoints.

Fine-tuning defaults are the paper's (Appendix D, Table 14): Adam(W), LR
3e-5, batch 32, linear warmup then linear decay to 0; the warmup share and
epochs are per task.
"""

import dataclasses
import json
import math
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
import tqdm

from lfjax import checkpoints
from lfjax import checks as ck
from lfjax import loop
from lfjax import parallel
from lfjax import train_step
from lfjax.models import stack
from lfjax.tasks import common
from lfjax.tasks import finetune_data
from lfjax.tasks import finetune_model

# Written next to an export: the run's config, so `python -m lfjax.evaluate
# --model EXPORT` featurizes data as the run did.
RUN_CONFIG = "lfjax_run.json"
# Fields a resumed fine-tuning run may change: they steer only the steps to
# come (more epochs, the optimizer), or how and where it evaluates and
# logs; never the data, labels, tokenizer, model or seed.
RESUMABLE = ("model.attention_impl", "model.dtype", "model.remat",
             "model.remat_policy", "train.micro_batch_size", "train.epochs",
             "optim.*", "eval.*", "data.valid", "log_every",
             "checkpoint_every", "keep_checkpoints", "eval_every",
             "mesh.*", "tensorboard")
# Length buckets' token counts are rounded up to a multiple of this (and of
# the mesh's seq devices): few distinct shapes to compile.
ROUND = 8


# Config --------------------------------------------------------------------


def base_config(task, *, epochs=15, warmup_fraction=0.1):
  """The fields every fine-tuning task has; its module adds its own."""
  c = ml_collections.ConfigDict()
  common.shared_fields(c, task, log_every=50, checkpoint_every=500,
                       eval_every=0)
  # Local Hugging Face folder with config.json, weights and tokenizer files:
  # a Longformer (or RoBERTa/BERT) to fine-tune, or a fine-tuned one of the
  # same head and labels, which is then loaded whole. Required.
  c.init_from = ""

  c.data = ml_collections.ConfigDict()
  c.data.train = ""  # training file (the task's format). Required.
  c.data.valid = ""  # evaluated during training and at the end; "" = none
  c.data.tokenizer = ""  # tokenizer folder; "" = init_from
  # Training batches by length: the examples sorted by length are cut into
  # this many buckets of near-equal size, each padded only to its longest
  # example (rounded up to 8 and to the mesh's seq devices); a batch holds
  # one bucket's examples, batches of all buckets shuffled together each
  # epoch, and each bucket's shape compiles once. Fewer buckets when a
  # bucket would hold fewer than train.batch_size examples. A bucket's
  # last batch of an epoch is filled up with its own examples again, so
  # an epoch repeats up to a batch per bucket. 1: every batch at the
  # longest example's length, examples drawn uniformly (the paper's
  # sampling, and this default: batches then mix lengths, and results
  # stay those of runs made before buckets existed). 4 or so saves most
  # of the padding when lengths vary (WikiHop, classification).
  c.data.length_buckets = 1

  c.model = ml_collections.ConfigDict()
  # Tokens per sequence, special tokens included; the paper: 4,096. Longer
  # inputs are truncated (QA: split into windows, see qa.py).
  c.model.max_length = 4096
  c.model.attention_impl = "auto"  # windowed_attention impl
  common.encoder_fields(c.model)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # examples per optimizer step (paper: 32)
  # Examples per forward/backward; batch_size / this = accumulation steps.
  c.train.micro_batch_size = 4
  # Passes over the training examples (fractions allowed).
  c.train.epochs = float(epochs)

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 3e-5  # peak (paper, every task)
  # Linear warmup over this share of all steps, then linear decay to 0.
  c.optim.warmup_fraction = warmup_fraction
  c.optim.b1 = 0.9  # Adam's defaults; the paper gives none
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.01  # on matrices only; the paper gives none
  c.optim.grad_clip = 1.0  # global norm; 0 = none; the paper gives none

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 8  # sequences per forward pass
  return c


def tiny(c):
  """CPU-sized settings every fine-tuning task shares (its own tiny() adds
  the rest): a few dozen steps on a tiny checkpoint."""
  c.model.max_length = 128
  c.train.batch_size = 8
  c.train.micro_batch_size = 4
  c.train.epochs = 8.0
  c.optim.lr = 3e-3  # a tiny random model needs a large step to move
  c.log_every = 5
  c.checkpoint_every = 10
  c.eval.batch_size = 8


def validate_base(c, task):
  """Checks the fields base_config adds. Raises ValueError naming one."""
  common.validate_shared(c, task)
  if not isinstance(c.init_from, str) or not c.init_from:
    raise ValueError(
        "config.init_from: expected a local Longformer, RoBERTa or BERT "
        "checkpoint folder (config.json, weights and tokenizer files), got "
        f"{c.init_from!r}; pass --config.init_from=DIR (`python -m "
        "lfjax.make_tiny --to DIR` builds a tiny one for the :tiny config)")
  ck.string(c, "data.train", nonempty=True)
  ck.string(c, "data.valid")
  ck.string(c, "data.tokenizer")
  ck.integer(c, "data.length_buckets", 1)
  ck.integer(c, "model.max_length", 8)
  from lfjax.attention import IMPLS  # every registered implementation
  ck.one_of(c, "model.attention_impl", IMPLS)
  common.validate_encoder_fields(c)
  ck.integer(c, "train.batch_size", 1)
  micro = ck.integer(c, "train.micro_batch_size", 1)
  if c.train.batch_size % micro:
    raise ValueError(f"config.train.batch_size: expected a multiple of "
                     f"train.micro_batch_size={micro}, got "
                     f"{c.train.batch_size}")
  ck.real(c, "train.epochs", 0, lo_open=True)
  ck.real(c, "optim.lr", 0)
  ck.real(c, "optim.warmup_fraction", 0, 1)
  ck.adamw(c)
  ck.real(c, "optim.grad_clip", 0)
  ck.integer(c, "eval.batch_size", 1)


# Tokenizer and model ---------------------------------------------------------


def tokenizer_dir(config):
  return config.data.tokenizer or config.init_from


# Training -----------------------------------------------------------------


def total_steps(config, count):
  """Optimizer steps for train.epochs passes over `count` examples."""
  return max(1, math.ceil(config.train.epochs * count
                          / config.train.batch_size))


def learning_rate(config, total):
  """Linear warmup over warmup_fraction of the steps, then linear decay to
  0 at the last (the paper's fine-tuning schedule)."""
  o = config.optim
  warm = max(1, math.ceil(o.warmup_fraction * total))
  return optax.join_schedules([
      optax.linear_schedule(0.0, o.lr, warm),
      optax.linear_schedule(o.lr, 0.0, max(total - warm, 1))], [warm])


def optimizer(config, total):
  o = config.optim
  # Matrices only (not biases, LayerNorm), with scan_layers too.
  decay = stack.decay_mask
  chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip else []
  return optax.chain(*chain, optax.adamw(
      learning_rate(config, total), b1=o.b1, b2=o.b2, eps=o.eps,
      weight_decay=o.weight_decay, mask=decay))


def make_train_step(graphdef, rest, tx, loss_fn, batch_size, micro, *,
                    shardings=None, batch_shardings=None):
  """One optimizer step on the mean loss over the batch's examples,
  accumulated over micro-batches of `micro` examples (lfjax.train_step).

  loss_fn(model, micro_batch) -> (sum of the examples' losses, {stat: sum})
  with the model in training mode (dropout on, reseeded per micro-batch).
  The step's loss is the mean over examples, unless the stats hold a
  "count" (e.g. summarization's target tokens): then over that.
  shardings, batch_shardings: on a mesh, lfjax.parallel.init_state's
  shardings and finetune_data.batch_shardings(mesh, batch) (see
  lfjax.train_step.make_train_step); None on one device."""
  def sums(model, mb, key):
    nnx.reseed(model, default=key)
    loss_sum, stats = loss_fn(model, mb)
    return {"count": jnp.float32(micro), **stats, "loss_sum": loss_sum}

  return train_step.make_train_step(graphdef, rest, tx, sums,
                                    batch_size=batch_size,
                                    micro_batch_size=micro,
                                    shardings=shardings,
                                    batch_shardings=batch_shardings)


def predict(model, arrays, batch_size, forward, progress=False, mesh=None):
  """forward(model, batch) -> {name: [b, ...]} over every example of
  `arrays` (featurize's) in batches of batch_size (the last one padded
  with copies of example 0 and cut off), as numpy float32 arrays with the
  examples' first axis. mesh: the batches split over it as in training
  (batch_size a multiple of data x fsdp, the token arrays' length of the
  seq devices: lfjax.parallel.check_batch, finetune_data.pad_tokens); the
  outputs replicated, so every process gets them all."""
  model.eval()
  graphdef, state = nnx.split(model)
  call = lambda state, batch: forward(nnx.merge(graphdef, state), batch)
  rows = parallel.local_rows(mesh, batch_size)
  if mesh is None:
    fn, put = jax.jit(call), lambda b: b
  else:
    fn = jax.jit(call, out_shardings=parallel.replicated(mesh))
    put = lambda b: parallel.put_batch(b, mesh, batch_size,
                                       finetune_data.batch_shardings(mesh, b))
  n = finetune_data.count(arrays)
  outs = []
  with parallel.use(mesh):
    for i in tqdm.trange(0, n, batch_size, unit="batch", leave=False,
                         desc="predicting (first batch compiles)",
                         disable=None if progress else True):
      idx = np.arange(i, i + batch_size)
      idx = np.where(idx < n, idx, 0)
      out = fn(state, put(finetune_data.gather(arrays, idx[rows])))
      outs.append(jax.tree.map(lambda x: np.asarray(x, np.float32)[:min(
          batch_size, n - i)], out))
  return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


@dataclasses.dataclass
class Spec:
  """What a fine-tuning task is; lfjax.tasks.finetune does the rest.

  name: config.task. head: lfjax.convert.HEADS key.
  validate(config). resolve(config, train data) -> the config completed
    from the training data (e.g. label names), saved as the run's config.
  read(path, config, split) -> data: the file's examples, checked (errors
    name the file, line and field); split is "train" or "eval".
  featurize(data, tokenizer, config, train) -> (arrays: {name: [rows,
    ...]} of static shapes, one row per sequence the model sees; info
    for score()).
  num_labels(config) and extra_config(config) (label names for config.json)
    build the model.
  loss(model, batch, config) -> (sum of the rows' losses, {stat: sum}).
  forward(model, batch, config) -> {output name: [rows, ...]}.
  score(data, info, outputs, config) -> (metrics {name: float},
    predictions: JSON-able).
  summary(metrics) -> one line for the terminal.
  report(data, arrays, info, tok, config, train) -> [lines]: what
    featurize cut or cannot learn (truncated inputs, answers too long to
    decode), printed before training for the training and eval files and by
    the evaluation command; [] when nothing was cut.
  eval_overrides: ((config field, type, help), ...) that `python -m
    lfjax.evaluate` may override as --<last part of the field> (they must
    change only decoding, never the features).

  A task whose model is not a Longformer head (summarization's LED) sets:
  load(path, config, seed) -> the model of a checkpoint folder, in
    inference mode (None: finetune_model.load_model with `head`).
  check_length(config, model=None): raises ValueError naming the length
    field the model (default: config.init_from's config.json) cannot take
    (None: finetune_model.check_length).
  save(model, tokenizer folder, path): writes the transformers folder of
    an export (None: convert.to_pretrained and the tokenizer files).
  predict(model, arrays, batch_size, config, progress, mesh) -> outputs
    for score() (None: finetune.predict of forward), e.g. generated ids.
  jsonl: predictions are JSON lines, one per example, and every evaluation
    during training writes them beside metrics.jsonl
    (predictions_<valid file>_<step>.jsonl).
  """
  name: str
  head: str
  validate: Callable
  resolve: Callable
  read: Callable
  featurize: Callable
  num_labels: Callable
  extra_config: Callable
  loss: Callable
  forward: Callable
  score: Callable
  summary: Callable
  report: Callable
  eval_overrides: tuple = ()
  load: Callable = None
  check_length: Callable = None
  save: Callable = None
  predict: Callable = None
  jsonl: bool = False


def copy_config(config, data):
  """Spec.resolve of a task whose training data adds nothing to its config
  (a copy: the caller's config is not changed)."""
  del data
  return ml_collections.ConfigDict(config.to_dict())


def no_labels(config):
  """Spec.num_labels of a head without a label count (QA, multiple
  choice)."""
  del config


def no_extra_config(config):
  """Spec.extra_config of a head without label names."""
  del config
  return {}


def length_from_hf(config, d):
  """from_hf for a task whose config needs only the length: model.max_length
  = the positions of a transformers config.json dict d."""
  config.model.max_length = (d["max_position_embeddings"]
                             - d.get("pad_token_id", 1) - 1)
  return config


def check_length(spec, config, model=None):
  (spec.check_length or finetune_model.check_length)(config, model)


def build_model(spec, config):
  """The model a run of config trains (before its checkpoints)."""
  if spec.load is not None:
    model = spec.load(config.init_from, config, config.seed)
    check_length(spec, config, model)
    return model
  model = finetune_model.load_model(
      config.init_from, spec.head, seed=config.seed,
      num_labels=spec.num_labels(config),
      extra_config=spec.extra_config(config),
      attention_impl=config.model.attention_impl,
      **common.encoder_overrides(config.model))
  finetune_model.check_length(config, model)
  return model


def evaluate_data(spec, model, config, data, tok, batch_size=None,
                  progress=False, features=None, mesh=None):
  """(metrics, predictions) of a model on read data; features: the data's
  spec.featurize(..., train=False) when already made (with mesh: their
  tokens padded for it, see predict)."""
  arrays, info = features or spec.featurize(data, tok, config, False)
  size = batch_size or config.eval.batch_size
  if spec.predict is not None:
    out = spec.predict(model, arrays, size, config, progress, mesh)
  else:
    out = predict(model, arrays, size,
                  lambda m, b: spec.forward(m, b, config), progress, mesh)
  metrics, predictions = spec.score(data, info, out, config)
  for k, v in metrics.items():
    common.check_finite_metric(k, v)
  return metrics, predictions


def train_and_evaluate(spec, config, workdir):
  """Fine-tunes (or resumes) in workdir; returns the last logged record."""
  spec.validate(config)  # every field, before anything is written
  check_length(spec, config)
  t = config.train
  mesh = parallel.make_mesh(config.mesh)
  loop.say(f"training on {parallel.describe(mesh)}", flush=True)
  parallel.check_batch(mesh, "train.micro_batch_size", t.micro_batch_size)
  parallel.check_batch(mesh, "eval.batch_size", config.eval.batch_size)
  # Sequences padded to a multiple the seq devices split evenly (nothing
  # on one device: featurize's arrays as they are).
  seq = parallel.seq_shards(mesh)
  workdir = pathlib.Path(workdir)
  tok = finetune_model.load_tokenizer(tokenizer_dir(config), config.init_from)
  train_data = spec.read(config.data.train, config, "train")
  config = spec.resolve(config, train_data)
  arrays, info = spec.featurize(train_data, tok, config, True)
  print_report(spec, config.data.train, train_data, arrays, info, tok,
               config, True)
  arrays = finetune_data.pad_tokens(arrays, seq, tok.pad_token_id)
  valid = (spec.read(config.data.valid, config, "eval")
           if config.data.valid else None)
  if valid is not None:
    # Made once: every evaluation of the run sees the same features.
    valid_arrays, valid_info = spec.featurize(valid, tok, config, False)
    print_report(spec, config.data.valid, valid, valid_arrays, valid_info,
                 tok, config, False)
    valid_features = (finetune_data.pad_tokens(
        valid_arrays, seq, tok.pad_token_id), valid_info)
  count = finetune_data.count(arrays)
  total = total_steps(config, count)
  saved = workdir / "config.json"
  old = json.loads(saved.read_text()) if saved.exists() else None
  # A refused config fails before the model loads; loop.run writes it.
  step = checkpoints.check_config(config, workdir)
  if old is not None and step >= total:
    _say_how_to_evaluate(spec, old, config, workdir)
  model = build_model(spec, config)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
  tx = optimizer(config, total)
  params, opt_state, shardings = parallel.init_state(tx, params, mesh)
  sampler = finetune_data.make_sampler(
      config, arrays, math.lcm(ROUND, seq),
      parallel.local_rows(mesh, t.batch_size))
  first = finetune_data.gather(arrays, [0])
  jitted = make_train_step(
      graphdef, rest, tx, lambda m, b: spec.loss(m, b, config),
      t.batch_size, t.micro_batch_size, shardings=shardings,
      batch_shardings=finetune_data.batch_shardings(mesh, first))
  root = jax.random.fold_in(jax.random.key(config.seed), 3)
  seq_len = arrays["input_ids"].shape[-1]
  # Sequences per example: [1, C, L] for multiple choice.
  rows = int(np.prod(first["input_ids"].shape[1:-1], dtype=int))
  bucketed = isinstance(sampler, finetune_data.BucketSampler)
  tokens = sampler.tokens_per_batch() if bucketed else seq_len * t.batch_size
  phase = loop.Phase(
      0, total, sampler,
      lambda params, opt_state, batch, step: jitted(
          params, opt_state,
          parallel.put_batch(batch, mesh, t.batch_size,
                             finetune_data.batch_shardings(mesh, batch)),
          jax.random.fold_in(root, step)),
      lambda m: dict(train_loss=m["loss"], grad_norm=m["grad_norm"]),
      # Each record says which lengths the batches had (the buckets').
      info=dict(seq_len=seq_len, examples=count,
                **({"bucket_lengths": list(sampler.sizes)} if bucketed
                   else {})),
      tokens_per_batch=int(tokens * rows))

  def evaluate_fn(params, p):
    del p
    if valid is None:
      return {}, "no data.valid to evaluate"
    m = nnx.merge(eval_graphdef, params, rest)
    metrics, predictions = evaluate_data(spec, m, config, valid, tok,
                                         features=valid_features, mesh=mesh)
    if spec.jsonl and jax.process_index() == 0:
      # The sampler's index is the steps done (one phase, from step 0).
      write_predictions(workdir / (
          f"predictions_{pathlib.Path(config.data.valid).stem}_"
          f"{sampler.index}.jsonl"), predictions, True)
    return ({f"eval_{k}": v for k, v in metrics.items()},
            f"{config.data.valid}: {spec.summary(metrics)}")

  with parallel.use(mesh):
    return loop.run(workdir, config, params, opt_state, [phase],
                    learning_rate(config, total), evaluate_fn)


def write_predictions(path, predictions, jsonl):
  """Writes predictions (a list) as JSON, or as JSON lines (one per
  example) when jsonl."""
  path = pathlib.Path(path)
  if jsonl:
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n"
                            for p in predictions))
  else:
    path.write_text(json.dumps(predictions, indent=1))


def print_report(spec, path, data, arrays, info, tok, config, train):
  for line in spec.report(data, arrays, info, tok, config, train):
    print(f"{path}: {line}", flush=True)


def _say_how_to_evaluate(spec, old, config, workdir):
  """A finished run rerun with a new decoding setting trains nothing (the
  config keeps the old value); says how evaluation can use the new one."""
  old, new = checkpoints.flat(old), checkpoints.flat(config.to_dict())
  changed = [name for name, _, _ in spec.eval_overrides
             if old.get(name) != new.get(name)]
  if changed:
    flags = " ".join(f"--{n.rsplit('.', 1)[-1]} {new[n]}" for n in changed)
    print(f"{', '.join(changed)}: decoding only, so evaluation can use the "
          f"new value on the finished run: python -m lfjax.evaluate "
          f"--workdir {workdir} --data FILE {flags}", flush=True)
