"""Document classification (IMDB, Hyperpartisan style), single- or
multi-label, by fine-tuning a Longformer with global attention on the
first token (paper Section 6.3).

  python -m lfjax.train --config configs/classify_longformer.py \
      --config.init_from DIR --config.data.train train.jsonl \
      --config.data.valid dev.jsonl --workdir RUN
  python -m lfjax.evaluate --workdir RUN --data test.jsonl
  python -m lfjax.export --workdir RUN --to OUT   # transformers loads it

Data: JSON lines `{"text": "...", "label": "pos"}` (.jsonl, or any other
name), .jsonl.gz, a .parquet file or a `datasets` folder saved with
save_to_disk (DIR/SPLIT of a DatasetDict) with columns "text" and "label"
(lfjax.data.sources.read_records); a label that is a list
(`"label": ["a", "b"]`, possibly empty) makes the task multi-label. Label
names (strings or integers, kept as strings; a datasets ClassLabel
column's names, not its integers) are the training file's,
sorted, unless config.data.labels lists them; they are saved in the run's
config and, on export, as id2label / label2id in config.json.

Loss: cross-entropy (single label), or binary cross-entropy per label
averaged over labels (multi-label, transformers' multi_label_classification).
Metrics: accuracy and macro F1 (single label: F1 averaged over the labels
that occur in the gold or the predicted labels, as scikit-learn's f1_score
with average="macro"); multi-label: a label is predicted when its sigmoid
is above 0.5, micro and macro F1 (macro over every label, 0 for a label
never gold nor predicted: scikit-learn's zero_division=0) and exact match
(all labels right).
"""

import dataclasses

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lfjax.tasks import finetune
from lfjax.tasks import finetune_commands
from lfjax.tasks import finetune_data

KIND = "a classifier"
RESUMABLE = finetune.RESUMABLE
HEAD = "sequence_classification"


def base_config():
  c = finetune.base_config("classification", epochs=15, warmup_fraction=0.1)
  # Label names in id order; () = the training file's, sorted (numerically
  # when all are integers). Filled in at start and saved with the run.
  c.data.labels = ()
  # "single", "multi" (labels are lists), or "auto": multi when any label
  # of the training file is a list. Resolved at start.
  c.data.label_kind = "auto"
  return c


def tiny(c):
  finetune.tiny(c)


def validate(config):
  """Checks every field. Raises ValueError naming the field."""
  from lfjax import checks as ck
  finetune.validate_base(config, "classification")
  labels = config.data.labels
  if not isinstance(labels, (tuple, list)) or not all(
      isinstance(x, str) and x for x in labels) or len(set(labels)) != len(
          labels):
    ck._fail("data.labels", "a tuple of distinct non-empty label names (or "
             "() for the training file's)", labels)
  ck.one_of(config, "data.label_kind", ("auto", "single", "multi"))


# Data ---------------------------------------------------------------------


@dataclasses.dataclass
class Data:
  path: str
  lines: list  # line number of each example
  texts: list
  labels: list  # tuple of label names per example
  is_list: list  # whether the file gave a list


def _names(path, line, value):
  """The label names of one example's "label" value."""
  items = value if isinstance(value, list) else [value]
  out = []
  for v in items:
    if isinstance(v, bool) or not isinstance(v, (str, int)) or (
        isinstance(v, str) and not v):
      raise ValueError(f"{path}:{line}: field 'label': expected a label name "
                       f"(a non-empty string or an integer) or a list of "
                       f"them, got {finetune_data.short(value)}")
    out.append(str(v))
  return tuple(out)


def read(path, config, split):
  """A data file's examples (module doc: JSON lines, .jsonl.gz, parquet or
  a datasets folder). For split "eval" every label must be one of
  config.data.labels. Raises ValueError naming the file, line (the row of
  a table) and field of the first bad example."""
  data = Data(str(path), [], [], [], [])
  for line, obj in finetune_data.read_records(path):
    text = finetune_data.field(path, line, obj, "text", str)
    value = finetune_data.field(path, line, obj, "label", (str, int, list))
    data.lines.append(line)
    data.texts.append(text)
    data.labels.append(_names(path, line, value))
    data.is_list.append(isinstance(value, list))
  if split == "eval":
    _check_labels(data, config)
  return data


def _check_labels(data, config):
  known = set(config.data.labels)
  multi = config.data.label_kind == "multi"
  for line, names, is_list in zip(data.lines, data.labels, data.is_list):
    if is_list and not multi:
      raise ValueError(f"{data.path}:{line}: field 'label': a list, but the "
                       "model is single-label")
    for name in names:
      if name not in known:
        raise ValueError(
            f"{data.path}:{line}: field 'label': {name!r} is not one of the "
            f"model's {len(known)} labels {list(config.data.labels)[:20]}")


def _sorted(names):
  if all(n.lstrip("-").isdigit() for n in names):
    return sorted(names, key=int)
  return sorted(names)


def resolve(config, data):
  """The config with data.labels and data.label_kind from the training
  data (a copy; the caller's config is not changed)."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.data.label_kind == "auto":
    config.data.label_kind = "multi" if any(data.is_list) else "single"
  if not config.data.labels:
    config.data.labels = tuple(_sorted({n for ns in data.labels for n in ns}))
  if len(config.data.labels) < (1 if config.data.label_kind == "multi"
                                else 2):
    raise ValueError(f"{data.path}: field 'label': expected at least 2 "
                     f"different labels, got {list(config.data.labels)}")
  _check_labels(data, config)
  return config


def num_labels(config):
  return len(config.data.labels)


def extra_config(config):
  labels = list(config.data.labels)
  return {"id2label": {str(i): n for i, n in enumerate(labels)},
          "label2id": {n: i for i, n in enumerate(labels)},
          "problem_type": ("multi_label_classification"
                           if config.data.label_kind == "multi"
                           else "single_label_classification")}


def from_hf(config, d):
  """Completes config from a transformers config.json (an export without
  the run's config): label names, kind and the length the model takes."""
  id2label = d.get("id2label") or {}
  config.data.labels = tuple(str(id2label[k]) for k in sorted(id2label,
                                                               key=int))
  config.data.label_kind = ("multi" if d.get("problem_type")
                            == "multi_label_classification" else "single")
  config.model.max_length = (d["max_position_embeddings"]
                             - d.get("pad_token_id", 1) - 1)
  return config


def featurize(data, tok, config, train):
  """{"input_ids", "attention_mask": [n, L] int32, "labels": [n] int32
  (single) or [n, K] float32 (multi)}, L the longest encoded document
  (at most model.max_length, rounded up to 8); documents longer than that
  are truncated; and how many were (report prints it)."""
  del train
  enc = tok(data.texts, truncation=True, max_length=config.model.max_length,
            return_attention_mask=False)
  ids_list = enc["input_ids"]
  full = tok(data.texts, return_attention_mask=False, verbose=False)[
      "input_ids"]
  length = min(config.model.max_length,
               finetune_data.round_up(max(map(len, ids_list))))
  ids = np.full((len(ids_list), length), tok.pad_token_id, np.int32)
  for i, row in enumerate(ids_list):
    ids[i, :len(row)] = row
  mask = np.zeros_like(ids)
  for i, row in enumerate(ids_list):
    mask[i, :len(row)] = 1
  index = {n: i for i, n in enumerate(config.data.labels)}
  if config.data.label_kind == "multi":
    labels = np.zeros((len(ids), len(index)), np.float32)
    for i, names in enumerate(data.labels):
      labels[i, [index[n] for n in names]] = 1.0
  else:
    labels = np.asarray([index[names[0]] for names in data.labels], np.int32)
  cut = sum(len(f) > config.model.max_length for f in full)
  return {"input_ids": ids, "attention_mask": mask, "labels": labels}, cut


def _logits(model, batch):
  ids = batch["input_ids"]
  # The paper's global token: the first (<s>), one per sequence.
  glob = jnp.zeros(ids.shape, bool).at[:, 0].set(True)
  return model(ids, attention_mask=batch["attention_mask"],
               global_attention_mask=glob, max_global=1).logits.astype(
                   jnp.float32)


def loss(model, batch, config):
  logits = _logits(model, batch)
  labels = batch["labels"]
  if config.data.label_kind == "multi":
    per = optax.sigmoid_binary_cross_entropy(logits, labels).mean(-1)
    right = jnp.all((logits > 0) == (labels > 0.5), axis=-1)
  else:
    per = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    right = jnp.argmax(logits, -1) == labels
  return jnp.sum(per), {"correct": jnp.sum(right.astype(jnp.float32))}


def forward(model, batch, config):
  del config
  return {"logits": _logits(model, batch)}


def single_label_scores(pred, gold):
  """(accuracy, macro F1) of integer predictions against gold labels;
  macro F1 averages 2TP / (2TP + FP + FN) over the labels that occur in
  gold or pred (scikit-learn's f1_score(average="macro"))."""
  pred, gold = np.asarray(pred), np.asarray(gold)
  f1s = []
  for c in np.union1d(pred, gold):
    tp = np.sum((pred == c) & (gold == c))
    fp = np.sum((pred == c) & (gold != c))
    fn = np.sum((pred != c) & (gold == c))
    f1s.append(2 * tp / (2 * tp + fp + fn))
  return float(np.mean(pred == gold)), float(np.mean(f1s))


def multi_label_scores(pred, gold):
  """(micro F1, macro F1, exact match) of boolean [n, K] predictions
  against gold; a label with no gold and no predicted occurrence scores F1
  0 in the macro mean (scikit-learn's zero_division=0)."""
  pred, gold = np.asarray(pred, bool), np.asarray(gold, bool)
  tp = np.sum(pred & gold, 0)
  fp = np.sum(pred & ~gold, 0)
  fn = np.sum(~pred & gold, 0)
  f1 = lambda tp, fp, fn: 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
  micro = f1(tp.sum(), fp.sum(), fn.sum())
  macro = np.mean([f1(*x) for x in zip(tp, fp, fn)])
  return float(micro), float(macro), float(np.mean(np.all(pred == gold, 1)))


def score(data, info, out, config):
  del info
  logits = out["logits"]
  labels = list(config.data.labels)
  index = {n: i for i, n in enumerate(labels)}
  if config.data.label_kind == "multi":
    pred = logits > 0  # sigmoid > 0.5
    gold = np.zeros_like(pred)
    for i, names in enumerate(data.labels):
      gold[i, [index[n] for n in names]] = True
    micro, macro, exact = multi_label_scores(pred, gold)
    metrics = {"micro_f1": micro, "macro_f1": macro, "exact_match": exact}
    names = [[labels[j] for j in np.flatnonzero(p)] for p in pred]
  else:
    pred = np.argmax(logits, -1)
    gold = np.asarray([index[n[0]] for n in data.labels])
    acc, macro = single_label_scores(pred, gold)
    metrics = {"accuracy": acc, "macro_f1": macro}
    names = [labels[j] for j in pred]
  predictions = [{"line": line, "label": name,
                  "gold": list(g) if is_list else g[0]}
                 for line, name, g, is_list in zip(
                     data.lines, names, data.labels, data.is_list)]
  return metrics, predictions


def report(data, arrays, cut, tok, config, train):
  """Truncated documents (finetune.Spec.report)."""
  del tok, train
  if not cut:
    return []
  return [f"{cut} of {len(arrays['input_ids'])} documents truncated to "
          f"model.max_length={config.model.max_length} tokens"]


def summary(metrics):
  return " ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in
                  metrics.items())


SPEC = finetune.Spec(
    name="classification", head=HEAD, validate=validate, resolve=resolve,
    read=read, featurize=featurize, num_labels=num_labels,
    extra_config=extra_config, loss=loss, forward=forward, score=score,
    summary=summary, report=report)


(train_and_evaluate, next_steps, load_trained, export,
 evaluate_main) = finetune_commands.entry_points(SPEC, base_config, from_hf)
