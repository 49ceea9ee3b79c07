"""What the commands (lfjax.train, .evaluate, .sample, .export, .convert,
.make_tiny) share: one flag style, and one short message for errors a user
causes.

Flags are spelled with underscores everywhere (absl's style, which
lfjax.train needs for its `--config.x.y=` overrides), and only so.

`run(main)` turns a user's error into `error: <message>` on stderr and exit
status 2 (command line or config) or 1 (data, files, checkpoints, a
diverged run); `--verbose` or LFJAX_VERBOSE=1 keeps the traceback. Which
exceptions are the user's (anything else is a bug and keeps its traceback):
- UsageError: flags, config overrides and config values (ConfigError, a
  UsageError that library callers catch as ValueError, for a config value
  found wrong only when the run starts, e.g. a mesh of more devices than
  JAX sees);
- file errors (FileNotFoundError, NotADirectoryError, IsADirectoryError,
  PermissionError, FileExistsError): a path the user gave or a run folder;
- ValueError, TypeError, KeyError and FloatingPointError raised by lfjax's
  own code (which raises them with a message naming the field), and any
  exception class lfjax defines (e.g. a checkpoint error). The same types
  raised deep inside jax, numpy or orbax are not the user's.
"""

import argparse
import difflib
import os
import pathlib
import re
import sys
import textwrap

from absl import flags
from ml_collections import config_dict

VERBOSE_HELP = ("Show the full traceback of an error (also: LFJAX_VERBOSE=1)"
                ".")
_PACKAGE = pathlib.Path(__file__).resolve().parent
_FILE_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError,
                PermissionError, FileExistsError)
_OWN_ERRORS = (ValueError, TypeError, KeyError, FloatingPointError)


class UsageError(Exception):
  """A bad command line or config: exit status 2."""


class ConfigError(UsageError, ValueError):
  """A config value that cannot work, found by library code (lfjax.parallel:
  the mesh against the devices JAX sees): exit status 2 like any usage
  error, and a ValueError to callers that are not the command line. The
  message names the field (`config.mesh.seq: ...`)."""


def verbose(argv=()):
  return "--verbose" in argv or os.environ.get(
      "LFJAX_VERBOSE", "") not in ("", "0")


def _raised_in_lfjax(exc):
  tb, last = exc.__traceback__, None
  while tb is not None:
    last, tb = tb, tb.tb_next
  if last is None:
    return False
  return pathlib.Path(last.tb_frame.f_code.co_filename).resolve(
  ).is_relative_to(_PACKAGE)


def exit_code(exc):
  """2 or 1 for an error the user caused, None for a bug."""
  if isinstance(exc, (UsageError, flags.Error)):
    return 2
  if isinstance(exc, _FILE_ERRORS):
    return 1
  if type(exc).__module__.startswith("lfjax."):
    return 1
  if isinstance(exc, _OWN_ERRORS) and _raised_in_lfjax(exc):
    return 1
  return None


def message(exc):
  if isinstance(exc, KeyError) and len(exc.args) == 1:
    return str(exc.args[0])
  if isinstance(exc, OSError) and exc.filename and exc.strerror:
    return f"{exc.filename}: {exc.strerror}"
  return str(exc)


def run(main, argv=None):
  """Calls main(argv) and returns the process exit status.

  argv: the arguments after the program name (default sys.argv[1:]).
  A user's error (see the module docstring) prints `error: <message>` on
  stderr instead of a traceback unless --verbose or LFJAX_VERBOSE=1.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  if not flags.FLAGS.is_parsed():
    # absl logging (orbax logs through it) otherwise prefixes its first
    # message with a warning about unparsed flags; ours are parsed apart.
    flags.FLAGS.mark_as_parsed()
  try:
    main(argv)
    return 0
  except KeyboardInterrupt:
    if verbose(argv):
      raise
    print("interrupted", file=sys.stderr)
    return 130
  except SystemExit as e:  # argparse's --help, or an explicit exit
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except Exception as e:  # pylint: disable=broad-except
    code = exit_code(e)
    if code is None or verbose(argv):
      raise
    print(f"error: {message(e)}", file=sys.stderr)
    print("(--verbose or LFJAX_VERBOSE=1 shows the traceback)",
          file=sys.stderr)
    return code


def check_flag(flag, value, ok, expected):
  """Raises UsageError `flag: expected <expected>, got <value>` unless value
  is None (not given) or ok(value). Numeric flags are checked with this
  rather than `value or default`, which would take 0 for "not given"."""
  if value is not None and not ok(value):
    raise UsageError(f"{flag}: expected {expected}, got {value}")


def at_least(flag, value, lo, note=""):
  """check_flag for a number >= lo (NaN fails)."""
  check_flag(flag, value, lambda v: v >= lo,
             f"{'an integer' if isinstance(lo, int) else 'a number'} >= {lo}"
             f"{note}")


# absl commands (lfjax.train, lfjax.evaluate, lfjax.sample) ------------------


def parse_absl(argv, define, *, prog, doc, required=()):
  """Parses argv into a fresh FlagValues (so main() can run more than once in
  a process, as tests do); returns it.

  define(flag_values, argv) defines the command's flags. --help prints doc
  and every flag with its default.

  Raises:
    UsageError: an unknown or bad flag, a missing required one, an unknown
      or mistyped --config.a.b override, or a config file that fails to load.
  """
  fv = flags.FlagValues()
  define(fv, [prog] + list(argv))
  flags.DEFINE_boolean("verbose", False, VERBOSE_HELP, flag_values=fv)
  if {"--help", "-h", "--helpfull", "--helpshort", "-?"} & set(argv):
    print(f"{doc.strip()}\n\nflags:\n{_absl_help(fv)}")
    raise SystemExit(0)
  if "config" in fv:
    _check_config_file(argv)
    _check_repeated_overrides(argv)
  try:
    rest = fv([prog] + list(argv))
  except flags.Error as e:
    # absl suggests close names itself; renamed flags are ours to name.
    hints = [h for h in (renamed_flag(a, ()) for a in argv) if h]
    raise UsageError("; ".join([_clean_flag_error(str(e))] + hints[:1])) \
        from None
  except (KeyError, AttributeError) as e:
    # A --config.a.b naming no field; ml_collections raises these.
    text = _override_error(fv, argv)
    if text is None:
      raise
    raise UsageError(text) from e
  if len(rest) > 1:
    raise UsageError(f"unexpected arguments {rest[1:]}; flags are "
                     f"--name=value (see --help)")
  for name in required:
    if fv[name].value is None:
      raise UsageError(f"--{name}: required (see --help)")
  return fv


def _absl_help(fv):
  """Every flag with its help and default, in definition order."""
  lines = []
  for f in {id(f): f for f in fv._flags().values()}.values():  # pylint: disable=protected-access
    if f.help.startswith("Deprecated"):
      continue
    default = f.default_as_str if f.default is not None else "none"
    text = f.help if "(default:" in f.help else (
        f"{f.help} (default: {default})")
    text = textwrap.fill(text, 76,
                         initial_indent="    ", subsequent_indent="    ")
    lines.append(f"  --{f.name}\n{text}")
  return "\n".join(lines)


def _config_arg(argv, name="config"):
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
    if a == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _check_config_file(argv):
  arg = _config_arg(argv)
  if arg is not None and not os.path.isfile(arg.split(":", 1)[0]):
    raise UsageError(f"--config: no file {arg.split(':', 1)[0]!r} (expected "
                     "a config file such as configs/charlm_default.py:tiny)")


def _check_repeated_overrides(argv):
  """A --config.a.b given twice is refused: ml_collections replaces a scalar
  with the last value but joins tuples ('(1,1)' then '(2,2)' gives
  (1, 1, 2, 2)), so a repeat is either redundant or silently wrong."""
  seen = set()
  for a in argv:
    m = re.match(r"^--?(?:no)?config\.([^=]+)", a)
    if not m:
      continue
    if m.group(1) in seen:
      raise UsageError(f"--config.{m.group(1)}: given more than once; give "
                       "it once (repeated tuple values are joined, not "
                       "replaced)")
    seen.add(m.group(1))


def _clean_flag_error(text):
  # A config file whose get_config raised: ml_collections pastes the whole
  # traceback into the message; its last line is the cause.
  if "Error whilst parsing config file" in text:
    last = [l for l in text.splitlines() if l.strip()][-1].strip()
    return "--config: " + re.sub(r"^\w+(Error|Exception): ", "", last)
  # absl's boolean parser raises with a tuple as its message.
  text = re.sub(r"\('Non-boolean argument to boolean flag', '(.*)'\)",
                r"expected true or false, got '\1'", text)
  return text.replace("\\n", " ")


def _override_error(fv, argv):
  """The message for the first --config.a.b that names no field, or None."""
  arg = _config_arg(argv)
  if arg is None:
    return None
  try:
    config = fv["config"].parser.parse(arg)
  except Exception:  # pylint: disable=broad-except
    return None
  for a in argv:
    m = re.match(r"^--?(?:no)?config\.([^=]+)", a)
    if not m:
      continue
    node, done = config, []
    for part in m.group(1).split("."):
      if not isinstance(node, config_dict.ConfigDict):
        return (f"--config.{m.group(1)}: config.{'.'.join(done)} is a value, "
                "not a section")
      if part not in node:
        return _no_field(m.group(1), node, done, part)
      node, done = node[part], done + [part]
  return None


def _no_field(path, node, done, part):
  where = "config." + ".".join(done) if done else "the config"
  sections = sorted(k for k, v in node.items()
                    if isinstance(v, config_dict.ConfigDict))
  fields = sorted(k for k, v in node.items()
                  if not isinstance(v, config_dict.ConfigDict))
  close = difflib.get_close_matches(part, list(node.keys()), n=1)
  text = f"--config.{path}: {where} has no field {part!r}"
  if close:
    text += f"; did you mean {'.'.join(done + close)}?"
  if sections:
    text += f"\n  sections: {', '.join(sections)}"
  text += f"\n  fields: {', '.join(fields)}"
  return text


# argparse commands (lfjax.export, .convert, .make_tiny) --------------------


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Adds "(default: ...)" only to help that does not say its default and
  when there is one (not None)."""

  def _get_help_string(self, action):
    if "default:" in (action.help or "") or action.default is None:
      return action.help
    return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
  """argparse with defaults in --help, no abbreviated flags (a prefix that
  names a flag today could name another one tomorrow) and a two-line
  error."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", _HelpFormatter)
    kwargs.setdefault("allow_abbrev", False)
    super().__init__(*args, **kwargs)
    self.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)

  def error(self, message):
    hints = []
    if message.startswith("unrecognized arguments:"):
      known = [o for o in self._option_string_actions if o.startswith("--")]
      hints = [renamed_flag(a, known) for a in message.split()[2:]
               if a.startswith("--")]
    hint = "; ".join(h for h in hints if h)
    raise UsageError(f"{message}{'; ' + hint if hint else ''} "
                     f"(see {self.prog} --help)")


# Flags that no longer exist, and what to type instead.
RENAMED = {"--step": "--checkpoint (a saved step) or --stride (the char-LM "
                     "evaluation's window stride)"}


def renamed_flag(arg, known):
  """A hint for an unknown flag `arg` (e.g. "--seq-len=8"), or "": what it
  is called now (RENAMED, the underscore spelling), else the closest of
  `known` (flags as "--name")."""
  name = arg.split("=", 1)[0]
  if name in RENAMED:
    return f"{name} is now {RENAMED[name]}"
  if name.replace("-", "_").replace("__", "--", 1) in known:
    return (f"flags are spelled with underscores: "
            f"{name.replace('-', '_').replace('__', '--', 1)}")
  close = difflib.get_close_matches(name, known, n=1)
  return f"did you mean {close[0]}?" if close else ""

