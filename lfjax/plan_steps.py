"""The steps lfjax.plan compiles: a run's train and evaluation steps, built
by the task's own code from init_from's config.json alone.

The model is nnx.eval_shape of the task's head on the config the run would
load (MLM: made long as lfjax.convert.make_long would; fine-tuning: the
head lfjax.tasks.finetune.load_model puts on it), so no weights are read
or allocated. Parameters and optimizer state are ShapeDtypeStructs on the
target's devices (split over config.mesh as lfjax.parallel.init_state
splits them); the batch has the shapes the task's data would give at the
config's lengths (the longest: every sequence padded to the maximum).
"""

import dataclasses
import json
import pathlib

import jax
import ml_collections
import numpy as np
from flax import nnx

from lfjax import convert
from lfjax import parallel
from lfjax.data import loader
from lfjax.tasks import common


@dataclasses.dataclass
class Steps:
  """What lfjax.plan compiles, for one micro-batch size at a time.

  train(micro) -> (jitted step, its argument ShapeDtypeStructs);
  evaluate() -> (jitted step, arguments); params, opt_state: abstract
  trees (per-device bytes: lfjax.plan.tree_bytes); describe: one line on
  the model and run; mesh: None or the jax Mesh planned on."""
  train: object
  evaluate: object
  params: object
  opt_state: object
  describe: str
  mesh: object
  batch_size: int
  micro_batch_size: int
  eval_batch_size: int


def read_model_config(config, **overrides):
  """The LongformerConfig of init_from's config.json (only that file is
  read). Raises FileNotFoundError naming config.init_from."""
  path = config.init_from
  if not isinstance(path, str) or not path or not pathlib.Path(
      path, "config.json").is_file():
    raise FileNotFoundError(
        f"config.init_from: expected a folder with config.json (only that "
        f"file is read to plan), got {path!r}")
  return convert.config_from_pretrained(path, **overrides)


def _sds(shape, dtype, sharding):
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def _placed(tree, shardings):
  """ShapeDtypeStructs of tree's leaves with the given sharding(s) (one
  for all, or a matching tree)."""
  if not isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x, s: _sds(x.shape, x.dtype, s), tree,
                        shardings)
  return jax.tree.map(lambda x: _sds(x.shape, x.dtype, shardings), tree)


def _concrete(tree):
  """Concrete stand-ins for the small non-parameter state of an abstract
  model (dropout RNG keys, counts): the train step closes over it as
  constants, which must be values. Their values change no buffer size."""
  def make(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      keys = jax.random.split(jax.random.key(0), max(int(np.prod(x.shape)),
                                                     1))
      return keys[0] if x.shape == () else keys.reshape(x.shape)
    return np.zeros(x.shape, x.dtype)
  return jax.tree.map(make, tree)


def _abstract_model(head, cfg, seed):
  """(train graphdef, eval graphdef, params, rest) of an abstract model."""
  model = nnx.eval_shape(lambda: convert.HEADS[head](cfg,
                                                     rngs=nnx.Rngs(seed)))
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
  return graphdef, eval_graphdef, params, _concrete(rest)


def _key(sharding):
  return _sds((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding)


def _describe(cfg, config, length, extra=""):
  m = config.model
  windows = sorted(set(cfg.windows()))
  return (f"{config.task}: {cfg.num_hidden_layers} layers x "
          f"{cfg.hidden_size} hidden, {cfg.num_attention_heads} heads, "
          f"window {windows[0] if len(windows) == 1 else windows}, "
          f"{length:,} tokens{extra}, vocab {cfg.vocab_size:,}; "
          f"dtype {m.get('dtype', 'float32')}, params "
          f"{m.get('param_dtype', 'float32')}, remat "
          + (m.get("remat_policy", "nothing") if m.get("remat") else "off"))


# MLM -----------------------------------------------------------------------


def mlm_steps(config, devices):
  """Steps of an MLM run (lfjax.tasks.mlm) on `devices` (the target's)."""
  from lfjax.tasks import mlm
  m, t = config.model, config.train
  cfg = read_model_config(
      config, attention_impl=m.attention_impl,
      max_global=1 if m.global_bos else None,
      **common.encoder_overrides(m))
  reserved = cfg.pad_token_id + 1
  if cfg.max_position_embeddings - reserved < m.max_positions:
    # As mlm.load_model -> convert.make_long would make it.
    window = (m.attention_window if convert.full_attention(cfg)
              else cfg.attention_window)
    cfg = dataclasses.replace(
        cfg, max_position_embeddings=m.max_positions + reserved,
        attention_window=window)
  if t.seq_len > m.max_positions:
    raise ValueError(f"train.seq_len: expected at most model.max_positions="
                     f"{m.max_positions}, got {t.seq_len}")
  graphdef, eval_graphdef, params, rest = _abstract_model(
      "masked_lm", cfg, config.seed)
  tx = mlm.optimizer(config, params)
  mesh = _mesh(config.mesh, devices)
  # As mlm.train_and_evaluate checks them (cli.ConfigError).
  parallel.check_batch(mesh, "train.micro_batch_size", t.micro_batch_size)
  parallel.check_seq(mesh, "train.seq_len", t.seq_len)
  params, opt_state, shardings, one = _place_state(tx, params, mesh, devices)
  rep = one if mesh is None else parallel.replicated(mesh)
  k = loader.max_masked(t.seq_len, config.mask.prob)

  def batch(rows, shardings):
    """A batch of lfjax.data.loader (masked on the host), laid out as
    mlm.train_and_evaluate puts it (shardings: a dict, or one for all)."""
    shapes = {"input_ids": ((rows, t.seq_len), np.int32),
              "attention_mask": ((rows, t.seq_len), np.int32),
              "chars": ((rows, t.seq_len), np.int32),
              "inputs": ((rows, t.seq_len), np.int32),
              "positions": ((rows, k), np.int32),
              "valid": ((rows, k), bool)}
    return {name: _sds(shape, dtype, shardings[name] if isinstance(
        shardings, dict) else shardings)
            for name, (shape, dtype) in shapes.items()}

  def train(micro):
    c = ml_collections.ConfigDict(config.to_dict())
    c.train.micro_batch_size = micro
    step = mlm.make_train_step(graphdef, rest, tx, c, shardings)
    return step, (params, opt_state,
                  batch(t.batch_size, mlm.batch_shardings(mesh) or one),
                  _key(rep))

  def evaluate():
    # As mlm.evaluate_model's jitted sums (model in eval mode).
    fn = jax.jit(lambda p, b: mlm.masked_loss(
        nnx.merge(eval_graphdef, p, rest), config, b))
    return fn, (params, batch(config.eval.batch_size, rep))

  return Steps(train, evaluate, params, opt_state,
               _describe(cfg, config, t.seq_len,
                         ", 1 global token" if m.global_bos else ""),
               mesh, t.batch_size, t.micro_batch_size, config.eval.batch_size)


def _place_state(tx, params, mesh, devices):
  """(params, opt_state, the train step's shardings, one device's
  sharding) as ShapeDtypeStructs placed as lfjax.parallel.init_state
  places them: on the first device, or split over the mesh's fsdp."""
  one = jax.sharding.SingleDeviceSharding(devices[0])
  if mesh is None:
    params = _placed(params, one)
    return params, _placed(jax.eval_shape(tx.init, params), one), None, one
  params = _placed(params, parallel.state_shardings(params, mesh))
  opt_sh = parallel.state_shardings(jax.eval_shape(tx.init, params), mesh)
  opt_state = _placed(jax.eval_shape(tx.init, params), opt_sh)
  return (params, opt_state,
          (jax.tree.map(lambda x: x.sharding, params), opt_sh, mesh), one)


def _mesh(mesh_config, devices):
  """The jax Mesh config.mesh asks for on the target's devices, or None
  (one device) as lfjax.parallel.make_mesh. Raises cli.ConfigError."""
  sizes = parallel.resolve(mesh_config, len(devices), "cuda")
  count = int(np.prod(list(sizes.values())))
  if count == 1:
    return None
  return jax.sharding.Mesh(
      np.asarray(devices[:count]).reshape([sizes[a] for a in parallel.AXES]),
      parallel.AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * len(parallel.AXES))


# Fine-tuning ---------------------------------------------------------------


def num_labels(config):
  """Classification labels to plan with: data.labels, else config.json's
  id2label, else 2 (the head's size barely matters)."""
  if config.data.labels:
    return len(config.data.labels)
  d = json.loads(pathlib.Path(config.init_from, "config.json").read_text())
  return len(d.get("id2label") or {}) or 2


def finetune_batch(task, config, rows, labels, choices, mesh, one):
  """ShapeDtypeStructs of a fine-tuning batch as the task's featurize and
  finetune_data.gather make it, at model.max_length tokens per sequence
  (padded to a multiple of the mesh's seq devices, as training pads), on
  one device or split as training splits it (finetune_data.batch_shardings)."""
  from lfjax.tasks import finetune_data
  n = finetune_data.round_up(config.model.max_length,
                             parallel.seq_shards(mesh))
  i32 = np.int32
  seq = (rows, choices, n) if task == "multiple_choice" else (rows, n)
  b = {"input_ids": (seq, i32), "attention_mask": (seq, i32)}
  if task == "qa":
    b.update(start=((rows,), i32), end=((rows,), i32))
  elif task == "classification":
    multi = config.data.label_kind == "multi"
    b["labels"] = ((rows, labels) if multi else (rows,),
                   np.float32 if multi else i32)
  else:
    b.update(global_mask=(seq, i32), answer=((rows,), i32),
             choice_mask=((rows, choices), bool))
  shapes = {k: jax.ShapeDtypeStruct(*v) for k, v in b.items()}
  sh = finetune_data.batch_shardings(mesh, shapes) or {k: one for k in b}
  return {k: _sds(v.shape, v.dtype, sh[k]) for k, v in shapes.items()}


def finetune_steps(config, devices, choices=4):
  """Steps of a fine-tuning run (classification, qa, multiple_choice) on
  `devices` (the target's), split over config.mesh as the trainer splits
  it (lfjax.tasks.finetune.train_and_evaluate).

  choices: candidates per example (multiple choice: the data decides;
  WikiHop has up to 79)."""
  from lfjax import tasks
  from lfjax.tasks import finetune
  module = tasks.get(config.task)
  spec = module.SPEC
  m, t = config.model, config.train
  labels = num_labels(config) if config.task == "classification" else None
  cfg = read_model_config(config, attention_impl=m.attention_impl,
                          **common.encoder_overrides(m))
  have = cfg.max_position_embeddings - cfg.pad_token_id - 1
  if m.max_length > have:
    raise ValueError(f"config.model.max_length: expected at most the "
                     f"{have} positions of {config.init_from}, got "
                     f"{m.max_length} (make the model long first: python -m "
                     "lfjax.convert --max_positions N)")
  if labels is not None:
    cfg = dataclasses.replace(cfg, num_labels=labels)
  graphdef, eval_graphdef, params, rest = _abstract_model(
      spec.head, cfg, config.seed)
  tx = finetune.optimizer(config, 1000)  # the step count changes no shape
  mesh = _mesh(config.mesh, devices)
  # As finetune.train_and_evaluate checks them (cli.ConfigError).
  parallel.check_batch(mesh, "train.micro_batch_size", t.micro_batch_size)
  parallel.check_batch(mesh, "eval.batch_size", config.eval.batch_size)
  params, opt_state, shardings, one = _place_state(tx, params, mesh, devices)
  rep = one if mesh is None else parallel.replicated(mesh)
  batch = lambda rows: finetune_batch(config.task, config, rows, labels,
                                      choices, mesh, one)

  def train(micro):
    b = batch(t.batch_size)
    step = finetune.make_train_step(
        graphdef, rest, tx, lambda mdl, b: spec.loss(mdl, b, config),
        t.batch_size, micro, shardings=shardings,
        batch_shardings=None if mesh is None else jax.tree.map(
            lambda x: x.sharding, b))
    return step, (params, opt_state, b, _key(rep))

  def evaluate():
    # As finetune.predict's jitted forward (model in eval mode).
    fn = jax.jit(lambda p, b: spec.forward(nnx.merge(eval_graphdef, p, rest),
                                           b, config),
                 out_shardings=None if mesh is None else rep)
    return fn, (params, batch(config.eval.batch_size))

  extra = {"qa": f", up to {m.get('max_question_tokens', 0) + 1} global "
                 "tokens",
           "classification": f", 1 global token, {labels} labels",
           "multiple_choice": f", {choices} choices"}[config.task]
  return Steps(train, evaluate, params, opt_state,
               _describe(cfg, config, m.max_length, extra), mesh,
               t.batch_size, t.micro_batch_size, config.eval.batch_size)
