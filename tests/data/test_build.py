"""Tests for mmjax/data/{manifest,build}.py: user files -> shards + spec, bad input."""

import json
import os
import subprocess
import sys
import wave

import numpy as np
import pytest
from PIL import Image

import digits
from mmjax import media
from mmjax.data import build, codec, sources
from mmjax.data.manifest import ManifestError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_real_data = pytest.mark.skipif(digits.SHARED is None, reason="../shared/data is absent")


def _png(path, h=20, w=12, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _wav(path, samples, rate=8000, channels=1, width=2):
    """PCM WAV with the standard library: int16 (width 2) or uint8 (width 1) samples."""
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(np.ascontiguousarray(samples).tobytes())
    return path


def _records(directory):
    src = sources.load_directory(str(directory))
    return src, [codec.decode(src.records[i]) for i in range(src.num_examples)]


def _build(manifest, out, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return build.build(str(manifest), str(out), log=lambda *_: None, **kw)


@pytest.fixture
def files(tmp_path):
    """A folder with two images, two WAVs and helpers to write manifests next to them."""
    _png(tmp_path / "a.png", seed=1)
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(tmp_path / "b.jpg", quality=95)
    _wav(tmp_path / "x.wav", (np.sin(np.arange(4000) / 5) * 8000).astype(np.int16))
    _wav(tmp_path / "y.wav", np.zeros(100, np.int16))
    return tmp_path


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- building from real files


@needs_real_data
def test_build_mixed_real_files(tmp_path):
    """MNIST digits as PNG and JPEG, FSDD recordings, captions; labels as names."""
    images, labels = digits.mnist(100)
    wavs = digits.recordings(speakers=("jackson",), max_index=2)  # 2 per digit
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    rows = []
    for k, (wav, digit, _, _) in enumerate(wavs):
        i = int(np.flatnonzero(labels == digit)[k % 2])
        name = f"img{k}.{'png' if k % 2 else 'jpg'}"
        Image.fromarray(images[i]).save(tmp_path / name)
        rows.append({"image": name, "audio": str(wav), "text": f"a spoken {names[digit]}",
                     "label": names[digit]})
    manifest = _jsonl(tmp_path / "m.jsonl", rows)
    spec = _build(manifest, tmp_path / "ds", classes=",".join(names), audio_samples=4000)
    assert spec["num_examples"] == 20 and spec["class_names"] == names
    assert spec["modalities"]["image"] == {"height": 16, "width": 16, "channels": 3}
    assert spec["modalities"]["audio"]["sample_rate"] == 8000
    assert spec["modalities"]["audio"]["max_samples"] <= 4000
    assert spec["modalities"]["text"]["max_bytes"] == len("a spoken seven")
    _, recs = _records(tmp_path / "ds")
    for rec, row, (wav, digit, _, _) in zip(recs, rows, wavs):
        assert rec["label"] == digit and rec["text"] == row["text"]
        assert rec["image"].shape == (16, 16, 3) and rec["image"].dtype == np.uint8
        assert rec["image"][..., 0].max() > 200  # white ink survived the resize
        with wave.open(str(wav)) as f:  # FSDD is 8 kHz int16: stored as /32768, cut at 4000
            raw = np.frombuffer(f.readframes(f.getnframes()), "<i2")
        np.testing.assert_allclose(rec["audio"], raw[:4000] / 32768.0, atol=1e-6)


@needs_real_data
def test_resampling_real_recording(tmp_path):
    (wav, _, _, _), = digits.recordings(speakers=("theo",), max_index=1)[:1]
    manifest = _jsonl(tmp_path / "m.jsonl", [{"audio": str(wav), "label": 0}])
    _build(manifest, tmp_path / "ds", audio_rate=16000)
    with wave.open(str(wav)) as f:
        n = f.getnframes()
    _, (rec,) = _records(tmp_path / "ds")
    assert len(rec["audio"]) == 2 * n and rec["audio"].dtype == np.float32


def test_csv_manifest_relative_paths_int_labels_and_audio_formats(files):
    _wav(files / "stereo16k.wav", np.stack([np.full(1600, 16384), np.zeros(1600)], 1).astype(np.int16),
         rate=16000, channels=2)
    _wav(files / "u8.wav", np.full(80, 192, np.uint8), width=1)
    sub = files / "lists"
    sub.mkdir()
    (sub / "m.csv").write_text(
        'image,audio,text,label\n'
        '../a.png,../stereo16k.wav,"hello, ""world""",2\n'
        '../b.jpg,../u8.wav,"two\nlines",0\n')
    spec = _build(sub / "m.csv", files / "ds", image_size=8)
    assert spec["class_names"] == ["0", "1", "2"] and spec["num_examples"] == 2
    _, (r0, r1) = _records(files / "ds")
    assert r0["text"] == 'hello, "world"' and r1["text"] == "two\nlines"
    assert r0["label"] == 2 and r0["image"].shape == (8, 8, 3)
    assert len(r0["audio"]) == 800  # 1600 samples at 16 kHz -> 800 at 8 kHz
    np.testing.assert_allclose(r0["audio"][100:700], 0.25, atol=0.01)  # (0.5 + 0) / 2
    np.testing.assert_allclose(r1["audio"], 0.5)  # uint8 192 -> (192 - 128) / 128
    np.testing.assert_array_equal(r1["image"], 200)  # flat grey JPEG, resized


def test_shards_are_contiguous_and_complete(files):
    rows = [{"image": "a.png", "label": i % 3} for i in range(10)]
    spec = _build(_jsonl(files / "m.jsonl", rows), files / "ds", num_shards=3)
    names = sorted(os.listdir(files / "ds"))
    assert names == ["data-00000-of-00003.array_record", "data-00001-of-00003.array_record",
                     "data-00002-of-00003.array_record", "spec.json"]
    _, recs = _records(files / "ds")
    assert [r["label"] for r in recs] == [i % 3 for i in range(10)]
    assert spec["modalities"] == {"image": {"height": 16, "width": 16, "channels": 3}}


def test_worker_processes_give_the_same_data_set(files):
    rows = [{"image": "a.png" if i % 2 else "b.jpg", "audio": "x.wav", "label": i % 2}
            for i in range(70)]
    manifest = _jsonl(files / "m.jsonl", rows)
    _build(manifest, files / "one", workers=1)
    _build(manifest, files / "two", workers=2)
    a, b = _records(files / "one")[1], _records(files / "two")[1]
    assert len(a) == len(b) == 70
    assert all(codec.encode(x) == codec.encode(y) for x, y in zip(a, b))


# ---------------------------------------------------------------- bad input


def _garbage(path):
    path.write_bytes(b"this is not a picture or a sound")
    return path.name


BAD_CASES = {
    "missing file": ({"image": "nope.png", "label": 0}, "line 2: image file 'nope.png' does not exist"),
    "undecodable image": ("IMAGE", "line 2: cannot decode image"),
    "undecodable wav": ("AUDIO", "line 2: cannot decode WAV"),
    "unknown label": ({"image": "a.png", "label": "cat"}, "line 2: unknown label 'cat': classes are 0, 1"),
    "unknown label id": ({"image": "a.png", "label": 7}, "line 2: unknown label 7: class ids are 0..1"),
    "empty line": ("", "line 2: is empty"),
    "malformed row": ('{"image": "a.png", "label": ', "line 2: is not valid JSON"),
    "not an object": ("[1, 2]", "line 2: must be a JSON object, got list"),
    "unknown field": ({"image": "a.png", "labl": 0}, "line 2: unknown field 'labl'"),
    "missing modality": ({"label": 1}, "line 2: has no 'image'"),
    "no label": ({"image": "a.png"}, "line 2: has no 'label'"),
    "bad label type": ({"image": "a.png", "label": 1.5}, "line 2: 'label' must be an integer class id"),
}


def _bad_manifest(files, row):
    if row == "IMAGE":
        row = {"image": _garbage(files / "bad.png"), "label": 1}
    elif row == "AUDIO":
        row = {"image": "a.png", "label": 1}
        files.joinpath("bad.wav").write_bytes(b"RIFF....WAVEjunk")
        row["audio"] = "bad.wav"
    first = {"image": "a.png", "label": 0}
    if isinstance(row, dict) and "audio" in row:
        first["audio"] = "x.wav"
    return _jsonl(files / "m.jsonl", [first, row, {**first, "label": 1}])


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_each_bad_input_stops_the_build_with_one_message(files, case):
    row, expected = BAD_CASES[case]
    manifest = _bad_manifest(files, row)
    with pytest.raises(ValueError) as info:
        _build(manifest, files / "ds", classes="0,1" if "label" in case else "")
    message = str(info.value)
    assert f"{manifest} {expected}" in message, message
    assert "\n" not in message
    assert not (files / "ds" / "spec.json").exists()
    assert not [n for n in os.listdir(files / "ds") if n.endswith("array_record")] if (
        files / "ds").exists() else True


def test_csv_bad_rows(files):
    (files / "m.csv").write_text("image,label\na.png,0\na.png\n\na.png,1\n")
    with pytest.raises(ValueError, match=r"m.csv line 3: has 1 fields but the header has 2"):
        _build(files / "m.csv", files / "ds")
    (files / "u.jsonl").write_bytes(b'{"image": "a.png", "label": 0}\n{"image": "\xff.png"}\n')
    with pytest.raises(ValueError, match=r"u.jsonl line 2: is not valid UTF-8"):
        _build(files / "u.jsonl", files / "ds")
    (files / "h.csv").write_text("image,labl\na.png,0\n")
    with pytest.raises(ManifestError, match=r"h.csv line 1: unknown column 'labl'"):
        _build(files / "h.csv", files / "ds")


def test_skip_bad_skips_counts_and_reports(files):
    _garbage(files / "bad.png")
    (files / "m.csv").write_text("image,label\na.png,0\nnope.png,1\n\nbad.png,1\nb.jpg,1\na.png,-1\n")
    spec = _build(files / "m.csv", files / "ds", skip_bad=True)
    assert spec["num_examples"] == 2 and spec["build"]["skipped_rows"] == 4
    report = [json.loads(line) for line in open(files / "ds" / "skipped.jsonl")]
    assert [r["line"] for r in report] == [3, 4, 5, 7]
    assert "does not exist" in report[0]["problem"] and "empty" in report[1]["problem"]
    assert "cannot decode image" in report[2]["problem"] and "unknown label -1" in report[3]["problem"]
    _, recs = _records(files / "ds")
    assert [r["label"] for r in recs] == [0, 1]


def test_mixed_id_and_name_labels_need_classes(files):
    manifest = _jsonl(files / "m.jsonl", [{"image": "a.png", "label": "cat"},
                                          {"image": "a.png", "label": 0}])
    with pytest.raises(ValueError, match="line 2: label 0 is a class id but other rows use class names"):
        _build(manifest, files / "ds")
    spec = _build(manifest, files / "ds", classes="cat,dog")
    assert spec["class_names"] == ["cat", "dog"]
    # an eval split takes its class ids from the train split's directory
    spec = _build(_jsonl(files / "e.jsonl", [{"image": "b.jpg", "label": "dog"}]), files / "ev",
                  classes=str(files / "ds"))
    assert spec["class_names"] == ["cat", "dog"] and _records(files / "ev")[1][0]["label"] == 1


def test_a_failed_build_leaves_no_data_set_and_refuses_to_mix(files, monkeypatch):
    manifest = _jsonl(files / "m.jsonl", [{"image": "a.png", "label": i % 2} for i in range(100)])
    calls = []

    def crash_late(path, size, resize=None):
        calls.append(path)
        if len(calls) == 80:
            raise KeyboardInterrupt  # like a killed build
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr(media, "load_image", crash_late)
    with pytest.raises(KeyboardInterrupt):
        _build(manifest, files / "ds", num_shards=4)
    assert not (files / "ds").exists()  # built aside: nothing reached --out
    assert not [n for n in os.listdir(files) if n.startswith(".ds")]  # and the aside folder is gone
    monkeypatch.undo()
    _build(manifest, files / "ds")
    with pytest.raises(build.BuildError, match="already holds a data set; pass --overwrite"):
        _build(manifest, files / "ds")
    _build(manifest, files / "ds", overwrite=True, num_shards=2)
    assert len([n for n in os.listdir(files / "ds") if n.startswith("data-")]) == 2


def test_command_line(files):
    manifest = _jsonl(files / "m.jsonl", [{"image": "a.png", "label": 0}, {"image": "gone.png", "label": 0}])
    cmd = [sys.executable, "-m", "mmjax.data.build", f"--manifest={manifest}", f"--out={files / 'ds'}"]
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith(f"mmjax.data.build: error: {manifest} line 2: image file 'gone.png'")
    ok = subprocess.run(cmd + ["--skip_bad", "--no_progress"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "wrote 1 examples" in ok.stdout and "skipped 1 bad row" in ok.stdout
    usage = subprocess.run([sys.executable, "-m", "mmjax.data.build", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: python -m mmjax.data.build")


# ---------------------------------------------------------------- issue 15: damaged WAVs, build and predict agree
def _damaged_wavs(folder):
    """A handful of damaged variants of one 1000-sample int16 WAV (44-byte header)."""
    good = _wav(folder / "good.wav", (np.sin(np.arange(1000) / 5) * 8000).astype(np.int16)).read_bytes()
    variants = {
        "cut_header.wav": good[:20],  # was struct.error
        "no_channels.wav": good[:22] + b"\0\0" + good[24:],  # was ZeroDivisionError
        "cut_data.wav": good[:1000],  # was read half, silently
        "bits12.wav": good[:34] + (12).to_bytes(2, "little") + good[36:],  # was read as 16-bit
        "garbage.wav": b"RIFF" + bytes(range(256)) * 2,
    }
    for name, data in variants.items():
        (folder / name).write_bytes(data)
    return sorted(variants)


def test_damaged_wavs_are_skipped_by_the_build_and_refused_alike_by_predict(files):
    from mmjax.predict import Preprocessor

    names = _damaged_wavs(files)
    manifest = _jsonl(files / "m.jsonl", [{"audio": "good.wav", "label": 0}] +
                      [{"audio": n, "label": 1} for n in names])
    with pytest.raises(build.BuildError) as info:  # without --skip_bad: the first one, one line
        _build(manifest, files / "ds")
    assert f"{manifest} line 2: cannot decode WAV" in str(info.value) and "\n" not in str(info.value)
    spec = _build(manifest, files / "ds", skip_bad=True)
    assert spec["num_examples"] == 1 and spec["build"]["skipped_rows"] == len(names)
    report = [json.loads(line) for line in open(files / "ds" / "skipped.jsonl")]
    assert [r["line"] for r in report] == list(range(2, 2 + len(names)))
    predictor = Preprocessor(audio_rate=8000, audio_samples=2048)
    for name, row in zip(names, report):
        with pytest.raises(ValueError) as refused:
            predictor.row(audio=str(files / name))
        # the same reason in both (the build names the path as the manifest gives it)
        assert str(refused.value).split(": ", 1)[1] == row["problem"].split(": ", 1)[1], name
        assert "\n" not in row["problem"]


# ---------------------------------------------------------------- issue 15: 16-bit, float and rotated images
def test_wide_and_rotated_images_are_stored_as_predict_reads_them(files):
    from mmjax.predict import Preprocessor

    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(ramp).save(files / "g16.png")
    Image.fromarray((ramp / 65535.0).astype(np.float32)).save(files / "f.tiff")
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(pixels).save(files / "r.jpg", exif=exif, quality=100)
    names = ["g16.png", "f.tiff", "r.jpg"]
    _build(_jsonl(files / "m.jsonl", [{"image": n, "label": 0} for n in names]), files / "ds")
    _, recs = _records(files / "ds")
    predictor = Preprocessor(image_size=16)
    for name, rec in zip(names, recs):
        np.testing.assert_array_equal(rec["image"], predictor.row(image=str(files / name))["image"])
    for rec in recs[:2]:  # a smooth ramp, not clipped to a few values
        assert len(np.unique(rec["image"])) > 100 and rec["image"].max() > 240
    upright = recs[2]["image"][..., 0].astype(float)
    assert upright[:6].mean() > 200 and upright[-6:].mean() < 50  # the white half is on top


# ---------------------------------------------------------------- issue 15: texts longer than --text_length
def test_texts_longer_than_text_length_are_counted_and_recorded(files):
    texts = ["short", "x" * 40, "é" * 30]  # 5, 40 and 60 bytes (bytes tokenizer)
    lines = []
    spec = build.build(str(_jsonl(files / "m.jsonl", [{"text": t, "label": 0} for t in texts])), str(files / "ds"),
                       workers=1, progress=False, log=lines.append)
    assert spec["modalities"]["text"] == {"max_bytes": 60, "length": 32, "tokenizer": "bytes", "max_tokens": 60}
    assert spec["build"]["texts_longer_than_length"] == 2
    assert "2 of 3 texts are longer than --text_length=32 bytes tokens (the longest: 60)" in lines[-1]
    spec = _build(_jsonl(files / "m.jsonl", [{"text": t, "label": 0} for t in texts]), files / "ds2", text_length=64)
    assert spec["build"]["texts_longer_than_length"] == 0 and spec["modalities"]["text"]["length"] == 64
    _, recs = _records(files / "ds")
    assert [r["text"] for r in recs] == texts  # stored whole: training decides the cut


# ---------------------------------------------------------------- issue 15: --overwrite and other people's files
def _snapshot(folder):
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder)) if (folder / n).is_file()}


def test_overwrite_keeps_the_old_data_set_when_a_row_fails(files, monkeypatch):
    rows = [{"image": "a.png", "label": i % 2} for i in range(6)]
    _build(_jsonl(files / "m.jsonl", rows), files / "ds", num_shards=2)
    before = _snapshot(files / "ds")
    bad = _jsonl(files / "bad.jsonl", rows + [{"image": _garbage(files / "bad.png"), "label": 0}])
    with pytest.raises(build.BuildError, match="line 7: cannot decode image"):  # found while decoding
        _build(bad, files / "ds", overwrite=True)
    assert _snapshot(files / "ds") == before  # was: the old shards and spec deleted before decoding
    calls = []

    def interrupted(path, size, resize=None):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr(media, "load_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _build(_jsonl(files / "m.jsonl", rows), files / "ds", overwrite=True)
    monkeypatch.undo()
    assert _snapshot(files / "ds") == before and sorted(os.listdir(files / "ds")) == list(before)  # no aside left
    assert len(_records(files / "ds")[1]) == 6


def test_building_into_a_folder_never_touches_files_that_only_look_like_ours(files):
    out = files / "ds"
    out.mkdir()
    user = {"skipped.jsonl": b"my own notes\n", "data-00003-of-00009.array_record": b"not a shard",
            "notes.txt": b"keep me"}
    for name, data in user.items():
        (out / name).write_bytes(data)
    rows = [{"image": "a.png", "label": 0}, {"image": "b.jpg", "label": 1}]
    spec = _build(_jsonl(files / "m.jsonl", rows), out)
    assert spec["shards"] == ["data-00000-of-00001.array_record"]
    assert len(_records(out)[1]) == 2  # the stray shard-named file is not read
    for name, data in user.items():
        assert (out / name).read_bytes() == data
    bad = _jsonl(files / "bad.jsonl", rows + [{"image": "nope.png", "label": 0}])
    with pytest.raises(build.BuildError, match="has skipped.jsonl, which is not part of a data set of ours; move "
                                               r"it away \(or pass --report=PATH\)"):
        _build(bad, out, overwrite=True, skip_bad=True)
    _build(bad, out, overwrite=True, skip_bad=True, report=str(files / "report.jsonl"))
    assert (files / "report.jsonl").exists()
    for name, data in user.items():  # --overwrite replaced only our spec and shard
        assert (out / name).read_bytes() == data
    assert sorted(os.listdir(out)) == sorted([*user, "spec.json", "data-00000-of-00001.array_record"])
    (files / "other").mkdir()
    (files / "other" / "data-00000-of-00001.array_record").write_bytes(b"mine")
    with pytest.raises(build.BuildError, match="has data-00000-of-00001.array_record, which is not part of"):
        _build(_jsonl(files / "m.jsonl", rows), files / "other")
    assert (files / "other" / "data-00000-of-00001.array_record").read_bytes() == b"mine"


def test_overwrite_replaces_an_older_data_set_without_a_shard_list(files):
    """Data sets built before spec 'shards' existed: their complete data-i-of-N set and report are ours."""
    rows = [{"image": "a.png", "label": 0}, {"image": "nope.png", "label": 1}, {"image": "b.jpg", "label": 1}]
    _build(_jsonl(files / "m.jsonl", rows), files / "ds", num_shards=2, skip_bad=True)
    spec = json.loads((files / "ds" / "spec.json").read_text())
    del spec["shards"], spec["build"]["report"]
    (files / "ds" / "spec.json").write_text(json.dumps(spec))
    (files / "ds" / "data-00005-of-00009.array_record").write_bytes(b"a user's file")
    assert len(_records(files / "ds")[1]) == 2  # still readable: the complete set only
    _build(_jsonl(files / "m.jsonl", rows[:1]), files / "ds", overwrite=True)
    assert sorted(os.listdir(files / "ds")) == ["data-00000-of-00001.array_record",
                                                "data-00005-of-00009.array_record", "spec.json"]
