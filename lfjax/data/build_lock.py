"""A build lock in a folder that several processes (hosts on shared
storage) may build at once: `.build.lock`, created with O_CREAT | O_EXCL
(one process wins) holding {host, pid, started, token}; its mtime is the
holder's heartbeat. A lock whose heartbeat is older than stale_s, or whose
holder was a process of this host that is gone, is taken over: renamed to
a unique name first (one process wins the rename), then created again
with O_EXCL (the others wait). lfjax.data.store uses it.
"""

import datetime
import json
import os
import pathlib
import socket
import time
import uuid

NAME = ".build.lock"


class BuildLock:
  """folder/.build.lock for this process (the module doc)."""

  def __init__(self, folder):
    self.path = pathlib.Path(folder) / NAME
    self.token = uuid.uuid4().hex  # whose lock a file is
    started = datetime.datetime.now(datetime.timezone.utc)
    self.info = {"host": socket.gethostname(), "pid": os.getpid(),
                 "started": started.isoformat(timespec="seconds"),
                 "token": self.token}
    self.last = 0.0

  def acquire(self):
    """True: this process now holds the lock; False: another one does."""
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(self.info, f)
    return True

  def take_over(self, stale_s):
    """Moves a stale lock aside (rename: one process wins), then competes
    for a new one; False: another process got it."""
    aside = self.path.with_name(f"{NAME}.{self.token}.stale")
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False
    if not is_stale(aside, stale_s):
      # Another process took it over between our look and the rename:
      # give its fresh lock back (link: only if none was made since).
      try:
        os.link(aside, self.path)
      except FileExistsError:
        pass
      aside.unlink(missing_ok=True)
      return False
    aside.unlink(missing_ok=True)
    return self.acquire()

  def beat(self, every_s=0.0):
    """Refreshes the heartbeat (at most once in every_s seconds)."""
    now = time.time()
    if now - self.last < every_s:
      return
    self.last = now
    try:
      os.utime(self.path)
    except FileNotFoundError:  # taken over while this builder stalled
      pass

  def release(self):
    """Removes the lock if it is still this process's."""
    if read_lock(self.path).get("token") == self.token:
      self.path.unlink(missing_ok=True)


def read_lock(path):
  """The lock's {host, pid, started, token}; {} when it is gone or being
  written."""
  try:
    return json.loads(pathlib.Path(path).read_text())
  except (FileNotFoundError, ValueError):
    return {}


def is_stale(path, stale_s):
  """A lock whose heartbeat is older than stale_s, or whose builder was a
  process of this host that no longer runs."""
  try:
    age = time.time() - os.stat(path).st_mtime
  except FileNotFoundError:
    return False
  if age > stale_s:
    return True
  info = read_lock(path)
  if info.get("host") != socket.gethostname() or not isinstance(
      info.get("pid"), int) or info["pid"] == os.getpid():
    return False
  try:
    os.kill(info["pid"], 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # another user's: it runs
    pass
  return False
