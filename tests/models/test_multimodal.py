"""Tests for build_model: encoder tables, subsets, errors, logical names, sharded apply."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from mmjax import config as config_lib
from mmjax.config import schema
from mmjax.models import multimodal
from mmjax.models.fusion import FUSIONS
from mmjax.models.heads import HEAD_STYLES
from mmjax.models.multimodal import build_model, count_params

B = 4  # divisible by the (data x fsdp) = 4 batch shards of the test mesh
NUM_CLASSES = 6

# The contract's rules (the lead's mmjax/sharding.py owns the real table).
RULES = (
    ("act_batch", ("data", "fsdp")), ("act_heads", "tensor"), ("act_mlp", "tensor"),
    ("act_length", None), ("act_embed", None), ("act_kv", None),
    ("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"),
    ("kv", None), ("patch", None), ("length", None), ("classes", None), ("modality", None),
    ("layers", None),
)


def tiny_config(modalities=("image", "text", "audio"), **model) -> ml_collections.ConfigDict:
    """The default config at test size; `model` overrides config.model entries."""
    block = dict(width=16, depth=1, heads=2, mlp=32)
    config = config_lib.defaults()
    config.update(
        dict(
            modalities=tuple(modalities),
            seed=0,
            data=dict(image_size=8, audio_rate=8000, audio_samples=512, text_length=16),
            model=dict(
                dtype="float32",
                remat="none",
                scan=False,
                dropout=0.0,
                image=dict(kind="vit", patch=4, **block),
                text=dict(kind="transformer", vocab_size=384, **block),
                audio=dict(
                    kind="transformer", n_mels=16, window=128, hop=64,
                    patch_time=2, patch_freq=8, **block,
                ),
            ),
            fusion=dict(kind="joint", **dict(block, width=32, heads=4)),
        )
    )
    config.model.update(model)
    return config


def make_batch(config, text_length=None, audio_samples=None, seed=0):
    """A batch with the contract's keys for every modality (plus label)."""
    rng = np.random.default_rng(seed)
    size = config.data.image_size
    text = np.zeros((B, text_length or config.data.text_length), np.int32)
    audio = np.zeros((B, audio_samples or config.data.audio_samples), np.float32)
    lengths = np.array([400, 250, 100, 330], np.int32)
    for i in range(B):
        text[i, : 3 + i] = rng.integers(2, 258, 3 + i)
        audio[i, : lengths[i]] = rng.uniform(-1, 1, lengths[i])
    return dict(
        image=jnp.asarray(rng.integers(0, 256, (B, size, size, 3), dtype=np.uint8)),
        text=jnp.asarray(text),
        audio=jnp.asarray(audio),
        audio_length=jnp.asarray(lengths),
        label=jnp.zeros((B,), jnp.int32),
    )


def init(model, batch):
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return model.init(rngs, batch, train=False)


@pytest.fixture(scope="module")
def default():
    """(config, model, batch, variables) of a three-modality float32 scanned model."""
    config = tiny_config(scan=True, dropout=0.1)
    model = build_model(config, NUM_CLASSES)
    batch = make_batch(config)
    return config, model, batch, jax.jit(init, static_argnums=0)(model, batch)


@pytest.mark.parametrize(
    "modalities", [("image", "text", "audio"), ("text",), ("audio", "image")]
)
def test_subsets_build_only_their_encoders(modalities):
    config = tiny_config(modalities)
    model = build_model(config, NUM_CLASSES)
    variables = jax.eval_shape(lambda: init(model, make_batch(config)))
    assert set(variables["params"]) == set(modalities) | {"fusion", "head"}
    logits = jax.eval_shape(lambda v: model.apply(v, make_batch(config), train=False), variables)
    assert logits.shape == (B, NUM_CLASSES) and logits.dtype == jnp.float32


def test_bfloat16_remat_model_takes_float32_params(default):
    """Same float32 params as the default model; bfloat16 compute, float32 logits."""
    _, _, batch, variables = default
    config = tiny_config(dtype="bfloat16", scan=True, remat="dots")
    model = build_model(config, NUM_CLASSES)
    abstract = jax.eval_shape(lambda: init(model, batch))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(abstract)} == {jnp.dtype(jnp.float32)}
    assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(variables)
    logits = jax.jit(lambda v, b: model.apply(v, b, train=False))(variables, batch)
    assert logits.shape == (B, NUM_CLASSES) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_padding_does_not_change_logits(default):
    """Shorter text and audio arrays with the same valid content give the same logits."""
    config, model, full, variables = default
    short = make_batch(config, text_length=8, audio_samples=448)
    np.testing.assert_array_equal(short["text"], full["text"][:, :8])
    apply = jax.jit(lambda v, b: model.apply(v, b, train=False))
    logits = apply(variables, full)
    assert logits.shape == (B, NUM_CLASSES) and logits.dtype == jnp.float32
    np.testing.assert_allclose(apply(variables, short), logits, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_every_param_has_logical_names(scan):
    config = tiny_config(scan=scan)
    variables = jax.eval_shape(lambda: init(build_model(config, NUM_CLASSES), make_batch(config)))
    is_spec = lambda s: isinstance(s, PartitionSpec)
    specs = jax.tree_util.tree_leaves(nn.get_partition_spec(variables), is_leaf=is_spec)
    shapes = jax.tree_util.tree_leaves(nn.unbox(variables))
    assert len(specs) == len(shapes) > 0
    for spec, shape in zip(specs, shapes):
        assert is_spec(spec) and len(spec) == len(shape.shape), (spec, shape)
        assert any(name is not None for name in spec)
    if scan:
        layer_spec = nn.get_partition_spec(variables)["params"]["text"]["transformer"]["layers"]
        assert layer_spec["attn"]["query"]["kernel"][0] == "layers"


def test_scan_and_loop_have_same_param_count():
    counts = []
    for scan in (False, True):
        config = tiny_config(scan=scan)
        variables = jax.eval_shape(lambda: init(build_model(config, NUM_CLASSES), make_batch(config)))
        counts.append(count_params(variables["params"]))
    assert counts[0] == counts[1] > 0


def test_the_schema_names_exactly_the_kinds_the_tables_build():
    """The config schema checks the kind keys; the model tables must offer the same kinds."""
    kinds = {m: set(schema.SCHEMA.keys["model"].keys[m].keys["kind"].choices) for m in multimodal.ENCODERS}
    assert kinds == {m: set(table) for m, table in multimodal.ENCODERS.items()}
    assert set(schema.FUSION_KINDS) == set(FUSIONS)
    assert set(schema.SCHEMA.keys["loss"].keys["contrastive_head"].choices) == set(HEAD_STYLES)
    config = tiny_config(("text",))
    config.model.text.kind = "gru"
    with pytest.raises(config_lib.UserError, match=r"config.model.text.kind: 'gru' is not one of transformer, lstm"):
        config_lib.validate(config)


def test_keys_naming_modalities_are_checked_again_after_the_data_narrowed_them():
    config = tiny_config()
    config.loss.contrastive = "sigmoid"
    config.loss.contrastive_pair = ("image", "text")
    config.modalities = ("image", "audio")  # as train.py does when the data lack text
    with pytest.raises(config_lib.UserError, match=r"config.loss.contrastive_pair: \('image', 'text'\) must name"):
        build_model(config, NUM_CLASSES)


def test_missing_batch_key_is_a_clear_error(default):
    _, model, batch, variables = default
    batch = {k: v for k, v in batch.items() if k != "audio_length"}
    with pytest.raises(ValueError, match=r"batch lacks \['audio_length'\]"):
        jax.eval_shape(lambda v: model.apply(v, batch, train=False), variables)


def test_sharded_apply_and_grads_match_single_device(default):
    """Params placed by their logical names on a 2x2x2 mesh; constraints apply cleanly
    and loss and grads (dropout included) match the single-device ones."""
    _, model, batch, variables = default

    def loss_fn(params, batch):
        logits = model.apply(
            {"params": params}, batch, train=True, rngs={"dropout": jax.random.key(3)}
        )
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(B), batch["label"]])

    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    ref_loss, ref_grads = value_and_grad(variables["params"], batch)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, RULES)
        sharded = jax.device_put(variables, shardings)
        kernel = sharded["params"]["text"]["transformer"]["layers"]["mlp"]["fc1"]["kernel"]
        assert kernel.value.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
        loss, grads = value_and_grad(sharded["params"], batch)
    assert grads["text"]["token_embed"]["embedding"].value.sharding.spec == PartitionSpec("tensor", "fsdp")
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_cnn_lstm_model_on_mesh_matches_single_device():
    """The conv and LSTM encoders under the logical rules on a 2x2x2 mesh: their
    parameters shard as named, and the logits match the single-device ones."""
    from random_init import random_variables

    config = tiny_config(scan=True)
    cnn = dict(kind="cnn", channels=(8,), kernel=3, pool=2)
    config.model.image.update(cnn)
    config.model.audio.update(cnn)
    config.model.text.update(dict(kind="lstm", return_sequences=True))
    config.fusion.update(dict(kind="cross", num_latents=4))
    model = build_model(config, NUM_CLASSES)
    batch = make_batch(config)
    variables = random_variables(model, batch, train=False)
    apply = jax.jit(lambda v, b: model.apply(v, b, train=False))
    reference = apply(variables, batch)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        sharded = jax.device_put(variables, nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, RULES))
        logits = apply(sharded, batch)
    params = sharded["params"]
    assert params["image"]["conv_0"]["kernel"].value.sharding.spec == PartitionSpec(None, None, None, "fsdp")
    assert params["text"]["lstm"]["input_kernel"].value.sharding.spec == PartitionSpec("fsdp", None, "tensor")
    np.testing.assert_allclose(logits, reference, atol=1e-5)


def test_map_pooled_contrastive_embeddings_ignore_padding_and_have_their_own_probes():
    """loss.contrastive_pool='map': a learned attention probe per modality replaces the masked
    mean; it reads only valid tokens, so padding leaves the embeddings unchanged."""
    config = tiny_config()
    config.loss.update(dict(contrastive="sigmoid", contrastive_pool="map",
                            contrastive_pairs=(("image", "text"), ("audio", "text"))))
    model = build_model(config, NUM_CLASSES)
    full, short = make_batch(config), make_batch(config, text_length=8, audio_samples=448)
    variables = jax.jit(init, static_argnums=0)(model, full)
    head = variables["params"]["contrastive"]
    assert {f"{m}_map" for m in ("image", "text", "audio")} <= set(head)
    embed = jax.jit(lambda v, b: model.apply(v, b, train=False, aux=True)[1]["embeddings"])
    got, padded_less = embed(variables, full), embed(variables, short)
    for m in ("image", "text", "audio"):
        np.testing.assert_allclose(np.linalg.norm(got[m], axis=-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(padded_less[m], got[m], atol=1e-5)
    config.loss.contrastive_pool = "mean"  # the default: no probe
    mean_head = jax.eval_shape(lambda: init(build_model(config, NUM_CLASSES), full))["params"]["contrastive"]
    assert not any(k.endswith("_map") for k in mean_head)


def test_map_pooling_is_for_the_mmjax_head_only():
    config = tiny_config()
    config.loss.update(dict(contrastive="sigmoid", contrastive_pool="map", contrastive_head="clip"))
    with pytest.raises(schema.UserError, match=r"config.loss.contrastive_pool: 'map' is for contrastive_head 'mmjax'"):
        schema.validate(config)
