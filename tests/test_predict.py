"""mmjax/predict.py: raw decoding equal to the data build's, parity of the exported predictor
with the training-time model, bad inputs, and a run where only jax and numpy may be imported."""
import json
import os
import shutil
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from export_run import exported_run
from mmjax import export, predict
from mmjax.data import decode, pipeline, preprocess, sources
from mmjax.models.multimodal import build_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return exported_run(tmp_path_factory)


# ---------------------------------------------------------------- raw decoding = the data build's
@pytest.mark.parametrize("h, w", [(16, 16), (17, 23), (100, 37), (5, 9), (64, 200), (333, 500)])
@pytest.mark.parametrize("size", [7, 16, 24])
def test_resize_equals_the_build_bitwise(h, w, size):
    image = np.random.default_rng(h * w + size).integers(0, 256, (h, w, 3), dtype=np.uint8)
    np.testing.assert_array_equal(predict.fit_image(image, size), decode.resize_image(image, size))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"])
def test_png_decoding_equals_pillow(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        picture = Image.fromarray(rng.integers(0, 65535, (13, 21), dtype=np.uint16))
    else:
        picture = Image.fromarray(rng.integers(0, 256, (13, 21, 3), dtype=np.uint8)).convert(mode)
    path = str(tmp_path / "a.png")
    picture.save(path)
    np.testing.assert_array_equal(predict.load_image(path, 9), decode.load_image(path, 9))


def _wav_24bit(path, rate, samples: np.ndarray) -> None:
    """A PCM 24-bit stereo WAV written by hand (scipy cannot write 24-bit)."""
    data = b"".join(int(s).to_bytes(3, "little", signed=True) for s in samples.reshape(-1))
    fmt = struct.pack("<HHIIHH", 1, 2, rate, rate * 6, 6, 24)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "float32", "float64", "int24"])
@pytest.mark.parametrize("rate", [8000, 11025, 44100])
def test_wav_decoding_and_resampling_equal_the_build(tmp_path, dtype, rate):
    rng = np.random.default_rng(1)
    wave = rng.uniform(-1, 1, (rate // 5, 2))
    path = str(tmp_path / "a.wav")
    if dtype == "int24":
        _wav_24bit(path, rate, (wave * (2**23 - 1)).astype(np.int32))
    elif dtype == "uint8":
        wavfile.write(path, rate, (wave * 127 + 128).astype(np.uint8))
    elif dtype.startswith("int"):
        wavfile.write(path, rate, (wave * np.iinfo(dtype).max).astype(dtype))
    else:
        wavfile.write(path, rate, wave.astype(dtype))
    ours, build = predict.load_wav(path, 8000), decode.load_wav(path, 8000)
    assert ours.dtype == build.dtype == np.float32 and ours.shape == build.shape
    np.testing.assert_allclose(ours, build, rtol=0, atol=1e-7)


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
             "text": np.stack([preprocess.tokenize(run["examples"][i]["text"], config.data.text_length)
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


# ---------------------------------------------------------------- only jax and numpy
_BLOCKED_RUNNER = """
import importlib.abc, runpy, sys
BLOCKED = {"mmjax", "flax", "orbax", "grain", "PIL", "msgpack", "optax", "ml_collections",
           "tensorflow_datasets", "sentencepiece", "etils", "array_record"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the predictor may import only jax and numpy")
sys.meta_path.insert(0, Block())
sys.argv = ["predict.py"] + sys.argv[1:]
try:
    runpy.run_path("predict.py", run_name="__main__")
finally:
    print("MODULES", sorted({m.split(".")[0] for m in sys.modules}), file=sys.stderr)
"""


def test_predict_module_imports_only_jax_numpy_and_the_standard_library():
    """scipy is one of jax's own dependencies (jax imports it), so the fresh-process test below
    cannot block it; this checks that predict.py itself never imports it, nor anything else."""
    import ast

    allowed = set(sys.stdlib_module_names) | {"numpy", "jax", "ml_dtypes", "__future__"}
    optional = {"PIL", "sentencepiece"}  # imported inside functions, only for non-PNG / SentencePiece
    tree = ast.parse(open(predict.__file__).read())
    top_level = {a.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for a in node.names}
    top_level |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    everywhere = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    everywhere |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert top_level <= allowed - {"jax"}, top_level - allowed  # jax only when a model runs
    assert everywhere <= allowed | optional, everywhere - allowed - optional


def test_predictor_runs_alone_in_a_fresh_process_with_only_jax_and_numpy(run, tmp_path):
    """predict.py copied on its own next to an export made in another process; every other
    library of the training stack is blocked from being imported."""
    shutil.copy(predict.__file__, tmp_path / "predict.py")
    (tmp_path / "runner.py").write_text(_BLOCKED_RUNNER)
    out = tmp_path / "preds.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="")
    result = subprocess.run([sys.executable, "runner.py", f"--export={run['export']}",
                             f"--manifest={run['manifest']}", f"--out={out}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = result.stderr.split("MODULES", 1)[1]
    for name in ("mmjax", "flax", "orbax", "grain", "PIL", "msgpack"):
        assert f"'{name}'" not in modules
    in_process = tmp_path / "in_process.jsonl"
    predict.predict_manifest(predict.Predictor(run["export"]), run["manifest"], str(in_process),
                             log=lambda *a, **k: None)
    fresh = [json.loads(line) for line in open(out)]
    same = [json.loads(line) for line in open(in_process)]
    assert [r["label"] for r in fresh] == [r["label"] for r in same]
    np.testing.assert_allclose([r["probability"] for r in fresh], [r["probability"] for r in same], atol=1e-6)
