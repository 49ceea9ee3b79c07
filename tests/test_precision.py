"""bfloat16 compute (model.dtype) and parameters (model.param_dtype) of the
Longformer encoder and heads, against transformers' float32 PyTorch model:
the expected values are transformers', within bfloat16's resolution. The
dtype flow itself (bf16 operands into every matmul and the attention,
float32 logits) is tested in tests/test_models.py without torch."""

import json

import numpy as np
import pytest

from tests import optional

torch = optional.need("torch")
transformers = optional.need("transformers")

import jax.numpy as jnp  # noqa: E402

from lfjax import convert  # noqa: E402
from lfjax import metrics  # noqa: E402
from lfjax import train  # noqa: E402
from tests.hf_cases import TINY, batch, run_hf, save  # noqa: E402
from tests.test_mlm import config as mlm_config  # noqa: E402
from tests.test_mlm import docs_dir  # noqa: E402,F401 (fixture)
from tests.test_mlm import roberta  # noqa: E402,F401 (fixture)

# bfloat16 keeps 8 bits of mantissa (~0.4% per rounding). Measured on the
# MLM case below (logits' std 0.15): max |error| 0.0048, mean 0.0007 (float32
# compute: 1.2e-7); the bounds are about 3x those.
ATOL = 0.015


def close_to_hf(got, want, mask):
  valid = mask.astype(bool)
  got, want = np.asarray(got, np.float32)[valid], want[valid]
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
  # Far closer than the logits' own spread: the same function.
  assert np.abs(got - want).mean() < 0.015 * want.std()


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("impl", ["dense", "chunked"])
def test_bfloat16_mlm_matches_transformers(tmp_path, param_dtype, impl):
  torch.manual_seed(20)
  cfg = transformers.LongformerConfig(attention_window=[8, 4, 8], **TINY)
  hf = save(transformers.LongformerForMaskedLM(cfg), tmp_path)
  ids, mask, glob = batch([37, 23], 37, "scattered")
  want = run_hf(hf, ids, mask, glob).logits.numpy()
  ours = convert.from_pretrained(str(tmp_path), compute_dtype="bfloat16",
                                 param_dtype=param_dtype, attention_impl=impl)
  got = ours(ids, mask, glob).logits
  assert got.dtype == jnp.float32
  close_to_hf(got, want, mask)
  # Exported (float32 tensors), transformers reads it back.
  convert.to_pretrained(ours, str(tmp_path / "out"))
  saved = json.loads((tmp_path / "out" / "config.json").read_text())
  assert "compute_dtype" not in saved and "param_dtype" not in saved
  back = transformers.LongformerForMaskedLM.from_pretrained(
      tmp_path / "out").eval()
  close_to_hf(run_hf(back, ids, mask, glob).logits.numpy(), want, mask)


def test_bfloat16_question_answering_matches_transformers(tmp_path):
  torch.manual_seed(21)
  cfg = transformers.LongformerConfig(attention_window=4, sep_token_id=2,
                                      **TINY)
  hf = save(transformers.LongformerForQuestionAnswering(cfg), tmp_path)
  ids, mask, _ = batch([33, 27], 33, "none", seed=3)
  # <s> question </s></s> context </s>: tokens 0-4 are the question
  # (global, by both models' default).
  ids[:, 5] = ids[:, 6] = 2
  ids[0, 32] = ids[1, 26] = 2
  want = run_hf(hf, ids, mask)
  ours = convert.from_pretrained(str(tmp_path), compute_dtype="bfloat16")
  got = ours(ids, mask)
  assert got.start_logits.dtype == jnp.float32
  close_to_hf(got.start_logits, want.start_logits.numpy(), mask)
  close_to_hf(got.end_logits, want.end_logits.numpy(), mask)


def test_bfloat16_mlm_training_follows_float32(roberta, docs_dir, tmp_path):
  """model.dtype=bfloat16 trains the MLM :tiny run as float32 does: the
  same data, masks and dropout; per-step losses within 0.2% (measured:
  0.03% at most)."""
  runs = {}
  for dtype in ("float32", "bfloat16"):
    c = mlm_config(roberta, docs_dir, tmp_path, **{"model.dtype": dtype})
    train.train_and_evaluate(c, tmp_path / dtype)
    recs = metrics.read(tmp_path / dtype / "metrics.jsonl")
    runs[dtype] = np.array([r["train_loss"] for r in recs
                            if "train_loss" in r])
  np.testing.assert_allclose(runs["bfloat16"], runs["float32"], rtol=0.002)
  assert runs["bfloat16"][-3:].mean() < runs["bfloat16"][0] - 0.3
