"""lfjax's LED equals transformers' (modeling_led.py) on tiny random models
built here; decode_step equals the full decoder; BART-to-LED gives BART's
logits; exports load in transformers. Runs where torch is installed (the
Python 3.11 leg of CI).
"""

import dataclasses
import json
import warnings

import numpy as np
import pytest

from tests import optional

torch = optional.need("torch")
transformers = optional.need("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from lfjax import led_convert  # noqa: E402
from lfjax.models import led as led_lib  # noqa: E402
from lfjax.models.led import LEDForConditionalGeneration  # noqa: E402
from lfjax.models.led import LEDModel  # noqa: E402
from lfjax.models.led_config import LEDConfig  # noqa: E402

from tests.hf_cases import save  # noqa: E402

# Tiny programs: XLA's optimisations cost more than they save here.
pytestmark = pytest.mark.usefixtures("fast_compiles")

VOCAB = 61
SMALL = dict(vocab_size=VOCAB, d_model=16, encoder_layers=2,
             decoder_layers=2, encoder_attention_heads=2,
             decoder_attention_heads=4, encoder_ffn_dim=24,
             decoder_ffn_dim=20, max_encoder_position_embeddings=64,
             max_decoder_position_embeddings=24, dropout=0.0)


def hf_led(tmp_path, seed=0, cls="LEDForConditionalGeneration", **kw):
  torch.manual_seed(seed)
  cfg = transformers.LEDConfig(**{**SMALL, **kw})
  model = getattr(transformers, cls)(cfg)
  if hasattr(model, "final_logits_bias"):  # a buffer, zero by default
    model.final_logits_bias.normal_(0, 0.5)
  return save(model, tmp_path)


def encoder_batch(lengths, n, globals_at, seed=0):
  """Right-padded ids (pad 1), attention mask and global mask."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, VOCAB, size=(len(lengths), n))
  mask = np.zeros((len(lengths), n), np.int64)
  for i, length in enumerate(lengths):
    mask[i, :length] = 1
    ids[i, length:] = 1
  glob = np.zeros_like(mask)
  for i, cols in enumerate(globals_at):
    glob[i, cols] = 1
  return ids, mask, glob


def run_hf(model, ids, mask, glob, dec_ids, dec_mask=None):
  kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
            global_attention_mask=torch.tensor(glob),
            decoder_input_ids=torch.tensor(dec_ids),
            output_hidden_states=True)
  if dec_mask is not None:
    kw["decoder_attention_mask"] = torch.tensor(dec_mask)
  with torch.no_grad():
    return model(**kw)


def close(got, want, rows=None):
  got, want = np.asarray(got), np.asarray(want.numpy() if hasattr(
      want, "numpy") else want)
  if rows is not None:
    got, want = got[rows], want[rows]
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("window,lengths,n,globals_at,scan", [
    # per-layer windows, a length no window multiple, padding, globals
    # anywhere (the first row's first token is local)
    ([4, 6], [19, 13], 19, [[5, 11], [0]], False),
    (8, [21, 21], 21, [[20], [3, 4, 9]], False),
    ([6, 6], [17, 9], 17, [[2], [0, 8]], True),
])
def test_logits_and_hidden_states_match_transformers(tmp_path, window,
                                                     lengths, n, globals_at,
                                                     scan):
  hf = hf_led(tmp_path, attention_window=window)
  ids, mask, glob = encoder_batch(lengths, n, globals_at)
  dec_ids = np.random.default_rng(1).integers(3, VOCAB, size=(2, 7))
  dec_mask = np.ones_like(dec_ids)
  dec_mask[1, 5:] = 0  # right padding in the decoder
  want = run_hf(hf, ids, mask, glob, dec_ids, dec_mask)

  ours = led_convert.from_pretrained(str(tmp_path), scan_layers=scan)
  assert isinstance(ours, LEDForConditionalGeneration)
  got = ours(ids, mask, glob, dec_ids, dec_mask, output_hidden_states=True)
  assert got.logits.dtype == jnp.float32
  valid = dec_mask.astype(bool)
  close(got.logits, want.logits, valid)
  enc_valid = mask.astype(bool)
  close(got.encoder_last_hidden_state, want.encoder_last_hidden_state,
        enc_valid)
  assert len(got.encoder_hidden_states) == len(want.encoder_hidden_states)
  for g, w in zip(got.encoder_hidden_states, want.encoder_hidden_states):
    close(g, w, enc_valid)
  assert len(got.decoder_hidden_states) == len(want.decoder_hidden_states)
  for g, w in zip(got.decoder_hidden_states, want.decoder_hidden_states):
    close(g, w, valid)


def test_led_model_folder_and_jit(tmp_path):
  hf = hf_led(tmp_path, cls="LEDModel", attention_window=4)
  ids, mask, glob = encoder_batch([15, 10], 15, [[0, 7], [0]])
  dec_ids = np.random.default_rng(2).integers(3, VOCAB, size=(2, 5))
  want = run_hf(hf, ids, mask, glob, dec_ids)
  ours = led_convert.from_pretrained(str(tmp_path), max_global=2)
  assert isinstance(ours, LEDModel)
  f = jax.jit(lambda m, *a: m(*a).last_hidden_state)
  got = f(ours, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(glob),
          jnp.asarray(dec_ids))
  close(got, want.last_hidden_state)
  # The same weights under the LM head: the tied table, bias zero.
  lm = led_convert.from_pretrained(str(tmp_path),
                                   head="conditional_generation")
  close(lm.logits(got), want.last_hidden_state.numpy()
        @ hf.shared.weight.detach().numpy().T)


def test_decode_step_equals_full_decoder(tmp_path):
  hf_led(tmp_path, attention_window=[4, 6])
  model = led_convert.from_pretrained(str(tmp_path))
  ids, mask, _ = encoder_batch([19, 13], 19, [[], []])
  dec_ids = np.random.default_rng(3).integers(3, VOCAB, size=(2, 7))
  full = model(ids, mask, None, dec_ids).logits
  # Under jit, as generation runs it: the default first-token global.
  enc = jax.jit(lambda i, m: model.encode(i, m))(ids, mask)
  cache = model.init_cache(enc, mask, 10)
  assert cache["self_k"][0].shape == (2, 10, 4, 4)
  step = jax.jit(model.decode_step)
  pieces = []
  for a, b in ((0, 1), (1, 4), (4, 5), (5, 6), (6, 7)):  # T = 1, T > 1
    logits, cache = step(jnp.asarray(dec_ids[:, a:b]), cache)
    pieces.append(logits)
  assert int(cache["length"]) == 7
  np.testing.assert_allclose(np.concatenate(pieces, 1), full, atol=1e-5)


def test_decode_step_beams_share_the_encoder_side(tmp_path):
  """Two beams per input: the cache keeps cross-attention K/V per input,
  decode_step and reorder_cache equal the full decoder on the inputs
  repeated per beam (transformers' layout) and the reordered prefixes."""
  hf_led(tmp_path, attention_window=[4, 6])
  model = led_convert.from_pretrained(str(tmp_path))
  ids, mask, _ = encoder_batch([19, 13], 19, [[], []])
  dec_ids = np.random.default_rng(4).integers(3, VOCAB, size=(4, 6))
  enc = jax.jit(lambda i, m: model.encode(i, m))(ids, mask)
  cache = model.init_cache(enc, mask, 10, num_beams=2)
  assert cache["self_k"][0].shape == (4, 10, 4, 4)
  assert cache["cross_k"][0].shape == (2, 19, 4, 4)
  step = jax.jit(model.decode_step)
  logits, cache = step(jnp.asarray(dec_ids[:, :3]), cache)
  rep = np.repeat(ids, 2, 0), np.repeat(mask, 2, 0)
  full = model(*rep, None, dec_ids[:, :3]).logits
  np.testing.assert_allclose(logits, full, atol=1e-5)
  # Beam rows continue other beams of their own input.
  order = np.array([1, 1, 3, 2])
  cache = model.reorder_cache(cache, order)
  assert cache["cross_k"][0].shape == (2, 19, 4, 4)
  logits, _ = step(jnp.asarray(dec_ids[:, 3:4]), cache)
  prefix = np.concatenate([dec_ids[order, :3], dec_ids[:, 3:4]], 1)
  full = model(*rep, None, prefix).logits[:, 3:]
  np.testing.assert_allclose(logits, full, atol=1e-5)
  # A row taken from another input's beams is refused (eager index).
  with pytest.raises(ValueError, match="index_N"):
    model.reorder_cache(cache, np.array([2, 1, 3, 2]))
  with pytest.raises(ValueError, match="decoder_input_ids_NxT"):
    step(jnp.asarray(dec_ids[:2, 3:4]), cache)


def test_default_global_is_first_token_and_all_local_warns(tmp_path):
  hf_led(tmp_path, attention_window=[4, 6])
  model = led_convert.from_pretrained(str(tmp_path))
  ids, mask, glob = encoder_batch([19, 19], 19, [[0], [0]])
  dec = np.random.default_rng(1).integers(3, VOCAB, size=(2, 7))
  first = model(ids, mask, glob, dec).logits
  default = model(ids, mask, None, dec).logits
  np.testing.assert_array_equal(default, first)
  # attention_mask 2 (the Longformer convention) marks the global tokens.
  marked = model(ids, np.where(glob == 1, 2, mask), None, dec).logits
  np.testing.assert_array_equal(marked, first)
  led_lib._WARNED_ALL_LOCAL.clear()  # noqa: SLF001
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    local = model(ids, mask, np.zeros_like(glob), dec).logits
    model(ids, mask, np.zeros_like(glob), dec)
  assert [str(w.message)[:21] for w in caught] == ["global_attention_mask"]
  assert not np.allclose(local, first)


def test_export_round_trip_loads_in_transformers(tmp_path):
  src, dst = tmp_path / "src", tmp_path / "dst"
  hf = hf_led(src, attention_window=[4, 6])
  ours = led_convert.from_pretrained(str(src), scan_layers=True)
  ours.generation_config = {"num_beams": 3, "max_length": 9}
  led_convert.to_pretrained(ours, str(dst))
  back = transformers.LEDForConditionalGeneration.from_pretrained(str(dst))
  assert back.generation_config.num_beams == 3
  assert back.generation_config.max_length == 9
  ids, mask, glob = encoder_batch([19, 9], 19, [[0, 4], [0]])
  dec_ids = np.random.default_rng(4).integers(3, VOCAB, size=(2, 7))
  want = run_hf(hf, ids, mask, glob, dec_ids).logits
  close(run_hf(back, ids, mask, glob, dec_ids).logits, want)
  again = led_convert.from_pretrained(str(dst))
  assert again.generation_config["num_beams"] == 3
  hash(nnx.graphdef(again))  # nnx.jit needs hashable static attributes
  close(again(ids, mask, glob, dec_ids).logits, want)


def test_bart_to_led_gives_bart_logits(tmp_path):
  torch.manual_seed(5)
  cfg = transformers.BartConfig(
      vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2,
      encoder_attention_heads=2, decoder_attention_heads=4,
      encoder_ffn_dim=24, decoder_ffn_dim=20, max_position_embeddings=20,
      dropout=0.0)
  bart = transformers.BartForConditionalGeneration(cfg)
  with torch.no_grad():
    bart.final_logits_bias.normal_(0, 0.5)
  save(bart, tmp_path)
  # A legacy checkpoint: generation defaults in config.json only.
  (tmp_path / "generation_config.json").unlink(missing_ok=True)
  d = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**d, "num_beams": 2}))
  model = led_convert.make_led(str(tmp_path), max_positions=50,
                               attention_window=40)
  assert model.cfg.max_encoder_position_embeddings == 50
  assert model.cfg.max_decoder_position_embeddings == 20
  ids, mask, _ = encoder_batch([19, 5], 19, [[], []])  # 19 <= window / 2
  dec_ids = np.random.default_rng(6).integers(3, VOCAB, size=(2, 7))
  with torch.no_grad():
    want = bart(input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask),
                decoder_input_ids=torch.tensor(dec_ids)).logits
  close(model(ids, mask, None, dec_ids).logits, want)
  # Encoder rows past BART's table repeat its learned rows.
  table = np.asarray(model.led.encoder.embed_positions.embedding[...])
  bart_rows = bart.model.encoder.embed_positions.weight.detach().numpy()[2:]
  np.testing.assert_array_equal(table[20:40], bart_rows)
  assert model.generation_config["num_beams"] == 2
  # The command: an LED folder that loads back with the same weights.
  led_convert.main(["--from", str(tmp_path), "--to", str(tmp_path / "led"),
                    "--max_positions", "50", "--attention_window", "40"])
  again = led_convert.from_pretrained(str(tmp_path / "led"))
  np.testing.assert_array_equal(
      again.led.encoder.embed_positions.embedding[...], table)
  assert again.generation_config["num_beams"] == 2
  assert again.cfg.windows() == [40, 40]


def test_refusals_name_the_field(tmp_path):
  with pytest.raises(ValueError, match="attention_window"):
    LEDConfig(**{**SMALL, "attention_window": [4, 4, 4]})
  with pytest.raises(ValueError, match="attention_window"):
    LEDConfig(**{**SMALL, "attention_window": 5})
  with pytest.raises(ValueError, match="encoder_layerdrop"):
    LEDConfig(**{**SMALL, "encoder_layerdrop": 0.1})
  hf_led(tmp_path, attention_window=4)
  d = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps(
      {**d, "tie_word_embeddings": False}))
  with pytest.raises(ValueError, match="tie_word_embeddings"):
    led_convert.from_pretrained(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(
      {**d, "architectures": ["LEDForQuestionAnswering"]}))
  with pytest.raises(ValueError, match="architectures"):
    led_convert.from_pretrained(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(
      {**d, "model_type": "bart"}))
  with pytest.raises(ValueError, match="make_led"):
    led_convert.from_pretrained(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(d))
  model = led_convert.from_pretrained(str(tmp_path))
  assert isinstance(led_convert.from_pretrained(str(tmp_path), head="base"),
                    LEDModel)
  # Sharded and .bin layouts (lfjax.hf_weights) load the same tensors.
  hf = transformers.LEDForConditionalGeneration.from_pretrained(str(tmp_path))
  want = np.asarray(model.led.decoder.layers[1].fc2.kernel[...])
  hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  (tmp_path / "bin").mkdir()  # transformers 5 writes no .bin: torch does
  (tmp_path / "bin" / "config.json").write_text(json.dumps(d))
  torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  for other in (tmp_path / "sharded", tmp_path / "bin"):
    assert not (other / "model.safetensors").exists()
    got = led_convert.from_pretrained(str(other)).led.decoder.layers[1].fc2
    np.testing.assert_array_equal(got.kernel[...], want)
  with pytest.raises(ValueError, match="input_ids"):
    model.encode(np.zeros((2, 65), np.int32))
  with pytest.raises(ValueError, match="decoder_input_ids"):
    model(np.zeros((2, 5), np.int32), decoder_input_ids=np.full((2, 3), 99))


def test_remat_keeps_values_and_gradients():
  """remat recomputes the same values and gradients (dropout on: the same
  keys) in the encoder (lfjax.models.stack) and the decoder."""
  cfg = LEDConfig(**{**SMALL, "encoder_layers": 1, "decoder_layers": 1,
                     "dropout": 0.1, "attention_dropout": 0.1,
                     "activation_dropout": 0.1, "attention_window": 4,
                     "attention_impl": "chunked"})
  ids = np.random.default_rng(7).integers(3, VOCAB, size=(2, 9))
  dec = ids[:, :4]

  def grads(c):
    model = LEDForConditionalGeneration(c, rngs=nnx.Rngs(0))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):  # reseeded with one key, as the trainers do
      m = nnx.merge(graphdef, p, jax.tree.map(lambda v: v, rest))
      nnx.reseed(m, default=jax.random.key(7))
      return jnp.sum(m(ids, None, None, dec).logits ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  (l0, g0), (l1, g1) = grads(cfg), grads(dataclasses.replace(cfg, remat=True))
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               g1, g0)

