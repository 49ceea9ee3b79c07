"""Data: character corpora, MLM documents and their token store, samplers."""
