"""Throughput metrics of a real (tiny) run, and the bench scripts in smoke mode."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mmjax import hardware, train

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


def run_bench(script, *args, timeout=600, env=None):
    result = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT, env=env or BENCH_ENV,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


TINY = ["--config=configs/base.py", "--config.model.image.depth=1", "--config.model.text.depth=1",
        "--config.model.audio.depth=1", "--config.fusion.depth=1", "--config.batch_size=8",
        "--config.peak_tflops=0.1", "--steps=1", "--warmup=0", "--rounds=1"]


def test_train_step_bench_prints_a_table_for_each_variant_and_times_the_training_command(tmp_path):
    out = run_bench("train_step.py", *TINY, "--variants=default;model.attention=dpa,model.unroll=no",
                    "--train_steps=6", "--config.data.synthetic.num_train=64", "--config.data.synthetic.num_eval=16",
                    env=dict(BENCH_ENV, MMJAX_CACHE=str(tmp_path)))
    assert "| variant" in out and "| default" in out and "| model.attention=dpa,model.unroll=no" in out
    assert "MFU" in out and "CPU s/step" in out
    assert "no PyTorch column" in out  # base.py is not the reference model
    assert f"CPU: {hardware.cpu_summary()}" in out  # the model name and its vector / matrix flags
    line = next(x for x in out.splitlines() if x.startswith("training command (python -m mmjax.train"))
    assert "median of 2 windows" in line and "examples/s; fixed-batch step" in line


def test_the_bench_warns_when_the_training_command_and_the_step_disagree():
    sys.path.insert(0, ROOT)
    from bench import train_step

    command = train_step.TrainCommand("configs/bench.py", {}, 30, 10)
    command.rates = [9.0, 10.0, 11.0]
    agree = train_step.command_line(command, step_rate=10.2, torch_rate=8.0)
    assert "10.0 examples/s; fixed-batch step 10.2 (-2.0%); 1.25x PyTorch eager" in agree and "WARNING" not in agree
    assert "WARNING: the training command and the fixed-batch step differ by more than 5%" in \
        train_step.command_line(command, step_rate=11.0, torch_rate=None)


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


def test_step_profile_sorts_every_executed_op_into_a_kind():
    out = run_bench("step_profile.py", *[a for a in TINY if not a.startswith(("--warmup", "--rounds", "--steps"))],
                    "--steps=1", "--top=5")
    assert f"CPU: {hardware.cpu_summary()}" in out
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| ")}
    # The default model has attention, matmuls, LayerNorms and AdamW: each kind shows up with its time.
    for kind in ("optimizer update", "attention", "matmuls", "normalisation"):
        assert kind in rows, out
    shares = [float(line.split(" | ")[2].rstrip("%")) for k, line in rows.items() if k in
              ("optimizer update", "log-mel front end", "copies / transposes", "attention", "matmuls",
               "normalisation", "GELU", "other")]
    assert abs(sum(shares) - 100.0) < 0.5


def test_step_profile_kinds_follow_the_name_stack():
    sys.path.insert(0, ROOT)
    from bench import step_profile

    fwd, bwd = "jit(train_step)/jvp(M)/image/layers/", "jit(train_step)/transpose(jvp(M))/image/layers/"
    assert step_profile.kind_of([("dot", fwd + "attn/bnts,bnsh->bnth/dot_general")]) == "attention"
    assert step_profile.kind_of([("dot", fwd + "attn/attn._fused_qkv/btd,dcnh->cbtnh/dot_general")]) == "matmuls"
    assert step_profile.kind_of([("dot", bwd + "mlp/wi/dot_general")]) == "matmuls"
    assert step_profile.kind_of([("multiply", fwd + "ln_1/mul"), ("reduce", fwd + "ln_1/reduce_sum")]) == \
        "normalisation"
    assert step_profile.kind_of([("transpose", bwd + "attn/x/transpose"), ("copy", "")]) == "copies / transposes"
    assert step_profile.kind_of([("multiply", "jit(train_step)/mul"), ("add", "jit(train_step)/add")]) == \
        "optimizer update"
    assert step_profile.kind_of([("tanh", fwd + "mlp/tanh")]) == "GELU"
    assert step_profile.direction([("dot", bwd + "mlp/wi/dot_general")]) == "backward"
    hlo = """HloModule m

%fused_computation (p: f32[2,2]) -> f32[2,2] {
  %p = f32[2,2]{1,0} parameter(0)
  ROOT %t.1 = f32[2,2]{1,0} tanh(%p), metadata={op_name="jit(f)/jvp(M)/mlp/tanh"}
}

ENTRY %main (a: f32[2,2]) -> f32[2,2] {
  %a = f32[2,2]{1,0} parameter(0)
  ROOT %fusion.7 = f32[2,2]{1,0} fusion(%a), kind=kLoop, calls=%fused_computation, metadata={op_name="jit(f)/jvp(M)/mlp/tanh"}
}
"""
    instructions, computations = step_profile.parse_hlo(hlo)
    assert instructions["fusion.7"][0] == "fusion" and instructions["fusion.7"][2] == "fused_computation"
    assert step_profile._leaves("fusion.7", instructions, computations) == [("parameter", ""),
                                                                            ("tanh", "jit(f)/jvp(M)/mlp/tanh")]


def test_xla_flags_bench_times_each_set_in_its_own_process_and_names_a_rejected_flag():
    out = run_bench("xla_flags.py", *[a for a in TINY if a.startswith("--config")], "--rounds=1", "--steps=1",
                    "--sets=default;--xla_no_such_flag=1")
    assert "| `default` |" in out and "| 1.00x |" in out
    assert "| `--xla_no_such_flag=1` | - | - | rejected: " in out and "Unknown flag in XLA_FLAGS" in out


def test_decode_speed_bench_times_the_three_ways():
    out = run_bench("decode_speed.py", "--batch_sizes=2", "--repeats=1", "--config.data.target_length=4",
                    "--config.decoder.depth=1", "--config.model.image.depth=1", "--config.model.text.depth=1",
                    "--config.model.audio.depth=1")
    assert "CPU: " in out and "T = 3 tokens per row" in out and "3x (T) and 2x ((T + 1) / 2)" in out
    rows = [line for line in out.splitlines() if line.startswith("| 2 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["KV cache", "no cache", "no cache, encoders once"]
    assert rows[0].rstrip().endswith("| 1.0x |")
