"""Fine-tuning data: reading the tasks' files (UTF-8 text; records with
line/row numbers from JSON lines, .jsonl.gz, parquet or `datasets`
folders), field checks whose errors name the file, line and field;
featurize's arrays (per-token and per-example arrays, multiple choice's
per-candidate rows) and the batches made of them: the example sampler and
the length-bucketed one (both exactly resumable), and how a batch is laid
out on the mesh.
"""

import json
import pathlib

import numpy as np

from lfjax import loop
from lfjax import parallel
from lfjax.data import sampler
from lfjax.data import sources



def read_text(path, what="data file"):
  """The UTF-8 text of a file (lfjax.data.sources.read_text: a .gz is
  decompressed). Raises FileNotFoundError, and ValueError naming the file,
  the line and the byte offset of invalid UTF-8."""
  return sources.read_text(path, what)


def read_records(path, what="data file"):
  """[(line, object)] of a fine-tuning file: JSON lines (.jsonl or any
  other name; blank lines skipped), .jsonl.gz, .parquet or a `datasets`
  folder saved with save_to_disk (lfjax.data.sources.read_records: line is
  the 1-based row of a table). Raises FileNotFoundError, and ValueError
  naming the file and line of invalid UTF-8, of a line that is not a JSON
  object, or a file without any."""
  return sources.read_records(path, what)


def is_records(path):
  """Whether `path` is read as records (one example per line / row): a
  .jsonl / .jsonl.gz / .parquet file or a folder (a datasets folder); QA
  and multiple choice read any other file as their JSON document."""
  path = pathlib.Path(path)
  name = path.name.lower()
  return path.is_dir() or name.endswith((".jsonl", ".jsonl.gz", ".parquet"))


def unique_id(seen, qid, path, line, loc):
  """Records id qid of the entry at file path, line, JSON path loc in seen
  {id: (line, loc)}. Raises ValueError naming the file, both entries and
  the id when qid was seen before: predictions are keyed by id, so a
  duplicate would lose one."""
  if qid in seen:
    raise ValueError(f"{path}:{line}: {loc}: field 'id': {qid!r} is also the "
                     f"id of {seen[qid][1]} (line {seen[qid][0]}); ids must "
                     "be unique (predictions are keyed by id)")
  seen[qid] = (line, loc)


def field(path, line, obj, name, kind, nonempty=True):
  """obj[name], checked to be of type `kind` (and non-empty text).
  Raises ValueError naming the file, the line and the field."""
  where = f"{path}:{line}: field {name!r}"
  if name not in obj:
    raise ValueError(f"{where}: missing (the line has {sorted(obj)})")
  v = obj[name]
  if not isinstance(v, kind) or isinstance(v, bool):
    got = "null" if v is None else f"{type(v).__name__} {short(v)}"
    raise ValueError(f"{where}: expected {kind_name(kind)}, got {got}")
  if nonempty and isinstance(v, str) and not v.strip():
    raise ValueError(f"{where}: empty (expected non-empty text)")
  return v


def kind_name(kind):
  kinds = kind if isinstance(kind, tuple) else (kind,)
  names = {str: "a string", int: "an integer", list: "a list",
           dict: "an object"}
  return " or ".join(names.get(k, k.__name__) for k in kinds)


def short(v):
  text = json.dumps(v, ensure_ascii=False)
  return text if len(text) < 60 else text[:57] + "..."


# Features and batches ------------------------------------------------------

# featurize's per-token arrays: their last axis is the sequence (split over
# the mesh's seq axis, cut to a length bucket's length); every other array
# is per example (labels, answers, choice masks).
TOKEN_KEYS = ("input_ids", "attention_mask", "global_mask")
# Optional [examples, C] int32: row numbers into the token arrays, one per
# candidate (multiple choice), so the set is stored as [candidates, L]
# rows and only a batch is assembled as [batch, C, L].
ROWS = "rows"


def round_up(n, m=8):
  return -(-n // m) * m


def count(arrays):
  """Examples in featurize's arrays (rows of a batch)."""
  return len(arrays[ROWS] if ROWS in arrays else arrays["input_ids"])


def lengths(arrays):
  """[examples] int: tokens per example (attention_mask's non-zeros; with
  ROWS, those of its longest row)."""
  per_row = (np.asarray(arrays["attention_mask"]) != 0).sum(-1)
  return per_row[arrays[ROWS]].max(-1) if ROWS in arrays else per_row


def gather(arrays, picks, length=None):
  """The batch of examples `picks` (ints): every array's rows, the token
  arrays assembled through ROWS ([b, C, L]) when there is one and cut to
  `length` tokens (None: all). numpy arrays; ROWS itself is not in it."""
  picks = np.asarray(picks)
  rows = arrays[ROWS][picks] if ROWS in arrays else picks
  out = {}
  for k, v in arrays.items():
    if k in TOKEN_KEYS:
      out[k] = v[rows] if length is None else v[rows][..., :length]
    elif k != ROWS:
      out[k] = v[picks]
  return out


def pad_tokens(arrays, multiple, pad_id):
  """arrays with the token arrays padded at their end to a multiple of
  `multiple` tokens (input_ids with pad_id, masks with 0): a sequence the
  mesh's seq devices split evenly. Padding is never attended (and pad
  tokens take no position), so outputs on real tokens are unchanged."""
  n = arrays["input_ids"].shape[-1]
  extra = round_up(n, multiple) - n
  if not extra:
    return arrays
  out = dict(arrays)
  for k in TOKEN_KEYS:
    if k in arrays:
      width = [(0, 0)] * (arrays[k].ndim - 1) + [(0, extra)]
      out[k] = np.pad(arrays[k], width,
                      constant_values=pad_id if k == "input_ids" else 0)
  return out


class ExampleSampler(sampler.EpochSampler):
  """Batches of examples of `arrays` (featurize's), in a new random order
  each epoch; batches run on across epochs. Batch i depends only on
  (seed, i): the state {"index": i} replays exactly what an uninterrupted
  run sees. rows: the slice of each batch to build (one process's,
  lfjax.parallel.local_rows)."""

  def __init__(self, arrays, batch_size, seed, rows=slice(None)):
    self.arrays = arrays
    super().__init__(count(arrays), batch_size, seed, rows)

  def _batch(self):
    return gather(self.arrays, self.picks())


def length_buckets(lengths, buckets, batch_size, multiple, most):
  """(bucket of each example [n] int, each bucket's length (tokens)).

  Examples sorted by length are cut into `buckets` groups of near-equal
  size (fewer when there are fewer than batch_size examples per group);
  a group's length is its longest example rounded up to `multiple`, at
  most `most`; groups of equal length merge. Bucket 0 is the shortest."""
  lengths = np.asarray(lengths)
  k = max(1, min(buckets, len(lengths) // batch_size))
  order = np.argsort(lengths, kind="stable")
  sizes = []
  for group in np.array_split(order, k):
    size = min(most, round_up(int(lengths[group].max()), multiple))
    if not sizes or sizes[-1] != size:
      sizes.append(size)
  sizes = np.asarray(sizes)
  # The first bucket long enough for each example.
  assign = np.searchsorted(sizes, np.minimum(lengths, most))
  return assign, tuple(int(s) for s in sizes)


class BucketSampler(sampler.IndexedSampler):
  """Batches of examples of one length bucket at a time, cut to that
  bucket's length: a long document pads only the batches of its bucket.

  Each epoch shuffles every bucket (seeded by (seed, epoch)), cuts it into
  batches (its last batch filled up with the bucket's first examples of
  the epoch again) and shuffles the batches of all buckets together. An
  epoch is sum(ceil(bucket size / batch_size)) batches; batches run on
  across epochs. Batch i depends only on (seed, i): the state {"index":
  i} replays exactly what an uninterrupted run sees.

  assign, sizes: length_buckets' (bucket of each example, bucket lengths).
  rows: the slice of each batch to build (lfjax.parallel.local_rows).
  """

  def __init__(self, arrays, batch_size, seed, assign, sizes,
               rows=slice(None)):
    self.arrays, self.batch_size, self.seed = arrays, batch_size, seed
    self.sizes, self.rows = sizes, rows
    self.members = [np.flatnonzero(assign == b) for b in range(len(sizes))]
    self.batches = [-(-len(m) // batch_size) for m in self.members]
    self.epoch_steps = sum(self.batches)
    self.index = 0
    self._plan = (None, None)  # (epoch, [(bucket, picks)]): one per epoch

  def plan(self, epoch):
    """[(bucket, example numbers)] of every batch of the epoch, in order."""
    if self._plan[0] != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      batches = []
      for b, m in enumerate(self.members):
        picks = np.resize(m[rng.permutation(len(m))],
                          self.batches[b] * self.batch_size)
        batches += [(b, p) for p in picks.reshape(self.batches[b], -1)]
      self._plan = (epoch, [batches[i]
                            for i in rng.permutation(len(batches))])
    return self._plan[1]

  def tokens_per_batch(self):
    """Mean tokens (padding included) of a batch over an epoch."""
    return self.batch_size * sum(n * s for n, s in zip(
        self.batches, self.sizes)) / self.epoch_steps

  def _batch(self):
    epoch, j = divmod(self.index, self.epoch_steps)
    b, picks = self.plan(epoch)[j]
    return gather(self.arrays, picks[self.rows], self.sizes[b])


def make_sampler(config, arrays, multiple, rows=slice(None)):
  """The training batches: an ExampleSampler at the stored length
  (data.length_buckets 1), else a BucketSampler over that many length
  buckets (lengths rounded up to `multiple`, at most the stored length).
  rows: this process's slice of each batch."""
  t = config.train
  if config.data.length_buckets == 1:
    return ExampleSampler(arrays, t.batch_size, config.seed, rows)
  assign, sizes = length_buckets(
      lengths(arrays), config.data.length_buckets, t.batch_size, multiple,
      arrays["input_ids"].shape[-1])
  loop.say(f"length buckets: {len(sizes)} of {list(sizes)} tokens, "
           f"{np.bincount(assign, minlength=len(sizes)).tolist()} examples",
           flush=True)
  return BucketSampler(arrays, t.batch_size, config.seed, assign, sizes,
                       rows)


def batch_shardings(mesh, batch):
  """{name: NamedSharding} of a fine-tuning batch on the mesh: every array
  split over data x fsdp along its first axis (examples), the token
  arrays (TOKEN_KEYS) also over seq along their last; None for mesh None
  (one device)."""
  if mesh is None:
    return None
  return {k: parallel.batch_sharding(
      mesh, np.ndim(v), np.ndim(v) - 1 if k in TOKEN_KEYS else None)
          for k, v in batch.items()}
