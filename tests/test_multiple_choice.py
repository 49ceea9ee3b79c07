"""Multiple choice (WikiHop style): sequences and global tokens as
specified, the loss falls on a toy task, the export gives transformers'
logits, accuracy by hand, and bad files fail naming the file, line and
field.

The starting checkpoint is tests/finetune_fixtures.py's tiny random
Longformer. Runs where torch is installed (the Python 3.11 leg of CI).
"""

import dataclasses
import json

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
from lfjax.tasks import finetune  # noqa: E402
from lfjax.tasks import finetune_data  # noqa: E402
from lfjax.tasks import multiple_choice as mc  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_compiles")
FILLER = ["river", "stone", "city", "old", "road", "north", "bridge", "lake"]
COLORS = ["red", "pink", "green", "blue", "black", "white"]


@pytest.fixture(scope="module")
def longformer(tmp_path_factory):
  return fixtures.tiny_longformer(tmp_path_factory.mktemp("longformer"),
                                  FILLER + COLORS + ["which", "colour", "?"])


def toy(n, seed):
  """The answer is the warm colour among three candidates (and the one the
  supports name)."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    answer = str(rng.choice(COLORS[:2]))
    cands = [answer] + [str(c) for c in rng.choice(COLORS[2:], 2,
                                                   replace=False)]
    rng.shuffle(cands)
    words = [str(w) for w in rng.choice(FILLER, int(rng.integers(6, 20)))]
    words.insert(int(rng.integers(0, len(words))), answer)
    half = len(words) // 2
    out.append({"id": f"e{seed}_{i}", "query": "which colour?",
                "candidates": cands, "answer": answer,
                "supports": [" ".join(words[:half]), " ".join(words[half:])]})
  return out


def write(path, rows):
  path.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
  return path


def config(longformer, tmp_path):
  return fixtures.tiny_config("multiple_choice_longformer", **{
      "init_from": str(longformer),
      "data.train": str(write(tmp_path / "train.json", toy(32, 0))),
      "data.valid": str(write(tmp_path / "dev.json", toy(8, 1))),
      "log_every": 4, "checkpoint_every": 100})


def test_sequences_and_global_tokens(longformer, tmp_path):
  c = config(longformer, tmp_path)
  c.model.max_question_tokens = 16
  mc.validate(c)
  tok = finetune_model.load_tokenizer(longformer)
  ex = mc.Example("x", "which colour?", ["red", "green", "blue"],
                  ["the old road", "red bridge"], 0, "")
  arrays, _ = mc.featurize([ex, mc.Example("y", "q", ["pink", "white"],
                                           ["lake"], 1, "")], tok, c, False)
  # One token row per candidate (5) and the padding row.
  assert arrays["input_ids"].shape[0] == 6
  arrays = finetune_data.gather(arrays, [0, 1])
  ids, glob = arrays["input_ids"], arrays["global_mask"]
  assert ids.shape[:2] == (2, 3)
  assert arrays["choice_mask"].tolist() == [[True, True, True],
                                            [True, True, False]]
  assert not arrays["attention_mask"][1, 2].any()  # a padded candidate
  for j, cand in enumerate(ex.candidates):
    n = int(arrays["attention_mask"][0, j].sum())
    # The text of the sequence, and of its global tokens, by decoding ids.
    assert tok.decode(ids[0, j, :n]) == (
        f"<s>the old road red bridge</s></s>which colour? {cand}</s>")
    assert tok.decode(ids[0, j][glob[0, j].astype(bool)]) == (
        f"which colour? {cand}</s>")


def test_trains_exports_and_evaluates(longformer, tmp_path, capsys):
  c = config(longformer, tmp_path)
  last = train.train_and_evaluate(c, tmp_path / "run")
  recs = metrics.read(tmp_path / "run" / "metrics.jsonl")
  losses = [r["train_loss"] for r in recs if "train_loss" in r]
  assert np.mean(losses[-2:]) < losses[0] - 0.1, losses
  assert 0 <= last["eval_accuracy"] <= 1

  mc.export(tmp_path / "run", tmp_path / "hf")
  _, ours, _ = mc.load_trained(tmp_path / "run")
  hf = transformers.LongformerForMultipleChoice.from_pretrained(
      tmp_path / "hf").eval()
  tok = finetune_model.load_tokenizer(tmp_path / "hf")
  data = mc.read(c.data.valid, c, "eval")
  arrays = finetune_data.gather(mc.featurize(data[:3], tok, c, False)[0],
                                range(3))
  with torch.no_grad():  # its default global tokens: after </s></s>
    want = hf(input_ids=torch.tensor(arrays["input_ids"]).long(),
              attention_mask=torch.tensor(arrays["attention_mask"]).long()
              ).logits.numpy()
  got = np.asarray(mc.forward(ours, arrays, c)["logits"])
  m = arrays["choice_mask"]
  np.testing.assert_allclose(got[m], want[m], atol=1e-4)

  capsys.readouterr()
  assert cli.run(evaluate.main, ["--workdir", str(tmp_path / "run"),
                                 "--data", c.data.valid]) == 0
  steps = sorted(int(p.name.split("_")[-1].split(".")[0])
                 for p in (tmp_path / "run").glob("eval_dev_*.json"))
  preds = json.loads((tmp_path / "run" / f"predictions_dev_{steps[-1]}.json")
                     .read_text())
  acc = np.mean([preds[ex.qid] == ex.candidates[ex.answer] for ex in data])
  assert acc == pytest.approx(last["eval_accuracy"])
  assert f"accuracy {acc:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("change,error", [
    (lambda e: e.pop("query"), "field 'query': missing"),
    (lambda e: e.update(answer="purple"),
     "field 'answer': \"purple\" is not one of the 2 candidates"),
    (lambda e: e.update(supports=[" "]), "field 'supports': expected a list"),
    (lambda e: e.update(candidates=["red"]),
     "field 'candidates': expected a list of at least 2"),
])
def test_bad_files_name_file_line_and_field(tmp_path, change, error):
  rows = [{"id": "ok", "query": "q", "candidates": ["red", "blue"],
           "supports": ["a red lake"], "answer": "red"},
          {"id": "bad", "query": "q", "candidates": ["red", "blue"],
           "supports": ["a red lake"], "answer": "red"}]
  change(rows[1])
  path = write(tmp_path / "bad.json", rows)
  line = next(i for i, l in enumerate(path.read_text().splitlines(), 1)
              if '"bad"' in l)
  with pytest.raises(ValueError) as e:
    mc.read(path, None, "eval")
  assert str(e.value).startswith(f"{path}:{line}: [1]: ")
  assert error in str(e.value)


def test_report_counts_cut_questions_candidates_and_supports(longformer,
                                                            tmp_path):
  # By construction (every word is at least one token) with the tiny
  # config's 8 question and 8 candidate tokens in 64: example x has a
  # 12-word question and one 10-word candidate of 3; example y has 80
  # words of supports.
  c = config(longformer, tmp_path)
  assert (c.model.max_length, c.model.max_question_tokens,
          c.model.max_candidate_tokens) == (64, 8, 8)
  tok = finetune_model.load_tokenizer(longformer)
  data = [mc.Example("x", " ".join(["which"] * 12), ["red", "blue",
                                                    " ".join(["red"] * 10)],
                     ["the old road"], 0, ""),
          mc.Example("y", "q", ["pink", "white"], ["lake " * 80], 1, "")]
  arrays, cut = mc.featurize(data, tok, c, False)
  assert mc.report(data, arrays, cut, tok, c, False) == [
      "1 of 2 questions cut to model.max_question_tokens=8 tokens",
      "1 of 5 candidates cut to model.max_candidate_tokens=8 tokens "
      "(candidates alike in their first tokens become indistinguishable)",
      "1 of 2 examples' supports truncated to fit model.max_length=64 tokens"]
  assert mc.report(data, arrays, {"questions": 0, "candidates": 0,
                                  "contexts": 0}, tok, c, True) == []


def test_duplicate_id_is_refused(tmp_path):
  rows = [{"id": "a", "query": "q", "candidates": ["red", "blue"],
           "supports": ["a red lake"], "answer": "red"}] * 2
  path = write(tmp_path / "dup.json", rows)
  at = [i for i, l in enumerate(path.read_text().splitlines(), 1)
        if '"a"' in l]
  with pytest.raises(ValueError) as e:
    mc.read(path, None, "eval")
  assert str(e.value) == (f"{path}:{at[1]}: [1]: field 'id': 'a' is also the "
                          f"id of [0] (line {at[0]}); ids must be unique "
                          "(predictions are keyed by id)")


def dense_features(data, tok, c):
  """[n, C, L] arrays of the data, built here from the tokenizer as the
  module documents the sequences (the layout featurize had before it kept
  one row per candidate): the reference for its predictions."""
  m = c.model
  words = lambda t: tok(t, add_special_tokens=False)["input_ids"]
  seqs = []
  for ex in data:
    q = words(ex.query)[:m.max_question_tokens]
    cands = [words(" " + x)[:m.max_candidate_tokens] for x in ex.candidates]
    ctx = words(" ".join(ex.supports))[:m.max_length - 4 - len(q)
                                        - max(map(len, cands))]
    seqs.append([([tok.cls_token_id] + ctx + [tok.sep_token_id] * 2 + q + x
                  + [tok.sep_token_id], len(ctx) + 3) for x in cands])
  width = max(map(len, seqs))
  length = -(-max(len(r) for s in seqs for r, _ in s) // 8) * 8
  ids = np.full((len(data), width, length), tok.pad_token_id, np.int32)
  mask, glob = np.zeros_like(ids), np.zeros_like(ids)
  for i, s in enumerate(seqs):
    for j, (r, g) in enumerate(s):
      ids[i, j, :len(r)], mask[i, j, :len(r)], glob[i, j, g:len(r)] = r, 1, 1
  return {"input_ids": ids, "attention_mask": mask, "global_mask": glob,
          "answer": np.asarray([ex.answer for ex in data], np.int32),
          "choice_mask": np.asarray([[j < len(ex.candidates)
                                      for j in range(width)] for ex in data])}


def test_candidate_rows_predict_as_dense_arrays(longformer, tmp_path):
  """The per-candidate rows give the logits, predictions and accuracy of
  the whole set's [n, C, L] arrays built independently; the rows hold
  every candidate once (no [n, C, L] array: examples with 3 and 2
  candidates)."""
  c = config(longformer, tmp_path)
  tok = finetune_model.load_tokenizer(longformer)
  rows = toy(7, 2)
  rows[3]["candidates"] = rows[3]["candidates"][:1] + [
      x for x in rows[3]["candidates"][1:] if x != rows[3]["answer"]][:1]
  data = mc.read(write(tmp_path / "mixed.json", rows), c, "eval")
  arrays, _ = mc.featurize(data, tok, c, False)
  assert arrays["input_ids"].shape[0] == 3 * 7 - 1 + 1  # + the padding row
  dense = dense_features(data, tok, c)
  model = finetune_model.load_model(longformer, mc.HEAD)
  want = np.asarray(mc.forward(model, dense, c)["logits"])
  got = finetune.predict(model, arrays, 4,
                         lambda m, b: mc.forward(m, b, c))["logits"]
  np.testing.assert_allclose(got, want, atol=1e-5)
  metrics, preds = finetune.evaluate_data(mc.SPEC, model, c, data, tok, 4)
  pick = np.argmax(want, -1)
  assert preds == {ex.qid: ex.candidates[p] for ex, p in zip(data, pick)}
  assert metrics["accuracy"] == pytest.approx(np.mean(
      [p == ex.answer for ex, p in zip(data, pick)]))


def test_length_buckets_compile_once_each(longformer, tmp_path):
  """data.length_buckets 3: batches at their bucket's length only, one
  train-step trace per bucket (the loss traced once per shape), the
  shortest bucket shorter than the longest example's."""
  c = config(longformer, tmp_path)
  rows = toy(32, 0)
  for i, r in enumerate(rows):  # lengths spread over about 16 .. 40 tokens
    r["supports"] = [" ".join(["river"] * (1 + i // 2))]
  c.data.train = str(write(tmp_path / "spread.json", rows))
  c.data.length_buckets = 3
  c.train.epochs = 2.0
  shapes = []

  def loss(model, batch, config):
    shapes.append(batch["input_ids"].shape)
    return mc.loss(model, batch, config)
  spec = dataclasses.replace(mc.SPEC, loss=loss)
  finetune.train_and_evaluate(spec, c, tmp_path / "run")
  lengths = sorted(s[-1] for s in shapes)
  assert len(shapes) == len(set(shapes)) == 3, shapes
  assert lengths[0] < lengths[-1] and all(n % 8 == 0 for n in lengths)
