"""Corpora, the window sampler and the BPC evaluation protocol."""

import hashlib
import json
import math
import os
import pathlib
import sys
import sysconfig
import zipfile
import zlib

import jax
import numpy as np
import pytest
from flax import nnx

from lfjax.data import chars
from lfjax.data.sampler import WindowSampler
from lfjax.models.charlm import CharLM, CharLMConfig
from lfjax.tasks import charlm as charlm_task


@pytest.mark.parametrize("name", ["enwik8", "text8"])
def test_missing_dataset_says_what_to_put_where(name, tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    chars.load(name, tmp_path)
  msg = str(e.value)
  assert str(tmp_path / name) in msg and f"{name}.zip" in msg
  assert "mattmahoney.net" in msg and "LFJAX_DATA" in msg


def test_unknown_dataset():
  with pytest.raises(ValueError, match=r"data.name: expected one of"):
    chars.load("wikitext", "/nonexistent")


def _fake_text8(tmp_path, text):
  with zipfile.ZipFile(tmp_path / "text8.zip", "w") as z:
    z.writestr("text8", text)


def test_text8_from_zip_split_and_vocabulary(tmp_path):
  rng = np.random.default_rng(0)
  text = "".join(rng.choice(list(" abcdefghijklmnopqrstuvwxyz"), 1000))
  _fake_text8(tmp_path, text)
  c = chars._paper_corpus("text8", tmp_path, size=1000, held_out=50)
  assert (tmp_path / "text8").exists()  # extracted once, then memory-mapped
  assert c.vocab_size == 27
  assert [len(c.splits[s]) for s in chars.SPLITS] == [900, 50, 50]
  assert c.decode(c.ids("test")) == text[950:]
  assert c.sha256 == hashlib.sha256(text.encode()).hexdigest()
  assert c.ids("train").max() <= 26
  np.testing.assert_array_equal(c.encode(" az"), [0, 1, 26])
  with pytest.raises(ValueError, match=r"text: text8 has only the"):
    c.encode("A")


def test_truncated_or_wrong_file(tmp_path):
  _fake_text8(tmp_path, "abc def")
  with pytest.raises(ValueError, match=r"text8: expected .* to hold "
                                       r"100,000,000 bytes, found 7"):
    chars.load("text8", tmp_path)
  bad = tmp_path / "other"
  bad.mkdir()
  (bad / "text8").write_bytes(b"Hello " * 10)
  with pytest.raises(ValueError, match=r"bytes outside ' a-z'"):
    chars._paper_corpus("text8", bad, size=60, held_out=5)


def test_embedded_corpus_is_deterministic(tmp_path):
  a = chars.load("pystdlib", tmp_path / "a")
  b = chars.load("pystdlib", tmp_path / "b")
  meta = lambda d: next(d.glob("pystdlib-*/meta.json")).read_text()
  assert meta(tmp_path / "a") == meta(tmp_path / "b")
  sizes = [len(a.splits[s]) for s in chars.SPLITS]
  assert sizes[0] > 10 * sizes[1] > 0 and sizes[2] > 0
  for s in chars.SPLITS:
    np.testing.assert_array_equal(a.splits[s][:1000], b.splits[s][:1000])
  assert "def " in a.decode(a.ids("valid", 0, 20_000))


def test_file_sha256_is_cached_until_the_file_changes(tmp_path):
  f = tmp_path / "enwik8"
  f.write_bytes(b"abc" * 1000)
  want = hashlib.sha256(b"abc" * 1000).hexdigest()
  assert chars.file_sha256(f) == want
  cache = tmp_path / "enwik8.sha256.json"
  saved = json.loads(cache.read_text())
  assert saved["sha256"] == want and saved["bytes"] == 3000
  # The cached value is what a second call returns (not hashed again) ...
  cache.write_text(json.dumps(dict(saved, sha256="cached")))
  assert chars.file_sha256(f) == "cached"
  # ... until the file's size or mtime changes.
  f.write_bytes(b"abd" * 1000)
  os.utime(f, ns=(saved["mtime_ns"] + 10**9,) * 2)
  assert chars.file_sha256(f) == hashlib.sha256(b"abd" * 1000).hexdigest()


def _stdlib_splits_by_hand():
  """{split: bytes} of pystdlib built here, not by lfjax: every .py file
  under this Python's stdlib folder in path order (compared part by part),
  except installed packages and the files the build or install writes
  (`_sysconfigdata*.py`, the top-level `config-X.Y-<platform>/` folder,
  top-level site/user customize hooks); a file goes to valid when the
  CRC-32 of its relative path is 0-4 mod 100, to test when 5-9, else to
  train; each is followed by two newlines."""
  root = sysconfig.get_paths()["stdlib"]
  rels = []
  for folder, _, files in os.walk(root):
    for name in files:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, name), root)
        rels.append(tuple(rel.split(os.sep)))
  out = {"train": [], "valid": [], "test": []}
  for parts in sorted(rels):
    if ("site-packages" in parts or "dist-packages" in parts
        or parts[-1].startswith("_sysconfigdata")
        or (len(parts) > 1 and parts[0].startswith("config-3."))
        or parts in (("sitecustomize.py",), ("usercustomize.py",))):
      continue
    bucket = zlib.crc32("/".join(parts).encode()) % 100
    split = "valid" if bucket < 5 else "test" if bucket < 10 else "train"
    with open(os.path.join(root, *parts), "rb") as f:
      out[split].append(f.read() + b"\n\n")
  return {s: b"".join(v) for s, v in out.items()}


def test_old_pystdlib_cache_is_rebuilt_without_generated_files(tmp_path,
                                                              capsys):
  version = f"{sys.version_info.major}.{sys.version_info.minor}"
  folder = tmp_path / f"pystdlib-{version}"
  folder.mkdir()
  # A cache as lfjax wrote it before the corpus had a format number:
  # complete and consistent by its own record, and stale.
  for s in chars.SPLITS:
    (folder / f"{s}.bin").write_bytes(b"old " + s.encode())
  (folder / "meta.json").write_text(json.dumps(
      {"python": version, "sha256": "0" * 64,
       "bytes": {s: 4 + len(s) for s in chars.SPLITS}}))
  c = chars.load("pystdlib", tmp_path)
  assert "rebuilding the corpus cache" in capsys.readouterr().err
  want = _stdlib_splits_by_hand()
  got = {s: bytes(c.splits[s]) for s in chars.SPLITS}
  for s in chars.SPLITS:
    assert got[s] == want[s], s
    assert (folder / f"{s}.bin").read_bytes() == want[s]
  meta = json.loads((folder / "meta.json").read_text())
  assert meta["format"] == chars.PYSTDLIB_FORMAT
  assert meta["bytes"] == {s: len(want[s]) for s in chars.SPLITS}
  digest = hashlib.sha256()
  for s in ("train", "valid", "test"):
    digest.update(f"{s} {len(want[s])}\n".encode() + want[s])
  assert c.sha256 == meta["sha256"] == digest.hexdigest()
  # No build variables, configure command line (CONFIG_ARGS, with the
  # prefix; empty on some builds) or install prefix in any split. The
  # conventional system prefixes are named by ordinary source text
  # (shebangs, docs), so only another prefix can be checked for.
  flags = sysconfig.get_config_var("CONFIG_ARGS") or ""
  for s in chars.SPLITS:
    assert b"build_time_vars = {" not in got[s]
    if flags:
      assert flags.encode() not in got[s]
    if sys.base_prefix not in ("/", "/usr", "/usr/local"):
      assert sys.base_prefix.encode() not in got[s]
  # Those files were there to leave out (on a pyenv build, the test split's
  # first file was _sysconfigdata__linux_x86_64-linux-gnu.py).
  stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
  assert meta["excluded"] == sorted(
      p.relative_to(stdlib).as_posix() for p in stdlib.rglob("*.py")
      if p.name.startswith("_sysconfigdata")
      or p.relative_to(stdlib).parts[0].startswith("config-3."))
  # A cache of this format is used as it is, quietly.
  assert bytes(chars.load("pystdlib", tmp_path).splits["test"]) == want["test"]
  assert capsys.readouterr().err == ""
  # Damaged bytes of the right size are found by the sha256 and rebuilt
  # (they were used, with the recorded sha256 reported for them).
  (folder / "test.bin").write_bytes(b"x" * len(want["test"]))
  assert bytes(chars.load("pystdlib", tmp_path).splits["test"]) == want["test"]
  assert "do not hash to the sha256 it records" in capsys.readouterr().err


def test_pystdlib_cache_of_another_stdlib_is_rebuilt(tmp_path, monkeypatch,
                                                      capsys):
  """Two installs of one X.Y share data_dir/pystdlib-X.Y: the second must
  not train on the first's corpus. A three-file standard library, then one
  file edited (a patch release)."""
  stdlib = tmp_path / "stdlib"
  (stdlib / "email").mkdir(parents=True)
  files = {"ast.py": b"x = 1\n", "email/utils.py": b"def f(): pass\n",
           "zipfile.py": b"import os\n"}
  for rel, text in files.items():
    (stdlib / rel).write_bytes(text)
  monkeypatch.setattr(chars.sysconfig, "get_paths",
                      lambda: {"stdlib": str(stdlib)})
  data = tmp_path / "data"

  def by_hand():  # the CRC-32 rule over the three files, in path order
    want = {s: b"" for s in chars.SPLITS}
    for rel in sorted(files):
      b = zlib.crc32(rel.encode()) % 100
      want["valid" if b < 5 else "test" if b < 10 else "train"] += (
          files[rel] + b"\n\n")
    return want

  got = chars.load("pystdlib", data)
  assert {s: bytes(got.splits[s]) for s in chars.SPLITS} == by_hand()
  first = got.sha256
  files["email/utils.py"] = b"def f(): return 1\n"
  (stdlib / "email/utils.py").write_bytes(files["email/utils.py"])
  capsys.readouterr()
  got = chars.load("pystdlib", data)
  assert "built from another standard library" in capsys.readouterr().err
  assert {s: bytes(got.splits[s]) for s in chars.SPLITS} == by_hand()
  assert got.sha256 != first


def _toy_corpus(n=500):
  data = np.arange(n, dtype=np.uint8) % 251
  return chars.CharCorpus("toy", 256, {"train": data}, np.arange(256,
                                                                 dtype=np.uint8))


def test_sampler_is_seeded_and_resumable():
  c = _toy_corpus()
  a = WindowSampler(c, "train", seq_len=16, batch_size=3, seed=4)
  batches = [next(a) for _ in range(5)]
  x, y = batches[0]
  assert x.shape == y.shape == (3, 16) and x.dtype == np.int32
  np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
  b = WindowSampler(c, "train", seq_len=16, batch_size=3, seed=4)
  b.restore({"index": 3})
  np.testing.assert_array_equal(next(b)[0], batches[3][0])
  other = WindowSampler(c, "train", seq_len=16, batch_size=3, seed=4,
                        stream=1)
  assert not np.array_equal(next(other)[0], batches[0][0])
  with pytest.raises(ValueError, match=r"seq_len: toy/train has 500 tokens"):
    WindowSampler(c, "train", seq_len=500, batch_size=1, seed=0)


@pytest.mark.parametrize("n,seq_len,step", [(100, 32, 8), (101, 32, 32),
                                             (10, 32, 4), (64, 16, 5)])
def test_eval_windows_score_every_character_once(n, seq_len, step):
  wins = charlm_task.eval_windows(n, seq_len, step)
  length = min(seq_len, n)
  scored = np.zeros(n, int)
  for i, (start, first) in enumerate(wins):
    assert 0 <= start and start + length <= n
    scored[start + first:start + length] += 1
    if i:  # at least seq_len - step characters of context
      assert first >= length - step
  np.testing.assert_array_equal(scored, 1)


def test_bpc_of_a_uniform_model_is_log2_vocab():
  """Zero weights give uniform predictions: exactly log2(V) bits each."""
  cfg = CharLMConfig(vocab_size=27, num_layers=1, num_heads=2,
                     hidden_size=8, head_dim=4, ffn_size=8, windows=(4,),
                     dilations=(1,), dilated_heads=0, rel_features=4)
  model = CharLM(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  model = nnx.merge(graphdef, jax.tree.map(np.zeros_like, state))
  ids = np.random.default_rng(0).integers(0, 27, 300)
  value, count = charlm_task.bpc(model, ids, seq_len=64, step=16, batch_size=3)
  assert count == 299
  assert abs(value - math.log2(27)) < 1e-5
