"""MLM continued pretraining: the paper's RoBERTa-to-Longformer recipe.

  python -m lfjax.train --config configs/mlm_longformer_base.py \
      --config.init_from /path/to/roberta-base --workdir DIR
  python -m lfjax.export --workdir DIR --to OUT   # for transformers

A RoBERTa/BERT/Longformer checkpoint folder (with its tokenizer files) is
loaded, made long with lfjax.convert.make_long when it has fewer positions
than config.model.max_positions, and trained on local documents with
dynamic masking (batches and masks: lfjax.data.loader, on the host). The
loop, checkpoints and resume are lfjax.loop's, as for the char-LM.

BPC here is the paper's Table 5 quantity made explicit: the masked tokens'
loss in bits divided by the characters those tokens cover (lfjax.data.text
says how characters are divided among tokens). allenai's script logs the
loss / ln 2, i.e. bits per token; that is `bits_per_token` in the metrics.

The run folder's corpus_history.jsonl records the data it trains on (its
data.store or data.sources, and the token store's sha256: the tokenizer
files, the build options and every shard, lfjax.data.store); a resume on
other data says so (as the char-LM's, lfjax.tasks.common.record_corpus).
`evaluate` writes that sha256 as `dataset_sha256` and notes (stderr) when
the evaluated checkpoint was trained on other data.
"""

import math
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
import tqdm

from lfjax import checkpoints
from lfjax import cli
from lfjax import convert
from lfjax import loop
from lfjax import parallel
from lfjax import train_step
from lfjax.data import chars as chars_lib
from lfjax.data import loader
from lfjax.data import store
from lfjax.models import stack
from lfjax.tasks import common
from lfjax.tasks import mlm_defaults

_LN2 = math.log(2)
KIND = "an MLM"
# Fields a resumed run may change: they steer only the steps still to come
# (a longer `steps`: lfjax.checkpoints checks it against the checkpoint),
# or where files are read and logged; never the data, tokenizer or model.
RESUMABLE = ("data.cache_dir", "data.workers", "model.attention_impl",
             "model.dtype", "model.remat", "model.remat_policy",
             "train.micro_batch_size", "mask.*", "optim.*", "steps", "eval.*",
             "log_every", "checkpoint_every", "keep_checkpoints",
             "eval_every", "mesh.*", "tensorboard")
validate = mlm_defaults.validate


def tokenizer_dir(config):
  return config.data.tokenizer or config.init_from


def load_corpus(config):
  """The run's text.TokenCorpus: the token store data.store, or the one of
  data.sources under data.cache_dir (built on first use, by data.workers
  processes; reused, without reading a document, while the sources' files
  keep their sizes and times). Shards are checked on first read.

  Raises:
    ValueError: neither or both of data.store and data.sources; a store
      made with another tokenizer than the run's; store.StoreError (a
      ValueError) for a damaged or unfinished store.
    FileNotFoundError: a missing source or tokenizer.
  """
  d = config.data
  tok_dir = tokenizer_dir(config)
  given = d.get("store", "")  # runs from before data.store have none
  if given:
    if d.sources:
      raise ValueError("data.store: give data.store (a built token store) "
                       "or data.sources (documents), not both")
    m = store.read_manifest(given)
    if os.path.isdir(tok_dir) and (m["tokenizer"]["sha256"]
                                   != store.tokenizer_sha256(tok_dir)):
      raise ValueError(f"data.store: {given} was built with another "
                       f"tokenizer than {tok_dir}'s (data.tokenizer, "
                       "else init_from); rebuild it with that one")
    return store.open(given)
  if not d.sources:
    raise ValueError("data.sources: expected local text files or folders "
                     "(one document per file) or 'pystdlib', or data.store "
                     "(a built token store), got none")
  path = store.for_sources(
      tuple(d.sources), tok_dir,
      d.cache_dir or chars_lib.default_data_dir() / "mlm", glob=d.glob,
      text_field=d.get("text_field", "text"),
      valid_fraction=d.valid_fraction, max_documents=d.max_documents,
      workers=d.get("workers", 0),
      shard_tokens=d.get("shard_tokens", 1 << 24))
  return store.open(path)


def corpus_name(config):
  """The data's name in records: data.store, else its data.sources,
  comma-separated."""
  if config.data.get("store", ""):
    return str(config.data.store)
  return ",".join(str(s) for s in config.data.sources)


def load_model(config, announce=False):
  """The checkpoint of config.init_from as a long LongformerForMaskedLM;
  announce: print when it is made longer (training does).

  Raises:
    ValueError: no init_from, or fields that do not fit the checkpoint.
  """
  if not config.init_from:
    raise ValueError("config.init_from: expected a local RoBERTa, BERT or "
                     "Longformer checkpoint folder (config.json, weights and "
                     "tokenizer files), got ''; pass --config.init_from=DIR "
                     "(`python -m lfjax.make_tiny --to DIR` builds a tiny "
                     "one for the :tiny config)")
  m = config.model
  model = convert.from_pretrained(
      config.init_from, head="masked_lm", seed=config.seed,
      arg="config.init_from",
      attention_impl=m.attention_impl, max_global=1 if m.global_bos else None,
      **common.encoder_overrides(m))
  cfg = model.cfg
  have = cfg.max_position_embeddings - cfg.pad_token_id - 1
  if have < m.max_positions:
    # A Longformer keeps its trained windows; model.attention_window is the
    # window a RoBERTa or BERT gets.
    full = convert.full_attention(cfg)
    if announce:
      windows = (f"model.attention_window={m.attention_window}" if full else
                 f"its own windows {sorted(set(cfg.windows()))}")
      print(f"{config.init_from} has {have} positions: making it long "
            f"(model.max_positions={m.max_positions}, {windows}, new "
            f"position embeddings: {m.position_init})", flush=True)
    model = convert.make_long(model, m.max_positions,
                              m.attention_window if full else None,
                              seed=config.seed, positions=m.position_init)
  elif m.position_init != "copy":
    raise ValueError(f"model.position_init: {config.init_from} already has "
                     f"{have} positions (>= model.max_positions="
                     f"{m.max_positions}); nothing new to initialise with "
                     f"{m.position_init!r}")
  if config.train.seq_len > m.max_positions:
    raise ValueError(f"train.seq_len: expected at most model.max_positions="
                     f"{m.max_positions}, got {config.train.seq_len}")
  return model


def learning_rate(config):
  """Linear warmup, then polynomial decay to 0 at decay_steps (fairseq's
  polynomial_decay, as the paper's RoBERTa recipe)."""
  o = config.optim
  return optax.join_schedules([
      optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1)),
      optax.polynomial_schedule(o.lr, 0.0, o.power,
                                max(o.decay_steps - o.warmup_steps, 1))],
      [max(o.warmup_steps, 1)])


def _trainable(path):
  return any(getattr(k, "key", None) == "position_embeddings" for k in path)


def optimizer(config, params):
  o = config.optim
  only = config.train.train_only
  if only not in ("all", "position_embeddings"):
    raise ValueError(f"train.train_only: expected 'all' or "
                     f"'position_embeddings', got {only!r}")
  # Matrices only (not biases, LayerNorm), with scan_layers too.
  decay = stack.decay_mask
  adam = optax.adamw(learning_rate(config), b1=o.b1, b2=o.b2, eps=o.eps,
                     weight_decay=o.weight_decay, mask=decay)
  chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip else []
  if only == "all":
    return optax.chain(*chain, adam)
  labels = jax.tree_util.tree_map_with_path(
      lambda path, _: "train" if _trainable(path) else "frozen", params)
  return optax.chain(*chain, optax.multi_transform(
      {"train": adam, "frozen": optax.set_to_zero()}, labels))


def _global_mask(config, ids_BxN):
  if not config.model.global_bos:
    return None
  return jnp.zeros(ids_BxN.shape, bool).at[:, 0].set(True)


def masked_loss(model, config, batch):
  """Sum of the masked tokens' losses (nats), their count and characters.

  batch: lfjax.data.loader's, masked on the host: "inputs" (masked),
  "input_ids" (the targets), "attention_mask", "chars": int32 [B, N];
  "positions": int32 [B, K], "valid": bool [B, K] (K =
  loader.max_masked(N, config.mask.prob)). Returns float32 scalars
  {"loss_sum", "count", "chars"}.

  The LM head runs only at the masked positions (a static number per
  sequence), not at all N: at RoBERTa's 50K vocabulary that is most of
  the head's cost."""
  ids = jnp.asarray(batch["input_ids"])
  pos_BxK = jnp.asarray(batch["positions"])
  logits_BxKxV = model(jnp.asarray(batch["inputs"]),
                       attention_mask=jnp.asarray(batch["attention_mask"]),
                       global_attention_mask=_global_mask(config, ids),
                       positions=pos_BxK).logits
  targets_BxK = jnp.take_along_axis(ids, pos_BxK, axis=1)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxKxV.astype(jnp.float32), targets_BxK)
  w = jnp.asarray(batch["valid"]).astype(jnp.float32)
  owned = jnp.take_along_axis(jnp.asarray(batch["chars"], jnp.float32),
                              pos_BxK, axis=1)
  return {"loss_sum": jnp.sum(ce * w), "count": jnp.sum(w),
          "chars": jnp.sum(w * owned)}


def batch_shardings(mesh):
  """How a batch of lfjax.data.loader lies on `mesh` (None: one device):
  [B, N] token arrays over data x fsdp and seq, [B, K] positions and
  valid over data x fsdp only (K need not divide by seq)."""
  if mesh is None:
    return None
  tokens = parallel.batch_sharding(mesh)
  masked = parallel.batch_sharding(mesh, 2, seq_axis=None)
  return {"input_ids": tokens, "attention_mask": tokens, "chars": tokens,
          "inputs": tokens, "positions": masked, "valid": masked}


def make_train_step(graphdef, rest, tx, config, shardings=None):
  """One optimizer step over batch_size sequences (masked on the host,
  masked_loss), accumulated over micro-batches (lfjax.train_step); the
  loss is the mean over all the batch's masked tokens; the step's key
  seeds dropout only. shardings: as lfjax.train_step.make_train_step."""
  def loss_fn(model, mb, key):
    nnx.reseed(model, default=key)
    return masked_loss(model, config, mb)

  t = config.train
  return train_step.make_train_step(
      graphdef, rest, tx, loss_fn, batch_size=t.batch_size,
      micro_batch_size=t.micro_batch_size, shardings=shardings,
      batch_shardings=None if shardings is None else batch_shardings(
          shardings[2]))


def masking(config):
  """config.mask as the loader's Masking."""
  m = config.mask
  return loader.Masking(prob=m.prob, mask_frac=m.mask_frac,
                        random_frac=m.random_frac)


def summarize(m):
  n = max(m["count"], 1.0)
  return dict(train_loss=m["loss"],
              train_bpc=m["loss_sum"] / _LN2 / max(m["chars"], 1.0),
              train_bits_per_token=m["loss_sum"] / _LN2 / n,
              grad_norm=m["grad_norm"], masked_tokens=int(m["count"]))


def evaluate_model(model, config, corpus, *, split="valid", seq_len=None,
                   batch_size=None, max_batches=None, progress=False):
  """MLM loss / BPC over the split's packed sequences, in order, with fixed
  masks (eval.mask_seed: sequence j's masks are the same at every step, in
  every run and at any batch_size), so runs and steps are compared on the
  same tokens (lfjax.data.loader.eval_dataset).
  Raises FloatingPointError when the loss is NaN/Inf."""
  seq_len = config.train.seq_len if seq_len is None else seq_len
  batch_size = config.eval.batch_size if batch_size is None else batch_size
  max_batches = config.eval.max_batches if max_batches is None else max_batches
  model.eval()
  graphdef, state = nnx.split(model)

  @jax.jit
  def sums(state, batch):
    return masked_loss(nnx.merge(graphdef, state), config, batch)

  batches = loader.eval_dataset(
      corpus, split, seq_len=seq_len, batch_size=batch_size,
      mask_seed=config.eval.mask_seed, masking=masking(config),
      max_batches=max_batches)
  total = {"loss_sum": 0.0, "count": 0.0, "chars": 0.0}
  # progress: a bar on stderr, only on a terminal (the CLI asks for it).
  for batch in tqdm.tqdm(
      batches.to_iter_dataset(loader.read_options(1, 2)),
      total=len(batches), unit="batch", leave=False,
      desc=f"{split} (first batch compiles)",
      disable=None if progress else True):
    s = sums(state, batch)
    total = {k: total[k] + float(s[k]) for k in total}
  n = max(total["count"], 1.0)
  common.check_finite_metric(f"{split} MLM loss", total["loss_sum"])
  return {"eval_loss": total["loss_sum"] / n,
          "eval_bpc": total["loss_sum"] / _LN2 / max(total["chars"], 1.0),
          "eval_bits_per_token": total["loss_sum"] / _LN2 / n,
          "eval_masked_tokens": int(total["count"]),
          "eval_chars": int(total["chars"])}


def train_and_evaluate(config, workdir):
  """Trains (or resumes) the MLM run in workdir; returns the last record."""
  validate(config)  # every field, before anything is written
  mesh = parallel.make_mesh(config.mesh)
  loop.say(f"training on {parallel.describe(mesh)}", flush=True)
  parallel.check_batch(mesh, "train.micro_batch_size",
                       config.train.micro_batch_size)
  parallel.check_seq(mesh, "train.seq_len", config.train.seq_len)
  workdir = pathlib.Path(workdir)
  # A refused config fails before the data loads; loop.run writes it.
  start = checkpoints.check_config(config, workdir)
  done = start >= config.steps
  corpus = load_corpus(config)
  # A finished run only says so (lfjax.loop): no "making it long" first.
  model = load_model(config, announce=not done)
  if model.cfg.vocab_size < corpus.vocab_size:
    raise ValueError(f"data.tokenizer: {corpus.vocab_size} tokens, more than "
                     f"the model's vocab_size={model.cfg.vocab_size}")
  # The batches pad with the tokenizer's pad id; the model counts positions
  # past its own (RoBERTa's position ids): they must agree.
  # (The sequences' frame is the tokenizer's cls/sep or bos/eos, which a
  # BERT's config does not name: not compared.)
  if corpus.pad_id != model.cfg.pad_token_id:
    raise ValueError(
        f"data.tokenizer: the tokenizer's pad_token_id is {corpus.pad_id}, "
        f"the model's {model.cfg.pad_token_id}: not this model's tokenizer; "
        f"use the checkpoint's own")
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()  # eval's graph: dropout off
  eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
  tx = optimizer(config, params)
  params, opt_state, shardings = parallel.init_state(tx, params, mesh)
  t = config.train
  jitted = make_train_step(graphdef, rest, tx, config, shardings)
  # Dropout's key per step; data order and masks come from the loader.
  root = jax.random.fold_in(jax.random.key(config.seed), 2)
  sampler = loader.train_sampler(
      corpus, seq_len=t.seq_len, batch_size=t.batch_size, seed=config.seed,
      masking=masking(config), rows=parallel.local_rows(mesh, t.batch_size))
  put = batch_shardings(mesh)
  phase = loop.Phase(
      0, config.steps, sampler,
      lambda params, opt_state, batch, step: jitted(
          params, opt_state,
          parallel.put_batch(batch, mesh, t.batch_size, put),
          jax.random.fold_in(root, step)),
      summarize,
      info=dict(seq_len=t.seq_len, window=model.cfg.window_summary()),
      tokens_per_batch=t.seq_len * t.batch_size)

  def evaluate_fn(params, p):
    r = evaluate_model(nnx.merge(eval_graphdef, params, rest), config, corpus)
    return r, (f"valid loss {r['eval_loss']:.4f} bpc {r['eval_bpc']:.4f} "
               f"({r['eval_masked_tokens']:,} masked tokens, "
               f"{r['eval_chars']:,} chars)")

  try:
    with parallel.use(mesh), checkpoints.undo_failed_start(
        workdir, keep=(common.CORPUS_HISTORY,)):
      if not done:  # a finished run trains on no data
        common.record_corpus(workdir, corpus_name(config), corpus.sha256,
                             start)
      return loop.run(workdir, config, params, opt_state, [phase],
                      learning_rate(config), evaluate_fn)
  finally:
    sampler.close()  # its prefetch thread


def next_steps(workdir):
  return [f"python -m lfjax.evaluate --workdir {workdir}",
          f"python -m lfjax.export --workdir {workdir} --to DIR"]


def load_trained(workdir, step=None, flag=None):
  """(config, trained LongformerForMaskedLM, step) of an MLM run; flag: the
  command-line flag step came from (see checkpoints.restore_params)."""
  config = checkpoints.read_config(workdir, "mlm")
  model = load_model(config)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, _, step = checkpoints.restore_params(workdir, params, step, flag)
  model = nnx.merge(graphdef, params, rest)
  model.eval()
  return config, model, step


def export(workdir, path, step=None):
  """Writes a run's model and tokenizer for transformers'
  LongformerForMaskedLM.from_pretrained; returns the step exported."""
  config, model, step = load_trained(workdir, step, flag="--checkpoint")
  if pathlib.Path(path).resolve() == pathlib.Path(config.init_from).resolve():
    raise ValueError("to: expected a folder other than init_from (the "
                     "source checkpoint is never overwritten)")
  convert.to_pretrained(model, path)
  convert.copy_tokenizer(tokenizer_dir(config), path,
                         config.model.max_positions)
  # The run's config travels with the export, so that `evaluate --model
  # EXPORT` defaults to the run's held-out split and protocol.
  (pathlib.Path(path) / RUN_CONFIG).write_text(config.to_json(indent=1))
  return step


RUN_CONFIG = "lfjax_mlm_run.json"


def _data_record(d):
  """What names the evaluated data in a result: the store, else the
  sources and the options that pick their held-out split."""
  if d.get("store", ""):  # its split was fixed when it was built
    return {"store": str(d.store)}
  return {"sources": list(d.sources), "valid_fraction": d.valid_fraction,
          "max_documents": d.max_documents, "glob": d.glob}


def evaluate_cli(workdir=None, init_from=None, sources=(), step=None,
                 seq_len=None, max_batches=None, batch_size=None,
                 valid_fraction=None, max_documents=None, glob=None,
                 progress=False, store_path=None):
  """BPC of a run's checkpoint (workdir) or of a Hugging Face checkpoint
  folder as it is (init_from: RoBERTa at its own length, or a Longformer),
  on the run's held-out split, on `sources`, or on the valid split of
  `store_path` (a token store built by `python -m lfjax.data build` with this
  model's tokenizer). Returns the record (with `written_to`, the JSON file
  it was saved as, for a workdir).

  Every default comes from one config, so both ways agree on the same
  model: the run's (workdir, or the run an `export` folder came from, saved
  there as lfjax_mlm_run.json), else lfjax.tasks.mlm_defaults.base_config().

  Raises:
    ValueError: neither or both of workdir and init_from, no sources nor
      store; a store built with another tokenizer (store.StoreError for a
      damaged or unfinished one).
    cli.UsageError: both sources and store_path; valid_fraction, max_documents
      or glob with a store (its split was fixed when it was built).
  """
  import json
  if (workdir is None) == (init_from is None):
    raise ValueError("expected exactly one of --workdir and --model")
  if sources and store_path:
    raise cli.UsageError("--store: give --store (a built token store) or "
                         "--sources (documents), not both")
  if workdir is not None:
    config, model, step = load_trained(workdir, step, flag="--checkpoint")
  else:
    saved = pathlib.Path(init_from) / RUN_CONFIG
    if saved.exists():
      config = ml_collections.ConfigDict(json.loads(saved.read_text()))
      config.data.tokenizer = ""  # the export's own copy
    else:
      config = mlm_defaults.base_config()
    config.init_from = str(init_from)
    model = convert.from_pretrained(init_from, head="masked_lm")
    have = model.cfg.max_position_embeddings - model.cfg.pad_token_id - 1
    config.model.max_positions = have
    config.train.seq_len = min(config.train.seq_len, have) if saved.exists(
    ) else have
  if sources:
    config.data.sources = tuple(sources)
    config.data.store = ""  # documents given: not the run's store
  if store_path:
    config.data.store = str(store_path)
    config.data.sources = ()  # a store given: not the run's documents
  for field, value in (("valid_fraction", valid_fraction),
                       ("max_documents", max_documents), ("glob", glob)):
    if value is not None:
      if config.data.get("store", ""):
        raise cli.UsageError(
            f"--{field}: has no effect on the token store "
            f"{config.data.store} (its split was fixed when it was built); "
            "give --sources to evaluate on documents")
      config.data[field] = value
  if not config.data.sources and not config.data.get("store"):
    raise ValueError("--sources: expected documents to evaluate on, or "
                     "--store STORE (a built token store); the run's data "
                     "are used with --workdir")
  have = config.model.max_positions
  if seq_len is not None and seq_len > have:
    raise cli.UsageError(f"--seq_len: expected at most the model's "
                         f"{have} positions, got {seq_len}")
  corpus = load_corpus(config)
  if workdir is not None:
    common.note_other_data(workdir, step, corpus_name(config), corpus.sha256,
                           "valid")
  r = evaluate_model(model, config, corpus, seq_len=seq_len,
                     batch_size=batch_size, max_batches=max_batches,
                     progress=progress)
  data = _data_record(config.data)
  settings = dict(
      max_batches=(config.eval.max_batches if max_batches is None
                   else max_batches),
      batch_size=config.eval.batch_size if batch_size is None else batch_size,
      data=data, dataset_sha256=corpus.sha256)
  r = dict(r, seq_len=config.train.seq_len if seq_len is None else seq_len,
           step=step, checkpoint=str(workdir or init_from), **settings)
  if workdir is not None:
    saved = checkpoints.read_config(workdir, "mlm")
    defaults = dict(max_batches=saved.eval.max_batches,
                    batch_size=saved.eval.batch_size,
                    data=_data_record(saved.data),
                    dataset_sha256=common.trained_sha256(
                        workdir, step, corpus.sha256))
    out = common.result_path(
        workdir, f"eval_valid_{step}_{r['seq_len']}", settings, defaults,
        dict(max_batches="batches", batch_size="bs", data="data",
             dataset_sha256="sha"))
    out.write_text(json.dumps(r, indent=1))
    r = dict(r, written_to=str(out))
  return r


def evaluate_parser():
  """The flags of `python -m lfjax.evaluate` for an MLM run or checkpoint."""
  from lfjax import cli
  v = cli.ArgumentParser(
      prog="python -m lfjax.evaluate",
      description="Held-out MLM loss and BPC of a run or a checkpoint folder. "
      "Defaults come from the run's config (--workdir, or the run an export "
      "came from), else from lfjax/tasks/mlm_defaults.py.")
  v.add_argument("--workdir", default=None, help="an MLM run folder")
  v.add_argument("--model", dest="init_from", default=None,
                 help="or a Hugging Face checkpoint folder, as it is")
  v.add_argument("--sources", nargs="*", default=(),
                 help="documents (default: the run's data; the kinds of "
                 "`python -m lfjax.data build --sources`)")
  v.add_argument("--store", default=None,
                 help="or a token store built by `python -m lfjax.data "
                 "build` with the model's tokenizer: its valid split")
  v.add_argument("--checkpoint", type=int, default=None,
                 help="a saved step of --workdir (default: the newest)")
  v.add_argument("--seq_len", type=int, default=None,
                 help="default: the run's train.seq_len, else the "
                 "checkpoint's positions")
  v.add_argument("--max_batches", type=int, default=None,
                 help="0 = the whole held-out split (default: "
                 "eval.max_batches)")
  v.add_argument("--batch_size", type=int, default=None,
                 help="default: eval.batch_size")
  v.add_argument("--valid_fraction", type=float, default=None,
                 help="held-out share of the documents (default: "
                 "data.valid_fraction)")
  v.add_argument("--max_documents", type=int, default=None,
                 help="default: data.max_documents")
  v.add_argument("--glob", default=None, help="default: data.glob")
  return v


def evaluate_main(argv):
  """`python -m lfjax.evaluate --workdir RUN | --model DIR [--sources
  DOCS ... | --store STORE] ...` for MLM:
  prints the held-out loss, BPC and bits per token; argv excludes the
  program name. Raises cli.UsageError for bad flags."""
  from lfjax import cli
  args = evaluate_parser().parse_args(argv)
  cli.at_least("--checkpoint", args.checkpoint, 0)
  cli.at_least("--seq_len", args.seq_len, 1)
  cli.at_least("--max_batches", args.max_batches, 0, " (0 = all)")
  cli.at_least("--batch_size", args.batch_size, 1)
  cli.check_flag("--valid_fraction", args.valid_fraction,
                 lambda v: 0 < v < 1, "a number in (0, 1)")
  cli.at_least("--max_documents", args.max_documents, 0, " (0 = all)")
  if args.init_from is not None and not pathlib.Path(args.init_from).is_dir():
    raise cli.UsageError(f"--model: expected a local checkpoint directory, "
                         f"got {args.init_from!r}: no such directory")
  checkpoints.quiet_orbax()
  r = evaluate_cli(args.workdir, args.init_from, args.sources,
                   args.checkpoint, args.seq_len, args.max_batches,
                   args.batch_size, args.valid_fraction, args.max_documents,
                   args.glob, progress=True, store_path=args.store)
  where = r["checkpoint"] + ("" if r["step"] is None
                             else f" (step {r['step']})")
  print(f"{where}, seq {r['seq_len']}: loss "
        f"{r['eval_loss']:.4f}, bpc {r['eval_bpc']:.4f}, bits/token "
        f"{r['eval_bits_per_token']:.4f} over {r['eval_masked_tokens']:,} "
        f"masked tokens ({r['eval_chars']:,} chars)"
        + (f"; written to {r['written_to']}" if "written_to" in r else ""))
