"""Documents for MLM: local text, the checkpoint's own tokenizer, and the
token streams of the train/valid splits (packing, masking and batching:
lfjax.data.loader).

Nothing is downloaded: documents are local files (or `pystdlib`, this
Python's standard library sources), the tokenizer is read from a local
Hugging Face directory. Tokenized splits are cached (npy, keyed by
data_sha256: a hash of the documents, the split and the tokenizer files) so
a resumed run does not tokenize again; the full hash is the corpus's
sha256, which MLM runs record (lfjax.tasks.common.record_corpus).

Character accounting for BPC: the characters of a document are divided
among its tokens by their offsets, each token owning the characters from
the end of the previous token's span to the end of its own. Whitespace a
tokenizer leaves out of spans (RoBERTa's trim_offsets) thus belongs to the
token after it, and the last token also takes any trailing text. The counts
of a document sum to its length; separators own none.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import zlib

import numpy as np

from lfjax import extras
from lfjax.data import chars as chars_lib

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
  try:
    tok = transformers.AutoTokenizer.from_pretrained(path,
                                                     local_files_only=True)
  except (OSError, ValueError) as e:
    raise FileNotFoundError(f"tokenizer: no tokenizer files in {path!r} "
                            f"({e}); copy them next to config.json") from None
  if not tok.is_fast:
    raise ValueError(f"tokenizer: {path!r} loads a slow tokenizer; character "
                     "offsets need a fast one (tokenizer.json)")
  for name in needs:
    if getattr(tok, f"{name}_token_id") is None:
      raise ValueError(f"tokenizer: {path!r} has no {name} token; "
                       f"{purpose} needs " + " and ".join(needs)
                       + " tokens")
  return tok


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


def read_documents(sources, glob="*.txt", max_documents=0):
  """[(name, text)] from files, folders (every file matching glob, sorted)
  and "pystdlib". Names are relative to their source, so the train/valid
  split does not change when the folder moves."""
  if isinstance(sources, str):
    sources = [sources]
  docs = []
  for src in sources:
    if src == "pystdlib":
      docs += [("pystdlib/" + rel, text.decode("utf-8", errors="replace"))
               for rel, text in chars_lib.pystdlib_files()]
      continue
    path = pathlib.Path(src).expanduser()
    if path.is_dir():
      files = sorted(f for f in path.rglob(glob) if f.is_file())
      if not files:
        raise FileNotFoundError(f"data.sources: no file matching "
                                f"{glob!r} under {path}")
      docs += [(f"{path.name}/{f.relative_to(path).as_posix()}",
                f.read_text(encoding="utf-8", errors="replace"))
               for f in files]
    elif path.is_file():
      docs.append((path.name, path.read_text(encoding="utf-8",
                                             errors="replace")))
    else:
      raise FileNotFoundError(
          f"data.sources: {src!r} is neither a file nor a folder; give "
          "local text files or folders of documents (one document per file)"
          " or 'pystdlib'")
  docs = [(n, t) for n, t in docs if t.strip()]
  if max_documents:
    docs = docs[:max_documents]
  if not docs:
    raise ValueError(f"data.sources: no non-empty documents in {sources}")
  return docs


def split_of(name, valid_fraction):
  """A document's split, from a CRC of its name (stable across runs)."""
  return ("valid" if zlib.crc32(name.encode()) % 10_000
          < round(valid_fraction * 10_000) else "train")


def tokenize(texts, tokenizer, separator_id, batch=256):
  """(tokens, chars) int32 streams: each document's tokens followed by
  `separator_id`; chars[i] the characters token i owns (module doc)."""
  tokens, owned = [], []
  for i in range(0, len(texts), batch):
    chunk = texts[i:i + batch]
    enc = tokenizer(chunk, add_special_tokens=False,
                    return_offsets_mapping=True, return_attention_mask=False)
    for text, ids, offsets in zip(chunk, enc["input_ids"],
                                  enc["offset_mapping"]):
      ends = np.maximum.accumulate(
          np.asarray([e for _, e in offsets] or [0], np.int64))
      counts = np.diff(np.concatenate([[0], ends]))[:len(ids)]
      if len(ids):
        counts[-1] += len(text) - ends[-1]
      tokens += [np.asarray(ids, np.int32), np.asarray([separator_id],
                                                       np.int32)]
      owned += [counts.astype(np.int32), np.zeros(1, np.int32)]
  return np.concatenate(tokens), np.concatenate(owned)


@dataclasses.dataclass(frozen=True)
class TokenCorpus:
  """Token and owned-character streams per split, with the ids MLM needs."""
  splits: dict  # split -> (tokens int32 [T], chars int32 [T])
  vocab_size: int  # len(tokenizer)
  bos_id: int
  eos_id: int
  pad_id: int
  mask_id: int
  special_ids: tuple  # never masked, never a random replacement
  # data_sha256 of what the splits were tokenized from (hex); None: not
  # known (a corpus built by hand).
  sha256: str | None = None


def special_ids(tokenizer):
  """Special tokens (unk is a real token and may be masked)."""
  return tuple(sorted(set(tokenizer.all_special_ids)
                      - {tokenizer.unk_token_id}))


# The tokenizer's files that decide its tokens (the weights' files do not).
_TOKENIZER_FILES = ("tokenizer", "vocab", "merges", "special_tokens",
                    "added_tokens")


def data_sha256(docs, tokenizer_dir, valid_fraction):
  """The sha256 (64 hex digits) of everything the tokenized splits are
  made from: SHA-256 over a sequence of byte strings, each preceded by its
  length (8 bytes, little-endian), so no two different inputs give the same
  sequence: b"lfjax-mlm-data-1"; for each of tokenizer_dir's files whose
  name starts with tokenizer / vocab / merges / special_tokens /
  added_tokens, sorted by name, its name (UTF-8) and its bytes; repr of
  valid_fraction (it decides each document's split); then for each
  document in order its name and its text (UTF-8).

  docs: [(name, text)] as read_documents returns them."""
  digest = hashlib.sha256()

  def put(b):
    digest.update(len(b).to_bytes(8, "little") + b)
  put(b"lfjax-mlm-data-1")
  for name in sorted(os.listdir(tokenizer_dir)):
    if name.startswith(_TOKENIZER_FILES):
      put(name.encode())
      put(pathlib.Path(tokenizer_dir, name).read_bytes())
  put(repr(valid_fraction).encode())
  for name, text in docs:
    put(name.encode())
    put(text.encode("utf-8", "replace"))
  return digest.hexdigest()


def load_corpus(sources, tokenizer_dir, *, valid_fraction=0.01, glob="*.txt",
                max_documents=0, cache_dir=None):
  """Tokenized train/valid splits, built once and cached.

  cache_dir: "" or None = $LFJAX_DATA/mlm (or ~/.cache/lfjax/mlm).
  """
  tok = load_tokenizer(tokenizer_dir)
  docs = read_documents(sources, glob, max_documents)
  bos = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
  eos = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
  if bos is None or eos is None:
    raise ValueError(f"tokenizer: {tokenizer_dir!r} needs cls/bos and "
                     "sep/eos tokens to frame sequences")
  sha256 = data_sha256(docs, tokenizer_dir, valid_fraction)
  key = sha256[:16]
  root = pathlib.Path(cache_dir) if cache_dir else (
      chars_lib.default_data_dir() / "mlm")
  folder = root / key
  if not (folder / "meta.json").exists():
    by_split = {s: [t for n, t in docs if split_of(n, valid_fraction) == s]
                for s in SPLITS}
    for s, texts in by_split.items():
      if not texts:
        raise ValueError(
            f"data.valid_fraction: {valid_fraction} leaves the {s} split of "
            f"{len(docs)} documents empty; give more documents or change it")
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"documents": {s: len(t) for s, t in by_split.items()},
            "tokenizer": str(tokenizer_dir), "sources": list(sources)}
    for s, texts in by_split.items():
      toks, owned = tokenize(texts, tok, eos)
      for what, arr in (("tokens", toks), ("chars", owned)):
        tmp = folder / f"{s}.{what}.tmp.npy"
        np.save(tmp, arr)
        os.replace(tmp, folder / f"{s}.{what}.npy")
      meta[f"{s}_tokens"] = int(len(toks))
      meta[f"{s}_chars"] = int(owned.sum())
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, folder / "meta.json")
  splits = {s: (np.load(folder / f"{s}.tokens.npy", mmap_mode="r"),
                np.load(folder / f"{s}.chars.npy", mmap_mode="r"))
            for s in SPLITS}
  return TokenCorpus(splits, len(tok), bos, eos, tok.pad_token_id,
                     tok.mask_token_id, special_ids(tok), sha256)
