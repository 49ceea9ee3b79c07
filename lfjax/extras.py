"""Optional packages: imported where they are used, with one error that
names the pyproject.toml extra installing them.

The core install (`pip install lfjax`) trains and evaluates the char-LM;
reading a Hugging Face tokenizer (MLM, fine-tuning, `python -m
lfjax.make_tiny`) needs transformers, MLM's loader grain, reading
parquet files or `datasets` folders pyarrow / datasets, and
summarization's ROUGE rouge-score, all `lfjax[hf]`;
TensorBoard event files need tensorboardX, `lfjax[tensorboard]`. A
command-line user sees the MissingPackage message as one `error:` line
(lfjax.cli counts exceptions that lfjax defines as the user's).
"""

import importlib

# module -> the extra of pyproject.toml that installs it
EXTRAS = {"transformers": "hf", "tokenizers": "hf", "grain": "hf",
          "datasets": "hf", "pyarrow": "hf", "rouge_score": "hf",
          "tensorboardX": "tensorboard", "jax_cuda12_plugin": "plan"}


class MissingPackage(ImportError):
  """An optional package is not installed; the message says which extra
  installs it."""


def require(module, purpose):
  """Imports and returns `module`.

  purpose: what needs it, as the user named it (e.g. "tokenizer: MLM data").

  Raises:
    MissingPackage: the module cannot be imported; the message names the
      pip command (`pip install "lfjax[hf]"` for transformers).
  """
  try:
    return importlib.import_module(module)
  except ImportError as e:
    extra = EXTRAS.get(module.split(".")[0])
    how = f'pip install "lfjax[{extra}]"' if extra else f"pip install {module}"
    raise MissingPackage(f"{purpose} needs the {module} package, which is "
                         f"not installed ({e}); install it with: {how}") \
        from None
