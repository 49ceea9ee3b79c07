"""Documents for MLM: local text, the checkpoint's own tokenizer, and the
token streams of the train/valid splits (packing, masking and batching:
lfjax.data.loader).

Nothing is downloaded: documents are local files (or `pystdlib`, this
Python's standard library sources), the tokenizer is read from a local
Hugging Face directory. Tokenized splits live in a token store
(lfjax.data.store: sharded npy files with a manifest), built once, whose
content hash MLM runs record (lfjax.tasks.common.record_corpus).

Character accounting for BPC: the characters of a document are divided
among its tokens by their offsets, each token owning the characters from
the end of the previous token's span to the end of its own. Whitespace a
tokenizer leaves out of spans (RoBERTa's trim_offsets) thus belongs to the
token after it, and the last token also takes any trailing text. The counts
of a document sum to its length; separators own none.
"""

import dataclasses
import json
import os
import pathlib
import zlib

import numpy as np

from lfjax import extras
from lfjax.data import tokenizing

SPLITS = ("train", "valid")


def load_tokenizer(path, *, needs=("mask", "pad"), purpose="MLM data"):
  """A fast Hugging Face tokenizer from a local directory (character
  offsets, for BPC and answer spans, need a fast one); MLM's and
  fine-tuning's.

  needs: the special tokens it must have ("mask", "pad"); purpose: what
  reads it (for the messages).

  Raises:
    extras.MissingPackage: transformers is not installed.
    FileNotFoundError: no such directory, or no tokenizer files in it.
    ValueError: a slow tokenizer, or one without a needed token.
  """
  transformers = extras.require("transformers", "tokenizer: reading the "
                                f"checkpoint's tokenizer for {purpose}")
  path = str(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer: expected a local directory with the "
                            f"tokenizer files (vocab.json/merges.txt or "
                            f"tokenizer.json), got {path!r}")
  if not has_tokenizer_files(path):
    # transformers 5 builds an EMPTY tokenizer from a folder without them
    # (5 special tokens, every text encoded as <s></s>): a run would train
    # and score on nothing without a word.
    raise FileNotFoundError(
        f"tokenizer: no tokenizer files in {path!r} (expected tokenizer.json, "
        f"vocab.json + merges.txt, vocab.txt or a sentencepiece .model); "
        f"copy them next to config.json")
  try:
    tok = transformers.AutoTokenizer.from_pretrained(path,
                                                     local_files_only=True)
  except (OSError, ValueError) as e:
    why = " ".join(str(e).split())  # one line: transformers' are several
    raise FileNotFoundError(f"tokenizer: no tokenizer files in {path!r} "
                            f"({why}); copy them next to config.json") from None
  if not tok.is_fast:
    raise ValueError(f"tokenizer: {path!r} loads a slow tokenizer; character "
                     "offsets need a fast one (tokenizer.json)")
  for name in needs:
    if getattr(tok, f"{name}_token_id") is None:
      raise ValueError(f"tokenizer: {path!r} has no {name} token; "
                       f"{purpose} needs " + " and ".join(needs)
                       + " tokens")
  return tok


# What a Hugging Face tokenizer is read from: a fast tokenizer's
# tokenizer.json, or the vocabulary a slow one converts (BPE, WordPiece,
# sentencepiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")


def has_tokenizer_files(path):
  """Whether the folder holds a tokenizer's vocabulary (TOKENIZER_FILES or
  a sentencepiece *.model)."""
  path = pathlib.Path(path)
  return (any((path / name).is_file() for name in TOKENIZER_FILES)
          or any(path.glob("*.model")))


def check_fits(tok, model_dir, *, tokenizer_dir, arg="data.tokenizer"):
  """Refuses a tokenizer that does not belong to the checkpoint in
  model_dir (its config.json): more tokens than the model's vocab_size
  (their ids would index past the embedding table: NaN losses), or a pad,
  <s> or </s> id other than the model's where both define it (padding
  would be read as text, summaries would never end). No config.json: no
  check.

  Raises ValueError naming `arg`."""
  cfg_path = pathlib.Path(model_dir) / "config.json"
  if not cfg_path.is_file():
    return
  with open(cfg_path) as f:
    cfg = json.load(f)
  vocab = cfg.get("vocab_size")
  if isinstance(vocab, int) and len(tok) > vocab:
    raise ValueError(
        f"{arg}: the tokenizer of {str(tokenizer_dir)!r} has {len(tok)} "
        f"tokens, more than the model's vocab_size={vocab} ({cfg_path}); use "
        f"the checkpoint's own tokenizer files")
  for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
    mine, theirs = getattr(tok, name, None), cfg.get(name)
    if mine is not None and isinstance(theirs, int) and mine != theirs:
      raise ValueError(
          f"{arg}: the tokenizer of {str(tokenizer_dir)!r} has {name}={mine}, "
          f"the model's config.json ({cfg_path}) {theirs}: not this model's "
          f"tokenizer; use the checkpoint's own tokenizer files")


def train_tokenizer(texts, path, vocab_size=1000):
  """Trains a byte-level BPE (RoBERTa's kind) on `texts` and saves it as a
  RobertaTokenizerFast in `path`: for tests and the small experiments, whose
  tokenizer must come from local text."""
  tokenizers = extras.require("tokenizers", "training a tokenizer")
  transformers = extras.require("transformers", "training a tokenizer")
  specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                          special_tokens=specials, show_progress=False)
  os.makedirs(path, exist_ok=True)
  bpe.save_model(str(path))
  files = (os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"))
  try:  # transformers 5 names the files vocab / merges, 4 vocab_file / ...
    tok = transformers.RobertaTokenizerFast(vocab=files[0], merges=files[1])
  except TypeError:
    tok = transformers.RobertaTokenizerFast(vocab_file=files[0],
                                            merges_file=files[1])
  tok.save_pretrained(str(path))
  return tok


def split_of(name, valid_fraction):
  """A document's split, from a CRC of its name (stable across runs)."""
  return ("valid" if zlib.crc32(name.encode()) % 10_000
          < round(valid_fraction * 10_000) else "train")


def tokenize(texts, tokenizer, separator_id, batch=256):
  """(tokens, chars) int32 streams [T]: each document's tokens followed by
  `separator_id`; chars[i] the characters token i owns (module doc;
  lfjax.data.tokenizing.account)."""
  parts = [(np.zeros(0, np.int32), np.zeros(0, np.int32))]
  for i in range(0, len(texts), batch):
    chunk = texts[i:i + batch]
    enc = tokenizer(chunk, add_special_tokens=False,
                    return_offsets_mapping=True, return_attention_mask=False)
    parts.append(tokenizing.account(chunk, enc["input_ids"],
                                    enc["offset_mapping"], separator_id)[:2])
  return tuple(np.concatenate(p) for p in zip(*parts))


@dataclasses.dataclass(frozen=True)
class TokenCorpus:
  """Token and owned-character streams per split, with the ids MLM needs."""
  # split -> (tokens [T], chars [T]): int32 arrays, or anything whose
  # slices are (lfjax.data.shards.ShardedArray).
  splits: dict
  vocab_size: int  # len(tokenizer)
  bos_id: int
  eos_id: int
  pad_id: int
  mask_id: int
  special_ids: tuple  # never masked, never a random replacement
  # The token store's content hash (lfjax.data.store: the tokenizer,
  # the options and every shard); None: not known (a corpus built by hand).
  sha256: str | None = None


def special_ids(tokenizer):
  """Special tokens (unk is a real token and may be masked)."""
  return tuple(sorted(set(tokenizer.all_special_ids)
                      - {tokenizer.unk_token_id}))


