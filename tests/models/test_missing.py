"""Tests for mmjax/models/missing.py and missing modalities through the whole model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import missing
from mmjax.models.multimodal import build_model

from random_init import random_variables
from test_multimodal import B, NUM_CLASSES, make_batch, tiny_config


def test_presence_defaults_to_all_present_and_reads_flags():
    batch = {"present_text": jnp.array([True, False, True])}
    present = missing.presence(batch, ["image", "text"], 3)
    np.testing.assert_array_equal(present, [[True, True], [True, False], [True, True]])
    with pytest.raises(ValueError, match=r"batch\['present_text'\] has shape \(3,\); expected \(2,\)"):
        missing.presence(batch, ["text"], 2)


def test_modality_dropout_rate_and_never_all():
    n = 6000
    present = np.ones((n, 3), bool)
    present[:1000, 2] = False  # some examples lack audio
    present[1000:1100] = False  # and some have nothing at all
    keep = np.asarray(missing.drop_modalities(jax.random.key(0), jnp.asarray(present), 0.5))
    assert not np.any(keep & ~present)  # never adds a modality
    assert np.all(keep[present.any(1)].any(1))  # never removes all of an example's modalities
    assert not np.any(keep[1000:1100])
    # Three present: each kept with 1/2 + P(all three drawn) / 3 = 0.5417.
    np.testing.assert_allclose(keep[1100:].mean(), 0.5 + 0.125 / 3, atol=0.015)
    np.testing.assert_array_equal(missing.drop_modalities(jax.random.key(0), jnp.asarray(present), 0.0), present)


@pytest.fixture(scope="module", params=["joint", "concat"])
def model_and_variables(request):
    config = tiny_config()
    config.fusion.update(dict(kind=request.param, pool="mean", fusion_layer=0, num_bottlenecks=2, num_latents=4))
    config.modality_dropout = 0.6
    model = build_model(config, NUM_CLASSES)
    batch = make_batch(config)
    return model, batch, random_variables(model, batch, train=False)


def test_an_absent_modality_is_masked_per_example(model_and_variables):
    model, batch, variables = model_and_variables
    apply = jax.jit(lambda b: model.apply(variables, b, train=False))
    reference = apply(dict(batch, present_audio=jnp.ones((B,), bool)))  # one compiled shape for all
    flags = jnp.array([True, False, True, True])
    absent = apply(dict(batch, present_audio=flags))
    noisy = apply(dict(batch, present_audio=flags, audio=batch["audio"].at[1].multiply(-3.0)))
    np.testing.assert_allclose(noisy, absent, atol=1e-5)  # audio of example 1 is never read
    np.testing.assert_allclose(absent[flags], reference[flags], atol=1e-5)
    assert not np.allclose(absent[1], reference[1], atol=1e-4)


def test_modality_dropout_only_when_training(model_and_variables):
    model, batch, variables = model_and_variables

    @jax.jit
    def both(seed):
        rngs = {"dropout": jax.random.key(seed)}
        return [model.apply(variables, batch, train=t, aux=True, rngs=rngs) for t in (False, True)]

    run = lambda train, seed: both(seed)[int(train)]  # noqa: E731

    logits, aux = run(False, 0)
    assert all(bool(jnp.all(p)) for p in aux["present"].values())
    np.testing.assert_allclose(run(False, 1)[0], logits)
    draws = [run(True, seed) for seed in range(4)]
    for logits_t, aux_t in draws:
        kept = jnp.stack(list(aux_t["present"].values()), axis=1)
        assert bool(jnp.all(jnp.any(kept, axis=1)))  # never all dropped
    assert any(not bool(jnp.all(jnp.stack(list(a["present"].values())))) for _, a in draws)
    assert not np.allclose(draws[0][0], draws[1][0])
