"""Tests for target_text in manifests and builds (loss.task 'generate', the data side):
CSV and JSON Lines rows -> stored strings -> spec.json's 'target_text', and bad rows."""

import json
import wave

import numpy as np
import pytest

import digits
from mmjax import media
from mmjax.data import build, codec, sources
from mmjax.data.format import validate_spec


def _wav(path, seed, samples=800):
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(8000)
        f.writeframes(np.random.default_rng(seed).normal(0, 4000, samples).astype(np.int16).tobytes())
    return path.name


def _build(manifest, out, **kw):
    return build.build(str(manifest), str(out), workers=1, progress=False, log=lambda *_: None, **kw)


def _stored(directory):
    src = sources.load_directory(str(directory))
    return [codec.decode(src.records[i]) for i in range(src.num_examples)]


@pytest.fixture
def wavs(tmp_path):
    return tmp_path, [_wav(tmp_path / f"a{k}.wav", k) for k in range(3)]


def test_jsonl_target_text_is_stored_whole_and_counted_in_the_spec(wavs):
    folder, names = wavs
    texts = ["seven", "naïve café", "a much longer target text than the others"]
    manifest = folder / "m.jsonl"
    manifest.write_text("".join(json.dumps({"audio": a, "text": f"q{k}", "target_text": t}) + "\n"
                                for k, (a, t) in enumerate(zip(names, texts))))
    spec = _build(manifest, folder / "ds")
    assert spec["tasks"] == ["generate"] and spec["num_classes"] == 0
    longest = max(texts, key=len)
    assert spec["target_text"] == {"max_tokens": media.target_tokens_needed(longest), "max_bytes": len(longest),
                                   "tokenizer": "bytes"}
    assert spec["target_text"]["max_tokens"] == len(longest) + 2  # bytes: one id a byte, BOS, EOS
    stored = _stored(folder / "ds")
    assert [r["target_text"] for r in stored] == texts and [r["text"] for r in stored] == ["q0", "q1", "q2"]
    assert "label" not in stored[0]


def test_csv_target_text_beside_a_label_lists_both_tasks(wavs):
    folder, names = wavs
    (folder / "m.csv").write_text("audio,label,target_text\n"
                                  f"{names[0]},seven,seven\n{names[1]},three,\"three, said twice\"\n")
    spec = _build(folder / "m.csv", folder / "ds")
    assert spec["tasks"] == ["classification", "generate"] and spec["class_names"] == ["seven", "three"]
    assert [(r["label"], r["target_text"]) for r in _stored(folder / "ds")] == [(0, "seven"), (1, "three, said twice")]
    assert spec["target_text"]["max_tokens"] == len("three, said twice") + 2


BAD_ROWS = {
    "not a string": ({"audio": "A", "target_text": 7}, "line 2: 'target_text' must be a string, got int 7"),
    "a list": ({"audio": "A", "target_text": ["seven"]}, "line 2: 'target_text' must be a string, got list"),
    "missing": ({"audio": "A"}, "line 2: has no 'target_text' (the data set's targets are target_text, as on line 1)"),
    "empty": ({"audio": "A", "target_text": ""}, "line 2: has no 'target_text'"),
    "extra label": ({"audio": "A", "target_text": "x", "label": 1},
                    "line 2: has 'label', but the data set's targets are target_text (as on line 1)"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_target_text_is_one_line_naming_row_and_field_or_skipped(wavs, case):
    folder, names = wavs
    row, expected = BAD_ROWS[case]
    row = {k: (names[1] if v == "A" else v) for k, v in row.items()}
    manifest = folder / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [
        {"audio": names[0], "target_text": "first"}, row, {"audio": names[2], "target_text": "third"}]))
    with pytest.raises(ValueError) as info:
        _build(manifest, folder / "ds")
    assert f"{manifest} {expected}" in str(info.value) and "\n" not in str(info.value)
    spec = _build(manifest, folder / "ds", skip_bad=True)
    assert spec["num_examples"] == 2 and spec["build"]["skipped_rows"] == 1
    assert [r["target_text"] for r in _stored(folder / "ds")] == ["first", "third"]
    assert json.loads((folder / "ds" / "skipped.jsonl").read_text())["line"] == 2


def test_csv_without_any_target_column_names_target_text(wavs):
    folder, names = wavs
    (folder / "m.csv").write_text(f"audio\n{names[0]}\n")
    with pytest.raises(ValueError, match="'target_text' for generation"):
        _build(folder / "m.csv", folder / "ds")


def test_the_spec_check_wants_target_text_counts_for_generate():
    spec = {"format": "mmjax-v1", "num_examples": 1, "num_classes": 0, "class_names": [],
            "modalities": {"audio": {"sample_rate": 8000, "max_samples": 10}}, "tasks": ["generate"]}
    with pytest.raises(ValueError, match="'target_text' must be an object with a non-negative int 'max_tokens'"):
        validate_spec(spec)
    for bad in ({"max_bytes": 3}, {"max_tokens": -1}, {"max_tokens": True}, {"max_tokens": 4, "tokenizer": 3}):
        with pytest.raises(ValueError, match="'target_text'"):
            validate_spec({**spec, "target_text": bad})
    assert validate_spec({**spec, "target_text": {"max_tokens": 0}})["target_text"] == {"max_tokens": 0}


@pytest.mark.skipif(digits.SHARED is None, reason="../shared/data is absent (set MMJAX_SHARED_DATA)")
def test_digits_words_manifest_builds_audio_only_with_the_spoken_word(tmp_path):
    """tests/data/digits.py --target_text's rows: FSDD recordings, target_text = label = the word."""
    wavs = digits.recordings(speakers=("jackson",), max_index=1)  # one recording per digit
    manifest = digits.write_words(tmp_path, "train", wavs)
    spec = _build(manifest, tmp_path / "ds")
    assert spec["tasks"] == ["classification", "generate"] and set(spec["modalities"]) == {"audio"}
    assert spec["target_text"]["max_tokens"] == len("three") + 2 and spec["class_names"] == sorted(digits.WORDS)
    stored = _stored(tmp_path / "ds")
    assert [r["target_text"] for r in stored] == [digits.WORDS[d] for _, d, _, _ in wavs]
    assert all(spec["class_names"][r["label"]] == r["target_text"] for r in stored)
