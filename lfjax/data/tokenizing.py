"""Documents to token and owned-character streams (lfjax.data.text's
accounting), importing neither JAX nor transformers: the token store's
worker processes import only this, numpy and tokenizers (~50 MB each
instead of ~400 MB).

The accounting (text's module doc): each token owns the characters from
the end of the previous token's offset span to the end of its own, the last
token also any trailing text; a document's counts sum to its length; the
separator after each document owns none.
"""

import collections
import concurrent.futures
import itertools
import multiprocessing
import os

import numpy as np

_BATCH_CHARS = 1 << 18  # text per encode_batch call: bounds its memory


def account(texts, ids_per_doc, offsets_per_doc, separator_id):
  """(tokens int32 [T], chars int32 [T], lengths int64 [D]) from each
  document's token ids and (start, end) character offsets: its tokens then
  separator_id; lengths the tokens of each, separator included."""
  tokens, owned, lengths = [], [], []
  for text, ids, offsets in zip(texts, ids_per_doc, offsets_per_doc):
    ends = np.maximum.accumulate(
        np.asarray([e for _, e in offsets] or [0], np.int64))
    counts = np.diff(np.concatenate([[0], ends]))[:len(ids)]
    if len(ids):
      counts[-1] += len(text) - ends[-1]
    tokens += [np.asarray(ids, np.int32), np.asarray([separator_id],
                                                     np.int32)]
    owned += [counts.astype(np.int32), np.zeros(1, np.int32)]
    lengths.append(len(ids) + 1)
  if not lengths:
    return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64)
  return (np.concatenate(tokens), np.concatenate(owned),
          np.asarray(lengths, np.int64))


def encode(backend, texts, separator_id):
  """account() of texts tokenized by a tokenizers.Tokenizer (a fast
  tokenizer's backend_tokenizer: what transformers runs), without special
  tokens, in batches of about _BATCH_CHARS characters."""
  parts, batch, size = [], [], 0
  for i, t in enumerate(texts):
    batch.append(t)
    size += len(t)
    if size >= _BATCH_CHARS or i == len(texts) - 1:
      enc = backend.encode_batch(batch, add_special_tokens=False)
      parts.append(account(batch, [e.ids for e in enc],
                           [e.offsets for e in enc], separator_id))
      batch, size = [], 0
  if not parts:
    return account([], [], [], separator_id)
  return tuple(np.concatenate(p) for p in zip(*parts))


def untruncated(backend):
  """A copy of a tokenizers.Tokenizer that neither truncates nor pads.

  A tokenizer.json may carry a truncation or padding setting
  (sentence-transformers' save truncation at 128 or 512 tokens): encode
  applies it, where transformers' __call__ turns it off unless asked. A
  store built with it would silently hold each document's first tokens
  only."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  plain = tokenizers.Tokenizer.from_str(backend.to_str())
  plain.no_truncation()
  plain.no_padding()
  return plain


_WORKER = {}


def init_worker(tokenizer_json, separator_id):
  """A pool worker's initializer: the tokenizer (its JSON), once."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool is the parallelism
  _WORKER["backend"] = tokenizers.Tokenizer.from_str(tokenizer_json)
  _WORKER["sep"] = separator_id


def tokenize_chunk(texts):
  """encode() in a worker that init_worker set up."""
  return encode(_WORKER["backend"], texts, _WORKER["sep"])


class Pool:
  """Chunks tokenized in order: in this process (workers=1, or a corpus of
  one chunk: no pool to start) or in a spawned pool with at most
  2 * workers chunks in flight, so memory stays constant."""

  def __init__(self, workers, backend, separator_id):
    """backend: a tokenizers.Tokenizer (a fast tokenizer's
    backend_tokenizer), used without its truncation and padding
    (untruncated), sent to the workers as its JSON."""
    self.workers, self.backend = workers, untruncated(backend)
    self.args = (self.backend.to_str(), separator_id)
    self.pool = None

  def map(self, chunks):
    """Yields (chunk, (tokens, chars, lengths)) in order; chunks: an
    iterable of (meta, texts)."""
    chunks = iter(chunks)
    head = list(itertools.islice(chunks, 1 if self.workers == 1 else 2))
    if len(head) < 2:
      for chunk in itertools.chain(head, chunks):
        yield chunk, encode(self.backend, chunk[1], self.args[1])
      return
    self.pool = concurrent.futures.ProcessPoolExecutor(
        self.workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker, initargs=self.args)
    pending = collections.deque()
    for chunk in itertools.chain(head, chunks):
      pending.append((chunk, self.pool.submit(tokenize_chunk, chunk[1])))
      if len(pending) >= 2 * self.workers:
        done, fut = pending.popleft()
        yield done, fut.result()
    while pending:
      done, fut = pending.popleft()
      yield done, fut.result()

  def close(self):
    if self.pool is not None:
      self.pool.shutdown(cancel_futures=True)
