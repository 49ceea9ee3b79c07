"""Load Hugging Face Longformer / RoBERTa checkpoints into lfjax models.

Reads a local directory (config.json plus model.safetensors, its sharded
form, or pytorch_model.bin); nothing is downloaded. Every tensor of a
checkpoint is used or the load refuses and names it; every parameter comes
from the checkpoint or the load refuses.
"""

import dataclasses
import json
import os
import shutil
import warnings

import numpy as np
from flax import nnx

from lfjax import hf_weights
from lfjax.models.config import LongformerConfig
from lfjax.models.heads import LongformerForMaskedLM
from lfjax.models.heads import LongformerForMultipleChoice
from lfjax.models.heads import LongformerForQuestionAnswering
from lfjax.models.heads import LongformerForSequenceClassification
from lfjax.models.heads import LongformerForTokenClassification
from lfjax.models.longformer import LongformerModel

HEADS = {
    "base": LongformerModel,
    "masked_lm": LongformerForMaskedLM,
    "sequence_classification": LongformerForSequenceClassification,
    "token_classification": LongformerForTokenClassification,
    "multiple_choice": LongformerForMultipleChoice,
    "question_answering": LongformerForQuestionAnswering,
}
# transformers' class-name suffixes (config.json "architectures") per head.
_ARCHITECTURES = (("ForMaskedLM", "masked_lm"),
                  ("ForSequenceClassification", "sequence_classification"),
                  ("ForTokenClassification", "token_classification"),
                  ("ForMultipleChoice", "multiple_choice"),
                  ("ForQuestionAnswering", "question_answering"),
                  ("Model", "base"))
# Tensor-name prefixes of every head (after the BERT renaming).
_HEAD_TENSORS = ("lm_head.", "classifier.", "qa_outputs.", "cls.")

# RoBERTa-family types share one architecture (XLM-R and CamemBERT are
# RoBERTa with other vocabularies).
ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
MODEL_TYPES = ("longformer",) + ROBERTA_TYPES + ("bert",)
def _read_config(path, arg="path"):
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{arg}: expected a Hugging Face checkpoint "
                            f"directory with config.json, found none in "
                            f"{path!r}")
  with open(file) as f:
    return json.load(f)


def config_from_pretrained(path, **overrides):
  return _config_from_dict(_read_config(path), **overrides)


# LongformerConfig fields that say how this process runs a model, not what
# the model is: never written to config.json, and ignored there (an export
# of lfjax <= 0.2.0 holds attention_impl and max_global, which would cap
# the global tokens of every later use), so only from_pretrained's
# overrides set them.
RUNTIME_FIELDS = ("attention_impl", "max_global", "compute_dtype",
                  "param_dtype", "remat", "remat_policy", "scan_layers")


def _config_from_dict(d, **overrides):
  d = {k: v for k, v in d.items() if k not in RUNTIME_FIELDS}
  model_type = d.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"config.json: model_type expected one of {MODEL_TYPES}, "
                     f"got {model_type!r}")
  if d.get("is_decoder") or d.get("add_cross_attention"):
    raise ValueError(
        "config.json: is_decoder/add_cross_attention is set: a causal "
        "(decoder) checkpoint, which a bidirectional Longformer encoder "
        "cannot reproduce; lfjax loads encoders only")
  if model_type == "bert":
    d = dict(d, max_position_embeddings=d.get("max_position_embeddings", 512)
             + d.get("pad_token_id", 0) + 1, position_ids_from="index",
             lm_head_act=d.get("hidden_act", "gelu"))
  if (model_type != "longformer" and "attention_window" not in d
      and "attention_window" not in overrides):
    # A window that covers every position reproduces full attention. A
    # RoBERTa config WITH attention_window is a Longformer made by the
    # original authors' recipe (RobertaLong): its windows are kept.
    d = dict(d, attention_window=2 * d["max_position_embeddings"])
  return LongformerConfig.from_dict(d, **overrides)


def _head_of(d, weights):
  """(head the checkpoint holds, how it was told). The config's
  architectures decide (RobertaForCausalLM and RobertaForMaskedLM share
  tensor names); without them, the head tensors' names and shapes."""
  for arch in d.get("architectures") or ():
    for suffix, head in _ARCHITECTURES:
      # "Model" alone is the base (BertLMHeadModel is not).
      if arch.endswith(suffix) and (head != "base" or (
          "For" not in arch and "Head" not in arch)):
        return head, arch
    return None, arch
  names = set(weights)
  if any(k.startswith("lm_head.") for k in names):
    return "masked_lm", "lm_head.* tensors"
  if any(k.startswith("classifier.dense.") for k in names):
    return "sequence_classification", "classifier.dense.* tensors"
  if "classifier.weight" in names:
    pooled = any(map(_is_pooler, names))
    if weights["classifier.weight"].shape[0] == 1 and pooled:
      return "multiple_choice", "a one-output classifier over the pooler"
    return "token_classification", "classifier.weight"
  if any(k.startswith("qa_outputs.") for k in names):
    return "question_answering", "qa_outputs.* tensors"
  extra = sorted(filter(_is_head_tensor, names))
  if extra:
    return None, f"head tensors {extra[:4]}"
  return "base", "no head tensors"


def _is_pooler(name):
  return hf_weights.strip_prefix(name).startswith("pooler.")


def _is_head_tensor(name):
  return name.startswith(_HEAD_TENSORS)


def from_pretrained(path, *, head=None, seed=0, arg="path", **overrides):
  """A local Hugging Face directory -> an lfjax model with its weights, in
  inference mode (dropout off, like transformers' from_pretrained); call
  `.train()` on it to fine-tune.

  model_type longformer, roberta, xlm-roberta, camembert or bert. RoBERTa-
  family and BERT checkpoints load as Longformers whose window covers every
  position (exactly the original model), with global projections copied
  from the local ones; a RoBERTa-family config that has attention_window
  (the original authors' RobertaLong recipe) keeps its windows and its
  trained query_global/key_global/value_global.

  head: one of HEADS ("base", "masked_lm", "sequence_classification",
    "token_classification", "multiple_choice", "question_answering"); None
    picks the head the checkpoint holds (config.json's architectures, else
    its tensors). Asking for another head drops the checkpoint's head
    tensors with a warning; a head whose weights the checkpoint lacks
    raises.
  overrides: LongformerConfig fields (e.g. attention_impl, max_global).
  arg: how the caller's user named path (e.g. "config.init_from"), for the
    error messages.

  Raises FileNotFoundError (no directory, no weights), ValueError (unknown
  model_type or head, a tensor with no place, a missing or misshapen
  parameter).
  """
  if head is not None and head not in HEADS:
    raise ValueError(f"head: expected one of {sorted(HEADS)} or None, got "
                     f"{head!r}")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{arg}: expected a local checkpoint directory, "
                            f"got {path!r}")
  d = _read_config(path, arg)
  cfg = _config_from_dict(d, **overrides)
  weights = hf_weights.read_weights(path, arg)
  model_type = d["model_type"]
  if model_type == "bert":
    weights = hf_weights.bert_as_roberta(weights, cfg.pad_token_id)
  has_global = any(".query_global." in k for k in weights)
  if model_type != "longformer" and not has_global:
    if "attention_window" in d:
      warnings.warn(f"{path}: config.json has attention_window but the "
                    "weights have no global projections; they start as "
                    "copies of the local ones (the paper's recipe)")
    weights = hf_weights.with_global_projections(weights)
  found, told = _head_of(d, weights)
  if head is None:
    if found is None:
      raise ValueError(
          f"head: {path} holds a {told} head, which lfjax does not have; "
          f"lfjax has {sorted(HEADS)} (transformers' Longformer heads). "
          f"Pass head='base' to load the encoder alone")
    head = found
  cfg = _tie_config(cfg, weights, head)
  _check_head_layout(path, weights, head, found, told)
  rngs = nnx.Rngs(seed)
  if head == "base":
    has_pooler = any(map(_is_pooler, weights))
    model = LongformerModel(cfg, add_pooling_layer=has_pooler, rngs=rngs)
  else:
    model = HEADS[head](cfg, rngs=rngs)
  if head != found:
    # Another head than the checkpoint's (as transformers allows, with a
    # warning): the checkpoint's head tensors, and the pooler where the
    # new head has none, are not used.
    no_pooler = getattr(model, "longformer", model).pooler is None
    drop = sorted(k for k in weights
                  if _is_head_tensor(k) or (_is_pooler(k) and no_pooler))
    if drop:
      held = found or "an unsupported head"
      warnings.warn(f"head={head!r}: the checkpoint holds {held} ({told}); "
                    f"its tensors {drop[:6]} are not used")
    weights = {k: v for k, v in weights.items() if k not in drop}
  model = hf_weights.load_weights(model, weights)
  model.eval()
  return model


def _check_head_layout(path, weights, head, found, told):
  """A head of the same name but another layout (BERT's sequence classifier
  is the pooler plus one linear layer, not RoBERTa's two) is a head lfjax
  lacks: say so instead of listing homeless tensors."""
  if head != found or head == "base":
    return
  names = set(filter(_is_head_tensor, weights))
  model = HEADS[head]
  probe = {"sequence_classification": {"classifier.dense.weight"},
           "token_classification": {"classifier.weight"},
           "multiple_choice": {"classifier.weight"},
           "question_answering": {"qa_outputs.weight"},
           "masked_lm": {"lm_head.dense.weight"}}[head]
  if not probe <= names:
    raise ValueError(
        f"head: {path} holds a {told} head with tensors {sorted(names)[:6]}, "
        f"not the layout of transformers' {model.__name__}, which lfjax has; "
        f"lfjax has {sorted(HEADS)}. Pass head='base' to load the encoder "
        f"alone")


def _tie_config(cfg, weights, head):
  """tie_word_embeddings as the weights say: an MLM decoder that differs
  from the word embeddings is its own weight (transformers 5 unties such a
  checkpoint whatever its config says), an equal one is the tied copy."""
  dec = weights.get("lm_head.decoder.weight")
  if head != "masked_lm" or dec is None:
    return cfg
  emb = next(v for k, v in weights.items() if hf_weights.strip_prefix(k)
             == "embeddings.word_embeddings.weight")
  if dec.shape == emb.shape and np.array_equal(dec, emb):
    weights.pop("lm_head.decoder.weight")
    return dataclasses.replace(cfg, tie_word_embeddings=True)
  return dataclasses.replace(cfg, tie_word_embeddings=False)


# Source config fields not carried over: they describe the source file
# (dtype, library version) or its model type, not the model written.
_NOT_CARRIED = ("model_type", "architectures", "torch_dtype", "dtype",
                "transformers_version", "_name_or_path", "auto_map")


def hf_config(model):
  """config.json content for transformers' Longformer class of `model`:
  every field of the source checkpoint's config (id2label, label2id,
  problem_type, ...) plus lfjax's values."""
  cfg = model.cfg
  d = {k: v for k, v in json.loads(cfg.source_config).items()
       if k not in _NOT_CARRIED}
  ours = dataclasses.asdict(cfg)
  for name in ("source_config",) + RUNTIME_FIELDS:
    del ours[name]
  d.update(ours)
  d["attention_window"] = cfg.windows()
  labels = d.get("id2label")
  if labels is not None and len(labels) != cfg.num_labels:
    warnings.warn(f"to_pretrained: num_labels={cfg.num_labels} but the "
                  f"source's id2label has {len(labels)} entries; id2label "
                  "and label2id are not written")
    d.pop("id2label")
    d.pop("label2id", None)
  d.update(model_type="longformer", architectures=[type(model).__name__],
           dtype="float32")
  return d


def to_pretrained(model, path):
  """Write a directory that transformers' Longformer class of the same
  name (LongformerModel, LongformerForMaskedLM, ...) loads with
  from_pretrained; config fields of the source checkpoint are kept.
  Raises ValueError for dilated models (transformers has no dilation)."""
  from safetensors.numpy import save_file
  cfg = model.cfg
  if any(d != 1 and (isinstance(d, int) or any(x != 1 for x in d))
         for d in cfg.dilations()):
    raise ValueError("attention_dilation: transformers' Longformer has no "
                     f"dilation, got {cfg.attention_dilation}")
  if cfg.position_ids_from != "tokens":
    warnings.warn(
        "to_pretrained: this model counts positions by index (BERT); "
        "transformers' Longformer counts non-pad tokens, so the exported "
        "model agrees only on inputs without left padding")
  if isinstance(model, LongformerForMaskedLM) and cfg.lm_head_act != "gelu":
    raise ValueError(f"lm_head_act: transformers' Longformer MLM head uses "
                     f"gelu, this model's (from BERT) uses "
                     f"{cfg.lm_head_act!r}; export it with head='base' "
                     f"weights or keep it in lfjax")
  os.makedirs(path, exist_ok=True)
  save_file(hf_weights.export_weights(model),
            os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config(model), f, indent=2)
  return path


def full_attention(cfg):
  """Whether cfg is a RoBERTa-family or BERT checkpoint that from_pretrained
  gave windows covering its positions (it has no trained windows of its
  own), as opposed to a Longformer (whose windows are trained, whatever
  their size) or a RobertaLong (config.json with attention_window). A
  config built in code, with no source model_type, counts as full
  attention when its windows cover every position."""
  model_type = json.loads(cfg.source_config).get("model_type")
  if model_type == "longformer":
    return False
  if model_type is not None:
    return all(w == 2 * cfg.max_position_embeddings for w in cfg.windows())
  positions = cfg.max_position_embeddings - cfg.pad_token_id - 1
  return all(w // 2 >= positions - 1 for w in cfg.windows())


def make_long(model, max_positions=4096, attention_window=None, seed=0,
              positions="copy"):
  """The paper's RoBERTa-to-Longformer recipe on a loaded model (Section
  5; allenai's convert_model_to_long.ipynb), also for lengthening a
  Longformer (e.g. longformer-base-4096 to 16K positions).

  Position embeddings: the first pad_token_id + 1 rows (RoBERTa's reserved
  ones) are kept; the learned rows after them are copied repeatedly until
  max_positions tokens are covered (positions="copy"), or all rows after
  the reserved ones are drawn afresh from N(0, initializer_range)
  (positions="random", the paper's Table 5 baseline). Every other weight is
  the model's own: a Longformer keeps its trained global q/k/v; a RoBERTa
  or BERT loaded by from_pretrained has them as copies of its local ones
  (the recipe).

  attention_window: the full window (even), an int or one per layer; None
  keeps a Longformer's own (per-layer) windows and gives a full-attention
  model (RoBERTa, BERT: full_attention(cfg)) the paper's 512.
  Returns a new model in inference mode; the input model is unchanged.
  """
  if positions not in ("copy", "random"):
    raise ValueError(f"positions: expected 'copy' or 'random', got "
                     f"{positions!r}")
  if not isinstance(max_positions, int) or max_positions < 1:
    raise ValueError(f"max_positions: expected an int >= 1, got "
                     f"{max_positions!r}")
  cfg = model.cfg
  reserved = cfg.pad_token_id + 1
  have = cfg.max_position_embeddings - reserved
  if max_positions < have:
    raise ValueError(f"max_positions: expected at least the model's "
                     f"{have} positions (make_long does not shorten a "
                     f"model), got {max_positions}")
  if attention_window is None:
    attention_window = 512 if full_attention(cfg) else cfg.attention_window
  new_cfg = dataclasses.replace(
      cfg, max_position_embeddings=max_positions + reserved,
      attention_window=attention_window)
  rngs = nnx.Rngs(seed)
  is_task = hasattr(model, "longformer")  # any task model
  if is_task:
    new = type(model)(new_cfg, rngs=rngs)
  else:
    new = LongformerModel(new_cfg, add_pooling_layer=model.pooler is not None,
                          rngs=rngs)
  weights = hf_weights.export_weights(model)
  pos_key = ("longformer." if is_task else "") + (
      "embeddings.position_embeddings.weight")
  old = weights[pos_key]
  learned = old[reserved:]
  if positions == "copy":
    reps = -(-max_positions // len(learned))
    new_rows = np.tile(learned, (reps, 1))[:max_positions]
  else:
    new_rows = cfg.initializer_range * np.random.default_rng(seed).standard_normal(
        (max_positions, old.shape[1])).astype(np.float32)
  weights[pos_key] = np.concatenate([old[:reserved], new_rows], axis=0)
  # export_weights holds the model's global q/k/v: a Longformer's trained
  # ones are kept (copying the local ones over them discarded them).
  new = hf_weights.load_weights(new, weights)
  new.eval()
  return new


def copy_tokenizer(src, dst, max_length=None):
  """Copies the tokenizer files of checkpoint folder src into dst, setting
  model_max_length; returns the names copied."""
  copied = []
  for name in sorted(os.listdir(src)):
    if name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
      shutil.copy(os.path.join(src, name), os.path.join(dst, name))
      copied.append(name)
  tok_cfg = os.path.join(dst, "tokenizer_config.json")
  if max_length and os.path.exists(tok_cfg):
    with open(tok_cfg) as f:
      d = json.load(f)
    d["model_max_length"] = max_length
    with open(tok_cfg, "w") as f:
      json.dump(d, f, indent=2)
  return copied


def check_cli_args(args):
  """The checks both make-long commands (this module's and
  lfjax.led_convert's) make of --from, --to, --max_positions and
  --attention_window (None: the model's own windows). Raises
  cli.UsageError naming the flag; nothing is ever written over a
  checkpoint."""
  from lfjax import cli
  if not os.path.isdir(args.src):
    raise cli.UsageError(f"--from: expected a local checkpoint directory "
                         f"(config.json, weights, tokenizer files), got "
                         f"{args.src!r}: no such directory")
  if os.path.abspath(args.src) == os.path.abspath(args.dst):
    raise cli.UsageError("--to: expected a directory other than --from (the "
                         "source checkpoint is never overwritten)")
  if os.path.exists(os.path.join(args.dst, "config.json")):
    raise cli.UsageError(f"--to: {args.dst!r} already holds a checkpoint "
                         "(config.json); choose a new folder (nothing is "
                         "overwritten)")
  if args.max_positions < 1:
    raise cli.UsageError(f"--max_positions: expected an int >= 1, got "
                         f"{args.max_positions}")
  if args.attention_window is not None and (
      args.attention_window < 2 or args.attention_window % 2):
    raise cli.UsageError(f"--attention_window: expected a positive even int "
                         f"(the full window), got {args.attention_window}")


def main(argv=None):
  """`python -m lfjax.convert --from DIR --to DIR ...`; argv excludes the
  program name. Raises cli.UsageError for bad flags or --to == --from."""
  from lfjax import cli
  p = cli.ArgumentParser(
      prog="python -m lfjax.convert",
      description="Make a long model from a RoBERTa, BERT or Longformer "
      "checkpoint (position embeddings copied; a Longformer keeps its "
      "trained global projections and windows, a RoBERTa's global "
      "projections start as copies of its local ones) and write it for "
      "transformers, with the tokenizer files.")
  p.add_argument("--from", dest="src", required=True,
                 help="local Hugging Face checkpoint directory")
  p.add_argument("--to", dest="dst", required=True, help="output directory")
  p.add_argument("--max_positions", type=int, default=4096,
                 help="positions of the long model")
  p.add_argument("--attention_window", type=int, default=None,
                 help="FULL window (even), as transformers counts it "
                 "(default: a Longformer's own per-layer windows; 512 for "
                 "RoBERTa and BERT)")
  args = p.parse_args(argv)
  check_cli_args(args)
  model = from_pretrained(args.src, arg="--from")
  long_model = make_long(model, args.max_positions, args.attention_window)
  to_pretrained(long_model, args.dst)
  copied = copy_tokenizer(args.src, args.dst, args.max_positions)
  print(f"wrote {type(long_model).__name__} with {args.max_positions} "
        f"positions, windows {long_model.cfg.window_summary()} to {args.dst}; "
        f"tokenizer files: {', '.join(copied) or 'none found'}")


if __name__ == "__main__":
  import sys
  from lfjax import cli
  sys.exit(cli.run(main))
