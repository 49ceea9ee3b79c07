"""Summarization (LED): config checks, data reading and featurizing against
the tokenizer called directly, the label-smoothed loss against a numpy
computation and transformers' LabelSmoother, shift_tokens_right against
transformers', ROUGE against rouge-score called directly and by hand, the
predictions file, the train step's token-count mean; end to end, from
lfjax.make_tiny's tiny LED: the tiny config trains, resumes exactly,
evaluates (ROUGE, predictions JSON lines) and exports a folder
transformers' LEDForConditionalGeneration loads with the same logits.
Tests that need transformers or torch (the Python 3.11 leg) skip without.
"""

import json
import shutil
import warnings

import jax
import numpy as np
import pytest
from flax import nnx

from tests import finetune_fixtures as fixtures
from tests import optional

from lfjax.tasks import finetune
from lfjax.tasks import summarization as summ
from lfjax.tasks import summarization_model as sm

pytestmark = pytest.mark.usefixtures("fast_compiles")

WORDS = ["the", "model", "reads", "long", "documents", "and", "writes",
         "short", "summaries", "of", "papers", "results", "show"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  optional.need("transformers")
  from lfjax.data import text
  from lfjax.data import chars
  path = tmp_path_factory.mktemp("tok")
  docs = [t.decode("utf-8", "replace") for _, t in chars.pystdlib_files()[:30]]
  text.train_tokenizer(docs + [" ".join(WORDS)] * 20, path, vocab_size=400)
  return optional.need("transformers").AutoTokenizer.from_pretrained(path)


def led_config_json(path, enc=64, dec=32, start=2):
  """A config.json with the fields summarization reads (an LED folder's)."""
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps({
      "model_type": "led", "max_encoder_position_embeddings": enc,
      "max_decoder_position_embeddings": dec,
      "decoder_start_token_id": start}))
  return path


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def config(tmp_path, **changes):
  return fixtures.tiny_config("summarization_led", **{
      "init_from": str(led_config_json(tmp_path / "led", enc=128)),
      "data.train": str(tmp_path / "train.jsonl"), **changes})


# Config ---------------------------------------------------------------------


@pytest.mark.parametrize("field,value,match", [
    ("data.summary_field", "document", "config.data.summary_field"),
    ("data.document_field", "", "config.data.document_field"),
    ("train.label_smoothing", 1.0, "config.train.label_smoothing"),
    ("eval.early_stopping", "yes", "config.eval.early_stopping"),
    ("eval.num_beams", 0, "config.eval.num_beams"),
    ("eval.min_length", 17, "config.eval.min_length"),
    ("model.max_target_length", 1, "config.model.max_target_length"),
])
def test_validate_names_the_field(tmp_path, field, value, match):
  c = config(tmp_path)
  summ.validate(c)  # the tiny config itself is valid
  c.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=match):
    summ.validate(c)


def test_lengths_checked_against_the_led_positions(tmp_path):
  c = config(tmp_path)
  led_config_json(tmp_path / "led", enc=64, dec=32)
  with pytest.raises(ValueError, match=r"config.model.max_length: .* 64 "
                     "encoder positions"):
    sm.check_length(c)
  c.model.max_length = 64
  c.model.max_target_length = 40
  with pytest.raises(ValueError, match=r"model.max_target_length: .* 32 "
                     "decoder"):
    sm.check_length(c)
  c.model.max_target_length = 32
  c.eval.max_length = 33
  with pytest.raises(ValueError, match="config.eval.max_length"):
    sm.check_length(c)
  c.eval.max_length = 32
  sm.check_length(c)
  (tmp_path / "led" / "config.json").write_text(json.dumps(
      {"model_type": "roberta"}))
  with pytest.raises(ValueError, match="init_from: .* 'roberta' model"):
    sm.check_length(c)


# Data ---------------------------------------------------------------------


def test_reads_configured_fields_of_jsonl_and_datasets_folders(tmp_path):
  datasets = optional.need("datasets")
  rows = [{"article": f"doc {i}", "abstract": f"sum {i}", "x": i}
          for i in range(3)]
  c = config(tmp_path, **{"data.document_field": "article",
                          "data.summary_field": "abstract"})
  data = summ.read(write_jsonl(tmp_path / "a.jsonl", rows), c, "train")
  assert data.documents == ["doc 0", "doc 1", "doc 2"]
  assert data.summaries == ["sum 0", "sum 1", "sum 2"]
  assert data.lines == [1, 2, 3]
  datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
  data = summ.read(tmp_path / "ds", c, "eval")
  assert data.summaries == ["sum 0", "sum 1", "sum 2"]


@pytest.mark.parametrize("row,match", [
    ({"document": "d"}, r"b.jsonl:2: field 'summary': missing"),
    ({"document": "d", "summary": 3}, r"b.jsonl:2: field 'summary': "
     "expected a string"),
    ({"document": " ", "summary": "s"}, r"b.jsonl:2: field 'document': "
     "empty"),
])
def test_bad_records_name_file_line_and_field(tmp_path, row, match):
  path = write_jsonl(tmp_path / "b.jsonl",
                     [{"document": "a", "summary": "b"}, row])
  with pytest.raises(ValueError, match=match):
    summ.read(path, config(tmp_path), "train")


def test_featurize_matches_the_tokenizer_and_reports_cuts(tmp_path, tok):
  c = config(tmp_path, **{"model.max_length": 16,
                          "model.max_target_length": 12})
  docs = [" ".join(WORDS[:3]), " ".join(WORDS * 3)]  # the second is cut
  sums = [" ".join(WORDS[4:6]), " ".join(WORDS[:2])]
  data = summ.Data("x", [1, 2], docs, sums)
  arrays, info = summ.featurize(data, tok, c, True)
  # Expected from the tokenizer called on each text by itself.
  doc_ids = [tok(d)["input_ids"] for d in docs]
  sum_ids = [tok(s)["input_ids"] for s in sums]
  assert len(doc_ids[1]) > 16 and all(len(s) <= 12 for s in sum_ids)
  assert arrays["input_ids"].shape == (2, 16)
  assert arrays["input_ids"][0, :len(doc_ids[0])].tolist() == doc_ids[0]
  assert (arrays["input_ids"][0, len(doc_ids[0]):] == tok.pad_token_id).all()
  assert arrays["attention_mask"][0].sum() == len(doc_ids[0])
  # Truncation keeps </s> last, as the tokenizer's own truncation does.
  assert arrays["input_ids"][1].tolist() == (doc_ids[1][:15]
                                             + [tok.eos_token_id])
  # The longest summary rounded up to 8, at most max_target_length.
  width = min(12, -(-max(map(len, sum_ids)) // 8) * 8)
  assert arrays["labels"].shape == (2, width)
  for i, s in enumerate(sum_ids):
    assert arrays["labels"][i].tolist() == s + [-100] * (width - len(s))
    assert arrays["decoder_input_ids"][i].tolist() == (
        [2] + s + [tok.pad_token_id] * (width - len(s)))[:width]
  assert (info.cut_documents, info.cut_summaries) == (1, 0)
  assert summ.report(data, arrays, info, tok, c, True) == [
      "1 of 2 documents truncated to model.max_length=16 tokens"]
  c.model.max_target_length = 4
  arrays, info = summ.featurize(data, tok, c, True)
  assert info.cut_summaries == 2 and arrays["labels"].shape == (2, 4)
  assert arrays["labels"][0].tolist() == sum_ids[0][:3] + [tok.eos_token_id]


def test_shift_tokens_right_is_transformers():
  torch = optional.need("torch")
  from transformers.models.led import modeling_led
  labels = np.array([[0, 5, 6, 2, -100, -100], [0, 7, 8, 9, 10, 2]])
  want = modeling_led.shift_tokens_right(torch.tensor(labels), 1, 2).numpy()
  np.testing.assert_array_equal(summ.shift_tokens_right(labels, 1, 2), want)


# Loss ---------------------------------------------------------------------


def numpy_smoothed_loss(logits, labels, eps):
  """The token mean of (1 - eps) * NLL + eps * mean_v(-log p_v) over
  labels != -100, in float64 numpy."""
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  total, n = 0.0, 0
  for b in range(labels.shape[0]):
    for t in range(labels.shape[1]):
      y = labels[b, t]
      if y == -100:
        continue
      total += (1 - eps) * -logp[b, t, y] + eps * -logp[b, t].mean()
      n += 1
  return total / n


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothed_loss_matches_numpy_and_transformers(eps):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
  labels = np.array([[1, 4, 10, -100, -100], [0, 3, 3, 7, 2]])
  per = summ.smoothed_token_losses(logits, labels, eps)
  got = float(np.sum(per)) / np.sum(labels != -100)
  assert np.all(np.asarray(per)[labels == -100] == 0)
  assert got == pytest.approx(numpy_smoothed_loss(logits, labels, eps),
                              rel=1e-5)
  torch = optional.need("torch")
  from transformers.trainer_pt_utils import LabelSmoother
  want = LabelSmoother(epsilon=eps)({"logits": torch.tensor(logits)},
                                    torch.tensor(labels))
  assert got == pytest.approx(float(want), rel=1e-5)


def test_train_step_averages_over_the_batch_tokens():
  """With a "count" in the loss stats (summarization: target tokens), the
  step's loss is the batch's loss sum over its token count, whatever the
  micro-batches hold: here (3 + 7) / (1 + 4), not the mean of 3 and 7/4."""
  import jax.numpy as jnp
  import optax
  model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(m, mb):
    w = m.kernel[...][0, 0]
    return jnp.sum(mb["s"]) + 0 * w, {"count": jnp.sum(mb["c"])}
  step = finetune.make_train_step(graphdef, rest, optax.sgd(0.0), loss_fn,
                                  2, 1)
  batch = {"s": np.array([3.0, 7.0], np.float32),
           "c": np.array([1.0, 4.0], np.float32)}
  _, _, stats = step(params, optax.sgd(0.0).init(params), batch,
                     jax.random.key(0))
  assert float(stats["loss"]) == pytest.approx(10 / 5)
  assert float(stats["count"]) == 5


# ROUGE, predictions -------------------------------------------------------


def test_rouge_by_hand_and_rouge_score_direct():
  from rouge_score import rouge_scorer
  # ROUGE-1: 2 of 3 unigrams shared both ways, F 2/3; ROUGE-2: "the cat"
  # shared, 1 of 2 bigrams, F 1/2; LCS "the cat", F 2/3.
  got = summ.rouge(["the cat sat"], ["the cat ran"], stemmer=False)
  assert got["rouge1"] == pytest.approx(100 * 2 / 3)
  assert got["rouge2"] == pytest.approx(50.0)
  assert got["rougeL"] == pytest.approx(100 * 2 / 3)
  preds = ["the models were reading\nlong papers", "short summaries"]
  refs = ["a model reads long papers.\nIt writes summaries",
          "summaries are short\nand good"]
  scorer = rouge_scorer.RougeScorer(
      ["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
  scores = [scorer.score(r, p) for p, r in zip(preds, refs)]
  got = summ.rouge(preds, refs)
  for k in summ.ROUGE_TYPES:
    assert got[k] == pytest.approx(
        100 * np.mean([s[k].fmeasure for s in scores]))
  # Lsum: the union LCS of each reference sentence (newline-split) with
  # the prediction, all 4 tokens; L: one LCS of 2 of 4 tokens.
  got = summ.rouge(["dogs bark cats sleep"], ["cats sleep\ndogs bark"],
                   stemmer=False)
  assert got["rougeL"] == pytest.approx(50.0)
  assert got["rougeLsum"] == pytest.approx(100.0)


def test_score_decodes_and_predictions_are_json_lines(tmp_path, tok):
  c = config(tmp_path)
  data = summ.Data("x", [3, 7], ["d1", "d2"],
                   ["the model reads long papers", "short summaries"])
  preds = ["the model writes papers", "long summaries of results"]
  seqs = [[2] + tok(p)["input_ids"] + [tok.pad_token_id] * 2 for p in preds]
  info = summ.Info(0, 0, tok)
  metrics, predictions = summ.score(data, info, {"sequences": seqs}, c)
  assert predictions == [
      {"line": 3, "summary": preds[0], "reference": data.summaries[0]},
      {"line": 7, "summary": preds[1], "reference": data.summaries[1]}]
  want = summ.rouge(preds, data.summaries)  # checked against rouge-score
  for k in summ.ROUGE_TYPES:
    assert metrics[k] == pytest.approx(want[k])
  assert metrics["gen_len"] == np.mean(
      [len(tok(p, add_special_tokens=False)["input_ids"]) for p in preds])
  out = tmp_path / "p.jsonl"
  finetune.write_predictions(out, predictions, True)
  lines = out.read_text().splitlines()
  assert [json.loads(l) for l in lines] == predictions


# End to end (needs lfjax's LED, torch for transformers' side) -------------


@pytest.fixture(scope="module")
def tiny_led(tmp_path_factory):
  optional.need("transformers")
  from lfjax import make_tiny
  return make_tiny.make_tiny_led(tmp_path_factory.mktemp("led") / "led",
                                 documents=30, vocab_size=300, positions=128)


def toy_pairs(n, seed):
  """Documents of random words whose summary is their first three words
  and their last: the summary needs both ends of the document."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    words = [str(w) for w in rng.choice(WORDS, int(rng.integers(6, 20)))]
    rows.append({"document": " ".join(words),
                 "summary": " ".join(words[:3] + words[-1:])})
  return rows


def strip_timing(records):
  return [{k: v for k, v in r.items() if k != "tokens_per_s"}
          for r in records]


class Interrupt(Exception):
  pass


def test_trains_resumes_evaluates_and_exports(tiny_led, tmp_path,
                                              monkeypatch, capsys):
  torch = optional.need("torch")
  from lfjax import cli
  from lfjax import evaluate
  from lfjax import export
  from lfjax import metrics
  from lfjax import train
  c = fixtures.tiny_config("summarization_led", **{
      "init_from": str(tiny_led),
      "data.train": str(write_jsonl(tmp_path / "train.jsonl",
                                    toy_pairs(32, 0))),
      "data.valid": str(write_jsonl(tmp_path / "dev.jsonl", toy_pairs(4, 1))),
      "train.epochs": 4,  # 16 steps of 8
      "log_every": 4, "checkpoint_every": 10, "eval_every": 0,
      "eval.batch_size": 4})
  last = train.train_and_evaluate(c, tmp_path / "straight")
  recs = metrics.read(tmp_path / "straight" / "metrics.jsonl")
  losses = [r["train_loss"] for r in recs if "train_loss" in r]
  assert len(losses) == 4 and losses[-1] < losses[0] - 0.1, losses
  for k in summ.ROUGE_TYPES + ("gen_len",):
    assert f"eval_{k}" in last
  preds = [json.loads(l) for l in (tmp_path / "straight" /
                                   "predictions_dev_16.jsonl").read_text(
                                   ).splitlines()]
  assert [p["line"] for p in preds] == [1, 2, 3, 4]
  assert [p["reference"] for p in preds] == [
      r["summary"] for r in toy_pairs(4, 1)]
  assert summ.rouge([p["summary"] for p in preds],
                    [p["reference"] for p in preds])["rouge1"] == \
      pytest.approx(last["eval_rouge1"])

  write = metrics.JsonlWriter.write

  def dying_write(self, step, values):
    write(self, step, values)
    if step == 12:
      raise Interrupt()
  monkeypatch.setattr(metrics.JsonlWriter, "write", dying_write)
  with pytest.raises(Interrupt):
    train.train_and_evaluate(c, tmp_path / "killed")
  monkeypatch.setattr(metrics.JsonlWriter, "write", write)
  train.train_and_evaluate(c, tmp_path / "killed")
  assert (strip_timing(metrics.read(tmp_path / "killed" / "metrics.jsonl"))
          == strip_timing(recs))
  assert ((tmp_path / "killed" / "predictions_dev_16.jsonl").read_text()
          == (tmp_path / "straight" / "predictions_dev_16.jsonl").read_text())

  out = tmp_path / "hf"
  assert cli.run(export.main, ["--workdir", str(tmp_path / "straight"),
                               "--to", str(out)]) == 0
  _, ours, step = summ.load_trained(tmp_path / "straight")
  assert step == 16
  transformers = optional.need("transformers")
  hf = transformers.LEDForConditionalGeneration.from_pretrained(out).eval()
  tok = transformers.AutoTokenizer.from_pretrained(out)
  enc = tok(["the model reads long documents and papers " * 3, "short"],
            padding=True, return_tensors="np")
  dec = tok(["the model", "short results show"], padding=True,
            return_tensors="np")["input_ids"]
  dec_in = summ.shift_tokens_right(dec, tok.pad_token_id, 2)
  glob = np.zeros_like(enc["input_ids"])
  glob[:, 0] = 1
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(enc["input_ids"]),
              attention_mask=torch.tensor(enc["attention_mask"]),
              global_attention_mask=torch.tensor(glob),
              decoder_input_ids=torch.tensor(dec_in)).logits.numpy()
  graphdef, state = nnx.split(ours)
  # Jitted: the model run op by op takes far longer than its compile.
  got = jax.jit(lambda state, b: summ.forward(nnx.merge(graphdef, state), b,
                                              c))(state, {
      "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
      "decoder_input_ids": dec_in})["logits"]
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)

  # A run and its export evaluate alike, through the one entry.
  capsys.readouterr()
  dev = c.data.valid
  assert cli.run(evaluate.main, ["--workdir", str(tmp_path / "straight"),
                                 "--data", dev]) == 0
  run = json.loads((tmp_path / "straight" / "eval_dev_16.json").read_text())
  assert run["rouge1"] == pytest.approx(last["eval_rouge1"])
  assert (tmp_path / "straight" / "predictions_dev_16.jsonl").read_text() \
      .splitlines() == [json.dumps(p, ensure_ascii=False) for p in preds]
  assert cli.run(evaluate.main, ["--model", str(out), "--data", dev]) == 0
  line = capsys.readouterr().out.splitlines()[-1]
  assert f"rouge1 {run['rouge1']:.2f} rouge2 {run['rouge2']:.2f}" in line, \
      line
  # Greedy through the decoding override: a result file of its own.
  assert cli.run(evaluate.main, ["--workdir", str(tmp_path / "straight"),
                                 "--data", dev, "--num_beams", "1"]) == 0
  assert (tmp_path / "straight" / "eval_dev_16_nb1.json").exists()


def test_evaluates_a_transformers_led_folder(tiny_led, tmp_path, capsys):
  """A folder without a run's config (lfjax_run.json): the task from its
  architectures, lengths from its positions (generation capped at its 64
  decoder positions, not the default 256)."""
  from lfjax import cli
  from lfjax import evaluate
  dev = write_jsonl(tmp_path / "dev.jsonl", toy_pairs(2, 1))
  out = tmp_path / "p.jsonl"
  assert cli.run(evaluate.main, ["--model", str(tiny_led), "--data",
                                 str(dev), "--num_beams", "1",
                                 "--predictions", str(out)]) == 0
  assert "rouge1" in capsys.readouterr().out.splitlines()[-2]
  preds = [json.loads(l) for l in out.read_text().splitlines()]
  assert [p["line"] for p in preds] == [1, 2]
  assert [p["reference"] for p in preds] == [r["summary"]
                                             for r in toy_pairs(2, 1)]


# A tokenizer that is not the model's ------------------------------------------


def copy_model_only(src, dst):
  """The checkpoint's config and weights without its tokenizer files (what
  save_pretrained or a convert of a tokenizer-less BART writes)."""
  dst.mkdir()
  for name in ("config.json", "model.safetensors", "generation_config.json"):
    shutil.copy(src / name, dst / name)
  return dst


def test_a_folder_without_tokenizer_files_is_refused(tiny_led, tmp_path,
                                                     capsys):
  # transformers 5 loads an EMPTY tokenizer from such a folder (every text
  # -> <s></s>): the run trained and scored on nothing.
  from lfjax import cli
  from lfjax import train
  bare = copy_model_only(tiny_led, tmp_path / "bare")
  write_jsonl(tmp_path / "train.jsonl", toy_pairs(8, 0))
  rc = cli.run(train.main, [
      "--config", "configs/summarization_led.py:tiny",
      f"--config.init_from={bare}",
      f"--config.data.train={tmp_path / 'train.jsonl'}",
      "--workdir", str(tmp_path / "run")])
  err = capsys.readouterr().err
  assert rc != 0 and "no tokenizer files" in err and str(bare) in err
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_tokenizer_of_another_model_is_refused(tiny_led, tmp_path):
  from lfjax.data import text
  from lfjax.tasks import finetune_model
  # Expected from the files themselves: the tiny LED's config.json and
  # its tokenizer's vocabulary.
  cfg = json.loads((tiny_led / "config.json").read_text())
  tok = finetune_model.load_tokenizer(tiny_led, tiny_led)
  assert len(tok) <= cfg["vocab_size"]
  small = copy_model_only(tiny_led, tmp_path / "small")
  d = dict(cfg, vocab_size=len(tok) - 1)
  (small / "config.json").write_text(json.dumps(d))
  with pytest.raises(ValueError, match=rf"data.tokenizer: .* {len(tok)} "
                     rf"tokens, more than the model's vocab_size="
                     rf"{len(tok) - 1}"):
    finetune_model.load_tokenizer(tiny_led, small)
  other_pad = copy_model_only(tiny_led, tmp_path / "pad")
  (other_pad / "config.json").write_text(json.dumps(
      dict(cfg, pad_token_id=cfg["pad_token_id"] + 3)))
  with pytest.raises(ValueError, match="pad_token_id"):
    text.check_fits(tok, other_pad, tokenizer_dir=tiny_led)


def test_generate_warns_once_for_an_all_local_mask(tiny_led):
  from lfjax import led_convert
  from lfjax.models import led
  model = led_convert.from_pretrained(str(tiny_led))
  ids = np.array([[0, 5, 6, 7, 2]])
  led._WARNED_ALL_LOCAL.clear()  # noqa: SLF001 (once per process)
  with pytest.warns(UserWarning, match="no token has global attention"):
    model.generate(ids, global_attention_mask=np.zeros_like(ids),
                   max_length=4)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    model.generate(ids, global_attention_mask=np.zeros_like(ids),
                   max_length=4)
  with pytest.raises(ValueError, match="input_ids: expected int"):
    model(ids.astype(np.float32))


def test_convert_commands_never_write_over_a_checkpoint(tiny_led, tmp_path,
                                                        capsys):
  from lfjax import cli
  from lfjax import convert
  from lfjax import led_convert
  taken = copy_model_only(tiny_led, tmp_path / "taken")
  before = (taken / "model.safetensors").read_bytes()
  for main in (convert.main, led_convert.main):
    rc = cli.run(main, ["--from", str(tiny_led), "--to", str(taken)])
    assert rc != 0 and "already holds a checkpoint" in capsys.readouterr().err
  assert (taken / "model.safetensors").read_bytes() == before


def test_evaluate_names_a_missing_run_folder(tmp_path, capsys):
  from lfjax import cli
  from lfjax import evaluate
  rc = cli.run(evaluate.main, ["--workdir", str(tmp_path / "none"),
                               "--data", "x.jsonl"])
  err = capsys.readouterr().err
  assert rc != 0 and "workdir" in err and "config.json does not exist" in err
  assert "Unknown command line flag" not in err
