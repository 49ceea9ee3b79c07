"""Checks a non-editable install of the lfjax wheel beside the newest
transformers and Hugging Face's `kernels`, as a user would have it.

Run with `python - < .ci/check_install.py` (stdin puts the current folder
first on sys.path, as `python -m` and a notebook in that folder do) from the
repository root and from another folder. Exits non-zero with a message on
the first failed check.
"""

import importlib.metadata
import importlib.resources
import importlib.util
import os
import pathlib
import sys
import sysconfig
import tempfile

import numpy as np

cwd = pathlib.Path.cwd()
in_checkout = (cwd / "lfjax").is_dir()


def check(ok, what):
  if not ok:
    sys.exit(f"check_install ({cwd}): FAILED: {what}")
  print(f"ok: {what}")


# 1. `kernels` is Hugging Face's, whatever folder we are in.
spec = importlib.util.find_spec("kernels")
hf = importlib.metadata.distribution("kernels")
check(spec is not None and pathlib.Path(spec.origin).resolve()
      == pathlib.Path(hf.locate_file("kernels/__init__.py")).resolve(),
      f"`import kernels` is Hugging Face's kernels {hf.version} "
      f"({spec and spec.origin})")
from kernels import CUDAProperties  # noqa: E402,F401

# 2. The wheel installed lfjax alone, with its dependencies declared.
# (Looked up in site-packages: from the checkout, the current folder's
# lfjax.egg-info, which an editable install leaves there, would answer.)
site_packages = sysconfig.get_paths()["purelib"]
lfjax_dist, = importlib.metadata.distributions(name="lfjax",
                                               path=[site_packages])
tops = {pathlib.PurePath(f).parts[0] for f in lfjax_dist.files
        if not pathlib.PurePath(f).parts[0].endswith(".dist-info")}
check(tops == {"lfjax"}, f"the wheel installs one top-level name: {tops}")
requires = {r.split(";")[0].split("<")[0].split(">")[0].split("=")[0]
            .strip().lower() for r in lfjax_dist.requires
            if "extra ==" not in r}
check({"jax", "flax", "optax", "orbax-checkpoint", "ml_collections"}
      <= requires, f"requires: {sorted(requires)}")

# 3. lfjax and its kernel import, from the site-packages copy outside the
# checkout; the kernel runs (Pallas interpret mode on CPU) and matches the
# dense oracle.
import lfjax  # noqa: E402
from lfjax.attention import windowed_attention  # noqa: E402
from lfjax.kernels import band_attention  # noqa: E402

site = pathlib.Path(lfjax_dist.locate_file("lfjax")).resolve()
where = pathlib.Path(lfjax.__file__).resolve().parent
check(in_checkout or where == site,
      f"lfjax is imported from {where} (the wheel's copy: {site})")
check((pathlib.Path(band_attention.__file__).parent / "README.md").is_file(),
      "lfjax/kernels/README.md ships in the wheel")
from lfjax import plan  # noqa: E402

check(all(importlib.resources.files("lfjax.gpu_targets").joinpath(
    f + ".txtpb").is_file() for f, _ in plan.TARGETS.values()),
      "lfjax/gpu_targets/*.txtpb (--plan_for's GPUs) ship in the wheel")
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((1, 37, 2, 8)).astype(np.float32)
           for _ in range(3))
got = windowed_attention(q, k, v, window=3, impl="pallas")
want = windowed_attention(q, k, v, window=3, impl="dense")
err = float(np.max(np.abs(np.asarray(got) - np.asarray(want))))
check(err < 1e-5, f"impl='pallas' (interpret mode) equals the dense "
      f"oracle: max |diff| {err:.1e}")

# 4. transformers builds a Longformer, saves it and loads it back.
import torch  # noqa: E402
import transformers  # noqa: E402

cfg = transformers.LongformerConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=32, max_position_embeddings=40, attention_window=4)
torch.manual_seed(0)
model = transformers.LongformerModel(cfg).eval()
ids = torch.tensor([[0, 5, 6, 7, 8, 9, 2]])
with tempfile.TemporaryDirectory() as tmp:
  model.save_pretrained(tmp)
  again = transformers.LongformerModel.from_pretrained(tmp).eval()
  with torch.no_grad():
    a = model(ids).last_hidden_state
    b = again(ids).last_hidden_state
check(torch.equal(a, b), f"transformers {transformers.__version__} builds, "
      "saves and reloads a LongformerModel with the same outputs")
print(f"check_install: all checks passed in {cwd} (python "
      f"{sys.version.split()[0]}, pid {os.getpid()})")
