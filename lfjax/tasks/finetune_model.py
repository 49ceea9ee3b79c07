"""Fine-tuning's starting point: the checkpoint's fast tokenizer, and the
model with a task's head loaded from a local checkpoint folder (the head
new unless the checkpoint holds it), with its position count checked
against model.max_length.
"""

import json
import pathlib
import warnings

from flax import nnx

from lfjax import convert
from lfjax import hf_weights
from lfjax.data import text


def load_tokenizer(path, model_dir=None):
  """The fast Hugging Face tokenizer of a local folder, with a pad token,
  checked against the checkpoint it will feed (model_dir's config.json:
  lfjax.data.text.load_tokenizer and check_fits, their errors)."""
  tok = text.load_tokenizer(path, needs=("pad",), purpose="fine-tuning")
  if model_dir is not None:  # None: featurizing only, no model involved
    text.check_fits(tok, model_dir, tokenizer_dir=path)
  return tok


_SUFFIX = {"sequence_classification": "ForSequenceClassification",
           "question_answering": "ForQuestionAnswering",
           "multiple_choice": "ForMultipleChoice"}


def _source_config(path, extra):
  """The checkpoint's own extra config fields (convert keeps them for
  to_pretrained) with `extra` (id2label, ...) merged in, as sorted JSON."""
  d = json.loads(convert.config_from_pretrained(path).source_config)
  d.update(extra)
  return json.dumps(d, sort_keys=True)


def load_model(path, head, *, seed=0, num_labels=None, extra_config=None,
               **overrides):
  """A model with `head` from a local checkpoint folder, in inference mode.

  When the checkpoint holds this head (config.json's architectures) with
  num_labels labels, it is loaded whole (a fine-tuned model, or an
  export); otherwise its encoder is loaded and the head is new: weights
  drawn from N(0, initializer_range), zero biases, as transformers
  initialises a head it does not find. A pooler the new head needs and the
  checkpoint lacks is new the same way.

  extra_config: transformers config fields to save with the model
    (id2label, label2id, problem_type); they reach config.json on export.
  overrides: LongformerConfig fields (attention_impl, ...).
  Raises FileNotFoundError and ValueError as lfjax.convert.from_pretrained.
  """
  path = str(path)
  if not pathlib.Path(path, "config.json").is_file():
    raise FileNotFoundError(f"init_from: expected a local checkpoint folder "
                            f"with config.json, got {path!r}")
  d = json.loads(pathlib.Path(path, "config.json").read_text())
  if extra_config:
    overrides["source_config"] = _source_config(path, extra_config)
  same = any(str(a).endswith(_SUFFIX[head])
             for a in d.get("architectures") or ())
  if same and num_labels is not None:
    same = len(d.get("id2label") or {}) == num_labels
  if num_labels is not None:
    overrides["num_labels"] = num_labels
  if same:
    return convert.from_pretrained(path, head=head, seed=seed,
                                   arg="config.init_from", **overrides)
  with warnings.catch_warnings():
    # The checkpoint's own head (e.g. the MLM's) is dropped on purpose.
    warnings.simplefilter("ignore")
    base = convert.from_pretrained(path, head="base", seed=seed,
                                   arg="config.init_from", **overrides)
  model = convert.HEADS[head](base.cfg, rngs=nnx.Rngs(seed))
  weights = hf_weights.export_weights(model)  # the new head, at its init
  has_pooler = model.longformer.pooler is not None
  for name, value in hf_weights.export_weights(base).items():
    if has_pooler or not name.startswith("pooler."):
      weights["longformer." + name] = value
  model = hf_weights.load_weights(model, weights)
  model.eval()
  return model


def positions(model):
  """Tokens a sequence of the model may have (its position table)."""
  cfg = model.cfg
  return cfg.max_position_embeddings - cfg.pad_token_id - 1


def check_length(config, model=None):
  """Raises ValueError naming model.max_length when it exceeds the
  positions of the model (default: of config.init_from's config.json)."""
  if model is None:
    if not pathlib.Path(config.init_from, "config.json").is_file():
      raise FileNotFoundError(
          f"init_from: expected a local checkpoint folder with config.json, "
          f"got {config.init_from!r}")
    cfg = convert.config_from_pretrained(config.init_from)
    have = cfg.max_position_embeddings - cfg.pad_token_id - 1
  else:
    have = positions(model)
  if config.model.max_length > have:
    raise ValueError(f"config.model.max_length: expected at most the "
                     f"{have} positions of {config.init_from}, got "
                     f"{config.model.max_length} (make the model long "
                     "first: python -m lfjax.convert --max_positions N)")
