"""What the precision tests read from a jaxpr."""

import jax


def dot_operand_dtypes(fn, *args):
  """The operand dtypes of every dot_general in fn's jaxpr, sub-jaxprs
  (scan, custom_vjp, pjit) included."""
  found = []

  def subjaxprs(value):
    # Jaxprs have .eqns, ClosedJaxprs a .jaxpr (duck-typed: where these
    # classes live moves between jax versions).
    if hasattr(value, "eqns"):
      yield value
    elif hasattr(getattr(value, "jaxpr", None), "eqns"):
      yield value.jaxpr
    elif isinstance(value, (tuple, list)):
      for v in value:
        yield from subjaxprs(v)

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
      for value in eqn.params.values():
        for sub in subjaxprs(value):
          walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found
