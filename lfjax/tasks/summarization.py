"""Abstractive summarization (arXiv style) by fine-tuning LED, the
Longformer-Encoder-Decoder (paper Section 7): teacher forcing with label
smoothing, evaluation by generation (beam search) and ROUGE.

  python -m lfjax.train --config configs/summarization_led.py \
      --config.init_from DIR --config.data.train train.jsonl \
      --config.data.valid dev.jsonl --workdir RUN
  python -m lfjax.evaluate --workdir RUN --data test.jsonl  # ROUGE
  python -m lfjax.export --workdir RUN --to OUT   # transformers loads it

Data: JSON lines {"document": "...", "summary": "..."} (.jsonl, or any
other name), .jsonl.gz, a .parquet file or a `datasets` folder saved with
save_to_disk (lfjax.data.sources.read_records); data.document_field and
data.summary_field name the two fields (arXiv's `scientific_papers`:
"article" and "abstract").

Features: the document as the checkpoint's tokenizer encodes it (<s> ...
</s>), cut at model.max_length tokens, global attention on its first
token (<s>: the paper's LED recipe, the authors' scripts/summarization.py
and the LED docs); labels: the summary as the tokenizer encodes a text
(BART's and LED's: <s> summary </s>), cut at model.max_target_length
tokens (the cut keeps </s> last), as transformers' run_summarization.py
makes them; decoder inputs: the labels shifted right behind
decoder_start_token_id (transformers' shift_tokens_right). Cut documents
and summaries are reported before training and evaluation.

Loss: token-level cross-entropy with label smoothing, transformers'
Trainer label_smoothing_factor (train.label_smoothing = eps): per target
token (1 - eps) * NLL + eps * the mean over the vocabulary of -log p,
i.e. cross-entropy against (1 - eps) one-hot + eps / V
(optax.smooth_labels), averaged over the batch's target tokens (padding
ignored). Metrics: the summaries generated with the eval.* settings
(transformers' generate semantics), decoded without special tokens, scored
against the references by the rouge-score package: ROUGE-1, -2, -L and
-Lsum F-measures (Lsum over sentences split at newlines, rouge-score's
rule), averaged over the examples, times 100; gen_len is the mean number
of generated tokens (special tokens excluded).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lfjax import checks as ck
from lfjax.tasks import finetune
from lfjax.tasks import finetune_commands
from lfjax.tasks import finetune_data
from lfjax.tasks import summarization_model as sm

KIND = "a summarizer"
# Generation settings only steer evaluation.
RESUMABLE = finetune.RESUMABLE
HEAD = "conditional_generation"
# labels' padding, ignored by the loss (transformers' ignore_index).
IGNORE = -100
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def base_config():
  # The authors' scripts/summarization.py: LR 3e-5, 5 epochs, batch 16,
  # Adam, linear warmup (1,000 steps: ~2% of arXiv's 5 epochs) and decay.
  c = finetune.base_config("summarization", epochs=5, warmup_fraction=0.02)
  c.train.batch_size = 16
  c.train.micro_batch_size = 1  # a 16K-token document per forward
  # Source and target fields of each record.
  c.data.document_field = "document"
  c.data.summary_field = "summary"
  # Document tokens (<s> and </s> included); the paper's best: 16,384
  # (LED's encoder positions). Longer documents are cut.
  c.model.max_length = 16384
  # Summary tokens the decoder is trained on (<s> and </s> included; the
  # authors' max_output_len); longer summaries are cut.
  c.model.max_target_length = 256
  # Label smoothing eps (transformers' label_smoothing_factor; module
  # doc). 0: plain cross-entropy, the authors' default.
  c.train.label_smoothing = 0.0
  # Generation for evaluation, transformers' generate() arguments and
  # meanings. The paper: beam search (size not given); these settings are
  # used, not the checkpoint's generation_config.
  c.eval.num_beams = 4  # 1: greedy
  c.eval.max_length = 256  # tokens generated, decoder start included
  c.eval.min_length = 0  # EOS is blocked before this many tokens
  c.eval.length_penalty = 1.0  # beam score = logprob sum / length ** this
  c.eval.no_repeat_ngram_size = 0  # no n-gram of this size twice; 0: off
  # Beam search's early_stopping: "true" | "false" | "never" (transformers'
  # True / False / "never"; a string, as the config types its fields).
  c.eval.early_stopping = "false"
  # ROUGE with Porter stemming (rouge-score's use_stemmer, as
  # transformers' summarization examples).
  c.eval.rouge_stemmer = True
  return c


def tiny(c):
  finetune.tiny(c)
  c.model.max_length = 128
  c.model.max_target_length = 32
  c.train.label_smoothing = 0.1
  c.eval.num_beams = 2
  c.eval.max_length = 16


def validate(config):
  """Checks every field. Raises ValueError naming the field."""
  finetune.validate_base(config, "summarization")
  doc = ck.string(config, "data.document_field", nonempty=True)
  if ck.string(config, "data.summary_field", nonempty=True) == doc:
    ck._fail("data.summary_field", "a field other than data.document_field",
             doc)
  ck.integer(config, "model.max_target_length", 2)
  ck.real(config, "train.label_smoothing", 0, 1, hi_open=True)
  ck.integer(config, "eval.num_beams", 1)
  ck.integer(config, "eval.max_length", 2)
  ck.integer(config, "eval.min_length", 0, config.eval.max_length)
  ck.real(config, "eval.length_penalty")
  ck.integer(config, "eval.no_repeat_ngram_size", 0)
  ck.one_of(config, "eval.early_stopping", ("true", "false", "never"))
  ck.boolean(config, "eval.rouge_stemmer")


# Data ---------------------------------------------------------------------


@dataclasses.dataclass
class Data:
  path: str
  lines: list  # line (row) number of each example
  documents: list
  summaries: list


def read(path, config, split):
  """A data file's (document, summary) pairs (module doc). Raises
  ValueError naming the file, line (a table's row) and field of the first
  record without a non-empty string in either field."""
  del split
  d = config.data
  data = Data(str(path), [], [], [])
  for line, obj in finetune_data.read_records(path):
    data.documents.append(finetune_data.field(path, line, obj,
                                              d.document_field, str))
    data.summaries.append(finetune_data.field(path, line, obj,
                                              d.summary_field, str))
    data.lines.append(line)
  return data


def shift_tokens_right(labels, pad_token_id, decoder_start_token_id):
  """transformers' shift_tokens_right in numpy: [n, T] labels -> decoder
  inputs [n, T] int32, decoder_start_token_id then labels[:, :-1], with
  IGNORE (-100) replaced by pad_token_id."""
  labels = np.asarray(labels)
  out = np.empty(labels.shape, np.int32)
  out[:, 0] = decoder_start_token_id
  out[:, 1:] = labels[:, :-1]
  out[out == IGNORE] = pad_token_id
  return out


@dataclasses.dataclass
class Info:
  """What featurize cut, and what score needs to decode."""
  cut_documents: int
  cut_summaries: int
  tok: object


def _pad(rows, length, value):
  out = np.full((len(rows), length), value, np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


def featurize(data, tok, config, train):
  """({"input_ids", "attention_mask": [n, L] int32, "labels",
  "decoder_input_ids": [n, T] int32}, Info), L and T the longest encoded
  document and summary (at most model.max_length / max_target_length,
  rounded up to 8); labels padded with -100 (ignored by the loss),
  decoder_input_ids = shift_tokens_right(labels, pad, decoder start)."""
  del train
  m = config.model
  docs = tok(data.documents, truncation=True, max_length=m.max_length,
             return_attention_mask=False)["input_ids"]
  sums = tok(data.summaries, truncation=True, max_length=m.max_target_length,
             return_attention_mask=False)["input_ids"]
  full_docs = tok(data.documents, return_attention_mask=False,
                  verbose=False)["input_ids"]
  full_sums = tok(data.summaries, return_attention_mask=False,
                  verbose=False)["input_ids"]
  length = min(m.max_length, finetune_data.round_up(max(map(len, docs))))
  target = min(m.max_target_length,
               finetune_data.round_up(max(map(len, sums))))
  ids = _pad(docs, length, tok.pad_token_id)
  mask = _pad([[1] * len(r) for r in docs], length, 0)
  labels = _pad(sums, target, IGNORE)
  start = sm.decoder_start_token_id(config)
  arrays = {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "decoder_input_ids": shift_tokens_right(labels, tok.pad_token_id,
                                                    start)}
  info = Info(sum(len(f) > m.max_length for f in full_docs),
              sum(len(f) > m.max_target_length for f in full_sums), tok)
  return arrays, info


def report(data, arrays, info, tok, config, train):
  """Cut documents and summaries (finetune.Spec.report)."""
  del data, tok, train
  n = len(arrays["input_ids"])
  lines = []
  if info.cut_documents:
    lines.append(f"{info.cut_documents} of {n} documents truncated to "
                 f"model.max_length={config.model.max_length} tokens")
  if info.cut_summaries:
    lines.append(f"{info.cut_summaries} of {n} summaries truncated to "
                 f"model.max_target_length={config.model.max_target_length} "
                 "tokens")
  return lines


# Loss ----------------------------------------------------------------------


def global_mask(input_ids):
  """[B, S] bool: global attention on the first token (<s>) only."""
  return jnp.zeros(input_ids.shape, bool).at[:, 0].set(True)


def _logits(model, batch):
  ids = batch["input_ids"]
  return model(ids, attention_mask=batch["attention_mask"],
               global_attention_mask=global_mask(ids),
               decoder_input_ids=batch["decoder_input_ids"],
               max_global=1).logits.astype(jnp.float32)


def smoothed_token_losses(logits_BxTxV, labels_BxT, eps):
  """[B, T] float32: each target token's cross-entropy against (1 - eps)
  one-hot + eps / V (transformers' LabelSmoother per token); 0 where the
  label is IGNORE."""
  keep = labels_BxT != IGNORE
  onehot = jax.nn.one_hot(jnp.where(keep, labels_BxT, 0),
                          logits_BxTxV.shape[-1], dtype=jnp.float32)
  per = optax.softmax_cross_entropy(logits_BxTxV.astype(jnp.float32),
                                    optax.smooth_labels(onehot, eps))
  return jnp.where(keep, per, 0.0)


def loss(model, batch, config):
  """(sum of the batch's smoothed token losses, {"count": target tokens,
  "nll_sum": their plain NLL}): the train step averages over tokens."""
  logits = _logits(model, batch)
  labels = batch["labels"]
  per = smoothed_token_losses(logits, labels, config.train.label_smoothing)
  nll = smoothed_token_losses(logits, labels, 0.0)
  count = jnp.sum((labels != IGNORE).astype(jnp.float32))
  return jnp.sum(per), {"count": count, "nll_sum": jnp.sum(nll)}


def forward(model, batch, config):
  """Teacher-forced logits {"logits": [B, T, V] float32}."""
  del config
  return {"logits": _logits(model, batch)}


# Scores --------------------------------------------------------------------


def rouge(predictions, references, stemmer=True):
  """{rouge1, rouge2, rougeL, rougeLsum: mean F-measure x 100} of
  predicted against reference texts, by the rouge-score package
  (rougeLsum splits sentences at newlines)."""
  from lfjax import extras
  rouge_scorer = extras.require("rouge_score.rouge_scorer",
                                "summarization: ROUGE")
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stemmer)
  sums = dict.fromkeys(ROUGE_TYPES, 0.0)
  for pred, ref in zip(predictions, references, strict=True):
    scores = scorer.score(ref, pred)  # (target, prediction)
    for k in ROUGE_TYPES:
      sums[k] += scores[k].fmeasure
  n = max(len(predictions), 1)
  return {k: 100.0 * v / n for k, v in sums.items()}


def score(data, info, out, config):
  """ROUGE of the generated summaries (out["sequences"]: [n] token id
  rows) against the references; predictions [{"line", "summary",
  "reference"}]."""
  tok = info.tok
  special = set(tok.all_special_ids)
  texts, lengths = [], []
  for row in out["sequences"]:
    row = [int(t) for t in row]
    lengths.append(sum(t not in special for t in row))
    texts.append(tok.decode(row, skip_special_tokens=True,
                            clean_up_tokenization_spaces=False).strip())
  metrics = rouge(texts, data.summaries, config.eval.rouge_stemmer)
  metrics["gen_len"] = float(np.mean(lengths)) if lengths else 0.0
  predictions = [{"line": line, "summary": text, "reference": ref}
                 for line, text, ref in zip(data.lines, texts,
                                            data.summaries)]
  return metrics, predictions


def summary(metrics):
  return " ".join(f"{k} {v:.2f}" for k, v in metrics.items())


def from_hf(config, d):
  """Completes config from an LED config.json d (a transformers folder
  without a run's config): documents up to its encoder positions, summaries
  and generation up to its decoder positions."""
  dec = d["max_decoder_position_embeddings"]
  config.model.max_length = d["max_encoder_position_embeddings"]
  config.model.max_target_length = min(config.model.max_target_length, dec)
  config.eval.max_length = min(config.eval.max_length, dec)
  return config


SPEC = finetune.Spec(
    name="summarization", head=HEAD, validate=validate,
    resolve=finetune.copy_config, read=read, featurize=featurize,
    num_labels=finetune.no_labels, extra_config=finetune.no_extra_config,
    loss=loss, forward=forward, score=score, summary=summary, report=report,
    eval_overrides=(
        ("eval.num_beams", int, "beam size (1: greedy)"),
        ("eval.max_length", int, "tokens generated, decoder start "
         "included")),
    load=sm.load, check_length=sm.check_length, save=sm.save,
    predict=sm.predict, jsonl=True)


(train_and_evaluate, next_steps, load_trained, export,
 evaluate_main) = finetune_commands.entry_points(SPEC, base_config, from_hf)
