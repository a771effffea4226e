"""mmjax/pretrained/towers.py: config.model.<modality>.init_from puts the checkpoint's
architecture into the config (a conflicting user value is one error naming both), loads
its parameters onto the sharded state, and a run with a frozen pretrained tower trains."""
import jax
import numpy as np
import pytest

from mmjax import export, sharding, train, trainer
from mmjax.models.multimodal import build_model
from mmjax.pretrained import hf, towers
from parity import fixture

VIT = "hf:" + fixture("vit")


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_configure_reads_the_architecture_and_names_conflicts(tiny_config):
    config = tiny_config(modalities="('image','text')", model__image__depth=2, model__image__init_from=VIT)
    assert towers.configure(config) == ["image"]
    image = config.model.image
    assert (image.width, image.depth, image.heads, image.mlp, image.patch) == (32, 2, 2, 64, 8)
    assert image.cls_token and image.activation == "gelu" and image.ln_eps == 1e-12
    assert image.pixel_mean == (0.48, 0.46, 0.41)
    config = tiny_config(modalities="('image','text')", model__image__depth=2, model__image__init_from=VIT,
                         model__image__width=48)
    with pytest.raises(ValueError, match=r"config.model.image.width=48 but the checkpoint hf:.*vit has 32"):
        towers.configure(config)
    config = tiny_config(modalities="('image','audio')", model__audio__depth=2,
                         model__audio__init_from="hf:" + fixture("whisper"))
    with pytest.raises(ValueError, match=r"config.data.audio_rate=8000 but .* expects 16000 Hz"):
        towers.configure(config)


def _configured_state(config):
    """The fresh sharded state of config once towers.configure has read the checkpoints."""
    towers.configure(config)
    model = build_model(config, 10)
    tx, _ = trainer.make_optimizer(config)
    mesh = sharding.make_mesh(config.mesh)
    _, _, init_fn = trainer.sharded_state_shapes(model, tx, trainer.batch_shapes(config, config.batch_size), mesh)
    return init_fn(jax.random.key(0))


def test_params_go_onto_the_sharded_state(tiny_config):
    config = tiny_config(modalities="('image','text')", model__image__depth=2, model__image__init_from=VIT,
                         mesh__fsdp=2, mesh__data=-1)
    state = _configured_state(config)
    loaded = towers.load_params(state, config)
    # data.image_size 16 (the synthetic data's) against the checkpoint's 32: positions interpolated.
    _, want = hf.load(fixture("vit"), "image", scan=True, image_size=16)
    got = _flat(loaded.params["image"])
    for name, value in _flat(want).items():
        np.testing.assert_array_equal(got[name], value)
    np.testing.assert_array_equal(_flat(loaded.params["text"])["['token_embed']['embedding']"],
                                  _flat(state.params["text"])["['token_embed']['embedding']"])
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(state.params)):
        assert a.sharding == b.sharding


def test_a_lora_tower_loads_the_checkpoint_and_keeps_its_adapters(tiny_config):
    config = tiny_config(modalities="('image','text')", model__image__depth=2, model__image__init_from=VIT,
                         model__image__lora_rank=2)
    state = _configured_state(config)
    got, fresh = _flat(towers.load_params(state, config).params["image"]), _flat(state.params["image"])
    _, want = hf.load(fixture("vit"), "image", scan=True, image_size=16)
    want = _flat(want)
    adapters = [n for n in got if "lora_" in n]
    assert adapters and set(got) == set(want) | set(adapters)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    for name in adapters:
        np.testing.assert_array_equal(got[name], fresh[name])


def test_a_run_with_a_frozen_pretrained_tower_trains(tiny_config, tmp_path):
    config = tiny_config(modalities="('image','text')", model__image__depth=2, model__image__init_from=VIT,
                         frozen="('image',)")
    metrics = train.train(config, str(tmp_path))
    assert np.isfinite(metrics["eval/loss"])
    _, params, _, _ = export.restore_params(str(tmp_path))
    _, want = hf.load(fixture("vit"), "image", scan=True, image_size=16)
    got = _flat(params["image"])
    for name, value in _flat(want).items():
        np.testing.assert_array_equal(got[name], value)  # frozen: exactly the checkpoint's
