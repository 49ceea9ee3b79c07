"""lfjax.data.sources: every kind of source yields the documents written
(expected values from what the tests wrote, or from
lfjax.data.chars for pystdlib), with the names the split depends
on; errors name the file, line/row and field; reading is lazy; the
fingerprint is stat only; fine-tuning records (nested QA answers included)
come back as written from jsonl, jsonl.gz, parquet and datasets folders.
"""

import builtins
import gzip
import io
import json
import os
import pathlib

import pytest

from tests import optional

pa = optional.need("pyarrow")
datasets = optional.need("datasets")

import pyarrow.parquet as pq  # noqa: E402

from lfjax.data import sources  # noqa: E402
from lfjax.data import chars  # noqa: E402
from lfjax.tasks import finetune_data  # noqa: E402
from lfjax.tasks import multiple_choice  # noqa: E402
from lfjax.tasks import qa  # noqa: E402

TEXTS = ["first doc", "", "second über doc", "   \n", "third\nwith lines"]


def write_jsonl(path, rows, gz=False):
  data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
  if gz:
    path.write_bytes(gzip.compress(data.encode()))
  else:
    path.write_text(data, encoding="utf-8")
  return path


def save_dataset(path, columns):
  datasets.Dataset.from_dict(columns).save_to_disk(str(path))
  return path


def nonempty(named):
  return [(n, t) for n, t in named if t.strip()]


def test_text_files_folders_and_pystdlib_read_as_before(tmp_path):
  folder = tmp_path / "corpus"
  (folder / "sub").mkdir(parents=True)
  (folder / "b.txt").write_text("bee")
  (folder / "sub" / "a.txt").write_text("ay \xff", encoding="utf-8")
  (folder / "sub" / "bad.txt").write_bytes(b"caf\xe9")  # not UTF-8
  (folder / "empty.txt").write_text("  \n")
  (folder / "skip.md").write_text("not matched by the glob")
  single = tmp_path / "one.text"
  single.write_text("a file given directly")
  srcs = [str(folder), str(single), "pystdlib"]
  got = list(sources.iter_documents(srcs))
  assert got[:4] == [("corpus/b.txt", "bee"), ("corpus/sub/a.txt", "ay \xff"),
                     ("corpus/sub/bad.txt", "caf\ufffd"),
                     ("one.text", "a file given directly")]
  # pystdlib: this Python's sources as lfjax.data.chars lists them.
  want = [("pystdlib/" + rel, raw.decode("utf-8", errors="replace"))
          for rel, raw in chars.pystdlib_files()]
  assert got[4:] == [(n, t) for n, t in want if t.strip()]


def test_jsonl_and_gz_stream_records_named_by_line(tmp_path):
  rows = [{"text": t, "id": i} for i, t in enumerate(TEXTS)]
  plain = write_jsonl(tmp_path / "a.jsonl", rows)
  with open(plain, "a") as f:  # a blank line, then a CRLF line
    f.write("\n")
  with open(plain, "ab") as f:
    f.write(b'{"text": "crlf"}\r\n')
  packed = write_jsonl(tmp_path / "b.jsonl.gz", rows, gz=True)
  want = nonempty([(f"a.jsonl:{i + 1}", t) for i, t in enumerate(TEXTS)])
  want.append(("a.jsonl:7", "crlf"))
  want += nonempty([(f"b.jsonl.gz:{i + 1}", t) for i, t in enumerate(TEXTS)])
  assert list(sources.iter_documents([str(plain), str(packed)])) == want


def test_text_field_and_folder_of_jsonl_shards(tmp_path):
  folder = tmp_path / "shards"
  (folder / "x").mkdir(parents=True)
  write_jsonl(folder / "x" / "2.jsonl", [{"body": "two"}])
  write_jsonl(folder / "1.jsonl", [{"body": "one"}, {"body": "uno"}])
  (folder / "notes.txt").write_text("not a shard")
  got = list(sources.iter_documents(str(folder), glob="*.jsonl",
                                    text_field="body"))
  assert got == [("shards/1.jsonl:1", "one"), ("shards/1.jsonl:2", "uno"),
                 ("shards/x/2.jsonl:1", "two")]


def test_parquet_streams_by_batch_named_by_row(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "_ROWS_PER_BATCH", 4)  # several batches
  texts = [f"row {i}" if i % 3 else "" for i in range(11)]
  path = tmp_path / "t.parquet"
  pq.write_table(pa.table({"n": list(range(11)), "text": texts}), path,
                 row_group_size=5)
  want = [(f"t.parquet#{i}", t) for i, t in enumerate(texts) if t]
  assert list(sources.iter_documents(str(path))) == want


def test_datasets_folder_and_datasetdict_split(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "_ROWS_PER_BATCH", 2)
  one = save_dataset(tmp_path / "wiki", {"text": TEXTS, "n": [1] * 5})
  want = nonempty([(f"wiki#{i}", t) for i, t in enumerate(TEXTS)])
  assert list(sources.iter_documents(str(one))) == want

  d = datasets.Dataset.from_dict
  datasets.DatasetDict({"train": d({"text": ["a", "b"]}),
                        "validation": d({"text": ["c"]})}).save_to_disk(
                            str(tmp_path / "dd"))
  with pytest.raises(ValueError) as e:
    list(sources.iter_documents(str(tmp_path / "dd")))
  assert "splits ['train', 'validation']" in str(e.value)
  assert repr(str(tmp_path / "dd" / "train")) in str(e.value)
  assert "DIR/SPLIT" in str(e.value)
  got = list(sources.iter_documents(str(tmp_path / "dd" / "validation")))
  assert got == [("dd/validation#0", "c")]
  with pytest.raises(ValueError, match="DatasetDict with splits"):
    sources.read_records(tmp_path / "dd")
  with pytest.raises(ValueError, match="DatasetDict with splits"):
    sources.fingerprint(str(tmp_path / "dd"))


@pytest.mark.parametrize("line,error", [
    ('{"txt": "x"}', r":2: field 'text': missing \(the record has \['txt'\]"),
    ('{"text": 5}', r":2: field 'text': expected a string .*, got int"),
    ('{"text": [1]}', r":2: field 'text': expected a string \(or null: an "
     r"empty document\), got list"),
    ('["text"]', r":2: expected a JSON object per line, got list"),
    ('{"text": "x",', r":2: expected a JSON object per line \("),
])
def test_bad_jsonl_lines_name_file_line_and_field(tmp_path, line, error):
  for gz in (False, True):
    path = tmp_path / ("bad.jsonl.gz" if gz else "bad.jsonl")
    data = ('{"text": "ok"}\n' + line + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ValueError, match="^" + str(path) + error):
      list(sources.iter_documents(str(path)))


def test_null_texts_are_empty_documents_and_other_values_errors(tmp_path):
  """A null text (JSON null, a parquet or datasets null) is skipped as an
  empty document is; an int is an error naming file, line/row and field."""
  texts = ["one", None, "three", None]
  write_jsonl(tmp_path / "n.jsonl", [{"text": t} for t in texts])
  pq.write_table(pa.table({"text": texts}), tmp_path / "n.parquet")
  save_dataset(tmp_path / "nds", {"text": texts})
  got = list(sources.iter_documents([str(tmp_path / "n.jsonl"),
                                     str(tmp_path / "n.parquet"),
                                     str(tmp_path / "nds")]))
  assert got == [("n.jsonl:1", "one"), ("n.jsonl:3", "three"),
                 ("n.parquet#0", "one"), ("n.parquet#2", "three"),
                 ("nds#0", "one"), ("nds#2", "three")]
  write_jsonl(tmp_path / "all_null.jsonl", [{"text": None}])
  with pytest.raises(ValueError, match="no non-empty documents"):
    list(sources.iter_documents(str(tmp_path / "all_null.jsonl")))
  write_jsonl(tmp_path / "i.jsonl", [{"text": "a"}, {"text": 7}])
  pq.write_table(pa.table({"text": [1, 7]}), tmp_path / "i.parquet")
  save_dataset(tmp_path / "ids", {"text": [1, 7]})
  for path, where in [("i.jsonl", ":2"), ("i.parquet", ":row 0"),
                      ("ids", ":row 0")]:
    with pytest.raises(ValueError, match=f"^{tmp_path / path}{where}: field "
                       "'text': expected a string .*, got int"):
      list(sources.iter_documents(str(tmp_path / path)))


def test_messages_name_the_flags(tmp_path):
  write_jsonl(tmp_path / "a.jsonl", [{"body": "x"}])
  with pytest.raises(ValueError, match="data.text_field / --text_field"):
    list(sources.iter_documents(str(tmp_path / "a.jsonl")))
  pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
  with pytest.raises(ValueError, match="data.text_field / --text_field"):
    list(sources.iter_documents(str(tmp_path / "p.parquet")))
  (tmp_path / "f").mkdir()
  (tmp_path / "f" / "a.md").write_text("x")
  with pytest.raises(FileNotFoundError, match=r"no file matching '\*.txt' "
                     r"\(data.glob / --glob\) under"):
    list(sources.iter_documents(str(tmp_path / "f")))


def test_class_label_columns_read_as_their_names(tmp_path):
  from lfjax.tasks import classification
  import ml_collections
  feats = datasets.Features({
      "text": datasets.Value("string"),
      "label": datasets.ClassLabel(names=["neg", "pos"]),
      "tags": datasets.Sequence(datasets.ClassLabel(names=["a", "b", "c"]))})
  datasets.Dataset.from_dict(
      {"text": ["bad", "good", "meh"], "label": [0, 1, 0],
       "tags": [[2], [0, 1], []]}, features=feats).save_to_disk(
           str(tmp_path / "cls"))
  assert sources.read_records(tmp_path / "cls") == [
      (1, {"text": "bad", "label": "neg", "tags": ["c"]}),
      (2, {"text": "good", "label": "pos", "tags": ["a", "b"]}),
      (3, {"text": "meh", "label": "neg", "tags": []})]
  # Classification's label set (what a run records as data.labels).
  data = classification.read(tmp_path / "cls", None, "train")
  assert data.labels == [("neg",), ("pos",), ("neg",)]
  c = ml_collections.ConfigDict({"data": {"labels": (),
                                          "label_kind": "auto"}})
  assert classification.resolve(c, data).data.labels == ("neg", "pos")
  # datasets' -1 (no label) is a null: classification names the row.
  datasets.Dataset.from_dict({"text": ["x", "y"], "label": [1, -1]},
                             features=datasets.Features({
                                 "text": datasets.Value("string"),
                                 "label": datasets.ClassLabel(
                                     names=["neg", "pos"])})).save_to_disk(
                                         str(tmp_path / "unlabelled"))
  with pytest.raises(ValueError, match=r"unlabelled:2: field 'label': "
                     r"expected .*, got null"):
    classification.read(tmp_path / "unlabelled", None, "train")


def test_invalid_utf8_in_jsonl_names_the_line(tmp_path):
  path = tmp_path / "u.jsonl"
  path.write_bytes(b'{"text": "a"}\n{"text": "caf\xe9"}\n')
  with pytest.raises(ValueError, match=f"^{path}:2: not UTF-8 text"):
    list(sources.iter_documents(str(path)))


def test_reading_is_lazy(tmp_path):
  path = tmp_path / "lazy.jsonl"
  path.write_text('{"text": "one"}\n{"text": "two"}\nnot json\n')
  docs = sources.iter_documents(str(path))
  assert next(docs) == ("lazy.jsonl:1", "one")
  assert next(docs) == ("lazy.jsonl:2", "two")
  with pytest.raises(ValueError, match=f"^{path}:3: expected a JSON object"):
    next(docs)


def test_missing_column_source_and_documents(tmp_path):
  pq.write_table(pa.table({"body": ["x"], "n": [1]}), tmp_path / "p.parquet")
  with pytest.raises(ValueError, match=r"p.parquet: no column 'text' \(the "
                     r"parquet file has columns \['body', 'n'\]\)"):
    list(sources.iter_documents(str(tmp_path / "p.parquet")))
  save_dataset(tmp_path / "ds", {"body": ["x"]})
  with pytest.raises(ValueError, match=r"ds: no column 'text' \(the dataset "
                     r"has columns \['body'\]\)"):
    list(sources.iter_documents(str(tmp_path / "ds")))
  assert list(sources.iter_documents(str(tmp_path / "ds"),
                                     text_field="body")) == [("ds#0", "x")]
  gone = str(tmp_path / "gone.jsonl")
  with pytest.raises(FileNotFoundError, match=f"{gone!r} is neither"):
    list(sources.iter_documents(gone))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no file matching '\\*.txt'"):
    list(sources.iter_documents(str(tmp_path / "empty")))
  write_jsonl(tmp_path / "blank.jsonl", [{"text": " "}])
  with pytest.raises(ValueError, match="no non-empty documents"):
    list(sources.iter_documents(str(tmp_path / "blank.jsonl")))


def test_fingerprint_is_stat_only_and_follows_size_and_mtime(tmp_path,
                                                            monkeypatch):
  folder = tmp_path / "c"
  folder.mkdir()
  (folder / "a.txt").write_text("aaa")
  (folder / "b.txt").write_text("bb")
  ds = save_dataset(tmp_path / "ds", {"text": ["x"]})
  os.utime(folder / "a.txt", ns=(1, 2_000_000_001))

  def refuse(*args, **kwargs):
    raise AssertionError("fingerprint opened a file")
  for obj, name in [(builtins, "open"), (io, "open"), (gzip, "open"),
                    (pathlib.Path, "open"), (pathlib.Path, "read_bytes"),
                    (pathlib.Path, "read_text")]:
    monkeypatch.setattr(obj, name, refuse)
  if os.geteuid() != 0:  # root reads a mode-000 file anyway
    os.chmod(folder / "b.txt", 0)
  fp = sources.fingerprint([str(folder), str(ds)])
  monkeypatch.undo()
  os.chmod(folder / "b.txt", 0o644)
  st_b = os.stat(folder / "b.txt")
  assert fp[:2] == [
      {"source": str(folder), "file": "c/a.txt", "size": 3,
       "mtime_ns": 2_000_000_001},
      {"source": str(folder), "file": "c/b.txt", "size": 2,
       "mtime_ns": st_b.st_mtime_ns}]
  assert sorted(e["file"] for e in fp[2:]) == sorted(
      "ds/" + f for f in os.listdir(ds))
  assert sources.fingerprint([str(folder), str(ds)]) == fp
  os.utime(folder / "a.txt", ns=(1, 3_000_000_000))
  assert sources.fingerprint(str(folder))[0]["mtime_ns"] == 3_000_000_000
  (folder / "b.txt").write_text("bbb")
  assert sources.fingerprint(str(folder))[1]["size"] == 3

  std = sources.fingerprint("pystdlib")
  assert std[0]["file"] == "pystdlib" and std[0]["size"] == len(std) - 1
  names = [n for n, _ in sources.iter_documents("pystdlib")]
  # The listing covers the files read (and empty ones, which are skipped).
  assert set(names) <= {e["file"] for e in std[1:]}


ANSWERS_HF = [{"text": ["Kraków"], "answer_start": [13]},
              {"text": [], "answer_start": []}]
QA_ROWS = [
    {"id": "q1", "question": "Where?", "context": "Zoë lives in Kraków.",
     "answers": [{"text": "Kraków", "answer_start": 13}]},
    {"id": "q2", "question": "Why?", "context": "No reason given.",
     "answers": [], "is_impossible": True}]


def qa_tables(tmp_path):
  """The QA rows as jsonl, jsonl.gz, parquet and a datasets folder (HF's
  squad layout of answers in the last two)."""
  hf = {"id": ["q1", "q2"], "question": ["Where?", "Why?"],
        "context": [r["context"] for r in QA_ROWS], "answers": ANSWERS_HF}
  pq.write_table(pa.table(hf), tmp_path / "qa.parquet")
  return [write_jsonl(tmp_path / "qa.jsonl", QA_ROWS),
          write_jsonl(tmp_path / "qa.jsonl.gz", QA_ROWS, gz=True),
          tmp_path / "qa.parquet", save_dataset(tmp_path / "qa_ds", hf)]


def test_read_records_gives_the_rows_written(tmp_path):
  plain, packed, table, folder = qa_tables(tmp_path)
  assert sources.read_records(plain) == [(1, QA_ROWS[0]), (2, QA_ROWS[1])]
  assert sources.read_records(packed) == [(1, QA_ROWS[0]), (2, QA_ROWS[1])]
  for path in (table, folder):
    got = sources.read_records(path)
    assert [n for n, _ in got] == [1, 2]
    assert [r["answers"] for _, r in got] == ANSWERS_HF
    assert [r["id"] for _, r in got] == ["q1", "q2"]
    assert type(got[0][1]["answers"]["answer_start"]) is list
  with pytest.raises(FileNotFoundError, match="data file: no file or"):
    sources.read_records(tmp_path / "nothing")
  (tmp_path / "plain_folder").mkdir()
  with pytest.raises(ValueError, match="not a datasets folder"):
    sources.read_records(tmp_path / "plain_folder")
  (tmp_path / "blank.jsonl").write_text("\n\n")
  with pytest.raises(ValueError, match="no examples"):
    sources.read_records(tmp_path / "blank.jsonl")


def test_qa_reads_every_kind_alike(tmp_path):
  for path in qa_tables(tmp_path):
    got = qa.read(path, None, "train")
    assert [(e.qid, e.question, e.context, e.answers) for e in got] == [
        ("q1", "Where?", "Zoë lives in Kraków.", [("Kraków", 13)]),
        ("q2", "Why?", "No reason given.", [])], path
    assert got[1].where == f"{path}:2"


@pytest.mark.parametrize("change,error,table_error", [
    # A table has every column in every row: a missing field is a null.
    (lambda r: r.pop("question"), "2: field 'question': missing",
     "2: field 'question': expected a string, got null"),
    (lambda r: r.update(answers=[]), "2: field 'answers': empty", None),
    (lambda r: r["answers"][0].update(answer_start=2),
     "2: answers[0]: field 'answer_start': the answer \"Kraków\" is not in "
     "the context at character 2", None),
    # (pyarrow cannot mix the two layouts of answers in one column)
    (lambda r: r.update(answers={"text": ["Kraków"], "answer_start": []}),
     "2: field 'answers': 1 texts but 0 answer_starts", "no table"),
    (lambda r: r.update(id="q1"), "2: record 2: field 'id': 'q1' is also "
     "the id of record 1 (line 1)", None),
])
def test_qa_record_errors_name_file_row_and_field(tmp_path, change, error,
                                                  table_error):
  bad = json.loads(json.dumps(QA_ROWS[0]))
  bad["id"] = "q3"
  change(bad)
  rows = [QA_ROWS[0], bad]
  paths = {write_jsonl(tmp_path / "bad.jsonl", rows): error}
  if table_error != "no table":
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    paths[tmp_path / "bad.parquet"] = table_error or error
  for p, want in paths.items():
    with pytest.raises(ValueError) as e:
      qa.read(p, None, "eval")
    assert str(e.value).startswith(f"{p}:{want}"), str(e.value)


def test_multiple_choice_reads_records(tmp_path):
  rows = [{"id": "w1", "query": "located_in zoë", "candidates": ["a", "b"],
           "supports": ["a text"], "answer": "b"},
          {"id": "w2", "query": "q", "candidates": ["c", "d", "e"],
           "supports": ["s1", "s2"], "answer": "c"}]
  for path in (write_jsonl(tmp_path / "mc.jsonl.gz", rows, gz=True),
               save_dataset(tmp_path / "mc", {
                   k: [r[k] for r in rows] for k in rows[0]})):
    got = multiple_choice.read(path, None, "train")
    assert [(e.qid, e.query, e.candidates, e.supports, e.answer)
            for e in got] == [("w1", "located_in zoë", ["a", "b"],
                               ["a text"], 1),
                              ("w2", "q", ["c", "d", "e"], ["s1", "s2"], 0)]
  rows[1]["answer"] = "z"
  path = write_jsonl(tmp_path / "bad.jsonl", rows)
  with pytest.raises(ValueError, match=f"^{path}:2: field 'answer': \"z\" "
                     "is not one of the 3 candidates"):
    multiple_choice.read(path, None, "eval")


def test_finetune_data_read_records_keeps_jsonl_errors(tmp_path):
  path = tmp_path / "d.txt"  # any name reads as JSON lines, as before
  path.write_text('{"text": "a"}\r\r[1]\n')  # universal newlines: line 3
  with pytest.raises(ValueError, match=f"^{path}:3: expected a JSON object "
                     "per line, got list"):
    finetune_data.read_records(path)


def test_damaged_files_are_named(tmp_path):
  raw = gzip.compress(b"".join(b'{"text": "doc %d"}\n' % i
                               for i in range(5000)))
  cut = tmp_path / "cut.jsonl.gz"
  cut.write_bytes(raw[:len(raw) // 2])
  with pytest.raises(ValueError, match=f"^data.sources: {cut}: cannot be "
                     "read \\(EOFError"):
    list(sources.iter_documents(str(cut)))
  fake = tmp_path / "fake.parquet"
  fake.write_text("not parquet")
  with pytest.raises(ValueError, match=f"^data.sources: {fake}: not a "
                     "parquet file"):
    list(sources.iter_documents(str(fake)))
  with pytest.raises(ValueError, match=f"^data file: {fake}: not a parquet"):
    sources.read_records(fake)


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch):
  from lfjax import extras
  pq.write_table(pa.table({"text": ["x"]}), tmp_path / "p.parquet")
  real = extras.importlib.import_module

  def without_arrow(name, *args):
    if name.split(".")[0] in ("pyarrow", "datasets"):
      raise ImportError(f"No module named {name!r}")
    return real(name, *args)
  monkeypatch.setattr(extras.importlib, "import_module", without_arrow)
  with pytest.raises(extras.MissingPackage, match=r'data.sources: reading '
                     r'parquet files needs the pyarrow.parquet package.*'
                     r'pip install "lfjax\[hf\]"'):
    list(sources.iter_documents(str(tmp_path / "p.parquet")))
  save_dataset(tmp_path / "ds", {"text": ["x"]})
  with pytest.raises(extras.MissingPackage, match=r'data file: reading a '
                     r'datasets folder needs the datasets package.*'
                     r'pip install "lfjax\[hf\]"'):
    sources.read_records(tmp_path / "ds")
