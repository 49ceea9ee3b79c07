"""Extractive QA: token spans map back to the right characters (offsets by
hand, multi-byte characters, answers crossing a window boundary), EM/F1
equal hand-computed values, the loss falls on a toy task, the export gives
transformers' logits, and bad files fail naming the file, line and field.

The starting checkpoint is tests/finetune_fixtures.py's tiny random
Longformer. Runs where torch is installed (the Python 3.11 leg of CI).
"""

import json
import pathlib

import numpy as np
import pytest

from tests import finetune_fixtures as fixtures
from tests import optional

torch = optional.need("torch")
transformers = optional.need("transformers")

from lfjax import cli  # noqa: E402
from lfjax import evaluate  # noqa: E402
from lfjax import metrics  # noqa: E402
from lfjax import train  # noqa: E402
from lfjax.tasks import finetune_model  # noqa: E402
from lfjax.tasks import finetune_data  # noqa: E402
from lfjax.tasks import qa  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_compiles")
WORDS = ["river", "stone", "city", "old", "road", "north", "bridge", "lake",
         "Zoë", "Kraków", "Łódź", "São", "Paulo", "moved", "lives", "in"]


@pytest.fixture(scope="module")
def longformer(tmp_path_factory):
  return fixtures.tiny_longformer(tmp_path_factory.mktemp("longformer"),
                                  WORDS + ["what", "is", "the", "code", "?"])


def squad(path, paragraphs):
  """paragraphs: [(context, [(id, question, [(text, start)] or None)])];
  None = unanswerable."""
  data = {"data": [{"title": "t", "paragraphs": [
      {"context": ctx, "qas": [
          {"id": qid, "question": q, "is_impossible": ans is None,
           "answers": [{"text": t, "answer_start": s} for t, s in ans or []]}
          for qid, q, ans in qas]} for ctx, qas in paragraphs]}]}
  path.write_text(json.dumps(data, ensure_ascii=False, indent=1))
  return path


def config(longformer, **changes):
  return fixtures.tiny_config("qa_longformer", **{
      "init_from": str(longformer), "data.train": "train.json", **changes})


def test_spans_map_to_characters_across_windows(longformer, tmp_path):
  # Offsets by hand: "Zoë " is 4 characters (ë is one, two bytes in
  # UTF-8), "lives " 6, "in " 3: Kraków starts at 13.
  ctx = "Zoë lives in Kraków."
  assert ctx[13:19] == "Kraków"
  filler = " ".join(["old road by the lake"] * 3)
  paragraphs = [(ctx, [("q0", "Where does Zoë live?", [("Kraków", 13)])])]
  # The same answers after longer and longer fillers: some cross the end of
  # a 40-token window and sit whole in the next (14 tokens shared).
  for k in range(8):
    pre = filler[:8 * k] + " Zoë moved to "
    c2 = pre + "São Paulo and Łódź."
    paragraphs.append((c2, [(f"a{k}", "Where did Zoë move?",
                             [("São Paulo", len(pre))]),
                            (f"b{k}", "And then?",
                             [("Łódź", len(pre) + 14)])]))
  path = squad(tmp_path / "hand.json", paragraphs)
  c = config(longformer, **{"model.max_length": 40, "model.doc_stride": 14,
                            "model.max_answer_tokens": 30})
  qa.validate(c)
  data = qa.read(path, c, "eval")
  assert data[2].answers == [("Łódź", len(" Zoë moved to ") + 14)]
  tok = finetune_model.load_tokenizer(longformer)
  arrays, windows = qa.featurize(data, tok, c, True)
  whole, crossing = set(), 0
  for w, win in enumerate(windows):
    ex = data[win.example]
    answer, a = ex.answers[0]
    b = a + len(answer)
    inside = [o for o in win.offsets if o is not None]
    s, e = int(arrays["start"][w]), int(arrays["end"][w])
    if s:
      whole.add(win.example)
      # The tokens decode to the answer (independent of the offsets), and
      # the offsets cut exactly the answer out of the context.
      assert tok.decode(arrays["input_ids"][w, s:e + 1]).strip() == answer
      assert ex.context[win.offsets[s][0]:win.offsets[e][1]] == answer
      # Decoding logits that point there gives the answer text back.
      out = {k: np.full((1, arrays["input_ids"].shape[1]), -9.0)
             for k in ("start", "end")}
      out["start"][0, s] = out["end"][0, e] = 9.0
      assert qa.decode([ex], [qa.Window(0, win.offsets)], {
          k: v for k, v in out.items()}, c, False) == {ex.qid: answer}
    else:
      assert e == 0
      cut = inside[0][0] < b and inside[-1][1] > a  # overlaps, not whole
      crossing += cut
  assert whole == set(range(len(data)))  # each answer whole somewhere
  assert crossing >= 2  # and some cut by a window boundary


def test_best_span_is_exact_and_bounded():
  offsets = [None, (0, 3), (3, 5), (5, 9), None]
  start = np.array([50.0, 1.0, 5.0, 0.0, 60.0])
  end = np.array([50.0, 0.0, 1.0, 4.0, 60.0])
  # Padding/question positions (None) never win; start 2 + end 3 = 9.
  assert qa.best_span(start, end, offsets, 3) == (9.0, 2, 3)
  # An end before its start never pairs with it; length 1 only:
  assert qa.best_span(start, end, offsets, 1) == (6.0, 2, 2)


def test_em_f1_equal_hand_values():
  assert qa.normalize_answer("  The Cat,  sat!") == "cat sat"
  assert qa.normalize_answer("An apple a day") == "apple day"
  # pred [cat, sat], gold [cat, sat, down]: P 1, R 2/3, F1 0.8.
  assert qa.f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)
  assert qa.exact_match("The cat.", "cat") == 1.0
  data = [qa.Example("1", "q", "ctx", [("Paris", 0), ("in Paris", 0)], ""),
          qa.Example("2", "q", "ctx", [("red car", 0)], ""),
          qa.Example("3", "q", "ctx", [], "")]
  preds = {"1": "paris", "2": "blue car", "3": ""}
  em, f1 = qa.squad_scores(data, preds)
  # EM: 1, 0, 1 -> 2/3. F1: 1, (P 1/2, R 1/2) 0.5, 1 -> 2.5/3.
  assert em == pytest.approx(100 * 2 / 3)
  assert f1 == pytest.approx(100 * 2.5 / 3)
  assert qa.squad_scores(data[2:], {"3": "x"}) == (0.0, 0.0)


def toy(n, seed):
  """The answer is the word after "code", somewhere in the context."""
  rng = np.random.default_rng(seed)
  paragraphs = []
  for i in range(n):
    words = [str(w) for w in rng.choice(WORDS[:8], int(rng.integers(10, 40)))]
    at = int(rng.integers(0, len(words)))
    pre = " ".join(words[:at] + ["code"])
    answer = str(rng.choice(WORDS[8:13]))
    ctx = pre + " " + answer + " " + " ".join(words[at:])
    paragraphs.append((ctx, [(f"q{seed}_{i}", "what is the code?",
                              [(answer, len(pre) + 1)])]))
  return paragraphs


def test_trains_exports_and_evaluates(longformer, tmp_path, capsys):
  c = config(longformer)
  c.data.train = str(squad(tmp_path / "train.json", toy(32, 0)))
  c.data.valid = str(squad(tmp_path / "dev.json", toy(8, 1)))
  c.log_every = 4
  c.checkpoint_every = 100
  last = train.train_and_evaluate(c, tmp_path / "run")
  recs = metrics.read(tmp_path / "run" / "metrics.jsonl")
  losses = [r["train_loss"] for r in recs if "train_loss" in r]
  assert np.mean(losses[-2:]) < losses[0] - 0.5, losses
  assert 0 <= last["eval_exact_match"] <= last["eval_f1"] <= 100

  qa.export(tmp_path / "run", tmp_path / "hf")
  _, ours, _ = qa.load_trained(tmp_path / "run")
  hf = transformers.LongformerForQuestionAnswering.from_pretrained(
      tmp_path / "hf").eval()
  tok = finetune_model.load_tokenizer(tmp_path / "hf")
  data = qa.read(c.data.valid, c, "eval")
  arrays, _ = qa.featurize(data[:3], tok, c, False)
  with torch.no_grad():  # global attention on the question by default
    want = hf(input_ids=torch.tensor(arrays["input_ids"]).long(),
              attention_mask=torch.tensor(arrays["attention_mask"]).long())
  got = qa.forward(ours, arrays, c)
  m = arrays["attention_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(got["start"])[m],
                             want.start_logits.numpy()[m], atol=1e-4)
  np.testing.assert_allclose(np.asarray(got["end"])[m],
                             want.end_logits.numpy()[m], atol=1e-4)

  capsys.readouterr()
  assert cli.run(evaluate.main, ["--model", str(tmp_path / "hf"), "--data",
                                 c.data.valid, "--predictions",
                                 str(tmp_path / "p.json")]) == 0
  preds = json.loads((tmp_path / "p.json").read_text())
  assert sorted(preds) == sorted(ex.qid for ex in data)
  em, f1 = qa.squad_scores(data, preds)
  assert em == pytest.approx(last["eval_exact_match"])
  assert f"EM {em:.2f} F1 {f1:.2f}" in capsys.readouterr().out

  # max_answer_tokens changes decoding only: evaluation overrides it (and
  # names the result after it), a rerun of the finished run says how.
  assert cli.run(evaluate.main, ["--workdir", str(tmp_path / "run"), "--data",
                                 c.data.valid, "--max_answer_tokens",
                                 "1"]) == 0
  result, = (tmp_path / "run").glob("eval_dev_*_mat1.json")
  assert json.loads(result.read_text())["max_answer_tokens"] == 1
  preds = json.loads(pathlib.Path(str(result).replace(
      "eval_", "predictions_")).read_text())
  for ex in data:  # each prediction is one token of its context
    offsets = tok(ex.context, return_offsets_mapping=True)["offset_mapping"]
    assert preds[ex.qid] in {ex.context[a:b] for a, b in offsets if b > a}
  capsys.readouterr()
  c.model.max_answer_tokens = 3
  train.train_and_evaluate(c, tmp_path / "run")
  assert ("model.max_answer_tokens: decoding only, so evaluation can use the "
          f"new value on the finished run: python -m lfjax.evaluate "
          f"--workdir {tmp_path / 'run'} --data FILE --max_answer_tokens 3"
          ) in capsys.readouterr().out


@pytest.mark.parametrize("change,error", [
    (lambda q, p: q.pop("question"), "field 'question': missing"),
    (lambda q, p: p.update(context=" "), "field 'context': empty"),
    (lambda q, p: q["answers"][0].update(answer_start=2),
     "field 'answer_start': the answer \"Kraków\" is not in the context at "
     "character 2"),
    (lambda q, p: q.update(answers=[]), "field 'answers': empty"),
    (lambda q, p: q["answers"][0].update(text=5),
     "field 'text': expected a string, got int"),
])
def test_bad_files_name_file_line_and_field(longformer, tmp_path, change,
                                            error):
  path = squad(tmp_path / "bad.json", [
      ("Zoë lives in Kraków.", [("ok", "Where?", [("Kraków", 13)])]),
      ("Zoë lives in Kraków.", [("bad", "Where?", [("Kraków", 13)])])])
  d = json.loads(path.read_text())
  para = d["data"][0]["paragraphs"][1]
  change(para["qas"][0], para)
  path.write_text(json.dumps(d, ensure_ascii=False, indent=1))
  line = next(i for i, l in enumerate(path.read_text().splitlines(), 1)
              if '"bad"' in l)
  with pytest.raises(ValueError) as e:
    qa.read(path, None, "eval")
  assert str(e.value).startswith(f"{path}:{line}: data[0].paragraphs[1]")
  assert error in str(e.value)


def test_duplicate_id_is_refused_naming_both(tmp_path):
  path = squad(tmp_path / "dup.json", [
      ("Zoë lives in Kraków.", [("q1", "Where?", [("Kraków", 13)])]),
      ("Zoë lives in Kraków.", [("q2", "Who?", [("Zoë", 0)]),
                                ("q1", "Where?", [("Kraków", 13)])])])
  lines = path.read_text().splitlines()
  at = [i for i, l in enumerate(lines, 1) if '"q1"' in l]  # by hand: 2
  with pytest.raises(ValueError) as e:
    qa.read(path, None, "eval")
  assert str(e.value) == (
      f"{path}:{at[1]}: data[0].paragraphs[1].qas[1]: field 'id': 'q1' is "
      f"also the id of data[0].paragraphs[0].qas[0] (line {at[0]}); ids must "
      "be unique (predictions are keyed by id)")


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
  good = squad(tmp_path / "good.json", [
      ("Zoë lives in Kraków.", [("q1", "Where?", [("Kraków", 13)])])])
  raw = good.read_bytes()
  at = raw.index("Kraków".encode())  # byte offset of K
  bad = tmp_path / "bad.json"
  bad.write_bytes(raw[:at] + b"\xff" + raw[at + 1:])  # K -> 0xff
  line = raw[:at].count(b"\n") + 1
  with pytest.raises(ValueError, match=rf"^{bad}:{line}: not UTF-8 text "
                     rf"\(byte b'\\xff' at byte offset {at}: invalid start "
                     "byte\\)"):
    qa.read(bad, None, "eval")
  with pytest.raises(ValueError, match=rf"^{bad}:{line}: not UTF-8"):
    finetune_data.read_records(bad)


def test_report_counts_cut_questions_lost_and_long_answers(longformer,
                                                         tmp_path):
  # By construction (every word is at least one token): q0's question has
  # 30 words (> 16 tokens); q1's answer starts after 80 words, past a
  # 64-token window; q2's answer has 12 words (> 8 tokens).
  long_q = " ".join(["river"] * 30) + "?"
  far = " ".join(["stone"] * 80) + " "
  span = " ".join(["city"] * 12)
  path = squad(tmp_path / "cut.json", [
      ("Zoë lives in Kraków.", [("q0", long_q, [("Kraków", 13)])]),
      (far + "Kraków.", [("q1", "Where?", [("Kraków", len(far))])]),
      ("Old " + span + " here.", [("q2", "What?", [(span, 4)])]),
      ("Zoë lives in Kraków.", [("q3", "Where?", None)])])
  c = config(longformer, **{"data.windows": "truncate"})
  assert (c.model.max_length, c.model.max_question_tokens,
          c.model.max_answer_tokens) == (64, 16, 8)
  tok = finetune_model.load_tokenizer(longformer)
  data = qa.read(path, c, "train")
  arrays, windows = qa.featurize(data, tok, c, True)
  lines = qa.report(data, arrays, windows, tok, c, True)
  assert len(lines) == 3, lines
  assert lines[0].startswith("1 of 4 questions cut to "
                             "model.max_question_tokens=16 tokens")
  assert lines[1].startswith("1 of 3 answered questions: the (first) answer "
                             "is cut off by data.windows='truncate'")
  assert "train toward <s>" in lines[1]
  assert lines[2].startswith("1 of 3 (first) answers are longer than "
                             "model.max_answer_tokens=8 tokens")
  # Stride windows hold q1's answer; the other two cuts remain.
  c.data.windows = "stride"
  arrays, windows = qa.featurize(data, tok, c, True)
  lines = qa.report(data, arrays, windows, tok, c, False)
  assert [l[:8] for l in lines] == ["1 of 4 q", "1 of 3 ("], lines
