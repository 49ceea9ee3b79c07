"""Token store shard files: `.npy` arrays written atomically with their
sha256 and per-block digests, and read memory-mapped with each block
checked against its digest before its first use (lfjax.data.store's
format).

A reader checks each block (BLOCK bytes, 1 MiB; the manifest records the
size it was built with) of a shard file the first time it reads from it,
so a run reads no byte unchecked while the data work of its start does not
grow with the store: whole-file hashing would hash every shard a shuffled
first batch touches, gigabytes at the paper's size. `check_file` hashes a
whole file (lfjax.data.store.verify).
"""

import hashlib
import io
import os
import pathlib

import numpy as np

from lfjax import files

BLOCK, BLOCK_HEX = 1 << 20, 32  # bytes per block; hex digits per digest


class StoreError(ValueError):
  """A store that is damaged, incomplete or not a store; names the file."""


def save(path, arr):
  """Writes arr as .npy atomically; returns the file's sha256, its block
  digests (hex, BLOCK_HEX per block of BLOCK bytes) and its size."""
  buf = io.BytesIO()
  np.save(buf, arr, allow_pickle=False)
  data = buf.getbuffer()
  files.write_atomic(path, data)
  return (*digests(data), len(data))


def digests(data, block=None):
  """(sha256 of data, the BLAKE2b (16 bytes) of each of its blocks, hex,
  joined), in one pass over data. block: bytes per block (the manifest's
  block_bytes; BLOCK when building). The block digests are what a reader
  checks before it uses a block (ShardedArray)."""
  block = block or BLOCK
  whole, parts = hashlib.sha256(), []
  for i in range(0, len(data), block):
    piece = data[i:i + block]
    whole.update(piece)
    parts.append(hashlib.blake2b(piece, digest_size=16).hexdigest())
  return whole.hexdigest(), "".join(parts)


_CHECKED = set()  # (file, sha256) whose bytes this process has checked


def check_file(path, sha256, blocks=None, block=None):
  """StoreError naming the file unless its bytes hash to sha256 (and, when
  given, to the block digests); once per process and file."""
  key = (os.path.realpath(path), sha256)
  if key in _CHECKED:
    return
  try:
    data = np.memmap(path, np.uint8, "r")
  except FileNotFoundError:
    raise StoreError(f"{path}: missing shard of the token store; "
                     f"{_delete_hint(path)}") from None
  except ValueError:  # an empty file cannot be mapped
    data = b""
  got, got_blocks = digests(data, block)
  if got != sha256 or (blocks is not None and got_blocks != blocks):
    raise StoreError(f"{path}: damaged shard of the token store (sha256 "
                     f"{got[:12]}, manifest {sha256[:12]}); "
                     f"{_delete_hint(path)}")
  _CHECKED.add(key)


def _delete_hint(path):
  return (f"delete the store {pathlib.Path(path).parent} and build it "
          "again")


def check_size(path, size):
  """StoreError naming the file when it is missing or not `size` bytes."""
  try:
    st = os.stat(path)
  except FileNotFoundError:
    raise StoreError(f"{path}: missing shard of the token store; "
                     f"{_delete_hint(path)}") from None
  if st.st_size != size:
    raise StoreError(f"{path}: damaged shard of the token store "
                     f"({st.st_size} bytes, manifest {size}); "
                     f"{_delete_hint(path)}")


class _Shard:
  """One shard file memory-mapped: its values, and its blocks checked
  against the manifest's digests on first use (each block once per
  process; threads may check one twice, harmlessly)."""

  def __init__(self, path, n, size, blocks, block):
    check_size(path, size)
    self.path, self.blocks, self.block = path, blocks, block
    self.raw = np.memmap(path, np.uint8, "r")
    self.checked = np.zeros(-(-size // block), bool)
    self._check(0, min(size, block))  # the header's block, before parsing it
    with io.open(path, "rb") as f:
      fmt = np.lib.format
      read = {(1, 0): fmt.read_array_header_1_0,
              (2, 0): fmt.read_array_header_2_0}.get(fmt.read_magic(f))
      if read is None:
        raise StoreError(f"{path}: not an .npy file of version 1 or 2")
      shape, fortran, dtype = read(f)
      self.offset = f.tell()
    if shape != (n,) or fortran or dtype not in (np.uint16, np.int32):
      raise StoreError(f"{path}: {dtype} {shape}, manifest ({n},)")
    self.values = self.raw[self.offset:self.offset + n * dtype.itemsize].view(
        dtype)

  def _check(self, lo, hi):
    """Checks the blocks holding bytes [lo, hi) of the file."""
    block = self.block
    for b in range(lo // block, -(-hi // block)):
      if self.checked[b]:
        continue
      got = hashlib.blake2b(self.raw[b * block:(b + 1) * block],
                            digest_size=16).hexdigest()
      if got != self.blocks[b * BLOCK_HEX:(b + 1) * BLOCK_HEX]:
        end = min((b + 1) * block, len(self.raw)) - 1
        raise StoreError(f"{self.path}: damaged shard of the token store "
                         f"(bytes {b * block:,}-{end:,} do not match the "
                         f"manifest); {_delete_hint(self.path)}")
      self.checked[b] = True

  def __getitem__(self, index):
    start, stop, _ = index.indices(len(self.values))
    if stop > start:
      size = self.values.itemsize
      self._check(self.offset + start * size, self.offset + stop * size)
    return self.values[index]


class ShardedArray:
  """A split's tokens or chars across its shards, read-only, as one 1-D
  array of length len(a): a[i:j] (step 1) -> int32 np.ndarray [j - i],
  a[i] -> int, np.asarray(a) -> the whole of it. Shards are memory-mapped
  when first read; every block (block bytes) of a shard file is checked
  against the manifest's digest before its first use in this process, so
  a run reads no byte unchecked and hashes only what it reads. StoreError
  names a missing or damaged shard."""

  def __init__(self, folder, shards, what, block):
    self.folder, self.what = pathlib.Path(os.path.abspath(folder)), what
    self.block = block
    self.files = [s[what] for s in shards]
    self.blocks = [s["blocks"][what] for s in shards]
    self.bytes = [s["bytes"][what] for s in shards]
    self.sizes = np.asarray([s["n"] for s in shards], np.int64)
    self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
    self._maps = {}

  def __len__(self):
    return int(self.starts[-1])

  def __getstate__(self):  # picklable: maps are opened (and checked) again
    return dict(self.__dict__, _maps={})

  def shard(self, k):
    """Shard k (its values uint16 or int32 [sizes[k]], sliced with checks)."""
    if k not in self._maps:
      self._maps[k] = _Shard(self.folder / self.files[k], int(self.sizes[k]),
                             self.bytes[k], self.blocks[k], self.block)
    return self._maps[k]

  def __getitem__(self, index):
    if isinstance(index, slice):
      start, stop, step = index.indices(len(self))
      if step != 1:
        raise IndexError(f"ShardedArray: slices of step 1 only, got {step}")
      stop = max(stop, start)
      first = int(np.searchsorted(self.starts, start, "right")) - 1
      parts, k = [], max(first, 0)
      while start < stop:
        lo = start - self.starts[k]
        hi = min(stop, self.starts[k + 1]) - self.starts[k]
        parts.append(self.shard(k)[int(lo):int(hi)])
        start = int(self.starts[k + 1])
        k += 1
      return (np.concatenate(parts).astype(np.int32) if parts
              else np.zeros(0, np.int32))
    i = int(index) + (len(self) if int(index) < 0 else 0)
    if not 0 <= i < len(self):
      raise IndexError(f"index {index} out of range for {len(self)}")
    return int(self[i:i + 1][0])

  def __array__(self, dtype=None, copy=None):
    del copy
    a = self[:]
    return a if dtype is None else a.astype(dtype)
