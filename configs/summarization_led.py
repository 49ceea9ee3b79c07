"""Long-document summarization by fine-tuning LED, the Longformer-Encoder-
Decoder (paper §7: arXiv, inputs up to 16,384 tokens).

  python -m lfjax.train --config configs/summarization_led.py \
      --config.init_from /path/to/led-base-16384 \
      --config.data.train train.jsonl --config.data.valid dev.jsonl \
      --workdir runs/sum
  python -m lfjax.evaluate --workdir runs/sum --data test.jsonl
  python -m lfjax.evaluate --workdir runs/sum --data test.jsonl \
      --num_beams 1   # greedy
  python -m lfjax.export --workdir runs/sum --to runs/sum_hf

Data: one JSON object per line, {"document": ..., "summary": ...} (or
parquet / a `datasets` folder; --config.data.document_field=article
--config.data.summary_field=abstract for arXiv's scientific_papers).
init_from is a local LED folder (transformers' LEDForConditionalGeneration:
allenai/led-base-16384 saved locally, or an LED made from a BART with
lfjax.led_convert.make_led); nothing is downloaded. Defaults: the paper's
recipe (encoder window 1,024 as in the checkpoint, global attention on
the first <s>, 16K inputs, teacher forcing, beam search) and the
authors' scripts/summarization.py (LR 3e-5, 5 epochs, batch 16, 256
summary tokens, no label smoothing); every field is commented in
lfjax/tasks/finetune.py (shared) and lfjax/tasks/summarization.py.

`tiny` runs on CPU in well under a minute from a tiny random LED
(`python -m lfjax.make_tiny --led --to DIR` builds one) on a small data
file: 128 document tokens, 32 summary tokens, batch 8, 8 epochs, LR 3e-3,
label smoothing 0.1, beam 2 generating 16 tokens.
"""

from lfjax.tasks import summarization


def get_config(arg=None):
  c = summarization.base_config()
  if arg == "tiny":
    summarization.tiny(c)
  elif arg:
    raise ValueError(f"config arg: expected '' or 'tiny', got {arg!r}")
  return c
