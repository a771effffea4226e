"""Audio encoders: waveform [B, S] + lengths [B] -> (tokens [B, N, D], mask [B, N]).

'transformer': log-mel patches -> transformer. 'cnn': Conv2D/ReLU/MaxPool stages over
the log-mel spectrogram [frames, n_mels, 1]; every pooled cell is a token.

The log-mel front end runs on device in jnp (about 1% of a step's time). It is built
so that padding never reaches a valid output: samples at or after `audio_length` are
zeroed before framing, frames are not centred (no reflection of the padding), and the
waveform is zero-extended so every frame, including the frames that pad the time axis
to a multiple of patch_time, is computed from real or zeroed samples alike.

Front end options shared by both encoders (config.model.audio):
  normalize   'fixed': one global shift and scale (LOG_MEL_SHIFT/SCALE); 'utterance':
              each clip's log-mel minus its mean, over its valid frames, of each mel bin,
              divided by the standard deviation over all its valid cells (removes the
              speaker's and microphone's spectral tilt and the loudness, keeps the shape
              of the spectrum); 'utterance_bins': mean and variance per bin (CMVN).
              Frames from audio_length on are set to 0 after normalising.
  spec_time_masks / spec_time_width, spec_freq_masks / spec_freq_width: SpecAugment,
              training only, on the normalised log-mel: that many time masks, each up to
              time_width of the clip's valid frames, and frequency masks, each up to
              freq_width of the mel bins, set to 0 (the mean). Drawn from the 'dropout' rng.
'transformer' with stem > 0: instead of patches, `stem` Conv1D(kernel 3, stride 2, GELU)
layers over time (mel bins as channels) make one token per 2**stem frames; a small-data
default with the inductive bias of a CNN. stem_norm adds a LayerNorm over the channels after
each convolution; stem_deltas appends the log-mel's first-order deltas as more channels.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.contract import hz_to_mel, mel_to_hz
from mmjax.models import layers
from mmjax.models.layers import TransformerSpec
from mmjax.models.whisper import WhisperEncoder

LOG_FLOOR = 1e-6
# Fixed affine normalisation of log-mel values: silence (log 1e-6 = -13.8) maps to
# -1.36 and a full-scale tone's peak band (about -0.2) to about +1.35; white noise in
# [-1, 1] lands near +0.6 (measured on the default front end: 8 kHz, window 256).
LOG_MEL_SHIFT = 7.0
LOG_MEL_SCALE = 5.0


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, window: int, n_mels: int) -> np.ndarray:
    """Triangular filters [window // 2 + 1, n_mels], equally spaced on the mel scale
    from 0 Hz to Nyquist, each peaking at 1 (HTK style, no area normalisation)."""
    bin_hz = np.arange(window // 2 + 1) * sample_rate / window
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2.0), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_hz[:, None] - lower) / (centre - lower)
    falling = (upper - bin_hz[:, None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def num_frames(num_samples: int, hop: int, patch_time: int) -> int:
    """Frames for a waveform: one per hop start, rounded up to whole time patches."""
    frames = max(1, math.ceil(num_samples / hop))
    return math.ceil(frames / patch_time) * patch_time


def log_mel(
    wave: jax.Array,
    lengths: jax.Array,
    *,
    sample_rate: int,
    n_mels: int,
    window: int,
    hop: int,
    frames: int,
) -> jax.Array:
    """Normalised log-mel spectrogram [B, frames, n_mels] in float32.

    Frame t covers samples [t * hop, t * hop + window) of the waveform with samples at
    or after lengths[b] set to zero.
    """
    wave = wave.astype(jnp.float32)
    valid = jnp.arange(wave.shape[1])[None, :] < lengths[:, None]
    wave = jnp.where(valid, wave, 0.0)
    needed = (frames - 1) * hop + window
    wave = jnp.pad(wave, ((0, 0), (0, max(0, needed - wave.shape[1]))))
    index = np.arange(frames)[:, None] * hop + np.arange(window)[None, :]
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(window) / window)  # periodic
    spectrum = jnp.fft.rfft(wave[:, index] * hann.astype(np.float32), axis=-1)
    # Scaled so a full-scale tone's peak bin has power ~1, whatever the window size.
    power = jnp.abs(spectrum) ** 2 * (2.0 / hann.sum()) ** 2
    mel = power @ mel_filterbank(sample_rate, window, n_mels)
    return (jnp.log(mel + LOG_FLOOR) + LOG_MEL_SHIFT) / LOG_MEL_SCALE


NORM_EPS = 1e-2  # variance floor, in fixed-normalised units (a near-silent clip stays small)


def normalise(mel: jax.Array, valid: jax.Array, mode: str) -> jax.Array:
    """Per-utterance normalisation of a fixed-normalised log-mel [B, T, M] over its valid
    frames (valid [B, T]); invalid frames become 0. 'fixed' returns mel unchanged.
    The modes are the schema's AUDIO_NORMALIZE."""
    if mode == "fixed":
        return mel
    w = valid[..., None].astype(mel.dtype)
    count = jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1.0)  # [B, 1, 1]
    mean = jnp.sum(mel * w, axis=1, keepdims=True) / count  # per bin
    centred = (mel - mean) * w
    if mode == "utterance_bins":
        var = jnp.sum(centred**2, axis=1, keepdims=True) / count
    else:
        var = jnp.sum(centred**2, axis=(1, 2), keepdims=True) / (count * mel.shape[-1])
    return centred * jax.lax.rsqrt(var + NORM_EPS)


def _spans(rng: jax.Array, count: int, max_width: jax.Array, extent: jax.Array, size: int) -> jax.Array:
    """[B, size] bool: `count` spans per row, each of width uniform in 0..max_width[b]
    and start uniform so that it ends within extent[b]."""
    out = jnp.zeros((max_width.shape[0], size), bool)
    pos = jnp.arange(size)[None, :]
    for key in jax.random.split(rng, count):
        k_width, k_start = jax.random.split(key)
        width = jnp.floor(jax.random.uniform(k_width, max_width.shape) * (jnp.floor(max_width) + 1.0))
        start = jnp.floor(jax.random.uniform(k_start, max_width.shape) * jnp.maximum(extent - width + 1.0, 1.0))
        out |= (pos >= start[:, None]) & (pos < (start + width)[:, None])
    return out


def spec_augment(rng: jax.Array, mel: jax.Array, valid_frames: jax.Array, *, time_masks: int,
                 time_width: float, freq_masks: int, freq_width: float) -> jax.Array:
    """SpecAugment masks on mel [B, T, M]: `time_masks` spans of up to time_width x the
    example's valid frames and `freq_masks` bands of up to freq_width x M bins, set to 0."""
    batch, frames, bins = mel.shape
    k_time, k_freq = jax.random.split(rng)
    masked = jnp.zeros(mel.shape, bool)
    if time_masks and time_width > 0:
        extent = valid_frames.astype(jnp.float32)
        masked |= _spans(k_time, time_masks, extent * time_width, extent, frames)[:, :, None]
    if freq_masks and freq_width > 0:
        extent = jnp.full((batch,), float(bins))
        masked |= _spans(k_freq, freq_masks, extent * freq_width, extent, bins)[:, None, :]
    return jnp.where(masked, 0.0, mel)


def spectrogram(encoder: Any, wave: jax.Array, lengths: jax.Array, frames: int, *,
                train: bool = False) -> jax.Array:
    """log_mel with an encoder's front-end settings (sample_rate, n_mels, window, hop),
    normalised (encoder.normalize) and, in training, SpecAugmented (encoder.spec_*). Traced
    under the name 'log_mel', so a profile (bench/step_profile.py) can tell the front end's ops."""
    with jax.named_scope("log_mel"):
        return _spectrogram(encoder, wave, lengths, frames, train)


def _spectrogram(encoder: Any, wave: jax.Array, lengths: jax.Array, frames: int, train: bool) -> jax.Array:
    mel = log_mel(wave, lengths, sample_rate=encoder.sample_rate, n_mels=encoder.n_mels,
                  window=encoder.window, hop=encoder.hop, frames=frames)
    valid = jnp.arange(frames)[None, :] * encoder.hop < lengths[:, None]
    mel = normalise(mel, valid, encoder.normalize)
    if train and (encoder.spec_time_masks or encoder.spec_freq_masks):
        mel = spec_augment(encoder.make_rng("dropout"), mel, jnp.sum(valid, axis=1),
                           time_masks=encoder.spec_time_masks, time_width=encoder.spec_time_width,
                           freq_masks=encoder.spec_freq_masks, freq_width=encoder.spec_freq_width)
    return mel


FRONT_END_KEYS = ("normalize", "spec_time_masks", "spec_time_width", "spec_freq_masks", "spec_freq_width")


def front_end_config(sub: Any) -> dict:
    """The front-end fields of config.model.audio (the schema checked them)."""
    return {k: sub[k] for k in FRONT_END_KEYS}


def deltas(mel: jax.Array) -> jax.Array:
    """First-order deltas (x[t+1] - x[t-1]) / 2 of mel [B, T, M], zero beyond both ends; the
    caller zeroes invalid frames first, so padding and the array's end look alike."""
    padded = jnp.pad(mel, ((0, 0), (1, 1), (0, 0)))
    return (padded[:, 2:] - padded[:, :-2]) / 2.0


class StemConv(nn.Module):
    """Conv1D over time (kernel 3, stride 2, one frame of zero padding each side), then
    (norm=True) a LayerNorm over the channels, then GELU."""

    features: int
    dtype: Any = jnp.float32
    norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        kernel = self.param("kernel", layers.boxed(init, (None, None, "embed")),
                            (3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", layers.boxed(nn.initializers.zeros_init(), ("embed",)),
                          (self.features,), jnp.float32)
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), (2,), ((1, 1),),
                                         dimension_numbers=("NWC", "WIO", "NWC"))
        y = y + bias.astype(self.dtype)
        if self.norm:
            y = layers.layer_norm(self.dtype, "norm")(y)
        return nn.gelu(y)


class AudioTransformer(nn.Module):
    """Log-mel -> (patch_time x patch_freq) patches -> Dense -> positions -> stack.

    Patches are ordered time-major, so a shorter waveform uses a prefix of the position
    table. A frame is valid if it starts before audio_length; a patch is valid if its
    first frame is.
    """

    spec: TransformerSpec
    sample_rate: int
    max_samples: int
    n_mels: int
    window: int
    hop: int
    patch_time: int
    patch_freq: int
    stem: int = 0
    stem_norm: bool = False
    stem_deltas: bool = False
    normalize: str = "fixed"
    spec_time_masks: int = 0
    spec_time_width: float = 0.0
    spec_freq_masks: int = 0
    spec_freq_width: float = 0.0

    @classmethod
    def from_config(cls, config: Any) -> "AudioTransformer":
        """Builds the encoder from config.model.audio, config.model and config.data (the
        schema checked each key; this checks that the patches tile the spectrogram)."""
        sub = config.model.audio
        values = {k: int(sub[k]) for k in ("n_mels", "window", "hop", "patch_time", "patch_freq")}
        if values["n_mels"] % values["patch_freq"]:
            raise ValueError(
                f"config.model.audio.n_mels={values['n_mels']} must be a multiple of "
                f"config.model.audio.patch_freq={values['patch_freq']}"
            )
        rate, samples = int(config.data.audio_rate), int(config.data.audio_samples)
        stem = int(sub.stem)
        spec = TransformerSpec.from_config(sub, config.model, "config.model.audio", lora=True)
        return cls(spec=spec, sample_rate=rate, max_samples=samples, stem=stem, stem_norm=bool(sub.stem_norm),
                   stem_deltas=bool(sub.stem_deltas), **values, **front_end_config(sub))

    def frame_multiple(self) -> int:
        """The time axis is padded to a multiple of this many frames."""
        return 2**self.stem if self.stem else self.patch_time

    def max_patches(self) -> int:
        """Length of the position table: tokens of a max_samples waveform."""
        frames = num_frames(self.max_samples, self.hop, self.frame_multiple())
        if self.stem:
            return frames // 2**self.stem
        return frames // self.patch_time * (self.n_mels // self.patch_freq)

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> tuple[jax.Array, jax.Array]:
        wave, lengths = batch["audio"], batch["audio_length"]
        frames = num_frames(wave.shape[1], self.hop, self.frame_multiple())
        mel = spectrogram(self, wave, lengths, frames, train=train)
        dtype = layers.compute_dtype(self.spec.dtype)
        if self.stem:
            # Token j of layer l starts at frame j * 2**l; positions that start after
            # audio_length are zeroed after each layer, so that valid tokens see the same
            # zeros whether the padding is frames or the conv's own zero padding.
            frame_valid = jnp.arange(frames)[None, :] * self.hop < lengths[:, None]
            x = jnp.where(frame_valid[..., None], mel, 0.0)
            if self.stem_deltas:
                x = jnp.concatenate([x, deltas(x)], axis=-1)
            x = x.astype(dtype)
            for i in range(self.stem):
                x = StemConv(self.spec.width, dtype, self.stem_norm, name=f"stem_{i}")(x)
                step = 2 ** (i + 1)
                valid = jnp.arange(0, frames, step)[None, :] * self.hop < lengths[:, None]
                x = jnp.where(valid[..., None], x, 0)
            mask = valid
            x = layers.constrain(x, layers.BLC)
        else:
            x = einops.rearrange(
                mel.astype(dtype), "b (t p) (f q) -> b (t f) (p q)", p=self.patch_time, q=self.patch_freq
            )
            frame_valid = jnp.arange(0, frames, self.patch_time)[None, :] * self.hop < lengths[:, None]
            mask = jnp.repeat(frame_valid, self.n_mels // self.patch_freq, axis=1)
            x = layers.dense(self.spec.width, ("patch", "embed"), dtype=dtype, name="patch_embed")(x)
        x = layers.PositionEmbedding(self.max_patches(), name="pos_embed")(x)
        x = layers.TransformerStack(self.spec, final_norm=self.spec.final_norm, name="transformer")(x, mask, train=train)
        return x, mask


def frame_count(num_samples: int, hop: int) -> int:
    """Frames of the CNN's spectrogram: one per hop start (at least one)."""
    return max(1, math.ceil(num_samples / hop))


class AudioCNN(nn.Module):
    """Conv2D(c, kernel, 'VALID', ReLU) -> MaxPool(pool) stages over the log-mel
    spectrogram as a one-channel image [B, frames, n_mels, 1]; the pooled map
    [B, T', F', C] becomes T' * F' tokens, time-major.

    A token is valid if the last frame it sees starts before audio_length. Every frame it
    sees is then computed (there are ceil(S / hop) frames, S >= audio_length) from real
    or zeroed samples, so valid tokens never depend on how much padding follows.
    """

    channels: tuple[int, ...]
    kernel: int
    pool: int
    sample_rate: int
    n_mels: int
    window: int
    hop: int
    dtype: str = "float32"
    normalize: str = "fixed"
    spec_time_masks: int = 0
    spec_time_width: float = 0.0
    spec_freq_masks: int = 0
    spec_freq_width: float = 0.0

    @classmethod
    def from_config(cls, config: Any) -> "AudioCNN":
        """Builds the encoder from config.model.audio (channels, kernel, pool, n_mels,
        window, hop) and config.data (the schema checked each key; this checks that the
        spectrogram fits the stages)."""
        sub = config.model.audio
        channels = tuple(int(c) for c in sub.channels)
        values = {k: int(sub[k]) for k in ("kernel", "pool", "n_mels", "window", "hop")}
        rate, samples = int(config.data.audio_rate), int(config.data.audio_samples)
        frames = frame_count(samples, values["hop"])
        for size, what in ((frames, f"{frames} frames"), (values["n_mels"], "config.model.audio.n_mels")):
            if layers.conv_output_size(size, values["kernel"], values["pool"], len(channels)) < 1:
                raise ValueError(
                    f"the spectrogram ({what}) is too small for config.model.audio.channels="
                    f"{channels} with kernel={values['kernel']}, pool={values['pool']}"
                )
        return cls(channels=channels, sample_rate=rate, dtype=str(config.model.dtype), **values,
                   **front_end_config(sub))

    def last_frame(self, num_tokens: int) -> np.ndarray:
        """Index of the last spectrogram frame seen by each output time step."""
        index = np.arange(num_tokens)
        for _ in self.channels:  # through each stage: pool window, then the conv kernel
            index = index * self.pool + (self.pool - 1) + (self.kernel - 1)
        return index

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> tuple[jax.Array, jax.Array]:
        wave, lengths = batch["audio"], batch["audio_length"]
        frames = frame_count(wave.shape[1], self.hop)
        mel = spectrogram(self, wave, lengths, frames, train=train)
        dtype = layers.compute_dtype(self.dtype)
        x = mel.astype(dtype)[..., None]
        for i, features in enumerate(self.channels):
            x = layers.ConvStage(features, self.kernel, self.pool, dtype, name=f"conv_{i}")(x)
        _, steps, bands, _ = x.shape
        valid = self.last_frame(steps)[None, :] * self.hop < lengths[:, None]
        mask = jnp.repeat(valid, bands, axis=1)
        x = einops.rearrange(x, "b t f c -> b (t f) c")
        return layers.constrain(x, layers.BLC), mask


AUDIO_ENCODERS = {"transformer": AudioTransformer, "cnn": AudioCNN, "whisper": WhisperEncoder}
