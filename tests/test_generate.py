"""lfjax.generate: jitted greedy and beam search equal transformers' search.

On a toy encoder-decoder (tests/generate_reference.py), the jitted search
equals brute-force searches written from transformers 5.25's definitions
over a numpy recomputation of the toy (no cache). The LED tests, at the end
of this file, compare with transformers' LEDForConditionalGeneration.generate
on tiny random weights (Python 3.11, where torch is installed).
"""

import copy

import numpy as np
import pytest

from lfjax import generate as gen
from tests import generate_reference as ref
from tests import optional

# Many small programs: XLA's optimisations cost more than they save.
pytestmark = pytest.mark.usefixtures("fast_compiles")

EOS, PAD, START = 2, 1, 0


def _batch():
  """Three rows, padded at the end to 11 tokens, a global token on row 1."""
  rng = np.random.default_rng(7)
  lengths = [11, 6, 9]
  ids = rng.integers(3, 48, (3, 11))
  mask = (np.arange(11)[None] < np.array(lengths)[:, None]).astype(np.int32)
  ids = np.where(mask == 1, ids, PAD)
  glob = np.zeros_like(mask)
  glob[1, 2] = 1
  return ids, mask, glob


def _rows(model, ids, mask, glob):
  """next_logits(prefix) per input row, from the numpy twin."""
  return [lambda prefix, b=b: ref.numpy_next_logits(
      model, ids[b], mask[b], glob[b], prefix) for b in range(len(ids))]


def _settings(kw):
  eos = kw.get("eos_token_id", EOS)
  eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
  feos = kw.get("forced_eos_token_id")
  feos = () if feos is None else (feos,) if isinstance(feos, int) else feos
  return dict(start=kw.get("decoder_start_token_id", START), eos=eos,
              max_length=kw["max_length"],
              min_length=kw.get("min_length", 0),
              no_repeat_ngram_size=kw.get("no_repeat_ngram_size", 0),
              forced_bos=kw.get("forced_bos_token_id"), forced_eos=feos,
              num_beams=kw.get("num_beams", 1),
              length_penalty=kw.get("length_penalty", 1.0),
              early_stopping=kw.get("early_stopping", False),
              num_return=kw.get("num_return_sequences", 1))


def _pad_rows(rows, fill):
  width = max(len(r) for r in rows)
  return np.array([r + [fill] * (width - len(r)) for r in rows])


GREEDY_CASES = {
    "plain": dict(max_length=12),
    "min_length_ngram": dict(max_length=14, min_length=6,
                             no_repeat_ngram_size=2),
    "forced_bos_eos_no_pad": dict(max_length=9, forced_bos_token_id=5,
                                  forced_eos_token_id=EOS, pad_token_id=None),
}


@pytest.mark.parametrize("case", GREEDY_CASES)
def test_greedy_equals_brute_force(case):
  kw = {"decoder_start_token_id": START, "eos_token_id": EOS,
        "pad_token_id": PAD, **GREEDY_CASES[case]}
  model = ref.ToySeq2Seq(eos_ramp=0.3, seed=1)
  ids, mask, glob = _batch()
  got = gen.generate(model, ids, mask, glob, **kw)
  s = _settings(kw)
  rows = [ref.greedy(f, s) for f in _rows(model, ids, mask, glob)]
  pad = EOS if kw["pad_token_id"] is None else PAD
  np.testing.assert_array_equal(got, _pad_rows(rows, pad))
  assert got.dtype == np.int64
  # the case decodes rows that stop at EOS and rows that do not
  if case == "plain":
    assert {r[-1] == EOS for r in rows} == {True, False}


BEAM_CASES = {
    # the issue's setting: 4 beams, length_penalty 2, 3-gram ban, min_length
    "issue_early_true": dict(num_beams=4, length_penalty=2.0,
                             no_repeat_ngram_size=3, min_length=4,
                             early_stopping=True, max_length=14),
    "issue_early_false": dict(num_beams=4, length_penalty=2.0,
                              no_repeat_ngram_size=3, min_length=4,
                              early_stopping=False, max_length=14),
    "never_two_returned": dict(num_beams=3, length_penalty=1.0,
                               early_stopping="never", max_length=12,
                               num_return_sequences=2),
    "negative_penalty_two_eos": dict(num_beams=3, length_penalty=-0.5,
                                     eos_token_id=[EOS, 7], max_length=12),
    "forced_bos_eos_pad0": dict(num_beams=2, forced_bos_token_id=5,
                                forced_eos_token_id=EOS, pad_token_id=0,
                                max_length=10, early_stopping=True),
    "no_eos": dict(num_beams=2, eos_token_id=None, max_length=7),
}


@pytest.mark.parametrize("case", BEAM_CASES)
def test_beam_equals_brute_force(case):
  kw = {"decoder_start_token_id": START, "eos_token_id": EOS,
        "pad_token_id": PAD, **BEAM_CASES[case]}
  model = ref.ToySeq2Seq(eos_ramp=0.3, seed=1)
  ids, mask, glob = _batch()
  got = gen.generate(model, ids, mask, glob, **kw)
  s = _settings(kw)
  best = [ref.beam(f, s) for f in _rows(model, ids, mask, glob)]
  rows = [tokens for hyps in best for _, tokens in hyps]
  # transformers' fill: pad, or eos[0] when pad is 0, or -1 without eos
  fill = -1 if not s["eos"] else (kw["pad_token_id"] or s["eos"][0])
  np.testing.assert_array_equal(got, _pad_rows(rows, fill))
  if case.startswith("issue"):  # finished by EOS, at different lengths
    assert len({len(r) for r in rows}) > 1
    assert all(r[-1] == EOS for r in rows)


def test_early_stopping_changes_the_search():
  """The two issue cases differ on this toy (so both rules are tested)."""
  model = ref.ToySeq2Seq(eos_ramp=0.3, seed=1)
  ids, mask, glob = _batch()
  s = _settings(dict(BEAM_CASES["issue_early_true"]))
  s_false = dict(s, early_stopping=False)
  rows = _rows(model, ids, mask, glob)
  assert any(ref.beam(f, s) != ref.beam(f, s_false) for f in rows)


def test_bucket_padding_and_compile_cache():
  """Lengths 17 and 19 share bucket 20: one compiled program, the tokens of
  the unpadded inputs."""
  model = ref.ToySeq2Seq(seed=2)
  rng = np.random.default_rng(3)
  kw = dict(decoder_start_token_id=START, eos_token_id=EOS, pad_token_id=PAD,
            num_beams=2, max_length=8)
  traces, programs = ref.TRACES[0], gen.compiled_programs()
  for length in (17, 19):
    ids = rng.integers(3, 48, (2, length))
    np.testing.assert_array_equal(
        gen.generate(model, ids, **kw),
        gen.generate(model, ids, bucket=False, **kw))
  # 17 and 19 share one program; each bucket=False length compiles one
  assert ref.TRACES[0] - traces == 3
  assert gen.compiled_programs() - programs == 3
  # another model of the same structure: new weights, the same program
  gen.generate(ref.ToySeq2Seq(seed=4), ids, **kw)
  assert ref.TRACES[0] - traces == 3


@pytest.mark.parametrize("length,bucket", [
    (1, 16), (16, 16), (17, 20), (20, 20), (21, 24), (33, 40), (100, 112),
    (1000, 1024), (1025, 1280), (5000, 5120), (16000, 16384),
    (16384, 16384), (16385, 20480)])
def test_bucket_rule(length, bucket):
  assert gen.bucket_length(length) == bucket


def test_bucket_capped_at_positions():
  assert gen.bucket_length(15000, max_positions=16000) == 16000
  assert gen.bucket_length(16100, max_positions=16000) == 16100


def test_defaults_from_generation_config_then_transformers():
  model = ref.ToySeq2Seq(seed=3)
  model.generation_config = {
      "decoder_start_token_id": START, "eos_token_id": EOS,
      "pad_token_id": PAD, "num_beams": 2, "no_repeat_ngram_size": 2,
      "transformers_version": "5.25.0", "_from_model_config": True}
  ids, mask, glob = _batch()
  got = gen.resolve(model, {"max_new_tokens": 5})
  assert got["max_length"] == 6 and got["num_beams"] == 2
  assert got["length_penalty"] == 1.0 and got["early_stopping"] is False
  # no max_length anywhere: transformers' 20 new tokens
  assert gen.resolve(model, {})["max_length"] == 21
  # min_new_tokens wins over min_length, counted after decoder_start
  assert gen.resolve(model, {"min_length": 9, "min_new_tokens": 3})[
      "min_length"] == 4
  np.testing.assert_array_equal(
      gen.generate(model, ids, mask, glob, max_length=8),
      gen.generate(ref.ToySeq2Seq(seed=3), ids, mask, glob,
                   decoder_start_token_id=START, eos_token_id=EOS,
                   pad_token_id=PAD, num_beams=2, no_repeat_ngram_size=2,
                   max_length=8))


@pytest.mark.parametrize("kw,message", [
    ({"repetition_penalty": 1.2}, "repetition_penalty=1.2"),
    ({"do_sample": True}, "do_sample"),
    ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
    ({"num_return_sequences": 2}, "needs num_beams"),
    ({"max_length": 1}, "max_length"),
    ({"early_stopping": "sometimes"}, "early_stopping"),
    ({"decoder_start_token_id": None}, "decoder_start_token_id"),
])
def test_refusals_name_the_argument(kw, message):
  model = ref.ToySeq2Seq()
  args = dict(decoder_start_token_id=START, eos_token_id=EOS, max_length=5)
  args.update(kw)
  with pytest.raises(ValueError, match=message):
    gen.generate(model, np.ones((1, 4), np.int32), **args)


def test_unknown_argument_and_model_config_refusal():
  model = ref.ToySeq2Seq()
  with pytest.raises(TypeError, match="num_beam"):
    gen.generate(model, np.ones((1, 4), np.int32), num_beam=2)
  model.generation_config = {"decoder_start_token_id": 0,
                             "suppress_tokens": [5]}
  with pytest.raises(ValueError, match="suppress_tokens.*model.generation"):
    gen.generate(model, np.ones((1, 4), np.int32))
  model.generation_config = {"decoder_start_token_id": 0}
  with pytest.raises(ValueError, match="attention_mask"):
    gen.generate(model, np.ones((1, 4), np.int32), np.ones((1, 3)))


# LED: token-identical to transformers' LEDForConditionalGeneration.generate.

LED_SMALL = dict(vocab_size=61, d_model=16, encoder_layers=2,
                 decoder_layers=2, encoder_attention_heads=2,
                 decoder_attention_heads=4, encoder_ffn_dim=24,
                 decoder_ffn_dim=20, max_encoder_position_embeddings=64,
                 max_decoder_position_embeddings=24, dropout=0.0,
                 attention_window=[4, 6], init_std=0.3)
ISSUE_BEAM = dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3,
                  min_length=5, max_length=16)


@pytest.fixture(scope="module")
def led_pair(tmp_path_factory):
  """transformers' tiny random LED (init_std 0.3 and a random
  final_logits_bias, so the search meets EOS at different steps), lfjax's
  from its save_pretrained folder, and a batch: right padding (33, 20, 27
  tokens; generate pads 33 to its bucket, 40, transformers to a window
  multiple, 36), global attention on <s> and on a middle token of row 1."""
  torch = optional.need("torch")
  transformers = optional.need("transformers")
  from lfjax import led_convert  # noqa: PLC0415 (torch-only test)
  torch.manual_seed(0)
  hf = transformers.LEDForConditionalGeneration(
      transformers.LEDConfig(**LED_SMALL)).eval()
  with torch.no_grad():
    hf.final_logits_bias.normal_(0, 0.5)
  path = tmp_path_factory.mktemp("led")
  hf.save_pretrained(path)
  ours = led_convert.from_pretrained(str(path))
  rng = np.random.default_rng(0)
  lengths, n = [33, 20, 27], 33
  ids = rng.integers(3, 61, (3, n))
  mask = (np.arange(n)[None] < np.array(lengths)[:, None]).astype(np.int64)
  ids = np.where(mask == 1, ids, 1)
  glob = np.zeros_like(mask)
  glob[:, 0] = 1
  glob[1, 5] = 1

  def hf_generate(**kw):
    with torch.no_grad():
      return hf.generate(torch.tensor(ids),
                         attention_mask=torch.tensor(mask),
                         global_attention_mask=torch.tensor(glob),
                         **kw).numpy()

  return ours, (ids, mask, glob), hf_generate, hf


@pytest.mark.parametrize("kw", [
    {},  # greedy; max_length: transformers' default 20 new tokens
    dict(ISSUE_BEAM, early_stopping=True),
    dict(ISSUE_BEAM, early_stopping=False),
], ids=["greedy_default_length", "beam_early_true", "beam_early_false"])
def test_led_generate_equals_transformers(led_pair, kw):
  ours, (ids, mask, glob), hf_generate, _ = led_pair
  # the token ids come from the checkpoint (generation_config.json)
  assert ours.generation_config["decoder_start_token_id"] == 2
  want = hf_generate(**kw)
  got = ours.generate(ids, mask, glob, **kw)
  np.testing.assert_array_equal(got, want)
  programs = gen.compiled_programs()
  ours.generate(ids, mask, glob, **kw)  # LED's graph (a dict config) hits
  assert gen.compiled_programs() == programs
  # rows of different lengths: EOS before max_length and padding after it
  assert (got[:, -1] == 1).any() and want.shape[1] > 2


def test_led_search_settings_from_the_checkpoint(led_pair, tmp_path):
  """A checkpoint whose generation_config.json sets the search: both
  libraries read it (lfjax through led_convert.from_pretrained)."""
  from lfjax import led_convert  # noqa: PLC0415 (torch-only test)
  _, (ids, mask, glob), hf_generate, hf = led_pair
  saved = hf.generation_config
  hf.generation_config = copy.deepcopy(saved)
  hf.generation_config.update(num_beams=3, length_penalty=0.5,
                              no_repeat_ngram_size=2, max_length=13,
                              early_stopping="never")
  try:
    hf.save_pretrained(tmp_path)
    want = hf_generate()
  finally:
    hf.generation_config = saved
  ours = led_convert.from_pretrained(str(tmp_path))
  assert ours.generation_config["num_beams"] == 3
  np.testing.assert_array_equal(ours.generate(ids, mask, glob), want)
