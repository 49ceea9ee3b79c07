"""lfjax.checkpoints' asynchronous saves and their integrity records: the
training thread goes on while orbax writes, the record follows the commit,
a kill before the commit leaves the previous step the newest, and a step
is hashed once per process."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfjax import checkpoints
from lfjax import integrity

ROOT = pathlib.Path(__file__).resolve().parents[1]


def state(n=1000, value=0.0):
  params = {"w": jnp.full((n,), value, jnp.float32)}
  opt_state = {"mu": jnp.full((n,), value + 1, jnp.float32)}
  return params, opt_state


def test_save_returns_before_the_record_and_waiting_writes_it(
    tmp_path, monkeypatch):
  release, written = threading.Event(), []
  real = integrity.write_record

  def slow_record(directory, step):
    assert release.wait(60)
    real(directory, step)
    written.append(step)
  monkeypatch.setattr(integrity, "write_record", slow_record)
  params, opt_state = state(value=2.0)
  with checkpoints.manager(tmp_path) as mngr:
    checkpoints.save(mngr, 5, params, opt_state, {"phase": 0})
    # save() came back while the record (after orbax's commit) is pending.
    assert written == []
    # The training thread may now donate or overwrite the saved arrays.
    update = jax.jit(lambda p: jax.tree.map(lambda x: x * 0 - 7, p),
                     donate_argnums=0)
    params, opt_state = update(params), update(opt_state)
    jax.block_until_ready((params, opt_state))
    release.set()
    mngr.wait_until_finished()
    assert written == [5]
  rec = json.loads((tmp_path / "checkpoints" / "5" / integrity.RECORD)
                   .read_text())
  assert rec["step"] == 5 and rec["files"]
  with checkpoints.manager(tmp_path) as mngr:
    p, o, data = checkpoints.restore(mngr, 5, *state())
  # The values at save time (2 and 3), not the overwritten ones (-7).
  np.testing.assert_array_equal(np.asarray(p["w"]), 2.0)
  np.testing.assert_array_equal(np.asarray(o["mu"]), 3.0)
  assert data == {"phase": 0}


def test_a_failed_record_is_raised_in_the_training_thread(
    tmp_path, monkeypatch):
  def broken(directory, step):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(integrity, "write_record", broken)
  mngr = checkpoints.manager(tmp_path)
  checkpoints.save(mngr, 1, *state(), {"phase": 0})
  with pytest.raises(OSError, match="No space left"):
    mngr.wait_until_finished()
  mngr.wait_until_finished()  # raised once; the manager is usable again
  mngr.close()


def test_a_kill_during_the_save_leaves_the_previous_step_newest(tmp_path):
  # Step 1 is saved and committed; step 2 (400 MB, seconds to write) is
  # started and the process dies at once, as kill -9 would: orbax never
  # commits it, so step 1 stays the newest and verifies.
  script = textwrap.dedent(f"""
      import os, jax.numpy as jnp
      from lfjax import checkpoints
      mngr = checkpoints.manager({str(tmp_path)!r})
      small = {{"w": jnp.ones((1000,), jnp.float32)}}
      checkpoints.save(mngr, 1, small, small, {{"phase": 0}})
      mngr.wait_until_finished()
      big = {{"w": jnp.ones((100_000_000,), jnp.float32)}}
      checkpoints.save(mngr, 2, big, big, {{"phase": 0}})
      os._exit(0)
      """)
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", script], check=True, env=env,
                 timeout=300, cwd=tmp_path)
  assert checkpoints.saved_steps(tmp_path) == [1]
  with checkpoints.manager(tmp_path) as mngr:
    assert mngr.latest_step() == 1
    small = {"w": jnp.zeros((1000,), jnp.float32)}
    p, _, _ = checkpoints.restore(mngr, 1, small, small)
  np.testing.assert_array_equal(np.asarray(p["w"]), 1.0)
  assert (tmp_path / "checkpoints" / "1" / integrity.RECORD).exists()


def test_a_step_is_hashed_once_per_process_until_its_files_change(
    tmp_path, monkeypatch):
  with checkpoints.manager(tmp_path) as mngr:
    checkpoints.save(mngr, 3, *state(), {"phase": 0})
  hashed = []
  real = integrity._hash_all
  monkeypatch.setattr(integrity, "_hash_all",
                      lambda paths: hashed.append(len(paths)) or real(paths))
  integrity.verify(tmp_path / "checkpoints", 3)
  integrity.verify(tmp_path / "checkpoints", 3)
  assert len(hashed) == 1 and hashed[0] > 0
  # A file changed since (same size): verified again, and refused.
  step = tmp_path / "checkpoints" / "3"
  f = max((f for f in step.rglob("*") if f.is_file()
           and f.name != integrity.RECORD), key=lambda f: f.stat().st_size)
  data = bytearray(f.read_bytes())
  data[len(data) // 2] ^= 0xFF
  f.write_bytes(bytes(data))
  with pytest.raises(checkpoints.CheckpointError, match="sha256 differs"):
    integrity.verify(tmp_path / "checkpoints", 3)
  assert len(hashed) == 2
