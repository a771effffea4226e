"""The model: per-modality encoders chosen by config -> fusion core -> classification head.

    model = build_model(config, num_classes)
    variables = model.init({'params': rng, 'dropout': rng}, batch, train=False)
    logits = model.apply(variables, batch, train=False)       # [B, C] float32

Parameter tree: {'image', 'text', 'audio' (those configured), 'fusion', 'head'}.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from mmjax.models.audio import AUDIO_ENCODERS
from mmjax.models.fusion import FUSIONS, MODALITIES
from mmjax.models.heads import ClassificationHead
from mmjax.models.image import IMAGE_ENCODERS
from mmjax.models.text import TEXT_ENCODERS

# config.model.<modality>.kind -> encoder class (each has from_config(config)).
ENCODERS = {"image": IMAGE_ENCODERS, "text": TEXT_ENCODERS, "audio": AUDIO_ENCODERS}
# Batch keys each modality's encoder reads.
INPUT_KEYS = {"image": ("image",), "text": ("text",), "audio": ("audio", "audio_length")}


class MultimodalClassifier(nn.Module):
    """Encoders (None for modalities not configured) -> fusion -> head.

    Submodules are built by build_model from the config and held here, so this module
    holds exactly the configuration it needs and nothing of the ConfigDict itself.
    """

    fusion: nn.Module
    head: nn.Module
    image: nn.Module | None = None
    text: nn.Module | None = None
    audio: nn.Module | None = None

    def encoders(self) -> list[tuple[str, nn.Module]]:
        """Configured (modality, encoder) pairs in canonical order."""
        return [(m, getattr(self, m)) for m in MODALITIES if getattr(self, m) is not None]

    def __call__(self, batch: Mapping[str, jax.Array], train: bool = False) -> jax.Array:
        """batch: dict with the configured modalities' keys (others are ignored)."""
        features = {}
        for name, encoder in self.encoders():
            missing = [k for k in INPUT_KEYS[name] if k not in batch]
            if missing:
                raise ValueError(
                    f"batch lacks {missing} but config.modalities includes {name!r}; "
                    f"batch keys are {sorted(batch)}"
                )
            features[name] = encoder(batch, train=train)
        pooled = self.fusion(features, train=train)
        return self.head(pooled)


def _choose(table: Mapping[str, Any], kind: str, key: str) -> Any:
    """table[kind], or a ValueError naming the config key and the valid kinds."""
    if kind not in table:
        raise ValueError(f"{key}={kind!r} is not one of {sorted(table)}")
    return table[kind]


def build_model(config: Any, num_classes: int) -> MultimodalClassifier:
    """The classifier for config.modalities, config.model.<modality>, config.fusion."""
    modalities = tuple(config.modalities)
    unknown = sorted(set(modalities) - set(MODALITIES))
    if not modalities or unknown:
        raise ValueError(
            f"config.modalities={modalities} must be a non-empty subset of {list(MODALITIES)}"
        )
    if int(num_classes) < 1:
        raise ValueError(f"num_classes={num_classes} must be at least 1")
    encoders = {}
    for name in MODALITIES:
        if name in modalities:
            kind = config.model[name].kind
            cls = _choose(ENCODERS[name], kind, f"config.model.{name}.kind")
            encoders[name] = cls.from_config(config)
    fusion_cls = _choose(FUSIONS, config.fusion.kind, "config.fusion.kind")
    return MultimodalClassifier(
        fusion=fusion_cls.from_config(config),
        head=ClassificationHead(int(num_classes)),
        **encoders,
    )


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree (boxed or not, arrays or shape structs)."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(params)))
