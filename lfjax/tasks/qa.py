"""Extractive question answering (TriviaQA, SQuAD style) by fine-tuning a
Longformer with global attention on the question tokens (paper Section
6.1 and Appendix D).

  python -m lfjax.train --config configs/qa_longformer.py \
      --config.init_from DIR --config.data.train train.json \
      --config.data.valid dev.json --workdir RUN
  python -m lfjax.evaluate --workdir RUN --data dev.json  # EM/F1, predictions
  python -m lfjax.export --workdir RUN --to OUT   # transformers loads it

Data: SQuAD-format JSON ({"data": [{"paragraphs": [{"context": ...,
"qas": [{"id", "question", "answers": [{"text", "answer_start"}],
"is_impossible"}]}]}]}); or one question per record, in a .jsonl,
.jsonl.gz or .parquet file or a `datasets` folder saved with save_to_disk
(lfjax.data.sources.read_records), with fields / columns "id", "question",
"context", "answers" and optionally "is_impossible": answers is SQuAD's
list [{"text", "answer_start"}] or the Hugging Face squad dataset's
{"text": [...], "answer_start": [...]} (there, empty lists are an
unanswerable question, as in squad_v2). Several answers per question, and
questions without an answer (SQuAD 2.0), are allowed. answer_start is a
character offset into the context (a Python string index, so multi-byte
characters count once); every answer must be found there.

Sequences are `<s> question </s></s> context </s>` from the checkpoint's
fast tokenizer, whose offset mapping maps tokens back to characters. A
context longer than model.max_length is truncated (data.windows =
"truncate", the paper's choice at 4,096) or split into windows that
overlap by model.doc_stride tokens ("stride"). The question's tokens
(those before the first separator, <s> included: transformers' default)
are global; at most model.max_question_tokens question tokens are kept.

Training targets: the first answer's start and end tokens in each window
that holds it whole; other windows (and unanswerable questions) point at
<s>, as transformers' QA examples do. Loss: the mean of the start and end
cross-entropies. Decoding: for each question, the span (start <= end,
at most model.max_answer_tokens tokens, inside the context) with the
highest start + end logit over all its windows, found exactly (no top-k
shortlist); when the data has unanswerable questions, the empty answer
wins if its score (start + end logit at <s>, the smallest over windows)
is higher. Metrics: the official SQuAD script's exact match and F1
(lower-case, punctuation and the articles a/an/the removed, whitespace
collapsed; the best over the gold answers; an unanswerable question
counts as right only for the empty answer), in percent.
"""

import collections
import dataclasses
import json
import pathlib
import re
import string

import jax.numpy as jnp
import numpy as np
import optax

from lfjax import checks as ck
from lfjax.tasks import finetune
from lfjax.tasks import finetune_commands
from lfjax.tasks import finetune_data

KIND = "a question-answering model"
RESUMABLE = finetune.RESUMABLE + ("model.max_answer_tokens",)
HEAD = "question_answering"


def base_config():
  c = finetune.base_config("qa", epochs=5, warmup_fraction=0.1)
  # TriviaQA in the paper: 5 epochs, LR 3e-5, batch 32 (Table 14).
  # "truncate": one window per question, the context cut at max_length
  # (the paper at 4,096); "stride": overlapping windows cover all of it.
  c.data.windows = "truncate"
  # Tokens shared by consecutive windows ("stride" only).
  c.model.doc_stride = 128
  # Question tokens kept (the rest cut); they are the global tokens, so
  # this (plus <s>) is the static cap on global tokens per sequence.
  c.model.max_question_tokens = 64
  c.model.max_answer_tokens = 30  # longest span decoding considers
  return c


def tiny(c):
  finetune.tiny(c)
  c.model.max_length = 64
  c.model.doc_stride = 16
  c.model.max_question_tokens = 16
  c.model.max_answer_tokens = 8
  c.data.windows = "stride"


def validate(config):
  """Checks every field. Raises ValueError naming the field."""
  finetune.validate_base(config, "qa")
  ck.one_of(config, "data.windows", ("truncate", "stride"))
  q = ck.integer(config, "model.max_question_tokens", 1)
  ck.integer(config, "model.max_answer_tokens", 1)
  room = config.model.max_length - q - 4  # <s> q </s></s> context </s>
  if room < 1:
    ck._fail("model.max_question_tokens", f"at most model.max_length - 5 "
             f"({config.model.max_length - 5}), leaving room for context",
             q)
  ck.integer(config, "model.doc_stride", 0, room - 1)


# Data ---------------------------------------------------------------------


@dataclasses.dataclass
class Example:
  qid: str
  question: str
  context: str
  answers: list  # [(text, start character)]
  where: str  # file:line (of the question's id) and JSON path, for errors


def _line_finder(raw):
  """where(qid, path) -> 'file:line: path', the line of the id's first
  occurrence after the previous one (ids appear in file order)."""
  pos = [0]

  def line_of(qid):
    i = raw.find(json.dumps(qid), pos[0]) if qid is not None else -1
    if i < 0:
      return None
    pos[0] = i + 1
    return raw.count("\n", 0, i) + 1
  return line_of


def read(path, config, split):
  """The questions of a SQuAD-format JSON file, or of a file of records
  (.jsonl, .jsonl.gz, .parquet, a datasets folder; module doc). Raises
  ValueError naming the file, the line (of the question's id; a record's
  line or row), the JSON path and the field of the first bad entry: a
  missing or empty field, or an answer that is not in its context at
  answer_start."""
  del config, split
  path = pathlib.Path(path)
  if finetune_data.is_records(path):
    return _read_records(path)
  raw = finetune_data.read_text(path)
  try:
    root = json.loads(raw)
  except ValueError as e:
    raise ValueError(f"{path}: not JSON ({e})") from None
  line_of = _line_finder(raw)
  if not isinstance(root, dict) or not isinstance(root.get("data"), list):
    raise ValueError(f"{path}:1: field 'data': expected the SQuAD layout "
                     '{"data": [{"paragraphs": [...]}]}')
  out, seen = [], {}
  for a, article in enumerate(root["data"]):
    loc = f"data[{a}]"
    paragraphs = _get(path, 1, loc, article, "paragraphs", list)
    for p, para in enumerate(paragraphs):
      ploc = f"{loc}.paragraphs[{p}]"
      qas = _get(path, 1, ploc, para, "qas", list)
      first_line = line_of(qas[0].get("id")) if qas and isinstance(
          qas[0], dict) else None
      context = _get(path, first_line or 1, ploc, para, "context", str)
      for q, qa in enumerate(qas):
        qloc = f"{ploc}.qas[{q}]"
        line = (first_line if q == 0 else line_of(qa.get("id"))
                if isinstance(qa, dict) else None) or 1
        qid = str(_get(path, line, qloc, qa, "id", (str, int)))
        finetune_data.unique_id(seen, qid, path, line, qloc)
        question = _get(path, line, qloc, qa, "question", str)
        impossible = qa.get("is_impossible", False) is True
        answers = [] if impossible else _get(path, line, qloc, qa,
                                             "answers", list, empty=False)
        spans = _spans(path, line, qloc + ".", context, answers)
        out.append(Example(qid, question, context, spans,
                           f"{path}:{line}: {qloc}"))
  if not out:
    raise ValueError(f"{path}: no questions")
  return out


def _spans(path, line, loc, context, answers):
  """[(text, start)] of a question's answers, each checked to be in the
  context at its answer_start. loc: the JSON path of the question's
  object, ending in "." (or "" for a record)."""
  spans = []
  for k, ans in enumerate(answers):
    aloc = f"{loc}answers[{k}]"
    text = _get(path, line, aloc, ans, "text", str)
    start = _get(path, line, aloc, ans, "answer_start", int)
    if context[start:start + len(text)] != text:
      raise ValueError(
          f"{path}:{line}: {aloc}: field 'answer_start': the answer "
          f"{finetune_data.short(text)} is not in the context at "
          f"character {start} (the context has "
          f"{finetune_data.short(context[start:start + len(text)])} "
          "there)")
    spans.append((text, start))
  return spans


def _record_answers(path, line, qa):
  """A record's answers as SQuAD's list of {"text", "answer_start"}: the
  Hugging Face squad layout {"text": [...], "answer_start": [...]} is
  turned into it; there (as in squad_v2) empty lists mean unanswerable.
  Raises ValueError naming the file, line and field."""
  if qa.get("is_impossible", False) is True:
    return []
  v = finetune_data.field(path, line, qa, "answers", (list, dict))
  if isinstance(v, list):
    if not v:
      raise ValueError(f"{path}:{line}: field 'answers': empty (a question "
                       'without answers needs "is_impossible": true)')
    return v
  texts = finetune_data.field(path, f"{line}: answers", v, "text", list,
                              nonempty=False)
  starts = finetune_data.field(path, f"{line}: answers", v, "answer_start",
                               list, nonempty=False)
  if len(texts) != len(starts):
    raise ValueError(f"{path}:{line}: field 'answers': {len(texts)} texts "
                     f"but {len(starts)} answer_starts")
  return [{"text": t, "answer_start": a} for t, a in zip(texts, starts)]


def _read_records(path):
  """The questions of a file of records, one per line / row (module doc)."""
  out, seen = [], {}
  for line, qa in finetune_data.read_records(path):
    qid = str(finetune_data.field(path, line, qa, "id", (str, int)))
    finetune_data.unique_id(seen, qid, path, line, f"record {line}")
    question = finetune_data.field(path, line, qa, "question", str)
    context = finetune_data.field(path, line, qa, "context", str)
    spans = _spans(path, line, "", context, _record_answers(path, line, qa))
    out.append(Example(qid, question, context, spans, f"{path}:{line}"))
  return out


def _get(path, line, loc, obj, name, kind, empty=False):
  if not isinstance(obj, dict):
    raise ValueError(f"{path}:{line}: {loc}: expected an object, got "
                     f"{type(obj).__name__}")
  v = finetune_data.field(path, f"{line}: {loc}", obj, name, kind)
  if isinstance(v, list) and not v and not empty:
    raise ValueError(f"{path}:{line}: {loc}: field {name!r}: empty (a "
                     'question without answers needs "is_impossible": true)')
  return v


from_hf = finetune.length_from_hf


@dataclasses.dataclass
class Window:
  example: int  # index into the data
  offsets: list  # (start, end) characters per token; None outside context


def _question(tok, text, limit):
  """The question cut to at most `limit` tokens (at a token's end)."""
  enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
  if len(enc["input_ids"]) <= limit:
    return text
  return text[:enc["offset_mapping"][limit - 1][1]]


def featurize(data, tok, config, train):
  """One row per window: input_ids, attention_mask [W, L] int32, and
  start/end [W] int32 (training targets, 0 = <s> when the window does not
  hold the answer whole); the windows (example index, token offsets) for
  decoding. L is the longest window (at most model.max_length), rounded up
  to 8."""
  del train
  m = config.model
  stride_mode = config.data.windows == "stride"
  questions = [_question(tok, ex.question, m.max_question_tokens)
               for ex in data]
  # Overflowing windows in both modes, so that each window knows whether
  # it starts or ends its context; "truncate" keeps the first of each.
  enc = tok(questions, [ex.context for ex in data], truncation="only_second",
            max_length=m.max_length, stride=m.doc_stride if stride_mode else 0,
            return_overflowing_tokens=True, return_offsets_mapping=True,
            return_attention_mask=False)
  mapping = [int(e) for e in enc["overflow_to_sample_mapping"]]
  rows, windows, starts, ends = [], [], [], []
  for w, e in enumerate(mapping):
    first = w == 0 or mapping[w - 1] != e
    last = w == len(mapping) - 1 or mapping[w + 1] != e
    if not (first or stride_mode):
      continue
    ids = enc["input_ids"][w]
    seq = enc.sequence_ids(w)
    offsets = [tuple(o) if s == 1 else None
               for o, s in zip(enc["offset_mapping"][w], seq)]
    rows.append(ids)
    windows.append(Window(e, offsets))
    s_tok = e_tok = 0
    if data[e].answers:
      text, a = data[e].answers[0]
      b = a + len(text)
      inside = [i for i, o in enumerate(offsets) if o is not None]
      # Whole in this window: it starts the context or holds a token ending
      # before the answer, and ends it or holds one starting after. (A
      # character split over byte-level tokens has them all at its offsets,
      # so comparing the window's first and last offsets with the answer's
      # could take half a character for all of it.)
      if (first or any(offsets[i][1] <= a for i in inside)) and (
          last or any(offsets[i][0] >= b for i in inside)):
        s_tok = next(i for i in inside if offsets[i][1] > a)
        e_tok = max(i for i in inside if offsets[i][0] < b)
    starts.append(s_tok)
    ends.append(e_tok)
  length = min(m.max_length, finetune_data.round_up(max(map(len, rows))))
  ids = np.full((len(rows), length), tok.pad_token_id, np.int32)
  mask = np.zeros_like(ids)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
    mask[i, :len(r)] = 1
  arrays = {"input_ids": ids, "attention_mask": mask,
            "start": np.asarray(starts, np.int32),
            "end": np.asarray(ends, np.int32)}
  return arrays, windows


def _cap(config):
  return config.model.max_question_tokens + 1  # <s> and the question


def _global(batch, config, sep_id):
  """Global attention on the tokens before the first separator (<s> and
  the question), as transformers' LongformerForQuestionAnswering."""
  del config
  ids = batch["input_ids"]
  is_sep = ids == sep_id
  first = jnp.argmax(is_sep, axis=1)
  return jnp.arange(ids.shape[1])[None, :] < first[:, None]


def _logits(model, batch, config):
  out = model(batch["input_ids"], attention_mask=batch["attention_mask"],
              global_attention_mask=_global(batch, config,
                                            model.cfg.sep_token_id),
              max_global=_cap(config))
  return (out.start_logits.astype(jnp.float32),
          out.end_logits.astype(jnp.float32))


def loss(model, batch, config):
  s, e = _logits(model, batch, config)
  ce = optax.softmax_cross_entropy_with_integer_labels
  per = (ce(s, batch["start"]) + ce(e, batch["end"])) / 2
  return jnp.sum(per), {}


def forward(model, batch, config):
  s, e = _logits(model, batch, config)
  return {"start": s, "end": e}


def best_span(start, end, offsets, max_tokens):
  """(score, first token, last token) of the highest start[i] + end[j]
  with i <= j < i + max_tokens, both inside the context (offsets not
  None); None when the window has no context. Exact: every end is paired
  with the best start of the max_tokens before it."""
  ok = np.asarray([o is not None for o in offsets])
  n = len(offsets)
  s = np.where(ok, start[:n], -np.inf)
  e = np.where(ok, end[:n], -np.inf)
  best = None
  for j in np.flatnonzero(ok):
    lo = max(0, j - max_tokens + 1)
    i = lo + int(np.argmax(s[lo:j + 1]))
    score = s[i] + e[j]
    if best is None or score > best[0]:
      best = (float(score), i, int(j))
  return best


def decode(data, windows, out, config, allow_empty):
  """{question id: predicted answer text} from per-window logits."""
  best, null = {}, {}
  for w, win in enumerate(windows):
    ex = data[win.example]
    span = best_span(out["start"][w], out["end"][w], win.offsets,
                     config.model.max_answer_tokens)
    if span is not None and (ex.qid not in best or span[0]
                             > best[ex.qid][0]):
      text = ex.context[win.offsets[span[1]][0]:win.offsets[span[2]][1]]
      best[ex.qid] = (span[0], text)
    score = float(out["start"][w][0] + out["end"][w][0])
    null[ex.qid] = min(null.get(ex.qid, score), score)
  preds = {}
  for ex in data:
    text = best.get(ex.qid, (None, ""))[1]
    if allow_empty and (ex.qid not in best
                        or null[ex.qid] > best[ex.qid][0]):
      text = ""
    preds[ex.qid] = text
  return preds


def normalize_answer(s):
  """The official SQuAD evaluation's normalisation: lower case, no
  punctuation, no articles (a, an, the), single spaces."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def f1_score(prediction, gold):
  """Token F1 of the normalised answers (official SQuAD; two empty answers
  score 1, one empty 0)."""
  p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
  if not p or not g:
    return float(p == g)
  same = sum((collections.Counter(p) & collections.Counter(g)).values())
  if not same:
    return 0.0
  precision, recall = same / len(p), same / len(g)
  return 2 * precision * recall / (precision + recall)


def exact_match(prediction, gold):
  return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_scores(data, preds):
  """(exact match, F1) in percent: per question the best over its gold
  answers (an unanswerable question's only gold answer is "")."""
  em = f1 = 0.0
  for ex in data:
    golds = [t for t, _ in ex.answers] or [""]
    em += max(exact_match(preds[ex.qid], g) for g in golds)
    f1 += max(f1_score(preds[ex.qid], g) for g in golds)
  return 100 * em / len(data), 100 * f1 / len(data)


def score(data, windows, out, config):
  allow_empty = any(not ex.answers for ex in data)
  preds = decode(data, windows, out, config, allow_empty)
  em, f1 = squad_scores(data, preds)
  return {"exact_match": em, "f1": f1}, preds


def summary(metrics):
  return f"EM {metrics['exact_match']:.2f} F1 {metrics['f1']:.2f}"


def report(data, arrays, windows, tok, config, train):
  """What featurize cut (see finetune.Spec.report), in the checkpoint
  tokenizer's tokens (byte-level BPE spends ~3 per CJK character): questions
  cut to max_question_tokens; answered questions with no window holding
  their (first) answer whole (they train toward <s>); answers longer than
  max_answer_tokens, which train but are never decoded whole."""
  m = config.model
  lines = []
  q_lens = [len(ids) for ids in tok([ex.question for ex in data],
                                    add_special_tokens=False)["input_ids"]]
  cut = sum(n > m.max_question_tokens for n in q_lens)
  if cut:
    lines.append(f"{cut} of {len(data)} questions cut to "
                 f"model.max_question_tokens={m.max_question_tokens} tokens "
                 f"(the longest has {max(q_lens)})")
  answered = sum(bool(ex.answers) for ex in data)
  held = {}  # example -> tokens of its first answer, where a window holds it
  for w, win in enumerate(windows):
    if arrays["start"][w]:  # 0: <s>, the window does not hold it
      held[win.example] = int(arrays["end"][w] - arrays["start"][w] + 1)
  lost = answered - len(held)
  if lost:
    why = ("is cut off by data.windows='truncate' at model.max_length="
           f"{m.max_length} tokens" if config.data.windows == "truncate"
           else f"is in no window of model.max_length={m.max_length} tokens")
    lines.append(f"{lost} of {answered} answered questions: the (first) "
                 f"answer {why}; " + (
                     "they train toward <s> (no answer)" if train else
                     "their answer cannot be predicted"))
  long = [n for n in held.values() if n > m.max_answer_tokens]
  if long:
    lines.append(
        f"{len(long)} of {answered} (first) answers are longer than "
        f"model.max_answer_tokens={m.max_answer_tokens} tokens (the longest: "
        f"{max(long)} tokens): " + ("they train, but " if train else "")
        + "decoding never predicts them whole; raise "
        "model.max_answer_tokens (python -m lfjax.evaluate takes "
        "--max_answer_tokens)")
  return lines


SPEC = finetune.Spec(
    name="qa", head=HEAD, validate=validate, resolve=finetune.copy_config,
    read=read, featurize=featurize, num_labels=finetune.no_labels,
    extra_config=finetune.no_extra_config, loss=loss, forward=forward,
    score=score, summary=summary, report=report,
    eval_overrides=(("model.max_answer_tokens", int,
                     "longest answer span decoding considers, in tokens"),))


(train_and_evaluate, next_steps, load_trained, export,
 evaluate_main) = finetune_commands.entry_points(SPEC, base_config, from_hf)
