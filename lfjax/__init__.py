"""lfjax: Longformer in JAX."""

__version__ = "0.2.0"
