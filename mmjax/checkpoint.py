"""Orbax checkpoints of a run: train state, data-iterator position and metadata, one step each.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. Saves are asynchronous (training
goes on while the arrays are written) and atomic (Orbax writes a temporary folder and
renames it, so a killed save leaves nothing that looks complete). Restores take an abstract
target with shardings, so a checkpoint written on one mesh loads onto another.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

STATE, DATA, META = "state", "data", "meta"


class Checkpointer:
    """Saves and restores (state, data_state, meta) triples under one directory."""

    def __init__(self, directory: str | epath.Path, *, max_to_keep: int, async_save: bool = True):
        self.directory = epath.Path(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
            item_names=(STATE, DATA, META),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        """Starts an asynchronous save; returns once the arrays are safe to mutate/donate."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    STATE: ocp.args.StandardSave(state),
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
                    STATE: ocp.args.StandardRestore(abstract_state),
                    DATA: ocp.args.JsonRestore(),
                    META: ocp.args.JsonRestore(),
                }
            ),
        )
        return restored[STATE], dict(restored[DATA]), dict(restored[META])

    def read_meta(self, step: int) -> dict:
        """Reads only the metadata of a step (no arrays)."""
        restored = self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
        return dict(restored[META])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) for a tree of jax arrays, to restore onto."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
