"""Tests for config.grad_accum_steps (mmjax/trainer/steps.py): k micro-batches give the
loss, gradients and updated parameters of one big batch, for classification (with
per-modality heads) and for the contrastive objective, whose negatives all stay in
(GradCache), on one device and on the data x fsdp x tensor mesh with the chunked loss."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import config as config_lib
from mmjax import objectives, sharding, trainer
from mmjax.contract import presence_key
from mmjax.models import missing
from mmjax.models.multimodal import build_model
from mmjax.trainer import steps

CLASSES = 4
BATCH = 32
SIZES = {"image": 6, "text": 5, "audio": 7}


class Toy(nn.Module):
    """A model with MultimodalClassifier's interface and aux layout (present, embeddings,
    scale, bias, unimodal), small enough to compile in a moment: the accumulation algebra
    is what these tests check; test_train_step_* runs the real model."""

    heads: bool = False
    contrastive: bool = False

    @nn.compact
    def __call__(self, batch, train=False, aux=False):
        n = batch["label"].shape[0]
        keep = missing.presence(batch, tuple(SIZES), n)
        feats = {m: jnp.tanh(nn.Dense(8, name=m)(batch[m])) * keep[:, i, None] for i, m in enumerate(SIZES)}
        logits = nn.Dense(CLASSES, name="head")(sum(feats.values()))
        extras = {"present": {m: keep[:, i] for i, m in enumerate(SIZES)}}
        if self.contrastive:
            emb = {m: nn.Dense(8, name=f"{m}_proj")(f) for m, f in feats.items()}
            extras["embeddings"] = {m: e * jax.lax.rsqrt(jnp.sum(e * e, -1, keepdims=True) + 1e-12)
                                    for m, e in emb.items()}
            extras["scale"] = jnp.exp(self.param("log_scale", nn.initializers.constant(2.0), ()))
            extras["bias"] = self.param("bias", nn.initializers.constant(-2.0), ())
        if self.heads:
            extras["unimodal"] = {m: nn.Dense(CLASSES, name=f"{m}_head")(f) for m, f in feats.items()}
        return (logits, extras) if aux else logits


def _toy_batch(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    batch = {m: rng.normal(size=(BATCH, d)).astype(np.float32) for m, d in SIZES.items()}
    batch["label"] = rng.integers(0, CLASSES, BATCH).astype(np.int32)
    batch[presence_key("text")] = np.arange(BATCH) % 3 != 1  # rows lacking text or audio
    batch[presence_key("audio")] = np.arange(BATCH) % 4 != 2
    return batch


def _toy_grads(objective, k, mesh=None):
    """(loss, grads, sums) of one toy batch with accum_steps=k, on `mesh` (None: no mesh)."""
    model = Toy(heads=bool(objective.heads), contrastive=objective.contrastive != "none")
    batch = _toy_batch()
    params = model.init(jax.random.key(0), batch)["params"]
    fn = jax.jit(steps.make_loss_and_grads(model, objective, k))
    if mesh is None:
        return jax.device_get(fn(params, batch, jax.random.key(1), None)[:3])
    with jax.set_mesh(mesh):
        return jax.device_get(fn(params, sharding.host_batch_to_global(batch, mesh), jax.random.key(1), None)[:3])


def _assert_close(got, want, rtol):
    (loss, grads, sums), (ref_loss, ref_grads, ref_sums) = got, want
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol)
    scale = max(np.max(np.abs(g)) for g in jax.tree.leaves(ref_grads))  # some gradients are 0 but for rounding
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        ref = ref_grads
        for p in path:
            ref = ref[p.key]
        np.testing.assert_allclose(g, ref, rtol=rtol, atol=rtol * scale, err_msg=jax.tree_util.keystr(path))
    jax.tree.map(lambda s, r: np.testing.assert_allclose(s, r, rtol=rtol), sums, ref_sums)


@pytest.mark.parametrize("heads", [False, True])
def test_classification_k4_equals_one_batch(heads):
    """Task loss (and per-modality heads, whose counts depend on which rows have text or
    audio): loss, gradients and metric sums of k=4 micro-batches equal k=1."""
    objective = objectives.Objective(heads=tuple(SIZES) if heads else (), aux_weight=0.5)
    _assert_close(_toy_grads(objective, 4), _toy_grads(objective, 1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_contrastive_k4_equals_one_batch_on_8_devices(kind):
    """Task + contrastive loss over three weighted pairs, rows lacking text or audio: k=4
    with the cached embedding gradients, the loss chunked over 8 batch shards, equals k=1
    on one device with dense logits (every negative is kept)."""
    objective = objectives.Objective(contrastive=kind, contrastive_weight=0.7, pairs=(
        ("image", "text", 1.0), ("audio", "text", 0.5), ("image", "audio", 2.0)))
    got = _toy_grads(objective, 4, sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1}))
    _assert_close(got, _toy_grads(objective, 1), rtol=1e-5)
    assert set(got[2]["contrastive"]) == {"image_to_text", "audio_to_text", "image_to_audio"}
    assert float(got[2]["contrastive"]["audio_to_text"]["count"]) == np.sum(
        (np.arange(BATCH) % 3 != 1) & (np.arange(BATCH) % 4 != 2))


def _batch(config) -> dict:
    """A random batch of the real model's layout, some rows lacking text."""
    rng = np.random.default_rng(0)
    out = {}
    for key, (shape, dtype) in trainer.batch_shapes(config, BATCH).items():
        if key == "label":
            out[key] = rng.integers(0, CLASSES, shape).astype(dtype)
        elif key == "text":
            out[key] = rng.integers(1, config.model.text.vocab_size, shape).astype(dtype)
        else:
            out[key] = rng.integers(0, 256, shape).astype(dtype)
    out[presence_key("text")] = np.arange(BATCH) % 3 != 1
    return out


def test_train_step_k2_updates_the_params_of_one_batch_on_the_mesh(tiny_config):
    """The real model's whole step on data x fsdp x tensor = 2 x 2 x 2 (task + CLIP loss,
    chunked; SGD, so the update is the gradient itself): parameters and metrics after one
    step with k=2 equal k=1."""
    config = tiny_config(modalities="image,text", fusion__kind="concat", loss__contrastive="softmax",
                         loss__contrastive_pair="image,text")
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = build_model(config, CLASSES)
    batch = _batch(config)
    tx, schedule = optax.sgd(0.5), optax.constant_schedule(0.5)
    shapes = {key: (v.shape, v.dtype) for key, v in batch.items()}
    _, _, init_fn = trainer.sharded_state_shapes(model, tx, shapes, mesh)
    objective = objectives.Objective.from_config(config)
    out = []
    for k in (1, 2):
        step = trainer.make_train_step(model, tx, schedule, jax.random.key(1), objective=objective, accum_steps=k)
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            state, metrics = jax.jit(step)(init_fn(jax.random.key(0)), sharding.host_batch_to_global(batch, mesh))
        out.append(jax.device_get((state.params, metrics)))
    (params1, metrics1), (params2, metrics2) = out
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), params2, params1)
    assert set(metrics2) == set(metrics1)
    for name in ("train/loss", "train/grad_norm", "train/accuracy", "train/image_to_text/recall@1",
                 "train/contrastive_scale"):
        np.testing.assert_allclose(metrics2[name], metrics1[name], rtol=1e-5, err_msg=name)


def test_micro_batches_split_each_devices_rows_evenly():
    x = jnp.arange(12)
    micro = steps._split(x, 3)
    assert micro.tolist() == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    assert steps._merge(micro).tolist() == list(range(12))


def test_batch_must_split_into_micro_batches_over_the_shards(tiny_config):
    with pytest.raises(config_lib.UserError, match=r"config.grad_accum_steps: 3 must divide config.batch_size=16"):
        tiny_config(grad_accum_steps=3)
    config = tiny_config(grad_accum_steps=4)  # 16 / 4 = 4 rows per micro-batch, over 8 shards: no
    mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    with pytest.raises(config_lib.UserError, match=r"config.batch_size=16 must be divisible by "
                                                   r"config.grad_accum_steps=4 x the 8 data x fsdp shards"):
        trainer.compile_train_step(None, None, None, None, config, mesh, None, None)
