"""Figure 3's data in miniature: summarizing Python modules into their
tables of contents, built at run time from this Python's standard library.

  python experiments/figure3_data.py --out /tmp/lfjax_fig3/data
  python experiments/figure3_data.py --out /tmp/lfjax_fig3/dense \
      --dense 2 --chars 1200

A document is whole standard-library source files of one split (the
char-LM's split of the same files: lfjax.data.chars.split_of) concatenated
in a seeded random order and cut at a line boundary before --chars
characters; its summary is the names of the document's top-level `def` and
`class` statements, in order, one per line. The names are spread over the
whole document, so a model that reads only its first K tokens can at best
recover the names defined there: ROUGE can grow with the input length, as
in the paper's Figure 3 (arXiv summarization, 1K -> 4K -> 16K tokens),
where a model that ignored the document's later parts would not gain.

--dense N builds short, dense documents instead, for pretraining the
copying before the long task (our stand-in for LED's pretrained BART):
definition snippets (each top-level def/class line and the N lines after
it) of the split, in a seeded random order, until the next would pass
--chars; the summary is again the document's top-level names in order
(a snippet's following lines may hold another definition: it counts).

Writes train.jsonl, valid.jsonl and test.jsonl ({"document", "summary"}
per line) and meta.json (counts, characters, names per document, the
command); a folder already holding meta.json with the same settings is
reused, one with other settings is refused.
"""

import argparse
import json
import pathlib
import random
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lfjax.data import chars  # noqa: E402

# A top-level definition: at column 0, so methods and nested functions
# (indented) are not in the table of contents.
DEFINITION = re.compile(r"^(?:async\s+def|def|class)\s+([A-Za-z_]\w*)", re.M)


def toc(text):
  """The top-level def/class names of Python source text, in order."""
  return DEFINITION.findall(text)


def documents(files, *, doc_chars, count, seed):
  """[(document, names)]: `count` documents of whole files (the list of
  (path, text) pairs, in a seeded order, reused round-robin when the split
  runs out), each cut at the last line boundary before doc_chars and
  holding at least one name."""
  rng = random.Random(seed)
  order = list(range(len(files)))
  out, pos = [], len(order)
  while len(out) < count:
    parts, size = [], 0
    while size < doc_chars:
      if pos == len(order):
        rng.shuffle(order)
        pos = 0
      text = files[order[pos]][1]
      pos += 1
      parts.append(text)
      size += len(text)
    doc = "".join(parts)[:doc_chars]
    doc = doc[:doc.rfind("\n") + 1]
    names = toc(doc)
    if names:
      out.append((doc, names))
  return out


def snippets(text, lines):
  """The definition snippets of Python source text: each top-level
  def/class line with the `lines` lines after it (fewer at the end), each
  ending in a newline, in order."""
  rows = text.splitlines(keepends=True)
  out = []
  for i, row in enumerate(rows):
    if DEFINITION.match(row):
      snippet = "".join(rows[i:i + 1 + lines])
      out.append(snippet if snippet.endswith("\n") else snippet + "\n")
  return out


def dense_documents(files, *, doc_chars, count, seed, lines):
  """[(document, names)]: `count` documents of definition snippets (see
  snippets) of the files, in a seeded order (reused when they run out),
  each holding whole snippets while they fit in doc_chars (at least one)."""
  pool = [s for _, text in files for s in snippets(text, lines)]
  if not pool:
    raise ValueError("no top-level definitions in the split's files")
  rng = random.Random(seed)
  order, pos, out = list(range(len(pool))), len(pool), []
  while len(out) < count:
    parts, size = [], 0
    while True:
      if pos == len(order):
        rng.shuffle(order)
        pos = 0
      piece = pool[order[pos]]
      if parts and size + len(piece) > doc_chars:
        break  # this snippet opens the next document
      parts.append(piece)
      size += len(piece)
      pos += 1
    doc = "".join(parts)
    out.append((doc, toc(doc)))
  return out


def build(out, *, doc_chars, counts, seed=0, dense=None):
  """Writes the three jsonl files and meta.json under `out`; returns the
  meta dict. counts: {split: documents}; dense: None for documents of
  whole files, or N for dense documents of definition snippets with N
  lines after each definition (module doc). Raises ValueError when `out`
  holds a data set built with other settings."""
  out = pathlib.Path(out)
  settings = {"chars": doc_chars, "counts": counts, "seed": seed,
              "source": "pystdlib top-level def/class names"}
  if dense is not None:
    settings["dense"] = dense
  meta_path = out / "meta.json"
  if meta_path.exists():
    meta = json.loads(meta_path.read_text())
    if meta["settings"] != settings:
      raise ValueError(f"--out: {out} holds a data set built with "
                       f"{meta['settings']}, not {settings}; choose another "
                       "folder")
    return meta
  out.mkdir(parents=True, exist_ok=True)
  by_split = {}
  for rel, data in chars.pystdlib_files():
    text = data.decode("utf-8", "replace")
    by_split.setdefault(chars.split_of(rel), []).append((rel, text))
  meta = {"settings": settings, "splits": {}}
  for split, n in counts.items():
    # The splits hold different files, so one seed serves all three.
    if dense is None:
      docs = documents(by_split[split], doc_chars=doc_chars, count=n,
                       seed=seed)
    else:
      docs = dense_documents(by_split[split], doc_chars=doc_chars, count=n,
                             seed=seed, lines=dense)
    tmp = out / f"{split}.jsonl.tmp"
    with open(tmp, "w") as f:
      for doc, names in docs:
        f.write(json.dumps({"document": doc, "summary": "\n".join(names)})
                + "\n")
    tmp.replace(out / f"{split}.jsonl")
    per_doc = [len(names) for _, names in docs]
    meta["splits"][split] = {
        "documents": len(docs),
        "names_mean": sum(per_doc) / len(per_doc),
        "names_min": min(per_doc), "names_max": max(per_doc)}
  meta_path.write_text(json.dumps(meta, indent=1) + "\n")
  return meta


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="folder for the jsonl files")
  p.add_argument("--chars", type=int, default=24000,
                 help="characters per document (cut at a line boundary)")
  p.add_argument("--train", type=int, default=400, help="training documents")
  p.add_argument("--valid", type=int, default=32, help="validation documents")
  p.add_argument("--test", type=int, default=64, help="test documents")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dense", type=int, default=None, metavar="N",
                 help="dense documents of definition snippets: each "
                 "top-level def/class line and the N lines after it")
  a = p.parse_args(argv)
  for name in ("chars", "train", "valid", "test"):
    if getattr(a, name) < 1:
      p.error(f"--{name}: expected an integer >= 1, got {getattr(a, name)}")
  if a.dense is not None and a.dense < 0:
    p.error(f"--dense: expected an integer >= 0, got {a.dense}")
  meta = build(a.out, doc_chars=a.chars, seed=a.seed, dense=a.dense,
               counts={"train": a.train, "valid": a.valid, "test": a.test})
  print(json.dumps(meta["splits"], indent=1))


if __name__ == "__main__":
  main()
