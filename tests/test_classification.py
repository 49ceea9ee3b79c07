"""Classification fine-tuning: the loss falls on a learnable toy task,
resume is exact, the export gives transformers' logits and keeps the label
names, evaluation of a run and of its export agree, metrics equal hand
counts, and bad data files fail naming the file, the line and the field.

The starting checkpoint is tests/finetune_fixtures.py's tiny random
Longformer. Runs where torch is installed (the Python 3.11 leg of CI).
"""

import json

import numpy as np
import pytest

from tests import finetune_fixtures as fixtures
from tests import optional

torch = optional.need("torch")
transformers = optional.need("transformers")

from lfjax import cli  # noqa: E402
from lfjax import evaluate  # noqa: E402
from lfjax import export  # noqa: E402
from lfjax import metrics  # noqa: E402
from lfjax import train  # noqa: E402
from lfjax.tasks import classification  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_compiles")
WORDS = ["the", "film", "was", "and", "plot", "actor", "scene", "long",
         "story", "music", "end", "very", "quite", "über", "naïve"]


@pytest.fixture(scope="module")
def longformer(tmp_path_factory):
  return fixtures.tiny_longformer(tmp_path_factory.mktemp("longformer"),
                                  WORDS + ["excellent", "terrible", "good", "bad"])


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                          for r in rows))
  return path


def toy(n, seed, multi=False):
  """Reviews whose words lean to one side: every third word is a cue of
  the label's side."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    label = ["pos", "neg"][i % 2]
    cues = {"pos": ["excellent", "good"], "neg": ["terrible", "bad"]}[label]
    words = [str(rng.choice(cues)) if j % 3 == 0 else str(rng.choice(WORDS))
             for j in range(int(rng.integers(8, 30)))]
    rows.append({"text": " ".join(words),
                 "label": [label] + (["long"] if len(words) > 20 else [])
                 if multi else label})
  return rows


def config(longformer, tmp_path, multi=False, **changes):
  return fixtures.tiny_config("classify_longformer", **{
      "init_from": str(longformer),
      "data.train": str(write_jsonl(tmp_path / "train.jsonl",
                                    toy(32, 0, multi))),
      "data.valid": str(write_jsonl(tmp_path / "dev.jsonl",
                                    toy(8, 1, multi))),
      "train.epochs": 8,  # 32 steps of 8
      "log_every": 4, "checkpoint_every": 10, "eval_every": 16, **changes})


def strip_timing(records):
  return [{k: v for k, v in r.items() if k != "tokens_per_s"}
          for r in records]


class Interrupt(Exception):
  pass


def test_trains_resumes_exports_and_evaluates(longformer, tmp_path,
                                              monkeypatch, capsys):
  c = config(longformer, tmp_path)
  last = train.train_and_evaluate(c, tmp_path / "straight")
  recs = metrics.read(tmp_path / "straight" / "metrics.jsonl")
  losses = [r["train_loss"] for r in recs if "train_loss" in r]
  assert len(losses) == 8 and np.mean(losses[-2:]) < losses[0] - 0.1, losses
  assert "eval_accuracy" in last and "eval_macro_f1" in last
  saved = json.loads((tmp_path / "straight" / "config.json").read_text())
  assert saved["data"]["labels"] == ["neg", "pos"]
  assert saved["data"]["label_kind"] == "single"

  write = metrics.JsonlWriter.write

  def dying_write(self, step, values):
    write(self, step, values)
    if step == 24:
      raise Interrupt()
  monkeypatch.setattr(metrics.JsonlWriter, "write", dying_write)
  with pytest.raises(Interrupt):
    train.train_and_evaluate(c, tmp_path / "killed")
  monkeypatch.setattr(metrics.JsonlWriter, "write", write)
  train.train_and_evaluate(c, tmp_path / "killed")
  assert (strip_timing(metrics.read(tmp_path / "killed" / "metrics.jsonl"))
          == strip_timing(recs))

  out = tmp_path / "hf"
  assert cli.run(export.main, ["--workdir", str(tmp_path / "straight"),
                               "--to", str(out)]) == 0
  _, ours, step = classification.load_trained(tmp_path / "straight")
  assert step == 32
  hf = transformers.LongformerForSequenceClassification.from_pretrained(
      out).eval()
  assert hf.config.id2label == {0: "neg", 1: "pos"}
  assert hf.config.label2id == {"neg": 0, "pos": 1}
  assert hf.config.problem_type == "single_label_classification"
  tok = transformers.AutoTokenizer.from_pretrained(out)
  enc = tok(["the film was excellent and very long " * 3, "terrible end"],
            padding=True, return_tensors="np")
  with torch.no_grad():  # global attention on the first token by default
    want = hf(input_ids=torch.tensor(enc["input_ids"]),
              attention_mask=torch.tensor(enc["attention_mask"])).logits
  got = classification.forward(ours, dict(enc), c)["logits"]
  np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4)

  # A run and its export evaluate alike, through the one entry.
  capsys.readouterr()
  dev = c.data.valid
  assert cli.run(evaluate.main, ["--workdir", str(tmp_path / "straight"),
                                 "--data", dev]) == 0
  run = json.loads((tmp_path / "straight" / "eval_dev_32.json").read_text())
  preds = json.loads((tmp_path / "straight" / "predictions_dev_32.json")
                     .read_text())
  assert [p["line"] for p in preds] == list(range(1, 9))
  assert {p["label"] for p in preds} <= {"neg", "pos"}
  acc = np.mean([p["label"] == p["gold"] for p in preds])
  assert run["accuracy"] == pytest.approx(acc)
  assert run["accuracy"] == pytest.approx(last["eval_accuracy"])
  assert cli.run(evaluate.main, ["--model", str(out), "--data", dev]) == 0
  text_out = capsys.readouterr().out
  assert f"accuracy {run['accuracy']:.4f} macro f1 {run['macro_f1']:.4f}" \
      in text_out.splitlines()[-1], text_out


def test_trains_on_parquet_and_evaluates_a_datasets_folder(longformer,
                                                           tmp_path):
  pa = optional.need("pyarrow")
  datasets = optional.need("datasets")
  import pyarrow.parquet as pq
  rows, dev = toy(32, 0), toy(8, 1)
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
  datasets.Dataset.from_list(dev).save_to_disk(str(tmp_path / "dev"))
  jsonl = classification.read(write_jsonl(tmp_path / "t.jsonl", rows), None,
                              "train")
  table = classification.read(tmp_path / "train.parquet", None, "train")
  assert (table.texts, table.labels, table.lines) == (
      jsonl.texts, jsonl.labels, jsonl.lines)
  c = config(longformer, tmp_path, **{
      "data.train": str(tmp_path / "train.parquet"),
      "data.valid": str(tmp_path / "dev"), "train.epochs": 0.5,
      "eval_every": 0})
  last = train.train_and_evaluate(c, tmp_path / "run")
  assert "eval_accuracy" in last
  assert cli.run(evaluate.main, ["--workdir", str(tmp_path / "run"),
                                 "--data", str(tmp_path / "dev")]) == 0
  preds = json.loads(next((tmp_path / "run").glob("predictions_dev_*.json"))
                     .read_text())
  assert [(p["line"], p["gold"]) for p in preds] == [
      (i, r["label"]) for i, r in enumerate(dev, 1)]


def test_multi_label_exports_its_problem_type(longformer, tmp_path):
  c = config(longformer, tmp_path, multi=True, **{"train.epochs": 0.5,
                                                     "eval_every": 0})
  last = train.train_and_evaluate(c, tmp_path / "run")
  assert {"eval_micro_f1", "eval_macro_f1", "eval_exact_match"} <= set(last)
  classification.export(tmp_path / "run", tmp_path / "hf")
  d = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert d["problem_type"] == "multi_label_classification"
  assert d["id2label"] == {"0": "long", "1": "neg", "2": "pos"}
  assert d["architectures"] == ["LongformerForSequenceClassification"]


def test_metrics_equal_hand_counts():
  # Labels 0, 1, 2. Gold 0 0 1 1 2, predicted 0 1 1 1 0:
  # label 0: tp 1 fp 1 fn 1 -> F1 2/4; label 1: tp 2 fp 1 fn 0 -> 4/5;
  # label 2: tp 0 fp 0 fn 1 -> 0.
  acc, macro = classification.single_label_scores([0, 1, 1, 1, 0],
                                                  [0, 0, 1, 1, 2])
  assert acc == pytest.approx(3 / 5)
  assert macro == pytest.approx((0.5 + 0.8 + 0.0) / 3)
  # Label 3 is never gold nor predicted: not in the single-label mean.
  assert classification.single_label_scores([3, 3], [3, 3]) == (1.0, 1.0)
  pred = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], bool)
  gold = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], bool)
  micro, macro, exact = classification.multi_label_scores(pred, gold)
  # tp per label 2, 1, 0; fp 0, 1, 1; fn 0, 0, 0.
  assert micro == pytest.approx(2 * 3 / (2 * 3 + 2))
  assert macro == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
  assert exact == pytest.approx(1 / 3)


@pytest.mark.parametrize("line,error", [
    ({"label": "pos"}, "field 'text': missing"),
    ({"text": "   ", "label": "pos"}, "field 'text': empty"),
    ({"text": 7, "label": "pos"}, "field 'text': expected a string, got int"),
    ({"text": "a film", "label": "meh"},
     "field 'label': 'meh' is not one of the model's 2 labels"),
    ({"text": "a film", "label": None}, "field 'label': expected a string"),
    ("[1, 2]", "expected a JSON object per line, got list"),
    ("{oops", "expected a JSON object per line"),
])
def test_bad_data_files_name_file_line_and_field(longformer, tmp_path, line,
                                                 error):
  c = classification.resolve(config(longformer, tmp_path),
                             classification.read(
                                 config(longformer, tmp_path).data.train,
                                 None, "train"))
  bad = tmp_path / "bad.jsonl"
  good = json.dumps({"text": "a film", "label": "pos"})
  bad.write_text(good + "\n\n" + (line if isinstance(line, str)
                                  else json.dumps(line)) + "\n")
  with pytest.raises(ValueError) as e:
    classification.read(bad, c, "eval")
  assert str(e.value).startswith(f"{bad}:3: ") and error in str(e.value)
  assert cli.exit_code(e.value) == 1  # the CLI prints it as one line


def test_unknown_label_in_training_data_with_given_labels(longformer,
                                                          tmp_path):
  c = config(longformer, tmp_path, **{"data.labels": ("neg", "neutral")})
  with pytest.raises(ValueError, match=r"train.jsonl:1: field 'label': "
                     "'pos' is not one of the model's 2 labels"):
    train.train_and_evaluate(c, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_init_from_without_weights_names_the_field(longformer, tmp_path):
  # A folder with config.json and tokenizer files but no weights file.
  import shutil
  broken = tmp_path / "broken"
  shutil.copytree(longformer, broken)
  for f in broken.glob("*.safetensors"):
    f.unlink()
  c = config(broken, tmp_path)
  with pytest.raises(FileNotFoundError, match=r"^config\.init_from: "
                     "expected a Hugging Face checkpoint directory"):
    train.train_and_evaluate(c, tmp_path / "run")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name,task", [
    ("classify_longformer", classification),
    ("qa_longformer", "qa"), ("multiple_choice_longformer", "multiple_choice")])
def test_mesh_is_accepted_and_checked(name, task):
  # Fine-tuning runs on the mesh (tests/test_parallel.py): a mesh passes
  # validation, a malformed one fails naming its axis.
  from lfjax import tasks
  c = fixtures.tiny_config(name, init_from="checkpoint",
                           **{"data.train": "train.jsonl"})
  module = task if not isinstance(task, str) else tasks.get(task)
  c.mesh.data, c.mesh.fsdp, c.mesh.seq = 2, 2, -1
  module.validate(c)
  c.mesh.fsdp = 0
  with pytest.raises(ValueError, match=r"^config\.mesh\.fsdp: expected a "
                     r"device count >= 1 or -1 \(the rest\), got 0"):
    module.validate(c)


def test_truncated_documents_are_reported_for_train_and_dev(longformer,
                                                           tmp_path, capsys):
  # By construction: 200 words are more than the tiny config's 128 tokens
  # (every word is at least one token); the toy's 8-30 words are fewer.
  long_doc = {"text": " ".join(["film"] * 200), "label": "pos"}
  c = config(longformer, tmp_path, **{"train.epochs": 0.25})
  c.data.train = str(write_jsonl(tmp_path / "train.jsonl",
                                 toy(6, 0) + [long_doc, long_doc]))
  c.data.valid = str(write_jsonl(tmp_path / "dev.jsonl",
                                 toy(3, 1) + [long_doc]))
  train.train_and_evaluate(c, tmp_path / "run")
  out = capsys.readouterr().out
  assert (f"{c.data.train}: 2 of 8 documents truncated to "
          "model.max_length=128 tokens") in out
  assert (f"{c.data.valid}: 1 of 4 documents truncated to "
          "model.max_length=128 tokens") in out


def test_invalid_utf8_is_one_error_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  # Line 2 holds 0xe9 (Latin-1 é): after line 1's 15 bytes and the 13 of
  # `{"text": "caf`, at byte offset 28.
  path.write_bytes(b'{"label": "a"}\n{"text": "caf\xe9", "x": 1}\n')
  with pytest.raises(ValueError, match=rf"^{path}:2: not UTF-8 text \(byte "
                     r"b'\\xe9' at byte offset 28: invalid continuation "
                     r"byte\)"):
    classification.read(path, None, "train")


def test_evaluate_help_and_a_folder_without_a_head(longformer, capsys):
  from lfjax.tasks import finetune_commands
  assert cli.run(evaluate.main, ["--help"]) == 0
  out = capsys.readouterr().out
  for flag in ("--data", "--model", "--checkpoint", "--max_answer_tokens",
               "--workdir CHARLM_RUN --help", "--workdir MLM_RUN --help"):
    assert flag in out
  text = finetune_commands.eval_parser(classification.SPEC).format_help()
  assert "(default: the newest)" in text and "(default: None)" not in text
  # A masked LM has no head to evaluate on a data file.
  assert cli.run(evaluate.main, ["--model", str(longformer), "--data",
                                 "dev.jsonl"]) == 2
  assert f"error: --data: {longformer} holds a masked LM" in (
      capsys.readouterr().err)
