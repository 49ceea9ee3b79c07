"""The token store (lfjax.data.store): contents against the documents read
and tokenized directly, resume after a failure and after SIGKILL,
concurrent builders, locks, damaged shards, the pool, reuse, the CLI.

Expected streams come from the files read with pathlib and split with
text.split_of, tokenized by text.tokenize (the accounting
test_mlm.test_character_accounting_by_hand checks by hand); hashes from
hashlib over the files on disk.
"""

import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import optional

transformers = optional.need("transformers")

from lfjax.data import shards  # noqa: E402
from lfjax.data import store  # noqa: E402
from lfjax.data import text  # noqa: E402
from lfjax.data import tokenizing  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
VF = 0.25  # valid_fraction: both splits have documents and several shards
WORDS = ["def", "class", "return", "import", "self", "value", "(", ")",
         ":", "\n", "    ", "for", "in", "if", "else", "é", "data", "λx"]


def write_docs(folder, n, seed=0):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    (folder / f"doc{i:02d}.txt").write_text(
        " ".join(rng.choice(WORDS, int(rng.integers(20, 150)))),
        encoding="utf-8")
  return folder


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok")
  rng = np.random.default_rng(1)
  texts = [" ".join(rng.choice(WORDS, 200)) for _ in range(50)]
  text.train_tokenizer(texts, path, vocab_size=300)
  return path


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
  return write_docs(tmp_path_factory.mktemp("d") / "docs", 30)


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch):
  monkeypatch.setattr(shards, "_CHECKED", set())  # as in a new process


def expected(tok_dir, folder, max_documents=0):
  """{split: (tokens, chars)} of the folder's files, read directly."""
  tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
  files = sorted(folder.glob("*.txt"))[:max_documents or None]
  named = [(f"{folder.name}/{f.name}", f.read_text(encoding="utf-8"))
           for f in files]
  return {s: text.tokenize([t for n, t in named if text.split_of(n, VF) == s],
                           tok, tok.sep_token_id) for s in text.SPLITS}


def build(tok_dir, docs, out, **kw):
  kw = dict(dict(valid_fraction=VF, shard_tokens=97, workers=1), **kw)
  return store.build([str(docs)], str(tok_dir), out, **kw)


def shard_bytes(out):
  return {p.name: p.read_bytes() for p in sorted(pathlib.Path(out).iterdir())
          if p.suffix == ".npy"}


def manifest(out):
  m = json.loads((pathlib.Path(out) / store.MANIFEST).read_text())
  m.pop("created")
  m.pop("built_by")  # who finished it, when and how: not the store
  return m


def test_store_holds_the_tokenized_documents_across_shards(tok_dir, docs,
                                                           tmp_path):
  out = build(tok_dir, docs, tmp_path / "s")
  want = expected(tok_dir, docs)
  corpus = store.open(out)
  m = manifest(out)
  names = [f"{docs.name}/{f.name}" for f in sorted(docs.glob("*.txt"))]
  for s in text.SPLITS:
    tokens, chars = corpus.splits[s]
    np.testing.assert_array_equal(np.asarray(tokens), want[s][0])
    np.testing.assert_array_equal(np.asarray(chars), want[s][1])
    # Slices across shard boundaries, single items.
    np.testing.assert_array_equal(tokens[90:300], want[s][0][90:300])
    assert tokens[-1] == want[s][0][-1] == corpus.eos_id
    assert tokens[100] == want[s][0][100]
    assert tokens[50:40].shape == (0,) and tokens[5:9].dtype == np.int32
    shards = m["splits"][s]["shards"]
    assert len(shards) == math.ceil(len(want[s][0]) / 97) > 2
    assert [x["n"] for x in shards[:-1]] == [97] * (len(shards) - 1)
    assert np.load(out / shards[0]["tokens"]).dtype == np.uint16
    assert m["splits"][s]["documents"] == sum(
        text.split_of(n, VF) == s for n in names)
    assert m["splits"][s]["chars"] == int(want[s][1].sum())
    for x in shards:
      for what in ("tokens", "chars"):
        assert (hashlib.sha256((out / x[what]).read_bytes()).hexdigest()
                == x["sha256"][what])
  assert m["tokenizer"]["sha256"] == store.tokenizer_sha256(tok_dir)
  assert corpus.sha256 == m["sha256"]
  assert not (out / store.LOCK).exists() and not (out / store.PROGRESS
                                                  ).exists()
  assert store.verify(out)["splits"]["train"]["tokens"] == len(
      want["train"][0])
  # max_documents: the first N documents in order.
  few = build(tok_dir, docs, tmp_path / "few", max_documents=7)
  want = expected(tok_dir, docs, max_documents=7)
  for s in text.SPLITS:
    np.testing.assert_array_equal(np.asarray(store.open(few).splits[s][0]),
                                  want[s][0])


def test_a_tokenizer_json_that_truncates_or_pads_is_ignored(
    tok_dir, docs, tmp_path, monkeypatch):
  """sentence-transformers save tokenizer.json with truncation (128 or 512
  tokens) and some with padding; the store must hold every token of every
  document, as the same tokenizer without those settings gives."""
  tokenizers = optional.need("tokenizers")
  cut = tmp_path / "tok"
  shutil.copytree(tok_dir, cut)
  backend = tokenizers.Tokenizer.from_file(str(cut / "tokenizer.json"))
  backend.enable_truncation(max_length=8)
  backend.enable_padding(pad_id=1, pad_token="<pad>")
  backend.save(str(cut / "tokenizer.json"))
  want = expected(tok_dir, docs)  # the folder without those settings
  monkeypatch.setattr(store, "_CHUNK_CHARS", 2000)  # the pool starts
  for workers in (1, 2):
    out = build(cut, docs, tmp_path / f"s{workers}", workers=workers)
    corpus = store.open(out)
    # Documents of 20 to 150 words: far more than 8 tokens each.
    assert len(want["train"][0]) > 9 * manifest(out)["splits"]["train"][
        "documents"]
    for s in text.SPLITS:
      np.testing.assert_array_equal(np.asarray(corpus.splits[s][0]),
                                    want[s][0])
      np.testing.assert_array_equal(np.asarray(corpus.splits[s][1]),
                                    want[s][1])


@pytest.mark.parametrize("vocab,dtype", [(1 << 16, np.uint16),
                                         ((1 << 16) + 1, np.int32)])
def test_token_dtype_follows_the_vocabulary(tok_dir, docs, tmp_path,
                                            monkeypatch, vocab, dtype):
  info = store._tokenizer_info
  monkeypatch.setattr(store, "_tokenizer_info",
                      lambda d, t: dict(info(d, t), vocab_size=vocab))
  out = build(tok_dir, docs, tmp_path / "s", shard_tokens=1000)
  m = manifest(out)
  assert m["splits"]["train"]["dtype"] == np.dtype(dtype).name
  assert np.load(out / m["splits"]["train"]["shards"][0]["tokens"]
                 ).dtype == dtype
  got = store.open(out).splits["train"][0]
  np.testing.assert_array_equal(np.asarray(got),
                                expected(tok_dir, docs)["train"][0])


class Stop(Exception):
  pass


def fail_at_train_shard_20(split, k):
  """store._AFTER_SHARD for a build that dies after train shard 20."""
  if split == "train" and k == 20:
    raise Stop()


def test_a_failed_build_resumes_from_its_last_shard(tok_dir, docs, tmp_path,
                                                    monkeypatch):
  straight = build(tok_dir, docs, tmp_path / "straight")

  monkeypatch.setattr(store, "_AFTER_SHARD", fail_at_train_shard_20)
  out = tmp_path / "killed"
  with pytest.raises(Stop):
    build(tok_dir, docs, out)
  assert not (out / store.MANIFEST).exists()
  assert not (out / store.LOCK).exists()  # released on the error
  progress = json.loads((out / store.PROGRESS).read_text())
  assert len(progress["splits"]["train"]["shards"]) == 21
  first_doc = progress["splits"]["train"]["next"][0]
  assert first_doc > 0
  monkeypatch.setattr(store, "_AFTER_SHARD", None)
  seen = []
  real = tokenizing.encode
  monkeypatch.setattr(tokenizing, "encode",
                      lambda b, texts, sep: seen.extend(texts) or real(
                          b, texts, sep))
  build(tok_dir, docs, out)
  assert shard_bytes(out) == shard_bytes(straight)
  assert manifest(out) == manifest(straight)
  # The documents before the resume point were read but not tokenized.
  files = sorted(docs.glob("*.txt"))
  skipped = [f.read_text(encoding="utf-8") for i, f in enumerate(files)
             if i < min(x["next"][0] for x in progress["splits"].values())]
  assert skipped and not set(skipped) & set(seen)


def test_a_partial_build_of_other_options_starts_over(tok_dir, docs,
                                                     tmp_path, monkeypatch,
                                                     capsys):
  straight = build(tok_dir, docs, tmp_path / "straight", shard_tokens=500)

  monkeypatch.setattr(store, "_AFTER_SHARD", fail_at_train_shard_20)
  out = tmp_path / "s"
  with pytest.raises(Stop):
    build(tok_dir, docs, out)  # shards of 97
  monkeypatch.setattr(store, "_AFTER_SHARD", None)
  build(tok_dir, docs, out, shard_tokens=500)
  assert "a partial build of other inputs" in capsys.readouterr().out
  assert shard_bytes(out) == shard_bytes(straight)  # no shard of 97 left
  assert manifest(out) == manifest(straight)


def test_a_sigkilled_build_resumes(tok_dir, docs, tmp_path):
  straight = build(tok_dir, docs, tmp_path / "straight")
  out = tmp_path / "killed"
  code = (
      "import os, signal, sys\n"
      "from lfjax.data import store\n"
      "store._AFTER_SHARD = lambda s, k: (os.kill(os.getpid(), "
      "signal.SIGKILL) if (s, k) == ('train', 12) else None)\n"
      f"store.build([{str(docs)!r}], {str(tok_dir)!r}, {str(out)!r}, "
      f"valid_fraction={VF}, shard_tokens=97, workers=1)\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == -signal.SIGKILL, r.stderr
  assert (out / store.LOCK).exists() and not (out / store.MANIFEST).exists()
  assert len(json.loads((out / store.PROGRESS).read_text())["splits"][
      "train"]["shards"]) == 13
  # The lock's process is gone (this host): taken over at once.
  t0 = time.time()
  build(tok_dir, docs, out)
  assert time.time() - t0 < 60
  assert shard_bytes(out) == shard_bytes(straight)
  assert manifest(out) == manifest(straight)


def test_two_concurrent_builders_leave_one_consistent_store(tok_dir, docs,
                                                            tmp_path):
  straight = build(tok_dir, docs, tmp_path / "straight")
  out = tmp_path / "shared"
  ctx = multiprocessing.get_context("spawn")
  procs = [ctx.Process(target=store.build,
                       args=([str(docs)], str(tok_dir), str(out)),
                       kwargs=dict(valid_fraction=VF, shard_tokens=97,
                                   workers=1)) for _ in range(2)]
  for p in procs:
    p.start()
  for p in procs:
    p.join(300)
  assert [p.exitcode for p in procs] == [0, 0]
  store.verify(out)
  assert shard_bytes(out) == shard_bytes(straight)
  assert manifest(out) == manifest(straight)
  assert not [p.name for p in out.iterdir() if p.name.startswith(
      (store.LOCK, store.PROGRESS)) or p.name.endswith(".tmp")]


def test_a_stale_lock_is_taken_over_and_a_live_one_waited_for(
    tok_dir, docs, tmp_path, capsys):
  out = tmp_path / "s"
  out.mkdir()
  lock = out / store.LOCK
  lock.write_text(json.dumps({"host": "elsewhere", "pid": 1,
                              "started": "then"}))
  old = time.time() - 1000
  os.utime(lock, (old, old))
  build(tok_dir, docs, out, stale_s=600)
  assert (out / store.MANIFEST).exists() and not lock.exists()
  assert "waiting" not in capsys.readouterr().out
  # A fresh lock of another host: wait (saying so once) until it is stale.
  out2 = tmp_path / "s2"
  out2.mkdir()
  (out2 / store.LOCK).write_text(json.dumps(
      {"host": "elsewhere", "pid": 1, "started": "now"}))
  t0 = time.time()
  build(tok_dir, docs, out2, stale_s=1.5)
  assert time.time() - t0 >= 1.5
  said = capsys.readouterr().out
  assert said.count("waiting for") == 1 and "elsewhere pid 1" in said
  assert shard_bytes(out2) == shard_bytes(out)


def test_a_damaged_or_missing_shard_is_named(tok_dir, docs, tmp_path):
  out = build(tok_dir, docs, tmp_path / "s")
  m = manifest(out)
  bad = out / m["splits"]["train"]["shards"][3]["tokens"]
  raw = bytearray(bad.read_bytes())
  raw[-1] ^= 1  # a token's low bit
  bad.write_bytes(bytes(raw))
  corpus = store.open(out)  # lazy: nothing read yet
  tokens = corpus.splits["train"][0]
  np.testing.assert_array_equal(tokens[:97 * 3],
                                expected(tok_dir, docs)["train"][0][:97 * 3])
  with pytest.raises(store.StoreError, match=f"{bad}: damaged shard .*; "
                     f"delete the store {out} and build it again"):
    tokens[97 * 3:97 * 3 + 5]
  with pytest.raises(store.StoreError, match=f"{bad}: damaged shard"):
    store.verify(out)
  with pytest.raises(store.StoreError, match=f"{bad}: damaged shard"):
    store.open(out, verify=True)
  gone = out / m["splits"]["valid"]["shards"][1]["chars"]
  gone.unlink()
  with pytest.raises(store.StoreError, match=f"{gone}: missing shard"):
    store.open(out)  # at once: every shard's size is checked on opening
  bad.write_bytes(bytes(raw[:-1] + bytes([raw[-1] ^ 1])))  # repaired
  with pytest.raises(store.StoreError, match=f"{gone}: missing shard"):
    store.verify(out)
  with pytest.raises(store.StoreError, match="no manifest.json"):
    store.open(tmp_path)


def test_a_reader_checks_exactly_the_blocks_it_reads(tok_dir, docs,
                                                    tmp_path, monkeypatch):
  """Blocks of 64 bytes: a read checks the header's block and the blocks
  holding its values (offsets from the .npy header read with numpy's own
  format reader), nothing else; a damaged block elsewhere is only named
  when read; a truncated file is named on first use."""
  monkeypatch.setattr(shards, "BLOCK", 64)
  out = build(tok_dir, docs, tmp_path / "s", shard_tokens=500)
  m = manifest(out)
  assert m["block_bytes"] == 64
  shard = m["splits"]["train"]["shards"][0]
  path = out / shard["tokens"]
  with open(path, "rb") as f:
    np.lib.format.read_array_header_1_0(f) if np.lib.format.read_magic(
        f) == (1, 0) else np.lib.format.read_array_header_2_0(f)
    offset = f.tell()
  item = np.load(path, mmap_mode="r").dtype.itemsize
  size = path.stat().st_size
  raw = bytearray(path.read_bytes())
  last = size - 1  # damage the last value's block
  raw[last] ^= 1
  path.write_bytes(bytes(raw))
  tokens = store.open(out).splits["train"][0]
  want = expected(tok_dir, docs)["train"][0]
  np.testing.assert_array_equal(tokens[100:180], want[100:180])
  lo, hi = offset + 100 * item, offset + 180 * item
  read = set(range(lo // 64, -(-hi // 64))) | {0}
  checked = set(np.flatnonzero(tokens.shard(0).checked))
  assert checked == read
  assert (last // 64) not in checked
  with pytest.raises(store.StoreError,
                     match=f"{path}: damaged shard .*bytes {last // 64 * 64:,}"):
    tokens[490:500]
  other = out / m["splits"]["train"]["shards"][1]["chars"]
  other.write_bytes(other.read_bytes()[:-4])  # truncated
  with pytest.raises(store.StoreError,
                     match=f"{other}: damaged shard .* bytes, manifest"):
    store.open(out).splits["train"][1][500:501]


def test_the_same_inputs_spelled_otherwise_are_the_same_store(
    tok_dir, docs, tmp_path, monkeypatch, capsys):
  """A source given by a relative or an absolute path, and a glob that no
  folder uses, change neither the store's key nor its sha256; a killed
  build resumes under the other spelling, and leaves no temporary file."""
  monkeypatch.chdir(docs.parent)
  straight = build(tok_dir, docs, tmp_path / "straight")
  monkeypatch.setattr(store, "_AFTER_SHARD", fail_at_train_shard_20)
  out = tmp_path / "killed"
  with pytest.raises(Stop):
    store.build([docs.name], str(tok_dir), out, valid_fraction=VF,
                shard_tokens=97, workers=1)
  monkeypatch.setattr(store, "_AFTER_SHARD", None)
  (out / "progress.json.999.tmp").write_text("{")  # a writer killed mid-way
  capsys.readouterr()
  build(tok_dir, docs.resolve(), out)
  said = capsys.readouterr().out
  assert "resuming after 21 train and" in said, said
  assert "starting over" not in said
  assert manifest(out)["sha256"] == manifest(straight)["sha256"]
  assert not list(out.glob("*.tmp"))
  # Files given directly: glob plays no part.
  given = [str(f) for f in sorted(docs.glob("*.txt"))]
  a = store.build(given, str(tok_dir), tmp_path / "a", glob="*.txt",
                  valid_fraction=VF, workers=1)
  b = store.build(given, str(tok_dir), tmp_path / "b", glob="*.py",
                  valid_fraction=VF, workers=1)
  assert manifest(a)["key"] == manifest(b)["key"]
  assert manifest(a)["sha256"] == manifest(b)["sha256"]


def test_the_tokenizer_hash_ignores_what_does_not_decide_tokens(
    tok_dir, docs, tmp_path):
  """An export's copy of the tokenizer (lfjax.convert.copy_tokenizer:
  tokenizer_config.json rewritten with another model_max_length and
  indentation) is the same tokenizer for a store; other merges are not.
  A store whose shard was cut is refused by a new build at once."""
  from lfjax import convert
  copy = tmp_path / "export"
  copy.mkdir()
  convert.copy_tokenizer(str(tok_dir), str(copy), max_length=4099)
  cfg = json.loads((copy / "tokenizer_config.json").read_text())
  assert cfg["model_max_length"] == 4099  # the copy did change the file
  assert ((copy / "tokenizer_config.json").read_bytes()
          != (tok_dir / "tokenizer_config.json").read_bytes())
  assert store.tokenizer_sha256(copy) == store.tokenizer_sha256(tok_dir)
  merges = (copy / "merges.txt").read_text().splitlines()
  (copy / "merges.txt").write_text("\n".join(merges[:-1]) + "\n")
  assert store.tokenizer_sha256(copy) != store.tokenizer_sha256(tok_dir)
  out = build(tok_dir, docs, tmp_path / "s")
  cut = out / manifest(out)["splits"]["train"]["shards"][2]["chars"]
  cut.write_bytes(cut.read_bytes()[:-4])
  with pytest.raises(store.StoreError, match=f"{cut}: damaged shard .*"
                     f"delete the store {out}"):
    build(tok_dir, docs, out)


def test_a_pool_of_two_builds_the_same_store(tok_dir, docs, tmp_path,
                                             monkeypatch):
  one = build(tok_dir, docs, tmp_path / "one")
  monkeypatch.setattr(store, "_CHUNK_CHARS", 2000)  # several chunks
  pools = []
  close = tokenizing.Pool.close
  monkeypatch.setattr(tokenizing.Pool, "close",
                      lambda self: pools.append(self.pool) or close(self))
  two = build(tok_dir, docs, tmp_path / "two", workers=2)
  assert pools and pools[0] is not None  # the spawned pool ran
  assert shard_bytes(two) == shard_bytes(one)
  assert manifest(two) == manifest(one)


def test_for_sources_reuses_and_rebuilds_on_a_changed_file(
    tok_dir, docs, tmp_path, monkeypatch):
  folder = tmp_path / "docs"
  shutil.copytree(docs, folder)
  cache = tmp_path / "cache"
  opts = dict(valid_fraction=VF, shard_tokens=97, workers=1)
  first = store.for_sources([str(folder)], str(tok_dir), cache, **opts)

  def no_reading(*a, **k):
    raise AssertionError("a document was read")
  monkeypatch.setattr(store.sources_lib, "iter_documents", no_reading)
  assert store.for_sources([str(folder)], str(tok_dir), cache,
                           **opts) == first
  monkeypatch.undo()
  f = folder / "doc03.txt"
  f.write_text(f.read_text(encoding="utf-8") + " else", encoding="utf-8")
  grown = store.for_sources([str(folder)], str(tok_dir), cache, **opts)
  assert grown != first and (first / store.MANIFEST).exists()
  want = expected(tok_dir, folder)
  corpus = store.open(grown)
  for s in text.SPLITS:
    np.testing.assert_array_equal(np.asarray(corpus.splits[s][0]),
                                  want[s][0])
  st = f.stat()  # the same size, another time
  os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  touched = store.for_sources([str(folder)], str(tok_dir), cache, **opts)
  assert touched not in (first, grown)


def test_refusals(tok_dir, docs, tmp_path):
  before = shard_bytes(docs), sorted(p.name for p in docs.iterdir())
  # An out inside a source folder would read its own files as documents.
  for out in (docs, docs / "store"):
    with pytest.raises(ValueError, match=f"out: {out} is inside the source "
                       f"folder {docs}"):
      build(tok_dir, docs, out)
  assert (shard_bytes(docs), sorted(p.name for p in docs.iterdir())) == before
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("a user's file")
  with pytest.raises(store.StoreError, match="is a folder of other files"):
    build(tok_dir, docs, mine)
  assert [p.name for p in mine.iterdir()] == ["notes.txt"]
  out = build(tok_dir, docs, tmp_path / "s")
  with pytest.raises(store.StoreError, match="already holds a store built "
                     r"from shard_tokens=97 \(here 50\); give another "
                     "folder, or delete it"):
    build(tok_dir, docs, out, shard_tokens=50)
  with pytest.raises(store.StoreError, match="no such folder"):
    store.open(tmp_path / "nope")
  with pytest.raises(store.StoreError, match="a file, not a folder"):
    store.open(mine / "notes.txt")
  few = tmp_path / "few"
  write_docs(few, 3)
  names = [f"few/{f.name}" for f in sorted(few.iterdir())]
  assert all(text.split_of(n, 0.001) == "train" for n in names)
  with pytest.raises(ValueError, match="valid_fraction: 0.001 leaves the "
                     "valid split of 3 documents empty"):
    build(tok_dir, few, tmp_path / "e", valid_fraction=0.001)
  with pytest.raises(ValueError, match="shard_tokens: expected an integer "
                     ">= 1, got 0"):
    build(tok_dir, docs, tmp_path / "z", shard_tokens=0)


def cli(*args):
  return subprocess.run([sys.executable, "-m", "lfjax.data", *map(str, args)],
                        cwd=ROOT, capture_output=True, text=True,
                        timeout=300)


def test_cli_builds_and_verifies(tok_dir, docs, tmp_path):
  out = tmp_path / "s"
  r = cli("build", "--sources", docs, "--tokenizer", tok_dir, "--out", out,
          "--valid_fraction", VF, "--shard_tokens", 97, "--workers", 1)
  assert r.returncode == 0, r.stderr
  want = expected(tok_dir, docs)
  n = len(want["train"][0]) + len(want["valid"][0])
  assert "30 documents" in r.stdout and f"{n:,} tokens" in r.stdout
  assert "tokens/s" in r.stdout
  np.testing.assert_array_equal(np.asarray(store.open(out).splits["valid"][0]),
                                want["valid"][0])
  r = cli("verify", out)
  assert r.returncode == 0 and f"{out}: ok" in r.stdout, r.stderr
  r = cli("build", "--sources", docs, "--tokenizer", tmp_path / "none",
          "--out", tmp_path / "t")
  assert r.returncode == 2
  assert r.stderr.splitlines()[0] == (
      f"error: --tokenizer: expected a local tokenizer folder, got "
      f"'{tmp_path / 'none'}': no such directory")
  assert "Traceback" not in r.stderr
  shard = out / manifest(out)["splits"]["train"]["shards"][0]["chars"]
  shard.write_bytes(shard.read_bytes()[:-4])
  r = cli("verify", out)
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert r.stderr.splitlines()[0].startswith(f"error: {shard}: damaged")


def test_an_mlm_run_reads_a_built_store_or_builds_one(tok_dir, docs,
                                                      tmp_path):
  from lfjax.tasks import mlm
  from lfjax.tasks import mlm_defaults
  c = mlm_defaults.base_config()
  c.init_from = str(tmp_path / "model")  # not read: data.tokenizer is given
  c.data.tokenizer = str(tok_dir)
  c.data.valid_fraction = VF
  c.data.workers = 1
  c.data.sources = (str(docs),)
  c.data.cache_dir = str(tmp_path / "cache")
  from_sources = mlm.load_corpus(c)
  [built] = (tmp_path / "cache").iterdir()
  assert mlm.corpus_name(c) == str(docs)
  out = build(tok_dir, docs, tmp_path / "store", shard_tokens=1 << 24)
  c.data.sources, c.data.store = (), str(out)
  mlm_defaults.validate(c)
  from_store = mlm.load_corpus(c)
  assert mlm.corpus_name(c) == str(out)
  # The same options (shard_tokens 1 << 24, the run's default): one store.
  assert from_store.sha256 == from_sources.sha256 == manifest(built)["sha256"]
  want = expected(tok_dir, docs)
  for s in text.SPLITS:
    np.testing.assert_array_equal(np.asarray(from_store.splits[s][0]),
                                  want[s][0])
  assert from_store.mask_id == transformers.AutoTokenizer.from_pretrained(
      str(tok_dir)).mask_token_id
  c.data.sources = (str(docs),)
  with pytest.raises(ValueError, match="data.store: expected '' when "
                     "data.sources"):
    mlm_defaults.validate(c)
  with pytest.raises(ValueError, match="not both"):
    mlm.load_corpus(c)
  c.data.sources = ()
  other = tmp_path / "other_tok"
  shutil.copytree(tok_dir, other)
  vocab = json.loads((other / "vocab.json").read_text())
  vocab["zzz"] = len(vocab)
  (other / "vocab.json").write_text(json.dumps(vocab))
  c.data.tokenizer = str(other)
  with pytest.raises(ValueError, match="built with another tokenizer"):
    mlm.load_corpus(c)
