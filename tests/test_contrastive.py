"""Tests for mmjax/contrastive.py and the pairs of config.loss.contrastive_pairs: the
ring-chunked loss on 8 fake devices equals the dense loss on one (sums and gradients,
sigmoid and softmax, with and without missing rows), and the objective's per-pair sums,
weights and metric names."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import contrastive, sharding
from mmjax.objectives import Objective

RNG = np.random.default_rng(0)
B, E = 64, 16


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _pairs(n=B, noise=0.6):
    """Paired embeddings with real signal, so recall@1 is neither 0 nor 1."""
    a = _unit(RNG.normal(size=(n, E)))
    b = _unit(a + noise * RNG.normal(size=(n, E)))
    return jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)


def _loss_and_grads(a, b, weights, kind, chunked):
    def loss(a, b, scale, bias):
        sums = contrastive.pair_sums(a, b, scale, bias, weights, kind, chunked)
        return sums["loss"] / sums["count"], sums

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
    (_, sums), grads = fn(a, b, jnp.float32(8.0), jnp.float32(-3.0))
    return jax.device_get(sums), jax.device_get(grads)


def _assert_same(got, want, kind):
    (sums, grads), (ref_sums, ref_grads) = got, want
    for key in ("loss", "count", "hits_a_to_b", "hits_b_to_a"):
        np.testing.assert_allclose(sums[key], ref_sums[key], rtol=1e-5, err_msg=key)
    names = ("a", "b", "scale", "bias") if kind == "sigmoid" else ("a", "b", "scale")  # softmax ignores the bias
    for name, g, ref in zip(names, grads, ref_grads):
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5 * np.max(np.abs(ref)), err_msg=name)


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
@pytest.mark.parametrize("missing", [False, True])
def test_chunked_on_8_devices_equals_dense_on_one(kind, missing, monkeypatch):
    monkeypatch.setattr(contrastive, "CHUNK", 4)  # 8 rows per device -> 2 chunks, so the inner loop runs too
    a, b = _pairs()
    weights = jnp.asarray((RNG.random(B) > 0.3) if missing else np.ones(B), jnp.float32)
    dense = _loss_and_grads(a, b, weights, kind, "no")  # no mesh: one device, B x B logits
    assert 0 < dense[0]["hits_a_to_b"] < dense[0]["count"]  # the recall check means something
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})  # 8 batch shards
    with jax.set_mesh(mesh):
        chunked = _loss_and_grads(a, b, weights, kind, "auto")
    _assert_same(chunked, dense, kind)


def test_chunked_on_the_three_axis_mesh_and_on_one_device(monkeypatch):
    """data x fsdp x tensor: the ring runs over data x fsdp, the tensor axis repeats it;
    chunked='yes' without a mesh runs the same loop on one device."""
    monkeypatch.setattr(contrastive, "CHUNK", 8)
    a, b = _pairs()
    weights = jnp.asarray(RNG.random(B) > 0.2, jnp.float32)
    dense = _loss_and_grads(a, b, weights, "softmax", "no")
    with jax.set_mesh(sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})):
        _assert_same(_loss_and_grads(a, b, weights, "softmax", "yes"), dense, "softmax")
    _assert_same(_loss_and_grads(a, b, weights, "softmax", "yes"), dense, "softmax")


def test_chunked_recall_breaks_ties_as_the_dense_argmax():
    """Identical candidates: the first (lowest row id) wins, as jnp.argmax picks it."""
    a = jnp.asarray(np.repeat(_unit(RNG.normal(size=(B // 4, E))), 4, axis=0), jnp.float32)
    weights = jnp.ones(B)
    dense = contrastive.dense_sums(a, a, 5.0, 0.0, weights, "sigmoid")
    with jax.set_mesh(sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})):
        chunked = jax.jit(lambda x: contrastive.pair_sums(x, x, 5.0, 0.0, weights, "sigmoid", "yes"))(a)
    assert float(dense["hits_a_to_b"]) == float(chunked["hits_a_to_b"]) == B // 4
    assert float(dense["hits_b_to_a"]) == float(chunked["hits_b_to_a"]) == B // 4


def _config(**loss):
    config = config_lib.defaults()
    config.modalities = ("image", "text", "audio")
    config.loss.update({"contrastive": "sigmoid", "contrastive_dim": E, **loss})
    return config


def test_objective_sums_every_pair_over_the_examples_that_have_both():
    config = _config(task="none", contrastive_weight=2.0,
                     contrastive_pairs=(("image", "text"), ("audio", "text", 0.5), ("image", "audio")))
    config_lib.validate(config)
    objective = Objective.from_config(config)
    assert objective.pairs == (("image", "text", 1.0), ("audio", "text", 0.5), ("image", "audio", 1.0))
    n = 16
    emb = dict(zip(("image", "text", "audio"), (*_pairs(n), _pairs(n)[0])))
    present = {"image": jnp.asarray(np.arange(n) % 3 != 0), "text": jnp.asarray(np.arange(n) % 3 != 1),
               "audio": jnp.asarray(np.arange(n) % 3 != 2)}  # ImageBind-style: each row has two of three
    aux = {"embeddings": emb, "present": present, "scale": jnp.float32(10.0), "bias": jnp.float32(-10.0)}
    sums = objective.sums((None, aux), {}, jnp.ones(n))
    expected = 0.0
    for a, b, weight in objective.pairs:
        ref = contrastive.dense_sums(emb[a], emb[b], 10.0, -10.0, (present[a] & present[b]).astype(jnp.float32),
                                     "sigmoid")
        got = sums["contrastive"][f"{a}_to_{b}"]
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-6)
        assert float(got["count"]) == np.sum(np.asarray(present[a] & present[b]))
        expected += weight * ref["loss"] / ref["count"]
    np.testing.assert_allclose(objective.loss(sums), 2.0 * expected, rtol=1e-6)
    metrics = objective.metrics(sums, "train/")
    assert set(metrics) == {"train/loss", "train/contrastive_loss", *(
        name for a, b, _ in objective.pairs for name in (
            f"train/{a}_to_{b}/contrastive_loss", f"train/{a}_to_{b}/recall@1", f"train/{b}_to_{a}/recall@1"))}
    np.testing.assert_allclose(metrics["train/contrastive_loss"], expected, rtol=1e-6)


def test_one_contrastive_pair_still_works_and_old_runs_upgrade():
    config = _config(contrastive_pair=("image", "text"))
    config_lib.validate(config)
    assert config_lib.contrastive_pairs(config.loss) == (("image", "text", 1.0),)
    old = config.to_dict()
    del old["loss"]["contrastive_pairs"], old["loss"]["contrastive_chunked"], old["grad_accum_steps"]
    upgraded = config_lib.upgrade(old)
    assert Objective.from_config(upgraded).pairs == (("image", "text", 1.0),)
    assert config_lib.contrastive_pairs(_config(contrastive="none").loss) == ()
    # A pair listed in contrastive_pairs may stay in contrastive_pair (derived configs).
    config_lib.validate(_config(contrastive_pair=("text", "image"), contrastive_pairs=(("image", "text"), ("audio", "text"))))


@pytest.mark.parametrize("overrides, message", [
    (dict(contrastive_pairs=(("image", "image"),)), r"config.loss.contrastive_pairs: entry \('image', 'image'\)"),
    (dict(contrastive_pairs=("image", "text")), r"config.loss.contrastive_pairs: entry 'image' must be \(a, b\)"),
    (dict(contrastive_pairs=(("image", "text", 0.0),)), r"weight > 0"),
    (dict(contrastive_pairs=(("image", "text"), ("text", "image"))), r"lists a pair twice"),
    (dict(contrastive_pairs=(("audio", "text"),), contrastive_pair=("image", "text")),
     r"config.loss.contrastive_pair: \('image', 'text'\) is not among config.loss.contrastive_pairs"),
    (dict(contrastive_chunked="maybe"), r"config.loss.contrastive_chunked: 'maybe' is not one of auto, yes, no"),
])
def test_bad_pairs_are_one_line_errors(overrides, message):
    with pytest.raises(config_lib.UserError, match=message):
        config_lib.validate(_config(**overrides))


def test_pairs_must_name_configured_modalities():
    config = _config(contrastive_pairs=(("image", "text"), ("audio", "text")))
    config.modalities = ("image", "text")
    with pytest.raises(config_lib.UserError, match=r"config.loss.contrastive_pairs: \('audio', 'text'\) must name"):
        config_lib.validate(config)


def test_cli_parses_pairs_with_weights():
    config = _config()
    config_lib.apply_overrides(config, {"loss.contrastive_pairs": "(('image','text'),('audio','text',0.5))"})
    config_lib.validate(config)
    assert config_lib.contrastive_pairs(config.loss) == (("image", "text", 1.0), ("audio", "text", 0.5))
    assert config_lib.contrastive_modalities(config.loss) == ("image", "text", "audio")
