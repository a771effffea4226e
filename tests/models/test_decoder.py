"""The text decoders (models/decoder.py) inside the model: teacher forcing, the KV cache,
masks, logical names and a sharded apply."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec

from mmjax import config as config_lib
from mmjax import decoding, media, objectives, sharding
from mmjax.config import UserError
from mmjax.models.multimodal import build_model
from mmjax.trainer.state import batch_shapes

B, T = 4, 10
VOCAB = media.target_vocab()
KINDS = ("prefix", "cross")


def generate_config(kind="prefix", scan=True, modalities=("image", "text", "audio")):
    config = config_lib.defaults()
    config.modalities = tuple(modalities)
    config.data.update(dict(image_size=8, audio_samples=512, text_length=8, target_length=T))
    config.model.update(dict(dtype="float32", scan=scan, attention="einsum"))
    for m in ("image", "text", "audio"):
        config.model[m].update(dict(width=16, depth=1, heads=2, mlp=32))
    config.model.audio.update(dict(n_mels=16, patch_freq=8))
    config.loss.task = "generate"
    config.decoder.update(dict(kind=kind, width=16, depth=2, heads=2, mlp=32))
    config_lib.validate(config)
    return config


def make_batch(config, seed=0):
    rng = np.random.default_rng(seed)
    shapes = batch_shapes(config, B, spec={"tasks": ["generate"], "num_classes": 0})
    batch = {}
    for key, (shape, dtype) in shapes.items():
        batch[key] = (rng.normal(0, 0.3, shape) if dtype == np.float32 else rng.integers(2, 200, shape)).astype(dtype)
    texts = ["seven and three", "one", "", "nine and nine and nine"]
    rows = [media.encode_target(t, T) for t in texts]
    batch["target_tokens"] = np.stack([r[0] for r in rows])
    batch["target_length"] = np.stack([r[1] for r in rows])
    if "audio" in batch:
        batch["audio_length"] = np.array([512, 300, 0, 400], np.int32)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def init(model, batch):
    return model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch, train=False)


@pytest.mark.parametrize("kind, scan", [("prefix", True), ("cross", True), ("prefix", False)])
def test_cached_steps_match_teacher_forcing(kind, scan):
    config = generate_config(kind, scan)
    model = build_model(config, 1)
    batch = make_batch(config)
    variables = init(model, batch)
    forced = model.apply(variables, batch, train=False)
    assert forced.shape == (B, T - 1, model.decoder.padded_vocab)
    assert bool(jnp.all(forced[..., VOCAB.size:] == -jnp.inf))  # padded ids never predicted
    if scan:  # a cache needs the layers as a loop; decoding unstacks a scanned decoder once
        with pytest.raises(ValueError, match="decoding with a KV cache runs the decoder's layers as a loop"):
            model.apply(variables, batch, T - 1, method=model.prefill)
    model, params = decoding.looped_for_decoding(model, variables["params"])
    assert not model.decoder.spec.scan and "layers" not in params["decoder"]
    variables = {"params": params}
    logits, cache = model.apply(variables, batch, T - 1, method=model.prefill)
    np.testing.assert_allclose(logits[:, :VOCAB.size], forced[:, 0, :VOCAB.size], atol=2e-5)
    assert len(cache.k) == config.decoder.depth  # one array per layer, rows and heads flattened
    assert cache.k[0].shape[0] == B * config.decoder.heads
    for t in range(1, T - 1):
        logits, cache = model.apply(variables, batch["target_tokens"][:, t], cache, method=model.decode_step)
        np.testing.assert_allclose(logits[:, :VOCAB.size], forced[:, t, :VOCAB.size], atol=2e-5)
    assert int(cache.length) == T - 1


@pytest.mark.parametrize("kind", KINDS)
def test_loss_reads_only_target_ids(kind):
    """Padding after target_length and the prompt text change nothing but what the encoders
    see; the loss ignores what comes after each target's EOS."""
    config = generate_config(kind)
    model = build_model(config, 1)
    batch = make_batch(config)
    variables = init(model, batch)
    objective = objectives.Objective.from_config(config)
    weights = jnp.ones((B,), jnp.float32)

    def loss(b):
        return objective.loss(objective.sums(model.apply(variables, b, train=False), b, weights))

    junk = jnp.where(jnp.arange(T)[None] >= batch["target_length"][:, None], 77, batch["target_tokens"])
    np.testing.assert_allclose(loss(batch), loss({**batch, "target_tokens": junk}), rtol=1e-6)
    changed = batch["target_tokens"].at[0, 2].set(99)  # a real id of row 0
    assert abs(float(loss(batch)) - float(loss({**batch, "target_tokens": changed}))) > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_loss_falls_on_a_fixed_batch(kind):
    config = generate_config(kind)
    model = build_model(config, 1)
    batch = make_batch(config)
    params = init(model, batch)["params"]
    objective = objectives.Objective.from_config(config)
    weights = jnp.ones((B,), jnp.float32)
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            sums = objective.sums(model.apply({"params": p}, batch, train=True), batch, weights)
            return objective.loss(sums), sums
        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, sums

    opt_state = tx.init(params)
    losses = []
    for _ in range(60):
        params, opt_state, loss, sums = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0], losses
    assert float(objectives.task_metrics("generate", sums["task"])["token_accuracy"]) > 0.9


def test_every_decoder_param_has_logical_names_and_vocab_splits_over_tensor():
    config = generate_config("cross")
    model = build_model(config, 1)
    variables = jax.eval_shape(lambda: init(model, make_batch(config)))
    specs = nn.get_partition_spec(variables)["params"]["decoder"]
    is_spec = lambda s: isinstance(s, PartitionSpec)  # noqa: E731
    for spec, shape in zip(jax.tree_util.tree_leaves(specs, is_leaf=is_spec),
                           jax.tree_util.tree_leaves(nn.unbox(variables)["params"]["decoder"])):
        assert len(spec) == len(shape.shape) and any(n is not None for n in spec), (spec, shape)
    assert specs["logits"]["kernel"] == PartitionSpec("embed", "vocab")
    assert specs["layers"]["cross_query"]["kernel"] == PartitionSpec("layers", "embed", "heads", "kv")
    assert "fusion" not in variables["params"] and "head" not in variables["params"]


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_logits_and_grads_match_single_device(kind):
    """data=4 x tensor=2 on the 8 fake devices: vocab and heads split over tensor."""
    config = generate_config(kind)
    model = build_model(config, 1)
    batch = make_batch(config)
    variables = init(model, batch)
    objective = objectives.Objective.from_config(config)
    weights = jnp.ones((B,), jnp.float32)

    def loss_fn(params):
        return objective.loss(objective.sums(model.apply({"params": params}, batch, train=False), batch, weights))

    run = jax.jit(lambda v: (model.apply(v, batch, train=False), jax.grad(loss_fn)(v["params"])))
    ref_logits, ref_grads = run(variables)
    mesh = Mesh(np.array(jax.devices()).reshape(4, 1, 2), sharding.MESH_AXES)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        sharded = jax.device_put(variables, nn.logical_to_mesh_sharding(
            nn.get_partition_spec(variables), mesh, sharding.LOGICAL_RULES))
        assert sharded["params"]["decoder"]["logits"]["kernel"].value.sharding.spec == PartitionSpec("fsdp", "tensor")
        logits, grads = run(sharded)
    finite = ref_logits > -jnp.inf
    np.testing.assert_allclose(jnp.where(finite, logits, 0), jnp.where(finite, ref_logits, 0), atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bad_decoder_settings_are_one_line():
    config = generate_config()
    config.decoder.heads = 3
    with pytest.raises(UserError, match=r"config.decoder.heads: 3 must divide config.decoder.width=16"):
        config_lib.validate(config)
    config = generate_config()
    config.decoder.kind = "encoder"
    with pytest.raises(UserError, match=r"config.decoder.kind: 'encoder' is not one of prefix, cross"):
        config_lib.validate(config)
    config = generate_config()
    config.fusion.aux_weight = 1.0
    with pytest.raises(UserError, match=r"config.fusion.aux_weight: per-modality heads classify"):
        config_lib.validate(config)
