"""Character corpora: enwik8, text8 and an embedded default, memory-mapped.

Nothing is downloaded. enwik8 and text8 are read from `data_dir` (the zip or
the extracted file); the default corpus `pystdlib` is built once from this
Python's standard library sources, so it exists on every machine.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import sys
import sysconfig
import zipfile
import zlib

import numpy as np

SPLITS = ("train", "valid", "test")
NAMES = ("enwik8", "text8", "pystdlib")
# The standard split of Transformer-XL's prep scripts (90M / 5M / 5M).
_PAPER_SIZE, _PAPER_HELD_OUT = 100_000_000, 5_000_000
_TEXT8_ALPHABET = " abcdefghijklmnopqrstuvwxyz"
_DOWNLOAD = {
    "enwik8": "http://mattmahoney.net/dc/enwik8.zip",
    "text8": "http://mattmahoney.net/dc/text8.zip",
}


def default_data_dir():
  return pathlib.Path(os.environ.get(
      "LFJAX_DATA", pathlib.Path.home() / ".cache" / "lfjax"))


@dataclasses.dataclass(frozen=True)
class CharCorpus:
  """Splits as uint8 arrays of raw bytes; `lut` maps a byte to its id."""
  name: str
  vocab_size: int
  splits: dict
  lut: np.ndarray
  alphabet: str | None = None  # for text8: id -> character

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
  return CharCorpus(name, vocab, splits, lut, alphabet)


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


def pystdlib_files():
  """(relative path, bytes) of the standard library's .py files, sorted."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  out = []
  for f in sorted(root.rglob("*.py")):
    rel = f.relative_to(root)
    if {"site-packages", "dist-packages"} & set(rel.parts):
      continue
    out.append((rel.as_posix(), f.read_bytes()))
  return out


def _pystdlib(data_dir):
  """Python's stdlib sources; files assigned to splits by a hash of their
  path (90/5/5), concatenated in path order with a blank line between."""
  version = f"{sys.version_info.major}.{sys.version_info.minor}"
  folder = data_dir / f"pystdlib-{version}"
  meta_path = folder / "meta.json"
  if not meta_path.exists():
    parts = {s: [] for s in SPLITS}
    digest = hashlib.sha256()
    for rel, text in pystdlib_files():
      bucket = zlib.crc32(rel.encode()) % 100
      split = "valid" if bucket < 5 else "test" if bucket < 10 else "train"
      parts[split].append(text + b"\n\n")
      digest.update(rel.encode() + text)
    folder.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
      tmp = folder / f"{s}.bin.tmp"
      tmp.write_bytes(b"".join(parts[s]))
      os.replace(tmp, folder / f"{s}.bin")
    meta = {"python": version, "sha256": digest.hexdigest(),
            "bytes": {s: sum(map(len, parts[s])) for s in SPLITS}}
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)
  splits = {s: np.memmap(folder / f"{s}.bin", np.uint8, mode="r")
            for s in SPLITS}
  return CharCorpus(f"pystdlib-{version}", 256, splits,
                    np.arange(256, dtype=np.uint8))
