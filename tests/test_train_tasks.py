"""Multi-label and regression heads trained end to end (data -> train loop -> metrics.jsonl),
and a user-built data set with multi-labels and rows without audio through the command line."""
import json
import os
import subprocess
import sys
import wave

import numpy as np
import pytest
from PIL import Image

from mmjax import train
from mmjax.data import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("task, metrics", [
    ("multilabel", {"eval/loss", "eval/f1", "eval/exact_match", "eval/label_accuracy"}),
    ("regression", {"eval/loss", "eval/mse", "eval/mae"}),
])
def test_synthetic_variant_trains(tiny_config, tmp_path, task, metrics):
    config = tiny_config(data__synthetic__task=task, loss__task=task, total_steps=20, eval_every=20,
                         checkpoint_every=20)
    final = train.train(config, str(tmp_path))
    rows = _rows(tmp_path)
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 20 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert metrics <= set(final) and all(np.isfinite(v) for v in final.values())
    assert metrics <= set(rows[-1]) and "eval/accuracy" not in rows[-1]


def test_command_line_multilabel_with_rows_missing_audio(tmp_path, tiny_args):
    rng = np.random.default_rng(0)
    rows = []
    for k in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{k}.png")
        row = {"image": f"{k}.png", "text": f"example {k}", "labels": [["a"], ["b"], ["a", "b"], []][k % 4]}
        if k % 3:
            with wave.open(str(tmp_path / f"{k}.wav"), "wb") as f:
                f.setnchannels(1), f.setsampwidth(2), f.setframerate(8000)
                f.writeframes(rng.normal(0, 3000, 1000).astype(np.int16).tobytes())
            row["audio"] = f"{k}.wav"
        rows.append(row)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = build.build(str(tmp_path / "m.jsonl"), str(tmp_path / "ds"), optional_modalities="audio",
                       workers=1, progress=False, log=lambda *_: None)
    assert spec["build"]["examples_without"] == {"audio": 3}

    workdir = tmp_path / "run"
    data = [f"--config.data.train={tmp_path / 'ds'}", f"--config.data.eval={tmp_path / 'ds'}"]
    cmd = [sys.executable, "-m", "mmjax.train", *tiny_args, *data, f"--workdir={workdir}",
           "--config.total_steps=3", "--config.modality_dropout=0.3", "--config.loss.task=multilabel"]
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    final = _rows(workdir)[-1]
    assert {"eval/f1", "eval/exact_match", "eval/label_accuracy"} <= set(final)
    assert all(np.isfinite(v) for v in final.values())
