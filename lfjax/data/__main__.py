"""Builds or checks a token store (lfjax.data.store).

  python -m lfjax.data build --sources DOCS [DOCS ...] --tokenizer DIR \\
      --out STORE [--glob --text_field --valid_fraction --max_documents \\
      --shard_tokens --workers]
  python -m lfjax.data verify STORE

`build` prints the documents, tokens, shards and throughput; run again, it
finishes a killed build or says the store is there. `verify` checks every
shard's sha256 against the manifest. Errors are one line (`error: ...`,
exit status 2 for flags, 1 for data).
"""

import os
import pathlib
import socket
import sys
import time

from lfjax import cli


def _summary(m):
  s = m["splits"]
  return (f"{s['train']['documents'] + s['valid']['documents']:,} documents "
          f"({s['train']['documents']:,} train, {s['valid']['documents']:,} "
          f"valid), {s['train']['tokens'] + s['valid']['tokens']:,} tokens "
          f"({s['train']['tokens']:,} train, {s['valid']['tokens']:,} valid) "
          f"in {len(s['train']['shards']) + len(s['valid']['shards'])} "
          f"shards; sha256 {m['sha256']}")


def main(argv=None):
  """`python -m lfjax.data build|verify ...`; argv excludes the program
  name. Raises cli.UsageError for bad flags, store.StoreError for a
  damaged store."""
  p = cli.ArgumentParser(prog="python -m lfjax.data",
                         description=__doc__.strip().splitlines()[0])
  sub = p.add_subparsers(dest="command", required=True)
  b = sub.add_parser("build", help="tokenize documents into a store")
  b.add_argument("--sources", nargs="+", required=True,
                 help="one or more, space-separated: text files, folders "
                 "(their files matching --glob), .jsonl / .jsonl.gz files "
                 "(field --text_field), .parquet files (column "
                 "--text_field), datasets folders saved with save_to_disk "
                 "(DIR, or DIR/SPLIT of a DatasetDict), or 'pystdlib'")
  b.add_argument("--tokenizer", required=True,
                 help="a local fast tokenizer folder")
  b.add_argument("--out", required=True, help="the store's folder")
  b.add_argument("--glob", default="*.txt",
                 help="the documents of a folder")
  b.add_argument("--text_field", default="text",
                 help="the text field of record files")
  b.add_argument("--valid_fraction", type=float, default=0.01,
                 help="held-out share of the documents (by name)")
  b.add_argument("--max_documents", type=int, default=0,
                 help="0 = all, else the first N")
  b.add_argument("--shard_tokens", type=int, default=1 << 24,
                 help="tokens per shard")
  b.add_argument("--workers", type=int, default=0,
                 help="tokenizing processes; 0 = this machine's cores")
  v = sub.add_parser("verify", help="check every shard of a store")
  v.add_argument("store", help="the store's folder")
  for parser in (b, v):  # subparsers raise usage errors like the main one
    parser.error = p.error
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  from lfjax.data import store  # after the flags: it imports jax
  if args.command == "verify":
    t0 = time.time()
    store.verify(args.store)
    print(f"{args.store}: ok, {_summary(store.read_manifest(args.store))} "
          f"(checked in {time.time() - t0:.1f} s)")
    return
  cli.check_flag("--valid_fraction", args.valid_fraction,
                 lambda x: 0 < x < 1, "a number in (0, 1)")
  cli.at_least("--max_documents", args.max_documents, 0, " (0 = all)")
  cli.at_least("--shard_tokens", args.shard_tokens, 1)
  cli.at_least("--workers", args.workers, 0, " (0 = all cores)")
  if not pathlib.Path(args.tokenizer).is_dir():
    raise cli.UsageError(f"--tokenizer: expected a local tokenizer folder, "
                         f"got {args.tokenizer!r}: no such directory")
  existed = (pathlib.Path(args.out) / store.MANIFEST).exists()
  t0 = time.time()
  out = store.build(args.sources, args.tokenizer, args.out, glob=args.glob,
                    text_field=args.text_field,
                    valid_fraction=args.valid_fraction,
                    max_documents=args.max_documents,
                    shard_tokens=args.shard_tokens, workers=args.workers)
  dt = time.time() - t0
  m = store.read_manifest(out)
  if existed:
    print(f"{out}: already built: {_summary(m)} (`python -m lfjax.data "
          f"verify {out}` checks every shard)")
    return
  by = m.get("built_by", {})
  if (by.get("host"), by.get("pid")) != (socket.gethostname(), os.getpid()):
    print(f"{out}: built by {by.get('host')} pid {by.get('pid')} while this "
          f"one waited: {_summary(m)}")
    return
  if by.get("resumed_after_shards"):
    print(f"{out}: {_summary(m)}; resumed after "
          f"{by['resumed_after_shards']} shards, finished in {dt:.1f} s")
    return
  tokens = sum(m["splits"][s]["tokens"] for s in m["splits"])
  mb = sum(d["bytes"] for d in m["sources"]["documents"]) / 1e6
  print(f"{out}: {_summary(m)}; {mb:,.1f} MB of text in {dt:.1f} s "
        f"({tokens / dt:,.0f} tokens/s, {mb / dt:,.2f} MB/s)")


if __name__ == "__main__":
  sys.exit(cli.run(main))
