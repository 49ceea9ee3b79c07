"""Fine-tuning data: reading the tasks' files (UTF-8 text, JSON lines with
line numbers), field checks whose errors name the file, line and field,
and the example sampler (batches of rows of the featurized arrays,
exactly resumable).
"""

import io
import json
import pathlib

from lfjax.data import sampler



def read_text(path, what="data file"):
  """The UTF-8 text of a file. Raises FileNotFoundError, and ValueError
  naming the file, the line and the byte offset of invalid UTF-8."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what}: no file {str(path)!r}")
  raw = path.read_bytes()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{path}:{line}: not UTF-8 text (byte "
                     f"{raw[e.start:e.start + 1]!r} at byte offset {e.start}: "
                     f"{e.reason}); save the file as UTF-8") from None


def read_jsonl(path, what="data file"):
  """[(line number, object)] of a JSON-lines file (blank lines skipped).
  Raises FileNotFoundError, and ValueError naming the file and line of
  invalid UTF-8, of a line that is not a JSON object, or a file without
  any."""
  out = []
  path = pathlib.Path(path)
  text = read_text(path, what)
  # Universal newlines, as open() reads text.
  for n, line in enumerate(io.StringIO(text, newline=None), 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except ValueError as e:
      raise ValueError(f"{path}:{n}: expected a JSON object per line "
                       f"({e})") from None
    if not isinstance(obj, dict):
      raise ValueError(f"{path}:{n}: expected a JSON object per line, got "
                       f"{type(obj).__name__}")
    out.append((n, obj))
  if not out:
    raise ValueError(f"{path}: no examples (expected one JSON object per "
                     "line)")
  return out


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
    raise ValueError(f"{where}: expected {kind_name(kind)}, got "
                     f"{type(v).__name__} {short(v)}")
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


def round_up(n, m=8):
  return -(-n // m) * m


class ExampleSampler(sampler.EpochSampler):
  """Batches of rows of `arrays` (dict of arrays with the same first
  axis), in a new random order each epoch; batches run on across epochs.
  Batch i depends only on (seed, i): the state {"index": i} replays exactly
  what an uninterrupted run sees."""

  def __init__(self, arrays, batch_size, seed):
    self.arrays = arrays
    super().__init__(len(next(iter(arrays.values()))), batch_size, seed)

  def _batch(self):
    picks = self.picks()
    return {k: v[picks] for k, v in self.arrays.items()}
