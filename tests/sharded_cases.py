"""Sequence-parallel attention checks on 8 virtual CPU devices, in one process.

Run by tests/test_sharded_attention.py as a subprocess: the device count must
be set before JAX initialises its backend, and pytest's process already has
one device. All cases run here in one process so the compiles share a
process (and the run's compilation cache). Standalone:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
      python -m tests.sharded_cases /tmp/out.json

Every case compares sequence_parallel_attention on a mesh of P devices with
the brute-force reference (tests/reference.py): the output and the
gradients of q, k, v, the global projections, rel_query and rel_table. The
result is a JSON object {case name: {errors or HLO facts}}; the pytest file
asserts on it.
"""

import json
import os
import re
import sys
import time
import traceback

# Cases, each one sharded compile (forward + backward). Fields: p (devices
# on the sequence axis), n (whole sequence), h heads (dilation per head),
# dv value width, window, causal, pad (padding rows at the end of the last
# batch row: they sit in the last shard), globals (positions; None: no
# global tokens), gqkv (separate global projections), rel (relative term),
# cap (max_global under jit, fewer than the globals: the rest demoted),
# data (data-parallel axis size; the mesh is data x seq), explicit (the
# mesh's axes Explicit, not Auto), drop (dropout), dtype (of q, k, v and
# the global projections; the reference gets the same values in float32),
# atol / grad_atol (the bounds, default OUT_ATOL / GRAD_ATOL).
CASES = {
    "p2_symmetric_padding": dict(p=2, n=24, dilation=[1, 1], window=3,
                                 pad=5),
    "p4_dilation_globals": dict(p=4, n=32, dilation=[1, 2, 3], window=2,
                                pad=6, globals=[2, 19, 20], gqkv=True, dv=5),
    "p8_multihop_globals_rel": dict(p=8, n=32, dilation=[1, 2], window=5,
                                    pad=3, globals=[0, 27, 28], rel=True),
    "p4_causal_multihop_rel": dict(p=4, n=32, dilation=[1, 2], window=9,
                                   causal=True, pad=4, rel=True),
    "p8_causal_dilated": dict(p=8, n=64, dilation=[3, 3], window=3,
                              causal=True, rel=True),
    "p2_window_past_sequence": dict(p=2, n=16, dilation=[1, 2], window=20,
                                    globals=[9], gqkv=True, rel=True),
    "p4_dropout_globals": dict(p=4, n=32, dilation=[1, 2], window=4, pad=5,
                               globals=[6, 30], gqkv=True, drop=0.2),
    "p4_pallas_globals_rel": dict(p=4, n=32, dilation=[2, 1], window=3,
                                  pad=5, globals=[1, 17], gqkv=True, rel=True,
                                  impl="pallas"),
    # The kernel's dropout at this shard's absolute positions (queries
    # padded by the halo: residues shifted), global keys in the kernel.
    "p4_pallas_dropout_globals": dict(p=4, n=32, dilation=[1, 2], window=4,
                                      pad=5, globals=[6, 30], gqkv=True,
                                      drop=0.2, impl="pallas"),
    "p8_pallas_causal_multihop": dict(p=8, n=32, dilation=[1, 2], window=6,
                                      causal=True, rel=True, drop=0.3,
                                      impl="pallas"),
    # Splash attention per shard (interpret mode): queries padded by the
    # halo, global keys as mask columns, padding through segment ids.
    "p4_splash_globals_padding": dict(p=4, n=32, dilation=[1, 2], window=3,
                                      pad=5, globals=[2, 19, 20], gqkv=True,
                                      impl="splash"),
    # The Mosaic (TPU) kernel per shard, interpret mode: causal, the
    # relative term and dropout at the shard's positions.
    "p4_mosaic_causal_rel_dropout": dict(p=4, n=32, dilation=[1, 2],
                                         window=5, causal=True, rel=True,
                                         drop=0.3, impl="mosaic"),
    # bf16 operands with global projections: the global rows' all-reduce
    # (XLA:CPU aborted on a bf16 one) and bf16 rounding in the bounds.
    "p2_bfloat16_globals": dict(p=2, n=24, dilation=[1, 2], window=3, pad=4,
                                globals=[0, 13], gqkv=True,
                                dtype="bfloat16", atol=1.5e-2, grad_atol=2.5e-2),
    "data2_seq4_explicit_traced_cap": dict(
        p=4, data=2, explicit=True, n=32, dilation=[1, 2], window=3, pad=7,
        globals=[3, 12, 22, 23], gqkv=True, rel=True, cap=3),
}
OUT_ATOL, GRAD_ATOL, GRAD_RTOL = 2e-5, 5e-5, 1e-4


# As conftest.py: the TPU kernels' cases run on Python >= 3.12 (where
# lfjax[tpu] installs) or when LFJAX_TEST_TPU_KERNELS asks for them.
TPU_KERNELS_HERE = (sys.version_info >= (3, 12)
                    or os.environ.get("LFJAX_TEST_TPU_KERNELS", "")
                    not in ("", "0"))


def selected():
  """The CASES this interpreter runs (TPU_KERNELS_HERE)."""
  return {name: spec for name, spec in CASES.items()
          if TPU_KERNELS_HERE or spec.get("impl") not in ("splash", "mosaic")}


def make_inputs(spec, seed):
  """Random arrays and masks for a case (numpy)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  b, n, h, d = 2, spec["n"], len(spec["dilation"]), 8
  dv = spec.get("dv", d)
  arr = lambda width: rng.standard_normal((b, n, h, width)).astype(np.float32)
  x = dict(q=arr(d), k=arr(d), v=arr(dv))
  key_mask = np.ones((b, n), bool)
  key_mask[-1, n - spec.get("pad", 0):] = False
  x["key_mask"] = key_mask
  if spec.get("globals") is not None:
    gm = np.zeros((b, n), bool)
    gm[:, spec["globals"]] = True
    gm[0, rng.integers(0, n)] = True  # one more, anywhere, in one row
    x["global_mask"] = gm
    if spec.get("gqkv"):
      x["global_qkv"] = (arr(d), arr(d), arr(dv))
  if spec.get("rel"):
    reach = min(spec["window"] * max(spec["dilation"]), n - 1)
    t = reach + 1 if spec.get("causal") else 2 * reach + 1
    x["rel_query"] = arr(4)
    x["rel_table"] = rng.standard_normal((t, h, 4)).astype(np.float32)
  x["cot"] = arr(dv)
  return x


def demoted(global_mask, key_mask, cap):
  """The spec of max_global under jit: only the first `cap` non-padding
  global tokens of a row stay global (numpy, for the reference)."""
  import numpy as np
  g = global_mask & key_mask
  return g & (np.cumsum(g, axis=1) <= cap)


def run_case(name, spec, seed):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from lfjax.attention.sharded import sequence_parallel_attention
  from tests.reference import reference_attention

  x = make_inputs(spec, seed)
  data = spec.get("data", 1)
  kind = jax.sharding.AxisType.Explicit if spec.get("explicit") else (
      jax.sharding.AxisType.Auto)
  mesh = jax.make_mesh((data, spec["p"]), ("data", "seq"),
                       axis_types=(kind,) * 2)
  static = dict(window=spec["window"], dilation=spec["dilation"],
                causal=spec.get("causal", False))
  drop = spec.get("drop", 0.0)
  if drop:
    static.update(dropout_rate=drop, dropout_key=jax.random.key(seed))
  diff = ["q", "k", "v"] + [n for n in ("global_qkv", "rel_query",
                                        "rel_table") if n in x]
  masks = {n: jnp.asarray(x[n]) for n in ("key_mask", "global_mask")
           if n in x}
  cap = spec.get("cap")
  ref_masks = dict(masks)
  if cap is not None:
    ref_masks["global_mask"] = jnp.asarray(demoted(
        x["global_mask"], x["key_mask"], cap))
  cot = jnp.asarray(x["cot"])

  def loss(fn, msk):
    def f(*args):
      out = fn(**dict(zip(diff, args)), **msk)
      return jnp.sum(out * cot), out
    return f

  def ours(**kw):
    return sequence_parallel_attention(
        mesh=mesh, axis_name="seq", batch_axis="data" if data > 1 else None,
        impl=spec.get("impl", "auto"), max_global=cap, **static, **kw)

  args = [jax.tree.map(jnp.asarray, x[n]) for n in diff]
  low = spec.get("dtype")
  if low:  # ours gets them in `low`, the reference the same values in f32
    args = jax.tree.map(lambda a: a.astype(low), args)
  ref_args = jax.tree.map(lambda a: a.astype(jnp.float32), args)
  grad = lambda fn, msk: jax.value_and_grad(
      loss(fn, msk), argnums=tuple(range(len(diff))), has_aux=True)
  # Not jitted: the reference derives its key lists (and the dropout
  # hash's seed) from concrete values.
  (_, want), want_g = grad(
      lambda **kw: reference_attention(**static, **kw), ref_masks)(*ref_args)
  t0 = time.time()
  if cap is not None:  # masks traced: max_global is what bounds the globals
    sharded = jax.jit(lambda m, *a: grad(ours, m)(*a))
    (_, got), got_g = sharded(masks, *args)
  else:
    (_, got), got_g = jax.jit(grad(ours, masks))(*args)
  jax.block_until_ready(got_g)
  res = dict(seconds=round(time.time() - t0, 2),
             out_err=float(jnp.max(jnp.abs(got.astype(jnp.float32) - want))),
             out_dtype=str(got.dtype),
             out_spec=str(got.sharding.spec) if hasattr(got, "sharding")
             else None)
  for n, gw, gg in zip(diff, want_g, got_g):
    for i, (w, g) in enumerate(zip(jax.tree.leaves(gw),
                                   jax.tree.leaves(gg))):
      w, g = np.asarray(w, np.float32), np.asarray(g, np.float32)
      key = n if n != "global_qkv" else ("q_g", "k_g", "v_g")[i]
      res[f"grad_{key}_err"] = float(np.max(
          np.abs(g - w) - GRAD_RTOL * np.abs(w)))
      res[f"grad_{key}_finite"] = bool(np.isfinite(g).all())
  return res


def hlo_case():
  """Collectives in the compiled forward + backward of a symmetric layer
  with global tokens and a causal one: collective-permutes whose operands
  are halo-sized, no all-gather."""
  import jax
  import jax.numpy as jnp
  from lfjax.attention.sharded import sequence_parallel_attention

  mesh = jax.make_mesh((8,), ("seq",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  b, n, h, d, w = 1, 256, 2, 8, 4
  sds = jax.ShapeDtypeStruct((b, n, h, d), jnp.float32)
  gm = jax.ShapeDtypeStruct((b, n), jnp.bool_)
  out = {}
  for label, causal in (("symmetric", False), ("causal", True)):
    def layer(q, k, v, global_mask=None):
      def f(q, k, v):
        return jnp.sum(sequence_parallel_attention(
            q, k, v, mesh=mesh, window=w, causal=causal,
            global_mask=global_mask, max_global=None if causal else 4))
      return jax.grad(f, argnums=(0, 1, 2))(q, k, v)
    fn = (jax.jit(layer) if causal else
          jax.jit(lambda q, k, v, m: layer(q, k, v, m)))
    lowered = (fn.lower(sds, sds, sds) if causal
               else fn.lower(sds, sds, sds, gm))
    text = lowered.compile().as_text()
    permutes = [l for l in text.splitlines()
                if re.search(r"= \S+ collective-permute(-start)?\(", l)]
    # Each permute operand: the [B, rows, H, D] halo of k or v, or the
    # [B, rows] bool key mask; rows must be the window (w), not the shard.
    rows = sorted(set(int(m) for l in permutes
                      for m in re.findall(r"\[\d+,(\d+)(?:,\d+,\d+)?\]",
                                          l.split("collective-permute")[0])))
    out[label] = dict(
        collective_permutes=len(permutes),
        all_gathers=len(re.findall(r"all-gather(-start)?\(", text)),
        all_reduces=len(re.findall(r"all-reduce(-start)?\(", text)),
        permute_rows=rows, shard_rows=n // 8, window=w)

  # Remat: the received halos are named "halo", so a policy that saves
  # them does not repeat the exchange when the backward recomputes the
  # layer. Counted in the jaxpr: on this single layer XLA merges the
  # repeated permutes again, in a scan over layers it does not.
  pol = jax.checkpoint_policies
  for label, policy in (("no_remat", None),
                        ("remat_nothing_saved", pol.nothing_saveable),
                        ("remat_halo_saved",
                         pol.save_only_these_names("halo"))):
    def loss(q, k, v):
      return jnp.sum(jnp.sin(sequence_parallel_attention(
          q, k, v, mesh=mesh, window=w, causal=True)))
    if policy is not None:
      loss = jax.checkpoint(loss, policy=policy)
    jaxpr = str(jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1, 2)))(
        sds, sds, sds))
    out[label] = jaxpr.count("ppermute[")
  return out


def mesh_switch_case():
  """Eager jax.grad on a seq-8 mesh, then on a data-2 x seq-4 mesh in the
  same process (jax 0.10 raised IndivisibleError naming the first mesh).
  Max gradient error of q, k, v against tests/reference.py per mesh."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from lfjax.attention.sharded import sequence_parallel_attention
  from tests.reference import reference_attention
  rng = np.random.default_rng(7)
  q, k, v, cot = (jnp.asarray(rng.standard_normal((2, 16, 2, 4)),
                              jnp.float32) for _ in range(4))
  glob = np.zeros((2, 16), bool)
  glob[0, [0, 9]] = True
  kw = dict(window=2, global_mask=jnp.asarray(glob))
  loss = lambda fn: jax.grad(lambda *a: jnp.sum(fn(*a, **kw) * cot),
                             argnums=(0, 1, 2))
  want = loss(reference_attention)(q, k, v)
  errs = {}
  auto = jax.sharding.AxisType.Auto
  for label, shape, names, batch in (
      ("seq8", (8,), ("seq",), None),
      ("data2_seq4", (2, 4), ("data", "seq"), "data")):
    mesh = jax.make_mesh(shape, names, axis_types=(auto,) * len(shape))
    got = loss(lambda *a, **k2: sequence_parallel_attention(
        *a, mesh=mesh, batch_axis=batch, max_global=2, **k2))(q, k, v)
    errs[label] = max(float(jnp.max(jnp.abs(g - w)))
                      for g, w in zip(got, want))
  return errs


def batch_mesh_case():
  """The Pallas kernels (splash, mosaic, pallas: interpret mode) under
  jax.set_mesh of a data x fsdp mesh without a seq axis, where
  windowed_attention runs them per device (api._kernel_per_device): the
  batch split over the 4 devices (batch 4) or whole on each (batch 3).
  Max output and q/k/v gradient errors against tests/reference.py, jitted;
  splash with padding and global tokens, mosaic causal with dropout (the
  reference with the same key draws the same masks) and the relative
  term, pallas with dilation."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from lfjax.attention import windowed_attention
  from tests.reference import reference_attention
  auto = jax.sharding.AxisType.Auto
  mesh = jax.make_mesh((2, 2), ("data", "fsdp"), axis_types=(auto,) * 2)
  rng = np.random.default_rng(11)
  errs = {}
  for b in (4, 3):
    n, h, d = 37, 2, 8
    q, k, v, cot = (jnp.asarray(rng.standard_normal((b, n, h, d)),
                                jnp.float32) for _ in range(4))
    lengths = np.array([37, 30, 37, 21][:b])
    key_mask = jnp.asarray(np.arange(n)[None] < lengths[:, None])
    glob = np.zeros((b, n), bool)
    glob[:, 3] = True
    glob[0, 20] = True
    table = jnp.asarray(rng.standard_normal((6, h, 4)), jnp.float32)
    rel_q = jnp.asarray(rng.standard_normal((b, n, h, 4)), jnp.float32)
    cases = {
        "splash": dict(window=4, key_mask=key_mask,
                       global_mask=jnp.asarray(glob)),
        "mosaic": dict(window=5, causal=True, key_mask=key_mask,
                       dropout_rate=0.3, dropout_key=jax.random.key(5),
                       rel_query=rel_q, rel_table=table),
        "pallas": dict(window=3, dilation=[1, 2], key_mask=key_mask)}
    for impl, kw in cases.items():
      if impl != "pallas" and not TPU_KERNELS_HERE:
        continue
      mine = lambda q, k, v: windowed_attention(
          q, k, v, impl=impl, max_global=2 if "global_mask" in kw else None,
          **kw)
      loss = lambda fn: jax.value_and_grad(
          lambda *a: jnp.sum(fn(*a) * cot), argnums=(0, 1, 2))
      want = loss(lambda *a: reference_attention(*a, **kw))(q, k, v)
      with jax.set_mesh(mesh):
        got = jax.jit(loss(mine))(q, k, v)
        out = jax.jit(mine)(q, k, v)
      ref = reference_attention(q, k, v, **kw)
      errs[f"{impl}_b{b}"] = dict(
          out=float(jnp.max(jnp.abs(out - ref))),
          grad=max(float(jnp.max(jnp.abs(g - w)))
                   for g, w in zip(got[1], want[1])))
  return errs


def error_cases():
  """Messages of the argument checks that need a real multi-device mesh."""
  import jax
  import jax.numpy as jnp
  from lfjax.attention.sharded import sequence_parallel_attention
  mesh = jax.make_mesh((2, 4), ("data", "seq"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  x = jnp.zeros((3, 30, 2, 8))
  y = jnp.zeros((3, 32, 2, 8))
  msgs = {}
  for label, call in (
      ("seq_not_multiple", lambda: sequence_parallel_attention(
          x, x, x, mesh=mesh, window=2)),
      ("batch_not_multiple", lambda: sequence_parallel_attention(
          y, y, y, mesh=mesh, window=2, batch_axis="data")),
      ("batch_axis_is_seq", lambda: sequence_parallel_attention(
          y, y, y, mesh=mesh, window=2, batch_axis="seq"))):
    try:
      call()
      msgs[label] = None
    except ValueError as e:
      msgs[label] = str(e)
  # windowed_attention pads a length that does not divide over seq, except
  # on Explicit axes (jax.make_mesh's default), where the cut is refused.
  from lfjax.attention import windowed_attention
  explicit = jax.make_mesh((8,), ("seq",))
  try:
    with jax.set_mesh(explicit):
      windowed_attention(x, x, x, window=2)
    msgs["explicit_pad"] = None
  except ValueError as e:
    msgs["explicit_pad"] = str(e)
  return msgs


def main(path):
  import jax
  # Tiny programs: XLA's optimisations cost more compile time than they
  # save (as conftest's fast_compiles).
  jax.config.update("jax_disable_most_optimizations", True)
  t0 = time.time()
  if jax.device_count() < 8:
    raise SystemExit(f"sharded_cases: expected 8 devices, got "
                     f"{jax.device_count()}; set XLA_FLAGS="
                     f"--xla_force_host_platform_device_count=8")
  results = {"devices": jax.device_count()}
  for name, spec in selected().items():
    try:
      results[name] = run_case(name, spec, seed=len(results))
    except Exception:  # recorded, so the other cases still run
      results[name] = dict(exception=traceback.format_exc())
  for name, fn in (("hlo", hlo_case), ("errors", error_cases),
                   ("mesh_switch", mesh_switch_case),
                   ("batch_mesh", batch_mesh_case)):
    try:
      results[name] = fn()
    except Exception:
      results[name] = dict(exception=traceback.format_exc())
  results["seconds"] = round(time.time() - t0, 1)
  with open(path, "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])
