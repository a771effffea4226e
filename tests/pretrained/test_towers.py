"""mmjax/pretrained/towers.py: config.model.<modality>.init_from puts the checkpoint's
architecture into the config (a conflicting user value is one error naming both), loads
its parameters onto the sharded state, and a run with a frozen pretrained tower trains."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import export, sharding, train, trainer
from mmjax.models.multimodal import build_model
from mmjax.pretrained import hf, towers
from parity import IMAGE_TOL, close, fixture, reference

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


def _two_tower_config(tiny_config, family, **overrides):
    """image + text from the same CLIP / SigLIP fixture, with its contrastive loss, at the
    checkpoint's sizes (32 px, the reference's token length)."""
    spec = "hf:" + fixture(family)
    values = dict(modalities="('image','text')", model__image__depth=2, model__text__depth=2,
                  model__image__init_from=spec, model__text__init_from=spec, loss__contrastive_pair="('image','text')",
                  loss__contrastive="softmax" if family == "clip" else "sigmoid", data__image_size=32,
                  data__text_length=reference(family)["input_ids"].shape[1], model__dtype="float32")
    return tiny_config(**{**values, **overrides})


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_a_two_tower_checkpoint_loads_the_contrastive_head(tiny_config, family):
    """Issue 12 item 4: CLIP / SigLIP loaded into both towers also loads the projections and
    logit scale / bias, so the model's zero-shot scores are transformers' logits_per_image."""
    config = _two_tower_config(tiny_config, family)
    state = _configured_state(config)  # towers.configure sets the head style from the checkpoint
    assert config.loss.contrastive_head == family
    assert config.loss.contrastive_dim == (24 if family == "clip" else 64)  # CLIP's projection_dim
    loaded = towers.load_params(state, config)
    head = _flat(loaded.params["contrastive"])
    assert set(head) == ({"['log_scale']", "['bias']"} if family == "siglip" else
                         {"['log_scale']", "['image_proj']['kernel']", "['text_proj']['kernel']"})
    ref = reference(family)
    batch = {"image": jnp.asarray(ref["zero_shot_images"]), "text": jnp.asarray(ref["input_ids"], jnp.int32)}
    apply = jax.jit(lambda params, batch: build_model(config, 10).apply({"params": params}, batch, aux=True)[1])
    aux = apply(loaded.params, batch)
    logits = aux["scale"] * aux["embeddings"]["image"] @ aux["embeddings"]["text"].T + aux["bias"]
    assert logits.shape == (3, 3)
    close(logits, ref["zero_shot_logits"], IMAGE_TOL)
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(state.params)):
        assert a.sharding == b.sharding


def test_the_head_keys_come_from_the_checkpoint(tiny_config):
    with pytest.raises(ValueError, match=r"config.loss.contrastive='softmax' but the checkpoint hf:.*siglip has "
                                         r"'sigmoid'"):
        towers.configure(_two_tower_config(tiny_config, "siglip", loss__contrastive="softmax"))
    with pytest.raises(ValueError, match=r"config.loss.contrastive_dim=16 but the checkpoint hf:.*clip has 24"):
        towers.configure(_two_tower_config(tiny_config, "clip", loss__contrastive_dim=16))
    # Towers from two different checkpoints: the head is mmjax's own, freshly initialised.
    config = _two_tower_config(tiny_config, "siglip", model__image__init_from=VIT, model__text__depth=2)
    assert towers.configure(config) == ["image", "text"] and config.loss.contrastive_head == "mmjax"
    # A head style that reads pooled outputs needs towers that pool.
    config = tiny_config(modalities="('image','text')", loss__contrastive="sigmoid",
                         loss__contrastive_pair="('image','text')", loss__contrastive_head="siglip")
    with pytest.raises(ValueError, match=r"contrastive_head='siglip' reads the image tower's pooled output"):
        build_model(config, 10)


def test_a_big_vision_siglip_loads_its_scale_and_bias(tmp_path):
    from test_bigvision import _siglip_npz

    head = towers.read_head("bv:" + _siglip_npz(tmp_path))
    assert towers.head_values(head) == {"contrastive": "sigmoid", "contrastive_head": "siglip"}
    params = towers.head_params(head)
    assert (float(params["log_scale"]), float(params["bias"])) == (2.0, -3.0)
