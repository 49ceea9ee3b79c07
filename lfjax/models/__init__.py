"""Flax NNX Longformer models."""

from lfjax.models.config import LongformerConfig
from lfjax.models.longformer import LongformerForMaskedLM
from lfjax.models.longformer import LongformerForMultipleChoice
from lfjax.models.longformer import LongformerForQuestionAnswering
from lfjax.models.longformer import LongformerForSequenceClassification
from lfjax.models.longformer import LongformerForTokenClassification
from lfjax.models.longformer import LongformerModel

__all__ = ["LongformerConfig", "LongformerForMaskedLM",
           "LongformerForMultipleChoice", "LongformerForQuestionAnswering",
           "LongformerForSequenceClassification",
           "LongformerForTokenClassification", "LongformerModel"]
