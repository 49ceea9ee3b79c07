"""lfjax Longformer/RoBERTa models equal transformers' PyTorch models.

Tiny random models are built with transformers offline, saved with
save_pretrained into a temp directory and loaded with lfjax.convert.
Runs where torch is installed (the Python 3.11 leg of CI).
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

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


@pytest.mark.parametrize("globals_at", ["none", "first", "scattered", "last"])
def test_longformer_model_and_mlm(tmp_path, globals_at):
  torch.manual_seed(0)
  cfg = transformers.LongformerConfig(attention_window=[8, 4, 8], **TINY)
  hf_mlm = save(transformers.LongformerForMaskedLM(cfg), tmp_path)
  ids, mask, glob = batch([37, 23], 37, globals_at)  # 37: no window multiple
  want = run_hf(hf_mlm, ids, mask, glob)

  ours = convert.from_pretrained(str(tmp_path))
  assert isinstance(ours, LongformerForMaskedLM)
  ours.eval()
  got = ours(ids, mask, glob if globals_at != "none" else None)
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got.logits)[valid],
                             want.logits.numpy()[valid], atol=1e-4, rtol=0)

  base = convert.from_pretrained(str(tmp_path), head="base")
  assert isinstance(base, LongformerModel)
  base.eval()
  hidden = base(ids, mask, glob).last_hidden_state
  want_hidden = run_hf(hf_mlm.longformer, ids, mask, glob).last_hidden_state
  np.testing.assert_allclose(np.asarray(hidden)[valid],
                             want_hidden.numpy()[valid], atol=1e-4, rtol=0)


def test_longformer_model_with_pooler_under_jit(tmp_path):
  torch.manual_seed(1)
  cfg = transformers.LongformerConfig(attention_window=6, **TINY)
  hf_model = save(transformers.LongformerModel(cfg), tmp_path)
  ids, mask, glob = batch([50, 41, 12], 50, "scattered", seed=2)
  want = run_hf(hf_model, ids, mask, glob)

  ours = convert.from_pretrained(str(tmp_path), max_global=4)
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
  other = tmp_path / "t5"
  other.mkdir()
  (other / "config.json").write_text(json.dumps({"model_type": "t5"}))
  with pytest.raises(ValueError, match="model_type expected one of"):
    convert.from_pretrained(str(other))
  with pytest.raises(ValueError, match="head: expected one of"):
    convert.from_pretrained(str(tmp_path / "t5"), head="ner")


def test_round_trip_to_transformers(tmp_path):
  torch.manual_seed(4)
  cfg = transformers.LongformerConfig(attention_window=[8, 4, 8], **TINY)
  save(transformers.LongformerForMaskedLM(cfg), tmp_path / "a")
  ours = convert.from_pretrained(str(tmp_path / "a"))
  convert.to_pretrained(ours, str(tmp_path / "b"))
  back = transformers.LongformerForMaskedLM.from_pretrained(tmp_path / "b")
  back.eval()
  ids, mask, glob = batch([40, 29], 40, "scattered", seed=5)
  ours.eval()
  want = np.asarray(ours(ids, mask, glob).logits)
  got = run_hf(back, ids, mask, glob).logits.numpy()
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-4)

  base = convert.from_pretrained(str(tmp_path / "a"), head="base")
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
  convert.main(["--from", str(src), "--to", str(dst), "--max-positions", "512",
                "--attention-window", "64"])
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
