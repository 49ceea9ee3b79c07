"""Input readers: the documents of MLM sources and the records of
fine-tuning files, streamed (constant memory whatever the file's size).

Kinds of a source string (iter_documents, fingerprint):
  "pystdlib": this Python's standard library sources (lfjax.data.chars);
  a `save_to_disk` datasets folder (state.json / dataset_info.json in it),
    read with `datasets.load_from_disk` (memory-mapped Arrow, no download),
    column `text_field`; a DatasetDict folder (dataset_dict.json) is refused
    naming its splits: give DIR/SPLIT (each split is its own Dataset folder);
  any other folder: every file under it matching `glob`, sorted by path,
    each read by its extension as a file given directly;
  a file: `.jsonl` / `.jsonl.gz` (a JSON object per line, field
    `text_field`), `.parquet` (column `text_field`), anything else one UTF-8
    text document (undecodable bytes replaced).

Document names decide the train/valid split (text.split_of: a CRC of the
name), so they do not depend on where a folder is: a file in a folder is
"{folder name}/{path under it}", a file given directly "{file name}", a
datasets folder "{folder name}" (DIR/SPLIT of a DatasetDict:
"{DIR name}/{SPLIT}"); records add ":{line}" (jsonl, 1-based) or "#{row}"
(tables, 0-based). pystdlib's are "pystdlib/{path}", as before.

pyarrow and datasets (the `hf` extra) are imported only by the readers
that need them.
"""

import gzip
import io
import itertools
import json
import pathlib
import platform
import sys

from lfjax import extras
from lfjax.data import chars as chars_lib

# Parquet / Arrow rows decoded to Python at a time. pyarrow decodes a
# parquet file one row group at a time, so the largest row group (not the
# file) bounds that reader's memory; a datasets folder's Arrow files are
# memory-mapped (page cache, not the process's own memory).
_ROWS_PER_BATCH = 1024


def _as_list(sources):
  return [sources] if isinstance(sources, str) else list(sources)


def _is_dataset(path):
  return (path / "state.json").is_file() or (
      path / "dataset_info.json").is_file()


def _refuse_dataset_dict(path, what):
  """A DatasetDict folder is several datasets: the user must pick one."""
  try:
    splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
  except (OSError, ValueError, KeyError, TypeError):
    splits = sorted(p.name for p in path.iterdir() if p.is_dir())
  raise ValueError(
      f"{what}: {str(path)!r} is a datasets DatasetDict with splits "
      f"{list(splits)}; give one split's folder, e.g. "
      f"{str(path / str(next(iter(splits), 'train')))!r} (DIR/SPLIT)")


def _dataset_name(path):
  if (path.parent / "dataset_dict.json").is_file():
    return f"{path.parent.name}/{path.name}"
  return path.name


def _kind(path):
  """"dataset", "dataset_dict", "folder", "jsonl", "jsonl.gz", "parquet",
  "text" or None (no such file or folder)."""
  if path.is_dir():
    if (path / "dataset_dict.json").is_file():
      return "dataset_dict"
    return "dataset" if _is_dataset(path) else "folder"
  if not path.is_file():
    return None
  name = path.name.lower()
  if name.endswith(".jsonl.gz"):
    return "jsonl.gz"
  for ext in ("jsonl", "parquet"):
    if name.endswith("." + ext):
      return ext
  return "text"


def _folder_files(path, glob):
  files = sorted(f for f in path.rglob(glob) if f.is_file())
  if not files:
    raise FileNotFoundError(f"data.sources: no file matching {glob!r} "
                            f"(data.glob / --glob) under {path}")
  return [(f"{path.name}/{f.relative_to(path).as_posix()}", f) for f in files]


def _missing(src):
  return FileNotFoundError(
      f"data.sources: {src!r} is neither a file nor a folder; give local "
      "text files or folders of documents (one document per file), .jsonl / "
      ".jsonl.gz / .parquet files, datasets folders (save_to_disk) or "
      "'pystdlib'")


def iter_documents(sources, *, glob="*.txt", text_field="text"):
  """Yields (name: str, text: str) of every non-empty document of
  `sources` (a str or a sequence of str; module doc), lazily, in a fixed
  order (sources in the order given, a folder's files sorted by path, a
  file's records in file order), holding one line / record batch at a time.
  Empty and whitespace-only texts are skipped, and so is a record whose
  text is null (JSON null, a null in a parquet or datasets column): an
  empty document.

  Raises (when the iteration reaches the source):
    FileNotFoundError: a source that does not exist, a folder without a
      file matching glob.
    ValueError: a jsonl line that is not a JSON object, or whose text_field
      is missing or neither a string nor null (naming file:line or the row
      and the field); a parquet
      file / datasets folder without the column (naming it and its
      columns); a DatasetDict folder (naming its splits); no non-empty
      document in all the sources.
    extras.MissingPackage: pyarrow / datasets missing for such a source.
  """
  sources = _as_list(sources)
  found = 0
  for src in sources:
    for name, text in _documents(src, glob, text_field):
      if text.strip():
        found += 1
        yield name, text
  if not found:
    raise ValueError(f"data.sources: no non-empty documents in {sources}")


def _source(src):
  """(path, kind) of a source other than pystdlib. Raises for a missing
  one and a DatasetDict folder (naming its splits)."""
  path = pathlib.Path(src).expanduser()
  kind = _kind(path)
  if kind is None:
    raise _missing(src)
  if kind == "dataset_dict":
    _refuse_dataset_dict(path, "data.sources")
  return path, kind


def _documents(src, glob, text_field):
  if src == "pystdlib":
    for rel, f in chars_lib._stdlib_sources():
      yield "pystdlib/" + rel, f.read_bytes().decode("utf-8",
                                                     errors="replace")
    return
  path, kind = _source(src)
  if kind == "dataset":
    yield from _dataset_texts(path, _dataset_name(path), text_field)
  elif kind == "folder":
    for name, f in _folder_files(path, glob):
      yield from _file_texts(f, name, text_field)
  else:
    yield from _file_texts(path, path.name, text_field)


def _file_texts(path, name, text_field):
  kind = _kind(path)
  if kind in ("jsonl", "jsonl.gz"):
    for n, obj in _jsonl_objects(path, "data.sources"):
      yield f"{name}:{n}", _text(path, n, obj, text_field)
  elif kind == "parquet":
    yield from _parquet_texts(path, name, text_field)
  else:
    yield name, path.read_text(encoding="utf-8", errors="replace")


def _text(path, where, obj, field):
  """The text of a record; "" (an empty document, skipped) for a null."""
  if field not in obj:
    raise ValueError(f"{path}:{where}: field {field!r}: missing (the record "
                     f"has {sorted(obj)}); set data.text_field / "
                     "--text_field to the field that holds the text")
  v = obj[field]
  if v is None:
    return ""
  if not isinstance(v, str):
    raise ValueError(f"{path}:{where}: field {field!r}: expected a string "
                     f"(or null: an empty document), got {type(v).__name__}")
  return v


def _jsonl_objects(path, what):
  """(1-based line, dict) of each non-blank line, streamed: lines are split
  at b"\\n" (a "\\r\\n" ending's "\\r" is JSON whitespace) and decoded one
  at a time. Raises ValueError naming file:line of invalid UTF-8 or a line
  that is not a JSON object."""
  opener = gzip.open if path.name.lower().endswith(".gz") else open
  with opener(path, "rb") as f:
    for n, raw in enumerate(_reads(f, path, what), 1):
      if not raw.strip():
        continue
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{n}: not UTF-8 text (byte "
                         f"{raw[e.start:e.start + 1]!r} at column "
                         f"{e.start + 1}); save the file as UTF-8") from None
      yield n, _json_object(path, n, line)


def _json_object(path, n, line):
  """The JSON object on line n of path. Raises ValueError naming both for
  a line that is not JSON or not an object."""
  try:
    obj = json.loads(line)
  except ValueError as e:
    raise ValueError(f"{path}:{n}: expected a JSON object per line "
                     f"({e})") from None
  if not isinstance(obj, dict):
    raise ValueError(f"{path}:{n}: expected a JSON object per line, got "
                     f"{type(obj).__name__}")
  return obj


def _reads(items, path, what):
  """The items of an iterator over a file's contents; an error of the
  reader (a damaged gzip or parquet file) becomes a ValueError naming the
  file. Only the reader's own next() is guarded, not the caller's code."""
  items = iter(items)
  while True:
    try:
      item = next(items)
    except StopIteration:
      return
    except (PermissionError, FileNotFoundError):
      raise
    except Exception as e:  # gzip.BadGzipFile, EOFError, pyarrow's errors
      raise ValueError(f"{what}: {path}: cannot be read ({type(e).__name__}"
                       f": {e})") from None
    yield item


def _pyarrow_parquet(what):
  return extras.require("pyarrow.parquet", f"{what}: reading parquet files")


def _parquet_file(path, what):
  pq = _pyarrow_parquet(what)
  try:
    return pq.ParquetFile(path)
  except Exception as e:  # pyarrow raises ArrowInvalid (a ValueError) etc.
    raise ValueError(f"{what}: {path}: not a parquet file ({e})") from None


def _check_column(path, columns, field, what, kind):
  if field not in columns:
    raise ValueError(f"{what}: {path}: no column {field!r} (the {kind} has "
                     f"columns {list(columns)}); set data.text_field / "
                     "--text_field to the column that holds the text")


def _parquet_texts(path, name, text_field):
  pf = _parquet_file(path, "data.sources")
  _check_column(path, pf.schema_arrow.names, text_field, "data.sources",
                "parquet file")
  row = 0
  for batch in _reads(pf.iter_batches(batch_size=_ROWS_PER_BATCH,
                                      columns=[text_field]),
                     path, "data.sources"):
    for v in batch.column(0).to_pylist():
      yield f"{name}#{row}", _text(path, f"row {row}", {text_field: v},
                                   text_field)
      row += 1


def _load_dataset(path, what):
  """A Dataset from a save_to_disk folder (memory-mapped; never a
  download)."""
  datasets = extras.require("datasets", f"{what}: reading a datasets "
                            "folder")
  try:
    ds = datasets.load_from_disk(str(path))
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(f"{what}: {path}: not a datasets folder saved with "
                     f"save_to_disk ({e})") from None
  if not isinstance(ds, datasets.Dataset):
    _refuse_dataset_dict(path, what)
  return ds


def _dataset_texts(path, name, text_field):
  ds = _load_dataset(path, "data.sources")
  _check_column(path, ds.column_names, text_field, "data.sources",
                "dataset")
  row = 0
  for batch in ds.select_columns([text_field]).iter(
      batch_size=_ROWS_PER_BATCH):
    for v in batch[text_field]:
      yield f"{name}#{row}", _text(path, f"row {row}", {text_field: v},
                                   text_field)
      row += 1


def _stat(source, name, path):
  st = path.stat()
  return {"source": source, "file": name, "size": st.st_size,
          "mtime_ns": st.st_mtime_ns}


def fingerprint(sources, *, glob="*.txt"):
  """[{"source": str (as given), "file": str, "size": int, "mtime_ns":
  int}] of every file the documents of `sources` are read from, in reading
  order, by os.stat alone (no file is opened): what a store built from
  these sources is keyed by. "file" is the name documents carry (a folder's
  file "{folder}/{path}", a file "{name}"); a datasets folder lists every
  file under it ("{folder}/{path}": its Arrow files and metadata).
  "pystdlib" starts with {"source": "pystdlib", "file": "pystdlib",
  "python": this Python's version and implementation, "size": the number
  of files, "mtime_ns": 0}, then its files ("pystdlib/{path}").

  Raises FileNotFoundError / ValueError as iter_documents does for a
  missing source, a folder without a matching file, a DatasetDict folder.
  """
  out = []
  for src in _as_list(sources):
    if src == "pystdlib":
      files = chars_lib._stdlib_sources()
      out.append({"source": src, "file": "pystdlib",
                  "python": f"{platform.python_implementation()} "
                            f"{sys.version}",
                  "size": len(files), "mtime_ns": 0})
      out += [_stat(src, "pystdlib/" + rel, f) for rel, f in files]
      continue
    path, kind = _source(src)
    if kind == "dataset":
      name = _dataset_name(path)
      files = sorted(f for f in path.rglob("*") if f.is_file())
      out += [_stat(src, f"{name}/{f.relative_to(path).as_posix()}", f)
              for f in files]
    elif kind == "folder":
      out += [_stat(src, name, f) for name, f in _folder_files(path, glob)]
    else:
      out.append(_stat(src, path.name, path))
  return out


def read_records(path, what="data file"):
  """[(line: int, obj: dict)] of a fine-tuning file: a directory is a
  `save_to_disk` datasets folder (a Dataset; a DatasetDict folder is
  refused naming its splits: give DIR/SPLIT), `.parquet` a parquet file,
  `.jsonl.gz` gzipped JSON lines, anything else JSON lines (blank lines
  skipped, universal newlines, as before). line: the 1-based line (JSON
  lines) or 1-based row (tables). Tables' nested columns come back as
  Python lists and dicts (a list of structs as a list of dicts, a struct of
  lists as a dict of lists), as json would give them. A datasets folder's
  ClassLabel columns (or lists of ClassLabel) come back as the label names
  (ClassLabel.int2str), -1 (datasets' "no label") as None.

  Raises FileNotFoundError (no such file or folder), ValueError naming the
  file and line of invalid UTF-8, of a line that is not a JSON object, a
  file that is not parquet, a file without any record, a DatasetDict
  folder; extras.MissingPackage: pyarrow / datasets missing for such a
  file.
  """
  path = pathlib.Path(path)
  kind = _kind(path)
  if kind is None:
    raise FileNotFoundError(f"{what}: no file or datasets folder "
                            f"{str(path)!r}")
  if kind == "dataset_dict":
    _refuse_dataset_dict(path, what)
  if kind == "folder":
    raise ValueError(f"{what}: {str(path)!r} is a folder but not a datasets "
                     "folder saved with save_to_disk (no state.json / "
                     "dataset_info.json in it); give a .jsonl, .jsonl.gz or "
                     ".parquet file or such a folder")
  if kind == "dataset":
    ds = _load_dataset(path, what)
    out = list(enumerate(_rows(ds.iter(batch_size=_ROWS_PER_BATCH),
                               _class_labels(ds.features)), 1))
  elif kind == "parquet":
    pf = _parquet_file(path, what)
    out = list(enumerate(itertools.chain.from_iterable(
        b.to_pylist() for b in _reads(
            pf.iter_batches(batch_size=_ROWS_PER_BATCH), path, what)), 1))
  else:
    out = _jsonl_records(path, what)
  if not out:
    raise ValueError(f"{path}: no examples (expected one JSON object per "
                     "line, or a table with a row per example)")
  return out


def _class_labels(features):
  """{column: ClassLabel} of a Dataset's columns that are a ClassLabel or
  a list of them (Sequence / List of ClassLabel: multi-label)."""
  import datasets  # loaded already: the caller has a Dataset
  out = {}
  for name, f in features.items():
    inner = getattr(f, "feature", None)  # List / Sequence / LargeList
    if isinstance(f, datasets.ClassLabel):
      out[name] = f
    elif isinstance(inner, datasets.ClassLabel):
      out[name] = inner
  return out


def _label_name(label, v):
  """A ClassLabel column's int as its name; datasets' -1 (no label) and
  null stay null, which the task reports naming the row and field."""
  if isinstance(v, list):
    return [_label_name(label, x) for x in v]
  return None if v is None or v < 0 else label.int2str(v)


def _rows(batches, class_labels):
  """Rows (dicts) of Dataset.iter's column batches ({column: [values]}),
  ClassLabel columns' ints as their names (what the dataset means by them:
  a classification run records data.labels as "neg", "pos", not "0",
  "1")."""
  for batch in batches:
    names = list(batch)
    for values in zip(*(batch[n] for n in names)):
      row = dict(zip(names, values))
      for name, label in class_labels.items():
        row[name] = _label_name(label, row[name])
      yield row


def read_text(path, what="data file"):
  """The UTF-8 text of a file (of its decompressed bytes for a name ending
  in .gz). Raises FileNotFoundError naming `what` and the file, ValueError
  naming the file, the line and the byte offset of invalid UTF-8 (or a .gz
  that is not gzip)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what}: no file {str(path)!r}")
  gz = path.name.lower().endswith(".gz")
  try:
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
  except (OSError, EOFError) as e:
    raise ValueError(f"{what}: {path}: not a gzip file ({e})") from None
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{path}:{line}: not UTF-8 text (byte "
                     f"{raw[e.start:e.start + 1]!r} at byte offset {e.start}"
                     f"{' of the decompressed text' if gz else ''}: "
                     f"{e.reason}); save the file as UTF-8") from None


def _jsonl_records(path, what):
  out = []
  # Universal newlines, as open() reads text (and as read_jsonl did).
  text = read_text(path, what)
  for n, line in enumerate(io.StringIO(text, newline=None), 1):
    if not line.strip():
      continue
    out.append((n, _json_object(path, n, line)))
  return out
