"""The batched-block band path (lfjax.attention.band_batched), which GPU/TPU
backends run, forced on CPU: against the brute-force reference (through
windowed_attention's chunked path: dilation, globals, padding, causal,
jit, bf16, row groups; its gradients, dropout and relative-term cases are
tests/test_attention.py's impl "batched"), against the CPU's tile
loop at the core (key offsets as sequence parallelism uses them, extra
keys, empty rows, both cotangents), through the sharded path, and the
platform choice in the lowered programs."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfjax.attention import band
from lfjax.attention import band_batched
from lfjax.attention import common
from lfjax.attention import windowed_attention
from lfjax.kernels import lowering
from tests import sharded_cases
from tests.reference import reference_attention
from tests.test_attention import check_close
from tests.test_attention import random_case
from tests.test_attention import to_jnp
from tests.test_attention import with_rel

ROOT = pathlib.Path(__file__).resolve().parents[1]


def force(monkeypatch, path, small_blocks=False):
  """Run band_attention's `path` everywhere. windowed_attention's jit caches
  traces by shape, not by the switch: the caches are cleared."""
  monkeypatch.setattr(band, "FORCE_PATH", path)
  if small_blocks:  # several blocks and neighbour spans on short sequences
    monkeypatch.setattr(band, "choose_block", lambda *a, **k: 8)
    monkeypatch.setattr(band_batched, "choose_block", lambda *a, **k: 8)
  jax.clear_caches()


@pytest.fixture
def batched_small(monkeypatch):
  force(monkeypatch, "batched", small_blocks=True)
  yield
  jax.clear_caches()


@pytest.mark.parametrize("seed,small", [(s, False) for s in range(0, 40, 3)]
                         + [(s, True) for s in range(40, 60, 2)])
def test_forward_matches_reference(seed, small, monkeypatch, fast_compiles):
  """Default blocks, and blocks of 8 rows (several blocks and neighbour
  spans on short sequences). Gradients, dropout and the relative term:
  tests/test_attention.py's "batched" cases."""
  force(monkeypatch, "batched", small_blocks=small)
  args, kwargs = random_case(seed)
  want = reference_attention(*args, **kwargs)
  got = windowed_attention(*map(jnp.asarray, args), impl="chunked",
                           **to_jnp(kwargs))
  check_close(got, want)
  jax.clear_caches()


@pytest.mark.parametrize("seed", [61, 64, 67, 70])
def test_jit_with_traced_masks(seed, batched_small, fast_compiles):
  args, kwargs = random_case(seed)
  n = args[0].shape[1]
  want = reference_attention(*args, **kwargs)
  static = dict(window=kwargs["window"], dilation=kwargs["dilation"],
                causal=kwargs["causal"])
  f = jax.jit(lambda q, k, v, km, gm, gqkv: windowed_attention(
      q, k, v, key_mask=km, global_mask=gm, global_qkv=gqkv, max_global=n,
      impl="chunked", **static))
  j = to_jnp(kwargs)
  check_close(f(*map(jnp.asarray, args), j["key_mask"], j["global_mask"],
                j["global_qkv"]), want)


@pytest.mark.parametrize("seed", [5, 14, 26, 41])
def test_row_groups_match_reference(seed, monkeypatch):
  """Rows of X in sequential groups (a budget of a few rows' scores): the
  output and gradients of q, k, v, the global projections, rel_query and
  rel_table, with dropout, equal the reference's."""
  force(monkeypatch, "batched", small_blocks=True)
  monkeypatch.setattr(band_batched, "SCORES_PER_GROUP", 1000)
  args, kwargs = random_case(seed)
  args = tuple(map(jnp.asarray, args))
  rq, table = with_rel(args, kwargs, seed)
  kw = to_jnp(kwargs)
  gqkv = kw.pop("global_qkv")
  drop = dict(dropout_rate=0.2, dropout_key=jax.random.key(seed))
  cot = jnp.asarray(np.random.default_rng(seed).standard_normal(
      args[2].shape), jnp.float32)
  ref = lambda q, k, v, g, r, t: reference_attention(
      q, k, v, global_qkv=g, rel_query=r, rel_table=t, **drop, **kw)
  ours = jax.jit(lambda q, k, v, g, r, t: windowed_attention(
      q, k, v, global_qkv=g, rel_query=r, rel_table=t, impl="chunked",
      **drop, **kw))
  # The budget splits the rows: several groups, a divisor of X each.
  b, n, h, _ = args[0].shape
  geo = band.geometry(b * h, n, n, 0, window=kwargs["window"],
                      causal=kwargs["causal"], block=8)
  assert band_batched.num_groups(geo) > 1
  check_close(ours(*args, gqkv, rq, table), ref(*args, gqkv, rq, table))
  loss = lambda fn: lambda *a: jnp.sum(fn(*a) * cot)
  argnums = (0, 1, 2, 3, 4, 5)
  want = jax.tree.leaves(jax.grad(loss(ref), argnums)(*args, gqkv, rq, table))
  got = jax.tree.leaves(jax.grad(loss(ours), argnums)(*args, gqkv, rq, table))
  for g, w in zip(got, want):
    check_close(g, w, atol=5e-5, rtol=1e-4)
  jax.clear_caches()


@pytest.mark.parametrize("seed", [5, 26])
def test_bfloat16(seed, batched_small):
  """bf16 operands (float32 softmax inside): output and relative term."""
  args, kwargs = random_case(seed)
  rq, table = with_rel(args, kwargs, seed)
  kw = to_jnp(kwargs)
  want = reference_attention(*args, rel_query=rq, rel_table=table, **kw)
  bf = lambda a: jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), a)
  kw["global_qkv"] = bf(kw["global_qkv"])
  got = windowed_attention(*bf(args), rel_query=bf(rq), rel_table=bf(table),
                           impl="chunked", **kw)
  assert got.dtype == jnp.bfloat16
  check_close(got, want, atol=6e-2, rtol=6e-2)


def core_case(seed, x, n, m, k_offset, g, causal, dropout, rel, window=5,
              d=8):
  """Arguments of band.band_attention: a shard's queries with keys at
  k_offset (halos), extra keys, dropout at absolute positions with a
  dilation of 2 and per-row residues, a relative table; every third row of
  keys invalid where `seed` is odd, so some rows have no key at all."""
  rng = np.random.default_rng(seed)
  arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  kvalid = rng.random((x, m)) > 0.25
  if seed % 2:
    kvalid[::3] = False
  kw = dict(window=window, causal=causal, scale=0.3, k_offset=k_offset)
  if g:
    kw.update(gk_XxGxD=arr(x, g, d), gv_XxGxDv=arr(x, g, d + 3),
              gvalid_XxG=jnp.asarray(rng.random((x, g)) > 0.3))
    if seed % 2:
      kw["gvalid_XxG"] = kw["gvalid_XxG"].at[::3].set(False)
  if dropout:
    kw["dropout"] = (dropout, 2, jnp.asarray(rng.integers(
        0, 2 ** 32, x, dtype=np.uint32)), jnp.asarray(
            rng.integers(0, 2, x), jnp.int32), jnp.asarray(
                rng.integers(0, 3 * n, (x, g)), jnp.int32) if g else None)
  if rel:
    lo = 0 if causal else -window
    kw["rel"] = (arr(x, n, 5), arr(x, window - lo + 3, 5), lo)
  return (arr(x, n, d), arr(x, m, d), arr(x, m, d + 3),
          jnp.asarray(kvalid)), kw


def run_core(path, args, kw, block):
  """Output, lse and the gradients of <out, c1> + <lse, c2> in q, k, v (and
  the extra keys, the relative query and table) on `path`."""
  q, k, v, kvalid = args
  diff = {"q": q, "k": k, "v": v}
  for name in ("gk_XxGxD", "gv_XxGxDv"):
    if name in kw:
      diff[name] = kw[name]
  if "rel" in kw:
    diff["rq"], diff["tab"] = kw["rel"][:2]
  static = {n: a for n, a in kw.items() if n not in diff}

  def f(d):
    extra = {n: d[n] for n in ("gk_XxGxD", "gv_XxGxDv") if n in d}
    if "rq" in d:
      extra["rel"] = (d["rq"], d["tab"], kw["rel"][2])
    static2 = {n: a for n, a in static.items() if n != "rel"}
    return band.band_attention(d["q"], d["k"], d["v"], kvalid, block=block,
                               **static2, **extra)

  old = band.FORCE_PATH
  band.FORCE_PATH = path
  try:
    out, lse = jax.jit(f)(diff)
    rng = np.random.default_rng(1)
    c1 = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    c2 = jnp.asarray(rng.standard_normal(lse.shape), jnp.float32)

    def loss(d):
      o, l = f(d)
      # Empty rows' lse is NEG_INF: a bounded function of it.
      return jnp.sum(o * c1) + jnp.sum(jnp.tanh(l) * c2)
    g = jax.jit(jax.grad(loss))(diff)
  finally:
    band.FORCE_PATH = old
  return out, lse, g


CORE_CASES = {  # name -> (x, n, m, k_offset, g, causal, dropout, rel)
    "halo_shard": (3, 29, 39, -5, 0, False, 0.0, False),
    "halo_shard_globals_dropout_rel": (2, 61, 71, -5, 2, False, 0.3, True),
    "causal_halo_rel": (3, 37, 42, -5, 0, True, 0.0, True),
    "causal_globals_dropout": (2, 53, 53, 0, 3, True, 0.2, False),
    "prime_keys_past_queries": (1, 31, 13, 7, 1, False, 0.0, False),
}


@pytest.mark.parametrize("block", [None, 8])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(CORE_CASES))
def test_core_matches_loop(name, seed, block):
  """The batched core equals the tile loop (itself checked against the
  reference in test_attention), outputs, lse and all gradients, with
  cotangents on both outputs; empty rows (odd seeds) give 0 and NEG_INF."""
  args, kw = core_case(seed, *CORE_CASES[name])
  want = run_core("loop", args, kw, block)
  got = run_core("batched", args, kw, block)
  out, lse = got[:2]
  empty = ~np.asarray(jnp.isfinite(lse) & (lse > 0.5 * common.NEG_INF))
  if seed % 2:
    assert empty.any()
  assert (np.asarray(out)[empty] == 0).all()
  assert (np.asarray(lse)[empty] == common.NEG_INF).all()
  want, got = jax.tree.leaves(want), jax.tree.leaves(got)
  assert len(want) == len(got)
  for w, g in zip(want, got):
    check_close(g, w, atol=1e-5, rtol=1e-5)


def test_core_lse_against_dense():
  """Independent of the loop: the batched core's output and lse are the
  masked softmax over the band of a dense score matrix, keys at an
  offset."""
  args, kw = core_case(2, 2, 45, 57, -6, 0, False, 0.0, False, window=6)
  q, k, v, kvalid = args
  out, lse, _ = run_core("batched", args, kw, 16)
  s = jnp.einsum("xqd,xkd->xqk", q, k) * 0.3
  dist = (np.arange(57)[None, :] - 6) - np.arange(45)[:, None]
  allowed = (np.abs(dist) <= 6)[None] & np.asarray(kvalid)[:, None, :]
  masked = jnp.where(allowed, s, -jnp.inf)
  check_close(lse, jax.nn.logsumexp(masked, axis=-1))
  check_close(out, jnp.einsum("xqk,xkd->xqd", jax.nn.softmax(masked, -1), v))


def test_choose_block_rule():
  # Short sequences: one block, n rounded up to 8.
  assert band_batched.choose_block(37, 256) == 40
  # The MLM layer (window 256, head_dim 64): 128 ties 64, the larger wins.
  assert band_batched.choose_block(4096, 256, 0, False, 64) == 128
  assert band_batched.choose_block(4096, 256, 1, False, 64) == 128
  # Narrow windows favour small blocks, wide heads larger ones.
  assert band_batched.choose_block(4096, 64, 0, False, 64) == 64
  assert band_batched.choose_block(4096, 512, 0, False, 128) == 256


def test_platform_choice_in_lowered_programs(monkeypatch):
  """On CPU the compiled program keeps the tile loop; exported for CUDA
  (jax.export, no GPU needed) the band has no loop, unless forced. Counted
  against the forced paths: other ops may lower to loops too (JAX 0.12's
  cumsum, in the global-token bookkeeping, is a scan)."""
  x = jax.ShapeDtypeStruct((1, 300, 2, 16), jnp.float32)
  gm = jax.ShapeDtypeStruct((1, 300), jnp.bool_)

  def fwd_bwd(q, k, v, gmask):
    f = lambda q, k, v: jnp.sum(windowed_attention(
        q, k, v, window=16, dilation=[1, 2], global_mask=gmask,
        max_global=2, impl="chunked"))
    return jax.grad(f, argnums=(0, 1, 2))(q, k, v)

  cpu, cuda = {}, {}
  for path in (None, "batched", "loop"):
    force(monkeypatch, path)
    cpu[path] = jax.jit(fwd_bwd).lower(x, x, x, gm).compile().as_text().count(
        " while(")
    cuda[path] = lowering.export_for_cuda(fwd_bwd, x, x, x, gm).mlir_module(
        ).count("stablehlo.while")
  # The band's loops: two dilation groups, forward and backward each.
  assert cpu[None] == cpu["loop"] == cpu["batched"] + 4
  assert cuda[None] == cuda["batched"] == cuda["loop"] - 4
  jax.clear_caches()


# Cases of tests/sharded_cases on 4 devices: halos with dropout and globals,
# causal multi-hop halos with the relative term, bf16 with globals.
SHARDED = ["p2_symmetric_padding", "p4_dropout_globals",
           "p4_causal_multihop_rel", "p2_bfloat16_globals"]


def test_sharded_matches_reference(tmp_path):
  """sequence_parallel_attention (band per shard, keys with halos at a
  negative k_offset, shifted dropout residues) on the batched path, in a
  subprocess with 4 CPU devices, against the reference."""
  path = tmp_path / "res.json"
  code = ("import json, sys; from lfjax.attention import band; "
          "band.FORCE_PATH = 'batched'; import jax; "
          "jax.config.update('jax_disable_most_optimizations', True); "
          "from tests import sharded_cases as s; "
          f"json.dump({{n: s.run_case(n, s.CASES[n], seed=i + 1) for i, n in "
          f"enumerate({SHARDED!r})}}, open(sys.argv[1], 'w'))")
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=4").strip(),
             PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  res = json.loads(path.read_text())
  for name in SHARDED:
    spec, r = sharded_cases.CASES[name], res[name]
    assert r["out_err"] <= spec.get("atol", sharded_cases.OUT_ATOL), name
    for key, err in r.items():
      if key.endswith("_err") and key.startswith("grad_"):
        assert err <= spec.get("grad_atol", sharded_cases.GRAD_ATOL), (
            name, key, err)
      if key.endswith("_finite"):
        assert err, (name, key)


def test_setting_the_switch_retraces(monkeypatch):
  """band.FORCE_PATH is part of windowed_attention's cache keys (its own
  jit and the sharded path's): setting it between two eager calls of the
  same shapes runs the other path, with no cache clearing (a fresh user's
  'loop vs batched' comparison was silently loop vs loop)."""
  jax.clear_caches()
  traced = []
  real = band_batched.forward
  monkeypatch.setattr(band_batched, "forward",
                      lambda *a, **k: traced.append(1) or real(*a, **k))
  args, kwargs = random_case(3)
  call = lambda: windowed_attention(*map(jnp.asarray, args), impl="chunked",
                                    **to_jnp(kwargs))
  monkeypatch.setattr(band, "FORCE_PATH", "loop")
  loop = call()
  assert not traced
  monkeypatch.setattr(band, "FORCE_PATH", "batched")
  batched = call()
  assert traced
  check_close(batched, loop)
  jax.clear_caches()
