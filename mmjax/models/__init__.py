"""Flax linen models: per-modality encoders, fusion cores and heads."""
