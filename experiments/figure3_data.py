"""Figure 3's data in miniature: summarizing Python modules into their
tables of contents, built at run time from this Python's standard library.

  python experiments/figure3_data.py --out /tmp/lfjax_fig3/data

A document is whole standard-library source files of one split (the
char-LM's split of the same files: lfjax.data.chars.split_of) concatenated
in a seeded random order and cut at a line boundary before --chars
characters; its summary is the names of the document's top-level `def` and
`class` statements, in order, one per line. The names are spread over the
whole document, so a model that reads only its first K tokens can at best
recover the names defined there: ROUGE can grow with the input length, as
in the paper's Figure 3 (arXiv summarization, 1K -> 4K -> 16K tokens),
where a model that ignored the document's later parts would not gain.

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


def build(out, *, doc_chars, counts, seed=0):
  """Writes the three jsonl files and meta.json under `out`; returns the
  meta dict. counts: {split: documents}. Raises ValueError when `out`
  holds a data set built with other settings."""
  out = pathlib.Path(out)
  settings = {"chars": doc_chars, "counts": counts, "seed": seed,
              "source": "pystdlib top-level def/class names"}
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
    docs = documents(by_split[split], doc_chars=doc_chars, count=n,
                     seed=seed)
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
  a = p.parse_args(argv)
  for name in ("chars", "train", "valid", "test"):
    if getattr(a, name) < 1:
      p.error(f"--{name}: expected an integer >= 1, got {getattr(a, name)}")
  meta = build(a.out, doc_chars=a.chars, seed=a.seed,
               counts={"train": a.train, "valid": a.valid, "test": a.test})
  print(json.dumps(meta["splits"], indent=1))


if __name__ == "__main__":
  main()
