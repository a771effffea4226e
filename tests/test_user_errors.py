"""User errors of the train command that involve a workdir: damaged or incompatible
checkpoints, and the command line itself. Each ends in one line and exit status 2 (the
full table, with the tests of the other rows, is in BUILD.md, "Reliability").
"""
import os
import shutil

import pytest
from conftest import TINY_OVERRIDES
from test_checkpoint import overwrite_every_array_file, truncate_array_file

from mmjax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [f"--config={ROOT}/configs/base.py", *(f"--config.{k}={v}" for k, v in TINY_OVERRIDES.items())]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run with checkpoints at steps 3 and 6, and its data cache. The
    workdir is given relative to the current directory, as users often do."""
    root = tmp_path_factory.mktemp("trained")
    args = [*ARGS, f"--config.data.cache_dir={root / 'cache'}"]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert run(args, "run") == 0
    finally:
        os.chdir(cwd)
    assert sorted(os.listdir(root / "run" / "checkpoints")) == ["3", "6"]
    return root / "run", args


def run(args, workdir):
    os.environ["MMJAX_DISTRIBUTED"] = "off"
    return train.main(["mmjax.train", *args, f"--workdir={workdir}"])


@pytest.fixture
def workdir(trained, tmp_path):
    run_dir, args = trained
    shutil.copytree(run_dir / "checkpoints", tmp_path / "run" / "checkpoints")
    return tmp_path / "run", args


def one_line_error(capsys, status, expected):
    captured = capsys.readouterr()
    err = captured.err
    assert status == 2
    assert err.startswith("mmjax.train: error: ") and err.strip().count("\n") == 0, err
    assert expected in err
    assert "Traceback" not in err
    return captured.out


def test_damaged_latest_checkpoint_falls_back_end_to_end(workdir, capsys):
    path, args = workdir
    overwrite_every_array_file(path / "checkpoints" / "6")
    assert run([*args, "--config.total_steps=8"], path) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {path}/checkpoints/6 is damaged (" in out and "; falling back to 3\n" in out
    assert f"resuming from {path}/checkpoints/3" in out
    assert (path / "damaged_checkpoints" / "6").is_dir()
    assert sorted(os.listdir(path / "checkpoints")) == ["3", "6", "8"]  # step 6 saved anew


def test_no_intact_checkpoint_is_one_line_and_exit_2(workdir, capsys):
    path, args = workdir
    overwrite_every_array_file(path / "checkpoints" / "6")
    truncate_array_file(path / "checkpoints" / "3")
    status = run([*args, "--config.total_steps=8"], path)
    out = one_line_error(capsys, status, "no intact checkpoint in")
    assert out.count(" is damaged (") == 2  # one line per damaged step, then the error


def test_resume_with_a_different_model_is_refused_naming_the_keys(workdir, capsys):
    path, args = workdir
    status = run([*args, "--config.total_steps=8", "--config.model.image.width=32"], path)
    one_line_error(capsys, status, "holds a model with different shapes; config keys that differ: "
                                   "model.image.width (64 -> 32), total_steps (6 -> 8)")


@pytest.mark.parametrize("argv, expected", [
    (["--workdir=W"], "--config is required"),
    (["--config=configs/base.py", "--workdir="], "--workdir is required"),
    (["--config=configs/nope.py", "--workdir=W"], "no such config file 'configs/nope.py'"),
    (["--config=configs/base.py", "--config.seed", "--workdir=W"], "write overrides as --config.seed=VALUE"),
    (["--config=configs/base.py", "--config.max_bad_steps=0", "--workdir=W"],
     "config.max_bad_steps: must be a positive integer"),
    (["--config=configs/base.py", "--config.checkpoint_every_seconds=-1", "--workdir=W"],
     "config.checkpoint_every_seconds: must be >= 0"),
    # issue 15: values that passed validation and ended in tracebacks or ran uselessly
    (["--config=configs/base.py", "--config.optim.lr=inf", "--workdir=W"],
     "config.optim.lr: must be a finite number > 0, got inf"),
    (["--config=configs/base.py", "--config.optim.lr=nan", "--workdir=W"],
     "config.optim.lr: must be a finite number > 0, got nan"),
    (["--config=configs/base.py", "--config.frozen=(1,)", "--workdir=W"],
     "config.frozen: entries must be non-empty strings, got 1 in (1,)"),
    (["--config=configs/base.py", "--config.frozen=('image',None)", "--workdir=W"],
     "config.frozen: entries must be non-empty strings, got None"),
    (["--config=configs/base.py", "--config.eval_without=(1,)", "--workdir=W"],
     "config.eval_without: 1 is not one of image, text, audio"),
    (["--config=configs/base.py", "--config.profile_steps=(5,2)", "--workdir=W"],
     "config.profile_steps: must be () (off) or (start, stop) with 0 <= start < stop"),
])
def test_command_line_mistakes(argv, expected, capsys, monkeypatch):
    # In one process absl keeps the last --workdir: every case names one, so none trains.
    monkeypatch.setenv("MMJAX_DISTRIBUTED", "off")
    one_line_error(capsys, train.main(["mmjax.train", *argv]), expected)


# ---------------------------------------------------------------- issue 15
def test_damaged_final_checkpoint_is_trained_again(workdir, capsys):
    """The rerun of a finished run verifies its last checkpoint before saying "finished":
    a damaged one falls back and the missing steps are trained again."""
    path, args = workdir
    overwrite_every_array_file(path / "checkpoints" / "6")
    assert run(args, path) == 0  # the same command, total_steps=6 as before
    out = capsys.readouterr().out
    assert "training already finished" not in out
    assert f"checkpoint {path}/checkpoints/6 is damaged (" in out and "; falling back to 3\n" in out
    assert f"resuming from {path}/checkpoints/3" in out and "done: 6 steps" in out
    assert sorted(os.listdir(path / "checkpoints")) == ["3", "6"] and (path / "damaged_checkpoints" / "6").is_dir()
    assert run(args, path) == 0  # and now it is finished, verified
    assert f"training already finished: {path} has an intact checkpoint at step 6" in capsys.readouterr().out


@pytest.mark.parametrize("change, expected", [
    ("--config.batch_size=8", "batch_size (16 -> 8)"),
    ("--config.seed=1", "seed (0 -> 1)"),
    ("--config.data.synthetic.num_train=64", "data.synthetic.num_train (128 -> 64)"),
])
def test_resume_with_another_batch_size_seed_or_data_is_refused(workdir, capsys, change, expected):
    path, args = workdir
    status = run([*args, "--config.total_steps=8", change], path)
    one_line_error(capsys, status, f"resuming {path}/checkpoints/6 with a different {expected}: the data order "
                                   "would not continue where the run stopped")
    assert sorted(os.listdir(path / "checkpoints")) == ["3", "6"]  # nothing trained


def test_resume_change_allowed_says_so(workdir, capsys):
    path, args = workdir
    assert run([*args, "--config.total_steps=7", "--config.seed=1", "--config.allow_resume_change=True"], path) == 0
    out = capsys.readouterr().out
    assert "resuming with a different seed (0 -> 1) (config.allow_resume_change)" in out and "done: 7 steps" in out
