"""Checks of config values, each naming its field (`config.model.dropout`)
and saying what it expected, so a bad override fails at start instead of
training silently (a dropout of -1 halves activations).

Each task's `validate(config)` (lfjax.tasks: charlm_defaults,
mlm_defaults, ...) calls these once per field.
"""

import numbers
import os


# Seeds fit a signed 32-bit integer: every generator they feed (jax.random,
# numpy, the dropout hash) takes one, and a larger int overflowed inside
# jax.random.key with a traceback.
SEED_MAX = 2**31 - 1


def _fail(field, expected, value):
  raise ValueError(f"config.{field}: expected {expected}, got {value!r}")


def _get(config, field):
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def integer(config, field, lo=None, hi=None):
  """An int in [lo, hi] (either bound may be None)."""
  v = _get(config, field)
  if not _is_int(v) or (lo is not None and v < lo) or (
      hi is not None and v > hi):
    _fail(field, _range("an integer", lo, hi), v)
  return v


def real(config, field, lo=None, hi=None, lo_open=False, hi_open=False):
  """A number in [lo, hi], or (lo, ...] / [..., hi) when open."""
  v = _get(config, field)
  ok = _is_real(v) and v == v  # NaN fails every range
  if ok and lo is not None:
    ok = v > lo if lo_open else v >= lo
  if ok and hi is not None:
    ok = v < hi if hi_open else v <= hi
  if not ok:
    _fail(field, _range("a number", lo, hi, lo_open, hi_open), v)
  return v


def one_of(config, field, choices):
  v = _get(config, field)
  if v not in choices:
    _fail(field, f"one of {list(choices)}", v)
  return v


def boolean(config, field):
  v = _get(config, field)
  if not isinstance(v, bool):
    _fail(field, "True or False", v)
  return v


def string(config, field, nonempty=False):
  v = _get(config, field)
  if not isinstance(v, str) or (nonempty and not v):
    _fail(field, "a non-empty string" if nonempty else "a string", v)
  return v


def integers(config, field, lo=None, length=None, what=""):
  """A tuple (or list) of ints >= lo, of `length` items when given."""
  v = _get(config, field)
  ok = isinstance(v, (tuple, list)) and all(
      _is_int(x) and (lo is None or x >= lo) for x in v)
  if not ok or (length is not None and len(v) != length) or not v:
    n = f"{length} " if length is not None else ""
    _fail(field, f"a tuple of {n}{_range('integers', lo, None)}{what}", v)
  return tuple(v)


def reals(config, field, lo=None, lo_open=False, length=None, what=""):
  v = _get(config, field)
  ok = isinstance(v, (tuple, list)) and all(
      _is_real(x) and x == x and (lo is None or (x > lo if lo_open
                                                 else x >= lo)) for x in v)
  if not ok or (length is not None and len(v) != length) or not v:
    n = f"{length} " if length is not None else ""
    _fail(field, f"a tuple of {n}{_range('numbers', lo, None, lo_open)}"
          f"{what}", v)
  return tuple(v)


def strings(config, field, nonempty=False):
  v = _get(config, field)
  if not isinstance(v, (tuple, list)) or not all(
      isinstance(x, str) and x for x in v) or (nonempty and not v):
    _fail(field, "a tuple of non-empty strings", v)
  return tuple(v)


def adamw(config):
  """optim.b1, b2, eps and weight_decay of an AdamW (every task's)."""
  real(config, "optim.b1", 0, 1, hi_open=True)
  real(config, "optim.b2", 0, 1, hi_open=True)
  real(config, "optim.eps", 0, lo_open=True)
  real(config, "optim.weight_decay", 0)


def loop_fields(config):
  """The fields lfjax.loop reads, the same in every task."""
  integer(config, "log_every", 1)
  integer(config, "checkpoint_every", 1)
  integer(config, "keep_checkpoints", 1)
  integer(config, "eval_every", 0)


def _range(kind, lo, hi, lo_open=False, hi_open=False):
  if lo is not None and hi is not None:
    return (f"{kind} in {'(' if lo_open else '['}{lo}, {hi}"
            f"{')' if hi_open else ']'}")
  if lo is not None:
    return f"{kind} {'>' if lo_open else '>='} {lo}"
  if hi is not None:
    return f"{kind} {'<' if hi_open else '<='} {hi}"
  return kind


def remat(c):
  """model.remat (a bool) and model.remat_policy: a name in
  lfjax.models.remat.POLICIES, other than "nothing" only with model.remat,
  and "offload" only where JAX can move arrays to host memory."""
  from lfjax.models import remat as remat_lib
  remat_on = boolean(c, "model.remat")
  policy = one_of(c, "model.remat_policy", remat_lib.POLICIES)
  if policy != "nothing" and not remat_on:
    raise ValueError(
        f"config.model.remat_policy: {policy!r} applies only with "
        "model.remat True, got model.remat False; set --config.model.remat="
        "True, or leave remat_policy 'nothing'")
  if policy == "offload" and _backend() == "cpu":
    import jax
    raise ValueError(
        "config.model.remat_policy: 'offload' needs a GPU or TPU: on CPU "
        f"jax {jax.__version__} lowers the move to pinned_host memory to "
        "nothing (device memory is host memory there), so it would keep what "
        "'attention' keeps, in the same memory; on CPU use 'nothing' or "
        "'attention'")


def _backend():
  """jax's default platform, or None while a multi-process run has yet to
  call jax.distributed.initialize (asking would start the backend before
  it, which that call refuses; the trainer validates again after it)."""
  import jax
  if (os.environ.get("JAX_NUM_PROCESSES", "") not in ("", "1")
      and not jax.distributed.is_initialized()):
    return None
  return jax.default_backend()
