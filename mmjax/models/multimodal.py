"""The model: per-modality encoders chosen by config -> fusion core -> head.

    model = build_model(config, num_classes)
    variables = model.init({'params': rng, 'dropout': rng}, batch, train=False)
    logits = model.apply(variables, batch, train=False)       # [B, C] float32
    logits, aux = model.apply(variables, batch, train=False, aux=True)

`aux` holds 'present' ({modality: bool [B]}: which modalities each example kept after
its presence flags and modality dropout); with a contrastive loss configured,
'embeddings' {modality: [B, dim]}, 'scale' and 'bias' (heads.ContrastiveHead); and with
config.fusion.aux_weight > 0, 'unimodal' {modality: [B, C]}, each modality's own head's
outputs on its masked-mean-pooled encoder tokens (heads.UnimodalHeads).
The head's outputs are class logits, per-class logits (multi-label) or regression values.

With config.loss.task='generate' the fusion core and head give way to a text decoder
(models/decoder.py) over the encoders' tokens: the outputs are teacher-forced logits
[B, T - 1, V] of batch['target_tokens'][:, 1:] given [:, :-1], and two more methods decode
(on the decoder's looped form, which a scanned decoder's parameters are unstacked into once:
`model, params = decoding.looped_for_decoding(model, params)`; mmjax.decoding does this):

    logits, cache = model.apply(variables, batch, max_length, method=model.prefill)
    logits, cache = model.apply(variables, tokens, cache, method=model.decode_step)

Parameter tree: {'image', 'text', 'audio' (those configured), 'fusion', 'head' (or
'decoder' when generating), 'contrastive' (with a contrastive loss), 'unimodal' (with
per-modality heads)}.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.config.schema import check_modalities_fit, contrastive_modalities
from mmjax import media
from mmjax.contract import MODALITIES, TARGET_TOKENS
from mmjax.models import layers, missing
from mmjax.models.decoder import DECODERS
from mmjax.models.audio import AUDIO_ENCODERS
from mmjax.models.fusion import FUSIONS
from mmjax.models.heads import HEAD_STYLES, ClassificationHead, ContrastiveHead, UnimodalHeads
from mmjax.models.image import IMAGE_ENCODERS
from mmjax.models.text import TEXT_ENCODERS

# config.model.<modality>.kind -> encoder class (each has from_config(config)); the
# schema's choices for those keys name the same kinds (tests/models/test_multimodal.py).
ENCODERS = {"image": IMAGE_ENCODERS, "text": TEXT_ENCODERS, "audio": AUDIO_ENCODERS}
# (modality, kind) of the encoders that can return a pooled vector (return_pooled=True) ->
# whether config.model.<m>.pooling chooses it (Whisper's is always the masked mean).
POOLED_KINDS = {("image", "vit"): True, ("text", "transformer"): True, ("audio", "whisper"): False}
# Batch keys each modality's encoder reads.
INPUT_KEYS = {"image": ("image",), "text": ("text",), "audio": ("audio", "audio_length")}


class MultimodalClassifier(nn.Module):
    """Encoders (None for modalities not configured) -> presence mask -> fusion -> head.

    Submodules are built by build_model from the config and held here, so this module
    holds exactly the configuration it needs and nothing of the ConfigDict itself.
    """

    fusion: nn.Module | None  # None (and head None) when a decoder generates text instead
    head: nn.Module | None
    image: nn.Module | None = None
    text: nn.Module | None = None
    audio: nn.Module | None = None
    contrastive: nn.Module | None = None
    unimodal: nn.Module | None = None
    decoder: nn.Module | None = None  # loss.task 'generate' (models/decoder.py)
    modality_dropout: float = 0.0

    def encoders(self) -> list[tuple[str, nn.Module]]:
        """Configured (modality, encoder) pairs in canonical order."""
        return [(m, getattr(self, m)) for m in MODALITIES if getattr(self, m) is not None]

    def __call__(self, batch: Mapping[str, jax.Array], train: bool = False, *, aux: bool = False):
        """batch: dict with the configured modalities' keys (others are ignored) and
        optional present_<modality> flags (and target_tokens with a decoder). Returns
        logits, or (logits, aux) if aux."""
        features, keep, names, tower_pooled = self._features(batch, train)
        if self.decoder is not None:
            if TARGET_TOKENS not in batch:
                raise ValueError(f"the decoder reads batch[{TARGET_TOKENS!r}], which the batch lacks "
                                 f"(keys {sorted(batch)})")
            logits = self.decoder(features, batch[TARGET_TOKENS][:, :-1], train=train)
        else:
            logits = self.head(self.fusion(features, train=train))
        extras: dict[str, Any] = {"present": {m: keep[:, i] for i, m in enumerate(names)}}
        if self.contrastive is not None:  # also without aux, so init creates its parameters
            if tower_pooled:
                pooled = tower_pooled
            elif self.contrastive.pool == "map":
                pooled = {m: features[m] for m in self.contrastive.modalities}
            else:
                pooled = {m: layers.masked_mean(*features[m]) for m in self.contrastive.modalities}
            extras.update(self.contrastive(pooled))
        if self.unimodal is not None:  # likewise: the heads exist whether or not aux is asked for
            extras["unimodal"] = self.unimodal({m: layers.masked_mean(*features[m]) for m in self.unimodal.modalities})
        return (logits, extras) if aux else logits

    def prefill(self, batch: Mapping[str, jax.Array], max_length: int):
        """Decoding's first step: the encoders, then BOS -> (logits [B, V] of the first
        target token, the decoder's KVCache for max_length target tokens, BOS included)."""
        features, _, _, _ = self._features(batch, False)
        size = next(iter(features.values()))[0].shape[0]
        cache = self.decoder.empty_cache(features, size, max_length)
        bos = jnp.full((size, 1), self.decoder.bos_id, jnp.int32)
        logits, cache = self.decoder(features, bos, train=False, cache=cache)
        return logits[:, -1], cache

    def decode_step(self, tokens: jax.Array, cache):
        """One decoding step: tokens [B] appended -> (logits [B, V] of the next, the cache)."""
        logits, cache = self.decoder(None, tokens[:, None], train=False, cache=cache)
        return logits[:, -1], cache

    def _features(self, batch: Mapping[str, jax.Array], train: bool):
        """The encoders' ({modality: (tokens, mask)} with absent and dropped modalities
        masked, keep [B, M], their names, towers' pooled outputs the contrastive head reads)."""
        features, tower_pooled = {}, {}
        # A 'clip'/'siglip' contrastive head reads its towers' own pooled outputs.
        wants_pooled = self.contrastive is not None and HEAD_STYLES[self.contrastive.style].pool == "tower"
        for name, encoder in self.encoders():
            missing_keys = [k for k in INPUT_KEYS[name] if k not in batch]
            if missing_keys:
                raise ValueError(
                    f"batch lacks {missing_keys} but config.modalities includes {name!r}; "
                    f"batch keys are {sorted(batch)}"
                )
            if wants_pooled and name in self.contrastive.modalities:
                x, mask, tower_pooled[name] = encoder(batch, train=train, return_pooled=True)
                features[name] = (x, mask)
            else:
                features[name] = encoder(batch, train=train)
        names = list(features)
        batch_size = next(iter(features.values()))[0].shape[0]
        keep = missing.presence(batch, names, batch_size)
        if train and self.modality_dropout > 0:
            keep = missing.drop_modalities(self.make_rng("dropout"), keep, self.modality_dropout)
        features = {
            m: (x, mask & keep[:, i, None]) for i, (m, (x, mask)) in enumerate(features.items())
        }
        return features, keep, names, tower_pooled


def contrastive_head(config: Any) -> ContrastiveHead | None:
    """The ContrastiveHead config.loss asks for (None for loss.contrastive='none')."""
    loss = config.loss
    if loss.contrastive == "none":
        return None
    style = str(loss.contrastive_head)
    if HEAD_STYLES[style].pool == "tower":  # the pairs' towers must pool, to the same width without a projection
        for m in contrastive_modalities(loss):
            sub = config.model[m]
            pools = POOLED_KINDS.get((m, sub.kind))
            if pools is None or (pools and sub.pooling == "none"):
                raise ValueError(f"config.loss.contrastive_head={style!r} reads the {m} tower's pooled output, but "
                                 f"config.model.{m} (kind={sub.kind!r}) has none; set config.model.{m}.pooling "
                                 "(vit / transformer towers) or use contrastive_head='mmjax'")
    return ContrastiveHead(modalities=contrastive_modalities(loss), dim=int(loss.contrastive_dim),
                           kind=str(loss.contrastive), style=style, pool=str(loss.contrastive_pool))


def unimodal_heads(config: Any, num_classes: int) -> UnimodalHeads | None:
    """A head per configured modality when config.fusion.aux_weight > 0, else None."""
    if config.fusion.aux_weight <= 0:
        return None
    return UnimodalHeads(tuple(config.modalities), int(num_classes), norm=bool(config.model.head_norm))


def build_model(config: Any, num_classes: int) -> MultimodalClassifier:
    """The model for config.modalities, config.model.<modality>, config.fusion (the core and
    the per-modality heads of fusion.aux_weight), the head (config.model.head_norm) and
    config.loss.contrastive; num_classes is the number of head outputs (classes, labels or
    regression targets). loss.task 'generate' puts config.decoder in place of the fusion
    core and head (num_classes then unused).

    The config's values are trusted (mmjax.config.validate checked them), except that the
    keys naming modalities are checked again here: the data may have narrowed
    config.modalities since validation.
    """
    check_modalities_fit(config)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes={num_classes} must be at least 1")
    encoders = {m: ENCODERS[m][config.model[m].kind].from_config(config) for m in config.modalities}
    if config.loss.task == "generate":  # the decoder's vocabulary is the run's tokenizer's target vocabulary
        vocab = media.target_vocab(media.make_tokenizer(config.data.tokenizer))
        fusion, head, decoder = None, None, DECODERS[config.decoder.kind].from_config(config, vocab)
    else:
        fusion, decoder = FUSIONS[config.fusion.kind].from_config(config), None
        head = ClassificationHead(int(num_classes), norm=bool(config.model.head_norm))
    return MultimodalClassifier(
        fusion=fusion,
        head=head,
        decoder=decoder,
        contrastive=contrastive_head(config),
        unimodal=unimodal_heads(config, num_classes),
        modality_dropout=float(config.modality_dropout),
        **encoders,
    )


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree (boxed or not, arrays or shape structs)."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(params)))
