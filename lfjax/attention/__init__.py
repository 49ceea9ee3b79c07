"""Longformer attention: sliding window, dilation, causal band, global tokens."""

from lfjax.attention.api import IMPLS
from lfjax.attention.api import windowed_attention

__all__ = ["IMPLS", "windowed_attention"]
