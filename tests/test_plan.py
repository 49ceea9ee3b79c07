"""`python -m lfjax.train --plan_for GPU` (lfjax.plan, lfjax.plan_steps).

Everywhere: flag and config errors, the message without the `plan` extra,
the micro-batch search, and the config-only model (no weights read). Where
JAX's CUDA plugin is installed (`pip install "lfjax[plan]"`; CI's Python
3.12 leg, which sets LFJAX_TEST_PLAN=1 so that a missing plugin fails
there instead of skipping): real deviceless compilations for an H100 and an
A100 of a tiny model.
"""

import json
import math
import os
import sys

import jax
import pytest

from lfjax import cli
from lfjax import extras
from lfjax import plan
from lfjax import plan_steps
from lfjax import train
from tests import optional

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import mlm_longformer_base  # noqa: E402
import qa_longformer  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, vocab_size=1000,
            max_position_embeddings=130)


def _checkpoint(path, **fields):
  """A folder with a RoBERTa config.json and nothing else (no weights, no
  tokenizer): all a plan reads."""
  d = dict(model_type="roberta", architectures=["RobertaForMaskedLM"],
           pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
           layer_norm_eps=1e-5, **dict(TINY, **fields))
  path.mkdir(exist_ok=True)
  (path / "config.json").write_text(json.dumps(d))
  return str(path)


def _run(argv, capsys):
  code = cli.run(train.main, argv)
  out = capsys.readouterr()
  return code, out.out, out.err


def _mlm_config(init_from, **train_fields):
  c = mlm_longformer_base.get_config("tiny")
  c.init_from = init_from
  for k, v in train_fields.items():
    c.train[k] = v
  return c


def _param_count(h, layers, inter, vocab, positions, types=1):
  """LongformerForMaskedLM's parameters, by hand: embeddings (word,
  position, type, layer norm), per layer six q/k/v projections (local and
  global) + output + layer norm + feed-forward + layer norm, and the LM
  head (dense, layer norm, bias; the decoder is the tied word
  embeddings)."""
  emb = (vocab + positions + types) * h + 2 * h
  layer = 6 * (h * h + h) + (h * h + h) + 2 * h + (h * inter + inter) + (
      inter * h + h) + 2 * h
  head = (h * h + h) + 2 * h + vocab
  return emb + layers * layer + head


# Without the plugin ---------------------------------------------------------


@pytest.mark.parametrize("value,want", [
    ("a100", ("a100", 1)), ("h100x8", ("h100", 8)), ("a100_80", ("a100_80", 1)),
    ("h200x2", ("h200", 2))])
def test_parse_target(value, want):
  t = plan.parse_target(value)
  assert (t.name, t.count) == want


@pytest.mark.parametrize("value,want", [
    ("v5e", ("v5e", 1, "v5e:1x1")), ("v5e:2x2", ("v5e", 4, "v5e:2x2")),
    ("v6e:2x4", ("v6e", 8, "v6e:2x4")), ("v5p", ("v5p", 1, "v5p:1x1x1")),
    ("v5p:2x2x1", ("v5p", 4, "v5p:2x2x1"))])
def test_parse_tpu_target(value, want):
  t = plan.parse_target(value)
  assert (t.name, t.count, t.topology, t.platform) == want + ("tpu",)


@pytest.mark.parametrize("value,message", [
    ("v5p:2x2", "v5p: expected a topology of 3 sizes (AxBxC), got '2x2'"),
    ("v5e:0x2", "v5e: expected a topology of 2 sizes (AxB), got '0x2'"),
    ("v5e:2x", "v5e: expected a topology of 2 sizes (AxB), got '2x'")])
def test_bad_tpu_topology(value, message):
  with pytest.raises(cli.UsageError) as e:
    plan.parse_target(value)
  assert str(e.value) == "--plan_for: " + message


@pytest.mark.parametrize("value", ["a200", "h100x0", "H100", "h100x", "",
                                   "v4", "v5ex2"])
def test_bad_target_names_flag_choices_and_value(value):
  with pytest.raises(cli.UsageError) as e:
    plan.parse_target(value)
  msg = str(e.value)
  assert msg.startswith("--plan_for: expected one of a100, a100_80, h100, "
                        "h200") and repr(value) in msg


def test_bad_target_on_the_command_line(tmp_path, capsys):
  code, _, err = _run(["--config", "configs/mlm_longformer_base.py:tiny",
                       "--config.init_from", _checkpoint(tmp_path / "m"),
                       "--plan_for", "a200"], capsys)
  assert code == 2
  assert err.splitlines()[0] == (
      "error: --plan_for: expected one of a100, a100_80, h100, h200, "
      "optionally with xN for N GPUs (e.g. h100x8), or a TPU v5e, v5p, v6e, "
      "optionally with a slice's topology (e.g. v5e:2x2, v5p:2x2x1), got "
      "'a200'")


def test_workdir_still_required_without_plan_for(capsys):
  code, _, err = _run(["--config", "configs/charlm_default.py:tiny"], capsys)
  assert code == 2 and "--workdir: required" in err


def test_missing_plugin_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
  real = plan.importlib.metadata.version

  def version(name):
    if name == "jax-cuda12-plugin":
      raise plan.importlib.metadata.PackageNotFoundError(name)
    return real(name)
  monkeypatch.setattr(plan.importlib.metadata, "version", version)
  with pytest.raises(extras.MissingPackage, match=r'pip install "lfjax\[plan'):
    plan.require_plugin()
  code, out, err = _run(["--config", "configs/mlm_longformer_base.py:tiny",
                         "--config.init_from", _checkpoint(tmp_path / "m"),
                         "--plan_for", "h100"], capsys)
  assert code == 2 and out == ""
  assert err.startswith("error: --plan_for needs JAX's CUDA plugin")
  assert 'pip install "lfjax[plan]"' in err and "Traceback" not in err


def test_plugin_of_another_jaxlib_is_refused(monkeypatch):
  real = plan.importlib.metadata.version
  monkeypatch.setattr(plan.importlib.metadata, "version", lambda n: (
      "0.0.1" if n == "jax-cuda12-plugin" else real(n)))
  with pytest.raises(extras.MissingPackage, match="does not match jaxlib"):
    plan.require_plugin()


def test_no_config_json(tmp_path):
  c = _mlm_config(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="config.init_from: expected a "
                     "folder with config.json"):
    plan_steps.mlm_steps(c, jax.devices())


@pytest.mark.parametrize("config,why", [
    ("configs/charlm_default.py:tiny", "'charlm' is not planned: the "
     "char-LM has no init_from"),
    ("configs/summarization_led.py:tiny", "'summarization' is not planned: "
     "the planner does not build LED's train step"),
])
def test_unplanned_tasks_say_why(capsys, config, why):
  code, _, err = _run(["--config", config, "--plan_for", "h100"], capsys)
  assert code == 2
  assert err.startswith("error: --plan_for: plans the tasks mlm, "
                        "classification, qa, multiple_choice (their model is "
                        "init_from's config.json); config.task " + why), err
  assert err.splitlines()[1].startswith("(--verbose")  # one message line


def test_validate_without_data_and_with_offload(tmp_path):
  c = qa_longformer.get_config("tiny")
  c.init_from = _checkpoint(tmp_path / "m")
  c.model.remat, c.model.remat_policy = True, "offload"
  plan.validate(c)  # no data.train, offload: fine for a GPU plan
  c.model.max_question_tokens = 0
  with pytest.raises(cli.UsageError, match="model.max_question_tokens"):
    plan.validate(c)


@pytest.mark.parametrize("raw,want", [("", 0.75), ("0.95", 0.95)])
def test_memory_fraction(raw, want):
  assert plan.memory_fraction({"XLA_PYTHON_CLIENT_MEM_FRACTION": raw}) == want


@pytest.mark.parametrize("raw", ["1.5", "x", "0"])
def test_bad_memory_fraction(raw):
  with pytest.raises(cli.UsageError, match="XLA_PYTHON_CLIENT_MEM_FRACTION"):
    plan.memory_fraction({"XLA_PYTHON_CLIENT_MEM_FRACTION": raw})


def test_micro_batch_sizes():
  assert plan.micro_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
  assert plan.micro_batch_sizes(12, groups=2) == [2, 4, 6, 12]
  assert plan.micro_batch_sizes(6, groups=4) == []


class _Fit:
  def __init__(self, fits):
    self.fits = fits


@pytest.mark.parametrize("limit,start,want", [
    (8, 8, 8), (8, 1, 8), (5, 64, 4), (0, 8, None), (100, 2, 64),
    (1, 16, 1)])
def test_largest_fitting_bisects(limit, start, want):
  sizes = plan.micro_batch_sizes(64)
  calls = []

  def fits(m):
    calls.append(m)
    return _Fit(m <= limit)
  best, tried = plan.largest_fitting(sizes, fits, start=start)
  assert best == want
  assert calls[0] == start and len(calls) == len(set(calls)) <= 4
  assert all(r.fits == (m <= limit) for m, r in tried.items())


def test_target_files_and_old_plugin_fields():
  for name in plan.TARGETS:
    text = plan.target_text(plan.parse_target(name))
    assert "device_description_str" in text
  a100 = plan.target_text(plan.parse_target("a100"))
  assert plan.device_memory(a100) == 42331013120  # XLA's a100_sxm_40
  h100 = plan.parse_target("h100")
  assert "collective_memory_granularity" in plan.target_text(h100, "0.12.0.1")
  assert "collective_memory_granularity" not in plan.target_text(h100,
                                                                 "0.10.2")


def test_config_only_model_reads_no_weights(tmp_path):
  """Built from config.json alone (the folder has no weights: loading
  would fail); parameter bytes are the hand count x 4 in float32 and x 2
  in bfloat16."""
  path = _checkpoint(tmp_path / "m")
  from lfjax import convert
  with pytest.raises(FileNotFoundError):
    convert.from_pretrained(path)
  c = _mlm_config(path)  # max_positions 256 > the checkpoint's 128
  steps = plan_steps.mlm_steps(c, jax.devices())
  assert all(isinstance(x, jax.ShapeDtypeStruct)
             for x in jax.tree.leaves(steps.params))
  # make_long's table: max_positions + pad_token_id + 1 rows
  n = _param_count(32, 2, 64, 1000, c.model.max_positions + 2)
  assert plan.tree_bytes(steps.params) == 4 * n
  # AdamW's mu and nu, and two int32 step counts (Adam's, the schedule's)
  assert plan.tree_bytes(steps.opt_state) == 2 * 4 * n + 8
  c.model.param_dtype = "bfloat16"
  assert plan.tree_bytes(plan_steps.mlm_steps(c, jax.devices()).params) \
      == 2 * n


@pytest.mark.parametrize("task,config", [
    ("qa", "qa_longformer"), ("classification", "classify_longformer"),
    ("multiple_choice", "multiple_choice_longformer")])
def test_finetuning_steps_trace_with_the_tasks_shapes(task, config,
                                                      tmp_path):
  """Each fine-tuning task's train and evaluation steps take the batch
  plan_steps.finetune_batch describes (traced and lowered: the shapes
  agree with the task's loss and forward)."""
  import importlib
  c = importlib.import_module(config).get_config("tiny")
  c.init_from = _checkpoint(tmp_path / "m")
  plan.validate(c)
  steps = plan_steps.finetune_steps(c, jax.devices(), choices=3)
  assert task in steps.describe
  fn, args = steps.train(c.train.micro_batch_size)
  n = c.model.max_length
  assert args[2]["input_ids"].shape == (
      (c.train.batch_size, 3, n) if task == "multiple_choice"
      else (c.train.batch_size, n))
  fn.trace(*args).lower()
  fn, args = steps.evaluate()
  fn.trace(*args).lower()


def test_steps_compile_on_the_cpu_backend(tmp_path):
  """The planner's steps are the trainer's: they compile (here for the
  CPU, where XLA's memory analysis exists too) with the batch's shapes."""
  c = _mlm_config(_checkpoint(tmp_path / "m"), seq_len=64)
  steps = plan_steps.mlm_steps(c, jax.devices())
  fn, args = steps.train(2)
  m = plan.compile_memory(fn, args, parameters=plan.tree_bytes(steps.params),
                          optimizer=plan.tree_bytes(steps.opt_state),
                          resident=0, budget=10**12)
  # Four int32 [B, 64] token arrays, int32 positions and bool valid
  # [B, K] (K = ceil(0.15 * 64) + 1 = 11 masked tokens at most), the key.
  b = c.train.batch_size
  assert m.batch == 4 * 4 * b * 64 + (4 + 1) * b * 11 + 8
  assert m.temp > 0 and m.fits


# With the plugin: deviceless compilation for a GPU --------------------------




@pytest.fixture
def plugin():
  version = optional.need_plan_plugin()
  jax.config.update("jax_platforms", "cpu")
  # conftest's persistent cache cannot load a deviceless executable back
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  yield version
  jax.config.update("jax_enable_compilation_cache", cache)


def test_tiny_mlm_fits_an_h100(plugin, tmp_path, capsys, monkeypatch):
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  code, out, _ = _run([
      "--config", "configs/mlm_longformer_base.py:tiny",
      "--config.init_from", _checkpoint(tmp_path / "m"),
      "--config.train.batch_size", "2", "--config.train.micro_batch_size",
      "2", "--plan_for", "h100"], capsys)
  assert code == 0, out
  lines = out.splitlines()
  assert lines[-1] == "fits"
  assert "NVIDIA H100 80GB HBM3" in out and "budget 63.7 GB" in out
  assert ("  attention: the XLA path (no Pallas kernel); "
          "model.attention_impl 'auto' on H100 SXM 80 GB") in out
  assert "largest micro-batch that fits: 2" in out


def test_bf16_parameters_are_half_on_the_gpu(plugin, tmp_path):
  """The compiled evaluation step's arguments on an A100: parameters + the
  batch; bfloat16 parameters take exactly half the float32 bytes, both
  the hand count. (With a global token: else XLA drops the unused global
  projections from the arguments.)"""
  path = _checkpoint(tmp_path / "m")
  t = plan.parse_target("a100")
  devices = plan.topology_devices(t, plugin)
  n = _param_count(32, 2, 64, 1000, 256 + 2)
  got = {}
  for dtype in ("float32", "bfloat16"):
    c = _mlm_config(path)
    c.model.param_dtype = c.model.dtype = dtype
    c.model.global_bos = True
    steps = plan_steps.mlm_steps(c, devices)
    fn, args = steps.evaluate()
    m = plan.compile_memory(fn, args, parameters=0, optimizer=0,
                            resident=0, budget=0)
    # Four int32 [B, N] token arrays, int32 positions and bool valid [B, K]
    # (K = ceil(0.15 N) + 1 masked tokens at most); no key (no dropout).
    n_tok = c.train.seq_len
    k = math.ceil(c.mask.prob * n_tok) + 1
    batch = (4 * 4 * n_tok + (4 + 1) * k) * c.eval.batch_size
    assert m.batch == batch
    got[dtype] = m.arguments - batch
  assert got == {"float32": 4 * n, "bfloat16": 2 * n}


def test_absurd_micro_batch_does_not_fit(plugin, tmp_path):
  c = _mlm_config(_checkpoint(tmp_path / "m"), batch_size=1 << 16,
                  micro_batch_size=1 << 16)
  lines = []
  assert plan.plan(c, "a100", search=False, out=lines.append) == 1
  assert lines[-1] == "does not fit"
  assert any(line.startswith("  total") and "does not fit" in line
             for line in lines)


def test_fsdp_mesh_is_planned_per_device(plugin, tmp_path):
  """h100x2 with config.mesh.fsdp 2: parameters and AdamW's moments split
  in two (every leaf of the tiny model has an even dimension), and the
  step compiles for the two GPUs."""
  c = _mlm_config(_checkpoint(tmp_path / "m"), batch_size=2,
                  micro_batch_size=2)
  c.mesh.fsdp = 2
  devices = plan.topology_devices(plan.parse_target("h100x2"), plugin)
  steps = plan_steps.mlm_steps(c, devices)
  n = _param_count(32, 2, 64, 1000, 256 + 2)
  assert dict(steps.mesh.shape) == {"data": 1, "fsdp": 2, "seq": 1}
  assert plan.tree_bytes(steps.params) == 4 * n // 2
  lines = []
  assert plan.plan(c, "h100x2", search=False, out=lines.append) == 0
  assert "mesh data 1 x fsdp 2 x seq 1 on 2 of 2 devices" in lines[1]


@pytest.mark.parametrize("config,mesh", [
    ("qa_longformer", dict(fsdp=2)),
    ("multiple_choice_longformer", dict(data=1, fsdp=1, seq=2))])
def test_finetuning_mesh_is_planned_per_device(plugin, tmp_path, config,
                                               mesh):
  """Fine-tuning trains on config.mesh, and is planned on it: fsdp splits
  the parameters and AdamW's moments in two; seq splits the multiple-choice
  tokens [b, C, L] along L (padded to the seq devices as in training)."""
  import importlib
  c = importlib.import_module(config).get_config("tiny")
  c.init_from = _checkpoint(tmp_path / "m")
  t = plan.parse_target("h100x2")
  devices = plan.topology_devices(t, plugin)
  alone = plan_steps.finetune_steps(c, devices[:1], choices=3)
  c.mesh.update(mesh)
  steps = plan_steps.finetune_steps(c, devices, choices=3)
  assert dict(steps.mesh.shape) == dict(dict(data=1, fsdp=1, seq=1), **mesh)
  split = mesh.get("fsdp", 1)
  assert plan.tree_bytes(steps.params) == plan.tree_bytes(alone.params) // split
  _, args = steps.train(c.train.micro_batch_size)
  ids = args[2]["input_ids"]
  # Examples over data x fsdp, tokens over seq (a multiple of its devices).
  assert ids.sharding.spec[0] == ("data", "fsdp")
  assert ids.sharding.spec[-1] == "seq"
  assert ids.shape[-1] % steps.mesh.shape["seq"] == 0
  lines = []
  assert plan.plan(c, "h100x2", search=False, out=lines.append,
                   choices=3) == 0
  assert "on 2 of 2 devices" in lines[1]


# With libtpu: deviceless compilation for a TPU --------------------------------


@pytest.fixture
def libtpu():
  version = optional.need_libtpu()
  jax.config.update("jax_platforms", "cpu")
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  yield version
  jax.config.update("jax_enable_compilation_cache", cache)


def test_tiny_mlm_fits_a_v5e(libtpu, tmp_path, capsys):
  """The budget is the HBM XLA's TPU compiler lets a program use: a little
  under the v5e's 16 GiB (Cloud TPU's v5e page), as the compiler says."""
  code, out, _ = _run([
      "--config", "configs/mlm_longformer_base.py:tiny",
      "--config.init_from", _checkpoint(tmp_path / "m"),
      "--config.train.batch_size", "2", "--config.train.micro_batch_size",
      "2", "--plan_for", "v5e"], capsys)
  assert code == 0, out
  lines = out.splitlines()
  assert lines[-1] == "fits"
  assert lines[1].startswith("target: TPU v5e (TPU v5 lite), one device; "
                             "budget "), lines[1]
  budget = float(lines[1].split("budget ")[1].split(" GB")[0])
  assert 0.95 * 16 * 2 ** 30 / 1e9 < budget <= 16 * 2 ** 30 / 1e9
  assert "largest micro-batch that fits: 2" in out


@pytest.mark.parametrize("target,mesh_fsdp", [("v5e", 1), ("v5e:2x2", 4)])
def test_tpu_plan_traces_the_tpu_kernels(libtpu, tmp_path, monkeypatch,
                                         target, mesh_fsdp):
  """impl="auto" is chosen at trace time: a plan for a TPU, on one chip or
  on a slice's mesh, traces what a TPU runs (splash: the MLM has no
  attention dropout in :tiny's eval and no relative term; mosaic where
  the train step has dropout), not the CPU's chunked path."""
  from lfjax.attention import api
  jax.clear_caches()  # else a cached trace answers without resolve_impl
  chosen = []
  real = api.resolve_impl

  def spy(impl, **kw):
    chosen.append(real(impl, **kw))
    return chosen[-1]

  monkeypatch.setattr(api, "resolve_impl", spy)
  c = _mlm_config(_checkpoint(tmp_path / "m"), batch_size=4,
                  micro_batch_size=4)
  c.mesh.fsdp = mesh_fsdp
  lines = []
  assert plan.plan(c, target, search=False, out=lines.append) == 0
  assert chosen and set(chosen) <= {"splash", "mosaic"}, chosen
  said = [l for l in lines if l.startswith("  attention: ")]
  assert len(said) == 2, lines  # the train and the evaluation step
  for line in said:
    assert line.endswith(" (Pallas kernels); model.attention_impl 'auto' "
                         "on TPU v5e"), said
    assert set(line.split(": ")[1].split(" (")[0].split(", ")) <= {
        "splash", "mosaic"}, said


def test_slice_libtpu_cannot_lay_out_is_one_line(libtpu, tmp_path, capsys):
  """v5e:3x3 passes the shape check but libtpu refuses it (its hosts hold
  2x2 chips): one error line naming --plan_for, exit 2 (was a traceback)."""
  code, out, err = _run([
      "--config", "configs/mlm_longformer_base.py:tiny",
      "--config.init_from", _checkpoint(tmp_path / "m"),
      "--plan_for", "v5e:3x3"], capsys)
  assert code == 2, (out, err)
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  assert lines and lines[-1].startswith(
      "error: --plan_for: v5e:3x3: not a slice libtpu can lay out: "), err
  assert "Traceback" not in err


def test_step_over_hbm_is_refused_not_an_error(libtpu, tmp_path):
  """XLA's TPU compiler refuses a program over the chip's HBM
  (CompileTimeHbmOom): the plan says so and does not fit (exit 1)."""
  c = _mlm_config(_checkpoint(tmp_path / "m"), batch_size=1 << 16,
                  micro_batch_size=1 << 16)
  lines = []
  assert plan.plan(c, "v5e", search=False, out=lines.append) == 1
  assert lines[-1] == "does not fit"
  refused = [line for line in lines if "CompileTimeHbmOom" in line]
  assert refused and refused[0].strip().startswith(
      "XLA's TPU compiler refused it: HLO temporaries need"), lines


def test_tpu_slice_is_planned_per_chip(libtpu, tmp_path):
  """v5e:2x2 is four chips; config.mesh.fsdp 4 lays the run on all of them,
  and each chip holds a quarter of the parameters and moments (every leaf
  of the tiny model has a dimension divisible by 4)."""
  c = _mlm_config(_checkpoint(tmp_path / "m"), batch_size=4,
                  micro_batch_size=4)
  c.mesh.fsdp = 4
  target = plan.parse_target("v5e:2x2")
  devices = plan.topology_devices(target, libtpu)
  assert len(devices) == 4
  assert {d.device_kind for d in devices} == {"TPU v5 lite"}
  steps = plan_steps.mlm_steps(c, devices)
  n = _param_count(32, 2, 64, 1000, 256 + 2)
  assert plan.tree_bytes(steps.params) == 4 * n // 4
  lines = []
  assert plan.plan(c, "v5e:2x2", search=False, out=lines.append) == 0
  assert lines[1].startswith("target: TPU v5e 2x2 slice (4 chips) (TPU v5 "
                             "lite), mesh data 1 x fsdp 4 x seq 1 on 4 of 4 "
                             "devices"), lines[1]
