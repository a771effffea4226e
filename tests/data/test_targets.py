"""Tests for mmjax/data/targets.py and the data side of multi-label, regression and
absent modalities: manifest -> shards -> spec -> pipeline batches -> the model's masking."""

import json
import wave

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mmjax.data import build, codec, pipeline, sources, synthetic, targets
from mmjax.data.format import validate_spec
from mmjax.data.manifest import ManifestError
from mmjax.models.multimodal import build_model


def _png(path, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
    return path.name


def _wav(path, seed, samples=1500):
    rng = np.random.default_rng(seed)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(8000)
        f.writeframes((rng.normal(0, 4000, samples)).astype(np.int16).tobytes())
    return path.name


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _build(manifest, out, **kw):
    return build.build(str(manifest), str(out), workers=1, progress=False, log=lambda *_: None, **kw)


def _records(directory):
    src = sources.load_directory(str(directory))
    return src, [codec.decode(src.records[i]) for i in range(src.num_examples)]


@pytest.fixture
def media(tmp_path):
    """Four images and four WAVs next to where the manifests go."""
    return tmp_path, [_png(tmp_path / f"i{k}.png", k) for k in range(4)], [
        _wav(tmp_path / f"a{k}.wav", k) for k in range(4)]


# ---------------------------------------------------------------- manifest -> shards -> batches


def test_multilabel_and_regression_manifest_round_trip(media, tiny_config):
    folder, images, wavs = media
    rows = [
        {"image": images[0], "text": "a cat and a dog", "labels": ["cat", "dog"], "target": [0.5, -1.0]},
        {"image": images[1], "text": "nothing", "labels": [], "target": [2.0, 0.0]},
        {"image": images[2], "text": "a bird", "labels": ["bird", "bird"], "target": [1, 3]},
    ]
    spec = _build(_jsonl(folder / "m.jsonl", rows), folder / "ds")
    assert spec["tasks"] == ["multilabel", "regression"] and spec["target_size"] == 2
    assert spec["class_names"] == ["bird", "cat", "dog"] and "optional_modalities" not in spec
    _, recs = _records(folder / "ds")
    assert [r["labels"].tolist() for r in recs] == [[1, 2], [], [0]]
    assert recs[0]["labels"].dtype == np.int32 and recs[0]["target"].dtype == np.float32
    np.testing.assert_array_equal(np.stack([r["target"] for r in recs]), [[0.5, -1], [2, 0], [1, 3]])
    assert "label" not in recs[0]

    # CSV: the same targets, ';'-separated; an eval split takes the train split's classes.
    (folder / "e.csv").write_text(f"image,text,labels,target\n{images[3]},x,dog;cat,1;2\n{images[0]},y,,0;0\n")
    eval_spec = _build(folder / "e.csv", folder / "ev", classes=str(folder / "ds"))
    assert eval_spec["class_names"] == spec["class_names"]
    assert [r["labels"].tolist() for r in _records(folder / "ev")[1]] == [[1, 2], []]

    for task, key, expected in (("multilabel", "label", [[0, 1, 1], [0, 0, 0], [1, 0, 0]]),
                                ("regression", "target", [[0.5, -1], [2, 0], [1, 3]])):
        config = tiny_config(modalities="image,text", loss__task=task, batch_size=4,
                             data__train=str(folder / "ds"), data__eval=str(folder / "ds"))
        source = sources.open_source(config.data.train, "train", config.data)
        batch = next(iter(pipeline.eval_batches(source, config, global_batch=4)))
        assert batch[key].dtype == np.float32 and batch[key].shape == (4, len(expected[0]))
        np.testing.assert_array_equal(batch[key][:3], expected)
        assert set(batch) == {"image", "text", key, "weight"}


def test_classification_batches_and_specs_are_unchanged(media):
    folder, images, _ = media
    spec = _build(_jsonl(folder / "m.jsonl", [{"image": images[0], "label": "a"}]), folder / "ds")
    assert "tasks" not in spec and "target_size" not in spec  # as before multi-label existed
    assert targets.spec_tasks(spec) == ("classification",)
    assert targets.batch_fields(spec, "classification") == {"label": ((), np.int32)}
    assert targets.batch_fields(spec, "none") == {"label": ((), np.int32)}
    assert targets.batch_fields({"tasks": ["regression"], "target_size": 2}, "none") == {}


TARGET_ERRORS = {
    "target size": ([{"image": "I", "target": [1, 2]}, {"image": "I", "target": [1]}],
                    "line 2: 'target' has 1 values but line 1's has 2"),
    "target type": ([{"image": "I", "target": 1}, {"image": "I", "target": "high"}],
                    "line 2: 'target' must be a finite number or a non-empty list"),
    "labels type": ([{"image": "I", "labels": ["a"]}, {"image": "I", "labels": "a"}],
                    "line 2: 'labels' must be a list of class ids or class names"),
    "missing target": ([{"image": "I", "labels": ["a"], "target": 1}, {"image": "I", "labels": ["a"]}],
                       "line 2: has no 'target' (the data set's targets are labels, target, as on line 1)"),
    "extra target": ([{"image": "I", "label": "a"}, {"image": "I", "label": "a", "target": 1}],
                     "line 2: has 'target', but the data set's targets are label (as on line 1)"),
    "mixed ids": ([{"image": "I", "labels": ["a"]}, {"image": "I", "labels": ["a", 0]}],
                  "line 2: label 0 is a class id but other rows use class names"),
}


@pytest.mark.parametrize("case", sorted(TARGET_ERRORS))
def test_bad_targets_stop_the_build_with_one_message(media, case):
    folder, images, _ = media
    rows, expected = TARGET_ERRORS[case]
    rows = [{k: (images[0] if v == "I" else v) for k, v in r.items()} for r in rows]
    manifest = _jsonl(folder / "m.jsonl", rows)
    with pytest.raises(ValueError) as info:
        _build(manifest, folder / "ds")
    assert f"{manifest} {expected}" in str(info.value)
    spec = _build(manifest, folder / "ds", skip_bad=True)  # the bad row is skipped, not kept
    assert spec["num_examples"] == 1


def test_task_must_match_the_data(tiny_config, tmp_path):
    """config.loss.task names a target the data set lacks -> one clear error."""
    from mmjax import train
    from mmjax.config import UserError

    config = tiny_config(loss__task="regression")
    with pytest.raises(UserError, match=r"config.loss.task='regression' but the data set .* has no "
                                        r"'target' field \(its examples are labelled for: classification\)"):
        train.train(config, str(tmp_path / "w"))
    with pytest.raises(ValueError, match="has no 'labels' field"):
        targets.check_task({"tasks": ["regression"], "target_size": 1}, "multilabel", "D")


def test_synthetic_variants():
    examples, latents = synthetic.generate(50, 3, task="multilabel")
    for example, (a, b, c) in zip(examples, latents):
        assert example["labels"].tolist() == sorted({a, b, c}) and "label" not in example
        assert synthetic.CLASS_NAMES[c] in example["text"].lower()
    examples, latents = synthetic.generate(50, 3, task="regression")
    values = np.array([e["target"][0] for e in examples])
    assert 0 <= values.min() < 0.1 and 0.9 < values.max() <= 1 and np.all(latents[:, 1] == -1)
    spec = synthetic.make_spec(image_size=16, audio_rate=8000, audio_samples=2048, task="regression")
    assert validate_spec(spec)["target_size"] == 1 and spec["num_classes"] == 0
    assert "tasks" not in synthetic.make_spec(image_size=16, audio_rate=8000, audio_samples=2048)


# ---------------------------------------------------------------- absent modalities


def test_rows_without_audio_are_flagged_and_masked(media, tiny_config):
    folder, images, wavs = media
    rows = [{"image": images[k], "text": f"row {k}", "label": k % 2} for k in range(4)]
    for k in (0, 2):
        rows[k]["audio"] = wavs[k]
    rows[3]["audio"] = None  # null and a missing key both mean absent
    manifest = _jsonl(folder / "m.jsonl", rows)
    with pytest.raises(ValueError, match=r"line 2: has no 'audio'"):
        _build(manifest, folder / "ds")  # without --optional_modalities every row needs it
    spec = _build(manifest, folder / "ds", optional_modalities="audio")
    assert spec["optional_modalities"] == ["audio"] and spec["build"]["examples_without"] == {"audio": 2}
    assert ["audio" in r for r in _records(folder / "ds")[1]] == [True, False, True, False]

    config = tiny_config(batch_size=4, data__train=str(folder / "ds"), data__eval=str(folder / "ds"))
    source = sources.open_source(config.data.train, "train", config.data)
    batch = next(iter(pipeline.eval_batches(source, config, global_batch=4)))
    present = np.array([True, False, True, False])
    np.testing.assert_array_equal(batch["present_audio"], present)
    assert batch["present_audio"].dtype == np.bool_ and "present_image" not in batch
    assert not batch["audio"][~present].any() and not batch["audio_length"][~present].any()
    assert batch["audio_length"][present].tolist() == [1500, 1500]

    # The absent rows' zeros are never read: any audio there gives the same outputs.
    model = build_model(config, source.num_classes)
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    variables = model.init(jax.random.key(0), jbatch, train=False)
    apply = jax.jit(lambda b: model.apply(variables, b, train=False))
    noise = np.random.default_rng(0).normal(0, 0.5, batch["audio"].shape).astype(np.float32)
    filled = dict(jbatch, audio=jnp.where(present[:, None], jbatch["audio"], noise),
                  audio_length=jnp.where(present, jbatch["audio_length"], batch["audio"].shape[1]))
    reference = apply(jbatch)
    np.testing.assert_allclose(apply(filled), reference, atol=1e-5)
    flagged = dict(filled, present_audio=jnp.ones((4,), bool))  # and it would matter if present
    assert not np.allclose(apply(flagged)[~present], reference[~present], atol=1e-4)


def test_optional_modality_errors(media):
    folder, images, wavs = media
    manifest = _jsonl(folder / "m.jsonl", [{"image": images[0], "label": 0}, {"label": 1, "audio": None}])
    with pytest.raises(ValueError, match=r"line 2: has no 'image' \(the data set's modalities are image, audio"):
        _build(manifest, folder / "ds", optional_modalities="audio")
    with pytest.raises(ValueError, match=r"line 2: has none of the modalities image, audio"):
        _build(manifest, folder / "ds", optional_modalities="image,audio")
    with pytest.raises(ManifestError, match=r"--optional_modalities: 'video' is not one of"):
        _build(manifest, folder / "ds", optional_modalities="video")
    with pytest.raises(ManifestError, match=r"names a modality not in --modalities=image"):
        _build(manifest, folder / "ds", modalities="image", optional_modalities="audio")
    with pytest.raises(ValueError, match=r"'optional_modalities' must list some of the data set's"):
        validate_spec(dict(synthetic.make_spec(image_size=16, audio_rate=8000, audio_samples=64),
                                   optional_modalities=["video"]))
