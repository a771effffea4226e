"""Tests for mmjax/data/{sources,preprocess,pipeline}.py on a tiny synthetic data set."""

import collections
import json
import os

import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import media
from mmjax.data import codec, pipeline, preprocess, sources, synthetic, writer
from batches import equal, take  # noqa: E402

N = 96  # examples; with global batch 32 an epoch is exactly 3 batches
GB = 32
ALL = ("image", "text", "audio")


def _config(modalities=ALL, seed=0, workers=0):
    c = config_lib.defaults()  # every key the pipeline reads, at its default
    c.modalities, c.seed = modalities, seed
    c.data.update(dict(train="synthetic", eval="synthetic", cache_dir="", image_size=8, audio_rate=8000,
                       audio_samples=128, text_length=32, workers=workers, tokenizer="bytes"))
    c.data.synthetic.update(dict(num_train=16, num_eval=8, seed=0, task="default"))
    return c


def _make_dir(path, n, num_shards=2):
    examples, _ = synthetic.generate(n, 5, image_size=8, audio_rate=8000, audio_samples=128)
    spec = synthetic.make_spec(image_size=8, audio_rate=8000, audio_samples=128)
    writer.write_dataset(str(path), [codec.encode(e) for e in examples], spec, num_shards)
    return sources.open_source(str(path), "train", _config().data)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return _make_dir(tmp_path_factory.mktemp("train"), N)


def _ids(batch):
    """Row identities: image and audio bytes are unique per example (noise)."""
    return [batch["image"][i].tobytes() + batch["audio"][i].tobytes()
            for i in range(len(batch["label"]))]


# ---------------------------------------------------------------- sources and preprocess


def test_open_source_reads_shards_in_order(source):
    assert source.num_examples == N and source.num_classes == 10
    assert sorted(os.listdir(source.directory)) == [
        "data-00000-of-00002.array_record", "data-00001-of-00002.array_record", "spec.json"]
    examples, _ = synthetic.generate(N, 5, image_size=8, audio_rate=8000, audio_samples=128)
    assert codec.decode(source.records[N - 1])["text"] == examples[N - 1]["text"]


def test_open_source_synthetic_and_bad_names(tmp_path):
    config_data = _config().data
    config_data.cache_dir = str(tmp_path)
    assert sources.open_source("synthetic", "eval", config_data).num_examples == 8
    with pytest.raises(ValueError, match="neither 'synthetic' nor a directory with spec.json"):
        sources.open_source(str(tmp_path / "nope"), "train", config_data)
    with pytest.raises(ValueError, match="unknown split"):
        sources.open_source("synthetic", "test", config_data)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "spec.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="'format' must be 'mmjax-v1'"):
        sources.open_source(str(tmp_path / "broken"), "train", config_data)


@pytest.mark.parametrize("key, value, match", [
    ("image_size", 16, "data.image_size=16"),
    ("audio_rate", 16000, "data.audio_rate=16000"),
    ("audio_samples", 64, "data.audio_samples=64"),
])
def test_check_spec_names_the_mismatch(source, key, value, match):
    config = _config()
    config.data[key] = value
    with pytest.raises(ValueError, match=match):
        sources.check_spec(source.spec, config.data, ALL)
    longer = _config()
    longer.data.audio_samples = 256  # longer than the stored clips: zero-padding, fine
    sources.check_spec(source.spec, longer.data, ALL)


def test_check_spec_missing_modality(source):
    spec = json.loads(json.dumps(source.spec))
    del spec["modalities"]["audio"]
    sources.check_spec(spec, _config().data, ("image", "text"))
    with pytest.raises(ValueError, match="includes 'audio'"):
        sources.check_spec(spec, _config().data, ALL)


def test_preprocess_fields():
    example = {"image": np.zeros((8, 8, 3), np.uint8), "audio": np.ones(200, np.float32),
               "text": "hé", "label": 3}
    out = preprocess.Preprocess(ALL, image_size=8, audio_samples=128, text_length=4).map(
        codec.encode(example))
    np.testing.assert_array_equal(out["text"], [ord("h") + 2, 0xC3 + 2, 0xA9 + 2, 0])
    assert out["audio"].shape == (128,) and out["audio_length"] == 128  # truncated
    short = media.pad_audio(np.ones(5, np.float32), 8)
    np.testing.assert_array_equal(short[0], [1, 1, 1, 1, 1, 0, 0, 0])
    assert short[1] == 5 and short[1].dtype == np.int32
    assert out["label"].dtype == np.int32 and out["label"] == 3
    with pytest.raises(ValueError, match=r"uint8 \[16, 16, 3\]"):
        preprocess.preprocess_example(example, ALL, image_size=16, audio_samples=8, text_length=4)
    with pytest.raises(ValueError, match="no 'audio' field"):
        preprocess.preprocess_example({"label": 1}, ("audio",), image_size=8, audio_samples=8,
                                      text_length=4)


# ---------------------------------------------------------------- training batches


@pytest.mark.parametrize("modalities", [ALL, ("image", "text")])
def test_train_batch_layout(source, modalities):
    (batch,) = take(pipeline.train_batches(source, _config(modalities), global_batch=GB), 1)
    expected = {"image": (np.uint8, (GB, 8, 8, 3)), "text": (np.int32, (GB, 32)),
                "audio": (np.float32, (GB, 128)), "audio_length": (np.int32, (GB,)),
                "label": (np.int32, (GB,))}
    keys = set(modalities) | {"label"} | ({"audio_length"} if "audio" in modalities else set())
    assert set(batch) == keys
    for k in keys:
        assert (batch[k].dtype, batch[k].shape) == expected[k], k
    if "audio" in modalities:
        assert (batch["audio_length"] >= 64).all() and (batch["audio_length"] <= 128).all()
        assert all((batch["audio"][i, n:] == 0).all() for i, n in enumerate(batch["audio_length"]))


def test_train_is_deterministic_and_each_epoch_is_a_new_permutation(source):
    a = take(pipeline.train_batches(source, _config(), global_batch=GB), 9)
    b = take(pipeline.train_batches(source, _config(), global_batch=GB), 9)
    assert all(equal(x, y) for x, y in zip(a, b))
    other = take(pipeline.train_batches(source, _config(seed=1), global_batch=GB), 1)
    assert not equal(a[0], other[0])
    epochs = [sum((_ids(x) for x in a[e * 3:(e + 1) * 3]), []) for e in range(3)]
    for ids in epochs:
        assert len(set(ids)) == N  # every example exactly once per epoch
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]


def test_resume_at_batch_j_equals_the_jth_batch(source):
    fresh = take(pipeline.train_batches(source, _config(), global_batch=GB), 8)
    resumed = take(pipeline.train_batches(source, _config(), global_batch=GB, start_batch=5), 3)
    assert all(equal(x, y) for x, y in zip(fresh[5:], resumed))


def test_workers_give_the_same_batches(source):
    """Also a resume at batch 2 with another worker count than the run before (0 -> 2): the
    batches are those of the uninterrupted run, so a worker-count change needs no refusal."""
    plain = take(pipeline.train_batches(source, _config(), global_batch=GB, start_batch=2), 4)
    workers = take(pipeline.train_batches(source, _config(workers=2), global_batch=GB,
                                           start_batch=2), 4)
    assert all(equal(x, y) for x, y in zip(plain, workers))
    assert all(type(v) is np.ndarray for v in workers[0].values())


@pytest.mark.parametrize("count", [2, 4])
def test_hosts_split_each_global_batch_independently_of_host_count(source, count):
    whole = take(pipeline.train_batches(source, _config(), global_batch=GB, start_batch=1), 4)
    parts = [take(pipeline.train_batches(source, _config(), global_batch=GB, start_batch=1,
                                          process_index=i, process_count=count), 4)
             for i in range(count)]
    for j, batch in enumerate(whole):
        assert all(len(p[j]["label"]) == GB // count for p in parts)
        host_ids = [_ids(p[j]) for p in parts]
        union = sum(host_ids, [])
        assert len(set(union)) == GB  # disjoint
        assert collections.Counter(union) == collections.Counter(_ids(batch))


def test_batch_must_divide_over_hosts(source):
    with pytest.raises(ValueError, match="multiple of the number of hosts"):
        pipeline.train_batches(source, _config(), global_batch=30, process_index=0,
                               process_count=4)


# ---------------------------------------------------------------- eval batches


@pytest.mark.parametrize("count", [1, 2, 4])
def test_eval_covers_each_example_once_with_weighted_padding(tmp_path, count):
    n, gb = 90, 32  # 3 global batches, the last one 26 real + 6 padding rows
    src = _make_dir(tmp_path, n, num_shards=3)
    seen = collections.Counter()
    for i in range(count):
        batches = pipeline.eval_batches(src, _config(), global_batch=gb, process_index=i,
                                        process_count=count)
        assert len(batches) == 3
        first, again = list(batches), list(batches)  # re-iterable, same result
        assert len(first) == 3 and all(equal(x, y) for x, y in zip(first, again))
        for b in first:
            assert b["weight"].dtype == np.float32 and b["weight"].shape == (gb // count,)
            assert set(b) == {"image", "text", "audio", "audio_length", "label", "weight"}
            seen.update(k for k, w in zip(_ids(b), b["weight"]) if w == 1)
            assert ((b["weight"] == 0) | (b["weight"] == 1)).all()
    every = {codec.decode(src.records[k])["image"].tobytes() for k in range(n)}
    assert len(seen) == n and set(seen.values()) == {1}
    assert {k[:8 * 8 * 3] for k in seen} == every


# ---------------------------------------------------------------- issue 15: damaged shards, sizes that follow the data
def _cut(path, keep):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:keep])


def test_a_cut_shard_is_one_line_naming_it_at_open_and_mid_read(tmp_path):
    src = _make_dir(tmp_path / "ds", 40)
    shard = os.path.join(src.directory, "data-00001-of-00002.array_record")
    _cut(shard, 70_000)  # cut while open: the reader finds it mid-run
    it = pipeline.train_batches(src, _config(), global_batch=8)
    with pytest.raises(sources.ShardError) as info:
        for _ in range(10):
            next(it)
    it.close()
    for error in (info.value, pytest.raises(sources.ShardError, sources.load_directory, src.directory).value):
        message = str(error)
        assert message.startswith(f"data shard {shard} is damaged or cut short (") and "\n" not in message
        assert message.endswith("rebuild the data set (python -m mmjax.data.build --overwrite) or copy the file "
                                "again")
        assert isinstance(error, config_lib.UserError)  # mmjax.train prints it as one line, no traceback
    _cut(shard, 100)  # and a stub: at open
    with pytest.raises(sources.ShardError, match="data-00001-of-00002.array_record is damaged or cut short"):
        sources.load_directory(src.directory)


def _spec(image=8, audio=128, text=None):
    spec = synthetic.make_spec(image_size=image, audio_rate=8000, audio_samples=audio)
    if text:
        spec["modalities"]["text"] = text
    return spec


def test_image_size_audio_and_text_length_follow_the_data_unless_set():
    data = config_lib.defaults().data  # 16 px, 2048 samples, 32 tokens
    text = {"max_bytes": 80, "length": 64, "tokenizer": "bytes", "max_tokens": 80}
    spec = _spec(28, 3000, text)
    spec["build"] = {"texts_longer_than_length": 5}
    lines = sources.follow_data(data, [spec, spec], ALL)
    assert (data.image_size, data.audio_samples, data.text_length) == (28, 3000, 64)
    assert lines == ["data.image_size=28 (the data set's images; set it to override)",
                     "data.audio_samples=3000 (the data set's longest clip; set it to override)",
                     "data.text_length=64 (the data set's build --text_length; set it to override)",
                     "5 training texts longer than data.text_length=64 tokens (up to 80) are cut to that; "
                     "set --config.data.text_length=80 to keep them whole"]
    sources.check_spec(spec, data, ALL)  # was: an error asking for each override
    shorter = config_lib.defaults().data
    sources.follow_data(shorter, [_spec(16, 1000)], ALL)
    assert shorter.audio_samples == 2048  # shorter clips fit the default (padded), as before
    chosen = config_lib.defaults().data
    chosen.image_size, chosen.text_length = 32, 48  # the user's values stay, and check_spec names the mismatch
    assert sources.follow_data(chosen, [spec], ALL)[-1].startswith("texts longer than data.text_length=48")
    with pytest.raises(ValueError, match="data.image_size=32 but the data set's images are 28x28"):
        sources.check_spec(spec, chosen, ALL)
    other = config_lib.defaults().data
    assert sources.follow_data(other, [_spec(28), _spec(32)], ("image",)) == [] and other.image_size == 16
    old = config_lib.defaults().data  # a data set built before the text fields: bytes are the byte tokens
    assert sources.follow_data(old, [_spec(text={"max_bytes": 40})], ("text",)) == [
        "texts longer than data.text_length=32 tokens (up to 40) are cut to that; "
        "set --config.data.text_length=40 to keep them whole"]
