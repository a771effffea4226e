"""Tests for mmjax/data/synthetic.py: determinism, layout, and that the task needs all three."""

import collections
import itertools
import json
import os

import ml_collections
import numpy as np
import pytest

from mmjax import contract
from mmjax.data import codec, sources, synthetic, writer

KW = dict(image_size=16, audio_rate=8000, audio_samples=512)


@pytest.fixture(scope="module")
def data():
    return synthetic.generate(4000, seed=3, **KW)


def _config_data(num_train=40, num_eval=12):
    d = ml_collections.ConfigDict()
    d.cache_dir = ""
    d.image_size = 16
    d.audio_rate = 8000
    d.audio_samples = 256
    d.text_length = 32
    d.synthetic = ml_collections.ConfigDict(dict(num_train=num_train, num_eval=num_eval, seed=0,
                                                task="default"))
    return d


def test_generate_is_deterministic_in_seed():
    (e1, l1), (e2, l2) = synthetic.generate(50, 7, **KW), synthetic.generate(50, 7, **KW)
    e3, _ = synthetic.generate(50, 8, **KW)
    np.testing.assert_array_equal(l1, l2)
    assert [codec.encode(e) for e in e1] == [codec.encode(e) for e in e2]
    assert [codec.encode(e) for e in e1] != [codec.encode(e) for e in e3]


def test_shapes_dtypes_and_label_rule(data):
    examples, latents = data
    assert latents.shape == (len(examples), 3)
    for ex, (a, b, s) in zip(examples, latents):
        assert set(ex) == {"image", "audio", "text", "label"}
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (16, 16, 3)
        assert ex["audio"].dtype == np.float32 and ex["audio"].ndim == 1
        assert KW["audio_samples"] // 2 <= len(ex["audio"]) <= KW["audio_samples"]
        assert np.abs(ex["audio"]).max() <= 1.0
        assert isinstance(ex["text"], str) and len(ex["text"].encode()) < 32
        assert ex["label"] == (a if s == synthetic.IMAGE else b)
    lengths = {len(ex["audio"]) for ex in examples}
    assert len(lengths) > 100  # lengths vary, so padding masks matter


def _bayes_accuracy(latents, labels, columns):
    """Exact Bayes-optimal accuracy of predicting labels from the given latent columns."""
    groups = collections.defaultdict(collections.Counter)
    for key, label in zip(map(tuple, latents[:, columns]), labels):
        groups[key][label] += 1
    return sum(c.most_common(1)[0][1] for c in groups.values()) / len(labels)


def test_every_pair_is_ambiguous_and_all_three_decide(data):
    examples, latents = data
    labels = np.array([ex["label"] for ex in examples])
    for pair in itertools.combinations(range(3), 2):
        acc = _bayes_accuracy(latents, labels, list(pair))
        assert acc <= 0.65, (pair, acc)
    assert _bayes_accuracy(latents, labels, [0, 1, 2]) == 1.0


def test_labels_are_roughly_balanced(data):
    examples, _ = data
    counts = np.bincount([ex["label"] for ex in examples], minlength=10)
    assert counts.min() > 0.7 * len(examples) / 10 and counts.max() < 1.3 * len(examples) / 10


def test_each_modality_shows_its_latent(data):
    """The text names S, the audio's spectral peak is pitch B, the image holds glyph A."""
    examples, latents = data
    freqs = synthetic.pitch_frequencies(KW["audio_rate"])
    for ex, (a, b, s) in list(zip(examples, latents))[:300]:
        question = ex["text"].lower()
        image_q = any(q in question for q in synthetic.IMAGE_QUESTIONS)
        audio_q = any(q in question for q in synthetic.AUDIO_QUESTIONS)
        assert (image_q, audio_q) == ((True, False) if s == synthetic.IMAGE else (False, True))
        spectrum = np.abs(np.fft.rfft(ex["audio"], n=8192))
        peak = np.argmax(spectrum) * KW["audio_rate"] / 8192
        assert np.argmin(np.abs(freqs - peak)) == b
        # Binarise at the midpoint of the two colours; ink is the minority.
        grey = ex["image"].astype(np.float32).mean(-1)
        ink = grey > (np.percentile(grey, 2) + np.percentile(grey, 98)) / 2
        if ink.sum() > ink.size / 2:
            ink = ~ink
        ys, xs = np.nonzero(ink)
        crop = ink[ys.min():ys.min() + 7, xs.min():xs.min() + 5]
        matches = [d for d in range(10)
                   if crop.shape == (7, 5) and (crop == synthetic.GLYPHS[d]).all()]
        assert matches == [a]


def test_glyphs_and_pitches_are_distinct():
    assert synthetic.GLYPHS.shape == (10, 7, 5)
    flat = synthetic.GLYPHS.reshape(10, -1)
    assert len({row.tobytes() for row in flat}) == 10
    mel = contract.hz_to_mel(synthetic.pitch_frequencies(8000))
    mel_bin_width = contract.hz_to_mel(4000.0) / 33  # 32 triangular mel bins up to Nyquist
    assert np.diff(mel).min() > 2 * mel_bin_width


def test_ensure_synthetic_writes_once_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("MMJAX_CACHE", str(tmp_path))
    config_data = _config_data()
    paths = synthetic.ensure_synthetic("", config_data)
    assert set(paths) == {"train", "eval"}
    assert os.path.dirname(os.path.dirname(paths["train"])) == str(tmp_path)
    with open(os.path.join(paths["train"], "spec.json")) as f:
        spec = json.load(f)
    assert spec["format"] == "mmjax-v1" and spec["num_examples"] == 40
    assert spec["modalities"]["audio"] == {"sample_rate": 8000, "max_samples": 256}
    train = sources.load_directory(paths["train"])
    evals = sources.load_directory(paths["eval"])
    assert train.num_examples == 40 and evals.num_examples == 12
    assert not {train.records[i] for i in range(40)} & {evals.records[i] for i in range(12)}

    # Other generation parameters get another folder.
    config_data.image_size = 8
    other = synthetic.ensure_synthetic("", config_data)
    assert other["train"] != paths["train"]
    assert sources.load_directory(other["train"]).spec["modalities"]["image"]["height"] == 8
    # A second call reuses the files (no regeneration) and leaves no temporary folders.
    config_data.image_size = 16
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: pytest.fail("regenerated"))
    assert synthetic.ensure_synthetic("", config_data) == paths
    assert len(os.listdir(tmp_path)) == 2


def test_ensure_synthetic_keeps_the_copy_of_a_process_that_finished_first(tmp_path, monkeypatch):
    config_data = _config_data(num_train=8, num_eval=4)
    theirs = synthetic.ensure_synthetic(str(tmp_path / "other"), config_data)
    target = os.path.dirname(theirs["train"]).replace(str(tmp_path / "other"), str(tmp_path / "c"))
    real_write = writer.write_dataset

    def write_after_other_process(directory, *args, **kwargs):
        # Simulate the race: another process renames its finished copy into place first.
        if not os.path.exists(target):
            os.rename(os.path.dirname(theirs["train"]), target)
            open(os.path.join(target, "theirs"), "w").close()
        return real_write(directory, *args, **kwargs)

    monkeypatch.setattr(writer, "write_dataset", write_after_other_process)
    paths = synthetic.ensure_synthetic(str(tmp_path / "c"), config_data)
    assert os.path.exists(os.path.join(target, "theirs"))
    assert paths["train"] == os.path.join(target, "train")
    assert os.listdir(tmp_path / "c") == [os.path.basename(target)]  # temp folder removed


def test_redundant_task_each_modality_alone_decides():
    """task='redundant': digit = note = label, and the text names the class."""
    examples, latents = synthetic.generate(300, seed=5, task="redundant", **KW)
    labels = np.array([ex["label"] for ex in examples])
    np.testing.assert_array_equal(latents, np.stack([labels] * 3, axis=1))
    for column in range(3):
        assert _bayes_accuracy(latents, labels, [column]) == 1.0
    for ex in examples:
        assert synthetic.CLASS_NAMES[ex["label"]] in ex["text"].lower()
        assert len(ex["text"].encode()) <= synthetic.MAX_TEXT_BYTES < 32
    assert len(set(labels)) == 10
    with pytest.raises(ValueError, match=r"config.data.synthetic.task='easy' is not one of"):
        synthetic.generate(3, seed=0, task="easy", **KW)


def test_task_key_changes_the_cache_folder_only_when_not_default():
    config_data = _config_data()
    default = synthetic._params(config_data)
    config_data.synthetic.task = "default"
    assert synthetic._params(config_data) == default  # caches of the default task stay valid
    config_data.synthetic.task = "redundant"
    assert synthetic._params(config_data) == {**default, "task": "redundant"}


# ---------------------------------------------------------------- issue 15: bad counts and cache folders
def test_empty_counts_and_an_unwritable_cache_are_one_line(tmp_path):
    from mmjax import config as config_lib

    for key in ("num_train", "num_eval"):
        with pytest.raises(ValueError, match=f"config.data.synthetic.{key}=0 makes an empty data set"):
            synthetic.ensure_synthetic(str(tmp_path), _config_data(**{key: 0}))
        config = config_lib.defaults()
        config.data.synthetic[key] = 0
        with pytest.raises(config_lib.UserError, match=f"config.data.synthetic.{key}: must be a positive integer"):
            config_lib.validate(config)
    config = config_lib.defaults()
    config.data.prefetch = -1  # refused before anything is compiled
    with pytest.raises(config_lib.UserError, match="config.data.prefetch: must be >= 0, got -1"):
        config_lib.validate(config)
    (tmp_path / "a_file").write_text("")
    for cache in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        with pytest.raises(ValueError) as info:
            synthetic.ensure_synthetic(str(cache), _config_data())
        assert str(info.value).startswith(f"config.data.cache_dir={str(cache)!r} (where the synthetic data are "
                                          "written): cannot write there (") and "\n" not in str(info.value)
    (tmp_path / "read_only").mkdir(mode=0o555)
    if os.access(tmp_path / "read_only", os.W_OK):  # root writes anywhere: the cases above stand for it
        return
    with pytest.raises(ValueError, match="cannot write there"):
        synthetic.ensure_synthetic(str(tmp_path / "read_only"), _config_data())


def test_paired_task_each_modality_carries_the_whole_instance_code():
    """task='paired': every code once per split (<= 1000 examples); the text spells it, the
    audio plays its digits' notes in its thirds, the image draws its glyphs in three slots."""
    kw = dict(image_size=24, audio_rate=8000, audio_samples=1536)
    examples, digits = synthetic.generate(1000, seed=4, task="paired", **kw)
    codes = digits @ np.array([100, 10, 1])
    assert sorted(codes) == list(range(1000))  # unique: one true partner per example
    freqs = synthetic.pitch_frequencies(8000)
    for ex, code in list(zip(examples, digits))[:200]:
        assert ex["label"] == code[0]
        assert ex["text"].lower() == "code " + " ".join(map(str, code))
        assert len(ex["text"].encode()) <= synthetic.PAIRED_TEXT_BYTES <= 32
        assert ex["audio"].shape == (1536,) and ex["image"].shape == (24, 24, 3)
        for j, third in enumerate(np.split(ex["audio"], 3)):
            peak = np.argmax(np.abs(np.fft.rfft(third, n=8192))) * 8000 / 8192
            assert np.argmin(np.abs(freqs - peak)) == code[j]
        grey = ex["image"].astype(np.float32).mean(-1)
        ink = grey > (np.percentile(grey, 2) + np.percentile(grey, 98)) / 2
        if ink.sum() > ink.size / 2:
            ink = ~ink
        slot = (24 - 2) // 3
        for j in range(3):  # each slot holds exactly its digit's glyph
            part = ink[:, 1 + j * slot:1 + (j + 1) * slot]
            ys, xs = np.nonzero(part)
            crop = part[ys.min():ys.min() + 7, xs.min():xs.min() + 5]
            assert [d for d in range(10) if crop.shape == (7, 5) and (crop == synthetic.GLYPHS[d]).all()] == [code[j]]
    again, _ = synthetic.generate(1000, seed=4, task="paired", **kw)
    assert [codec.encode(e) for e in again[:20]] == [codec.encode(e) for e in examples[:20]]
    spec = synthetic.make_spec(task="paired", **{**kw, "audio_samples": 1536})
    assert spec["modalities"]["text"]["max_bytes"] == synthetic.PAIRED_TEXT_BYTES and spec["num_classes"] == 10
    with pytest.raises(ValueError, match=r"image_size=16 is too small for 3 glyphs"):
        synthetic.generate(2, seed=0, task="paired", image_size=16)
