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
from flax import nnx  # noqa: E402

from lfjax import convert  # noqa: E402
from lfjax.models import LongformerForMaskedLM  # noqa: E402
from lfjax.models import LongformerModel  # noqa: E402

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=3,
            num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=130, type_vocab_size=1,
            layer_norm_eps=1e-5, pad_token_id=1)


def save(model, tmp_path):
  model.eval()
  with torch.no_grad():  # non-trivial LayerNorm and biases
    for name, p in model.named_parameters():
      if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(tmp_path)
  return model


def batch(lengths, n, globals_at, vocab=97, seed=0):
  """Token ids with right padding, attention mask and global mask."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(len(lengths), n))
  mask = np.zeros((len(lengths), n), np.int64)
  for i, length in enumerate(lengths):
    mask[i, :length] = 1
    ids[i, length:] = 1  # pad_token_id
  glob = np.zeros_like(mask)
  if globals_at == "first":
    glob[:, 0] = 1
  elif globals_at == "scattered":
    glob[0, [2, 7, 11]] = 1
    glob[-1, [5]] = 1
  elif globals_at == "last":
    for i, length in enumerate(lengths):
      glob[i, length - 1] = 1
  return ids, mask, glob


def run_hf(model, ids, mask, glob=None):
  kwargs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  if glob is not None:
    kwargs["global_attention_mask"] = torch.tensor(glob)
  with torch.no_grad():
    return model(**kwargs)


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


# Issue 11: checkpoints in the wild load exactly or are refused. Every
# expected value comes from transformers' PyTorch model.


def assert_valid_close(got, want, mask, atol=1e-4):
  valid = np.asarray(mask).astype(bool)
  np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid],
                             atol=atol, rtol=0)


def test_from_pretrained_is_in_inference_mode(tmp_path):
  torch.manual_seed(10)
  cfg = transformers.LongformerConfig(attention_window=[8, 4, 8],
                                      hidden_dropout_prob=0.5,
                                      attention_probs_dropout_prob=0.5, **TINY)
  hf_mlm = save(transformers.LongformerForMaskedLM(cfg), tmp_path)
  ids, mask, glob = batch([37, 23], 37, "first")
  want = run_hf(hf_mlm, ids, mask, glob).logits.numpy()
  ours = convert.from_pretrained(str(tmp_path))  # no .eval()
  first, second = ours(ids, mask, glob).logits, ours(ids, mask, glob).logits
  np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
  assert_valid_close(first, want, mask)
  long = convert.make_long(ours, 256, 8)
  np.testing.assert_array_equal(np.asarray(long(ids, mask).logits),
                                np.asarray(long(ids, mask).logits))
  ours.train()  # fine-tuning: dropout on again
  assert not np.array_equal(np.asarray(ours(ids, mask, glob).logits),
                            np.asarray(first))


def test_untied_decoder_loads_and_round_trips(tmp_path):
  torch.manual_seed(11)
  cfg = transformers.LongformerConfig(attention_window=[8, 4, 8],
                                      tie_word_embeddings=False, **TINY)
  hf_mlm = save(transformers.LongformerForMaskedLM(cfg), tmp_path / "a")
  assert not torch.equal(hf_mlm.lm_head.decoder.weight,
                         hf_mlm.longformer.embeddings.word_embeddings.weight)
  ids, mask, glob = batch([37, 23], 37, "scattered")
  want = run_hf(hf_mlm, ids, mask, glob).logits.numpy()
  ours = convert.from_pretrained(str(tmp_path / "a"))
  assert not ours.cfg.tie_word_embeddings
  got = ours(ids, mask, glob).logits
  assert_valid_close(got, want, mask)
  assert (np.asarray(got).argmax(-1) == want.argmax(-1))[mask == 1].all()
  convert.to_pretrained(ours, str(tmp_path / "b"))
  back = transformers.LongformerForMaskedLM.from_pretrained(tmp_path / "b")
  assert not back.config.tie_word_embeddings
  assert_valid_close(run_hf(back.eval(), ids, mask, glob).logits.numpy(), want,
                     mask)


def test_roberta_long_checkpoint_keeps_windows_and_global_weights(tmp_path):
  """The original authors' RobertaLong format: model_type roberta,
  attention_window per layer, roberta.* tensors with trained global q/k/v."""
  torch.manual_seed(12)
  cfg = transformers.LongformerConfig(attention_window=[8, 4, 8], **TINY)
  hf_mlm = save(transformers.LongformerForMaskedLM(cfg), tmp_path / "lf")
  with torch.no_grad():  # trained global projections, unlike the local ones
    for name, p in hf_mlm.named_parameters():
      if "_global" in name:
        p.add_(0.3 * torch.randn_like(p))
  ids, mask, glob = batch([40, 33], 40, "first", seed=13)
  want = run_hf(hf_mlm, ids, mask, glob).logits.numpy()
  from safetensors.torch import save_file
  sd = {k.replace("longformer.", "roberta.", 1): v.clone().contiguous()
        for k, v in hf_mlm.state_dict().items()
        if k != "lm_head.decoder.weight"}
  long_dir = tmp_path / "roberta_long"
  long_dir.mkdir()
  save_file(sd, str(long_dir / "model.safetensors"), metadata={"format": "pt"})
  d = json.loads((tmp_path / "lf" / "config.json").read_text())
  d.update(model_type="roberta", architectures=["RobertaLongForMaskedLM"],
           attention_mode="longformer")
  (long_dir / "config.json").write_text(json.dumps(d))
  ours = convert.from_pretrained(str(long_dir), head="masked_lm")
  assert ours.cfg.windows() == [8, 4, 8]
  assert_valid_close(ours(ids, mask, glob).logits, want, mask)


def test_sharded_and_bfloat16_checkpoints_load(tmp_path):
  torch.manual_seed(14)
  cfg = transformers.LongformerConfig(attention_window=[8, 4, 8], **TINY)
  hf_mlm = save(transformers.LongformerForMaskedLM(cfg), tmp_path / "one")
  hf_mlm.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
  ids, mask, glob = batch([37, 23], 37, "first")
  want = run_hf(hf_mlm, ids, mask, glob).logits.numpy()
  assert_valid_close(convert.from_pretrained(str(tmp_path / "sharded"))(
      ids, mask, glob).logits, want, mask)
  # pytorch_model.bin shards with their index, as older transformers wrote.
  sd = hf_mlm.state_dict()
  names = sorted(sd)
  bins = tmp_path / "bins"
  bins.mkdir()
  (tmp_path / "one" / "config.json").rename(bins / "config.json")
  weight_map = {}
  for i, part in enumerate((names[:len(names) // 2], names[len(names) // 2:])):
    fname = f"pytorch_model-0000{i + 1}-of-00002.bin"
    torch.save({k: sd[k] for k in part}, bins / fname)
    weight_map.update({k: fname for k in part})
  (bins / "pytorch_model.bin.index.json").write_text(
      json.dumps({"metadata": {}, "weight_map": weight_map}))
  assert_valid_close(convert.from_pretrained(str(bins))(ids, mask, glob).logits,
                     want, mask)
  (bins / "pytorch_model-00002-of-00002.bin").unlink()
  with pytest.raises(FileNotFoundError, match="shard files missing"):
    convert.from_pretrained(str(bins))
  # bfloat16 weights (numpy has no bfloat16) load as float32 values.
  hf_bf = hf_mlm.to(torch.bfloat16)
  hf_bf.save_pretrained(tmp_path / "bf16")
  want_bf = run_hf(hf_bf.float(), ids, mask, glob).logits.numpy()
  assert_valid_close(convert.from_pretrained(str(tmp_path / "bf16"))(
      ids, mask, glob).logits, want_bf, mask)


def test_xlm_roberta_loads(tmp_path):
  torch.manual_seed(15)
  hf_mlm = save(transformers.XLMRobertaForMaskedLM(
      transformers.XLMRobertaConfig(**TINY)), tmp_path)
  ids, mask, _ = batch([40, 33], 40, "none", seed=3)
  want = run_hf(hf_mlm, ids, mask).logits.numpy()
  ours = convert.from_pretrained(str(tmp_path))
  assert isinstance(ours, LongformerForMaskedLM)
  assert_valid_close(ours(ids, mask).logits, want, mask)


def test_token_classification_and_multiple_choice_heads(tmp_path):
  torch.manual_seed(16)
  cfg = transformers.LongformerConfig(attention_window=[8, 4, 8], num_labels=5,
                                      **TINY)
  ids, mask, glob = batch([36, 30], 36, "scattered", seed=9)
  hf_tok = save(transformers.LongformerForTokenClassification(cfg),
                tmp_path / "tok")
  ours = convert.from_pretrained(str(tmp_path / "tok"))
  assert type(ours).__name__ == "LongformerForTokenClassification"
  assert_valid_close(ours(ids, mask, glob).logits,
                     run_hf(hf_tok, ids, mask, glob).logits.numpy(), mask)
  convert.to_pretrained(ours, str(tmp_path / "tok2"))
  back = transformers.LongformerForTokenClassification.from_pretrained(
      tmp_path / "tok2").eval()
  assert_valid_close(run_hf(back, ids, mask, glob).logits.numpy(),
                     np.asarray(ours(ids, mask, glob).logits), mask)

  # Multiple choice: [batch 2, choices 3, seq 30], each choice
  # <s> question </s></s> choice </s>; default global attention (the
  # tokens after the first </s></s>) as transformers computes it.
  rng = np.random.default_rng(17)
  mc = rng.integers(5, 97, size=(2, 3, 30))
  mc[..., 0] = 0
  mc[..., 9:11] = 2
  mc[..., 29] = 2
  mc_mask = np.ones_like(mc)
  mc_mask[1, :, 25:] = 0
  mc[1, :, 25:] = 1
  mc[1, :, 24] = 2
  mc[1, :, 29] = 1
  hf_mc = save(transformers.LongformerForMultipleChoice(cfg), tmp_path / "mc")
  with torch.no_grad():
    want = hf_mc(input_ids=torch.tensor(mc),
                 attention_mask=torch.tensor(mc_mask)).logits.numpy()
  ours = convert.from_pretrained(str(tmp_path / "mc"))
  assert type(ours).__name__ == "LongformerForMultipleChoice"
  got = ours(mc, mc_mask).logits
  assert got.shape == (2, 3)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


def test_unsupported_head_is_named(tmp_path):
  torch.manual_seed(18)
  save(transformers.BertForPreTraining(transformers.BertConfig(
      **dict(TINY, pad_token_id=0))), tmp_path)
  with pytest.raises(ValueError, match=r"holds a BertForPreTraining head, "
                     r"which lfjax does not have; lfjax has .*'multiple_choice'"
                     r".*'token_classification'.*head='base'"):
    convert.from_pretrained(str(tmp_path))


def test_round_trip_keeps_every_config_field(tmp_path):
  torch.manual_seed(19)
  labels = {0: "negative", 1: "neutral", 2: "positive"}
  cfg = transformers.LongformerConfig(
      attention_window=[8, 4, 8], id2label=labels,
      label2id={v: k for k, v in labels.items()},
      problem_type="single_label_classification", **TINY)
  hf_cls = save(transformers.LongformerForSequenceClassification(cfg),
                tmp_path / "a")
  ours = convert.from_pretrained(str(tmp_path / "a"))
  convert.to_pretrained(ours, str(tmp_path / "b"))
  back = transformers.LongformerForSequenceClassification.from_pretrained(
      tmp_path / "b").eval()
  src = json.loads((tmp_path / "a" / "config.json").read_text())
  out = json.loads((tmp_path / "b" / "config.json").read_text())
  for key, value in src.items():
    if key not in ("transformers_version", "dtype", "torch_dtype"):
      assert out[key] == value, key
  assert back.config.id2label == labels
  assert back.config.problem_type == "single_label_classification"
  ids, mask, _ = batch([36, 30], 36, "none", seed=9)
  np.testing.assert_allclose(run_hf(back, ids, mask).logits.numpy(),
                             run_hf(hf_cls, ids, mask).logits.numpy(),
                             atol=1e-5)


def test_inputs_follow_transformers_conventions(tmp_path):
  """attention_mask 2 = global; a batch padded past the position table runs
  when its tokens fit; hidden states; attention layout with max_global."""
  torch.manual_seed(20)
  cfg = transformers.LongformerConfig(attention_window=[8, 4, 8], **TINY)
  hf_model = save(transformers.LongformerModel(cfg), tmp_path)
  ours = convert.from_pretrained(str(tmp_path))
  ids, mask, glob = batch([37, 23], 37, "scattered")
  merged = mask * (glob + 1)  # 0 pad, 1 local, 2 global
  want = run_hf(hf_model, ids, merged)
  assert_valid_close(ours(ids, merged).last_hidden_state,
                     want.last_hidden_state.numpy(), mask)

  # 136 columns, at most 128 real tokens: 128 positions suffice.
  long_ids, long_mask, _ = batch([128, 90], 136, "none", seed=21)
  want = run_hf(hf_model, long_ids, long_mask)
  assert_valid_close(ours(long_ids, long_mask).last_hidden_state,
                     want.last_hidden_state.numpy(), long_mask)

  with torch.no_grad():
    want = hf_model(input_ids=torch.tensor(ids),
                    attention_mask=torch.tensor(mask),
                    global_attention_mask=torch.tensor(glob),
                    output_hidden_states=True, output_attentions=True)
  capped = convert.from_pretrained(str(tmp_path), max_global=8)
  got = capped(ids, mask, glob, output_hidden_states=True,
               output_attentions=True)
  assert len(got.hidden_states) == len(want.hidden_states) == 4
  for g, w in zip(got.hidden_states, want.hidden_states):
    assert_valid_close(g, w.numpy(), mask)
  for layer in range(3):  # 3 global columns (the batch's most), not 8
    np.testing.assert_allclose(np.asarray(got.attentions[layer]),
                               want.attentions[layer].numpy(), atol=1e-5)
    # Slots past a row's own count: transformers fills them with junk
    # (row 1 has one global token), lfjax with 0.
    for row, count in enumerate(glob.sum(axis=1)):
      np.testing.assert_allclose(
          np.asarray(got.global_attentions[layer])[row, :, :, :count],
          want.global_attentions[layer].numpy()[row, :, :37, :count],
          atol=1e-5)
      assert not np.asarray(got.global_attentions[layer])[row, :, :,
                                                          count:].any()


def test_heads_jit_without_surprises(tmp_path):
  torch.manual_seed(22)
  cfg = transformers.LongformerConfig(attention_window=[8, 4, 8], num_labels=3,
                                      **TINY)
  hf_cls = save(transformers.LongformerForSequenceClassification(cfg),
                tmp_path / "cls")
  ids, mask, _ = batch([36, 30], 36, "none", seed=9)
  ours = convert.from_pretrained(str(tmp_path / "cls"))  # no max_global
  got = nnx.jit(lambda m, i, a: m(i, a).logits)(ours, jnp.asarray(ids),
                                                jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got),
                             run_hf(hf_cls, ids, mask).logits.numpy(),
                             atol=1e-4)
  cfg.num_labels = 2
  save(transformers.LongformerForQuestionAnswering(cfg), tmp_path / "qa")
  qa = convert.from_pretrained(str(tmp_path / "qa"))
  with pytest.raises(ValueError, match=r"max_global: .* pass max_global=K to "
                     r"lfjax.convert.from_pretrained"):
    nnx.jit(lambda m, i, a: m(i, a).start_logits)(qa, jnp.asarray(ids),
                                                  jnp.asarray(mask))


def test_load_and_export_use_current_flax_api(tmp_path):
  import warnings
  torch.manual_seed(23)
  save(transformers.LongformerForMaskedLM(transformers.LongformerConfig(
      attention_window=4, **TINY)), tmp_path / "a")
  with warnings.catch_warnings():
    warnings.simplefilter("error", DeprecationWarning)
    model = convert.from_pretrained(str(tmp_path / "a"))
    model(np.full((1, 9), 5))
    convert.to_pretrained(model, str(tmp_path / "b"))


def test_bert_mlm_head_uses_hidden_act(tmp_path):
  torch.manual_seed(24)
  cfg = transformers.BertConfig(**dict(TINY, pad_token_id=0, hidden_act="relu",
                                       max_position_embeddings=64))
  hf_mlm = save(transformers.BertForMaskedLM(cfg), tmp_path)
  ids, mask, _ = batch([40, 29], 40, "none", seed=5)
  ids[mask == 0] = 0
  want = run_hf(hf_mlm, ids, mask).logits.numpy()
  assert_valid_close(convert.from_pretrained(str(tmp_path))(ids, mask).logits,
                     want, mask)


def test_decoders_and_other_head_layouts_are_refused(tmp_path):
  torch.manual_seed(25)
  save(transformers.RobertaModel(transformers.RobertaConfig(
      is_decoder=True, **TINY)), tmp_path / "dec")
  with pytest.raises(ValueError, match="is_decoder.*causal"):
    convert.from_pretrained(str(tmp_path / "dec"))
  save(transformers.BertLMHeadModel(transformers.BertConfig(
      is_decoder=True, **dict(TINY, pad_token_id=0))), tmp_path / "lmhead")
  with pytest.raises(ValueError, match="is_decoder"):
    convert.from_pretrained(str(tmp_path / "lmhead"))
  save(transformers.BertForSequenceClassification(transformers.BertConfig(
      **dict(TINY, pad_token_id=0))), tmp_path / "bertcls")
  with pytest.raises(ValueError, match=r"holds a BertForSequenceClassification"
                     r" head with tensors .* not the layout of transformers' "
                     r"LongformerForSequenceClassification"):
    convert.from_pretrained(str(tmp_path / "bertcls"))
