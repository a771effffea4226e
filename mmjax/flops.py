"""Analytic FLOPs of a config's model: per modality encoder, fusion core and head.

Counts 2*m*n*k for every matmul of the forward pass, attention's QK^T and AV included
(over all positions: padding is computed like real tokens), and multiplies by 3 for a
training step (the backward pass costs about twice the forward). Not counted: token
lookups by gather (config.model.text.lookup='gather'; the 'one_hot' lookup is a real
matmul and counts), the log-mel front end (an FFT on inputs that need no gradient, about
1% of the step), norms, softmax, activations and the optimizer (elementwise work).

    train_flops_per_example(config, num_classes)   # 4.95e9 for configs/bench.py
"""

from __future__ import annotations

from typing import Any

from mmjax import media
from mmjax.config.schema import contrastive_modalities
from mmjax.models.audio import frame_count, num_frames
from mmjax.models.decoder import VOCAB_MULTIPLE
from mmjax.models.heads import HEAD_STYLES

TRAIN_FACTOR = 3  # forward + backward (~2x forward)


def block(tokens: int, width: int, mlp: int, keys: int | None = None) -> int:
    """One pre-LN transformer block: Q/out projections over `tokens`, K/V over `keys`
    (self-attention: keys = tokens), QK^T and AV, and the two-layer MLP."""
    keys = tokens if keys is None else keys
    projections = 2 * tokens * width * width * 2 + 2 * keys * width * width * 2  # q, out; k, v
    attention = 2 * tokens * keys * width * 2  # QK^T and AV over all heads
    return projections + attention + 2 * tokens * width * mlp * 2


def _stack(sub: Any, tokens: int) -> int:
    return int(sub.depth) * block(tokens, int(sub.width), int(sub.mlp))


def _conv_stages(height: int, width: int, channels_in: int, sub: Any) -> tuple[int, int, int, int]:
    """(flops, out height, out width, out channels) of config.model.<m>'s conv stages."""
    total, k, pool = 0, int(sub.kernel), int(sub.pool)
    for c in map(int, sub.channels):
        height, width = height - k + 1, width - k + 1
        total += 2 * height * width * k * k * channels_in * c
        height, width, channels_in = height // pool, width // pool, c
    return total, height, width, channels_in


def image_encoder(config: Any) -> tuple[int, int, int]:
    """(forward flops, output tokens, token width) of the image encoder."""
    sub, size = config.model.image, int(config.data.image_size)
    if sub.kind == "vit":
        n = (size // int(sub.patch)) ** 2
        return 2 * n * int(sub.patch) ** 2 * 3 * int(sub.width) + _stack(sub, n), n, int(sub.width)
    flops, h, w, c = _conv_stages(size, size, 3, sub)
    return flops, h * w, c


def text_encoder(config: Any) -> tuple[int, int, int]:
    sub, length = config.model.text, int(config.data.text_length)
    width = int(sub.width)
    lookup = 0 if sub.lookup == "gather" else 2 * length * int(sub.vocab_size) * width
    if sub.kind == "transformer":
        return lookup + _stack(sub, length), length, width
    recurrence = 2 * length * (width * 4 * width) * 2  # input and recurrent kernels (units = width)
    return lookup + recurrence, length if sub.return_sequences else 1, width


def audio_encoder(config: Any) -> tuple[int, int, int]:
    sub, samples = config.model.audio, int(config.data.audio_samples)
    stem = int(sub.stem)
    if sub.kind == "transformer" and stem:  # Conv1D(kernel 3, stride 2) layers, then the stack
        frames, width = num_frames(samples, int(sub.hop), 2**stem), int(sub.width)
        convs, channels = 0, int(sub.n_mels)
        for i in range(1, stem + 1):
            convs += 2 * (frames // 2**i) * 3 * channels * width
            channels = width
        n = frames // 2**stem
        return convs + _stack(sub, n), n, width
    if sub.kind == "transformer":
        frames = num_frames(samples, int(sub.hop), int(sub.patch_time))
        n = frames // int(sub.patch_time) * (int(sub.n_mels) // int(sub.patch_freq))
        patch = int(sub.patch_time) * int(sub.patch_freq)
        return 2 * n * patch * int(sub.width) + _stack(sub, n), n, int(sub.width)
    flops, t, f, c = _conv_stages(frame_count(samples, int(sub.hop)), int(sub.n_mels), 1, sub)
    return flops, t * f, c


ENCODERS = {"image": image_encoder, "text": text_encoder, "audio": audio_encoder}


def fusion_core(config: Any, encoded: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(forward flops, output width) of the fusion core over encoders' (tokens, width)."""
    f = config.fusion
    width, mlp, depth = int(f.width), int(f.mlp), int(f.depth)
    project = sum(2 * n * d * width for n, d in encoded.values() if d != width)  # to the fusion width
    if f.kind == "joint":
        tokens = 1 + sum(n for n, _ in encoded.values())
        return project + depth * block(tokens, width, mlp), width
    if f.kind == "bottleneck":
        k, early = int(f.num_bottlenecks), int(f.fusion_layer)
        per_stream = [early * block(n + 1, width, mlp) + (depth - early) * block(n + 1 + k, width, mlp)
                      for n, _ in encoded.values()]
        return project + sum(per_stream), width
    if f.kind == "cross":
        k, keys = int(f.num_latents), sum(n for n, _ in encoded.values())
        return project + block(k, width, mlp, keys=keys) + depth * block(k, width, mlp), width
    # concat: pooled (mean) or flattened features, then `depth` Dense(mlp) layers
    size = sum(d if f.pool == "mean" else n * d for n, d in encoded.values())
    total = 0
    for _ in range(depth):
        total, size = total + 2 * size * mlp, mlp
    return total, size


def decoder(config: Any, encoded: dict[str, tuple[int, int]]) -> int:
    """Teacher-forced forward flops of config.decoder over the encoders' (tokens, width):
    the projections to its width, its blocks (prefix: over prefix + targets; cross: over the
    targets, plus cross-attention to the memory) and the logits over the padded vocabulary."""
    d = config.decoder
    width, mlp, targets = int(d.width), int(d.mlp), int(config.data.target_length) - 1
    memory = sum(n for n, _ in encoded.values())
    project = sum(2 * n * w * width for n, w in encoded.values())
    if d.kind == "prefix":
        blocks = block(memory + targets, width, mlp)
    else:  # self-attention over the targets, cross-attention (q, out; k, v of the memory)
        blocks = block(targets, width, mlp) + 2 * targets * width * width * 2 + 2 * memory * width * width * 2 \
            + 2 * targets * memory * width * 2
    vocab = -(-media.target_vocab(media.make_tokenizer(config.data.tokenizer)).size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    return project + int(d.depth) * blocks + 2 * targets * width * vocab


def forward_flops(config: Any, num_classes: int = 10) -> dict[str, int]:
    """Forward-pass FLOPs per example, by part: each modality, 'fusion', 'head' (or, for
    loss.task 'generate', 'decoder' in place of fusion core and head)."""
    parts, encoded = {}, {}
    for m in config.modalities:
        flops, tokens, width = ENCODERS[m](config)
        parts[m], encoded[m] = flops, (tokens, width)
    if config.loss.task == "generate":
        parts["decoder"] = decoder(config, encoded)
        return parts
    parts["fusion"], width = fusion_core(config, encoded)
    head = 2 * width * int(num_classes)
    loss = config.loss
    if loss.contrastive != "none" and HEAD_STYLES[loss.contrastive_head].proj:  # 'siglip' projects nothing
        head += sum(2 * encoded[m][1] * int(loss.contrastive_dim) for m in contrastive_modalities(loss))
    parts["head"] = head
    return parts


def train_flops_per_example(config: Any, num_classes: int = 10) -> int:
    """Analytic FLOPs of one training example (forward matmuls x 3)."""
    return TRAIN_FACTOR * sum(forward_flops(config, num_classes).values())


def describe(config: Any, num_classes: int = 10) -> str:
    """One line: training GFLOPs per example and the share of each part."""
    parts = forward_flops(config, num_classes)
    total = sum(parts.values())
    shares = ", ".join(f"{k} {v / total:.0%}" for k, v in parts.items())
    return f"{TRAIN_FACTOR * total / 1e9:.3g} GFLOPs per training example ({shares})"
