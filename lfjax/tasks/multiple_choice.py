"""Multiple choice over long contexts (WikiHop style) by fine-tuning a
Longformer with global attention on the question and candidate tokens
(paper Section 6.1).

  python -m lfjax.train --config configs/multiple_choice_longformer.py \
      --config.init_from DIR --config.data.train train.json \
      --config.data.valid dev.json --workdir RUN
  python -m lfjax.evaluate --workdir RUN --data dev.json   # accuracy
  python -m lfjax.export --workdir RUN --to OUT   # transformers loads it

Data: WikiHop's JSON, a list of {"id", "query", "candidates": [...],
"supports": [...], "answer"}; or the same objects one per record in a
.jsonl, .jsonl.gz or .parquet file or a `datasets` folder saved with
save_to_disk (lfjax.data.sources.read_records; the Hugging Face qangaroo
wikihop dataset has these columns). The answer must be one of the
candidates.

Each candidate is scored as transformers' LongformerForMultipleChoice does
(the pooled first token, one logit per candidate), on the sequence
`<s> supports </s></s> question candidate </s>`: the supports, joined by
spaces, are the context (cut to fit model.max_length), and the tokens
after `</s></s>` (question, candidate and the last `</s>`) are global,
which is also transformers' default for this head (global after the first
separator: so no separator between supports). At most
model.max_question_tokens and model.max_candidate_tokens are kept, so
their sum plus one is the static cap on global tokens per sequence.
Candidates are padded to the most any example has (padded ones are all
padding and never chosen); the data is held as one token row per
candidate, a batch's [b, C, L] assembled from them. The paper encodes all candidates in one
sequence with special marker tokens instead; this layout keeps the
transformers head, so the export loads there. Loss: cross-entropy over an
example's candidates. Metric: accuracy.
"""

import dataclasses
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import optax

from lfjax import checks as ck
from lfjax.tasks import finetune
from lfjax.tasks import finetune_commands
from lfjax.tasks import finetune_data

KIND = "a multiple-choice model"
RESUMABLE = finetune.RESUMABLE
HEAD = "multiple_choice"
_NEG = -1e9  # logit of a padded candidate (finite: no NaN in the softmax)


def base_config():
  c = finetune.base_config("multiple_choice", epochs=15, warmup_fraction=0.1)
  # WikiHop in the paper: 15 epochs, LR 3e-5, batch 32 (Table 14; its 200
  # warmup steps are here a share of the steps).
  c.train.micro_batch_size = 1  # every candidate is a 4,096-token sequence
  c.model.max_question_tokens = 32  # the rest of a question is cut
  c.model.max_candidate_tokens = 16  # the rest of a candidate is cut
  return c


def tiny(c):
  finetune.tiny(c)
  c.model.max_length = 64
  c.model.max_question_tokens = 8
  c.model.max_candidate_tokens = 8


def validate(config):
  """Checks every field. Raises ValueError naming the field."""
  finetune.validate_base(config, "multiple_choice")
  q = ck.integer(config, "model.max_question_tokens", 1)
  c = ck.integer(config, "model.max_candidate_tokens", 1)
  if q + c + 5 > config.model.max_length:
    ck._fail("model.max_candidate_tokens", f"at most model.max_length - "
             f"max_question_tokens - 5 ({config.model.max_length - q - 5}), "
             "leaving room for context", c)


@dataclasses.dataclass
class Example:
  qid: str
  query: str
  candidates: list
  supports: list
  answer: int  # index into candidates
  where: str


def read(path, config, split):
  """The examples of a WikiHop-format JSON file, or of a file of records
  (.jsonl, .jsonl.gz, .parquet, a datasets folder; module doc). Raises
  ValueError naming the file, the line (of the example's id; a record's
  line or row), its index and the field of the first bad one: a missing or
  empty field, an answer not among the candidates."""
  del config, split
  path = pathlib.Path(path)
  seen = {}
  if finetune_data.is_records(path):
    return [_example(path, str(line), obj, seen, line, f"record {line}")
            for line, obj in finetune_data.read_records(path)]
  raw = finetune_data.read_text(path)
  try:
    root = json.loads(raw)
  except ValueError as e:
    raise ValueError(f"{path}: not JSON ({e})") from None
  if not isinstance(root, list) or not root:
    raise ValueError(f"{path}:1: expected a JSON list of examples "
                     '({"id", "query", "candidates", "supports", "answer"})')
  out, pos = [], 0
  for k, obj in enumerate(root):
    line = 1
    if isinstance(obj, dict) and "id" in obj:
      i = raw.find(json.dumps(obj["id"], ensure_ascii=False), pos)
      if i < 0:
        i = raw.find(json.dumps(obj["id"]), pos)
      if i >= 0:
        pos, line = i + 1, raw.count("\n", 0, i) + 1
    out.append(_example(path, f"{line}: [{k}]", obj, seen, line, f"[{k}]"))
  return out


def _example(path, loc, obj, seen, line, index):
  """The Example of one object; loc: "line: [k]" (or a record's line),
  index: "[k]" (or "record N") for the duplicate-id message."""
  if not isinstance(obj, dict):
    raise ValueError(f"{path}:{loc}: expected an object, got "
                     f"{type(obj).__name__}")
  get = lambda name, kind: finetune_data.field(path, loc, obj, name, kind)
  qid = str(get("id", (str, int)))
  finetune_data.unique_id(seen, qid, path, line, index)
  query = get("query", str)
  candidates = _texts(path, loc, get("candidates", list), "candidates", 2)
  supports = _texts(path, loc, get("supports", list), "supports", 1)
  answer = get("answer", str)
  if answer not in candidates:
    raise ValueError(f"{path}:{loc}: field 'answer': "
                     f"{finetune_data.short(answer)} is not one of the "
                     f"{len(candidates)} candidates")
  return Example(qid, query, candidates, supports, candidates.index(answer),
                 f"{path}:{loc}")


def _texts(path, loc, items, name, least):
  if len(items) < least or not all(isinstance(x, str) and x.strip()
                                   for x in items):
    raise ValueError(f"{path}:{loc}: field {name!r}: expected a list of at "
                     f"least {least} non-empty strings, got "
                     f"{finetune_data.short(items)}")
  return items


from_hf = finetune.length_from_hf


def featurize(data, tok, config, train):
  """One token row per candidate: input_ids, attention_mask, global_mask
  [R + 1, L] int32 (R the candidates of all examples, then one row of
  padding; L the longest sequence rounded up to 8), rows [n, C] int32
  (example i's candidate j is token row rows[i, j]; C the most candidates
  of any example, padded candidates point at the padding row), the answer
  [n] and choice_mask [n, C] (False for padded candidates); and
  {"questions", "candidates", "contexts": how many were cut}. A batch
  assembles its [b, C, L] from the rows (finetune_data.gather): the set is
  never held as [n, C, L] (WikiHop's 79 candidates at most, 4,096 tokens
  each)."""
  del train
  m = config.model
  sep, cls, pad = tok.sep_token_id, tok.cls_token_id, tok.pad_token_id
  words = lambda t: tok(t, add_special_tokens=False)["input_ids"]
  seqs = []
  cut = {"questions": 0, "candidates": 0, "contexts": 0}
  for ex in data:
    q = words(ex.query)
    cut["questions"] += len(q) > m.max_question_tokens
    q = q[:m.max_question_tokens]
    cands = [words(" " + c) for c in ex.candidates]
    cut["candidates"] += sum(len(c) > m.max_candidate_tokens for c in cands)
    cands = [c[:m.max_candidate_tokens] for c in cands]
    room = m.max_length - 4 - len(q) - max(map(len, cands))
    ctx = words(" ".join(ex.supports))
    cut["contexts"] += len(ctx) > room
    ctx = ctx[:room]
    seqs.append([([cls] + ctx + [sep, sep] + q + c + [sep], len(ctx) + 3)
                 for c in cands])
  n_choices = max(len(s) for s in seqs)
  length = min(m.max_length, finetune_data.round_up(
      max(len(ids) for s in seqs for ids, _ in s)))
  total = sum(map(len, seqs))
  ids = np.full((total + 1, length), pad, np.int32)
  mask = np.zeros_like(ids)
  glob = np.zeros_like(ids)
  rows = np.full((len(data), n_choices), total, np.int32)  # padding row
  r = 0
  for i, s in enumerate(seqs):
    for j, (row, first_global) in enumerate(s):
      ids[r, :len(row)] = row
      mask[r, :len(row)] = 1
      glob[r, first_global:len(row)] = 1
      rows[i, j] = r
      r += 1
  choice = np.arange(n_choices)[None, :] < np.asarray(
      [len(ex.candidates) for ex in data])[:, None]
  return {"input_ids": ids, "attention_mask": mask, "global_mask": glob,
          finetune_data.ROWS: rows,
          "answer": np.asarray([ex.answer for ex in data], np.int32),
          "choice_mask": choice}, cut


def _cap(config):
  return config.model.max_question_tokens + config.model.max_candidate_tokens + 1


def _logits(model, batch, config):
  logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                 global_attention_mask=batch["global_mask"],
                 max_global=_cap(config)).logits.astype(jnp.float32)
  return jnp.where(batch["choice_mask"], logits, _NEG)


def loss(model, batch, config):
  logits = _logits(model, batch, config)
  per = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                        batch["answer"])
  right = jnp.argmax(logits, -1) == batch["answer"]
  return jnp.sum(per), {"correct": jnp.sum(right.astype(jnp.float32))}


def forward(model, batch, config):
  return {"logits": _logits(model, batch, config)}


def score(data, info, out, config):
  del info, config
  pred = np.argmax(out["logits"], -1)
  acc = float(np.mean([p == ex.answer for p, ex in zip(pred, data)]))
  return {"accuracy": acc}, {ex.qid: ex.candidates[int(p)]
                             for p, ex in zip(pred, data)}


def summary(metrics):
  return f"accuracy {metrics['accuracy']:.4f}"


def report(data, arrays, cut, tok, config, train):
  """Cut questions, candidates and supports (finetune.Spec.report)."""
  del arrays, tok, train
  m = config.model
  n = len(data)
  lines = []
  if cut["questions"]:
    lines.append(f"{cut['questions']} of {n} questions cut to "
                 f"model.max_question_tokens={m.max_question_tokens} tokens")
  if cut["candidates"]:
    total = sum(len(ex.candidates) for ex in data)
    lines.append(f"{cut['candidates']} of {total} candidates cut to "
                 f"model.max_candidate_tokens={m.max_candidate_tokens} "
                 "tokens (candidates alike in their first tokens become "
                 "indistinguishable)")
  if cut["contexts"]:
    lines.append(f"{cut['contexts']} of {n} examples' supports truncated to "
                 f"fit model.max_length={m.max_length} tokens")
  return lines


SPEC = finetune.Spec(
    name="multiple_choice", head=HEAD, validate=validate,
    resolve=finetune.copy_config, read=read, featurize=featurize,
    num_labels=finetune.no_labels, extra_config=finetune.no_extra_config,
    loss=loss, forward=forward, score=score, summary=summary, report=report)


(train_and_evaluate, next_steps, load_trained, export,
 evaluate_main) = finetune_commands.entry_points(SPEC, base_config, from_hf)
