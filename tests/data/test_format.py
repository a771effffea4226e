"""Tests for mmjax/data/{format,writer}.py: shard names, spec checks and atomic writes."""
import json
import os

import pytest

from mmjax.data import codec, format, sources, writer

SPEC = {"format": format.FORMAT, "num_examples": 0, "num_classes": 2, "class_names": ["a", "b"],
        "modalities": {"text": {"max_bytes": 8}}}


def test_shard_names_sort_in_shard_order():
    names = [format.shard_name(i, 12) for i in range(12)]
    assert names[0] == "data-00000-of-00012.array_record" and names == sorted(names)


@pytest.mark.parametrize("change, message", [
    ({"format": "v0"}, "'format' must be 'mmjax-v1'"),
    ({"num_classes": -1}, "'num_classes' must be a non-negative int"),
    ({"class_names": ["a"]}, "'class_names' must list num_classes=2 names"),
    ({"modalities": {"smell": {}}}, "unknown modality 'smell'"),
    ({"modalities": {"text": {}}}, "modalities.text.max_bytes must be an int"),
    ({"optional_modalities": ["image"]}, "'optional_modalities' must list some of"),
    ({"tasks": ["ranking"]}, "'tasks' must be a non-empty list of"),
    ({"tasks": ["regression"]}, "'target_size' must be a positive int"),
    ({"shards": ["../../etc/passwd"]}, "'shards' must list file names like data-00000-of-00001"),
])
def test_a_bad_spec_names_its_field(change, message):
    assert format.validate_spec(dict(SPEC)) == SPEC
    with pytest.raises(ValueError, match=message):
        format.validate_spec({**SPEC, **change}, where="x/spec.json")


def test_written_records_read_back_in_order_from_contiguous_shards(tmp_path):
    records = [codec.encode({"text": f"row {i}", "label": i % 2}) for i in range(10)]
    writer.write_dataset(str(tmp_path), records, SPEC, num_shards=3)
    assert sorted(os.listdir(tmp_path)) == [format.shard_name(i, 3) for i in range(3)] + ["spec.json"]
    source = sources.load_directory(str(tmp_path))
    assert [codec.decode(source.records[i])["text"] for i in range(10)] == [f"row {i}" for i in range(10)]
    assert format.load_spec(str(tmp_path)) == {**SPEC, "num_examples": 10,
                                               "shards": [format.shard_name(i, 3) for i in range(3)]}


def test_an_empty_data_set_is_one_empty_shard(tmp_path):
    writer.write_dataset(str(tmp_path), [], SPEC, num_shards=4)
    assert sources.load_directory(str(tmp_path)).num_examples == 0


def test_an_aborted_write_leaves_nothing_that_looks_like_a_data_set(tmp_path):
    shards = writer.ShardWriter(str(tmp_path))
    shards.write(b"x", 0)
    shards.write(b"y", 2)  # part 1 never gets a record: no shard
    with pytest.raises(ValueError, match="part 1 comes after part 2"):
        shards.write(b"z", 1)
    assert sorted(os.listdir(tmp_path)) == [".part-00000.array_record.tmp", ".part-00002.array_record.tmp"]
    shards.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="'num_classes' must be"):  # checked before anything is written
        writer.write_dataset(str(tmp_path / "bad"), [b"x"], {**SPEC, "num_classes": None})
    assert not (tmp_path / "bad").exists()


def test_load_spec_names_the_file(tmp_path):
    (tmp_path / "spec.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"cannot read {tmp_path / 'spec.json'}"):
        format.load_spec(str(tmp_path))
    (tmp_path / "spec.json").write_text(json.dumps({**SPEC, "format": "other"}))
    with pytest.raises(ValueError, match=r"spec.json: 'format' must be"):
        format.load_spec(str(tmp_path))
