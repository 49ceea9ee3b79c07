"""Index checks and table lookups shared by every lfjax model.

JAX gathers never raise: an index past a table silently returns a fill value
or a clipped row. The rule everywhere an index enters a table:
- eager calls (concrete inputs: notebooks, scripts, evaluation loops) check
  the values and raise a ValueError naming the argument, the bad value and
  the table's size;
- under jit, grad or vmap the values are unknown, so nothing can raise
  without a host sync; the lookup fills out-of-range rows with NaN instead,
  which spreads to every output of that sequence (never a plausible-looking
  wrong number). Validate data once outside jit with `check_index`, or wrap
  the call in `jax.experimental.checkify` to get the position of the NaN.
"""

import jax.numpy as jnp
import numpy as np

from lfjax.attention.common import is_concrete


def check_index(name, ids, size, table):
  """Raises ValueError if concrete `ids` has a value outside [0, size).

  name: the argument's name; table: what the rows are (for the message).
  Traced ids are not checked (see the module docstring)."""
  if ids is None or not is_concrete(ids):
    return
  a = np.asarray(ids)
  if a.size == 0:
    return
  lo, hi = int(a.min()), int(a.max())
  if lo < 0 or hi >= size:
    bad = lo if lo < 0 else hi
    raise ValueError(f"{name}: expected values in [0, {size}) ({table} has "
                     f"{size} rows), got {bad}")


def in_range(ids, size):
  return (ids >= 0) & (ids < size)


def lookup(table_VxE, ids):
  """table[ids], with NaN rows for out-of-range ids, negative ones too (a
  clipped, wrapped or zero row would be a wrong answer that looks right)."""
  size = table_VxE.shape[0]
  rows = jnp.take(table_VxE, jnp.clip(ids, 0, size - 1), axis=0)
  return jnp.where(in_range(ids, size)[..., None], rows, jnp.nan)
