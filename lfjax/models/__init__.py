"""Flax NNX Longformer models and LED."""

from lfjax.models.config import LongformerConfig
from lfjax.models.heads import LongformerForMaskedLM
from lfjax.models.heads import LongformerForMultipleChoice
from lfjax.models.heads import LongformerForQuestionAnswering
from lfjax.models.heads import LongformerForSequenceClassification
from lfjax.models.heads import LongformerForTokenClassification
from lfjax.models.led import LEDForConditionalGeneration
from lfjax.models.led import LEDModel
from lfjax.models.led_config import LEDConfig
from lfjax.models.longformer import LongformerModel

__all__ = ["LEDConfig", "LEDForConditionalGeneration", "LEDModel",
           "LongformerConfig", "LongformerForMaskedLM",
           "LongformerForMultipleChoice", "LongformerForQuestionAnswering",
           "LongformerForSequenceClassification",
           "LongformerForTokenClassification", "LongformerModel"]
