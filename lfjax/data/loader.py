"""MLM batches from a TokenCorpus split, as grain transformations: packing,
per-epoch shuffling, global batches, this process's rows, and RoBERTa's
dynamic masking on the host.

The pipeline (`dataset`):

  grain.MapDataset.range(S)        S packed sequences of the split
    .shuffle(seed).repeat()        a new order each epoch (train only)
    .map_with_index(j, k)          global row number j -> sequence k
    .batch(batch_size)             the GLOBAL batch
    .map(build)                    only `rows` of it: packed, then masked

Batch i is a function of (seed, i) alone, whatever the number of processes
or the rows slice: the order is grain's index shuffle, and each row's masks
come from numpy's Generator seeded by (mask seed, stream, j), j the row's
global number (i * batch_size + r). `Sampler` adapts grain's iterator to
lfjax.loop's protocol; its state {"index": i} is grain's {"next_index": i},
so a restored run sees exactly the batches an uninterrupted one would.

The corpus's split arrays are anything with len() and [start:stop] slicing
(numpy arrays, memory maps, lfjax.data.shards.ShardedArray); slices are read
from grain's prefetch threads.
"""

import dataclasses
import functools

import numpy as np

from lfjax import extras

# Mask streams: train and evaluation rows never share a generator, even when
# config.seed == eval.mask_seed.
TRAIN_STREAM, EVAL_STREAM = 0, 1


@dataclasses.dataclass(frozen=True)
class Masking:
  """RoBERTa's dynamic masking (config.mask): prob of a sequence's real,
  non-special tokens are predicted; of those mask_frac become <mask>,
  random_frac a random non-special token, the rest stay."""
  prob: float = 0.15
  mask_frac: float = 0.8
  random_frac: float = 0.1


def num_sequences(corpus, split, seq_len):
  """Packed sequences of seq_len the split's token stream fills (the last
  one padded). Raises ValueError for seq_len < 3."""
  _check_seq_len(seq_len)
  return -(-len(corpus.splits[split][0]) // (seq_len - 2))


def _check_seq_len(seq_len):
  if seq_len < 3:
    raise ValueError(f"seq_len: expected at least 3 (<s>, a token, </s>), "
                     f"got {seq_len}")


def packed(corpus, split, seq_len, indices):
  """Sequences `indices` of the split packed to seq_len: <s>, the next
  seq_len - 2 tokens of the stream (sequence k holds tokens
  [k (seq_len - 2), (k + 1) (seq_len - 2)); documents run on, separated by
  </s>), </s>; the last sequence padded.

  Returns {"input_ids", "attention_mask", "chars"}, each int32
  [len(indices), seq_len]: chars[b, n] the characters token n owns
  (lfjax.data.text's accounting; 0 for <s>, </s> and padding).
  Raises ValueError for seq_len < 3.
  """
  _check_seq_len(seq_len)
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


def max_masked(seq_len, prob):
  """K: the static cap on one sequence's masked tokens (mask_batch's
  count floor(prob n + u), n <= seq_len, is at most this)."""
  return min(seq_len, int(np.ceil(prob * seq_len)) + 1)


def replacement_ids(corpus):
  """int32 [V - specials]: the ids a random replacement draws from (all
  but corpus.special_ids)."""
  keep = np.ones(corpus.vocab_size, bool)
  keep[list(corpus.special_ids)] = False
  return np.flatnonzero(keep).astype(np.int32)


def mask_batch(ids_BxN, attention_mask_BxN, rows_B, *, seed, stream,
               special_ids, mask_id, replace_ids, masking=Masking()):
  """RoBERTa's dynamic masking (fairseq's count per sequence), in numpy.

  Row b draws from np.random.default_rng([seed, stream, rows_B[b]]) (its
  global row number), so its masks do not depend on the batch it is built
  in. Of its n maskable tokens (attention_mask > 0 and not in
  special_ids) it predicts floor(masking.prob * n + u), u uniform in
  [0, 1), chosen uniformly; a chosen token becomes mask_id (mask_frac),
  a token drawn uniformly from replace_ids (random_frac; it may be the
  token itself), or stays (the rest).

  ids_BxN, attention_mask_BxN: int [B, N]; rows_B: int [B] (>= 0).
  Returns {"inputs": int32 [B, N] (ids with the replacements),
  "positions": int32 [B, K] (the chosen positions, ascending, then 0s),
  "valid": bool [B, K] (the first count of each row)},
  K = max_masked(N, masking.prob).
  """
  ids_BxN = np.asarray(ids_BxN)
  b, n = ids_BxN.shape
  k = max_masked(n, masking.prob)
  maskable_BxN = ((np.asarray(attention_mask_BxN) > 0)
                  & ~np.isin(ids_BxN, np.asarray(special_ids)))
  replace_ids = np.asarray(replace_ids, np.int32)
  inputs_BxN = ids_BxN.astype(np.int32, copy=True)
  positions_BxK = np.zeros((b, k), np.int32)
  valid_BxK = np.zeros((b, k), bool)
  for r in range(b):
    rng = np.random.default_rng([seed, stream, int(rows_B[r])])
    candidates = np.flatnonzero(maskable_BxN[r])
    count = int(np.floor(masking.prob * len(candidates) + rng.random()))
    chosen = np.sort(candidates[rng.choice(len(candidates), count,
                                           replace=False)])
    how = rng.random(count)
    random_ids = replace_ids[rng.integers(0, len(replace_ids), count)]
    inputs_BxN[r, chosen] = np.where(
        how < masking.mask_frac, mask_id,
        np.where(how < masking.mask_frac + masking.random_frac, random_ids,
                 ids_BxN[r, chosen]))
    positions_BxK[r, :count] = chosen
    valid_BxK[r, :count] = True
  return {"inputs": inputs_BxN, "positions": positions_BxK,
          "valid": valid_BxK}


def _build(rows_and_seqs, *, corpus, split, seq_len, rows, size,
           pad_past_end, mask_seed, stream, masking, replace_ids):
  """One batch's `rows`, packed and masked (a grain map)."""
  j_B, k_B = (np.asarray(x)[rows] for x in rows_and_seqs)
  batch = packed(corpus, split, seq_len, k_B)
  if pad_past_end:  # evaluation's last batch: rows past the split's end
    batch["attention_mask"] *= (j_B < size)[:, None].astype(np.int32)
  batch.update(mask_batch(
      batch["input_ids"], batch["attention_mask"], j_B, seed=mask_seed,
      stream=stream, special_ids=corpus.special_ids, mask_id=corpus.mask_id,
      replace_ids=replace_ids, masking=masking))
  return batch


def dataset(corpus, split, *, seq_len, batch_size, mask_seed, stream,
            masking=Masking(), shuffle_seed=None, rows=slice(None),
            num_batches=None):
  """A grain MapDataset whose element i is batch i (module doc).

  shuffle_seed: None = the sequences in order, run on for ever (epoch e's
    row j is sequence j mod S), and rows past the first epoch are padding
    (attention_mask 0, hence never masked): evaluation's layout; an int =
    shuffled anew each epoch (grain's repeat reseeds its shuffle).
  rows: the slice of the global batch to build (this process's rows,
    lfjax.parallel.local_rows); the other rows are never read or masked.
  num_batches: None = endless; else the first num_batches batches.

  Each element: {"input_ids" (the targets), "attention_mask", "chars",
  "inputs" (masked)}: int32 [R, seq_len]; "positions": int32 [R, K];
  "valid": bool [R, K]; R the rows of `rows`, K = max_masked(seq_len,
  masking.prob).
  Raises extras.MissingPackage without grain; ValueError for seq_len < 3
  or an empty split.
  """
  grain = extras.require("grain", "MLM data: the grain loader")
  size = num_sequences(corpus, split, seq_len)
  if size == 0:
    raise ValueError(f"data: the {split} split has no tokens")
  ds = grain.MapDataset.range(size)
  if shuffle_seed is not None:
    ds = ds.shuffle(seed=int(shuffle_seed))
  ds = ds.repeat().map_with_index(lambda j, k: (j, k)).batch(batch_size)
  if num_batches is not None:
    ds = ds[:num_batches]
  return ds.map(functools.partial(
      _build, corpus=corpus, split=split, seq_len=seq_len, rows=rows,
      size=size, pad_past_end=shuffle_seed is None, mask_seed=mask_seed,
      stream=stream, masking=masking, replace_ids=replacement_ids(corpus)))


def read_options(num_threads, prefetch):
  """grain.ReadOptions: num_threads threads build batches ahead into a
  buffer of `prefetch` (0 and 0: built in the caller's thread). Batch i
  is the same either way."""
  grain = extras.require("grain", "MLM data: the grain loader")
  return grain.ReadOptions(num_threads=num_threads,
                           prefetch_buffer_size=prefetch)


class Sampler:
  """lfjax.loop's sampler over a MapDataset of batches (`dataset`): an
  iterator with .index (the next batch's number), .state() ({"index":
  i}) and .restore(state), which moves grain's iterator to batch i."""

  def __init__(self, ds, *, num_threads=1, prefetch=2):
    self._it = iter(ds.to_iter_dataset(read_options(num_threads, prefetch)))

  @property
  def index(self):
    return self._it.get_state()["next_index"]

  def state(self):
    return {"index": self.index}

  def restore(self, state):
    self._it.set_state({"next_index": int(state["index"])})

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._it)

  def close(self):
    """Stops the prefetch threads."""
    self._it.close()


def train_sampler(corpus, *, seq_len, batch_size, seed, masking=Masking(),
                  rows=slice(None), num_threads=1, prefetch=2):
  """The train split's endless batches, shuffled and masked from `seed`
  (the order from grain's shuffle, masks from (seed, TRAIN_STREAM, j))."""
  return Sampler(dataset(corpus, "train", seq_len=seq_len,
                         batch_size=batch_size, mask_seed=seed,
                         stream=TRAIN_STREAM, masking=masking,
                         shuffle_seed=seed, rows=rows),
                 num_threads=num_threads, prefetch=prefetch)


def eval_dataset(corpus, split, *, seq_len, batch_size, mask_seed,
                 masking=Masking(), max_batches=0, rows=slice(None)):
  """The split's sequences in order, each once, with fixed masks (from
  (mask_seed, EVAL_STREAM, j): sequence j's masks do not depend on
  batch_size), in ceil(S / batch_size) batches (at most max_batches; 0 =
  all); the last batch's rows past the end are padding."""
  n = -(-num_sequences(corpus, split, seq_len) // batch_size)
  return dataset(corpus, split, seq_len=seq_len, batch_size=batch_size,
                 mask_seed=mask_seed, stream=EVAL_STREAM, masking=masking,
                 rows=rows, num_batches=min(n, max_batches) if max_batches
                 else n)
