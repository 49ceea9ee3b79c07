"""Writing a file so that no reader ever sees part of it."""

import os
import pathlib


def write_atomic(path, data):
  """Writes data (str: UTF-8, or bytes) to path through a temporary file
  named for this process, flushed to disk, then renamed over path: a reader
  (or a process writing the same file at once, as two first uses of a
  corpus cache do) sees the old file or the new one, never a part, and a
  memory map of the old one stays valid. Run folders (config.json, the
  checkpoint records) and data caches use it."""
  path = pathlib.Path(path)
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  try:
    with tmp.open("wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
