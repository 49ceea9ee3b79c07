"""A tiny random RoBERTa-shaped checkpoint to start MLM or fine-tuning from.

  python -m lfjax.make_tiny --to DIR [--positions 64]

The checkpoint is a Hugging Face folder (config.json, model.safetensors and
a byte-level BPE tokenizer trained on the embedded corpus) that
transformers' RobertaForMaskedLM and LongformerForMaskedLM load; the :tiny
configs (configs/mlm_longformer_base.py, classify_longformer.py,
qa_longformer.py, multiple_choice_longformer.py) start from it. Needs
transformers (`pip install "lfjax[hf]"`).
"""

import pathlib
import sys
import tempfile

from flax import nnx

from lfjax import cli
from lfjax import convert
from lfjax.data import chars
from lfjax.data import text
from lfjax.models import LongformerConfig
from lfjax.models import LongformerForMaskedLM


def make_tiny(path, *, documents=200, vocab_size=1000, positions=64,
              hidden_size=64, layers=2, seed=0):
  """Writes a tiny random RoBERTa-shaped checkpoint (a Longformer whose
  window covers its `positions`, i.e. full attention) with a byte-level BPE
  trained on the first `documents` files of the embedded corpus: the
  init_from of configs/mlm_longformer_base.py:tiny, which makes it long.
  Needs transformers (`pip install "lfjax[hf]"`).

  Raises:
    FileExistsError: path holds a config.json already.
  """
  path = pathlib.Path(path)
  if (path / "config.json").exists():
    raise FileExistsError(f"--to: {path} already holds a checkpoint; choose "
                          "a new folder")
  path.mkdir(parents=True, exist_ok=True)
  docs = [t.decode("utf-8", "replace")
          for _, t in chars.pystdlib_files()[:documents]]
  with tempfile.TemporaryDirectory() as tmp:
    tok = text.train_tokenizer(docs, tmp, vocab_size=vocab_size)
    cfg = LongformerConfig(
        vocab_size=len(tok), hidden_size=hidden_size,
        num_hidden_layers=layers, num_attention_heads=max(1, hidden_size // 32),
        intermediate_size=4 * hidden_size,
        max_position_embeddings=positions + tok.pad_token_id + 1,
        type_vocab_size=1, layer_norm_eps=1e-5,
        pad_token_id=tok.pad_token_id, attention_window=2 * positions)
    convert.to_pretrained(LongformerForMaskedLM(cfg, rngs=nnx.Rngs(seed)),
                          path)
    convert.copy_tokenizer(tmp, path, positions)
  return path


def main(argv=None):
  """`python -m lfjax.make_tiny --to DIR`; argv excludes the program name.
  Raises cli.UsageError for bad flags, FileExistsError for a --to that holds
  a checkpoint."""
  p = cli.ArgumentParser(prog="python -m lfjax.make_tiny",
                         description=__doc__.strip().splitlines()[0])
  p.add_argument("--to", required=True, help="output folder (new)")
  p.add_argument("--positions", type=int, default=64,
                 help="its positions (the MLM :tiny config makes it 256 "
                 "long)")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  cli.at_least("--positions", args.positions, 2)
  out = make_tiny(args.to, positions=args.positions)
  print(f"wrote a tiny random RoBERTa ({args.positions} positions) and its "
        f"tokenizer to {out}; train from it with\n  python -m lfjax.train "
        "--config configs/mlm_longformer_base.py:tiny --config.init_from "
        f"{out} --workdir DIR")


if __name__ == "__main__":
  sys.exit(cli.run(main))
