"""MLM continued pretraining: data, masking, BPC accounting, training,
exact resume, the paper's variants and export to transformers.

A tiny random RoBERTa (transformers, save_pretrained) with a byte-level BPE
trained on stdlib files is the starting checkpoint. Runs where torch is
installed (the Python 3.11 leg of CI).
"""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

from tests import optional

torch = optional.need("torch")
transformers = optional.need("transformers")

from lfjax import convert  # noqa: E402
from lfjax import hf_weights  # noqa: E402
from lfjax import evaluate  # noqa: E402
from lfjax import export  # noqa: E402
from lfjax import metrics  # noqa: E402
from lfjax import train  # noqa: E402
from lfjax.data import chars  # noqa: E402
from lfjax.data import loader  # noqa: E402
from lfjax.data import text  # noqa: E402
from lfjax.tasks import mlm  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
  """A tiny random RoBERTa-for-MLM folder with its own tokenizer."""
  path = tmp_path_factory.mktemp("roberta")
  docs = [t.decode("utf-8", "replace") for _, t in chars.pystdlib_files()[:80]]
  tok = text.train_tokenizer(docs, path, vocab_size=400)
  cfg = transformers.RobertaConfig(
      vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
      num_attention_heads=2, intermediate_size=64, max_position_embeddings=66,
      type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=tok.pad_token_id,
      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
  torch.manual_seed(0)
  transformers.RobertaForMaskedLM(cfg).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory):
  """40 generated documents, one per file."""
  d = tmp_path_factory.mktemp("docs")
  rng = np.random.default_rng(0)
  words = ["def", "class", "return", "import", "self", "value", "(", ")",
           ":", "\n", "    ", "for", "in", "if", "else", "é", "data"]
  for i in range(40):
    n = int(rng.integers(20, 200))
    (d / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words, n)))
  return d


def config(roberta, docs_dir, tmp_path, **changes):
  spec = importlib.util.spec_from_file_location(
      "mlm_base", ROOT / "configs" / "mlm_longformer_base.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("tiny")
  c.init_from = str(roberta)
  c.data.sources = (str(docs_dir),)
  c.data.glob = "*.txt"
  c.data.max_documents = 0
  c.data.valid_fraction = 0.2
  c.data.cache_dir = str(tmp_path / "cache")
  c.model.max_positions = 128
  c.train.seq_len = 128
  c.steps = 12
  c.optim.decay_steps = 12
  c.log_every = 1
  c.eval_every = 6
  c.checkpoint_every = 5
  c.eval.max_batches = 2
  c.update_from_flattened_dict(changes)
  return c


def test_character_accounting_by_hand(roberta):
  tok = text.load_tokenizer(str(roberta))
  doc = "def f(x):\n    return x  # y"
  ids, owned = text.tokenize([doc, "a\u00e9 b"], tok, separator_id=2)
  first = list(ids).index(2)
  # Each token owns its own text plus the whitespace before it: the slices
  # of the document cut at the counts, stripped, spell the tokens.
  cuts = np.concatenate([[0], np.cumsum(owned[:first])])
  for i in range(first):
    assert (doc[cuts[i]:cuts[i + 1]].strip()
            == tok.decode([int(ids[i])]).strip()), i
  assert cuts[-1] == len(doc)
  assert owned[first] == 0 and ids[-1] == 2 and owned[-1] == 0
  assert owned[first + 1:-1].sum() == 4  # a 2-byte character counts once


def test_bpc_is_masked_bits_over_their_characters(roberta, docs_dir,
                                                  tmp_path):
  c = config(roberta, docs_dir, tmp_path)
  corpus = mlm.load_corpus(c)
  model = mlm.load_model(c)
  model.eval()
  got = mlm.evaluate_model(model, c, corpus, batch_size=2, max_batches=1)
  # The loader's masks of rows 0 and 1 (tested in tests/test_loader.py),
  # then the sum done by hand over the selected tokens.
  batch = loader.packed(corpus, "valid", 128, np.arange(2))
  ids = batch["input_ids"]
  m = loader.mask_batch(ids, batch["attention_mask"], np.arange(2),
                        seed=c.eval.mask_seed, stream=loader.EVAL_STREAM,
                        special_ids=corpus.special_ids, mask_id=corpus.mask_id,
                        replace_ids=loader.replacement_ids(corpus))
  inputs = m["inputs"]
  sel = np.zeros(ids.shape, bool)
  for row in range(2):
    sel[row, m["positions"][row][m["valid"][row]]] = True
  logits = np.asarray(model(inputs, attention_mask=batch["attention_mask"])
                      .logits, np.float64)
  bits = chars_ = 0.0
  for b, i in zip(*np.nonzero(np.asarray(sel))):
    row = logits[b, i]
    nats = np.log(np.exp(row - row.max()).sum()) + row.max() - row[ids[b, i]]
    bits += nats / math.log(2)
    chars_ += batch["chars"][b, i]
  assert got["eval_masked_tokens"] == int(np.asarray(sel).sum()) > 0
  assert got["eval_chars"] == chars_
  np.testing.assert_allclose(got["eval_bpc"], bits / chars_, rtol=1e-5)
  np.testing.assert_allclose(got["eval_bits_per_token"],
                             bits / got["eval_masked_tokens"], rtol=1e-5)


def test_packing_and_sampler(roberta, docs_dir, tmp_path):
  c = config(roberta, docs_dir, tmp_path)
  corpus = mlm.load_corpus(c)
  tokens, owned = corpus.splits["train"]
  n = loader.num_sequences(corpus, "train", 64)
  seqs = loader.packed(corpus, "train", 64, np.arange(n))
  ids, am = seqs["input_ids"], seqs["attention_mask"].astype(bool)
  assert (ids[:, 0] == corpus.bos_id).all()
  body = np.concatenate([row[m][1:-1] for row, m in zip(ids, am)])
  np.testing.assert_array_equal(body, tokens)  # every token once, in order
  assert seqs["chars"].sum() == np.asarray(owned).sum()
  assert (~am[-1]).any() and am[:-1].all()  # only the last one is padded
  s = loader.train_sampler(corpus, seq_len=64, batch_size=3, seed=5)
  batches = [next(s) for _ in range(n)]  # three epochs
  s2 = loader.train_sampler(corpus, seq_len=64, batch_size=3, seed=5)
  s2.restore({"index": 4})
  got = next(s2)
  for key in batches[4]:
    np.testing.assert_array_equal(got[key], batches[4][key])
  first_epoch = np.concatenate([b["input_ids"] for b in batches])[:n]
  assert sorted(map(bytes, first_epoch)) == sorted(map(bytes, ids))
  # A second load reuses the store and gives the same arrays.
  again = mlm.load_corpus(c)
  np.testing.assert_array_equal(again.splits["valid"][0],
                                corpus.splits["valid"][0])


def strip_timing(records):
  return [{k: v for k, v in r.items() if k != "tokens_per_s"}
          for r in records]


class Interrupt(Exception):
  pass


def test_trains_resumes_exactly_and_exports(roberta, docs_dir, tmp_path,
                                            monkeypatch, capsys):
  c = config(roberta, docs_dir, tmp_path)
  last = train.train_and_evaluate(c, tmp_path / "straight")
  recs = metrics.read(tmp_path / "straight" / "metrics.jsonl")
  losses = [r["train_loss"] for r in recs if "train_loss" in r]
  evals = [r["eval_loss"] for r in recs if "eval_loss" in r]
  assert np.mean(losses[-3:]) < losses[0] - 0.3
  assert evals[-1] < evals[0]
  assert last["eval_bpc"] > 0 and last["seq_len"] == 128

  write = metrics.JsonlWriter.write

  def dying_write(self, step, values):
    write(self, step, values)
    if step == 8:
      raise Interrupt()
  monkeypatch.setattr(metrics.JsonlWriter, "write", dying_write)
  with pytest.raises(Interrupt):
    train.train_and_evaluate(c, tmp_path / "killed")
  monkeypatch.setattr(metrics.JsonlWriter, "write", write)
  train.train_and_evaluate(c, tmp_path / "killed")
  assert (strip_timing(metrics.read(tmp_path / "killed" / "metrics.jsonl"))
          == strip_timing(recs))

  out = tmp_path / "hf"
  export.main(["--workdir", str(tmp_path / "straight"), "--to", str(out)])
  _, ours, step = mlm.load_trained(tmp_path / "straight")
  assert step == 12
  hf = transformers.LongformerForMaskedLM.from_pretrained(out).eval()
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.model_max_length == 128
  enc = tok(["def f(x):\n    return x", "import os"], padding=True,
            return_tensors="np")
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(enc["input_ids"]),
              attention_mask=torch.tensor(enc["attention_mask"])).logits
  got = ours(enc["input_ids"], attention_mask=enc["attention_mask"]).logits
  m = enc["attention_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(got)[m], want.numpy()[m], atol=1e-4)

  # The CLI evaluates the run and the exported folder alike, with the same
  # defaults (split, seq_len, batches, masks: the run's config, which the
  # export carries).
  evaluate.main(["--workdir", str(tmp_path / "straight")])
  written = tmp_path / "straight" / "eval_valid_12_128.json"
  assert f"written to {written}" in capsys.readouterr().out
  run = json.loads(written.read_text())
  monkeypatch.setenv("LFJAX_DATA", str(tmp_path / "data"))  # its cache
  exported = mlm.evaluate_cli(init_from=str(out))
  assert run["eval_masked_tokens"] == exported["eval_masked_tokens"] > 0
  np.testing.assert_allclose(exported["eval_bpc"], run["eval_bpc"],
                             rtol=1e-4)


def test_position_only_training_freezes_the_rest(roberta, docs_dir, tmp_path):
  c = config(roberta, docs_dir, tmp_path, steps=3, eval_every=0,
             **{"train.train_only": "position_embeddings"})
  train.train_and_evaluate(c, tmp_path / "run")
  _, trained, _ = mlm.load_trained(tmp_path / "run")
  start = mlm.load_model(c)
  a, b = hf_weights.export_weights(start), hf_weights.export_weights(trained)
  changed = sorted(k for k in a if not np.array_equal(a[k], b[k]))
  assert changed == ["longformer.embeddings.position_embeddings.weight"]


def test_random_positions_and_config_errors(roberta, docs_dir, tmp_path):
  c = config(roberta, docs_dir, tmp_path,
             **{"model.position_init": "random"})
  rand = hf_weights.export_weights(mlm.load_model(c))
  c.model.position_init = "copy"
  copy = hf_weights.export_weights(mlm.load_model(c))
  key = "longformer.embeddings.position_embeddings.weight"
  assert rand[key].shape == copy[key].shape == (128 + 2, 32)
  np.testing.assert_array_equal(rand[key][:2], copy[key][:2])  # reserved
  np.testing.assert_array_equal(copy[key][2:66], copy[key][66:130])
  assert abs(rand[key][2:].std() - 0.02) < 0.003
  for k in rand:
    if k != key:
      np.testing.assert_array_equal(rand[k], copy[k])

  with pytest.raises(ValueError, match="init_from: expected a local"):
    mlm.load_model(config(roberta, docs_dir, tmp_path, init_from=""))
  with pytest.raises(ValueError, match="train.seq_len: expected at most"):
    mlm.load_model(config(roberta, docs_dir, tmp_path,
                          **{"train.seq_len": 256}))
  with pytest.raises(FileNotFoundError, match="sources: .* neither"):
    mlm.load_corpus(config(roberta, docs_dir, tmp_path,
                           **{"data.sources": ("/no/such/dir",)}))
  with pytest.raises(FileNotFoundError, match="tokenizer: expected a local"):
    mlm.load_corpus(config(roberta, docs_dir, tmp_path,
                           **{"data.tokenizer": "/no/such/tok"}))
  with pytest.raises(ValueError, match="train.batch_size: expected a multi"):
    train.train_and_evaluate(
        config(roberta, docs_dir, tmp_path, **{"train.batch_size": 3}),
        tmp_path / "bad")
  with pytest.raises(ValueError, match="positions: expected 'copy' or"):
    mlm.load_model(config(roberta, docs_dir, tmp_path,
                          **{"model.position_init": "zeros"}))


def test_the_run_store_holds_the_documents_tokens_with_true_hashes(
    roberta, docs_dir, tmp_path):
  import hashlib
  c = config(roberta, docs_dir, tmp_path)
  corpus = mlm.load_corpus(c)
  [folder] = (tmp_path / "cache").iterdir()
  manifest = json.loads((folder / "manifest.json").read_text())
  assert manifest["sha256"] == corpus.sha256
  tok = transformers.AutoTokenizer.from_pretrained(str(roberta))
  for split in ("train", "valid"):
    shards = manifest["splits"][split]["shards"]
    for shard in shards:  # hashes of the files as they are on disk
      for what in ("tokens", "chars"):
        assert (hashlib.sha256((folder / shard[what]).read_bytes())
                .hexdigest() == shard["sha256"][what])
    # The documents of the split, read and tokenized directly.
    texts = [f.read_text() for f in sorted(docs_dir.glob("*.txt"))
             if text.split_of(f"{docs_dir.name}/{f.name}", 0.2) == split]
    want = text.tokenize(texts, tok, tok.sep_token_id)
    got = [np.concatenate([np.load(folder / s[what]) for s in shards])
           for what in ("tokens", "chars")]
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(np.asarray(corpus.splits[split][0]),
                                  want[0])


def test_run_records_its_data_and_a_resume_on_other_data_says_so(
    roberta, docs_dir, tmp_path, capsys):
  c = config(roberta, docs_dir, tmp_path, steps=2, eval_every=0,
             checkpoint_every=2)
  workdir = tmp_path / "run"
  train.train_and_evaluate(c, workdir)
  # The run records its token store's sha256 (lfjax.data.store; its hashes
  # are checked in tests/test_store.py), read here from the manifest.
  [manifest] = (tmp_path / "cache").glob("*/manifest.json")
  sha, name = json.loads(manifest.read_text())["sha256"], str(docs_dir)
  record = workdir / "corpus_history.jsonl"
  assert metrics.read(record) == [{"step": 0, "corpus": name, "sha256": sha}]
  capsys.readouterr()
  evaluate.main(["--workdir", str(workdir)])
  result = json.loads((workdir / "eval_valid_2_128.json").read_text())
  assert result["dataset_sha256"] == sha
  assert "the run trained on" not in capsys.readouterr().err
  # The run on a prebuilt store of other documents: a result of its own,
  # naming the store, and a note that the run trained on other data.
  from lfjax.data import store
  other = store.build([str(docs_dir / "doc00.txt"), str(docs_dir)],
                      str(roberta), tmp_path / "store", valid_fraction=0.2,
                      workers=1)
  other_sha = json.loads((other / "manifest.json").read_text())["sha256"]
  evaluate.main(["--workdir", str(workdir), "--store", str(other)])
  [on_store] = [json.loads(p.read_text())
                for p in workdir.glob("eval_valid_2_128_*.json")]
  assert on_store["data"] == {"store": str(other)}
  assert on_store["dataset_sha256"] == other_sha != sha
  assert (f"note: the run trained on {name} sha256 {sha[:12]}; this is "
          f"{other} sha256 {other_sha[:12]}") in capsys.readouterr().err

  # As if the run had trained its first 2 steps on other documents.
  fake = "ab" * 32
  record.write_text(json.dumps({"step": 0, "corpus": name, "sha256": fake})
                    + "\n")
  evaluate.main(["--workdir", str(workdir)])
  assert (f"note: the run trained on {name} sha256 {fake[:12]}; this is "
          f"{name} sha256 {sha[:12]}") in capsys.readouterr().err
  c.steps = 4
  train.train_and_evaluate(c, workdir)
  out = capsys.readouterr().out
  assert [l for l in out.splitlines() if "training data" in l] == [
      f"warning: the training data changed since step 2: {name} sha256 "
      f"{fake[:12]} (from step 0) -> {name} sha256 {sha[:12]}; training "
      f"continues on the new data (recorded in {record})"]
  assert metrics.read(record) == [
      {"step": 0, "corpus": name, "sha256": fake},
      {"step": 2, "corpus": name, "sha256": sha}]


def test_evaluate_on_a_built_store(roberta, docs_dir, tmp_path, capsys,
                                   monkeypatch):
  """`evaluate --model DIR --store STORE` scores the store's valid split:
  the same loss as evaluating the documents it was built from (--sources,
  the path evaluation had before --store), recording the store's sha256
  as its manifest has it."""
  from lfjax import cli
  from lfjax.data import store
  built = store.build([str(docs_dir)], str(roberta), tmp_path / "store",
                      valid_fraction=0.2, shard_tokens=64, workers=1)
  sha = json.loads((built / "manifest.json").read_text())["sha256"]
  on_store = mlm.evaluate_cli(init_from=str(roberta), store_path=str(built))
  monkeypatch.setenv("LFJAX_DATA", str(tmp_path / "data"))  # its cache
  on_docs = mlm.evaluate_cli(init_from=str(roberta), sources=[str(docs_dir)],
                             valid_fraction=0.2, glob="*.txt")
  assert on_store["dataset_sha256"] == sha != on_docs["dataset_sha256"]
  assert on_store["data"] == {"store": str(built)}
  for k in ("eval_masked_tokens", "eval_chars", "eval_loss", "eval_bpc"):
    assert on_store[k] == on_docs[k], k
  assert on_store["eval_masked_tokens"] > 0
  capsys.readouterr()
  assert cli.run(evaluate.main, ["--model", str(roberta), "--store",
                                 str(built)]) == 0
  assert f"bpc {on_store['eval_bpc']:.4f}" in capsys.readouterr().out
  for argv, want in [
      (["--sources", str(docs_dir)], "--store: give --store (a built token "
       "store) or --sources (documents), not both"),
      (["--glob", "*.md"], "--glob: has no effect on the token store")]:
    code = cli.run(evaluate.main, ["--model", str(roberta), "--store",
                                   str(built), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[0].startswith("error: " + want), err


def test_make_tiny_writes_a_roberta_that_transformers_loads(tmp_path):
  """`python -m lfjax.make_tiny` writes RoBERTa's layout: transformers'
  RobertaForMaskedLM loads every weight (none missing or left over) and its
  logits are lfjax's, which reads the folder as a RoBERTa (full attention,
  global projections copied from the local ones)."""
  from lfjax import make_tiny
  out = make_tiny.make_tiny(tmp_path / "tiny", documents=30, vocab_size=300,
                            positions=32)
  assert json.loads((out / "config.json").read_text())["model_type"] == (
      "roberta")
  hf, info = transformers.RobertaForMaskedLM.from_pretrained(
      out, output_loading_info=True)
  assert not any(info.values()), info
  tok = transformers.AutoTokenizer.from_pretrained(out)
  enc = tok(["def f(x):\n    return x + 1", "import os"], padding=True,
            return_tensors="np")
  with torch.no_grad():
    want = hf.eval()(input_ids=torch.tensor(enc["input_ids"]),
                     attention_mask=torch.tensor(enc["attention_mask"])).logits
  ours = convert.from_pretrained(str(out), head="masked_lm")
  got = ours(enc["input_ids"], attention_mask=enc["attention_mask"]).logits
  m = enc["attention_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(got)[m], want.numpy()[m], atol=1e-4)


def test_a_longformer_made_longer_keeps_its_windows_and_globals(
    roberta, docs_dir, tmp_path, capsys):
  """MLM from a Longformer with fewer positions than model.max_positions:
  make_long keeps its trained per-layer windows and global q/k/v
  (model.attention_window is for RoBERTa/BERT), as transformers reads
  them from the source folder."""
  src = transformers.RobertaConfig.from_pretrained(roberta).to_dict()
  cfg = transformers.LongformerConfig(**{
      k: src[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                          "num_attention_heads", "intermediate_size",
                          "max_position_embeddings", "type_vocab_size",
                          "layer_norm_eps", "pad_token_id")},
      attention_window=[8, 16])
  torch.manual_seed(3)
  hf = transformers.LongformerForMaskedLM(cfg)
  hf.save_pretrained(tmp_path / "lf")
  model = mlm.load_model(config(roberta, docs_dir, tmp_path,
                                init_from=str(tmp_path / "lf")),
                         announce=True)
  assert "its own windows [8, 16]" in capsys.readouterr().out
  assert model.cfg.windows() == [8, 16]
  weights = hf_weights.export_weights(model)
  for name, value in hf.state_dict().items():
    if "_global." in name:
      np.testing.assert_array_equal(weights[name], value.numpy(), name)


def test_remat_trains_as_without(roberta, docs_dir, tmp_path):
  """model.remat (policy "attention") recomputes each layer in the
  backward: the same per-step losses and gradient norms as without."""
  runs = {}
  for name, changes in (("plain", {}),
                        ("remat", {"model.remat": True,
                                   "model.remat_policy": "attention"})):
    c = config(roberta, docs_dir, tmp_path, steps=4, **changes)
    c.optim.decay_steps, c.eval_every = 4, 0
    train.train_and_evaluate(c, tmp_path / name)
    runs[name] = [(r["train_loss"], r["grad_norm"]) for r in metrics.read(
        tmp_path / name / "metrics.jsonl") if "train_loss" in r]
  assert len(runs["plain"]) == 4
  np.testing.assert_allclose(runs["remat"], runs["plain"], rtol=1e-5)


def test_scanned_run_resumes_with_its_setting_and_exports(roberta, docs_dir,
                                                          tmp_path):
  """model.scan_layers True and False train the same run (per-step losses
  and gradient norms, to float32 rounding). The scanned run's checkpoints
  hold stacked layers: resuming it with the other setting is refused,
  naming the field; a run from before the field (its saved config lacks
  it: per-layer checkpoints) refuses scan_layers True the same way. The
  scanned run exports to transformers' layout and evaluates."""
  from lfjax import checkpoints
  runs = {}
  for scan in (False, True):
    c = config(roberta, docs_dir, tmp_path, steps=4, **{
        "model.scan_layers": scan})
    c.optim.decay_steps, c.eval_every, c.checkpoint_every = 4, 0, 2
    train.train_and_evaluate(c, tmp_path / str(scan))
    runs[scan] = [(r["train_loss"], r["grad_norm"]) for r in metrics.read(
        tmp_path / str(scan) / "metrics.jsonl") if "train_loss" in r]
  assert len(runs[False]) == 4
  np.testing.assert_allclose(runs[True], runs[False], rtol=1e-5)

  longer = config(roberta, docs_dir, tmp_path, steps=6,
                  **{"model.scan_layers": False})
  with pytest.raises(checkpoints.ConfigChangeError,
                     match=r"(?s)model\.scan_layers: True -> False.*"
                     r"--config\.model\.scan_layers=True"):
    train.train_and_evaluate(longer, tmp_path / "True")
  old = tmp_path / "False" / "config.json"
  saved = json.loads(old.read_text())
  del saved["model"]["scan_layers"]  # as written before the field
  old.write_text(json.dumps(saved))
  with pytest.raises(checkpoints.ConfigChangeError,
                     match=r"model\.scan_layers: False -> True"):
    train.train_and_evaluate(
        config(roberta, docs_dir, tmp_path, steps=6,
               **{"model.scan_layers": True}), tmp_path / "False")
  # ... and evaluates as the per-layer run it is.
  _, model, _ = mlm.load_trained(tmp_path / "False")
  assert not model.cfg.scan_layers

  out = tmp_path / "hf"
  export.main(["--workdir", str(tmp_path / "True"), "--to", str(out)])
  _, ours, step = mlm.load_trained(tmp_path / "True")
  assert step == 4 and ours.cfg.scan_layers
  hf = transformers.LongformerForMaskedLM.from_pretrained(out).eval()
  ids = np.array([[0, 5, 9, 17, 33, 2], [0, 44, 3, 2, 1, 1]])
  mask = (ids != 1).astype(np.int64)
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(ids),
              attention_mask=torch.tensor(mask)).logits.numpy()
  got = np.asarray(ours(ids, attention_mask=mask).logits)
  np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=1e-4)
  evaluate.main(["--workdir", str(tmp_path / "True")])
