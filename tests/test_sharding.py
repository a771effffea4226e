"""Mesh construction from config sizes, and placing host batches on the mesh."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmjax import sharding
from mmjax.config import UserError


@pytest.mark.parametrize(
    "sizes, expected",
    [
        (dict(data=-1, fsdp=1, tensor=1), (8, 1, 1)),
        (dict(data=2, fsdp=-1, tensor=2), (2, 2, 2)),
        (dict(data=1, fsdp=1, tensor=-1), (1, 1, 8)),
        (dict(data=2, fsdp=2, tensor=2), (2, 2, 2)),
    ],
)
def test_mesh_shape_autofill(sizes, expected):
    mesh = sharding.make_mesh(sizes)
    assert tuple(mesh.shape[a] for a in sharding.MESH_AXES) == expected
    assert mesh.devices.size == 8


def test_mesh_errors_name_the_config():
    with pytest.raises(UserError, match=r"config.mesh .* needs 4 devices but 8 are available"):
        sharding.make_mesh(dict(data=2, fsdp=2, tensor=1))
    with pytest.raises(UserError, match=r"fixed axes \(3 devices\) do not divide the 8"):
        sharding.make_mesh(dict(data=-1, fsdp=3, tensor=1))


def test_batch_size_must_divide_batch_axes():
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    sharding.check_batch_size(8, mesh)
    with pytest.raises(UserError, match=r"config.batch_size=6 must be divisible by the data x fsdp mesh axes \(4 shards\)"):
        sharding.check_batch_size(6, mesh)


def test_host_batch_becomes_global_array_split_over_batch_axes():
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    host = {"image": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "label": np.arange(8, dtype=np.int32)}
    batch = sharding.host_batch_to_global(host, mesh)
    assert batch["image"].sharding.spec == P(("data", "fsdp"))
    assert len(batch["label"].sharding.device_set) == 8
    np.testing.assert_array_equal(jax.device_get(batch["image"]), host["image"])
    # each of the 4 batch shards holds 2 rows; the tensor axis holds replicas
    assert {s.data.shape for s in batch["image"].addressable_shards} == {(2, 3)}
