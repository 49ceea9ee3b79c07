"""A tiny random RoBERTa checkpoint to start MLM or fine-tuning from, or a
tiny random LED to start summarization from.

  python -m lfjax.make_tiny --to DIR [--positions 64]
  python -m lfjax.make_tiny --led --to DIR [--positions 128]

DIR gets a Hugging Face RoBERTa folder (config.json with model_type
"roberta", model.safetensors in RobertaForMaskedLM's layout, and a
byte-level BPE tokenizer trained on the embedded corpus) that transformers'
RobertaForMaskedLM loads: the :tiny configs (configs/mlm_longformer_base.py,
classify_longformer.py, qa_longformer.py, multiple_choice_longformer.py)
start from it, so their quick starts go through the paper's RoBERTa-to-
Longformer conversion as a real checkpoint would. With --led, DIR gets an
LEDForConditionalGeneration folder (config.json with model_type "led",
model.safetensors, generation_config.json; lfjax.led_convert.to_pretrained)
with the same kind of tokenizer: configs/summarization_led.py:tiny starts
from it. Needs transformers (`pip install "lfjax[hf]"`).
"""

import json
import os
import pathlib
import sys
import tempfile

from flax import nnx
from safetensors.numpy import save_file

from lfjax import cli
from lfjax import convert
from lfjax import hf_weights
from lfjax.data import chars
from lfjax.data import text
from lfjax.models import LongformerConfig
from lfjax.models import LongformerForMaskedLM

# RobertaConfig's fields (transformers' configuration_roberta.py); a RoBERTa
# config with attention_window would read as the RobertaLong recipe.
ROBERTA_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "max_position_embeddings",
    "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id",
    "bos_token_id", "eos_token_id", "tie_word_embeddings")


def _new_checkpoint(path):
  """path as a Path; FileExistsError when it holds a checkpoint already."""
  path = pathlib.Path(path)
  if (path / "config.json").exists():
    raise FileExistsError(f"--to: {path} already holds a checkpoint; choose "
                          "a new folder")
  return path


def _tokenizer(tmp, documents, vocab_size):
  """A byte-level BPE trained on the embedded corpus' first `documents`
  files, saved in tmp."""
  docs = [t.decode("utf-8", "replace")
          for _, t in chars.pystdlib_files()[:documents]]
  return text.train_tokenizer(docs, tmp, vocab_size=vocab_size)


def make_tiny(path, *, documents=200, vocab_size=1000, positions=64,
              hidden_size=64, layers=2, seed=0):
  """Writes a tiny random RoBERTa checkpoint with a byte-level BPE trained
  on the first `documents` files of the embedded corpus; returns its path.

  positions: tokens it takes (max_position_embeddings is positions +
  pad_token_id + 1, RoBERTa's reserved rows); hidden_size / 32 heads.

  Raises:
    FileExistsError: path holds a config.json already.
    extras.MissingPackage: transformers or tokenizers is not installed
      (text.train_tokenizer checks, before anything is written).
  """
  path = _new_checkpoint(path)
  with tempfile.TemporaryDirectory() as tmp:
    tok = _tokenizer(tmp, documents, vocab_size)
    cfg = LongformerConfig(
        vocab_size=len(tok), hidden_size=hidden_size,
        num_hidden_layers=layers, num_attention_heads=max(1, hidden_size // 32),
        intermediate_size=4 * hidden_size,
        max_position_embeddings=positions + tok.pad_token_id + 1,
        type_vocab_size=1, layer_norm_eps=1e-5,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, attention_window=2 * positions)
    # A Longformer whose window covers its positions is a RoBERTa; its
    # global projections (not written) are unused.
    model = LongformerForMaskedLM(cfg, rngs=nnx.Rngs(seed))
    weights = {name.replace("longformer.", "roberta.", 1): w
               for name, w in hf_weights.export_weights(model).items()
               if "_global." not in name}
    config = {k: v for k, v in convert.hf_config(model).items()
              if k in ROBERTA_FIELDS}
    config.update(model_type="roberta", architectures=["RobertaForMaskedLM"],
                  dtype="float32")
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    convert.copy_tokenizer(tmp, path, positions)
  return path


def make_tiny_led(path, *, documents=200, vocab_size=1000, positions=128,
                  decoder_positions=64, d_model=32, layers=2, window=16,
                  init_std=0.02, seed=0):
  """Writes a tiny random LED (LEDForConditionalGeneration) with a
  byte-level BPE trained on the first `documents` files of the embedded
  corpus; returns its path.

  positions / decoder_positions: the encoder's / decoder's position rows
  (LED has no offset); window: the encoder's FULL attention window, as
  transformers counts it; d_model / 16 heads, `layers` encoder and decoder
  layers, weights drawn as lfjax's LED draws them (N(0, init_std); LED's
  0.02 by default).

  Raises:
    FileExistsError: path holds a config.json already.
    extras.MissingPackage: transformers or tokenizers is not installed.
  """
  from lfjax import led_convert
  from lfjax.models import led
  from lfjax.models import led_config
  path = _new_checkpoint(path)
  with tempfile.TemporaryDirectory() as tmp:
    tok = _tokenizer(tmp, documents, vocab_size)
    heads = max(1, d_model // 16)
    cfg = led_config.LEDConfig(
        vocab_size=len(tok), max_encoder_position_embeddings=positions,
        max_decoder_position_embeddings=decoder_positions,
        encoder_layers=layers, decoder_layers=layers,
        encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model,
        encoder_attention_heads=heads, decoder_attention_heads=heads,
        d_model=d_model, attention_window=window, init_std=init_std,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id)  # LED's: </s>
    model = led.LEDForConditionalGeneration(cfg, rngs=nnx.Rngs(seed))
    led_convert.to_pretrained(model, path)
    convert.copy_tokenizer(tmp, path, positions)
  return path


def main(argv=None):
  """`python -m lfjax.make_tiny --to DIR`; argv excludes the program name.
  Raises cli.UsageError for bad flags, FileExistsError for a --to that holds
  a checkpoint."""
  p = cli.ArgumentParser(prog="python -m lfjax.make_tiny",
                         description=__doc__.strip().splitlines()[0])
  p.add_argument("--to", required=True, help="output folder (new)")
  p.add_argument("--positions", type=int, default=None,
                 help="its positions (default 64, the MLM :tiny config makes "
                 "it 256 long; --led: the encoder's, default 128)")
  p.add_argument("--led", action="store_true",
                 help="a tiny random LED (summarization) instead of a "
                 "RoBERTa")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  cli.at_least("--positions", args.positions, 2)
  if args.led:
    positions = args.positions or 128
    out = make_tiny_led(args.to, positions=positions)
    print(f"wrote a tiny random LED ({positions} encoder positions) and "
          f"its tokenizer to {out}; start the summarization :tiny config "
          "from it:\n  python -m lfjax.train --config "
          f"configs/summarization_led.py:tiny --config.init_from {out} "
          "--config.data.train FILE --workdir DIR")
    return
  args.positions = args.positions or 64
  out = make_tiny(args.to, positions=args.positions)
  print(f"wrote a tiny random RoBERTa ({args.positions} positions) and its "
        f"tokenizer to {out}; start a :tiny config from it, e.g.\n  python "
        "-m lfjax.train --config configs/mlm_longformer_base.py:tiny "
        f"--config.init_from {out} --workdir DIR")


if __name__ == "__main__":
  sys.exit(cli.run(main))
