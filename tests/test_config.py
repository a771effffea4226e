"""Config loading, overrides and validation: every mistake names the key to fix."""
import pytest

from mmjax import config as config_lib
from mmjax.config import UserError

BASE = "configs/base.py"


def load(**overrides):
    config = config_lib.load_config_file(BASE)
    config_lib.apply_overrides(config, {k: str(v) for k, v in overrides.items()})
    return config


def test_base_config_is_locked_and_valid():
    config = load()
    config_lib.validate(config)
    assert config.is_locked
    assert set(config.modalities) == {"image", "text", "audio"}
    for key in ("fusion.kind", "total_steps", "batch_size", "seed", "mesh.data", "mesh.fsdp", "mesh.tensor", "data.train", "data.eval"):
        node = config
        for part in key.split("."):
            node = node[part]


@pytest.mark.parametrize(
    "text, expected",
    [("('image','text')", ("image", "text")), ("image,audio", ("image", "audio")), ("text", ("text",))],
)
def test_tuple_override(text, expected):
    assert load(modalities=text).modalities == expected


def test_typed_overrides():
    config = load(**{"total_steps": "7", "optim.lr": "0.5", "model.scan": "false", "mesh.data": "-1", "data.train": "/x"})
    assert (config.total_steps, config.optim.lr, config.model.scan, config.mesh.data, config.data.train) == (7, 0.5, False, -1, "/x")


def test_unknown_key_names_valid_keys():
    with pytest.raises(UserError, match=r"unknown key 'detph' in model.image; valid keys: .*depth"):
        load(**{"model.image.detph": "3"})
    with pytest.raises(UserError, match=r"unknown key 'nope' in config"):
        load(nope="1")


def test_wrong_type_names_key():
    with pytest.raises(UserError, match=r"--config.total_steps='abc': expected int"):
        load(total_steps="abc")
    with pytest.raises(UserError, match=r"--config.mesh is a group"):
        load(mesh="3")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("modalities", "('image','smell')", "config.modalities: 'smell' is not one of"),
        ("modalities", "()", "config.modalities: needs at least one"),
        ("modalities", "image,image", "lists a modality twice"),
        ("total_steps", "0", "config.total_steps: must be a positive integer"),
        ("batch_size", "-4", "config.batch_size: must be a positive integer"),
        ("mesh.fsdp", "0", "config.mesh.fsdp: must be -1"),
        ("model.dtype", "float16", "config.model.dtype: 'float16' is not one of"),
        ("model.remat", "some", "config.model.remat"),
        ("optim.warmup_steps", "100000", "config.optim.warmup_steps"),
    ],
)
def test_invalid_values_name_the_key(key, value, message):
    config = load(**{key: value})
    with pytest.raises(UserError, match=message):
        config_lib.validate(config)


def test_split_config_args():
    spec, overrides, rest = config_lib.split_config_args(
        ["--config=configs/base.py:x", "--config.seed=3", "--workdir=w"]
    )
    assert spec == "configs/base.py:x" and overrides == {"seed": "3"} and rest == ["--workdir=w"]
    with pytest.raises(UserError, match="--config.seed=VALUE"):
        config_lib.split_config_args(["--config.seed"])


def test_missing_config_file():
    with pytest.raises(UserError, match="no such config file 'nope.py'"):
        config_lib.load_config_file("nope.py")
