"""Hugging Face checkpoints as they are found in the wild load exactly or
are refused: untied decoders, RoBERTa-long, sharded and bfloat16 files,
XLM-R, every head, transformers' input conventions. Every expected value
comes from transformers' PyTorch model. Runs where torch is installed (the
Python 3.11 leg of CI).
"""

import json

import numpy as np
import pytest

from tests import optional

torch = optional.need("torch")
transformers = optional.need("transformers")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from lfjax import convert  # noqa: E402
from lfjax.models import LongformerForMaskedLM  # noqa: E402
from tests.hf_cases import TINY, assert_valid_close, batch, run_hf, save  # noqa: E402,E501


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
