"""Readers and writers of published population formats (one module per format)."""
