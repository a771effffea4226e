"""Output heads on a pooled representation [B, D]."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers


class ClassificationHead(nn.Module):
    """LayerNorm + Dense ('embed', 'classes'), computed in float32 -> logits [B, C]."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.layer_norm(jnp.float32, "ln")(x.astype(jnp.float32))
        return layers.dense(self.num_classes, ("embed", "classes"), dtype=jnp.float32, name="out")(x)
