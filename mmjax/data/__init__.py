"""Data: codec, embedded synthetic task, sources and the grain pipeline."""
