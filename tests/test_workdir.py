"""The workdir is checked before anything heavy, and locked while a run uses it."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from mmjax import train
from mmjax import workdir as workdir_lib
from mmjax.config import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ("import sys; from mmjax import workdir; lock = workdir.Lock(sys.argv[1]); lock.acquire(); "
        "print('locked', flush=True); sys.stdin.read()")


def hold_lock(path):
    """A real second process that holds the workdir's lock until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def one_line_error(capsys, status, expected):
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("mmjax.train: error: ") and err.strip().count("\n") == 0, err
    assert expected in err and "Traceback" not in err, err


def test_a_second_run_on_a_workdir_in_use_stops_naming_the_other(tmp_path, tiny_args, capsys, monkeypatch):
    monkeypatch.setenv("MMJAX_DISTRIBUTED", "off")
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = hold_lock(workdir)
    try:
        status = train.main(["mmjax.train", *tiny_args, f"--workdir={workdir}"])
        one_line_error(capsys, status, f"--workdir={workdir} is in use by another run (pid {holder.pid} on host "
                                       f"{socket.gethostname()}, since ")
        assert not (workdir / "checkpoints").exists()  # it stopped before touching anything
    finally:
        holder.kill()
        holder.wait()
    # The holder died (SIGKILL: no clean-up) and its lock file is still there: it does not block.
    assert (workdir / workdir_lib.LOCK_FILE).exists() and holder.returncode == -signal.SIGKILL
    lock = workdir_lib.Lock(str(workdir))
    lock.acquire()
    with pytest.raises(UserError, match=f"in use by another run \\(pid {os.getpid()} "):
        workdir_lib.Lock(str(workdir)).acquire()  # held: even this process's second lock is refused
    lock.release()
    workdir_lib.Lock(str(workdir)).acquire()  # released


def test_a_workdir_that_is_a_file_or_not_writable_is_one_line(tmp_path, tiny_args, capsys, monkeypatch):
    monkeypatch.setenv("MMJAX_DISTRIBUTED", "off")
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    status = train.main(["mmjax.train", *tiny_args, f"--workdir={afile}"])
    one_line_error(capsys, status, f"--workdir={afile} is a file, not a directory")
    status = train.main(["mmjax.train", *tiny_args, f"--workdir={afile}/run"])
    one_line_error(capsys, status, f"--workdir={afile}/run: cannot create it (")
    assert afile.read_text() == "mine"
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    monkeypatch.setattr(workdir_lib.os, "access", lambda path, mode: False)  # tests run as root: simulate it
    status = train.main(["mmjax.train", *tiny_args, f"--workdir={readonly}"])
    one_line_error(capsys, status, f"--workdir={readonly} is not writable by this user")
