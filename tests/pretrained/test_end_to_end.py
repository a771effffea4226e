"""Issue 12, done-when 3, on the tiny fixture checkpoints: raw files built with the checkpoints'
preprocessing (mmjax.data.build --image_from; the text tower's own tokenizer), a run with a
frozen pretrained CLIP image tower and a pretrained BERT text tower with LoRA trains, is killed
mid-run and resumes to exactly the losses of an uninterrupted run, exports (adapters merged,
the tokenizer and image processor copied), and mmjax.predict on the raw files gives what the
trained model gives in-process on the pipeline's batches."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
from PIL import Image

from conftest import ROOT, TINY_OVERRIDES
from mmjax import export, predict
from mmjax.data import build, pipeline, sources
from mmjax.models.multimodal import build_model
from parity import fixture

WORDS = ("a photo of a cat", "a dog", "two birds on a wire", "the cats")


def _raw_files(folder, rows: int, seed: int) -> str:
    """PNGs of two sizes (neither the checkpoint's, so the processor resizes and crops), the
    fixture tokenizer's words and two classes; returns the manifest path."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder)
    with open(os.path.join(folder, "m.jsonl"), "w") as f:
        for i in range(rows):
            label = i % 2
            shape = (40, 56, 3) if i % 3 else (48, 36, 3)
            pixels = rng.integers(0, 120, shape) + 120 * label
            Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f"{i}.png"))
            f.write(json.dumps({"image": f"{i}.png", "text": WORDS[(i + label) % 4], "label": str(label)}) + "\n")
    return os.path.join(folder, "m.jsonl")


def _losses(workdir) -> dict:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_frozen_tower_with_lora_trains_resumes_exports_and_predicts(tmp_path, tiny_config):
    clip, bert = "hf:" + fixture("clip"), "hf:" + fixture("bert")
    quiet = dict(workers=1, progress=False, log=lambda *_: None)
    train_dir, eval_dir = str(tmp_path / "train"), str(tmp_path / "eval")
    spec = build.build(_raw_files(tmp_path / "raw_train", 16, 0), train_dir, image_from=clip, **quiet)
    assert spec["modalities"]["image"]["height"] == 32  # the processor's crop size
    eval_manifest = _raw_files(tmp_path / "raw_eval", 8, 1)
    build.build(eval_manifest, eval_dir, image_from=clip, classes=train_dir, **quiet)

    overrides = {"modalities": "('image','text')", "model.image.init_from": clip, "model.image.depth": "2",
                 "model.text.init_from": bert, "model.text.depth": "2", "model.text.lora_rank": "2",
                 "frozen": "('image',)", "data.train": train_dir, "data.eval": eval_dir,
                 "data.image_size": "32", "data.text_length": "8", "batch_size": "8", "total_steps": "6",
                 "checkpoint_every": "3", "eval_every": "6", "log_every": "1",
                 "fusion.kind": "concat", "model.unroll": "no"}  # the cheapest compiles
    args = [f"--config.{k}={v}" for k, v in {**TINY_OVERRIDES, **overrides}.items()]
    # Each run in its own process, sharing one persistent compilation cache: the first compiles,
    # the others load the same executables (bitwise the same steps, a fraction of the time).
    env = {**os.environ, "MMJAX_DISTRIBUTED": "off", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}

    def run(workdir, fault=""):
        env.pop("MMJAX_FAULT_INJECT", None)
        return subprocess.run([sys.executable, "-m", "mmjax.train", "--config=configs/base.py", *args,
                               f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**env, **({"MMJAX_FAULT_INJECT": fault} if fault else {})})

    reference, workdir = str(tmp_path / "reference"), str(tmp_path / "run")
    done = run(reference)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run(workdir, "kill_after_step=4")  # after step 4; its last checkpoint is step 3
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run(workdir)
    assert resumed.returncode == 0 and f"resuming from {workdir}/checkpoints/3" in resumed.stdout, resumed.stderr[-3000:]
    assert _losses(workdir) == _losses(reference) and sorted(_losses(workdir)) == [1, 2, 3, 4, 5, 6]

    # The export merges the adapters and carries the checkpoints' preprocessing files.
    out = str(tmp_path / "export")
    exported = export.export(workdir, out, platforms=("cpu",), log=lambda *_: None)
    assert exported["source"]["lora_merged"] == {"text": {"rank": 2, "alpha": 16.0, "targets": ["q", "v"]}}
    assert exported["preprocess"]["text"]["tokenizer"] == "hf:tokenizer"
    assert exported["preprocess"]["image"]["processor"] == "hf:image_processor"
    assert os.path.isfile(os.path.join(out, "tokenizer", "tokenizer.json"))

    # mmjax.predict on the raw eval files = the trained model (adapters unmerged) on the pipeline's batches.
    run_config, params, _, meta = export.restore_params(workdir)
    assert any("lora_a" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params))
    model = build_model(run_config, int(meta["num_classes"]))
    batches = list(pipeline.eval_batches(sources.open_source(eval_dir, "eval", run_config.data), run_config,
                                         global_batch=8))
    expected = np.concatenate([np.asarray(jax.nn.softmax(model.apply({"params": params}, b, train=False), -1))
                               for b in batches])
    predictor = predict.Predictor(out)
    rows = [json.loads(line) for line in open(eval_manifest)]
    folder = os.path.dirname(eval_manifest)
    got = predictor.probabilities([predictor.example(image=os.path.join(folder, r["image"]), text=r["text"])
                                   for r in rows])
    np.testing.assert_allclose(got, expected[:len(rows)], rtol=0, atol=1e-5)
    # The batch fields themselves are the pipeline's: real BERT ids ([CLS] ... [SEP], [PAD] = 0).
    first = predictor.example(image=os.path.join(folder, rows[0]["image"]), text=rows[0]["text"])
    np.testing.assert_array_equal(first["text"], batches[0]["text"][0])
    np.testing.assert_array_equal(first["image"], batches[0]["image"][0])
    assert first["text"][0] == 2 and 3 in first["text"]  # the fixture vocabulary's [CLS], [SEP]
