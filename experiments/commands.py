"""lfjax's commands as child processes, and the scripts' command-line
plumbing.

Each run is exactly the command a user would type (printed before it
starts), in its own process so its peak resident memory and CPU time can
be read from the kernel (os.wait4). The child dies with the script
(SIGTERM, Ctrl-C, and on Linux also kill -9 of the script via
PR_SET_PDEATHSIG, set by a small Python program that then becomes the
command: see die_with_parent). main_guard, command_line and absolute are the
scripts' own command line: one `error:` line, the command that reruns a
script, paths against the user's folder.

Light at import (no jax): the child-process test imports it in a fresh
interpreter.
"""

import os
import pathlib
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple

REPO = pathlib.Path(__file__).resolve().parents[1]


class Error(Exception):
  """A failed lfjax command or a run folder that cannot be reused as asked;
  main_guard prints it as one `error:` line (plus a log tail)."""


class Usage(NamedTuple):
  """What the kernel reports for one finished child process."""
  code: int  # exit status (negative: killed by that signal)
  wall_s: float
  peak_rss_gib: float  # ru_maxrss
  cpu_s: float  # ru_utime + ru_stime
  load_average: tuple  # 1-minute load average at start and at end


# Processes ------------------------------------------------------------------

# Runs in place of a command on Linux (die_with_parent). PR_SET_PDEATHSIG
# (1, linux/prctl.h) survives execve of a binary that is not set-user-ID, so
# the command keeps it. Python ignores SIGPIPE and SIGXFSZ at start-up and an
# ignored signal stays ignored across execve: both go back to the default, as
# Popen's restore_signals does for the command it starts itself.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
  os.kill(os.getpid(), signal.SIGTERM)
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def die_with_parent(cmd, parent=None):
  """The argv that runs cmd (an argv list) so that it receives SIGTERM when
  the process that started it dies (even by SIGKILL). On Linux: a Python
  program that sets PR_SET_PDEATHSIG and then replaces itself with cmd
  (execvp: the same pid, cmd's own argv in ps); elsewhere cmd as it is.
  `parent` is the starting process's pid (default this process): a child
  whose parent died before it set the signal is terminated at once.

  Not a subprocess preexec_fn: that makes CPython run the at-fork hooks in
  this process, and JAX's hook warns that os.fork() is incompatible with its
  threads."""
  if not sys.platform.startswith("linux"):
    return list(cmd)
  parent = os.getpid() if parent is None else parent
  # -I -S: the program needs only the standard library (no site, no
  # PYTHON* variables, no cwd on sys.path); cmd still gets the environment.
  return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(parent),
          *cmd]


def _raise_terminated(signum, frame):
  raise SystemExit(128 + signum)


def _stop(proc, grace_s=30.0):
  """Terminates proc (SIGTERM, SIGKILL after grace_s) and reaps it;
  returns (status, rusage) as os.wait4 does, or (None, None) if it was
  already reaped."""
  try:
    proc.terminate()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
      pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
      if pid:
        return status, usage
      time.sleep(0.05)
    proc.kill()
    _, status, usage = os.wait4(proc.pid, 0)
    return status, usage
  except ChildProcessError:
    return None, None


def shown(args):
  """The command line a user types for `python -m <args>` from their own
  folder (the subprocess runs in the repository root)."""
  text = "python -m " + shlex.join(args)
  if pathlib.Path.cwd().resolve() != REPO:
    text = f"cd {shlex.quote(str(REPO))} && {text}"
  return text


def run(args, log_path, on_exit=None):
  """Runs `python -m <args>` in the repository root, output appended to
  log_path; returns its Usage.

  on_exit(usage) is called once the child has ended, also when this
  process is interrupted (KeyboardInterrupt, or SIGTERM, turned into
  SystemExit(143) while the child runs): the child is then terminated
  first, so it never outlives the script, and the exception propagates.

  Raises:
    Error with the log path and the log's last lines when the command
    exits with a non-zero status.
  """
  cmd = [sys.executable, "-m", *args]
  print("$", shown(args), flush=True)
  log_path = pathlib.Path(log_path)
  log_path.parent.mkdir(parents=True, exist_ok=True)
  load0 = os.getloadavg()[0]
  start = time.perf_counter()
  main = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
  status = usage = result = code = None
  try:
    with open(log_path, "a") as log:
      proc = subprocess.Popen(die_with_parent(cmd), stdout=log,
                              stderr=subprocess.STDOUT, cwd=REPO)
      try:
        _, status, usage = os.wait4(proc.pid, 0)
      finally:
        if status is None:  # interrupted: the child must not outlive us
          status, usage = _stop(proc)
        code = None if status is None else os.waitstatus_to_exitcode(status)
        proc.returncode = code  # reaped here, not by Popen
        if usage is not None:
          # ru_maxrss is in KiB on Linux.
          result = Usage(code, time.perf_counter() - start,
                         usage.ru_maxrss / 2**20,
                         usage.ru_utime + usage.ru_stime,
                         (load0, os.getloadavg()[0]))
          if on_exit is not None:
            on_exit(result)
  finally:
    if main:  # None: a handler not set from Python; restore the default
      signal.signal(signal.SIGTERM,
                    signal.SIG_DFL if previous is None else previous)
  if code:
    raise Error(f"`{shown(args)}` exited with status {code}; its log "
                f"{log_path} ends:\n" + log_tail(log_path))
  return result


def log_tail(path, lines=15):
  text = pathlib.Path(path).read_text(errors="replace").splitlines()
  return "\n".join("  " + l for l in text[-lines:])


def main_guard(main):
  """Calls main(); an Error prints `error: ...` and exits 1, Ctrl-C prints
  `interrupted` and exits 130 (the child trainer was stopped by run)."""
  try:
    main()
  except Error as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1) from None
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    raise SystemExit(130) from None


def command_line(script, argv):
  """The command that reruns `script` with argv, typed from the user's
  folder ('python experiments/x.py ...' from the repository root)."""
  cwd = pathlib.Path.cwd().resolve()
  script = pathlib.Path(script).resolve()
  if cwd == REPO:
    return f"python {script.relative_to(REPO)} {shlex.join(argv)}".strip()
  return (f"cd {shlex.quote(str(cwd))} && python "
          f"{shlex.quote(os.path.relpath(script, cwd))} "
          f"{shlex.join(argv)}").strip()


def absolute(path):
  """path made absolute against the user's folder (before any change of
  directory), or None."""
  return None if path is None else pathlib.Path(path).absolute()


def folder_arg(parser, flag, text):
  """The absolute folder `flag` names, created if missing; parser.error (one
  line, exit 2) for an empty name, a file, or a folder that cannot be made
  or written, before any run starts."""
  if not str(text).strip():
    parser.error(f"{flag}: expected a folder, got {str(text)!r}")
  path = absolute(text)
  if path.exists() and not path.is_dir():
    parser.error(f"{flag}: expected a folder, got the file {path}")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    parser.error(f"{flag}: cannot create the folder {path} ({e.strerror})")
  try:  # os.access says yes to root even on /proc or a read-only mount
    tempfile.TemporaryFile(dir=path).close()
  except OSError as e:
    parser.error(f"{flag}: cannot write in the folder {path} ({e.strerror})")
  return path


def out_arg(parser, flag, text, default):
  """The absolute results file `flag` names (default when not given), its
  folder created; parser.error for a folder or an unwritable place, so a
  long run does not fail only when it writes its table."""
  path = absolute(text) if text else pathlib.Path(default)
  if path.is_dir():
    parser.error(f"{flag}: expected a results file (.md), got the folder "
                 f"{path}")
  folder_arg(parser, f"{flag} (its folder)", path.parent)
  if path.exists():
    try:
      open(path, "a").close()  # appends nothing: the file stays as it is
    except OSError as e:
      parser.error(f"{flag}: cannot write {path} ({e.strerror})")
  return path
