"""Checkpoint import/export: one canonical Flax tree (Google names), converters from each layout."""
