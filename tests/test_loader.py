"""lfjax.data.loader: MLM batches from a token stream with grain (packing,
per-epoch shuffling, host-side dynamic masking, row slices, resume).

Corpora are made here from numpy arrays; expected packings are slices of
the stream written out in the tests.
"""

import math

import numpy as np
import pytest

from tests import optional

optional.need("grain")

from lfjax.data import loader  # noqa: E402
from lfjax.data import text  # noqa: E402

BOS, PAD, EOS, MASK = 0, 1, 2, 4
SPECIALS = (0, 1, 2, 4)
VOCAB = 1000


def corpus_of(train, valid=None, chars=None):
  """A TokenCorpus over given streams (chars: 1 + token mod 3 unless
  given)."""
  def split(tokens):
    tokens = np.asarray(tokens, np.int32)
    owned = (1 + tokens % 3).astype(np.int32) if chars is None else chars
    return tokens, owned
  valid = train[:100] if valid is None else valid
  return text.TokenCorpus({"train": split(train), "valid": split(valid)},
                          VOCAB, BOS, EOS, PAD, MASK, SPECIALS)


def expected_row(stream, owned, k, seq_len):
  """Sequence k, packed by hand: <s>, stream[k b:(k + 1) b], </s>, pads."""
  b = seq_len - 2
  piece = list(stream[k * b:(k + 1) * b])
  ids = [BOS] + piece + [EOS] + [PAD] * (b - len(piece))
  chars = [0] + list(owned[k * b:(k + 1) * b]) + [0] * (b - len(piece) + 1)
  return np.array(ids), np.array(chars)


def test_packing_is_slices_of_the_stream_and_eval_pads_past_the_end():
  rng = np.random.default_rng(0)
  stream = rng.integers(5, VOCAB, 1000)
  c = corpus_of(stream, valid=stream)
  owned = c.splits["valid"][1]
  seq_len, bs = 64, 6
  n = math.ceil(1000 / 62)  # 17 sequences, the last one 8 tokens long
  assert loader.num_sequences(c, "valid", seq_len) == n
  ds = loader.eval_dataset(c, "valid", seq_len=seq_len, batch_size=bs,
                           mask_seed=0)
  assert len(ds) == math.ceil(n / bs) == 3
  batches = list(ds)
  ids = np.concatenate([b["input_ids"] for b in batches])
  am = np.concatenate([b["attention_mask"] for b in batches])
  chars = np.concatenate([b["chars"] for b in batches])
  for k in range(n):
    want_ids, want_chars = expected_row(stream, owned, k, seq_len)
    np.testing.assert_array_equal(ids[k], want_ids)
    np.testing.assert_array_equal(chars[k], want_chars)
    np.testing.assert_array_equal(am[k], want_ids != PAD)
  assert am[n - 1].sum() == 8 + 2
  # Rows past the split's end: padding, nothing masked in them.
  assert not am[n:].any()
  valid = np.concatenate([b["valid"] for b in batches])
  assert not valid[n:].any() and valid[:n].any(1).all()
  assert len(loader.eval_dataset(c, "valid", seq_len=seq_len, batch_size=bs,
                                 mask_seed=0, max_batches=2)) == 2
  with pytest.raises(ValueError, match="seq_len: expected at least 3"):
    loader.eval_dataset(c, "valid", seq_len=2, batch_size=bs, mask_seed=0)


def test_masking_statistics():
  rng = np.random.default_rng(0)
  ids = rng.integers(5, VOCAB, (256, 512)).astype(np.int32)
  ids[:, 0], ids[:, 100] = BOS, EOS
  ids[:, -50:] = PAD
  ids[:128, 300:] = PAD  # rows of two lengths
  am = (ids != PAD).astype(np.int32)
  am[5] = 0  # a row of padding only
  replace = np.setdiff1d(np.arange(VOCAB), SPECIALS)
  m = loader.mask_batch(ids, am, np.arange(256), seed=1, stream=0,
                        special_ids=SPECIALS, mask_id=MASK,
                        replace_ids=replace)
  inputs, pos, valid = m["inputs"], m["positions"], m["valid"]
  assert pos.shape == valid.shape == (256, 78)  # ceil(0.15 * 512) + 1
  assert pos.dtype == np.int32 and valid.dtype == bool
  assert inputs.dtype == np.int32 and inputs.shape == ids.shape
  sel = np.zeros(ids.shape, bool)
  for row in range(256):
    # positions: the chosen tokens, ascending, then zeros.
    chosen = pos[row][valid[row]]
    assert (np.diff(chosen) > 0).all() and (pos[row][~valid[row]] == 0).all()
    assert valid[row].tolist() == sorted(valid[row].tolist(), reverse=True)
    sel[row, chosen] = True
  ok = (am > 0) & ~np.isin(ids, SPECIALS)
  assert not (sel & ~ok).any()  # specials and padding never chosen
  assert not sel[5].any()
  # fairseq's count: floor(0.15 n + u) of each row's n maskable tokens.
  n_row = ok.sum(1)
  count = sel.sum(1)
  assert ((count == np.floor(0.15 * n_row))
          | (count == np.floor(0.15 * n_row) + 1)).all()
  # E[floor(x + u)] = x: the counts' total is 0.15 of the maskable tokens.
  x = 0.15 * n_row
  frac = x - np.floor(x)
  assert abs(count.sum() - x.sum()) < 4 * math.sqrt((frac * (1 - frac)).sum())
  # Chosen uniformly: early and late maskable tokens equally often.
  early, late = sel[128:, 1:100].mean(), sel[128:, 300:450].mean()
  assert abs(early - late) < 0.015
  # Only chosen tokens change.
  assert (inputs[~sel] == ids[~sel]).all()
  total = sel.sum()
  masked = (inputs == MASK) & sel
  kept = (inputs == ids) & sel
  randomized = sel & ~masked & ~kept
  same = 1 / len(replace)  # a random replacement may draw the token itself
  for part, p in ((masked, 0.8), (randomized, 0.1 * (1 - same)),
                  (kept, 0.1 + 0.1 * same)):
    assert abs(part.sum() / total - p) < 4 * math.sqrt(p * (1 - p) / total)
  assert not np.isin(inputs[randomized], SPECIALS).any()
  # Other fractions: all <mask>; none replaced.
  for mask_frac, random_frac in ((1.0, 0.0), (0.0, 0.0)):
    m = loader.mask_batch(ids[:8], am[:8], np.arange(8), seed=1, stream=0,
                          special_ids=SPECIALS, mask_id=MASK,
                          replace_ids=replace, masking=loader.Masking(
                              0.15, mask_frac, random_frac))
    chosen = np.zeros((8, 512), bool)
    for row in range(8):
      chosen[row, m["positions"][row][m["valid"][row]]] = True
    want = np.where(chosen, MASK, ids[:8]) if mask_frac else ids[:8]
    np.testing.assert_array_equal(m["inputs"], want)


def _rows_of(ds, batches):
  return [ds[i] for i in range(batches)]


def test_a_rows_masks_do_not_depend_on_the_rows_slice():
  """Each process builds only its rows; the whole batch built at once
  and as two row slices are the same arrays, masks included."""
  stream = np.random.default_rng(1).integers(5, VOCAB, 3000)
  c = corpus_of(stream)
  kw = dict(seq_len=32, batch_size=8, mask_seed=7, stream=0, shuffle_seed=3)
  whole = loader.dataset(c, "train", **kw)
  parts = [loader.dataset(c, "train", rows=slice(a, b), **kw)
           for a, b in ((0, 3), (3, 8))]
  for i in range(6):
    want = whole[i]
    got = [p[i] for p in parts]
    assert got[0]["input_ids"].shape == (3, 32)
    for key in want:
      np.testing.assert_array_equal(
          np.concatenate([g[key] for g in got]), want[key], key)
    assert want["valid"].any()
  # Another mask seed: the same sequences, other masks.
  other = loader.dataset(c, "train", **dict(kw, mask_seed=8))[0]
  np.testing.assert_array_equal(other["input_ids"], whole[0]["input_ids"])
  assert not np.array_equal(other["inputs"], whole[0]["inputs"])
  # Evaluation: sequence j's masks whatever the batch size.
  evals = [np.concatenate([b["inputs"] for b in loader.eval_dataset(
      c, "train", seq_len=32, batch_size=bs, mask_seed=0)])
      for bs in (4, 10)]
  n = loader.num_sequences(c, "train", 32)
  np.testing.assert_array_equal(evals[0][:n], evals[1][:n])


def test_each_epoch_is_a_new_permutation_of_all_sequences():
  seq_len, n = 18, 10  # 16 tokens per sequence; token t of k is 5 + 16 k + t
  c = corpus_of(5 + np.arange(16 * n))
  s = loader.train_sampler(c, seq_len=seq_len, batch_size=4, seed=11)
  ids = np.concatenate([next(s)["input_ids"] for _ in range(10)])  # 4 epochs
  seqs = (ids[:, 1] - 5) // 16
  for k, row in zip(seqs, ids):  # rows are whole sequences
    np.testing.assert_array_equal(row[1:-1], 5 + 16 * k + np.arange(16))
  epochs = seqs.reshape(4, n)
  for e in epochs:
    assert sorted(e) == list(range(n))
  assert len({tuple(e) for e in epochs}) == 4
  assert list(epochs[0]) != list(range(n))
  s.close()
  other = loader.train_sampler(c, seq_len=seq_len, batch_size=4, seed=12)
  first = np.concatenate([next(other)["input_ids"] for _ in range(3)])[:n]
  assert not np.array_equal((first[:, 1] - 5) // 16, epochs[0])


@pytest.mark.parametrize("threads,prefetch", [(0, 0), (2, 3)])
def test_resume_gives_batch_i_bit_for_bit(threads, prefetch):
  stream = np.random.default_rng(2).integers(5, VOCAB, 2000)
  c = corpus_of(stream)

  def make():
    return loader.train_sampler(c, seq_len=40, batch_size=5, seed=4,
                                num_threads=threads, prefetch=prefetch)
  straight = make()
  assert straight.index == 0 and straight.state() == {"index": 0}
  want = [next(straight) for _ in range(12)]
  first = make()
  for _ in range(7):
    next(first)
  state = first.state()
  assert state == {"index": 7} and first.index == 7
  resumed = make()
  resumed.restore(state)
  assert resumed.index == 7
  for i in (7, 8):
    got = next(resumed)
    for key in want[i]:
      np.testing.assert_array_equal(got[key], want[i][key], key)
  # Restoring a running sampler moves it back, too.
  first.restore({"index": 2})
  np.testing.assert_array_equal(next(first)["inputs"], want[2]["inputs"])
  for s in (straight, first, resumed):
    s.close()
  # Threads change nothing: the synchronous build of batch 11.
  np.testing.assert_array_equal(
      loader.dataset(c, "train", seq_len=40, batch_size=5, mask_seed=4,
                     stream=loader.TRAIN_STREAM, shuffle_seed=4)[11]["inputs"],
      want[11]["inputs"])
