"""The token store: a corpus tokenized once, in fixed-size npy shards.

  python -m lfjax.data build --sources DOCS --tokenizer TOK --out STORE
  python -m lfjax.data verify STORE

A store is a folder:
- `{split}-{k:05d}.tokens.npy`: the split's token stream (each document's
  tokens, then </s>), cut into shards of `shard_tokens` tokens (the last
  one shorter); uint16 when the vocabulary has at most 65,536 tokens, else
  int32. `{split}-{k:05d}.chars.npy`: int32, the characters each token owns
  (lfjax.data.text's accounting, for BPC; separators own none).
- `manifest.json`, written last (its presence means complete): the format,
  the tokenizer (tokenizer_sha256, ids), the build options, the sources'
  stat fingerprint and a sha256 of the documents read from each, per split
  the documents, tokens, characters and every shard's count, sha256, size
  and per-block digests (lfjax.data.shards: what a reader checks before it
  uses a block), `block_bytes`, and `sha256`, the store's content hash
  (tokenizer, options, every shard's sha256): what runs record as their
  data.
- while building: `progress.json` (the finished shards and, per split,
  where the next shard starts: a document index and a token offset in it)
  and `.build.lock` ({host, pid, started}, its mtime the heartbeat).

Why npy shards (not ArrayRecord): packing cuts the token stream at any
offset across documents; a memory-mapped array gives any [start, stop)
slice with no decoding, and processes reading the same shard share the page
cache. Fixed-size shards keep the build's memory constant and make it
resumable shard by shard.

The build streams: documents are read in order, grouped into chunks of
about 4 MB of text, tokenized in a process pool (spawned: the caller may
have imported JAX) with a bounded number of chunks in flight, and the
split's tokens are written as soon as a shard is full (atomically:
lfjax.files.write_atomic), then the progress. Both splits come from one
pass. A killed build resumes from its last finished shard, reading but not
tokenizing the documents before it. Concurrent builders of one store
(hosts on shared storage): the one that creates the lock builds, the
others wait for manifest.json and take over a lock whose heartbeat is older
than stale_s; shards are a function of the inputs alone, so two builders
that overlap write the same bytes.
"""

import datetime
import hashlib
import json
import os
import pathlib
import socket
import time

import numpy as np

from lfjax import files
from lfjax.data import build_lock
from lfjax.data import shards
from lfjax.data.shards import StoreError
from lfjax.data import sources as sources_lib
from lfjax.data import text
from lfjax.data import tokenizing

FORMAT, VERSION = "lfjax-token-store", 1
MANIFEST, PROGRESS = "manifest.json", "progress.json"
LOCK = build_lock.NAME
# The tokenizer's files that decide its tokens (the weights' files do not).
TOKENIZER_FILES = ("tokenizer", "vocab", "merges", "special_tokens",
                   "added_tokens")
_CHUNK_CHARS = 4 << 20  # text per tokenizing task
_POLL_S = (0.2, 2.0)  # a waiting builder's first and longest poll interval
_AFTER_SHARD = None  # tests: called (split, k) after shard k is recorded

def _framed(parts):
  """SHA-256 (hex) over byte strings, each preceded by its length (8 bytes,
  little-endian), so no two different sequences hash alike."""
  digest = hashlib.sha256()
  for p in parts:
    digest.update(len(p).to_bytes(8, "little") + p)
  return digest.hexdigest()


# Keys of a tokenizer's JSON files that do not decide its tokens here: an
# export rewrites model_max_length (lfjax.convert.copy_tokenizer), and the
# store tokenizes without truncation or padding (tokenizing.untruncated).
_NOT_TOKENS = {"tokenizer_config.json": ("model_max_length", "padding_side",
                                         "truncation_side",
                                         "model_input_names",
                                         "clean_up_tokenization_spaces"),
               "tokenizer.json": ("truncation", "padding")}


def tokenizer_sha256(tokenizer_dir):
  """_framed of (name, content) of tokenizer_dir's files whose names start
  with tokenizer / vocab / merges / special_tokens / added_tokens, sorted
  by name: what decides its tokens. A JSON file's content is its parsed
  value without the keys of _NOT_TOKENS, written canonically (sorted keys,
  no spaces), so an export that rewrites the config with another
  model_max_length or indentation is the same tokenizer; other files'
  content is their bytes."""
  parts = []
  for name in sorted(os.listdir(tokenizer_dir)):
    if name.startswith(TOKENIZER_FILES):
      raw = pathlib.Path(tokenizer_dir, name).read_bytes()
      if name.endswith(".json"):
        try:
          value = json.loads(raw)
        except ValueError:
          value = None  # not JSON after all: its bytes
        if isinstance(value, dict):
          for key in _NOT_TOKENS.get(name, ()):
            value.pop(key, None)
        if value is not None:
          raw = json.dumps(value, sort_keys=True,
                           separators=(",", ":")).encode()
      parts += [name.encode(), raw]
  return _framed(parts)


def _tokenizer_info(tokenizer_dir, tok):
  bos = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
  eos = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
  if bos is None or eos is None:
    raise ValueError(f"tokenizer: {tokenizer_dir!r} needs cls/bos and "
                     "sep/eos tokens to frame sequences")
  return {"sha256": tokenizer_sha256(tokenizer_dir), "vocab_size": len(tok),
          "bos_id": bos, "eos_id": eos, "pad_id": tok.pad_token_id,
          "mask_id": tok.mask_token_id,
          "special_ids": list(text.special_ids(tok))}


def _files(fingerprint):
  """The fingerprint without how each source was spelled (a relative or an
  absolute path to the same files is the same input)."""
  return [{k: v for k, v in f.items() if k != "source"} for f in fingerprint]


def _key_options(options):
  """The options that decide a store's content: not glob (the files it
  matched are in the fingerprint)."""
  return {k: v for k, v in options.items() if k != "glob"}


def _key(fingerprint, tokenizer_hash, options):
  """What a store is built from, as one hash (stats only, no contents): the
  files (names, sizes, mtimes), the tokenizer's files, the options."""
  return _framed([f"{FORMAT}-{VERSION}".encode(), json.dumps(
      {"files": _files(fingerprint), "tokenizer": tokenizer_hash,
       "options": _key_options(options)}, sort_keys=True).encode()])


def _content_sha256(tokenizer_hash, splits):
  """The store's content hash: the tokenizer's files and every shard's
  sha256, split by split; not the paths, glob or field name that found
  the documents (the same documents and tokenizer cut into shards of the
  same size hash alike)."""
  parts = [f"{FORMAT}-{VERSION}".encode(), tokenizer_hash.encode()]
  for s in text.SPLITS:
    parts.append(s.encode())
    for shard in splits[s]["shards"]:
      parts += [shard["sha256"]["tokens"].encode(),
                shard["sha256"]["chars"].encode()]
  return _framed(parts)


# Building --------------------------------------------------------------------


def _cores():
  if hasattr(os, "sched_getaffinity"):  # the cores this process may use
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def _now():
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")


def _check_folder(out):
  """Refuses to write into a folder that is not (the start of) a store."""
  ours = (MANIFEST, PROGRESS, LOCK) + tuple(f"{s}-" for s in text.SPLITS)
  others = [p.name for p in out.iterdir()
            if not (p.name.startswith(ours) or p.name.endswith(".tmp"))]
  if others:
    raise StoreError(f"out: {out} is a folder of other files "
                     f"({', '.join(sorted(others)[:3])}), not a token store; "
                     "give an empty or new folder")


def _check_manifest(out, key, fingerprint, tokenizer_hash, options):
  """Refuses a finished store at out built from other inputs, naming
  what differs; returns its manifest."""
  m = read_manifest(out)
  if m.get("key") == key:
    return m
  why = []
  if _files(m["sources"]["fingerprint"]) != _files(fingerprint):
    why.append("other files (names, sizes or modification times)")
  if m["tokenizer"]["sha256"] != tokenizer_hash:
    why.append("another tokenizer")
  why += [f"{k}={m['options'].get(k)!r} (here {v!r})"
          for k, v in _key_options(options).items()
          if m["options"].get(k) != v]
  raise StoreError(f"out: {out} already holds a store built from "
                   f"{', '.join(why) or 'other inputs'}; give another "
                   "folder, or delete it to build it again")


def _check_out(out, sources):
  """Refuses an out folder inside a source folder: the build would read its
  own files as documents."""
  inside = pathlib.Path(out).resolve()
  for src in sources:
    path = pathlib.Path(src).expanduser()
    if src != "pystdlib" and path.is_dir() and (
        inside == path.resolve() or path.resolve() in inside.parents):
      raise ValueError(f"out: {out} is inside the source folder {src}; the "
                       "build would read its own files as documents; give "
                       "a folder outside it")


def build(sources, tokenizer_dir, out, *, glob="*.txt", text_field="text",
          valid_fraction=0.01, max_documents=0, shard_tokens=1 << 24,
          workers=0, stale_s=600):
  """Builds (or finishes, or waits for) the store at `out`; returns out
  (pathlib.Path).

  sources: str or sequence of str (files, folders, "pystdlib");
  tokenizer_dir: a local fast tokenizer (text.load_tokenizer); glob: the
  documents of a folder; text_field: of record files; valid_fraction: the
  held-out share (text.split_of on each document's name); max_documents:
  0 = all, else the first N non-empty documents in order; shard_tokens:
  tokens per shard; workers: tokenizing processes (0: the machine's cores,
  1: this process); stale_s: a lock whose heartbeat is older is taken over.
  More than one worker spawns processes (JAX may be imported here, so no
  fork), which import the main module again: a script calling this needs
  the `if __name__ == "__main__":` guard, as any spawning program.

  Raises:
    FileNotFoundError: a missing source or tokenizer.
    ValueError: a bad argument (named), no documents, an empty split.
    StoreError: out holds a store of other inputs, or other files.
  """
  sources = [sources] if isinstance(sources, str) else [str(s) for s in
                                                         sources]
  if not sources:
    raise ValueError("sources: expected files, folders or 'pystdlib', got "
                     "none")
  for name, v, ok, want in (
      ("valid_fraction", valid_fraction, 0 < valid_fraction < 1,
       "a number in (0, 1)"),
      ("max_documents", max_documents, max_documents >= 0, "an integer >= 0"),
      ("shard_tokens", shard_tokens, shard_tokens >= 1, "an integer >= 1"),
      ("workers", workers, workers >= 0, "an integer >= 0"),
      ("stale_s", stale_s, stale_s > 0, "a number > 0")):
    if not ok:
      raise ValueError(f"{name}: expected {want}, got {v!r}")
  tok = text.load_tokenizer(tokenizer_dir)
  info = _tokenizer_info(tokenizer_dir, tok)
  options = {"glob": glob, "text_field": text_field,
             "valid_fraction": valid_fraction,
             "max_documents": max_documents, "shard_tokens": shard_tokens}
  _check_out(out, sources)
  fingerprint = sources_lib.fingerprint(sources, glob=glob)
  key = _key(fingerprint, info["sha256"], options)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  lock, told, wait = build_lock.BuildLock(out), False, _POLL_S[0]
  while not (out / MANIFEST).exists():
    _check_folder(out)
    if lock.acquire() or (build_lock.is_stale(lock.path, stale_s)
                          and lock.take_over(stale_s)):
      try:
        if not (out / MANIFEST).exists():
          _build(sources, out, tok, info, options,
                 fingerprint, key, workers or _cores(), lock)
      finally:
        lock.release()
      break
    if not told:
      other = build_lock.read_lock(lock.path)
      print(f"waiting for {out}: being built by {other.get('host')} pid "
            f"{other.get('pid')} since {other.get('started')} (a lock whose "
            f"heartbeat is {stale_s} s old is taken over)", flush=True)
      told = True
    time.sleep(wait)
    wait = min(wait * 2, _POLL_S[1])
  m = _check_manifest(out, key, fingerprint, info["sha256"], options)
  _check_sizes(out, m)  # a cut or lost shard, at once
  return out


def _build(sources, out, tok, info, options, fingerprint, key, workers,
           lock):
  shard_tokens = options["shard_tokens"]
  dtype = np.uint16 if info["vocab_size"] <= 1 << 16 else np.int32
  try:
    progress = json.loads((out / PROGRESS).read_text())
  except FileNotFoundError:
    progress = None
  if progress is not None and progress.get("key") != key:
    print(f"{out}: a partial build of other inputs; starting over",
          flush=True)
    for s in text.SPLITS:  # its shards, which the new build may not reach
      for f in out.glob(f"{s}-*.npy"):
        f.unlink()
    progress = None
  if progress is None:
    progress = {"key": key, "splits": {s: {"shards": [], "next": [0, 0]}
                                       for s in text.SPLITS}}
  splits = progress["splits"]
  done = {s: len(splits[s]["shards"]) for s in text.SPLITS}
  started = time.time()
  print(f"building the token store {out} from {len(fingerprint)} files "
        f"({workers} tokenizing process{'es' if workers > 1 else ''})"
        + (f", resuming after {done['train']} train and {done['valid']} "
           "valid shards" if any(done.values()) else ""), flush=True)
  pending = {s: [] for s in text.SPLITS}  # [doc, offset, tokens, chars]
  waiting = {s: 0 for s in text.SPLITS}  # tokens in pending[s]
  last_doc = {s: -1 for s in text.SPLITS}
  counts = {s: 0 for s in text.SPLITS}
  per_source = []

  def cut(s, n):
    """Writes the split's next shard from its first n pending tokens."""
    toks, chs, need = [], [], n
    while need:
      piece = pending[s][0]
      take = min(need, len(piece[2]))
      toks.append(piece[2][:take])
      chs.append(piece[3][:take])
      need -= take
      waiting[s] -= take
      if take == len(piece[2]):
        pending[s].pop(0)
      else:
        pending[s][0] = [piece[0], piece[1] + take, piece[2][take:],
                         piece[3][take:]]
    k = len(splits[s]["shards"])
    name = f"{s}-{k:05d}"
    tokens, owned = np.concatenate(toks).astype(dtype), np.concatenate(chs)
    shard = {"tokens": f"{name}.tokens.npy", "chars": f"{name}.chars.npy",
             "n": int(n), "chars_sum": int(owned.sum(dtype=np.int64))}
    saved = {"tokens": shards.save(out / shard["tokens"], tokens),
             "chars": shards.save(out / shard["chars"], owned)}
    for i, field in enumerate(("sha256", "blocks", "bytes")):
      shard[field] = {what: saved[what][i] for what in saved}
    splits[s]["shards"].append(shard)
    splits[s]["next"] = ([pending[s][0][0], pending[s][0][1]] if pending[s]
                         else [last_doc[s] + 1, 0])
    files.write_atomic(out / PROGRESS, json.dumps(progress))
    lock.beat()
    if _AFTER_SHARD is not None:
      _AFTER_SHARD(s, k)

  def chunks():
    """(meta [(doc, split, skip)], texts) of the documents to tokenize;
    every document is read (hashed, counted), only those past the
    progress tokenized."""
    i, meta, texts, size = 0, [], [], 0
    for src in sources:
      if options["max_documents"] and i >= options["max_documents"]:
        break
      digest, n_src, n_bytes = hashlib.sha256(), 0, 0
      for name, doc in sources_lib.iter_documents(
          [src], glob=options["glob"], text_field=options["text_field"]):
        if options["max_documents"] and i >= options["max_documents"]:
          break
        raw = doc.encode("utf-8", "replace")
        for p in (name.encode(), raw):
          digest.update(len(p).to_bytes(8, "little") + p)
        n_src, n_bytes = n_src + 1, n_bytes + len(raw)
        s = text.split_of(name, options["valid_fraction"])
        counts[s] += 1
        nxt = splits[s]["next"]
        if i >= nxt[0]:
          meta.append((i, s, nxt[1] if i == nxt[0] else 0))
          texts.append(doc)
          size += len(doc)
          if size >= _CHUNK_CHARS:
            yield meta, texts
            meta, texts, size = [], [], 0
        i += 1
        lock.beat(every_s=1.0)  # a resume may read long before a chunk
      per_source.append({"source": src, "documents": n_src,
                         "bytes": n_bytes, "sha256": digest.hexdigest()})
    if texts:
      yield meta, texts

  pool = tokenizing.Pool(workers, tok.backend_tokenizer, info["eos_id"])
  try:
    for (meta, _), (toks, chs, lengths) in pool.map(chunks()):
      ends = np.cumsum(lengths)
      for (i, s, skip), end, n in zip(meta, ends, lengths):
        begin = end - n + skip
        # Copies: a view would keep the whole chunk alive until the split's
        # shard fills (a small valid split: every chunk, all along).
        pending[s].append([i, skip, toks[begin:end].copy(),
                           chs[begin:end].copy()])
        waiting[s] += end - begin
        last_doc[s] = i
        while waiting[s] >= shard_tokens:
          cut(s, shard_tokens)
      lock.beat()
  finally:
    pool.close()
  if not sum(counts.values()):
    raise ValueError(f"sources: no non-empty documents in {sources}")
  for s in text.SPLITS:
    if not counts[s]:
      raise ValueError(
          f"valid_fraction: {options['valid_fraction']} leaves the {s} split "
          f"of {sum(counts.values())} documents empty; give more documents "
          "or change it")
    if waiting[s]:
      cut(s, waiting[s])
  manifest = {
      "format": FORMAT, "version": VERSION, "key": key,
      "block_bytes": shards.BLOCK,
      "tokenizer": info, "options": options,
      "sources": {"fingerprint": fingerprint, "documents": per_source},
      "splits": {s: {"documents": counts[s],
                     "tokens": sum(x["n"] for x in splits[s]["shards"]),
                     "chars": sum(x["chars_sum"] for x in
                                  splits[s]["shards"]),
                     "dtype": np.dtype(dtype).name,
                     "shards": splits[s]["shards"]} for s in text.SPLITS},
      "created": _now(),
      # Who finished it, in how long, from how many shards already built.
      "built_by": {"host": socket.gethostname(), "pid": os.getpid(),
                   "seconds": round(time.time() - started, 3),
                   "resumed_after_shards": sum(done.values())},
      "sha256": _content_sha256(info["sha256"],
                                {s: splits[s] for s in text.SPLITS})}
  files.write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
  (out / PROGRESS).unlink(missing_ok=True)
  for f in out.glob("*.tmp"):  # left by writers killed mid-write
    f.unlink(missing_ok=True)


def for_sources(sources, tokenizer_dir, cache_dir, **options):
  """The store of `sources` under cache_dir: pathlib.Path cache_dir / key,
  the key 16 hex digits of a hash of the format, the sources' stat
  fingerprint (names, sizes, mtimes), the tokenizer files' sha256 and the
  options (build's keyword arguments: glob, text_field, valid_fraction,
  max_documents, shard_tokens decide the content; workers, stale_s do
  not). Built if missing, else reused without reading a document or
  loading the tokenizer. Raises as build."""
  sources = [sources] if isinstance(sources, str) else [str(s) for s in
                                                         sources]
  opts = {"glob": options.get("glob", "*.txt"),
          "text_field": options.get("text_field", "text"),
          "valid_fraction": options.get("valid_fraction", 0.01),
          "max_documents": options.get("max_documents", 0),
          "shard_tokens": options.get("shard_tokens", 1 << 24)}
  if not os.path.isdir(tokenizer_dir):
    text.load_tokenizer(tokenizer_dir)  # its message
  key = _key(sources_lib.fingerprint(sources, glob=opts["glob"]),
             tokenizer_sha256(tokenizer_dir), opts)
  path = pathlib.Path(cache_dir) / key[:16]
  if (path / MANIFEST).exists() and read_manifest(path).get("key") == key:
    return path
  return build(sources, tokenizer_dir, path, **options)


# Reading ---------------------------------------------------------------------


def read_manifest(path):
  """The manifest (dict) of the store at path; StoreError when it has none
  (not a store, or its build has not finished) or another format."""
  if not pathlib.Path(path).is_dir():
    raise StoreError(f"{path}: not a token store (no such folder)" if not
                     pathlib.Path(path).exists() else
                     f"{path}: not a token store (a file, not a folder)")
  f = pathlib.Path(path) / MANIFEST
  try:
    m = json.loads(f.read_text())
  except FileNotFoundError:
    raise StoreError(f"{path}: not a token store, or its build has not "
                     f"finished (no {MANIFEST}); build it with `python -m "
                     "lfjax.data build`") from None
  except ValueError as e:
    raise StoreError(f"{f}: not JSON ({e})") from None
  if m.get("format") != FORMAT or m.get("version") != VERSION:
    raise StoreError(f"{f}: format {m.get('format')!r} version "
                     f"{m.get('version')!r}, expected {FORMAT!r} "
                     f"version {VERSION}; delete {path} and build it again")
  return m


def verify(path):
  """Checks every shard of the store at path against the manifest (sha256,
  shape, dtype, characters) and the manifest's content hash; returns
  {"sha256", "splits": {split: {"documents", "tokens", "chars",
  "shards"}}}.

  Raises:
    StoreError: naming the first missing or damaged shard, or a manifest
      whose hash does not match its shards.
  """
  m = read_manifest(path)
  folder = pathlib.Path(path)
  for s in text.SPLITS:
    for shard in m["splits"][s]["shards"]:
      for what, dtype in (("tokens", m["splits"][s]["dtype"]),
                          ("chars", "int32")):
        f = folder / shard[what]
        shards.check_file(f, shard["sha256"][what], shard["blocks"][what],
                          m["block_bytes"])
        arr = np.load(f, mmap_mode="r", allow_pickle=False)
        if arr.shape != (shard["n"],) or arr.dtype != np.dtype(dtype):
          raise StoreError(f"{f}: {arr.dtype} {arr.shape}, manifest "
                           f"{dtype} ({shard['n']},)")
        if what == "chars" and int(arr.sum(dtype=np.int64)) != shard[
            "chars_sum"]:
          raise StoreError(f"{f}: characters do not sum to the manifest's")
  want = _content_sha256(m["tokenizer"]["sha256"], m["splits"])
  if want != m["sha256"]:
    raise StoreError(f"{folder / MANIFEST}: sha256 {m['sha256'][:12]} does "
                     f"not match its shards ({want[:12]})")
  return {"sha256": m["sha256"], "splits": {
      s: {k: m["splits"][s][k] for k in ("documents", "tokens", "chars")}
      | {"shards": len(m["splits"][s]["shards"])} for s in text.SPLITS}}


_verify = verify


def _check_sizes(path, m):
  """Every shard of manifest m is at path with its size: cheap (a stat per
  file), so a missing or cut shard fails at once, not at its first read.
  Raises StoreError naming it."""
  for s in text.SPLITS:
    for shard in m["splits"][s]["shards"]:
      for what in ("tokens", "chars"):
        shards.check_size(pathlib.Path(path) / shard[what],
                          shard["bytes"][what])


def open(path, *, verify=False):  # pylint: disable=redefined-builtin
  """The store at path as a text.TokenCorpus: splits = {split: (tokens,
  chars)} as ShardedArrays, ids from the manifest, sha256 the store's.
  verify: check every shard now (else each on its first read).

  Raises:
    StoreError: no manifest (not a store, or unfinished), another format,
      or (verify) a missing or damaged shard, named.
  """
  m = read_manifest(path)
  if verify:
    _verify(path)
  _check_sizes(path, m)
  t = m["tokenizer"]
  splits = {s: tuple(shards.ShardedArray(path, m["splits"][s]["shards"],
                                         what, m["block_bytes"])
                     for what in ("tokens", "chars"))
            for s in text.SPLITS}
  return text.TokenCorpus(splits, t["vocab_size"], t["bos_id"], t["eos_id"],
                          t["pad_id"], t["mask_id"], tuple(t["special_ids"]),
                          m["sha256"])
