"""Longformer attention: sliding window, dilation, causal band, global tokens."""

from lfjax.attention.api import IMPLS
from lfjax.attention.api import windowed_attention
from lfjax.attention.sharded import sequence_parallel_attention

__all__ = ["IMPLS", "sequence_parallel_attention", "windowed_attention"]
