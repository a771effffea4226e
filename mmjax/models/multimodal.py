"""The model: per-modality encoders chosen by config -> fusion core -> head.

    model = build_model(config, num_classes)
    variables = model.init({'params': rng, 'dropout': rng}, batch, train=False)
    logits = model.apply(variables, batch, train=False)       # [B, C] float32
    logits, aux = model.apply(variables, batch, train=False, aux=True)

`aux` holds 'present' ({modality: bool [B]}: which modalities each example kept after
its presence flags and modality dropout) and, with a contrastive loss
configured, 'embeddings' {modality: [B, dim]}, 'scale' and 'bias' (heads.ContrastiveHead).
The head's outputs are class logits, per-class logits (multi-label) or regression values.

Parameter tree: {'image', 'text', 'audio' (those configured), 'fusion', 'head',
'contrastive' (with a contrastive loss)}.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from mmjax.models import layers, missing
from mmjax.models.audio import AUDIO_ENCODERS
from mmjax.contract import MODALITIES
from mmjax.models.fusion import FUSIONS
from mmjax.models.heads import CONTRASTIVE_INIT, ClassificationHead, ContrastiveHead
from mmjax.models.image import IMAGE_ENCODERS
from mmjax.models.text import TEXT_ENCODERS

# config.model.<modality>.kind -> encoder class (each has from_config(config)).
ENCODERS = {"image": IMAGE_ENCODERS, "text": TEXT_ENCODERS, "audio": AUDIO_ENCODERS}
# Batch keys each modality's encoder reads.
INPUT_KEYS = {"image": ("image",), "text": ("text",), "audio": ("audio", "audio_length")}


class MultimodalClassifier(nn.Module):
    """Encoders (None for modalities not configured) -> presence mask -> fusion -> head.

    Submodules are built by build_model from the config and held here, so this module
    holds exactly the configuration it needs and nothing of the ConfigDict itself.
    """

    fusion: nn.Module
    head: nn.Module
    image: nn.Module | None = None
    text: nn.Module | None = None
    audio: nn.Module | None = None
    contrastive: nn.Module | None = None
    modality_dropout: float = 0.0

    def encoders(self) -> list[tuple[str, nn.Module]]:
        """Configured (modality, encoder) pairs in canonical order."""
        return [(m, getattr(self, m)) for m in MODALITIES if getattr(self, m) is not None]

    def __call__(self, batch: Mapping[str, jax.Array], train: bool = False, *, aux: bool = False):
        """batch: dict with the configured modalities' keys (others are ignored) and
        optional present_<modality> flags. Returns logits, or (logits, aux) if aux."""
        features = {}
        for name, encoder in self.encoders():
            missing_keys = [k for k in INPUT_KEYS[name] if k not in batch]
            if missing_keys:
                raise ValueError(
                    f"batch lacks {missing_keys} but config.modalities includes {name!r}; "
                    f"batch keys are {sorted(batch)}"
                )
            features[name] = encoder(batch, train=train)
        names = list(features)
        batch_size = next(iter(features.values()))[0].shape[0]
        keep = missing.presence(batch, names, batch_size)
        if train and self.modality_dropout > 0:
            keep = missing.drop_modalities(self.make_rng("dropout"), keep, self.modality_dropout)
        features = {
            m: (x, mask & keep[:, i, None]) for i, (m, (x, mask)) in enumerate(features.items())
        }
        logits = self.head(self.fusion(features, train=train))
        extras: dict[str, Any] = {"present": {m: keep[:, i] for i, m in enumerate(names)}}
        if self.contrastive is not None:  # also without aux, so init creates its parameters
            pooled = {m: layers.masked_mean(*features[m]) for m in self.contrastive.modalities}
            extras.update(self.contrastive(pooled))
        return (logits, extras) if aux else logits


def _choose(table: Mapping[str, Any], kind: str, key: str) -> Any:
    """table[kind], or a ValueError naming the config key and the valid kinds."""
    if kind not in table:
        raise ValueError(f"{key}={kind!r} is not one of {sorted(table)}")
    return table[kind]


def contrastive_head(config: Any, modalities: tuple[str, ...]) -> ContrastiveHead | None:
    """The ContrastiveHead config.loss asks for (None for loss.contrastive='none')."""
    loss = config.get("loss")
    kind = "none" if loss is None else str(loss.get("contrastive", "none"))
    if kind == "none":
        return None
    if kind not in CONTRASTIVE_INIT:
        raise ValueError(f"config.loss.contrastive={kind!r} is not one of {['none', *CONTRASTIVE_INIT]}")
    pair = tuple(loss.contrastive_pair)
    if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(modalities):
        raise ValueError(
            f"config.loss.contrastive_pair={pair} must name two different modalities of "
            f"config.modalities={modalities}"
        )
    dim = int(loss.contrastive_dim)
    if dim <= 0:
        raise ValueError(f"config.loss.contrastive_dim={dim} must be positive")
    return ContrastiveHead(modalities=pair, dim=dim, kind=kind)


def build_model(config: Any, num_classes: int) -> MultimodalClassifier:
    """The model for config.modalities, config.model.<modality>, config.fusion, the head
    (config.model.head_norm) and config.loss.contrastive; num_classes is the number of
    head outputs (classes, labels or regression targets)."""
    modalities = tuple(config.modalities)
    unknown = sorted(set(modalities) - set(MODALITIES))
    if not modalities or unknown:
        raise ValueError(
            f"config.modalities={modalities} must be a non-empty subset of {list(MODALITIES)}"
        )
    if int(num_classes) < 1:
        raise ValueError(f"num_classes={num_classes} must be at least 1")
    rate = float(config.get("modality_dropout", 0.0))
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"config.modality_dropout={rate} must be in [0, 1)")
    encoders = {}
    for name in MODALITIES:
        if name in modalities:
            kind = config.model[name].kind
            cls = _choose(ENCODERS[name], kind, f"config.model.{name}.kind")
            encoders[name] = cls.from_config(config)
    fusion_cls = _choose(FUSIONS, config.fusion.kind, "config.fusion.kind")
    return MultimodalClassifier(
        fusion=fusion_cls.from_config(config),
        head=ClassificationHead(int(num_classes), norm=bool(config.model.get("head_norm", True))),
        contrastive=contrastive_head(config, modalities),
        modality_dropout=rate,
        **encoders,
    )


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree (boxed or not, arrays or shape structs)."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(params)))
