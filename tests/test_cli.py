"""The commands: short errors a user can act on, one flag style, --help
with defaults, every config field validated, the MLM quick start's tiny
checkpoint. Commands run in-process (cli.run(main, argv)): a subprocess
would spend most of its time importing jax."""

import importlib.util
import pathlib
import sys

import ml_collections
import numpy as np
import pytest

from lfjax import cli
from lfjax import convert
from lfjax import evaluate
from lfjax import export
from lfjax import make_tiny
from lfjax import sample
from lfjax import train
from lfjax.data import text
from lfjax.tasks import charlm_defaults
from lfjax.tasks import classification
from lfjax.tasks import mlm
from lfjax.tasks import mlm_defaults
from lfjax.tasks import multiple_choice
from lfjax.tasks import qa
from tests import optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "charlm_default.py") + ":tiny"
MLM_TINY = str(ROOT / "configs" / "mlm_longformer_base.py") + ":tiny"


def run(capsys, main, *argv):
  """(exit status, stdout, stderr lines) of a command."""
  code = cli.run(main, list(argv))
  out, err = capsys.readouterr()
  return code, out, err.strip().splitlines()


def short_error(code, err, want_code, *words):
  assert code == want_code, err
  assert 1 <= len(err) < 5, err
  assert err[0].startswith("error: "), err
  for w in words:
    assert w in "\n".join(err), (w, err)
  assert "Traceback" not in "\n".join(err)


def test_config_section_typo_lists_the_sections(capsys, tmp_path):
  code, _, err = run(capsys, train.main, "--config", TINY,
                     "--config.train.lerning_rate=1", "--workdir",
                     str(tmp_path))
  short_error(code, err, 2, "--config.train.lerning_rate",
              "no field 'train'", "schedule", "optim", "model")
  assert not (tmp_path / "config.json").exists()


def test_config_field_typo_suggests_cleanly(capsys, tmp_path):
  code, _, err = run(capsys, train.main, "--config", TINY,
                     "--config.model.windws=3", "--workdir", str(tmp_path))
  short_error(code, err, 2, "did you mean model.windows?")
  assert "\\n" not in "\n".join(err)


def test_config_value_of_the_wrong_type_says_the_type(capsys, tmp_path):
  code, _, err = run(capsys, train.main, "--config", TINY,
                     "--config.schedule.steps=abc", "--workdir",
                     str(tmp_path))
  short_error(code, err, 2, "config.schedule.steps", "integers", "'abc'")
  code, _, err = run(capsys, train.main, "--config", TINY,
                     "--config.model.dropout=abc", "--workdir",
                     str(tmp_path))
  short_error(code, err, 2, "--config.model.dropout", "float")


def test_config_value_out_of_range_names_the_field(capsys, tmp_path):
  code, _, err = run(capsys, train.main, "--config", TINY,
                     "--config.model.dropout=-1", "--workdir", str(tmp_path))
  short_error(code, err, 2, "config.model.dropout", "[0, 1)", "-1")
  assert not (tmp_path / "config.json").exists()


def test_config_file_errors(capsys, tmp_path):
  code, _, err = run(capsys, train.main, "--config", "configs/nope.py",
                     "--workdir", str(tmp_path))
  short_error(code, err, 2, "--config", "nope.py")
  code, _, err = run(capsys, train.main, "--config",
                     TINY.replace(":tiny", ":huge"), "--workdir",
                     str(tmp_path))
  short_error(code, err, 2, "config arg: expected", "'huge'")
  code, _, err = run(capsys, train.main, "--config", TINY)
  short_error(code, err, 2, "--workdir")


def _load(name, arg):
  spec = importlib.util.spec_from_file_location(
      name, ROOT / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def _leaves(config, prefix=""):
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def _bad(value):
  if isinstance(value, bool):
    return "yes"
  if isinstance(value, int):
    return -10**9
  if isinstance(value, float):
    return -1e9
  if isinstance(value, str):
    return 123
  return ("x", -1)  # a tuple


@pytest.mark.parametrize("task", ["charlm", "mlm", "classification", "qa",
                                  "multiple_choice"])
def test_every_config_field_is_validated(task):
  if task == "charlm":
    names, validate = ["charlm_default", "charlm_text8_small",
                       "charlm_enwik8_small", "charlm_enwik8_large"], (
                           charlm_defaults.validate)
  elif task == "mlm":
    names, validate = ["mlm_longformer_base", "mlm_longformer_large"], (
        mlm_defaults.validate)
  else:
    names, validate = {
        "classification": (["classify_longformer"], classification.validate),
        "qa": (["qa_longformer"], qa.validate),
        "multiple_choice": (["multiple_choice_longformer"],
                            multiple_choice.validate)}[task]
  for name in names:
    for arg in (None, "tiny"):
      c = _load(name, arg)
      if task == "mlm":
        c.init_from, c.data.sources = "/some/roberta", ("pystdlib",)
      if task in ("classification", "qa", "multiple_choice"):
        c.init_from, c.data.train = "/some/longformer", "train.jsonl"
      validate(c)  # the shipped configs pass
  checked = 0
  for path, value in _leaves(c):
    bad = ml_collections.ConfigDict(c.to_dict(), type_safe=False)
    node = bad
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = _bad(value)
    with pytest.raises(ValueError, match=rf"config\.{path}: expected"):
      validate(bad)
    checked += 1
  assert checked > (30 if task in ("charlm", "mlm") else 20)


def test_missing_init_from_names_the_flag(capsys, tmp_path):
  code, _, err = run(capsys, train.main, "--config", MLM_TINY, "--workdir",
                     str(tmp_path))
  short_error(code, err, 2, "--config.init_from", "make_tiny")


def test_user_errors_at_run_time_are_short(capsys, tmp_path):
  # A run folder that is not one.
  code, _, err = run(capsys, evaluate.main, "--workdir", str(tmp_path))
  short_error(code, err, 1, str(tmp_path))
  code, _, err = run(capsys, sample.main, "--workdir", str(tmp_path))
  short_error(code, err, 1, str(tmp_path))
  code, _, err = run(capsys, export.main, "--workdir", str(tmp_path),
                     "--to", str(tmp_path / "out"))
  short_error(code, err, 1, str(tmp_path))
  # Missing data.
  code, _, err = run(capsys, train.main, "--config", TINY,
                     "--config.data.name=enwik8",
                     f"--config.data.dir={tmp_path / 'none'}",
                     "--workdir", str(tmp_path / "run"))
  short_error(code, err, 1, "enwik8")
  # A checkpoint folder that is not one.
  code, _, err = run(capsys, convert.main, "--from", str(tmp_path),
                     "--to", str(tmp_path / "long"))
  assert code == 1 and 1 <= len(err) < 5 and err[0].startswith("error: ")


def test_verbose_keeps_the_traceback(capsys, tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError):
    cli.run(evaluate.main, ["--workdir", str(tmp_path), "--verbose"])
  monkeypatch.setenv("LFJAX_VERBOSE", "1")
  with pytest.raises(FileNotFoundError):
    cli.run(evaluate.main, ["--workdir", str(tmp_path)])


def test_a_bug_keeps_its_traceback():
  def buggy(argv):
    return np.zeros(2) + np.zeros(3)  # a ValueError raised inside numpy
  with pytest.raises(ValueError, match="broadcast"):
    cli.run(buggy, [])

  def own(argv):
    mlm_defaults.validate(mlm_defaults.base_config())  # raised by lfjax
  assert cli.run(own, []) == 1


def test_one_flag_style_and_old_spellings(capsys, tmp_path):
  # Underscores only: the old dashed spellings and --step (a checkpoint in
  # MLM evaluation, a stride in char-LM evaluation) are refused, naming the
  # flag, before anything is read.
  # Each error says what to type instead.
  for argv, hint in [
      (["--seq-len", "8"], "flags are spelled with underscores: --seq_len"),
      (["--step", "3"], "--step is now --checkpoint (a saved step) or "
       "--stride"),
      (["--workdri", "x"], "did you mean --workdir?")]:
    code, _, err = run(capsys, mlm.evaluate_main, *argv)
    short_error(code, err, 2, argv[0], hint)
  code, _, err = run(capsys, mlm.evaluate_main, "--seq_len", "8")
  short_error(code, err, 1, "expected exactly one of --workdir and --model")
  code, _, err = run(capsys, evaluate.main, "--workdir", str(tmp_path),
                     "--step", "3")
  short_error(code, err, 2, "step", "--step is now --checkpoint")
  code, _, err = run(capsys, evaluate.main, "--workdir", str(tmp_path),
                     "--seq-len", "3")
  short_error(code, err, 2, "seq-len", "seq_len")
  code, _, err = run(capsys, convert.main, "--from", str(tmp_path), "--to",
                     str(tmp_path / "x"), "--max-positions=8")
  short_error(code, err, 2, "--max-positions",
              "flags are spelled with underscores: --max_positions")
  code, _, err = run(capsys, export.main, "--workdir", str(tmp_path), "--to",
                     str(tmp_path / "x"), "--check", "3")
  short_error(code, err, 2, "--check")


@pytest.mark.parametrize("main,argv,flags", [
    (train.main, [], ["--config", "--workdir", "--verbose"]),
    (evaluate.main, [], ["--stride", "--checkpoint", "--seq_len"]),
    (sample.main, [], ["--checkpoint", "--top_k", "--temperature"]),
    (mlm.evaluate_main, [], ["--model", "--checkpoint", "--seq_len",
                             "--max_batches"]),
    (export.main, [], ["--checkpoint"]),
    (make_tiny.main, [], ["--to", "--positions"]),
    (convert.main, [], ["--max_positions", "--attention_window"]),
])
def test_help_shows_flags_with_defaults(capsys, main, argv, flags):
  code, out, _ = run(capsys, main, *argv, "--help")
  assert code == 0
  for f in flags:
    assert f in out, (f, out)
  assert "default" in out
  assert "--seq-len" not in out and "--step " not in out


def test_make_tiny_builds_the_quick_start_checkpoint(capsys, tmp_path):
  optional.need("transformers")
  optional.need("tokenizers")
  out = make_tiny.make_tiny(tmp_path / "tiny", documents=30, vocab_size=300)
  c = _load("mlm_longformer_base", "tiny")
  c.init_from = str(out)
  mlm_defaults.validate(c)
  model = mlm.load_model(c, announce=True)
  assert "has 64 positions: making it long" in capsys.readouterr().out
  assert model.cfg.windows() == [c.model.attention_window] * 2  # made long
  assert model.cfg.max_position_embeddings - model.cfg.pad_token_id - 1 == 256
  assert text.load_tokenizer(str(out)).model_max_length == 64
  code, _, err = run(capsys, make_tiny.main, "--to", str(out))
  short_error(code, err, 1, "already holds a checkpoint")


def test_flag_errors_name_only_the_flag_typed(capsys, tmp_path):
  code, _, err = run(capsys, sample.main, "--workdir", str(tmp_path),
                     "--top_k", "-3")
  short_error(code, err, 2, "--top_k: expected an integer >= 0")
  assert "--length" not in err[0] and "--temperature" not in err[0]
  code, _, err = run(capsys, sample.main, "--workdir", str(tmp_path),
                     "--seed", str(2**31))
  short_error(code, err, 2, "--seed: expected an integer in [0, 2147483647]")
  code, _, err = run(capsys, train.main, "--config",
                     "configs/charlm_default.py:tiny", "--workdir",
                     str(tmp_path / "never"), "--config.seed=" + "9" * 20)
  short_error(code, err, 2, "config.seed: expected an integer in [0, "
              "2147483647]")
  assert not (tmp_path / "never").exists()
  code, _, err = run(capsys, sample.main, "--workdir", str(tmp_path),
                     "--temperature", "nan")
  short_error(code, err, 2, "--temperature: expected a finite number")
  code, _, err = run(capsys, convert.main, "--from", str(tmp_path / "none"),
                     "--to", str(tmp_path / "x"))
  short_error(code, err, 2, "--from: expected a local checkpoint directory")
  for argv, flag in [(["--max_batches", "-1"], "--max_batches"),
                     (["--batch_size", "0"], "--batch_size"),
                     (["--valid_fraction", "1.5"], "--valid_fraction"),
                     (["--model", str(tmp_path / "none")], "--model")]:
    code, _, err = run(capsys, mlm.evaluate_main, *argv)
    short_error(code, err, 2, f"{flag}: expected")
  code, _, err = run(capsys, make_tiny.main, "--to", str(tmp_path),
                     "--positions", "0")
  short_error(code, err, 2, "--positions: expected")


def test_a_mesh_larger_than_the_machine_is_a_usage_error(capsys, tmp_path):
  # pytest's process sees one CPU device; the trainers build the mesh
  # before they write anything.
  for config, more in ((TINY, []), (MLM_TINY, ["--config.init_from",
                                               str(tmp_path / "none")])):
    workdir = tmp_path / "run"
    code, _, err = run(capsys, train.main, "--config", config, *more,
                       "--config.mesh.seq=8", "--workdir", str(workdir))
    short_error(code, err, 2, "error: config.mesh.seq: expected at most the "
                "1 device JAX sees, got data 1 x fsdp 1 x seq 8 = 8 devices; "
                "on this CPU, JAX_NUM_CPU_DEVICES=8 in the environment")
    assert not workdir.exists()


def test_a_config_field_given_twice_is_refused(capsys, tmp_path):
  # ml_collections joins a repeated tuple flag: these two would train
  # schedule.steps = (1, 1, 2, 2).
  workdir = tmp_path / "run"
  code, _, err = run(capsys, train.main, "--config", TINY,
                     "--config.schedule.steps=(1,1)",
                     "--config.schedule.steps=(2,2)", "--workdir",
                     str(workdir))
  short_error(code, err, 2, "--config.schedule.steps: given more than once")
  code, _, err = run(capsys, train.main, "--config", TINY,
                     "--config.tensorboard", "--noconfig.tensorboard",
                     "--workdir", str(workdir))
  short_error(code, err, 2, "--config.tensorboard: given more than once")
  assert not workdir.exists()


def test_phase_count_and_boolean_errors_name_the_cause(capsys, tmp_path):
  # Three phases of steps against the tiny config's two of everything else.
  code, _, err = run(capsys, train.main, "--config", TINY,
                     "--config.schedule.steps=(100,30,10)", "--workdir",
                     str(tmp_path / "a"))
  short_error(code, err, 2, "config.schedule.seq_lens",
              "one per phase: schedule.steps has 3")
  code, _, err = run(capsys, train.main, "--config", TINY,
                     "--config.model.remat=yes", "--workdir",
                     str(tmp_path / "b"))
  short_error(code, err, 2, "--config.model.remat=yes",
              "expected true or false, got 'yes'")
  assert "Non-boolean" not in err[0]


@pytest.mark.parametrize("data,alphabet", [
    ("text8", " abcdefghijklmnopqrstuvwxyz"),  # text8's 27 characters
    ("pystdlib", None)])
def test_next_sample_command_uses_a_prompt_the_corpus_has(tmp_path, data,
                                                          alphabet):
  """lfjax.train's `next:` lines: a text8 run was told to sample from
  'def main(', which text8 refuses ('(' is not in it)."""
  import json
  import shlex
  from lfjax.tasks import charlm
  config = charlm_defaults.base_config()
  config.data.name = data
  (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
  line = charlm.next_steps(tmp_path)[1]
  prompt = shlex.split(line)[shlex.split(line).index("--prompt") + 1]
  assert prompt and set(prompt) <= set(alphabet or prompt)
  assert (prompt == "def main(") == (data == "pystdlib")


def test_a_missing_optional_package_is_one_line_naming_the_extra(
    capsys, tmp_path, monkeypatch):
  # As on a core install (`pip install lfjax`, no [hf]): importing
  # transformers fails.
  monkeypatch.setitem(sys.modules, "transformers", None)
  code, _, err = run(capsys, make_tiny.main, "--to", str(tmp_path / "t"))
  short_error(code, err, 1, "needs the transformers package",
              'pip install "lfjax[hf]"')
  assert not (tmp_path / "t").exists()
  # MLM and fine-tuning read tokenizers through the same check.
  from lfjax import extras
  from lfjax.tasks import finetune_model
  for load in (text.load_tokenizer, finetune_model.load_tokenizer):
    with pytest.raises(extras.MissingPackage, match=r'tokenizer: .* needs the '
                       r'transformers package.*pip install "lfjax\[hf\]"'):
      load(str(tmp_path))


def test_mlm_store_with_sources_says_how_to_clear_them(capsys, tmp_path):
  # :tiny sets data.sources=('pystdlib',): adding data.store names them and
  # the flag that clears them, and that flag (as a shell passes it after
  # --config.data.sources='()') does clear them.
  base = ["--config", MLM_TINY, "--config.init_from", str(tmp_path / "m"),
          "--config.data.store", str(tmp_path / "store"), "--workdir",
          str(tmp_path / "run")]
  code, _, err = run(capsys, train.main, *base)
  short_error(code, err, 2, "config.data.store: expected '' when "
              "data.sources are given (data.sources=('pystdlib',), e.g. "
              "from the :tiny config)",
              "pass --config.data.sources='()'")
  code, _, err = run(capsys, train.main, *base, "--config.data.sources=()")
  short_error(code, err, 1, f"{tmp_path / 'store'}: not a token store")
  # Several sources: a Python tuple of strings, as docs/data.md shows.
  code, _, err = run(capsys, train.main, *base,
                     "--config.data.sources=('a.jsonl','b.parquet')")
  short_error(code, err, 2, "(data.sources=('a.jsonl', 'b.parquet'),")
