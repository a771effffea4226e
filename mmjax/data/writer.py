"""Writes a data set directory (format.py): ArrayRecord shards, then spec.json.

Writes are atomic in the way readers care about: each shard is written under a hidden
part name and renamed when complete, and spec.json, which makes a directory a data set,
is written (atomically) last. A crash leaves no spec.json and no shard that looks whole.
`replace_dataset` moves a data set finished elsewhere into a folder, replacing only the
files of the data set already there (its spec.json lists them), never a user's file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence

from array_record.python.array_record_module import ArrayRecordWriter

from mmjax.data.format import SPEC_FILE, dataset_files, shard_name, validate_spec


class ShardWriter:
    """Writes records into numbered hidden part files; `finish` renames them into shards."""

    def __init__(self, directory: str):
        self.directory = directory
        self.parts: list[str] = []  # temporary paths, in shard order
        self.names: list[str] = []  # the shards' file names, once finished
        self._writer = None
        self._part = -1

    def start(self, part: int) -> None:
        """Begins part `part` (a shard even if no record follows); parts come in increasing
        order, and numbers skipped make no shard (shards are numbered densely)."""
        if part <= self._part:
            raise ValueError(f"part {part} comes after part {self._part}")
        self._close()
        path = os.path.join(self.directory, f".part-{part:05d}.array_record.tmp")
        # group_size:1 makes every record its own chunk, which random access needs.
        self._writer, self._part = ArrayRecordWriter(path, "group_size:1"), part
        self.parts.append(path)

    def write(self, record: bytes, part: int) -> None:
        """Appends `record` to part `part`, starting it if it is not the current one."""
        if self._writer is None or part != self._part:
            self.start(part)
        self._writer.write(record)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> int:
        """Renames the parts to data-XXXXX-of-YYYYY.array_record; returns the shard count."""
        self._close()
        self.names = [shard_name(i, len(self.parts)) for i in range(len(self.parts))]
        for path, name in zip(self.parts, self.names):
            os.replace(path, os.path.join(self.directory, name))
        return len(self.parts)

    def abort(self) -> None:
        """Closes and deletes the parts written so far."""
        self._close()
        for path in self.parts:
            if os.path.exists(path):
                os.remove(path)


def write_json_atomically(path: str, obj, *, lines: bool = False) -> None:
    """Writes `obj` as indented JSON (or, with `lines`, one JSON line per item) via a
    temporary file, so `path` is either absent or complete."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        if lines:
            for item in obj:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
        else:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
    os.replace(tmp, path)


def write_spec(directory: str, spec: dict) -> None:
    """Checks and writes spec.json: the last file of a data set, which makes it one."""
    validate_spec(spec, where=f"spec for {directory}")
    write_json_atomically(os.path.join(directory, SPEC_FILE), spec)


def write_dataset(directory: str, records: Sequence[bytes], spec: dict,
                  num_shards: int = 1) -> None:
    """Writes encoded records as `num_shards` contiguous ArrayRecord shards plus spec.json.

    Shards hold consecutive runs of `records`, so reading the sorted shards back gives the
    records in their original order. `spec['num_examples']` is set to len(records).
    """
    num_shards = max(1, min(int(num_shards), len(records) or 1))
    spec = validate_spec({**spec, "num_examples": len(records)}, where=f"spec for {directory}")
    os.makedirs(directory, exist_ok=True)
    bounds = [len(records) * i // num_shards for i in range(num_shards + 1)]
    shards = ShardWriter(directory)
    try:
        for i in range(num_shards):
            shards.start(i)
            for record in records[bounds[i]:bounds[i + 1]]:
                shards.write(record, i)
        shards.finish()
    except BaseException:
        shards.abort()
        raise
    write_spec(directory, {**spec, "shards": shards.names})


def make_aside(out: str) -> str:
    """A new empty hidden folder to build `out` in: inside `out` if it exists (the same file
    system, so the final moves are renames), else beside it (renamed to `out` at the end)."""
    if os.path.isdir(out):
        return tempfile.mkdtemp(prefix=".mmjax-build-", dir=out)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}-build-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a data set is an ordinary folder
    return tmp


def clashes(out: str, names, old: list[str]) -> list[str]:
    """The `names` a data set would take in `out` that a file not in `old` (ours) already has."""
    return sorted(n for n in names if os.path.lexists(os.path.join(out, n)) and n not in old)


def replace_dataset(tmp: str, out: str) -> None:
    """Moves the finished data set in `tmp` (make_aside) into `out`.

    Only the files of the data set already in `out` (format.dataset_files: its spec.json,
    the shards and report it lists) are replaced; the old spec goes first and the new one
    comes last, so `out` is never a data set of mixed shards, and a failed move puts the
    old files back. Raises ValueError, before moving anything, if a new file's name is
    taken by a file that is not part of the old data set."""
    if not os.path.isdir(out):
        os.rename(tmp, out)
        return
    old = [n for n in dataset_files(out) if os.path.lexists(os.path.join(out, n))]
    new = sorted(os.listdir(tmp), key=lambda n: n == SPEC_FILE)  # spec.json last
    taken = clashes(out, new, old)
    if taken:
        raise ValueError(f"{out} has {taken[0]}, which is not part of a data set of ours; move it away "
                         "or choose another directory")
    trash = tempfile.mkdtemp(prefix=".mmjax-old-", dir=out)
    moved_old, moved_new = [], []
    try:
        for name in sorted(old, key=lambda n: n != SPEC_FILE):  # spec.json first
            os.rename(os.path.join(out, name), os.path.join(trash, name))
            moved_old.append(name)
        for name in new:
            os.rename(os.path.join(tmp, name), os.path.join(out, name))
            moved_new.append(name)
    except BaseException:
        for name in reversed(moved_new):
            os.rename(os.path.join(out, name), os.path.join(tmp, name))
        for name in moved_old:
            os.rename(os.path.join(trash, name), os.path.join(out, name))
        os.rmdir(trash)
        raise
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
