"""Documents for MLM: local text, the checkpoint's own tokenizer, packing
into fixed-length sequences, and dynamic masking.

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
import os
import pathlib
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from lfjax import extras
from lfjax.data import chars as chars_lib
from lfjax.data import sampler
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
  # slices are (lfjax.data.store.ShardedArray).
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


def num_sequences(corpus, split, seq_len):
  return -(-len(corpus.splits[split][0]) // (seq_len - 2))


def packed(corpus, split, seq_len, indices):
  """Sequences `indices` of the split packed to seq_len: <s>, the next
  seq_len - 2 tokens of the stream (documents run on, separated by </s>),
  </s>; the last one padded. Returns input_ids, attention_mask, chars."""
  if seq_len < 3:
    raise ValueError(f"seq_len: expected at least 3, got {seq_len}")
  tokens, owned = corpus.splits[split]
  body = seq_len - 2
  ids = np.full((len(indices), seq_len), corpus.pad_id, np.int32)
  cnt = np.zeros((len(indices), seq_len), np.int32)
  for row, k in enumerate(indices):
    piece = tokens[k * body:(k + 1) * body]
    ids[row, 0] = corpus.bos_id
    ids[row, 1:1 + len(piece)] = piece
    ids[row, 1 + len(piece)] = corpus.eos_id
    cnt[row, 1:1 + len(piece)] = owned[k * body:(k + 1) * body]
  return {"input_ids": ids, "attention_mask": (ids != corpus.pad_id)
          .astype(np.int32), "chars": cnt}


class PackedSampler(sampler.EpochSampler):
  """Batches of packed sequences, shuffled per epoch.

  Batch i depends only on (seed, i): the state {"index": i} replays exactly
  what an uninterrupted run sees. rows: a slice of the batch to build (one
  process's rows on a multi-host mesh, lfjax.parallel.local_rows).
  """

  def __init__(self, corpus, split, *, seq_len, batch_size, seed,
               rows=slice(None)):
    self.corpus, self.split, self.seq_len = corpus, split, seq_len
    super().__init__(num_sequences(corpus, split, seq_len), batch_size, seed,
                     rows)

  def _batch(self):
    return packed(self.corpus, self.split, self.seq_len, self.picks())


def max_masked(seq_len, prob):
  """Static cap on the masked tokens of one sequence (see mask_tokens)."""
  return min(seq_len, int(np.ceil(prob * seq_len)) + 1)


def mask_tokens(key, ids_BxN, maskable_BxN, *, mask_id, replace_ids,
                prob=0.15, mask_frac=0.8, random_frac=0.1):
  """RoBERTa's dynamic masking (fairseq's count per sequence), under jit.

  Each sequence predicts floor(prob * n + u) of its n maskable tokens, u
  uniform in [0, 1) (so prob * n on average), chosen uniformly; a chosen
  token becomes the mask token (mask_frac), a random token from
  replace_ids (random_frac), or stays (the rest).
  Returns (inputs [B, N], selected [B, N] bool, positions [B, K] int32,
  valid [B, K] bool): the chosen positions padded to the static
  K = max_masked(N, prob), so the LM head runs on K tokens, not N.
  """
  k_sel, k_cnt, k_how, k_tok = jax.random.split(key, 4)
  b, n = ids_BxN.shape
  k = max_masked(n, prob)
  count_B = jnp.floor(prob * maskable_BxN.sum(1)
                      + jax.random.uniform(k_cnt, (b,))).astype(jnp.int32)
  # Maskable tokens in random order first, the others after them.
  score = jnp.where(maskable_BxN, jax.random.uniform(k_sel, (b, n)), 2.0)
  order_BxN = jnp.argsort(score, axis=1).astype(jnp.int32)
  valid_BxK = jnp.arange(k)[None, :] < count_B[:, None]
  positions_BxK = jnp.where(valid_BxK, order_BxN[:, :k], 0)
  rows = jnp.arange(b)[:, None]
  selected = jnp.zeros((b, n), bool).at[rows, positions_BxK].max(valid_BxK)
  how = jax.random.uniform(k_how, (b, n))
  replace_ids = jnp.asarray(replace_ids, jnp.int32)
  random_ids = replace_ids[jax.random.randint(k_tok, (b, n), 0,
                                              replace_ids.shape[0])]
  inputs = jnp.where(selected & (how < mask_frac), mask_id, ids_BxN)
  inputs = jnp.where(selected & (how >= mask_frac)
                     & (how < mask_frac + random_frac), random_ids, inputs)
  return inputs, selected, positions_BxK, valid_BxK


def maskable(corpus, ids_BxN, attention_mask_BxN):
  """Real, non-special tokens."""
  special = jnp.isin(ids_BxN, jnp.asarray(corpus.special_ids, jnp.int32))
  return (attention_mask_BxN > 0) & ~special


def replacement_ids(corpus):
  """Token ids a random replacement draws from: all but the specials."""
  keep = np.ones(corpus.vocab_size, bool)
  keep[list(corpus.special_ids)] = False
  return np.flatnonzero(keep).astype(np.int32)
