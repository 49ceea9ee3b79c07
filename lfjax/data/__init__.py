"""Data: character corpora and samplers."""
