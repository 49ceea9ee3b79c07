"""lfjax Longformer/RoBERTa models equal transformers' PyTorch models.

Tiny random models are built with transformers offline, saved with
save_pretrained into a temp directory and loaded with lfjax.convert.
Runs where torch is installed (the Python 3.11 leg of CI).
"""

import json

import numpy as np
import pytest

from tests import optional

torch = optional.need("torch")
transformers = optional.need("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lfjax import convert  # noqa: E402
from lfjax.models import LongformerForMaskedLM  # noqa: E402
from lfjax.models import LongformerModel  # noqa: E402

from tests.hf_cases import TINY, assert_valid_close, batch, run_hf, save  # noqa: E402,E501


@pytest.mark.parametrize("globals_at,scan", [
    ("none", False), ("first", False), ("scattered", False), ("last", False),
    ("none", True), ("scattered", True)])
def test_longformer_model_and_mlm(tmp_path, globals_at, scan):
  """scan: scan_layers (layers 0-1 share a window: one scanned run of two,
  then a run of one)."""
  torch.manual_seed(0)
  cfg = transformers.LongformerConfig(attention_window=[8, 8, 4], **TINY)
  hf_mlm = save(transformers.LongformerForMaskedLM(cfg), tmp_path)
  ids, mask, glob = batch([37, 23], 37, globals_at)  # 37: no window multiple
  want = run_hf(hf_mlm, ids, mask, glob)

  ours = convert.from_pretrained(str(tmp_path), scan_layers=scan)
  assert isinstance(ours, LongformerForMaskedLM)
  assert len(ours.longformer.layers) == (2 if scan else 3)
  ours.eval()
  got = ours(ids, mask, glob if globals_at != "none" else None)
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got.logits)[valid],
                             want.logits.numpy()[valid], atol=1e-4, rtol=0)

  base = convert.from_pretrained(str(tmp_path), head="base", scan_layers=scan)
  assert isinstance(base, LongformerModel)
  base.eval()
  hidden = base(ids, mask, glob).last_hidden_state
  want_hidden = run_hf(hf_mlm.longformer, ids, mask, glob).last_hidden_state
  np.testing.assert_allclose(np.asarray(hidden)[valid],
                             want_hidden.numpy()[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("scan", [False, True])
def test_longformer_model_with_pooler_under_jit(tmp_path, scan):
  torch.manual_seed(1)
  cfg = transformers.LongformerConfig(attention_window=6, **TINY)
  hf_model = save(transformers.LongformerModel(cfg), tmp_path)
  ids, mask, glob = batch([50, 41, 12], 50, "scattered", seed=2)
  want = run_hf(hf_model, ids, mask, glob)

  ours = convert.from_pretrained(str(tmp_path), max_global=4,
                                 scan_layers=scan)
  ours.eval()
  f = jax.jit(lambda m, i, a, g: m(i, a, g))
  got = f(ours, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(glob))
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got.last_hidden_state)[valid],
                             want.last_hidden_state.numpy()[valid], atol=1e-4)
  np.testing.assert_allclose(np.asarray(got.pooler_output),
                             want.pooler_output.numpy(), atol=1e-4)


def test_roberta_loads_as_full_window_longformer(tmp_path):
  torch.manual_seed(2)
  cfg = transformers.RobertaConfig(**TINY)
  hf_mlm = save(transformers.RobertaForMaskedLM(cfg), tmp_path)
  ids, mask, _ = batch([40, 33], 40, "none", seed=3)
  want = run_hf(hf_mlm, ids, mask)
  ours = convert.from_pretrained(str(tmp_path))
  ours.eval()
  got = ours(ids, mask)
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got.logits)[valid],
                             want.logits.numpy()[valid], atol=1e-4)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_bert_loads_as_full_window_longformer(tmp_path, padding):
  torch.manual_seed(4)
  cfg = transformers.BertConfig(**dict(TINY, pad_token_id=0,
                                       max_position_embeddings=64,
                                       type_vocab_size=2))
  hf_mlm = save(transformers.BertForMaskedLM(cfg), tmp_path)
  ids, mask, _ = batch([40, 29], 40, "none", seed=5)
  ids[mask == 0] = 0  # BERT's pad id
  if padding == "left":
    ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()
  types = (np.arange(40)[None, :] >= 20).astype(np.int64) * mask
  with torch.no_grad():
    want = hf_mlm(input_ids=torch.tensor(ids),
                  attention_mask=torch.tensor(mask),
                  token_type_ids=torch.tensor(types)).logits.numpy()
  ours = convert.from_pretrained(str(tmp_path))
  assert isinstance(ours, LongformerForMaskedLM)
  ours.eval()
  got = ours(ids, mask, token_type_ids=types)
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got.logits)[valid], want[valid],
                             atol=1e-4)


def test_bad_checkpoints_fail_clearly(tmp_path):
  torch.manual_seed(3)
  cfg = transformers.LongformerConfig(attention_window=4, **TINY)
  save(transformers.LongformerModel(cfg), tmp_path)
  with pytest.raises(ValueError, match="checkpoint lacks .* parameters"):
    convert.from_pretrained(str(tmp_path), head="masked_lm")
  with pytest.raises(FileNotFoundError, match="path: expected"):
    convert.from_pretrained(str(tmp_path / "nope"))
  (tmp_path / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors or "
                     "pytorch_model.bin"):
    convert.from_pretrained(str(tmp_path))
  # The message names the caller's flag or config field.
  with pytest.raises(FileNotFoundError, match="^config.init_from: expected "
                     "a Hugging Face checkpoint directory with config.json "
                     "and model.safetensors"):
    convert.from_pretrained(str(tmp_path), arg="config.init_from")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="^--from: expected a Hugging "
                     "Face checkpoint directory with config.json, found none"):
    convert.from_pretrained(str(empty), arg="--from")
  other = tmp_path / "t5"
  other.mkdir()
  (other / "config.json").write_text(json.dumps({"model_type": "t5"}))
  with pytest.raises(ValueError, match="model_type expected one of"):
    convert.from_pretrained(str(other))
  with pytest.raises(ValueError, match="head: expected one of"):
    convert.from_pretrained(str(tmp_path / "t5"), head="ner")


@pytest.mark.parametrize("scan", [False, True])
def test_round_trip_to_transformers(tmp_path, scan):
  """scan: exported from scan_layers' stacked parameters (a run of two
  layers, then one) into transformers' per-layer layout."""
  torch.manual_seed(4)
  cfg = transformers.LongformerConfig(attention_window=[4, 4, 8], **TINY)
  save(transformers.LongformerForMaskedLM(cfg), tmp_path / "a")
  ours = convert.from_pretrained(str(tmp_path / "a"), scan_layers=scan)
  convert.to_pretrained(ours, str(tmp_path / "b"))
  back = transformers.LongformerForMaskedLM.from_pretrained(tmp_path / "b")
  back.eval()
  ids, mask, glob = batch([40, 29], 40, "scattered", seed=5)
  ours.eval()
  want = np.asarray(ours(ids, mask, glob).logits)
  got = run_hf(back, ids, mask, glob).logits.numpy()
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-4)

  base = convert.from_pretrained(str(tmp_path / "a"), head="base",
                                 scan_layers=scan)
  convert.to_pretrained(base, str(tmp_path / "c"))
  hf_base = transformers.LongformerModel.from_pretrained(tmp_path / "c")
  base.eval()
  np.testing.assert_allclose(
      run_hf(hf_base.eval(), ids, mask, glob).last_hidden_state.numpy()[valid],
      np.asarray(base(ids, mask, glob).last_hidden_state)[valid], atol=1e-4)


def write_tiny_tokenizer(path):
  vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
  for ch in "abcdefghij":
    vocab[ch] = len(vocab)
  (path / "vocab.json").write_text(json.dumps(vocab))
  (path / "merges.txt").write_text("#version: 0.2\n")
  (path / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "RobertaTokenizer", "model_max_length": 128}))


def test_make_long_roberta_keeps_short_outputs_and_cli(tmp_path):
  torch.manual_seed(5)
  src = tmp_path / "roberta"
  hf_mlm = save(transformers.RobertaForMaskedLM(transformers.RobertaConfig(
      **TINY)), src)
  write_tiny_tokenizer(src)
  dst = tmp_path / "long"
  convert.main(["--from", str(src), "--to", str(dst), "--max_positions", "512",
                "--attention_window", "64"])
  long_hf = transformers.LongformerForMaskedLM.from_pretrained(dst).eval()
  assert long_hf.config.max_position_embeddings == 514
  # Shorter than the original 128 positions and than the one-sided window:
  # every token sees every other, exactly as in RoBERTa.
  ids, mask, _ = batch([30, 21], 30, "none", seed=6)
  want = run_hf(hf_mlm, ids, mask).logits.numpy()
  valid = mask.astype(bool)
  got_hf = run_hf(long_hf, ids, mask).logits.numpy()
  np.testing.assert_allclose(got_hf[valid], want[valid], atol=1e-4)
  ours = convert.from_pretrained(str(dst))
  ours.eval()
  np.testing.assert_allclose(np.asarray(ours(ids, mask).logits)[valid],
                             want[valid], atol=1e-4)
  # Copied positions: rows repeat the learned ones after the reserved two.
  pos = np.asarray(ours.longformer.embeddings.position_embeddings.embedding
                   .value)
  learned = pos[2:130]
  np.testing.assert_array_equal(pos[130:258], learned)
  # Longer inputs run, and the tokenizer came along with the new length.
  long_ids = np.full((1, 300), 5)
  assert ours(long_ids).logits.shape == (1, 300, 97)
  tok = transformers.AutoTokenizer.from_pretrained(dst)
  assert tok.model_max_length == 512
  assert tok("abc")["input_ids"][0] == 0


def test_make_long_keeps_a_longformers_trained_globals_and_windows(tmp_path):
  """Lengthening a Longformer (longformer-base-4096 to 16K, transformers
  #8077) keeps what it trained: every expected value is read back with
  transformers. make_long used to overwrite the global q/k/v with copies of
  the local ones and the per-layer windows with one int."""
  torch.manual_seed(12)
  cfg = transformers.LongformerConfig(attention_window=[8, 4, 8], **TINY)
  src = save(transformers.LongformerForMaskedLM(cfg), tmp_path / "src")
  attn = src.longformer.encoder.layer[0].attention.self
  assert not torch.equal(attn.query_global.weight, attn.query.weight)
  ours = convert.from_pretrained(str(tmp_path / "src"))
  assert not convert.full_attention(ours.cfg)
  convert.to_pretrained(convert.make_long(ours, 300), str(tmp_path / "long"))
  back = transformers.LongformerForMaskedLM.from_pretrained(
      tmp_path / "long").eval()
  assert back.config.attention_window == [8, 4, 8]
  assert back.config.max_position_embeddings == 302
  want, got = src.state_dict(), back.state_dict()
  pos = "longformer.embeddings.position_embeddings.weight"
  for name, value in want.items():
    if name != pos:
      assert torch.equal(got[name], value), name
  # Positions by hand: the two reserved rows, then the 128 learned ones
  # repeated to 300.
  learned = want[pos][2:]
  torch.testing.assert_close(
      got[pos], torch.cat([want[pos][:2], learned, learned, learned[:44]]),
      atol=0, rtol=0)
  # So inputs within the old length give the source's outputs, global
  # tokens included.
  ids, mask, glob = batch([37, 23], 37, "scattered")
  valid = mask.astype(bool)
  np.testing.assert_allclose(
      run_hf(back, ids, mask, glob).logits.numpy()[valid],
      run_hf(src, ids, mask, glob).logits.numpy()[valid], atol=1e-5)
  # Asked for, new windows replace them.
  assert convert.make_long(ours, 300, 16).cfg.windows() == [16, 16, 16]
  # A RoBERTa (full attention) gets the paper's 512.
  roberta = save(transformers.RobertaForMaskedLM(transformers.RobertaConfig(
      **TINY)), tmp_path / "roberta")
  del roberta
  full = convert.from_pretrained(str(tmp_path / "roberta"))
  assert convert.full_attention(full.cfg)
  assert convert.make_long(full, 300).cfg.windows() == [512, 512, 512]
  # A Longformer whose windows cover its 128 positions still has trained
  # windows: kept (the window size alone made it a RoBERTa).
  wide = transformers.LongformerConfig(attention_window=[256, 300, 260],
                                       **TINY)
  save(transformers.LongformerForMaskedLM(wide), tmp_path / "wide")
  wide = convert.from_pretrained(str(tmp_path / "wide"))
  assert not convert.full_attention(wide.cfg)
  assert convert.make_long(wide, 300).cfg.windows() == [256, 300, 260]
  with pytest.raises(ValueError, match=r"max_positions: expected at least "
                     r"the model's 128 positions .* got 64"):
    convert.make_long(ours, 64)
  with pytest.raises(ValueError, match=r"attention_window: expected an int "
                     r"or one int per layer .* got 8.0"):
    convert.make_long(ours, 300, 8.0)


def test_run_settings_are_not_written_or_read_as_the_checkpoints(tmp_path):
  """attention_impl, max_global, precision, remat and scan_layers say how a
  process runs a model: an export does not carry them, and a config.json
  that does (lfjax 0.2.0 wrote attention_impl and max_global) does not
  impose them: a
  max_global of 1 there capped every later use at one global token (NaN
  rows under jit)."""
  torch.manual_seed(13)
  cfg = transformers.LongformerConfig(attention_window=4, **TINY)
  save(transformers.LongformerForMaskedLM(cfg), tmp_path / "a")
  run = dict(attention_impl="dense", max_global=1, compute_dtype="bfloat16",
             param_dtype="bfloat16", remat=True, remat_policy="attention",
             scan_layers=True)
  ours = convert.from_pretrained(str(tmp_path / "a"), **run)
  convert.to_pretrained(ours, str(tmp_path / "b"))
  written = json.loads((tmp_path / "b" / "config.json").read_text())
  assert not set(run) & set(written), set(run) & set(written)
  old = dict(written, attention_impl="dense", max_global=1)
  (tmp_path / "b" / "config.json").write_text(json.dumps(old))
  again = convert.from_pretrained(str(tmp_path / "b"))
  assert (again.cfg.attention_impl, again.cfg.max_global) == ("auto", None)
  ids, mask, glob = batch([37, 23], 37, "scattered")  # 3 globals in row 0
  # transformers reads the same file (its weights bfloat16-rounded).
  want = run_hf(transformers.LongformerForMaskedLM.from_pretrained(
      tmp_path / "b").eval(), ids, mask, glob).logits.numpy()
  got = again(ids, mask, glob).logits
  assert_valid_close(got, want, mask)


def test_dilated_model_refuses_export(tmp_path):
  torch.manual_seed(6)
  save(transformers.LongformerModel(transformers.LongformerConfig(
      attention_window=4, **TINY)), tmp_path)
  model = convert.from_pretrained(str(tmp_path),
                                  attention_dilation=[1, 2, [1, 1, 2, 2]])
  with pytest.raises(ValueError, match="attention_dilation: transformers"):
    convert.to_pretrained(model, str(tmp_path / "out"))


def test_sequence_classification_and_qa_heads(tmp_path):
  torch.manual_seed(8)
  cfg = transformers.LongformerConfig(attention_window=[8, 4, 8], num_labels=3,
                                      **TINY)
  ids, mask, _ = batch([36, 30], 36, "none", seed=9)
  # QA input: <s> question </s></s> context </s>, exactly 3 separators.
  ids[ids == 2] = 5
  ids[:, 0] = 0
  ids[:, 6] = 2
  ids[:, 7] = 2
  ids[0, 35] = 2
  ids[1, 29] = 2
  valid = mask.astype(bool)

  hf_cls = save(transformers.LongformerForSequenceClassification(cfg),
                tmp_path / "cls")
  ours = convert.from_pretrained(str(tmp_path / "cls"))
  ours.eval()
  np.testing.assert_allclose(np.asarray(ours(ids, mask).logits),
                             run_hf(hf_cls, ids, mask).logits.numpy(),
                             atol=1e-4)

  cfg.num_labels = 2  # start and end
  hf_qa = save(transformers.LongformerForQuestionAnswering(cfg),
               tmp_path / "qa")
  ours = convert.from_pretrained(str(tmp_path / "qa"))
  ours.eval()
  got, want = ours(ids, mask), run_hf(hf_qa, ids, mask)
  for name in ("start_logits", "end_logits"):
    np.testing.assert_allclose(np.asarray(getattr(got, name))[valid],
                               getattr(want, name).numpy()[valid], atol=1e-4)
  convert.to_pretrained(ours, str(tmp_path / "qa2"))
  back = transformers.LongformerForQuestionAnswering.from_pretrained(
      tmp_path / "qa2").eval()
  np.testing.assert_allclose(run_hf(back, ids, mask).start_logits.numpy(),
                             want.start_logits.numpy(), atol=1e-5)


@pytest.mark.parametrize("globals_at", ["none", "first", "two"])
def test_attention_probabilities_in_hf_layout(tmp_path, globals_at):
  torch.manual_seed(4)
  cfg = transformers.LongformerConfig(attention_window=[8, 4, 8], **TINY)
  hf_model = save(transformers.LongformerModel(cfg), tmp_path)
  ids, mask, glob = batch([29, 20], 29, "none" if globals_at == "two"
                          else globals_at, seed=5)
  if globals_at == "two":  # same count per row: HF fills missing slots oddly
    glob[0, [3, 17]] = 1
    glob[1, [0, 9]] = 1
  with torch.no_grad():
    want = hf_model(input_ids=torch.tensor(ids),
                    attention_mask=torch.tensor(mask),
                    global_attention_mask=torch.tensor(glob),
                    output_attentions=True)
  ours = convert.from_pretrained(str(tmp_path), head="base")
  ours.eval()
  got = ours(ids, mask, glob if globals_at != "none" else None,
             output_attentions=True)
  assert len(got.attentions) == 3
  for layer in range(3):
    np.testing.assert_allclose(np.asarray(got.attentions[layer]),
                               want.attentions[layer].numpy(), atol=1e-5)
    if globals_at == "none":
      assert got.global_attentions is None
    else:
      # transformers keeps its internal padding (to a window multiple) in
      # global_attentions; those keys get weight 0.
      w = want.global_attentions[layer].numpy()
      assert not w[:, :, 29:].any()
      np.testing.assert_allclose(np.asarray(got.global_attentions[layer]),
                                 w[:, :, :29], atol=1e-5)
