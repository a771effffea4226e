"""Orbax checkpoints of a run: train state, data-iterator position and metadata, one step each.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. Saves are asynchronous (training
goes on while the arrays are written) and atomic (Orbax writes a temporary folder and
renames it, so a killed save leaves nothing that looks complete). Restores take an abstract
target with shardings, so a checkpoint written on one mesh loads onto another.

Integrity. Every save records in its metadata a fingerprint of each state array
(computed on device, see `fingerprints`) and the state's shapes. `restore_latest_intact`
checks the shapes against the current model first (a different model is refused, naming
the config keys that differ), then restores and recomputes the fingerprints. A step that
fails to restore (missing or truncated files) or whose arrays changed (overwritten bytes)
is reported in one line, moved to WORKDIR/damaged_checkpoints/, and the next older step
is tried; if none is intact the run stops with a UserError. The data position is checked
the same way (a sha256 of its JSON in the metadata). Metadata without fingerprints is
accepted, unverified, only from an mmjax that predates them (`predates_fingerprints`);
otherwise its checksums were lost and the step is damaged. A failed restore leaves reads
in flight on a closed event loop; their errors are silenced (`quiet_closed_loop_errors`).

The best step (config.select_best, mmjax/best.py). A checkpointer made with
keep_best='max' or 'min' keeps, beside the latest max_to_keep steps, the step saved with
the best `best_value` (Orbax's preservation policies: LatestN or BestN). The loop passes a
value only when an evaluation improved on every earlier one, so the kept step is the
newest such save, the one the data state's 'best' record names. It sits in the same
folder as the others, with the same checksums, and can be resumed from like them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from mmjax.config import UserError

STATE, DATA, META = "state", "data", "meta"
# The metadata's format: 2 adds 'format' and 'data_checksum'. Format 1 (no 'format' key)
# already had 'state_shapes' and 'fingerprints' (they came in one change): metadata
# without fingerprints is from before both only if it has no 'state_shapes' either.
META_FORMAT = 2
BEST_VALUE = "best_value"  # the metric Orbax ranks saved steps by (its per-step 'metrics' item)


class Checkpointer:
    """Saves and restores (state, data_state, meta) triples under one directory."""

    def __init__(self, directory: str | epath.Path, *, max_to_keep: int, async_save: bool = True,
                 temporary_path_class=None, keep_best: str = ""):
        """temporary_path_class: Orbax's (None: its default); the train loop passes the
        fault-injecting one of mmjax/faults.py when a test asks for it. keep_best: '' (keep
        the latest max_to_keep only), 'max' or 'min' (also the step with the best best_value)."""
        directory = str(directory)
        # Orbax needs absolute paths; '--workdir=runs/x' is relative to where the run started.
        self.directory = epath.Path(directory if "://" in directory else os.path.abspath(directory))
        self._keep_best = keep_best
        policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
        best_fn = None
        if keep_best:
            worst = float("-inf") if keep_best == "max" else float("inf")  # steps saved without a value
            best_fn = lambda metrics: (metrics or {}).get(BEST_VALUE, worst)  # noqa: E731
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=best_fn, reverse=keep_best == "min", n=1, keep_checkpoints_without_metrics=False))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
                best_fn=best_fn,  # makes Orbax write each step's metrics, which BestN ranks
                best_mode=keep_best or "max",
                enable_async_checkpointing=async_save,
                create=True,
                cleanup_tmp_directories=True,  # what a save killed mid-way left behind
                temporary_path_class=temporary_path_class,
            ),
            item_names=(STATE, DATA, META),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, meta: dict, best_value: float | None = None) -> None:
        """Starts an asynchronous save; returns once the arrays are safe to mutate/donate.

        `meta` gains 'state_shapes' and 'fingerprints' (one uint32 per array), which
        restores check. best_value (keep_best only): the step's value of the selected
        metric, given when it is the best so far.
        """
        meta = {**meta, "format": META_FORMAT, "state_shapes": state_shapes(state),
                "fingerprints": fingerprints(state), "data_checksum": data_checksum(data_state)}
        metrics = None
        if self._keep_best:  # {} ranks last (and keeps Orbax from warning that metrics are missing)
            metrics = {} if best_value is None else {BEST_VALUE: float(best_value)}
        self._manager.save(
            step,
            metrics=metrics,
            args=ocp.args.Composite(
                **{
                    STATE: ocp.args.StandardSave(on_disk(state)),
                    DATA: ocp.args.JsonSave(data_state),
                    META: ocp.args.JsonSave(meta),
                }
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restores a step onto `abstract_state` (ShapeDtypeStructs carrying shardings)."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    STATE: ocp.args.StandardRestore(on_disk(abstract_state)),
                    DATA: ocp.args.JsonRestore(),
                    META: ocp.args.JsonRestore(),
                }
            ),
        )
        state = restored[STATE]
        if dataclasses.is_dataclass(abstract_state):
            state = abstract_state.replace(**state)  # the unused optional fields stay None
        return state, dict(restored[DATA]), dict(restored[META])

    def read_meta(self, step: int) -> dict:
        """Reads only the metadata of a step (no arrays)."""
        restored = self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
        return dict(restored[META])

    def read_data(self, step: int) -> dict:
        """Reads only the data state of a step (its position in the data and its 'best' record)."""
        restored = self._manager.restore(step, args=ocp.args.Composite(**{DATA: ocp.args.JsonRestore()}))
        return dict(restored[DATA])

    def restore_verified(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restores a step and checks its arrays against the fingerprints in its metadata.

        Raises CheckpointDamaged (with a short reason) for files that are missing,
        truncated or unreadable, and for arrays whose contents changed.
        """
        try:
            state, data_state, meta = self.restore(step, abstract_state)
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for bad files
            quiet_closed_loop_errors()  # the reads still in flight fail later, one traceback each
            raise CheckpointDamaged(f"cannot read it: {_short(e)}") from e
        check_data_state(data_state, meta)
        expected = meta.get("fingerprints")
        if expected is None:
            if predates_fingerprints(meta):  # nothing to check against
                return state, data_state, meta
            raise CheckpointDamaged("its metadata has lost the array checksums (it has the state shapes "
                                   "recorded with them)")
        actual = fingerprints(state)
        changed = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
        if changed:
            more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
            raise CheckpointDamaged(f"array '{changed[0]}'{more} does not match its checksum")
        return state, data_state, meta

    def restore_latest_intact(self, abstract_state: Any, config: dict, log: Callable[[str], None] = print,
                              before_restore: Callable[[int], None] = lambda step: None,
                              ) -> tuple[int, Any, dict, dict] | None:
        """(step, state, data_state, meta) of the newest intact checkpoint, or None if there is none.

        Damaged steps are reported through `log`, one line each, and moved aside once an
        intact one is found. A checkpoint of a different model raises UserError naming the
        config keys that differ; no checkpoint is intact -> UserError. before_restore(step)
        runs just before a step's arrays are read (the fault-injection hook of mmjax/faults.py).
        """
        steps = sorted(self.all_steps(), reverse=True)
        damaged = []
        for i, step in enumerate(steps):
            where = f"{self.directory}/{step}"
            why = "another host could not restore it"
            try:
                try:
                    meta = self.read_meta(step)
                except Exception as e:  # noqa: BLE001
                    raise CheckpointDamaged(f"cannot read its metadata: {_short(e)}") from e
                check_compatible(meta, abstract_state, config, where)
                before_restore(step)
                result = self.restore_verified(step, abstract_state)
                ok = True
            except CheckpointDamaged as e:
                ok, why = False, str(e)
            if jax.process_count() > 1:  # every host must choose the same step
                ok = bool(multihost_utils.process_allgather(np.asarray(ok)).all())
            if ok:
                for bad in damaged:
                    self._move_aside(bad)
                if "fingerprints" not in result[2]:  # and it predates them (restore_verified)
                    log(f"checkpoint {where} has no checksums (saved by an older mmjax); restored unverified")
                return (step, *result)
            damaged.append(step)
            after = f"; falling back to {steps[i + 1]}" if i + 1 < len(steps) else ""
            log(f"checkpoint {where} is damaged ({why}){after}")
        if damaged:
            raise UserError(
                f"no intact checkpoint in {self.directory}: step(s) {', '.join(map(str, damaged))} are damaged; "
                "move them away to start afresh, or restore them from a copy"
            )
        return None

    def _move_aside(self, step: int) -> None:
        """Moves a damaged step out of the way (kept, not deleted: a person may want it)."""
        if jax.process_index() == 0:
            target = self.directory.parent / "damaged_checkpoints" / str(step)
            n = 0
            while target.exists():
                n += 1
                target = target.with_name(f"{step}-{n}")
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("mmjax_move_damaged_checkpoint")
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) for a tree of jax arrays, to restore onto."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class CheckpointDamaged(Exception):
    """A checkpoint step that cannot be restored as saved; the message says why."""


def predates_fingerprints(meta: dict) -> bool:
    """Whether metadata without fingerprints was written before mmjax recorded them (then
    it has neither a format nor the state shapes, which came in the same change)."""
    return "format" not in meta and "state_shapes" not in meta


def data_checksum(data_state: dict) -> str:
    """sha256 of the data state (position, worker count, 'best' record) as canonical JSON."""
    return hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).hexdigest()


def check_data_state(data_state: Any, meta: dict) -> None:
    """Raises CheckpointDamaged unless the data position is what was saved: its checksum
    (format 2) or, for older checkpoints, at least a non-negative integer 'next_batch'."""
    expected = meta.get("data_checksum")
    if expected is not None:
        try:
            ok = data_checksum(data_state) == expected
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise CheckpointDamaged("its data position (the 'data' item) does not match its checksum")
    elif meta.get("format", 1) >= 2:
        raise CheckpointDamaged("its metadata has lost the data position's checksum")
    batch = data_state.get("next_batch") if isinstance(data_state, dict) else None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise CheckpointDamaged(f"its data position is not valid (next_batch={batch!r})")


class _DropClosedLoopErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Task was destroyed but it is pending" not in record.getMessage()


def _short(e: Exception) -> str:
    """One short line from a library exception (tensorstore messages run for pages)."""
    text = str(e).split("\n")[0].split(". See full TensorStore")[0].strip()
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _closed_loop_error(exc: BaseException | None) -> bool:
    """The errors of reads left in flight by a failed restore: the closed loop, or the
    same damage met by another array (never retrieved, so reported as unraisable)."""
    text = str(exc)
    return (isinstance(exc, RuntimeError) and text == "Event loop is closed") or (
        text.startswith("Encountered error while reading array") and "TensorStore" in text)


def quiet_closed_loop_errors() -> None:
    """After a failed restore, the other arrays' reads finish on Orbax's closed event loop:
    tensorstore reports each through sys.unraisablehook ("RuntimeError: Event loop is
    closed", or the read's own error, hundreds for a real model) and asyncio logs their
    tasks as destroyed. All are noise once the damage is reported in one line; other
    errors still show."""
    if getattr(sys.unraisablehook, "_mmjax_quiet", False):
        return
    previous = sys.unraisablehook

    def hook(args):
        if not _closed_loop_error(args.exc_value):
            previous(args)

    hook._mmjax_quiet = True
    sys.unraisablehook = hook
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _DropClosedLoopErrors) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_DropClosedLoopErrors())


# --------------------------------------------------------------------------- fingerprints
def _paths_and_leaves(tree: Any) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path, simple=True, separator="/"), leaf) for path, leaf in flat]


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    """sum_i w_i * word_i mod 2**32 over the array's 32-bit words, with odd weights w_i.

    Any change of one word changes the sum (an odd weight times a nonzero difference is
    nonzero mod 2**32), and integer sums give the same answer in any order, so any
    sharding on any number of hosts agrees.
    """
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if x.dtype.itemsize == 4:
        words = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize < 4:
        unsigned = {1: jnp.uint8, 2: jnp.uint16}[x.dtype.itemsize]
        words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    else:  # 64-bit values: two words each
        words = jax.lax.bitcast_convert_type(x, jnp.uint32)
    words = words.reshape(-1)
    position = jnp.arange(words.size, dtype=jnp.uint32)
    weights = position * jnp.uint32(2654435761) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.sum(words * weights, dtype=jnp.uint32)


@jax.jit
def _fingerprint_leaves(leaves: list) -> jax.Array:
    return jnp.stack([_leaf_fingerprint(x) for x in leaves]) if leaves else jnp.zeros((0,), jnp.uint32)


def fingerprints(state: Any) -> dict[str, int]:
    """{path: uint32 fingerprint} of every array in `state`, computed on device in one call."""
    named = _paths_and_leaves(state)
    values = _fingerprint_leaves([leaf for _, leaf in named])
    if jax.process_count() > 1 and not values.is_fully_addressable:
        values = multihost_utils.process_allgather(values, tiled=True)
    values = np.asarray(jax.device_get(values))
    return {name: int(v) for (name, _), v in zip(named, values)}


def on_disk(state: Any) -> Any:
    """The tree Orbax writes for a state: a struct's fields as a dict without those that are
    None, so an optional field a run does not use (TrainState.balance) leaves the checkpoint
    as it was before the field existed, and those older checkpoints restore."""
    if dataclasses.is_dataclass(state):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if getattr(state, f.name) is not None}
    return state


def state_shapes(state: Any) -> dict[str, list]:
    """{path: [shape, dtype]} of every array (or ShapeDtypeStruct) in `state`."""
    return {name: [list(x.shape), str(np.dtype(x.dtype))] for name, x in _paths_and_leaves(state)}


# --------------------------------------------------------------------------- compatibility
def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'model.image.width': 64, ...} from a nested config dict."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def check_compatible(meta: dict, abstract_state: Any, config: dict, where: str) -> None:
    """Refuses (UserError) a checkpoint whose state shapes differ from the current model's,
    naming the config keys that differ; other config changes (lr, steps) are allowed."""
    saved = meta.get("state_shapes")
    if saved is None or saved == state_shapes(abstract_state):
        return
    saved_config = meta["config"] if "config" in meta else {}  # metadata, not a schema key
    before, now = flatten_config(saved_config), flatten_config(config)
    keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if keys:
        shown = ", ".join(f"{k} ({before.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r})" for k in keys[:8])
        differs = f"config keys that differ: {shown}" + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
    else:
        current = state_shapes(abstract_state)
        leaf = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))[0]
        differs = f"the config is the same but the array '{leaf}' differs (the code changed?)"
    raise UserError(
        f"checkpoint {where} holds a model with different shapes; {differs}. "
        "Resume with the checkpoint's config, or use a new --workdir"
    )


# --------------------------------------------------------------------------- time-based saves
def _now() -> float:
    """The clock of time-based saves (tests replace it)."""
    return time.monotonic()


class SaveTimer:
    """Says whether `every_seconds` have passed since the last save (0: never).

    On several hosts, process 0's clock decides and the answer is broadcast, so every
    host saves at the same step.
    """

    def __init__(self, every_seconds: float, clock: Callable[[], float] | None = None):
        self.every_seconds = float(every_seconds)
        self._clock = clock or _now
        self._last = self._clock()

    def due(self) -> bool:
        if self.every_seconds <= 0:
            return False
        due = self._clock() - self._last >= self.every_seconds
        if jax.process_count() > 1:
            due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
        return due

    def saved(self) -> None:
        self._last = self._clock()


# --------------------------------------------------------------------------- resume changes
def resume_changes(meta: dict, config: dict) -> list[str]:
    """What differs from the checkpoint's config in the keys that fix the data order
    (batch_size, seed, data.train, and the synthetic data set's keys), as
    ['batch_size (16 -> 8)', ...]; [] when nothing does or the metadata has no config."""
    if "config" not in meta:
        return []
    before, now = flatten_config(meta["config"]), flatten_config(config)
    synthetic = now.get("data.train") == "synthetic"  # otherwise those keys do not make the data
    keys = [k for k in sorted(set(before) | set(now))
            if k in ("batch_size", "seed", "data.train") or (synthetic and k.startswith("data.synthetic."))]
    return [f"{k} ({before.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r})"
            for k in keys if k in before and before.get(k) != now.get(k)]
