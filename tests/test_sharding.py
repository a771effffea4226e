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


# ---------------------------------------------------------------- mesh sizes vs model sizes
from mmjax import objectives, train, trainer  # noqa: E402
from mmjax.models.multimodal import build_model  # noqa: E402


def state_shapes(config):
    mesh = sharding.make_mesh(config.mesh)
    tx, _ = trainer.make_optimizer(config)
    return trainer.sharded_state_shapes(build_model(config, 10), tx, trainer.batch_shapes(config, 16), mesh,
                                        objective=objectives.Objective.from_config(config))


@pytest.mark.parametrize("overrides, expected", [
    # 4 heads over 8-way tensor parallelism
    (dict(mesh__data=1, mesh__tensor=8),
     r"config.mesh.tensor=8 does not divide parameter '\w+/.*' dimension \d \(logical axis 'heads', size 4\) "
     r"nor \d+ other parameters; sizes that divide every dimension split over it: config.mesh.tensor in \{1, 2, 4\}"),
    # width 36 over 8-way fsdp
    (dict(mesh__data=1, mesh__fsdp=8, model__image__width=36, model__image__heads=3),
     r"config.mesh.fsdp=8 does not divide parameter 'image/.*' dimension \d \(logical axis 'embed', size 36\).*"
     r"config.mesh.fsdp in \{1, 2, 4\}"),
    # an odd vocabulary over 2-way tensor
    (dict(mesh__data=4, mesh__tensor=2, model__text__vocab_size=1001),
     r"config.mesh.tensor=2 does not divide parameter 'text/token_embed/embedding' dimension 0 "
     r"\(logical axis 'vocab', size 1001\); .* config.mesh.tensor in \{1\}"),
    # mlp 100 over 8-way tensor, heads divisible
    (dict(mesh__data=1, mesh__tensor=8, model__image__heads=8, model__text__heads=8, model__audio__heads=8,
          fusion__heads=8, model__image__mlp=100),
     r"config.mesh.tensor=8 does not divide parameter 'image/.*' dimension \d \(logical axis 'mlp', size 100\)"),
])
def test_indivisible_mesh_is_one_line_naming_parameter_axis_and_sizes(tiny_config, overrides, expected):
    with pytest.raises(UserError, match=expected) as e:
        state_shapes(tiny_config(**overrides))
    assert "\n" not in str(e.value)


def test_divisible_meshes_pass_the_check(tiny_config):
    for overrides in (dict(mesh__data=2, mesh__fsdp=2, mesh__tensor=2), dict(mesh__data=1, mesh__fsdp=8)):
        abstract, _, _ = state_shapes(tiny_config(**overrides))
        assert abstract.params


def test_train_with_an_indivisible_mesh_stops_with_one_line(tiny_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MMJAX_DISTRIBUTED", "off")
    cache = tiny_config().data.cache_dir
    status = train.main(["mmjax.train", "--config=configs/base.py", "--config.model.image.depth=1",
                         "--config.model.text.depth=1", "--config.model.audio.depth=1", "--config.fusion.depth=1",
                         "--config.data.synthetic.num_train=128", "--config.data.synthetic.num_eval=40",
                         f"--config.data.cache_dir={cache}", "--config.mesh.data=1", "--config.mesh.tensor=8",
                         f"--workdir={tmp_path / 'w'}"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("mmjax.train: error: config.mesh.tensor=8 does not divide parameter")
