"""Train-time augmentation of stored examples; every random draw comes from the `rng` given.

The pipeline passes a numpy Generator seeded from (config.seed, the example's position in
the global training stream), so an augmented batch depends only on its batch index: the
same on any number of hosts or workers, and the same after a resume. Eval never augments.

Switches (config.data.augment; all off by default):
  image_crop       > 0: random resized crop keeping this fraction of the area or more
                   (aspect ratio 3/4..4/3), resized back to the stored size
  image_flip       horizontal flip with probability 1/2 (not for digits or text!)
  audio_speed      speed perturbation: the clip is resampled to play at a rate uniform in
                   1 +- this (0.1: 0.9x..1.1x), which moves tempo and pitch together, the
                   cheap stand-in for a new speaker's vocal tract used in speech recognition
  audio_gain_db    random gain, uniform in +-this many dB
  audio_shift      random time shift of up to this many seconds, earlier or later
  audio_time_mask  SpecAugment time mask, in the waveform: one span of up to this fraction
                   of the clip is zeroed (the frames it covers become silence)
  audio_freq_mask  SpecAugment frequency mask, in the waveform: one band of up to this
                   fraction of the mel scale (0 Hz..Nyquist) is removed with an FFT
                   band-stop, so the mel bins it covers fall to the noise floor
  text_dropout     each token is replaced by the reserved id 1 with this probability

Why SpecAugment in the waveform: the spectrogram is computed by the model on the device
(models/audio.py), and data code knows nothing of models. Zeroing a span of samples or a
band of frequencies masks the same time frames or mel bins the model will compute.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mmjax.contract import PAD_ID, hz_to_mel, mel_to_hz
from mmjax.media import RESERVED_ID


@dataclasses.dataclass(frozen=True)
class Augment:
    image_crop: float = 0.0
    image_flip: bool = False
    audio_speed: float = 0.0
    audio_gain_db: float = 0.0
    audio_shift: float = 0.0
    audio_time_mask: float = 0.0
    audio_freq_mask: float = 0.0
    text_dropout: float = 0.0

    @classmethod
    def from_config(cls, augment_config) -> "Augment":
        """From config.data.augment (a ConfigDict, a dict or None); checks the ranges."""
        if augment_config is None:
            values = {}
        elif hasattr(augment_config, "to_dict"):
            values = augment_config.to_dict()
        else:
            values = dict(augment_config)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"config.data.augment.{unknown[0]} is unknown; valid keys: "
                             f"{', '.join(sorted(names))}")
        aug = cls(**values)
        for name in ("image_crop", "audio_time_mask", "audio_freq_mask", "text_dropout"):
            if not 0.0 <= getattr(aug, name) <= 1.0:
                raise ValueError(f"config.data.augment.{name}={getattr(aug, name)} must be in [0, 1]")
        if not 0.0 <= aug.audio_speed < 1.0:
            raise ValueError(f"config.data.augment.audio_speed={aug.audio_speed} must be in [0, 1)")
        for name in ("audio_gain_db", "audio_shift"):
            if getattr(aug, name) < 0:
                raise ValueError(f"config.data.augment.{name}={getattr(aug, name)} must be >= 0")
        return aug

    @property
    def enabled(self) -> bool:
        return any(getattr(self, f.name) for f in dataclasses.fields(self))


# ---------------------------------------------------------------- image
def random_resized_crop(image: np.ndarray, rng: np.random.Generator, min_area: float) -> np.ndarray:
    """A random box of >= min_area of the image, aspect 3/4..4/3, resized to the image's size."""
    from PIL import Image

    h, w = image.shape[:2]
    area = rng.uniform(min_area, 1.0) * h * w
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    bw = min(w, math.sqrt(area * ratio))
    bh = min(h, math.sqrt(area / ratio))
    x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    out = Image.fromarray(np.ascontiguousarray(image)).resize(
        (w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + bw, y0 + bh))
    return np.asarray(out, np.uint8)


# ---------------------------------------------------------------- audio
def speed(wave: np.ndarray, rng: np.random.Generator, max_change: float) -> np.ndarray:
    """Plays the clip at a rate uniform in 1 +- max_change (linear interpolation): a rate r
    gives round(len / r) samples, pitch and tempo both scaled by r."""
    rate = rng.uniform(1.0 - max_change, 1.0 + max_change)
    length = max(1, int(round(len(wave) / rate)))
    positions = np.minimum(np.arange(length) * rate, len(wave) - 1)
    return np.interp(positions, np.arange(len(wave)), wave).astype(np.float32)


def time_shift(wave: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Delays (leading zeros) or advances (drops the start of) the clip by <= max_shift samples."""
    shift = int(rng.integers(-max_shift, max_shift + 1))
    if shift > 0:
        return np.concatenate([np.zeros(shift, wave.dtype), wave])
    return wave[min(-shift, max(len(wave) - 1, 0)):]


def time_mask(wave: np.ndarray, rng: np.random.Generator, max_fraction: float) -> np.ndarray:
    """Zeroes one span of up to max_fraction of the clip."""
    width = int(rng.uniform(0, max_fraction) * len(wave))
    start = int(rng.integers(0, len(wave) - width + 1))
    out = wave.copy()
    out[start:start + width] = 0
    return out


def freq_mask(wave: np.ndarray, rng: np.random.Generator, rate: int, max_fraction: float) -> np.ndarray:
    """Removes one band of up to max_fraction of the mel scale (0..Nyquist), FFT band-stop."""
    top = float(hz_to_mel(rate / 2))
    width = rng.uniform(0, max_fraction) * top
    low = rng.uniform(0, top - width)
    lo_hz, hi_hz = mel_to_hz(low), mel_to_hz(low + width)
    spectrum = np.fft.rfft(wave.astype(np.float64))
    freqs = np.fft.rfftfreq(len(wave), 1.0 / rate)
    spectrum[(freqs >= lo_hz) & (freqs <= hi_hz)] = 0
    return np.fft.irfft(spectrum, n=len(wave)).astype(np.float32)


def augment_audio(wave: np.ndarray, rng: np.random.Generator, aug: Augment, rate: int) -> np.ndarray:
    """Speed, gain, shift, then time and frequency masks (those switched on), on a mono clip."""
    wave = np.asarray(wave, np.float32)
    if len(wave) == 0:
        return wave
    if aug.audio_speed:
        wave = speed(wave, rng, aug.audio_speed)
    if aug.audio_gain_db:
        gain = 10.0 ** (rng.uniform(-aug.audio_gain_db, aug.audio_gain_db) / 20.0)
        wave = np.clip(wave * gain, -1.0, 1.0)
    if aug.audio_shift:
        wave = time_shift(wave, rng, int(aug.audio_shift * rate))
    if aug.audio_time_mask:
        wave = time_mask(wave, rng, aug.audio_time_mask)
    if aug.audio_freq_mask:
        wave = freq_mask(wave, rng, rate, aug.audio_freq_mask)
    return wave


# ---------------------------------------------------------------- text
def token_dropout(tokens: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    """Replaces each non-padding token by RESERVED_ID with probability `rate`."""
    drop = (rng.random(tokens.shape) < rate) & (tokens != PAD_ID)
    return np.where(drop, RESERVED_ID, tokens).astype(tokens.dtype)


def augment_example(example: dict, rng: np.random.Generator, aug: Augment, *,
                    audio_rate: int) -> dict:
    """Stored example (image, audio as stored) -> augmented copy; text is done on tokens."""
    out = dict(example)
    if "image" in out and (aug.image_crop or aug.image_flip):
        image = np.asarray(out["image"])
        if aug.image_crop:
            image = random_resized_crop(image, rng, aug.image_crop)
        if aug.image_flip and rng.random() < 0.5:
            image = image[:, ::-1]
        out["image"] = np.ascontiguousarray(image)
    if "audio" in out:
        out["audio"] = augment_audio(out["audio"], rng, aug, audio_rate)
    return out
