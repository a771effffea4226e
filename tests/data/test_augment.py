"""Tests for mmjax/data/augment.py and augmentation in the grain pipeline."""

import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import media
from mmjax.data import augment, codec, pipeline, sources, synthetic, writer
from batches import equal, take  # noqa: E402

GB = 16


def _rng(i=0):
    return np.random.default_rng(i)


# ---------------------------------------------------------------- the transforms


def test_random_resized_crop_and_flip():
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, :8] = 255  # left half white
    crops = [augment.random_resized_crop(image, _rng(i), 0.3) for i in range(8)]
    assert all(c.shape == image.shape and c.dtype == np.uint8 for c in crops)
    assert len({c.tobytes() for c in crops}) == 8
    np.testing.assert_array_equal(augment.random_resized_crop(image, _rng(), 1.0 - 1e-9)[:, 0], 255)
    aug = augment.Augment(image_flip=True)
    flips = [augment.augment_example({"image": image}, _rng(i), aug, audio_rate=8000)["image"]
             for i in range(20)]
    flipped = [f[0, 0, 0] == 0 for f in flips]
    assert 3 < sum(flipped) < 17
    assert all((f == image[:, ::-1]).all() for f, x in zip(flips, flipped) if x)


def test_audio_gain_and_shift():
    wave = np.full(1000, 0.1, np.float32)
    out = augment.augment_audio(wave, _rng(), augment.Augment(audio_gain_db=6.0), 8000)
    assert len(out) == 1000 and 0.05 < out[0] < 0.2 and np.ptp(out) == 0
    shifts = [augment.augment_audio(wave, _rng(i), augment.Augment(audio_shift=0.01), 8000)
              for i in range(10)]
    assert {len(s) for s in shifts} <= set(range(920, 1081)) and len({len(s) for s in shifts}) > 1
    for s in shifts:  # a delay adds leading silence, an advance drops the start
        lead = max(0, len(s) - 1000)
        assert (s[:lead] == 0).all() and (s[lead:] == 0.1).all()


def test_speed_perturbation_scales_length_and_pitch():
    """A rate r plays the clip r times faster: len / r samples, a tone's frequency times r."""
    t = np.arange(4000) / 8000.0
    wave = np.sin(2 * np.pi * 500.0 * t).astype(np.float32)
    aug = augment.Augment(audio_speed=0.2)
    outs = [augment.augment_audio(wave, _rng(i), aug, 8000) for i in range(8)]
    assert all(o.dtype == np.float32 for o in outs)
    lengths = [len(o) for o in outs]
    assert min(lengths) >= 4000 / 1.2 - 1 and max(lengths) <= 4000 / 0.8 + 1 and len(set(lengths)) > 4
    for out in outs:
        rate = len(wave) / len(out)
        peak = np.argmax(np.abs(np.fft.rfft(out))) * 8000.0 / len(out)
        assert abs(peak - 500.0 * rate) < 8000.0 / len(out) + 1
    np.testing.assert_array_equal(augment.speed(wave, _rng(), 0.0), wave)


def test_time_mask_zeroes_one_span():
    wave = np.ones(2000, np.float32)
    out = augment.time_mask(wave, _rng(3), 0.2)
    zero = np.flatnonzero(out == 0)
    assert 0 < len(zero) <= 400 and np.all(np.diff(zero) == 1)
    assert (wave == 1).all()  # the input is not changed


def test_freq_mask_removes_one_band_and_keeps_the_rest():
    rate, n = 8000, 4000
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, n).astype(np.float32)
    before = np.fft.rfft(wave.astype(np.float64))
    widths = []
    for seed in range(10):
        out = augment.freq_mask(wave, _rng(seed), rate, 0.3)
        assert out.dtype == np.float32 and out.shape == wave.shape
        after = np.fft.rfft(out.astype(np.float64))
        removed = np.flatnonzero(np.abs(after) < 1e-3)
        if len(removed):
            assert np.all(np.diff(removed) == 1)  # one contiguous band
        kept = np.setdiff1d(np.arange(len(after)), removed)
        np.testing.assert_allclose(after[kept], before[kept], atol=1e-2)
        widths.append(len(removed))
    assert max(widths) > 50 and max(widths) < 0.8 * len(before)


def test_token_dropout_keeps_padding():
    tokens = media.tokenize("hello world", 16)
    out = augment.token_dropout(tokens, _rng(), 0.5)
    assert (out[tokens == 0] == 0).all()
    changed = out != tokens
    assert changed.any() and (out[changed] == media.RESERVED_ID).all()


def test_augment_config_is_checked():
    assert not augment.Augment.from_config(None).enabled
    assert augment.Augment.from_config({"text_dropout": 0.1}).enabled
    with pytest.raises(ValueError, match="config.data.augment.image_crop=1.5 must be in"):
        augment.Augment.from_config({"image_crop": 1.5})
    with pytest.raises(ValueError, match=r"config.data.augment.audio_speed=1.0 must be in \[0, 1\)"):
        augment.Augment.from_config({"audio_speed": 1.0})
    with pytest.raises(ValueError, match="config.data.augment.colour is unknown"):
        augment.Augment.from_config({"colour": 1.0})


# ---------------------------------------------------------------- in the pipeline


def _config(workers=0, **augment_switches):
    c = config_lib.defaults()  # every key the pipeline reads, at its default
    c.modalities, c.seed = ("image", "text", "audio"), 0
    c.data.update(dict(image_size=8, audio_rate=8000, audio_samples=128, text_length=32, workers=workers,
                       tokenizer="bytes"))
    c.data.augment.update(augment_switches)
    return c


ON = dict(image_crop=0.5, image_flip=True, audio_gain_db=3.0, audio_shift=0.002,
          audio_time_mask=0.1, audio_freq_mask=0.1, text_dropout=0.2)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("aug")
    examples, _ = synthetic.generate(48, 3, image_size=8, audio_rate=8000, audio_samples=128)
    spec = synthetic.make_spec(image_size=8, audio_rate=8000, audio_samples=128)
    writer.write_dataset(str(path), [codec.encode(e) for e in examples], spec, 2)
    return sources.load_directory(str(path))


def test_augmentation_changes_training_batches_only(source):
    plain = take(pipeline.train_batches(source, _config(), global_batch=GB), 3)
    aug = take(pipeline.train_batches(source, _config(**ON), global_batch=GB), 3)
    for p, a in zip(plain, aug):
        np.testing.assert_array_equal(p["label"], a["label"])  # same examples, same order
        for key in ("image", "text", "audio"):
            assert not np.array_equal(p[key], a[key]), key
    ev_plain = list(pipeline.eval_batches(source, _config(), global_batch=GB))
    ev_aug = list(pipeline.eval_batches(source, _config(**ON), global_batch=GB))
    assert all(equal(x, y) for x, y in zip(ev_plain, ev_aug))  # never in eval


def test_augmented_batches_are_a_function_of_the_batch_index(source):
    """Resume at j, any worker count, any host count: the same augmented batch j."""
    fresh = take(pipeline.train_batches(source, _config(**ON), global_batch=GB), 7)
    assert not equal(fresh[0], fresh[3])  # epoch 2 draws new augmentations (3 batches/epoch)
    resumed = take(pipeline.train_batches(source, _config(workers=2, **ON), global_batch=GB,
                                           start_batch=4), 3)
    assert all(equal(x, y) for x, y in zip(fresh[4:], resumed))
    halves = [take(pipeline.train_batches(source, _config(**ON), global_batch=GB, start_batch=5,
                                           process_index=i, process_count=2), 1)[0]
              for i in range(2)]
    for key in fresh[5]:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), fresh[5][key])
