"""Flax NNX Longformer models."""

from lfjax.models.config import LongformerConfig
from lfjax.models.heads import LongformerForMaskedLM
from lfjax.models.heads import LongformerForMultipleChoice
from lfjax.models.heads import LongformerForQuestionAnswering
from lfjax.models.heads import LongformerForSequenceClassification
from lfjax.models.heads import LongformerForTokenClassification
from lfjax.models.longformer import LongformerModel

__all__ = ["LongformerConfig", "LongformerForMaskedLM",
           "LongformerForMultipleChoice", "LongformerForQuestionAnswering",
           "LongformerForSequenceClassification",
           "LongformerForTokenClassification", "LongformerModel"]
