"""The device mesh, the logical-axis rules, and helpers that place trees and batches on it.

Parallelism is data, not code: the model names every axis logically ('embed', 'heads',
'act_batch', ...) and the one table below maps those names to mesh axes. Changing how a
model is split is a change to `config.mesh` (and, rarely, to this table).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mmjax.config import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the global batch is split over both

# Logical axis -> mesh axis (None: replicated). First match wins; order matters only for
# names listed twice, which this table avoids.
LOGICAL_RULES = (
    # activations
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    # parameters
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("patch", None),
    ("length", None),
    ("classes", None),
    ("modality", None),
    ("layers", None),
)


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves the config's axis sizes (one may be -1) against the device count."""
    sizes = [int(mesh_config[a]) for a in MESH_AXES]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise UserError(
                f"config.mesh {dict(zip(MESH_AXES, sizes))}: the fixed axes ({fixed} devices) "
                f"do not divide the {num_devices} available devices"
            )
        sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise UserError(
            f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
            f"{num_devices} are available; set one axis to -1 to fill the rest"
        )
    return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices=None) -> Mesh:
    """Builds a ('data', 'fsdp', 'tensor') mesh with Auto axes (what flax linen expects)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    if devices[0].platform == "cpu":
        grid = np.array(devices).reshape(shape)
    else:  # follow the physical topology on TPU/GPU
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch dimension is split."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_size(batch_size: int, mesh: Mesh, key: str = "batch_size") -> None:
    shards = batch_shards(mesh)
    if batch_size % shards or batch_size % jax.process_count():
        raise UserError(
            f"config.{key}={batch_size} must be divisible by the data x fsdp mesh axes "
            f"({shards} shards) and by the {jax.process_count()} processes"
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def _mesh_axes(logical: str | None) -> tuple[str, ...]:
    """The mesh axes LOGICAL_RULES splits a logical axis over (() when replicated)."""
    for name, axes in LOGICAL_RULES:
        if name == logical:
            return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return ()


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_divisible(boxed_abstract_tree, mesh: Mesh) -> None:
    """UserError (one line) if a mesh axis does not divide an array dimension it splits.

    jax would raise IndivisibleError at init with a bare shape; this names the parameter
    path, its logical axis, the config.mesh axis and the sizes of that axis that divide
    every dimension split over it."""
    leaves = jax.tree_util.tree_leaves_with_path(
        boxed_abstract_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    problems, dims_of = [], {a: [] for a in MESH_AXES}  # mesh axis -> sizes of the dims it splits
    for path, leaf in leaves:
        if not isinstance(leaf, nn.LogicallyPartitioned):
            continue
        name = "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
        for dim, (size, logical) in enumerate(zip(leaf.value.shape, leaf.names)):
            axes = _mesh_axes(logical)
            if not axes:
                continue
            split = math.prod(mesh.shape[a] for a in axes)
            for a in axes:  # the other axes of the same dimension divide it too
                dims_of[a].append(size // math.gcd(size, split // mesh.shape[a]))
            if size % split:
                problems.append((name, dim, logical, size, axes, split))
    if not problems:
        return
    name, dim, logical, size, axes, split = problems[0]
    axis = axes[0] if len(axes) == 1 else "x".join(axes)
    fits = {a: [d for d in _divisors(math.gcd(*dims_of[a])) if mesh.devices.size % d == 0] for a in axes}
    works = "; ".join(f"config.mesh.{a} in {{{', '.join(map(str, fits[a]))}}}" for a in axes)
    others = len({p[0] for p in problems}) - 1
    raise UserError(
        f"config.mesh.{axis}={split} does not divide parameter {name!r} dimension {dim} "
        f"(logical axis {logical!r}, size {size})" + (f" nor {others} other parameter{'s' * (others > 1)}" if others else "")
        + f"; sizes that divide every dimension split over it: {works} (or change the model size)")


def logical_shardings(boxed_abstract_tree, mesh: Mesh):
    """NamedShardings for a tree whose leaves carry logical names (nn.LogicallyPartitioned);
    UserError if the mesh does not divide a dimension (check_divisible)."""
    check_divisible(boxed_abstract_tree, mesh)
    specs = nn.get_partition_spec(boxed_abstract_tree)
    # One spec at a time: flax's own tree walk takes any empty tuple for a spec, including
    # optax's MaskedNode (the no-state marker of frozen parameters), which holds no array.
    return jax.tree.map(lambda spec: nn.logical_to_mesh_sharding(spec, mesh, LOGICAL_RULES), specs,
                        is_leaf=lambda x: isinstance(x, P))


def host_batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles every host's slice of the batch into global arrays split over data x fsdp."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
