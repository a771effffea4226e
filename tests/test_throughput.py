"""Throughput metrics of a real (tiny) run, and the bench scripts in smoke mode."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mmjax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
                 PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_every_train_row_has_mfu_and_data_wait(tiny_config, tmp_path):
    config = tiny_config(peak_tflops=0.5, log_every=2, data__prefetch=2)
    train.train(config, str(tmp_path / "run"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert rows[0]["train/compile_seconds"] > 0
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    for r in train_rows:
        assert r["train/gflops_per_sec"] > 0 and 0 < r["train/mfu"] < 1
        assert 0 <= r["train/data_wait_fraction"] <= 1
        # MFU is the achieved rate over the peak of all 8 devices.
        np.testing.assert_allclose(r["train/mfu"], r["train/gflops_per_sec"] * 1e9 / (0.5e12 * 8), rtol=1e-6)


def test_prefetch_does_not_change_the_losses(tiny_config, tmp_path):
    losses = {}
    for size in (0, 2):
        config = tiny_config(peak_tflops=0.5, data__prefetch=size, total_steps=4, eval_every=4, checkpoint_every=4)
        train.train(config, str(tmp_path / f"p{size}"))
        rows = [json.loads(line) for line in open(tmp_path / f"p{size}" / "metrics.jsonl")]
        losses[size] = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[0] == losses[2] and len(losses[0]) == 4


def run_bench(script, *args, timeout=600):
    result = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT, env=BENCH_ENV,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


TINY = ["--config=configs/base.py", "--config.model.image.depth=1", "--config.model.text.depth=1",
        "--config.model.audio.depth=1", "--config.fusion.depth=1", "--config.batch_size=8",
        "--config.peak_tflops=0.1", "--steps=1", "--warmup=0", "--rounds=1"]


def test_train_step_bench_prints_a_table_for_each_variant():
    out = run_bench("train_step.py", *TINY, "--variants=default;model.attention=dpa,model.unroll=no")
    assert "| variant" in out and "| default" in out and "| model.attention=dpa,model.unroll=no" in out
    assert "MFU" in out and "CPU s/step" in out
    assert "no PyTorch column" in out  # base.py is not the reference model


def test_train_step_bench_without_torch_skips_its_column(monkeypatch, capsys):
    sys.path.insert(0, ROOT)
    from bench import train_step

    monkeypatch.setattr(train_step, "torch_available", lambda: False)
    assert train_step.main([a for a in TINY if "steps" not in a] + ["--steps=1"]) == 0
    out = capsys.readouterr().out
    assert "torch is not installed: no PyTorch column" in out and "| default" in out


def test_torch_baseline_is_the_same_model():
    pytest.importorskip("torch")
    sys.path.insert(0, ROOT)
    from bench import random_batch, torch_baseline
    from mmjax import config as config_lib

    config = config_lib.load_config_file(os.path.join(ROOT, "configs", "bench.py"))
    step = torch_baseline.TorchStep(random_batch.random_batch(config, 2), threads=1)
    assert step.num_params() == 10_105_098
    assert np.isfinite(step()) and np.isfinite(step())


def test_peak_flops_and_checkpoint_stall_benches_run():
    out = run_bench("peak_flops.py", "--sizes=64", "--dtypes=float32", "--repeats=1")
    assert "| jax float32 |" in out and "GFLOP/s" in out
    out = run_bench("checkpoint_stall.py", *[a for a in TINY if a.startswith("--config")], "--steps=1", "--saves=1")
    assert "device-to-host copy of the state" in out and "| 1 |" in out
