"""The run's workdir: checked before anything heavy, and locked for the run.

Two runs in one workdir would interleave checkpoints and metrics. Process 0 holds an
exclusive `fcntl.flock` on WORKDIR/.lock for the whole run; the file records its pid and
host, so a second run names the one in its way. The kernel drops the lock when its
process ends however it ends (even SIGKILL), so a lock left by a dead process never
blocks. flock works on local disks and on NFS (Linux maps it onto NFS locks); a workdir
given as a URL (gs://...) is not locked. The file is never deleted: deleting it would let
a third run lock a new file while the second still holds the old one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmjax.config import UserError

LOCK_FILE = ".lock"


def is_url(workdir: str) -> bool:
    return "://" in workdir


def prepare(workdir: str) -> None:
    """Makes the workdir (and its parents) or raises UserError naming what is wrong with it."""
    if is_url(workdir):
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir={workdir} is a file, not a directory; choose another --workdir")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"--workdir={workdir}: cannot create it ({e.strerror}); choose another --workdir") from e
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UserError(f"--workdir={workdir} is not writable by this user; choose another --workdir "
                        "or fix its permissions")


class Lock:
    """An exclusive lock on WORKDIR/.lock for the life of a run (`acquire`, then `release`)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock or raises UserError naming the process that holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot create the lock file {self.path} ({e.strerror}); choose another --workdir") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(f"--workdir={os.path.dirname(self.path)} is in use by another run ({holder}); "
                            "wait for it to end, stop it, or use another --workdir") from None
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {record['pid']} on host {record['host']}, since {record['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


def claim(workdir: str) -> Lock:
    """Checks and locks the workdir on process 0 (the others learn whether it could);
    raises UserError on every process if it cannot be used."""
    lock = Lock(workdir)
    problem = ""
    if jax.process_index() == 0 and not is_url(workdir):
        try:
            prepare(workdir)
            lock.acquire()
        except UserError as e:
            problem = str(e)
    if jax.process_count() > 1:
        failed = bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(problem))))
        if failed and not problem:
            problem = f"process 0 cannot use --workdir={workdir} (its error says why)"
    if problem:
        lock.release()
        raise UserError(problem)
    return lock
