"""Fine-tuning batches (lfjax/tasks/finetune_data.py): length buckets,
the bucketed sampler's epochs and exact resume, per-candidate rows
assembled into [b, C, L], padding for the mesh's seq devices. Synthetic
arrays: no tokenizer or model."""

import numpy as np

from lfjax.tasks import finetune_data as fd


def arrays_of(lengths, width=64):
  """Token arrays whose row i has lengths[i] real tokens (ids i + 1) and
  a per-example label i."""
  n = len(lengths)
  ids = np.zeros((n, width), np.int32)
  mask = np.zeros_like(ids)
  for i, k in enumerate(lengths):
    ids[i, :k], mask[i, :k] = i + 1, 1
  return {"input_ids": ids, "attention_mask": mask,
          "label": np.arange(n, dtype=np.int32)}


LENGTHS = [5, 60, 12, 33, 7, 41, 20, 9, 63, 18, 27, 3, 50, 15, 11, 38, 22]


def test_buckets_are_quantiles_rounded_and_merged():
  assign, sizes = fd.length_buckets(LENGTHS, 3, 4, 8, 64)
  # Sorted, cut into 6/6/5: longest of each 12, 33, 63 -> 16, 40, 64;
  # each example goes to the first bucket long enough (15 to 16, 38 to 40).
  assert sizes == (16, 40, 64)
  assert np.bincount(assign).tolist() == [7, 6, 4]
  assert all(LENGTHS[i] <= sizes[b] for i, b in enumerate(assign))
  assert all(b == 0 or LENGTHS[i] > sizes[b - 1]
             for i, b in enumerate(assign))
  # Fewer buckets than asked when a bucket would be under a batch; equal
  # rounded lengths merge.
  assert len(fd.length_buckets(LENGTHS, 8, 4, 8, 64)[1]) == 4
  assert fd.length_buckets([3, 4, 5, 6], 2, 1, 8, 64)[1] == (8,)


def test_bucket_batches_cover_epochs_and_resume_exactly():
  arrays = arrays_of(LENGTHS)
  assign, sizes = fd.length_buckets(LENGTHS, 3, 4, 8, 64)
  s = fd.BucketSampler(arrays, 4, 7, assign, sizes)
  assert s.epoch_steps == 2 + 2 + 1  # ceil(7 / 4) + ceil(6 / 4) + 4 / 4
  first = [next(s) for _ in range(2 * s.epoch_steps + 3)]
  for epoch in range(2):
    seen = set()
    for b in first[epoch * s.epoch_steps:(epoch + 1) * s.epoch_steps]:
      width = b["input_ids"].shape[1]
      assert width in sizes
      # One bucket per batch, cut to its length without losing a token.
      assert {int(assign[i]) for i in b["label"]} == {sizes.index(width)}
      assert (b["attention_mask"].sum(1)
              == np.asarray(LENGTHS)[b["label"]]).all()
      seen |= set(b["label"].tolist())
    assert seen == set(range(len(LENGTHS)))
  # Epochs differ; the same seed replays; a restored index continues.
  assert [b["label"].tolist() for b in first[:5]] != [
      b["label"].tolist() for b in first[5:10]]
  again = fd.BucketSampler(arrays, 4, 7, assign, sizes)
  again.restore({"index": 9})
  for want in first[9:]:
    got = next(again)
    assert all((got[k] == want[k]).all() for k in want)
  # One process's rows of each batch.
  half = fd.BucketSampler(arrays, 4, 7, assign, sizes, rows=slice(2, 4))
  assert (next(half)["label"] == first[0]["label"][2:]).all()


def test_rows_assemble_candidates_and_pad_for_the_mesh():
  rows = {"input_ids": np.arange(1, 13, dtype=np.int32).reshape(4, 3),
          "attention_mask": np.ones((4, 3), np.int32),
          fd.ROWS: np.asarray([[0, 1], [2, 3]], np.int32),
          "answer": np.asarray([1, 0], np.int32)}
  rows["attention_mask"][3] = 0  # the padding row
  assert fd.count(rows) == 2
  assert fd.lengths(rows).tolist() == [3, 3]
  b = fd.gather(rows, [1, 0], length=2)
  assert b["input_ids"].tolist() == [[[7, 8], [10, 11]], [[1, 2], [4, 5]]]
  assert b["answer"].tolist() == [0, 1] and fd.ROWS not in b
  padded = fd.pad_tokens(rows, 4, pad_id=99)
  assert padded["input_ids"].shape == (4, 4)
  assert padded["input_ids"][:, 3].tolist() == [99] * 4
  assert padded["attention_mask"][:, 3].tolist() == [0] * 4
  assert fd.pad_tokens(rows, 1, 99) is rows

