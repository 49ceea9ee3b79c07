"""Character corpora: enwik8, text8 and an embedded default, memory-mapped.

Nothing is downloaded. enwik8 and text8 are read from `data_dir` (the zip or
the extracted file); the default corpus `pystdlib` is built once from this
Python's standard library sources, so it exists on every machine. It holds
the sources only: files the build or install generates (install_specific)
are left out, so the corpus depends on the Python release, not on where it
was built or installed (distributions that patch the standard library or
split it into packages, Debian's python3-tk say, still give other bytes).
Every corpus carries a sha256 of its bytes (CharCorpus.sha256).
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import platform
import re
import sys
import sysconfig
import zipfile
import zlib

import numpy as np

from lfjax import files

SPLITS = ("train", "valid", "test")
NAMES = ("enwik8", "text8", "pystdlib")
# The standard split of Transformer-XL's prep scripts (90M / 5M / 5M).
_PAPER_SIZE, _PAPER_HELD_OUT = 100_000_000, 5_000_000
_TEXT8_ALPHABET = " abcdefghijklmnopqrstuvwxyz"
# The pystdlib cache's layout and rule (meta.json "format"); a cache of
# another format is rebuilt. 1 (no "format" field) kept the generated files.
PYSTDLIB_FORMAT = 3
_DOWNLOAD = {
    "enwik8": "http://mattmahoney.net/dc/enwik8.zip",
    "text8": "http://mattmahoney.net/dc/text8.zip",
}


def default_data_dir():
  return pathlib.Path(os.environ.get(
      "LFJAX_DATA", pathlib.Path.home() / ".cache" / "lfjax"))


@dataclasses.dataclass(frozen=True)
class CharCorpus:
  """Splits as uint8 arrays of raw bytes; `lut` maps a byte to its id.

  sha256: hex digest identifying the corpus bytes, so a result or a run can
  name the data it used: for enwik8/text8 the sha256 of the 100M-byte file;
  for pystdlib the one in its meta.json (splits_sha256). None for a corpus
  built in memory."""
  name: str
  vocab_size: int
  splits: dict
  lut: np.ndarray
  alphabet: str | None = None  # for text8: id -> character
  sha256: str | None = None

  def ids(self, split, start=0, stop=None):
    """Token ids of split[start:stop] (int32)."""
    if split not in self.splits:
      raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return self.lut[self.splits[split][start:stop]].astype(np.int32)

  def encode(self, text):
    raw = np.frombuffer(text.encode("utf-8"), np.uint8)
    if self.alphabet is not None:
      bad = sorted(set(text) - set(self.alphabet))
      if bad:
        raise ValueError(f"text: {self.name} has only the characters "
                         f"{self.alphabet!r}, got {bad}")
    return self.lut[raw].astype(np.int32)

  def decode(self, ids):
    ids = np.asarray(ids)
    if self.alphabet is not None:
      return "".join(self.alphabet[i] for i in ids)
    return bytes(ids.astype(np.uint8)).decode("utf-8", errors="replace")


def load(name, data_dir=None):
  """Loads a corpus by name; data_dir defaults to $LFJAX_DATA or
  ~/.cache/lfjax."""
  data_dir = pathlib.Path(data_dir) if data_dir else default_data_dir()
  if name == "pystdlib":
    return _pystdlib(data_dir)
  if name in ("enwik8", "text8"):
    return _paper_corpus(name, data_dir)
  raise ValueError(f"data.name: expected one of {NAMES}, got {name!r}")


def _paper_corpus(name, data_dir, size=_PAPER_SIZE, held_out=_PAPER_HELD_OUT):
  raw = data_dir / name
  zipped = data_dir / f"{name}.zip"
  if not raw.exists():
    if not zipped.exists():
      raise FileNotFoundError(
          f"{name}: neither {raw} nor {zipped} exists. Nothing is downloaded "
          f"at run time: fetch {_DOWNLOAD[name]} on a machine with internet "
          f"and put {name}.zip (or the extracted file {name}) in {data_dir} "
          f"(set --config.data.dir or $LFJAX_DATA to use another folder)")
    _extract(zipped, name, raw)
  data = np.memmap(raw, np.uint8, mode="r")
  if data.size != size:
    raise ValueError(f"{name}: expected {raw} to hold {size:,} bytes, found "
                     f"{data.size:,}; the file is truncated or not {name}")
  if name == "text8":
    lut = np.zeros(256, np.uint8)
    lut[np.frombuffer(_TEXT8_ALPHABET.encode(), np.uint8)] = np.arange(27)
    counts = np.bincount(data, minlength=256)
    allowed = np.zeros(256, bool)
    allowed[np.frombuffer(_TEXT8_ALPHABET.encode(), np.uint8)] = True
    if counts[~allowed].any():
      raise ValueError(f"text8: {raw} has bytes outside ' a-z' "
                       f"({np.flatnonzero(counts * ~allowed)[:10]}); is it "
                       "text8?")
    vocab, alphabet = 27, _TEXT8_ALPHABET
  else:
    lut, vocab, alphabet = np.arange(256, dtype=np.uint8), 256, None
  n_train = size - 2 * held_out
  splits = {"train": data[:n_train], "valid": data[n_train:n_train + held_out],
            "test": data[n_train + held_out:]}
  return CharCorpus(name, vocab, splits, lut, alphabet, file_sha256(raw))


def file_sha256(path):
  """The sha256 (hex) of a file, cached beside it in `<name>.sha256.json`
  with the file's size and mtime, so a 100M-byte corpus is hashed once
  (about 0.1 s per 100 MB once it is in the page cache) and again only
  when the file changes. A folder we may not
  write to (shared, read-only data) gets no cache: the file is hashed on
  every call."""
  path = pathlib.Path(path)
  st = path.stat()
  stamp = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
  cache = path.with_name(path.name + ".sha256.json")
  try:
    saved = json.loads(cache.read_text())
    if {k: saved.get(k) for k in stamp} == stamp and saved.get("sha256"):
      return saved["sha256"]
  except (OSError, ValueError, AttributeError):
    pass
  with path.open("rb") as f:
    digest = hashlib.file_digest(f, "sha256").hexdigest()
  try:
    files.write_atomic(cache, json.dumps(dict(stamp, sha256=digest)))
  except OSError:
    pass
  return digest


def _extract(zipped, member, dest):
  with zipfile.ZipFile(zipped) as z:
    if member not in z.namelist():
      raise ValueError(f"{zipped}: expected a member named {member!r}, found "
                       f"{z.namelist()[:5]}")
    tmp = dest.with_suffix(".tmp")
    try:
      with z.open(member) as src, open(tmp, "wb") as out:
        while chunk := src.read(1 << 24):
          out.write(chunk)
    except OSError as e:
      raise OSError(f"{zipped}: could not extract to {dest} ({e}); unzip it "
                    f"yourself into {dest.parent}") from e
    os.replace(tmp, dest)


def install_specific(rel):
  """Whether `rel` (a path relative to the stdlib folder, "/"-separated)
  names a file that the build or the install generates, or that a site
  adds, rather than one of the standard library's sources. Such files
  differ between installs of one Python version, so pystdlib leaves them
  out:

  - `_sysconfigdata*.py`, anywhere: sysconfig's build variables (the
    install prefix about 80 times, the compiler flags, the build folder);
    36,843 bytes on a pyenv 3.11.7, 48,617 on 3.12.1;
  - the top-level folder `config-<X.Y>...` (config-3.11-x86_64-linux-gnu):
    the build's Makefile, Setup files and a generated python-config.py (the
    prefix once);
  - top-level `sitecustomize.py` / `usercustomize.py`: site hooks that a
    distribution or an administrator adds (Debian's links to /etc).

  (Installed packages, under site-packages or dist-packages, are not the
  standard library at all: pystdlib_files skips them before this rule.)
  """
  parts = rel.split("/")
  name = parts[-1]
  if name.startswith("_sysconfigdata") and name.endswith(".py"):
    return True
  if len(parts) > 1 and re.fullmatch(r"config-\d+\.\d+.*", parts[0]):
    return True
  return len(parts) == 1 and name in ("sitecustomize.py", "usercustomize.py")


def pystdlib_files(excluded=None):
  """(relative path, bytes) of the standard library's .py sources (this
  Python's sysconfig "stdlib" folder, without installed packages), sorted
  by path, leaving out the files install_specific names. excluded: a list
  that gets the relative paths of those, in path order."""
  return [(rel, f.read_bytes()) for rel, f in _stdlib_sources(excluded)]


def _stdlib_sources(excluded=None):
  """(relative path, pathlib.Path) of the files pystdlib_files reads."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  out = []
  for f in sorted(root.rglob("*.py")):
    rel = f.relative_to(root)
    if {"site-packages", "dist-packages"} & set(rel.parts):
      continue
    if install_specific(rel.as_posix()):
      if excluded is not None:
        excluded.append(rel.as_posix())
      continue
    out.append((rel.as_posix(), f))
  return out


def _listing_sha256():
  """sha256 of the sources' paths, sizes and modification times: another
  standard library of the same X.Y (a patch release, another distribution's
  build sharing the cache folder) lists differently. Stats only: ~10 ms,
  where reading the sources takes seconds."""
  digest = hashlib.sha256()
  for rel, f in _stdlib_sources():
    st = f.stat()
    digest.update(f"{rel} {st.st_size} {st.st_mtime_ns}\n".encode())
  return digest.hexdigest()


def split_of(rel):
  """A pystdlib file's split, from the CRC-32 of its relative path: 5% valid,
  5% test, 90% train; it depends on the path alone, so a file keeps its split
  whatever other files an install has."""
  bucket = zlib.crc32(rel.encode()) % 100
  return "valid" if bucket < 5 else "test" if bucket < 10 else "train"


def splits_sha256(splits):
  """The sha256 (hex) of a corpus given as {split: bytes-like}: over each of
  SPLITS in order, the line f"{split} {byte count}" then its bytes."""
  digest = hashlib.sha256()
  for s in SPLITS:
    data = memoryview(splits[s]).cast("B")
    digest.update(f"{s} {data.nbytes}\n".encode())
    digest.update(data)
  return digest.hexdigest()


def _pystdlib_meta(folder):
  """The cache's meta.json when it is of PYSTDLIB_FORMAT and its split files
  have the sizes it records; None when the cache must be (re)built."""
  try:
    meta = json.loads((folder / "meta.json").read_text())
    if (meta.get("format") != PYSTDLIB_FORMAT
        or not isinstance(meta.get("sha256"), str)):
      return None
    if any((folder / f"{s}.bin").stat().st_size != meta["bytes"][s]
           for s in SPLITS):
      return None
    return meta
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return None


def _open_splits(folder):
  # np.memmap refuses an empty file (a split no file hashed into).
  return {s: (np.memmap(f, np.uint8, mode="r") if f.stat().st_size
              else np.zeros(0, np.uint8))
          for s, f in ((s, folder / f"{s}.bin") for s in SPLITS)}


def _pystdlib(data_dir):
  """Python's stdlib sources (pystdlib_files); each file goes to the split
  of its path (split_of), and a split is its files concatenated in path
  order, each followed by two newlines. Cached in
  data_dir/pystdlib-X.Y: {train,valid,test}.bin and meta.json (format,
  byte and file counts, the excluded files, sha256 = splits_sha256, the
  sources' listing). Rebuilt, with a note, when the cache is of another
  format, lists other sources (another standard library of X.Y) or its
  split files do not hash to its sha256 (~0.3 s per load)."""
  version = f"{sys.version_info.major}.{sys.version_info.minor}"
  folder = data_dir / f"pystdlib-{version}"
  listing = _listing_sha256()
  meta, why = _pystdlib_meta(folder), None
  if meta is not None:
    splits = _open_splits(folder)
    if meta.get("listing") != listing:
      why = ("built from another standard library of Python "
             f"{version} (its files' names, sizes or times differ)")
    elif splits_sha256(splits) != meta["sha256"]:
      why = "its split files do not hash to the sha256 it records (damaged)"
  elif (folder / "meta.json").exists():
    why = (f"it is not of format {PYSTDLIB_FORMAT} (an older lfjax's, or "
           "incomplete)")
  if meta is None or why:
    if why:
      print(f"note: rebuilding the corpus cache {folder}: {why}",
            file=sys.stderr)
    excluded = []
    parts = {s: [] for s in SPLITS}
    for rel, text in pystdlib_files(excluded):
      parts[split_of(rel)].append(text + b"\n\n")
    data = {s: b"".join(parts[s]) for s in SPLITS}
    meta = {"format": PYSTDLIB_FORMAT, "python": version,
            "python_version": platform.python_version(),
            "sha256": splits_sha256(data), "listing": listing,
            "bytes": {s: len(data[s]) for s in SPLITS},
            "files": {s: len(parts[s]) for s in SPLITS},
            "excluded": excluded}
    folder.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
      files.write_atomic(folder / f"{s}.bin", data[s])
    # Last: a meta.json of this format vouches for the split files.
    files.write_atomic(folder / "meta.json", json.dumps(meta, indent=1))
    splits = _open_splits(folder)
  return CharCorpus(f"pystdlib-{version}", 256, splits,
                    np.arange(256, dtype=np.uint8), sha256=meta["sha256"])
