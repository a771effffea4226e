"""Which modalities each example has: batch presence flags and modality dropout.

A batch may carry `present_<modality>` (bool [B]; absent key = all present). During
training, modality dropout also removes whole modalities per example with probability
`rate`, never all of an example's present ones. The model then masks an absent
modality's tokens (mask all False), so every fusion core ignores them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from mmjax.contract import presence_key


def presence(batch: Mapping[str, jax.Array], modalities: Sequence[str], batch_size: int) -> jax.Array:
    """bool [B, M]: present_<m> from the batch for each modality (all True if missing)."""
    columns = []
    for m in modalities:
        flag = batch.get(presence_key(m))
        if flag is None:
            columns.append(jnp.ones((batch_size,), bool))
        elif flag.shape != (batch_size,):
            raise ValueError(f"batch[{presence_key(m)!r}] has shape {flag.shape}; expected ({batch_size},)")
        else:
            columns.append(flag.astype(bool))
    return jnp.stack(columns, axis=1)


def drop_modalities(rng: jax.Array, present: jax.Array, rate: float) -> jax.Array:
    """Drops each present modality of each example with probability `rate`.

    If that would leave an example with none of its present modalities, the one whose
    random draw was largest is kept, so an example never loses all of them (examples
    with none present stay that way). present: bool [B, M] -> bool [B, M]. `rate` is
    config.modality_dropout, in [0, 1) (the config schema checks it).
    """
    if rate == 0.0:
        return present
    draw = jax.random.uniform(rng, present.shape)
    keep = present & (draw >= rate)
    rescue = jax.nn.one_hot(jnp.argmax(jnp.where(present, draw, -1.0), axis=1), present.shape[1], dtype=bool)
    lost_all = ~jnp.any(keep, axis=1, keepdims=True)
    return keep | (rescue & present & lost_all)
