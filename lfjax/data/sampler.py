"""Seeded random-window batches whose state is one integer (checkpointable)."""

import numpy as np


class WindowSampler:
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

  def state(self):
    return {"index": self.index}

  def restore(self, state):
    self.index = int(state["index"])

  def __iter__(self):
    return self

  def __next__(self):
    """(inputs [B, L], targets [B, L]) int32, targets shifted by one (B:
    the rows asked for)."""
    rng = np.random.default_rng([self.seed, self.stream, self.index])
    starts = rng.integers(0, self.size - self.seq_len,
                          self.batch_size)[self.rows]
    self.index += 1
    data = self.corpus.splits[self.split]
    raw = np.stack([data[s:s + self.seq_len + 1] for s in starts])
    ids = self.corpus.lut[raw].astype(np.int32)
    return ids[:, :-1], ids[:, 1:]
