"""mmjax/predict.py: raw files prepared as the data build and the pipeline prepare them, parity
of the exported predictor with the training-time model, bad inputs, and a run in which the
training stack cannot be imported."""
import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from export_run import exported_run
from conftest import ROOT
from mmjax import export, media, predict
from mmjax.data import build, pipeline, preprocess, sources
from mmjax.models.multimodal import build_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return exported_run(tmp_path_factory)


# ---------------------------------------------------------------- raw files = the data build's
def _wav_24bit(path, rate, samples: np.ndarray) -> None:
    """A PCM 24-bit stereo WAV written by hand (scipy cannot write 24-bit)."""
    data = b"".join(int(s).to_bytes(3, "little", signed=True) for s in samples.reshape(-1))
    fmt = struct.pack("<HHIIHH", 1, 2, rate, rate * 6, 6, 24)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)


def _raw_files(folder) -> list[dict]:
    """Manifest rows over images of 7 Pillow modes and JPEG, odd sizes, WAVs of 6 sample
    formats at 3 rates (stereo), and texts, some longer than the text length."""
    rng = np.random.default_rng(0)
    rows = []
    images = ["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "JPEG"]
    wavs = [(dtype, rate) for dtype in ("uint8", "int16", "int32", "float32", "float64", "int24")
            for rate in (8000, 11025, 44100)]
    for i, (mode, (dtype, rate)) in enumerate(zip(images * 3, wavs)):
        h, w = [(13, 21), (100, 37), (5, 9)][i % 3]
        if mode == "I;16":
            picture = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
        else:
            picture = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            picture = picture if mode == "JPEG" else picture.convert(mode)
        image = f"{i}.jpg" if mode == "JPEG" else f"{i}.png"
        picture.save(folder / image)
        wave = rng.uniform(-1, 1, (rate // 10 * (1 + i % 3), 2))
        audio = folder / f"{i}.wav"
        if dtype == "int24":
            _wav_24bit(audio, rate, (wave * (2**23 - 1)).astype(np.int32))
        elif dtype == "uint8":
            wavfile.write(audio, rate, (wave * 127 + 128).astype(np.uint8))
        elif dtype.startswith("int"):
            wavfile.write(audio, rate, (wave * np.iinfo(dtype).max).astype(dtype))
        else:
            wavfile.write(audio, rate, wave.astype(dtype))
        rows.append({"image": image, "audio": audio.name, "text": "héllo wörld " * (i % 4), "label": i % 2})
    return rows


def test_the_predictor_feeds_the_model_what_training_fed_it_for_the_same_raw_files(tmp_path):
    """The same PNG/JPEG/WAV/text files through `mmjax.data.build` and the training pipeline's
    preprocessing, and through the predictor: equal row for row, field for field."""
    rows = _raw_files(tmp_path)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build.build(str(manifest), str(tmp_path / "ds"), image_size=9, audio_rate=8000, workers=1,
                progress=False, log=lambda *a: None)
    stored = sources.load_directory(str(tmp_path / "ds"))
    kw = dict(image_size=9, audio_samples=1200, text_length=16)
    training = preprocess.Preprocess(("image", "text", "audio"), num_classes=2, **kw)
    predictor = predict.Preprocessor(audio_rate=8000, tokenizer=media.ByteTokenizer(), **kw)
    for i, r in enumerate(rows):
        want = training.map(stored.records[i])
        got = predictor.row(image=str(tmp_path / r["image"]), audio=str(tmp_path / r["audio"]), text=r["text"])
        assert set(got) == set(want) - {"label"}
        for key, value in got.items():
            assert value.dtype == want[key].dtype, key
            np.testing.assert_array_equal(value, want[key], err_msg=f"row {i} {key}")


def test_safetensors_round_trip_float32_and_bfloat16(tmp_path):
    tensors = {"a/kernel": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
               "b": np.ones((4,), jax.numpy.bfloat16) * 1.5}
    predict.write_safetensors(str(tmp_path / "p.safetensors"), tensors, {"k": "v"})
    loaded, metadata = predict.read_safetensors(str(tmp_path / "p.safetensors"))
    assert metadata == {"k": "v"} and set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)
    header_size = struct.unpack("<Q", open(tmp_path / "p.safetensors", "rb").read(8))[0]
    assert header_size % 8 == 0


def test_the_safetensors_package_reads_an_exported_params_file(run):
    """mmjax writes safetensors itself; the reference library reads the file the same.
    (safetensors.numpy has no bfloat16, so this is the float32 export.)"""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = os.path.join(run["export"], predict.PARAMS_FILE)
    ours, metadata = predict.read_safetensors(path)
    theirs = load_file(path)
    assert set(theirs) == set(ours) and len(ours) > 10
    for name, value in ours.items():
        assert theirs[name].dtype == value.dtype == np.float32
        np.testing.assert_array_equal(theirs[name], value)
    with safe_open(path, framework="numpy") as f:
        assert f.metadata() == metadata == {"format": predict.FORMAT, "step": metadata["step"]}


# ---------------------------------------------------------------- parity with training
def _model_probabilities(run, batches):
    """The training-time flax model, restored from the checkpoint, on pipeline batches."""
    config, params, _, meta = export.restore_params(run["workdir"])
    model = build_model(config, int(meta["num_classes"]))
    return np.concatenate([np.asarray(jax.nn.softmax(model.apply({"params": params}, b, train=False), axis=-1))
                           for b in batches])


def test_predictions_match_the_training_model_and_the_reported_accuracy(run, tmp_path):
    config = run["config"]
    predictor = predict.Predictor(run["export"], batch_size=16)
    out = str(tmp_path / "preds.jsonl")
    summary = predict.predict_manifest(predictor, run["manifest"], out, top_k=3, log=lambda *a, **k: None)
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == len(run["examples"]) == summary["rows"] and len(rows[0]["top_k"]) == 3
    assert rows[0]["top_k"][0] == {"label": rows[0]["label"], "probability": rows[0]["probability"]}

    # (a) the training-time model on the pipeline's eval batches gives the same probabilities
    eval_source = sources.open_source(config.data.eval, "eval", config.data)
    batches = list(pipeline.eval_batches(eval_source, config, global_batch=config.batch_size))
    real = np.concatenate([b["weight"] for b in batches]) > 0
    expected = _model_probabilities(run, batches)[real]
    folder = os.path.dirname(run["manifest"])
    probs = predictor.probabilities([
        predictor.example(image=os.path.join(folder, f"{i}.png"), audio=os.path.join(folder, f"{i}.wav"),
                          text=ex["text"]) for i, ex in enumerate(run["examples"])])
    np.testing.assert_allclose(probs, expected, rtol=0, atol=2e-6)
    assert [r["class_id"] for r in rows] == list(np.argmax(expected, axis=1))
    np.testing.assert_allclose([r["probability"] for r in rows], expected.max(axis=1), rtol=0, atol=2e-6)

    # (b) its accuracy over the eval data is the eval/accuracy the training run reported
    assert summary["labelled"] == len(rows)
    assert summary["accuracy"] == pytest.approx(run["eval_accuracy"], abs=1e-6)  # float32 metric; 1 example = 0.025


def test_absent_modalities_are_passed_as_absent(run):
    """Image + text only: the model sees present_audio=False, as in training's eval_without."""
    config, params, _, meta = export.restore_params(run["workdir"])
    model = build_model(config, int(meta["num_classes"]))
    predictor = predict.Predictor(run["export"])
    folder = os.path.dirname(run["manifest"])
    got = predictor.probabilities([predictor.example(image=os.path.join(folder, f"{i}.png"),
                                                     text=run["examples"][i]["text"]) for i in range(4)])
    batch = {"image": np.stack([run["examples"][i]["image"] for i in range(4)]),
             "text": np.stack([media.tokenize(run["examples"][i]["text"], config.data.text_length)
                               for i in range(4)]),
             "audio": np.zeros((4, config.data.audio_samples), np.float32),
             "audio_length": np.zeros(4, np.int32), "present_audio": np.zeros(4, bool)}
    expected = jax.nn.softmax(model.apply({"params": params}, batch, train=False), axis=-1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    with pytest.raises(predict.PredictError, match="no input given"):
        predictor.example()


def test_bfloat16_export_is_half_the_size_and_predicts_close_to_float32(run):
    f32, bf16 = (os.path.getsize(os.path.join(e, "params.safetensors")) for e in (run["export"], run["export_bf16"]))
    assert bf16 < 0.55 * f32
    rows = lambda p: [p.example(image=run["examples"][i]["image"], text=run["examples"][i]["text"],  # noqa: E731
                                audio=run["examples"][i]["audio"]) for i in range(8)]
    a = predict.Predictor(run["export"])
    b = predict.Predictor(run["export_bf16"])
    assert json.load(open(os.path.join(run["export_bf16"], "export.json")))["param_dtype"] == "bfloat16"
    np.testing.assert_allclose(b.probabilities(rows(b)), a.probabilities(rows(a)), atol=2e-2)


# ---------------------------------------------------------------- bad inputs
def test_a_bad_input_file_is_a_clear_error_or_skipped_with_skip_bad(run, tmp_path, capsys):
    folder = os.path.dirname(run["manifest"])
    (tmp_path / "broken.png").write_bytes(open(os.path.join(folder, "0.png"), "rb").read()[:60])
    lines = open(run["manifest"]).read().splitlines()[:5]
    rows = [json.loads(line) for line in lines]
    for r in rows:
        r["image"], r["audio"] = os.path.join(folder, r["image"]), os.path.join(folder, r["audio"])
    rows[2]["image"] = str(tmp_path / "broken.png")
    rows[3]["audio"] = str(tmp_path / "missing.wav")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    code = predict.main([f"--export={run['export']}", f"--manifest={manifest}", f"--out={tmp_path / 'p.jsonl'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"mmjax.predict: error: {manifest} line 3: cannot decode image ")
    assert "broken.png" in err[0] and not os.path.exists(tmp_path / "p.jsonl")

    code = predict.main([f"--export={run['export']}", f"--manifest={manifest}", f"--out={tmp_path / 'p.jsonl'}",
                         "--skip_bad"])
    captured = capsys.readouterr()
    assert code == 0
    assert [json.loads(line)["line"] for line in open(tmp_path / "p.jsonl")] == [1, 2, 5]
    assert "line 3: cannot decode image" in captured.err and "missing.wav' does not exist" in captured.err
    assert "skipped 2 bad rows" in captured.out


def test_single_inputs_print_the_top_k(run, capsys):
    folder = os.path.dirname(run["manifest"])
    code = predict.main([f"--export={run['export']}", f"--image={folder}/0.png", "--text=what digit is drawn?",
                         "--top_k=3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 3
    probs = [float(line.split()[-1]) for line in lines]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
    assert predict.main([f"--export={run['export']}", f"--image={folder}/nope.png"]) == 2
    assert "nope.png' does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- without the training stack
# What the predictor may not import: the training stack (mmjax's other modules pull these in).
TRAINING_STACK = ("flax", "optax", "orbax", "grain", "ml_collections", "tensorflow_datasets",
                  "msgpack", "array_record", "etils", "absl", "einops", "tensorboardX", "tqdm",
                  "sentencepiece")
_BLOCKED_RUNNER = """
import importlib.abc, json, runpy, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the predictor runs without the training stack")
sys.meta_path.insert(0, Block())
sys.argv = ["mmjax.predict"] + sys.argv[2:]
try:
    runpy.run_module("mmjax.predict", run_name="__main__", alter_sys=True)
finally:
    print("MODULES", json.dumps(sorted(m for m in sys.modules if m.startswith("mmjax") or "." not in m)),
          file=sys.stderr)
"""


def test_predictor_runs_in_a_fresh_process_without_the_training_stack(run, tmp_path):
    """python -m mmjax.predict on an export made in another process, with flax, optax, orbax,
    grain, ml_collections, TFDS, msgpack, ... blocked: jax, numpy, scipy, Pillow and
    flatbuffers are all it needs. It imports only the mmjax modules that need none of them."""
    (tmp_path / "runner.py").write_text(_BLOCKED_RUNNER)
    out = tmp_path / "preds.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    result = subprocess.run([sys.executable, "runner.py", ",".join(TRAINING_STACK), f"--export={run['export']}",
                             f"--manifest={run['manifest']}", f"--out={out}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stderr.split("MODULES", 1)[1])
    assert not set(TRAINING_STACK) & set(modules)
    assert {m for m in modules if m.startswith("mmjax")} == {  # mmjax.predict itself ran as __main__
        "mmjax", "mmjax.contract", "mmjax.media", "mmjax.data", "mmjax.data.format", "mmjax.data.manifest"}
    in_process = tmp_path / "in_process.jsonl"
    predict.predict_manifest(predict.Predictor(run["export"]), run["manifest"], str(in_process),
                             log=lambda *a, **k: None)
    fresh = [json.loads(line) for line in open(out)]
    same = [json.loads(line) for line in open(in_process)]
    assert [r["label"] for r in fresh] == [r["label"] for r in same]
    np.testing.assert_allclose([r["probability"] for r in fresh], [r["probability"] for r in same], atol=1e-6)


def test_the_help_exits_0():
    result = subprocess.run([sys.executable, "-m", "mmjax.predict", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m mmjax.predict")
