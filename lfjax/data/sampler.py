"""Seeded batch samplers whose state is one integer (checkpointable): batch
number i depends only on the seed and i, so restoring {"index": i} replays
exactly what an uninterrupted run sees."""

import numpy as np


class IndexedSampler:
  """The batch counter, its checkpoint state, and iteration; subclasses
  build batch number self.index in _batch()."""

  index = 0

  def state(self):
    return {"index": self.index}

  def restore(self, state):
    self.index = int(state["index"])

  def __iter__(self):
    return self

  def __next__(self):
    batch = self._batch()
    self.index += 1
    return batch


class EpochSampler(IndexedSampler):
  """Items 0 .. count - 1 in a new random order each epoch (permutation
  seeded by (seed, epoch)); batches run on across epoch boundaries.
  rows: a slice of the batch to pick (one process's rows on a multi-host
  mesh, lfjax.parallel.local_rows)."""

  def __init__(self, count, batch_size, seed, rows=slice(None)):
    self.count, self.batch_size, self.seed = count, batch_size, seed
    self.rows = rows
    self.index = 0
    self._perm = (None, None)  # (epoch, permutation): one per epoch

  def picks(self):
    """The item numbers of batch self.index (its rows)."""
    picks = []
    for j in range(self.index * self.batch_size,
                   (self.index + 1) * self.batch_size)[self.rows]:
      epoch, pos = divmod(j, self.count)
      if self._perm[0] != epoch:
        self._perm = (epoch, np.random.default_rng(
            [self.seed, epoch]).permutation(self.count))
      picks.append(self._perm[1][pos])
    return picks


class WindowSampler(IndexedSampler):
  """Batches of `batch_size` random windows of `seq_len` + 1 tokens.

  Batch number i depends only on (seed, stream, i): restoring the state
  {"index": i} replays exactly the batches an uninterrupted run would see.
  `stream` separates phases, which sample with their own shapes.
  rows: a slice of the batch to build (one process's rows on a multi-host
  mesh, lfjax.parallel.local_rows); the others are never read.
  """

  def __init__(self, corpus, split, *, seq_len, batch_size, seed, stream=0,
               rows=slice(None)):
    self.corpus, self.split = corpus, split
    self.seq_len, self.batch_size = int(seq_len), int(batch_size)
    self.seed, self.stream = int(seed), int(stream)
    self.rows = rows
    self.size = len(corpus.splits[split])
    if self.size < self.seq_len + 1:
      raise ValueError(f"seq_len: {corpus.name}/{split} has {self.size} "
                       f"tokens, fewer than seq_len + 1 = {self.seq_len + 1}")
    self.index = 0

  def _batch(self):
    """(inputs [B, L], targets [B, L]) int32, targets shifted by one (B:
    the rows asked for)."""
    rng = np.random.default_rng([self.seed, self.stream, self.index])
    starts = rng.integers(0, self.size - self.seq_len,
                          self.batch_size)[self.rows]
    data = self.corpus.splits[self.split]
    raw = np.stack([data[s:s + self.seq_len + 1] for s in starts])
    ids = self.corpus.lut[raw].astype(np.int32)
    return ids[:, :-1], ids[:, 1:]
