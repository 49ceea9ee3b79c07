"""The documentation: README.md stays a front page, every relative link
resolves (an anchor to a heading that exists), and no page names a command,
file or import that no longer exists. Plain text checks; no jax."""

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted([README, ROOT / "lfjax" / "kernels" / "README.md",
                ROOT / "configs" / "README.md",
                *(ROOT / "docs").glob("*.md")])
README_MAX_LINES = 200

# [text](target) or [text](target "title"); images too.
_LINK = re.compile(r"\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)

# The section of docs/layout.md that says what replaced each removed name.
UPGRADE_NOTES = "Upgrading from lfjax 0.1.0"
# What this change removed, and why a page must not name it.
REMOVED = {
    r"\blfjax\.mlm\b|\bmlm (evaluate|export|make_tiny)\b":
        "python -m lfjax.mlm is gone (lfjax.evaluate, lfjax.export, "
        "lfjax.make_tiny)",
    r"requirements(-\w+)?\.txt": "requirements files are gone "
                                 "(pyproject.toml extras)",
    r"\bfrom kernels import\b|\bimport kernels\b":
        "the kernels are lfjax.kernels",
    r"(?<![\w/.-])kernels/": "the kernels folder is lfjax/kernels/",
    r"(?<![\w.])kernels\.(band_attention|lowering)\b":
        "the kernels are lfjax.kernels",
    r"\blfjax[./](charlm|mlm)_defaults\b":
        "the defaults are in lfjax/tasks/",
    r"\btext\.(load_corpus|data_sha256|read_documents|mask_tokens|maskable"
    r"|PackedSampler)\b|\bread_jsonl\b": "MLM's data is the token store "
                                         "(lfjax.data.store, sources, "
                                         "loader)",
    r"(?<![\w-])--(seq-len|max-positions|attention-window|init-from"
    r"|max-batches|step)(?![\w-])": "flags are spelled with underscores "
                                    "(--seq_len, --checkpoint)",
}


def _rel(path):
  return pathlib.Path(os.path.relpath(path, ROOT)).as_posix()


def _without_code_blocks(text):
  return _FENCE.sub("", text)


def slug(heading):
  """GitHub's anchor for a heading: markup and punctuation dropped, lower
  case, spaces to hyphens."""
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
  text = re.sub(r"[^\w\- ]", "", text.lower())
  return text.replace(" ", "-")


def anchors(path):
  """Every heading's anchor in a markdown file; repeats get -1, -2, ..."""
  seen = {}
  out = set()
  for heading in _HEADING.findall(_without_code_blocks(path.read_text())):
    s = slug(heading)
    n = seen.get(s, 0)
    seen[s] = n + 1
    out.add(s if n == 0 else f"{s}-{n}")
  return out


def links(path):
  """Relative link targets of a markdown file, outside code."""
  text = _CODE_SPAN.sub("", _without_code_blocks(path.read_text()))
  return [t for t in _LINK.findall(text)
          if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


def test_the_pages_exist():
  for name in ("attention", "models", "charlm", "mlm", "finetuning",
               "parallel", "benchmarks", "paper", "layout", "results"):
    assert (ROOT / "docs" / f"{name}.md").is_file(), f"docs/{name}.md"


def test_readme_is_a_front_page():
  n = len(README.read_text().splitlines())
  assert n <= README_MAX_LINES, (
      f"README.md has {n} lines, at most {README_MAX_LINES}: move the detail "
      "to docs/")


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
  broken = []
  for target in links(page):
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    if not dest.exists():
      broken.append(f"{target}: no such file {_rel(dest)}")
    elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
      broken.append(f"{target}: no heading #{anchor} in {_rel(dest)}")
  assert not broken, f"{_rel(page)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_removed_names(page):
  found, section = [], None
  for number, line in enumerate(page.read_text().splitlines(), 1):
    heading = _HEADING.match(line)
    section = heading.group(1) if heading else section
    if section == UPGRADE_NOTES:  # the one place that names them, on purpose
      continue
    for pattern, why in REMOVED.items():
      for m in re.finditer(pattern, line):
        found.append(f"line {number}: {m.group(0)!r} ({why})")
  assert not found, f"{_rel(page)}: " + "; ".join(found)


def test_slug_follows_github():
  assert slug("Long sequences (remat)") == "long-sequences-remat"
  assert slug("Outputs, dropout and positions") == (
      "outputs-dropout-and-positions")
  assert slug("The paper's Table 5") == "the-papers-table-5"
  assert slug("`--help` and `lfjax.train`") == "--help-and-lfjaxtrain"


def test_the_upgrade_notes_exist():
  assert f"## {UPGRADE_NOTES}" in (ROOT / "docs" / "layout.md").read_text()
