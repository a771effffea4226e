"""The command line end to end: a tiny run, its outputs, resume, and clean user errors."""
import json
import os
import subprocess
import sys

import pytest

from mmjax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run_train(tiny_args):
    def run(workdir, cache, *extra):
        env = dict(os.environ, MMJAX_CACHE=str(cache), JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=4")
        cmd = [sys.executable, "-m", "mmjax.train", f"--workdir={workdir}", *tiny_args,
               "--config.log_every=2", *extra]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    return run


def test_train_writes_progress_metrics_tensorboard_checkpoints_then_rerun_does_nothing(tmp_path, run_train, tiny_args,
                                                                                     monkeypatch, capsys):
    root = tmp_path
    result = run_train(root / "run", root / "cache", "--config.mesh.data=2", "--config.mesh.fsdp=-1")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "step      2/6 | loss" in out and "ex/s | ETA" in out
    assert "eval @ step 6 | eval/accuracy" in out and "done: 6 steps" in out
    rows = [json.loads(line) for line in open(root / "run" / "metrics.jsonl")]
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    assert {"train/accuracy", "train/examples_per_sec"} <= set(train_rows[0])
    eval_rows = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in eval_rows] == [3, 6] and 0.0 <= eval_rows[-1]["eval/accuracy"] <= 1.0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(root / "run" / "tensorboard"))
    assert sorted(os.listdir(root / "run" / "checkpoints")) == ["3", "6"]

    # The same command again, in process (a second fresh process would only repeat the first's
    # start-up): it finds the finished run and changes nothing.
    before = open(root / "run" / "metrics.jsonl").read()
    monkeypatch.setenv("MMJAX_CACHE", str(root / "cache"))
    monkeypatch.setenv("MMJAX_DISTRIBUTED", "off")
    assert train.main(["mmjax.train", f"--workdir={root / 'run'}", *tiny_args, "--config.log_every=2"]) == 0
    assert "training already finished" in capsys.readouterr().out
    assert open(root / "run" / "metrics.jsonl").read() == before


USER_ERRORS = [
    ("--config.model.image.detph=2", "unknown key 'detph' in model.image"),
    ("--config.modalities=('image','smell')", "config.modalities: 'smell' is not one of"),
    ("--config.mesh.data=3", "config.mesh"),
    ("--config.fusion.kind=nope", "nope"),
    ("--config.batch_size=6", "config.batch_size=6 must be divisible"),
    ("--config.data.train=/no/such/dir", "'/no/such/dir' is neither 'synthetic' nor a directory"),
]


def test_a_user_error_from_the_command_line_is_one_clear_line(tmp_path, run_train):
    """One of them through a real process: exit status 2, the message, no traceback."""
    flag, message = USER_ERRORS[0]
    result = run_train(tmp_path / "run", tmp_path / "cache", flag)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flag, message", USER_ERRORS)
def test_user_errors_are_one_clear_line(tmp_path, tiny_args, flag, message, monkeypatch, capsys):
    """All of them through train.main in process (what python -m mmjax.train runs; an
    exception other than a UserError would escape here and fail the test)."""
    monkeypatch.setenv("MMJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MMJAX_DISTRIBUTED", "off")
    status = train.main(["mmjax.train", f"--workdir={tmp_path / 'run'}", *tiny_args, "--config.log_every=2", flag])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err, err
    assert "Traceback" not in err


# ---------------------------------------------------------------- help, in process (fast)
@pytest.mark.parametrize("module, expected", [
    ("train", "usage: python -m mmjax.train --config=configs/base.py --workdir=DIR"),
    ("compile", "usage: python -m mmjax.compile --config=CONFIG --topology="),
])
def test_help_exits_0_with_usage(module, expected, capsys):
    import importlib

    main = importlib.import_module(f"mmjax.{module}").main
    assert main([f"mmjax.{module}", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(expected) and "--config FILE[:ARG]" in out and "--help_config" in out
    for flag in ("--help_config", "--help=config"):
        assert main([f"mmjax.{module}", flag]) == 0
        assert "model.image.kind = 'vit'" in capsys.readouterr().out


def test_export_help_and_config_listing(capsys):
    from mmjax import export

    with pytest.raises(SystemExit) as exit_info:
        export.main(["--help"])
    assert exit_info.value.code == 0 and "--workdir WORKDIR" in capsys.readouterr().out
    assert export.main(["--help_config"]) == 0
    assert "evals.NAME.kind = 'task'" in capsys.readouterr().out


def test_help_from_the_command_line_exits_0():
    result = subprocess.run([sys.executable, "-m", "mmjax.train", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m mmjax.train"), result.stderr


def test_config_file_in_space_form_is_loaded(capsys, monkeypatch):
    monkeypatch.setenv("MMJAX_DISTRIBUTED", "off")
    status = train.main(["mmjax.train", "--config", os.path.join(ROOT, "configs", "seed.py"),
                         "--config.optim.kind=sgd", "--workdir=W"])
    assert status == 2
    assert "config.optim.kind: 'sgd' is not one of adamw, adam" in capsys.readouterr().err
