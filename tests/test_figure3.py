"""Figure 3 in miniature's pieces (experiments/figure3_data.py and
figure3_led.py) on tiny inputs: definition snippets and dense documents
against hand-written sources, the data folder's settings check, the
length-gain verdict against a hand computation, and the position
extension against the safetensors files read directly. The training runs
themselves are the reproduction script's (experiments/results)."""

import json
import pathlib
import sys

import numpy as np
import pytest

from tests import optional

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import figure3_data  # noqa: E402
import figure3_led  # noqa: E402

SOURCE = ("import os\n"
          "def f(a):\n"
          "    return a\n"
          "    # end\n"
          "class C:\n"
          "    def method(self):\n"
          "        pass\n"
          "async def g():\n"
          "    pass")  # no newline at the end of the file


def test_snippets_take_each_top_level_definition_and_lines_after_it():
  assert figure3_data.snippets(SOURCE, 1) == [
      "def f(a):\n    return a\n",
      "class C:\n    def method(self):\n",
      "async def g():\n    pass\n"]
  assert figure3_data.snippets(SOURCE, 0) == [
      "def f(a):\n", "class C:\n", "async def g():\n"]
  assert figure3_data.toc(SOURCE) == ["f", "C", "g"]


def test_dense_documents_hold_whole_snippets_up_to_the_size():
  files = [("a.py", SOURCE)]
  sizes = {"def f(a):\n    return a\n": 23, "class C:\n    def method("
           "self):\n": 31, "async def g():\n    pass\n": 24}
  assert {len(s) for s in sizes} == set(sizes.values())  # hand counts
  # Room for all three: the first document is every snippet once.
  doc, names = figure3_data.dense_documents(files, doc_chars=78, count=1,
                                            seed=0, lines=1)[0]
  assert len(doc) == 78 and sorted(names) == ["C", "f", "g"]
  # Room for none: one snippet per document, each once per pass.
  docs = figure3_data.dense_documents(files, doc_chars=5, count=6, seed=3,
                                      lines=1)
  assert all(doc in sizes for doc, _ in docs)
  assert sorted(n for _, (n,) in docs[:3]) == ["C", "f", "g"]
  assert sorted(n for _, (n,) in docs[3:]) == ["C", "f", "g"]
  # Room for two of them (23 + 24 = 47 <= 55 < 23 + 31): documents never
  # pass 55 characters unless a single snippet does.
  docs = figure3_data.dense_documents(files, doc_chars=55, count=10,
                                      seed=1, lines=1)
  assert all(len(d) <= 55 for d, _ in docs)
  with pytest.raises(ValueError, match="no top-level definitions"):
    figure3_data.dense_documents([("b.py", "x = 1\n")], doc_chars=9,
                                 count=1, seed=0, lines=1)


def test_a_data_folder_of_other_settings_is_refused(tmp_path):
  meta = {"settings": {"chars": 1000, "counts": {"train": 2}, "seed": 0,
                       "source": "pystdlib top-level def/class names",
                       "dense": 2}, "splits": {}}
  (tmp_path / "meta.json").write_text(json.dumps(meta))
  # Same settings: read back, nothing built.
  assert figure3_data.build(tmp_path, doc_chars=1000, counts={"train": 2},
                            dense=2) == meta
  with pytest.raises(ValueError, match="--out"):
    figure3_data.build(tmp_path, doc_chars=1000, counts={"train": 2})


def test_verdict_against_a_hand_computation():
  # means 1.5 and 5.5, stdevs sqrt(0.5): s.e. = sqrt((0.5 + 0.5) / 2).
  diff, two_se, word = figure3_led.verdict([1.0, 2.0], [5.0, 6.0])
  assert diff == pytest.approx(4.0)
  assert two_se == pytest.approx(2 * 0.5 ** 0.5)
  assert word == "gains"
  assert figure3_led.verdict([1.0, 3.0], [2.0, 2.0])[2] == "within spread"
  assert figure3_led.verdict([5.0, 6.0], [1.0, 2.0])[2] == "loses"


def test_extend_positions_copies_the_learned_rows(tmp_path):
  optional.need("transformers")
  from safetensors.numpy import load_file
  from lfjax import make_tiny
  src = make_tiny.make_tiny_led(tmp_path / "src", documents=20,
                                vocab_size=300, positions=24,
                                decoder_positions=16, d_model=32, window=8)
  dst = figure3_led.extend_positions(src, tmp_path / "dst", 60, 20)
  old = load_file(str(src / "model.safetensors"))
  new = load_file(str(dst / "model.safetensors"))
  name = "led.encoder.embed_positions.weight"
  assert new[name].shape == (60, old[name].shape[1])
  for start in (0, 20, 40):  # rows 0..19 three times
    np.testing.assert_array_equal(new[name][start:start + 20],
                                  old[name][:20])
  assert set(new) == set(old)
  for k in old:
    if k != name:
      np.testing.assert_array_equal(new[k], old[k], err_msg=k)
  cfg = json.loads((dst / "config.json").read_text())
  assert cfg["max_encoder_position_embeddings"] == 60
  assert cfg["max_decoder_position_embeddings"] == 16
  assert (dst / "tokenizer.json").exists()
  # A folder already written is kept as it is.
  assert figure3_led.extend_positions(src, dst, 60, 20) == dst
  with pytest.raises(figure3_led.commands.Error, match="fewer than the 30"):
    figure3_led.extend_positions(src, tmp_path / "dst2", 60, 30)
