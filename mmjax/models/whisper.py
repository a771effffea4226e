"""The Whisper audio encoder (config.model.audio.kind='whisper'): waveform [B, S] at 16 kHz
+ lengths [B] -> (tokens [B, frames / 2, D], mask).

Front end, computed on device as transformers' WhisperFeatureExtractor defines it: the
waveform is zero-padded (or cut) to a fixed chunk, framed with a periodic Hann window of
n_fft samples every hop samples, centred (reflect padding of n_fft / 2 at both ends); the
power spectrum goes through Slaney-normalised triangular filters on the Slaney mel scale;
then log10 (clamped at 1e-10), the last frame dropped, values floored at the example's
maximum - 8, and (x + 4) / 4. Encoder: two GELU convolutions over time (kernel 3, the
second with stride 2), sinusoidal positions (a table in the parameters, as the
checkpoints store it), a pre-LN transformer stack and a final LayerNorm. Whisper attends
over the whole chunk, padding included, so attention is not masked; the returned mask
marks the tokens that cover real samples, for the fusion.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models import layers
from mmjax.models.layers import TransformerSpec

LOG_CLAMP = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units kept below each example's maximum


def slaney_hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """The Slaney (Auditory Toolbox) mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    linear = 3.0 * hz / 200.0
    log_part = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(hz >= 1000.0, log_part, linear)


def slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0), 200.0 * mel / 3.0)


@functools.lru_cache(maxsize=8)
def slaney_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular filters [n_fft // 2 + 1, n_mels] from 0 Hz to Nyquist, equally spaced on
    the Slaney mel scale, each scaled to unit area (2 / its width in Hz)."""
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = slaney_mel_to_hz(np.linspace(0.0, slaney_hz_to_mel(sample_rate / 2.0), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    return filters.astype(np.float32)


def whisper_log_mel(wave: jax.Array, lengths: jax.Array, *, sample_rate: int, n_mels: int, n_fft: int, hop: int,
                    chunk: int) -> jax.Array:
    """Whisper's log-mel features [B, chunk // hop, n_mels] (float32) of a waveform [B, S]
    whose samples at or after lengths[b] are ignored (set to zero)."""
    wave = wave.astype(jnp.float32)
    wave = jnp.where(jnp.arange(wave.shape[1])[None, :] < lengths[:, None], wave, 0.0)
    wave = wave[:, :chunk] if wave.shape[1] >= chunk else jnp.pad(wave, ((0, 0), (0, chunk - wave.shape[1])))
    wave = jnp.pad(wave, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    frames = 1 + chunk // hop
    index = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    hann = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)  # periodic
    power = jnp.abs(jnp.fft.rfft(wave[:, index] * hann, axis=-1)) ** 2
    mel = jnp.einsum("btf,fm->btm", power, slaney_filterbank(sample_rate, n_fft, n_mels),
                     precision=jax.lax.Precision.HIGHEST)
    log_spec = jnp.log10(jnp.maximum(mel, LOG_CLAMP))[:, :-1]
    log_spec = jnp.maximum(log_spec, jnp.max(log_spec, axis=(1, 2), keepdims=True) - DYNAMIC_RANGE)
    return (log_spec + 4.0) / 4.0


def sinusoids(length: int, width: int) -> np.ndarray:
    """Whisper's position table [length, width]: sines then cosines of position times
    timescales spaced geometrically from 1 to 1/10000."""
    half = width // 2
    increment = math.log(10000.0) / max(half - 1, 1)
    scaled = np.arange(length)[:, None] * np.exp(-increment * np.arange(half))[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


class Conv1D(nn.Module):
    """Conv over time, channels last: x [B, T, C] -> [B, T', features] (padding 1 each side)."""

    features: int
    kernel: int = 3
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        kernel = self.param("kernel", layers.boxed(init, (None, None, "embed")),
                            (self.kernel, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", layers.boxed(nn.initializers.zeros_init(), ("embed",)), (self.features,), jnp.float32)
        pad = (self.kernel - 1) // 2
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), (self.stride,), [(pad, pad)],
                                         dimension_numbers=("NWC", "WIO", "NWC"))
        return y + bias.astype(self.dtype)


class WhisperEncoder(nn.Module):
    """Whisper's encoder over its own log-mel front end (module docstring).

    `features` (float [B, frames, n_mels], e.g. a feature extractor's input_features
    transposed) replaces the front end; return_pooled=True also returns the masked mean.
    """

    spec: TransformerSpec
    sample_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 400
    hop: int = 160
    chunk: int = 480000  # samples every waveform is padded or cut to (30 s)
    max_positions: int = 1500  # rows of the position table (chunk / hop / 2)

    @classmethod
    def from_config(cls, config: Any) -> "WhisperEncoder":
        """From config.model.audio (n_mels, window = n_fft, hop, chunk: 0 = data.audio_samples,
        max_positions: 0 = what the chunk needs) and config.data.audio_rate."""
        sub = config.model.audio
        values = {k: int(sub[k]) for k in ("n_mels", "window", "hop")}
        for key, value in values.items():
            if value <= 0:
                raise ValueError(f"config.model.audio.{key}={value} must be positive")
        chunk = int(sub.chunk) or int(config.data.audio_samples)
        if chunk <= 0 or chunk % values["hop"]:
            raise ValueError(f"the Whisper chunk ({chunk} samples; config.model.audio.chunk or "
                             f"config.data.audio_samples) must be a positive multiple of hop={values['hop']}")
        needed = (chunk // values["hop"] + 1) // 2
        positions = int(sub.max_positions) or needed
        if positions < needed:
            raise ValueError(f"config.model.audio.max_positions={positions} is less than the {needed} tokens of a "
                             f"{chunk}-sample chunk")
        spec = TransformerSpec.from_config(sub, config.model, "config.model.audio", lora=True)
        return cls(spec=spec, sample_rate=int(config.data.audio_rate), n_mels=values["n_mels"],
                   n_fft=values["window"], hop=values["hop"], chunk=chunk, max_positions=positions)

    def log_mel(self, wave: jax.Array, lengths: jax.Array) -> jax.Array:
        return whisper_log_mel(wave, lengths, sample_rate=self.sample_rate, n_mels=self.n_mels, n_fft=self.n_fft,
                               hop=self.hop, chunk=self.chunk)

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool, features: jax.Array | None = None,
                 return_pooled: bool = False):
        dtype = layers.compute_dtype(self.spec.dtype)
        if features is None:
            lengths = batch["audio_length"]
            features = self.log_mel(batch["audio"], lengths)
        else:
            lengths = jnp.full((features.shape[0],), features.shape[1] * self.hop, jnp.int32)
        gelu = layers.ACTIVATIONS["gelu"]
        x = gelu(Conv1D(self.spec.width, dtype=dtype, name="conv1")(features.astype(dtype)))
        x = gelu(Conv1D(self.spec.width, stride=2, dtype=dtype, name="conv2")(x))
        if x.shape[1] > self.max_positions:
            raise ValueError(f"{x.shape[1]} audio tokens but the position table holds {self.max_positions}")
        table = self.param("pos_embed", layers.boxed(lambda key, shape, dtype: jnp.asarray(sinusoids(*shape), dtype),
                                                     ("length", "embed")),
                           (self.max_positions, self.spec.width), jnp.float32)
        x = layers.constrain(x + table[: x.shape[1]].astype(dtype), layers.BLC)
        x = layers.TransformerStack(self.spec, final_norm=self.spec.final_norm, name="transformer")(x, None, train=train)
        mask = jnp.arange(x.shape[1])[None, :] * 2 * self.hop < lengths[:, None]
        if return_pooled:
            return x, mask, layers.masked_mean(x, mask)
        return x, mask
